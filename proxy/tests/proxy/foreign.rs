//! nginx (Debian's package) as a foreign mTLS peer on both sides, started by the test on
//! loopback with its own prefix, `daemon off`, and killed by PID when dropped:
//! nginx → our inbound (nginx presents the client certificate), and our outbound → nginx with
//! `ssl_verify_client on`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use enclaveid_pki::testing::TestCa;
use tokio::net::TcpStream;

use crate::harness::{
    failures, inbound_yaml, metric, outbound_yaml, proxy, tool, within, Pki, BACKEND,
};
use crate::http::http_app;
use crate::lifecycle::admin;

/// A running nginx, killed by PID on drop.
struct Nginx {
    child: Child,
    dir: tempfile::TempDir,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Nginx {
    /// Starts nginx with the `server {}` blocks that `servers(port)` returns inside its
    /// `http {}` block, on a port it picks, and returns once that nginx serves.
    ///
    /// A port from a bind-then-release can be taken by anyone before nginx binds it, and a
    /// plain connect would then reach the wrong process. So the config also has a plain-HTTP
    /// server answering a per-start token on a second port: nginx binds every listen address
    /// before it serves any, so the token proves both ports are this nginx's. If nginx exits
    /// (a port was taken), the start is retried on fresh ports.
    async fn start(bin: &Path, servers: impl Fn(SocketAddr) -> String) -> (Self, SocketAddr) {
        let mut last_log = String::new();
        for attempt in 0..5 {
            let (port, ready) = (free_port(), free_port());
            if port == ready {
                continue;
            }
            let token = format!("nginx-{}-{attempt}-{}", std::process::id(), port.port());
            let ready_server = format!(
                "  server {{\n    listen {ready};\n    location = /ready {{ return 200 \"{token}\"; }}\n  }}\n"
            );
            let mut me = Self::spawn(bin, &format!("{ready_server}{}", servers(port)));
            let up = tokio::time::timeout(Duration::from_secs(20), async {
                loop {
                    if let Some(body) = plain_get(ready, "/ready").await {
                        if body.ends_with(&token) {
                            return true;
                        }
                    }
                    if me.child.try_wait().unwrap().is_some() {
                        return false;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
            .await;
            if matches!(up, Ok(true)) {
                return (me, port);
            }
            last_log = me.log();
            eprintln!(
                "nginx attempt {attempt} on {port}/{ready} did not come up; retrying:\n{last_log}"
            );
        }
        panic!("nginx did not start in 5 attempts; last log:\n{last_log}");
    }

    fn spawn(bin: &Path, servers: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display();
        let conf = format!(
            "daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log info;\n\
             events {{ worker_connections 64; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fastcgi;\n  \
             uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n{servers}\n}}\n"
        );
        std::fs::write(dir.path().join("nginx.conf"), conf).unwrap();
        let child = Command::new(bin)
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(dir.path().join("nginx.conf"))
            .arg("-e")
            .arg(dir.path().join("error.log"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Self { child, dir }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }
}

/// The body of a plain HTTP/1.1 GET, or `None` if nothing (or not HTTP) answered.
async fn plain_get(addr: SocketAddr, path: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = TcpStream::connect(addr).await.ok()?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nhost: ready\r\nconnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .ok()?;
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut out))
        .await
        .ok()?
        .ok()?;
    let text = String::from_utf8_lossy(&out).to_string();
    text.starts_with("HTTP/1.1 200")
        .then(|| text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()))
        .flatten()
}

/// A port that was free a moment ago (see [`Nginx::start`] for why that is enough there).
fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn files(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    (
        dir.join("ca.pem"),
        dir.join("cert.pem"),
        dir.join("key.pem"),
    )
}

#[tokio::test]
async fn nginx_as_client_of_our_inbound() {
    let Some(nginx) = tool("nginx") else { return };
    let pki = Pki::new();
    let app = http_app().await;
    let inbound = proxy(
        &inbound_yaml(
            app,
            "http",
            "    allow: [\"spiffe://cluster.local/ns/default/sa/frontend\"]\n",
        ),
        &pki.workload("backend"),
    )
    .await;
    let (ca, cert, key) = files(&pki.workload("frontend"));
    let rogue = TestCa::new("rogue CA");
    let rogue_dir = pki.write("rogue", &pki.ca.cert_pem(), &rogue.workload("frontend"));
    let (_, rogue_cert, rogue_key) = files(&rogue_dir);
    let inb = inbound.inbound_addr(0);
    let location = |path: &str, cert: &Path, key: &Path| {
        format!(
            "    location {path} {{\n      proxy_pass https://{inb};\n      proxy_http_version 1.1;\n      \
             proxy_ssl_certificate {};\n      proxy_ssl_certificate_key {};\n      proxy_ssl_trusted_certificate {};\n      \
             proxy_ssl_verify on;\n      proxy_ssl_name {BACKEND};\n      proxy_ssl_server_name on;\n      proxy_ssl_protocols TLSv1.3;\n      \
             proxy_set_header x-forwarded-client-cert \"By=spoofed-by-nginx\";\n    }}\n",
            cert.display(),
            key.display(),
            ca.display()
        )
    };
    let servers = |port| {
        format!(
            "  server {{\n    listen {port};\n{}{}  }}\n",
            location("/headers", &cert, &key),
            location("/rogue", &rogue_cert, &rogue_key)
        )
    };
    let (ng, port) = Nginx::start(&nginx, servers).await;
    let (status, body) = admin(port, "GET", "/headers").await;
    assert_eq!(status, 200, "nginx log:\n{}", ng.log());
    assert!(
        body.contains("URI=spiffe://cluster.local/ns/default/sa/frontend"),
        "{body}"
    );
    assert!(!body.contains("spoofed"), "{body}");

    let (status, _) = admin(port, "GET", "/rogue").await;
    assert_eq!(
        status, 502,
        "nginx with a rogue client certificate is refused"
    );
    assert_eq!(failures(&inbound, "api", "unknown_ca"), 1.0);
}

#[tokio::test]
async fn our_outbound_to_nginx_with_ssl_verify_client() {
    let Some(nginx) = tool("nginx") else { return };
    let pki = Pki::new();
    let (ca, cert, key) = files(&pki.workload("backend"));
    let servers = |port| {
        format!(
            "  server {{\n    listen {port} ssl http2;\n    ssl_certificate {};\n    ssl_certificate_key {};\n    \
             ssl_client_certificate {};\n    ssl_verify_client on;\n    ssl_protocols TLSv1.3;\n    \
             location / {{ return 200 \"verify=$ssl_client_verify proto=$server_protocol dn=$ssl_client_s_dn\\n\"; }}\n  }}\n",
            cert.display(),
            key.display(),
            ca.display()
        )
    };
    let (ng, port) = Nginx::start(&nginx, servers).await;
    for protocol in ["http", "tcp"] {
        let outbound = proxy(
            &outbound_yaml(port, protocol, BACKEND),
            &pki.workload("frontend"),
        )
        .await;
        let (status, body) = within(
            "through nginx",
            admin(outbound.outbound_addr(0), "GET", "/"),
        )
        .await;
        assert_eq!(status, 200, "{protocol}: {body}\nnginx log:\n{}", ng.log());
        assert!(body.contains("verify=SUCCESS"), "{protocol}: {body}");
        assert!(
            body.contains("CN=spiffe://cluster.local/ns/default/sa/frontend"),
            "{protocol}: {body}"
        );
        if protocol == "http" {
            assert!(
                body.contains("proto=HTTP/2.0"),
                "ALPN h2 with nginx: {body}"
            );
        }
    }
    // A client certificate from another CA is refused by nginx; our outbound answers 502. (Our
    // own loader only accepts a leaf that chains to ca.pem, so this sidecar's bundle holds both
    // CAs: it still verifies nginx, while nginx trusts only the mesh CA.)
    let rogue = TestCa::new("rogue CA");
    let dir = pki.write(
        "rogue",
        &format!("{}{}", pki.ca.cert_pem(), rogue.cert_pem()),
        &rogue.workload("frontend"),
    );
    let outbound = proxy(&outbound_yaml(port, "http", BACKEND), &dir).await;
    let (status, _) = within(
        "refused by nginx",
        admin(outbound.outbound_addr(0), "GET", "/"),
    )
    .await;
    assert!(
        status == 502 || status == 400,
        "nginx must refuse a client from another CA, got {status}"
    );
}

#[tokio::test]
async fn our_http_outbound_speaks_http1_to_an_http1_only_tls_peer() {
    let Some(nginx) = tool("nginx") else { return };
    let pki = Pki::new();
    let (ca, cert, key) = files(&pki.workload("backend"));
    // No `http2`: this nginx negotiates http/1.1 by ALPN (or nothing).
    let servers = |port| {
        format!(
            "  server {{\n    listen {port} ssl;\n    ssl_certificate {};\n    ssl_certificate_key {};\n    \
             ssl_client_certificate {};\n    ssl_verify_client on;\n    ssl_protocols TLSv1.3;\n    \
             location / {{ return 200 \"verify=$ssl_client_verify proto=$server_protocol\\n\"; }}\n  }}\n",
            cert.display(),
            key.display(),
            ca.display()
        )
    };
    let (ng, port) = Nginx::start(&nginx, servers).await;
    let outbound = proxy(
        &outbound_yaml(port, "http", BACKEND),
        &pki.workload("frontend"),
    )
    .await;
    let out = outbound.outbound_addr(0);
    // Concurrent first requests: one learns the protocol, none is lost to a wrong guess.
    let answers = within(
        "HTTP/1.1 through nginx",
        futures_util::future::join_all((0..8).map(|_| admin(out, "GET", "/"))),
    )
    .await;
    for (status, body) in answers {
        assert_eq!(status, 200, "{body}\nnginx log:\n{}", ng.log());
        assert!(body.contains("verify=SUCCESS proto=HTTP/1.1"), "{body}");
    }
    assert_eq!(
        metric(
            &outbound,
            "enclaveid_proxy_http_requests_total",
            &[("listener", "backend"), ("status_class", "2xx")],
        ),
        8.0
    );
    assert_eq!(failures(&outbound, "backend", "peer_alert"), 0.0);
}
