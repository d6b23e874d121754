//! The admin listener, on its own thread and single-threaded runtime so that scrapes never
//! compete with the data path: `/live`, `/ready`, `/metrics`, `/config` and `POST /shutdown`
//! (loopback peers only).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::metrics::Metrics;

/// What the admin endpoints read and trigger.
#[derive(Clone)]
pub struct AdminState {
    /// The proxy's metrics (also carries the ready flag).
    pub metrics: Arc<Metrics>,
    /// The effective config as JSON (paths only, never key material).
    pub config_json: Arc<str>,
    /// Cancelled to begin the drain.
    pub shutdown: CancellationToken,
    /// Cancelled when the proxy has stopped; ends the admin thread.
    pub stop: CancellationToken,
}

/// Serves the admin API on `listener` from a dedicated thread until `state.stop` is cancelled.
pub fn spawn(
    listener: std::net::TcpListener,
    state: AdminState,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    listener.set_nonblocking(true)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("enclaveid-admin".into())
        .spawn(move || {
            rt.block_on(async move {
                let listener = match tokio::net::TcpListener::from_std(listener) {
                    Ok(l) => l,
                    Err(e) => {
                        warn!(error = %e, "admin listener unusable");
                        return;
                    }
                };
                // Admin connections are tracked so that the answer to `POST /shutdown` (and any
                // scrape in flight) is written before the process exits.
                let tracker = tokio_util::task::TaskTracker::new();
                loop {
                    let (stream, peer) = tokio::select! {
                        () = state.stop.cancelled() => break,
                        r = listener.accept() => match r {
                            Ok(a) => a,
                            Err(e) => {
                                debug!(error = %e, "admin accept failed");
                                continue;
                            }
                        },
                    };
                    let state = state.clone();
                    tracker.spawn(async move {
                        let svc =
                            hyper::service::service_fn(move |req| handle(req, peer, state.clone()));
                        let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                            .serve_connection(TokioIo::new(stream), svc)
                            .await;
                    });
                }
                tracker.close();
                let _ =
                    tokio::time::timeout(std::time::Duration::from_secs(1), tracker.wait()).await;
            });
        })
}

fn reply(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    r
}

#[allow(clippy::unused_async, reason = "hyper's service_fn takes a future")]
async fn handle(
    req: Request<Incoming>,
    peer: SocketAddr,
    state: AdminState,
) -> Result<Response<Full<Bytes>>, Infallible> {
    const TEXT: &str = "text/plain; charset=utf-8";
    let r = match (req.method(), req.uri().path()) {
        (&Method::GET, "/live") => reply(StatusCode::OK, TEXT, "live\n"),
        (&Method::GET, "/ready") => {
            if state.metrics.ready.get() == 1 {
                reply(StatusCode::OK, TEXT, "ready\n")
            } else if state.shutdown.is_cancelled() {
                reply(StatusCode::SERVICE_UNAVAILABLE, TEXT, "draining\n")
            } else {
                reply(StatusCode::SERVICE_UNAVAILABLE, TEXT, "starting\n")
            }
        }
        (&Method::GET, "/metrics") => reply(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            state.metrics.encode(),
        ),
        (&Method::GET, "/config") => reply(
            StatusCode::OK,
            "application/json",
            state.config_json.as_bytes().to_vec(),
        ),
        (&Method::POST, "/shutdown") => {
            if peer.ip().is_loopback() {
                info!(peer = %peer, "shutdown requested through the admin API");
                state.shutdown.cancel();
                reply(StatusCode::ACCEPTED, TEXT, "draining\n")
            } else {
                warn!(peer = %peer, "shutdown refused: not from loopback");
                reply(
                    StatusCode::FORBIDDEN,
                    TEXT,
                    "shutdown is only accepted from loopback\n",
                )
            }
        }
        (_, "/live" | "/ready" | "/metrics" | "/config" | "/shutdown") => {
            reply(StatusCode::METHOD_NOT_ALLOWED, TEXT, "method not allowed\n")
        }
        _ => reply(
            StatusCode::NOT_FOUND,
            TEXT,
            "not found: try /live, /ready, /metrics, /config or POST /shutdown\n",
        ),
    };
    Ok(r)
}
