//! End to end: the real `enclaveid-attest` binary serving over TLS on loopback, checked with
//! the binary's own `verify`, with curl, with promtool, and through a TLS-terminating relay.

#![allow(clippy::unwrap_used)] // helpers of #[test] functions: a panic is the failure report

mod common;

use std::sync::Arc;

use common::{curl, get_insecure, require_tool, run, Serve};
use rustls::pki_types::pem::PemObject as _;

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// One simulated server (its chain takes seconds to make) for every check that needs one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulated_server() {
    // With the vectors at hand, the reports carry host_data = policy-hash of a real pod policy.
    let policy = common::testdata()
        .map(|d| d.join("confidential-sidecar-containers/uvm_security_policy.base64"));
    let mut args = vec!["--provider".to_owned(), "simulated".to_owned()];
    if let Some(policy) = &policy {
        args.extend([
            "--simulated-policy".to_owned(),
            policy.display().to_string(),
        ]);
    }
    let server = Serve::start(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let s = &server;
    if let Some(policy) = &policy {
        tokio::task::block_in_place(|| host_data_follows_the_pod_policy(s, policy));
    }
    tokio::task::block_in_place(|| {
        simulated_evidence_verifies_only_when_allowed_and_pins_the_key(s);
    });
    a_relay_with_another_key_fails_the_binding(s).await;
    tokio::task::block_in_place(|| bad_requests_get_reasons(s));
    tokio::task::block_in_place(|| metrics_pass_promtool_and_ready_turns_true(s));
    tokio::task::block_in_place(|| a_rotated_key_is_served_and_bound(s));
}

/// The chain a client checks: pod policy → `policy-hash` → `host_data` allow-list → report.
fn host_data_follows_the_pod_policy(server: &Serve, pod_policy: &std::path::Path) {
    let hash = run(&["policy-hash", pod_policy.to_str().unwrap()]);
    let hash = stdout(&hash).trim().to_owned();
    let dir = tempfile::tempdir().unwrap();
    let verify_with = |allowed: &str| {
        let file = dir.path().join("policy.yaml");
        std::fs::write(
            &file,
            format!("host_data: [\"{allowed}\"]\nallow_simulated: true\n"),
        )
        .unwrap();
        run(&["verify", &server.url(), "--policy", file.to_str().unwrap()])
    };
    let pass = verify_with(&hash);
    assert_eq!(
        pass.status.code(),
        Some(0),
        "{}{}",
        stdout(&pass),
        stderr(&pass)
    );
    assert!(stdout(&pass).contains("✓ policy.host_data"));
    let other = verify_with(&"ab".repeat(32));
    assert_eq!(other.status.code(), Some(1));
    assert!(
        stdout(&other).contains("✗ policy.host_data"),
        "{}",
        stdout(&other)
    );
}

fn pin_of(out: &std::process::Output) -> String {
    stdout(out)
        .lines()
        .find_map(|l| l.strip_prefix("attested TLS key: "))
        .unwrap_or_else(|| panic!("no pin: {}{}", stdout(out), stderr(out)))
        .to_owned()
}

/// The renew container replaces the files by rename: new connections get the new key and
/// evidence bound to it.
fn a_rotated_key_is_served_and_bound(server: &Serve) {
    let before = pin_of(&run(&["verify", &server.url(), "--allow-simulated"]));
    let fresh = common::tls_files("attest.test");
    for name in ["key.pem", "cert.pem"] {
        let staged = server.tls.dir.path().join(format!("{name}.new"));
        std::fs::copy(fresh.dir.path().join(name), &staged).unwrap();
        std::fs::rename(&staged, server.tls.dir.path().join(name)).unwrap();
    }
    let after = run(&["verify", &server.url(), "--allow-simulated"]);
    assert_eq!(after.status.code(), Some(0), "{}", stdout(&after));
    assert_ne!(pin_of(&after), before, "the new key is served and attested");
}

fn simulated_evidence_verifies_only_when_allowed_and_pins_the_key(server: &Serve) {
    let url = server.url();

    let pass = run(&["verify", &url, "--allow-simulated"]);
    let text = stdout(&pass);
    assert_eq!(pass.status.code(), Some(0), "{text}{}", stderr(&pass));
    assert!(text.contains("✓ binding.tls_key"), "{text}");
    assert!(text.contains("✓ binding.nonce"), "{text}");
    let pin = text
        .lines()
        .find_map(|l| l.strip_prefix("attested TLS key: "))
        .expect("a pin after a pass")
        .to_owned();
    assert!(pin.starts_with("sha256//"), "{pin}");

    // The pin is what curl --pinnedpubkey wants: the same key passes, another one fails.
    if require_tool("curl") {
        let ok = curl(&[
            "-k",
            "--pinnedpubkey",
            &pin,
            &format!("{url}/attestation?nonce={}", "ab".repeat(16)),
        ]);
        assert_eq!(ok.status, 200, "{ok:?}");
        let other = curl(&[
            "-k",
            "--pinnedpubkey",
            "sha256//AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
            &format!("{url}/attestation?nonce={}", "ab".repeat(16)),
        ]);
        assert_eq!(
            other.status, 0,
            "a wrong pin must abort the handshake: {other:?}"
        );
    }

    let refused = run(&["verify", &url]);
    assert_eq!(refused.status.code(), Some(1));
    let text = stdout(&refused);
    assert!(text.contains("✗ provider.allowed"), "{text}");
    assert!(!text.contains("attested TLS key"), "{text}");

    // --json and --save, then the saved evidence offline.
    let dir = tempfile::tempdir().unwrap();
    let saved = dir.path().join("evidence.json");
    let json = run(&[
        "verify",
        &url,
        "--allow-simulated",
        "--json",
        "--save",
        saved.to_str().unwrap(),
    ]);
    assert_eq!(json.status.code(), Some(0), "{}", stderr(&json));
    let value: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(value["passed"], true);
    assert_eq!(value["pin"], pin.as_str());
    let nonce = value["nonce"].as_str().unwrap().to_owned();
    let spki = value["tls_spki_sha256"].as_str().unwrap().to_owned();
    assert!(value["checks"].as_array().unwrap().len() > 10);

    let offline = |nonce: &str, spki: &str| {
        run(&[
            "verify",
            "--evidence",
            saved.to_str().unwrap(),
            "--nonce",
            nonce,
            "--tls-spki-sha256",
            spki,
            "--allow-simulated",
        ])
    };
    assert_eq!(offline(&nonce, &spki).status.code(), Some(0));
    assert_eq!(
        offline(&nonce, &pin).status.code(),
        Some(0),
        "the pin form is accepted too"
    );
    let wrong_nonce = offline(&"00".repeat(32), &spki);
    assert_eq!(wrong_nonce.status.code(), Some(1));
    assert!(stdout(&wrong_nonce).contains("✗ binding.nonce"));
    let wrong_key = offline(&nonce, &"11".repeat(32));
    assert_eq!(wrong_key.status.code(), Some(1));
    assert!(stdout(&wrong_key).contains("✗ binding.tls_key"));

    // Hostile saved evidence: a failed check, never a panic.
    std::fs::write(&saved, b"{\"provider\": \"sev-guest\", \"report\": 5}").unwrap();
    let hostile = offline(&nonce, &spki);
    assert_eq!(hostile.status.code(), Some(1));
    assert!(stdout(&hostile).contains('✗'));
}

/// A TLS-terminating relay on loopback: presents its own key to the client and forwards the
/// decrypted bytes to the real server over a second TLS connection.
async fn relay(upstream: String) -> (String, tokio::task::JoinHandle<()>) {
    let identity = common::tls_files("attest.test");
    let certs = rustls::pki_types::CertificateDer::pem_slice_iter(identity.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key =
        rustls::pki_types::PrivateKeyDer::from_pem_slice(identity.key_pem.as_bytes()).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let connector = tokio_rustls::TlsConnector::from(Arc::new(
        enclaveid_attest::tls::attestation_client_config(),
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let task = tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let connector = connector.clone();
            let upstream = upstream.clone();
            tokio::spawn(async move {
                let Ok(mut client) = acceptor.accept(tcp).await else {
                    return;
                };
                let tcp = tokio::net::TcpStream::connect(&upstream).await.unwrap();
                let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
                let mut server = connector.connect(name, tcp).await.unwrap();
                let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
            });
        }
    });
    (addr, task)
}

async fn a_relay_with_another_key_fails_the_binding(server: &Serve) {
    let (relay_addr, task) = relay(server.addr.clone()).await;
    let url = format!("https://{relay_addr}");
    let out = tokio::task::spawn_blocking(move || run(&["verify", &url, "--allow-simulated"]))
        .await
        .unwrap();
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}{}", stderr(&out));
    // The evidence itself is genuine (signature, nonce), only the key does not match.
    assert!(text.contains("✓ report.signature"), "{text}");
    assert!(text.contains("✓ binding.nonce"), "{text}");
    assert!(text.contains("✗ binding.tls_key"), "{text}");
    assert!(!text.contains("attested TLS key"), "{text}");
    task.abort();

    // A plain TCP forwarder that does not terminate TLS changes nothing: the client still
    // talks TLS to the server's own key, and verification passes.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let forward_addr = listener.local_addr().unwrap();
    let upstream = server.addr.clone();
    let forwarder = tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let upstream = upstream.clone();
            tokio::spawn(async move {
                let mut server = tokio::net::TcpStream::connect(&upstream).await.unwrap();
                let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
            });
        }
    });
    let url = format!("https://{forward_addr}");
    let out = tokio::task::spawn_blocking(move || run(&["verify", &url, "--allow-simulated"]))
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    forwarder.abort();
}

fn bad_requests_get_reasons(server: &Serve) {
    if !require_tool("curl") {
        return;
    }
    for (query, reason) in [
        ("", "missing query parameter nonce"),
        ("?other=1", "missing query parameter nonce"),
        ("?nonce=", "nonce is 0 bytes"),
        ("?nonce=xyz", "not hex"),
        ("?nonce=0g0g0g0g0g0g0g0g0g0g0g0g0g0g0g0g", "not hex"),
        ("?nonce=00112233445566778899aabbccddee", "nonce is 15 bytes"),
        (&format!("?nonce={}", "00".repeat(65)), "nonce is 65 bytes"),
        (
            &format!("?nonce={}&nonce={}", "00".repeat(16), "00".repeat(16)),
            "more than once",
        ),
    ] {
        let answer = get_insecure(&server.addr, &format!("/attestation{query}"));
        assert_eq!(answer.status, 400, "{query}: {answer:?}");
        let body: serde_json::Value = serde_json::from_str(&answer.body).unwrap();
        assert!(
            body["error"].as_str().unwrap().contains(reason),
            "{query}: {answer:?}"
        );
    }
    assert_eq!(get_insecure(&server.addr, "/").status, 404);
    let post = curl(&[
        "-k",
        "-X",
        "POST",
        &format!(
            "https://{}/attestation?nonce={}",
            server.addr,
            "00".repeat(16)
        ),
    ]);
    assert_eq!(post.status, 405);
    // HTTP/2 (ALPN h2) is served too.
    let h2 = curl(&[
        "-k",
        "--http2",
        &format!(
            "https://{}/attestation?nonce={}",
            server.addr,
            "00".repeat(16)
        ),
    ]);
    assert_eq!(h2.status, 200, "{h2:?}");
    assert!(h2.headers.starts_with("HTTP/2 200"), "{h2:?}");
    // 16 and 64 bytes are the bounds, both accepted.
    for len in [16, 64] {
        let ok = get_insecure(
            &server.addr,
            &format!("/attestation?nonce={}", "5a".repeat(len)),
        );
        assert_eq!(ok.status, 200, "{len}");
        assert!(ok
            .headers
            .to_ascii_lowercase()
            .contains("cache-control: no-store"));
    }
}

#[test]
fn provider_failure_is_a_503_and_the_server_keeps_serving() {
    if !require_tool("curl") {
        return;
    }
    let mut server = Serve::start(&[
        "--provider",
        "sev-guest",
        "--sev-guest-device",
        "/nonexistent/sev-guest",
        "--tsm-report-dir",
        "/nonexistent/tsm",
    ]);
    let nonce = "42".repeat(32);
    for _ in 0..3 {
        let answer = get_insecure(&server.addr, &format!("/attestation?nonce={nonce}"));
        assert_eq!(answer.status, 503, "{answer:?}");
        assert!(
            answer.body.contains("/nonexistent/sev-guest is missing"),
            "{answer:?}"
        );
    }
    // Still serving: other requests get their normal answers.
    assert_eq!(
        get_insecure(&server.addr, "/attestation?nonce=zz").status,
        400
    );
    let ready = curl(&[&format!("http://{}/ready", server.admin)]);
    assert_eq!(ready.status, 503, "never produced evidence: not ready");
    let metrics = curl(&[&format!("http://{}/metrics", server.admin)]);
    assert!(
        metrics
            .body
            .contains("enclaveid_attest_requests_total{code=\"503\"} 3"),
        "{}",
        metrics.body
    );
    assert!(server.alive());

    let verify = run(&["verify", &server.url()]);
    assert_eq!(verify.status.code(), Some(1));
    assert!(stderr(&verify).contains("HTTP 503"), "{}", stderr(&verify));
}

#[test]
fn requests_past_the_token_bucket_get_429() {
    if !require_tool("curl") {
        return;
    }
    // The bucket is taken before the provider runs, so a failing provider shows it as well as
    // a working one (and costs no simulated chain): two admitted (503), the third refused.
    let server = Serve::start(&[
        "--provider",
        "sev-guest",
        "--sev-guest-device",
        "/nonexistent/sev-guest",
        "--tsm-report-dir",
        "/nonexistent/tsm",
        "--rate",
        "0.01",
        "--burst",
        "2",
    ]);
    let path = format!("/attestation?nonce={}", "01".repeat(16));
    assert_eq!(get_insecure(&server.addr, &path).status, 503);
    assert_eq!(get_insecure(&server.addr, &path).status, 503);
    let limited = get_insecure(&server.addr, &path);
    assert_eq!(limited.status, 429, "{limited:?}");
    assert!(
        limited
            .headers
            .to_ascii_lowercase()
            .contains("retry-after:"),
        "{limited:?}"
    );
    assert!(limited.body.contains("rate limit"));
}

fn metrics_pass_promtool_and_ready_turns_true(server: &Serve) {
    if !require_tool("curl") || !require_tool("promtool") {
        return;
    }
    // Readiness comes from the start-up evidence; poll it (bounded) rather than sleep.
    let mut ready = 0;
    for _ in 0..100 {
        ready = curl(&[&format!("http://{}/ready", server.admin)]).status;
        if ready == 200 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(ready, 200);
    let metrics = curl(&[&format!("http://{}/metrics", server.admin)]);
    assert_eq!(metrics.status, 200);
    for name in [
        "enclaveid_attest_requests_total{code=\"200\"}",
        "enclaveid_attest_requests_total{code=\"400\"}",
        "enclaveid_attest_evidence_seconds_bucket",
        "enclaveid_attest_ready 1",
        "enclaveid_attest_process_",
    ] {
        assert!(metrics.body.contains(name), "{name} in {}", metrics.body);
    }
    let mut promtool = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut promtool.stdin.take().unwrap(), metrics.body.as_bytes())
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn bad_usage_and_config_exit_2() {
    let tls = common::tls_files("x");
    let cert = tls.cert.to_str().unwrap();
    let key = tls.key.to_str().unwrap();
    let serve = |extra: &[&str]| {
        let mut args = vec!["serve", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"];
        args.extend_from_slice(extra);
        run(&args)
    };
    for (args, needle) in [
        (vec!["verify", "http://127.0.0.1:1"], "https://"),
        (vec!["verify"], "required"),
        (vec!["verify", "--evidence", "/x"], "required"),
        (
            vec!["verify-report", "--report", "/nonexistent"],
            "--report=/nonexistent",
        ),
        (vec!["policy-hash", "/nonexistent"], "/nonexistent"),
        (
            vec!["verify-image", "/nonexistent/a", "/nonexistent/b"],
            "EXPECTED=/nonexistent/a",
        ),
        (vec!["frobnicate"], "unrecognized subcommand"),
    ] {
        let out = run(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(needle), "{args:?}: {}", stderr(&out));
    }
    for (extra, needle) in [
        (
            vec!["--tls-cert", cert, "--tls-key", key, "--provider", "tdx"],
            "provider=\"tdx\"",
        ),
        (
            vec![
                "--tls-cert",
                cert,
                "--tls-key",
                "/nonexistent",
                "--provider",
                "simulated",
            ],
            "--tls-key=/nonexistent",
        ),
        (
            vec![
                "--tls-cert",
                key,
                "--tls-key",
                key,
                "--provider",
                "simulated",
            ],
            "--tls-cert",
        ),
        (
            vec![
                "--tls-cert",
                cert,
                "--tls-key",
                key,
                "--provider",
                "vtpm",
                "--vcek",
                "kds",
            ],
            "vcek=\"kds\"",
        ),
        (
            vec![
                "--tls-cert",
                cert,
                "--tls-key",
                key,
                "--provider",
                "vtpm",
                "--tcti",
                "bogus",
            ],
            "tcti=\"bogus\"",
        ),
        (
            vec![
                "--tls-cert",
                cert,
                "--tls-key",
                key,
                "--provider",
                "simulated",
                "--burst",
                "0",
            ],
            "--burst=0",
        ),
    ] {
        let out = serve(&extra);
        assert_eq!(out.status.code(), Some(2), "{extra:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(needle), "{extra:?}: {}", stderr(&out));
    }
}

#[test]
fn verify_report_on_real_vectors() {
    let Some(data) = common::testdata() else {
        return;
    };
    let path = |p: &str| data.join(p).to_str().unwrap().to_owned();
    let milan = run(&[
        "verify-report",
        "--report",
        &path("virtee-sev/report_milan.hex"),
        "--vcek",
        &path("virtee-sev/vcek_milan.der"),
        "--cert-chain",
        &path("virtee-sev/cert_chain_milan"),
    ]);
    assert_eq!(milan.status.code(), Some(0), "{}", stdout(&milan));
    assert!(stdout(&milan).contains("✓ report.signature"));

    let debug = |extra: &[&str]| {
        let mut args = vec![
            "verify-report".to_owned(),
            "--report".into(),
            path("go-sev-guest/attestation.bin"),
            "--vcek".into(),
            path("go-sev-guest/vcek.testcer"),
            "--cert-chain".into(),
            path("virtee-sev/cert_chain_milan"),
        ];
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        run(&args.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let refused = debug(&[]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        stdout(&refused).contains("✗ policy.debug"),
        "{}",
        stdout(&refused)
    );
    let allowed = debug(&["--allow-debug", "--json"]);
    let value: serde_json::Value = serde_json::from_slice(&allowed.stdout).unwrap();
    assert_eq!(
        value["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == "policy.debug")
            .unwrap()["passed"],
        true
    );

    // The VCEK of another chip is rejected; junk is a failed check, not a panic.
    let other = run(&[
        "verify-report",
        "--report",
        &path("virtee-sev/report_milan.hex"),
        "--vcek",
        &path("go-sev-guest/vcek.testcer"),
        "--cert-chain",
        &path("virtee-sev/cert_chain_milan"),
    ]);
    assert_eq!(other.status.code(), Some(1));
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk");
    std::fs::write(&junk, vec![0xA5; 777]).unwrap();
    let out = run(&[
        "verify-report",
        "--report",
        junk.to_str().unwrap(),
        "--vcek",
        junk.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stdout(&out).contains('✗'));
    let no_vcek = run(&[
        "verify-report",
        "--report",
        &path("virtee-sev/report_milan.hex"),
    ]);
    assert_eq!(no_vcek.status.code(), Some(2));
}

#[test]
fn policy_hash_matches_the_confidential_containers_report() {
    let Some(data) = common::testdata() else {
        return;
    };
    let dir = data.join("confidential-sidecar-containers");
    let report = std::fs::read(dir.join("snp_report.bin")).unwrap();
    let host_data = hex::encode(&report[0xC0..0xE0]);
    let policy = dir.join("uvm_security_policy.base64");
    let out = run(&["policy-hash", policy.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(stdout(&out).trim(), host_data);
    assert!(stderr(&out).contains("base64-decoded"));

    // The decoded Rego text gives the same hash; hashing the base64 text itself does not.
    let decoded = base64::Engine::decode(
        &base64::engine::general_purpose::STANDARD,
        std::fs::read_to_string(&policy).unwrap().trim(),
    )
    .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let rego = tmp.path().join("policy.rego");
    std::fs::write(&rego, decoded).unwrap();
    let raw = run(&["policy-hash", rego.to_str().unwrap()]);
    assert_eq!(stdout(&raw).trim(), host_data);
    let literal = run(&["policy-hash", "--input", "raw", policy.to_str().unwrap()]);
    assert_ne!(stdout(&literal).trim(), host_data);
}

#[test]
fn verify_image_reports_broken_images() {
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("image.tar");
    std::fs::write(&junk, b"this is not a tar archive").unwrap();
    let out = run(&[
        "verify-image",
        junk.to_str().unwrap(),
        junk.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("comparing the images"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_hung_provider_times_out_with_503_without_piling_up() {
    if !require_tool("curl") {
        return;
    }
    // A "TPM" that accepts connections (they complete in the listen backlog) and never
    // answers: the command and control ports of a hung swtpm.
    let (port, _hold) = loop {
        let first = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = first.local_addr().unwrap().port();
        if let Ok(second) = std::net::TcpListener::bind(("127.0.0.1", port + 1)) {
            break (port, (first, second));
        }
    };
    let tcti = format!("swtpm:host=127.0.0.1,port={port}");
    let mut server = Serve::start(&[
        "--provider",
        "vtpm",
        "--tcti",
        &tcti,
        "--provider-timeout",
        "1",
    ]);
    for _ in 0..6 {
        let answer = get_insecure(
            &server.addr,
            &format!("/attestation?nonce={}", "33".repeat(16)),
        );
        assert_eq!(answer.status, 503, "{answer:?}");
        assert!(
            answer.body.contains("did not answer within 1s"),
            "{answer:?}"
        );
    }
    assert_eq!(
        get_insecure(&server.addr, "/attestation?nonce=00").status,
        400
    );
    assert!(server.alive());
}

#[test]
fn verify_image_compares_real_oci_layouts() {
    if !require_tool("umoci") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let umoci = |args: &[&str]| {
        let out = std::process::Command::new("umoci")
            .args(args)
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert!(out.status.success(), "umoci {args:?}: {}", stderr(&out));
    };
    umoci(&["init", "--layout", "expected"]);
    umoci(&["new", "--image", "expected:v1"]);
    umoci(&["init", "--layout", "actual"]);
    umoci(&["new", "--image", "actual:v1"]);
    let expected = dir.path().join("expected").display().to_string();
    let actual = dir.path().join("actual").display().to_string();
    let same = run(&["verify-image", &expected, &actual]);
    assert_eq!(
        same.status.code(),
        Some(0),
        "{}{}",
        stdout(&same),
        stderr(&same)
    );
    assert!(stdout(&same).contains("identical"), "{}", stdout(&same));

    umoci(&["unpack", "--rootless", "--image", "actual:v1", "bundle"]);
    std::fs::write(dir.path().join("bundle/rootfs/extra"), b"not in the recipe").unwrap();
    umoci(&["repack", "--image", "actual:v1", "bundle"]);
    let differs = run(&["verify-image", &expected, &actual]);
    assert_eq!(differs.status.code(), Some(1), "{}", stdout(&differs));
    assert!(stdout(&differs).contains("/extra"), "{}", stdout(&differs));
}
