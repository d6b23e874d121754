//! Writing the workload's TLS files: `ca.pem` (0444), `cert.pem` (0444) and `key.pem` (0400),
//! each by atomic rename inside the output directory, and nothing else. The directory must be
//! a tmpfs (a `medium: Memory` emptyDir) unless the operator explicitly allows disk.

use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use enclaveid_pki::issue::IssuedLeaf;

/// File names inside the output directory (DESIGN.md).
pub const CA_FILE: &str = "ca.pem";
/// The leaf certificate.
pub const CERT_FILE: &str = "cert.pem";
/// The leaf private key.
pub const KEY_FILE: &str = "key.pem";

/// Errors writing the output.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OutputError {
    /// The directory does not exist or is not a directory.
    #[error("--out {path}: {reason}")]
    BadDir {
        /// The directory.
        path: String,
        /// Why.
        reason: String,
    },
    /// The directory is on persistent storage.
    #[error("--out {path} is on {fstype}, not tmpfs; key material must stay in memory (pass --allow-disk for tests)")]
    NotTmpfs {
        /// The directory.
        path: String,
        /// Its filesystem type.
        fstype: String,
    },
    /// Writing a file failed.
    #[error("writing {path}: {source}")]
    Write {
        /// The file.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// A checked output directory.
#[derive(Debug, Clone)]
pub struct OutputDir {
    dir: PathBuf,
}

impl OutputDir {
    /// Checks that `dir` exists and (unless `allow_disk`) is a tmpfs.
    pub fn new(dir: &Path, allow_disk: bool) -> Result<Self, OutputError> {
        let bad = |reason: String| OutputError::BadDir {
            path: dir.display().to_string(),
            reason,
        };
        let dir = dir.canonicalize().map_err(|e| bad(e.to_string()))?;
        if !dir.is_dir() {
            return Err(bad("not a directory".into()));
        }
        if allow_disk {
            tracing::warn!(dir = %dir.display(), "--allow-disk: the private key may be written to persistent storage");
        } else {
            let fstype = filesystem_type(&dir).map_err(|e| bad(e.to_string()))?;
            if fstype != "tmpfs" && fstype != "ramfs" {
                return Err(OutputError::NotTmpfs {
                    path: dir.display().to_string(),
                    fstype,
                });
            }
        }
        Ok(Self { dir })
    }

    /// The directory.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Writes the CA certificate, the key and then the certificate (last, so a watcher that
    /// reloads on `cert.pem` finds a matching key already in place).
    pub fn write(&self, ca_pem: &str, leaf: &IssuedLeaf) -> Result<(), OutputError> {
        self.write_file(CA_FILE, ca_pem.as_bytes(), 0o444)?;
        self.write_file(KEY_FILE, leaf.key_pem.as_bytes(), 0o400)?;
        self.write_file(CERT_FILE, leaf.cert_pem.as_bytes(), 0o444)?;
        Ok(())
    }

    fn write_file(&self, name: &str, contents: &[u8], mode: u32) -> Result<(), OutputError> {
        let target = self.dir.join(name);
        let tmp = self.dir.join(format!(".{name}.tmp-{}", std::process::id()));
        let result = (|| {
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            file.write_all(contents)?;
            file.sync_all()?;
            file.set_permissions(std::fs::Permissions::from_mode(mode))?;
            drop(file);
            std::fs::rename(&tmp, &target)
        })();
        if let Err(source) = result {
            let _ = std::fs::remove_file(&tmp);
            return Err(OutputError::Write {
                path: target.display().to_string(),
                source,
            });
        }
        Ok(())
    }
}

/// The filesystem type of the mount holding `dir`, from `/proc/self/mountinfo`.
fn filesystem_type(dir: &Path) -> std::io::Result<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo")?;
    mount_fstype(&info, dir)
        .ok_or_else(|| std::io::Error::other(format!("no mount found for {}", dir.display())))
}

fn mount_fstype(mountinfo: &str, dir: &Path) -> Option<String> {
    let mut best: Option<(usize, String)> = None;
    for line in mountinfo.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let (Some(mount_point), Some(sep)) = (fields.get(4), fields.iter().position(|f| *f == "-"))
        else {
            continue;
        };
        let Some(fstype) = fields.get(sep + 1) else {
            continue;
        };
        let mount_point = unescape_octal(mount_point);
        if dir.starts_with(&mount_point) {
            let len = mount_point.len();
            // Later lines win on equal length: they are mounted on top.
            if best.as_ref().is_none_or(|(l, _)| len >= *l) {
                best = Some((len, (*fstype).to_owned()));
            }
        }
    }
    best.map(|(_, t)| t)
}

fn unescape_octal(s: &str) -> String {
    // mountinfo escapes space, tab, newline and backslash as \ooo.
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 4 <= bytes.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 4], 8) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
30 22 0:25 / /run rw,nosuid shared:5 - tmpfs tmpfs rw
31 30 0:26 / /run/enclaveid/tls rw shared:6 - tmpfs tmpfs rw,size=1024k
32 22 0:27 / /data\\040dir rw shared:7 - xfs /dev/sdb rw
";

    #[test]
    fn longest_mount_prefix_wins() {
        assert_eq!(
            mount_fstype(MOUNTINFO, Path::new("/run/enclaveid/tls")).unwrap(),
            "tmpfs"
        );
        assert_eq!(
            mount_fstype(MOUNTINFO, Path::new("/var/tmp")).unwrap(),
            "ext4"
        );
        assert_eq!(
            mount_fstype(MOUNTINFO, Path::new("/data dir/x")).unwrap(),
            "xfs"
        );
        assert_eq!(
            mount_fstype(MOUNTINFO, Path::new("/runner")).unwrap(),
            "ext4"
        );
    }

    #[test]
    fn disk_is_refused_without_allow_disk() {
        let dir = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap();
        let fstype = filesystem_type(dir.path()).unwrap();
        if fstype != "tmpfs" {
            let err = OutputDir::new(dir.path(), false).unwrap_err();
            assert!(matches!(err, OutputError::NotTmpfs { .. }), "{err}");
        }
        assert!(OutputDir::new(dir.path(), true).is_ok());
        assert!(OutputDir::new(&dir.path().join("missing"), true).is_err());
    }
}
