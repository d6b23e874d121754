//! Evidence JSON goes through the whole `verify`: decoding, certificates, report, HCL and quote.
//! Nothing may panic, and nothing made from fuzz input may pass.
#![no_main]

use enclaveid_attest_verifier::{verify, Evidence, Expectations, Policy};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(evidence) = Evidence::from_json(data) else {
        return;
    };
    let expect = Expectations {
        nonce: vec![0; 16],
        tls_spki_sha256: [0; 32],
    };
    let lenient = Policy {
        allow_simulated: true,
        allow_debug: true,
        max_vmpl: 3,
        ..Policy::default()
    };
    for policy in [Policy::default(), lenient] {
        let report = verify(&evidence, &expect, &policy, std::time::UNIX_EPOCH);
        assert!(!report.passed, "fuzz input verified:\n{report}");
        let _ = report.to_json();
    }
});
