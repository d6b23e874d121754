//! The YAML policy parser must never panic, whatever the file holds.
#![no_main]

use enclaveid_attest_verifier::Policy;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(policy) = Policy::from_yaml(text) {
            let _ = policy.vmpl_rule();
        }
    }
});
