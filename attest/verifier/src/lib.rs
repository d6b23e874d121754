//! Pure verification of SEV-SNP evidence.
