//! The connector the outbound HTTP client pools: TCP to the peer sidecar, then mTLS with the
//! current client config, the pinned CA and the configured `server_name`. It reports an ALPN h2
//! result to hyper so the pooled connection is shared as HTTP/2.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use enclaveid_pki::tls::RejectReason;
use http::Uri;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tracing::warn;

use crate::config::Outbound;
use crate::metrics::ListenerMetrics;
use crate::tls_state::TlsState;

/// Dials the peer sidecar over mTLS.
#[derive(Clone)]
pub(crate) struct MeshConnector {
    target: Arc<str>,
    server_name: ServerName<'static>,
    tls: Arc<TlsState>,
    metrics: ListenerMetrics,
    http1_only: bool,
    connect_timeout: Duration,
    handshake_timeout: Duration,
}

impl MeshConnector {
    /// A connector for one outbound listener.
    ///
    /// # Panics
    /// If `server_name` was not validated by the config parser.
    #[must_use]
    pub(crate) fn new(
        config: &Outbound,
        tls: Arc<TlsState>,
        metrics: ListenerMetrics,
        http1_only: bool,
    ) -> Self {
        Self {
            target: config.upstream.to_string().into(),
            server_name: ServerName::try_from(config.server_name.clone())
                .expect("server_name is validated by the config parser"),
            tls,
            metrics,
            http1_only,
            connect_timeout: config.limits.connect_timeout,
            handshake_timeout: config.limits.handshake_timeout,
        }
    }

    /// The same connector, offering only http/1.1 (for Upgrade requests).
    #[must_use]
    pub(crate) fn http1_only(mut self) -> Self {
        self.http1_only = true;
        self
    }

    async fn connect(self) -> io::Result<MeshConn> {
        let tcp =
            match tokio::time::timeout(self.connect_timeout, TcpStream::connect(&*self.target))
                .await
            {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => return Err(self.upstream_failed(e)),
                Err(_) => {
                    return Err(self.upstream_failed(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "connect timeout",
                    )))
                }
            };
        let _ = tcp.set_nodelay(true);
        let loaded = self.tls.current();
        let config = if self.http1_only {
            loaded.client_http1.clone()
        } else {
            loaded.client_http.clone()
        };
        let handshake = TlsConnector::from(config).connect(self.server_name.clone(), tcp);
        let tls = match tokio::time::timeout(self.handshake_timeout, handshake).await {
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
        self.metrics.handshakes.inc();
        let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
        Ok(MeshConn {
            io: TokioIo::new(tls),
            h2,
        })
    }

    fn upstream_failed(&self, e: io::Error) -> io::Error {
        self.metrics.upstream_failures.inc();
        warn!(listener = %self.metrics.name, upstream = %self.target, error = %e, "upstream unreachable");
        e
    }

    fn refused(&self, reason: RejectReason, e: &io::Error) {
        self.metrics.handshake_failed(reason);
        warn!(listener = %self.metrics.name, direction = "outbound", peer = %self.target, reason = reason.as_str(), error = %e, "tls handshake refused");
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
