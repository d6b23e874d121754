//! Criterion: issuing one workload leaf from the derived CA (what `enclaveid-init proxy` and the
//! renewer do once per pod and per renewal), and deriving the CA key from a master secret.
//!
//! `cargo bench -p enclaveid-pki --bench issue`; throughput reads as leaves/s.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use enclaveid_pki::derive::{derive_ca_key, MasterSecret};
use enclaveid_pki::issue::{self_signed_ca, Ca, CaParams, LeafRequest};
use time::OffsetDateTime;

fn bench_issue(c: &mut Criterion) {
    let secret = || MasterSecret::new(vec![7u8; 32]).expect("a 32-byte secret is accepted");
    let now = OffsetDateTime::now_utc();
    let ca_pem = self_signed_ca(&derive_ca_key(&secret()), &CaParams::new(now))
        .expect("self-signing the derived CA");
    let ca = Ca::new(derive_ca_key(&secret()), &ca_pem, now).expect("the CA verifies");
    let request = LeafRequest::new(
        vec!["backend.default.svc.cluster.local".into()],
        vec!["spiffe://cluster.local/ns/default/sa/backend".into()],
        now,
    );

    let mut group = c.benchmark_group("pki");
    group.throughput(Throughput::Elements(1));
    group.bench_function("issue_leaf", |b| {
        b.iter(|| ca.issue_leaf(&request).expect("issuing a leaf"));
    });
    group.bench_function("derive_ca_key", |b| {
        b.iter(|| derive_ca_key(&secret()));
    });
    group.finish();
}

criterion_group!(benches, bench_issue);
criterion_main!(benches);
