//! `http` mode through two sidecars: HTTP/1.1, HTTP/2 with gRPC-style trailers, WebSocket
//! upgrade, XFCC set from the verified peer and never spoofable, pooled h2 between sidecars,
//! 431/400 on bad heads and 502 when the app is down.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::harness::{
    client_config, dead_port, eventually, inbound_yaml, metric, outbound_yaml, proxy, tls_connect,
    within, Pki, BACKEND,
};

/// Requests to `/slow` that reached the app.
pub static SLOW_STARTED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

type AppBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

async fn app_handler(mut req: Request<Incoming>) -> Result<Response<AppBody>, Infallible> {
    let full = |s: String| Full::new(Bytes::from(s)).boxed();
    let path = req.uri().path().to_owned();
    let resp = match path.as_str() {
        "/grpc" => {
            let body = req
                .into_body()
                .collect()
                .await
                .map(http_body_util::Collected::to_bytes)
                .unwrap_or_default();
            let mut trailers = http::HeaderMap::new();
            trailers.insert("grpc-status", "0".parse().unwrap());
            trailers.insert("grpc-message", "all-good".parse().unwrap());
            let frames = vec![
                Ok::<_, Infallible>(Frame::data(Bytes::from(
                    [b"echo:".as_slice(), &body].concat(),
                ))),
                Ok(Frame::trailers(trailers)),
            ];
            let mut r = Response::new(StreamBody::new(futures_util::stream::iter(frames)).boxed());
            r.headers_mut()
                .insert("content-type", "application/grpc".parse().unwrap());
            r
        }
        "/ws" => {
            let up = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                if let Ok(up) = up.await {
                    let mut io = TokioIo::new(up);
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = io.read(&mut buf).await {
                        if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                }
            });
            let mut r = Response::new(Empty::new().boxed());
            *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
            r.headers_mut()
                .insert("upgrade", "websocket".parse().unwrap());
            r.headers_mut()
                .insert("connection", "upgrade".parse().unwrap());
            r
        }
        "/slow" => {
            SLOW_STARTED.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(400)).await;
            Response::new(full("slow done".into()))
        }
        _ => {
            let xfcc: Vec<String> = req
                .headers()
                .get_all("x-forwarded-client-cert")
                .iter()
                .map(|v| v.to_str().unwrap().to_owned())
                .collect();
            let mut r = Response::new(full(format!(
                "version={:?}\nxfcc={}\n",
                req.version(),
                xfcc.join("|")
            )));
            r.headers_mut().insert(
                "x-forwarded-client-cert",
                "By=spoofed-by-app".parse().unwrap(),
            );
            r
        }
    };
    Ok(resp)
}

pub async fn http_app() -> SocketAddr {
    let sock = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = sock.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = sock.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(
                        TokioIo::new(s),
                        hyper::service::service_fn(app_handler),
                    )
                    .await;
            });
        }
    });
    addr
}

/// Two sidecars in http mode in front of the test app.
pub struct Mesh {
    pub pki: Pki,
    pub inbound: enclaveid_proxy::ProxyHandle,
    pub outbound: enclaveid_proxy::ProxyHandle,
}

pub async fn mesh(app: SocketAddr) -> Mesh {
    let pki = Pki::new();
    let inbound = proxy(
        &inbound_yaml(
            app,
            "http",
            "    allow: [\"spiffe://cluster.local/ns/default/sa/frontend\"]\n",
        ),
        &pki.workload("backend"),
    )
    .await;
    let outbound = proxy(
        &outbound_yaml(inbound.inbound_addr(0), "http", BACKEND),
        &pki.workload("frontend"),
    )
    .await;
    Mesh {
        pki,
        inbound,
        outbound,
    }
}

async fn h1(addr: SocketAddr) -> hyper::client::conn::http1::SendRequest<Empty<Bytes>> {
    let s = TcpStream::connect(addr).await.unwrap();
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s))
        .await
        .unwrap();
    tokio::spawn(conn.with_upgrades());
    send
}

async fn text(resp: Response<Incoming>) -> String {
    String::from_utf8(
        resp.into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec(),
    )
    .unwrap()
}

#[tokio::test]
async fn http1_through_two_sidecars_with_unspoofable_xfcc_and_pooling() {
    let app = http_app().await;
    let m = mesh(app).await;
    for i in 0..3 {
        let mut c = h1(m.outbound.outbound_addr(0)).await;
        let req = Request::get(format!("/headers?i={i}"))
            .header("host", "backend")
            .header(
                "x-forwarded-client-cert",
                "By=evil;URI=spiffe://cluster.local/ns/default/sa/admin",
            )
            .body(Empty::new())
            .unwrap();
        let resp = within("request", c.send_request(req)).await.unwrap();
        assert_eq!(resp.status(), 200);
        assert!(
            resp.headers().get("x-forwarded-client-cert").is_none(),
            "the app's XFCC is stripped on the way out"
        );
        let body = text(resp).await;
        assert!(
            !body.contains("evil") && !body.contains("sa/admin"),
            "spoofed XFCC reached the app: {body}"
        );
        assert!(
            body.contains("xfcc=By=spiffe://cluster.local/ns/default/sa/backend;Hash="),
            "{body}"
        );
        assert!(body.contains(";URI=spiffe://cluster.local/ns/default/sa/frontend;DNS=frontend.default.svc.cluster.local"), "{body}");
        assert!(!body.contains('|'), "exactly one XFCC header: {body}");
    }
    // A keep-alive connection that idles past handshake_timeout_ms (500 ms) stays usable.
    let mut c = h1(m.outbound.outbound_addr(0)).await;
    for _ in 0..2 {
        let req = Request::get("/headers")
            .header("host", "backend")
            .body(Empty::new())
            .unwrap();
        assert_eq!(
            within("keep-alive request", c.send_request(req))
                .await
                .unwrap()
                .status(),
            200
        );
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    // Three client connections, one pooled mTLS (h2) connection between the sidecars.
    assert_eq!(
        metric(
            &m.inbound,
            "enclaveid_proxy_connections_opened_total",
            &[("listener", "api")]
        ),
        1.0
    );
    assert_eq!(
        metric(
            &m.inbound,
            "enclaveid_proxy_http_requests_total",
            &[("listener", "api"), ("status_class", "2xx")]
        ),
        5.0
    );
    let hist = metric(
        &m.outbound,
        "enclaveid_proxy_http_request_duration_seconds_count",
        &[("listener", "backend")],
    );
    assert_eq!(hist, 5.0);

    // A peer talking to the inbound directly cannot spoof either, and ALPN offers h2.
    let cfg = client_config(
        &m.pki.ca.cert_pem(),
        &m.pki.ca.workload("frontend"),
        &[b"h2"],
    );
    let tls = tls_connect(m.inbound.inbound_addr(0), cfg).await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(b"h2".as_slice()));
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = Request::get(format!("https://{BACKEND}/headers"))
        .header("x-forwarded-client-cert", "By=evil")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let body = text(send.send_request(req).await.unwrap()).await;
    assert!(
        !body.contains("evil")
            && body.contains("URI=spiffe://cluster.local/ns/default/sa/frontend"),
        "{body}"
    );
}

#[tokio::test]
async fn concurrent_requests_share_one_h2_connection_between_sidecars() {
    let app = http_app().await;
    let m = mesh(app).await;
    let before = SLOW_STARTED.load(std::sync::atomic::Ordering::SeqCst);
    // Sixteen app connections, each with a request the app holds for 400 ms, all at once: over
    // HTTP/1.1 that would take sixteen mTLS connections; over h2 they share one.
    let out = m.outbound.outbound_addr(0);
    let requests = (0..16).map(|i| async move {
        let mut c = h1(out).await;
        let req = Request::get(format!("/slow?i={i}"))
            .header("host", "backend")
            .body(Empty::new())
            .unwrap();
        let resp = c.send_request(req).await.unwrap();
        (resp.status(), text(resp).await)
    });
    let answers = within(
        "16 concurrent requests",
        futures_util::future::join_all(requests),
    )
    .await;
    for (status, body) in &answers {
        assert_eq!((*status, body.as_str()), (StatusCode::OK, "slow done"));
    }
    assert!(SLOW_STARTED.load(std::sync::atomic::Ordering::SeqCst) >= before + 16);
    let handshakes = metric(
        &m.outbound,
        "enclaveid_proxy_tls_handshakes_total",
        &[("listener", "backend")],
    );
    let opened = metric(
        &m.inbound,
        "enclaveid_proxy_connections_opened_total",
        &[("listener", "api")],
    );
    assert_eq!(
        (handshakes, opened),
        (1.0, 1.0),
        "one mTLS connection (ALPN h2) carries every request"
    );
}

#[tokio::test]
async fn connection_cannot_nominate_the_identity_header_away() {
    let app = http_app().await;
    let m = mesh(app).await;
    let cfg = client_config(
        &m.pki.ca.cert_pem(),
        &m.pki.ca.workload("frontend"),
        &[b"http/1.1"],
    );
    let tls = tls_connect(m.inbound.inbound_addr(0), cfg).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::get("/headers")
        .header("host", "backend")
        .header("connection", "keep-alive, X-Forwarded-Client-Cert")
        .header(
            "x-forwarded-client-cert",
            "URI=spiffe://cluster.local/ns/default/sa/admin",
        )
        .body(Empty::<Bytes>::new())
        .unwrap();
    let body = text(within("request", send.send_request(req)).await.unwrap()).await;
    assert!(
        body.contains("xfcc=By=spiffe://cluster.local/ns/default/sa/backend;"),
        "{body}"
    );
    assert!(
        body.contains("URI=spiffe://cluster.local/ns/default/sa/frontend")
            && !body.contains("sa/admin"),
        "{body}"
    );
}

#[tokio::test]
async fn grpc_style_h2_with_trailers_through_two_sidecars() {
    let app = http_app().await;
    let m = mesh(app).await;
    let s = TcpStream::connect(m.outbound.outbound_addr(0))
        .await
        .unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(s))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = Request::post("http://backend/grpc")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(Bytes::from_static(b"\0\0\0\0\x05hello")))
        .unwrap();
    let resp = within("grpc", send.send_request(req)).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), http::Version::HTTP_2);
    let collected = resp.into_body().collect().await.unwrap();
    let trailers = collected
        .trailers()
        .cloned()
        .expect("trailers arrive through both sidecars");
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(trailers["grpc-message"], "all-good");
    assert_eq!(&collected.to_bytes()[..], b"echo:\0\0\0\0\x05hello");
}

#[tokio::test]
async fn websocket_upgrade_through_two_sidecars() {
    let app = http_app().await;
    let m = mesh(app).await;
    let mut c = h1(m.outbound.outbound_addr(0)).await;
    let req = Request::get("/ws")
        .header("host", "backend")
        .header("connection", "Upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .body(Empty::new())
        .unwrap();
    let resp = within("upgrade", c.send_request(req)).await.unwrap();
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    let mut io = TokioIo::new(within("upgraded", hyper::upgrade::on(resp)).await.unwrap());
    for msg in [b"frame one".as_slice(), b"second frame, longer".as_slice()] {
        io.write_all(msg).await.unwrap();
        let mut buf = vec![0u8; msg.len()];
        within("echo", io.read_exact(&mut buf)).await.unwrap();
        assert_eq!(buf, msg);
    }
}

#[tokio::test]
async fn bad_heads_get_431_and_400_and_a_dead_app_502() {
    let app = http_app().await;
    let m = mesh(app).await;
    let out = m.outbound.outbound_addr(0);
    let raw = |req: Vec<u8>| async move {
        let mut s = TcpStream::connect(out).await.unwrap();
        s.write_all(&req).await.unwrap();
        let mut buf = vec![0u8; 64];
        let n = within("answer", s.read(&mut buf)).await.unwrap();
        String::from_utf8_lossy(&buf[..n]).to_string()
    };
    let huge = format!(
        "GET / HTTP/1.1\r\nhost: b\r\nx-big: {}\r\n\r\n",
        "a".repeat(100_000)
    );
    assert!(
        raw(huge.into_bytes()).await.starts_with("HTTP/1.1 431"),
        "oversized head"
    );
    assert!(
        raw(b"GET / HTTP/1.1\r\nbad header line\r\n\r\n".to_vec())
            .await
            .starts_with("HTTP/1.1 400"),
        "malformed head"
    );
    assert!(
        raw(b"\x01\x02garbage\r\n\r\n".to_vec())
            .await
            .starts_with("HTTP/1.1 400"),
        "garbage"
    );
    eventually("app untouched", || {
        metric(
            &m.inbound,
            "enclaveid_proxy_http_requests_total",
            &[("status_class", "2xx")],
        ) == 0.0
    })
    .await;
    // hyper wrote those three answers itself; they are counted all the same.
    eventually("hyper's own 431 and 400s counted", || {
        metric(
            &m.outbound,
            "enclaveid_proxy_http_requests_total",
            &[("listener", "backend"), ("status_class", "4xx")],
        ) == 3.0
    })
    .await;
    // The same on the inbound, over mTLS (HTTP/1.1 by ALPN): a header flood gets a counted 431.
    let cfg = client_config(
        &m.pki.ca.cert_pem(),
        &m.pki.ca.workload("frontend"),
        &[b"http/1.1"],
    );
    let mut tls = tls_connect(m.inbound.inbound_addr(0), cfg).await.unwrap();
    let flood = (0..200).fold(String::new(), |mut s, i| {
        std::fmt::Write::write_fmt(&mut s, format_args!("x-h{i}: v\r\n")).unwrap();
        s
    });
    tls.write_all(format!("GET / HTTP/1.1\r\nhost: b\r\n{flood}\r\n").as_bytes())
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = within("431 over mTLS", tls.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    eventually("inbound 431 counted", || {
        metric(
            &m.inbound,
            "enclaveid_proxy_http_requests_total",
            &[("listener", "api"), ("status_class", "4xx")],
        ) == 1.0
    })
    .await;

    // App down behind the inbound: 502 through both sidecars, counted at the inbound.
    let m2 = mesh(dead_port()).await;
    let mut c = h1(m2.outbound.outbound_addr(0)).await;
    let resp = c
        .send_request(
            Request::get("/")
                .header("host", "b")
                .body(Empty::new())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(
        metric(
            &m2.inbound,
            "enclaveid_proxy_upstream_failures_total",
            &[("listener", "api")]
        ),
        1.0
    );
    assert_eq!(
        metric(
            &m2.inbound,
            "enclaveid_proxy_http_requests_total",
            &[("status_class", "5xx")]
        ),
        1.0
    );
}

#[tokio::test]
async fn requests_queued_behind_a_failed_protocol_probe_fail_with_it() {
    // A peer that accepts TCP and never answers the ClientHello: the first request's probe
    // waits out the handshake timeout; the requests queued behind it must not each wait out
    // their own (and each open one more connection).
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = silent.local_addr().unwrap();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let a = accepted.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            a.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            held.push(s);
        }
    });
    let pki = Pki::new();
    let yaml = outbound_yaml(addr, "http", BACKEND)
        .replace("handshake_timeout_ms: 500", "handshake_timeout_ms: 3000");
    let outbound = proxy(&yaml, &pki.workload("frontend")).await;
    let out = outbound.outbound_addr(0);
    let requests = (0..8).map(|_| async move {
        let mut c = h1(out).await;
        let req = Request::get("/")
            .header("host", "backend")
            .body(Empty::new())
            .unwrap();
        c.send_request(req).await.unwrap().status()
    });
    let statuses = tokio::time::timeout(
        Duration::from_secs(20),
        futures_util::future::join_all(requests),
    )
    .await
    .expect("requests behind a failed probe hung");
    assert!(
        statuses.iter().all(|s| *s == StatusCode::BAD_GATEWAY),
        "{statuses:?}"
    );
    let dialled = accepted.load(std::sync::atomic::Ordering::SeqCst);
    assert!(dialled < 8, "one probe per request: {dialled} connections");
    assert_eq!(
        metric(
            &outbound,
            "enclaveid_proxy_upstream_failures_total",
            &[("listener", "backend")]
        ) + metric(
            &outbound,
            "enclaveid_proxy_tls_handshake_failures_total",
            &[("listener", "backend"), ("reason", "handshake_timeout")]
        ),
        8.0,
        "every failed request is counted once"
    );
}
