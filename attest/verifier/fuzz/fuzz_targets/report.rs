//! The SNP report parser (raw and hex forms), the TCB decoding and the certificate parsers must
//! never panic on arbitrary bytes.
#![no_main]

use enclaveid_attest_verifier::report::{decode_raw_or_hex, AttestationReport};
use enclaveid_attest_verifier::{certs, verify_report, Policy, Product};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(raw) = decode_raw_or_hex(data) {
        if let Ok(report) = AttestationReport::parse(&raw) {
            for product in Product::ALL {
                let _ = report.reported_tcb.decode(product);
            }
            let _ = report.cpuid_product();
        }
    }
    if let Ok(cert) = certs::parse_cert("vcek", data) {
        let _ = certs::VcekInfo::from_cert(&cert);
        let _ = certs::vcek_key(&cert);
    }
    // Arbitrary bytes as the report and as the certificate bundle.
    let now = std::time::UNIX_EPOCH;
    let _ = verify_report(data, data, &[], &Policy::default(), now);
});
