//! The real binary: `check` exit codes and messages, JSON logs, SIGTERM drain to exit 0,
//! `POST /shutdown`, and exit codes for unusable TLS files.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::harness::{within, Pki};
use crate::lifecycle::admin;

const BIN: &str = env!("CARGO_BIN_EXE_enclaveid-proxy");

fn config(dir: &std::path::Path, extra: &str) -> std::path::PathBuf {
    let path = dir.join("proxy.yaml");
    let d = dir.display();
    std::fs::write(
        &path,
        format!(
            "admin: {{ listen: 127.0.0.1:0 }}\ntls: {{ ca: {d}/ca.pem, cert: {d}/cert.pem, key: {d}/key.pem }}\n\
             inbound:\n  - name: api\n    listen: 127.0.0.1:0\n    forward: 127.0.0.1:9\n{extra}"
        ),
    )
    .unwrap();
    path
}

#[tokio::test]
async fn check_exits_0_or_2_with_the_key_path() {
    let dir = tempfile::tempdir().unwrap();
    let good = config(dir.path(), "");
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&good)
        .output()
        .await
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The same through the environment variable.
    let out = Command::new(BIN)
        .arg("check")
        .env("ENCLAVEID_PROXY_CONFIG", &good)
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(0));

    for (extra, want) in [
        ("    forward2: 1\n", "inbound[0]: unknown field `forward2`"),
        (
            "outbound:\n  - { name: b, listen: 127.0.0.1:0, upstream: \"x:99999\" }\n",
            "outbound[0].upstream = \"x:99999\": invalid port",
        ),
    ] {
        let bad = config(dir.path(), extra);
        let out = Command::new(BIN)
            .args(["check", "--config"])
            .arg(&bad)
            .output()
            .await
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(err.contains(want), "{err}");
    }
    let out = Command::new(BIN)
        .args(["check"])
        .env_remove("ENCLAVEID_PROXY_CONFIG")
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "no config is bad usage");
    let out = Command::new(BIN)
        .args(["--no-such-flag"])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = Command::new(BIN)
        .args(["run", "--config", "/nonexistent.yaml"])
        .output()
        .await
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "an unreadable config is a config error"
    );
}

/// Spawns the binary with JSON logs and returns it with its admin address (from the log).
async fn spawn(
    config: &std::path::Path,
) -> (
    Child,
    std::net::SocketAddr,
    tokio::task::JoinHandle<Vec<String>>,
) {
    let mut child = Command::new(BIN)
        .args(["run", "--config"])
        .arg(config)
        .env("LOG_FORMAT", "json")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let admin = within("listening log line", async {
        loop {
            let line = lines
                .next_line()
                .await
                .unwrap()
                .expect("the proxy exited before listening");
            let v: serde_json::Value =
                serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
            if v["message"] == "listening" {
                return v["admin"].as_str().unwrap().parse().unwrap();
            }
        }
    })
    .await;
    let rest = tokio::spawn(async move {
        let mut all = Vec::new();
        while let Ok(Some(l)) = lines.next_line().await {
            all.push(l);
        }
        all
    });
    (child, admin, rest)
}

#[tokio::test]
async fn sigterm_drains_and_exits_0_with_json_logs() {
    let pki = Pki::new();
    let dir = pki.workload("backend");
    let cfg = config(&dir, "drain_timeout_ms: 2000\nworkers: 2\n");
    let (mut child, admin_addr, logs) = spawn(&cfg).await;
    assert_eq!(admin(admin_addr, "GET", "/ready").await.0, 200);
    let pid = child.id().unwrap().to_string();
    let st = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .unwrap();
    assert!(st.success());
    let status = within("exit after SIGTERM", child.wait()).await.unwrap();
    assert_eq!(status.code(), Some(0));
    let logs = logs.await.unwrap();
    assert!(
        logs.iter().any(|l| l.contains("\"SIGTERM received\"")),
        "{logs:?}"
    );
    assert!(logs.iter().any(|l| l.contains("\"stopped\"")), "{logs:?}");
    for l in &logs {
        serde_json::from_str::<serde_json::Value>(l)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
    }
}

#[tokio::test]
async fn post_shutdown_stops_the_binary_with_0() {
    let pki = Pki::new();
    let cfg = config(&pki.workload("backend"), "");
    let (mut child, admin_addr, _logs) = spawn(&cfg).await;
    assert_eq!(admin(admin_addr, "POST", "/shutdown").await.0, 202);
    let status = within("exit after POST /shutdown", child.wait())
        .await
        .unwrap();
    assert_eq!(status.code(), Some(0));
}

#[tokio::test]
async fn unusable_tls_files_exit_1() {
    let pki = Pki::new();
    let dir = pki.workload("backend");
    std::fs::write(dir.join("key.pem"), "not a key").unwrap();
    let cfg = config(&dir, "");
    let out = tokio::time::timeout(
        Duration::from_secs(10),
        Command::new(BIN)
            .args(["run", "--config"])
            .arg(&cfg)
            .output(),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("key.pem") && err.contains("no PRIVATE KEY"),
        "{err}"
    );
}

async fn probe(args: &[&str]) -> (Option<i32>, String, String) {
    let out = within(
        "probe",
        Command::new(BIN)
            .arg("probe")
            .args(args)
            .env_remove("ENCLAVEID_PROXY_CONFIG")
            .output(),
    )
    .await
    .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn probe_exits_0_on_2xx_1_otherwise_and_2_on_bad_usage() {
    let pki = Pki::new();
    let running = crate::harness::proxy(
        &crate::harness::inbound_yaml(crate::harness::dead_port(), "tcp", ""),
        &pki.workload("backend"),
    )
    .await;
    let admin = running.admin_addr();
    let url = |path: &str| format!("http://{admin}{path}");

    let (code, out, err) = probe(&["--url", &url("/ready"), "--timeout-ms", "5000"]).await;
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("HTTP/1.1 200"), "{out}");
    let (code, _, err) = probe(&["--url", &url("/nope"), "--timeout-ms", "5000"]).await;
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("404"), "{err}");

    // Draining: /ready answers 503 (or, once drained, the admin port is gone): not ready.
    running.shutdown();
    let (code, _, err) = probe(&["--url", &url("/ready"), "--timeout-ms", "5000"]).await;
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("503 Service Unavailable: draining") || err.contains(&admin.to_string()),
        "{err}"
    );

    // Nothing listening: a clear connect error.
    let dead = crate::harness::dead_port();
    let (code, _, err) = probe(&["--url", &format!("http://{dead}/ready")]).await;
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("connecting to"), "{err}");

    // A listener that never answers: bounded by --timeout-ms.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap();
    let (code, _, err) = probe(&[
        "--url",
        &format!("http://{addr}/ready"),
        "--timeout-ms",
        "300",
    ])
    .await;
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("no answer within 300 ms") || err.contains("timed out"),
        "{err}"
    );
    drop(silent);

    for bad in [
        vec!["--url", "https://127.0.0.1:15000/ready"],
        vec!["--url", "http://10.1.2.3:15000/ready"],
        vec!["--timeout-ms", "soon"],
        vec!["--timeout-ms", "0"],
        vec!["--no-such-flag"],
    ] {
        let (code, _, err) = probe(&bad).await;
        assert_eq!(code, Some(2), "{bad:?}: {err}");
    }
}
