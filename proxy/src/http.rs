//! The `http` data path: a hyper server (HTTP/1.1 and HTTP/2, chosen by ALPN or the h2 preface)
//! in front of pooled hyper clients. Inbound forwards to the app (HTTP/1.1, or h2c for gRPC);
//! outbound forwards to the peer sidecar over mTLS with ALPN h2, except `Upgrade` requests,
//! which take an HTTP/1.1 connection so that WebSocket and friends pass through. The
//! `x-forwarded-client-cert` header is removed from everything that arrives and, inbound, set to
//! the verified peer identity.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use enclaveid_pki::identity::PeerIdentity;
use http::header::{
    HeaderMap, HeaderName, HeaderValue, CONNECTION, CONTENT_TYPE, HOST, PROXY_AUTHENTICATE,
    PROXY_AUTHORIZATION, TE, TRANSFER_ENCODING, UPGRADE,
};
use http::uri::{Authority, Scheme};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::config::{AppProtocol, Inbound, Limits, Outbound};
use crate::listener::{Kind, Listener};
use crate::mesh::{DnsCache, H2Error, H2Peer, MeshConnector, Mode};
use crate::metrics::ListenerMetrics;
use crate::tls_state::TlsState;
use crate::Shared;

mod pool;
use pool::{AppError, AppPool};

/// The header Envoy uses for the verified client certificate.
pub(crate) static XFCC: HeaderName = HeaderName::from_static("x-forwarded-client-cert");

/// Response bodies: the upstream's, or one we made (502).
pub(crate) type Body = Either<Incoming, Full<Bytes>>;

/// Pooled clients from an inbound listener to the app.
pub(crate) struct AppClients {
    h1: Arc<AppPool>,
    h2: Client<FixedConnector, Incoming>,
    authority: Authority,
    mode: AppProtocol,
    server: auto::Builder<TokioExecutor>,
}

impl AppClients {
    /// Builds the clients for one inbound listener.
    pub(crate) fn new(config: &Inbound) -> Result<Self, http::Error> {
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        http.set_connect_timeout(Some(config.limits.connect_timeout));
        let target: Uri = format!("http://{}", config.forward).parse()?;
        let h1 = AppPool::new(http.clone(), target.clone(), config.limits.idle_timeout);
        let connector = FixedConnector { http, target };
        let mut b = Client::builder(TokioExecutor::new());
        b.pool_timer(TokioTimer::new())
            .pool_idle_timeout(config.limits.idle_timeout);
        let h2 = b.http2_only(true).build(connector);
        Ok(Self {
            h1,
            h2,
            authority: config.forward.to_string().parse()?,
            mode: config.app_protocol,
            server: server(&config.limits),
        })
    }
}

/// mTLS clients from an outbound listener to the peer sidecar: one shared HTTP/2 connection
/// for a peer that negotiates h2 by ALPN (every request multiplexed on it), a pooled HTTP/1.1
/// client for any other, and an HTTP/1.1-only hop for `Upgrade` requests.
pub(crate) struct PeerClients {
    mesh_h2: H2Peer,
    mesh_http1: Client<MeshConnector, Incoming>,
    mesh_upgrade: Client<MeshConnector, Incoming>,
    learn: MeshConnector,
    authority: Authority,
    server: auto::Builder<TokioExecutor>,
}

impl PeerClients {
    /// Builds the clients for one outbound listener.
    pub(crate) fn new(
        config: &Outbound,
        tls: Arc<TlsState>,
        dns: Arc<DnsCache>,
        metrics: ListenerMetrics,
    ) -> Result<Self, http::Error> {
        let learn = MeshConnector::new(config, tls, dns, metrics);
        let mut b = Client::builder(TokioExecutor::new());
        b.pool_timer(TokioTimer::new())
            .pool_idle_timeout(config.limits.idle_timeout);
        let mesh_http1 = b.build(learn.clone());
        let mesh_upgrade = b.build(learn.clone().with_mode(Mode::Http1));
        let mesh_h2 = H2Peer::new(learn.clone());
        Ok(Self {
            mesh_h2,
            mesh_http1,
            mesh_upgrade,
            learn,
            authority: config.upstream.to_string().parse()?,
            server: server(&config.limits),
        })
    }

    /// Sends a request on the right client, learning the peer's protocol first if nobody knows
    /// it yet.
    async fn request(
        &self,
        req: Request<Incoming>,
        upgrade: bool,
    ) -> Result<Response<Incoming>, UpstreamError> {
        if upgrade {
            return Ok(self.mesh_upgrade.request(req).await?);
        }
        let h2 = match self.learn.peer().known() {
            Some(h2) => h2,
            // Boxed: the probe dials, and its future would otherwise size every request's.
            None => Box::pin(self.learn.peer().is_h2(&self.learn))
                .await
                .map_err(UpstreamError::Probe)?,
        };
        if h2 {
            Ok(self.mesh_h2.request(req).await?)
        } else {
            Ok(self.mesh_http1.request(req).await?)
        }
    }
}

/// Why a forwarded request got no response (each is answered with a 502).
#[derive(Debug, thiserror::Error)]
enum UpstreamError {
    /// Learning the peer's protocol failed (the mesh connector counted and logged the dial).
    #[error("learning the peer's protocol: {0}")]
    Probe(#[source] std::io::Error),
    /// A pooled hyper-util client failed.
    #[error(transparent)]
    Pooled(#[from] hyper_util::client::legacy::Error),
    /// The shared HTTP/2 connection to the peer failed.
    #[error(transparent)]
    Mesh(#[from] H2Error),
    /// An HTTP/1.1 connection to the app failed.
    #[error(transparent)]
    App(#[from] AppError),
}

impl UpstreamError {
    /// Whether the mesh connector counted this one already (a failed outbound dial).
    fn counted(&self, outbound: bool) -> bool {
        match self {
            Self::Probe(_) | Self::Mesh(H2Error::Connect(_)) => true,
            Self::Pooled(e) => outbound && e.is_connect(),
            Self::Mesh(_) | Self::App(_) => false,
        }
    }
}

fn server(limits: &Limits) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        // hyper starts this timer as soon as it waits for a head, also on an idle keep-alive
        // connection, so it is the idle timeout (not the handshake timeout).
        .header_read_timeout(limits.idle_timeout)
        .max_buf_size(limits.max_header_bytes);
    b.http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX));
    b
}

/// The Envoy-format XFCC value for a verified peer: `By`, `Hash`, `Subject`, `URI`, `DNS`.
#[must_use]
pub(crate) fn xfcc(
    own: &PeerIdentity,
    cert: Option<&[u8]>,
    peer: &PeerIdentity,
) -> Option<HeaderValue> {
    use sha2::Digest;
    use std::fmt::Write;
    let cert = cert?;
    let mut v = String::with_capacity(256);
    if let Some(by) = own.uris.first().or(own.dns_names.first()) {
        let _ = write!(v, "By={by};");
    }
    v.push_str("Hash=");
    for b in sha2::Sha256::digest(cert) {
        let _ = write!(v, "{b:02x}");
    }
    if let Ok((_, parsed)) = x509_parser::parse_x509_certificate(cert) {
        let subject = parsed
            .subject()
            .to_string()
            .replace('\\', "\\\\")
            .replace('"', "\\\"");
        let _ = write!(v, ";Subject=\"{subject}\"");
    }
    if let Some(uri) = peer.uris.first() {
        let _ = write!(v, ";URI={uri}");
    }
    for dns in &peer.dns_names {
        let _ = write!(v, ";DNS={dns}");
    }
    HeaderValue::from_str(&v).ok()
}

/// Serves HTTP on a verified inbound mTLS connection.
pub(crate) async fn serve_inbound<T>(
    io: T,
    peer: SocketAddr,
    listener: Arc<Listener>,
    xfcc: Option<HeaderValue>,
    shared: &Arc<Shared>,
) where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Kind::Inbound { app: Some(app), .. } = &listener.kind else {
        return;
    };
    let builder = app.server.clone();
    serve(io, peer, listener, xfcc, builder, shared, forward_inbound).await;
}

/// Serves HTTP on a plaintext outbound connection from the app.
pub(crate) async fn serve_outbound<T>(
    io: T,
    peer: SocketAddr,
    listener: Arc<Listener>,
    shared: &Arc<Shared>,
) where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Kind::Outbound {
        peer: Some(clients),
        ..
    } = &listener.kind
    else {
        return;
    };
    let builder = clients.server.clone();
    serve(io, peer, listener, None, builder, shared, forward_outbound).await;
}

/// Serves one connection, answering each request with `forward` (one per direction, so that
/// each direction's request future is only as large as its own path: hyper moves it at every
/// request, and spawns it on HTTP/2).
async fn serve<T, F, Fut>(
    io: T,
    peer: SocketAddr,
    listener: Arc<Listener>,
    xfcc: Option<HeaderValue>,
    builder: auto::Builder<TokioExecutor>,
    shared: &Arc<Shared>,
    forward: F,
) where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: Fn(
            Request<Incoming>,
            Arc<Listener>,
            Option<HeaderValue>,
            tokio_util::task::TaskTracker,
        ) -> Fut
        + Clone
        + Send
        + Sync
        + 'static,
    Fut: std::future::Future<Output = Result<Response<Body>, Infallible>> + Send + 'static,
{
    let activity = Arc::new(AtomicU64::new(0));
    let limits = match &listener.kind {
        Kind::Inbound { config, .. } => &config.limits,
        Kind::Outbound { config, .. } => &config.limits,
    };
    let (idle, first_request_grace) = (limits.idle_timeout, limits.handshake_timeout);
    let io = Counting {
        inner: io,
        m: listener.metrics.clone(),
        activity: activity.clone(),
    };
    let tracker = shared.tracker.clone();
    let l = listener.clone();
    // A permit here means "this connection has received a request" (see the drain below).
    let requested = Arc::new(tokio::sync::Notify::new());
    let r = requested.clone();
    let svc = hyper::service::service_fn(move |req| {
        r.notify_one();
        forward(req, l.clone(), xfcc.clone(), tracker.clone())
    });
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), svc);
    tokio::pin!(conn);
    let mut tick = tokio::time::interval_at(Instant::now() + idle, idle);
    // Made once: a `select!` in a loop would otherwise build (and register) it at every wake-up.
    let cancelled = shared.shutdown.cancelled();
    tokio::pin!(cancelled);
    // Created (boxed) only once a drain begins: it would otherwise size every connection task.
    let mut grace: Option<std::pin::Pin<Box<tokio::time::Sleep>>> = None;
    let (mut seen, mut draining, mut closing) = (0, false, false);
    // Drain: this connection was accepted before it began. Once it has received a request, hyper
    // is told to finish: the request in flight is answered (`connection: close` on HTTP/1.1,
    // GOAWAY on HTTP/2) and then the connection closes; an idle keep-alive connection closes at
    // once. A connection that has not sent its first request yet (its TLS handshake was still
    // running at SIGTERM) gets up to `handshake_timeout_ms` for it. `hard_stop` bounds it all.
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    if let Some(status) = automatic_answer(&*e) {
                        // hyper answered this one itself, before any request existed.
                        listener.metrics.response(status);
                        debug!(listener = listener.name(), peer = %peer, status, error = %e, "malformed request refused");
                    } else {
                        debug!(listener = listener.name(), peer = %peer, error = %e, "http connection ended with an error");
                    }
                }
                return;
            }
            () = &mut cancelled, if !draining => {
                draining = true;
                grace = Some(Box::pin(tokio::time::sleep(first_request_grace)));
            }
            () = requested.notified(), if draining && !closing => {
                closing = true;
                conn.as_mut().graceful_shutdown();
            }
            () = async { if let Some(g) = grace.as_mut() { g.await } }, if draining && !closing => {
                closing = true;
                debug!(listener = listener.name(), peer = %peer, "draining: no request on this connection");
                conn.as_mut().graceful_shutdown();
            }
            _ = tick.tick() => {
                let now = activity.load(Ordering::Relaxed);
                if now == seen {
                    debug!(listener = listener.name(), peer = %peer, "idle timeout");
                    return;
                }
                seen = now;
            }
        }
    }
}

/// The status hyper's HTTP/1 server wrote by itself before closing with `e`, if it wrote one:
/// 431 for a request head over `max_header_bytes` (or too many headers, or a URI too long: hyper
/// answers 414 to that one, the same class), 400 for any other malformed head. An h2 preface on
/// an HTTP/1 connection and I/O errors get no answer.
fn automatic_answer(e: &(dyn std::error::Error + 'static)) -> Option<u16> {
    let mut cause = Some(e);
    while let Some(e) = cause {
        if let Some(h) = e.downcast_ref::<hyper::Error>() {
            return if h.is_parse_too_large() {
                Some(431)
            } else if h.is_parse() && !h.is_parse_version_h2() && !h.is_parse_status() {
                Some(400)
            } else {
                None
            };
        }
        cause = e.source();
    }
    None
}

fn is_upgrade(req: &Request<Incoming>) -> bool {
    req.version() == Version::HTTP_11 && req.headers().contains_key(UPGRADE)
}

fn is_grpc(req: &Request<Incoming>) -> bool {
    req.headers()
        .get(CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Removes hop-by-hop headers (RFC 9110 §7.6.1), keeping `te: trailers` (gRPC needs it) and, on
/// an upgrade, `connection` and `upgrade`; and removes every `x-forwarded-client-cert`. One
/// pass over the names finds what is there first: most messages carry none of these, and each
/// removal by name costs a hash.
fn strip(h: &mut HeaderMap, upgrade: bool) {
    let (mut connection, mut upgrade_header, mut fixed, mut xfcc) = (false, false, false, false);
    for name in h.keys() {
        if name == CONNECTION {
            connection = true;
        } else if name == UPGRADE {
            upgrade_header = true;
        } else if name == TE
            || name == TRANSFER_ENCODING
            || name == KEEP_ALIVE
            || name == PROXY_CONNECTION
            || name == PROXY_AUTHENTICATE
            || name == PROXY_AUTHORIZATION
        {
            fixed = true;
        } else if name == XFCC {
            xfcc = true;
        }
    }
    if connection && !upgrade {
        // Cloning a value shares its bytes; the list is read while the map is changed.
        let mut values = h.get_all(CONNECTION).iter();
        let first = values.next().cloned();
        let rest: Vec<HeaderValue> = values.cloned().collect();
        for v in first.iter().chain(&rest) {
            let Ok(list) = v.to_str() else { continue };
            for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
                // A short scan of the names instead of a lookup by an unparsed name: the usual
                // `keep-alive` and `close` nominate nothing that is there.
                if !name.eq_ignore_ascii_case("te")
                    && h.keys().any(|k| k.as_str().eq_ignore_ascii_case(name))
                {
                    h.remove(name);
                }
            }
        }
        h.remove(CONNECTION);
    }
    if upgrade_header && !upgrade {
        h.remove(UPGRADE);
    }
    if fixed {
        for name in [
            &KEEP_ALIVE,
            &PROXY_CONNECTION,
            &PROXY_AUTHENTICATE,
            &PROXY_AUTHORIZATION,
            &TRANSFER_ENCODING,
        ] {
            h.remove(name);
        }
        if h.get(TE)
            .is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"trailers"))
        {
            h.remove(TE);
        }
    }
    if xfcc {
        h.remove(&XFCC);
    }
}

/// What both directions do to a request before sending it on: hop-by-hop headers and any XFCC
/// out first (a peer may nominate any header in `Connection`), then our XFCC, so nothing the
/// peer sends can remove or replace the identity we vouch for. The request's authority (h2
/// `:authority`, else the Host header) moves into the returned URI parts, so hyper writes it
/// as `:authority` on HTTP/2 and as `Host` on HTTP/1.1, never both.
fn prepare(
    req: &mut Request<Incoming>,
    xfcc: Option<HeaderValue>,
) -> (bool, http::uri::Parts, Option<hyper::upgrade::OnUpgrade>) {
    let upgrade = is_upgrade(req);
    strip(req.headers_mut(), upgrade);
    if let Some(v) = xfcc {
        req.headers_mut().insert(XFCC.clone(), v);
    }
    let mut parts = std::mem::take(req.uri_mut()).into_parts();
    let host = req.headers_mut().remove(HOST);
    if parts.authority.is_none() {
        parts.authority = host.and_then(|h| Authority::try_from(h.as_bytes()).ok());
    }
    let down_upgrade = upgrade.then(|| hyper::upgrade::on(&mut *req));
    *req.version_mut() = Version::HTTP_11;
    (upgrade, parts, down_upgrade)
}

/// Inbound: to the app, over HTTP/1.1 or (configured, or `auto` and gRPC) h2c.
async fn forward_inbound(
    mut req: Request<Incoming>,
    listener: Arc<Listener>,
    xfcc: Option<HeaderValue>,
    tracker: tokio_util::task::TaskTracker,
) -> Result<Response<Body>, Infallible> {
    let start = Instant::now();
    let Kind::Inbound { app: Some(app), .. } = &listener.kind else {
        unreachable!("inbound http listeners always have app clients")
    };
    let (upgrade, mut parts, down_upgrade) = prepare(&mut req, xfcc);
    let h2 = !upgrade
        && (app.mode == AppProtocol::Http2 || app.mode == AppProtocol::Auto && is_grpc(&req));
    let result = if h2 {
        parts.scheme = Some(Scheme::HTTP);
        parts.authority.get_or_insert_with(|| app.authority.clone());
        set_uri(&mut req, parts);
        app.h2.request(req).await.map_err(UpstreamError::from)
    } else {
        // HTTP/1.1: the authority goes in Host (its host, and its port unless 80, as
        // hyper-util's client wrote it), the URI in origin form (authority form for CONNECT).
        let authority = parts
            .authority
            .take()
            .unwrap_or_else(|| app.authority.clone());
        let host = match authority.port_u16() {
            Some(port) if port != 80 => {
                HeaderValue::try_from(format!("{}:{port}", authority.host()))
            }
            _ => HeaderValue::from_str(authority.host()),
        };
        if let Ok(host) = host {
            req.headers_mut().insert(HOST, host);
        }
        *req.uri_mut() = if req.method() == http::Method::CONNECT {
            Uri::from(authority)
        } else {
            parts
                .path_and_query
                .map_or_else(|| Uri::from_static("/"), Uri::from)
        };
        app.h1.request(req).await.map_err(UpstreamError::from)
    };
    Ok(finish(result, &listener, start, down_upgrade, &tracker))
}

/// Outbound: to the peer sidecar over mTLS.
async fn forward_outbound(
    mut req: Request<Incoming>,
    listener: Arc<Listener>,
    xfcc: Option<HeaderValue>,
    tracker: tokio_util::task::TaskTracker,
) -> Result<Response<Body>, Infallible> {
    let start = Instant::now();
    let Kind::Outbound {
        peer: Some(peer), ..
    } = &listener.kind
    else {
        unreachable!("outbound http listeners always have peer clients")
    };
    let (upgrade, mut parts, down_upgrade) = prepare(&mut req, xfcc);
    parts.scheme = Some(Scheme::HTTPS);
    parts
        .authority
        .get_or_insert_with(|| peer.authority.clone());
    set_uri(&mut req, parts);
    let result = peer.request(req, upgrade).await;
    Ok(finish(result, &listener, start, down_upgrade, &tracker))
}

/// The response to send back (the upstream's, hop-by-hop headers and XFCC removed, or a 502),
/// counted; on `101 Switching Protocols`, the two upgraded connections are joined.
fn finish(
    result: Result<Response<Incoming>, UpstreamError>,
    listener: &Listener,
    start: Instant,
    down_upgrade: Option<hyper::upgrade::OnUpgrade>,
    tracker: &tokio_util::task::TaskTracker,
) -> Response<Body> {
    let m = &listener.metrics;
    let resp = match result {
        Ok(mut resp) => {
            if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
                resp.headers_mut().remove(&XFCC);
                if let Some(down) = down_upgrade {
                    let up = hyper::upgrade::on(&mut resp);
                    let name = listener.name().to_owned();
                    tracker.spawn(async move {
                        match tokio::try_join!(down, up) {
                            Ok((d, u)) => {
                                let r = tokio::io::copy_bidirectional(
                                    &mut TokioIo::new(d),
                                    &mut TokioIo::new(u),
                                )
                                .await;
                                debug!(listener = name, result = ?r, "upgraded connection closed");
                            }
                            Err(e) => debug!(listener = name, error = %e, "upgrade failed"),
                        }
                    });
                }
            } else {
                strip(resp.headers_mut(), false);
            }
            resp.map(Either::Left)
        }
        Err(e) => {
            let outbound = matches!(listener.kind, Kind::Outbound { .. });
            if !e.counted(outbound) {
                m.upstream_failures.inc();
            }
            if matches!(e, UpstreamError::Probe(_)) {
                debug!(listener = listener.name(), error = %e, "learning the peer's protocol failed");
            } else {
                let cause = std::error::Error::source(&e)
                    .map(ToString::to_string)
                    .unwrap_or_default();
                warn!(listener = listener.name(), error = %e, cause, "upstream request failed");
            }
            return bad_gateway(m, start);
        }
    };
    m.response(resp.status().as_u16());
    m.duration.observe(start.elapsed().as_secs_f64());
    resp
}

/// A counted 502.
fn bad_gateway(m: &ListenerMetrics, start: Instant) -> Response<Body> {
    let mut r = Response::new(Either::Right(Full::from("upstream unavailable\n")));
    *r.status_mut() = StatusCode::BAD_GATEWAY;
    m.response(r.status().as_u16());
    m.duration.observe(start.elapsed().as_secs_f64());
    r
}

fn set_uri(req: &mut Request<Incoming>, mut parts: http::uri::Parts) {
    if parts.path_and_query.is_none() {
        parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
    }
    // Scheme, authority and path are all present, which is all `from_parts` checks.
    *req.uri_mut() = Uri::from_parts(parts).expect("scheme, authority and path are set");
}

/// Dials the app's fixed address whatever the request's authority says (that authority is the
/// Host the app should see, not where it is).
#[derive(Clone)]
pub(crate) struct FixedConnector {
    http: HttpConnector,
    target: Uri,
}

impl tower_service::Service<Uri> for FixedConnector {
    type Response = <HttpConnector as tower_service::Service<Uri>>::Response;
    type Error = <HttpConnector as tower_service::Service<Uri>>::Error;
    type Future = <HttpConnector as tower_service::Service<Uri>>::Future;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.http.poll_ready(cx)
    }

    fn call(&mut self, _: Uri) -> Self::Future {
        self.http.call(self.target.clone())
    }
}

/// Counts bytes on the accepted connection (metrics and the idle check).
struct Counting<T> {
    inner: T,
    m: ListenerMetrics,
    activity: Arc<AtomicU64>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Counting<T> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = (buf.filled().len() - before) as u64;
        if n > 0 {
            self.m.to_upstream.inc_by(n);
            self.activity.fetch_add(n, Ordering::Relaxed);
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Counting<T> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let r = std::pin::Pin::new(&mut self.inner).poll_write(cx, buf);
        if let std::task::Poll::Ready(Ok(n)) = r {
            self.count(n);
        }
        r
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let r = std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let std::task::Poll::Ready(Ok(n)) = r {
            self.count(n);
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl<T> Counting<T> {
    fn count(&self, n: usize) {
        self.m.to_downstream.inc_by(n as u64);
        self.activity.fetch_add(n as u64, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn names(h: &HeaderMap) -> Vec<&str> {
        let mut n: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        n.sort_unstable();
        n
    }

    #[test]
    fn strip_removes_hop_by_hop_nominated_and_identity_headers() {
        let mut h = map(&[
            ("connection", "keep-alive, X-Secret"),
            ("connection", "x-other, te"),
            ("x-secret", "1"),
            ("x-other", "1"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("proxy-authorization", "Basic eA=="),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("te", "trailers"),
            ("x-forwarded-client-cert", "By=evil"),
            ("x-kept", "1"),
        ]);
        strip(&mut h, false);
        assert_eq!(names(&h), ["te", "x-kept"], "te: trailers stays (gRPC)");

        let mut h = map(&[("te", "gzip"), ("content-type", "text/plain")]);
        strip(&mut h, false);
        assert_eq!(names(&h), ["content-type"]);

        let mut h = map(&[
            ("connection", "upgrade"),
            ("upgrade", "websocket"),
            ("x-forwarded-client-cert", "By=evil"),
        ]);
        strip(&mut h, true);
        assert_eq!(
            names(&h),
            ["connection", "upgrade"],
            "an upgrade keeps connection and upgrade, never XFCC"
        );

        let mut h = map(&[("upgrade", "h2c"), ("host", "a")]);
        strip(&mut h, false);
        assert_eq!(names(&h), ["host"]);

        let mut h = map(&[("connection", "X-Forwarded-Client-Cert")]);
        h.append(&XFCC, HeaderValue::from_static("By=ours"));
        strip(&mut h, false);
        assert!(h.is_empty(), "{h:?}");
    }
}
