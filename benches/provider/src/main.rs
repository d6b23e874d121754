//! The rustls crypto provider lever of issue 6: CPU per full mutual-TLS 1.3 handshake (both ends
//! on one thread, in memory) with aws-lc-rs (what the proxy uses) against ring, on the same
//! settings for both: X25519, TLS13_AES_128_GCM_SHA256, ECDSA P-256 leaves from one CA, client
//! certificate required, no resumption, no tickets.
//!
//! `cargo run --release --manifest-path benches/provider/Cargo.toml [-- ROUNDS]`
//!
//! The clock is the thread's own CPU time (`/proc/thread-self/schedstat`), so other tenants of
//! a shared machine do not count; rounds alternate the providers and the medians are printed.

use std::sync::Arc;
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, PKCS_ECDSA_P256_SHA256};
use rustls::crypto::{aws_lc_rs, ring, CryptoProvider};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{
    ClientConfig, ClientConnection, Connection, RootCertStore, ServerConfig, ServerConnection,
};

const HANDSHAKES_PER_ROUND: u32 = 400;

fn thread_cpu() -> Duration {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat").expect("Linux schedstat");
    let ns: u64 = text
        .split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .expect("ns on CPU");
    Duration::from_nanos(ns)
}

struct Leaf {
    chain: Vec<CertificateDer<'static>>,
    key: Vec<u8>,
}

fn pki() -> (CertificateDer<'static>, Leaf, Leaf) {
    let ca_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("CA key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    let ca = ca_params.self_signed(&ca_key).expect("CA cert");
    let issuer = rcgen::Issuer::new(ca_params, &ca_key);
    let leaf = |name: &str| {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("leaf key");
        let params = CertificateParams::new(vec![name.to_string()]).expect("leaf params");
        let cert = params.signed_by(&key, &issuer).expect("leaf cert");
        Leaf {
            chain: vec![cert.der().clone()],
            key: key.serialize_der(),
        }
    };
    (ca.der().clone(), leaf("localhost"), leaf("client.local"))
}

fn configs(
    provider: CryptoProvider,
    ca: &CertificateDer<'static>,
    server: &Leaf,
    client: &Leaf,
) -> (Arc<ClientConfig>, Arc<ServerConfig>) {
    let mut provider = provider;
    provider
        .kx_groups
        .retain(|g| g.name() == rustls::NamedGroup::X25519);
    provider
        .cipher_suites
        .retain(|s| s.suite() == rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
    let provider = Arc::new(provider);
    let mut roots = RootCertStore::empty();
    roots.add(ca.clone()).expect("CA anchor");
    let roots = Arc::new(roots);
    let key = |l: &Leaf| PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(l.key.clone()));
    let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
        .build()
        .expect("client verifier");
    let mut sc = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .with_client_cert_verifier(verifier)
        .with_single_cert(server.chain.clone(), key(server))
        .expect("server cert");
    sc.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    sc.send_tls13_tickets = 0;
    let mut cc = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .with_root_certificates(roots)
        .with_client_auth_cert(client.chain.clone(), key(client))
        .expect("client cert");
    cc.resumption = rustls::client::Resumption::disabled();
    (Arc::new(cc), Arc::new(sc))
}

fn pump(from: &mut Connection, to: &mut Connection, buf: &mut Vec<u8>) {
    buf.clear();
    while from.wants_write() {
        from.write_tls(buf).expect("write to Vec");
    }
    let mut rd = &buf[..];
    while !rd.is_empty() {
        to.read_tls(&mut rd).expect("read from slice");
        to.process_new_packets().expect("mesh handshake succeeds");
    }
}

fn handshake(cc: &Arc<ClientConfig>, sc: &Arc<ServerConfig>, buf: &mut Vec<u8>) {
    let name = ServerName::try_from("localhost").expect("name");
    let mut c: Connection = ClientConnection::new(cc.clone(), name)
        .expect("client")
        .into();
    let mut s: Connection = ServerConnection::new(sc.clone()).expect("server").into();
    while c.is_handshaking() || s.is_handshaking() || c.wants_write() || s.wants_write() {
        pump(&mut c, &mut s, buf);
        pump(&mut s, &mut c, buf);
    }
    assert_eq!(
        c.negotiated_cipher_suite().map(|s| s.suite()),
        Some(rustls::CipherSuite::TLS13_AES_128_GCM_SHA256)
    );
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let rounds: usize = std::env::args()
        .nth(1)
        .map_or(9, |r| r.parse().expect("ROUNDS is a number"));
    let (ca, server, client) = pki();
    let providers = [
        ("aws-lc-rs", aws_lc_rs::default_provider()),
        ("ring", ring::default_provider()),
    ];
    let cfgs: Vec<_> = providers
        .into_iter()
        .map(|(n, p)| (n, configs(p, &ca, &server, &client)))
        .collect();
    let mut buf = Vec::with_capacity(16 * 1024);
    let mut per: Vec<Vec<f64>> = vec![Vec::new(); cfgs.len()];
    for (_, (cc, sc)) in &cfgs {
        for _ in 0..20 {
            handshake(cc, sc, &mut buf); // warm-up
        }
    }
    for _ in 0..rounds {
        for (i, (_, (cc, sc))) in cfgs.iter().enumerate() {
            let t0 = thread_cpu();
            for _ in 0..HANDSHAKES_PER_ROUND {
                handshake(cc, sc, &mut buf);
            }
            let us = (thread_cpu() - t0).as_secs_f64() * 1e6 / f64::from(HANDSHAKES_PER_ROUND);
            per[i].push(us);
        }
    }
    println!("| provider | CPU µs per full mTLS handshake, both ends (median of {rounds} rounds × {HANDSHAKES_PER_ROUND}) | handshakes/s per core | every round |");
    println!("|---|---:|---:|---|");
    for (i, (name, _)) in cfgs.iter().enumerate() {
        let all = per[i]
            .iter()
            .map(|v| format!("{v:.0}"))
            .collect::<Vec<_>>()
            .join(" / ");
        let m = median(&mut per[i]);
        println!("| {name} | {m:.0} | {:.0} | {all} |", 1e6 / m);
    }
}
