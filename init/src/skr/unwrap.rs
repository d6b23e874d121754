//! Unwrapping `key_hsm` from a release payload: `CKM_RSA_AES_KEY_WRAP` (PKCS#11 v2.40 §2.1.21)
//! is RSA-OAEP of a fresh AES key (the KEK) followed by AES key wrap with padding (RFC 5649)
//! of the target key under that KEK. AKV names the variants by their OAEP hash:
//! `CKM_RSA_AES_KEY_WRAP` (SHA-1), `RSA_AES_KEY_WRAP_256`, `RSA_AES_KEY_WRAP_384`.

use aes_kw::KeyInit as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde::Deserialize;
use zeroize::Zeroizing;

use super::{SkrError, TransferKey};

#[derive(Deserialize)]
struct Payload {
    request: PayloadRequest,
    response: PayloadResponse,
}

#[derive(Deserialize)]
struct PayloadRequest {
    enc: String,
}

#[derive(Deserialize)]
struct PayloadResponse {
    key: ResponseKey,
}

#[derive(Deserialize)]
struct ResponseKey {
    key: EncryptedKey,
}

#[derive(Deserialize)]
struct EncryptedKey {
    key_hsm: String,
    kty: String,
}

#[derive(Deserialize)]
struct KeyHsm {
    ciphertext: String,
}

/// A released key in memory: its `kty` and plaintext (raw bytes for oct, PKCS#8 otherwise).
pub struct ReleasedKey {
    /// JWK key type as AKV reports it (`oct-HSM`, `RSA-HSM`, …).
    pub kty: String,
    /// The plaintext key material; zeroized on drop.
    pub plaintext: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for ReleasedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReleasedKey")
            .field("kty", &self.kty)
            .field("plaintext", &"[redacted]")
            .finish()
    }
}

/// The private half of a transfer key, wherever it lives: in memory ([`TransferKey`]) or inside
/// a TPM (`skr::guest::TpmTransferKey`). It only ever decrypts the RSA-OAEP block (the KEK).
pub trait KekDecryptor {
    /// The RSA modulus length in bytes (the RSA block at the start of the ciphertext).
    fn modulus_len(&self) -> usize;
    /// RSA-OAEP-decrypts the KEK block; `enc` names the OAEP hash as AKV does.
    fn decrypt_kek(&self, enc: &str, block: &[u8]) -> Result<Zeroizing<Vec<u8>>, SkrError>;
}

impl KekDecryptor for TransferKey {
    fn modulus_len(&self) -> usize {
        TransferKey::modulus_len(self)
    }

    fn decrypt_kek(&self, enc: &str, block: &[u8]) -> Result<Zeroizing<Vec<u8>>, SkrError> {
        let padding = match enc {
            "CKM_RSA_AES_KEY_WRAP" => rsa::Oaep::new::<sha1::Sha1>(),
            "RSA_AES_KEY_WRAP_256" => rsa::Oaep::new::<sha2::Sha256>(),
            "RSA_AES_KEY_WRAP_384" => rsa::Oaep::new::<sha2::Sha384>(),
            other => return Err(SkrError::Unwrap(format!("unsupported enc {other:?}"))),
        };
        self.private()
            .decrypt(padding, block)
            .map(Zeroizing::new)
            .map_err(|_| SkrError::Unwrap("RSA-OAEP decryption of the KEK failed".into()))
    }
}

/// Unwraps `response.key.key.key_hsm` of a verified release payload with the transfer key.
pub fn unwrap_released_key<K: KekDecryptor + ?Sized>(
    payload: &serde_json::Value,
    transfer_key: &K,
) -> Result<ReleasedKey, SkrError> {
    let payload: Payload = serde_json::from_value(payload.clone())
        .map_err(|e| SkrError::Malformed(format!("release payload: {e}")))?;
    let key = payload.response.key.key;
    let key_hsm = URL_SAFE_NO_PAD
        .decode(key.key_hsm.trim_end_matches('='))
        .map_err(|e| SkrError::Malformed(format!("key_hsm is not base64url: {e}")))?;
    let key_hsm: KeyHsm = serde_json::from_slice(&key_hsm)
        .map_err(|e| SkrError::Malformed(format!("key_hsm: {e}")))?;
    let ciphertext = URL_SAFE_NO_PAD
        .decode(key_hsm.ciphertext.trim_end_matches('='))
        .map_err(|e| SkrError::Malformed(format!("key_hsm ciphertext is not base64url: {e}")))?;
    let plaintext = rsa_aes_key_unwrap(&payload.request.enc, &ciphertext, transfer_key)?;
    Ok(ReleasedKey {
        kty: key.kty,
        plaintext,
    })
}

/// `CKM_RSA_AES_KEY_WRAP` unwrap: split at the RSA modulus length, OAEP-decrypt the KEK,
/// AES-KWP-unwrap the rest.
pub(crate) fn rsa_aes_key_unwrap<K: KekDecryptor + ?Sized>(
    enc: &str,
    ciphertext: &[u8],
    transfer_key: &K,
) -> Result<Zeroizing<Vec<u8>>, SkrError> {
    let split = transfer_key.modulus_len();
    if ciphertext.len() <= split + 8 {
        return Err(SkrError::Unwrap(format!(
            "ciphertext is {} bytes, too short for a {split}-byte RSA block and a wrapped key",
            ciphertext.len()
        )));
    }
    let (rsa_block, kwp_block) = ciphertext.split_at(split);
    let kek = transfer_key.decrypt_kek(enc, rsa_block)?;
    let mut out = Zeroizing::new(vec![0u8; kwp_block.len()]);
    let len = match kek.len() {
        16 => aes_kw::KwpAes128::new_from_slice(&kek)
            .map_err(|_| SkrError::Unwrap("bad KEK".into()))?
            .unwrap_key(kwp_block, &mut out)
            .map(<[u8]>::len),
        24 => aes_kw::KwpAes192::new_from_slice(&kek)
            .map_err(|_| SkrError::Unwrap("bad KEK".into()))?
            .unwrap_key(kwp_block, &mut out)
            .map(<[u8]>::len),
        32 => aes_kw::KwpAes256::new_from_slice(&kek)
            .map_err(|_| SkrError::Unwrap("bad KEK".into()))?
            .unwrap_key(kwp_block, &mut out)
            .map(<[u8]>::len),
        n => {
            return Err(SkrError::Unwrap(format!(
                "KEK is {n} bytes, not an AES key"
            )))
        }
    }
    .map_err(|_| SkrError::Unwrap("AES-KWP integrity check failed".into()))?;
    out.truncate(len);
    Ok(out)
}

/// The wrapping side, as AKV's HSM does it, for the round-trip test.
#[cfg(test)]
pub(crate) fn rsa_aes_key_wrap(
    public: &rsa::RsaPublicKey,
    key: &[u8],
) -> Result<Vec<u8>, SkrError> {
    let mut rng = rand::rngs::OsRng;
    let kek: [u8; 32] = rand::random();
    let mut out = public
        .encrypt(&mut rng, rsa::Oaep::new::<sha1::Sha1>(), &kek)
        .map_err(|e| SkrError::Unwrap(e.to_string()))?;
    let mut buf = vec![0u8; key.len() + 16];
    let wrapped = aes_kw::KwpAes256::new_from_slice(&kek)
        .map_err(|_| SkrError::Unwrap("bad KEK".into()))?
        .wrap_key(key, &mut buf)
        .map_err(|e| SkrError::Unwrap(e.to_string()))?;
    out.extend_from_slice(wrapped);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrap_unwrap_round_trip_and_tamper() {
        let tk = TransferKey::generate().unwrap();
        let secret = [7u8; 37];
        let wrapped = rsa_aes_key_wrap(&tk.private().to_public_key(), &secret).unwrap();
        let plain = rsa_aes_key_unwrap("CKM_RSA_AES_KEY_WRAP", &wrapped, &tk).unwrap();
        assert_eq!(plain.as_slice(), &secret);

        let mut bad = wrapped.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert!(rsa_aes_key_unwrap("CKM_RSA_AES_KEY_WRAP", &bad, &tk).is_err());
        assert!(rsa_aes_key_unwrap("RSA_AES_KEY_WRAP_256", &wrapped, &tk).is_err());
        assert!(rsa_aes_key_unwrap("A256KW", &wrapped, &tk).is_err());
    }
}
