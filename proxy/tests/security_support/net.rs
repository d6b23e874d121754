//! The hostile side of the tests: a rustls client that presents whatever certificate it is given
//! (and trusts any server, as an attacker would), a rustls server that does the same for the
//! outbound direction, Prometheus text scraping, and a process's fd count and RSS from /proc.

#![allow(
    dead_code,
    reason = "shared by several security test crates; each uses a part"
)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::pki::Minted;

/// Bounds every await that could hang.
pub(crate) const STEP: Duration = Duration::from_secs(10);

pub(crate) fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

pub(crate) fn certs(pem: &str) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .unwrap()
}

pub(crate) fn key(pem: &str) -> PrivateKeyDer<'static> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).unwrap()
}

/// Accepts any server: the attacker does not care who it talks to.
#[derive(Debug)]
struct AnyServer(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A certificate and key as rustls uses them, without any check of the certificate (rustls's
/// `with_client_auth_cert` parses it and would refuse, e.g., an unknown critical extension).
pub(crate) fn certified(c: &Minted) -> Arc<rustls::sign::CertifiedKey> {
    let signing = provider()
        .key_provider
        .load_private_key(key(&c.key_pem))
        .unwrap();
    Arc::new(rustls::sign::CertifiedKey::new(
        certs(&c.chain_pem),
        signing,
    ))
}

/// Presents one certificate whatever the server asks for.
#[derive(Debug)]
struct Present(Arc<rustls::sign::CertifiedKey>);

impl rustls::client::ResolvesClientCert for Present {
    fn resolve(
        &self,
        _: &[&[u8]],
        _: &[SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.clone())
    }
    fn has_certs(&self) -> bool {
        true
    }
}

/// A client configuration presenting `cert` (or none) with the given versions.
pub(crate) fn attacker_config(
    cert: Option<&Minted>,
    versions: &[&'static rustls::SupportedProtocolVersion],
    alpn: &[&[u8]],
) -> rustls::ClientConfig {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer(provider())));
    let mut config = match cert {
        Some(c) => builder.with_client_cert_resolver(Arc::new(Present(certified(c)))),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    config
}

/// What an attacking client saw.
#[derive(Debug)]
pub(crate) struct Attempt {
    /// The client finished its side of the handshake (in TLS 1.3 it does so before the server
    /// has judged the client certificate).
    pub(crate) client_handshake_ok: bool,
    /// Application bytes that came back (an echo or a response): must be 0 when refused.
    pub(crate) bytes_back: usize,
    /// How it ended, for the failure message.
    pub(crate) end: String,
}

/// Connects with `config`, and if the handshake completes writes `payload` and reads until the
/// server closes or errors.
pub(crate) async fn attempt(
    addr: SocketAddr,
    config: rustls::ClientConfig,
    payload: &[u8],
) -> Attempt {
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let handshake = tokio::time::timeout(STEP, connector.connect(name, tcp))
        .await
        .unwrap_or_else(|_| panic!("attacker handshake against {addr} hung"));
    let mut tls = match handshake {
        Err(e) => {
            return Attempt {
                client_handshake_ok: false,
                bytes_back: 0,
                end: format!("handshake error: {e}"),
            }
        }
        Ok(s) => s,
    };
    let write = tls.write_all(payload).await;
    let _ = tls.flush().await;
    let mut back = 0;
    let mut buf = [0u8; 4096];
    let end = loop {
        match tokio::time::timeout(STEP, tls.read(&mut buf)).await {
            Err(_) => break "read timed out (connection left open)".to_owned(),
            Ok(Ok(0)) => break format!("eof after write {write:?}"),
            Ok(Ok(n)) => back += n,
            Ok(Err(e)) => break format!("read error: {e}"),
        }
    };
    Attempt {
        client_handshake_ok: true,
        bytes_back: back,
        end,
    }
}

/// A hostile upstream for the outbound direction: a TLS server presenting `cert`, requiring no
/// client certificate, counting every application byte it is sent.
pub(crate) struct RogueServer {
    pub(crate) addr: SocketAddr,
    pub(crate) bytes: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RogueServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RogueServer {
    pub(crate) async fn start(
        cert: &Minted,
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> Self {
        let config = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(versions)
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs(&cert.chain_pem), key(&cert.key_pem))
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let bytes = Arc::new(AtomicUsize::new(0));
        let counter = bytes.clone();
        let task = tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                let counter = counter.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(sock).await else {
                        return;
                    };
                    let mut buf = [0u8; 4096];
                    while let Ok(n) = tls.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        counter.fetch_add(n, Ordering::SeqCst);
                        let _ = tls.write_all(&buf[..n]).await;
                    }
                });
            }
        });
        Self { addr, bytes, task }
    }

    pub(crate) fn bytes(&self) -> usize {
        self.bytes.load(Ordering::SeqCst)
    }
}

/// A Prometheus text exposition, keyed by `name{sorted labels}`.
#[derive(Debug, Default, Clone)]
pub(crate) struct Scrape(pub BTreeMap<String, f64>);

impl Scrape {
    pub(crate) fn parse(text: &str) -> Self {
        let mut map = BTreeMap::new();
        for line in text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
        {
            let Some((series, value)) = line.rsplit_once(' ') else {
                continue;
            };
            if let Ok(v) = value.parse::<f64>() {
                map.insert(series.to_owned(), v);
            }
        }
        Self(map)
    }

    /// Sum over every series of `name` whose labels include all of `labels`.
    pub(crate) fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.0
            .iter()
            .filter(|(series, _)| {
                let (n, rest) = series.split_once('{').unwrap_or((series.as_str(), ""));
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
            })
            .map(|(_, v)| v)
            .sum()
    }

    /// Series of `name` that changed between `before` and `self`, with their deltas.
    pub(crate) fn changed(&self, before: &Self, name: &str) -> Vec<(String, f64)> {
        self.0
            .iter()
            .filter(|(s, _)| s.starts_with(&format!("{name}{{")) || s.as_str() == name)
            .filter_map(|(s, v)| {
                let d = v - before.0.get(s).copied().unwrap_or(0.0);
                (d != 0.0).then(|| (s.clone(), d))
            })
            .collect()
    }
}

/// A plain HTTP/1.0 GET on loopback (1.0: no chunked body to undo); returns (status, body).
pub(crate) async fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nhost: {addr}\r\n\r\n").as_bytes())
        .await?;
    let mut out = Vec::new();
    tokio::time::timeout(STEP, s.read_to_end(&mut out))
        .await
        .map_err(|_| std::io::Error::other("admin request timed out"))??;
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP response: {text:?}")))?;
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_owned();
    Ok((status, body))
}

/// Open file descriptors and resident memory (KiB) of a process, from /proc.
pub(crate) fn proc_stats(pid: u32) -> (usize, u64) {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    (fds, rss)
}
