//! The verified release payload's JWK (`response.key.key` with `kty` and `key_hsm`), its
//! base64url layers and the `CKM_RSA_AES_KEY_WRAP` ciphertext unwrapped with a real transfer
//! key; and the released plaintext (oct bytes, RSA or EC PKCS#8) that becomes the master secret.
#![no_main]

use std::sync::OnceLock;

use enclaveid_init::skr::{master_secret_from_release, unwrap_released_key, TransferKey};
use libfuzzer_sys::fuzz_target;

fn transfer_key() -> &'static TransferKey {
    static KEY: OnceLock<TransferKey> = OnceLock::new();
    KEY.get_or_init(|| TransferKey::generate().expect("RSA-2048 transfer key"))
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 4 {
        0 | 1 => {
            if let Ok(payload) = serde_json::from_slice::<serde_json::Value>(rest) {
                if let Ok(released) = unwrap_released_key(&payload, transfer_key()) {
                    let _ = master_secret_from_release(&released.kty, &released.plaintext);
                }
            }
        }
        m => {
            let kty = if m == 2 { "RSA-HSM" } else { "EC-HSM" };
            let _ = master_secret_from_release(kty, rest);
            let _ = master_secret_from_release("oct-HSM", rest);
        }
    }
});
