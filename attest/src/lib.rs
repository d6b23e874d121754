//! enclaveid-attest: serves AMD SEV-SNP evidence bound to a client's nonce and to the server's
//! TLS key, and verifies such evidence for API clients.
//!
//! - [`provider`]: the evidence providers (`vtpm`, `sev-guest`, `simulated`) behind one trait;
//! - [`server`]: the HTTPS `/attestation` endpoint with rate limiting, metrics and readiness;
//! - [`client`]: fetching evidence over a TLS connection that trusts no CA, capturing its key;
//! - [`cli`]: the `enclaveid-attest` subcommands (`serve`, `verify`, `verify-report`,
//!   `policy-hash`, `verify-image`);
//! - [`policy_hash`]: the SHA-256 that SNP `host_data` carries for a Kata/ACI pod policy.
//!
//! Verification itself is `enclaveid_attest_verifier` (pure, no I/O). `unsafe` is denied in
//! the whole crate except `provider::sev_guest::ioctl`.

pub mod cli;
pub mod client;
pub mod policy_hash;
pub mod provider;
pub mod server;
pub mod tls;
