//! One case per verifier rule, with a software chain made once for this test binary: the
//! simulated gate, TCB, VMPL, debug, measurement, `host_data`, chip ID, expiry, product, nonce and
//! TLS-key binding, and the vTPM path (HCL binding, AK, quote signature, PCRs, extraData).

#![allow(clippy::unwrap_used)] // helpers of a test binary

use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use enclaveid_attest_verifier::binding;
use enclaveid_attest_verifier::hcl;
use enclaveid_attest_verifier::simulated::{ReportFields, SimulatedChain};
use enclaveid_attest_verifier::vtpm::{ALG_SHA256, ST_ATTEST_QUOTE, TPM_GENERATED};
use enclaveid_attest_verifier::{
    verify, verify_report, Evidence, Expectations, Policy, Product, Provider, TcbVersion,
    VerificationReport,
};
use proptest::prelude::*;
use rsa::signature::{SignatureEncoding as _, Signer as _};
use rsa_core as rsa;
use sha2::{Digest, Sha256};

fn chain() -> &'static SimulatedChain {
    static CHAIN: OnceLock<SimulatedChain> = OnceLock::new();
    CHAIN.get_or_init(|| SimulatedChain::new().expect("simulated chain"))
}

const NONCE: &[u8] = b"0123456789abcdef0123456789abcdef";
const SPKI: [u8; 32] = [0x42; 32];

fn expect() -> Expectations {
    Expectations {
        nonce: NONCE.to_vec(),
        tls_spki_sha256: SPKI,
    }
}

fn allow() -> Policy {
    Policy {
        allow_simulated: true,
        ..Policy::default()
    }
}

fn now() -> SystemTime {
    SystemTime::now()
}

fn evidence(fields: &ReportFields) -> Evidence {
    chain().evidence(&binding::report_data(&SPKI, NONCE), fields)
}

fn run(fields: &ReportFields, policy: &Policy) -> VerificationReport {
    verify(&evidence(fields), &expect(), policy, now())
}

fn assert_pass(r: &VerificationReport) {
    assert!(r.passed, "expected PASS:\n{r}");
}

fn assert_fails(r: &VerificationReport, check: &str) {
    assert!(!r.passed, "expected FAIL:\n{r}");
    let c = r
        .check(check)
        .unwrap_or_else(|| panic!("check {check} did not run:\n{r}"));
    assert!(!c.passed, "check {check} passed:\n{r}");
}

#[test]
fn simulated_evidence_passes_only_when_allowed() {
    let ok = run(&ReportFields::default(), &allow());
    assert_pass(&ok);
    assert!(ok.simulated);
    assert_eq!(ok.product, Some(Product::Milan));
    let refused = run(&ReportFields::default(), &Policy::default());
    assert_fails(&refused, "provider.allowed");
    assert_fails(&refused, "ark.pinned");
    // Relabelling the provider does not help: the ARK is not pinned.
    let mut relabelled = evidence(&ReportFields::default());
    relabelled.provider = Provider::SevGuest;
    let r = verify(&relabelled, &expect(), &Policy::default(), now());
    assert_fails(&r, "ark.pinned");
    assert!(r.check("provider.allowed").unwrap().passed);
    // Evidence survives a JSON round trip.
    let json = evidence(&ReportFields::default()).to_json();
    let back = Evidence::from_json(json.as_bytes()).unwrap();
    assert_pass(&verify(&back, &expect(), &allow(), now()));
}

#[test]
fn tcb_rules() {
    let lower = TcbVersion {
        snp: 7,
        ..chain().options().tcb
    };
    let r = run(
        &ReportFields {
            reported_tcb: Some(lower),
            ..ReportFields::default()
        },
        &allow(),
    );
    assert_fails(&r, "vcek.tcb");
    let strict = Policy {
        min_tcb: TcbVersion {
            snp: 9,
            ..TcbVersion::default()
        },
        ..allow()
    };
    assert_fails(&run(&ReportFields::default(), &strict), "policy.min_tcb");
    let met = Policy {
        min_tcb: chain().options().tcb,
        ..allow()
    };
    assert_pass(&run(&ReportFields::default(), &met));
}

#[test]
fn vmpl_rule() {
    let fields = ReportFields {
        vmpl: 2,
        ..ReportFields::default()
    };
    assert_fails(&run(&fields, &allow()), "policy.vmpl");
    assert_pass(&run(
        &fields,
        &Policy {
            max_vmpl: 2,
            ..allow()
        },
    ));
    let listed = Policy {
        max_vmpl: 3,
        allowed_vmpls: Some(vec![0, 1]),
        ..allow()
    };
    assert_fails(&run(&fields, &listed), "policy.vmpl");
}

#[test]
fn debug_rule() {
    let fields = ReportFields {
        policy: 0x30000 | (1 << 19),
        ..ReportFields::default()
    };
    assert_fails(&run(&fields, &allow()), "policy.debug");
    assert_pass(&run(
        &fields,
        &Policy {
            allow_debug: true,
            ..allow()
        },
    ));
}

#[test]
fn measurement_rule() {
    let fields = ReportFields {
        measurement: [7; 48],
        ..ReportFields::default()
    };
    assert_fails(
        &run(
            &fields,
            &Policy {
                measurements: vec![[8; 48]],
                ..allow()
            },
        ),
        "policy.measurement",
    );
    assert_pass(&run(
        &fields,
        &Policy {
            measurements: vec![[8; 48], [7; 48]],
            ..allow()
        },
    ));
}

#[test]
fn host_data_rule() {
    let fields = ReportFields {
        host_data: [9; 32],
        ..ReportFields::default()
    };
    assert_fails(
        &run(
            &fields,
            &Policy {
                host_data: vec![[1; 32]],
                ..allow()
            },
        ),
        "policy.host_data",
    );
    assert_pass(&run(
        &fields,
        &Policy {
            host_data: vec![[9; 32]],
            ..allow()
        },
    ));
}

#[test]
fn chip_id_rule() {
    let fields = ReportFields::default();
    assert_fails(
        &run(
            &fields,
            &Policy {
                chip_ids: vec![vec![0; 64]],
                ..allow()
            },
        ),
        "policy.chip_id",
    );
    assert_pass(&run(
        &fields,
        &Policy {
            chip_ids: vec![chain().chip_id().to_vec()],
            ..allow()
        },
    ));
}

#[test]
fn expiry_rule() {
    let ev = evidence(&ReportFields::default());
    let after = SystemTime::UNIX_EPOCH + chain().options().not_after + Duration::from_secs(1);
    assert_fails(&verify(&ev, &expect(), &allow(), after), "vcek.validity");
    let before = SystemTime::UNIX_EPOCH + chain().options().not_before - Duration::from_secs(1);
    assert_fails(&verify(&ev, &expect(), &allow(), before), "vcek.validity");
}

#[test]
fn product_rule() {
    let genoa_only = Policy {
        products: vec![Product::Genoa, Product::Turin],
        ..allow()
    };
    assert_fails(
        &run(&ReportFields::default(), &genoa_only),
        "policy.product",
    );
    // A report whose CPUID says Genoa, under a Milan chain.
    let fields = ReportFields {
        cpuid: Some((0x19, 0x11)),
        ..ReportFields::default()
    };
    assert_fails(&run(&fields, &allow()), "report.cpuid_product");
    let old = Policy {
        min_report_version: 3,
        ..allow()
    };
    let v2 = ReportFields {
        version: 2,
        ..ReportFields::default()
    };
    assert_fails(&run(&v2, &old), "report.version");
}

#[test]
fn nonce_binding() {
    let other = Expectations {
        nonce: b"another nonce, 16+ bytes".to_vec(),
        ..expect()
    };
    let r = verify(&evidence(&ReportFields::default()), &other, &allow(), now());
    assert_fails(&r, "binding.nonce");
    assert!(r.check("binding.tls_key").unwrap().passed);
}

#[test]
fn tls_key_binding() {
    let relay = Expectations {
        tls_spki_sha256: [0x43; 32],
        ..expect()
    };
    let r = verify(&evidence(&ReportFields::default()), &relay, &allow(), now());
    assert_fails(&r, "binding.tls_key");
    assert!(r.check("binding.nonce").unwrap().passed);
}

#[test]
fn raw_report_path() {
    let report = chain().sign_report(&[0; 64], &ReportFields::default());
    let bundle = [chain().ask_pem(), chain().ark_pem()].concat();
    let vcek = chain().vcek_pem().as_bytes();
    assert_pass(&verify_report(
        &report,
        vcek,
        bundle.as_bytes(),
        &allow(),
        now(),
    ));
    assert_fails(
        &verify_report(&report, vcek, bundle.as_bytes(), &Policy::default(), now()),
        "ark.pinned",
    );
}

/// A marshalled `TPMS_ATTEST` quote over PCRs 0..24 of the SHA-256 bank.
fn quote_message(extra: &[u8], pcrs: &[[u8; 32]]) -> Vec<u8> {
    let mut m = TPM_GENERATED.to_be_bytes().to_vec();
    m.extend_from_slice(&ST_ATTEST_QUOTE.to_be_bytes());
    m.extend_from_slice(&[0, 4, 0, 0x0B, 1, 2]);
    m.extend_from_slice(&u16::try_from(extra.len()).unwrap().to_be_bytes());
    m.extend_from_slice(extra);
    m.extend_from_slice(&[0; 17 + 8]);
    m.extend_from_slice(&1u32.to_be_bytes());
    m.extend_from_slice(&ALG_SHA256.to_be_bytes());
    m.extend_from_slice(&[3, 0xFF, 0xFF, 0xFF]);
    let digest = Sha256::digest(pcrs.concat());
    m.extend_from_slice(&32u16.to_be_bytes());
    m.extend_from_slice(&digest);
    m
}

fn ak() -> &'static rsa::RsaPrivateKey {
    static AK: OnceLock<rsa::RsaPrivateKey> = OnceLock::new();
    AK.get_or_init(|| rsa::RsaPrivateKey::new(&mut rand_core::OsRng, 2048).unwrap())
}

fn vtpm_evidence(extra: &[u8], ak_pem_key: &rsa::RsaPrivateKey) -> Evidence {
    use rsa::pkcs8::EncodePublicKey as _;
    let public = rsa::RsaPublicKey::from(ak());
    let claims = hcl::claims_json(&public);
    let hcl_report = chain().hcl_report(claims.as_bytes(), &ReportFields::default());
    // It must fit swtpm's NV index limit, where the vTPM provider tests provision it.
    assert!(
        hcl_report.len() <= 2048,
        "HCL report is {} bytes",
        hcl_report.len()
    );
    let pcrs: Vec<[u8; 32]> = (0..24u8).map(|i| [i; 32]).collect();
    let message = quote_message(extra, &pcrs);
    let signer = rsa::pkcs1v15::SigningKey::<Sha256>::new(ak().clone());
    let signature = signer.sign(&message).to_vec();
    let ak_pem = rsa::RsaPublicKey::from(ak_pem_key)
        .to_public_key_pem(rsa::pkcs8::LineEnding::LF)
        .unwrap();
    let snp = hcl::HclReport::parse(&hcl_report).unwrap().snp_report;
    Evidence::new_report(
        Provider::Vtpm,
        &snp,
        chain().vcek_pem(),
        chain().ask_pem(),
        chain().ark_pem(),
    )
    .with_vtpm(&hcl_report, &message, &signature, &pcrs, &ak_pem)
}

#[test]
fn vtpm_path_with_simulated_chain() {
    let extra = binding::vtpm_extra_data(&SPKI, NONCE);
    let ev = vtpm_evidence(&extra, ak());
    let r = verify(&ev, &expect(), &allow(), now());
    assert_pass(&r);
    assert!(r.check("quote.signature").unwrap().passed);
    assert_fails(
        &verify(&ev, &expect(), &Policy::default(), now()),
        "ark.pinned",
    );
    // A quote over another nonce, or for another TLS key.
    let r = verify(&vtpm_evidence(b"stale", ak()), &expect(), &allow(), now());
    assert_fails(&r, "binding.quote_extra_data");
    let relay = Expectations {
        tls_spki_sha256: [1; 32],
        ..expect()
    };
    assert_fails(
        &verify(&ev, &relay, &allow(), now()),
        "binding.quote_extra_data",
    );
    // Evidence naming another AK than the HCL claims.
    let other = rsa::RsaPrivateKey::new(&mut rand_core::OsRng, 1024).unwrap();
    assert_fails(
        &verify(&vtpm_evidence(&extra, &other), &expect(), &allow(), now()),
        "vtpm.ak_matches_hcl",
    );
    // A report that is not the one inside the HCL report.
    let mut swapped = ev.clone();
    swapped.report = evidence(&ReportFields::default()).report;
    assert_fails(
        &verify(&swapped, &expect(), &allow(), now()),
        "hcl.report_matches",
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// A report with any byte of its signed region changed never verifies.
    #[test]
    fn flipped_signed_byte_never_verifies(at in 0usize..0x2A0, mask in 1u8..=255) {
        let mut report = chain().sign_report(&[3; 64], &ReportFields::default());
        let bundle = [chain().ask_pem(), chain().ark_pem()].concat();
        prop_assert!(verify_report(&report, chain().vcek_pem().as_bytes(), bundle.as_bytes(), &allow(), now()).passed);
        report[at] ^= mask;
        let r = verify_report(&report, chain().vcek_pem().as_bytes(), bundle.as_bytes(), &allow(), now());
        prop_assert!(!r.passed, "byte {:#x} ^ {:#x} still verifies", at, mask);
    }
}
