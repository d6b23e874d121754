//! Shared test parts: per-test PKI written to a temp dir, in-process proxies from YAML, tiny
//! apps (TCP echo that records what reached it, an HTTP app), a rustls client, metric reads,
//! and the external-tool gate (missing tool: loud skip locally, failure under `CI=true`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use enclaveid_pki::testing::{LeafSpec, TestCa, TestCert};
use enclaveid_pki::tls::{Material, TlsSettings};
use enclaveid_proxy::config::Config;
use enclaveid_proxy::tls_state::TlsSource;
use enclaveid_proxy::ProxyHandle;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub const BACKEND: &str = "backend.default.svc.cluster.local";

/// Fails the test if `f` does not finish within 10 s.
pub async fn within<F: std::future::Future>(what: &str, f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(10), f)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

/// Polls `cond` every 10 ms for up to 10 s.
pub async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    within(what, async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

/// A CA plus a temp dir to write workload files into.
pub struct Pki {
    pub ca: TestCa,
    pub dir: tempfile::TempDir,
}

impl Pki {
    pub fn new() -> Self {
        Self {
            ca: TestCa::new("mesh test CA"),
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// Writes ca.pem/cert.pem/key.pem for `sa` under `<dir>/<sa>/` and returns that dir.
    pub fn workload(&self, sa: &str) -> PathBuf {
        let leaf = self.ca.workload(sa);
        self.write(sa, &self.ca.cert_pem(), &leaf)
    }

    /// Writes files by atomic rename, as init's renewer does.
    pub fn write(&self, sub: &str, ca_pem: &str, leaf: &TestCert) -> PathBuf {
        let d = self.dir.path().join(sub);
        std::fs::create_dir_all(&d).unwrap();
        for (name, body) in [
            ("ca.pem", ca_pem),
            ("cert.pem", leaf.cert_pem.as_str()),
            ("key.pem", leaf.key_pem.as_str()),
        ] {
            let tmp = d.join(format!(".{name}.tmp"));
            std::fs::write(&tmp, body).unwrap();
            std::fs::rename(&tmp, d.join(name)).unwrap();
        }
        d
    }

    /// A rustls client config for a leaf (issued by any CA) trusting this PKI's CA.
    pub fn client(&self, leaf: &TestCert, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
        client_config(&self.ca.cert_pem(), leaf, alpn)
    }
}

/// A rustls client presenting `leaf` (no verification of the leaf itself: it may be a bad one)
/// and trusting `ca_pem`.
pub fn client_config(ca_pem: &str, leaf: &TestCert, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    let roots = roots(ca_pem);
    let key = enclaveid_pki::pem::parse_private_key(leaf.key_pem.as_bytes(), "key").unwrap();
    let mut c = rustls::ClientConfig::builder_with_provider(enclaveid_pki::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(
            enclaveid_pki::pem::parse_certificates(leaf.cert_pem.as_bytes(), "chain").unwrap(),
            key.der(),
        )
        .unwrap();
    c.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(c)
}

/// A rustls client that presents no certificate.
pub fn anonymous_client(ca_pem: &str) -> Arc<rustls::ClientConfig> {
    Arc::new(
        rustls::ClientConfig::builder_with_provider(enclaveid_pki::tls::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots(ca_pem))
            .with_no_client_auth(),
    )
}

fn roots(ca_pem: &str) -> rustls::RootCertStore {
    let mut roots = rustls::RootCertStore::empty();
    for c in enclaveid_pki::pem::parse_certificates(ca_pem.as_bytes(), "ca").unwrap() {
        roots.add(c).unwrap();
    }
    roots
}

/// Server-side material for a leaf (used by test servers standing in for a peer sidecar).
pub fn server_config(ca_pem: &str, leaf: &TestCert) -> Arc<rustls::ServerConfig> {
    let m = Material::from_pem(
        ca_pem.as_bytes(),
        leaf.cert_pem.as_bytes(),
        leaf.key_pem.as_bytes(),
        ["ca", "cert", "key"],
    )
    .unwrap();
    Arc::new(m.server_config(&TlsSettings::default(), None, &[]).unwrap())
}

/// Connects with rustls to `addr`, expecting the server name `BACKEND`.
pub async fn tls_connect(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    tokio_rustls::TlsConnector::from(config)
        .connect(ServerName::try_from(BACKEND).unwrap(), tcp)
        .await
}

/// Starts a proxy in-process; `{dir}` in the YAML is replaced by `tls_dir`.
pub async fn proxy(yaml: &str, tls_dir: &Path) -> ProxyHandle {
    let yaml = yaml.replace("{dir}", &tls_dir.display().to_string());
    let config = Config::parse(&yaml).unwrap_or_else(|e| panic!("test config: {e}\n{yaml}"));
    let source = TlsSource::from_config(&config);
    enclaveid_proxy::start(config, source).await.unwrap()
}

/// The value of the first sample of `name` whose labels contain every `k="v"` pair.
pub fn metric(handle: &ProxyHandle, name: &str, labels: &[(&str, &str)]) -> f64 {
    let text = handle.metrics().encode();
    sample(&text, name, labels)
}

pub fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        if !(rest.starts_with('{') || rest.starts_with(' ')) {
            continue;
        }
        if labels
            .iter()
            .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
        {
            return rest.rsplit(' ').next().unwrap().parse().unwrap();
        }
    }
    0.0
}

/// Handshake failures of a listener for a reason.
pub fn failures(handle: &ProxyHandle, listener: &str, reason: &str) -> f64 {
    metric(
        handle,
        "enclaveid_proxy_tls_handshake_failures_total",
        &[("listener", listener), ("reason", reason)],
    )
}

/// A TCP app that echoes everything, upper-casing nothing, and records what reached it.
#[derive(Clone)]
pub struct EchoApp {
    pub addr: SocketAddr,
    pub connections: Arc<AtomicUsize>,
    pub bytes: Arc<AtomicU64>,
}

impl EchoApp {
    pub async fn start() -> Self {
        let sock = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let app = Self {
            addr: sock.local_addr().unwrap(),
            connections: Arc::default(),
            bytes: Arc::default(),
        };
        let a = app.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = sock.accept().await else {
                    return;
                };
                a.connections.fetch_add(1, Ordering::SeqCst);
                let bytes = a.bytes.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0; 16 * 1024];
                    loop {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                bytes.fetch_add(n as u64, Ordering::SeqCst);
                                if s.write_all(&buf[..n]).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                    // Half-close seen: answer with a marker, then close our side.
                    let _ = s.write_all(b"<eof>").await;
                    let _ = s.shutdown().await;
                });
            }
        });
        app
    }

    pub fn reached(&self) -> (usize, u64) {
        (
            self.connections.load(Ordering::SeqCst),
            self.bytes.load(Ordering::SeqCst),
        )
    }
}

/// A free port that nothing listens on (bound, read, released).
pub fn dead_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// An external program, or a loud skip (a failure under `CI=true`).
pub fn tool(name: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|p| p.join(name))
                .find(|p| p.is_file())
        })
        .or_else(|| {
            ["/usr/sbin", "/sbin"]
                .iter()
                .map(|d| Path::new(d).join(name))
                .find(|p| p.is_file())
        });
    if found.is_none() {
        let msg = format!("{name} is not installed: run scripts/ci-deps/proxy.sh (Debian packages nginx, prometheus, curl, openssl)");
        assert!(std::env::var("CI").as_deref() != Ok("true"), "{msg}");
        eprintln!("SKIPPING: {msg}");
    }
    found
}

/// An inbound-only sidecar for `sa` in front of `forward`, with optional extra YAML lines for
/// the listener.
pub fn inbound_yaml(forward: SocketAddr, protocol: &str, extra: &str) -> String {
    format!(
        "admin: {{ listen: 127.0.0.1:0 }}\n\
         tls: {{ ca: {{dir}}/ca.pem, cert: {{dir}}/cert.pem, key: {{dir}}/key.pem, reload_interval_ms: 50 }}\n\
         defaults: {{ handshake_timeout_ms: 500 }}\n\
         drain_timeout_ms: 3000\n\
         inbound:\n  - name: api\n    listen: 127.0.0.1:0\n    forward: {forward}\n    protocol: {protocol}\n{extra}"
    )
}

/// An outbound-only sidecar to `upstream`.
pub fn outbound_yaml(upstream: SocketAddr, protocol: &str, server_name: &str) -> String {
    format!(
        "admin: {{ listen: 127.0.0.1:0 }}\n\
         tls: {{ ca: {{dir}}/ca.pem, cert: {{dir}}/cert.pem, key: {{dir}}/key.pem }}\n\
         defaults: {{ handshake_timeout_ms: 500 }}\n\
         outbound:\n  - name: backend\n    listen: 127.0.0.1:0\n    upstream: {upstream}\n    server_name: {server_name}\n    protocol: {protocol}\n"
    )
}

/// A mint of bad leaves from a spec tweak.
pub fn leaf(ca: &TestCa, f: impl FnOnce(LeafSpec) -> LeafSpec) -> TestCert {
    ca.issue(&f(LeafSpec::workload("frontend")))
}
