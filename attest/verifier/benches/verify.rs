//! How long verification takes: a raw report against its chain (three RSA-4096 PSS signatures
//! and one P-384 ECDSA signature), full simulated evidence, and the policy and report parsers.
//! `cargo bench -p enclaveid-attest-verifier`.
#![allow(missing_docs, clippy::unwrap_used)] // criterion's macros generate undocumented items

use std::time::SystemTime;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use enclaveid_attest_verifier::report::AttestationReport;
use enclaveid_attest_verifier::simulated::{ReportFields, SimulatedChain};
use enclaveid_attest_verifier::{binding, verify, verify_report, Expectations, Policy};

fn bench(c: &mut Criterion) {
    let chain = SimulatedChain::new().unwrap();
    let policy = Policy {
        allow_simulated: true,
        ..Policy::default()
    };
    let nonce = [7u8; 32];
    let spki = [9u8; 32];
    let report = chain.sign_report(
        &binding::report_data(&spki, &nonce),
        &ReportFields::default(),
    );
    let bundle = [chain.ask_pem(), chain.ark_pem()].concat();
    let evidence = chain.evidence(
        &binding::report_data(&spki, &nonce),
        &ReportFields::default(),
    );
    let expect = Expectations {
        nonce: nonce.to_vec(),
        tls_spki_sha256: spki,
    };
    let now = SystemTime::now();

    let mut g = c.benchmark_group("verify");
    g.throughput(Throughput::Elements(1));
    g.bench_function("verify_report", |b| {
        b.iter(|| {
            let out = verify_report(
                &report,
                chain.vcek_pem().as_bytes(),
                bundle.as_bytes(),
                &policy,
                now,
            );
            assert!(out.passed);
        });
    });
    g.bench_function("verify_evidence", |b| {
        b.iter(|| assert!(verify(&evidence, &expect, &policy, now).passed));
    });
    g.finish();

    let mut g = c.benchmark_group("parse");
    g.throughput(Throughput::Bytes(report.len() as u64));
    g.bench_function("report", |b| {
        b.iter(|| AttestationReport::parse(&report).unwrap());
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20);
    targets = bench
}
criterion_main!(benches);
