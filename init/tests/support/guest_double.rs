//! TEST DOUBLE of Microsoft Azure Attestation's guest attestation, `POST /attest/AzureGuest`,
//! plugged into the MAA + key-release double (`double.rs`) as a route hook, so its tokens are
//! signed by the key `/certs` serves and accepted by that double's key release.
//!
//! Wire format as Azure's CVM guest attestation library speaks it (see `skr::guest`): the body
//! `{"AttestationInfo": b64url(JSON)}`, the answer `{"token": b64url(JSON{Jwt,
//! EncryptedInnerKey, EncryptionParams{Iv}, AuthenticationData})}`, the JWT AES-256-GCM
//! encrypted (additional data `Transport Key`) under a key RSA-PKCS#1-encrypted to `EncKeyPub`.
//!
//! It checks what MAA checks that can be checked offline, and refuses with HTTP 400 and an
//! Azure error body naming the first failure:
//! - the SNP report verifies under its VCEK chain (the simulated AMD chain is trusted here, as
//!   MAA trusts AMD's) and its `report_data[0..32]` is SHA-256 of `RunTimeData`;
//! - `AikPub` is the `HCLAkPub` JWK of `RunTimeData` (the AK the paravisor vouches for);
//! - `PcrQuote` is a quote signed by that AK (RSASSA-SHA256), its `extraData` is the
//!   `ClientPayload` nonce, a nonce not seen before, and its PCR selection and digest match
//!   `PcrSet` and `PCRs`;
//! - `EncKeyCertifyInfo` is a `TPM2_Certify` by the AK of exactly `EncKeyPub` (its name) over
//!   the same nonce, and `EncKeyPub` is an RSA-2048 decrypt-only key that cannot leave the TPM.
//!
//! The token's `x-ms-runtime.keys` holds `EncKeyPub` as `TpmEphemeralEncryptionKey`; the SNP
//! claims sit under `x-ms-isolation-tee`.

#![allow(unreachable_pub, clippy::unwrap_used)] // a test double: a panic is a failed test

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Response, StatusCode};
use rsa::signature::Verifier as _;
use sha2::{Digest as _, Sha256};
use tss_esapi::structures::{Attest, AttestInfo, Public};
use tss_esapi::traits::UnMarshall as _;

use crate::support::double::{HookRequest, MaaSigner, RouteHook};

/// What the guest MAA double has seen and decided.
#[derive(Default)]
pub struct GuestLog {
    /// Nonces of accepted attestations (a second use is refused).
    pub nonces: HashSet<Vec<u8>>,
    /// Bodies of every `attest/AzureGuest` request, in order.
    pub bodies: Vec<Vec<u8>>,
    /// Refusal messages, in order.
    pub refusals: Vec<String>,
    /// How many accepted attestations get a token issued 9 hours ago (expired: MAA's tokens
    /// live 8 hours) before valid ones (`u32::MAX`: all).
    pub expired_tokens: u32,
    /// The CA (DER) the AK certificate must chain to, as MAA requires Azure's vTPM CA; `None`
    /// accepts evidence without an AK certificate.
    pub ak_root: Option<Vec<u8>>,
}

/// The guest attestation double.
#[derive(Clone, Default)]
pub struct GuestMaa {
    /// Shared log.
    pub log: Arc<Mutex<GuestLog>>,
}

impl GuestMaa {
    /// The route hook to pass to `Double::start_with_hook`.
    pub fn hook(&self) -> RouteHook {
        let this = self.clone();
        Arc::new(move |req: &HookRequest<'_>| {
            (req.method == "POST" && req.path == "/attest/AzureGuest")
                .then(|| this.attest(req.body, &req.signer))
        })
    }

    fn attest(&self, body: &[u8], signer: &MaaSigner<'_>) -> Response<Full<Bytes>> {
        let ak_root = {
            let mut log = self.log.lock().unwrap();
            log.bodies.push(body.to_vec());
            log.ak_root.clone()
        };
        match Self::check(body, ak_root.as_deref()) {
            Ok(checked) => {
                let mut log = self.log.lock().unwrap();
                if !log.nonces.insert(checked.nonce.clone()) {
                    let message = "the quote's nonce was already used (replay)".to_owned();
                    log.refusals.push(message.clone());
                    return refused(&message);
                }
                let expired = log.expired_tokens > 0;
                if expired && log.expired_tokens != u32::MAX {
                    log.expired_tokens -= 1;
                }
                drop(log);
                respond(&checked, signer, expired)
            }
            Err(message) => {
                self.log.lock().unwrap().refusals.push(message.clone());
                refused(&message)
            }
        }
    }

    #[allow(clippy::too_many_lines)] // MAA's checks, one after another
    fn check(body: &[u8], ak_root: Option<&[u8]>) -> Result<Checked, String> {
        let request: serde_json::Value =
            serde_json::from_slice(body).map_err(|e| format!("body is not JSON: {e}"))?;
        let info = b64url(&request["AttestationInfo"], "AttestationInfo")?;
        let info: serde_json::Value =
            serde_json::from_slice(&info).map_err(|e| format!("AttestationInfo: {e}"))?;
        if info["AttestationProtocolVersion"] != "2.0" {
            return Err("AttestationProtocolVersion must be 2.0".into());
        }
        let nonce = b64(&info["ClientPayload"]["nonce"], "ClientPayload.nonce")?;
        if nonce.is_empty() {
            return Err("ClientPayload.nonce is empty".into());
        }

        // Isolation: the SNP report, its chain and its binding of the runtime claims.
        let isolation = &info["IsolationInfo"];
        if isolation["Type"] != "SevSnp" {
            return Err("IsolationInfo.Type must be SevSnp".into());
        }
        let proof = b64(&isolation["Evidence"]["Proof"], "Evidence.Proof")?;
        let proof: serde_json::Value =
            serde_json::from_slice(&proof).map_err(|e| format!("Evidence.Proof: {e}"))?;
        let snp = b64url(&proof["SnpReport"], "SnpReport")?;
        let chain = proof["VcekCertChain"]
            .as_str()
            .ok_or("VcekCertChain missing")?;
        let runtime = b64(&isolation["Evidence"]["RunTimeData"], "RunTimeData")?;
        let policy = enclaveid_attest_verifier::Policy {
            allow_simulated: true,
            ..enclaveid_attest_verifier::Policy::default()
        };
        let report = enclaveid_attest_verifier::verify::verify_report(
            &snp,
            chain.as_bytes(),
            b"",
            &policy,
            SystemTime::now(),
        );
        if !report.passed {
            return Err(format!("SNP report does not verify: {report}"));
        }
        if snp[0x50..0x70] != Sha256::digest(&runtime)[..] {
            return Err("report_data does not commit to RunTimeData".into());
        }
        let claims: serde_json::Value = serde_json::from_slice(&runtime)
            .map_err(|e| format!("RunTimeData is not JSON: {e}"))?;
        let hcl_ak = claims["keys"]
            .as_array()
            .and_then(|keys| keys.iter().find(|k| k["kid"] == "HCLAkPub"))
            .ok_or("RunTimeData has no HCLAkPub")?;
        let hcl_ak = rsa::RsaPublicKey::new(
            rsa::BigUint::from_bytes_be(&b64url(&hcl_ak["n"], "HCLAkPub.n")?),
            rsa::BigUint::from_bytes_be(&b64url(&hcl_ak["e"], "HCLAkPub.e")?),
        )
        .map_err(|e| format!("HCLAkPub: {e}"))?;

        // The AK.
        let tpm = &info["TpmInfo"];
        let (ak_public, _) = tpm2b_public(&b64(&tpm["AikPub"], "AikPub")?)?;
        let ak = rsa_key(&ak_public)?;
        if ak != hcl_ak {
            return Err("AikPub is not the HCLAkPub of the HCL runtime data".into());
        }
        if let Some(root) = ak_root {
            check_ak_cert(&b64(&tpm["AikCert"], "AikCert")?, root, &ak)?;
        }
        let ak = rsa::pkcs1v15::VerifyingKey::<Sha256>::new(ak);

        // The quote.
        let quote_raw = b64(&tpm["PcrQuote"], "PcrQuote")?;
        verify_by_ak(&ak, &quote_raw, &b64(&tpm["PcrSignature"], "PcrSignature")?)
            .map_err(|()| "PcrSignature does not verify under the AK".to_owned())?;
        let quote = Attest::unmarshall(&quote_raw).map_err(|e| format!("PcrQuote: {e}"))?;
        let AttestInfo::Quote { info: quoted } = quote.attested() else {
            return Err("PcrQuote is not a quote".into());
        };
        if quote.extra_data().value() != nonce.as_slice() {
            return Err(
                "the quote's extraData is not the ClientPayload nonce (stale quote)".into(),
            );
        }
        let pcr_set: Vec<u64> = tpm["PcrSet"]
            .as_array()
            .ok_or("PcrSet missing")?
            .iter()
            .filter_map(serde_json::Value::as_u64)
            .collect();
        let selected: Vec<u64> = quoted
            .pcr_selection()
            .get_selections()
            .iter()
            .flat_map(tss_esapi::structures::PcrSelection::selected)
            .map(|slot| u64::from(u32::from(slot).trailing_zeros()))
            .collect();
        if selected != pcr_set {
            return Err("the quote's PCR selection is not PcrSet".into());
        }
        let mut digest = Sha256::new();
        let pcrs = tpm["PCRs"].as_array().ok_or("PCRs missing")?;
        let mut pcr_values = Vec::new();
        for index in &pcr_set {
            let pcr = pcrs
                .iter()
                .find(|p| p["Index"].as_u64() == Some(*index))
                .ok_or(format!("PCR {index} missing"))?;
            let value = b64(&pcr["Digest"], "PCRs.Digest")?;
            digest.update(&value);
            pcr_values.push(value);
        }
        if quoted.pcr_digest().value() != &digest.finalize()[..] {
            return Err("the PCR values do not match the quote's PCR digest".into());
        }

        // The encryption key and its certification.
        let enc_raw = b64(&tpm["EncKeyPub"], "EncKeyPub")?;
        let (enc_public, enc_tpmt) = tpm2b_public(&enc_raw)?;
        let certify_raw = b64(&tpm["EncKeyCertifyInfo"], "EncKeyCertifyInfo")?;
        verify_by_ak(
            &ak,
            &certify_raw,
            &b64(
                &tpm["EncKeyCertifyInfoSignature"],
                "EncKeyCertifyInfoSignature",
            )?,
        )
        .map_err(|()| "EncKeyCertifyInfoSignature does not verify under the AK".to_owned())?;
        let certify =
            Attest::unmarshall(&certify_raw).map_err(|e| format!("EncKeyCertifyInfo: {e}"))?;
        let AttestInfo::Certify { info: certified } = certify.attested() else {
            return Err("EncKeyCertifyInfo is not a TPM2_Certify".into());
        };
        let mut name = vec![0x00, 0x0B];
        name.extend_from_slice(&Sha256::digest(enc_tpmt));
        if certified.name().value() != name.as_slice() {
            return Err("EncKeyPub is not the key the AK certified".into());
        }
        if certify.extra_data().value() != nonce.as_slice() {
            return Err("the certification's qualifying data is not the nonce".into());
        }
        let Public::Rsa {
            object_attributes: attributes,
            auth_policy,
            ..
        } = &enc_public
        else {
            return Err("EncKeyPub is not RSA".into());
        };
        if auth_policy.value() != pcr_policy(&pcr_set, &pcr_values) {
            return Err("EncKeyPub's policy does not bind the quoted PCR values".into());
        }
        if !(attributes.decrypt()
            && !attributes.sign_encrypt()
            && attributes.fixed_tpm()
            && attributes.fixed_parent()
            && attributes.sensitive_data_origin())
        {
            return Err("EncKeyPub is not a decrypt-only key bound to the TPM".into());
        }
        let enc_key = rsa_key(&enc_public)?;
        Ok(Checked {
            nonce,
            enc_key,
            runtime: claims,
            host_data: hex::encode(&snp[0xC0..0xE0]),
        })
    }
}

/// `PolicyPCR` from an empty policy over SHA-256 PCRs `set` with `values`: SHA-256(0³² ‖
/// `TPM_CC_PolicyPCR` ‖ `TPML_PCR_SELECTION` ‖ SHA-256(values)).
fn pcr_policy(set: &[u64], values: &[Vec<u8>]) -> Vec<u8> {
    let mut select = [0u8; 3];
    for &i in set {
        select[usize::try_from(i / 8).unwrap()] |= 1 << (i % 8);
    }
    let mut pcr_digest = Sha256::new();
    for v in values {
        pcr_digest.update(v);
    }
    let mut policy = Sha256::new();
    policy.update([0u8; 32]);
    policy.update(0x0000_017F_u32.to_be_bytes());
    policy.update(1u32.to_be_bytes());
    policy.update(0x000B_u16.to_be_bytes());
    policy.update([3u8]);
    policy.update(select);
    policy.update(pcr_digest.finalize());
    policy.finalize().to_vec()
}

/// The AK certificate must be issued by `root` for exactly the AK.
fn check_ak_cert(der: &[u8], root: &[u8], ak: &rsa::RsaPublicKey) -> Result<(), String> {
    use rsa::pkcs8::EncodePublicKey as _;
    if der.is_empty() {
        return Err("AikCert is empty".into());
    }
    let (_, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|e| format!("AikCert: {e}"))?;
    let (_, root) = x509_parser::parse_x509_certificate(root).unwrap();
    cert.verify_signature(Some(root.public_key()))
        .map_err(|_| "AikCert is not signed by the vTPM CA".to_owned())?;
    if cert.public_key().raw != ak.to_public_key_der().unwrap().as_bytes() {
        return Err("AikCert does not certify AikPub".into());
    }
    Ok(())
}

struct Checked {
    nonce: Vec<u8>,
    enc_key: rsa::RsaPublicKey,
    runtime: serde_json::Value,
    host_data: String,
}

fn refused(message: &str) -> Response<Full<Bytes>> {
    let body = serde_json::json!({"error": {"code": "InvalidParameter", "message": message}});
    Response::builder()
        .status(StatusCode::BAD_REQUEST)
        .header("content-type", "application/json; charset=utf-8")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

fn b64(value: &serde_json::Value, what: &str) -> Result<Vec<u8>, String> {
    STANDARD
        .decode(value.as_str().ok_or(format!("{what} missing"))?)
        .map_err(|e| format!("{what} is not base64: {e}"))
}

fn b64url(value: &serde_json::Value, what: &str) -> Result<Vec<u8>, String> {
    URL_SAFE_NO_PAD
        .decode(
            value
                .as_str()
                .ok_or(format!("{what} missing"))?
                .trim_end_matches('='),
        )
        .map_err(|e| format!("{what} is not base64url: {e}"))
}

/// `TPM2B_PUBLIC` → the public area and its `TPMT_PUBLIC` bytes.
fn tpm2b_public(raw: &[u8]) -> Result<(Public, &[u8]), String> {
    let (size, body) = raw.split_at_checked(2).ok_or("TPM2B_PUBLIC too short")?;
    if usize::from(u16::from_be_bytes([size[0], size[1]])) != body.len() {
        return Err("TPM2B_PUBLIC size does not match".into());
    }
    let public = Public::unmarshall(body).map_err(|e| format!("TPMT_PUBLIC: {e}"))?;
    Ok((public, body))
}

fn rsa_key(public: &Public) -> Result<rsa::RsaPublicKey, String> {
    let Public::Rsa {
        unique, parameters, ..
    } = public
    else {
        return Err("not an RSA key".into());
    };
    let exponent = match parameters.exponent().value() {
        0 => 65_537,
        e => e,
    };
    rsa::RsaPublicKey::new(
        rsa::BigUint::from_bytes_be(unique.value()),
        rsa::BigUint::from(exponent),
    )
    .map_err(|e| e.to_string())
}

fn verify_by_ak(
    ak: &rsa::pkcs1v15::VerifyingKey<Sha256>,
    message: &[u8],
    signature: &[u8],
) -> Result<(), ()> {
    let signature = rsa::pkcs1v15::Signature::try_from(signature).map_err(|_| ())?;
    ak.verify(message, &signature).map_err(|_| ())
}

/// The token: claims as MAA's guest attestation issues them, signed, then encrypted to the
/// TPM key.
fn respond(checked: &Checked, signer: &MaaSigner<'_>, expired: bool) -> Response<Full<Bytes>> {
    use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
    use rsa::traits::PublicKeyParts as _;
    let mut now = time::OffsetDateTime::now_utc().unix_timestamp();
    if expired {
        now -= 9 * 3600;
    }
    let jwk = serde_json::json!({
        "kid": "TpmEphemeralEncryptionKey", "kty": "RSA", "key_ops": ["encrypt"],
        "n": URL_SAFE_NO_PAD.encode(checked.enc_key.n().to_bytes_be()),
        "e": URL_SAFE_NO_PAD.encode(checked.enc_key.e().to_bytes_be()),
    });
    let claims = serde_json::json!({
        "iss": signer.issuer(), "iat": now, "nbf": now, "exp": now + 8 * 3600,
        "x-ms-attestation-type": "azurevm",
        "x-ms-isolation-tee": {
            "x-ms-attestation-type": "sevsnpvm",
            "x-ms-compliance-status": "azure-compliant-cvm",
            "x-ms-sevsnpvm-hostdata": checked.host_data,
            "x-ms-sevsnpvm-is-debuggable": false,
            "x-ms-runtime": checked.runtime,
        },
        "x-ms-runtime": {
            "keys": [jwk],
            "client-payload": { "nonce": STANDARD.encode(&checked.nonce) },
        },
        "x-ms-ver": "1.0",
    });
    let jwt = signer.sign(&claims);

    let key: [u8; 32] = rand::random();
    let iv: [u8; 12] = rand::random();
    let mut in_out = jwt.into_bytes();
    let sealing = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &key).unwrap());
    let tag = sealing
        .seal_in_place_separate_tag(
            Nonce::assume_unique_for_key(iv),
            Aad::from(b"Transport Key"),
            &mut in_out,
        )
        .unwrap();
    let inner = checked
        .enc_key
        .encrypt(&mut rand::rngs::OsRng, rsa::Pkcs1v15Encrypt, &key)
        .unwrap();
    let envelope = serde_json::json!({
        "Jwt": STANDARD.encode(&in_out),
        "EncryptedInnerKey": STANDARD.encode(inner),
        "EncryptionParams": { "Iv": STANDARD.encode(iv) },
        "AuthenticationData": STANDARD.encode(tag.as_ref()),
    });
    let body = serde_json::json!({ "token": URL_SAFE_NO_PAD.encode(envelope.to_string()) });
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json; charset=utf-8")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}
