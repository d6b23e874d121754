//! Evidence providers: one trait, three back-ends.
//!
//! A provider turns the 64-byte binding (`SHA-256(TLS SPKI) ‖ SHA-256(nonce)`, see
//! `enclaveid_attest_verifier::binding`) into [`Evidence`]:
//! - `simulated`: a software ARK/ASK/VCEK chain made at start-up signs a report whose
//!   `report_data` is the binding. Development only; every verifier refuses it by default.
//! - `sev-guest`: the extended report from `/dev/sev-guest` (`SNP_GET_EXT_REPORT`) with
//!   `report_data` = the binding.
//! - `vtpm`: the Azure HCL report from vTPM NV index `0x01400001` plus a TPM2 quote by the AK at
//!   `0x81000003` whose qualifying data is `SHA-256(binding)`.
//!
//! The trait is synchronous (the back-ends talk to devices); async callers use
//! `tokio::task::spawn_blocking`.

pub mod sev_guest;
pub mod simulated;
pub mod vcek;
pub mod vtpm;

use std::path::PathBuf;
use std::str::FromStr;

pub use enclaveid_attest_verifier::Evidence;
use serde::Deserialize;
use thiserror::Error;

pub use vcek::{VcekChain, VcekSource};

/// Something that produces SEV-SNP evidence bound to caller-chosen `report_data`.
pub trait EvidenceProvider: Send + Sync {
    /// The provider's wire name: `simulated`, `sev-guest` or `vtpm`.
    fn name(&self) -> &'static str;

    /// Produces evidence whose binding carries `report_data` (directly in the SNP report for
    /// `sev-guest`/`simulated`, as `SHA-256(report_data)` in the quote for `vtpm`). Blocking.
    fn evidence(&self, report_data: [u8; 64]) -> Result<Evidence, ProviderError>;
}

/// Which back-end to build.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProviderKind {
    /// Azure CVM vTPM (HCL report + quote).
    Vtpm,
    /// `/dev/sev-guest` extended report.
    SevGuest,
    /// Software chain, for development and tests only.
    Simulated,
}

impl ProviderKind {
    /// The wire name.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::Vtpm => "vtpm",
            ProviderKind::SevGuest => "sev-guest",
            ProviderKind::Simulated => "simulated",
        }
    }
}

impl std::fmt::Display for ProviderKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ProviderKind {
    type Err = ProviderError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "vtpm" => Ok(ProviderKind::Vtpm),
            "sev-guest" => Ok(ProviderKind::SevGuest),
            "simulated" => Ok(ProviderKind::Simulated),
            other => Err(ProviderError::Config {
                field: "provider",
                value: other.to_owned(),
                reason: "must be one of vtpm, sev-guest, simulated".into(),
            }),
        }
    }
}

/// Default TCTI of the `vtpm` provider: the kernel's TPM resource manager.
pub const DEFAULT_TCTI: &str = "device:/dev/tpmrm0";
/// Default device of the `sev-guest` provider.
pub const DEFAULT_SEV_GUEST_DEVICE: &str = "/dev/sev-guest";
/// vTPM NV index that holds the Azure HCL report.
pub const HCL_REPORT_NV_INDEX: u32 = 0x0140_0001;
/// Persistent handle of the Azure vTPM attestation key.
pub const AK_HANDLE: u32 = 0x8100_0003;

/// Everything needed to build a provider. [`ProviderConfig::new`] fills in the defaults.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ProviderConfig {
    /// The back-end.
    pub kind: ProviderKind,
    /// `vtpm`: the TCTI (tpm2-tss syntax), e.g. `device:/dev/tpmrm0` or
    /// `swtpm:host=127.0.0.1,port=2321`. Default [`DEFAULT_TCTI`].
    #[serde(default = "default_tcti")]
    pub tcti: String,
    /// `vtpm`: NV index of the HCL report. Default [`HCL_REPORT_NV_INDEX`].
    #[serde(default = "default_nv_index")]
    pub hcl_nv_index: u32,
    /// `vtpm`: persistent handle of the AK. Default [`AK_HANDLE`].
    #[serde(default = "default_ak_handle")]
    pub ak_handle: u32,
    /// `sev-guest`: the device. Default [`DEFAULT_SEV_GUEST_DEVICE`].
    #[serde(default = "default_device")]
    pub sev_guest_device: PathBuf,
    /// `sev-guest`: the configfs-TSM report directory, used instead of the device when it
    /// exists. Default [`sev_guest::tsm::DEFAULT_TSM_REPORT_DIR`].
    #[serde(default = "default_tsm_dir")]
    pub tsm_report_dir: PathBuf,
    /// `sev-guest`: the VMPL to request the report at. Default 0.
    #[serde(default)]
    pub vmpl: u32,
    /// Where the VCEK (and the ASK/ARK) come from. Default [`VcekSource::Auto`]: the extended
    /// report's certificate table for `sev-guest`, Azure THIM for `vtpm`.
    #[serde(default)]
    pub vcek: VcekSource,
    /// A PEM file with the ASK and ARK (AMD KDS `cert_chain` form), used when the VCEK source
    /// gives only the VCEK.
    #[serde(default)]
    pub cert_chain: Option<PathBuf>,
    /// A directory where fetched VCEK chains are cached across restarts (none by default; the
    /// in-memory cache always applies).
    #[serde(default)]
    pub vcek_cache_dir: Option<PathBuf>,
    /// `simulated`: the `host_data` its reports carry (64 hex digits), e.g. the `policy-hash` of
    /// a pod policy, to rehearse a `host_data` allow-list. Default all zero.
    #[serde(default)]
    pub simulated_host_data: Option<String>,
}

fn default_tcti() -> String {
    DEFAULT_TCTI.to_owned()
}
fn default_nv_index() -> u32 {
    HCL_REPORT_NV_INDEX
}
fn default_ak_handle() -> u32 {
    AK_HANDLE
}
fn default_tsm_dir() -> PathBuf {
    PathBuf::from(sev_guest::tsm::DEFAULT_TSM_REPORT_DIR)
}
fn default_device() -> PathBuf {
    PathBuf::from(DEFAULT_SEV_GUEST_DEVICE)
}

impl ProviderConfig {
    /// A configuration with every default for the given back-end.
    #[must_use]
    pub fn new(kind: ProviderKind) -> Self {
        Self {
            kind,
            tcti: default_tcti(),
            hcl_nv_index: HCL_REPORT_NV_INDEX,
            ak_handle: AK_HANDLE,
            sev_guest_device: default_device(),
            tsm_report_dir: default_tsm_dir(),
            vmpl: 0,
            vcek: VcekSource::Auto,
            cert_chain: None,
            vcek_cache_dir: None,
            simulated_host_data: None,
        }
    }
}

/// Why a provider could not be built or could not produce evidence.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ProviderError {
    /// A configuration value is wrong.
    #[error("{field}={value:?}: {reason}")]
    Config {
        /// The field.
        field: &'static str,
        /// The value given.
        value: String,
        /// Why it is refused.
        reason: String,
    },
    /// The SEV guest device is absent (not an SNP guest, or not mapped into the container).
    #[error("SEV guest device {0} is missing: not an SEV-SNP guest, or the device is not mapped into this container")]
    DeviceMissing(PathBuf),
    /// The device, TPM or firmware failed.
    #[error("{what}: {reason}")]
    Device {
        /// What was being done.
        what: &'static str,
        /// The failure.
        reason: String,
    },
    /// The VCEK or its chain could not be had.
    #[error("VCEK: {0}")]
    Vcek(#[from] vcek::VcekError),
    /// The simulated chain failed.
    #[error("simulated provider: {0}")]
    Simulated(String),
}

/// Builds the configured back-end.
pub fn build(config: &ProviderConfig) -> Result<Box<dyn EvidenceProvider>, ProviderError> {
    Ok(match config.kind {
        ProviderKind::Simulated => {
            let mut fields = enclaveid_attest_verifier::simulated::ReportFields::default();
            if let Some(text) = &config.simulated_host_data {
                let bad = |reason: &str| ProviderError::Config {
                    field: "simulated-host-data",
                    value: text.clone(),
                    reason: reason.to_owned(),
                };
                let bytes = hex::decode(text).map_err(|_| bad("not hex"))?;
                fields.host_data = bytes
                    .try_into()
                    .map_err(|_| bad("must be 32 bytes (64 hex digits)"))?;
            }
            Box::new(simulated::SimulatedProvider::for_product(
                enclaveid_attest_verifier::Product::Milan,
                fields,
            )?)
        }
        ProviderKind::SevGuest => Box::new(sev_guest::SevGuestProvider::new(config)?),
        ProviderKind::Vtpm => Box::new(vtpm::VtpmProvider::new(config)?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_parse() {
        assert_eq!("vtpm".parse::<ProviderKind>().unwrap(), ProviderKind::Vtpm);
        assert_eq!(
            "sev-guest".parse::<ProviderKind>().unwrap(),
            ProviderKind::SevGuest
        );
        let err = "tdx".parse::<ProviderKind>().unwrap_err().to_string();
        assert!(err.contains("provider=\"tdx\""), "{err}");
    }

    #[test]
    fn config_defaults_and_unknown_fields() {
        let c: ProviderConfig = serde_yaml_ng::from_str("kind: vtpm\n").unwrap();
        assert_eq!(c, ProviderConfig::new(ProviderKind::Vtpm));
        let err = serde_yaml_ng::from_str::<ProviderConfig>("kind: vtpm\ntcit: x\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("tcit"), "{err}");
    }
}
