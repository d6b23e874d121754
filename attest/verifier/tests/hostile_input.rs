//! Hostile input gives an error, never a panic: arbitrary bytes into every parser and into the
//! whole verifier, and every truncation and extension of the real vectors. (The fuzz targets in
//! `fuzz/` push the same parsers much further; these run on every `cargo test`.)

#![allow(clippy::unwrap_used)] // helpers of a test binary

mod support;

use std::time::UNIX_EPOCH;

use enclaveid_attest_verifier::hcl::HclReport;
use enclaveid_attest_verifier::report::{decode_raw_or_hex, AttestationReport, REPORT_LEN};
use enclaveid_attest_verifier::vtpm::{Quote, QuoteInfo};
use enclaveid_attest_verifier::{
    verify, verify_report, verify_vtpm_parts, Evidence, Expectations, Policy,
};
use proptest::prelude::*;

fn expect() -> Expectations {
    Expectations {
        nonce: vec![1; 16],
        tls_spki_sha256: [2; 32],
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn parsers_never_panic(data in proptest::collection::vec(any::<u8>(), 0..3000)) {
        let _ = AttestationReport::parse(&data);
        let _ = decode_raw_or_hex(&data);
        let _ = HclReport::parse(&data).map(|h| h.ak_pub());
        let _ = Quote::parse(&data);
        let _ = QuoteInfo::parse(&data);
        let _ = Evidence::from_json(&data);
        let _ = Policy::from_yaml(&String::from_utf8_lossy(&data));
        let out = verify_report(&data, &data, &data, &Policy::default(), UNIX_EPOCH);
        prop_assert!(!out.passed);
    }

    #[test]
    fn report_sized_garbage_is_refused(data in proptest::collection::vec(any::<u8>(), REPORT_LEN)) {
        let _ = AttestationReport::parse(&data);
        let out = verify_report(&data, b"", b"", &Policy::default(), UNIX_EPOCH);
        prop_assert!(!out.passed);
    }

    #[test]
    fn evidence_with_garbage_fields_is_refused(
        report in "[A-Za-z0-9+/=]{0,64}",
        pem in "[ -~\n]{0,200}",
        vtpm in any::<bool>(),
    ) {
        let provider = if vtpm { "vtpm" } else { "sev-guest" };
        let json = serde_json::json!({
            "provider": provider, "report": report, "vcek": pem, "ask": pem, "ark": pem,
            "hcl_report": if vtpm { Some(report.clone()) } else { None },
            "quote": if vtpm { Some(serde_json::json!({"message": report, "signature": report, "pcrs": []})) } else { None },
            "ak_pub": if vtpm { Some(pem.clone()) } else { None },
        });
        let mut map = json.as_object().unwrap().clone();
        map.retain(|_, v| !v.is_null());
        let bytes = serde_json::to_vec(&map).unwrap();
        if let Ok(ev) = Evidence::from_json(&bytes) {
            prop_assert!(!verify(&ev, &expect(), &Policy::default(), UNIX_EPOCH).passed);
        }
    }
}

#[test]
fn truncated_and_extended_real_vectors_are_errors() {
    let Some(dir) = support::testdata() else {
        return;
    };
    let report = support::read(&dir, "confidential-sidecar-containers/snp_report.bin");
    let certs = support::read(
        &dir,
        "confidential-sidecar-containers/uvm_host_amd_certificate.pem",
    );
    let hcl = support::read(&dir, "trustee/az-snp-vtpm-hcl-report.bin");
    let quote_raw = support::read(&dir, "trustee/az-snp-vtpm-quote.bin");
    let quote = Quote::parse(&quote_raw).unwrap();
    for len in (0..report.len()).step_by(7).chain([report.len() - 1]) {
        let out = verify_report(
            &report[..len],
            &certs,
            &[],
            &Policy::default(),
            support::now(),
        );
        assert!(
            out.check("report.parse").is_some_and(|c| !c.passed),
            "len {len}"
        );
    }
    let mut longer = report.clone();
    longer.push(0);
    assert!(!verify_report(&longer, &certs, &[], &Policy::default(), support::now()).passed);
    // Cut inside the certificates (the last bytes of the file are only the END line's tail).
    for len in (0..certs.len() - 8).step_by(13) {
        let out = verify_report(
            &report,
            &certs[..len],
            &[],
            &Policy::default(),
            support::now(),
        );
        assert!(!out.passed, "certificates cut at {len}");
    }
    for len in (0..hcl.len()).step_by(11) {
        let out = verify_vtpm_parts(
            &hcl[..len],
            &quote,
            None,
            &certs,
            &[],
            b"challenge",
            &Policy::default(),
            support::now(),
        );
        assert!(!out.passed, "HCL cut at {len}");
    }
    for len in 0..quote_raw.len() {
        assert!(
            Quote::parse(&quote_raw[..len]).is_err(),
            "quote cut at {len}"
        );
    }
}
