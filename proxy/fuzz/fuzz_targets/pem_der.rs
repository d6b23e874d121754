//! PEM and DER loading (the three TLS files, re-read on every change, and peer certificates):
//! the CA bundle, the chain and the key parsers, the full material check, and the identity
//! extraction from a DER certificate. Hostile bytes give an error, never a panic.
#![no_main]

use enclaveid_pki::identity::PeerIdentity;
use enclaveid_pki::pem;
use enclaveid_pki::tls::Material;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 4 {
        0 => {
            if let Ok(certs) = pem::parse_certificates(rest, "fuzz") {
                for c in certs {
                    let _ = PeerIdentity::from_der(&c);
                }
            }
        }
        1 => {
            let _ = pem::parse_private_key(rest, "fuzz");
        }
        2 => {
            // DER straight from a peer's Certificate message.
            let _ = PeerIdentity::from_der(rest);
        }
        _ => {
            // Three files separated by NUL bytes: ca.pem, cert.pem, key.pem.
            let mut parts = rest.splitn(3, |b| *b == 0);
            let (Some(ca), Some(cert), Some(key)) = (parts.next(), parts.next(), parts.next()) else {
                return;
            };
            let _ = Material::from_pem(ca, cert, key, ["ca.pem", "cert.pem", "key.pem"]);
        }
    }
});
