//! The vTPM quote container, the TPMS_ATTEST parser and the PCR digest check must never panic.
#![no_main]

use enclaveid_attest_verifier::vtpm::{Quote, QuoteInfo};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(quote) = Quote::parse(data) {
        if let Ok(info) = QuoteInfo::parse(&quote.message) {
            let _ = info.check_pcrs(&quote.pcrs);
        }
    }
    if let Ok(info) = QuoteInfo::parse(data) {
        let _ = info.check_pcrs(&[[0; 32]; 24]);
    }
});
