//! The mesh CA certificate and workload leaf issuance.
//!
//! [`self_signed_ca`] makes the CA certificate from the derived key; [`verify_ca_cert`] checks a
//! certificate of unknown origin (AKV offers no SKR for certificates) against the re-derived key
//! before anything trusts it; [`Ca::issue_leaf`] signs a workload's leaf with a fresh in-memory
//! P-256 key. Time is always passed in, so tests and renewal logic control it.

use std::fmt;

use p256::ecdsa::signature::Verifier;
use p256::pkcs8::DecodePublicKey;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber, PKCS_ECDSA_P256_SHA256,
};
use time::{Duration, OffsetDateTime};
use zeroize::Zeroizing;

use crate::derive::CaKey;

/// The CA subject CN unless configured otherwise.
pub const DEFAULT_CA_COMMON_NAME: &str = "EnclaveID Cluster CA";
/// The CA certificate's validity unless configured otherwise (ten years).
pub const DEFAULT_CA_VALIDITY: Duration = Duration::days(3650);
/// A leaf's validity unless configured otherwise.
pub const DEFAULT_LEAF_VALIDITY: Duration = Duration::hours(24);
/// How far a leaf's notBefore lies before its issuance, so that peers whose clocks run a little
/// behind accept a freshly rotated leaf (capped at a quarter of the validity).
pub const DEFAULT_LEAF_BACKDATE: Duration = Duration::minutes(1);
/// How far a new CA certificate's notBefore lies before its creation, for the same reason: the
/// pod that verifies it next may run a little behind the pod that made it.
pub const CA_BACKDATE: Duration = Duration::hours(1);

/// OID ecdsa-with-SHA256.
const ECDSA_WITH_SHA256: &str = "1.2.840.10045.4.3.2";

/// Errors making, checking or using the CA certificate, and issuing leaves.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IssueError {
    /// rcgen refused the parameters or failed to sign.
    #[error("building the certificate: {0}")]
    Build(#[from] rcgen::Error),
    /// The derived key could not be exported.
    #[error("exporting the CA key: {0}")]
    Key(#[from] crate::derive::DeriveError),
    /// The CA certificate text is not one PEM `CERTIFICATE` block.
    #[error("CA certificate is not a PEM CERTIFICATE block: {0}")]
    Pem(String),
    /// The CA certificate's DER does not parse as X.509.
    #[error("CA certificate does not parse as X.509: {0}")]
    Parse(String),
    /// The certificate's key is not the derived key's public point.
    #[error("CA certificate public key {found} does not match the key derived from the master secret ({expected})")]
    PublicKeyMismatch {
        /// Hex SHA-256 of the expected SPKI.
        expected: String,
        /// Hex SHA-256 of the certificate's SPKI (or a description if it is not P-256).
        found: String,
    },
    /// The certificate is not signed with ECDSA P-256 SHA-256.
    #[error("CA certificate signature algorithm {0} is not ecdsa-with-SHA256")]
    SignatureAlgorithm(String),
    /// The self-signature does not verify under the derived key.
    #[error("CA certificate self-signature does not verify under the derived key")]
    BadSignature,
    /// The certificate is not marked as a CA (basicConstraints CA:TRUE and keyCertSign).
    #[error("certificate is not a CA: {0}")]
    NotCa(&'static str),
    /// The certificate is not yet valid.
    #[error("CA certificate is not valid before {not_before} (now {now})")]
    NotYetValid {
        /// Start of validity.
        not_before: OffsetDateTime,
        /// The time checked.
        now: OffsetDateTime,
    },
    /// The certificate has expired.
    #[error("CA certificate expired at {not_after} (now {now})")]
    Expired {
        /// End of validity.
        not_after: OffsetDateTime,
        /// The time checked.
        now: OffsetDateTime,
    },
    /// A SAN given for a leaf is not acceptable.
    #[error("leaf SAN {value:?}: {reason}")]
    BadSan {
        /// The SAN as given.
        value: String,
        /// Why it was refused.
        reason: &'static str,
    },
    /// A leaf needs at least one SAN and a positive lifetime inside the CA's validity.
    #[error("leaf request: {0}")]
    BadRequest(String),
}

/// Parameters of the self-signed CA certificate.
#[derive(Debug, Clone)]
pub struct CaParams {
    /// Subject (and issuer) CN; default [`DEFAULT_CA_COMMON_NAME`].
    pub common_name: String,
    /// Start of validity.
    pub not_before: OffsetDateTime,
    /// End of validity.
    pub not_after: OffsetDateTime,
}

impl CaParams {
    /// Default CN, valid from `now` − [`CA_BACKDATE`] to `now` + [`DEFAULT_CA_VALIDITY`].
    #[must_use]
    pub fn new(now: OffsetDateTime) -> Self {
        Self {
            common_name: DEFAULT_CA_COMMON_NAME.to_owned(),
            not_before: now - CA_BACKDATE,
            not_after: now + DEFAULT_CA_VALIDITY,
        }
    }
}

/// Makes the self-signed CA certificate (PEM): CA:TRUE, pathlen 0, keyCertSign and cRLSign.
pub fn self_signed_ca(key: &CaKey, params: &CaParams) -> Result<String, IssueError> {
    let key_pair = rcgen_key(key)?;
    let cert = ca_params(params).self_signed(&key_pair)?;
    Ok(cert.pem())
}

fn ca_params(params: &CaParams) -> CertificateParams {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, params.common_name.clone());
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p.not_before = params.not_before;
    p.not_after = params.not_after;
    p.serial_number = Some(random_serial());
    p
}

fn rcgen_key(key: &CaKey) -> Result<KeyPair, IssueError> {
    let der = key.to_pkcs8_der()?;
    let pkcs8 = rustls_pki_types::PrivatePkcs8KeyDer::from(der.as_slice());
    Ok(KeyPair::from_pkcs8_der_and_sign_algo(
        &pkcs8,
        &PKCS_ECDSA_P256_SHA256,
    )?)
}

fn random_serial() -> SerialNumber {
    use rand_core::RngCore;
    // 16 random bytes with the top bit cleared and a non-zero first byte: a positive serial of
    // 127 bits of entropy at most, as RFC 5280 §4.1.2.2 asks.
    let mut bytes = [0u8; 16];
    rand_core::OsRng.fill_bytes(&mut bytes);
    bytes[0] = (bytes[0] & 0x7f) | 0x01;
    SerialNumber::from_slice(&bytes)
}

/// Facts read from a CA certificate that passed [`verify_ca_cert`].
#[derive(Debug, Clone)]
pub struct VerifiedCaCert {
    /// The certificate as PEM.
    pub pem: String,
    /// The certificate as DER.
    pub der: Vec<u8>,
    /// Start of validity.
    pub not_before: OffsetDateTime,
    /// End of validity.
    pub not_after: OffsetDateTime,
}

/// Checks an untrusted CA certificate against the derived key at time `now`: its SPKI must be
/// d·G, its self-signature must verify, it must be a CA, and `now` must be within its validity.
pub fn verify_ca_cert(
    key: &CaKey,
    cert_pem: &str,
    now: OffsetDateTime,
) -> Result<VerifiedCaCert, IssueError> {
    let (rest, pem) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes())
        .map_err(|e| IssueError::Pem(e.to_string()))?;
    if pem.label != "CERTIFICATE" {
        return Err(IssueError::Pem(format!("label is {:?}", pem.label)));
    }
    if x509_parser::pem::parse_x509_pem(rest).is_ok() {
        return Err(IssueError::Pem("more than one PEM block".to_owned()));
    }
    let (_, cert) = x509_parser::parse_x509_certificate(&pem.contents)
        .map_err(|e| IssueError::Parse(e.to_string()))?;

    let expected_spki = key.spki_der()?;
    let found_spki = cert.public_key().raw;
    let expected_point = key.public_key();
    match p256::PublicKey::from_public_key_der(found_spki) {
        Ok(found) if found == expected_point => {}
        Ok(_) => {
            return Err(IssueError::PublicKeyMismatch {
                expected: sha256_hex(&expected_spki),
                found: sha256_hex(found_spki),
            })
        }
        Err(_) => {
            return Err(IssueError::PublicKeyMismatch {
                expected: sha256_hex(&expected_spki),
                found: format!("a non-P-256 key (SPKI sha256 {})", sha256_hex(found_spki)),
            })
        }
    }

    let alg = cert.signature_algorithm.algorithm.to_id_string();
    if alg != ECDSA_WITH_SHA256 {
        return Err(IssueError::SignatureAlgorithm(alg));
    }
    let signature = p256::ecdsa::Signature::from_der(&cert.signature_value.data)
        .map_err(|_| IssueError::BadSignature)?;
    p256::ecdsa::VerifyingKey::from(&expected_point)
        .verify(cert.tbs_certificate.as_ref(), &signature)
        .map_err(|_| IssueError::BadSignature)?;

    let bc = cert
        .basic_constraints()
        .map_err(|e| IssueError::Parse(e.to_string()))?;
    if !bc.is_some_and(|bc| bc.value.ca) {
        return Err(IssueError::NotCa("basicConstraints CA:TRUE is missing"));
    }
    let ku = cert
        .key_usage()
        .map_err(|e| IssueError::Parse(e.to_string()))?;
    if ku.is_some_and(|ku| !ku.value.key_cert_sign()) {
        return Err(IssueError::NotCa("keyUsage lacks keyCertSign"));
    }

    let not_before = cert.validity().not_before.to_datetime();
    let not_after = cert.validity().not_after.to_datetime();
    if now < not_before {
        return Err(IssueError::NotYetValid { not_before, now });
    }
    if now > not_after {
        return Err(IssueError::Expired { not_after, now });
    }
    Ok(VerifiedCaCert {
        pem: cert_pem.to_owned(),
        der: pem.contents.clone(),
        not_before,
        not_after,
    })
}

fn sha256_hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let digest = <sha2::Sha256 as sha2::Digest>::digest(bytes);
    digest.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// A CA ready to sign: the derived key and its verified certificate.
pub struct Ca {
    key: CaKey,
    cert: VerifiedCaCert,
}

impl Ca {
    /// Verifies `cert_pem` against `key` at `now` (see [`verify_ca_cert`]) and keeps both.
    pub fn new(key: CaKey, cert_pem: &str, now: OffsetDateTime) -> Result<Self, IssueError> {
        let cert = verify_ca_cert(&key, cert_pem, now)?;
        Ok(Self { key, cert })
    }

    /// The verified CA certificate.
    #[must_use]
    pub fn cert(&self) -> &VerifiedCaCert {
        &self.cert
    }

    /// Issues a leaf for `request`, with a fresh P-256 key that exists only in memory and in the
    /// returned [`IssuedLeaf`]. The leaf's `not_after` is capped at the CA's.
    pub fn issue_leaf(&self, request: &LeafRequest) -> Result<IssuedLeaf, IssueError> {
        if request.dns.is_empty() && request.uris.is_empty() {
            return Err(IssueError::BadRequest(
                "at least one DNS or URI SAN is required".into(),
            ));
        }
        if request.validity <= Duration::ZERO {
            return Err(IssueError::BadRequest(format!(
                "validity {} is not positive",
                request.validity
            )));
        }
        let not_before = request.now - request.backdate.clamp(Duration::ZERO, request.validity / 4);
        let not_after = (request.now + request.validity).min(self.cert.not_after);
        if not_after <= not_before {
            return Err(IssueError::BadRequest(format!(
                "the CA expires at {}, before the leaf could start",
                self.cert.not_after
            )));
        }

        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        let cn = request
            .common_name
            .clone()
            .or_else(|| request.uris.first().cloned())
            .or_else(|| request.dns.first().cloned())
            .unwrap_or_default();
        dn.push(DnType::CommonName, cn);
        params.distinguished_name = dn;
        for name in &request.dns {
            let ia5 = name.clone().try_into().map_err(|_| IssueError::BadSan {
                value: name.clone(),
                reason: "DNS name is not IA5 (ASCII)",
            })?;
            params.subject_alt_names.push(SanType::DnsName(ia5));
        }
        for uri in &request.uris {
            if !uri.contains(':') {
                return Err(IssueError::BadSan {
                    value: uri.clone(),
                    reason: "URI has no scheme",
                });
            }
            let ia5 = uri.clone().try_into().map_err(|_| IssueError::BadSan {
                value: uri.clone(),
                reason: "URI is not IA5 (ASCII)",
            })?;
            params.subject_alt_names.push(SanType::URI(ia5));
        }
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        params.not_before = not_before;
        params.not_after = not_after;
        params.serial_number = Some(random_serial());

        let leaf_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let issuer = Issuer::from_ca_cert_der(
            &rustls_pki_types::CertificateDer::from(self.cert.der.as_slice()),
            rcgen_key(&self.key)?,
        )?;
        let cert = params.signed_by(&leaf_key, &issuer)?;
        Ok(IssuedLeaf {
            cert_pem: cert.pem(),
            key_pem: Zeroizing::new(leaf_key.serialize_pem()),
            not_before,
            not_after,
        })
    }
}

impl fmt::Debug for Ca {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ca")
            .field("key", &self.key)
            .field("not_after", &self.cert.not_after)
            .finish_non_exhaustive()
    }
}

/// What a workload's leaf should say.
#[derive(Debug, Clone)]
pub struct LeafRequest {
    /// DNS SANs, as given.
    pub dns: Vec<String>,
    /// URI SANs (the SPIFFE id), as given.
    pub uris: Vec<String>,
    /// Subject CN; default the first URI, else the first DNS name.
    pub common_name: Option<String>,
    /// Start of validity.
    pub now: OffsetDateTime,
    /// Lifetime from `now`; default [`DEFAULT_LEAF_VALIDITY`].
    pub validity: Duration,
    /// notBefore = `now` − `backdate` (at most `validity / 4`); default
    /// [`DEFAULT_LEAF_BACKDATE`].
    pub backdate: Duration,
}

impl LeafRequest {
    /// A request valid from `now` for [`DEFAULT_LEAF_VALIDITY`].
    #[must_use]
    pub fn new(dns: Vec<String>, uris: Vec<String>, now: OffsetDateTime) -> Self {
        Self {
            dns,
            uris,
            common_name: None,
            now,
            validity: DEFAULT_LEAF_VALIDITY,
            backdate: DEFAULT_LEAF_BACKDATE,
        }
    }
}

/// An issued leaf: certificate and private key as PEM. The key zeroizes on drop, never printed.
pub struct IssuedLeaf {
    /// The leaf certificate (PEM).
    pub cert_pem: String,
    /// The leaf's PKCS#8 private key (PEM).
    pub key_pem: Zeroizing<String>,
    /// Start of validity.
    pub not_before: OffsetDateTime,
    /// End of validity.
    pub not_after: OffsetDateTime,
}

impl fmt::Debug for IssuedLeaf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuedLeaf")
            .field("key_pem", &"[redacted]")
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::derive::{derive_ca_key, MasterSecret};

    fn key(byte: u8) -> CaKey {
        derive_ca_key(&MasterSecret::new(vec![byte; 32]).unwrap())
    }

    fn now() -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap()
    }

    fn der_of(pem: &str) -> Vec<u8> {
        x509_parser::pem::parse_x509_pem(pem.as_bytes())
            .unwrap()
            .1
            .contents
    }

    fn to_pem(der: &[u8]) -> String {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD.encode(der);
        let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
        for chunk in b64.as_bytes().chunks(64) {
            out.push_str(std::str::from_utf8(chunk).unwrap());
            out.push('\n');
        }
        out.push_str("-----END CERTIFICATE-----\n");
        out
    }

    #[test]
    fn ca_round_trip_has_the_contract_extensions() {
        let k = key(1);
        let pem = self_signed_ca(&k, &CaParams::new(now())).unwrap();
        let verified = verify_ca_cert(&k, &pem, now()).unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(&verified.der).unwrap();
        let bc = cert.basic_constraints().unwrap().unwrap().value;
        assert!(bc.ca);
        assert_eq!(bc.path_len_constraint, Some(0));
        let ku = cert.key_usage().unwrap().unwrap().value;
        assert!(ku.key_cert_sign() && ku.crl_sign());
        let cn = cert.subject().iter_common_name().next().unwrap();
        assert_eq!(cn.as_str().unwrap(), DEFAULT_CA_COMMON_NAME);
        assert_eq!(cert.public_key().raw, k.spki_der().unwrap().as_slice());
    }

    #[test]
    fn ca_from_another_secret_is_refused() {
        let pem = self_signed_ca(&key(1), &CaParams::new(now())).unwrap();
        let err = verify_ca_cert(&key(2), &pem, now()).unwrap_err();
        assert!(matches!(err, IssueError::PublicKeyMismatch { .. }), "{err}");
    }

    #[test]
    fn tampered_ca_is_refused() {
        let k = key(1);
        let mut params = CaParams::new(now());
        params.common_name = "EnclaveID Cluster CB".into();
        let pem = self_signed_ca(&k, &params).unwrap();
        let mut der = der_of(&pem);
        // Flip the last CN letter inside the TBS: the SPKI still matches, the signature does not.
        let pos = der
            .windows(20)
            .position(|w| w == b"EnclaveID Cluster CB")
            .unwrap();
        der[pos + 19] = b'A';
        let err = verify_ca_cert(&k, &to_pem(&der), now()).unwrap_err();
        assert!(matches!(err, IssueError::BadSignature), "{err}");
    }

    #[test]
    fn validity_is_enforced() {
        let k = key(1);
        let mut params = CaParams::new(now());
        params.not_after = now() + Duration::days(1);
        let pem = self_signed_ca(&k, &params).unwrap();
        let err = verify_ca_cert(&k, &pem, now() + Duration::days(2)).unwrap_err();
        assert!(matches!(err, IssueError::Expired { .. }), "{err}");
        let err = verify_ca_cert(&k, &pem, now() - Duration::hours(2)).unwrap_err();
        assert!(matches!(err, IssueError::NotYetValid { .. }), "{err}");
    }

    #[test]
    fn non_ca_and_garbage_are_refused() {
        let k = key(1);
        let kp = rcgen_key(&k).unwrap();
        let mut p = CertificateParams::default();
        p.is_ca = IsCa::ExplicitNoCa;
        let pem = p.self_signed(&kp).unwrap().pem();
        let err = verify_ca_cert(&k, &pem, now()).unwrap_err();
        assert!(matches!(err, IssueError::NotCa(_)), "{err}");
        assert!(matches!(
            verify_ca_cert(&k, "hello", now()).unwrap_err(),
            IssueError::Pem(_)
        ));
    }

    #[test]
    fn leaf_chains_to_the_ca_with_given_sans() {
        let k = key(3);
        let ca_pem = self_signed_ca(&k, &CaParams::new(now())).unwrap();
        let ca = Ca::new(k, &ca_pem, now()).unwrap();
        let req = LeafRequest::new(
            vec!["api.prod.svc.cluster.local".into(), "api.prod.svc".into()],
            vec!["spiffe://cluster.local/ns/prod/sa/api".into()],
            now(),
        );
        let leaf = ca.issue_leaf(&req).unwrap();
        assert_eq!(leaf.not_after, now() + DEFAULT_LEAF_VALIDITY);
        assert_eq!(leaf.not_before, now() - DEFAULT_LEAF_BACKDATE);
        assert!(leaf.key_pem.contains("PRIVATE KEY"));
        assert!(!format!("{leaf:?}").contains("PRIVATE"));

        let der = der_of(&leaf.cert_pem);
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        let ca_der = ca.cert().der.clone();
        let (_, ca_cert) = x509_parser::parse_x509_certificate(&ca_der).unwrap();
        cert.verify_signature(Some(ca_cert.public_key())).unwrap();
        let sans: Vec<String> = cert
            .subject_alternative_name()
            .unwrap()
            .unwrap()
            .value
            .general_names
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(sans.len(), 3, "{sans:?}");
        assert!(sans
            .iter()
            .any(|s| s.contains("spiffe://cluster.local/ns/prod/sa/api")));
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.client_auth && eku.server_auth);
        assert!(!cert
            .basic_constraints()
            .unwrap()
            .is_some_and(|b| b.value.ca));

        // The key in key_pem is the certificate's key.
        let kp = KeyPair::from_pem(&leaf.key_pem).unwrap();
        assert_eq!(
            rcgen::PublicKeyData::subject_public_key_info(&kp),
            cert.public_key().raw
        );
    }

    #[test]
    fn leaf_is_capped_by_the_ca_and_requests_are_checked() {
        let k = key(4);
        let mut params = CaParams::new(now());
        params.not_after = now() + Duration::hours(2);
        let ca_pem = self_signed_ca(&k, &params).unwrap();
        let ca = Ca::new(k, &ca_pem, now()).unwrap();
        let req = LeafRequest::new(vec!["a.b".into()], vec![], now());
        let leaf = ca.issue_leaf(&req).unwrap();
        assert_eq!(leaf.not_after, now() + Duration::hours(2));
        let empty = LeafRequest::new(vec![], vec![], now());
        assert!(matches!(
            ca.issue_leaf(&empty),
            Err(IssueError::BadRequest(_))
        ));
        let bad = LeafRequest::new(vec![], vec!["no-scheme".into()], now());
        assert!(matches!(
            ca.issue_leaf(&bad),
            Err(IssueError::BadSan { .. })
        ));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
        /// Any single flipped bit inside the signed part of the CA certificate is refused.
        #[test]
        fn a_flipped_tbs_bit_never_verifies(pick in 0usize..10_000, bit in 0u8..8) {
            let k = key(7);
            let pem = self_signed_ca(&k, &CaParams::new(now())).unwrap();
            let mut der = der_of(&pem);
            let (tbs_start, tbs_len) = {
                let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
                let tbs = cert.tbs_certificate.as_ref();
                let start = tbs.as_ptr() as usize - der.as_ptr() as usize;
                (start, tbs.len())
            };
            let at = tbs_start + pick % tbs_len;
            der[at] ^= 1 << bit;
            proptest::prop_assert!(verify_ca_cert(&k, &to_pem(&der), now()).is_err());
        }
    }
}
