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

/// The attest crate's providers, seen through [`EvidenceSource`].
pub struct AttestProvider(Box<dyn enclaveid_attest::provider::EvidenceProvider>);

impl AttestProvider {
    /// Wraps a built provider.
    #[must_use]
    pub fn new(provider: Box<dyn enclaveid_attest::provider::EvidenceProvider>) -> Self {
        Self(provider)
    }
}

impl EvidenceSource for AttestProvider {
    fn name(&self) -> &str {
        self.0.name()
    }

    fn evidence(&self, report_data: [u8; 64]) -> Result<SnpEvidence, EvidenceError> {
        let err = |detail: String| EvidenceError::Provider {
            provider: self.0.name().to_owned(),
            detail,
        };
        let evidence = self
            .0
            .evidence(report_data)
            .map_err(|e| err(e.to_string()))?;
        let decoded = evidence.decode().map_err(|e| err(e.to_string()))?;
        let mut chain = String::new();
        for pem in [&decoded.vcek, &decoded.ask, &decoded.ark] {
            chain.push_str(pem.trim_end());
            chain.push('\n');
        }
        Ok(SnpEvidence {
            report: decoded.report,
            cert_chain_pem: chain,
        })
    }
}

/// Builds the evidence source named by `--evidence`: `sev-guest` (Kata confidential pods,
/// `host_data` = the pod policy hash) or `simulated` (development; no real MAA accepts it).
///
/// `vtpm` is not an SNP evidence source: on an AKS CVM node the SNP report's `report_data` binds
/// the HCL runtime claims, not our runtime data, so MAA's `attest/SevSnpVm` cannot carry the
/// transfer key. `--evidence vtpm` takes the guest flow instead ([`crate::evidence_vtpm`],
/// [`crate::skr::guest`]), which `commands::open_vault` sets up before calling this.
pub fn provider(name: &str) -> Result<Arc<dyn EvidenceSource>, crate::ConfigError> {
    use enclaveid_attest::provider::{build, ProviderConfig, ProviderKind};
    let kind: ProviderKind =
        name.parse()
            .map_err(|e: enclaveid_attest::provider::ProviderError| {
                crate::ConfigError::field("--evidence", name, &e.to_string())
            })?;
    if kind == ProviderKind::Vtpm {
        return Err(crate::ConfigError::field(
            "--evidence",
            name,
            "not an SNP evidence source (report_data binds the HCL claims); vtpm takes the attest/AzureGuest flow",
        ));
    }
    if kind == ProviderKind::Simulated {
        tracing::warn!("simulated SNP evidence: for development against a test double only");
    }
    let built = build(&ProviderConfig::new(kind))
        .map_err(|e| crate::ConfigError::field("--evidence", name, &e.to_string()))?;
    Ok(Arc::new(AttestProvider::new(built)))
}
