//! Pure verification of AMD SEV-SNP evidence: raw reports from `/dev/sev-guest` and Azure vTPM
//! evidence (HCL report + TPM quote), against AMD's ARK → ASK → VCEK chain pinned in this crate.
//!
//! The crate does no I/O, reads no clock and uses only pure-Rust crypto, so it can be built for
//! the browser later. The entry points are [`verify()`] (evidence fetched from a server, bound to
//! the client's nonce and the server's TLS key) and [`verify_report()`] (a raw report). Both
//! return a [`VerificationReport`]: one [`Check`] per rule, and a verdict.
//!
//! The binding contract shared with the server is in [`binding`]; the evidence JSON in
//! [`evidence`]; the YAML policy in [`policy`]. With the `simulated` feature, `simulated`
//! provides a software chain and report signer that every verifier path refuses unless the
//! policy allows simulated evidence.

#![warn(missing_docs)]

// The verifier's RustCrypto crates come without their `std` features (see the root Cargo.toml).
extern crate p384_core as p384;
extern crate rsa_core as rsa;

pub mod binding;
pub mod certs;
pub mod evidence;
pub mod hcl;
pub mod policy;
pub mod product;
pub mod report;
#[cfg(feature = "simulated")]
pub mod simulated;
pub mod verify;
pub mod vtpm;

pub use evidence::{Evidence, Provider};
pub use policy::Policy;
pub use product::Product;
pub use report::{AttestationReport, TcbVersion};
pub use verify::{
    verify, verify_report, verify_vtpm_parts, Check, Expectations, VerificationReport,
};
