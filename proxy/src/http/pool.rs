//! HTTP/1.1 connections from an inbound listener to its app, kept open between requests. This
//! replaces hyper-util's pooled client on the inbound's hot path: that client keys its pool by
//! scheme and authority, clones itself and its connector, rebuilds the URI and formats a Host
//! header for every request, and spawns a task per request to return the connection once the
//! response body is read. Here a connection goes back on the list as soon as the response head
//! is in; the next request takes the newest one that is ready again (its previous response
//! fully read), and dials a new one if none is.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use http::{Request, Response, Uri};
use hyper::body::{Body, Incoming};
use hyper::client::conn::http1;
use hyper_util::client::legacy::connect::HttpConnector;
use tokio::time::Instant;
use tower_service::Service;
use tracing::debug;

/// Why a request to the app got no response.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AppError {
    /// The app's address refused or timed out.
    #[error("connecting to the app: {0}")]
    Connect(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The HTTP/1.1 handshake on a new connection failed.
    #[error("http/1.1 handshake with the app: {0}")]
    Handshake(#[source] hyper::Error),
    /// The request failed on the connection.
    #[error("request to the app: {0}")]
    Request(#[source] hyper::Error),
}

/// One open connection.
struct Conn<B> {
    send: http1::SendRequest<B>,
    /// When a request last took it.
    used: Instant,
}

/// The HTTP/1.1 connections of one inbound listener to its app, sending request bodies of type
/// `B` (the inbound's `Incoming`).
pub(crate) struct AppPool<B = Incoming> {
    http: HttpConnector,
    target: Uri,
    idle_timeout: Duration,
    /// Every open connection that no request holds right now (busy ones too, until their
    /// response body is read).
    conns: Mutex<Vec<Conn<B>>>,
    reaper: AtomicBool,
}

impl<B> AppPool<B>
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    /// A pool dialling `target` (`http://ip:port`) with `http`'s timeouts; a connection idle for
    /// `idle_timeout` is closed.
    pub(crate) fn new(http: HttpConnector, target: Uri, idle_timeout: Duration) -> Arc<Self> {
        Arc::new(Self {
            http,
            target,
            idle_timeout,
            conns: Mutex::new(Vec::new()),
            reaper: AtomicBool::new(false),
        })
    }

    /// Sends `req` (origin-form URI, Host header set). A request that never left because the
    /// reused connection had closed is sent once more on a new one, as hyper-util's pool does.
    pub(crate) async fn request(
        self: &Arc<Self>,
        req: Request<B>,
    ) -> Result<Response<Incoming>, AppError> {
        let (send, reused) = match self.checkout() {
            Some(s) => (s, true),
            None => (Box::pin(self.dial()).await?, false),
        };
        let req = match self.send(send, req).await {
            Ok(resp) => return Ok(resp),
            Err((Some(req), e)) if reused => {
                debug!(error = %e, "unsent request retried on a new connection to the app");
                req
            }
            Err((_, e)) => return Err(AppError::Request(e)),
        };
        let send = Box::pin(self.dial()).await?;
        self.send(send, req)
            .await
            .map_err(|(_, e)| AppError::Request(e))
    }

    async fn send(
        &self,
        mut conn: http1::SendRequest<B>,
        req: Request<B>,
    ) -> Result<Response<Incoming>, (Option<Request<B>>, hyper::Error)> {
        let response = conn.try_send_request(req);
        // Back on the list at once: it is not ready again until this response's body is read,
        // and `checkout` skips it until then.
        self.lock().push(Conn {
            send: conn,
            used: Instant::now(),
        });
        response
            .await
            .map_err(|mut e| (e.take_message(), e.into_error()))
    }

    /// A connection that is ready for a request, most recently used first; closed ones are
    /// dropped.
    fn checkout(&self) -> Option<http1::SendRequest<B>> {
        let mut conns = self.lock();
        let mut i = conns.len();
        while i > 0 {
            i -= 1;
            // `swap_remove` moves in the last entry, which the scan has seen already.
            if conns[i].send.is_closed() {
                conns.swap_remove(i);
            } else if conns[i].send.is_ready() {
                return Some(conns.swap_remove(i).send);
            }
        }
        None
    }

    async fn dial(self: &Arc<Self>) -> Result<http1::SendRequest<B>, AppError> {
        self.start_reaper();
        let io = self
            .http
            .clone()
            .call(self.target.clone())
            .await
            .map_err(|e| AppError::Connect(e.into()))?;
        let (send, conn) = http1::handshake(io).await.map_err(AppError::Handshake)?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                debug!(error = %e, "http/1.1 connection to the app ended with an error");
            }
        });
        Ok(send)
    }

    /// Closes connections idle for `idle_timeout` (dropping the sender ends an idle
    /// connection), checked every `idle_timeout` while the pool exists.
    fn start_reaper(self: &Arc<Self>) {
        if self.reaper.swap(true, Ordering::AcqRel) {
            return;
        }
        let pool: Weak<Self> = Arc::downgrade(self);
        let every = self.idle_timeout;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval_at(Instant::now() + every, every);
            loop {
                tick.tick().await;
                let Some(pool) = pool.upgrade() else { return };
                pool.lock().retain(|c| {
                    let idle = c.send.is_ready() && c.used.elapsed() >= every;
                    !c.send.is_closed() && !idle
                });
            }
        });
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Conn<B>>> {
        self.conns
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;
    use std::sync::atomic::AtomicUsize;

    use bytes::Bytes;
    use http_body_util::{BodyExt, Empty, Full};
    use hyper_util::rt::TokioIo;

    /// Connections the app accepted, and how many of them are still open.
    #[derive(Default)]
    struct Seen {
        accepted: AtomicUsize,
        open: AtomicUsize,
    }

    /// A real HTTP/1.1 app on loopback answering "ok"; `keep_alive: false` closes after each.
    async fn app(keep_alive: bool) -> (Uri, Arc<Seen>) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let uri: Uri = format!("http://{}", l.local_addr().unwrap())
            .parse()
            .unwrap();
        let seen = Arc::new(Seen::default());
        let s = seen.clone();
        tokio::spawn(async move {
            loop {
                let (tcp, _) = l.accept().await.unwrap();
                s.accepted.fetch_add(1, Ordering::SeqCst);
                s.open.fetch_add(1, Ordering::SeqCst);
                let s = s.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(|_req| async {
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .keep_alive(keep_alive)
                        .serve_connection(TokioIo::new(tcp), svc)
                        .await;
                    s.open.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        (uri, seen)
    }

    fn pool(target: Uri, idle: Duration) -> Arc<AppPool<Empty<Bytes>>> {
        let mut http = HttpConnector::new();
        http.set_connect_timeout(Some(Duration::from_secs(10)));
        AppPool::new(http, target, idle)
    }

    async fn get(p: &Arc<AppPool<Empty<Bytes>>>) -> String {
        let req = Request::get("/")
            .header("host", "app")
            .body(Empty::new())
            .unwrap();
        let resp = tokio::time::timeout(Duration::from_secs(10), p.request(req))
            .await
            .expect("answered in time")
            .expect("answered");
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(body.to_vec()).unwrap()
    }

    /// Waits (generously) for `cond`: the pool's reaper runs on its own schedule.
    async fn eventually(what: &str, cond: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !cond() {
            assert!(Instant::now() < deadline, "{what} did not happen");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn sequential_requests_share_one_connection_and_an_idle_one_is_closed() {
        let (uri, seen) = app(true).await;
        let p = pool(uri, Duration::from_millis(300));
        for _ in 0..3 {
            assert_eq!(get(&p).await, "ok");
        }
        assert_eq!(
            seen.accepted.load(Ordering::SeqCst),
            1,
            "one kept-alive connection"
        );
        eventually("the idle connection closing", || {
            seen.open.load(Ordering::SeqCst) == 0
        })
        .await;
        assert_eq!(
            get(&p).await,
            "ok",
            "a new connection after the idle one closed"
        );
        assert_eq!(seen.accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn concurrent_requests_each_get_a_connection_and_closed_ones_are_replaced() {
        let (uri, seen) = app(true).await;
        let p = pool(uri, Duration::from_mins(1));
        let answers = futures_util::future::join_all((0..4).map(|_| get(&p))).await;
        assert!(answers.iter().all(|a| a == "ok"), "{answers:?}");
        let after_burst = seen.accepted.load(Ordering::SeqCst);
        assert!((1..=4).contains(&after_burst), "{after_burst}");
        assert_eq!(get(&p).await, "ok");
        assert_eq!(seen.accepted.load(Ordering::SeqCst), after_burst, "reused");

        let (uri, seen) = app(false).await;
        let p = pool(uri, Duration::from_mins(1));
        for _ in 0..3 {
            assert_eq!(get(&p).await, "ok");
        }
        assert_eq!(
            seen.accepted.load(Ordering::SeqCst),
            3,
            "an app that closes after each response gets a new connection each time"
        );
    }

    #[tokio::test]
    async fn an_unreachable_app_is_a_connect_error() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let uri: Uri = format!("http://{}", l.local_addr().unwrap())
            .parse()
            .unwrap();
        drop(l);
        let p = pool(uri, Duration::from_mins(1));
        let req = Request::get("/").body(Empty::<Bytes>::new()).unwrap();
        let e = tokio::time::timeout(Duration::from_secs(20), p.request(req))
            .await
            .expect("failed in time")
            .unwrap_err();
        assert!(matches!(e, AppError::Connect(_)), "{e}");
    }
}
