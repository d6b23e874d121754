//! The AMD certificate chain: ARK (self-signed root) → ASK → VCEK.
//!
//! ARK and ASK are RSA-4096 keys and every certificate in the chain is signed with RSASSA-PSS,
//! SHA-384, MGF1-SHA-384, salt 48. The VCEK key is ECDSA P-384 and signs reports. The ARK is not
//! trusted because it comes with the evidence: its `SubjectPublicKeyInfo` must hash to one of the
//! pins below, one per product. The VCEK carries AMD extensions (OIDs under
//! `1.3.6.1.4.1.3704.1`): the product name, the TCB SPLs it was derived for and the chip's hwID.

use std::time::{Duration, SystemTime};

use der::asn1::{Ia5StringRef, ObjectIdentifier};
use der::{Decode, Encode};
use rsa::pkcs1::{DecodeRsaPublicKey, RsaPssParams};
use rsa::signature::Verifier as _;
use x509_cert::Certificate;

use crate::product::Product;
use crate::report::TcbVersion;

/// SHA-256 of the `SubjectPublicKeyInfo` of each genuine AMD ARK (hex). The test
/// `tests/real_vectors.rs` recomputes them from the public ARK certificates.
pub const ARK_SPKI_PINS: [(Product, &str); 3] = [
    (
        Product::Milan,
        "9f056bee44377e29308cb5ffa895bdfb62d18881fa6bed8d6f075b0204089cb9",
    ),
    (
        Product::Genoa,
        "429a69c9422aa258ee4d8db5fcda9c6470ef15f8cd5a9cebd6cbc7d90b863831",
    ),
    (
        Product::Turin,
        "4f125410563a2ab9a50356f9243f6fe0b6f73de98603f53f90339c70e9d7ad08",
    ),
];

/// AMD's VCEK extension OIDs.
pub mod oids {
    use der::asn1::ObjectIdentifier;
    /// Structure version.
    pub const STRUCT_VERSION: ObjectIdentifier =
        ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.1");
    /// Product name (`IA5String`), e.g. `Milan-B0`.
    pub const PRODUCT_NAME: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.2");
    /// Boot loader SPL.
    pub const BL_SPL: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.3.1");
    /// TEE SPL.
    pub const TEE_SPL: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.3.2");
    /// SNP SPL.
    pub const SNP_SPL: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.3.3");
    /// Microcode SPL.
    pub const UCODE_SPL: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.3.8");
    /// FMC SPL (Turin).
    pub const FMC_SPL: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.3.9");
    /// Hardware ID (raw octets) = the report's chip ID.
    pub const HWID: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.4");
    /// RSASSA-PSS.
    pub const RSASSA_PSS: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.10");
    /// SHA-384.
    pub const SHA384: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.2");
    /// id-ecPublicKey.
    pub const EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
    /// secp384r1.
    pub const SECP384R1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.34");
    /// Common name.
    pub const COMMON_NAME: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.4.3");
}

/// Why a certificate or chain was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum CertError {
    /// The bytes are not a certificate (PEM or DER).
    #[error("{which}: not a valid certificate: {reason}")]
    Parse {
        /// Which certificate.
        which: &'static str,
        /// Parser message.
        reason: String,
    },
    /// The signature algorithm is not RSASSA-PSS SHA-384 salt 48.
    #[error("{which}: signature algorithm is not RSASSA-PSS with SHA-384 and salt 48 ({found})")]
    Algorithm {
        /// Which certificate.
        which: &'static str,
        /// What was found.
        found: String,
    },
    /// The issuer key is not a usable RSA key.
    #[error("{which}: issuer key is not an RSA public key: {reason}")]
    IssuerKey {
        /// Which certificate.
        which: &'static str,
        /// Why.
        reason: String,
    },
    /// The signature does not verify under the issuer key.
    #[error("{which}: signature does not verify under {issuer}")]
    Signature {
        /// Which certificate.
        which: &'static str,
        /// The issuer.
        issuer: &'static str,
    },
    /// A VCEK extension is missing or malformed.
    #[error("vcek: extension {oid} is {problem}")]
    Extension {
        /// The OID.
        oid: ObjectIdentifier,
        /// `missing` or `malformed`.
        problem: &'static str,
    },
    /// The VCEK key is not a P-384 ECDSA key.
    #[error("vcek: public key is not ECDSA P-384")]
    VcekKey,
}

/// Parses one certificate from PEM (the first block) or DER.
pub fn parse_cert(which: &'static str, input: &[u8]) -> Result<Certificate, CertError> {
    let parse_err = |e: der::Error| CertError::Parse {
        which,
        reason: e.to_string(),
    };
    if input.trim_ascii_start().starts_with(b"-----BEGIN") {
        let chain = Certificate::load_pem_chain(input).map_err(parse_err)?;
        chain.into_iter().next().ok_or(CertError::Parse {
            which,
            reason: "no PEM certificate".into(),
        })
    } else {
        Certificate::from_der(input).map_err(parse_err)
    }
}

/// Parses every PEM certificate in `input` (e.g. a KDS `cert_chain` or a THIM bundle).
pub fn parse_pem_chain(which: &'static str, input: &[u8]) -> Result<Vec<Certificate>, CertError> {
    Certificate::load_pem_chain(input).map_err(|e| CertError::Parse {
        which,
        reason: e.to_string(),
    })
}

/// SHA-256 of a certificate's `SubjectPublicKeyInfo` (DER).
#[must_use]
pub fn spki_sha256(cert: &Certificate) -> [u8; 32] {
    use sha2::Digest as _;
    let der = cert
        .tbs_certificate
        .subject_public_key_info
        .to_der()
        .expect("a decoded SubjectPublicKeyInfo re-encodes");
    sha2::Sha256::digest(der).into()
}

/// The product whose pinned ARK has this certificate's key, if any.
#[must_use]
pub fn pinned_product(ark: &Certificate) -> Option<Product> {
    let found = hex::encode(spki_sha256(ark));
    ARK_SPKI_PINS
        .iter()
        .find(|(_, pin)| *pin == found)
        .map(|(p, _)| *p)
}

/// The common name of a subject or issuer, if it has one as a string.
#[must_use]
pub fn common_name(name: &x509_cert::name::Name) -> Option<String> {
    name.0
        .iter()
        .flat_map(|rdn| rdn.0.iter())
        .find(|a| a.oid == oids::COMMON_NAME)
        .and_then(|a| {
            let tag = der::Tagged::tag(&a.value);
            let string_tags = [
                der::Tag::Utf8String,
                der::Tag::PrintableString,
                der::Tag::Ia5String,
            ];
            if string_tags.contains(&tag) {
                std::str::from_utf8(a.value.value()).ok().map(str::to_owned)
            } else {
                None
            }
        })
}

/// The product named in a CN such as `ARK-Milan`, `SEV-Genoa` or `SEV-Simulated-Turin`.
#[must_use]
pub fn product_from_cn(cn: &str) -> Option<(Product, bool)> {
    let rest = cn
        .strip_prefix("ARK-")
        .or_else(|| cn.strip_prefix("SEV-"))?;
    Product::from_name(rest)
}

fn check_pss_algorithm(which: &'static str, cert: &Certificate) -> Result<(), CertError> {
    let alg = &cert.signature_algorithm;
    let found = || CertError::Algorithm {
        which,
        found: alg.oid.to_string(),
    };
    if alg.oid != oids::RSASSA_PSS {
        return Err(found());
    }
    let params_der = alg
        .parameters
        .as_ref()
        .ok_or_else(found)?
        .to_der()
        .map_err(|_| found())?;
    let params = RsaPssParams::from_der(&params_der).map_err(|_| found())?;
    let mgf_hash = params.mask_gen.parameters.map(|p| p.oid);
    if params.hash.oid != oids::SHA384 || mgf_hash != Some(oids::SHA384) || params.salt_len != 48 {
        return Err(CertError::Algorithm {
            which,
            found: format!("hash {} salt {}", params.hash.oid, params.salt_len),
        });
    }
    Ok(())
}

/// Verifies that `child` is signed by `issuer`'s RSA key with RSASSA-PSS SHA-384 salt 48.
pub fn verify_signed_by(
    which: &'static str,
    child: &Certificate,
    issuer_name: &'static str,
    issuer: &Certificate,
) -> Result<(), CertError> {
    check_pss_algorithm(which, child)?;
    let key_bits = issuer
        .tbs_certificate
        .subject_public_key_info
        .subject_public_key
        .raw_bytes();
    let key = rsa::RsaPublicKey::from_pkcs1_der(key_bits).map_err(|e| CertError::IssuerKey {
        which,
        reason: e.to_string(),
    })?;
    let verifying = rsa::pss::VerifyingKey::<sha2::Sha384>::new(key);
    let tbs = child
        .tbs_certificate
        .to_der()
        .map_err(|e| CertError::Parse {
            which,
            reason: e.to_string(),
        })?;
    let sig_bytes = child.signature.as_bytes().ok_or(CertError::Signature {
        which,
        issuer: issuer_name,
    })?;
    let sig = rsa::pss::Signature::try_from(sig_bytes).map_err(|_| CertError::Signature {
        which,
        issuer: issuer_name,
    })?;
    verifying
        .verify(&tbs, &sig)
        .map_err(|_| CertError::Signature {
            which,
            issuer: issuer_name,
        })
}

/// Seconds since the Unix epoch of a certificate's notBefore and notAfter.
#[must_use]
pub fn validity_window(cert: &Certificate) -> (Duration, Duration) {
    let v = &cert.tbs_certificate.validity;
    (
        v.not_before.to_unix_duration(),
        v.not_after.to_unix_duration(),
    )
}

/// True if `now` lies within the certificate's validity.
#[must_use]
pub fn valid_at(cert: &Certificate, now: SystemTime) -> bool {
    let Ok(now) = now.duration_since(SystemTime::UNIX_EPOCH) else {
        return false;
    };
    let (not_before, not_after) = validity_window(cert);
    not_before <= now && now <= not_after
}

/// Formats a Unix-epoch duration as an RFC 3339 UTC timestamp.
#[must_use]
pub fn format_time(t: Duration) -> String {
    der::DateTime::from_unix_duration(t)
        .map_or_else(|_| format!("@{}", t.as_secs()), |d| d.to_string())
}

/// What a VCEK says about itself through AMD's extensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VcekInfo {
    /// The product-name extension, e.g. `Milan-B0`.
    pub product_name: String,
    /// The product, and whether the name marks a simulated chain.
    pub product: Option<(Product, bool)>,
    /// The TCB the VCEK was derived for (FMC present only if the extension is).
    pub tcb: TcbVersion,
    /// The hwID: 64 bytes before Turin, 8 bytes on Turin.
    pub hwid: Vec<u8>,
}

fn extension(cert: &Certificate, oid: ObjectIdentifier) -> Option<&[u8]> {
    cert.tbs_certificate
        .extensions
        .as_ref()?
        .iter()
        .find(|e| e.extn_id == oid)
        .map(|e| e.extn_value.as_bytes())
}

fn spl(cert: &Certificate, oid: ObjectIdentifier) -> Result<Option<u8>, CertError> {
    let Some(bytes) = extension(cert, oid) else {
        return Ok(None);
    };
    let value = u32::from_der(bytes).map_err(|_| CertError::Extension {
        oid,
        problem: "malformed",
    })?;
    u8::try_from(value)
        .map(Some)
        .map_err(|_| CertError::Extension {
            oid,
            problem: "out of range",
        })
}

fn required_spl(cert: &Certificate, oid: ObjectIdentifier) -> Result<u8, CertError> {
    spl(cert, oid)?.ok_or(CertError::Extension {
        oid,
        problem: "missing",
    })
}

impl VcekInfo {
    /// Reads the AMD extensions of a VCEK.
    pub fn from_cert(vcek: &Certificate) -> Result<Self, CertError> {
        let name_der = extension(vcek, oids::PRODUCT_NAME).ok_or(CertError::Extension {
            oid: oids::PRODUCT_NAME,
            problem: "missing",
        })?;
        let product_name = Ia5StringRef::from_der(name_der)
            .map_err(|_| CertError::Extension {
                oid: oids::PRODUCT_NAME,
                problem: "malformed",
            })?
            .to_string();
        let hwid = extension(vcek, oids::HWID)
            .ok_or(CertError::Extension {
                oid: oids::HWID,
                problem: "missing",
            })?
            .to_vec();
        Ok(Self {
            product: Product::from_name(&product_name),
            product_name,
            tcb: TcbVersion {
                fmc: spl(vcek, oids::FMC_SPL)?,
                bootloader: required_spl(vcek, oids::BL_SPL)?,
                tee: required_spl(vcek, oids::TEE_SPL)?,
                snp: required_spl(vcek, oids::SNP_SPL)?,
                microcode: required_spl(vcek, oids::UCODE_SPL)?,
            },
            hwid,
        })
    }
}

/// The VCEK's P-384 verifying key.
pub fn vcek_key(vcek: &Certificate) -> Result<p384::ecdsa::VerifyingKey, CertError> {
    let spki = &vcek.tbs_certificate.subject_public_key_info;
    if spki.algorithm.oid != oids::EC_PUBLIC_KEY {
        return Err(CertError::VcekKey);
    }
    let curve = spki
        .algorithm
        .parameters
        .as_ref()
        .and_then(|p| p.decode_as::<ObjectIdentifier>().ok());
    if curve != Some(oids::SECP384R1) {
        return Err(CertError::VcekKey);
    }
    let point = spki
        .subject_public_key
        .as_bytes()
        .ok_or(CertError::VcekKey)?;
    p384::ecdsa::VerifyingKey::from_sec1_bytes(point).map_err(|_| CertError::VcekKey)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_is_a_parse_error() {
        assert!(matches!(
            parse_cert("vcek", b"not a cert"),
            Err(CertError::Parse { .. })
        ));
        assert!(matches!(
            parse_cert(
                "vcek",
                b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
            ),
            Err(CertError::Parse { .. })
        ));
        assert!(matches!(
            parse_cert("vcek", b""),
            Err(CertError::Parse { .. })
        ));
    }

    #[test]
    fn cn_products() {
        assert_eq!(product_from_cn("ARK-Milan"), Some((Product::Milan, false)));
        assert_eq!(
            product_from_cn("SEV-Simulated-Genoa"),
            Some((Product::Genoa, true))
        );
        assert_eq!(product_from_cn("SEV-VCEK"), None);
    }

    #[test]
    fn pins_are_distinct_hex() {
        for (_, pin) in ARK_SPKI_PINS {
            assert_eq!(hex::decode(pin).unwrap().len(), 32);
        }
        assert_ne!(ARK_SPKI_PINS[0].1, ARK_SPKI_PINS[1].1);
    }
}
