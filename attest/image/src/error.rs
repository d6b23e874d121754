//! The one error type of the crate.
//!
//! Every image that `compare` reads is treated as hostile: whatever is wrong with it (a missing
//! blob, a digest that does not match, a path that climbs out of the root, an entry past a size
//! limit, a truncated tar) comes back as one of these variants, naming the file or entry at fault.

use std::path::PathBuf;

/// What went wrong while opening, reading or flattening an image.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ImageError {
    /// A file of the image (or the image path itself) could not be read.
    #[error("reading {path}: {source}")]
    Io {
        /// The file that failed.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The path is neither an OCI image layout directory nor an OCI/docker archive.
    #[error("{path} is not an OCI image layout or image archive: {reason}")]
    NotAnImage {
        /// The path given.
        path: PathBuf,
        /// Why it was not recognised.
        reason: String,
    },
    /// A tar stream (the archive itself or a layer) is malformed or truncated.
    #[error("{what}: malformed or truncated tar: {source}")]
    Tar {
        /// Which archive or layer.
        what: String,
        /// The underlying parse error.
        #[source]
        source: std::io::Error,
    },
    /// A JSON document of the image (index, manifest, config) did not parse.
    #[error("{what}: invalid JSON: {source}")]
    Json {
        /// Which document.
        what: String,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },
    /// A digest string is not `sha256:` followed by 64 lowercase hex digits.
    #[error("{what} = {value:?}: invalid digest (want sha256:<64 hex>)")]
    InvalidDigest {
        /// Which field carried it.
        what: String,
        /// The bad value.
        value: String,
    },
    /// A blob's content does not hash to the digest that names it.
    #[error("blob {expected}: content hashes to sha256:{actual}")]
    DigestMismatch {
        /// The digest the manifest promised.
        expected: String,
        /// The hex SHA-256 of what was read.
        actual: String,
    },
    /// A blob is shorter or longer than its descriptor says.
    #[error("blob {digest}: descriptor size {expected} bytes, read {actual}")]
    SizeMismatch {
        /// The blob.
        digest: String,
        /// The size from the descriptor.
        expected: u64,
        /// What was found.
        actual: u64,
    },
    /// A blob or archive member that the manifest names is absent.
    #[error("{what}: not found in the image")]
    MissingBlob {
        /// The blob digest or archive path.
        what: String,
    },
    /// A path inside the image is unsafe (absolute after cleaning, `..`, NUL, too long).
    #[error("{context}: unsafe path {path:?}: {reason}")]
    UnsafePath {
        /// The layer or document it came from.
        context: String,
        /// The path as found (lossy UTF-8).
        path: String,
        /// Why it was refused.
        reason: &'static str,
    },
    /// A configured bound was exceeded (entry count, bytes, document size).
    #[error("{what}: exceeds the limit of {limit}")]
    LimitExceeded {
        /// What grew too large.
        what: String,
        /// The limit in force.
        limit: u64,
    },
    /// The image has a shape this tool does not handle (media type, schema version, ...).
    #[error("{what}: unsupported: {reason}")]
    Unsupported {
        /// Which document or blob.
        what: String,
        /// Why.
        reason: String,
    },
    /// More than one image is in the layout/archive and none was selected.
    #[error("{path}: {count} images found ({candidates}); keep one image per layout or archive")]
    Ambiguous {
        /// The image path.
        path: PathBuf,
        /// How many were found.
        count: usize,
        /// Their names or digests.
        candidates: String,
    },
}

impl ImageError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn tar(what: impl Into<String>, source: std::io::Error) -> Self {
        Self::Tar {
            what: what.into(),
            source,
        }
    }

    pub(crate) fn limit(what: impl Into<String>, limit: u64) -> Self {
        Self::LimitExceeded {
            what: what.into(),
            limit,
        }
    }
}
