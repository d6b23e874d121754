//! enclaveid-attest: SEV-SNP evidence server and client verifier.
