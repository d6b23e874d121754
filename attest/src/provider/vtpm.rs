//! The `vtpm` provider for Azure confidential VMs (and swtpm in tests).
//!
//! Evidence is the HCL report (vTPM NV index `0x01400001`, written by the paravisor at boot: an
//! SNP report whose `report_data[0..32]` is SHA-256 of the JSON variable data that carries the
//! AK public key as a JWK with kid `HCLAkPub`), a TPM2 quote over all 24 SHA-256 PCRs by that AK
//! (persistent handle `0x81000003`) with qualifying data `SHA-256(binding64)`, the PCR values,
//! the AK public key and the VCEK chain (Azure THIM by default).
//!
//! The TPM is reached through a tpm2-tss TCTI string: `device:/dev/tpmrm0` by default,
//! `swtpm:host=127.0.0.1,port=N` for swtpm, `mssim:...`, `tabrmd:...`. A tss-esapi context is
//! opened per request and requests are serialised, so a restarted TPM daemon recovers by
//! itself and no long-lived session state exists.

use std::str::FromStr as _;
use std::sync::Mutex;

use enclaveid_attest_verifier::evidence::Provider;
use rsa::pkcs8::{EncodePublicKey as _, LineEnding};
use sha2::{Digest as _, Sha256};
use tss_esapi::abstraction::public::DecodedKey;
use tss_esapi::abstraction::{nv, pcr};
use tss_esapi::handles::{NvIndexTpmHandle, TpmHandle};
use tss_esapi::interface_types::algorithm::HashingAlgorithm;
use tss_esapi::interface_types::resource_handles::NvAuth;
use tss_esapi::interface_types::session_handles::AuthSession;
use tss_esapi::structures::pcr_selection_list::PcrSelectionListBuilder;
use tss_esapi::structures::pcr_slot::PcrSlot;
use tss_esapi::structures::{AttestInfo, Data, Signature, SignatureScheme};
use tss_esapi::tcti_ldr::TctiNameConf;
use tss_esapi::traits::Marshall as _;
use tss_esapi::Context;

use super::vcek::{VcekResolver, VcekSource};
use super::{Evidence, EvidenceProvider, ProviderConfig, ProviderError};

/// Offset of the SNP report inside the HCL report.
const HCL_SNP_REPORT_OFFSET: usize = 0x20;
/// Length of an SNP report.
const SNP_REPORT_LEN: usize = 1184;

const PCRS: [PcrSlot; 24] = [
    PcrSlot::Slot0,
    PcrSlot::Slot1,
    PcrSlot::Slot2,
    PcrSlot::Slot3,
    PcrSlot::Slot4,
    PcrSlot::Slot5,
    PcrSlot::Slot6,
    PcrSlot::Slot7,
    PcrSlot::Slot8,
    PcrSlot::Slot9,
    PcrSlot::Slot10,
    PcrSlot::Slot11,
    PcrSlot::Slot12,
    PcrSlot::Slot13,
    PcrSlot::Slot14,
    PcrSlot::Slot15,
    PcrSlot::Slot16,
    PcrSlot::Slot17,
    PcrSlot::Slot18,
    PcrSlot::Slot19,
    PcrSlot::Slot20,
    PcrSlot::Slot21,
    PcrSlot::Slot22,
    PcrSlot::Slot23,
];

/// Evidence from an Azure vTPM.
#[derive(Debug)]
pub struct VtpmProvider {
    tcti: String,
    nv_index: u32,
    ak_handle: u32,
    vcek: VcekResolver,
    lock: Mutex<()>,
}

/// A quote and what goes with it, as read from the TPM.
#[derive(Debug, Clone)]
pub struct TpmQuote {
    /// Marshalled `TPMS_ATTEST`.
    pub message: Vec<u8>,
    /// The raw RSASSA signature.
    pub signature: Vec<u8>,
    /// SHA-256 PCRs 0 to 23.
    pub pcrs: Vec<[u8; 32]>,
}

fn tpm_error(what: &'static str) -> impl Fn(tss_esapi::Error) -> ProviderError {
    move |e| ProviderError::Device {
        what,
        reason: e.to_string(),
    }
}

impl VtpmProvider {
    /// Checks the TCTI string; the TPM itself is contacted per request.
    pub fn new(config: &ProviderConfig) -> Result<Self, ProviderError> {
        TctiNameConf::from_str(&config.tcti).map_err(|_| ProviderError::Config {
            field: "tcti",
            value: config.tcti.clone(),
            reason: "not a tpm2-tss TCTI: use device:/dev/tpmrm0, swtpm:host=H,port=P, mssim:host=H,port=P or tabrmd:...".into(),
        })?;
        NvIndexTpmHandle::new(config.hcl_nv_index).map_err(|_| ProviderError::Config {
            field: "hcl-nv-index",
            value: format!("{:#x}", config.hcl_nv_index),
            reason: "not an NV index handle (0x01xxxxxx)".into(),
        })?;
        let source = match &config.vcek {
            VcekSource::Auto => VcekSource::Thim(super::vcek::THIM_URL.to_owned()),
            VcekSource::Report => {
                return Err(ProviderError::Config {
                    field: "vcek",
                    value: "report".into(),
                    reason: "the vtpm provider has no extended report; use thim or file:PATH"
                        .into(),
                })
            }
            other => other.clone(),
        };
        Ok(Self {
            tcti: config.tcti.clone(),
            nv_index: config.hcl_nv_index,
            ak_handle: config.ak_handle,
            vcek: VcekResolver::new(
                source,
                config.cert_chain.clone(),
                config.vcek_cache_dir.clone(),
            ),
            lock: Mutex::new(()),
        })
    }

    fn context(&self) -> Result<Context, ProviderError> {
        let conf = TctiNameConf::from_str(&self.tcti).map_err(tpm_error("parsing the TCTI"))?;
        Context::new(conf).map_err(|e| ProviderError::Device {
            what: "connecting to the TPM",
            reason: format!("{} ({e})", self.tcti),
        })
    }

    /// Reads the HCL report, the AK public key (SPKI PEM) and a quote over `extra_data`.
    pub fn read(
        &self,
        extra_data: &[u8; 32],
    ) -> Result<(Vec<u8>, String, TpmQuote), ProviderError> {
        let _guard = self
            .lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut context = self.context()?;

        let nv_index = NvIndexTpmHandle::new(self.nv_index).map_err(tpm_error("NV index"))?;
        context.set_sessions((Some(AuthSession::Password), None, None));
        let hcl = nv::read_full(&mut context, NvAuth::Owner, nv_index)
            .map_err(tpm_error("reading the HCL report from NV"))?;
        context.clear_sessions();

        let ak_tpm: TpmHandle =
            TpmHandle::try_from(self.ak_handle).map_err(tpm_error("AK handle"))?;
        let ak = context
            .tr_from_tpm_public(ak_tpm)
            .map_err(tpm_error("loading the AK handle"))?;
        let (public, _, _) = context
            .read_public(ak.into())
            .map_err(tpm_error("reading the AK public key"))?;
        let ak_pem = ak_pem(public)?;

        let selection = PcrSelectionListBuilder::new()
            .with_selection(HashingAlgorithm::Sha256, &PCRS)
            .build()
            .map_err(tpm_error("PCR selection"))?;
        let data = Data::try_from(extra_data.to_vec()).map_err(tpm_error("qualifying data"))?;
        context.set_sessions((Some(AuthSession::Password), None, None));
        let (attest, signature) = context
            .quote(ak.into(), data, SignatureScheme::Null, selection.clone())
            .map_err(tpm_error("TPM2_Quote"))?;
        context.clear_sessions();
        if !matches!(attest.attested(), AttestInfo::Quote { .. }) {
            return Err(ProviderError::Device {
                what: "TPM2_Quote",
                reason: "the TPM returned an attestation that is not a quote".into(),
            });
        }
        let Signature::RsaSsa(rsa) = signature else {
            return Err(ProviderError::Device {
                what: "TPM2_Quote",
                reason: "the AK did not sign with RSASSA (is it the Azure AK?)".into(),
            });
        };
        let message = attest
            .marshall()
            .map_err(tpm_error("marshalling TPMS_ATTEST"))?;
        let pcr_data = pcr::read_all(&mut context, selection).map_err(tpm_error("PCR_Read"))?;
        let bank =
            pcr_data
                .pcr_bank(HashingAlgorithm::Sha256)
                .ok_or_else(|| ProviderError::Device {
                    what: "PCR_Read",
                    reason: "the TPM has no SHA-256 PCR bank".into(),
                })?;
        let pcrs = bank
            .into_iter()
            .map(|(_, digest)| {
                <[u8; 32]>::try_from(digest.value()).map_err(|_| ProviderError::Device {
                    what: "PCR_Read",
                    reason: "a SHA-256 PCR is not 32 bytes".into(),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok((
            hcl,
            ak_pem,
            TpmQuote {
                message,
                signature: rsa.signature().to_vec(),
                pcrs,
            },
        ))
    }
}

fn ak_pem(public: tss_esapi::structures::Public) -> Result<String, ProviderError> {
    let not_rsa = || ProviderError::Device {
        what: "reading the AK public key",
        reason: "the AK is not an RSA key".into(),
    };
    let decoded = DecodedKey::try_from(public).map_err(|_| not_rsa())?;
    let DecodedKey::RsaPublicKey(key) = decoded else {
        return Err(not_rsa());
    };
    let n = rsa::BigUint::from_bytes_be(key.modulus.as_unsigned_bytes_be());
    let e = rsa::BigUint::from_bytes_be(key.public_exponent.as_unsigned_bytes_be());
    let key = rsa::RsaPublicKey::new(n, e).map_err(|e| ProviderError::Device {
        what: "reading the AK public key",
        reason: e.to_string(),
    })?;
    key.to_public_key_pem(LineEnding::LF)
        .map_err(|e| ProviderError::Device {
            what: "encoding the AK public key",
            reason: e.to_string(),
        })
}

impl EvidenceProvider for VtpmProvider {
    fn name(&self) -> &'static str {
        "vtpm"
    }

    fn evidence(&self, report_data: [u8; 64]) -> Result<Evidence, ProviderError> {
        let extra_data: [u8; 32] = Sha256::digest(report_data).into();
        let (hcl, ak_pem, quote) = self.read(&extra_data)?;
        let snp = hcl
            .get(HCL_SNP_REPORT_OFFSET..HCL_SNP_REPORT_OFFSET + SNP_REPORT_LEN)
            .ok_or_else(|| ProviderError::Device {
                what: "reading the HCL report from NV",
                reason: format!("{} bytes, too short to hold an SNP report", hcl.len()),
            })?;
        let chain = self.vcek.resolve(snp, None)?;
        Ok(
            Evidence::new_report(Provider::Vtpm, snp, &chain.vcek, &chain.ask, &chain.ark)
                .with_vtpm(&hcl, &quote.message, &quote.signature, &quote.pcrs, &ak_pem),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::ProviderKind;

    #[test]
    fn config_is_checked() {
        let mut config = ProviderConfig::new(ProviderKind::Vtpm);
        config.tcti = "bogus:x".into();
        let err = VtpmProvider::new(&config).unwrap_err().to_string();
        assert!(err.contains("tcti=\"bogus:x\""), "{err}");

        let mut config = ProviderConfig::new(ProviderKind::Vtpm);
        config.vcek = VcekSource::Report;
        assert!(VtpmProvider::new(&config).is_err());
    }

    #[test]
    fn unreachable_tpm_is_a_clean_error() {
        // Port 1 on loopback: nothing listens there.
        let mut config = ProviderConfig::new(ProviderKind::Vtpm);
        config.tcti = "swtpm:host=127.0.0.1,port=1".into();
        let provider = VtpmProvider::new(&config).unwrap();
        let err = provider.evidence([0; 64]).unwrap_err().to_string();
        assert!(err.contains("TPM"), "{err}");
    }
}
