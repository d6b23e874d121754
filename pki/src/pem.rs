//! Loading the three TLS files (the pinned CA bundle, this workload's chain, its private key)
//! from PEM, with errors that name the file and what is wrong with it. Key bytes never appear in
//! an error or in `Debug` output, and buffers that held them are zeroised.

use std::fmt;
use std::path::{Path, PathBuf};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use zeroize::Zeroizing;

/// Why a PEM file could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PemError {
    /// The file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A PEM section could not be decoded.
    #[error("{what}: malformed PEM: {why}")]
    Malformed {
        /// The file (or in-memory source) name.
        what: String,
        /// The decoder's message.
        why: String,
    },
    /// No certificate was found.
    #[error("{what}: no CERTIFICATE section found")]
    NoCertificate {
        /// The file (or in-memory source) name.
        what: String,
    },
    /// No private key was found.
    #[error("{what}: no PRIVATE KEY section (PKCS#8, SEC1 or PKCS#1) found")]
    NoKey {
        /// The file (or in-memory source) name.
        what: String,
    },
}

/// A private key in DER; `Debug` is redacted and the bytes are zeroised on drop.
pub struct PrivateKey(PrivateKeyDer<'static>);

impl PrivateKey {
    /// Wraps an owned key.
    #[must_use]
    pub fn new(key: PrivateKeyDer<'static>) -> Self {
        Self(key)
    }

    /// A copy of the key for handing to rustls (which keeps its own copy).
    #[must_use]
    pub fn der(&self) -> PrivateKeyDer<'static> {
        self.0.clone_key()
    }
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PrivateKey(<redacted>)")
    }
}

impl Drop for PrivateKey {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.0);
    }
}

/// Reads a file fully, naming it in the error.
pub fn read_file(path: &Path) -> Result<Zeroizing<Vec<u8>>, PemError> {
    std::fs::read(path)
        .map(Zeroizing::new)
        .map_err(|source| PemError::Read {
            path: path.to_owned(),
            source,
        })
}

/// Parses every CERTIFICATE section of a PEM buffer; at least one is required.
pub fn parse_certificates(
    pem: &[u8],
    what: &str,
) -> Result<Vec<CertificateDer<'static>>, PemError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| PemError::Malformed {
            what: what.to_owned(),
            why: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(PemError::NoCertificate {
            what: what.to_owned(),
        });
    }
    Ok(certs)
}

/// Parses the first private key of a PEM buffer.
pub fn parse_private_key(pem: &[u8], what: &str) -> Result<PrivateKey, PemError> {
    match PrivateKeyDer::from_pem_slice(pem) {
        Ok(key) => Ok(PrivateKey(key)),
        Err(rustls_pki_types::pem::Error::NoItemsFound) => Err(PemError::NoKey {
            what: what.to_owned(),
        }),
        // The decoder's message never contains key bytes, only the failing section kind.
        Err(e) => Err(PemError::Malformed {
            what: what.to_owned(),
            why: e.to_string(),
        }),
    }
}

/// Loads a CA bundle: every certificate in it is a trust anchor.
pub fn load_ca_bundle(path: &Path) -> Result<Vec<CertificateDer<'static>>, PemError> {
    parse_certificates(&read_file(path)?, &path.display().to_string())
}

/// Loads a leaf followed by any intermediates.
pub fn load_cert_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, PemError> {
    parse_certificates(&read_file(path)?, &path.display().to_string())
}

/// Loads a private key.
pub fn load_private_key(path: &Path) -> Result<PrivateKey, PemError> {
    parse_private_key(&read_file(path)?, &path.display().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_source() {
        let err = parse_certificates(b"nothing here", "ca.pem").unwrap_err();
        assert_eq!(err.to_string(), "ca.pem: no CERTIFICATE section found");
        let err = parse_private_key(b"", "key.pem").unwrap_err();
        assert!(
            err.to_string().starts_with("key.pem: no PRIVATE KEY"),
            "{err}"
        );
        let err = load_ca_bundle(Path::new("/nonexistent/ca.pem")).unwrap_err();
        assert!(
            err.to_string().starts_with("reading /nonexistent/ca.pem:"),
            "{err}"
        );
    }

    #[test]
    fn key_debug_is_redacted() {
        let kp = rcgen::KeyPair::generate().unwrap();
        let key = parse_private_key(kp.serialize_pem().as_bytes(), "k").unwrap();
        assert_eq!(format!("{key:?}"), "PrivateKey(<redacted>)");
    }
}
