//! The connectors the outbound HTTP clients pool: TCP to the peer sidecar, then mTLS with the
//! current client config, the pinned CA and the configured `server_name`. The peer's protocol is
//! learned from ALPN: a peer that picks `h2` is served by an HTTP/2-only client (every request
//! multiplexed on one connection), any other by an HTTP/1.1 client. Also the small bounded cache
//! of resolved upstream names that every outbound dial (tcp and http) goes through.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use enclaveid_pki::tls::RejectReason;
use http::Uri;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tracing::{debug, warn};

use crate::config::{Dns, HostPort, Outbound};
use crate::metrics::ListenerMetrics;
use crate::tls_state::TlsState;
pub(crate) use mux::{H2Error, H2Peer};

mod mux;

/// Which connections a [`MeshConnector`] hands to its client.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Mode {
    /// Offers h2 and http/1.1 and takes what the peer picks (the HTTP/1.1 client: hyper still
    /// speaks h2 on a connection that negotiated it). Records the result.
    Learn,
    /// For the HTTP/2-only client: a connection that did not negotiate h2 is refused (and the
    /// peer recorded as HTTP/1.1).
    H2,
    /// Offers http/1.1 only (Upgrade requests); records nothing.
    Http1,
}

/// What the peer negotiates, learned from the first connection's ALPN and kept up to date by
/// every later dial.
#[derive(Default)]
pub(crate) struct PeerProtocol {
    state: AtomicU8,
    /// One probe at a time.
    probe: tokio::sync::Mutex<()>,
    /// Failed probes so far: requests queued behind a probe that failed fail with it instead of
    /// each waiting out its own connect timeout in turn.
    failed_probes: AtomicU64,
    /// The probe's connection, handed to the next dial that can use it (so learning costs no
    /// extra handshake), if it is still fresh.
    spare: Mutex<Option<(Instant, MeshConn)>>,
}

/// A spare connection older than this is dropped rather than handed out (the peer may have
/// closed it by then).
const SPARE_FOR: Duration = Duration::from_secs(5);

// 0 (the default): not known yet.
const H2: u8 = 1;
const HTTP1: u8 = 2;

impl PeerProtocol {
    /// Whether the peer speaks h2, dialling it once to find out if nobody knows yet.
    pub(crate) async fn is_h2(&self, learn: &MeshConnector) -> io::Result<bool> {
        if let Some(h2) = self.known() {
            return Ok(h2);
        }
        let failed_before = self.failed_probes.load(Ordering::Acquire);
        let _one_probe = self.probe.lock().await;
        if let Some(h2) = self.known() {
            return Ok(h2);
        }
        if self.failed_probes.load(Ordering::Acquire) != failed_before {
            // The probe this request waited for failed: the peer is unreachable right now.
            return Err(learn.upstream_failed(io::Error::new(
                io::ErrorKind::ConnectionRefused,
                "the peer could not be reached by the request queued ahead",
            )));
        }
        match learn.clone().dial().await {
            Ok(conn) => {
                let h2 = conn.h2;
                self.keep_spare(conn);
                Ok(h2)
            }
            Err(e) => {
                self.failed_probes.fetch_add(1, Ordering::AcqRel);
                Err(e)
            }
        }
    }

    fn keep_spare(&self, conn: MeshConn) {
        *self
            .spare
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some((Instant::now(), conn));
    }

    /// What the peer negotiates, if known yet.
    pub(crate) fn known(&self) -> Option<bool> {
        match self.state.load(Ordering::Acquire) {
            H2 => Some(true),
            HTTP1 => Some(false),
            _ => None,
        }
    }

    fn record(&self, h2: bool, peer: &str) {
        let new = if h2 { H2 } else { HTTP1 };
        let old = self.state.swap(new, Ordering::AcqRel);
        if old != new {
            debug!(
                peer,
                protocol = if h2 { "h2" } else { "http/1.1" },
                "peer protocol learned from ALPN"
            );
        }
    }

    fn take_spare(&self, want_h2: bool) -> Option<MeshConn> {
        let mut spare = self
            .spare
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if spare
            .as_ref()
            .is_some_and(|(at, _)| at.elapsed() > SPARE_FOR)
        {
            *spare = None;
        }
        if spare.as_ref().is_some_and(|(_, c)| c.h2 || !want_h2) {
            spare.take().map(|(_, c)| c)
        } else {
            None
        }
    }
}

/// Dials the peer sidecar over mTLS. Cheap to clone (hyper's pool clones its connector for
/// every request): everything but the mode sits behind one `Arc`.
#[derive(Clone)]
pub(crate) struct MeshConnector {
    inner: Arc<ConnectorInner>,
    mode: Mode,
}

struct ConnectorInner {
    target: HostPort,
    server_name: ServerName<'static>,
    tls: Arc<TlsState>,
    dns: Arc<DnsCache>,
    metrics: ListenerMetrics,
    peer: PeerProtocol,
    connect_timeout: Duration,
    handshake_timeout: Duration,
}

impl MeshConnector {
    /// A connector for one outbound listener, learning the peer's protocol.
    ///
    /// # Panics
    /// If `server_name` was not validated by the config parser.
    #[must_use]
    pub(crate) fn new(
        config: &Outbound,
        tls: Arc<TlsState>,
        dns: Arc<DnsCache>,
        metrics: ListenerMetrics,
    ) -> Self {
        Self {
            inner: Arc::new(ConnectorInner {
                target: config.upstream.clone(),
                server_name: ServerName::try_from(config.server_name.clone())
                    .expect("server_name is validated by the config parser"),
                tls,
                dns,
                metrics,
                peer: PeerProtocol::default(),
                connect_timeout: config.limits.connect_timeout,
                handshake_timeout: config.limits.handshake_timeout,
            }),
            mode: Mode::Learn,
        }
    }

    /// The same connector (sharing what it learned) in another mode.
    #[must_use]
    pub(crate) fn with_mode(mut self, mode: Mode) -> Self {
        self.mode = mode;
        self
    }

    /// What this listener's connectors learned about the peer.
    pub(crate) fn peer(&self) -> &PeerProtocol {
        &self.inner.peer
    }

    async fn connect(self) -> io::Result<MeshConn> {
        match self.mode {
            Mode::Learn => {
                if let Some(c) = self.peer().take_spare(false) {
                    return Ok(c);
                }
                self.dial().await
            }
            Mode::H2 => {
                if let Some(c) = self.peer().take_spare(true) {
                    return Ok(c);
                }
                let inner = self.inner.clone();
                let c = self.dial().await?;
                if c.h2 {
                    return Ok(c);
                }
                // The peer stopped offering h2: keep the connection for the HTTP/1.1 client,
                // which the next request will pick. This request gets a 502.
                inner.peer.keep_spare(c);
                Err(io::Error::other("the peer no longer negotiates h2"))
            }
            Mode::Http1 => self.dial().await,
        }
    }

    async fn dial(self) -> io::Result<MeshConn> {
        let i = &*self.inner;
        let tcp = match i
            .dns
            .connect(&i.target, i.connect_timeout, &i.metrics)
            .await
        {
            Ok(s) => s,
            Err(e) => return Err(self.upstream_failed(e)),
        };
        let _ = tcp.set_nodelay(true);
        let loaded = i.tls.current();
        let config = if self.mode == Mode::Http1 {
            loaded.client_http1.clone()
        } else {
            loaded.client_http.clone()
        };
        let handshake = TlsConnector::from(config).connect(i.server_name.clone(), tcp);
        let tls = match tokio::time::timeout(i.handshake_timeout, handshake).await {
            Ok(Ok(t)) => t,
            Ok(Err(e)) => {
                self.refused(RejectReason::from_io(&e), &e);
                return Err(e);
            }
            Err(_) => {
                let e = io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no complete handshake within handshake_timeout_ms",
                );
                self.refused(RejectReason::Timeout, &e);
                return Err(e);
            }
        };
        i.metrics.handshakes.inc();
        let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
        if self.mode != Mode::Http1 {
            i.peer.record(h2, &i.metrics.name);
        }
        Ok(MeshConn {
            io: TokioIo::new(tls),
            h2,
        })
    }

    fn upstream_failed(&self, e: io::Error) -> io::Error {
        self.inner.metrics.upstream_failures.inc();
        warn!(listener = %self.inner.metrics.name, upstream = %self.inner.target, error = %e, "upstream unreachable");
        e
    }

    fn refused(&self, reason: RejectReason, e: &io::Error) {
        self.inner.metrics.handshake_failed(reason);
        warn!(listener = %self.inner.metrics.name, direction = "outbound", peer = %self.inner.target, reason = reason.as_str(), error = %e, "tls handshake refused");
    }
}

/// `(host, port)` to (expiry, addresses).
type Entries = HashMap<(String, u16), (Instant, Arc<[SocketAddr]>)>;

/// A bounded cache of resolved upstream names, shared by every outbound listener of a proxy.
/// IP literals bypass it. A name whose every address refused the connection is forgotten, so
/// the next connect resolves it again (the peer may have moved).
pub(crate) struct DnsCache {
    ttl: Duration,
    max_entries: usize,
    entries: Mutex<Entries>,
}

impl DnsCache {
    /// An empty cache with the configured bounds.
    pub(crate) fn new(config: &Dns) -> Self {
        Self {
            ttl: config.cache_ttl,
            max_entries: config.cache_max_entries,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// The addresses of `host:port`, from the cache while fresh. A failed lookup is counted in
    /// `dns_resolution_failures_total` and never cached.
    pub(crate) async fn resolve(
        &self,
        target: &HostPort,
        metrics: &ListenerMetrics,
    ) -> io::Result<Arc<[SocketAddr]>> {
        if let Some(ip) = target.ip() {
            return Ok(Arc::from([SocketAddr::new(ip, target.port)]));
        }
        let key = (target.host.clone(), target.port);
        if let Some((expires, addrs)) = self.lock().get(&key) {
            if *expires > Instant::now() {
                return Ok(addrs.clone());
            }
        }
        let found = tokio::net::lookup_host((target.host.as_str(), target.port))
            .await
            .and_then(|it| {
                let addrs: Arc<[SocketAddr]> = it.collect();
                if addrs.is_empty() {
                    Err(io::Error::new(io::ErrorKind::NotFound, "no address found"))
                } else {
                    Ok(addrs)
                }
            });
        let addrs = match found {
            Ok(a) => a,
            Err(e) => {
                metrics.dns_failures.inc();
                return Err(io::Error::new(
                    e.kind(),
                    format!("resolving {}: {e}", target.host),
                ));
            }
        };
        if !self.ttl.is_zero() {
            let now = Instant::now();
            let mut entries = self.lock();
            entries.retain(|_, (expires, _)| *expires > now);
            if entries.len() >= self.max_entries {
                let soonest = entries
                    .iter()
                    .min_by_key(|(_, (expires, _))| *expires)
                    .map(|(k, _)| k.clone());
                if let Some(k) = soonest {
                    entries.remove(&k);
                }
            }
            entries.insert(key, (now + self.ttl, addrs.clone()));
        }
        Ok(addrs)
    }

    /// Resolves (through the cache) and connects to the first address that accepts, all within
    /// `limit`.
    pub(crate) async fn connect(
        &self,
        target: &HostPort,
        limit: Duration,
        metrics: &ListenerMetrics,
    ) -> io::Result<TcpStream> {
        let attempt = async {
            let addrs = self.resolve(target, metrics).await?;
            let mut last = None;
            for addr in addrs.iter() {
                match TcpStream::connect(addr).await {
                    Ok(s) => return Ok(s),
                    Err(e) => last = Some(e),
                }
            }
            self.lock().remove(&(target.host.clone(), target.port));
            Err(last.unwrap_or_else(|| io::Error::other("no address to connect to")))
        };
        tokio::time::timeout(limit, attempt)
            .await
            .unwrap_or_else(|_| Err(io::Error::new(io::ErrorKind::TimedOut, "connect timeout")))
    }

    /// Names cached now (tests).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Entries> {
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Connects to an outbound upstream through the cache (the `tcp` path), counting and logging a
/// failure as [`crate::listener`]'s dial does.
pub(crate) async fn dial_upstream(
    dns: &DnsCache,
    upstream: &HostPort,
    limit: Duration,
    metrics: &ListenerMetrics,
    peer: SocketAddr,
) -> Option<TcpStream> {
    match dns.connect(upstream, limit, metrics).await {
        Ok(s) => {
            let _ = s.set_nodelay(true);
            Some(s)
        }
        Err(e) => {
            metrics.upstream_failures.inc();
            warn!(listener = %metrics.name, peer = %peer, upstream = %upstream, error = %e, "upstream unreachable");
            None
        }
    }
}

impl tower_service::Service<Uri> for MeshConnector {
    type Response = MeshConn;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<MeshConn>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Uri) -> Self::Future {
        Box::pin(self.clone().connect())
    }
}

/// An mTLS connection to a peer sidecar.
pub(crate) struct MeshConn {
    io: TokioIo<TlsStream<TcpStream>>,
    h2: bool,
}

impl Connection for MeshConn {
    fn connected(&self) -> Connected {
        let c = Connected::new();
        if self.h2 {
            c.negotiated_h2()
        } else {
            c
        }
    }
}

impl hyper::rt::Read for MeshConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for MeshConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{Direction, Metrics};

    fn cache(ttl_ms: u64, max: usize) -> DnsCache {
        DnsCache::new(&Dns {
            cache_ttl: Duration::from_millis(ttl_ms),
            cache_max_entries: max,
        })
    }

    fn target(s: &str) -> HostPort {
        HostPort::parse(s).unwrap()
    }

    #[tokio::test]
    async fn the_cache_is_bounded_skips_ip_literals_and_counts_failures() {
        let m = Metrics::new().listener("backend", Direction::Outbound);
        let c = cache(60_000, 2);
        for port in [1, 2, 3] {
            let a = c
                .resolve(&target(&format!("localhost:{port}")), &m)
                .await
                .unwrap();
            assert!(
                a.iter().all(|a| a.ip().is_loopback() && a.port() == port),
                "{a:?}"
            );
        }
        assert_eq!(c.len(), 2, "bounded by cache_max_entries");
        c.resolve(&target("127.0.0.1:4"), &m).await.unwrap();
        assert_eq!(c.len(), 2, "IP literals are not cached");
        assert_eq!(m.dns_failures.get(), 0);
        let e = c
            .resolve(&target("no-such-service.invalid:15006"), &m)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("no-such-service.invalid"), "{e}");
        assert_eq!(
            (m.dns_failures.get(), c.len()),
            (1, 2),
            "counted, not cached"
        );

        let off = cache(0, 2);
        off.resolve(&target("localhost:1"), &m).await.unwrap();
        assert_eq!(off.len(), 0, "ttl 0 resolves at every connect");
    }

    #[tokio::test]
    async fn a_name_whose_addresses_all_refuse_is_forgotten() {
        let m = Metrics::new().listener("backend", Direction::Outbound);
        let c = cache(60_000, 8);
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let t = target(&format!("localhost:{port}"));
        let ok = c.connect(&t, Duration::from_secs(10), &m).await;
        // localhost may also resolve to ::1, where nothing listens: any address that accepts.
        assert!(ok.is_ok(), "{ok:?}");
        assert_eq!(c.len(), 1);
        drop(ok);
        drop(l);
        assert!(c.connect(&t, Duration::from_secs(10), &m).await.is_err());
        assert_eq!(c.len(), 0, "re-resolved on the next connect");
    }
}
