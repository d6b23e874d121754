//! A vault that fails (issue 7 §4), against the real `enclaveid-init proxy` binary in SKR mode:
//! an HTTPS endpoint on loopback that plays both AKV and MAA and either answers every request
//! with HTTP 500 (Azure's error body) or accepts the request and never answers (slow). Expected:
//! bounded retries inside `--retry-deadline`, then exit 1 with a message that names the cause,
//! and nothing written to `--out`.
//!
//! The endpoint is a FAULT INJECTOR, not a test double of AKV or MAA: it speaks HTTP/1.1 over
//! TLS and Azure's error JSON, and nothing else; no request it receives can succeed.

#![allow(clippy::unwrap_used, reason = "a failed step is a failed test")]

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use support::{bin, snapshot};

#[derive(Clone, Copy, Debug)]
enum Fault {
    /// Every request gets 500 with an Azure error body.
    Status500,
    /// Every request is read and never answered.
    Hang,
}

struct Injector {
    base: String,
    ca_pem: String,
    requests: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Injector {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn injector(fault: Fault) -> Injector {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "fault injector root");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let params =
        rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone(), ca.der().clone()],
            rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let requests = Arc::new(AtomicUsize::new(0));
    let counter = requests.clone();
    let task = tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, counter) = (acceptor.clone(), counter.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut buf = Vec::new();
                let mut chunk = [0u8; 8192];
                loop {
                    let Ok(n) = tls.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    // One response per request head (bodies are small and ignored).
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        continue;
                    };
                    buf.drain(..end + 4);
                    counter.fetch_add(1, Ordering::SeqCst);
                    match fault {
                        Fault::Hang => {
                            // Hold the connection open and silent until the client gives up.
                            let _ = tls.read(&mut chunk).await;
                            return;
                        }
                        Fault::Status500 => {
                            let body = r#"{"error":{"code":"InternalServerError","message":"fault injected: HTTP 500"}}"#;
                            let resp = format!(
                                "HTTP/1.1 500 Internal Server Error\r\ncontent-type: application/json; charset=utf-8\r\ncontent-length: {}\r\n\r\n{body}",
                                body.len()
                            );
                            if tls.write_all(resp.as_bytes()).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    Injector {
        base: format!("https://127.0.0.1:{port}"),
        ca_pem: ca.pem(),
        requests,
        task,
    }
}

/// Runs `enclaveid-init proxy` against the injector (as vault and as MAA) in the background,
/// so the injector keeps serving; returns (exit code, stderr, elapsed, files written).
async fn run_proxy(inj: &Injector, deadline: &str) -> (Option<i32>, String, Duration, usize) {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let ca_file = tmp.path().join("injector-ca.pem");
    std::fs::write(&ca_file, &inj.ca_pem).unwrap();
    let mut cmd = bin();
    cmd.args([
        "proxy",
        "--vault",
        &format!("akv:{}", inj.base),
        "--vault-emulator",
        "--maa",
        &inj.base,
        "--evidence",
        "simulated",
        "--tls-ca-file",
        ca_file.to_str().unwrap(),
        "--auth",
        "managed-identity",
        "--retry-deadline",
        deadline,
        "--out",
        out.to_str().unwrap(),
        "--allow-disk",
        "--dns",
        "api.prod.svc",
        "--uri",
        "spiffe://cluster.local/ns/prod/sa/api",
    ]);
    let start = Instant::now();
    let output = tokio::time::timeout(
        Duration::from_secs(90),
        tokio::task::spawn_blocking(move || cmd.output().unwrap()),
    )
    .await
    .expect("enclaveid-init ran past 90 s: the retry deadline did not bound it")
    .unwrap();
    let elapsed = start.elapsed();
    let written = snapshot(&out).len();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
        elapsed,
        written,
    )
}

/// The `gave up after N attempts in X` figure: the time spent retrying, which the deadline
/// bounds. (The whole run is longer: the simulated evidence provider first makes its RSA-4096
/// test chain.)
fn retry_seconds(stderr: &str) -> f64 {
    let after = stderr
        .split("gave up after ")
        .nth(1)
        .unwrap_or_else(|| panic!("no 'gave up after' in:\n{stderr}"));
    let secs = after.split(" in ").nth(1).unwrap_or_default();
    let num: String = secs
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    let value: f64 = num
        .parse()
        .unwrap_or_else(|_| panic!("unreadable duration in {after:?}"));
    if secs[num.len()..].starts_with("ms") {
        value / 1000.0
    } else {
        value
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vault_answering_500_is_retried_within_the_deadline_then_exits_1() {
    let inj = injector(Fault::Status500).await;
    let (code, stderr, elapsed, written) = run_proxy(&inj, "4s").await;
    let requests = inj.requests.load(Ordering::SeqCst);
    let last = stderr.lines().last().unwrap_or_default().to_owned();
    println!("500s: exit {code:?} after {elapsed:?}, {requests} requests, {written} files; {last}");
    assert_eq!(code, Some(1), "{stderr}");
    assert!(requests >= 2, "not retried: {requests} requests\n{stderr}");
    assert!(
        retry_seconds(&stderr) <= 5.0,
        "retries ran past the 4 s deadline:\n{stderr}"
    );
    assert!(stderr.contains("500"), "the cause is not named:\n{stderr}");
    assert_eq!(written, 0, "partial output");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vault_that_never_answers_is_cut_off_by_the_deadline_then_exits_1() {
    let inj = injector(Fault::Hang).await;
    let (code, stderr, elapsed, written) = run_proxy(&inj, "4s").await;
    let requests = inj.requests.load(Ordering::SeqCst);
    let last = stderr.lines().last().unwrap_or_default().to_owned();
    println!("hang: exit {code:?} after {elapsed:?}, {requests} requests, {written} files; {last}");
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        retry_seconds(&stderr) <= 5.0,
        "the hang outlived the 4 s deadline:\n{stderr}"
    );
    assert!(
        stderr.contains("deadline"),
        "the cause is not named:\n{stderr}"
    );
    assert_eq!(written, 0, "partial output");
}
