//! The TLS material in use and its hot reload. Each accept and each outbound dial reads the
//! current configs (an `Arc` swap under a short read lock), so a reload affects new handshakes
//! only and open connections keep the config they started with. A new set of files is used only
//! if it parses, the key matches the leaf and the leaf verifies against the (new) CA bundle;
//! otherwise it is refused, logged and counted, and the old material keeps serving.
//!
//! Each set of material carries its own caches of verified peer chains (`enclaveid_pki::tls`),
//! so a reload, a new CA in particular, starts with empty caches; only the hit and miss counts
//! carry over, for the metrics.

use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::time::Instant;

use enclaveid_pki::identity::AllowPattern;
use enclaveid_pki::pem;
use enclaveid_pki::tls::{
    ChainCacheCounters, Material, TlsError, TlsSettings, CHAIN_CACHE_CAPACITY,
};
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
    watch: Mutex<Watch>,
    /// The poll interval: the first re-warning of a lasting failure comes two of these later.
    interval: Duration,
    metrics: Arc<Metrics>,
    /// Hits and misses of the verified-chain caches of every material loaded so far.
    chain_counters: Arc<ChainCacheCounters>,
}

/// What the poller knows about the files on disk.
struct Watch {
    /// Digest of the set now serving.
    serving: u64,
    /// A state seen once that a renewer produces mid-rotation (a file missing, the new key next
    /// to the old certificate): given one more poll before it counts as a failure.
    pending: Option<Seen>,
    /// Set while the files on disk cannot be used.
    failing: Option<Failing>,
}

/// Which unusable state of the files.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Seen {
    /// A file could not be read (deleted, permissions).
    Unreadable,
    /// Readable files with this digest that were refused.
    Refused(u64),
}

/// A lasting reload failure, and when to warn about it again.
struct Failing {
    what: Seen,
    error: String,
    since: Instant,
    next_warning: Instant,
    backoff: Duration,
}

/// The longest gap between two warnings about the same lasting failure.
pub const MAX_WARNING_BACKOFF: Duration = Duration::from_mins(5);

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
        let chain_counters = Arc::new(ChainCacheCounters::default());
        let loaded = build(
            &settings,
            &inbound,
            &ca,
            &cert,
            &key,
            &names,
            &chain_counters,
        )?;
        metrics
            .cert_expiry
            .set(unix_f64(loaded.material.not_after()));
        metrics.reload_failing.set(0);
        Ok(Self {
            source,
            settings,
            inbound,
            current: RwLock::new(Arc::new(loaded)),
            watch: Mutex::new(Watch {
                serving: hash,
                pending: None,
                failing: None,
            }),
            interval: config.tls.reload_interval,
            metrics,
            chain_counters,
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

    /// Hits and misses of the verified-chain caches, over every reload (they only grow).
    #[must_use]
    pub fn chain_cache_counters(&self) -> &Arc<ChainCacheCounters> {
        &self.chain_counters
    }

    /// The hit and miss counts as a Prometheus collector, for the proxy's registry.
    #[must_use]
    pub fn chain_cache_collector(&self) -> ChainCacheCollector {
        ChainCacheCollector::new(self.chain_counters.clone())
    }

    /// Re-reads the files; if their content changed since the last attempt, tries to switch.
    /// Returns `None` when nothing new happened (no change, a possible rotation in progress, or
    /// a failure already reported), `Some(Err)` when a new failure was counted.
    ///
    /// A failure keeps the previous material serving. It is counted and logged at `warn` once,
    /// then, while it lasts, warned about again with a doubling gap (from two poll intervals up
    /// to [`MAX_WARNING_BACKOFF`]); the files are still re-read on every poll.
    pub fn poll(&self) -> Option<Result<(), TlsError>> {
        self.poll_at(Instant::now())
    }

    fn poll_at(&self, now: Instant) -> Option<Result<(), TlsError>> {
        if matches!(self.source, TlsSource::Memory { .. }) {
            return None;
        }
        let mut w = self
            .watch
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (ca, cert, key, names) = match self.source.read() {
            Ok(files) => files,
            Err(e) => {
                // A missing file may be a non-atomic writer mid-way: one poll of grace.
                let transient = matches!(e, TlsError::Pem(pem::PemError::Read { .. }));
                return self.failed(&mut w, Seen::Unreadable, e, transient, now);
            }
        };
        let hash = digest(&ca, &cert, &key);
        if hash == w.serving {
            w.pending = None;
            if let Some(f) = w.failing.take() {
                self.metrics.reload_failing.set(0);
                tracing::info!(
                    failed_for_s = now.duration_since(f.since).as_secs(),
                    "certificate files are back to the set in use"
                );
            }
            return None;
        }
        if w.failing
            .as_ref()
            .is_some_and(|f| f.what == Seen::Refused(hash))
        {
            Self::still_failing(&mut w, now);
            return None;
        }
        match build(
            &self.settings,
            &self.inbound,
            &ca,
            &cert,
            &key,
            &names,
            &self.chain_counters,
        ) {
            Ok(loaded) => {
                w.serving = hash;
                w.pending = None;
                w.failing = None;
                self.metrics.reload_failing.set(0);
                self.metrics
                    .cert_expiry
                    .set(unix_f64(loaded.material.not_after()));
                tracing::info!(identity = ?loaded.material.identity().uris, not_after = loaded.material.not_after(), "certificate reloaded");
                *self
                    .current
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(loaded);
                self.metrics.reload(true);
                Some(Ok(()))
            }
            Err(e) => {
                // The renewer renames key.pem and then cert.pem: a poll between the two sees the
                // new key with the old certificate. That set is never used, and it only counts
                // as a failure if it is still there on the next poll, so a normal rotation
                // never looks like a failed one.
                let transient = matches!(e, TlsError::KeyMismatch(_));
                self.failed(&mut w, Seen::Refused(hash), e, transient, now)
            }
        }
    }

    fn failed(
        &self,
        w: &mut Watch,
        what: Seen,
        e: TlsError,
        transient: bool,
        now: Instant,
    ) -> Option<Result<(), TlsError>> {
        if w.failing.as_ref().is_some_and(|f| f.what == what) {
            // The same failure as before (a file still missing): already counted.
            Self::still_failing(w, now);
            return None;
        }
        if transient && w.pending != Some(what) {
            w.pending = Some(what);
            tracing::debug!(error = %e, "certificate files not usable yet (mid-rotation?); retrying");
            return None;
        }
        w.pending = None;
        tracing::warn!(error = %e, "certificate files unusable; the previous certificate keeps serving");
        self.metrics.reload(false);
        self.metrics.reload_failing.set(1);
        let backoff = 2 * self.interval.max(Duration::from_millis(500));
        w.failing = Some(Failing {
            what,
            error: e.to_string(),
            since: now,
            next_warning: now + backoff,
            backoff,
        });
        Some(Err(e))
    }

    fn still_failing(w: &mut Watch, now: Instant) {
        let Some(f) = w.failing.as_mut() else { return };
        if now < f.next_warning {
            return;
        }
        tracing::warn!(
            error = %f.error,
            failing_for_s = now.duration_since(f.since).as_secs(),
            "certificate files still unusable; the previous certificate keeps serving"
        );
        f.backoff = (f.backoff * 2).min(MAX_WARNING_BACKOFF);
        f.next_warning = now + f.backoff;
    }

    /// When the current failure is next warned about (tests of the backoff).
    #[cfg(test)]
    fn next_warning(&self) -> Option<Instant> {
        self.watch
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .failing
            .as_ref()
            .map(|f| f.next_warning)
    }
}

/// `enclaveid_proxy_tls_verified_chain_cache_lookups_total{result="hit"|"miss"}`: peer chain
/// checks answered from the verified-chain caches, or run in full (a new peer, a chain outside
/// its cached validity window, or a refused chain). Read from the pki counters at each scrape.
pub struct ChainCacheCollector {
    counters: Arc<ChainCacheCounters>,
    lookups: prometheus::IntCounterVec,
    /// Serialises scrapes: each brings the counter up to the pki count by the difference.
    sync: Mutex<()>,
}

impl ChainCacheCollector {
    fn new(counters: Arc<ChainCacheCounters>) -> Self {
        let lookups = prometheus::IntCounterVec::new(
            prometheus::Opts::new(
                "tls_verified_chain_cache_lookups_total",
                "Peer certificate chain checks answered from the cache of verified chains (hit) or run in full (miss).",
            )
            .namespace("enclaveid_proxy"),
            &["result"],
        )
        .expect("valid metric");
        Self {
            counters,
            lookups,
            sync: Mutex::new(()),
        }
    }
}

impl prometheus::core::Collector for ChainCacheCollector {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        self.lookups.desc()
    }

    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        let _one_at_a_time = self
            .sync
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for (result, count) in [
            ("hit", self.counters.hits()),
            ("miss", self.counters.misses()),
        ] {
            let c = self.lookups.with_label_values(&[result]);
            c.inc_by(count.saturating_sub(c.get()));
        }
        self.lookups.collect()
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
    chain_counters: &Arc<ChainCacheCounters>,
) -> Result<Loaded, TlsError> {
    // New material, new (empty) verified-chain caches: nothing verified against the previous
    // CA bundle is trusted by the new configs.
    let material = Material::from_pem(ca, cert, key, [&names[0], &names[1], &names[2]])?
        .with_chain_cache(CHAIN_CACHE_CAPACITY, chain_counters.clone());
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

#[cfg(test)]
mod tests {
    use super::*;
    use enclaveid_pki::testing::{loopback_handshake, TestCa, TestCert};
    use enclaveid_pki::tls::RejectReason;

    fn write(dir: &std::path::Path, name: &str, body: &str) {
        let tmp = dir.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, body).unwrap();
        std::fs::rename(&tmp, dir.join(name)).unwrap();
    }

    /// A client config presenting `leaf`, trusting `trusted`.
    fn dialer(trusted: &[&TestCa], leaf: &TestCert) -> Arc<ClientConfig> {
        let bundle: String = trusted.iter().map(|ca| ca.cert_pem()).collect();
        let m = Material::from_pem(
            bundle.as_bytes(),
            leaf.cert_pem.as_bytes(),
            leaf.key_pem.as_bytes(),
            ["ca", "cert", "key"],
        )
        .unwrap();
        Arc::new(m.client_config(&TlsSettings::default(), &[]).unwrap())
    }

    #[test]
    fn a_chain_cached_under_the_old_ca_is_refused_after_a_reload_to_a_new_ca() {
        let ca_a = TestCa::new("mesh CA");
        let ca_b = TestCa::new("mesh CA");
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let install = |ca: &TestCa| {
            let leaf = ca.workload("backend");
            write(d, "ca.pem", &ca.cert_pem());
            write(d, "key.pem", &leaf.key_pem);
            write(d, "cert.pem", &leaf.cert_pem);
        };
        install(&ca_a);
        let config = Config::parse(&format!(
            "tls: {{ ca: {0}/ca.pem, cert: {0}/cert.pem, key: {0}/key.pem }}\n\
             inbound: [{{ name: api, listen: 127.0.0.1:0, forward: 127.0.0.1:9 }}]\n",
            d.display()
        ))
        .unwrap();
        let tls = TlsState::load(&config, TlsSource::from_config(&config), Metrics::new()).unwrap();
        let counts = || {
            let c = tls.chain_cache_counters();
            (c.hits(), c.misses())
        };
        // A peer of CA A; it also trusts CA B so that it accepts the server after the reload
        // and gets as far as presenting its certificate.
        let peer = dialer(&[&ca_a, &ca_b], &ca_a.workload("frontend"));
        for _ in 0..2 {
            let out =
                loopback_handshake(peer.clone(), "localhost", tls.current().inbound[0].clone());
            assert!(out.server.is_ok() && out.client.is_ok(), "{out:?}");
        }
        assert_eq!(
            counts(),
            (1, 1),
            "the second handshake was answered from the cache"
        );
        let before = tls.current();

        install(&ca_b);
        assert!(matches!(tls.poll(), Some(Ok(()))), "reloaded to CA B");
        let out = loopback_handshake(peer.clone(), "localhost", tls.current().inbound[0].clone());
        let err = out.server.expect_err("CA A is no longer pinned");
        assert_eq!(RejectReason::from_io(&err), RejectReason::UnknownCa);
        assert_eq!(
            counts(),
            (1, 2),
            "a miss: the new configs started with an empty cache"
        );
        // The configs of CA A (still held by connections opened before the reload) keep theirs.
        let out = loopback_handshake(peer, "localhost", before.inbound[0].clone());
        assert!(out.server.is_ok(), "{out:?}");
        assert_eq!(counts(), (2, 2));

        // What the proxy's registry would show.
        let registry = prometheus::Registry::new();
        registry
            .register(Box::new(tls.chain_cache_collector()))
            .unwrap();
        let mut text = Vec::new();
        prometheus::Encoder::encode(
            &prometheus::TextEncoder::new(),
            &registry.gather(),
            &mut text,
        )
        .unwrap();
        let text = String::from_utf8(text).unwrap();
        for line in [
            "enclaveid_proxy_tls_verified_chain_cache_lookups_total{result=\"hit\"} 2",
            "enclaveid_proxy_tls_verified_chain_cache_lookups_total{result=\"miss\"} 2",
        ] {
            assert!(text.contains(line), "{line} in {text}");
        }
    }

    #[test]
    fn a_lasting_failure_is_counted_once_and_warned_with_backoff() {
        let ca = TestCa::new("mesh test CA");
        let leaf = ca.workload("backend");
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        write(d, "ca.pem", &ca.cert_pem());
        write(d, "cert.pem", &leaf.cert_pem);
        write(d, "key.pem", &leaf.key_pem);
        let config = Config::parse(&format!(
            "tls: {{ ca: {0}/ca.pem, cert: {0}/cert.pem, key: {0}/key.pem, reload_interval_ms: 1000 }}\n\
             inbound: [{{ name: api, listen: 127.0.0.1:0, forward: 127.0.0.1:9 }}]\n",
            d.display()
        ))
        .unwrap();
        let metrics = Metrics::new();
        let tls =
            TlsState::load(&config, TlsSource::from_config(&config), metrics.clone()).unwrap();
        let serving = tls.current().material.not_after();
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);

        std::fs::remove_file(d.join("cert.pem")).unwrap();
        assert!(
            tls.poll_at(at(0)).is_none(),
            "one poll of grace for a missing file"
        );
        assert_eq!(metrics.reloads(false), 0);
        assert!(
            matches!(tls.poll_at(at(1)), Some(Err(_))),
            "then a counted failure"
        );
        assert_eq!(
            (metrics.reloads(false), metrics.reload_failing.get()),
            (1, 1)
        );
        // Warned again 2 s later, then 4, 8, ... up to MAX_WARNING_BACKOFF; counted once.
        assert_eq!(tls.next_warning(), Some(at(3)));
        let mut expect = 3;
        let mut gap = 2;
        for s in 2..2_000 {
            assert!(tls.poll_at(at(s)).is_none());
            if s == expect {
                gap = (gap * 2).min(MAX_WARNING_BACKOFF.as_secs());
                expect += gap;
            }
            assert_eq!(tls.next_warning(), Some(at(expect)), "at {s} s");
        }
        assert_eq!(gap, MAX_WARNING_BACKOFF.as_secs());
        assert_eq!(metrics.reloads(false), 1, "a lasting failure counts once");
        assert_eq!(
            tls.current().material.not_after(),
            serving,
            "old material serves"
        );

        // Garbled: a new failure (counted once more), then the original files come back.
        write(d, "cert.pem", "-----BEGIN CERTIFICATE-----\nnot base64\n");
        assert!(matches!(tls.poll_at(at(2_000)), Some(Err(_))));
        assert!(tls.poll_at(at(2_001)).is_none());
        assert_eq!(
            (metrics.reloads(false), metrics.reload_failing.get()),
            (2, 1)
        );
        write(d, "cert.pem", &leaf.cert_pem);
        assert!(tls.poll_at(at(2_002)).is_none());
        assert_eq!(metrics.reload_failing.get(), 0, "recovered");
        assert_eq!(tls.next_warning(), None);

        // A good new set is taken and clears nothing that is not set.
        let next = ca.workload("backend");
        write(d, "cert.pem", &next.cert_pem);
        write(d, "key.pem", &next.key_pem);
        assert!(matches!(tls.poll_at(at(2_003)), Some(Ok(()))));
        assert_eq!(
            (metrics.reloads(true), metrics.reload_failing.get()),
            (1, 0)
        );
    }
}
