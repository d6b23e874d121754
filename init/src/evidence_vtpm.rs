//! The vTPM side of Secure Key Release on an Azure confidential VM (AKS CVM node pools).
//!
//! On a CVM the SNP report's `report_data` commits to the paravisor's runtime claims, not to
//! anything we choose, so the transfer key cannot ride in it. Azure's guest attestation binds
//! it through the vTPM instead, and this module does the TPM half of that:
//!
//! - the HCL report (NV `0x01400001`, the attest crate's index and parser), the AK
//!   (`0x81000003`), its public area (`TPM2B_PUBLIC`) and, if provisioned, its certificate
//!   (NV `0x01C101D0`); a quote of SHA-256 PCRs 0–7 (the PCRs Azure's Linux guest attestation
//!   quotes and binds the key to) by the AK over a fresh nonce, and their values;
//! - the transfer key: an RSA-2048 decrypt-only primary key in the NULL hierarchy
//!   (`fixedTPM | fixedParent | sensitiveDataOrigin`, no `sign`, no `userWithAuth`), whose use
//!   is gated by a `PolicyPCR` over PCRs 0–7, certified by the AK (`TPM2_Certify`, qualifying
//!   data = the nonce). Its private half never leaves the TPM: each decryption re-creates the
//!   same primary from its template (the NULL seed lasts until the next TPM reset; the
//!   template's `unique` field is 32 random bytes per release, which makes the key
//!   ephemeral), runs `TPM2_RSA_Decrypt` in a PCR policy session, and flushes it.
//!
//! The TPM is reached through a tpm2-tss TCTI string, one context per call (a TPM resource
//! manager flushes transient objects when a connection closes).

use std::path::PathBuf;
use std::str::FromStr as _;
use std::sync::Mutex;

use enclaveid_attest::provider::vcek::VcekResolver;
use enclaveid_attest::provider::{VcekSource, AK_HANDLE, HCL_REPORT_NV_INDEX};
use sha2::{Digest as _, Sha256};
use tss_esapi::abstraction::{nv, pcr};
use tss_esapi::attributes::ObjectAttributesBuilder;
use tss_esapi::constants::{CapabilityType, SessionType};
use tss_esapi::handles::{KeyHandle, NvIndexTpmHandle, TpmHandle};
use tss_esapi::interface_types::algorithm::{HashingAlgorithm, PublicAlgorithm};
use tss_esapi::interface_types::key_bits::RsaKeyBits;
use tss_esapi::interface_types::resource_handles::{Hierarchy, NvAuth};
use tss_esapi::interface_types::session_handles::{AuthSession, PolicySession};
use tss_esapi::structures::pcr_selection_list::PcrSelectionListBuilder;
use tss_esapi::structures::pcr_slot::PcrSlot;
use tss_esapi::structures::{
    CapabilityData, Data, Digest, HashScheme, Public, PublicBuilder, PublicKeyRsa,
    PublicRsaParametersBuilder, RsaDecryptionScheme, RsaExponent, RsaScheme, Signature,
    SignatureScheme, SymmetricDefinition,
};
use tss_esapi::tcti_ldr::TctiNameConf;
use tss_esapi::traits::Marshall as _;
use tss_esapi::Context;
use zeroize::Zeroizing;

/// NV index of the AK certificate Azure provisions beside the AK.
pub const AK_CERT_NV_INDEX: u32 = 0x01C1_01D0;
/// PCRs the transfer key's policy binds (those Azure's Linux guest attestation uses).
pub const POLICY_PCRS: std::ops::RangeInclusive<u8> = 0..=7;
/// `TPM_CC_PolicyPCR`.
const TPM_CC_POLICY_PCR: u32 = 0x0000_017F;
/// `TPM_ALG_SHA256`.
const TPM_ALG_SHA256: u16 = 0x000B;
/// Where Linux exposes the firmware's TCG event log.
pub const DEFAULT_TCG_LOG: &str = "/sys/kernel/security/tpm0/binary_bios_measurements";

/// Errors of the vTPM guest-attestation steps.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GuestTpmError {
    /// A setting is unusable.
    #[error("{field}={value:?}: {reason}")]
    Config {
        /// The flag.
        field: &'static str,
        /// Its value.
        value: String,
        /// Why.
        reason: String,
    },
    /// The HCL report or the VCEK chain is unusable.
    #[error("vtpm evidence: {0}")]
    Evidence(String),
    /// A TPM command failed.
    #[error("TPM {what}: {reason}")]
    Tpm {
        /// The step.
        what: &'static str,
        /// The TSS error.
        reason: String,
    },
    /// The re-created transfer key is not the one that was certified (the TPM was reset).
    #[error("the TPM transfer key changed since it was certified (TPM reset?)")]
    KeyChanged,
}

fn tpm(what: &'static str) -> impl Fn(tss_esapi::Error) -> GuestTpmError {
    move |e| GuestTpmError::Tpm {
        what,
        reason: e.to_string(),
    }
}

/// Where the vTPM and the VCEK chain are.
#[derive(Debug, Clone)]
pub struct VtpmOptions {
    /// tpm2-tss TCTI, e.g. `device:/dev/tpmrm0` or `swtpm:host=127.0.0.1,port=2321`.
    pub tcti: String,
    /// VCEK chain source for the SNP report inside the HCL report (`thim` or `file:PATH`).
    pub vcek: VcekSource,
    /// TCG event log to send along (absent file = empty log).
    pub tcg_log: PathBuf,
}

impl Default for VtpmOptions {
    fn default() -> Self {
        Self {
            tcti: "device:/dev/tpmrm0".into(),
            vcek: VcekSource::Auto,
            tcg_log: PathBuf::from(DEFAULT_TCG_LOG),
        }
    }
}

/// Names the transfer key inside the TPM so that it can be re-created for decryption.
#[derive(Clone)]
pub struct TpmKeyRef {
    unique: [u8; 32],
    policy: [u8; 32],
    /// The certified public area (`TPM2B_PUBLIC`).
    pub public_area: Vec<u8>,
    /// The RSA modulus, big-endian.
    pub modulus: Vec<u8>,
}

impl std::fmt::Debug for TpmKeyRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TpmKeyRef")
            .field("modulus_len", &self.modulus.len())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
impl TpmKeyRef {
    pub(crate) fn for_tests(modulus: Vec<u8>) -> Self {
        Self {
            unique: [0; 32],
            policy: [0; 32],
            public_area: Vec::new(),
            modulus,
        }
    }
}

/// Everything the guest attestation request carries from the TPM and the HCL report.
#[derive(Clone)]
pub struct GuestEvidence {
    /// The raw HCL report.
    pub hcl_report: Vec<u8>,
    /// The SNP report inside it.
    pub snp_report: Vec<u8>,
    /// The runtime claims (the HCL report's variable data) that `report_data` commits to.
    pub runtime_data: Vec<u8>,
    /// PEM of VCEK, ASK and ARK.
    pub vcek_chain_pem: String,
    /// The AK's `TPM2B_PUBLIC`.
    pub ak_public_area: Vec<u8>,
    /// The AK certificate (DER), if the platform provisioned one.
    pub ak_cert: Option<Vec<u8>>,
    /// The quote's `TPMS_ATTEST` and its raw RSASSA signature.
    pub quote: Vec<u8>,
    /// The quote signature.
    pub quote_signature: Vec<u8>,
    /// SHA-256 PCRs 0 to 7 as quoted.
    pub pcrs: Vec<[u8; 32]>,
    /// The transfer key.
    pub key: TpmKeyRef,
    /// `TPMS_ATTEST` of `TPM2_Certify` over the transfer key.
    pub certify_info: Vec<u8>,
    /// Its raw RSASSA signature by the AK.
    pub certify_signature: Vec<u8>,
    /// The TCG event log (may be empty).
    pub tcg_log: Vec<u8>,
}

impl std::fmt::Debug for GuestEvidence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuestEvidence")
            .field("hcl_report_len", &self.hcl_report.len())
            .field("ak_cert", &self.ak_cert.is_some())
            .finish_non_exhaustive()
    }
}

/// RSA decryption schemes the transfer key is used with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decryption {
    /// RSAES-PKCS1-v1_5 (MAA's encrypted token inner key).
    Pkcs1,
    /// RSA-OAEP with SHA-1 (AKV's `CKM_RSA_AES_KEY_WRAP`).
    OaepSha1,
    /// RSA-OAEP with SHA-256 (`RSA_AES_KEY_WRAP_256`).
    OaepSha256,
    /// RSA-OAEP with SHA-384 (`RSA_AES_KEY_WRAP_384`).
    OaepSha384,
}

/// The vTPM of this CVM.
#[derive(Debug)]
pub struct GuestTpm {
    tcti: String,
    vcek: VcekResolver,
    tcg_log: PathBuf,
    lock: Mutex<()>,
}

fn pcr_slots(range: std::ops::RangeInclusive<u8>) -> Vec<PcrSlot> {
    range
        .map(|i| match PcrSlot::try_from(1u32 << i) {
            Ok(slot) => slot,
            Err(_) => unreachable!("PCR indices 0..=23 are valid slots"),
        })
        .collect()
}

impl GuestTpm {
    /// Checks the options; the TPM is contacted per call.
    pub fn new(options: &VtpmOptions) -> Result<Self, GuestTpmError> {
        TctiNameConf::from_str(&options.tcti).map_err(|_| GuestTpmError::Config {
            field: "--tcti",
            value: options.tcti.clone(),
            reason: "not a tpm2-tss TCTI: use device:/dev/tpmrm0, swtpm:host=H,port=P, \
                     mssim:host=H,port=P or tabrmd:..."
                .into(),
        })?;
        let source = match &options.vcek {
            VcekSource::Auto | VcekSource::Report => {
                VcekSource::Thim(enclaveid_attest::provider::vcek::THIM_URL.to_owned())
            }
            other => other.clone(),
        };
        Ok(Self {
            tcti: options.tcti.clone(),
            vcek: VcekResolver::new(source, None, None),
            tcg_log: options.tcg_log.clone(),
            lock: Mutex::new(()),
        })
    }

    fn context(&self) -> Result<Context, GuestTpmError> {
        let conf = TctiNameConf::from_str(&self.tcti).map_err(tpm("parsing the TCTI"))?;
        Context::new(conf).map_err(|e| GuestTpmError::Tpm {
            what: "connecting",
            reason: format!("{} ({e})", self.tcti),
        })
    }

    /// Collects the evidence for one release: quote and certify over `nonce`, a fresh
    /// transfer key. Blocking.
    pub fn collect(&self, nonce: &[u8; 32]) -> Result<GuestEvidence, GuestTpmError> {
        let _guard = self
            .lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut context = self.context()?;
        let hcl_report = read_hcl_report(&mut context)?;
        let parsed = enclaveid_attest_verifier::hcl::HclReport::parse(&hcl_report)
            .map_err(|e| GuestTpmError::Evidence(format!("HCL report: {e}")))?;
        let chain = self
            .vcek
            .resolve(&parsed.snp_report, None)
            .map_err(|e| GuestTpmError::Evidence(e.to_string()))?;
        let mut vcek_chain_pem = String::new();
        for pem in [&chain.vcek, &chain.ask, &chain.ark] {
            vcek_chain_pem.push_str(pem.trim_end());
            vcek_chain_pem.push('\n');
        }

        let ak = ak_handle(&mut context)?;
        let (ak_public, _, _) = context
            .read_public(ak)
            .map_err(tpm("reading the AK public area"))?;
        let ak_cert = read_ak_cert(&mut context);
        let quote = quote_pcrs(&mut context, ak, nonce)?;

        let policy = pcr_policy_digest(&quote.pcrs);
        let unique: [u8; 32] = rand::random();
        let (handle, public) = create_transfer_key(&mut context, unique, policy)?;
        let certified = context.execute_with_sessions(
            (
                Some(AuthSession::Password),
                Some(AuthSession::Password),
                None,
            ),
            |ctx| {
                ctx.certify(
                    handle.into(),
                    ak,
                    Data::try_from(nonce.to_vec())?,
                    SignatureScheme::Null,
                )
            },
        );
        let flushed = context.flush_context(handle.into());
        let (certify, signature) = certified.map_err(tpm("TPM2_Certify of the transfer key"))?;
        flushed.map_err(tpm("flushing the transfer key"))?;
        let Signature::RsaSsa(signature) = signature else {
            return Err(GuestTpmError::Tpm {
                what: "TPM2_Certify",
                reason: "the AK did not sign with RSASSA".into(),
            });
        };
        Ok(GuestEvidence {
            snp_report: parsed.snp_report,
            runtime_data: parsed.var_data,
            hcl_report,
            vcek_chain_pem,
            ak_public_area: tpm2b_public(&ak_public)?,
            ak_cert,
            quote: quote.message,
            quote_signature: quote.signature,
            pcrs: quote.pcrs,
            key: TpmKeyRef {
                unique,
                policy,
                public_area: tpm2b_public(&public)?,
                modulus: rsa_modulus(&public)?,
            },
            certify_info: certify.marshall().map_err(tpm("marshalling TPMS_ATTEST"))?,
            certify_signature: signature.signature().value().to_vec(),
            tcg_log: std::fs::read(&self.tcg_log).unwrap_or_else(|e| {
                tracing::info!(path = %self.tcg_log.display(), error = %e, "no TCG event log; MAA gets an empty one");
                Vec::new()
            }),
        })
    }

    /// Decrypts `ciphertext` with the transfer key inside the TPM. Blocking.
    pub fn decrypt(
        &self,
        key: &TpmKeyRef,
        scheme: Decryption,
        ciphertext: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, GuestTpmError> {
        let _guard = self
            .lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut context = self.context()?;
        let (handle, public) = create_transfer_key(&mut context, key.unique, key.policy)?;
        let result = if rsa_modulus(&public)? == key.modulus {
            decrypt_in_policy(&mut context, handle, scheme, ciphertext)
        } else {
            Err(GuestTpmError::KeyChanged)
        };
        let flushed = context.flush_context(handle.into());
        let plaintext = result?;
        flushed.map_err(tpm("flushing the transfer key"))?;
        Ok(plaintext)
    }
}

/// A quote and the values it covers.
struct Quote {
    message: Vec<u8>,
    signature: Vec<u8>,
    pcrs: Vec<[u8; 32]>,
}

fn read_hcl_report(context: &mut Context) -> Result<Vec<u8>, GuestTpmError> {
    let index = NvIndexTpmHandle::new(HCL_REPORT_NV_INDEX).map_err(tpm("HCL NV index"))?;
    context.set_sessions((Some(AuthSession::Password), None, None));
    let hcl = nv::read_full(context, NvAuth::Owner, index);
    context.clear_sessions();
    hcl.map_err(tpm("reading the HCL report from NV 0x01400001"))
}

/// `TPM2_Quote` of SHA-256 PCRs 0–7 by the AK with `extraData` = `nonce`, and the PCR values.
fn quote_pcrs(
    context: &mut Context,
    ak: KeyHandle,
    nonce: &[u8; 32],
) -> Result<Quote, GuestTpmError> {
    let selection = PcrSelectionListBuilder::new()
        .with_selection(HashingAlgorithm::Sha256, &pcr_slots(POLICY_PCRS))
        .build()
        .map_err(tpm("PCR selection"))?;
    let (attest, signature) = context
        .execute_with_session(Some(AuthSession::Password), |ctx| {
            ctx.quote(
                ak,
                Data::try_from(nonce.to_vec())?,
                SignatureScheme::Null,
                selection.clone(),
            )
        })
        .map_err(tpm("TPM2_Quote"))?;
    let Signature::RsaSsa(signature) = signature else {
        return Err(GuestTpmError::Tpm {
            what: "TPM2_Quote",
            reason: "the AK did not sign with RSASSA (is it the Azure AK?)".into(),
        });
    };
    let values = pcr::read_all(context, selection).map_err(tpm("TPM2_PCR_Read"))?;
    let bank = values
        .pcr_bank(HashingAlgorithm::Sha256)
        .ok_or(GuestTpmError::Tpm {
            what: "TPM2_PCR_Read",
            reason: "no SHA-256 PCR bank".into(),
        })?;
    let pcrs = bank
        .into_iter()
        .map(|(_, digest)| {
            <[u8; 32]>::try_from(digest.value()).map_err(|_| GuestTpmError::Tpm {
                what: "TPM2_PCR_Read",
                reason: "a SHA-256 PCR is not 32 bytes".into(),
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Quote {
        message: attest.marshall().map_err(tpm("marshalling TPMS_ATTEST"))?,
        signature: signature.signature().value().to_vec(),
        pcrs,
    })
}

fn ak_handle(context: &mut Context) -> Result<KeyHandle, GuestTpmError> {
    let handle = TpmHandle::try_from(AK_HANDLE).map_err(tpm("AK handle"))?;
    context
        .tr_from_tpm_public(handle)
        .map(KeyHandle::from)
        .map_err(tpm("loading the AK handle"))
}

fn read_ak_cert(context: &mut Context) -> Option<Vec<u8>> {
    // Look before reading: reading an undefined index makes tpm2-tss log errors on stderr.
    let (defined, _) = context
        .get_capability(CapabilityType::Handles, AK_CERT_NV_INDEX, 1)
        .ok()?;
    let CapabilityData::Handles(handles) = defined else {
        return None;
    };
    if !handles.iter().any(|h| u32::from(*h) == AK_CERT_NV_INDEX) {
        tracing::debug!("no AK certificate in NV 0x01c101d0");
        return None;
    }
    let index = NvIndexTpmHandle::new(AK_CERT_NV_INDEX).ok()?;
    context.set_sessions((Some(AuthSession::Password), None, None));
    let cert = nv::read_full(context, NvAuth::Owner, index);
    context.clear_sessions();
    match cert {
        Ok(cert) => Some(cert),
        Err(e) => {
            tracing::debug!(error = %e, "no AK certificate in NV 0x01c101d0");
            None
        }
    }
}

/// The transfer key's template: RSA-2048, decrypt only, PCR policy, no user auth.
fn transfer_key_template(unique: [u8; 32], policy: [u8; 32]) -> Result<Public, GuestTpmError> {
    let attributes = ObjectAttributesBuilder::new()
        .with_fixed_tpm(true)
        .with_fixed_parent(true)
        .with_sensitive_data_origin(true)
        .with_user_with_auth(false)
        .with_no_da(true)
        .with_decrypt(true)
        .with_sign_encrypt(false)
        .with_restricted(false)
        .build()
        .map_err(tpm("transfer key attributes"))?;
    let rsa = PublicRsaParametersBuilder::new()
        .with_scheme(RsaScheme::Null)
        .with_key_bits(RsaKeyBits::Rsa2048)
        .with_exponent(RsaExponent::default())
        .with_is_decryption_key(true)
        .with_restricted(false)
        .build()
        .map_err(tpm("transfer key parameters"))?;
    PublicBuilder::new()
        .with_public_algorithm(PublicAlgorithm::Rsa)
        .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
        .with_object_attributes(attributes)
        .with_auth_policy(Digest::try_from(policy.to_vec()).map_err(tpm("policy digest"))?)
        .with_rsa_parameters(rsa)
        .with_rsa_unique_identifier(
            PublicKeyRsa::try_from(unique.to_vec()).map_err(tpm("unique field"))?,
        )
        .build()
        .map_err(tpm("transfer key template"))
}

fn create_transfer_key(
    context: &mut Context,
    unique: [u8; 32],
    policy: [u8; 32],
) -> Result<(KeyHandle, Public), GuestTpmError> {
    let template = transfer_key_template(unique, policy)?;
    let created = context
        .execute_with_session(Some(AuthSession::Password), |ctx| {
            ctx.create_primary(Hierarchy::Null, template, None, None, None, None)
        })
        .map_err(tpm("TPM2_CreatePrimary of the transfer key"))?;
    Ok((created.key_handle, created.out_public))
}

fn decrypt_in_policy(
    context: &mut Context,
    handle: KeyHandle,
    scheme: Decryption,
    ciphertext: &[u8],
) -> Result<Zeroizing<Vec<u8>>, GuestTpmError> {
    let session = context
        .start_auth_session(
            None,
            None,
            None,
            SessionType::Policy,
            SymmetricDefinition::Null,
            HashingAlgorithm::Sha256,
        )
        .map_err(tpm("starting the PCR policy session"))?
        .ok_or(GuestTpmError::Tpm {
            what: "starting the PCR policy session",
            reason: "no session handle".into(),
        })?;
    let policy_session =
        PolicySession::try_from(session).map_err(tpm("starting the PCR policy session"))?;
    let selection = PcrSelectionListBuilder::new()
        .with_selection(HashingAlgorithm::Sha256, &pcr_slots(POLICY_PCRS))
        .build()
        .map_err(tpm("PCR selection"))?;
    // An empty digest: the TPM takes the PCRs' current values, so a changed PCR fails here.
    context
        .execute_without_session(|ctx| ctx.policy_pcr(policy_session, Digest::default(), selection))
        .map_err(tpm("TPM2_PolicyPCR"))?;
    let scheme = match scheme {
        Decryption::Pkcs1 => RsaDecryptionScheme::RsaEs,
        Decryption::OaepSha1 => RsaDecryptionScheme::Oaep(HashScheme::new(HashingAlgorithm::Sha1)),
        Decryption::OaepSha256 => {
            RsaDecryptionScheme::Oaep(HashScheme::new(HashingAlgorithm::Sha256))
        }
        Decryption::OaepSha384 => {
            RsaDecryptionScheme::Oaep(HashScheme::new(HashingAlgorithm::Sha384))
        }
    };
    let cipher = PublicKeyRsa::try_from(ciphertext.to_vec()).map_err(tpm("ciphertext size"))?;
    let plain = context
        .execute_with_session(Some(session), |ctx| {
            ctx.rsa_decrypt(handle, cipher, scheme, Data::default())
        })
        .map_err(tpm("TPM2_RSA_Decrypt"))?;
    let _ = context.flush_context(tss_esapi::handles::SessionHandle::from(session).into());
    Ok(Zeroizing::new(plain.value().to_vec()))
}

/// `TPM2B_PUBLIC`: the big-endian size, then `TPMT_PUBLIC`.
fn tpm2b_public(public: &Public) -> Result<Vec<u8>, GuestTpmError> {
    let body = public.marshall().map_err(tpm("marshalling TPMT_PUBLIC"))?;
    let len = u16::try_from(body.len()).map_err(|_| GuestTpmError::Tpm {
        what: "marshalling TPMT_PUBLIC",
        reason: "longer than 64 KiB".into(),
    })?;
    let mut out = len.to_be_bytes().to_vec();
    out.extend_from_slice(&body);
    Ok(out)
}

fn rsa_modulus(public: &Public) -> Result<Vec<u8>, GuestTpmError> {
    match public {
        Public::Rsa { unique, .. } => Ok(unique.value().to_vec()),
        _ => Err(GuestTpmError::Tpm {
            what: "reading a public area",
            reason: "not an RSA key".into(),
        }),
    }
}

/// The `PolicyPCR` policy digest over SHA-256 PCRs 0–7 with the given values, computed as the
/// TPM does from an empty policy: `SHA-256(0³² ‖ TPM_CC_PolicyPCR ‖ TPML_PCR_SELECTION ‖
/// SHA-256(PCR0 ‖ … ‖ PCR7))`.
#[must_use]
pub fn pcr_policy_digest(pcrs: &[[u8; 32]]) -> [u8; 32] {
    let mut pcr_digest = Sha256::new();
    for pcr in pcrs {
        pcr_digest.update(pcr);
    }
    let mut select = [0u8; 3];
    for i in POLICY_PCRS {
        select[usize::from(i / 8)] |= 1 << (i % 8);
    }
    let mut policy = Sha256::new();
    policy.update([0u8; 32]);
    policy.update(TPM_CC_POLICY_PCR.to_be_bytes());
    policy.update(1u32.to_be_bytes());
    policy.update(TPM_ALG_SHA256.to_be_bytes());
    policy.update([3u8]);
    policy.update(select);
    policy.update(pcr_digest.finalize());
    policy.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_digest_depends_on_every_pcr() {
        let zero = [[0u8; 32]; 8];
        let base = pcr_policy_digest(&zero);
        for i in 0..8 {
            let mut pcrs = zero;
            pcrs[i][0] = 1;
            assert_ne!(pcr_policy_digest(&pcrs), base, "PCR {i}");
        }
    }

    #[test]
    fn a_bad_tcti_is_a_config_error() {
        let options = VtpmOptions {
            tcti: "bogus:x".into(),
            ..VtpmOptions::default()
        };
        let err = GuestTpm::new(&options).unwrap_err().to_string();
        assert!(err.contains("--tcti") && err.contains("bogus:x"), "{err}");
    }
}
