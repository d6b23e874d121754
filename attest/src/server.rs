//! The HTTPS attestation server: `GET /attestation?nonce=HEX` answers with evidence bound to
//! the client's nonce and to the `SubjectPublicKeyInfo` of the TLS key this server presents, plus
//! an admin listener with `/metrics` and `/ready`.
//!
//! The evidence is produced on a blocking thread (the providers talk to devices) with a
//! deadline; a failing provider gets a 503 with the reason and the server goes on serving.

mod admin;
pub mod handler;
pub mod identity;
pub mod metrics;
pub mod ratelimit;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use thiserror::Error;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

use crate::provider::EvidenceProvider;
pub use identity::{Identities, TlsIdentity};
pub use metrics::Metrics;
use ratelimit::TokenBucket;

/// Default HTTPS port of the attestation server.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:15443";
/// Default admin address (`/metrics`, `/ready`), plain HTTP, loopback only (DESIGN.md): the
/// kubelet probes it with `enclaveid-attest probe` exec probes; a scraper needs an explicit
/// `--admin 0.0.0.0:15010` (the chart's `metrics.expose`).
pub const DEFAULT_ADMIN: &str = "127.0.0.1:15010";

/// Tunables of the server. `Default` gives the documented defaults.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Sustained `/attestation` requests per second admitted (token refill rate). Default 10.
    pub rate_per_second: f64,
    /// Bucket size: requests admitted in a burst. Default 20.
    pub rate_burst: u32,
    /// Deadline for one piece of evidence. Default 30 s.
    pub provider_timeout: Duration,
    /// Connections served at once; further ones wait in the accept queue. Default 256.
    pub max_connections: usize,
    /// Deadline for the TLS handshake and for the request head. Default 10 s.
    pub handshake_timeout: Duration,
    /// Provider calls running at once (they hold a blocking thread each). Default 4.
    pub max_provider_calls: usize,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            rate_per_second: 10.0,
            rate_burst: 20,
            provider_timeout: Duration::from_secs(30),
            max_connections: 256,
            handshake_timeout: Duration::from_secs(10),
            max_provider_calls: 4,
        }
    }
}

/// What failed while setting the server up.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ServerError {
    /// A certificate or key file could not be read or parsed.
    #[error("{field}={path}: {reason}")]
    TlsFile {
        /// The flag naming the file.
        field: &'static str,
        /// The file.
        path: PathBuf,
        /// Why it was refused.
        reason: String,
    },
    /// rustls refused the certificate and key.
    #[error("the TLS certificate and key do not make a server configuration: {0}")]
    Tls(#[from] rustls::Error),
    /// Binding or accepting failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Shared state of one server.
pub(crate) struct State {
    pub(crate) provider: Arc<dyn EvidenceProvider>,
    pub(crate) bucket: TokenBucket,
    pub(crate) metrics: Metrics,
    pub(crate) options: ServeOptions,
    pub(crate) ready: watch::Sender<bool>,
    /// Provider calls in flight; a hung device can tie up at most this many blocking threads.
    pub(crate) provider_slots: Arc<Semaphore>,
}

/// A running server's handle: its addresses and a way to stop it.
pub struct Server {
    /// The HTTPS address actually bound.
    pub local_addr: SocketAddr,
    /// The admin address actually bound.
    pub admin_addr: SocketAddr,
    /// The metrics the server updates.
    pub metrics: Metrics,
    shutdown: watch::Sender<bool>,
    tasks: tokio::task::JoinSet<()>,
}

impl Server {
    /// Binds both listeners and starts serving on the current tokio runtime.
    pub async fn start(
        listen: SocketAddr,
        admin: SocketAddr,
        identities: Identities,
        provider: Arc<dyn EvidenceProvider>,
        options: ServeOptions,
    ) -> Result<Self, ServerError> {
        let bind = |addr: SocketAddr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|source| ServerError::Io {
                    what: format!("binding {addr}"),
                    source,
                })
        };
        let listener = bind(listen).await?;
        let admin_listener = bind(admin).await?;
        let local_addr = local_addr_of(&listener)?;
        let admin_addr = local_addr_of(&admin_listener)?;
        let metrics = Metrics::new();
        let (ready, _) = watch::channel(false);
        let state = Arc::new(State {
            provider,
            bucket: TokenBucket::new(options.rate_per_second, options.rate_burst),
            metrics: metrics.clone(),
            provider_slots: Arc::new(Semaphore::new(options.max_provider_calls.max(1))),
            options,
            ready,
        });
        let (shutdown, shutdown_rx) = watch::channel(false);
        let mut tasks = tokio::task::JoinSet::new();
        tasks.spawn(handler::warm_up(state.clone(), shutdown_rx.clone()));
        tasks.spawn(admin::serve(
            admin_listener,
            state.clone(),
            shutdown_rx.clone(),
        ));
        let spki = identities.current().spki_sha256();
        tasks.spawn(accept_loop(
            listener,
            Arc::new(identities),
            state,
            shutdown_rx,
        ));
        info!(%local_addr, %admin_addr, spki_sha256 = %hex::encode(spki), "attestation server listening");
        Ok(Self {
            local_addr,
            admin_addr,
            metrics,
            shutdown,
            tasks,
        })
    }

    /// Stops accepting and waits for the listener tasks to end.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        while self.tasks.join_next().await.is_some() {}
    }

    /// Runs until one of the server's tasks ends (which only happens on a fatal error).
    pub async fn wait(mut self) {
        let _ = self.tasks.join_next().await;
    }
}

fn local_addr_of(listener: &TcpListener) -> Result<SocketAddr, ServerError> {
    listener.local_addr().map_err(|source| ServerError::Io {
        what: "reading the bound address".into(),
        source,
    })
}

async fn accept_loop(
    listener: TcpListener,
    identities: Arc<Identities>,
    state: Arc<State>,
    mut shutdown: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(state.options.max_connections.max(1)));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(error) => {
                    // EMFILE and friends: back off briefly rather than spin.
                    warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        // The identity current at accept time serves this connection, and its key is the one
        // the connection's evidence is bound to, even if the files change meanwhile.
        let identity = identities.current();
        let acceptor = TlsAcceptor::from(identity.config());
        let spki = identity.spki_sha256();
        let state = state.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let timeout = state.options.handshake_timeout;
            let tls = match tokio::time::timeout(timeout, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(error)) => {
                    debug!(%peer, %error, "tls handshake failed");
                    state
                        .metrics
                        .tls_handshake_failures
                        .with_label_values(&["error"])
                        .inc();
                    return;
                }
                Err(_) => {
                    state
                        .metrics
                        .tls_handshake_failures
                        .with_label_values(&["timeout"])
                        .inc();
                    return;
                }
            };
            state.metrics.open_connections.inc();
            let service = hyper::service::service_fn({
                let state = state.clone();
                move |request| handler::handle(state.clone(), spki, request)
            });
            let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(timeout)
                .max_buf_size(16 * 1024);
            builder.http2().max_concurrent_streams(16);
            if let Err(error) = builder.serve_connection(TokioIo::new(tls), service).await {
                debug!(%peer, %error, "connection ended with an error");
            }
            state.metrics.open_connections.dec();
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_admin_is_loopback_15010() {
        let addr: SocketAddr = DEFAULT_ADMIN
            .parse()
            .expect("DEFAULT_ADMIN is a socket address");
        assert!(
            addr.ip().is_loopback(),
            "{addr}: the admin listener must default to loopback"
        );
        assert_eq!(addr.port(), 15010);
    }
}
