//! OCI image comparison, for checking that a registry image is what the build recipe makes.
//!
//! [`compare`] opens two images, each an OCI image layout directory, an `oci-archive` tarball or
//! a `docker-archive` tarball (what `skopeo copy` writes), flattens each one's layers applying
//! whiteouts, and compares every file's content hash, kind, mode, owner, link target, device
//! numbers and extended attributes, plus the image config (entrypoint, cmd, env, user, working
//! dir, exposed ports, labels, stop signal, platform). Manifest and layer digests are expected
//! to differ between builders (compression, timestamps), so the comparison is on what a
//! container would see, not on bytes of the transport.
//!
//! Both inputs are treated as hostile: nothing is extracted to disk, every read is bounded by
//! [`Limits`], every OCI blob is checked against its digest and every layer against the config's
//! `diff_ids`, and paths with `..`, NUL or non-UTF-8 bytes are refused. Errors, never panics.
//!
//! `enclaveid-attest verify-image EXPECTED ACTUAL` wraps this and exits 0 only when
//! [`Comparison::is_identical`].

mod diff;
mod error;
mod layer;
mod manifest;
mod source;

use std::path::Path;

pub use diff::{Changed, Comparison, ConfigDifference, Difference, ImageSummary};
pub use error::ImageError;
pub use layer::{FileEntry, FileTree, Kind, Xattrs};
pub use manifest::ImageConfig;

/// Bounds on what reading one image may consume.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest JSON document (index, manifest, config, `manifest.json`). Default 4 MiB.
    pub max_json_bytes: u64,
    /// Most layers in one image. Default 256.
    pub max_layers: usize,
    /// Most tar entries across all layers of one image. Default 1,000,000.
    pub max_entries: u64,
    /// Largest single file in a layer. Default 4 GiB.
    pub max_file_bytes: u64,
    /// Most decompressed bytes of one layer (a gzip bomb stops here). Default 16 GiB.
    pub max_unpacked_bytes: u64,
    /// Longest path inside a layer. Default 4096 bytes.
    pub max_path_bytes: usize,
    /// Most members in an archive. Default 100,000.
    pub max_archive_members: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_json_bytes: 4 << 20,
            max_layers: 256,
            max_entries: 1_000_000,
            max_file_bytes: 4 << 30,
            max_unpacked_bytes: 16 << 30,
            max_path_bytes: 4096,
            max_archive_members: 100_000,
        }
    }
}

/// An image flattened into its final file tree and config.
#[derive(Debug, Clone)]
pub struct FlatImage {
    /// Which image this is.
    pub summary: ImageSummary,
    /// Every path of the final file system.
    pub files: FileTree,
    /// The runtime config.
    pub config: ImageConfig,
}

/// Opens an image (layout directory or archive) and flattens its layers.
pub fn flatten(path: &Path, limits: &Limits) -> Result<FlatImage, ImageError> {
    let store = source::Store::open(path, limits)?;
    let resolved = manifest::resolve(&store, limits)?;
    let mut files = FileTree::new();
    let mut budget = layer::Budget::default();
    for (index, layer_ref) in resolved.layers.iter().enumerate() {
        layer::apply_layer(&store, layer_ref, index, &mut files, &mut budget, limits)?;
    }
    Ok(FlatImage {
        summary: ImageSummary {
            path: path.display().to_string(),
            format: resolved.format,
            manifest_digest: resolved.manifest_digest,
            files: files.len(),
        },
        files,
        config: resolved.config,
    })
}

/// Compares two images with the default [`Limits`].
pub fn compare(expected: &Path, actual: &Path) -> Result<Comparison, ImageError> {
    compare_with_limits(expected, actual, &Limits::default())
}

/// Compares two images under the given limits.
pub fn compare_with_limits(
    expected: &Path,
    actual: &Path,
    limits: &Limits,
) -> Result<Comparison, ImageError> {
    let exp = flatten(expected, limits)?;
    let act = flatten(actual, limits)?;
    Ok(Comparison::build(
        (exp.summary, &exp.files, &exp.config),
        (act.summary, &act.files, &act.config),
    ))
}
