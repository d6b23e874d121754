//! The Azure HCL report parser and its runtime-claims (AK JWK) reader must never panic.
#![no_main]

use enclaveid_attest_verifier::hcl::HclReport;
use enclaveid_attest_verifier::report::AttestationReport;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(hcl) = HclReport::parse(data) {
        let _ = hcl.ak_pub();
        if let Ok(report) = AttestationReport::parse(&hcl.snp_report) {
            let _ = hcl.binding_holds(&report.report_data);
        }
    }
});
