//! The TLS material in use and its hot reload. Each accept and each outbound dial reads the
//! current configs (an `Arc` swap under a short read lock), so a reload affects new handshakes
//! only and open connections keep the config they started with. A new set of files is used only
//! if it parses, the key matches the leaf and the leaf verifies against the (new) CA bundle;
//! otherwise it is refused, logged and counted, and the old material keeps serving.

use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};

use enclaveid_pki::identity::AllowPattern;
use enclaveid_pki::pem;
use enclaveid_pki::tls::{Material, TlsError, TlsSettings};
use rustls::{ClientConfig, ServerConfig};
use zeroize::Zeroizing;

use crate::config::{Config, Protocol};
use crate::metrics::Metrics;

/// ALPN offered by sidecars speaking HTTP: h2 first.
pub const ALPN_HTTP: &[&[u8]] = &[b"h2", b"http/1.1"];
/// ALPN for an HTTP/1.1-only hop (Upgrade requests).
pub const ALPN_HTTP1: &[&[u8]] = &[b"http/1.1"];

/// Where the TLS material comes from.
#[derive(Clone)]
pub enum TlsSource {
    /// The three files of the config, watched for changes.
    Files {
        /// CA bundle.
        ca: PathBuf,
        /// Leaf and chain.
        cert: PathBuf,
        /// Private key.
        key: PathBuf,
    },
    /// PEM held in memory (the demo); never reloaded.
    Memory {
        /// CA bundle.
        ca: String,
        /// Leaf and chain.
        cert: String,
        /// Private key.
        key: Zeroizing<String>,
    },
}

impl TlsSource {
    /// The files named by a config.
    #[must_use]
    pub fn from_config(config: &Config) -> Self {
        Self::Files {
            ca: config.tls.ca.clone(),
            cert: config.tls.cert.clone(),
            key: config.tls.key.clone(),
        }
    }

    fn read(&self) -> Result<Pems, TlsError> {
        match self {
            Self::Files { ca, cert, key } => Ok((
                pem::read_file(ca)?,
                pem::read_file(cert)?,
                pem::read_file(key)?,
                [
                    ca.display().to_string(),
                    cert.display().to_string(),
                    key.display().to_string(),
                ],
            )),
            Self::Memory { ca, cert, key } => Ok((
                Zeroizing::new(ca.as_bytes().to_vec()),
                Zeroizing::new(cert.as_bytes().to_vec()),
                Zeroizing::new(key.as_bytes().to_vec()),
                [
                    "ca (memory)".into(),
                    "cert (memory)".into(),
                    "key (memory)".into(),
                ],
            )),
        }
    }
}

/// The three PEM buffers and their names for error messages.
type Pems = (
    Zeroizing<Vec<u8>>,
    Zeroizing<Vec<u8>>,
    Zeroizing<Vec<u8>>,
    [String; 3],
);

/// Configs built from one set of material.
pub struct Loaded {
    /// The material.
    pub material: Material,
    /// One server config per inbound listener, in config order.
    pub inbound: Vec<Arc<ServerConfig>>,
    /// Client config offering h2 and http/1.1.
    pub client_http: Arc<ClientConfig>,
    /// Client config offering http/1.1 only.
    pub client_http1: Arc<ClientConfig>,
    /// Client config without ALPN (tcp).
    pub client_tcp: Arc<ClientConfig>,
}

/// The reloadable TLS state of one proxy.
pub struct TlsState {
    source: TlsSource,
    settings: TlsSettings,
    inbound: Vec<(Option<Vec<AllowPattern>>, Protocol)>,
    current: RwLock<Arc<Loaded>>,
    last_seen: Mutex<u64>,
    /// Files whose key and certificate did not match on the last poll: given one more poll
    /// interval before they count as a refused reload (see `poll`).
    pending_mismatch: Mutex<Option<u64>>,
    metrics: Arc<Metrics>,
}

impl TlsState {
    /// Loads the initial material; failure here is fatal for the proxy.
    pub fn load(
        config: &Config,
        source: TlsSource,
        metrics: Arc<Metrics>,
    ) -> Result<Self, TlsError> {
        let settings = config.tls.settings();
        let inbound: Vec<_> = config
            .inbound
            .iter()
            .map(|l| (l.allow.clone(), l.protocol))
            .collect();
        let (ca, cert, key, names) = source.read()?;
        let hash = digest(&ca, &cert, &key);
        let loaded = build(&settings, &inbound, &ca, &cert, &key, &names)?;
        metrics
            .cert_expiry
            .set(unix_f64(loaded.material.not_after()));
        Ok(Self {
            source,
            settings,
            inbound,
            current: RwLock::new(Arc::new(loaded)),
            last_seen: Mutex::new(hash),
            pending_mismatch: Mutex::new(None),
            metrics,
        })
    }

    /// The configs new connections should use.
    #[must_use]
    pub fn current(&self) -> Arc<Loaded> {
        self.current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Re-reads the files; if their content changed since the last attempt, tries to switch.
    /// Returns `None` when nothing changed.
    pub fn poll(&self) -> Option<Result<(), TlsError>> {
        if matches!(self.source, TlsSource::Memory { .. }) {
            return None;
        }
        let (ca, cert, key, names) = match self.source.read() {
            Ok(files) => files,
            // A file missing mid-rename is retried on the next tick, silently.
            Err(TlsError::Pem(pem::PemError::Read { .. })) => return None,
            Err(e) => return Some(Err(e)),
        };
        let hash = digest(&ca, &cert, &key);
        let unchanged = *self
            .last_seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            == hash;
        if unchanged {
            return None;
        }
        let built = build(&self.settings, &self.inbound, &ca, &cert, &key, &names);
        if let Err(TlsError::KeyMismatch(_)) = &built {
            // The renewer renames key.pem and then cert.pem: a poll between the two sees the
            // new key with the old certificate. Refuse to switch (the old pair keeps serving),
            // but only count and log a failure if the same files are still there on the next
            // poll, so a normal rotation never looks like a failed one.
            let mut pending = self
                .pending_mismatch
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if *pending != Some(hash) {
                *pending = Some(hash);
                tracing::debug!("key and certificate do not match yet (mid-rotation?); retrying");
                return None;
            }
        }
        *self
            .last_seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = hash;
        let result = built.map(|loaded| {
            self.metrics.cert_expiry.set(unix_f64(loaded.material.not_after()));
            tracing::info!(identity = ?loaded.material.identity().uris, not_after = loaded.material.not_after(), "certificate reloaded");
            *self.current.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(loaded);
        });
        if let Err(e) = &result {
            tracing::warn!(error = %e, "new certificate refused; the previous one keeps serving");
        }
        self.metrics.reload(result.is_ok());
        Some(result)
    }
}

#[allow(
    clippy::cast_precision_loss,
    reason = "Unix seconds fit f64's 52-bit mantissa for millions of years"
)]
fn unix_f64(t: i64) -> f64 {
    t as f64
}

fn digest(ca: &[u8], cert: &[u8], key: &[u8]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (ca, cert, key).hash(&mut h);
    h.finish()
}

fn build(
    settings: &TlsSettings,
    inbound: &[(Option<Vec<AllowPattern>>, Protocol)],
    ca: &[u8],
    cert: &[u8],
    key: &[u8],
    names: &[String; 3],
) -> Result<Loaded, TlsError> {
    let material = Material::from_pem(ca, cert, key, [&names[0], &names[1], &names[2]])?;
    let inbound = inbound
        .iter()
        .map(|(allow, protocol)| {
            let alpn = if *protocol == Protocol::Http {
                ALPN_HTTP
            } else {
                &[]
            };
            material
                .server_config(settings, allow.clone(), alpn)
                .map(Arc::new)
        })
        .collect::<Result<_, _>>()?;
    Ok(Loaded {
        inbound,
        client_http: Arc::new(material.client_config(settings, ALPN_HTTP)?),
        client_http1: Arc::new(material.client_config(settings, ALPN_HTTP1)?),
        client_tcp: Arc::new(material.client_config(settings, &[])?),
        material,
    })
}
