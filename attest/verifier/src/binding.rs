//! The binding of evidence to the client's nonce and to the server's TLS key.
//!
//! This is a contract shared by the server (which produces it) and every verifier:
//!
//! ```text
//! binding64 = SHA-256(server TLS SubjectPublicKeyInfo, DER) ‖ SHA-256(nonce bytes)   (64 bytes)
//! sev-guest, simulated:  report_data            == binding64
//! vtpm:                  quote extraData        == SHA-256(binding64)               (32 bytes)
//!                        (and the HCL report's report_data[0..32] == SHA-256(var data) that
//!                        carries the AK which signed the quote)
//! ```
//!
//! The nonce is hashed so that its length (16 to 64 bytes) does not change the layout, and the
//! vTPM form hashes again because `TPM2B_DATA` extraData is limited to the size of a digest.

use sha2::{Digest, Sha256};

/// Length of the binding written into `report_data`.
pub const BINDING_LEN: usize = 64;

/// SHA-256 of a DER `SubjectPublicKeyInfo`: the TLS key pin (as in `curl --pinnedpubkey`).
#[must_use]
pub fn spki_sha256(spki_der: &[u8]) -> [u8; 32] {
    Sha256::digest(spki_der).into()
}

/// `SHA-256(SPKI) ‖ SHA-256(nonce)`, given the SPKI hash already computed.
#[must_use]
pub fn binding64(tls_spki_sha256: &[u8; 32], nonce: &[u8]) -> [u8; BINDING_LEN] {
    let mut out = [0u8; BINDING_LEN];
    out[..32].copy_from_slice(tls_spki_sha256);
    out[32..].copy_from_slice(&Sha256::digest(nonce));
    out
}

/// The `report_data` a `sev-guest` or `simulated` provider must put in its report.
#[must_use]
pub fn report_data(tls_spki_sha256: &[u8; 32], nonce: &[u8]) -> [u8; 64] {
    binding64(tls_spki_sha256, nonce)
}

/// The TPM quote `extraData` (qualifying data) a `vtpm` provider must use.
#[must_use]
pub fn vtpm_extra_data(tls_spki_sha256: &[u8; 32], nonce: &[u8]) -> [u8; 32] {
    Sha256::digest(binding64(tls_spki_sha256, nonce)).into()
}

/// Renders an SPKI hash as a `curl --pinnedpubkey` pin: `sha256//<base64>`.
#[must_use]
pub fn curl_pin(tls_spki_sha256: &[u8; 32]) -> String {
    use base64::Engine as _;
    format!(
        "sha256//{}",
        base64::engine::general_purpose::STANDARD.encode(tls_spki_sha256)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_fixed() {
        let spki = spki_sha256(b"spki");
        let b = binding64(&spki, b"0123456789abcdef");
        assert_eq!(&b[..32], &spki);
        assert_eq!(&b[32..], &Sha256::digest(b"0123456789abcdef")[..]);
        assert_eq!(
            vtpm_extra_data(&spki, b"0123456789abcdef"),
            <[u8; 32]>::from(Sha256::digest(b))
        );
        assert_ne!(binding64(&spki, b"other nonce....."), b);
    }

    #[test]
    fn curl_pin_is_base64() {
        assert_eq!(
            curl_pin(&[0; 32]),
            "sha256//AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="
        );
    }
}
