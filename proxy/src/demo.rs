//! `enclaveid-proxy demo`: a complete local mesh in one process, with no files to prepare. A dev
//! CA is derived in memory from a random master secret (the same derivation init uses), two
//! workload leaves are issued from it, and three things start on 127.0.0.1: a tiny app, an inbound
//! sidecar in front of it (allowing only the `frontend` identity) and an outbound sidecar that
//! the user's curl talks to in plaintext.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use enclaveid_pki::derive::{derive_ca_key, MasterSecret};
use enclaveid_pki::identity::{service_dns_names, SpiffeId, DEFAULT_TRUST_DOMAIN};
use enclaveid_pki::issue::{self_signed_ca, Ca, CaParams, LeafRequest};
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use time::OffsetDateTime;
use tracing::{error, info};
use zeroize::Zeroizing;

use crate::config::Config;
use crate::tls_state::TlsSource;

/// Why the demo could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DemoError {
    /// The dev CA or a leaf could not be made.
    #[error("making the dev PKI: {0}")]
    Pki(String),
    /// A sidecar did not start.
    #[error(transparent)]
    Start(#[from] crate::StartError),
    /// The demo app could not bind.
    #[error("binding the demo app on {addr}: {source}")]
    App {
        /// Address.
        addr: SocketAddr,
        /// OS error.
        source: std::io::Error,
    },
    /// The built-in config did not parse (a bug).
    #[error("demo config: {0}")]
    Config(#[from] crate::config::ConfigError),
}

/// Ports used by the demo, from `base`.
#[derive(Clone, Copy, Debug)]
pub struct DemoPorts {
    /// Outbound sidecar admin (base).
    pub outbound_admin: u16,
    /// Outbound sidecar listener, plaintext (base + 1).
    pub outbound: u16,
    /// Inbound sidecar listener, mTLS (base + 6).
    pub inbound: u16,
    /// The demo app (base + 80).
    pub app: u16,
    /// Inbound sidecar admin (base + 100).
    pub inbound_admin: u16,
}

impl DemoPorts {
    /// Ports from a base; 0 binds every one on an ephemeral port (tests).
    #[must_use]
    pub fn from_base(base: u16) -> Self {
        let at = |off: u16| {
            if base == 0 {
                0
            } else {
                base.saturating_add(off)
            }
        };
        Self {
            outbound_admin: at(0),
            outbound: at(1),
            inbound: at(6),
            app: at(80),
            inbound_admin: at(100),
        }
    }
}

/// A running demo.
pub struct Demo {
    /// The outbound sidecar (curl talks to its listener 0).
    pub outbound: crate::ProxyHandle,
    /// The inbound sidecar.
    pub inbound: crate::ProxyHandle,
    /// The demo app's address.
    pub app: SocketAddr,
}

fn workload(sa: &str) -> (Vec<String>, Vec<String>) {
    let id = SpiffeId::new(DEFAULT_TRUST_DOMAIN, "default", sa)
        .expect("demo names are valid SPIFFE segments");
    (service_dns_names(sa, "default"), vec![id.to_string()])
}

/// Starts the demo on the current runtime.
pub async fn start(ports: DemoPorts) -> Result<Demo, DemoError> {
    let mut secret = vec![0u8; 32];
    enclaveid_pki::tls::provider()
        .secure_random
        .fill(&mut secret)
        .map_err(|_| DemoError::Pki("no system randomness".into()))?;
    let secret = MasterSecret::new(secret).map_err(|e| DemoError::Pki(e.to_string()))?;
    let ca_key = derive_ca_key(&secret);
    let now = OffsetDateTime::now_utc();
    let ca_pem =
        self_signed_ca(&ca_key, &CaParams::new(now)).map_err(|e| DemoError::Pki(e.to_string()))?;
    let ca = Ca::new(ca_key, &ca_pem, now).map_err(|e| DemoError::Pki(e.to_string()))?;
    let issue = |sa: &str| {
        let (dns, uris) = workload(sa);
        ca.issue_leaf(&LeafRequest::new(dns, uris, now))
            .map_err(|e| DemoError::Pki(e.to_string()))
    };
    let frontend = issue("frontend")?;
    let app_leaf = issue("demo-app")?;

    let app_sock = tokio::net::TcpListener::bind(("127.0.0.1", ports.app))
        .await
        .map_err(|source| DemoError::App {
            addr: SocketAddr::from(([127, 0, 0, 1], ports.app)),
            source,
        })?;
    let app = app_sock.local_addr().map_err(|source| DemoError::App {
        addr: SocketAddr::from(([127, 0, 0, 1], ports.app)),
        source,
    })?;
    tokio::spawn(serve_app(app_sock));

    let inbound_cfg = Config::parse(&format!(
        "admin: {{ listen: 127.0.0.1:{} }}\n\
         tls: {{ ca: memory/ca.pem, cert: memory/demo-app.pem, key: memory/demo-app-key.pem }}\n\
         drain_timeout_ms: 2000\n\
         inbound:\n  - name: demo-app\n    listen: 127.0.0.1:{}\n    forward: {app}\n    protocol: http\n    \
         allow: [\"spiffe://cluster.local/ns/default/sa/frontend\"]\n",
        ports.inbound_admin, ports.inbound
    ))?;
    let inbound = crate::start(
        inbound_cfg,
        TlsSource::Memory {
            ca: ca_pem.clone(),
            cert: app_leaf.cert_pem.clone(),
            key: Zeroizing::new(app_leaf.key_pem.to_string()),
        },
    )
    .await?;
    let outbound_cfg = Config::parse(&format!(
        "admin: {{ listen: 127.0.0.1:{} }}\n\
         tls: {{ ca: memory/ca.pem, cert: memory/frontend.pem, key: memory/frontend-key.pem }}\n\
         drain_timeout_ms: 2000\n\
         outbound:\n  - name: demo-app\n    listen: 127.0.0.1:{}\n    upstream: {}\n    \
         server_name: demo-app.default.svc.cluster.local\n    protocol: http\n",
        ports.outbound_admin,
        ports.outbound,
        inbound.inbound_addr(0)
    ))?;
    let outbound = crate::start(
        outbound_cfg,
        TlsSource::Memory {
            ca: ca_pem,
            cert: frontend.cert_pem.clone(),
            key: Zeroizing::new(frontend.key_pem.to_string()),
        },
    )
    .await?;
    Ok(Demo {
        outbound,
        inbound,
        app,
    })
}

async fn serve_app(sock: tokio::net::TcpListener) {
    loop {
        let Ok((stream, _)) = sock.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(
                |req: http::Request<hyper::body::Incoming>| async move {
                    let who = req
                        .headers()
                        .get("x-forwarded-client-cert")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("(no x-forwarded-client-cert: not through the mesh)")
                        .to_owned();
                    let body = format!("hello from the demo app\nyou asked for: {} {}\nthe inbound sidecar verified: {who}\n", req.method(), req.uri());
                    Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from(body))))
                },
            );
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

/// The `demo` subcommand: start, print how to use it, run until Ctrl-C. Returns the exit code.
#[must_use]
pub fn main(base_port: u16) -> u8 {
    let Ok(rt) = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    else {
        return 1;
    };
    rt.block_on(async move {
        let demo = match start(DemoPorts::from_base(base_port)).await {
            Ok(d) => d,
            Err(e) => {
                error!(error = %e, "demo failed to start (is another demo running? try --base-port 25000)");
                return 1;
            }
        };
        let out = demo.outbound.outbound_addr(0);
        println!(
            "\nEnclaveID demo is running: app {app} <- inbound sidecar {inb} (mTLS) <- outbound sidecar {out} (plaintext)\n\n\
             Try:\n  curl http://{out}/hello\n\n\
             Metrics: http://{oa}/metrics (outbound), http://{ia}/metrics (inbound)\n\
             Press Ctrl-C to stop.\n",
            app = demo.app,
            inb = demo.inbound.inbound_addr(0),
            oa = demo.outbound.admin_addr(),
            ia = demo.inbound.admin_addr(),
        );
        let _ = tokio::signal::ctrl_c().await;
        info!("stopping the demo");
        demo.outbound.shutdown();
        demo.inbound.shutdown();
        demo.outbound.wait().await;
        demo.inbound.wait().await;
        0
    })
}
