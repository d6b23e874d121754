//! Where the master secret and the CA certificate live: a trait with two back-ends,
//! Azure Key Vault with Secure Key Release ([`akv`]) and a plain directory for development
//! ([`dir`], confidentiality off).

use std::time::Duration;

use enclaveid_pki::derive::MasterSecret;

use crate::evidence::EvidenceError;
use crate::retry::{RetryError, Transient};
use crate::skr::SkrError;

pub mod akv;
pub mod dir;

/// Errors of the vault back-ends.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VaultError {
    /// The vault could not be reached (connect error, timeout).
    #[error("vault {vault} unreachable: {detail}")]
    Unreachable {
        /// The vault.
        vault: String,
        /// What happened.
        detail: String,
    },
    /// The vault answered with an error status; `message` is the vault's own.
    #[error("vault {vault} answered HTTP {status}: {message}")]
    Status {
        /// The vault.
        vault: String,
        /// HTTP status.
        status: u16,
        /// The vault's message.
        message: String,
    },
    /// Getting a token for the vault failed.
    #[error("authenticating to vault {vault}: {detail}")]
    Auth {
        /// The vault.
        vault: String,
        /// What happened.
        detail: String,
    },
    /// Something the command needs is not in the vault.
    #[error("{what} not found in vault {vault} (run `enclaveid-init secrets` first)")]
    NotFound {
        /// The vault.
        vault: String,
        /// What is missing.
        what: String,
    },
    /// The vault holds something unusable.
    #[error("vault {vault}: {detail}")]
    Invalid {
        /// The vault.
        vault: String,
        /// What is wrong.
        detail: String,
    },
    /// Local file I/O of the `dir:` back-end.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// Secure Key Release failed.
    #[error("secure key release: {0}")]
    Skr(#[from] SkrError),
    /// No evidence for SKR.
    #[error("secure key release: {0}")]
    Evidence(#[from] EvidenceError),
    /// Transient failures until the deadline.
    #[error("{what}: gave up after {attempts} attempts in {elapsed:?}; last error: {last}")]
    GaveUp {
        /// The operation.
        what: String,
        /// Attempts made.
        attempts: u32,
        /// Time spent.
        elapsed: Duration,
        /// The last error.
        last: Box<VaultError>,
    },
    /// An attempt was still running at the deadline.
    #[error("deadline exceeded after {0:?}")]
    Deadline(Duration),
}

impl Transient for VaultError {
    fn is_transient(&self) -> bool {
        match self {
            Self::Unreachable { .. } => true,
            Self::Status { status, .. } => *status == 429 || *status >= 500,
            Self::Skr(e) => e.is_transient(),
            _ => false,
        }
    }
    fn deadline_exceeded(after: Duration) -> Self {
        Self::Deadline(after)
    }
}

impl From<RetryError<VaultError>> for VaultError {
    fn from(e: RetryError<VaultError>) -> Self {
        match e {
            RetryError::Permanent { source, .. } => source,
            RetryError::Exhausted {
                what,
                attempts,
                elapsed,
                source,
            } => Self::GaveUp {
                what,
                attempts,
                elapsed,
                last: Box::new(source),
            },
        }
    }
}

impl From<RetryError<SkrError>> for VaultError {
    fn from(e: RetryError<SkrError>) -> Self {
        match e {
            RetryError::Permanent { source, .. } => Self::Skr(source),
            RetryError::Exhausted {
                what,
                attempts,
                elapsed,
                source,
            } => Self::GaveUp {
                what,
                attempts,
                elapsed,
                last: Box::new(Self::Skr(source)),
            },
        }
    }
}

/// What `secrets` found or did about the master secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provisioned {
    /// It was already there; nothing changed.
    Existing,
    /// It was created now.
    Created,
}

/// A store of the master secret and the (untrusted) CA certificate.
#[allow(async_fn_in_trait)] // used through generics only; no Send bound is needed on the futures
pub trait Vault {
    /// A short description for logs (no secrets).
    fn describe(&self) -> String;
    /// Makes sure the master secret exists, creating it if absent. Never replaces it.
    async fn ensure_master_secret(&self) -> Result<Provisioned, VaultError>;
    /// Brings the master secret into memory (SKR for AKV).
    async fn master_secret(&self) -> Result<MasterSecret, VaultError>;
    /// The stored CA certificate, if any.
    async fn ca_cert(&self) -> Result<Option<String>, VaultError>;
    /// Stores the CA certificate.
    async fn put_ca_cert(&self, pem: &str) -> Result<(), VaultError>;
}
