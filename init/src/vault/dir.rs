//! The development back-end: `PATH/master-secret` (raw bytes) and `PATH/ca.pem` in a plain
//! directory. Confidentiality is off: anyone who can read the directory has the mesh CA.

use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use enclaveid_pki::derive::MasterSecret;
use zeroize::Zeroizing;

use super::{Provisioned, Vault, VaultError};

/// The master secret's file name.
pub const SECRET_FILE: &str = "master-secret";
/// The CA certificate's file name.
pub const CA_FILE: &str = "ca.pem";
/// Size of a generated master secret.
pub const GENERATED_SECRET_LEN: usize = 32;

/// A `dir:PATH` vault.
#[derive(Debug, Clone)]
pub struct DirVault {
    root: PathBuf,
}

impl DirVault {
    /// Opens `root` (which must exist) and warns that confidentiality is off.
    pub fn open(root: &Path) -> Result<Self, VaultError> {
        let meta = std::fs::metadata(root).map_err(|source| VaultError::Io {
            path: root.display().to_string(),
            source,
        })?;
        if !meta.is_dir() {
            return Err(VaultError::Invalid {
                vault: format!("dir:{}", root.display()),
                detail: "not a directory".into(),
            });
        }
        tracing::warn!(
            vault = %root.display(),
            "DEVELOPMENT VAULT: the master secret is a plain file; confidentiality is OFF, do not use in production"
        );
        Ok(Self {
            root: root.to_owned(),
        })
    }

    fn io(path: &Path) -> impl FnOnce(std::io::Error) -> VaultError + '_ {
        move |source| VaultError::Io {
            path: path.display().to_string(),
            source,
        }
    }

    fn write_atomic(&self, name: &str, bytes: &[u8], mode: u32) -> Result<(), VaultError> {
        let target = self.root.join(name);
        let tmp = self
            .root
            .join(format!(".{name}.tmp-{}", std::process::id()));
        let result = (|| {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(bytes)?;
            f.sync_all()?;
            f.set_permissions(std::fs::Permissions::from_mode(mode))?;
            std::fs::rename(&tmp, &target)
        })();
        result.map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            Self::io(&target)(e)
        })
    }
}

impl Vault for DirVault {
    fn describe(&self) -> String {
        format!("dir:{}", self.root.display())
    }

    async fn ensure_master_secret(&self) -> Result<Provisioned, VaultError> {
        let path = self.root.join(SECRET_FILE);
        if path.exists() {
            // Validate it without keeping it.
            self.master_secret().await?;
            return Ok(Provisioned::Existing);
        }
        let secret: Zeroizing<[u8; GENERATED_SECRET_LEN]> = Zeroizing::new(rand::random());
        self.write_atomic(SECRET_FILE, secret.as_ref(), 0o400)?;
        Ok(Provisioned::Created)
    }

    async fn master_secret(&self) -> Result<MasterSecret, VaultError> {
        let path = self.root.join(SECRET_FILE);
        let bytes = std::fs::read(&path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                VaultError::NotFound {
                    vault: self.describe(),
                    what: SECRET_FILE.into(),
                }
            } else {
                Self::io(&path)(e)
            }
        })?;
        MasterSecret::new(bytes).map_err(|e| VaultError::Invalid {
            vault: self.describe(),
            detail: format!("{SECRET_FILE}: {e}"),
        })
    }

    async fn ca_cert(&self) -> Result<Option<String>, VaultError> {
        let path = self.root.join(CA_FILE);
        match std::fs::read_to_string(&path) {
            Ok(s) => Ok(Some(s)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Self::io(&path)(e)),
        }
    }

    async fn put_ca_cert(&self, pem: &str) -> Result<(), VaultError> {
        self.write_atomic(CA_FILE, pem.as_bytes(), 0o444)
    }
}
