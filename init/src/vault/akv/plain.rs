//! `--no-skr`: AKV *without* Secure Key Release, for development clusters that have no TEE
//! (the chart's `microk8s` mode with an `akv:` vault).
//!
//! The master secret is an ordinary Key Vault secret instead of an exportable key behind a
//! release policy: its value is the standard base64 of [`GENERATED_LEN`] bytes from the OS
//! RNG, with content type [`CONTENT_TYPE`], named [`DEFAULT_SECRET_NAME`] unless
//! `--master-secret-name` says otherwise. `secrets` creates it only if it is absent (never
//! replaces it); `proxy` and `renew` read it with `get_secret`. Confidentiality is OFF:
//! anyone with secret-get permission on the vault can read the master secret, derive the mesh
//! CA key and impersonate every workload. A secret of another content type or encoding is
//! refused rather than guessed at. The value is never logged.

use azure_core::http::RequestContent;
use azure_security_keyvault_secrets::models::SetSecretParameters;
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use enclaveid_pki::derive::MasterSecret;
use rand::RngCore as _;
use zeroize::Zeroizing;

use super::AkvVault;
use crate::retry::retry;
use crate::vault::{Provisioned, VaultError};

/// Default name of the secret holding the master secret under `--no-skr`.
pub const DEFAULT_SECRET_NAME: &str = "enclaveid-master-secret-noskr";
/// The content type marking the secret as an `EnclaveID` master secret without SKR.
pub const CONTENT_TYPE: &str = "application/vnd.enclaveid.master-secret-noskr.v1+base64";
/// Bytes of a generated master secret.
pub const GENERATED_LEN: usize = 32;

/// Why a stored no-SKR master secret is unusable (the value itself is never included).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum PlainSecretError {
    /// The secret's content type is not [`CONTENT_TYPE`]: it was not written by `secrets
    /// --no-skr`.
    #[error("content type {found:?} is not {CONTENT_TYPE:?} (not written by `enclaveid-init secrets --no-skr`)")]
    ContentType {
        /// The content type found (None if unset).
        found: Option<String>,
    },
    /// The secret has no value.
    #[error("the secret has no value")]
    Empty,
    /// The value is not standard base64.
    #[error("the value is not standard base64")]
    Encoding,
    /// The decoded bytes do not make a master secret (too short).
    #[error("{0}")]
    Material(String),
}

/// A fresh secret value: the base64 of [`GENERATED_LEN`] bytes from the OS RNG.
#[must_use]
pub fn generate() -> Zeroizing<String> {
    let mut bytes = Zeroizing::new([0u8; GENERATED_LEN]);
    rand::rngs::OsRng.fill_bytes(bytes.as_mut());
    encode(bytes.as_ref())
}

/// The secret value for raw master-secret bytes (standard base64, padded).
#[must_use]
pub fn encode(secret: &[u8]) -> Zeroizing<String> {
    Zeroizing::new(STANDARD.encode(secret))
}

/// The master secret from a stored value and its content type.
pub fn decode(
    value: Option<&str>,
    content_type: Option<&str>,
) -> Result<MasterSecret, PlainSecretError> {
    if content_type != Some(CONTENT_TYPE) {
        return Err(PlainSecretError::ContentType {
            found: content_type.map(str::to_owned),
        });
    }
    let value = value
        .filter(|v| !v.is_empty())
        .ok_or(PlainSecretError::Empty)?;
    let bytes = STANDARD
        .decode(value)
        .map_err(|_| PlainSecretError::Encoding)?;
    MasterSecret::new(bytes).map_err(|e| PlainSecretError::Material(e.to_string()))
}

/// A stored secret's value (zeroized on drop) and content type.
struct Stored {
    value: Option<Zeroizing<String>>,
    content_type: Option<String>,
}

impl AkvVault {
    /// Keeps the master secret as the plain secret `name` instead of a key behind SKR (warns
    /// loudly). Refused if SKR, the vTPM flow or a key to create is configured: the two modes
    /// never mix.
    pub fn with_plain_secret(mut self, name: &str) -> Result<Self, VaultError> {
        if self.skr.is_some() || self.guest.is_some() || self.create.is_some() {
            return Err(VaultError::Invalid {
                vault: self.url.clone(),
                detail: "--no-skr cannot be combined with secure key release (--maa, --evidence, a release policy)".into(),
            });
        }
        if name.is_empty() {
            return Err(VaultError::Invalid {
                vault: self.url.clone(),
                detail: "--master-secret-name is empty".into(),
            });
        }
        tracing::warn!(
            vault = %self.url,
            secret = %name,
            "NO SECURE KEY RELEASE (--no-skr): the master secret is an ordinary Key Vault secret, readable by anyone with secret-get permission on this vault, who can then impersonate every workload of the mesh; confidentiality is OFF, for development only"
        );
        self.plain = Some(name.to_owned());
        Ok(self)
    }

    /// The secret `name`, or None if it does not exist.
    async fn read_plain(&self, name: &str) -> Result<Option<Stored>, VaultError> {
        let what = format!("reading secret {name}");
        retry(self.retry, &what, || async {
            match self.secrets.get_secret(name, None).await {
                Ok(resp) => resp
                    .into_model()
                    .map(|s| {
                        Some(Stored {
                            value: s.value.map(Zeroizing::new),
                            content_type: s.content_type,
                        })
                    })
                    .map_err(|e| self.map_err(&e)),
                Err(e) if e.http_status().map(u16::from) == Some(404) => Ok(None),
                Err(e) => Err(self.map_err(&e)),
            }
        })
        .await
        .map_err(Into::into)
    }

    fn plain_invalid(&self, name: &str, e: &PlainSecretError) -> VaultError {
        VaultError::Invalid {
            vault: self.url.clone(),
            detail: format!("secret {name} (the --no-skr master secret): {e}"),
        }
    }

    /// `secrets --no-skr`: validates the stored master secret, or creates it if absent.
    pub(super) async fn ensure_plain(&self, name: &str) -> Result<Provisioned, VaultError> {
        if let Some(stored) = self.read_plain(name).await? {
            decode(
                stored.value.as_deref().map(String::as_str),
                stored.content_type.as_deref(),
            )
            .map_err(|e| self.plain_invalid(name, &e))?;
            return Ok(Provisioned::Existing);
        }
        let value = generate();
        let what = format!("writing secret {name}");
        retry(self.retry, &what, || async {
            let params = SetSecretParameters {
                value: Some(value.as_str().to_owned()),
                content_type: Some(CONTENT_TYPE.to_owned()),
                ..SetSecretParameters::default()
            };
            let body: RequestContent<SetSecretParameters> = params
                .try_into()
                .map_err(|e: azure_core::Error| self.map_err(&e))?;
            self.secrets
                .set_secret(name, body, None)
                .await
                .map(|_| ())
                .map_err(|e| self.map_err(&e))
        })
        .await?;
        Ok(Provisioned::Created)
    }

    /// `proxy`/`renew --no-skr`: the master secret read with `get_secret`.
    pub(super) async fn plain_master_secret(&self, name: &str) -> Result<MasterSecret, VaultError> {
        let stored = self
            .read_plain(name)
            .await?
            .ok_or_else(|| VaultError::NotFound {
                vault: self.url.clone(),
                what: format!("secret {name} (the --no-skr master secret)"),
            })?;
        decode(
            stored.value.as_deref().map(String::as_str),
            stored.content_type.as_deref(),
        )
        .map_err(|e| self.plain_invalid(name, &e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use enclaveid_pki::derive::derive_ca_key;

    #[test]
    fn generated_values_are_32_random_bytes_in_standard_base64() {
        let a = generate();
        let b = generate();
        assert_ne!(*a, *b, "two draws from the OS RNG collided");
        for v in [&a, &b] {
            assert_eq!(v.len(), 44, "base64 of 32 bytes is 44 characters");
            assert_eq!(STANDARD.decode(v.as_str()).unwrap().len(), GENERATED_LEN);
            decode(Some(v), Some(CONTENT_TYPE)).unwrap();
        }
    }

    #[test]
    fn the_encoding_round_trips_to_the_same_ca_key() {
        let raw: Vec<u8> = (0u8..32).collect();
        let value = encode(&raw);
        assert_eq!(
            value.as_str(),
            "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="
        );
        let decoded = decode(Some(&value), Some(CONTENT_TYPE)).unwrap();
        let direct = MasterSecret::new(raw).unwrap();
        assert_eq!(decoded.expose(), direct.expose());
        assert_eq!(
            derive_ca_key(&decoded).public_key(),
            derive_ca_key(&direct).public_key()
        );
    }

    #[test]
    fn anything_else_is_refused() {
        let good = encode(&[7u8; 32]);
        assert_eq!(
            decode(Some(&good), None).unwrap_err(),
            PlainSecretError::ContentType { found: None }
        );
        assert_eq!(
            decode(Some(&good), Some("application/x-pem-file")).unwrap_err(),
            PlainSecretError::ContentType {
                found: Some("application/x-pem-file".into())
            }
        );
        assert_eq!(
            decode(None, Some(CONTENT_TYPE)).unwrap_err(),
            PlainSecretError::Empty
        );
        assert_eq!(
            decode(Some(""), Some(CONTENT_TYPE)).unwrap_err(),
            PlainSecretError::Empty
        );
        // URL-safe alphabet, missing padding, stray whitespace: not the encoding we write.
        for bad in [
            "-_-_AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGx8=",
            "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8",
            " AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=",
        ] {
            assert_eq!(
                decode(Some(bad), Some(CONTENT_TYPE)).unwrap_err(),
                PlainSecretError::Encoding,
                "{bad}"
            );
        }
        // 31 bytes: too short for a master secret.
        let short = encode(&[1u8; 31]);
        assert!(matches!(
            decode(Some(&short), Some(CONTENT_TYPE)).unwrap_err(),
            PlainSecretError::Material(_)
        ));
    }

    #[test]
    fn errors_never_carry_the_value() {
        let value = encode(&[9u8; 31]);
        let e = decode(Some(&value), Some(CONTENT_TYPE)).unwrap_err();
        assert!(!e.to_string().contains(value.as_str()), "{e}");
        let e = decode(Some(&value), Some("text/plain")).unwrap_err();
        assert!(!format!("{e} {e:?}").contains(value.as_str()), "{e}");
    }
}
