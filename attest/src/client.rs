//! The client side of `verify https://HOST:PORT`: one TLS connection that trusts no CA, a fresh
//! random nonce, `GET /attestation?nonce=HEX` on that same connection, and the SPKI hash of
//! the key the server proved it holds during that handshake. The caller then verifies the
//! evidence against exactly that key and nonce, so a relay that terminates TLS with another key
//! fails the binding even if it forwards genuine evidence.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty, Limited};
use hyper_util::rt::TokioIo;
use rand::RngCore as _;
use rustls::pki_types::ServerName;
use thiserror::Error;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use enclaveid_attest_verifier::evidence::MAX_JSON_LEN;
use enclaveid_attest_verifier::Evidence;

/// Length of the nonce `verify` sends.
pub const NONCE_LEN: usize = 32;
/// Default attestation port when the URL has none.
pub const DEFAULT_PORT: u16 = 15443;

/// Why evidence could not be fetched.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The URL is not `https://HOST[:PORT][/PATH]`.
    #[error("url={url:?}: {reason}")]
    Url {
        /// The URL.
        url: String,
        /// Why it was refused.
        reason: &'static str,
    },
    /// TCP, TLS or HTTP failed.
    #[error("{what}: {reason}")]
    Transport {
        /// The step.
        what: &'static str,
        /// The failure.
        reason: String,
    },
    /// The server answered with an error status.
    #[error("the server answered HTTP {status}: {reason}")]
    Status {
        /// The status code.
        status: u16,
        /// The reason from the JSON body, or the body itself.
        reason: String,
    },
    /// The answer is not evidence.
    #[error("the answer is not valid evidence: {0}")]
    Evidence(#[from] enclaveid_attest_verifier::evidence::EvidenceError),
    /// The whole exchange took too long.
    #[error("no evidence within {0:?}")]
    Timeout(Duration),
}

/// A parsed `https://` target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Host name or IP address (without brackets).
    pub host: String,
    /// Port.
    pub port: u16,
    /// Path prefix under which `/attestation` lives (empty for the root).
    pub prefix: String,
}

impl Target {
    /// Parses `https://HOST[:PORT][/PREFIX]`.
    pub fn parse(url: &str) -> Result<Self, ClientError> {
        let bad = |reason| ClientError::Url {
            url: url.to_owned(),
            reason,
        };
        let rest = url
            .strip_prefix("https://")
            .ok_or_else(|| bad("must start with https://"))?;
        let (authority, path) = rest.find('/').map_or((rest, ""), |i| rest.split_at(i));
        if authority.is_empty() || authority.contains('@') {
            return Err(bad("missing or invalid host"));
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (host, after) = v6
                .split_once(']')
                .ok_or_else(|| bad("unclosed [ in host"))?;
            let port = match after.strip_prefix(':') {
                Some(p) => p.parse().map_err(|_| bad("invalid port"))?,
                None if after.is_empty() => DEFAULT_PORT,
                None => return Err(bad("junk after ]")),
            };
            (host.to_owned(), port)
        } else {
            match authority.split_once(':') {
                Some((host, port)) => (
                    host.to_owned(),
                    port.parse().map_err(|_| bad("invalid port"))?,
                ),
                None => (authority.to_owned(), DEFAULT_PORT),
            }
        };
        if path.contains(['?', '#']) || path.bytes().any(|b| b.is_ascii_control() || b == b' ') {
            return Err(bad(
                "the path may not carry a query, fragment, spaces or control characters",
            ));
        }
        let prefix = path.trim_end_matches('/');
        let prefix = prefix
            .strip_suffix("/attestation")
            .unwrap_or(prefix)
            .to_owned();
        ServerName::try_from(host.clone()).map_err(|_| bad("invalid host name"))?;
        Ok(Self { host, port, prefix })
    }
}

/// Evidence as fetched, with what the client itself observed.
#[derive(Debug, Clone)]
pub struct Fetched {
    /// The evidence as the server sent it.
    pub evidence: Evidence,
    /// The exact JSON bytes received (for `--save`).
    pub raw: Vec<u8>,
    /// The nonce this client generated.
    pub nonce: Vec<u8>,
    /// SHA-256 of the SPKI of the key the server used on this connection.
    pub tls_spki_sha256: [u8; 32],
}

/// A fresh random nonce from the OS generator.
#[must_use]
pub fn fresh_nonce() -> Vec<u8> {
    let mut nonce = vec![0u8; NONCE_LEN];
    rand::rngs::OsRng.fill_bytes(&mut nonce);
    nonce
}

/// Connects, fetches evidence for a fresh nonce on that connection, and returns it together with
/// the key the server presented. Nothing here trusts the server; the caller verifies.
pub async fn fetch(target: &Target, timeout: Duration) -> Result<Fetched, ClientError> {
    tokio::time::timeout(timeout, fetch_inner(target, fresh_nonce()))
        .await
        .map_err(|_| ClientError::Timeout(timeout))?
}

/// Like [`fetch`], with a caller-chosen nonce (tests, and clients that derive their own).
pub async fn fetch_with_nonce(
    target: &Target,
    nonce: Vec<u8>,
    timeout: Duration,
) -> Result<Fetched, ClientError> {
    tokio::time::timeout(timeout, fetch_inner(target, nonce))
        .await
        .map_err(|_| ClientError::Timeout(timeout))?
}

async fn fetch_inner(target: &Target, nonce: Vec<u8>) -> Result<Fetched, ClientError> {
    let transport = |what| {
        move |e: &dyn std::fmt::Display| ClientError::Transport {
            what,
            reason: e.to_string(),
        }
    };
    let tcp = TcpStream::connect((target.host.as_str(), target.port))
        .await
        .map_err(|e| transport("connecting")(&e))?;
    let name =
        ServerName::try_from(target.host.clone()).map_err(|e| transport("server name")(&e))?;
    let connector = TlsConnector::from(Arc::new(crate::tls::attestation_client_config()));
    let tls = connector
        .connect(name, tcp)
        .await
        .map_err(|e| transport("TLS handshake")(&e))?;
    // The key of *this* connection: the one the server just proved it holds.
    let leaf = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .ok_or(ClientError::Transport {
            what: "TLS handshake",
            reason: "the server presented no certificate".into(),
        })?;
    let spki =
        crate::tls::spki_of_certificate(leaf).map_err(|e| transport("server certificate")(&e))?;
    let tls_spki_sha256 = enclaveid_attest_verifier::binding::spki_sha256(&spki);

    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| transport("HTTP handshake")(&e))?;
    let driver = tokio::spawn(connection);
    let authority = if target.host.contains(':') {
        format!("[{}]:{}", target.host, target.port)
    } else {
        format!("{}:{}", target.host, target.port)
    };
    let request = http::Request::get(format!(
        "{}/attestation?nonce={}",
        target.prefix,
        hex::encode(&nonce)
    ))
    .header(http::header::HOST, authority)
    .header(http::header::ACCEPT, "application/json")
    .body(Empty::<Bytes>::new())
    .map_err(|e| transport("building the request")(&e))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| transport("sending the request")(&e))?;
    let status = response.status();
    let body = Limited::new(response.into_body(), MAX_JSON_LEN)
        .collect()
        .await
        .map_err(|e| transport("reading the answer")(&e))?
        .to_bytes()
        .to_vec();
    driver.abort();
    if !status.is_success() {
        let reason = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
            .unwrap_or_else(|| String::from_utf8_lossy(&body[..body.len().min(512)]).into_owned());
        return Err(ClientError::Status {
            status: status.as_u16(),
            reason,
        });
    }
    let evidence = Evidence::from_json(&body)?;
    Ok(Fetched {
        evidence,
        raw: body,
        nonce,
        tls_spki_sha256,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        let t = Target::parse("https://api.example.com:8443").unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.prefix.as_str()),
            ("api.example.com", 8443, "")
        );
        let t = Target::parse("https://127.0.0.1/attestation").unwrap();
        assert_eq!((t.port, t.prefix.as_str()), (DEFAULT_PORT, ""));
        let t = Target::parse("https://h:1/api/").unwrap();
        assert_eq!(t.prefix, "/api");
        let t = Target::parse("https://[::1]:9").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("::1", 9));
        for bad in [
            "http://h:1",
            "https://",
            "https://h:99999",
            "https://h:1/?x=1",
            "https://u@h:1",
            "https://[::1",
            "https://bad host:1",
        ] {
            assert!(Target::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn nonces_are_fresh() {
        let a = fresh_nonce();
        assert_eq!(a.len(), NONCE_LEN);
        assert_ne!(a, fresh_nonce());
    }
}
