//! Certificate hot reload (open connections survive; broken or foreign certificates are refused
//! and the old one keeps serving), the drain (in-flight request finishes, `/ready` says 503), the
//! admin API and `promtool check metrics`.

use std::net::SocketAddr;

use enclaveid_pki::testing::TestCa;
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::{
    client_config, eventually, inbound_yaml, metric, proxy, tls_connect, tool, within, EchoApp, Pki,
};
use crate::http::{http_app, mesh};

/// A minimal HTTP/1.1 request to the admin port: (status, body).
pub async fn admin(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("{method} {path} HTTP/1.1\r\nhost: admin\r\nconnection: close\r\ncontent-length: 0\r\n\r\n").as_bytes()).await.unwrap();
    let mut out = Vec::new();
    within("admin answer", s.read_to_end(&mut out))
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out).to_string();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

async fn echo(s: &mut tokio_rustls::client::TlsStream<TcpStream>, msg: &[u8]) {
    s.write_all(msg).await.unwrap();
    let mut buf = vec![0; msg.len()];
    within("echo", s.read_exact(&mut buf)).await.unwrap();
    assert_eq!(buf, msg);
}

#[tokio::test]
async fn reload_switches_new_handshakes_keeps_open_connections_and_refuses_bad_files() {
    let pki = Pki::new();
    let app = EchoApp::start().await;
    let dir = pki.workload("backend");
    let inbound = proxy(&inbound_yaml(app.addr, "tcp", ""), &dir).await;
    let client = client_config(&pki.ca.cert_pem(), &pki.ca.workload("frontend"), &[]);
    let mut open = tls_connect(inbound.inbound_addr(0), client.clone())
        .await
        .unwrap();
    echo(&mut open, b"before").await;

    // The renewer writes a new leaf by atomic rename; the poller picks it up.
    let renewed = pki.ca.workload("backend");
    pki.write("backend", &pki.ca.cert_pem(), &renewed);
    eventually("reload", || {
        metric(
            &inbound,
            "enclaveid_proxy_certificate_reloads_total",
            &[("result", "success")],
        ) == 1.0
    })
    .await;
    echo(&mut open, b"open connection survives the reload").await;
    let fresh = tls_connect(inbound.inbound_addr(0), client.clone())
        .await
        .unwrap();
    assert_eq!(
        fresh.get_ref().1.peer_certificates().unwrap()[0],
        renewed.der,
        "new handshakes use the new leaf"
    );
    let (_, parsed) = x509_parser::parse_x509_certificate(&renewed.der).unwrap();
    #[allow(clippy::cast_precision_loss)]
    let not_after = parsed.validity().not_after.timestamp() as f64;
    assert_eq!(
        metric(
            &inbound,
            "enclaveid_proxy_certificate_expiry_timestamp_seconds",
            &[]
        ),
        not_after
    );

    // A broken file and a leaf from another CA are refused; the renewed leaf keeps serving.
    let broken = enclaveid_pki::testing::TestCert {
        cert_pem: "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n".into(),
        ..renewed.clone()
    };
    pki.write("backend", &pki.ca.cert_pem(), &broken);
    eventually("broken refused", || {
        metric(
            &inbound,
            "enclaveid_proxy_certificate_reloads_total",
            &[("result", "failure")],
        ) == 1.0
    })
    .await;
    pki.write(
        "backend",
        &pki.ca.cert_pem(),
        &TestCa::new("foreign CA").workload("backend"),
    );
    eventually("foreign refused", || {
        metric(
            &inbound,
            "enclaveid_proxy_certificate_reloads_total",
            &[("result", "failure")],
        ) == 2.0
    })
    .await;
    // A key that belongs to another certificate is what a poll sees between the renewer's two
    // renames; it is given one more poll, and counted only because it stays.
    let mismatched = enclaveid_pki::testing::TestCert {
        key_pem: pki.ca.workload("backend").key_pem,
        ..renewed.clone()
    };
    pki.write("backend", &pki.ca.cert_pem(), &mismatched);
    eventually("mismatched key refused", || {
        metric(
            &inbound,
            "enclaveid_proxy_certificate_reloads_total",
            &[("result", "failure")],
        ) == 3.0
    })
    .await;
    let still = tls_connect(inbound.inbound_addr(0), client).await.unwrap();
    assert_eq!(
        still.get_ref().1.peer_certificates().unwrap()[0],
        renewed.der,
        "the old leaf keeps serving"
    );
    echo(&mut open, b"still open").await;
}

#[tokio::test]
async fn drain_finishes_the_in_flight_request_and_ready_says_503() {
    let app = http_app().await;
    let m = mesh(app).await;
    let admin_addr = m.inbound.admin_addr();
    assert_eq!(admin(admin_addr, "GET", "/ready").await.0, 200);
    let s = TcpStream::connect(m.outbound.outbound_addr(0))
        .await
        .unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s))
        .await
        .unwrap();
    tokio::spawn(conn);
    let in_flight = tokio::spawn(
        send.send_request(
            Request::get("/slow")
                .header("host", "b")
                .body(Empty::<bytes::Bytes>::new())
                .unwrap(),
        ),
    );
    let before = crate::http::SLOW_STARTED.load(std::sync::atomic::Ordering::SeqCst);
    eventually("request in flight at the app", || {
        crate::http::SLOW_STARTED.load(std::sync::atomic::Ordering::SeqCst) > before
    })
    .await;
    m.inbound.shutdown();
    let (status, body) = admin(admin_addr, "GET", "/ready").await;
    assert_eq!((status, body.as_str()), (503, "draining\n"));
    let resp = within("in-flight request", in_flight)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        &resp.into_body().collect().await.unwrap().to_bytes()[..],
        b"slow done"
    );
    let addr = m.inbound.inbound_addr(0);
    within("drained", m.inbound.wait()).await;
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "not accepting after the drain"
    );
}

#[tokio::test]
async fn admin_endpoints_and_promtool() {
    let app = http_app().await;
    let m = mesh(app).await;
    // Some traffic, so the histogram and counters have samples.
    let s = TcpStream::connect(m.outbound.outbound_addr(0))
        .await
        .unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s))
        .await
        .unwrap();
    tokio::spawn(conn);
    let r = send
        .send_request(
            Request::get("/x")
                .header("host", "b")
                .body(Empty::<bytes::Bytes>::new())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    let a = m.inbound.admin_addr();
    assert_eq!(admin(a, "GET", "/live").await, (200, "live\n".into()));
    assert_eq!(admin(a, "GET", "/ready").await, (200, "ready\n".into()));
    assert_eq!(admin(a, "GET", "/nope").await.0, 404);
    assert_eq!(admin(a, "GET", "/shutdown").await.0, 405);
    let (status, config) = admin(a, "GET", "/config").await;
    assert_eq!(status, 200);
    let json: serde_json::Value = serde_json::from_str(&config).unwrap();
    assert_eq!(json["inbound"][0]["name"], "api");
    assert!(json["tls"]["key"].as_str().unwrap().ends_with("key.pem"));
    assert!(
        !config.contains("PRIVATE KEY") && !config.contains("BEGIN"),
        "no key material in /config"
    );

    for h in [&m.inbound, &m.outbound] {
        let (status, text) = admin(h.admin_addr(), "GET", "/metrics").await;
        assert_eq!(status, 200);
        for name in [
            "enclaveid_proxy_connections_opened_total",
            "enclaveid_proxy_connections_active",
            "enclaveid_proxy_connections_closed_total",
            "enclaveid_proxy_bytes_total",
            "enclaveid_proxy_tls_handshake_failures_total",
            "enclaveid_proxy_http_requests_total",
            "enclaveid_proxy_http_request_duration_seconds_bucket",
            "enclaveid_proxy_certificate_expiry_timestamp_seconds",
        ] {
            assert!(text.contains(name), "{name} missing");
        }
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            assert!(
                line.starts_with("enclaveid_proxy_"),
                "unprefixed metric: {line}"
            );
        }
        if let Some(promtool) = tool("promtool") {
            let mut child = tokio::process::Command::new(promtool)
                .args(["check", "metrics"])
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            child
                .stdin
                .take()
                .unwrap()
                .write_all(text.as_bytes())
                .await
                .unwrap();
            let out = child.wait_with_output().await.unwrap();
            assert!(
                out.status.success(),
                "promtool: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    let (status, _) = admin(a, "POST", "/shutdown").await;
    assert_eq!(status, 202);
    within("shutdown through the admin API", m.inbound.wait()).await;
}
