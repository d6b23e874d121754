//! TEST DOUBLE of Microsoft Azure Attestation and of Azure Key Vault's key release, speaking
//! their wire formats over real HTTPS on loopback. Nothing else in these tests is a double.
//!
//! - `POST /attest/SevSnpVm?api-version=…` takes `{"report": b64url(JSON{SnpReport,
//!   VcekCertChain}), "runtimeData": {"data", "dataType": "JSON"}, "nonce"}`, checks that the
//!   report's `report_data` is SHA-256(runtime data) ‖ 0³², and answers `{"token": JWT}`: an
//!   RS256 JWT signed by a test key, carrying `x-ms-runtime` (the runtime data, with its
//!   `keys`), `x-ms-attestation-type` and `x-ms-sevsnpvm-hostdata`, valid for 8 hours from
//!   `iat` as MAA's are; told to (`Behaviour::expired_tokens`), it issues tokens whose `exp`
//!   is an hour past, as a token issued 9 hours ago carries.
//! - `GET /certs` serves that key as a JWKS.
//! - `POST /keys/{name}/{version}/release?api-version=…` first answers 401 with AKV's bearer
//!   challenge; with a token, it takes `{"target": JWT, "enc"}`, fetches `/certs` over HTTPS to
//!   verify the JWT, refuses an expired one as AKV does (403 `Forbidden`, "Target environment
//!   attestation statement cannot be verified.", inner `AccessDenied`: the body AKV returns for
//!   an attestation token it cannot accept, as recorded in the Azure SDK for .NET's Key Vault
//!   tests), applies a host-data policy, wraps the held key to the JWK in
//!   `x-ms-runtime.keys` (`CKM_RSA_AES_KEY_WRAP`: RSA-OAEP-SHA1 of an AES-256 KEK, then AES-KWP)
//!   and answers `{"value": JWS}`, an RS256 JWS whose `x5c` chain names `localhost`.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use aes_kw::KeyInit as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::{Request, Response, StatusCode};
use rsa::pkcs8::EncodePrivateKey as _;
use rsa::traits::PublicKeyParts as _;
use rustls_pki_types::CertificateDer;
use sha2::{Digest as _, Sha256};

/// A test PKI: a root, the double's TLS certificate and the AKV release signing certificate.
pub struct TestPki {
    /// The root CA (PEM), to be trusted by the client.
    pub root_pem: String,
    /// The root CA (DER).
    pub root_der: CertificateDer<'static>,
    tls_chain: Vec<CertificateDer<'static>>,
    tls_key: rustls_pki_types::PrivateKeyDer<'static>,
    /// The release JWS signer and its certificate (DER), chained to `root`.
    jws_key: rsa::RsaPrivateKey,
    jws_cert: Vec<u8>,
}

fn rsa_key() -> rsa::RsaPrivateKey {
    rsa::RsaPrivateKey::new(&mut rand::rngs::OsRng, 2048).unwrap()
}

impl TestPki {
    /// Makes a fresh root, a TLS leaf for localhost/127.0.0.1 and an RSA JWS signing leaf.
    pub fn new() -> Self {
        let root_key = rcgen::KeyPair::generate().unwrap();
        let mut root_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        root_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        root_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "Test Double Root");
        let root = root_params.self_signed(&root_key).unwrap();
        let issuer = rcgen::Issuer::new(root_params, root_key);

        let tls_key = rcgen::KeyPair::generate().unwrap();
        let tls_params =
            rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
        let tls = tls_params.signed_by(&tls_key, &issuer).unwrap();

        let jws_key = rsa_key();
        let pkcs8 = jws_key.to_pkcs8_der().unwrap();
        let jws_kp = rcgen::KeyPair::from_pkcs8_der_and_sign_algo(
            &rustls_pki_types::PrivatePkcs8KeyDer::from(pkcs8.as_bytes()),
            &rcgen::PKCS_RSA_SHA256,
        )
        .unwrap();
        let mut jws_params = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap();
        jws_params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let jws_cert = jws_params.signed_by(&jws_kp, &issuer).unwrap();

        Self {
            root_pem: root.pem(),
            root_der: root.der().clone(),
            tls_chain: vec![tls.der().clone(), root.der().clone()],
            tls_key: rustls_pki_types::PrivateKeyDer::Pkcs8(tls_key.serialize_der().into()),
            jws_key,
            jws_cert: jws_cert.der().to_vec(),
        }
    }
}

/// The key the double's "vault" holds and releases.
#[derive(Clone)]
pub enum HeldKey {
    /// An `RSA-HSM` key; released as PKCS#8.
    Rsa(Box<rsa::RsaPrivateKey>),
    /// An `oct-HSM` key; released raw.
    Oct(Vec<u8>),
}

/// What the double does; tests adjust it between calls.
pub struct Behaviour {
    /// Status codes to answer MAA requests with before succeeding (e.g. 503, 429).
    pub maa_failures: VecDeque<u16>,
    /// How many MAA answers carry an expired token before valid ones (`u32::MAX`: all).
    pub expired_tokens: u32,
    /// Release requests refused because their attestation token had expired.
    pub expired_refused: u32,
    /// If set, the release policy requires this `x-ms-sevsnpvm-hostdata`.
    pub required_host_data: Option<String>,
    /// Sign the release JWS with an unrelated key (signature must fail).
    pub wrong_jws_signer: bool,
    /// Flip a byte of the payload after signing.
    pub tamper_payload: bool,
    /// Requests seen, as `METHOD path`.
    pub seen: Vec<String>,
}

/// A running double.
pub struct Double {
    /// `https://localhost:PORT`.
    pub base: String,
    /// Shared behaviour.
    pub behaviour: Arc<Mutex<Behaviour>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Double {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct State {
    pki: Arc<TestPki>,
    maa_key: rsa::RsaPrivateKey,
    held: HeldKey,
    base: String,
    http: reqwest::Client,
    behaviour: Arc<Mutex<Behaviour>>,
    hook: Option<RouteHook>,
}

/// A request offered to a [`RouteHook`] before the built-in routes.
pub struct HookRequest<'a> {
    /// `POST`, `GET`, …
    pub method: &'a str,
    /// The path, without the query.
    pub path: &'a str,
    /// The request body.
    pub body: &'a [u8],
    /// Signs MAA tokens with the key `/certs` serves (so the release side accepts them).
    pub signer: MaaSigner<'a>,
}

/// The double's MAA token signer.
pub struct MaaSigner<'a> {
    key: &'a rsa::RsaPrivateKey,
    base: &'a str,
}

impl MaaSigner<'_> {
    /// The issuer (`https://localhost:PORT`).
    pub fn issuer(&self) -> &str {
        self.base
    }

    /// An RS256 JWT over `claims`, with MAA's header (`kid`, `jku` = `/certs`).
    pub fn sign(&self, claims: &serde_json::Value) -> String {
        let header = serde_json::json!({"alg": "RS256", "kid": "maa-test-key", "typ": "JWT",
            "jku": format!("{}/certs", self.base)});
        sign_compact(&header, claims.to_string().as_bytes(), self.key)
    }
}

/// Extra routes (another MAA endpoint, e.g. `attest/AzureGuest` in `guest_double.rs`): answers
/// `Some` to take the request, `None` to leave it to the built-in routes.
pub type RouteHook = Arc<dyn Fn(&HookRequest<'_>) -> Option<Response<Full<Bytes>>> + Send + Sync>;

impl Double {
    /// Binds `127.0.0.1:0` and serves until dropped.
    pub async fn start(pki: Arc<TestPki>, held: HeldKey) -> Self {
        Self::start_with_hook(pki, held, None).await
    }

    /// Like [`Double::start`], with extra routes tried first.
    pub async fn start_with_hook(
        pki: Arc<TestPki>,
        held: HeldKey,
        hook: Option<RouteHook>,
    ) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let base = format!("https://localhost:{}", addr.port());
        let config = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(pki.tls_chain.clone(), pki.tls_key.clone_key())
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let http = reqwest::Client::builder()
            .tls_certs_only([reqwest::Certificate::from_der(&pki.root_der).unwrap()])
            .build()
            .unwrap();
        let behaviour = Arc::new(Mutex::new(Behaviour {
            maa_failures: VecDeque::new(),
            expired_tokens: 0,
            expired_refused: 0,
            required_host_data: None,
            wrong_jws_signer: false,
            tamper_payload: false,
            seen: Vec::new(),
        }));
        let state = Arc::new(State {
            pki,
            maa_key: rsa_key(),
            held,
            base: base.clone(),
            http,
            behaviour: behaviour.clone(),
            hook,
        });
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let acceptor = acceptor.clone();
                let state = state.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = hyper::service::service_fn(move |req| {
                        let state = state.clone();
                        async move { Ok::<_, std::convert::Infallible>(handle(&state, req).await) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .await;
                });
            }
        });
        Self {
            base,
            behaviour,
            task,
        }
    }
}

fn json(status: StatusCode, value: &serde_json::Value) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json; charset=utf-8")
        .body(Full::new(Bytes::from(value.to_string())))
        .unwrap()
}

fn azure_error(status: StatusCode, code: &str, message: &str) -> Response<Full<Bytes>> {
    json(
        status,
        &serde_json::json!({"error": {"code": code, "message": message}}),
    )
}

async fn handle(state: &State, req: Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_owned();
    let method = req.method().clone();
    state
        .behaviour
        .lock()
        .unwrap()
        .seen
        .push(format!("{method} {path}"));
    let authorized = req.headers().get("authorization").is_some();
    let body = req.into_body().collect().await.unwrap().to_bytes();
    if let Some(hook) = &state.hook {
        let request = HookRequest {
            method: method.as_str(),
            path: &path,
            body: &body,
            signer: MaaSigner {
                key: &state.maa_key,
                base: &state.base,
            },
        };
        if let Some(response) = hook(&request) {
            return response;
        }
    }
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (method.as_str(), segments.as_slice()) {
        ("POST", ["attest", "SevSnpVm"]) => maa_attest(state, &body),
        ("GET", ["certs"]) => json(StatusCode::OK, &maa_jwks(state)),
        ("POST", ["keys", name, version, "release"]) => {
            if !authorized {
                return Response::builder()
                    .status(StatusCode::UNAUTHORIZED)
                    .header(
                        "www-authenticate",
                        r#"Bearer authorization="https://login.microsoftonline.com/tenant", resource="https://vault.azure.net""#,
                    )
                    .body(Full::new(Bytes::new()))
                    .unwrap();
            }
            release(state, name, version, &body).await
        }
        _ => azure_error(
            StatusCode::NOT_FOUND,
            "NotFound",
            "no such route in the test double",
        ),
    }
}

fn maa_jwks(state: &State) -> serde_json::Value {
    let public = state.maa_key.to_public_key();
    serde_json::json!({"keys": [{
        "kty": "RSA", "kid": "maa-test-key", "alg": "RS256", "use": "sig",
        "n": URL_SAFE_NO_PAD.encode(public.n().to_bytes_be()),
        "e": URL_SAFE_NO_PAD.encode(public.e().to_bytes_be()),
    }]})
}

fn b64url(value: &serde_json::Value) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD
        .decode(value.as_str()?.trim_end_matches('='))
        .ok()
}

fn maa_attest(state: &State, body: &[u8]) -> Response<Full<Bytes>> {
    if let Some(status) = state.behaviour.lock().unwrap().maa_failures.pop_front() {
        return azure_error(
            StatusCode::from_u16(status).unwrap(),
            "ServiceUnavailable",
            "test double: transient failure",
        );
    }
    let bad = |m: &str| azure_error(StatusCode::BAD_REQUEST, "InvalidParameter", m);
    let Ok(request) = serde_json::from_slice::<serde_json::Value>(body) else {
        return bad("body is not JSON");
    };
    let Some(report) = b64url(&request["report"]) else {
        return bad("report is not base64url");
    };
    let Ok(report) = serde_json::from_slice::<serde_json::Value>(&report) else {
        return bad("report is not JSON");
    };
    let (Some(snp), Some(chain)) = (
        b64url(&report["SnpReport"]),
        b64url(&report["VcekCertChain"]),
    ) else {
        return bad("SnpReport or VcekCertChain missing");
    };
    if snp.len() != 1184 || !String::from_utf8_lossy(&chain).contains("BEGIN CERTIFICATE") {
        return bad("not an SNP report with a VCEK chain");
    }
    if request["runtimeData"]["dataType"] != "JSON" {
        return bad("runtimeData.dataType must be JSON");
    }
    let Some(runtime) = b64url(&request["runtimeData"]["data"]) else {
        return bad("runtimeData.data is not base64url");
    };
    // report_data is at offset 0x50 of the SNP report.
    let mut expected = [0u8; 64];
    expected[..32].copy_from_slice(&Sha256::digest(&runtime));
    if snp[0x50..0x90] != expected {
        return bad("report_data does not match SHA-256 of runtimeData");
    }
    let Ok(runtime) = serde_json::from_slice::<serde_json::Value>(&runtime) else {
        return bad("runtimeData is not JSON");
    };
    let expired = {
        let mut b = state.behaviour.lock().unwrap();
        let expired = b.expired_tokens > 0;
        if expired && b.expired_tokens != u32::MAX {
            b.expired_tokens -= 1;
        }
        expired
    };
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let iat = if expired { now - 9 * HOUR } else { now };
    let claims = serde_json::json!({
        "iss": state.base, "iat": iat, "nbf": iat, "exp": iat + MAA_TOKEN_LIFETIME,
        "x-ms-attestation-type": "sevsnpvm",
        "x-ms-compliance-status": "azure-compliant-uvm",
        "x-ms-sevsnpvm-hostdata": hex::encode(&snp[0xC0..0xE0]),
        "x-ms-sevsnpvm-is-debuggable": false,
        "x-ms-runtime": runtime,
        "x-ms-ver": "1.0",
    });
    let header = serde_json::json!({"alg": "RS256", "kid": "maa-test-key", "typ": "JWT",
        "jku": format!("{}/certs", state.base)});
    let token = sign_compact(&header, claims.to_string().as_bytes(), &state.maa_key);
    json(StatusCode::OK, &serde_json::json!({ "token": token }))
}

/// MAA's tokens are valid for 8 hours from `iat`.
const MAA_TOKEN_LIFETIME: i64 = 8 * HOUR;
const HOUR: i64 = 3600;

/// AKV's answer to a release whose attestation token it cannot accept (expired included).
fn attestation_refused() -> Response<Full<Bytes>> {
    json(
        StatusCode::FORBIDDEN,
        &serde_json::json!({"error": {
            "code": "Forbidden",
            "message": "Target environment attestation statement cannot be verified.",
            "innererror": {"code": "AccessDenied"},
        }}),
    )
}

fn sign_compact(header: &serde_json::Value, payload: &[u8], key: &rsa::RsaPrivateKey) -> String {
    use rsa::signature::{SignatureEncoding as _, Signer as _};
    let signing = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(payload)
    );
    let signer = rsa::pkcs1v15::SigningKey::<Sha256>::new(key.clone());
    let sig = signer.sign(signing.as_bytes()).to_bytes();
    format!("{signing}.{}", URL_SAFE_NO_PAD.encode(sig))
}

/// Verifies an RS256 JWT against a JWKS fetched from the issuer's `/certs`.
async fn verify_maa_token(state: &State, token: &str) -> Result<serde_json::Value, String> {
    use rsa::signature::Verifier as _;
    let parts: Vec<&str> = token.split('.').collect();
    let [head, body, sig] = parts.as_slice() else {
        return Err("token is not a JWS".into());
    };
    let header: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(head).map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    let jwks: serde_json::Value = state
        .http
        .get(format!("{}/certs", state.base))
        .send()
        .await
        .map_err(|e| e.to_string())?
        .json_value()
        .await?;
    let jwk = jwks["keys"]
        .as_array()
        .and_then(|keys| keys.iter().find(|k| k["kid"] == header["kid"]))
        .ok_or("unknown kid")?;
    let modulus = rsa::BigUint::from_bytes_be(&b64url(&jwk["n"]).ok_or("bad n")?);
    let exponent = rsa::BigUint::from_bytes_be(&b64url(&jwk["e"]).ok_or("bad e")?);
    let key = rsa::RsaPublicKey::new(modulus, exponent).map_err(|e| e.to_string())?;
    let signature = rsa::pkcs1v15::Signature::try_from(
        URL_SAFE_NO_PAD
            .decode(sig)
            .map_err(|e| e.to_string())?
            .as_slice(),
    )
    .map_err(|e| e.to_string())?;
    rsa::pkcs1v15::VerifyingKey::<Sha256>::new(key)
        .verify(format!("{head}.{body}").as_bytes(), &signature)
        .map_err(|_| "MAA token signature invalid".to_string())?;
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(body).map_err(|e| e.to_string())?)
        .map_err(|e| e.to_string())
}

trait JsonValue {
    async fn json_value(self) -> Result<serde_json::Value, String>;
}

impl JsonValue for reqwest::Response {
    async fn json_value(self) -> Result<serde_json::Value, String> {
        let text = self.text().await.map_err(|e| e.to_string())?;
        serde_json::from_str(&text).map_err(|e| e.to_string())
    }
}

#[allow(clippy::too_many_lines)] // one wire exchange, read top to bottom
async fn release(state: &State, name: &str, version: &str, body: &[u8]) -> Response<Full<Bytes>> {
    let Ok(request) = serde_json::from_slice::<serde_json::Value>(body) else {
        return azure_error(StatusCode::BAD_REQUEST, "BadParameter", "body is not JSON");
    };
    let Some(target) = request["target"].as_str() else {
        return azure_error(
            StatusCode::BAD_REQUEST,
            "BadParameter",
            "target is required",
        );
    };
    let claims = match verify_maa_token(state, target).await {
        Ok(c) => c,
        Err(e) => {
            return azure_error(
                StatusCode::BAD_REQUEST,
                "BadParameter",
                &format!("attestation token: {e}"),
            )
        }
    };
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let in_validity = claims["exp"].as_i64().is_some_and(|exp| now < exp)
        && claims["nbf"].as_i64().is_none_or(|nbf| nbf <= now);
    if !in_validity {
        state.behaviour.lock().unwrap().expired_refused += 1;
        return attestation_refused();
    }
    let (required, wrong_signer, tamper) = {
        let b = state.behaviour.lock().unwrap();
        (
            b.required_host_data.clone(),
            b.wrong_jws_signer,
            b.tamper_payload,
        )
    };
    // Guest-attestation (vTPM) tokens carry the SNP claims under `x-ms-isolation-tee`.
    let tee = if claims["x-ms-isolation-tee"].is_object() {
        &claims["x-ms-isolation-tee"]
    } else {
        &claims
    };
    if tee["x-ms-attestation-type"] != "sevsnpvm"
        || required.is_some_and(|r| tee["x-ms-sevsnpvm-hostdata"] != r.as_str())
    {
        return azure_error(
            StatusCode::FORBIDDEN,
            "AccessDenied",
            "Target environment attestation statement cannot be verified against the key's release policy",
        );
    }
    let jwk = &claims["x-ms-runtime"]["keys"][0];
    let (Some(n), Some(e)) = (b64url(&jwk["n"]), b64url(&jwk["e"])) else {
        return azure_error(
            StatusCode::BAD_REQUEST,
            "BadParameter",
            "no RSA key in x-ms-runtime.keys",
        );
    };
    let Ok(transfer) = rsa::RsaPublicKey::new(
        rsa::BigUint::from_bytes_be(&n),
        rsa::BigUint::from_bytes_be(&e),
    ) else {
        return azure_error(StatusCode::BAD_REQUEST, "BadParameter", "bad transfer key");
    };
    let (kty, plaintext) = match &state.held {
        HeldKey::Rsa(k) => ("RSA-HSM", k.to_pkcs8_der().unwrap().as_bytes().to_vec()),
        HeldKey::Oct(k) => ("oct-HSM", k.clone()),
    };
    let kek: [u8; 32] = rand::random();
    let mut ciphertext = transfer
        .encrypt(&mut rand::rngs::OsRng, rsa::Oaep::new::<sha1::Sha1>(), &kek)
        .unwrap();
    let mut buf = vec![0u8; plaintext.len() + 16];
    let wrapped = aes_kw::KwpAes256::new_from_slice(&kek)
        .unwrap()
        .wrap_key(&plaintext, &mut buf)
        .unwrap();
    ciphertext.extend_from_slice(wrapped);
    let kid = format!("{}/keys/{name}/{version}", state.base);
    let key_hsm = serde_json::json!({
        "schema_version": "1.0",
        "header": {"kid": "TpmEphemeralEncryptionKey", "alg": "dir", "enc": "CKM_RSA_AES_KEY_WRAP"},
        "ciphertext": URL_SAFE_NO_PAD.encode(&ciphertext),
    });
    let payload = serde_json::json!({
        "request": {"api-version": "7.4", "enc": "CKM_RSA_AES_KEY_WRAP", "kid": kid},
        "response": {"key": {
            "attributes": {"enabled": true, "exportable": true, "recoveryLevel": "Recoverable"},
            "key": {"kid": kid, "kty": kty, "key_ops": ["wrapKey", "unwrapKey"],
                    "key_hsm": URL_SAFE_NO_PAD.encode(key_hsm.to_string())},
            "release_policy": {"contentType": "application/json; charset=utf-8", "data": ""},
        }},
    });
    let header = serde_json::json!({
        "alg": "RS256", "kid": kid,
        "x5c": [STANDARD.encode(&state.pki.jws_cert), STANDARD.encode(state.pki.root_der.as_ref())],
        "x5t#S256": URL_SAFE_NO_PAD.encode(Sha256::digest(&state.pki.jws_cert)),
    });
    let signer = if wrong_signer {
        rsa_key()
    } else {
        state.pki.jws_key.clone()
    };
    let mut jws = sign_compact(&header, payload.to_string().as_bytes(), &signer);
    if tamper {
        let parts: Vec<&str> = jws.split('.').collect();
        let mut p = URL_SAFE_NO_PAD.decode(parts[1]).unwrap();
        let at = p.len() / 2;
        p[at] ^= 0x01;
        jws = format!("{}.{}.{}", parts[0], URL_SAFE_NO_PAD.encode(p), parts[2]);
    }
    json(StatusCode::OK, &serde_json::json!({ "value": jws }))
}
