//! Flattening: apply an image's layers in order into one file tree, honouring whiteouts.
//!
//! Semantics follow the OCI image spec's "Representing Changes": a `.wh.NAME` entry deletes
//! `NAME` (and everything under it) from the lower layers; a `.wh..wh..opq` entry in a directory
//! hides every lower-layer child of that directory. Whiteouts act only on the layers below, so
//! a layer's own entries are applied after its whiteouts, whatever their order in the tar.
//!
//! Each layer is streamed (never extracted): its stored bytes are hashed against the manifest's
//! digest, the decompressed tar against the config's `diff_id`, and every regular file's content
//! is hashed with SHA-256. Entry counts, per-entry sizes and total bytes are bounded.

use std::collections::BTreeMap;
use std::io::{self, Read};

use sha2::{Digest, Sha256};

use crate::error::ImageError;
use crate::manifest::LayerRef;
use crate::source::Store;
use crate::Limits;

/// The flattened file system of an image: absolute path (`/` for the root) → entry.
pub type FileTree = BTreeMap<String, FileEntry>;

/// What kind of file an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link.
    Symlink,
    /// A hard link to another path of the image.
    HardLink,
    /// A character device.
    CharDevice,
    /// A block device.
    BlockDevice,
    /// A named pipe.
    Fifo,
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::File => "file",
            Self::Dir => "directory",
            Self::Symlink => "symlink",
            Self::HardLink => "hard link",
            Self::CharDevice => "char device",
            Self::BlockDevice => "block device",
            Self::Fifo => "fifo",
        })
    }
}

/// One file of the flattened image, with everything `compare` looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileEntry {
    /// The file's kind.
    pub kind: Kind,
    /// Permission bits, including setuid/setgid/sticky (`mode & 0o7777`).
    pub mode: u32,
    /// Owner user id.
    pub uid: u64,
    /// Owner group id.
    pub gid: u64,
    /// Content length for regular files (and hard links to them), else 0.
    pub size: u64,
    /// Hex SHA-256 of the content, for regular files and hard links to known files.
    pub sha256: Option<String>,
    /// Symlink target as stored, or the hard link's (cleaned, absolute) target path.
    pub link: Option<String>,
    /// Device major and minor numbers, for device nodes.
    pub device: Option<(u32, u32)>,
    /// Extended attributes (`SCHILY.xattr.*` PAX records), e.g. `security.capability`.
    pub xattrs: Xattrs,
}

/// Extended attributes by name.
pub type Xattrs = BTreeMap<String, Vec<u8>>;

/// Running totals across all layers of one image, checked against `Limits`.
#[derive(Debug, Default)]
pub(crate) struct Budget {
    entries: u64,
}

/// Applies one layer to `tree`.
pub(crate) fn apply_layer(
    store: &Store,
    layer: &LayerRef,
    index: usize,
    tree: &mut FileTree,
    budget: &mut Budget,
    limits: &Limits,
) -> Result<(), ImageError> {
    let what = format!("{} layer {index} ({})", store.path().display(), layer.name);
    if let Some(media) = &layer.media_type {
        if media.contains("zstd") || media.contains("encrypted") || media.ends_with("+bzip2") {
            return Err(ImageError::Unsupported {
                what,
                reason: format!("layer media type {media}"),
            });
        }
    }
    let (raw, stored_size) = store.open_member(&layer.name)?;
    if let Some(size) = layer.size {
        if size != stored_size {
            return Err(ImageError::SizeMismatch {
                digest: layer
                    .blob_digest
                    .clone()
                    .unwrap_or_else(|| layer.name.clone()),
                expected: size,
                actual: stored_size,
            });
        }
    }
    let mut stored = HashingReader::new(raw, u64::MAX);
    // Sniff gzip from the magic bytes rather than trusting the media type.
    let mut magic = [0u8; 2];
    let got = read_up_to(&mut stored, &mut magic).map_err(|e| ImageError::tar(&what, e))?;
    let prefix = io::Cursor::new(magic[..got].to_vec());
    let chained = prefix.chain(&mut stored);
    let decompressed: Box<dyn Read + '_> = if got == 2 && magic == [0x1f, 0x8b] {
        Box::new(flate2::read::MultiGzDecoder::new(chained))
    } else {
        Box::new(chained)
    };
    let mut diff = HashingReader::new(decompressed, limits.max_unpacked_bytes);
    // A decompression bomb surfaces as a read error somewhere inside the tar reader; the
    // reader's own flag tells it apart from a malformed stream.
    let over_limit = |exceeded: bool, err: ImageError| {
        if exceeded {
            ImageError::limit(
                format!("{what}: decompressed bytes"),
                limits.max_unpacked_bytes,
            )
        } else {
            err
        }
    };
    let changes = match read_changes(&mut diff, &what, tree, budget, limits) {
        Ok(changes) => changes,
        Err(err) => return Err(over_limit(diff.exceeded, err)),
    };
    // Drain the tar's trailing blocks so both hashes cover every byte.
    if let Err(e) = io::copy(&mut diff, &mut io::sink()) {
        return Err(over_limit(diff.exceeded, ImageError::tar(&what, e)));
    }
    let diff_hex = diff.finish();
    if let Some(expected) = &layer.diff_id {
        if expected[7..] != diff_hex {
            return Err(ImageError::DigestMismatch {
                expected: expected.clone(),
                actual: diff_hex,
            });
        }
    }
    io::copy(&mut stored, &mut io::sink()).map_err(|e| ImageError::tar(&what, e))?;
    let (read, stored_hex) = (stored.count, stored.finish());
    if read != stored_size {
        return Err(ImageError::SizeMismatch {
            digest: layer
                .blob_digest
                .clone()
                .unwrap_or_else(|| layer.name.clone()),
            expected: stored_size,
            actual: read,
        });
    }
    if let Some(expected) = &layer.blob_digest {
        if expected[7..] != stored_hex {
            return Err(ImageError::DigestMismatch {
                expected: expected.clone(),
                actual: stored_hex,
            });
        }
    }
    changes.apply(tree);
    Ok(())
}

/// One layer's changes, gathered before they are applied.
#[derive(Default)]
struct Changes {
    /// Paths deleted from lower layers (`.wh.NAME`).
    whiteouts: Vec<String>,
    /// Directories whose lower-layer children are hidden (`.wh..wh..opq`).
    opaque: Vec<String>,
    /// New or replaced entries, in tar order.
    entries: Vec<(String, FileEntry)>,
}

impl Changes {
    fn apply(self, tree: &mut FileTree) {
        for path in &self.whiteouts {
            tree.remove(path);
            remove_descendants(tree, path);
        }
        for dir in &self.opaque {
            remove_descendants(tree, dir);
        }
        for (path, entry) in self.entries {
            if entry.kind != Kind::Dir {
                remove_descendants(tree, &path);
            }
            tree.insert(path, entry);
        }
    }
}

fn remove_descendants(tree: &mut FileTree, dir: &str) {
    let prefix = if dir == "/" {
        "/".to_owned()
    } else {
        format!("{dir}/")
    };
    let doomed: Vec<String> = tree
        .range(prefix.clone()..)
        .take_while(|(k, _)| k.starts_with(&prefix))
        .map(|(k, _)| k.clone())
        .collect();
    for key in doomed {
        tree.remove(&key);
    }
}

fn read_changes(
    input: &mut dyn Read,
    what: &str,
    tree: &FileTree,
    budget: &mut Budget,
    limits: &Limits,
) -> Result<Changes, ImageError> {
    let mut archive = tar::Archive::new(input);
    let mut changes = Changes::default();
    let tar_err = |e| ImageError::tar(what, e);
    for entry in archive.entries().map_err(tar_err)? {
        let mut entry = entry.map_err(tar_err)?;
        budget.entries += 1;
        if budget.entries > limits.max_entries {
            return Err(ImageError::limit(
                format!("{what}: file entries"),
                limits.max_entries,
            ));
        }
        let path = clean_image_path(&entry.path_bytes(), what, limits)?;
        let kind = match entry.header().entry_type() {
            tar::EntryType::Regular | tar::EntryType::Continuous => Kind::File,
            tar::EntryType::Directory => Kind::Dir,
            tar::EntryType::Symlink => Kind::Symlink,
            tar::EntryType::Link => Kind::HardLink,
            tar::EntryType::Char => Kind::CharDevice,
            tar::EntryType::Block => Kind::BlockDevice,
            tar::EntryType::Fifo => Kind::Fifo,
            tar::EntryType::XGlobalHeader => continue,
            other => {
                return Err(ImageError::Unsupported {
                    what: format!("{what}: {path}"),
                    reason: format!("tar entry type {other:?}"),
                })
            }
        };
        let (parent, base) = split(&path);
        if base == ".wh..wh..opq" {
            changes.opaque.push(parent.to_owned());
            continue;
        }
        if let Some(hidden) = base.strip_prefix(".wh.") {
            if !hidden.starts_with(".wh.") {
                changes.whiteouts.push(join(parent, hidden));
            }
            // Other `.wh..wh.*` names are AUFS bookkeeping, not files of the image.
            continue;
        }
        let (uid, gid, xattrs) = owner_and_xattrs(&mut entry, what)?;
        let header = entry.header();
        let mode = header.mode().map_err(tar_err)? & 0o7777;
        let device = if matches!(kind, Kind::CharDevice | Kind::BlockDevice) {
            Some((
                header.device_major().map_err(tar_err)?.unwrap_or(0),
                header.device_minor().map_err(tar_err)?.unwrap_or(0),
            ))
        } else {
            None
        };
        let mut file = FileEntry {
            kind,
            mode,
            uid,
            gid,
            size: 0,
            sha256: None,
            link: None,
            device,
            xattrs,
        };
        fill_content(&mut entry, &mut file, &path, what, tree, &changes, limits)?;
        changes.entries.push((path, file));
    }
    Ok(changes)
}

/// Owner (PAX `uid`/`gid` records override the header) and `SCHILY.xattr.*` attributes.
fn owner_and_xattrs<R: Read>(
    entry: &mut tar::Entry<'_, R>,
    what: &str,
) -> Result<(u64, u64, Xattrs), ImageError> {
    let tar_err = |e| ImageError::tar(what, e);
    let mut xattrs = BTreeMap::new();
    let (mut uid, mut gid) = (
        entry.header().uid().map_err(tar_err)?,
        entry.header().gid().map_err(tar_err)?,
    );
    if let Some(pax) = entry.pax_extensions().map_err(tar_err)? {
        for ext in pax {
            let ext = ext.map_err(tar_err)?;
            let key = ext
                .key()
                .map_err(|e| ImageError::tar(what, io::Error::other(e)))?;
            if let Some(name) = key.strip_prefix("SCHILY.xattr.") {
                xattrs.insert(name.to_owned(), ext.value_bytes().to_vec());
            } else if key == "uid" {
                uid = parse_pax_number(ext.value_bytes(), what)?;
            } else if key == "gid" {
                gid = parse_pax_number(ext.value_bytes(), what)?;
            }
        }
    }
    Ok((uid, gid, xattrs))
}

/// Hashes a regular file's content, or records a link's target (a hard link takes the
/// content hash of the file it names, from this layer or a lower one).
fn fill_content<R: Read>(
    entry: &mut tar::Entry<'_, R>,
    file: &mut FileEntry,
    path: &str,
    what: &str,
    tree: &FileTree,
    changes: &Changes,
    limits: &Limits,
) -> Result<(), ImageError> {
    let link_raw = entry.link_name_bytes().map(std::borrow::Cow::into_owned);
    match file.kind {
        Kind::File => {
            let size = entry.size();
            if size > limits.max_file_bytes {
                return Err(ImageError::limit(
                    format!("{what}: {path} ({size} bytes)"),
                    limits.max_file_bytes,
                ));
            }
            let mut hasher = HashingReader::new(entry, size);
            io::copy(&mut hasher, &mut io::sink()).map_err(|e| ImageError::tar(what, e))?;
            let read = hasher.count;
            if read != size {
                return Err(ImageError::tar(
                    what,
                    io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("{path}: {read} of {size} bytes"),
                    ),
                ));
            }
            file.size = size;
            file.sha256 = Some(hasher.finish());
        }
        Kind::Symlink => {
            let target = link_raw.unwrap_or_default();
            file.link = Some(
                String::from_utf8(target).map_err(|e| ImageError::UnsafePath {
                    context: what.into(),
                    path: String::from_utf8_lossy(e.as_bytes()).into_owned(),
                    reason: "symlink target is not UTF-8",
                })?,
            );
        }
        Kind::HardLink => {
            let target = clean_image_path(&link_raw.unwrap_or_default(), what, limits)?;
            let source = changes
                .entries
                .iter()
                .rev()
                .find(|(p, _)| *p == target)
                .map(|(_, e)| e)
                .or_else(|| tree.get(&target));
            if let Some(source) = source {
                file.size = source.size;
                file.sha256.clone_from(&source.sha256);
            }
            file.link = Some(target);
        }
        Kind::Dir | Kind::CharDevice | Kind::BlockDevice | Kind::Fifo => {}
    }
    Ok(())
}

fn parse_pax_number(value: &[u8], what: &str) -> Result<u64, ImageError> {
    std::str::from_utf8(value)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| ImageError::tar(what, io::Error::other("PAX uid/gid is not a number")))
}

/// Cleans a path inside a layer into an absolute path; refuses `..`, NUL and non-UTF-8.
pub(crate) fn clean_image_path(
    raw: &[u8],
    what: &str,
    limits: &Limits,
) -> Result<String, ImageError> {
    let lossy = || String::from_utf8_lossy(raw).into_owned();
    let refuse = |reason| ImageError::UnsafePath {
        context: what.into(),
        path: lossy(),
        reason,
    };
    if raw.len() > limits.max_path_bytes {
        return Err(refuse("longer than the path limit"));
    }
    let text = std::str::from_utf8(raw).map_err(|_| refuse("not UTF-8"))?;
    if text.contains('\0') {
        return Err(refuse("contains NUL"));
    }
    let mut out = String::with_capacity(text.len() + 1);
    for part in text.split('/') {
        match part {
            "" | "." => {}
            ".." => return Err(refuse("contains `..`")),
            p => {
                out.push('/');
                out.push_str(p);
            }
        }
    }
    if out.is_empty() {
        out.push('/');
    }
    Ok(out)
}

fn split(path: &str) -> (&str, &str) {
    match path.rsplit_once('/') {
        Some(("", base)) => ("/", base),
        Some((parent, base)) => (parent, base),
        None => ("/", path),
    }
}

fn join(parent: &str, name: &str) -> String {
    if parent == "/" {
        format!("/{name}")
    } else {
        format!("{parent}/{name}")
    }
}

fn read_up_to(reader: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

/// A reader that hashes and counts what passes through, failing past `limit` bytes.
struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    count: u64,
    limit: u64,
    exceeded: bool,
}

impl<R: Read> HashingReader<R> {
    fn new(inner: R, limit: u64) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
            count: 0,
            limit,
            exceeded: false,
        }
    }

    fn finish(self) -> String {
        hex::encode(self.hasher.finalize())
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count += n as u64;
        if self.count > self.limit {
            self.exceeded = true;
            return Err(io::Error::other(format!(
                "more than the limit of {} bytes",
                self.limit
            )));
        }
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

#[cfg(test)]
mod tests;
