//! Where SKR gets its SNP evidence: a small adapter over the attest crate's
//! `EvidenceProvider::evidence(report_data) -> Evidence` (synchronous; called on a blocking
//! thread), reduced to what MAA's `attest/SevSnpVm` needs: the raw report and the VCEK chain.

use std::sync::Arc;

/// Errors getting evidence.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EvidenceError {
    /// The provider failed.
    #[error("evidence provider {provider}: {detail}")]
    Provider {
        /// The provider's name.
        provider: String,
        /// What went wrong.
        detail: String,
    },
    /// The provider's blocking task panicked or was cancelled.
    #[error("evidence task failed: {0}")]
    Task(String),
}

/// SNP evidence as MAA wants it.
#[derive(Clone)]
pub struct SnpEvidence {
    /// The raw SNP attestation report (1184 bytes).
    pub report: Vec<u8>,
    /// PEM of VCEK, ASK and ARK, in that order.
    pub cert_chain_pem: String,
}

impl std::fmt::Debug for SnpEvidence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnpEvidence")
            .field("report_len", &self.report.len())
            .finish_non_exhaustive()
    }
}

/// Produces evidence whose report carries the given `report_data`. Blocking.
pub trait EvidenceSource: Send + Sync {
    /// The provider's name, for logs and errors.
    fn name(&self) -> &str;
    /// Evidence binding `report_data`.
    fn evidence(&self, report_data: [u8; 64]) -> Result<SnpEvidence, EvidenceError>;
}

/// Calls the (blocking) source on tokio's blocking pool.
pub async fn evidence_for(
    source: Arc<dyn EvidenceSource>,
    report_data: [u8; 64],
) -> Result<SnpEvidence, EvidenceError> {
    tokio::task::spawn_blocking(move || source.evidence(report_data))
        .await
        .map_err(|e| EvidenceError::Task(e.to_string()))?
}

/// Builds the evidence source named by `--evidence`.
///
/// The SNP providers live in the attest crate (`enclaveid_attest::provider::build`); until
/// that API is linked here, every name is refused as a configuration error (exit code 2), so
/// an AKV vault with SKR cannot be used from this binary yet. Library callers (and the tests)
/// pass their own [`EvidenceSource`].
pub fn provider(name: &str) -> Result<Arc<dyn EvidenceSource>, crate::ConfigError> {
    Err(crate::ConfigError::field(
        "--evidence",
        name,
        "no SNP evidence provider is linked into this build (attest provider API pending)",
    ))
}
