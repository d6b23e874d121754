//! A vault that fails (issue 7 §4), against the real `enclaveid-init proxy` binary in SKR mode:
//! an HTTPS endpoint on loopback that plays both AKV and MAA and either answers every request
//! with HTTP 500 (Azure's error body) or accepts the request and never answers (slow). Expected:
//! bounded retries inside `--retry-deadline`, then exit 1 with a message that names the cause,
//! and nothing written to `--out`.
//!
//! The endpoint is a FAULT INJECTOR, not a test double of AKV or MAA: it speaks HTTP/1.1 over
//! TLS and Azure's error JSON, and nothing else; no request it receives can succeed.
//!
//! An expired MAA token is played by the MAA + key-release TEST DOUBLE (`support/double.rs`),
//! driven through the library's `AkvVault` (the binary would first need an Entra ID token, and
//! nothing but MAA and AKV may be doubled): init checks `exp` before it presents a token, attests
//! again for a fresh one on each attempt, and gives up at the deadline naming the expiry; the
//! double refuses an expired token with AKV's own 403 body.

#![allow(clippy::unwrap_used, reason = "a failed step is a failed test")]

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use enclaveid_init::evidence::evidence_for;
use enclaveid_init::retry::RetryPolicy;
use enclaveid_init::skr::{self, MaaClient, SkrError, TransferKey};
use enclaveid_init::vault::akv::{http_client, AkvOptions, AkvVault, SkrSetup};
use enclaveid_init::vault::VaultError;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use support::double::{Double, HeldKey, TestPki};
use support::{bin, snapshot};
use support::{simulated_evidence, StaticToken};

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
    // Only a hang guard: the retry bound itself is checked on the "gave up after" figure. The
    // whole run includes the simulated provider's two RSA-4096 keys, whose prime search took
    // past 90 s on a loaded 2-core machine.
    let output = tokio::time::timeout(
        Duration::from_mins(5),
        tokio::task::spawn_blocking(move || cmd.output().unwrap()),
    )
    .await
    .expect("enclaveid-init ran past 5 min: the retry deadline did not bound it")
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

/// The double holding a 32-byte oct key, and an `AkvVault` on it with `deadline`.
async fn double_and_vault(deadline: Duration) -> (Double, AkvVault) {
    let pki = Arc::new(TestPki::new());
    let double = Double::start(pki.clone(), HeldKey::Oct((0u8..32).collect())).await;
    let roots = vec![pki.root_der.clone()];
    let vault = AkvVault::new(
        AkvOptions {
            url: double.base.clone(),
            key_name: "master".into(),
            ca_secret_name: "ca".into(),
            extra_roots: roots.clone(),
            emulator: true,
            retry: RetryPolicy {
                deadline,
                initial_backoff: Duration::from_millis(100),
                max_backoff: Duration::from_millis(400),
            },
        },
        Arc::new(StaticToken),
        None,
        Some(SkrSetup {
            maa: MaaClient::new(&double.base, http_client(&roots).unwrap()),
            evidence: simulated_evidence(),
            jws_roots: roots,
        }),
    )
    .unwrap();
    (double, vault)
}

fn count(seen: &[String], request: &str) -> usize {
    seen.iter().filter(|s| s.as_str() == request).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_maa_tokens_are_replaced_by_fresh_attestations_then_the_key_is_released() {
    let (double, vault) = double_and_vault(Duration::from_mins(1)).await;
    double.behaviour.lock().unwrap().expired_tokens = 2;
    let released = tokio::time::timeout(Duration::from_secs(90), vault.release_version("v1"))
        .await
        .expect("the release finishes within the retry deadline")
        .unwrap();
    assert_eq!(released.expose(), (0u8..32).collect::<Vec<_>>().as_slice());
    let b = double.behaviour.lock().unwrap();
    println!("expired then fresh: {:?}", b.seen);
    // Two expired tokens were declined locally, the third attestation's token was used.
    assert_eq!(count(&b.seen, "POST /attest/SevSnpVm"), 3, "{:?}", b.seen);
    assert_eq!(
        b.expired_refused, 0,
        "an expired token was presented to AKV"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_expired_maa_tokens_fail_at_the_deadline_naming_the_expiry_exit_1() {
    let (double, vault) = double_and_vault(Duration::from_secs(3)).await;
    double.behaviour.lock().unwrap().expired_tokens = u32::MAX;
    let start = Instant::now();
    let err = tokio::time::timeout(Duration::from_secs(90), vault.release_version("v1"))
        .await
        .expect("the retry deadline bounds the release")
        .unwrap_err();
    let elapsed = start.elapsed();
    let message = err.to_string();
    println!("always expired: {elapsed:?}: {message}");
    let VaultError::GaveUp { attempts, last, .. } = &err else {
        panic!("not a bounded retry: {err:?}");
    };
    let attempts = *attempts;
    assert!(attempts >= 2, "not retried: {message}");
    assert!(
        matches!(**last, VaultError::Skr(SkrError::TokenExpired { .. })),
        "{message}"
    );
    for needle in ["attesting to MAA", "expired 3600 s ago", "gave up after"] {
        assert!(message.contains(needle), "{needle:?} not in: {message}");
    }
    // Bounded: the 3 s deadline plus one attempt in flight, with room for a loaded machine.
    assert!(elapsed < Duration::from_secs(30), "{elapsed:?}");
    assert_eq!(enclaveid_init::exit_code(&anyhow::Error::new(err)), 1);
    let b = double.behaviour.lock().unwrap();
    assert_eq!(count(&b.seen, "POST /attest/SevSnpVm"), attempts as usize);
    // Nothing was asked of AKV, so nothing was released (and `proxy` writes only after this).
    assert!(
        !b.seen.iter().any(|s| s.ends_with("/release")),
        "{:?}",
        b.seen
    );
}

/// A token from the double's MAA, fetched over the wire without init's expiry check.
async fn raw_token(double: &Double, http: &reqwest::Client) -> String {
    let transfer = TransferKey::generate().unwrap();
    let runtime = transfer.runtime_data();
    let snp = evidence_for(simulated_evidence(), skr::report_data_for(&runtime))
        .await
        .unwrap();
    let answer = http
        .post(format!(
            "{}/attest/SevSnpVm?api-version={}",
            double.base,
            skr::MAA_API_VERSION
        ))
        .header("content-type", "application/json")
        .body(skr::maa_request_body(&snp, &runtime, 7))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let answer: serde_json::Value = serde_json::from_str(&answer).unwrap();
    answer["token"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_key_release_double_refuses_an_expired_token_with_akvs_403() {
    let pki = Arc::new(TestPki::new());
    let double = Double::start(pki.clone(), HeldKey::Oct(vec![7; 32])).await;
    let http = http_client(std::slice::from_ref(&pki.root_der)).unwrap();
    double.behaviour.lock().unwrap().expired_tokens = 1;
    let expired = raw_token(&double, &http).await;
    let fresh = raw_token(&double, &http).await;
    let claims = |t: &str| -> serde_json::Value {
        let part = t.split('.').nth(1).unwrap();
        serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(part)
                .unwrap(),
        )
        .unwrap()
    };
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let (e, f) = (claims(&expired), claims(&fresh));
    assert!(e["exp"].as_i64().unwrap() < now, "{e}");
    assert_eq!(
        f["exp"].as_i64().unwrap() - f["iat"].as_i64().unwrap(),
        8 * 3600
    );

    let release = |token: String| {
        let http = http.clone();
        let url = format!("{}/keys/master/v1/release?api-version=7.4", double.base);
        async move {
            let resp = http
                .post(url)
                .bearer_auth("test-token")
                .header("content-type", "application/json")
                .body(serde_json::json!({"target": token, "enc": skr::RELEASE_ENC}).to_string())
                .send()
                .await
                .unwrap();
            let status = resp.status().as_u16();
            (status, resp.text().await.unwrap())
        }
    };
    let (status, body) = release(expired).await;
    assert_eq!(status, 403, "{body}");
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        body,
        serde_json::json!({"error": {
            "code": "Forbidden",
            "message": "Target environment attestation statement cannot be verified.",
            "innererror": {"code": "AccessDenied"},
        }})
    );
    // Same key, same evidence, a token in its validity period: released.
    let (status, body) = release(fresh).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(double.behaviour.lock().unwrap().expired_refused, 1);
}
