//! Accept loops and the per-connection work: the TLS handshake (inbound) or dial (outbound),
//! then either the `tcp` byte copy or the `http` server. Every connection runs as one task in
//! the proxy's tracker, so a drain can wait for all of them.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use enclaveid_pki::identity::PeerIdentity;
use enclaveid_pki::tls::RejectReason;
use futures_util::FutureExt;
use rustls_pki_types::ServerName;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::timeout;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, warn};

use crate::config::{Inbound, Outbound, Protocol};
use crate::http;
use crate::metrics::ListenerMetrics;
use crate::Shared;

pub(crate) mod tls_io;
#[cfg(test)]
#[path = "listener/tls_io_tests.rs"]
mod tls_io_tests;

/// What a listener does with a connection.
#[allow(clippy::large_enum_variant, reason = "one per listener, built once")]
pub(crate) enum Kind {
    /// mTLS in, plaintext to the app.
    Inbound {
        /// Position in `config.inbound` (selects the server config).
        index: usize,
        /// The listener's config.
        config: Inbound,
        /// Clients to the app (http only).
        app: Option<http::AppClients>,
    },
    /// Plaintext in, mTLS to the peer.
    Outbound {
        /// The listener's config.
        config: Outbound,
        /// The SAN the peer must present.
        server_name: ServerName<'static>,
        /// Clients to the peer (http only).
        peer: Option<http::PeerClients>,
    },
}

/// One listener's state.
pub(crate) struct Listener {
    /// What to do.
    pub(crate) kind: Kind,
    /// Its metrics.
    pub(crate) metrics: ListenerMetrics,
    /// Connection slots (`max_connections`).
    pub(crate) slots: Arc<Semaphore>,
    /// `host:port` to dial: the app (inbound) or the peer (outbound), formatted once.
    pub(crate) target: String,
}

impl Listener {
    fn protocol(&self) -> Protocol {
        match &self.kind {
            Kind::Inbound { config, .. } => config.protocol,
            Kind::Outbound { config, .. } => config.protocol,
        }
    }

    /// The listener's name.
    #[must_use]
    pub(crate) fn name(&self) -> &str {
        &self.metrics.name
    }

    fn limits(&self) -> &crate::config::Limits {
        match &self.kind {
            Kind::Inbound { config, .. } => &config.limits,
            Kind::Outbound { config, .. } => &config.limits,
        }
    }
}

/// Sets `TCP_NODELAY` on the listening socket, through a duplicate of its descriptor: Linux
/// copies the option to every socket `accept` returns, which saves one `setsockopt` per
/// connection. Returns whether accepted sockets inherit it (elsewhere they are set one by one).
fn nodelay_inherited(socket: &TcpListener) -> bool {
    use std::os::fd::AsFd;
    cfg!(target_os = "linux")
        && socket
            .as_fd()
            .try_clone_to_owned()
            .is_ok_and(|fd| std::net::TcpStream::from(fd).set_nodelay(true).is_ok())
}

/// Accepts until the proxy starts draining.
pub(crate) async fn accept_loop(socket: TcpListener, listener: Arc<Listener>, shared: Arc<Shared>) {
    let inherited = nodelay_inherited(&socket);
    loop {
        let accepted = tokio::select! {
            biased;
            () = shared.shutdown.cancelled() => break,
            r = socket.accept() => r,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // EMFILE and friends: back off briefly instead of spinning.
                warn!(listener = listener.name(), error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = listener.slots.clone().try_acquire_owned() else {
            listener.metrics.rejected.inc();
            warn!(listener = listener.name(), peer = %peer, "connection refused: max_connections reached");
            continue;
        };
        if !inherited {
            let _ = stream.set_nodelay(true);
        }
        let (listener, shared2) = (listener.clone(), shared.clone());
        shared.tracker.spawn(async move {
            let _permit = permit;
            let _guard = listener.metrics.connection();
            let work = async {
                match &listener.kind {
                    Kind::Inbound { .. } => inbound(stream, peer, &listener, &shared2).await,
                    Kind::Outbound { .. } => outbound(stream, peer, &listener, &shared2).await,
                }
            };
            tokio::select! {
                () = shared2.hard_stop.cancelled() => {}
                () = work => {}
            }
        });
    }
    debug!(listener = listener.name(), "stopped accepting");
}

fn refused(
    listener: &Listener,
    peer: SocketAddr,
    reason: RejectReason,
    error: &dyn std::fmt::Display,
) {
    listener.metrics.handshake_failed(reason);
    warn!(listener = listener.name(), direction = listener.metrics.direction.as_str(), peer = %peer, reason = reason.as_str(), error = %error, "tls handshake refused");
}

async fn inbound(
    stream: TcpStream,
    peer: SocketAddr,
    listener: &Arc<Listener>,
    shared: &Arc<Shared>,
) {
    let Kind::Inbound { index, config, app } = &listener.kind else {
        return;
    };
    if listener.protocol() == Protocol::Tcp || app.is_none() {
        return inbound_tcp(stream, peer, listener, shared, *index, config).await;
    }
    let loaded = shared.tls.current();
    let acceptor = TlsAcceptor::from(loaded.inbound[*index].clone());
    // Boxed: the handshake state is large and short-lived; inline it would size the task for
    // the connection's whole life.
    let handshake = Box::pin(timeout(
        config.limits.handshake_timeout,
        acceptor.accept(stream),
    ));
    let tls = match handshake.await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => return refused(listener, peer, RejectReason::from_io(&e), &e),
        Err(_) => return handshake_timed_out(listener, peer),
    };
    listener.metrics.handshakes.inc();
    let peer_cert = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .cloned();
    let identity = peer_cert
        .as_ref()
        .and_then(|c| PeerIdentity::from_der(c).ok())
        .unwrap_or_default();
    debug!(listener = listener.name(), peer = %peer, identity = ?identity.uris, "inbound connection");
    let xfcc = http::xfcc(loaded.material.identity(), peer_cert.as_deref(), &identity);
    drop(loaded);
    Box::pin(http::serve_inbound(
        tls,
        peer,
        listener.clone(),
        xfcc,
        shared,
    ))
    .await;
}

fn handshake_timed_out(listener: &Listener, peer: SocketAddr) {
    refused(
        listener,
        peer,
        RejectReason::Timeout,
        &"no complete handshake within handshake_timeout_ms",
    );
}

/// `tcp` inbound: the handshake and the copy on the unbuffered TLS stream, which holds no
/// buffer while the connection is idle.
async fn inbound_tcp(
    stream: TcpStream,
    peer: SocketAddr,
    listener: &Arc<Listener>,
    shared: &Arc<Shared>,
    index: usize,
    config: &Inbound,
) {
    let server_config = shared.tls.current().inbound[index].clone();
    // Boxed: the handshake state is large and short-lived (see `inbound`).
    let handshake = Box::pin(timeout(
        config.limits.handshake_timeout,
        tls_io::accept(server_config, stream),
    ));
    let mut tls = match handshake.await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => return refused(listener, peer, RejectReason::from_io(&e), &e),
        Err(_) => return handshake_timed_out(listener, peer),
    };
    listener.metrics.handshakes.inc();
    // Nothing of the handshake is kept for the copy (the identity is only logged).
    if tracing::enabled!(tracing::Level::DEBUG) {
        let identity = tls
            .conn()
            .peer_certificates()
            .and_then(|c| c.first())
            .and_then(|c| PeerIdentity::from_der(c).ok())
            .unwrap_or_default();
        debug!(listener = listener.name(), peer = %peer, identity = ?identity.uris, "inbound connection");
    }
    let Some(mut upstream) = dial(
        &listener.target,
        config.limits.connect_timeout,
        listener,
        peer,
    )
    .await
    else {
        let _ = tls.shutdown().await;
        return;
    };
    copy(&mut tls, &mut upstream, listener, peer).await;
}

async fn outbound(
    mut stream: TcpStream,
    peer: SocketAddr,
    listener: &Arc<Listener>,
    shared: &Arc<Shared>,
) {
    let Kind::Outbound {
        config,
        server_name,
        peer: clients,
    } = &listener.kind
    else {
        return;
    };
    if let (Protocol::Http, Some(_)) = (listener.protocol(), clients) {
        Box::pin(http::serve_outbound(stream, peer, listener.clone(), shared)).await;
        return;
    }
    let Some(upstream) = crate::mesh::dial_upstream(
        &shared.dns,
        &config.upstream,
        config.limits.connect_timeout,
        &listener.metrics,
        peer,
    )
    .await
    else {
        let _ = stream.shutdown().await;
        return;
    };
    let client_config = shared.tls.current().client_tcp.clone();
    // Boxed for the same reason as the inbound handshake.
    let handshake = Box::pin(timeout(
        config.limits.handshake_timeout,
        tls_io::connect(client_config, server_name.clone(), upstream),
    ));
    let mut tls = match handshake.await {
        Ok(Ok(tls)) => tls,
        // No await in these arms: one would keep the match's handshake result in the task next
        // to `tls` for the connection's life. A TCP write shutdown is immediate.
        Ok(Err(e)) => {
            refused(listener, peer, RejectReason::from_io(&e), &e);
            let _ = stream.shutdown().now_or_never();
            return;
        }
        Err(_) => {
            handshake_timed_out(listener, peer);
            let _ = stream.shutdown().now_or_never();
            return;
        }
    };
    listener.metrics.handshakes.inc();
    copy(&mut stream, &mut tls, listener, peer).await;
}

/// Connects to the app or the peer, counting and logging a failure.
pub(crate) async fn dial(
    target: &str,
    limit: Duration,
    listener: &Listener,
    peer: SocketAddr,
) -> Option<TcpStream> {
    // Boxed: a name resolution and connect state that the connection does not need afterwards.
    let error = match Box::pin(timeout(limit, TcpStream::connect(target))).await {
        Ok(Ok(s)) => {
            let _ = s.set_nodelay(true);
            return Some(s);
        }
        Ok(Err(e)) => e.to_string(),
        Err(_) => "connect timeout".to_owned(),
    };
    listener.metrics.upstream_failures.inc();
    warn!(listener = listener.name(), peer = %peer, upstream = target, error, "upstream unreachable");
    None
}

async fn copy<A, B>(down: &mut A, up: &mut B, listener: &Listener, peer: SocketAddr)
where
    A: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    B: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let m = &listener.metrics;
    let idle = listener.limits().idle_timeout;
    match crate::copy::bidirectional(down, up, &m.to_upstream, &m.to_downstream, idle).await {
        Ok((sent, received)) => {
            debug!(listener = listener.name(), peer = %peer, sent, received, "connection closed");
        }
        Err(e) => {
            debug!(listener = listener.name(), peer = %peer, error = %e, "connection ended with an error");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn accepted_sockets_inherit_nodelay_from_the_listener() {
        let socket = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let plain = TcpStream::connect(addr).await.unwrap();
        let (before, _) = socket.accept().await.unwrap();
        assert!(!before.nodelay().unwrap(), "off by default");
        assert!(nodelay_inherited(&socket));
        let _client = TcpStream::connect(addr).await.unwrap();
        let (after, _) = socket.accept().await.unwrap();
        assert!(after.nodelay().unwrap(), "inherited from the listener");
        drop(plain);
    }
}
