//! Secure Key Release, the client side, in the wire formats Azure uses.
//!
//! 1. [`TransferKey::generate`]: an ephemeral RSA-2048 key; its public half goes into the
//!    attestation's runtime data as a JWK set (`{"keys":[{"kty":"RSA",…}]}`).
//! 2. [`report_data_for`]: SNP `report_data` = SHA-256(runtime-data JSON bytes) ‖ 32 zero bytes.
//! 3. [`MaaClient::attest_sev_snp_vm`]: `POST {maa}/attest/SevSnpVm` → `{"token": JWT}`. MAA
//!    copies the runtime data into the token's `x-ms-runtime` claim, which AKV reads the transfer
//!    key from. A token whose `exp` is past (or too near, [`MIN_TOKEN_VALIDITY`]) is not used:
//!    [`check_token_fresh`] makes it a transient error, so the retry asks MAA for a fresh one.
//! 4. The release call itself goes through the official Key Vault client (see `vault::akv`).
//! 5. [`verify_release_jws`]: the response `{"value": JWS}` is checked: its `x5c` chain must
//!    lead to a trusted root and name the vault's host, and the leaf must have signed it.
//! 6. [`unwrap_released_key`]: `key_hsm` holds RSA-OAEP(KEK) ‖ AES-KWP(KEK, key), the
//!    `CKM_RSA_AES_KEY_WRAP` scheme; the plaintext is the raw key (oct) or PKCS#8 (RSA, EC).

use std::time::{Duration, SystemTime};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use enclaveid_pki::derive::{MasterSecret, VaultKeyType};
use rsa::traits::{PrivateKeyParts, PublicKeyParts};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::evidence::SnpEvidence;
use crate::retry::Transient;

pub mod guest;
mod unwrap;

pub use unwrap::unwrap_released_key;
pub use unwrap::KekDecryptor;

/// The `kid` given to the transfer key in the runtime data.
pub const TRANSFER_KEY_ID: &str = "enclaveid-transfer-key";
/// MAA API version used for `attest/SevSnpVm`.
pub const MAA_API_VERSION: &str = "2022-08-01";
/// The release wrapping algorithm requested from AKV.
pub const RELEASE_ENC: &str = "CKM_RSA_AES_KEY_WRAP";
/// The validity an MAA token must have left when it arrives: the release call and its retries
/// (one minute by default, `--retry-deadline`) must end before AKV would find it expired. MAA's
/// tokens live 8 hours, so only a wrong clock or a replayed token falls short.
pub const MIN_TOKEN_VALIDITY: Duration = Duration::from_mins(5);

/// Errors of the SKR steps.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SkrError {
    /// Generating the transfer key failed.
    #[error("generating the RSA transfer key: {0}")]
    TransferKey(String),
    /// MAA could not be reached, or answered 429/5xx.
    #[error("MAA {url} unreachable or busy: {detail}")]
    MaaUnavailable {
        /// The request URL.
        url: String,
        /// What happened.
        detail: String,
    },
    /// MAA refused the evidence (4xx); its own message is kept.
    #[error("MAA {url} refused the evidence with HTTP {status}: {message}")]
    MaaRefused {
        /// The request URL.
        url: String,
        /// HTTP status.
        status: u16,
        /// MAA's error message.
        message: String,
    },
    /// The MAA response is not `{"token": "..."}`, or the token is not a JWT with an `exp`.
    #[error("MAA response is not a token: {0}")]
    MaaResponse(String),
    /// The MAA token is expired, or expires too soon to carry the release (transient: the next
    /// attempt attests again and gets a fresh token).
    #[error(
        "MAA {url} issued a token that {} (exp {exp}, now {now}); it needs {} s of validity left \
         for the key release",
        expiry_phrase(*exp, *now),
        MIN_TOKEN_VALIDITY.as_secs()
    )]
    TokenExpired {
        /// The request URL.
        url: String,
        /// The token's `exp` claim (seconds since the epoch).
        exp: i64,
        /// This machine's clock at the check (seconds since the epoch).
        now: i64,
    },
    /// The attempt ran past the deadline.
    #[error("deadline exceeded after {0:?}")]
    Deadline(Duration),
    /// The release response is not a well-formed JWS.
    #[error("key release response: {0}")]
    Malformed(String),
    /// The release JWS's certificate chain does not verify.
    #[error("key release JWS certificate chain does not verify for {host}: {detail}")]
    Chain {
        /// The vault host the leaf must name.
        host: String,
        /// webpki's reason.
        detail: String,
    },
    /// The release JWS's signature does not verify under its leaf certificate.
    #[error("key release JWS signature ({alg}) does not verify under its x5c leaf")]
    Signature {
        /// The JWS `alg`.
        alg: String,
    },
    /// Unwrapping `key_hsm` failed.
    #[error("unwrapping the released key: {0}")]
    Unwrap(String),
    /// The released key's material does not make a master secret.
    #[error("released key: {0}")]
    Material(String),
}

impl Transient for SkrError {
    fn is_transient(&self) -> bool {
        matches!(
            self,
            Self::MaaUnavailable { .. } | Self::TokenExpired { .. }
        )
    }
    fn deadline_exceeded(after: Duration) -> Self {
        Self::Deadline(after)
    }
}

/// The ephemeral RSA key that the released secret is wrapped to. Zeroized on drop (rsa crate).
pub struct TransferKey {
    key: rsa::RsaPrivateKey,
}

impl std::fmt::Debug for TransferKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TransferKey([redacted])")
    }
}

impl TransferKey {
    /// A fresh RSA-2048 key.
    pub fn generate() -> Result<Self, SkrError> {
        let mut rng = rand::rngs::OsRng;
        let key = rsa::RsaPrivateKey::new(&mut rng, 2048)
            .map_err(|e| SkrError::TransferKey(e.to_string()))?;
        Ok(Self { key })
    }

    /// The private key (for unwrapping).
    pub(crate) fn private(&self) -> &rsa::RsaPrivateKey {
        &self.key
    }

    /// The modulus length in bytes (the RSA-OAEP block at the start of `key_hsm`).
    #[must_use]
    pub fn modulus_len(&self) -> usize {
        self.key.size()
    }

    /// The public JWK, as placed in the runtime data.
    #[must_use]
    pub fn public_jwk(&self) -> serde_json::Value {
        serde_json::json!({
            "kty": "RSA",
            "kid": TRANSFER_KEY_ID,
            "key_ops": ["encrypt"],
            "n": URL_SAFE_NO_PAD.encode(self.key.n().to_bytes_be()),
            "e": URL_SAFE_NO_PAD.encode(self.key.e().to_bytes_be()),
        })
    }

    /// The runtime-data JSON bytes: `{"keys":[<public JWK>]}`.
    #[must_use]
    pub fn runtime_data(&self) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({ "keys": [self.public_jwk()] }))
            .expect("serialising a JSON value built in memory cannot fail")
    }
}

/// The SNP `report_data` binding the runtime data: SHA-256(runtime data) ‖ 32 zero bytes.
#[must_use]
pub fn report_data_for(runtime_data: &[u8]) -> [u8; 64] {
    let mut out = [0u8; 64];
    out[..32].copy_from_slice(&Sha256::digest(runtime_data));
    out
}

/// The `POST {maa}/attest/SevSnpVm` request body.
#[must_use]
pub fn maa_request_body(evidence: &SnpEvidence, runtime_data: &[u8], nonce: u64) -> Vec<u8> {
    let report = serde_json::json!({
        "SnpReport": URL_SAFE_NO_PAD.encode(&evidence.report),
        "VcekCertChain": URL_SAFE_NO_PAD.encode(evidence.cert_chain_pem.as_bytes()),
    });
    let body = serde_json::json!({
        "report": URL_SAFE_NO_PAD.encode(report.to_string()),
        "runtimeData": { "data": URL_SAFE_NO_PAD.encode(runtime_data), "dataType": "JSON" },
        "nonce": nonce,
    });
    body.to_string().into_bytes()
}

/// A client of Microsoft Azure Attestation.
#[derive(Debug, Clone)]
pub struct MaaClient {
    base: String,
    http: reqwest::Client,
}

#[derive(Deserialize)]
struct MaaResponse {
    token: String,
}

impl MaaClient {
    /// A client for `base` (e.g. `https://sharedeus.eus.attest.azure.net`).
    #[must_use]
    pub fn new(base: &str, http: reqwest::Client) -> Self {
        Self {
            base: base.trim_end_matches('/').to_owned(),
            http,
        }
    }

    /// POSTs a JSON attestation request to `url` and returns the body of a 2xx answer. A
    /// transport failure, 429 or 5xx is `MaaUnavailable` (retried); any other status is
    /// `MaaRefused` with MAA's own message.
    pub(crate) async fn post(&self, url: &str, body: Vec<u8>) -> Result<String, SkrError> {
        let unavailable = |e: &reqwest::Error| SkrError::MaaUnavailable {
            url: url.to_owned(),
            detail: error_chain(e),
        };
        let response = self
            .http
            .post(url)
            .header("content-type", "application/json")
            .header("accept", "application/json")
            .body(body)
            .send()
            .await
            .map_err(|e| unavailable(&e))?;
        let status = response.status();
        let text = response.text().await.map_err(|e| unavailable(&e))?;
        if status.as_u16() == 429 || status.is_server_error() {
            return Err(SkrError::MaaUnavailable {
                url: url.to_owned(),
                detail: format!("HTTP {status}: {}", service_message(&text)),
            });
        }
        if !status.is_success() {
            return Err(SkrError::MaaRefused {
                url: url.to_owned(),
                status: status.as_u16(),
                message: service_message(&text),
            });
        }
        Ok(text)
    }

    /// Sends SNP evidence and runtime data; returns the MAA token (a JWT, treated as opaque).
    pub async fn attest_sev_snp_vm(
        &self,
        evidence: &SnpEvidence,
        runtime_data: &[u8],
    ) -> Result<Zeroizing<String>, SkrError> {
        let url = format!(
            "{}/attest/SevSnpVm?api-version={MAA_API_VERSION}",
            self.base
        );
        let body = maa_request_body(evidence, runtime_data, rand::random());
        let text = self.post(&url, body).await?;
        let parsed: MaaResponse =
            serde_json::from_str(&text).map_err(|e| SkrError::MaaResponse(e.to_string()))?;
        let token = Zeroizing::new(parsed.token);
        check_token_fresh(&url, &token, SystemTime::now())?;
        Ok(token)
    }
}

/// The `exp` claim of a JWT (seconds since the epoch), read without checking the signature:
/// verifying the token is AKV's job; init only declines to present one that cannot pass.
pub fn token_expiry(token: &str) -> Result<i64, SkrError> {
    #[derive(Deserialize)]
    struct Claims {
        exp: Option<i64>,
    }
    let payload = token
        .split('.')
        .nth(1)
        .ok_or_else(|| SkrError::MaaResponse("the token is not a JWT (no payload part)".into()))?;
    let bytes = URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .map_err(|e| SkrError::MaaResponse(format!("token payload is not base64url: {e}")))?;
    let claims: Claims = serde_json::from_slice(&bytes)
        .map_err(|e| SkrError::MaaResponse(format!("token payload is not JSON claims: {e}")))?;
    claims
        .exp
        .ok_or_else(|| SkrError::MaaResponse("the token has no exp claim".into()))
}

/// Refuses a token from `url` whose `exp` is not at least [`MIN_TOKEN_VALIDITY`] after `now`.
pub fn check_token_fresh(url: &str, token: &str, now: SystemTime) -> Result<(), SkrError> {
    let exp = token_expiry(token)?;
    let now = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    let needed = i64::try_from(MIN_TOKEN_VALIDITY.as_secs()).unwrap_or(i64::MAX);
    if exp.saturating_sub(now) < needed {
        return Err(SkrError::TokenExpired {
            url: url.to_owned(),
            exp,
            now,
        });
    }
    Ok(())
}

fn expiry_phrase(exp: i64, now: i64) -> String {
    if exp <= now {
        format!("expired {} s ago", now.saturating_sub(exp))
    } else {
        format!("expires in {} s", exp.saturating_sub(now))
    }
}

/// The `error.message` of an Azure error body, or the body itself (truncated).
pub(crate) fn service_message(body: &str) -> String {
    #[derive(Deserialize)]
    struct Outer {
        error: Inner,
    }
    #[derive(Deserialize)]
    struct Inner {
        code: Option<String>,
        message: Option<String>,
    }
    match serde_json::from_str::<Outer>(body) {
        Ok(Outer { error }) => match (error.code, error.message) {
            (Some(c), Some(m)) => format!("{c}: {m}"),
            (None, Some(m)) => m,
            (Some(c), None) => c,
            (None, None) => body.chars().take(300).collect(),
        },
        Err(_) => body.chars().take(300).collect(),
    }
}

pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[derive(Deserialize)]
struct JwsHeader {
    alg: String,
    #[serde(default)]
    x5c: Vec<String>,
}

/// Verifies the release response's JWS (compact form) and returns its payload JSON.
///
/// The `x5c` chain must verify to one of `roots` at `now` for server authentication and name
/// `vault_host`; the JWS must be signed by the chain's leaf (RS256/384/512 or PS256/384/512).
pub fn verify_release_jws(
    jws: &str,
    roots: &[CertificateDer<'static>],
    vault_host: &str,
    now: UnixTime,
) -> Result<serde_json::Value, SkrError> {
    let mut parts = jws.split('.');
    let (Some(h64), Some(p64), Some(s64), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(SkrError::Malformed(
            "not a compact JWS of three parts".into(),
        ));
    };
    let header: JwsHeader = serde_json::from_slice(&b64url(h64, "JWS header")?)
        .map_err(|e| SkrError::Malformed(format!("JWS header: {e}")))?;
    let payload = b64url(p64, "JWS payload")?;
    let signature = b64url(s64, "JWS signature")?;
    let chain = header
        .x5c
        .iter()
        .map(|c| {
            STANDARD
                .decode(c)
                .map(CertificateDer::from)
                .map_err(|e| SkrError::Malformed(format!("x5c entry: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let Some((leaf, intermediates)) = chain.split_first() else {
        return Err(SkrError::Malformed("JWS header has no x5c chain".into()));
    };

    let chain_err = |detail: String| SkrError::Chain {
        host: vault_host.to_owned(),
        detail,
    };
    let anchors = roots
        .iter()
        .filter_map(|r| webpki::anchor_from_trusted_cert(r).ok())
        .collect::<Vec<_>>();
    if anchors.is_empty() {
        return Err(chain_err("no usable trust anchors configured".into()));
    }
    let ee = webpki::EndEntityCert::try_from(leaf).map_err(|e| chain_err(e.to_string()))?;
    ee.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        &anchors,
        intermediates,
        now,
        webpki::KeyUsage::server_auth(),
        None,
        None,
    )
    .map_err(|e| chain_err(e.to_string()))?;
    let name = ServerName::try_from(vault_host.to_owned())
        .map_err(|e| chain_err(format!("vault host {vault_host:?}: {e}")))?;
    ee.verify_is_valid_for_subject_name(&name)
        .map_err(|e| chain_err(e.to_string()))?;

    let alg: &dyn rustls_pki_types::SignatureVerificationAlgorithm = match header.alg.as_str() {
        "RS256" => webpki::aws_lc_rs::RSA_PKCS1_2048_8192_SHA256,
        "RS384" => webpki::aws_lc_rs::RSA_PKCS1_2048_8192_SHA384,
        "RS512" => webpki::aws_lc_rs::RSA_PKCS1_2048_8192_SHA512,
        "PS256" => webpki::aws_lc_rs::RSA_PSS_2048_8192_SHA256_LEGACY_KEY,
        "PS384" => webpki::aws_lc_rs::RSA_PSS_2048_8192_SHA384_LEGACY_KEY,
        "PS512" => webpki::aws_lc_rs::RSA_PSS_2048_8192_SHA512_LEGACY_KEY,
        other => {
            return Err(SkrError::Malformed(format!(
                "JWS alg {other:?} is not an RSA algorithm AKV uses"
            )))
        }
    };
    let signed = format!("{h64}.{p64}");
    ee.verify_signature(alg, signed.as_bytes(), &signature)
        .map_err(|_| SkrError::Signature {
            alg: header.alg.clone(),
        })?;
    serde_json::from_slice(&payload).map_err(|e| SkrError::Malformed(format!("JWS payload: {e}")))
}

fn b64url(s: &str, what: &str) -> Result<Vec<u8>, SkrError> {
    // AKV uses unpadded base64url; accept padding too.
    URL_SAFE_NO_PAD
        .decode(s.trim_end_matches('='))
        .map_err(|e| SkrError::Malformed(format!("{what} is not base64url: {e}")))
}

/// Turns released key material (as unwrapped) into the master secret, per `docs/pki.md`.
pub fn master_secret_from_release(kty: &str, plaintext: &[u8]) -> Result<MasterSecret, SkrError> {
    let family = VaultKeyType::from_kty(kty).map_err(|e| SkrError::Material(e.to_string()))?;
    let material: Zeroizing<Vec<u8>> = match family {
        VaultKeyType::Oct => Zeroizing::new(plaintext.to_vec()),
        VaultKeyType::Rsa => {
            use rsa::pkcs8::DecodePrivateKey;
            let key = rsa::RsaPrivateKey::from_pkcs8_der(plaintext)
                .map_err(|e| SkrError::Material(format!("RSA key is not PKCS#8: {e}")))?;
            Zeroizing::new(key.d().to_bytes_be())
        }
        VaultKeyType::Ec => {
            use p256::pkcs8::DecodePrivateKey;
            if let Ok(k) = p256::SecretKey::from_pkcs8_der(plaintext) {
                Zeroizing::new(k.to_bytes().to_vec())
            } else if let Ok(k) = p384::SecretKey::from_pkcs8_der(plaintext) {
                Zeroizing::new(k.to_bytes().to_vec())
            } else {
                return Err(SkrError::Material(
                    "EC key is not a PKCS#8 P-256 or P-384 key".into(),
                ));
            }
        }
    };
    MasterSecret::from_vault_key(family, &material).map_err(|e| SkrError::Material(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_data_binds_the_runtime_data() {
        let rd = report_data_for(b"{\"keys\":[]}");
        assert_eq!(&rd[..32], &Sha256::digest(b"{\"keys\":[]}")[..]);
        assert_eq!(&rd[32..], &[0u8; 32]);
    }

    #[test]
    fn maa_body_has_the_wire_fields() {
        let ev = SnpEvidence {
            report: vec![1, 2, 3],
            cert_chain_pem: "PEM".into(),
        };
        let body: serde_json::Value =
            serde_json::from_slice(&maa_request_body(&ev, b"{}", 5)).unwrap();
        assert_eq!(body["runtimeData"]["dataType"], "JSON");
        assert_eq!(body["nonce"], 5);
        let report = URL_SAFE_NO_PAD
            .decode(body["report"].as_str().unwrap())
            .unwrap();
        let report: serde_json::Value = serde_json::from_slice(&report).unwrap();
        assert_eq!(report["SnpReport"], "AQID");
        assert_eq!(report["VcekCertChain"], "UEVN");
    }

    #[test]
    fn service_messages_are_extracted() {
        assert_eq!(
            service_message(r#"{"error":{"code":"Forbidden","message":"no access"}}"#),
            "Forbidden: no access"
        );
        assert_eq!(service_message("plain"), "plain");
    }

    fn jwt(claims: &serde_json::Value) -> String {
        format!(
            "{}.{}.c2ln",
            URL_SAFE_NO_PAD.encode(br#"{"alg":"RS256","typ":"JWT"}"#),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        )
    }

    #[test]
    fn expired_and_nearly_expired_tokens_are_refused_as_transient() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let fresh = jwt(&serde_json::json!({"exp": 1_000_000 + 8 * 3600}));
        check_token_fresh("u", &fresh, now).unwrap();
        for (exp, phrase) in [
            (1_000_000 - 3600, "expired 3600 s ago"),
            (1_000_000, "expired 0 s ago"),
            (1_000_000 + 299, "expires in 299 s"),
        ] {
            let err =
                check_token_fresh("u", &jwt(&serde_json::json!({ "exp": exp })), now).unwrap_err();
            assert!(matches!(err, SkrError::TokenExpired { .. }), "{err}");
            assert!(err.is_transient());
            assert!(err.to_string().contains(phrase), "{err}");
        }
        check_token_fresh("u", &jwt(&serde_json::json!({"exp": 1_000_000 + 300})), now).unwrap();
    }

    #[test]
    fn a_token_without_exp_or_claims_is_not_a_token() {
        let now = SystemTime::now();
        for token in [
            jwt(&serde_json::json!({"iat": 1})),
            "no-dots".to_owned(),
            "a.!!!.c".to_owned(),
            format!("a.{}.c", URL_SAFE_NO_PAD.encode("not json")),
        ] {
            let err = check_token_fresh("u", &token, now).unwrap_err();
            assert!(matches!(err, SkrError::MaaResponse(_)), "{token}: {err}");
            assert!(!err.is_transient());
        }
    }

    #[test]
    fn malformed_jws_is_refused() {
        let err = verify_release_jws("a.b", &[], "v", UnixTime::now()).unwrap_err();
        assert!(matches!(err, SkrError::Malformed(_)));
    }
}
