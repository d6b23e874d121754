//! The verified-chain cache seen from the verifiers: real handshakes over loopback for hits,
//! the allow list and the server name on a hit, and another CA; the verifiers called directly
//! with an injected `now` for the validity window, refusals and the bound.

use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::ServerCertVerifier;
use rustls::server::danger::ClientCertVerifier;
use rustls::ClientConfig;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use super::{ChainCacheCounters, Material, RejectReason, TlsSettings};
use crate::identity::{AllowPattern, PeerIdentity};
use crate::pem;
use crate::testing::{loopback_handshake, LeafSpec, TestCa, TestCert};

/// (hits, misses) of a material's caches.
fn counts(m: &Material) -> (u64, u64) {
    let c = m.chain_cache_counters();
    (c.hits(), c.misses())
}

fn allow(sa: &str) -> Vec<AllowPattern> {
    vec![
        AllowPattern::parse(&format!("spiffe://cluster.local/ns/default/sa/{sa}"))
            .expect("a valid pattern"),
    ]
}

/// A client config presenting `leaf` and trusting `trusted` (a rogue peer trusts our CA too,
/// so that it gets as far as presenting its own certificate).
fn dialer(trusted: &[&TestCa], leaf: &TestCert) -> Arc<ClientConfig> {
    let m = Material::new(
        trusted.iter().map(|ca| ca.cert_der()).collect(),
        &pem::parse_certificates(leaf.cert_pem.as_bytes(), "cert").unwrap(),
        &pem::parse_private_key(leaf.key_pem.as_bytes(), "key").unwrap(),
        UnixTime::now(),
    )
    .unwrap();
    Arc::new(m.client_config(&TlsSettings::default(), &[]).unwrap())
}

/// The leaf's validity window, Unix seconds, as encoded.
fn window(leaf: &TestCert) -> (i64, i64) {
    let (_, parsed) = x509_parser::parse_x509_certificate(&leaf.der).unwrap();
    let v = parsed.validity();
    (v.not_before.timestamp(), v.not_after.timestamp())
}

fn at(secs: i64) -> UnixTime {
    UnixTime::since_unix_epoch(Duration::from_secs(
        u64::try_from(secs).expect("test times are after 1970"),
    ))
}

fn reason(e: &std::io::Error) -> RejectReason {
    RejectReason::from_io(e)
}

#[test]
fn a_second_handshake_with_the_same_peer_hits_the_cache_and_still_runs_per_handshake_checks() {
    let ca = TestCa::new("mesh CA");
    let server = ca.material(&ca.workload("backend"));
    let client = ca.material(&ca.workload("frontend"));
    let settings = TlsSettings::default();
    let listener = Arc::new(
        server
            .server_config(&settings, Some(allow("frontend")), &[])
            .unwrap(),
    );
    let dialer = Arc::new(client.client_config(&settings, &[]).unwrap());

    let first = loopback_handshake(dialer.clone(), "localhost", listener.clone());
    assert!(first.client.is_ok() && first.server.is_ok(), "{first:?}");
    assert_eq!((counts(&server), counts(&client)), ((0, 1), (0, 1)));
    assert_eq!((server.chain_cache_len(), client.chain_cache_len()), (1, 1));

    let second = loopback_handshake(dialer.clone(), "localhost", listener.clone());
    assert!(second.client.is_ok() && second.server.is_ok(), "{second:?}");
    assert_eq!(
        (counts(&server), counts(&client)),
        ((1, 1), (1, 1)),
        "both ends answered the chain check from their cache"
    );

    // Another listener of the same material shares the cache, and its allow list still applies.
    let other = Arc::new(
        server
            .server_config(&settings, Some(allow("other")), &[])
            .unwrap(),
    );
    let refused = loopback_handshake(dialer.clone(), "localhost", other);
    let err = refused
        .server
        .expect_err("frontend is not in the allow list");
    assert_eq!(reason(&err), RejectReason::NotAllowed);
    assert_eq!(
        reason(&refused.client.unwrap_err()),
        RejectReason::PeerAlert
    );
    assert_eq!(counts(&server), (2, 1), "a hit, refused by the allow list");

    // The server name is checked on a hit too.
    let wrong = loopback_handshake(dialer, "backend.other.svc", listener);
    assert_eq!(
        reason(&wrong.client.unwrap_err()),
        RejectReason::WrongSan,
        "{:?}",
        wrong.server
    );
    assert_eq!(counts(&client), (3, 1), "a hit, refused by the server name");
}

#[test]
fn a_cached_chain_is_refused_outside_its_validity_window() {
    let ca = TestCa::new("mesh CA");
    let leaf = ca.workload("frontend");
    let (not_before, not_after) = window(&leaf);
    let server = ca.material(&ca.workload("backend"));
    let v = server.mesh_client_verifier(None).unwrap();
    let now = UnixTime::now();

    v.verify_client_cert(&leaf.der, &[], now).unwrap();
    v.verify_client_cert(&leaf.der, &[], now).unwrap();
    assert_eq!(counts(&server), (1, 1));
    // The last second of validity is still a hit; one second later the chain is expired.
    v.verify_client_cert(&leaf.der, &[], at(not_after)).unwrap();
    assert_eq!(counts(&server), (2, 1));
    let err = v
        .verify_client_cert(&leaf.der, &[], at(not_after + 1))
        .unwrap_err();
    assert_eq!(RejectReason::from_rustls(&err), RejectReason::Expired);
    assert_eq!(
        counts(&server),
        (2, 2),
        "verified in full, not answered from the cache"
    );
    assert_eq!(server.chain_cache_len(), 0, "the stale entry is dropped");
    let err = v
        .verify_client_cert(&leaf.der, &[], at(not_after + 1))
        .unwrap_err();
    assert_eq!(RejectReason::from_rustls(&err), RejectReason::Expired);

    // Cached again at a valid time, then presented before its notBefore.
    v.verify_client_cert(&leaf.der, &[], now).unwrap();
    let err = v
        .verify_client_cert(&leaf.der, &[], at(not_before - 1))
        .unwrap_err();
    assert_eq!(RejectReason::from_rustls(&err), RejectReason::NotYetValid);
    assert_eq!(counts(&server), (2, 5));

    // The same on the client side, for the server's chain.
    let client = ca.material(&ca.workload("frontend"));
    let v = client.mesh_server_verifier().unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let verify = |t| v.verify_server_cert(&leaf.der, &[], &name, &[], t);
    verify(now).unwrap();
    verify(now).unwrap();
    let err = verify(at(not_after + 1)).unwrap_err();
    assert_eq!(RejectReason::from_rustls(&err), RejectReason::Expired);
    assert_eq!(counts(&client), (1, 2));
}

#[test]
fn a_chain_from_another_ca_with_the_same_subject_is_refused() {
    let ca = TestCa::new("mesh CA");
    let rogue_ca = TestCa::new("mesh CA");
    let good = ca.workload("frontend");
    let rogue = rogue_ca.workload("frontend");
    assert_eq!(
        PeerIdentity::from_der(&good.der).unwrap(),
        PeerIdentity::from_der(&rogue.der).unwrap()
    );
    let server = ca.material(&ca.workload("backend"));
    let listener = Arc::new(
        server
            .server_config(&TlsSettings::default(), Some(allow("frontend")), &[])
            .unwrap(),
    );
    let good_dialer = dialer(&[&ca], &good);

    for _ in 0..2 {
        let out = loopback_handshake(good_dialer.clone(), "localhost", listener.clone());
        assert!(out.server.is_ok() && out.client.is_ok(), "{out:?}");
    }
    assert_eq!(counts(&server), (1, 1));
    let refused = loopback_handshake(
        dialer(&[&ca, &rogue_ca], &rogue),
        "localhost",
        listener.clone(),
    );
    let err = refused.server.expect_err("the rogue CA is not pinned");
    assert_eq!(reason(&err), RejectReason::UnknownCa);
    assert_eq!(counts(&server), (1, 2), "a miss, verified in full");
    let out = loopback_handshake(good_dialer, "localhost", listener);
    assert!(out.server.is_ok(), "the good peer still hits: {out:?}");
    assert_eq!(counts(&server), (2, 2));
}

#[test]
fn refused_chains_are_never_cached() {
    let ca = TestCa::new("mesh CA");
    let server = ca.material(&ca.workload("backend"));
    let v = server.mesh_client_verifier(None).unwrap();
    let now = UnixTime::now();
    let rogue = TestCa::new("mesh CA").workload("frontend");
    let expired = ca.issue(&LeafSpec::workload("frontend").expired());
    let via = ca
        .intermediate("intermediate")
        .workload_with_chain("frontend");
    let via: Vec<CertificateDer<'static>> =
        pem::parse_certificates(via.cert_pem.as_bytes(), "cert").unwrap();
    let cases: [(&str, &[CertificateDer<'static>], RejectReason); 3] = [
        (
            "rogue",
            std::slice::from_ref(&rogue.der),
            RejectReason::UnknownCa,
        ),
        (
            "expired",
            std::slice::from_ref(&expired.der),
            RejectReason::Expired,
        ),
        ("pathlen", &via, RejectReason::BadCertificate),
    ];
    for (what, chain, want) in cases {
        for _ in 0..2 {
            let err = v
                .verify_client_cert(&chain[0], &chain[1..], now)
                .expect_err(what);
            assert_eq!(RejectReason::from_rustls(&err), want, "{what}");
        }
    }
    assert_eq!(counts(&server), (0, 6), "every refusal is a miss");
    assert_eq!(server.chain_cache_len(), 0);

    // Over real handshakes: a rogue client presented twice is refused twice.
    let listener = Arc::new(
        server
            .server_config(&TlsSettings::default(), None, &[])
            .unwrap(),
    );
    let rogue_ca = TestCa::new("mesh CA");
    let rogue_dialer = dialer(&[&ca, &rogue_ca], &rogue_ca.workload("frontend"));
    for _ in 0..2 {
        let out = loopback_handshake(rogue_dialer.clone(), "localhost", listener.clone());
        assert_eq!(reason(&out.server.unwrap_err()), RejectReason::UnknownCa);
    }
    assert_eq!(counts(&server), (0, 8));
    assert_eq!(server.chain_cache_len(), 0);
}

#[test]
fn the_cache_never_exceeds_its_bound_and_evicts_the_oldest() {
    let ca = TestCa::new("mesh CA");
    let counters = Arc::new(ChainCacheCounters::default());
    let server = ca
        .material(&ca.workload("backend"))
        .with_chain_cache(4, counters.clone());
    let v = server.mesh_client_verifier(None).unwrap();
    let now = UnixTime::now();
    let leaves: Vec<_> = (0..10).map(|i| ca.workload(&format!("sa{i}"))).collect();
    for leaf in &leaves {
        v.verify_client_cert(&leaf.der, &[], now).unwrap();
        assert!(server.chain_cache_len() <= 4);
    }
    assert_eq!(server.chain_cache_len(), 4);
    assert_eq!((counters.hits(), counters.misses()), (0, 10));
    for leaf in &leaves[6..] {
        v.verify_client_cert(&leaf.der, &[], now).unwrap();
    }
    assert_eq!(counters.hits(), 4, "the 4 newest are held");
    v.verify_client_cert(&leaves[0].der, &[], now).unwrap();
    assert_eq!(
        (counters.hits(), counters.misses()),
        (4, 11),
        "the oldest went"
    );
    assert_eq!(server.chain_cache_len(), 4);

    // Capacity 0 turns the cache off: nothing is held or counted.
    let off = ca
        .material(&ca.workload("backend"))
        .with_chain_cache(0, Arc::new(ChainCacheCounters::default()));
    let v = off.mesh_client_verifier(None).unwrap();
    v.verify_client_cert(&leaves[0].der, &[], now).unwrap();
    v.verify_client_cert(&leaves[0].der, &[], now).unwrap();
    assert_eq!((counts(&off), off.chain_cache_len()), ((0, 0), 0));
}

#[test]
fn new_material_starts_with_empty_caches() {
    // What a reload does: the proxy builds new material and new configs from the files.
    let ca_a = TestCa::new("mesh CA");
    let ca_b = TestCa::new("mesh CA");
    let peer = ca_a.workload("frontend");
    let before = ca_a.material(&ca_a.workload("backend"));
    let after = ca_b.material(&ca_b.workload("backend"));
    let now = UnixTime::now();
    before
        .mesh_client_verifier(None)
        .unwrap()
        .verify_client_cert(&peer.der, &[], now)
        .unwrap();
    assert_eq!(before.chain_cache_len(), 1);
    assert_eq!(after.chain_cache_len(), 0);
    let err = after
        .mesh_client_verifier(None)
        .unwrap()
        .verify_client_cert(&peer.der, &[], now)
        .unwrap_err();
    assert_eq!(RejectReason::from_rustls(&err), RejectReason::UnknownCa);
}
