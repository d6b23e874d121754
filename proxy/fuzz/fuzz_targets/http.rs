//! HTTP request heads, headers and the x-forwarded-client-cert handling, through a real pair of
//! in-process proxies: the input is written as-is to an `http` outbound listener (what the app
//! sends), which parses it, strips hop-by-hop and XFCC headers and forwards it over mTLS (h2) to
//! an `http` inbound listener, which adds the verified peer's XFCC and forwards to a loopback
//! app. A panic in any proxy task aborts the process (libFuzzer's panic hook), so it is found.
//! Oracle at the app: every request that arrives carries exactly one XFCC, the proxy's.
#![no_main]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use enclaveid_pki::testing::TestCa;
use enclaveid_proxy::config::Config;
use enclaveid_proxy::tls_state::TlsSource;
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Rig {
    rt: tokio::runtime::Runtime,
    outbound: SocketAddr,
    /// Request heads the app received since the last input.
    heads: Arc<Mutex<Vec<Vec<u8>>>>,
}

fn rig() -> &'static Rig {
    static RIG: OnceLock<Rig> = OnceLock::new();
    RIG.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let ca = TestCa::new("fuzz CA");
        let leaf = ca.workload("backend");
        let source = || TlsSource::Memory {
            ca: ca.cert_pem(),
            cert: leaf.cert_pem.clone(),
            key: zeroize::Zeroizing::new(leaf.key_pem.clone()),
        };
        let heads = Arc::new(Mutex::new(Vec::new()));
        let outbound = rt.block_on(async {
            let app = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("app");
            let app_addr = app.local_addr().expect("app addr");
            let seen = heads.clone();
            tokio::spawn(async move {
                while let Ok((mut s, _)) = app.accept().await {
                    let seen = seen.clone();
                    tokio::spawn(async move {
                        // One request per connection (the response says `connection: close`),
                        // so the first head on a connection is a request head, never body bytes.
                        let mut buf = Vec::new();
                        let mut chunk = [0u8; 8192];
                        while let Ok(n) = s.read(&mut chunk).await {
                            if n == 0 {
                                return;
                            }
                            buf.extend_from_slice(&chunk[..n]);
                            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                                seen.lock().expect("lock").push(buf[..end + 4].to_vec());
                                let _ = s
                                    .write_all(
                                        b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                                    )
                                    .await;
                                let _ = s.shutdown().await;
                                let _ = tokio::time::timeout(
                                    Duration::from_secs(1),
                                    tokio::io::copy(&mut s, &mut tokio::io::sink()),
                                )
                                .await;
                                return;
                            }
                        }
                    });
                }
            });
            let inbound = Config::parse(&format!(
                "admin: {{ listen: \"127.0.0.1:0\" }}\n\
                 tls: {{ ca: /unused, cert: /unused, key: /unused }}\n\
                 inbound:\n  - {{ name: api, listen: \"127.0.0.1:0\", forward: \"{app_addr}\", protocol: http, app_protocol: http1 }}\n"
            ))
            .expect("inbound config");
            let inbound = enclaveid_proxy::start(inbound, source()).await.expect("inbound");
            let outbound = Config::parse(&format!(
                "admin: {{ listen: \"127.0.0.1:0\" }}\n\
                 tls: {{ ca: /unused, cert: /unused, key: /unused }}\n\
                 outbound:\n  - {{ name: backend, listen: \"127.0.0.1:0\", upstream: \"{}\", server_name: backend.default.svc.cluster.local, protocol: http }}\n",
                inbound.inbound_addr(0)
            ))
            .expect("outbound config");
            let outbound = enclaveid_proxy::start(outbound, source()).await.expect("outbound");
            let addr = outbound.outbound_addr(0);
            // Both handles live for the whole fuzzing process.
            std::mem::forget(inbound);
            std::mem::forget(outbound);
            addr
        });
        Rig { rt, outbound, heads }
    })
}

fuzz_target!(|data: &[u8]| {
    let rig = rig();
    rig.heads.lock().expect("lock").clear();
    rig.rt.block_on(async {
        let Ok(mut s) = tokio::net::TcpStream::connect(rig.outbound).await else {
            return;
        };
        let _ = s.write_all(data).await;
        let _ = s.shutdown().await;
        let mut sink = Vec::new();
        // The proxy answers or closes; a request that parses waits for the app's answer.
        let _ = tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut sink)).await;
    });
    for head in rig.heads.lock().expect("lock").iter() {
        let text = String::from_utf8_lossy(head).to_ascii_lowercase();
        let xfcc = text.lines().filter(|l| l.starts_with("x-forwarded-client-cert:")).count();
        assert_eq!(xfcc, 1, "the app saw {xfcc} XFCC headers in:\n{text}");
    }
});
