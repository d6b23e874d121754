//! Criterion: the data path's two costs, each over real loopback TCP on a tokio runtime.
//!
//! - `tls_stream`: bulk bytes through one mutual-TLS 1.3 connection built from the proxy's own
//!   configurations (`enclaveid_pki::tls::Material`), by application write size: small writes
//!   become small TLS records, so this is the record-coalescing lever.
//! - `tls_unbuffered`: the same through the proxy's `tcp` data path stream (rustls' unbuffered
//!   API, `src/listener/tls_io.rs`, included by path) at both ends.
//! - `tcp_copy`: a relay in the middle of two loopback TCP connections copying with a given
//!   buffer size per direction: the buffer-size lever of the `tcp` copy loop.
//!
//! `cargo bench -p enclaveid-proxy --bench copy`; throughput reads as bytes/s of the bench
//! thread's CPU time: everything (client, relay or TLS server, sink) runs on one current-thread
//! runtime, so the figure is the CPU cost per byte, kernel time included, not a wall-clock rate.

use std::sync::Arc;
use std::time::Duration;

use criterion::measurement::Measurement;
use criterion::{
    criterion_group, criterion_main, BenchmarkId, Criterion, SamplingMode, Throughput,
};
use enclaveid_pki::testing::TestCa;
use enclaveid_pki::tls::TlsSettings;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;
use tokio_rustls::{TlsAcceptor, TlsConnector};

#[path = "support/cpu_clock.rs"]
mod cpu_clock;

#[path = "../src/listener/tls_io.rs"]
#[allow(
    dead_code,
    reason = "the proxy's own module; the bench uses its streams only"
)]
mod tls_io;
use cpu_clock::ThreadCpu;

/// Bytes moved per measured iteration.
const BATCH: usize = 8 << 20;

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// Reads `BATCH` bytes, then answers one byte, forever (until the peer closes).
async fn sink<S: AsyncRead + AsyncWrite + Unpin>(mut s: S) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let mut left = BATCH;
        while left > 0 {
            match s.read(&mut buf[..left.min(64 * 1024)]).await {
                Ok(0) | Err(_) => return,
                Ok(n) => left -= n,
            }
        }
        if s.write_all(b"k").await.is_err() || s.flush().await.is_err() {
            return;
        }
    }
}

/// Sends `BATCH` bytes in `chunk`-sized writes and waits for the sink's byte; returns the CPU
/// time the thread spent.
async fn send_batch<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S, chunk: usize) -> Duration {
    let data = vec![0x5au8; chunk];
    let start = ThreadCpu.start();
    let mut left = BATCH;
    while left > 0 {
        let n = left.min(chunk);
        s.write_all(&data[..n]).await.expect("write");
        left -= n;
    }
    s.flush().await.expect("flush");
    let mut ack = [0u8; 1];
    s.read_exact(&mut ack).await.expect("ack");
    ThreadCpu.end(start)
}

fn bench_tls(c: &mut Criterion<ThreadCpu>) {
    let rt = runtime();
    let ca = TestCa::new("bench-mesh-ca");
    let settings = TlsSettings::default();
    let acceptor = TlsAcceptor::from(Arc::new(
        ca.material(&ca.workload("backend"))
            .server_config(&settings, None, &[])
            .expect("server config"),
    ));
    let connector = TlsConnector::from(Arc::new(
        ca.material(&ca.workload("frontend"))
            .client_config(&settings, &[])
            .expect("client config"),
    ));
    let mut client = rt.block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    if let Ok(tls) = acceptor.accept(tcp).await {
                        sink(tls).await;
                    }
                });
            }
        });
        let tcp = TcpStream::connect(addr).await.expect("connect");
        tcp.set_nodelay(true).expect("nodelay");
        let name = ServerName::try_from("localhost").expect("name");
        connector.connect(name, tcp).await.expect("handshake")
    });
    let mut group = c.benchmark_group("tls_stream");
    group.throughput(Throughput::Bytes(BATCH as u64));
    group.sampling_mode(SamplingMode::Flat).sample_size(10);
    for chunk in [1024usize, 4096, 16 * 1024, 64 * 1024] {
        group.bench_with_input(
            BenchmarkId::new("write_size", chunk),
            &chunk,
            |b, &chunk| {
                b.iter_custom(|iters| {
                    rt.block_on(async {
                        let mut total = Duration::ZERO;
                        for _ in 0..iters {
                            total += send_batch(&mut client, chunk).await;
                        }
                        total
                    })
                });
            },
        );
    }
    group.finish();
}

/// The same as `bench_tls` on the proxy's `tcp` data path stream (rustls' unbuffered API,
/// `src/listener/tls_io.rs`) at both ends.
fn bench_tls_unbuffered(c: &mut Criterion<ThreadCpu>) {
    let rt = runtime();
    let ca = TestCa::new("bench-mesh-ca");
    let settings = TlsSettings::default();
    let server = Arc::new(
        ca.material(&ca.workload("backend"))
            .server_config(&settings, None, &[])
            .expect("server config"),
    );
    let client = Arc::new(
        ca.material(&ca.workload("frontend"))
            .client_config(&settings, &[])
            .expect("client config"),
    );
    let mut client = rt.block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                tcp.set_nodelay(true).expect("nodelay");
                let server = server.clone();
                tokio::spawn(async move {
                    if let Ok(tls) = tls_io::accept(server, tcp).await {
                        sink(tls).await;
                    }
                });
            }
        });
        let tcp = TcpStream::connect(addr).await.expect("connect");
        tcp.set_nodelay(true).expect("nodelay");
        let name = ServerName::try_from("localhost").expect("name");
        tls_io::connect(client, name, tcp).await.expect("handshake")
    });
    let mut group = c.benchmark_group("tls_unbuffered");
    group.throughput(Throughput::Bytes(BATCH as u64));
    group.sampling_mode(SamplingMode::Flat).sample_size(10);
    for chunk in [1024usize, 4096, 16 * 1024, 64 * 1024] {
        group.bench_with_input(
            BenchmarkId::new("write_size", chunk),
            &chunk,
            |b, &chunk| {
                b.iter_custom(|iters| {
                    rt.block_on(async {
                        let mut total = Duration::ZERO;
                        for _ in 0..iters {
                            total += send_batch(&mut client, chunk).await;
                        }
                        total
                    })
                });
            },
        );
    }
    group.finish();
}

fn bench_tcp_copy(c: &mut Criterion<ThreadCpu>) {
    let rt = runtime();
    let mut group = c.benchmark_group("tcp_copy");
    group.throughput(Throughput::Bytes(BATCH as u64));
    group.sampling_mode(SamplingMode::Flat).sample_size(10);
    for buf in [4096usize, 16 * 1024, 64 * 1024] {
        let mut client = rt.block_on(async move {
            let sink_l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let sink_addr = sink_l.local_addr().expect("addr");
            tokio::spawn(async move {
                while let Ok((s, _)) = sink_l.accept().await {
                    tokio::spawn(sink(s));
                }
            });
            let relay = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let relay_addr = relay.local_addr().expect("addr");
            tokio::spawn(async move {
                while let Ok((mut a, _)) = relay.accept().await {
                    tokio::spawn(async move {
                        let mut b = TcpStream::connect(sink_addr).await.expect("connect");
                        let _ = tokio::io::copy_bidirectional_with_sizes(&mut a, &mut b, buf, buf)
                            .await;
                    });
                }
            });
            TcpStream::connect(relay_addr).await.expect("connect")
        });
        group.bench_with_input(BenchmarkId::new("relay_buffer", buf), &buf, |b, _| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        total += send_batch(&mut client, 64 * 1024).await;
                    }
                    total
                })
            });
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().with_measurement(ThreadCpu);
    targets = bench_tls, bench_tls_unbuffered, bench_tcp_copy
}
criterion_main!(benches);
