//! The key release response AKV returns (`{"value": JWS}`): the compact JWS, its header and
//! `x5c` chain (base64 DER, parsed by webpki), the signature algorithm and the payload JSON.
//! Everything in it is attacker-controlled until the chain and signature verify, so any input
//! must give an error or a payload, never a panic.
#![no_main]

use std::sync::OnceLock;

use enclaveid_init::skr::verify_release_jws;
use libfuzzer_sys::fuzz_target;
use rustls_pki_types::{CertificateDer, UnixTime};

/// A real trust anchor, so the leaf in `x5c` gets parsed and path-built against something.
fn roots() -> &'static [CertificateDer<'static>] {
    static ROOTS: OnceLock<Vec<CertificateDer<'static>>> = OnceLock::new();
    ROOTS.get_or_init(|| {
        let key = rcgen::KeyPair::generate().expect("P-256 key generation");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("no SANs");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).expect("self-signed fuzz root");
        vec![cert.der().clone()]
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // The envelope first, as the vault client sees it, then the JWS alone.
    if let Ok(serde_json::Value::Object(map)) = serde_json::from_str::<serde_json::Value>(text) {
        if let Some(serde_json::Value::String(jws)) = map.get("value") {
            let _ = verify_release_jws(jws, roots(), "fuzz.vault.azure.net", UnixTime::now());
        }
    }
    let _ = verify_release_jws(text, roots(), "fuzz.vault.azure.net", UnixTime::now());
});
