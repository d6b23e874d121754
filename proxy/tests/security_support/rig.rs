//! A sidecar pair for the fault and exhaustion tests: an inbound `enclaveid-proxy` in front of a
//! witness app, optionally an outbound one pointing at it, and a valid client certificate; plus
//! the mTLS and HTTP/1.1 client steps those tests share.

#![allow(
    dead_code,
    reason = "shared by several security test crates; each uses a part"
)]
#![allow(
    clippy::unwrap_used,
    reason = "test support: a failed step is a failed test"
)]

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::app::{self, App, Reply};
use super::net::{attacker_config, STEP};
use super::pki::{Ca, Leaf, Minted};
use super::sidecar::{free_port, write_tls, Listener, Sidecar, Spec};

pub(crate) type Tls = tokio_rustls::client::TlsStream<TcpStream>;

/// What to build.
#[derive(Clone, Debug)]
pub(crate) struct Opts {
    pub(crate) protocol: &'static str,
    pub(crate) reply: Reply,
    /// Lines under `defaults:` of both sidecars.
    pub(crate) defaults: Vec<String>,
    /// Extra lines under `tls:` of the inbound sidecar.
    pub(crate) tls_extra: Vec<String>,
    pub(crate) drain_timeout_ms: Option<u64>,
    pub(crate) with_outbound: bool,
}

impl Opts {
    pub(crate) fn new(protocol: &'static str, reply: Reply) -> Self {
        Self {
            protocol,
            reply,
            defaults: Vec::new(),
            tls_extra: Vec::new(),
            drain_timeout_ms: None,
            with_outbound: false,
        }
    }
}

/// An inbound sidecar in front of a witness app, and a valid client certificate.
pub(crate) struct Rig {
    pub(crate) tmp: tempfile::TempDir,
    pub(crate) mesh: Ca,
    /// The witness app; `None` while it is "down" (see [`Rig::kill_app`]).
    pub(crate) app: Option<App>,
    pub(crate) app_addr: SocketAddr,
    pub(crate) sidecar: Sidecar,
    pub(crate) spec: Spec,
    pub(crate) inbound: SocketAddr,
    /// Plaintext outbound listener of a second sidecar, pointing at `inbound`.
    pub(crate) outbound: Option<(Sidecar, SocketAddr)>,
    pub(crate) client: Minted,
    pub(crate) opts: Opts,
}

impl Rig {
    pub(crate) fn app(&self) -> &App {
        self.app.as_ref().expect("the app is up")
    }

    /// The backend dies: listener and every connection closed.
    pub(crate) async fn kill_app(&mut self) {
        if let Some(app) = self.app.take() {
            app.stop().await;
        }
    }

    /// The backend comes back on the same port (bounded retries while the old socket closes).
    pub(crate) async fn restart_app(&mut self) {
        for _ in 0..100 {
            if let Ok(l) = tokio::net::TcpListener::bind(self.app_addr).await {
                self.app = Some(App::serve(l, self.opts.reply));
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("could not rebind the app on {}", self.app_addr);
    }

    /// The inbound sidecar's TLS directory (ca.pem, cert.pem, key.pem).
    pub(crate) fn tls_dir(&self) -> std::path::PathBuf {
        self.spec.tls_dir.clone()
    }
}

pub(crate) async fn rig(
    protocol: &'static str,
    reply: Reply,
    defaults: &[&str],
    with_outbound: bool,
) -> Rig {
    let mut opts = Opts::new(protocol, reply);
    opts.defaults = defaults.iter().map(|s| (*s).to_owned()).collect();
    opts.with_outbound = with_outbound;
    rig_with(opts).await
}

pub(crate) async fn rig_with(opts: Opts) -> Rig {
    let tmp = tempfile::tempdir().unwrap();
    let mesh = Ca::mesh("EnclaveID Cluster CA");
    let app = App::start(opts.reply).await;
    let app_addr = app.addr;
    let dir = tmp.path().join("backend");
    write_tls(&dir, &mesh.cert_pem, &mesh.leaf(&Leaf::workload("backend")));
    let inbound = free_port();
    let mut spec = Spec::new(&dir);
    spec.defaults.clone_from(&opts.defaults);
    spec.tls_extra.clone_from(&opts.tls_extra);
    spec.drain_timeout_ms = opts.drain_timeout_ms;
    spec.listeners.push(Listener::Inbound {
        name: "api".into(),
        listen: inbound,
        forward: app_addr.to_string(),
        protocol: opts.protocol,
        allow: None,
        extra: String::new(),
    });
    let mut sidecar = Sidecar::spawn(&spec, "backend");
    sidecar.ready().await;
    let outbound = if opts.with_outbound {
        let dir = tmp.path().join("frontend");
        write_tls(
            &dir,
            &mesh.cert_pem,
            &mesh.leaf(&Leaf::workload("frontend")),
        );
        let listen = free_port();
        let mut out_spec = Spec::new(&dir);
        out_spec.defaults.clone_from(&opts.defaults);
        out_spec.listeners.push(Listener::Outbound {
            name: "backend".into(),
            listen,
            upstream: inbound.to_string(),
            server_name: "backend.default.svc.cluster.local".into(),
            protocol: opts.protocol,
            extra: String::new(),
        });
        let mut out = Sidecar::spawn(&out_spec, "frontend");
        out.ready().await;
        Some((out, listen))
    } else {
        None
    };
    let client = mesh.leaf(&Leaf::workload("frontend"));
    Rig {
        tmp,
        mesh,
        app: Some(app),
        app_addr,
        sidecar,
        spec,
        inbound,
        outbound,
        client,
        opts,
    }
}

/// A valid mTLS client connection to the inbound listener with the given ALPN.
pub(crate) async fn mtls(addr: SocketAddr, cert: &Minted, alpn: &[u8]) -> Tls {
    // An empty `alpn` means: offer none.
    let offer: &[&[u8]] = if alpn.is_empty() { &[] } else { &[alpn] };
    let config = attacker_config(Some(cert), &[&rustls::version::TLS13], offer);
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    tokio::time::timeout(STEP, connector.connect(name, tcp))
        .await
        .expect("mTLS handshake hung")
        .unwrap()
}

/// The status code of the first response on `s`, or `None` if the connection closed first.
pub(crate) async fn status_of<S: tokio::io::AsyncRead + Unpin>(s: &mut S) -> Option<u16> {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let read = tokio::time::timeout(STEP, s.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("no response and no close within {STEP:?}"));
        match read {
            Ok(0) | Err(_) => break,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
        if app::find(&head, b"\r\n").is_some() {
            break;
        }
    }
    let line = String::from_utf8_lossy(&head);
    line.split(' ').nth(1).and_then(|s| s.parse().ok())
}

/// A legitimate HTTP/1.1 GET over mTLS must get 200.
pub(crate) async fn legit_http(rig: &Rig) {
    let mut s = mtls(rig.inbound, &rig.client, b"http/1.1").await;
    s.write_all(b"GET /legit HTTP/1.1\r\nhost: backend\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(
        status_of(&mut s).await,
        Some(200),
        "legitimate request after the attack"
    );
}
