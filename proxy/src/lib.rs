//! enclaveid-proxy: the mTLS sidecar that replaces Envoy.
//!
//! [`start`] binds every listener of a [`config::Config`], loads the TLS material and returns a
//! [`ProxyHandle`]; [`run_blocking`] is what the binary runs: the same plus signal handling.
//! Data path: one tokio multi-thread runtime, one task per connection. Admin: its own thread.

pub mod admin;
pub mod config;
mod copy;
pub mod demo;
mod http;
mod listener;
mod mesh;
pub mod metrics;
pub mod telemetry;
pub mod tls_state;

use std::net::SocketAddr;
use std::sync::Arc;

use enclaveid_pki::tls::TlsError;
use rustls_pki_types::ServerName;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::config::{Config, Protocol};
use crate::listener::{Kind, Listener};
use crate::metrics::{Direction, Metrics};
use crate::tls_state::{TlsSource, TlsState};

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The TLS files are missing, malformed, or do not verify.
    #[error("loading TLS material: {0}")]
    Tls(#[from] TlsError),
    /// A listener could not be bound.
    #[error("binding {what} on {addr}: {source}")]
    Bind {
        /// Which listener.
        what: String,
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// An HTTP client could not be built.
    #[error("building the HTTP client of {what}: {source}")]
    Client {
        /// Which listener.
        what: String,
        /// Why.
        source: ::http::Error,
    },
}

/// State shared by every connection task.
pub struct Shared {
    /// Cancelled when the drain begins: stop accepting, finish open work.
    pub shutdown: CancellationToken,
    /// Cancelled when the drain timeout ran out: end every connection.
    pub hard_stop: CancellationToken,
    /// Every connection task.
    pub tracker: TaskTracker,
    /// The TLS material.
    pub tls: Arc<TlsState>,
    /// Resolved outbound upstream names.
    pub(crate) dns: Arc<mesh::DnsCache>,
}

/// A running proxy.
pub struct ProxyHandle {
    inbound: Vec<SocketAddr>,
    outbound: Vec<SocketAddr>,
    admin: SocketAddr,
    metrics: Arc<Metrics>,
    shared: Arc<Shared>,
    done: tokio::sync::watch::Receiver<bool>,
}

impl ProxyHandle {
    /// The bound address of inbound listener `i` (config order).
    #[must_use]
    pub fn inbound_addr(&self, i: usize) -> SocketAddr {
        self.inbound[i]
    }

    /// The bound address of outbound listener `i` (config order).
    #[must_use]
    pub fn outbound_addr(&self, i: usize) -> SocketAddr {
        self.outbound[i]
    }

    /// The bound admin address.
    #[must_use]
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
    }

    /// The proxy's metrics.
    #[must_use]
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Checks the TLS files now instead of at the next poll tick; `None` if they did not change.
    #[must_use]
    pub fn reload_now(&self) -> Option<Result<(), TlsError>> {
        self.shared.tls.poll()
    }

    /// Begins the drain (as SIGTERM does).
    pub fn shutdown(&self) {
        self.shared.shutdown.cancel();
    }

    /// Resolves when a drain has begun (SIGTERM, `POST /shutdown` or [`Self::shutdown`]).
    pub async fn draining(&self) {
        self.shared.shutdown.cancelled().await;
    }

    /// Waits until the proxy has drained and stopped.
    pub async fn wait(mut self) {
        let _ = self.done.wait_for(|d| *d).await;
    }
}

/// The listen backlog of every listener (the kernel caps it at `net.core.somaxconn`).
const LISTEN_BACKLOG: u32 = 1024;

/// Starts a proxy on the current tokio runtime.
#[allow(
    clippy::too_many_lines,
    reason = "the start-up sequence reads best in one place"
)]
#[allow(
    clippy::unused_async,
    reason = "must run inside a tokio runtime; async says so"
)]
pub async fn start(config: Config, source: TlsSource) -> Result<ProxyHandle, StartError> {
    let metrics = Metrics::new();
    let tls = Arc::new(TlsState::load(&config, source, metrics.clone())?);
    metrics
        .register(Box::new(tls.chain_cache_collector()))
        .expect("the chain cache's metric name is registered once");
    let shared = Arc::new(Shared {
        shutdown: CancellationToken::new(),
        hard_stop: CancellationToken::new(),
        tracker: TaskTracker::new(),
        tls: tls.clone(),
        dns: Arc::new(mesh::DnsCache::new(&config.dns)),
    });
    let bind = |what: &str, addr: SocketAddr| {
        let err = |source| StartError::Bind {
            what: what.to_owned(),
            addr,
            source,
        };
        // std's listen backlog is 128: a burst of connects overflows it while the loop is
        // busy, and each dropped SYN costs that client TCP's 1 s retransmit.
        let sock = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()
        } else {
            tokio::net::TcpSocket::new_v6()
        }
        .map_err(err)?;
        sock.set_reuseaddr(true).map_err(err)?;
        sock.bind(addr).map_err(err)?;
        let listener = sock.listen(LISTEN_BACKLOG).map_err(err)?;
        let sock = listener.into_std().map_err(err)?;
        sock.set_nonblocking(true).map_err(err)?;
        Ok::<_, StartError>(sock)
    };
    let admin_sock = bind("admin", config.admin.listen)?;
    let admin = admin_sock.local_addr().map_err(|source| StartError::Bind {
        what: "admin".into(),
        addr: config.admin.listen,
        source,
    })?;
    let mut sockets = Vec::new();
    let (mut inbound, mut outbound) = (Vec::new(), Vec::new());
    for (index, l) in config.inbound.iter().enumerate() {
        let what = format!("inbound {}", l.name);
        let sock = bind(&what, l.listen)?;
        inbound.push(sock.local_addr().map_err(|source| StartError::Bind {
            what: what.clone(),
            addr: l.listen,
            source,
        })?);
        let app = match l.protocol {
            Protocol::Http => Some(
                http::AppClients::new(l).map_err(|source| StartError::Client { what, source })?,
            ),
            Protocol::Tcp => None,
        };
        let listener = Listener {
            kind: Kind::Inbound {
                index,
                config: l.clone(),
                app,
            },
            metrics: metrics.listener(&l.name, Direction::Inbound),
            slots: Arc::new(Semaphore::new(l.limits.max_connections)),
            target: l.forward.to_string(),
        };
        sockets.push((sock, listener));
    }
    for l in &config.outbound {
        let what = format!("outbound {}", l.name);
        let sock = bind(&what, l.listen)?;
        outbound.push(sock.local_addr().map_err(|source| StartError::Bind {
            what: what.clone(),
            addr: l.listen,
            source,
        })?);
        let lm = metrics.listener(&l.name, Direction::Outbound);
        let peer = match l.protocol {
            Protocol::Http => Some(
                http::PeerClients::new(l, tls.clone(), shared.dns.clone(), lm.clone())
                    .map_err(|source| StartError::Client { what, source })?,
            ),
            Protocol::Tcp => None,
        };
        let server_name = ServerName::try_from(l.server_name.clone())
            .expect("server_name is validated by the config parser");
        let listener = Listener {
            kind: Kind::Outbound {
                config: l.clone(),
                server_name,
                peer,
            },
            metrics: lm,
            slots: Arc::new(Semaphore::new(l.limits.max_connections)),
            target: l.upstream.to_string(),
        };
        sockets.push((sock, listener));
    }
    for (sock, listener) in sockets {
        let sock = tokio::net::TcpListener::from_std(sock).map_err(|source| StartError::Bind {
            what: listener.name().to_owned(),
            addr: admin,
            source,
        })?;
        tokio::spawn(listener::accept_loop(
            sock,
            Arc::new(listener),
            shared.clone(),
        ));
    }
    let stop = CancellationToken::new();
    let config_json: Arc<str> = serde_json::to_string_pretty(&config)
        .unwrap_or_default()
        .into();
    let state = admin::AdminState {
        metrics: metrics.clone(),
        config_json,
        shutdown: shared.shutdown.clone(),
        stop: stop.clone(),
    };
    let admin_thread = admin::spawn(admin_sock, state).map_err(|source| StartError::Bind {
        what: "admin".into(),
        addr: admin,
        source,
    })?;
    spawn_reloader(&shared, config.tls.reload_interval);
    let (done_tx, done) = tokio::sync::watch::channel(false);
    let (sh, m, drain) = (shared.clone(), metrics.clone(), config.drain_timeout);
    tokio::spawn(async move {
        sh.shutdown.cancelled().await;
        m.ready.set(0);
        sh.tracker.close();
        info!(
            open = sh.tracker.len(),
            drain_timeout_ms = drain.as_millis(),
            "draining"
        );
        if tokio::time::timeout(drain, sh.tracker.wait())
            .await
            .is_err()
        {
            warn!(
                open = sh.tracker.len(),
                "drain timeout reached; closing the remaining connections"
            );
            sh.hard_stop.cancel();
            sh.tracker.wait().await;
        }
        stop.cancel();
        let _ = tokio::task::spawn_blocking(move || admin_thread.join()).await;
        info!("stopped");
        let _ = done_tx.send(true);
    });
    metrics.ready.set(1);
    info!(%admin, ?inbound, ?outbound, "listening");
    Ok(ProxyHandle {
        inbound,
        outbound,
        admin,
        metrics,
        shared,
        done,
    })
}

fn spawn_reloader(shared: &Arc<Shared>, every: std::time::Duration) {
    let shared = shared.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shared.hard_stop.cancelled() => break,
                _ = tick.tick() => { let _ = shared.tls.poll(); }
            }
        }
    });
}

/// Runs a proxy until SIGTERM, SIGINT or `POST /shutdown`, drains, and returns the exit code.
#[must_use]
pub fn run_blocking(config: Config) -> u8 {
    let mut builder = if config.workers == 1 {
        // One data-path thread: no work stealing, one malloc arena (the admin API keeps its own).
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    if config.workers > 1 {
        builder.worker_threads(config.workers);
    }
    let rt = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            error!(error = %e, "starting the runtime");
            return 1;
        }
    };
    rt.block_on(async move {
        // Handlers first, so a SIGTERM right after "listening" is a drain, not a kill.
        let signals = match Signals::new() {
            Ok(s) => s,
            Err(e) => {
                error!(error = %e, "installing signal handlers");
                return 1;
            }
        };
        let source = TlsSource::from_config(&config);
        let handle = match start(config, source).await {
            Ok(h) => h,
            Err(e) => {
                error!(error = %e, "cannot start");
                return 1;
            }
        };
        signals.wait(&handle).await;
        handle.wait().await;
        0
    })
}

struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> std::io::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Self {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
        })
    }

    /// Returns once a drain has begun, starting it on SIGTERM or SIGINT; SIGHUP re-reads the
    /// certificate files.
    async fn wait(mut self, handle: &ProxyHandle) {
        loop {
            tokio::select! {
                _ = self.term.recv() => { info!("SIGTERM received"); break; }
                _ = self.int.recv() => { info!("SIGINT received"); break; }
                _ = self.hup.recv() => {
                    info!("SIGHUP received: checking the certificate files");
                    let _ = handle.reload_now();
                }
                () = handle.draining() => break,
            }
        }
        handle.shutdown();
    }
}
