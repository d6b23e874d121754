//! A software ARK → ASK → VCEK chain and SNP report signer (feature `simulated`), for the
//! server's `simulated` provider and for tests. Development only.
//!
//! The chain has AMD's shape: RSA-4096 ARK and ASK, every certificate signed with RSASSA-PSS
//! SHA-384 salt 48, and a P-384 VCEK carrying AMD's extensions (product name, TCB SPLs, hwID).
//! Its names say what it is: the ARK is `ARK-Simulated-Milan`, the VCEK product name
//! `Simulated-Milan`, and its ARK is not one of the pinned AMD roots, so every verifier path
//! refuses it unless the policy sets `allow_simulated`. Key generation takes seconds (two
//! RSA-4096 keys): make one chain per process.

use std::str::FromStr as _;
use std::time::{Duration, SystemTime};

use der::asn1::{BitString, Ia5StringRef, OctetString};
use der::{Decode as _, Encode as _, EncodePem as _};
use rand_core::OsRng;
use rsa::pkcs8::EncodePublicKey as _;
use rsa::signature::{RandomizedSigner as _, SignatureEncoding as _, Signer as _};
use spki::{DynSignatureAlgorithmIdentifier as _, SubjectPublicKeyInfoOwned};
use x509_cert::certificate::{TbsCertificate, Version};
use x509_cert::ext::Extension;
use x509_cert::name::Name;
use x509_cert::serial_number::SerialNumber;
use x509_cert::time::{Time, Validity};
use x509_cert::Certificate;

use crate::certs::oids;
use crate::evidence::{Evidence, Provider};
use crate::product::{Product, SIMULATED_PREFIX};
use crate::report::{RawTcb, TcbVersion, REPORT_LEN, SIGNED_LEN};

/// Why a simulated chain could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SimulatedError {
    /// RSA key generation failed.
    #[error("generating an RSA-4096 key: {0}")]
    Rsa(#[from] rsa::Error),
    /// Certificate encoding failed.
    #[error("encoding a simulated certificate: {0}")]
    Der(#[from] der::Error),
    /// Key encoding failed.
    #[error("encoding a simulated public key: {0}")]
    Spki(#[from] spki::Error),
    /// Signing failed.
    #[error("signing a simulated certificate: {0}")]
    Signature(#[from] rsa::signature::Error),
}

/// How to make a simulated chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimulatedOptions {
    /// The product to imitate.
    pub product: Product,
    /// The TCB the VCEK is made for (and reports carry by default).
    pub tcb: TcbVersion,
    /// Validity of all three certificates, as durations since the Unix epoch.
    pub not_before: Duration,
    /// End of validity.
    pub not_after: Duration,
}

impl Default for SimulatedOptions {
    /// Milan, TCB bl=3 tee=0 snp=8 ucode=115, valid from a day ago for seven years.
    fn default() -> Self {
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        let day = Duration::from_hours(24);
        Self {
            product: Product::Milan,
            tcb: TcbVersion {
                fmc: None,
                bootloader: 3,
                tee: 0,
                snp: 8,
                microcode: 115,
            },
            not_before: now.saturating_sub(day),
            not_after: now + day * 365 * 7,
        }
    }
}

/// The fields of a report to sign; everything else is zero (or derived from the chain).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportFields {
    /// Report version (3 by default, so the CPUID product is set).
    pub version: u32,
    /// Guest policy (default `0x30000`: SMT allowed, debug off).
    pub policy: u64,
    /// VMPL (default 0).
    pub vmpl: u32,
    /// Launch measurement.
    pub measurement: [u8; 48],
    /// Host data.
    pub host_data: [u8; 32],
    /// The reported TCB; `None` = the chain's TCB.
    pub reported_tcb: Option<TcbVersion>,
    /// CPUID family and model; `None` = those of the chain's product.
    pub cpuid: Option<(u8, u8)>,
}

impl Default for ReportFields {
    fn default() -> Self {
        Self {
            version: 3,
            policy: 0x30000,
            vmpl: 0,
            measurement: [0x5A; 48],
            host_data: [0; 32],
            reported_tcb: None,
            cpuid: None,
        }
    }
}

/// A software chain and report signer.
pub struct SimulatedChain {
    options: SimulatedOptions,
    ark_pem: String,
    ask_pem: String,
    vcek_pem: String,
    vcek_key: p384::ecdsa::SigningKey,
    chip_id: [u8; 64],
}

impl std::fmt::Debug for SimulatedChain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimulatedChain")
            .field("options", &self.options)
            .field("chip_id", &hex::encode(self.chip_id))
            .field("vcek_key", &"<redacted>")
            .finish_non_exhaustive()
    }
}

fn name(cn: &str) -> Result<Name, der::Error> {
    Name::from_str(&format!("CN={cn},O=EnclaveID simulation (not AMD),C=US"))
}

fn ext(oid: der::asn1::ObjectIdentifier, value_der: Vec<u8>) -> Result<Extension, der::Error> {
    Ok(Extension {
        extn_id: oid,
        critical: false,
        extn_value: OctetString::new(value_der)?,
    })
}

fn spl_ext(oid: der::asn1::ObjectIdentifier, spl: u8) -> Result<Extension, der::Error> {
    ext(oid, u32::from(spl).to_der()?)
}

struct CertSpec<'a> {
    subject: &'a str,
    issuer: &'a str,
    spki: SubjectPublicKeyInfoOwned,
    extensions: Vec<Extension>,
}

fn issue(
    spec: CertSpec<'_>,
    signer: &rsa::pss::SigningKey<sha2::Sha384>,
    options: &SimulatedOptions,
) -> Result<Certificate, SimulatedError> {
    let time = |d: Duration| Time::try_from(SystemTime::UNIX_EPOCH + d);
    let tbs = TbsCertificate {
        version: Version::V3,
        serial_number: SerialNumber::new(&[0])?,
        signature: signer.signature_algorithm_identifier()?,
        issuer: name(spec.issuer)?,
        validity: Validity {
            not_before: time(options.not_before)?,
            not_after: time(options.not_after)?,
        },
        subject: name(spec.subject)?,
        subject_public_key_info: spec.spki,
        issuer_unique_id: None,
        subject_unique_id: None,
        extensions: if spec.extensions.is_empty() {
            None
        } else {
            Some(spec.extensions)
        },
    };
    let signature = signer.try_sign_with_rng(&mut OsRng, &tbs.to_der()?)?;
    Ok(Certificate {
        signature_algorithm: tbs.signature.clone(),
        tbs_certificate: tbs,
        signature: BitString::from_bytes(&signature.to_bytes())?,
    })
}

fn rsa_spki(
    key: &rsa::pss::SigningKey<sha2::Sha384>,
) -> Result<SubjectPublicKeyInfoOwned, SimulatedError> {
    let public = rsa::RsaPublicKey::from(key.as_ref());
    Ok(SubjectPublicKeyInfoOwned::from_der(
        public.to_public_key_der()?.as_bytes(),
    )?)
}

fn pem(cert: &Certificate) -> Result<String, der::Error> {
    cert.to_pem(der::pem::LineEnding::LF)
}

impl SimulatedChain {
    /// A Milan-like chain with the default options.
    pub fn new() -> Result<Self, SimulatedError> {
        Self::with_options(SimulatedOptions::default())
    }

    /// A chain with explicit product, TCB and validity.
    pub fn with_options(options: SimulatedOptions) -> Result<Self, SimulatedError> {
        let product = options.product;
        let sim = format!("{SIMULATED_PREFIX}{product}");
        let root_key = rsa::pss::SigningKey::<sha2::Sha384>::random(&mut OsRng, 4096)?;
        let inter_key = rsa::pss::SigningKey::<sha2::Sha384>::random(&mut OsRng, 4096)?;
        let vcek_key = p384::ecdsa::SigningKey::random(&mut OsRng);
        let mut chip_id = [0u8; 64];
        rand_core::RngCore::fill_bytes(&mut OsRng, &mut chip_id[..product.hwid_len()]);
        let (root_cn, inter_cn) = (format!("ARK-{sim}"), format!("SEV-{sim}"));
        let ark = issue(
            CertSpec {
                subject: &root_cn,
                issuer: &root_cn,
                spki: rsa_spki(&root_key)?,
                extensions: vec![],
            },
            &root_key,
            &options,
        )?;
        let ask = issue(
            CertSpec {
                subject: &inter_cn,
                issuer: &root_cn,
                spki: rsa_spki(&inter_key)?,
                extensions: vec![],
            },
            &root_key,
            &options,
        )?;
        let tcb = options.tcb;
        let mut extensions = vec![
            ext(oids::STRUCT_VERSION, 1u32.to_der()?)?,
            ext(oids::PRODUCT_NAME, Ia5StringRef::new(&sim)?.to_der()?)?,
            spl_ext(oids::BL_SPL, tcb.bootloader)?,
            spl_ext(oids::TEE_SPL, tcb.tee)?,
            spl_ext(oids::SNP_SPL, tcb.snp)?,
            spl_ext(oids::UCODE_SPL, tcb.microcode)?,
            Extension {
                extn_id: oids::HWID,
                critical: false,
                extn_value: OctetString::new(&chip_id[..product.hwid_len()])?,
            },
        ];
        if product.has_fmc() {
            extensions.push(spl_ext(oids::FMC_SPL, tcb.fmc.unwrap_or(0))?);
        }
        let vcek_spki_der = p384::PublicKey::from(vcek_key.verifying_key()).to_public_key_der()?;
        let vcek = issue(
            CertSpec {
                subject: "SEV-VCEK",
                issuer: &inter_cn,
                spki: SubjectPublicKeyInfoOwned::from_der(vcek_spki_der.as_bytes())?,
                extensions,
            },
            &inter_key,
            &options,
        )?;
        Ok(Self {
            ark_pem: pem(&ark)?,
            ask_pem: pem(&ask)?,
            vcek_pem: pem(&vcek)?,
            vcek_key,
            chip_id,
            options,
        })
    }

    /// The options the chain was made with.
    #[must_use]
    pub fn options(&self) -> &SimulatedOptions {
        &self.options
    }
    /// The ARK certificate (PEM).
    #[must_use]
    pub fn ark_pem(&self) -> &str {
        &self.ark_pem
    }
    /// The ASK certificate (PEM).
    #[must_use]
    pub fn ask_pem(&self) -> &str {
        &self.ask_pem
    }
    /// The VCEK certificate (PEM).
    #[must_use]
    pub fn vcek_pem(&self) -> &str {
        &self.vcek_pem
    }
    /// The chip ID the VCEK's hwID names.
    #[must_use]
    pub fn chip_id(&self) -> [u8; 64] {
        self.chip_id
    }

    /// Builds and signs a report carrying `report_data`.
    #[must_use]
    pub fn sign_report(&self, report_data: &[u8; 64], fields: &ReportFields) -> Vec<u8> {
        let product = self.options.product;
        let mut raw = vec![0u8; REPORT_LEN];
        let mut put = |at: usize, bytes: &[u8]| raw[at..at + bytes.len()].copy_from_slice(bytes);
        let tcb = RawTcb::encode(fields.reported_tcb.unwrap_or(self.options.tcb), product)
            .0
            .to_le_bytes();
        let chain_tcb = RawTcb::encode(self.options.tcb, product).0.to_le_bytes();
        put(0x00, &fields.version.to_le_bytes());
        put(0x04, &1u32.to_le_bytes());
        put(0x08, &fields.policy.to_le_bytes());
        put(0x30, &fields.vmpl.to_le_bytes());
        put(0x34, &1u32.to_le_bytes());
        put(0x38, &chain_tcb);
        put(0x40, &1u64.to_le_bytes());
        put(0x50, report_data);
        put(0x90, &fields.measurement);
        put(0xC0, &fields.host_data);
        put(0x180, &tcb);
        let (family, model) = fields.cpuid.unwrap_or(match product {
            Product::Milan => (0x19, 0x01),
            Product::Genoa => (0x19, 0x11),
            Product::Turin => (0x1A, 0x02),
        });
        if fields.version >= 3 {
            put(0x188, &[family, model, 1]);
        }
        put(0x1A0, &self.chip_id);
        put(0x1E0, &chain_tcb);
        put(0x1E8, &[0x10, 0x37, 1]);
        put(0x1EC, &[0x10, 0x37, 1]);
        put(0x1F0, &chain_tcb);
        self.resign(&mut raw);
        raw
    }

    /// Recomputes the VCEK signature of a (modified) raw report in place.
    pub fn resign(&self, raw: &mut [u8]) {
        if raw.len() != REPORT_LEN {
            return;
        }
        let sig: p384::ecdsa::Signature = self.vcek_key.sign(&raw[..SIGNED_LEN]);
        let (r, s) = sig.split_bytes();
        for (at, scalar) in [(0x2A0, r), (0x2E8, s)] {
            raw[at..at + 72].fill(0);
            for (i, b) in scalar.iter().rev().enumerate() {
                raw[at + i] = *b;
            }
        }
    }

    /// Evidence of the `simulated` provider for a report carrying `report_data`.
    #[must_use]
    pub fn evidence(&self, report_data: &[u8; 64], fields: &ReportFields) -> Evidence {
        let report = self.sign_report(report_data, fields);
        Evidence::new_report(
            Provider::Simulated,
            &report,
            &self.vcek_pem,
            &self.ask_pem,
            &self.ark_pem,
        )
    }

    /// An Azure-style HCL report whose SNP report commits to `var_data` (the runtime-claims
    /// JSON, see [`crate::hcl::claims_json`]).
    #[must_use]
    pub fn hcl_report(&self, var_data: &[u8], fields: &ReportFields) -> Vec<u8> {
        use sha2::Digest as _;
        let mut report_data = [0u8; 64];
        report_data[..32].copy_from_slice(&sha2::Sha256::digest(var_data));
        let report: [u8; REPORT_LEN] = self
            .sign_report(&report_data, fields)
            .try_into()
            .expect("sign_report returns exactly REPORT_LEN bytes");
        crate::hcl::build(&report, var_data)
    }
}
