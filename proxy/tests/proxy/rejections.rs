//! Every refusal of sections 3 and 8, with a rustls client, the system curl and openssl
//! s_client: each is counted under its own `reason`, and nothing reaches the app.

use std::process::Stdio;
use std::time::Duration;

use enclaveid_pki::testing::{LeafSpec, TestCa, TestCert};
use rcgen::ExtendedKeyUsagePurpose;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::harness::{
    anonymous_client, client_config, eventually, failures, inbound_yaml, leaf, outbound_yaml,
    proxy, server_config, tls_connect, tool, within, EchoApp, Pki, BACKEND,
};

/// A bad client identity and the reason it must be refused with.
struct Case {
    name: &'static str,
    reason: &'static str,
    /// `None`: present no certificate.
    cert: Option<TestCert>,
}

fn cases(pki: &Pki) -> Vec<Case> {
    let rogue = TestCa::new("rogue CA");
    vec![
        Case {
            name: "no client certificate",
            reason: "no_client_certificate",
            cert: None,
        },
        Case {
            name: "another CA",
            reason: "unknown_ca",
            cert: Some(rogue.workload("frontend")),
        },
        Case {
            name: "expired",
            reason: "expired",
            cert: Some(leaf(&pki.ca, LeafSpec::expired)),
        },
        Case {
            name: "not yet valid",
            reason: "not_yet_valid",
            cert: Some(leaf(&pki.ca, LeafSpec::not_yet_valid)),
        },
        Case {
            name: "CA certificate as leaf",
            reason: "ca_as_leaf",
            cert: Some(leaf(&pki.ca, |s| LeafSpec { is_ca: true, ..s })),
        },
        Case {
            name: "serverAuth-only leaf as client",
            reason: "wrong_key_usage",
            cert: Some(leaf(&pki.ca, |s| LeafSpec {
                ekus: vec![ExtendedKeyUsagePurpose::ServerAuth],
                ..s
            })),
        },
        Case {
            name: "chain through an intermediate (the CA has pathlen 0)",
            reason: "bad_certificate",
            cert: Some(
                pki.ca
                    .intermediate("intermediate")
                    .workload_with_chain("frontend"),
            ),
        },
        Case {
            name: "identity outside allow",
            reason: "identity_not_allowed",
            cert: Some(pki.ca.workload("intruder")),
        },
    ]
}

const ALLOW: &str =
    "    allow: [\"spiffe://cluster.local/ns/default/sa/frontend\", \"*.other.svc\"]\n";

/// Runs `attempt` and checks the reason counter moved by one and the app saw nothing.
async fn expect_refusal<F: std::future::Future<Output = ()>>(
    handle: &enclaveid_proxy::ProxyHandle,
    app: &EchoApp,
    who: &str,
    case: &str,
    reason: &str,
    attempt: F,
) {
    let before = failures(handle, "api", reason);
    within(case, attempt).await;
    eventually(&format!("{who}: {case} counted as {reason}"), || {
        failures(handle, "api", reason) == before + 1.0
    })
    .await;
    assert_eq!(
        app.reached(),
        (0, 0),
        "{who}: {case}: something reached the app"
    );
}

async fn rustls_attempt(addr: std::net::SocketAddr, config: std::sync::Arc<rustls::ClientConfig>) {
    // TLS 1.3: the client may finish before the server has judged its certificate, so the
    // refusal shows on the first read; either way no reply ever comes.
    if let Ok(mut s) = tls_connect(addr, config).await {
        let _ = s.write_all(b"GET /secret HTTP/1.1\r\n\r\n").await;
        let mut buf = [0u8; 64];
        let r = s.read(&mut buf).await;
        assert!(matches!(r, Ok(0) | Err(_)), "got a reply: {r:?}");
    }
}

#[tokio::test]
async fn inbound_refuses_bad_clients_rustls() {
    let pki = Pki::new();
    let app = EchoApp::start().await;
    let inbound = proxy(
        &inbound_yaml(app.addr, "tcp", ALLOW),
        &pki.workload("backend"),
    )
    .await;
    let addr = inbound.inbound_addr(0);
    for case in cases(&pki) {
        let config = match &case.cert {
            None => anonymous_client(&pki.ca.cert_pem()),
            Some(c) => client_config(&pki.ca.cert_pem(), c, &[]),
        };
        expect_refusal(
            &inbound,
            &app,
            "rustls",
            case.name,
            case.reason,
            rustls_attempt(addr, config),
        )
        .await;
    }
    // Plaintext on the TLS port.
    expect_refusal(
        &inbound,
        &app,
        "plaintext",
        "plaintext HTTP",
        "not_tls",
        async {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
                .await
                .unwrap();
            let mut buf = Vec::new();
            let _ = s.read_to_end(&mut buf).await;
            assert!(
                !String::from_utf8_lossy(&buf).contains("HTTP/1.1"),
                "no HTTP answer on a TLS port"
            );
        },
    )
    .await;
    // Garbage that looks like a TLS record header.
    expect_refusal(
        &inbound,
        &app,
        "garbage",
        "random bytes",
        "not_tls",
        async {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(&[0x16, 0x03, 0x01, 0xff, 0xff, 1, 2, 3, 4, 5, 6, 7])
                .await
                .unwrap();
            s.write_all(&[0xaa; 4096]).await.unwrap_or(());
            let mut buf = Vec::new();
            let _ = s.read_to_end(&mut buf).await;
        },
    )
    .await;
    // A stalled handshake is closed after handshake_timeout_ms (500 ms here).
    expect_refusal(
        &inbound,
        &app,
        "stall",
        "stalled handshake",
        "handshake_timeout",
        async {
            let mut s = TcpStream::connect(addr).await.unwrap();
            let mut buf = Vec::new();
            let n = s.read_to_end(&mut buf).await.unwrap_or(0);
            assert_eq!(n, 0);
        },
    )
    .await;
    // The good client still gets through afterwards.
    let mut ok = tls_connect(
        addr,
        client_config(&pki.ca.cert_pem(), &pki.ca.workload("frontend"), &[]),
    )
    .await
    .unwrap();
    ok.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    within("echo", ok.read_exact(&mut buf)).await.unwrap();
    assert_eq!(&buf, b"ping");
}

fn write_leaf(dir: &std::path::Path, name: &str, c: &TestCert) -> (String, String) {
    let cert = dir.join(format!("{name}.crt"));
    let key = dir.join(format!("{name}.key"));
    std::fs::write(&cert, &c.cert_pem).unwrap();
    std::fs::write(&key, &c.key_pem).unwrap();
    (cert.display().to_string(), key.display().to_string())
}

#[tokio::test]
async fn inbound_refuses_bad_clients_curl_and_openssl() {
    let (Some(curl), Some(openssl)) = (tool("curl"), tool("openssl")) else {
        return;
    };
    let pki = Pki::new();
    let app = EchoApp::start().await;
    let inbound = proxy(
        &inbound_yaml(app.addr, "tcp", ALLOW),
        &pki.workload("backend"),
    )
    .await;
    let addr = inbound.inbound_addr(0);
    let ca_file = pki.dir.path().join("backend/ca.pem").display().to_string();
    let files = tempfile::tempdir().unwrap();
    for (i, case) in cases(&pki).into_iter().enumerate() {
        let mut curl_cmd = tokio::process::Command::new(&curl);
        curl_cmd
            .args(["-sS", "--max-time", "5", "--cacert", &ca_file, "--resolve"])
            .arg(format!("{BACKEND}:{}:127.0.0.1", addr.port()))
            .arg(format!("https://{BACKEND}:{}/secret", addr.port()));
        let mut ossl = tokio::process::Command::new(&openssl);
        ossl.args([
            "s_client",
            "-quiet",
            "-verify_return_error",
            "-CAfile",
            &ca_file,
            "-servername",
            BACKEND,
            "-connect",
        ])
        .arg(addr.to_string());
        if let Some(c) = &case.cert {
            let (cert, key) = write_leaf(files.path(), &format!("case{i}"), c);
            curl_cmd.args(["--cert", &cert, "--key", &key]);
            ossl.args(["-cert", &cert, "-key", &key]);
            if c.cert_pem.matches("BEGIN CERTIFICATE").count() > 1 {
                // s_client sends only the leaf of -cert; the rest must come from -cert_chain.
                ossl.args(["-cert_chain", &cert]);
            }
        }
        expect_refusal(&inbound, &app, "curl", case.name, case.reason, async {
            let out = curl_cmd.stdin(Stdio::null()).output().await.unwrap();
            assert!(!out.status.success(), "curl succeeded for {}", case.name);
        })
        .await;
        expect_refusal(
            &inbound,
            &app,
            "openssl s_client",
            case.name,
            case.reason,
            async {
                let mut child = ossl
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::null())
                    .kill_on_drop(true)
                    .spawn()
                    .unwrap();
                let mut stdin = child.stdin.take().unwrap();
                let _ = stdin.write_all(b"GET /secret HTTP/1.1\r\n\r\n").await;
                let mut out = Vec::new();
                let mut stdout = child.stdout.take().unwrap();
                let _ = tokio::time::timeout(Duration::from_secs(5), stdout.read_to_end(&mut out))
                    .await;
                drop(stdin);
                let _ = child.kill().await;
                assert!(
                    out.is_empty(),
                    "openssl got a reply for {}: {:?}",
                    case.name,
                    String::from_utf8_lossy(&out)
                );
            },
        )
        .await;
    }
    // Plaintext from curl (http:// on the TLS port) and TLS 1.2 from openssl (1.3 only by default).
    expect_refusal(&inbound, &app, "curl", "plaintext HTTP", "not_tls", async {
        let out = tokio::process::Command::new(&curl)
            .args(["-sS", "--max-time", "5"])
            .arg(format!("http://{addr}/"))
            .output()
            .await
            .unwrap();
        assert!(!out.status.success());
    })
    .await;
    let good = pki.ca.workload("frontend");
    let (cert, key) = write_leaf(files.path(), "good", &good);
    expect_refusal(
        &inbound,
        &app,
        "openssl s_client",
        "TLS 1.2 only",
        "incompatible",
        async {
            let out = tokio::process::Command::new(&openssl)
                .args([
                    "s_client", "-tls1_2", "-CAfile", &ca_file, "-cert", &cert, "-key", &key,
                    "-connect",
                ])
                .arg(addr.to_string())
                .stdin(Stdio::null())
                .output()
                .await
                .unwrap();
            assert!(!out.status.success(), "a TLS 1.2 handshake succeeded");
        },
    )
    .await;
}

/// A TLS server standing in for a peer sidecar, counting plaintext bytes that reach it.
async fn fake_peer(
    ca_pem: &str,
    cert: &TestCert,
) -> (
    std::net::SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<usize>,
) {
    let sock = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = sock.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(server_config(ca_pem, cert));
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = sock.accept().await else {
                return;
            };
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                if let Ok(mut tls) = acceptor.accept(s).await {
                    let mut buf = vec![0; 1024];
                    let n = tls.read(&mut buf).await.unwrap_or(0);
                    let _ = tx.send(n);
                }
            });
        }
    });
    (addr, rx)
}

#[tokio::test]
async fn outbound_refuses_wrong_san_and_foreign_ca() {
    let pki = Pki::new();
    let frontend = pki.workload("frontend");
    let rogue = TestCa::new("rogue CA");
    for (server_ca, server_cert, reason) in [
        (pki.ca.cert_pem(), pki.ca.workload("other"), "wrong_san"),
        (rogue.cert_pem(), rogue.workload("backend"), "unknown_ca"),
    ] {
        let (addr, mut seen) = fake_peer(&server_ca, &server_cert).await;
        let outbound = proxy(&outbound_yaml(addr, "tcp", BACKEND), &frontend).await;
        let mut c = TcpStream::connect(outbound.outbound_addr(0)).await.unwrap();
        c.write_all(b"secret request").await.unwrap();
        let mut buf = Vec::new();
        let n = within("closed", c.read_to_end(&mut buf)).await.unwrap_or(0);
        assert_eq!(n, 0, "{reason}: nothing comes back");
        let m = metric_outbound(&outbound, reason);
        assert_eq!(m, 1.0, "{reason} counted on the outbound listener");
        assert!(
            seen.try_recv().is_err(),
            "{reason}: plaintext reached the wrong peer"
        );
    }
}

fn metric_outbound(h: &enclaveid_proxy::ProxyHandle, reason: &str) -> f64 {
    crate::harness::metric(
        h,
        "enclaveid_proxy_tls_handshake_failures_total",
        &[
            ("listener", "backend"),
            ("direction", "outbound"),
            ("reason", reason),
        ],
    )
}
