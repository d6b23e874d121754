//! The outbound's HTTP/2 connection to a peer sidecar that negotiates h2: one mTLS connection
//! shared by every request (h2 multiplexes them), dialled on first use and again once the peer
//! closes it. This replaces hyper-util's pooled client on that path: the pool keyed by
//! scheme and authority, the checkout and the connector clone it costs per request buy
//! nothing for a single multiplexed connection.

use std::io;
use std::sync::Mutex;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http2;
use hyper_util::rt::TokioExecutor;
use tracing::debug;

use super::{MeshConnector, Mode};

/// Why a request over the shared connection got no response.
#[derive(Debug, thiserror::Error)]
pub(crate) enum H2Error {
    /// No connection: the dial, the mTLS handshake or ALPN failed. The connector has counted
    /// and logged it.
    #[error("connecting to the peer sidecar: {0}")]
    Connect(#[source] io::Error),
    /// The HTTP/2 handshake on a fresh connection failed.
    #[error("http/2 handshake with the peer sidecar: {0}")]
    Handshake(#[source] hyper::Error),
    /// The request failed on the connection.
    #[error("request to the peer sidecar: {0}")]
    Request(#[source] hyper::Error),
}

/// The shared connection of one outbound listener.
pub(crate) struct H2Peer {
    connector: MeshConnector,
    builder: http2::Builder<TokioExecutor>,
    current: Mutex<Option<http2::SendRequest<Incoming>>>,
    /// One dial at a time: requests that arrive meanwhile wait for it and share its connection.
    dialing: tokio::sync::Mutex<()>,
}

impl H2Peer {
    /// The shared connection of the listener `connector` dials for (not dialled yet).
    pub(crate) fn new(connector: MeshConnector) -> Self {
        Self {
            connector: connector.with_mode(Mode::H2),
            builder: http2::Builder::new(TokioExecutor::new()),
            current: Mutex::new(None),
            dialing: tokio::sync::Mutex::new(()),
        }
    }

    /// Sends `req` (absolute URI: scheme and authority become `:scheme` and `:authority`). A
    /// request that never left because the reused connection had closed is sent once more on a
    /// fresh one, as hyper-util's pool does.
    pub(crate) async fn request(
        &self,
        req: Request<Incoming>,
    ) -> Result<Response<Incoming>, H2Error> {
        let (mut send, reused) = self.sender().await?;
        let req = match send.try_send_request(req).await {
            Ok(resp) => return Ok(resp),
            Err(mut e) => match e.take_message() {
                // The connection had closed (`open` drops it now): retry once.
                Some(req) if reused => {
                    debug!(error = %e.error(), "unsent request retried on a new connection");
                    req
                }
                _ => return Err(H2Error::Request(e.into_error())),
            },
        };
        let (mut send, _) = self.sender().await?;
        send.send_request(req).await.map_err(H2Error::Request)
    }

    /// The open connection, or a new one (`false`: it was dialled for this request).
    async fn sender(&self) -> Result<(http2::SendRequest<Incoming>, bool), H2Error> {
        if let Some(s) = self.open() {
            return Ok((s, true));
        }
        // Boxed: the dial and both handshakes would otherwise size every request's future.
        Box::pin(self.dial()).await
    }

    /// Dials a new connection unless another request did meanwhile.
    async fn dial(&self) -> Result<(http2::SendRequest<Incoming>, bool), H2Error> {
        let _one_dial = self.dialing.lock().await;
        if let Some(s) = self.open() {
            return Ok((s, true));
        }
        let io = self
            .connector
            .clone()
            .connect()
            .await
            .map_err(H2Error::Connect)?;
        let (send, conn) = self
            .builder
            .handshake(io)
            .await
            .map_err(H2Error::Handshake)?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                debug!(error = %e, "http/2 connection to the peer sidecar ended with an error");
            }
        });
        *self.lock() = Some(send.clone());
        Ok((send, false))
    }

    fn open(&self) -> Option<http2::SendRequest<Incoming>> {
        let mut current = self.lock();
        if current.as_ref().is_some_and(http2::SendRequest::is_closed) {
            *current = None;
        }
        current.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<http2::SendRequest<Incoming>>> {
        self.current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
