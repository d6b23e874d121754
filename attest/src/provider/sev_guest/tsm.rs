//! The kernel's configfs-TSM report interface (Linux 6.7+), the modern way to the same extended
//! report: `mkdir /sys/kernel/config/tsm/report/<name>`, write `privlevel` and the 64-byte
//! `inblob`, read `outblob` (the report) and `auxblob` (the certificate table), compare
//! `generation` before and after to detect a concurrent writer, `rmdir`.
//!
//! Plain file I/O, no `unsafe`. Each request uses its own directory, removed afterwards.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::abi::{self, CertTable};
use crate::provider::ProviderError;

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// Default location of the configfs-TSM report directory.
pub const DEFAULT_TSM_REPORT_DIR: &str = "/sys/kernel/config/tsm/report";

fn fail(what: &'static str, path: &Path, e: &std::io::Error) -> ProviderError {
    ProviderError::Device {
        what,
        reason: format!("{}: {e}", path.display()),
    }
}

/// Removes the request directory however the request ends.
struct Entry(PathBuf);

impl Drop for Entry {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// One extended report through configfs-TSM.
pub(super) fn extended_report(
    base: &Path,
    report_data: &[u8; 64],
    vmpl: u32,
) -> Result<(Vec<u8>, CertTable), ProviderError> {
    let name = format!(
        "enclaveid-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    );
    let entry = Entry(base.join(name));
    let dir = &entry.0;
    std::fs::create_dir(dir).map_err(|e| fail("configfs-tsm mkdir", dir, &e))?;
    let provider_file = dir.join("provider");
    let provider = std::fs::read_to_string(&provider_file)
        .map_err(|e| fail("configfs-tsm provider", &provider_file, &e))?;
    if provider.trim() != "sev_guest" {
        return Err(ProviderError::Device {
            what: "configfs-tsm provider",
            reason: format!("the TSM is {:?}, not sev_guest", provider.trim()),
        });
    }
    let write = |file: &str, bytes: &[u8]| {
        let path = dir.join(file);
        std::fs::write(&path, bytes).map_err(|e| fail("configfs-tsm write", &path, &e))
    };
    let read = |file: &str| {
        let path = dir.join(file);
        std::fs::read(&path).map_err(|e| fail("configfs-tsm read", &path, &e))
    };
    write("privlevel", vmpl.to_string().as_bytes())?;
    write("inblob", report_data)?;
    let before = read("generation")?;
    let outblob = read("outblob")?;
    // auxblob is absent or empty when the host attached no certificates.
    let auxblob = std::fs::read(dir.join("auxblob")).unwrap_or_default();
    if read("generation")? != before {
        return Err(ProviderError::Device {
            what: "configfs-tsm",
            reason: "another writer changed the request while it was read; retry".into(),
        });
    }
    let report = outblob
        .get(..abi::REPORT_LEN)
        .ok_or_else(|| ProviderError::Device {
            what: "configfs-tsm outblob",
            reason: format!("{} bytes, shorter than a report", outblob.len()),
        })?
        .to_vec();
    let table = if auxblob.is_empty() {
        CertTable::default()
    } else {
        abi::parse_cert_table(&auxblob).map_err(|e| ProviderError::Device {
            what: "configfs-tsm auxblob",
            reason: e.to_string(),
        })?
    };
    Ok((report, table))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_that_is_not_configfs_fails_cleanly_and_is_cleaned_up() {
        // A plain directory accepts mkdir but has no `provider` attribute: an error naming the
        // file, and no request directory left behind.
        let base = tempfile::tempdir().unwrap();
        let err = extended_report(base.path(), &[0; 64], 0)
            .unwrap_err()
            .to_string();
        assert!(err.contains("provider"), "{err}");
        assert_eq!(std::fs::read_dir(base.path()).unwrap().count(), 0);
        let missing = extended_report(Path::new("/nonexistent/tsm"), &[0; 64], 0);
        assert!(missing.is_err());
    }
}
