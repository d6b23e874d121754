//! Shared public-key infrastructure for EnclaveID: workload identities, the CA derivation from
//! the master secret, leaf issuance, certificate loading and the rustls configurations that the
//! proxy and init build from them. Synchronous, no network, no file writes.
#![warn(missing_docs)]

pub mod derive;
pub mod identity;
pub mod issue;
pub mod pem;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod tls;
