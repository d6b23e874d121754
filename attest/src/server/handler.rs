//! The `/attestation` endpoint: nonce parsing, rate limiting, the provider call, the answer.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{info, warn};

use super::State;

/// Shortest nonce accepted, in bytes.
pub const NONCE_MIN: usize = 16;
/// Longest nonce accepted, in bytes.
pub const NONCE_MAX: usize = 64;

/// Why a nonce was refused (the 400 body says this).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum NonceError {
    /// No `nonce` parameter.
    #[error("missing query parameter nonce (hex, {NONCE_MIN} to {NONCE_MAX} bytes)")]
    Missing,
    /// More than one `nonce` parameter.
    #[error("query parameter nonce given more than once")]
    Repeated,
    /// Not hexadecimal.
    #[error("nonce is not hex: {0}")]
    NotHex(String),
    /// Decodes to the wrong number of bytes.
    #[error("nonce is {0} bytes, must be {NONCE_MIN} to {NONCE_MAX}")]
    Length(usize),
}

/// Extracts and checks the nonce from a query string such as `nonce=00ff...`.
pub fn parse_nonce(query: Option<&str>) -> Result<Vec<u8>, NonceError> {
    let mut found = None;
    for pair in query.unwrap_or("").split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        if key == "nonce" {
            if found.is_some() {
                return Err(NonceError::Repeated);
            }
            found = Some(value);
        }
    }
    let value = found.ok_or(NonceError::Missing)?;
    if value.len() > NONCE_MAX * 2 + 2 {
        return Err(NonceError::Length(value.len() / 2));
    }
    let nonce = hex::decode(value).map_err(|e| NonceError::NotHex(e.to_string()))?;
    if !(NONCE_MIN..=NONCE_MAX).contains(&nonce.len()) {
        return Err(NonceError::Length(nonce.len()));
    }
    Ok(nonce)
}

pub(super) async fn handle<B>(
    state: Arc<State>,
    spki_sha256: [u8; 32],
    request: Request<B>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let response = route(&state, &spki_sha256, &request).await;
    if request.uri().path() == "/attestation" {
        state
            .metrics
            .requests
            .with_label_values(&[response.status().as_str()])
            .inc();
    }
    Ok(response)
}

async fn route<B>(
    state: &Arc<State>,
    spki_sha256: &[u8; 32],
    request: &Request<B>,
) -> Response<Full<Bytes>> {
    if request.uri().path() != "/attestation" {
        return error(
            StatusCode::NOT_FOUND,
            "no such path; use GET /attestation?nonce=HEX",
        );
    }
    if request.method() != Method::GET {
        let mut response = error(StatusCode::METHOD_NOT_ALLOWED, "only GET is allowed");
        response
            .headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static("GET"));
        return response;
    }
    let nonce = match parse_nonce(request.uri().query()) {
        Ok(nonce) => nonce,
        Err(reason) => return error(StatusCode::BAD_REQUEST, &reason.to_string()),
    };
    if let Err(wait) = state.bucket.try_acquire() {
        let mut response = error(
            StatusCode::TOO_MANY_REQUESTS,
            "rate limit exceeded; retry later",
        );
        let secs = wait.as_secs() + 1;
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from(secs));
        return response;
    }
    let report_data = enclaveid_attest_verifier::binding::report_data(spki_sha256, &nonce);
    match produce(state, report_data).await {
        Ok(body) => Response::builder()
            .status(StatusCode::OK)
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::CACHE_CONTROL, "no-store")
            .body(Full::new(Bytes::from(body)))
            .unwrap_or_else(|_| error(StatusCode::INTERNAL_SERVER_ERROR, "response")),
        Err(reason) => {
            warn!(provider = state.provider.name(), %reason, "evidence provider failed");
            error(StatusCode::SERVICE_UNAVAILABLE, &reason)
        }
    }
}

/// Runs the provider on a blocking thread with a deadline; returns the JSON body or the reason.
async fn produce(state: &Arc<State>, report_data: [u8; 64]) -> Result<Vec<u8>, String> {
    let provider = state.provider.clone();
    let name = provider.name();
    let started = Instant::now();
    let deadline = state.options.provider_timeout;
    let call = async {
        // The permit travels into the blocking call and is released only when the device
        // answers, so a hung device cannot pile up threads.
        let permit = state
            .provider_slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| "the server is shutting down".to_owned())?;
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            provider.evidence(report_data)
        })
        .await
        .map_err(|join| format!("evidence provider {name} crashed: {join}"))
    };
    let outcome = match tokio::time::timeout(deadline, call).await {
        Err(_) => Err(format!(
            "evidence provider {name} did not answer within {deadline:?}"
        )),
        Ok(Err(reason)) => Err(reason),
        Ok(Ok(Err(error))) => Err(format!("evidence provider {name} failed: {error}")),
        Ok(Ok(Ok(evidence))) => {
            serde_json::to_vec(&evidence).map_err(|e| format!("encoding the evidence as JSON: {e}"))
        }
    };
    let label = if outcome.is_ok() { "ok" } else { "error" };
    state
        .metrics
        .evidence_seconds
        .with_label_values(&[name, label])
        .observe(started.elapsed().as_secs_f64());
    if outcome.is_ok() {
        mark_ready(state);
    }
    outcome
}

fn mark_ready(state: &State) {
    if !*state.ready.borrow() {
        state.ready.send_replace(true);
        state.metrics.ready.set(1);
        info!(provider = state.provider.name(), "evidence provider ready");
    }
}

/// Asks the provider for one piece of evidence at start-up (which also fills the VCEK cache),
/// retrying with backoff until it works; `/ready` turns true then.
pub(super) async fn warm_up(state: Arc<State>, mut shutdown: watch::Receiver<bool>) {
    let mut delay = Duration::from_millis(500);
    loop {
        // Bound to a key nobody holds and an all-zero nonce: useless to anyone but us.
        match produce(&state, [0u8; 64]).await {
            Ok(_) => return,
            Err(reason) => warn!(%reason, retry_in = ?delay, "evidence provider not ready"),
        }
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            _ = shutdown.changed() => return,
        }
        delay = (delay * 2).min(Duration::from_secs(30));
    }
}

/// A JSON error body: `{"error": "..."}`.
pub(super) fn error(status: StatusCode, reason: &str) -> Response<Full<Bytes>> {
    let body = serde_json::json!({ "error": reason }).to_string();
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        #[test]
        fn any_query_is_answered(query in ".{0,300}") {
            if let Ok(nonce) = parse_nonce(Some(&query)) {
                proptest::prop_assert!((NONCE_MIN..=NONCE_MAX).contains(&nonce.len()));
            }
        }
    }

    #[test]
    fn nonce_rules() {
        let ok = "00".repeat(16);
        assert_eq!(parse_nonce(Some(&format!("nonce={ok}"))).unwrap().len(), 16);
        assert_eq!(
            parse_nonce(Some(&format!("x=1&nonce={}", "Ab".repeat(64))))
                .unwrap()
                .len(),
            64
        );
        assert_eq!(parse_nonce(None), Err(NonceError::Missing));
        assert_eq!(parse_nonce(Some("other=1")), Err(NonceError::Missing));
        assert_eq!(
            parse_nonce(Some(&format!("nonce={ok}&nonce={ok}"))),
            Err(NonceError::Repeated)
        );
        assert!(matches!(
            parse_nonce(Some(&format!("nonce={}", "zz".repeat(16)))),
            Err(NonceError::NotHex(_))
        ));
        assert!(matches!(
            parse_nonce(Some("nonce=abc")),
            Err(NonceError::NotHex(_))
        ));
        assert_eq!(
            parse_nonce(Some(&format!("nonce={}", "00".repeat(15)))),
            Err(NonceError::Length(15))
        );
        assert_eq!(
            parse_nonce(Some(&format!("nonce={}", "00".repeat(65)))),
            Err(NonceError::Length(65))
        );
        assert!(matches!(
            parse_nonce(Some(&format!("nonce={}", "0".repeat(100_000)))),
            Err(NonceError::Length(_))
        ));
    }
}
