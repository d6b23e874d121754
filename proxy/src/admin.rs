//! The admin listener, on its own thread and single-threaded runtime so that scrapes never
//! compete with the data path: `/live`, `/ready`, `/metrics`, `/config` and `POST /shutdown`
//! (loopback peers only). Also the client side of it: [`probe`], a plain HTTP GET to a loopback
//! admin URL for exec probes (`enclaveid-proxy probe`), so the admin port can stay on loopback.

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
            // Draining first: the drain task clears `ready` a moment after the cancel.
            if state.shutdown.is_cancelled() {
                reply(StatusCode::SERVICE_UNAVAILABLE, TEXT, "draining\n")
            } else if state.metrics.ready.get() == 1 {
                reply(StatusCode::OK, TEXT, "ready\n")
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

/// The default URL of `enclaveid-proxy probe`.
pub const DEFAULT_PROBE_URL: &str = "http://127.0.0.1:15000/ready";
/// The default whole-probe deadline of `enclaveid-proxy probe`, ms.
pub const DEFAULT_PROBE_TIMEOUT_MS: u64 = 1_000;

/// Why a probe failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProbeError {
    /// The URL is not a plain-HTTP loopback URL (bad usage: exit 2).
    #[error("--url {url:?}: {why}")]
    Usage {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// The endpoint could not be reached or answered badly (exit 1).
    #[error("{url}: {why}")]
    Failed {
        /// The URL probed.
        url: String,
        /// What happened.
        why: String,
    },
}

impl ProbeError {
    /// The process exit code: 2 for bad usage, 1 for a failed probe.
    #[must_use]
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Usage { .. } => 2,
            Self::Failed { .. } => 1,
        }
    }
}

/// A parsed probe target: a loopback socket address and an origin-form path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeTarget {
    /// Where to connect.
    pub addr: SocketAddr,
    /// Path and query, starting with `/`.
    pub path: String,
}

impl ProbeTarget {
    /// Parses `http://<loopback IP or localhost>[:port]/path`.
    pub fn parse(url: &str) -> Result<Self, ProbeError> {
        let usage = |why| ProbeError::Usage {
            url: url.to_owned(),
            why,
        };
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| usage("only plain http:// URLs are probed"))?;
        let (authority, path) = rest.find('/').map_or((rest, "/"), |i| rest.split_at(i));
        if authority.contains('@') {
            return Err(usage("user information is not supported"));
        }
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(':') && (h.starts_with('[') || !h.contains(':')) => {
                (h, p.parse::<u16>().map_err(|_| usage("invalid port"))?)
            }
            _ => (authority, 80),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let ip: std::net::IpAddr = if host.eq_ignore_ascii_case("localhost") {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            host.parse()
                .map_err(|_| usage("the host must be a loopback IP literal or localhost"))?
        };
        if !ip.is_loopback() {
            return Err(usage("the probe only talks to loopback"));
        }
        if port == 0 {
            return Err(usage("invalid port"));
        }
        if path.bytes().any(|b| b.is_ascii_control() || b == b' ') {
            return Err(usage("the path holds a space or a control character"));
        }
        Ok(Self {
            addr: SocketAddr::new(ip, port),
            path: path.to_owned(),
        })
    }
}

/// GETs `url` (HTTP/1.1, `connection: close`) within `timeout` and returns the status line on a
/// 2xx answer. Blocking, with no runtime: it runs as a kubelet exec probe and must stay cheap.
pub fn probe(url: &str, timeout: std::time::Duration) -> Result<String, ProbeError> {
    use std::io::{Read, Write};
    let target = ProbeTarget::parse(url)?;
    let failed = |why: String| ProbeError::Failed {
        url: url.to_owned(),
        why,
    };
    if timeout.is_zero() {
        return Err(ProbeError::Usage {
            url: url.to_owned(),
            why: "--timeout-ms must be at least 1",
        });
    }
    // One deadline for the whole exchange: each blocking step gets what is left of it.
    let deadline = tokio::time::Instant::now() + timeout;
    let left = || {
        Some(deadline.saturating_duration_since(tokio::time::Instant::now()))
            .filter(|d| !d.is_zero())
            .ok_or_else(|| failed(format!("no answer within {} ms", timeout.as_millis())))
    };
    let mut s = std::net::TcpStream::connect_timeout(&target.addr, left()?)
        .map_err(|e| failed(format!("connecting to {}: {e}", target.addr)))?;
    s.set_write_timeout(Some(left()?))
        .and_then(|()| {
            s.write_all(
                format!(
                    "GET {} HTTP/1.1\r\nhost: {}\r\nuser-agent: enclaveid-proxy-probe\r\nconnection: close\r\n\r\n",
                    target.path, target.addr
                )
                .as_bytes(),
            )
        })
        .map_err(|e| failed(format!("sending the request: {e}")))?;
    // Read the head (and a little of the body, for the message); the answer is tiny.
    let mut answer = Vec::with_capacity(512);
    let mut buf = [0u8; 512];
    while answer.len() < 4096 {
        s.set_read_timeout(Some(left()?))
            .map_err(|e| failed(e.to_string()))?;
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Err(failed(format!(
                    "no answer within {} ms",
                    timeout.as_millis()
                )))
            }
            Err(e) => return Err(failed(format!("reading the answer: {e}"))),
        }
    }
    let text = String::from_utf8_lossy(&answer);
    let status_line = text
        .lines()
        .next()
        .unwrap_or_default()
        .trim_end()
        .to_owned();
    let status = status_line
        .strip_prefix("HTTP/1.")
        .and_then(|r| r.get(2..5))
        .and_then(|c| c.parse::<u16>().ok())
        .ok_or_else(|| failed(format!("not an HTTP answer: {status_line:?}")))?;
    if (200..300).contains(&status) {
        Ok(status_line)
    } else {
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.trim())
            .unwrap_or_default();
        Err(failed(format!(
            "{status_line}: {}",
            body.chars().take(200).collect::<String>()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_urls_are_loopback_http_only() {
        let t = ProbeTarget::parse("http://127.0.0.1:15000/ready").unwrap();
        assert_eq!(t.addr.to_string(), "127.0.0.1:15000");
        assert_eq!(t.path, "/ready");
        let t = ProbeTarget::parse("http://[::1]:9/live?x=1").unwrap();
        assert_eq!(
            (t.addr.to_string().as_str(), t.path.as_str()),
            ("[::1]:9", "/live?x=1")
        );
        let t = ProbeTarget::parse("http://localhost").unwrap();
        assert_eq!((t.addr.port(), t.path.as_str()), (80, "/"));
        for (bad, why) in [
            ("https://127.0.0.1:15000/ready", "only plain http"),
            ("http://10.0.0.1:15000/ready", "only talks to loopback"),
            ("http://example.com/ready", "loopback IP literal"),
            ("http://127.0.0.1:99999/ready", "invalid port"),
            ("http://127.0.0.1:0/ready", "invalid port"),
            ("http://u@127.0.0.1:1/", "user information"),
            ("http://127.0.0.1:1/a b", "space"),
        ] {
            let e = ProbeTarget::parse(bad).unwrap_err();
            assert_eq!(e.exit_code(), 2);
            assert!(e.to_string().contains(why), "{bad}: {e}");
        }
    }
}
