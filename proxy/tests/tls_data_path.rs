//! The `tcp` data path's unbuffered TLS stream against a foreign peer: `openssl s_client` as an
//! mTLS client of our inbound sends TLS 1.3 key updates (`k`: ours need not answer, `K`: ours
//! must answer with its own) between lines the echo app sends back, and watches (`-msg`) for
//! our `KeyUpdate`. Rustls-driven tests of partial records, `close_notify` and bare FIN are unit
//! tests next to the stream (`src/listener/tls_io_tests.rs`).

#![allow(
    clippy::unwrap_used,
    clippy::missing_panics_doc,
    unreachable_pub,
    dead_code,
    reason = "the shared harness is written for the `proxy` test crate"
)]

#[path = "proxy/harness.rs"]
mod harness;

use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use harness::{inbound_yaml, proxy, tool, within, EchoApp, Pki};

/// Reads s_client's stdout until a line contains `needle`; returns the lines read.
async fn until(
    lines: &mut tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    needle: &str,
) -> Vec<String> {
    let mut seen = Vec::new();
    within(&format!("s_client printing {needle:?}"), async {
        loop {
            let line = lines
                .next_line()
                .await
                .unwrap()
                .unwrap_or_else(|| panic!("s_client ended before {needle:?}; saw {seen:#?}"));
            let found = line.contains(needle);
            seen.push(line);
            if found {
                return;
            }
        }
    })
    .await;
    seen
}

/// Sends s_client's key update command and waits until it has sent the message: s_client
/// drops whatever follows the command in the same read of its stdin.
async fn key_update(
    stdin: &mut tokio::process::ChildStdin,
    lines: &mut tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    command: &[u8],
) {
    stdin.write_all(command).await.unwrap();
    while !until(lines, "KeyUpdate")
        .await
        .last()
        .is_some_and(|l| l.contains(">>>"))
    {}
}

#[tokio::test]
async fn openssl_key_updates_through_the_inbound_tcp_stream() {
    let Some(openssl) = tool("openssl") else {
        return;
    };
    let pki = Pki::new();
    let app = EchoApp::start().await;
    let inbound = proxy(&inbound_yaml(app.addr, "tcp", ""), &pki.workload("backend")).await;
    let client = pki.workload("frontend");
    let file = |name: &str| client.join(name).display().to_string();
    let mut child = tokio::process::Command::new(openssl)
        .args(["s_client", "-tls1_3", "-msg", "-no_ign_eof", "-CAfile"])
        .arg(file("ca.pem"))
        .args(["-cert", &file("cert.pem"), "-key", &file("key.pem")])
        .args([
            "-servername",
            "backend.default.svc.cluster.local",
            "-connect",
        ])
        .arg(inbound.inbound_addr(0).to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap()).lines();

    stdin.write_all(b"line one\n").await.unwrap();
    until(&mut out, "line one").await;
    // `K`: a key update that asks for ours. Our answer leaves with our next record (the echo).
    key_update(&mut stdin, &mut out, b"K\n").await;
    stdin.write_all(b"line two\n").await.unwrap();
    let seen = until(&mut out, "line two").await;
    assert!(
        seen.iter()
            .any(|l| l.contains("<<<") && l.contains("KeyUpdate")),
        "s_client received our KeyUpdate before the echo: {seen:#?}"
    );
    // `k`: a key update that asks for nothing; both directions go on.
    key_update(&mut stdin, &mut out, b"k\n").await;
    stdin.write_all(b"line three\n").await.unwrap();
    until(&mut out, "line three").await;
    for i in 0..3 {
        key_update(&mut stdin, &mut out, b"K\n").await;
        stdin
            .write_all(format!("again {i}\n").as_bytes())
            .await
            .unwrap();
        until(&mut out, &format!("again {i}")).await;
    }
    drop(stdin);
    within("s_client exits", child.wait()).await.unwrap();
    let (connections, bytes) = app.reached();
    assert_eq!(connections, 1);
    assert_eq!(
        bytes,
        9 + 9 + 11 + 3 * 8,
        "the app got every line, no command"
    );
}
