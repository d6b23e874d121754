//! The production back-end: Azure Key Vault through the official 1.x crates.
//!
//! The master secret is an exportable key (default `RSA-HSM` 3072) behind a release policy;
//! it leaves AKV only through Secure Key Release, wrapped to an ephemeral key that an
//! attestation token vouches for (see [`crate::skr`]). The CA certificate is stored as a secret
//! (`application/x-pem-file`): AKV's certificate objects insist on holding the private key,
//! and this one is never stored anywhere. Transient failures are retried under a deadline.
//! Development clusters without a TEE use [`plain`] (`--no-skr`) instead: the master secret as
//! an ordinary secret, confidentiality off.

use std::sync::Arc;

use azure_core::credentials::TokenCredential;
use azure_core::http::{ClientOptions, RequestContent, RetryOptions, Transport};
use azure_security_keyvault_keys::models::{
    CreateKeyParameters, CurveName, KeyAttributes, KeyClientReleaseOptions, KeyEncryptionAlgorithm,
    KeyReleasePolicy, KeyType, ReleaseParameters,
};
use azure_security_keyvault_keys::{KeyClient, KeyClientOptions};
use azure_security_keyvault_secrets::models::SetSecretParameters;
use azure_security_keyvault_secrets::{SecretClient, SecretClientOptions};
use enclaveid_pki::derive::MasterSecret;
use rustls_pki_types::{CertificateDer, UnixTime};

use super::{Provisioned, Vault, VaultError};
use crate::evidence::{evidence_for, EvidenceSource};
use crate::policy::ReleasePolicy;
use crate::retry::{retry, RetryPolicy};
use crate::skr::{self, MaaClient, TransferKey};

mod guest;
pub mod plain;

pub use guest::GuestSkr;

/// Default name of the master-secret key.
pub const DEFAULT_KEY_NAME: &str = "enclaveid-master-secret";
/// Default name of the secret holding the CA certificate.
pub const DEFAULT_CA_SECRET_NAME: &str = "enclaveid-ca-cert";
/// The content type of the stored CA certificate.
pub const CA_CONTENT_TYPE: &str = "application/x-pem-file";
/// The release policy's content type as AKV expects it.
pub const POLICY_CONTENT_TYPE: &str = "application/json; charset=utf-8";

/// Which key to create when the master secret does not exist yet.
#[derive(Debug, Clone)]
pub struct KeySpec {
    /// AKV key type: `RSA-HSM` (default), `RSA`, `EC-HSM`, `oct-HSM`.
    pub kty: String,
    /// RSA modulus bits or oct key bits; ignored for EC.
    pub size: Option<i32>,
    /// The release policy attached at creation.
    pub policy: ReleasePolicy,
}

/// What SKR needs.
pub struct SkrSetup {
    /// MAA base URL.
    pub maa: MaaClient,
    /// The SNP evidence source.
    pub evidence: Arc<dyn EvidenceSource>,
    /// Trust anchors for the release JWS's `x5c` chain.
    pub jws_roots: Vec<CertificateDer<'static>>,
}

impl std::fmt::Debug for SkrSetup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SkrSetup")
            .field("evidence", &self.evidence.name())
            .field("jws_roots", &self.jws_roots.len())
            .finish_non_exhaustive()
    }
}

/// What `get_key` says about the master-secret key.
struct KeyState {
    version: String,
    exportable: bool,
    policy: Option<serde_json::Value>,
}

/// An `akv:` vault.
pub struct AkvVault {
    url: String,
    host: String,
    keys: KeyClient,
    secrets: SecretClient,
    key_name: String,
    ca_secret_name: String,
    retry: RetryPolicy,
    create: Option<KeySpec>,
    skr: Option<SkrSetup>,
    /// The vTPM guest flow (`--evidence vtpm`); when set, it is used instead of `skr`.
    guest: Option<GuestSkr>,
    /// `--no-skr`: the name of the secret holding the master secret (see [`plain`]); when set,
    /// no key is created or released.
    plain: Option<String>,
}

impl std::fmt::Debug for AkvVault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AkvVault")
            .field("url", &self.url)
            .field("key_name", &self.key_name)
            .finish_non_exhaustive()
    }
}

/// How to reach the vault.
#[derive(Debug, Clone)]
pub struct AkvOptions {
    /// `https://NAME.vault.azure.net`.
    pub url: String,
    /// Key name of the master secret.
    pub key_name: String,
    /// Secret name of the CA certificate.
    pub ca_secret_name: String,
    /// Extra trust anchors for the vault's TLS (emulators); empty in production.
    pub extra_roots: Vec<CertificateDer<'static>>,
    /// Skip the check that the auth challenge's resource matches the vault host (emulators on
    /// loopback names only).
    pub emulator: bool,
    /// Retry budget.
    pub retry: RetryPolicy,
}

impl AkvVault {
    /// Builds the clients. `create` is needed by `secrets`, `skr` by anything that reads the
    /// master secret.
    pub fn new(
        options: AkvOptions,
        credential: Arc<dyn TokenCredential>,
        create: Option<KeySpec>,
        skr: Option<SkrSetup>,
    ) -> Result<Self, VaultError> {
        let invalid = |detail: String| VaultError::Invalid {
            vault: options.url.clone(),
            detail,
        };
        let parsed = azure_core::http::Url::parse(&options.url)
            .map_err(|e| invalid(format!("not a URL: {e}")))?;
        if parsed.scheme() != "https" {
            return Err(invalid("the vault URL must be https".into()));
        }
        let host = parsed
            .host_str()
            .ok_or_else(|| invalid("the vault URL has no host".into()))?
            .to_owned();
        let http = http_client(&options.extra_roots).map_err(|e| invalid(e.to_string()))?;
        let client_options = ClientOptions {
            retry: RetryOptions::none(), // we retry ourselves, under one deadline
            transport: Some(Transport::new(Arc::new(http))),
            ..ClientOptions::default()
        };

        if options.emulator {
            tracing::warn!(vault = %options.url, "emulator mode: the auth challenge's resource is not checked against the vault host");
        }
        let verify_challenge_resource = Some(!options.emulator);
        let key_options = KeyClientOptions {
            client_options: client_options.clone(),
            verify_challenge_resource,
            ..KeyClientOptions::default()
        };
        let secret_options = SecretClientOptions {
            client_options,
            verify_challenge_resource,
            ..SecretClientOptions::default()
        };
        let keys = KeyClient::new(&options.url, credential.clone(), Some(key_options))
            .map_err(|e| invalid(e.to_string()))?;
        let secrets = SecretClient::new(&options.url, credential, Some(secret_options))
            .map_err(|e| invalid(e.to_string()))?;
        Ok(Self {
            url: options.url,
            host,
            keys,
            secrets,
            key_name: options.key_name,
            ca_secret_name: options.ca_secret_name,
            retry: options.retry,
            create,
            skr,
            guest: None,
            plain: None,
        })
    }

    fn map_err(&self, e: &azure_core::Error) -> VaultError {
        azure_error(&self.url, e)
    }

    /// The latest version of the master-secret key, or None if it does not exist.
    async fn key_version(&self) -> Result<Option<KeyState>, VaultError> {
        let what = format!("reading key {}", self.key_name);
        let found = retry(self.retry, &what, || async {
            match self.keys.get_key(&self.key_name, None).await {
                Ok(resp) => resp.into_model().map(Some).map_err(|e| self.map_err(&e)),
                Err(e) if e.http_status().map(u16::from) == Some(404) => Ok(None),
                Err(e) => Err(self.map_err(&e)),
            }
        })
        .await?;
        let Some(key) = found else {
            return Ok(None);
        };
        let kid = key.key.and_then(|k| k.kid).unwrap_or_default();
        let version = kid.rsplit('/').next().unwrap_or_default().to_owned();
        if version.is_empty() {
            return Err(VaultError::Invalid {
                vault: self.url.clone(),
                detail: format!("key {} has no versioned kid ({kid:?})", self.key_name),
            });
        }
        let exportable = key.attributes.and_then(|a| a.exportable).unwrap_or(false);
        let policy = key
            .release_policy
            .and_then(|p| p.encoded_policy)
            .and_then(|bytes| serde_json::from_slice(&bytes).ok());
        Ok(Some(KeyState {
            version,
            exportable,
            policy,
        }))
    }

    async fn create_key(&self, spec: &KeySpec) -> Result<(), VaultError> {
        let mut params = CreateKeyParameters::default();
        let (kty, size, curve) = match spec.kty.as_str() {
            "RSA-HSM" => (KeyType::RsaHsm, Some(spec.size.unwrap_or(3072)), None),
            "RSA" => (KeyType::Rsa, Some(spec.size.unwrap_or(3072)), None),
            "EC-HSM" => (KeyType::EcHsm, None, Some(CurveName::P256)),
            "oct-HSM" => (KeyType::OctHsm, Some(spec.size.unwrap_or(256)), None),
            other => {
                return Err(VaultError::Invalid {
                    vault: self.url.clone(),
                    detail: format!("--key-type {other:?} is not RSA-HSM, RSA, EC-HSM or oct-HSM"),
                })
            }
        };
        params.kty = Some(kty);
        params.key_size = size;
        params.curve = curve;
        params.key_attributes = Some(KeyAttributes {
            exportable: Some(true),
            enabled: Some(true),
            ..KeyAttributes::default()
        });
        params.release_policy = Some(KeyReleasePolicy {
            content_type: Some(POLICY_CONTENT_TYPE.to_owned()),
            encoded_policy: Some(spec.policy.to_json()),
            immutable: Some(false),
        });
        let what = format!("creating key {}", self.key_name);
        retry(self.retry, &what, || async {
            let body: RequestContent<CreateKeyParameters> = params
                .clone()
                .try_into()
                .map_err(|e: azure_core::Error| self.map_err(&e))?;
            self.keys
                .create_key(&self.key_name, body, None)
                .await
                .map(|_| ())
                .map_err(|e| self.map_err(&e))
        })
        .await?;
        Ok(())
    }

    /// Releases `version` of the master-secret key through SKR (what [`Vault::master_secret`]
    /// does after looking up the latest version).
    pub async fn release_version(&self, version: &str) -> Result<MasterSecret, VaultError> {
        if let Some(guest) = &self.guest {
            return self.release_guest(guest, version).await;
        }
        let skr = self.skr.as_ref().ok_or_else(|| VaultError::Invalid {
            vault: self.url.clone(),
            detail: "secure key release is not configured (--maa and --evidence)".into(),
        })?;
        self.release(skr, version).await
    }

    async fn release(&self, skr: &SkrSetup, version: &str) -> Result<MasterSecret, VaultError> {
        let transfer_key = tokio::task::spawn_blocking(TransferKey::generate)
            .await
            .map_err(|e| crate::evidence::EvidenceError::Task(e.to_string()))??;
        let runtime_data = transfer_key.runtime_data();
        let evidence =
            evidence_for(skr.evidence.clone(), skr::report_data_for(&runtime_data)).await?;
        let token = retry(self.retry, "attesting to MAA", || {
            skr.maa.attest_sev_snp_vm(&evidence, &runtime_data)
        })
        .await?;
        let jws = self.release_with_token(&token, version).await?;
        let payload = skr::verify_release_jws(&jws, &skr.jws_roots, &self.host, UnixTime::now())?;
        let released = skr::unwrap_released_key(&payload, &transfer_key)?;
        Ok(skr::master_secret_from_release(
            &released.kty,
            &released.plaintext,
        )?)
    }

    /// `POST {vault}/keys/{name}/{version}/release` with an attestation `token` and
    /// `CKM_RSA_AES_KEY_WRAP`, retried under the deadline; returns the response JWS.
    async fn release_with_token(&self, token: &str, version: &str) -> Result<String, VaultError> {
        let what = format!("releasing key {}/{version}", self.key_name);
        retry(self.retry, &what, || async {
            let params = ReleaseParameters {
                target_attestation_token: Some(token.to_owned()),
                algorithm: Some(KeyEncryptionAlgorithm::CkmRsaAesKeyWrap),
                nonce: None,
            };
            let body: RequestContent<ReleaseParameters> = params
                .try_into()
                .map_err(|e: azure_core::Error| self.map_err(&e))?;
            let options = KeyClientReleaseOptions {
                key_version: Some(version.to_owned()),
                ..KeyClientReleaseOptions::default()
            };
            let result = self
                .keys
                .release(&self.key_name, body, Some(options))
                .await
                .map_err(|e| self.map_err(&e))?
                .into_model()
                .map_err(|e| self.map_err(&e))?;
            result.value.ok_or_else(|| VaultError::Invalid {
                vault: self.url.clone(),
                detail: "release response has no value".into(),
            })
        })
        .await
        .map_err(Into::into)
    }
}

impl Vault for AkvVault {
    fn describe(&self) -> String {
        format!("akv:{}", self.url)
    }

    async fn ensure_master_secret(&self) -> Result<Provisioned, VaultError> {
        if let Some(name) = &self.plain {
            return self.ensure_plain(name).await;
        }
        if let Some(KeyState {
            version,
            exportable,
            policy,
        }) = self.key_version().await?
        {
            if !exportable {
                return Err(VaultError::Invalid {
                    vault: self.url.clone(),
                    detail: format!(
                        "key {}/{version} exists but is not exportable, so SKR cannot release it",
                        self.key_name
                    ),
                });
            }
            let wanted = self
                .create
                .as_ref()
                .and_then(|spec| serde_json::from_slice(&spec.policy.to_json()).ok());
            if wanted.is_some() && policy != wanted {
                // Never changed by us: an operator rotates the policy deliberately.
                tracing::warn!(key = %self.key_name, %version, "the key's release policy differs from the one requested; leaving it unchanged");
            }
            return Ok(Provisioned::Existing);
        }
        let spec = self.create.as_ref().ok_or_else(|| VaultError::Invalid {
            vault: self.url.clone(),
            detail: "no key specification to create the master secret with".into(),
        })?;
        self.create_key(spec).await?;
        Ok(Provisioned::Created)
    }

    async fn master_secret(&self) -> Result<MasterSecret, VaultError> {
        if let Some(name) = &self.plain {
            return self.plain_master_secret(name).await;
        }
        if self.guest.is_some() {
            let KeyState { version, .. } =
                self.key_version()
                    .await?
                    .ok_or_else(|| VaultError::NotFound {
                        vault: self.url.clone(),
                        what: format!("key {}", self.key_name),
                    })?;
            return self.release_version(&version).await;
        }
        let skr = self.skr.as_ref().ok_or_else(|| VaultError::Invalid {
            vault: self.url.clone(),
            detail: "secure key release is not configured (--maa and an evidence provider)".into(),
        })?;
        let KeyState { version, .. } =
            self.key_version()
                .await?
                .ok_or_else(|| VaultError::NotFound {
                    vault: self.url.clone(),
                    what: format!("key {}", self.key_name),
                })?;
        self.release(skr, &version).await
    }

    async fn ca_cert(&self) -> Result<Option<String>, VaultError> {
        let what = format!("reading secret {}", self.ca_secret_name);
        retry(self.retry, &what, || async {
            match self.secrets.get_secret(&self.ca_secret_name, None).await {
                Ok(resp) => resp
                    .into_model()
                    .map(|s| s.value)
                    .map_err(|e| self.map_err(&e)),
                Err(e) if e.http_status().map(u16::from) == Some(404) => Ok(None),
                Err(e) => Err(self.map_err(&e)),
            }
        })
        .await
        .map_err(Into::into)
    }

    async fn put_ca_cert(&self, pem: &str) -> Result<(), VaultError> {
        let what = format!("writing secret {}", self.ca_secret_name);
        retry(self.retry, &what, || async {
            let params = SetSecretParameters {
                value: Some(pem.to_owned()),
                content_type: Some(CA_CONTENT_TYPE.to_owned()),
                ..SetSecretParameters::default()
            };
            let body: RequestContent<SetSecretParameters> = params
                .try_into()
                .map_err(|e: azure_core::Error| self.map_err(&e))?;
            self.secrets
                .set_secret(&self.ca_secret_name, body, None)
                .await
                .map(|_| ())
                .map_err(|e| self.map_err(&e))
        })
        .await
        .map_err(Into::into)
    }
}

/// Our HTTP client for the Azure SDK pipeline and MAA: reqwest with rustls, trusting the
/// platform roots plus `extra_roots`.
#[must_use = "the client is the transport"]
pub fn http_client(
    extra_roots: &[CertificateDer<'static>],
) -> Result<reqwest::Client, reqwest::Error> {
    let mut builder = reqwest::Client::builder()
        .connect_timeout(std::time::Duration::from_secs(5))
        .timeout(std::time::Duration::from_secs(30));
    if !extra_roots.is_empty() {
        let certs = extra_roots
            .iter()
            .map(|c| reqwest::Certificate::from_der(c))
            .collect::<Result<Vec<_>, _>>()?;
        builder = builder.tls_certs_merge(certs);
    }
    builder.build()
}

#[must_use]
/// Maps an Azure SDK error to ours, keeping the vault's own message for HTTP errors.
pub fn azure_error(vault: &str, e: &azure_core::Error) -> VaultError {
    use azure_core::error::ErrorKind;
    match e.kind() {
        ErrorKind::HttpResponse {
            status,
            error_code,
            raw_response,
        } => {
            let body = raw_response
                .as_ref()
                .map(|r| String::from_utf8_lossy(r.body().as_ref()).into_owned())
                .unwrap_or_default();
            let mut message = skr::service_message(&body);
            if message.is_empty() {
                message = error_code.clone().unwrap_or_else(|| e.to_string());
            }
            VaultError::Status {
                vault: vault.to_owned(),
                status: u16::from(*status),
                message,
            }
        }
        ErrorKind::Connection | ErrorKind::Io => VaultError::Unreachable {
            vault: vault.to_owned(),
            detail: skr::error_chain(e),
        },
        ErrorKind::Credential => VaultError::Auth {
            vault: vault.to_owned(),
            detail: skr::error_chain(e),
        },
        _ => VaultError::Invalid {
            vault: vault.to_owned(),
            detail: skr::error_chain(e),
        },
    }
}
