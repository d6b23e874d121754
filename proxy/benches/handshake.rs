//! Criterion: one full mutual-TLS 1.3 handshake, in memory, with the configurations the proxy
//! builds (`enclaveid_pki::tls::Material`: pinned-CA verifiers, no resumption) with their
//! verified-chain caches warm, cold and turned off, and the levers around it measured at the
//! rustls level with the same verifiers: the key-exchange group and the cost of verifying a chain
//! against the single pinned CA.
//!
//! `cargo bench -p enclaveid-proxy --bench handshake`; throughput reads as handshakes/s.
//!
//! The clock is the bench thread's own CPU time (`/proc/thread-self/schedstat`), not wall time:
//! on a shared 2-core machine the wall clock mostly measures the other tenants. The handshake
//! runs in memory on this one thread, so its CPU time is the whole cost of both ends. The kernel
//! updates that figure at scheduler ticks, so every sample is long (flat sampling, 10 samples).

use std::sync::Arc;

use criterion::{
    criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, SamplingMode, Throughput,
};
use enclaveid_pki::pem;
use enclaveid_pki::testing::{TestCa, TestCert};
use enclaveid_pki::tls::{ChainCacheCounters, TlsSettings, CHAIN_CACHE_CAPACITY};
use rustls::crypto::{aws_lc_rs, CryptoProvider, SupportedKxGroup};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, ClientConnection, Connection, RootCertStore, ServerConfig};
use rustls::{ServerConnection, SupportedCipherSuite};
use rustls_pki_types::{ServerName, UnixTime};

#[path = "support/cpu_clock.rs"]
mod cpu_clock;
use cpu_clock::ThreadCpu;

/// Moves every pending TLS byte from `from` to `to` and lets `to` process it.
fn pump(from: &mut Connection, to: &mut Connection, buf: &mut Vec<u8>) {
    buf.clear();
    while from.wants_write() {
        from.write_tls(buf).expect("writing to a Vec does not fail");
    }
    let mut rd = &buf[..];
    while !rd.is_empty() {
        to.read_tls(&mut rd)
            .expect("reading from a slice does not fail");
        to.process_new_packets()
            .expect("the handshake between mesh peers succeeds");
    }
}

/// One complete handshake, both sides, until each has sent and processed its Finished.
fn handshake(client: &Arc<ClientConfig>, server: &Arc<ServerConfig>, buf: &mut Vec<u8>) {
    let name = ServerName::try_from("localhost").expect("a valid DNS name");
    let mut c: Connection = ClientConnection::new(client.clone(), name)
        .expect("client config is valid")
        .into();
    let mut s: Connection = ServerConnection::new(server.clone())
        .expect("server config is valid")
        .into();
    while c.is_handshaking() || s.is_handshaking() || c.wants_write() || s.wants_write() {
        pump(&mut c, &mut s, buf);
        pump(&mut s, &mut c, buf);
    }
}

/// The proxy's own configurations, from fresh material whose verified-chain caches hold
/// `capacity` chains (0: no cache).
fn configs(
    ca: &TestCa,
    client: &TestCert,
    server: &TestCert,
    capacity: usize,
) -> (Arc<ClientConfig>, Arc<ServerConfig>) {
    let settings = TlsSettings::default();
    let counters = Arc::new(ChainCacheCounters::default());
    let server = ca
        .material(server)
        .with_chain_cache(capacity, counters.clone())
        .server_config(&settings, None, &[])
        .expect("server config");
    let client = ca
        .material(client)
        .with_chain_cache(capacity, counters)
        .client_config(&settings, &[])
        .expect("client config");
    (Arc::new(client), Arc::new(server))
}

/// The proxy's own configurations, with the provider's key-exchange groups replaced.
fn configs_with_groups(
    ca: &TestCa,
    client: &TestCert,
    server: &TestCert,
    groups: Vec<&'static dyn SupportedKxGroup>,
    suites: Option<Vec<SupportedCipherSuite>>,
) -> (Arc<ClientConfig>, Arc<ServerConfig>) {
    let mut provider = aws_lc_rs::default_provider();
    provider.kx_groups = groups;
    if let Some(suites) = suites {
        provider.cipher_suites = suites;
    }
    let provider = Arc::new(provider);
    let mut roots = RootCertStore::empty();
    roots.add(ca.cert_der()).expect("the CA is a valid anchor");
    let roots = Arc::new(roots);
    let load = |leaf: &TestCert| {
        let chain = pem::parse_certificates(leaf.cert_pem.as_bytes(), "cert").expect("cert");
        let key = pem::parse_private_key(leaf.key_pem.as_bytes(), "key").expect("key");
        (chain, key.der())
    };
    let (s_chain, s_key) = load(server);
    let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
        .build()
        .expect("verifier");
    let mut sc = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .with_client_cert_verifier(verifier)
        .with_single_cert(s_chain, s_key)
        .expect("server cert");
    sc.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    sc.send_tls13_tickets = 0;
    let (c_chain, c_key) = load(client);
    let mut cc = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .with_root_certificates(roots)
        .with_client_auth_cert(c_chain, c_key)
        .expect("client cert");
    cc.resumption = rustls::client::Resumption::disabled();
    (Arc::new(cc), Arc::new(sc))
}

fn bench_handshake(c: &mut Criterion<ThreadCpu>) {
    let ca = TestCa::new("bench-mesh-ca");
    let server_leaf = ca.workload("backend");
    let client_leaf = ca.workload("frontend");
    let (client, server) = configs(&ca, &client_leaf, &server_leaf, CHAIN_CACHE_CAPACITY);
    let mut buf = Vec::with_capacity(16 * 1024);

    let mut group = c.benchmark_group("mtls_handshake");
    group.throughput(Throughput::Elements(1));
    group.sampling_mode(SamplingMode::Flat).sample_size(10);
    // Warm: after the first handshake both ends answer the chain check from their cache.
    group.bench_function("proxy_configs", |b| {
        b.iter(|| handshake(&client, &server, &mut buf));
    });
    // No cache at all: the verifiers as they were before it.
    let (cc, sc) = configs(&ca, &client_leaf, &server_leaf, 0);
    group.bench_function("proxy_configs_no_cache", |b| {
        b.iter(|| handshake(&cc, &sc, &mut buf));
    });
    // A first handshake: fresh configs for every handshake, built and dropped outside the
    // measurement, with empty caches (both chains verified in full, then hashed, read for their
    // validity window and cached) and, to compare, with the cache turned off.
    for (name, capacity) in [("cache_cold", CHAIN_CACHE_CAPACITY), ("no_cache", 0)] {
        group.bench_function(BenchmarkId::new("fresh_configs", name), |b| {
            b.iter_batched(
                || configs(&ca, &client_leaf, &server_leaf, capacity),
                |(cc, sc)| {
                    handshake(&cc, &sc, &mut buf);
                    (cc, sc)
                },
                BatchSize::SmallInput,
            );
        });
    }
    let kx: [(&str, &'static dyn SupportedKxGroup); 3] = [
        ("x25519", aws_lc_rs::kx_group::X25519),
        ("secp256r1", aws_lc_rs::kx_group::SECP256R1),
        ("x25519mlkem768", aws_lc_rs::kx_group::X25519MLKEM768),
    ];
    for (name, g) in kx {
        let (cc, sc) = configs_with_groups(&ca, &client_leaf, &server_leaf, vec![g], None);
        group.bench_with_input(BenchmarkId::new("kx", name), &(cc, sc), |b, (cc, sc)| {
            b.iter(|| handshake(cc, sc, &mut buf));
        });
    }
    let suites: [(&str, SupportedCipherSuite); 2] = [
        (
            "aes128gcm",
            aws_lc_rs::cipher_suite::TLS13_AES_128_GCM_SHA256,
        ),
        (
            "aes256gcm",
            aws_lc_rs::cipher_suite::TLS13_AES_256_GCM_SHA384,
        ),
    ];
    for (name, suite) in suites {
        let (cc, sc) = configs_with_groups(
            &ca,
            &client_leaf,
            &server_leaf,
            vec![aws_lc_rs::kx_group::X25519],
            Some(vec![suite]),
        );
        group.bench_with_input(BenchmarkId::new("suite", name), &(cc, sc), |b, (cc, sc)| {
            b.iter(|| handshake(cc, sc, &mut buf));
        });
    }
    group.finish();

    // The chain check alone: one leaf against the single pinned CA, as the inbound does it.
    let provider: Arc<CryptoProvider> = Arc::new(aws_lc_rs::default_provider());
    let mut roots = RootCertStore::empty();
    roots.add(ca.cert_der()).expect("the CA is a valid anchor");
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
        .build()
        .expect("verifier");
    let leaf = client_leaf.der.clone();
    let mut group = c.benchmark_group("verify_chain");
    group.throughput(Throughput::Elements(1));
    group.sampling_mode(SamplingMode::Flat).sample_size(10);
    group.bench_function("client_leaf_against_pinned_ca", |b| {
        b.iter(|| {
            verifier
                .verify_client_cert(&leaf, &[], UnixTime::now())
                .expect("the leaf verifies")
        });
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().with_measurement(ThreadCpu);
    targets = bench_handshake
}
criterion_main!(benches);
