//! The proxy's YAML config (a ConfigMap: written by init and the chart, but parsed before any
//! other check): any input is refused with an error or accepted, never a panic, and an accepted
//! config renders as the `/config` admin endpoint shows it.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match enclaveid_proxy::config::Config::parse(text) {
        Ok(config) => {
            // The admin endpoint renders the effective config; that must not fail either.
            serde_json::to_string(&config).expect("an accepted config serialises");
        }
        Err(e) => {
            // Every error renders (it is printed to the operator).
            let _ = e.to_string();
        }
    }
});
