//! The admin listener (plain HTTP): `/metrics` in the Prometheus text format and `/ready`, which
//! answers 200 once the evidence provider has produced evidence and 503 before.

use std::sync::Arc;

use bytes::Bytes;
use http::{header, Response, StatusCode};
use http_body_util::Full;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{debug, warn};

use super::handler::error;
use super::State;

pub(super) async fn serve(
    listener: TcpListener,
    state: Arc<State>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(error) => {
                    warn!(%error, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        let state = state.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request: http::Request<_>| {
                let state = state.clone();
                async move { Ok::<_, std::convert::Infallible>(answer(&state, request.uri().path())) }
            });
            let result = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10))
                .serve_connection(TokioIo::new(tcp), service)
                .await;
            if let Err(error) = result {
                debug!(%peer, %error, "admin connection ended with an error");
            }
        });
    }
}

fn answer(state: &State, path: &str) -> Response<Full<Bytes>> {
    match path {
        "/metrics" => Response::builder()
            .header(header::CONTENT_TYPE, "text/plain; version=0.0.4")
            .body(Full::new(Bytes::from(state.metrics.render())))
            .unwrap_or_else(|_| error(StatusCode::INTERNAL_SERVER_ERROR, "metrics")),
        "/ready" => {
            if *state.ready.borrow() {
                Response::new(Full::new(Bytes::from_static(b"ready\n")))
            } else {
                error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the evidence provider has not produced evidence yet",
                )
            }
        }
        _ => error(
            StatusCode::NOT_FOUND,
            "no such path; try /metrics or /ready",
        ),
    }
}
