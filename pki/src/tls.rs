//! rustls configurations for the mesh: a server that demands a client certificate chaining to
//! the pinned CA bundle (and, optionally, an identity inside an `allow` list), a client that
//! verifies the peer against the same bundle and the expected server name, and the
//! classification of handshake failures into the `reason` label the proxy counts them under.
//!
//! The pinned bundle is the only trust anchor; the system roots are never consulted. The
//! verifiers live in `tls/verify.rs`; chains that verified are remembered per [`Material`],
//! bounded, in `tls/verified.rs`, so that the next handshake with the same peer skips the
//! signature checks of its chain (never the per-handshake checks).

#[cfg(test)]
mod tests;
mod verified;
mod verify;

use std::sync::Arc;

use rustls::client::danger::ServerCertVerifier;
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{aws_lc_rs, CryptoProvider};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{NoServerSessionStorage, WebPkiClientVerifier};
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use rustls::{CertificateError, ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::{CertificateDer, UnixTime};

use verified::VerifiedChains;
pub use verified::{ChainCacheCounters, DEFAULT_CAPACITY as CHAIN_CACHE_CAPACITY};
use verify::{Anchors, MeshClientVerifier, MeshServerVerifier};

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

/// A verified set of TLS material: the pinned roots and this workload's key and chain, and the
/// caches of peer chains that verified against those roots (shared by every config built from
/// this material and by its clones; new material starts with empty ones).
#[derive(Clone)]
pub struct Material {
    roots: Arc<RootCertStore>,
    anchors: Arc<Anchors>,
    ca_certs: Vec<CertificateDer<'static>>,
    key: Arc<CertifiedKey>,
    identity: PeerIdentity,
    not_after: i64,
    /// Client chains (`clientAuth`) that verified against `anchors`, for the server configs.
    client_chains: Arc<VerifiedChains>,
    /// Server chains (`serverAuth`) that verified against `anchors`, for the client configs.
    server_chains: Arc<VerifiedChains>,
    chain_counters: Arc<ChainCacheCounters>,
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
        let counters = Arc::new(ChainCacheCounters::default());
        Ok(Self {
            roots: Arc::new(roots),
            anchors,
            ca_certs,
            key: Arc::new(certified),
            identity,
            not_after,
            client_chains: Arc::new(VerifiedChains::new(CHAIN_CACHE_CAPACITY, counters.clone())),
            server_chains: Arc::new(VerifiedChains::new(CHAIN_CACHE_CAPACITY, counters.clone())),
            chain_counters: counters,
        })
    }

    /// The same material with empty verified-chain caches of `capacity` entries each (0 turns
    /// the caches off), counting into `counters`. The proxy passes one set of counters to every
    /// reload so that its metrics only grow. Configs built before this call keep their caches.
    #[must_use]
    pub fn with_chain_cache(mut self, capacity: usize, counters: Arc<ChainCacheCounters>) -> Self {
        self.client_chains = Arc::new(VerifiedChains::new(capacity, counters.clone()));
        self.server_chains = Arc::new(VerifiedChains::new(capacity, counters.clone()));
        self.chain_counters = counters;
        self
    }

    /// Hits and misses of the verified-chain caches of the configs built from this material.
    #[must_use]
    pub fn chain_cache_counters(&self) -> &Arc<ChainCacheCounters> {
        &self.chain_counters
    }

    /// Chains held now by the caches, client chains plus server chains (each cache holds at
    /// most its capacity, [`CHAIN_CACHE_CAPACITY`] by default).
    #[must_use]
    pub fn chain_cache_len(&self) -> usize {
        self.client_chains.len() + self.server_chains.len()
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
        let verifier: Arc<dyn ClientCertVerifier> = Arc::new(self.mesh_client_verifier(allow)?);
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
        let verifier: Arc<dyn ServerCertVerifier> = Arc::new(self.mesh_server_verifier()?);
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

    /// The client-certificate verifier of the server configs, sharing this material's cache.
    fn mesh_client_verifier(
        &self,
        allow: Option<Vec<AllowPattern>>,
    ) -> Result<MeshClientVerifier, TlsError> {
        let inner = WebPkiClientVerifier::builder_with_provider(self.roots.clone(), provider())
            .build()
            .map_err(|e| TlsError::Config(e.to_string()))?;
        Ok(MeshClientVerifier {
            inner,
            anchors: self.anchors.clone(),
            allow,
            chains: self.client_chains.clone(),
        })
    }

    /// The server-certificate verifier of the client configs, sharing this material's cache.
    fn mesh_server_verifier(&self) -> Result<MeshServerVerifier, TlsError> {
        let inner = WebPkiServerVerifier::builder_with_provider(self.roots.clone(), provider())
            .build()
            .map_err(|e| TlsError::Config(e.to_string()))?;
        Ok(MeshServerVerifier {
            inner,
            anchors: self.anchors.clone(),
            chains: self.server_chains.clone(),
        })
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
