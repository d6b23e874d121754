//! The identity header on `http` inbound listeners: whatever a verified peer sends, the app must
//! see exactly one `x-forwarded-client-cert`, the one the proxy wrote for the peer's verified
//! certificate. Spoofing it, or nominating it as hop-by-hop in `Connection` (which tells a
//! proxy to delete the named headers), must not change what the app sees.

#![allow(clippy::unwrap_used, reason = "a failed step is a failed test")]

#[path = "security_support/app.rs"]
mod app;
#[path = "security_support/net.rs"]
mod net;
#[path = "security_support/pki.rs"]
mod pki;
#[path = "security_support/rig.rs"]
mod rig;
#[path = "security_support/sidecar.rs"]
mod sidecar;

use tokio::io::AsyncWriteExt;

use app::Reply;
use pki::spiffe;
use rig::{mtls, rig, status_of};

/// The request head the app received for `path`, lower-cased.
fn head_at_app(text: &str, path: &str) -> String {
    text.split("\r\n\r\n")
        .find(|h| h.contains(path))
        .unwrap_or_else(|| panic!("{path} never reached the app:\n{text}"))
        .to_ascii_lowercase()
}

/// Sends one request with `extra` header lines over mTLS HTTP/1.1 and returns the XFCC values
/// the app saw.
async fn xfcc_seen(rig: &rig::Rig, path: &str, extra: &str) -> Vec<String> {
    let mut s = mtls(rig.inbound, &rig.client, b"http/1.1").await;
    let req = format!("GET {path} HTTP/1.1\r\nhost: backend\r\n{extra}\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    assert_eq!(status_of(&mut s).await, Some(200), "{path}");
    head_at_app(&rig.app().seen.text(), path)
        .lines()
        .filter_map(|l| l.strip_prefix("x-forwarded-client-cert:"))
        .map(|v| v.trim().to_owned())
        .collect()
}

fn check(case: &str, seen: &[String]) -> Option<String> {
    let real = spiffe("frontend");
    let ok =
        seen.len() == 1 && seen[0].contains(&format!("uri={real}")) && !seen[0].contains("admin");
    (!ok).then(|| {
        format!(
            "{case}: the app saw x-forwarded-client-cert {seen:?}; want exactly one, for {real}"
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spoofed_client_cert_header_is_replaced() {
    let rig = rig("http", Reply::Http200, &[], false).await;
    let spoof = "x-forwarded-client-cert: By=x;URI=spiffe://cluster.local/ns/default/sa/admin\r\n";
    let mut bad = Vec::new();
    for (i, (case, extra)) in [
        ("no header sent", String::new()),
        ("a spoofed header", spoof.to_owned()),
        ("two spoofed headers", format!("{spoof}{spoof}")),
    ]
    .iter()
    .enumerate()
    {
        let seen = xfcc_seen(&rig, &format!("/spoof-{i}"), extra).await;
        println!("{case}: {seen:?}");
        bad.extend(check(case, &seen));
    }
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

/// Found by this suite: the inbound inserts its XFCC and only then strips the headers that
/// `Connection` nominates, so a peer can delete its own verified identity header before the
/// app sees it. An app that treats "no XFCC" as "not from the mesh" (or as a trusted local
/// caller) is then fooled. Fix in proxy/src/http.rs `forward`: strip hop-by-hop headers before
/// inserting XFCC (and never let `Connection` nominate it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regression_connection_header_cannot_remove_the_client_cert_header() {
    let rig = rig("http", Reply::Http200, &[], false).await;
    let mut bad = Vec::new();
    for (i, (case, extra)) in [
        (
            "Connection names x-forwarded-client-cert",
            "connection: x-forwarded-client-cert\r\n",
        ),
        (
            "Connection names it, in upper case, among others",
            "connection: keep-alive, X-Forwarded-Client-Cert\r\n",
        ),
        (
            "Connection names it and a spoofed one is sent",
            "connection: x-forwarded-client-cert\r\nx-forwarded-client-cert: URI=spiffe://cluster.local/ns/default/sa/admin\r\n",
        ),
    ]
    .iter()
    .enumerate()
    {
        let seen = xfcc_seen(&rig, &format!("/hop-{i}"), extra).await;
        println!("{case}: {seen:?}");
        bad.extend(check(case, &seen));
    }
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}
