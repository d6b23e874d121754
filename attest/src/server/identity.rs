//! The server's TLS identity, reloaded when its files change.
//!
//! Evidence is bound to the key of the connection it is served on, so each connection takes a
//! snapshot of the identity when it is accepted and binds every answer to that snapshot's key.
//! With files, each accept compares the files' modification time and size with the loaded
//! ones and reloads on a change (the renew container replaces them by atomic rename); a reload
//! that fails, e.g. while the certificate is new and the key not yet, keeps the previous
//! identity and is retried on the next accept.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tracing::{info, warn};

use super::ServerError;

/// The server's TLS identity: the rustls config and the SHA-256 of the leaf's SPKI, which every
/// piece of evidence commits to.
#[derive(Clone)]
pub struct TlsIdentity {
    config: Arc<rustls::ServerConfig>,
    spki_sha256: [u8; 32],
}

impl std::fmt::Debug for TlsIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsIdentity")
            .field("spki_sha256", &hex::encode(self.spki_sha256))
            .finish_non_exhaustive()
    }
}

impl TlsIdentity {
    /// Loads a PEM certificate chain (leaf first) and a PEM private key.
    pub fn from_files(cert: &Path, key: &Path) -> Result<Self, ServerError> {
        let tls_file = |field, path: &Path, reason: String| ServerError::TlsFile {
            field,
            path: path.to_owned(),
            reason,
        };
        let certs = CertificateDer::pem_file_iter(cert)
            .and_then(Iterator::collect::<Result<Vec<_>, _>>)
            .map_err(|e| tls_file("--tls-cert", cert, e.to_string()))?;
        if certs.is_empty() {
            return Err(tls_file("--tls-cert", cert, "no CERTIFICATE block".into()));
        }
        let key_der = PrivateKeyDer::from_pem_file(key)
            .map_err(|e| tls_file("--tls-key", key, e.to_string()))?;
        Self::new(certs, key_der).map_err(|e| match e {
            ServerError::TlsFile { reason, .. } => tls_file("--tls-cert", cert, reason),
            other => other,
        })
    }

    /// Builds the identity from DER parts.
    pub fn new(
        certs: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<Self, ServerError> {
        let leaf = certs.first().ok_or_else(|| ServerError::TlsFile {
            field: "--tls-cert",
            path: PathBuf::new(),
            reason: "empty certificate chain".into(),
        })?;
        let spki = crate::tls::spki_of_certificate(leaf).map_err(|e| ServerError::TlsFile {
            field: "--tls-cert",
            path: PathBuf::new(),
            reason: e.to_string(),
        })?;
        let spki_sha256 = enclaveid_attest_verifier::binding::spki_sha256(&spki);
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(certs, key)?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Self {
            config: Arc::new(config),
            spki_sha256,
        })
    }

    /// The rustls configuration serving this identity.
    #[must_use]
    pub fn config(&self) -> Arc<rustls::ServerConfig> {
        self.config.clone()
    }

    /// SHA-256 of the leaf certificate's `SubjectPublicKeyInfo`.
    #[must_use]
    pub fn spki_sha256(&self) -> [u8; 32] {
        self.spki_sha256
    }
}

/// Where connections get their identity: fixed, or from files that are watched.
#[derive(Debug)]
pub struct Identities {
    files: Option<(PathBuf, PathBuf)>,
    loaded: Mutex<Loaded>,
}

#[derive(Debug)]
struct Loaded {
    stamp: Option<Stamp>,
    identity: Arc<TlsIdentity>,
}

/// Modification times and sizes of the certificate and key files.
type Stamp = [(Option<SystemTime>, u64); 2];

fn stamp(cert: &Path, key: &Path) -> Option<Stamp> {
    let one = |p: &Path| {
        std::fs::metadata(p)
            .ok()
            .map(|m| (m.modified().ok(), m.len()))
    };
    Some([one(cert)?, one(key)?])
}

impl From<TlsIdentity> for Identities {
    fn from(identity: TlsIdentity) -> Self {
        Self {
            files: None,
            loaded: Mutex::new(Loaded {
                stamp: None,
                identity: Arc::new(identity),
            }),
        }
    }
}

impl Identities {
    /// Loads the files (which must be valid now) and watches them.
    pub fn from_files(cert: &Path, key: &Path) -> Result<Self, ServerError> {
        let stamp = stamp(cert, key);
        let identity = TlsIdentity::from_files(cert, key)?;
        Ok(Self {
            files: Some((cert.to_owned(), key.to_owned())),
            loaded: Mutex::new(Loaded {
                stamp,
                identity: Arc::new(identity),
            }),
        })
    }

    /// The identity to serve a new connection with, reloading changed files first.
    pub fn current(&self) -> Arc<TlsIdentity> {
        let mut loaded = self
            .loaded
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((cert, key)) = &self.files {
            let now = stamp(cert, key);
            if now.is_some() && now != loaded.stamp {
                match TlsIdentity::from_files(cert, key) {
                    Ok(identity) => {
                        info!(spki_sha256 = %hex::encode(identity.spki_sha256()), "TLS identity reloaded");
                        loaded.identity = Arc::new(identity);
                        loaded.stamp = now;
                    }
                    Err(error) => {
                        warn!(%error, "TLS files changed but do not load yet; keeping the previous identity");
                    }
                }
            }
        }
        loaded.identity.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_identity(dir: &Path, name: &str) -> (rcgen::CertifiedKey<rcgen::KeyPair>, [u8; 32]) {
        let made = rcgen::generate_simple_self_signed(vec![name.to_owned()]).unwrap();
        let spki = crate::tls::spki_of_certificate(made.cert.der()).unwrap();
        let hash = enclaveid_attest_verifier::binding::spki_sha256(&spki);
        for (file, body) in [
            ("cert.tmp", made.cert.pem()),
            ("key.tmp", made.signing_key.serialize_pem()),
        ] {
            std::fs::write(dir.join(file), body).unwrap();
        }
        (made, hash)
    }

    fn install(dir: &Path, which: &str, at: u64) {
        let target = dir.join(format!("{which}.pem"));
        std::fs::rename(dir.join(format!("{which}.tmp")), &target).unwrap();
        let time = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(at);
        std::fs::File::options()
            .write(true)
            .open(&target)
            .unwrap()
            .set_modified(time)
            .unwrap();
    }

    #[test]
    fn reloads_on_change_and_keeps_the_old_identity_on_a_half_update() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let (_a, hash_a) = write_identity(d, "a.test");
        install(d, "cert", 1_000);
        install(d, "key", 1_000);
        let ids = Identities::from_files(&d.join("cert.pem"), &d.join("key.pem")).unwrap();
        assert_eq!(ids.current().spki_sha256(), hash_a);

        // Only the certificate is new: it does not match the key, so A stays.
        let (_b, hash_b) = write_identity(d, "b.test");
        install(d, "cert", 2_000);
        assert_eq!(ids.current().spki_sha256(), hash_a);
        // The key follows: B.
        install(d, "key", 2_000);
        assert_eq!(ids.current().spki_sha256(), hash_b);
        // Files vanish: B stays.
        std::fs::remove_file(d.join("key.pem")).unwrap();
        assert_eq!(ids.current().spki_sha256(), hash_b);
    }
}
