//! MAA's guest attestation (`POST {maa}/attest/AzureGuest`), the flow Azure's CVM guest
//! attestation library and its Secure Key Release samples use on confidential VMs.
//!
//! Request: `{"AttestationInfo": b64url(JSON)}`, the JSON being
//! ```text
//! { "AttestationProtocolVersion": "2.0",
//!   "OSType", "OSDistro", "OSBuild": base64(string), "OSVersionMajor", "OSVersionMinor": int,
//!   "TcgLogs": base64, "ClientPayload": { "nonce": base64(nonce) },
//!   "TpmInfo": { "AikCert", "AikPub" (TPM2B_PUBLIC), "PcrQuote" (TPMS_ATTEST),
//!                "PcrSignature" (raw RSASSA), "PcrSet": [0..23], "PCRs": [{"Index","Digest"}],
//!                "EncKeyPub" (TPM2B_PUBLIC), "EncKeyCertifyInfo" (TPMS_ATTEST),
//!                "EncKeyCertifyInfoSignature" (raw RSASSA) },          all base64
//!   "IsolationInfo": { "Type": "SevSnp", "Evidence": {
//!       "Proof": base64(JSON{"SnpReport": b64url(report), "VcekCertChain": PEM}),
//!       "RunTimeData": base64(HCL runtime claims) } } }
//! ```
//! Response: `{"token": b64url(JSON{"Jwt", "EncryptedInnerKey", "EncryptionParams": {"Iv"},
//! "AuthenticationData"})}`: the JWT encrypted with AES-GCM (additional data `Transport Key`)
//! under a key that is RSA-encrypted (PKCS#1 v1.5) to `EncKeyPub`, so only the TPM that
//! certified the key can read its own token. MAA puts that key into the token as the JWK
//! `TpmEphemeralEncryptionKey` in `x-ms-runtime.keys`, and AKV wraps the released key to it.

use std::sync::Arc;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use serde::Deserialize;
use zeroize::Zeroizing;

use super::{KekDecryptor, MaaClient, SkrError};
use crate::evidence_vtpm::{Decryption, GuestEvidence, GuestTpm, TpmKeyRef};

/// MAA API version of `attest/AzureGuest`.
pub const GUEST_API_VERSION: &str = "2020-10-01";
/// The guest attestation protocol version.
pub const PROTOCOL_VERSION: &str = "2.0";
/// The `kid` MAA gives the TPM transfer key in `x-ms-runtime.keys`.
pub const TPM_KEY_ID: &str = "TpmEphemeralEncryptionKey";
/// AES-GCM additional data of the encrypted token.
pub const TOKEN_AAD: &[u8] = b"Transport Key";

/// What the request says about the guest OS (informational for MAA on Linux).
#[derive(Debug, Clone)]
pub struct OsInfo {
    /// `Linux`.
    pub os_type: String,
    /// Distribution name (`NAME` of os-release).
    pub distro: String,
    /// Major version.
    pub major: u32,
    /// Minor version.
    pub minor: u32,
    /// Build (not applicable on Linux).
    pub build: String,
}

impl OsInfo {
    /// From `/etc/os-release` (`NAME`, `VERSION_ID`), with neutral defaults.
    #[must_use]
    pub fn detect() -> Self {
        let text = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
        let field = |key: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
                .map(|v| v.trim_matches('"').to_owned())
        };
        let version = field("VERSION_ID").unwrap_or_default();
        let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
        Self {
            os_type: "Linux".into(),
            distro: field("NAME").unwrap_or_else(|| "Linux".into()),
            major: parts.next().unwrap_or(0).max(1),
            minor: parts.next().unwrap_or(0),
            build: "NotApplication".into(),
        }
    }
}

/// The `AttestationInfo` JSON for `evidence`, `nonce` (quoted and certified) and `os`.
#[must_use]
pub fn attestation_info(evidence: &GuestEvidence, nonce: &[u8], os: &OsInfo) -> serde_json::Value {
    let b64 = |b: &[u8]| STANDARD.encode(b);
    let proof = serde_json::json!({
        "SnpReport": URL_SAFE_NO_PAD.encode(&evidence.snp_report),
        "VcekCertChain": evidence.vcek_chain_pem,
    });
    let indices: Vec<usize> = (0..evidence.pcrs.len()).collect();
    let pcrs: Vec<serde_json::Value> = evidence
        .pcrs
        .iter()
        .enumerate()
        .map(|(i, d)| serde_json::json!({ "Index": i, "Digest": b64(d) }))
        .collect();
    serde_json::json!({
        "AttestationProtocolVersion": PROTOCOL_VERSION,
        "OSType": b64(os.os_type.as_bytes()),
        "OSDistro": b64(os.distro.as_bytes()),
        "OSVersionMajor": os.major,
        "OSVersionMinor": os.minor,
        "OSBuild": b64(os.build.as_bytes()),
        "TcgLogs": b64(&evidence.tcg_log),
        "ClientPayload": { "nonce": b64(nonce) },
        "TpmInfo": {
            "AikCert": b64(evidence.ak_cert.as_deref().unwrap_or_default()),
            "AikPub": b64(&evidence.ak_public_area),
            "PcrQuote": b64(&evidence.quote),
            "PcrSignature": b64(&evidence.quote_signature),
            "PcrSet": indices,
            "PCRs": pcrs,
            "EncKeyPub": b64(&evidence.key.public_area),
            "EncKeyCertifyInfo": b64(&evidence.certify_info),
            "EncKeyCertifyInfoSignature": b64(&evidence.certify_signature),
        },
        "IsolationInfo": {
            "Type": "SevSnp",
            "Evidence": {
                "Proof": b64(proof.to_string().as_bytes()),
                "RunTimeData": b64(&evidence.runtime_data),
            },
        },
    })
}

/// The request body: `{"AttestationInfo": b64url(JSON)}`.
#[must_use]
pub fn request_body(info: &serde_json::Value) -> Vec<u8> {
    serde_json::json!({ "AttestationInfo": URL_SAFE_NO_PAD.encode(info.to_string()) })
        .to_string()
        .into_bytes()
}

#[derive(Deserialize)]
struct TokenResponse {
    token: String,
}

impl MaaClient {
    /// `{maa}/attest/AzureGuest?api-version=2020-10-01`.
    #[must_use]
    pub fn azure_guest_url(&self) -> String {
        format!(
            "{}/attest/AzureGuest?api-version={GUEST_API_VERSION}",
            self.base
        )
    }

    /// Sends guest evidence; returns MAA's token as sent (still encrypted to the TPM key).
    pub async fn attest_azure_guest(&self, body: &[u8]) -> Result<Zeroizing<String>, SkrError> {
        let url = self.azure_guest_url();
        let text = self.post(&url, body.to_vec()).await?;
        let parsed: TokenResponse =
            serde_json::from_str(&text).map_err(|e| SkrError::MaaResponse(e.to_string()))?;
        Ok(Zeroizing::new(parsed.token))
    }
}

/// MAA's encrypted token, decoded.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct EncryptedToken {
    jwt: String,
    encrypted_inner_key: String,
    encryption_params: EncryptionParams,
    authentication_data: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct EncryptionParams {
    iv: String,
}

fn std_b64(value: &str, what: &str) -> Result<Vec<u8>, SkrError> {
    STANDARD
        .decode(value)
        .map_err(|e| SkrError::MaaResponse(format!("{what} is not base64: {e}")))
}

/// Decrypts MAA's token: the inner AES key inside the TPM, the JWT with AES-GCM in memory.
/// Then checks that the token names this TPM key as `TpmEphemeralEncryptionKey`. Blocking.
pub fn open_token(
    token: &str,
    tpm: &GuestTpm,
    key: &TpmKeyRef,
) -> Result<Zeroizing<String>, SkrError> {
    use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_128_GCM, AES_256_GCM};
    let outer = URL_SAFE_NO_PAD
        .decode(token.trim_end_matches('='))
        .map_err(|e| SkrError::MaaResponse(format!("token is not base64url: {e}")))?;
    let parsed: EncryptedToken = serde_json::from_slice(&outer)
        .map_err(|e| SkrError::MaaResponse(format!("encrypted token: {e}")))?;
    let inner = std_b64(&parsed.encrypted_inner_key, "EncryptedInnerKey")?;
    let aes_key = tpm
        .decrypt(key, Decryption::Pkcs1, &inner)
        .map_err(|e| SkrError::MaaResponse(format!("decrypting the token key in the TPM: {e}")))?;
    let algorithm = match aes_key.len() {
        16 => &AES_128_GCM,
        32 => &AES_256_GCM,
        n => {
            return Err(SkrError::MaaResponse(format!(
                "the token key is {n} bytes, not AES-128/256"
            )))
        }
    };
    let iv: [u8; 12] = std_b64(&parsed.encryption_params.iv, "Iv")?
        .try_into()
        .map_err(|_| SkrError::MaaResponse("Iv is not 12 bytes".into()))?;
    let mut in_out = Zeroizing::new(std_b64(&parsed.jwt, "Jwt")?);
    in_out.extend_from_slice(&std_b64(&parsed.authentication_data, "AuthenticationData")?);
    let opening = LessSafeKey::new(
        UnboundKey::new(algorithm, &aes_key)
            .map_err(|_| SkrError::MaaResponse("unusable token key".into()))?,
    );
    let plain = opening
        .open_in_place(
            Nonce::assume_unique_for_key(iv),
            Aad::from(TOKEN_AAD),
            &mut in_out,
        )
        .map_err(|_| SkrError::MaaResponse("the encrypted token does not authenticate".into()))?;
    let jwt = Zeroizing::new(
        String::from_utf8(plain.to_vec())
            .map_err(|_| SkrError::MaaResponse("the decrypted token is not UTF-8".into()))?,
    );
    check_runtime_key(&jwt, key)?;
    Ok(jwt)
}

/// The token's `x-ms-runtime.keys` must carry this TPM key as `TpmEphemeralEncryptionKey`:
/// AKV wraps the secret to that JWK.
fn check_runtime_key(jwt: &str, key: &TpmKeyRef) -> Result<(), SkrError> {
    let claims = jwt
        .split('.')
        .nth(1)
        .and_then(|p| URL_SAFE_NO_PAD.decode(p.trim_end_matches('=')).ok())
        .and_then(|p| serde_json::from_slice::<serde_json::Value>(&p).ok())
        .ok_or_else(|| SkrError::MaaResponse("the decrypted token is not a JWT".into()))?;
    let keys = claims["x-ms-runtime"]["keys"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let ours = keys.iter().any(|k| {
        k["kid"] == TPM_KEY_ID
            && k["n"]
                .as_str()
                .and_then(|n| URL_SAFE_NO_PAD.decode(n.trim_end_matches('=')).ok())
                .is_some_and(|n| n == key.modulus)
    });
    if ours {
        Ok(())
    } else {
        Err(SkrError::MaaResponse(format!(
            "the token's x-ms-runtime.keys has no {TPM_KEY_ID} equal to this TPM's transfer key"
        )))
    }
}

/// The transfer key inside the TPM, as [`KekDecryptor`] for the release unwrap. Blocking.
pub struct TpmTransferKey {
    /// The TPM.
    pub tpm: Arc<GuestTpm>,
    /// The key.
    pub key: TpmKeyRef,
}

impl KekDecryptor for TpmTransferKey {
    fn modulus_len(&self) -> usize {
        self.key.modulus.len()
    }

    fn decrypt_kek(&self, enc: &str, block: &[u8]) -> Result<Zeroizing<Vec<u8>>, SkrError> {
        let scheme = match enc {
            "CKM_RSA_AES_KEY_WRAP" => Decryption::OaepSha1,
            "RSA_AES_KEY_WRAP_256" => Decryption::OaepSha256,
            "RSA_AES_KEY_WRAP_384" => Decryption::OaepSha384,
            other => return Err(SkrError::Unwrap(format!("unsupported enc {other:?}"))),
        };
        self.tpm.decrypt(&self.key, scheme, block).map_err(|e| {
            SkrError::Unwrap(format!("RSA-OAEP decryption of the KEK in the TPM: {e}"))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_body_wraps_attestation_info_in_base64url() {
        let info = serde_json::json!({"AttestationProtocolVersion": "2.0"});
        let body: serde_json::Value = serde_json::from_slice(&request_body(&info)).unwrap();
        let inner = URL_SAFE_NO_PAD
            .decode(body["AttestationInfo"].as_str().unwrap())
            .unwrap();
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&inner).unwrap(),
            info
        );
    }

    #[test]
    fn runtime_key_must_be_ours() {
        let key = TpmKeyRef::for_tests(vec![1, 2, 3]);
        let claims = |n: &[u8]| {
            let payload = serde_json::json!({"x-ms-runtime": {"keys": [
                {"kid": TPM_KEY_ID, "kty": "RSA", "n": URL_SAFE_NO_PAD.encode(n), "e": "AQAB"}]}});
            format!("h.{}.s", URL_SAFE_NO_PAD.encode(payload.to_string()))
        };
        check_runtime_key(&claims(&[1, 2, 3]), &key).unwrap();
        assert!(check_runtime_key(&claims(&[9]), &key).is_err());
        assert!(check_runtime_key("not a jwt", &key).is_err());
    }
}
