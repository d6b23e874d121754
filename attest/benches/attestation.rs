//! Benchmarks of the attestation path: one piece of simulated evidence, and one whole
//! `verify`-style fetch (TCP connect, TLS handshake trusting no CA, `GET /attestation`, JSON)
//! against an in-process server on loopback. Run with `cargo bench -p enclaveid-attest`.
#![allow(missing_docs, clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use enclaveid_attest::client::{self, Target};
use enclaveid_attest::provider::simulated::SimulatedProvider;
use enclaveid_attest::provider::EvidenceProvider;
use enclaveid_attest::server::{Identities, ServeOptions, Server, TlsIdentity};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

fn bench(c: &mut Criterion) {
    let provider = Arc::new(SimulatedProvider::new().unwrap());

    let mut group = c.benchmark_group("provider");
    group.throughput(Throughput::Elements(1));
    group.bench_function("simulated_evidence", |b| {
        b.iter(|| provider.evidence([7; 64]).unwrap());
    });
    group.finish();

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let made = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let identity = TlsIdentity::new(
        vec![CertificateDer::from(made.cert.der().to_vec())],
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(made.signing_key.serialize_der())),
    )
    .unwrap();
    let options = ServeOptions {
        rate_per_second: 1e9,
        rate_burst: u32::MAX,
        ..ServeOptions::default()
    };
    let server = runtime
        .block_on(Server::start(
            "127.0.0.1:0".parse().unwrap(),
            "127.0.0.1:0".parse().unwrap(),
            Identities::from(identity),
            provider,
            options,
        ))
        .unwrap();
    let target = Target::parse(&format!("https://{}", server.local_addr)).unwrap();

    let mut group = c.benchmark_group("server");
    group.throughput(Throughput::Elements(1));
    group.sample_size(30);
    group.bench_function("fetch_over_fresh_tls", |b| {
        b.iter(|| {
            runtime
                .block_on(client::fetch(&target, Duration::from_secs(10)))
                .unwrap()
        });
    });
    group.finish();
    runtime.block_on(server.shutdown());
}

criterion_group!(benches, bench);
criterion_main!(benches);
