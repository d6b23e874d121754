//! `tcp` mode through two sidecars: bytes in order, half-close, app down, connection limit.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use enclaveid_proxy::ProxyHandle;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::{
    dead_port, eventually, inbound_yaml, metric, outbound_yaml, proxy, within, EchoApp, Pki,
    BACKEND,
};

#[tokio::test]
async fn two_sidecars_copy_every_byte_and_half_close() {
    let pki = Pki::new();
    let app = EchoApp::start().await;
    let (inbound, outbound) = frontend_to_backend(&pki, app.addr).await;

    let mut c = TcpStream::connect(outbound.outbound_addr(0)).await.unwrap();
    let payload: Vec<u8> = (0..1_000_000u32).map(|i| (i % 253) as u8).collect();
    let (mut r, mut w) = c.split();
    let (got, ()) = within("echo through two sidecars", async {
        tokio::join!(
            async {
                let mut got = Vec::new();
                r.read_to_end(&mut got).await.unwrap();
                got
            },
            async {
                w.write_all(&payload).await.unwrap();
                // Half-close: the app sees EOF and still answers afterwards.
                w.shutdown().await.unwrap();
            }
        )
    })
    .await;
    assert_eq!(got.len(), payload.len() + 5);
    assert_eq!(
        &got[..payload.len()],
        &payload[..],
        "no byte lost or reordered"
    );
    assert_eq!(
        &got[payload.len()..],
        b"<eof>",
        "the reply after the half-close arrives"
    );
    assert_eq!(app.bytes.load(Ordering::SeqCst), 1_000_000);
    eventually("bytes counted", || {
        metric(
            &inbound,
            "enclaveid_proxy_bytes_total",
            &[("listener", "api"), ("flow", "to_upstream")],
        ) >= 1e6
            && metric(
                &outbound,
                "enclaveid_proxy_connections_closed_total",
                &[("listener", "backend")],
            ) == 1.0
    })
    .await;
    assert_eq!(
        metric(
            &outbound,
            "enclaveid_proxy_tls_handshakes_total",
            &[("listener", "backend")]
        ),
        1.0
    );
}

#[tokio::test]
async fn app_down_is_a_clean_close_and_counted() {
    let pki = Pki::new();
    let inbound = proxy(
        &inbound_yaml(dead_port(), "tcp", ""),
        &pki.workload("backend"),
    )
    .await;
    let outbound = proxy(
        &outbound_yaml(inbound.inbound_addr(0), "tcp", BACKEND),
        &pki.workload("frontend"),
    )
    .await;
    let mut c = TcpStream::connect(outbound.outbound_addr(0)).await.unwrap();
    c.write_all(b"hello").await.unwrap();
    let mut buf = Vec::new();
    let n = within("close", c.read_to_end(&mut buf)).await.unwrap();
    assert_eq!(n, 0, "closed without data");
    eventually("upstream failure counted", || {
        metric(
            &inbound,
            "enclaveid_proxy_upstream_failures_total",
            &[("listener", "api")],
        ) == 1.0
    })
    .await;

    // The peer sidecar itself down: the outbound closes the app's connection and counts it.
    let outbound2 = proxy(
        &outbound_yaml(dead_port(), "tcp", BACKEND),
        &pki.workload("frontend"),
    )
    .await;
    let mut c = TcpStream::connect(outbound2.outbound_addr(0))
        .await
        .unwrap();
    let n = within("close", c.read_to_end(&mut buf)).await.unwrap();
    assert_eq!(n, 0);
    assert_eq!(
        metric(
            &outbound2,
            "enclaveid_proxy_upstream_failures_total",
            &[("listener", "backend")]
        ),
        1.0
    );
}

#[tokio::test]
async fn connections_over_the_limit_are_refused_and_counted() {
    let pki = Pki::new();
    let app = EchoApp::start().await;
    let yaml = outbound_yaml(app.addr, "tcp", BACKEND)
        .replace("protocol: tcp\n", "protocol: tcp\n    max_connections: 1\n");
    // An outbound to a plain echo: the TLS handshake fails, but the slot is held during it.
    let stalled = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let yaml = yaml.replace(
        &app.addr.to_string(),
        &stalled.local_addr().unwrap().to_string(),
    );
    let outbound = proxy(&yaml, &pki.workload("frontend")).await;
    let _first = TcpStream::connect(outbound.outbound_addr(0)).await.unwrap();
    eventually("first connection active", || {
        metric(
            &outbound,
            "enclaveid_proxy_connections_active",
            &[("listener", "backend")],
        ) == 1.0
    })
    .await;
    let mut second = TcpStream::connect(outbound.outbound_addr(0)).await.unwrap();
    let mut buf = [0u8; 1];
    assert_eq!(
        within("refused", second.read(&mut buf)).await.unwrap_or(0),
        0
    );
    assert_eq!(
        metric(
            &outbound,
            "enclaveid_proxy_connections_rejected_total",
            &[("listener", "backend")]
        ),
        1.0
    );
}

#[tokio::test]
async fn a_two_ca_bundle_trusts_both_and_resumption_is_off() {
    use crate::harness::{client_config, tls_connect};
    let pki = Pki::new();
    let next = enclaveid_pki::testing::TestCa::new("next mesh CA");
    let app = EchoApp::start().await;
    // Mid-rollover bundle: the old and the new CA; the sidecar's own leaf is from the old one.
    let bundle = format!("{}{}", pki.ca.cert_pem(), next.cert_pem());
    let dir = pki.write("backend", &bundle, &pki.ca.workload("backend"));
    let inbound = proxy(&inbound_yaml(app.addr, "tcp", ""), &dir).await;
    for (i, ca) in [&pki.ca, &next].into_iter().enumerate() {
        let cfg = client_config(&bundle, &ca.workload("frontend"), &[]);
        for round in 0..2 {
            let mut s = tls_connect(inbound.inbound_addr(0), cfg.clone())
                .await
                .unwrap();
            s.write_all(b"hi").await.unwrap();
            let mut buf = [0u8; 2];
            within("echo", s.read_exact(&mut buf)).await.unwrap();
            // The client would resume if offered a ticket; the sidecar offers none.
            assert_eq!(
                s.get_ref().1.handshake_kind(),
                Some(rustls::HandshakeKind::Full),
                "CA {i}, round {round}"
            );
        }
    }
    assert_eq!(app.reached().0, 4);
}

#[tokio::test]
async fn an_upstream_dns_name_is_resolved_through_the_cache() {
    let pki = Pki::new();
    let echo = EchoApp::start().await;
    let web = crate::http::http_app().await;
    for protocol in ["tcp", "http"] {
        let app = if protocol == "tcp" { echo.addr } else { web };
        let inbound = proxy(&inbound_yaml(app, protocol, ""), &pki.workload("backend")).await;
        let addr = inbound.inbound_addr(0);
        // `localhost` (from /etc/hosts) may also resolve to ::1, where nothing listens: the dial
        // tries each address of the cached answer in turn.
        let yaml = outbound_yaml(addr, protocol, BACKEND)
            .replace(
                &format!("upstream: {addr}"),
                &format!("upstream: localhost:{}", addr.port()),
            )
            .replace(
                "outbound:\n",
                "dns: { cache_ttl_ms: 60000, cache_max_entries: 4 }\noutbound:\n",
            );
        assert!(yaml.contains("upstream: localhost:"), "{yaml}");
        let outbound = proxy(&yaml, &pki.workload("frontend")).await;
        for i in 0..3u8 {
            let mut c = TcpStream::connect(outbound.outbound_addr(0)).await.unwrap();
            if protocol == "tcp" {
                c.write_all(&[i; 16]).await.unwrap();
                let mut back = [0u8; 16];
                within("echo via localhost", c.read_exact(&mut back))
                    .await
                    .unwrap();
                assert_eq!(back, [i; 16]);
            } else {
                c.write_all(b"GET /headers HTTP/1.1\r\nhost: b\r\nconnection: close\r\n\r\n")
                    .await
                    .unwrap();
                let mut answer = Vec::new();
                within("answer via localhost", c.read_to_end(&mut answer))
                    .await
                    .unwrap();
                let answer = String::from_utf8_lossy(&answer);
                assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
            }
        }
        assert_eq!(
            metric(
                &outbound,
                "enclaveid_proxy_dns_resolution_failures_total",
                &[("listener", "backend")]
            ),
            0.0
        );
        assert_eq!(
            metric(
                &inbound,
                "enclaveid_proxy_tls_handshakes_total",
                &[("listener", "api")]
            ),
            if protocol == "tcp" { 3.0 } else { 1.0 },
            "{protocol}: the peer was dialled by name (http: one pooled h2 connection)"
        );
    }
}

#[tokio::test]
async fn a_peer_seen_before_is_verified_from_the_chain_cache() {
    let pki = Pki::new();
    let app = EchoApp::start().await;
    let (inbound, outbound) = frontend_to_backend(&pki, app.addr).await;
    for round in 0..3u8 {
        let mut c = TcpStream::connect(outbound.outbound_addr(0)).await.unwrap();
        c.write_all(&[round; 4]).await.unwrap();
        let mut back = [0u8; 4];
        within("echo", c.read_exact(&mut back)).await.unwrap();
        assert_eq!(back, [round; 4]);
    }
    let lookups = |h, result| {
        metric(
            h,
            "enclaveid_proxy_tls_verified_chain_cache_lookups_total",
            &[("result", result)],
        )
    };
    // Each side verified the other's chain in full once, then twice from the cache.
    for (side, h) in [("inbound", &inbound), ("outbound", &outbound)] {
        assert_eq!(lookups(h, "miss"), 1.0, "{side}: misses");
        assert_eq!(lookups(h, "hit"), 2.0, "{side}: hits");
    }
}

/// An outbound sidecar (identity `frontend`) dialling an inbound one (identity `backend`,
/// admitting only `frontend`) in front of `app`, both in `tcp` mode.
async fn frontend_to_backend(pki: &Pki, app: SocketAddr) -> (ProxyHandle, ProxyHandle) {
    let inbound = proxy(
        &inbound_yaml(
            app,
            "tcp",
            "    allow: [\"spiffe://cluster.local/ns/default/sa/frontend\"]\n",
        ),
        &pki.workload("backend"),
    )
    .await;
    let outbound = proxy(
        &outbound_yaml(inbound.inbound_addr(0), "tcp", BACKEND),
        &pki.workload("frontend"),
    )
    .await;
    (inbound, outbound)
}
