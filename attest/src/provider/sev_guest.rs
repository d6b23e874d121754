//! The `sev-guest` provider: an extended attestation report with our `report_data`, plus the
//! VCEK chain (from the report's certificate table by default).
//!
//! The report comes from the kernel's configfs-TSM interface ([`tsm`], Linux 6.7+) when its
//! directory exists, else (or if that fails) from the `SNP_GET_EXT_REPORT` ioctl on
//! `/dev/sev-guest` (Linux 5.19+).
//!
//! The only `unsafe` code of the crate is the ioctl in [`ioctl`]; [`abi`] holds the byte
//! layouts. The device is opened per request (it is cheap, and a container that loses the
//! device mapping gets a clean error rather than a stale descriptor), and requests are
//! serialised: the driver handles one guest message at a time anyway.

pub mod abi;
mod ioctl;
pub mod tsm;

use std::fs::OpenOptions;
use std::path::PathBuf;
use std::sync::Mutex;

use enclaveid_attest_verifier::evidence::Provider;
use tracing::debug;

pub use abi::CertTable;

use super::vcek::{VcekResolver, VcekSource};
use super::{Evidence, EvidenceProvider, ProviderConfig, ProviderError};

/// Reads extended reports from the SEV guest device.
#[derive(Debug)]
pub struct SevGuestProvider {
    device: PathBuf,
    tsm_dir: PathBuf,
    vmpl: u32,
    vcek: VcekResolver,
    lock: Mutex<()>,
}

impl SevGuestProvider {
    /// Checks the configuration; the device itself is opened per request, so a missing device
    /// shows as a provider failure (503) rather than preventing start-up.
    pub fn new(config: &ProviderConfig) -> Result<Self, ProviderError> {
        if config.vmpl > 3 {
            return Err(ProviderError::Config {
                field: "vmpl",
                value: config.vmpl.to_string(),
                reason: "must be 0 to 3".into(),
            });
        }
        let source = match &config.vcek {
            VcekSource::Auto => VcekSource::Report,
            other => other.clone(),
        };
        Ok(Self {
            device: config.sev_guest_device.clone(),
            tsm_dir: config.tsm_report_dir.clone(),
            vmpl: config.vmpl,
            vcek: VcekResolver::new(
                source,
                config.cert_chain.clone(),
                config.vcek_cache_dir.clone(),
            ),
            lock: Mutex::new(()),
        })
    }

    /// One extended report: the raw report and the certificate table. configfs-TSM first
    /// when present, then the ioctl; if both fail, the error names both.
    pub fn extended_report(
        &self,
        report_data: &[u8; 64],
    ) -> Result<(Vec<u8>, CertTable), ProviderError> {
        let _guard = self
            .lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if self.tsm_dir.is_dir() {
            match tsm::extended_report(&self.tsm_dir, report_data, self.vmpl) {
                Ok(answer) => return Ok(answer),
                Err(tsm_error) => {
                    return self.ioctl_report(report_data).map_err(|ioctl_error| {
                        ProviderError::Device {
                            what: "extended report",
                            reason: format!("configfs-tsm: {tsm_error}; ioctl: {ioctl_error}"),
                        }
                    });
                }
            }
        }
        self.ioctl_report(report_data)
    }

    fn ioctl_report(&self, report_data: &[u8; 64]) -> Result<(Vec<u8>, CertTable), ProviderError> {
        let device = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&self.device)
            .map_err(|e| {
                if e.kind() == std::io::ErrorKind::NotFound {
                    ProviderError::DeviceMissing(self.device.clone())
                } else {
                    ProviderError::Device {
                        what: "opening the SEV guest device",
                        reason: format!("{}: {e}", self.device.display()),
                    }
                }
            })?;
        let mut response = Box::new([0u8; abi::REPORT_RESP_LEN]);
        let mut certs = vec![0u8; abi::CERTS_BUFFER_LEN];
        let outcome =
            ioctl::get_ext_report(&device, report_data, self.vmpl, &mut response, &mut certs);
        let (fw_error, vmm_error) = abi::guest_request_errors(&outcome.guest_request);
        if let Err(error) = outcome.result {
            let reason = if vmm_error == abi::VMM_ERR_INVALID_LEN {
                format!(
                    "the host's certificates need {} bytes, more than the driver's {}-byte limit",
                    abi::ext_report_certs_len(&outcome.ext_request),
                    abi::CERTS_BUFFER_LEN
                )
            } else {
                format!("{error} (firmware error {fw_error:#x}, VMM error {vmm_error:#x})")
            };
            return Err(ProviderError::Device {
                what: "SNP_GET_EXT_REPORT",
                reason,
            });
        }
        let report =
            abi::report_from_response(&response[..]).map_err(|e| ProviderError::Device {
                what: "decoding the report response",
                reason: e.to_string(),
            })?;
        // A host that attaches no certificates leaves the buffer zeroed: an empty table.
        let table = abi::parse_cert_table(&certs).map_err(|e| ProviderError::Device {
            what: "decoding the certificate table",
            reason: e.to_string(),
        })?;
        debug!(
            vcek = table.vcek.is_some(),
            ask = table.ask.is_some(),
            ark = table.ark.is_some(),
            "extended report"
        );
        Ok((report, table))
    }
}

impl EvidenceProvider for SevGuestProvider {
    fn name(&self) -> &'static str {
        "sev-guest"
    }

    fn evidence(&self, report_data: [u8; 64]) -> Result<Evidence, ProviderError> {
        let (report, table) = self.extended_report(&report_data)?;
        let chain = self.vcek.resolve(&report, Some(&table))?;
        Ok(Evidence::new_report(
            Provider::SevGuest,
            &report,
            &chain.vcek,
            &chain.ask,
            &chain.ark,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::ProviderKind;

    #[test]
    fn missing_device_is_a_clean_error() {
        let mut config = ProviderConfig::new(ProviderKind::SevGuest);
        config.sev_guest_device = PathBuf::from("/nonexistent/sev-guest");
        config.tsm_report_dir = PathBuf::from("/nonexistent/tsm");
        let provider = SevGuestProvider::new(&config).unwrap();
        let err = provider.evidence([0; 64]).unwrap_err();
        assert!(matches!(err, ProviderError::DeviceMissing(_)), "{err}");
        assert!(err.to_string().contains("/nonexistent/sev-guest"), "{err}");
    }

    #[test]
    fn a_device_that_is_not_sev_guest_fails_cleanly() {
        // /dev/null accepts open but rejects the ioctl (ENOTTY): an error, never a panic.
        let mut config = ProviderConfig::new(ProviderKind::SevGuest);
        config.sev_guest_device = PathBuf::from("/dev/null");
        config.tsm_report_dir = PathBuf::from("/nonexistent/tsm");
        let provider = SevGuestProvider::new(&config).unwrap();
        let err = provider.evidence([0; 64]).unwrap_err().to_string();
        assert!(err.contains("SNP_GET_EXT_REPORT"), "{err}");
    }

    #[test]
    fn vmpl_is_checked() {
        let mut config = ProviderConfig::new(ProviderKind::SevGuest);
        config.vmpl = 4;
        let err = SevGuestProvider::new(&config).unwrap_err().to_string();
        assert!(err.contains("vmpl=\"4\""), "{err}");
    }
}
