//! `enclaveid-init`: the two init containers and the renewal sidecar of an `EnclaveID` pod.
//!
//! `secrets` makes sure the master secret (an exportable AKV key behind a Secure Key Release
//! policy) and the CA certificate derived from it exist; `proxy` releases the secret into
//! memory, re-derives the CA key, verifies the stored CA certificate against it and writes the
//! workload's TLS files to a tmpfs; `renew` re-issues the leaf at 2/3 of its lifetime.
//! See `docs/init.md` and `docs/pki.md`.

pub mod cli;
pub mod commands;
pub mod evidence;
pub mod evidence_vtpm;
pub mod output;
pub mod policy;
pub mod retry;
pub mod skr;
pub mod vault;

/// A configuration or usage error: the command line or a file it names is wrong. Exit code 2.
#[derive(Debug, thiserror::Error)]
#[error("{field}={value:?}: {reason}")]
pub struct ConfigError {
    /// The flag or setting.
    pub field: String,
    /// Its value (never a secret).
    pub value: String,
    /// Why it is wrong.
    pub reason: String,
}

impl ConfigError {
    /// A bad value of `field`.
    #[must_use]
    pub fn field(field: &str, value: &str, reason: &str) -> Self {
        Self {
            field: field.to_owned(),
            value: value.to_owned(),
            reason: reason.to_owned(),
        }
    }
}

/// The process exit code for an error: 2 for configuration errors, 1 for everything else.
#[must_use]
pub fn exit_code(err: &anyhow::Error) -> u8 {
    let config = err
        .chain()
        .any(|e| e.is::<ConfigError>() || e.is::<policy::PolicyError>());
    if config {
        2
    } else {
        1
    }
}
