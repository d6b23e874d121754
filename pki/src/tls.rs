//! rustls configurations for the mesh: a server that demands a client certificate chaining to
//! the pinned CA bundle (and, optionally, an identity inside an `allow` list), a client that
//! verifies the peer against the same bundle and the expected server name, and the
//! classification of handshake failures into the `reason` label the proxy counts them under.
//!
//! The pinned bundle is the only trust anchor; the system roots are never consulted.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::crypto::{aws_lc_rs, CryptoProvider};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{NoServerSessionStorage, WebPkiClientVerifier};
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, RootCertStore,
    ServerConfig, SignatureScheme,
};
use rustls_pki_types::{CertificateDer, ServerName, TrustAnchor, UnixTime};

use crate::identity::{AllowPattern, PeerIdentity};
use crate::pem::{self, PemError, PrivateKey};

/// Why TLS material or a configuration could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A PEM file or buffer could not be read.
    #[error(transparent)]
    Pem(#[from] PemError),
    /// A CA certificate cannot serve as a trust anchor.
    #[error("CA bundle: certificate {index} is not a usable trust anchor: {why}")]
    BadAnchor {
        /// Position in the bundle, from 0.
        index: usize,
        /// The parser's message.
        why: String,
    },
    /// The private key is unusable.
    #[error("private key: {0}")]
    Key(String),
    /// The private key is valid but belongs to another certificate. Seen briefly while a
    /// renewer replaces `key.pem` and `cert.pem` one after the other.
    #[error("private key: does not match the certificate: {0}")]
    KeyMismatch(String),
    /// The leaf does not verify against the pinned CA bundle.
    #[error("certificate does not verify against the pinned CA bundle ({usage}): {why}")]
    Untrusted {
        /// The usage that was checked (`clientAuth` or `serverAuth`).
        usage: &'static str,
        /// The verifier's message.
        why: String,
    },
    /// The leaf could not be parsed.
    #[error("certificate: {0}")]
    BadCertificate(String),
    /// rustls refused the configuration.
    #[error("building the rustls configuration: {0}")]
    Config(String),
}

/// Lowest TLS version accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum MinVersion {
    /// TLS 1.2 and 1.3 (opt-in).
    Tls12,
    /// TLS 1.3 only (the default).
    #[default]
    Tls13,
}

/// Knobs shared by the server and client configurations.
#[derive(Clone, Debug, Default)]
pub struct TlsSettings {
    /// Lowest accepted version.
    pub min_version: MinVersion,
    /// Whether session resumption (tickets, session IDs) is enabled; off by default.
    pub session_resumption: bool,
}

/// A verified set of TLS material: the pinned roots and this workload's key and chain.
#[derive(Clone)]
pub struct Material {
    roots: Arc<RootCertStore>,
    anchors: Arc<Anchors>,
    ca_certs: Vec<CertificateDer<'static>>,
    key: Arc<CertifiedKey>,
    identity: PeerIdentity,
    not_after: i64,
}

impl std::fmt::Debug for Material {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Material")
            .field("ca_certs", &self.ca_certs.len())
            .field("identity", &self.identity)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// The crypto provider every configuration uses: aws-lc-rs with AES-128-GCM-SHA256 preferred.
///
/// Both ends of a mesh hop are ours, and rustls servers follow the client's order, so this order
/// decides the suite. AES-128-GCM-SHA256 costs 12 % less CPU per full handshake than the
/// default first choice AES-256-GCM-SHA384 (no SHA-384 in the key schedule) and is what nginx,
/// `HAProxy` and Envoy negotiate; both are 128-bit-secure or better (`benches/README.md`).
#[must_use]
pub fn provider() -> Arc<CryptoProvider> {
    let mut provider = aws_lc_rs::default_provider();
    provider
        .cipher_suites
        .sort_by_key(|s| s.suite() != rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
    Arc::new(provider)
}

impl Material {
    /// Builds material from PEM buffers and checks it: every CA is a trust anchor, the key
    /// matches the leaf, and the leaf verifies against the bundle now for both client and server
    /// authentication. `names` label the sources in errors (usually the file paths).
    pub fn from_pem(
        ca: &[u8],
        chain: &[u8],
        key: &[u8],
        names: [&str; 3],
    ) -> Result<Self, TlsError> {
        let ca_certs = pem::parse_certificates(ca, names[0])?;
        let chain = pem::parse_certificates(chain, names[1])?;
        let key = pem::parse_private_key(key, names[2])?;
        Self::new(ca_certs, &chain, &key, UnixTime::now())
    }

    /// Builds and checks material from parsed parts at time `now`.
    pub fn new(
        ca_certs: Vec<CertificateDer<'static>>,
        chain: &[CertificateDer<'static>],
        key: &PrivateKey,
        now: UnixTime,
    ) -> Result<Self, TlsError> {
        let mut roots = RootCertStore::empty();
        for (index, ca) in ca_certs.iter().enumerate() {
            roots.add(ca.clone()).map_err(|e| TlsError::BadAnchor {
                index,
                why: e.to_string(),
            })?;
        }
        let provider = provider();
        let signing = provider
            .key_provider
            .load_private_key(key.der())
            .map_err(|e| TlsError::Key(e.to_string()))?;
        let certified = CertifiedKey::new(chain.to_vec(), signing);
        certified
            .keys_match()
            .map_err(|e| TlsError::KeyMismatch(e.to_string()))?;
        let leaf = &chain[0];
        let anchors = Arc::new(Anchors::new(&ca_certs)?);
        for (usage, eku) in [
            ("clientAuth", webpki::KeyUsage::client_auth()),
            ("serverAuth", webpki::KeyUsage::server_auth()),
        ] {
            anchors
                .verify(leaf, &chain[1..], now, eku)
                .map_err(|e| TlsError::Untrusted {
                    usage,
                    why: e.to_string(),
                })?;
        }
        let identity =
            PeerIdentity::from_der(leaf).map_err(|e| TlsError::BadCertificate(e.to_string()))?;
        let (_, parsed) = x509_parser::parse_x509_certificate(leaf)
            .map_err(|e| TlsError::BadCertificate(e.to_string()))?;
        let not_after = parsed.validity().not_after.timestamp();
        Ok(Self {
            roots: Arc::new(roots),
            anchors,
            ca_certs,
            key: Arc::new(certified),
            identity,
            not_after,
        })
    }

    /// This workload's own identity (the leaf's SANs).
    #[must_use]
    pub fn identity(&self) -> &PeerIdentity {
        &self.identity
    }

    /// The leaf's `notAfter` as a Unix timestamp in seconds.
    #[must_use]
    pub fn not_after(&self) -> i64 {
        self.not_after
    }

    /// The pinned CA certificates.
    #[must_use]
    pub fn ca_certs(&self) -> &[CertificateDer<'static>] {
        &self.ca_certs
    }

    /// The leaf certificate.
    #[must_use]
    pub fn leaf(&self) -> &CertificateDer<'static> {
        &self.key.cert[0]
    }

    /// A server configuration that requires a client certificate from the pinned CA and, when
    /// `allow` is given, an identity matching one of its patterns.
    pub fn server_config(
        &self,
        settings: &TlsSettings,
        allow: Option<Vec<AllowPattern>>,
        alpn: &[&[u8]],
    ) -> Result<ServerConfig, TlsError> {
        let inner = WebPkiClientVerifier::builder_with_provider(self.roots.clone(), provider())
            .build()
            .map_err(|e| TlsError::Config(e.to_string()))?;
        let verifier: Arc<dyn ClientCertVerifier> = Arc::new(MeshClientVerifier {
            inner,
            anchors: self.anchors.clone(),
            allow,
        });
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(versions(settings.min_version))
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(Arc::new(SingleCertAndKey::from(self.key.clone())));
        if !settings.session_resumption {
            config.session_storage = Arc::new(NoServerSessionStorage {});
            config.send_tls13_tickets = 0;
        }
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(config)
    }

    /// A client configuration that presents this workload's certificate and verifies the peer
    /// against the pinned CA; rustls checks the peer's SAN against the `ServerName` given at
    /// connect time.
    pub fn client_config(
        &self,
        settings: &TlsSettings,
        alpn: &[&[u8]],
    ) -> Result<ClientConfig, TlsError> {
        let inner = WebPkiServerVerifier::builder_with_provider(self.roots.clone(), provider())
            .build()
            .map_err(|e| TlsError::Config(e.to_string()))?;
        let verifier: Arc<dyn ServerCertVerifier> = Arc::new(MeshServerVerifier {
            inner,
            anchors: self.anchors.clone(),
        });
        let mut config = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(versions(settings.min_version))
            .map_err(|e| TlsError::Config(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_cert_resolver(Arc::new(SingleCertAndKey::from(self.key.clone())));
        if !settings.session_resumption {
            config.resumption = rustls::client::Resumption::disabled();
        }
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(config)
    }
}

static TLS13_ONLY: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];
static TLS12_AND_13: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

fn versions(min: MinVersion) -> &'static [&'static rustls::SupportedProtocolVersion] {
    match min {
        MinVersion::Tls12 => TLS12_AND_13,
        MinVersion::Tls13 => TLS13_ONLY,
    }
}

/// The pinned anchors with each one's `pathLenConstraint`, which webpki does not apply to a
/// trust anchor: the mesh CA has pathlen 0, so a chain through any intermediate is refused.
#[derive(Debug)]
struct Anchors {
    trusted: Vec<TrustAnchor<'static>>,
    path_len: Vec<Option<u32>>,
    algs: WebPkiSupportedAlgorithms,
}

impl Anchors {
    fn new(ca_certs: &[CertificateDer<'static>]) -> Result<Self, TlsError> {
        let mut anchors = Vec::with_capacity(ca_certs.len());
        let mut path_len = Vec::with_capacity(ca_certs.len());
        for (index, c) in ca_certs.iter().enumerate() {
            let bad = |why: String| TlsError::BadAnchor { index, why };
            anchors.push(
                webpki::anchor_from_trusted_cert(c)
                    .map_err(|e| bad(e.to_string()))?
                    .to_owned(),
            );
            let (_, parsed) =
                x509_parser::parse_x509_certificate(c).map_err(|e| bad(e.to_string()))?;
            let bc = parsed.basic_constraints().map_err(|e| bad(e.to_string()))?;
            path_len.push(bc.and_then(|b| b.value.path_len_constraint));
        }
        Ok(Self {
            trusted: anchors,
            path_len,
            algs: aws_lc_rs::default_provider().signature_verification_algorithms,
        })
    }

    /// Verifies a chain for a usage at `now`, including the anchors' path length limits.
    fn verify(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
        usage: webpki::KeyUsage,
    ) -> Result<(), webpki::Error> {
        let ee = webpki::EndEntityCert::try_from(end_entity)?;
        let check = |path: &webpki::VerifiedPath<'_>| {
            let depth = path.intermediate_certificates().count();
            let spki = path.anchor().subject_public_key_info.as_ref();
            let limit = self
                .trusted
                .iter()
                .zip(&self.path_len)
                .find(|(a, _)| a.subject_public_key_info.as_ref() == spki)
                .and_then(|(_, l)| *l);
            match limit {
                Some(l) if depth > l as usize => Err(webpki::Error::PathLenConstraintViolated),
                _ => Ok(()),
            }
        };
        ee.verify_for_usage(
            self.algs.all,
            &self.trusted,
            intermediates,
            now,
            usage,
            None,
            Some(&check),
        )
        .map(|_| ())
    }
}

/// A chain the anchors' path length refuses, as a rustls error (counted as `bad_certificate`).
fn path_error(e: webpki::Error) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(Arc::new(e))))
}

/// The peer's handshake signature (CertificateVerify) did not verify: a bad certificate (for
/// example an RSA-1024 key), not an unknown CA.
#[derive(Debug, thiserror::Error)]
#[error("handshake signature rejected: {0}")]
struct HandshakeSignatureError(rustls::Error);

fn signature_error(e: rustls::Error) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(Arc::new(
        HandshakeSignatureError(e),
    ))))
}

/// The pinned-CA client verifier, plus the anchors' path length and the listener's allow list.
#[derive(Debug)]
struct MeshClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    anchors: Arc<Anchors>,
    allow: Option<Vec<AllowPattern>>,
}

impl ClientCertVerifier for MeshClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        // Fast path: a leaf sent alone cannot exceed any path length.
        if !intermediates.is_empty() {
            self.anchors
                .verify(
                    end_entity,
                    intermediates,
                    now,
                    webpki::KeyUsage::client_auth(),
                )
                .map_err(path_error)?;
        }
        if let Some(allow) = &self.allow {
            let id = PeerIdentity::from_der(end_entity)
                .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
            if !id.is_allowed(allow) {
                return Err(rustls::Error::InvalidCertificate(
                    CertificateError::ApplicationVerificationFailure,
                ));
            }
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner
            .verify_tls12_signature(message, cert, dss)
            .map_err(signature_error)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner
            .verify_tls13_signature(message, cert, dss)
            .map_err(signature_error)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The pinned-CA server verifier (chain, validity, SAN against the server name), plus the
/// anchors' path length.
#[derive(Debug)]
struct MeshServerVerifier {
    inner: Arc<WebPkiServerVerifier>,
    anchors: Arc<Anchors>,
}

impl ServerCertVerifier for MeshServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verified = self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        if !intermediates.is_empty() {
            self.anchors
                .verify(
                    end_entity,
                    intermediates,
                    now,
                    webpki::KeyUsage::server_auth(),
                )
                .map_err(path_error)?;
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner
            .verify_tls12_signature(message, cert, dss)
            .map_err(signature_error)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner
            .verify_tls13_signature(message, cert, dss)
            .map_err(signature_error)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Why a handshake failed, as the `reason` label of the failure metric.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RejectReason {
    /// The client sent no certificate.
    NoClientCertificate,
    /// The chain does not lead to the pinned CA (or a signature is bad).
    UnknownCa,
    /// The leaf (or a chain member) has expired.
    Expired,
    /// The leaf (or a chain member) is not valid yet.
    NotYetValid,
    /// The peer's SAN does not match the expected server name.
    WrongSan,
    /// A CA certificate was presented as the leaf.
    CaAsLeaf,
    /// The leaf lacks the needed extended key usage.
    WrongKeyUsage,
    /// The identity is outside the listener's allow list.
    NotAllowed,
    /// The certificate could not be parsed or is otherwise unacceptable.
    BadCertificate,
    /// The bytes were not TLS (plaintext, garbage).
    NotTls,
    /// No common protocol version or cipher suite (e.g. a TLS 1.2-only peer).
    Incompatible,
    /// The peer aborted the handshake with an alert (usually: it rejected our certificate).
    PeerAlert,
    /// The handshake did not finish in time.
    Timeout,
    /// The connection closed or failed mid-handshake.
    Io,
    /// Anything else.
    Other,
}

impl RejectReason {
    /// Every reason, for pre-registering metric series.
    pub const ALL: [Self; 15] = [
        Self::NoClientCertificate,
        Self::UnknownCa,
        Self::Expired,
        Self::NotYetValid,
        Self::WrongSan,
        Self::CaAsLeaf,
        Self::WrongKeyUsage,
        Self::NotAllowed,
        Self::BadCertificate,
        Self::NotTls,
        Self::Incompatible,
        Self::PeerAlert,
        Self::Timeout,
        Self::Io,
        Self::Other,
    ];

    /// The metric label value.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NoClientCertificate => "no_client_certificate",
            Self::UnknownCa => "unknown_ca",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::WrongSan => "wrong_san",
            Self::CaAsLeaf => "ca_as_leaf",
            Self::WrongKeyUsage => "wrong_key_usage",
            Self::NotAllowed => "identity_not_allowed",
            Self::BadCertificate => "bad_certificate",
            Self::NotTls => "not_tls",
            Self::Incompatible => "incompatible",
            Self::PeerAlert => "peer_alert",
            Self::Timeout => "handshake_timeout",
            Self::Io => "io",
            Self::Other => "other",
        }
    }

    /// Classifies a rustls error.
    #[must_use]
    pub fn from_rustls(err: &rustls::Error) -> Self {
        use rustls::Error as E;
        match err {
            E::NoCertificatesPresented => Self::NoClientCertificate,
            E::InvalidCertificate(c) => Self::from_certificate_error(c),
            E::InvalidMessage(_)
            | E::InappropriateMessage { .. }
            | E::InappropriateHandshakeMessage { .. } => Self::NotTls,
            E::PeerIncompatible(_) => Self::Incompatible,
            E::AlertReceived(_) => Self::PeerAlert,
            _ => Self::Other,
        }
    }

    fn from_certificate_error(err: &CertificateError) -> Self {
        match err {
            CertificateError::UnknownIssuer | CertificateError::BadSignature => Self::UnknownCa,
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => Self::Expired,
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                Self::NotYetValid
            }
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                Self::WrongSan
            }
            CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => {
                Self::WrongKeyUsage
            }
            CertificateError::ApplicationVerificationFailure => Self::NotAllowed,
            CertificateError::Other(other) => match other.0.downcast_ref::<webpki::Error>() {
                Some(webpki::Error::CaUsedAsEndEntity) => Self::CaAsLeaf,
                _ => Self::BadCertificate,
            },
            _ => Self::BadCertificate,
        }
    }

    /// Classifies an I/O error from a tokio-rustls handshake (which wraps the rustls error).
    #[must_use]
    pub fn from_io(err: &std::io::Error) -> Self {
        if let Some(tls) = err
            .get_ref()
            .and_then(|e| e.downcast_ref::<rustls::Error>())
        {
            return Self::from_rustls(tls);
        }
        match err.kind() {
            std::io::ErrorKind::TimedOut => Self::Timeout,
            std::io::ErrorKind::InvalidData => Self::NotTls,
            _ => Self::Io,
        }
    }
}

impl std::fmt::Display for RejectReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
