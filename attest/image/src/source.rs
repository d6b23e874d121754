//! Where an image's files come from: an OCI image layout directory, or a tar archive of one
//! (`oci-archive:`) or a `docker save`-style archive (`docker-archive:`), as `skopeo copy` writes.
//!
//! An archive is indexed once (member name → offset and size, via a seeking tar scan) and its
//! members are then read in place, never extracted to disk, so a hostile member name cannot
//! write anywhere. Every read is bounded by the member's declared size, and a member that ends
//! early is reported as truncated by the caller's size and digest checks.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use crate::error::ImageError;
use crate::Limits;

/// How many symlink hops inside an archive are followed (old `docker save` links duplicate
/// layers to the first copy).
const MAX_LINK_HOPS: usize = 8;

/// An opened image store.
#[derive(Debug)]
pub(crate) enum Store {
    /// An OCI image layout directory.
    Dir { root: PathBuf },
    /// A tar archive, indexed but not extracted.
    Archive {
        path: PathBuf,
        members: HashMap<String, Member>,
    },
}

/// One archive member: a regular file at a byte range, or a symlink to another member.
#[derive(Debug, Clone)]
pub(crate) enum Member {
    File { offset: u64, size: u64 },
    Link { target: String },
}

impl Store {
    /// Opens `path`: a directory is taken as an image layout, a file as a tar archive.
    pub(crate) fn open(path: &Path, limits: &Limits) -> Result<Self, ImageError> {
        let meta = std::fs::metadata(path).map_err(|e| ImageError::io(path, e))?;
        if meta.is_dir() {
            return Ok(Self::Dir {
                root: path.to_path_buf(),
            });
        }
        if !meta.is_file() {
            return Err(ImageError::NotAnImage {
                path: path.to_path_buf(),
                reason: "neither a directory nor a regular file".into(),
            });
        }
        let members = index_archive(path, limits)?;
        Ok(Self::Archive {
            path: path.to_path_buf(),
            members,
        })
    }

    /// The path the store was opened from.
    pub(crate) fn path(&self) -> &Path {
        match self {
            Self::Dir { root } => root,
            Self::Archive { path, .. } => path,
        }
    }

    /// Whether a member (a relative, already-cleaned name) exists.
    pub(crate) fn contains(&self, name: &str) -> bool {
        match self {
            Self::Dir { root } => {
                std::fs::symlink_metadata(root.join(name)).is_ok_and(|m| m.is_file())
            }
            Self::Archive { members, .. } => self.resolve(members, name).is_ok(),
        }
    }

    /// Opens a member for reading; returns the reader and the member's size in bytes.
    /// The reader never yields more than that size.
    pub(crate) fn open_member(&self, name: &str) -> Result<(Box<dyn Read + '_>, u64), ImageError> {
        match self {
            Self::Dir { root } => {
                let path = root.join(name);
                // Blobs must be regular files: a symlink in a layout could point anywhere.
                let meta = std::fs::symlink_metadata(&path).map_err(|e| {
                    if e.kind() == std::io::ErrorKind::NotFound {
                        ImageError::MissingBlob { what: name.into() }
                    } else {
                        ImageError::io(&path, e)
                    }
                })?;
                if !meta.is_file() {
                    return Err(ImageError::UnsafePath {
                        context: self.path().display().to_string(),
                        path: name.into(),
                        reason: "not a regular file",
                    });
                }
                // ... and a symlinked directory on the way (`blobs -> /`) must not lead out.
                let real = path.canonicalize().map_err(|e| ImageError::io(&path, e))?;
                let real_root = root.canonicalize().map_err(|e| ImageError::io(root, e))?;
                if !real.starts_with(&real_root) {
                    return Err(ImageError::UnsafePath {
                        context: self.path().display().to_string(),
                        path: name.into(),
                        reason: "resolves outside the image layout",
                    });
                }
                let file = File::open(&path).map_err(|e| ImageError::io(&path, e))?;
                let size = meta.len();
                Ok((Box::new(BufReader::new(file).take(size)), size))
            }
            Self::Archive { path, members } => {
                let (offset, size) = self.resolve(members, name)?;
                let mut file = File::open(path).map_err(|e| ImageError::io(path, e))?;
                file.seek(SeekFrom::Start(offset))
                    .map_err(|e| ImageError::io(path, e))?;
                Ok((Box::new(BufReader::new(file).take(size)), size))
            }
        }
    }

    /// Reads a whole member that must be small (JSON documents), bounded by `limit`.
    pub(crate) fn read_small(&self, name: &str, limit: u64) -> Result<Vec<u8>, ImageError> {
        let (reader, size) = self.open_member(name)?;
        if size > limit {
            return Err(ImageError::limit(format!("{name} ({size} bytes)"), limit));
        }
        let mut buf = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
        reader
            .take(limit)
            .read_to_end(&mut buf)
            .map_err(|e| ImageError::io(self.path().join(name), e))?;
        if buf.len() as u64 != size {
            return Err(ImageError::tar(
                format!("{}: member {name}", self.path().display()),
                std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!("declared {size} bytes, read {}", buf.len()),
                ),
            ));
        }
        Ok(buf)
    }

    fn resolve(
        &self,
        members: &HashMap<String, Member>,
        name: &str,
    ) -> Result<(u64, u64), ImageError> {
        let mut current = name.to_owned();
        for _ in 0..=MAX_LINK_HOPS {
            match members.get(&current) {
                Some(Member::File { offset, size }) => return Ok((*offset, *size)),
                Some(Member::Link { target }) => {
                    let base = current.rsplit_once('/').map_or("", |(dir, _)| dir);
                    let joined = if target.starts_with('/') || base.is_empty() {
                        target.clone()
                    } else {
                        format!("{base}/{target}")
                    };
                    current = clean_member_name(&joined, &self.path().display().to_string())?;
                }
                None => return Err(ImageError::MissingBlob { what: name.into() }),
            }
        }
        Err(ImageError::UnsafePath {
            context: self.path().display().to_string(),
            path: name.into(),
            reason: "too many symlink hops",
        })
    }
}

/// Cleans an archive member name or a path named by a manifest: strips `./` and leading `/`,
/// refuses `..`, NUL and empty names. The result is relative and contains no `.` components.
pub(crate) fn clean_member_name(raw: &str, context: &str) -> Result<String, ImageError> {
    let unsafe_path = |reason| ImageError::UnsafePath {
        context: context.into(),
        path: raw.into(),
        reason,
    };
    if raw.contains('\0') {
        return Err(unsafe_path("contains NUL"));
    }
    let mut parts = Vec::new();
    for part in raw.split('/') {
        match part {
            "" | "." => {}
            ".." => return Err(unsafe_path("contains `..`")),
            p => parts.push(p),
        }
    }
    if parts.is_empty() {
        return Err(unsafe_path("empty"));
    }
    Ok(parts.join("/"))
}

/// Scans an archive once and records where each member's data lies.
fn index_archive(path: &Path, limits: &Limits) -> Result<HashMap<String, Member>, ImageError> {
    let what = path.display().to_string();
    let mut file = File::open(path).map_err(|e| ImageError::io(path, e))?;
    let mut head = [0u8; 512];
    let got = read_full(&mut file, &mut head).map_err(|e| ImageError::io(path, e))?;
    if got >= 2 && head[..2] == [0x1f, 0x8b] {
        return Err(ImageError::Unsupported {
            what,
            reason: "gzip-compressed archive; decompress it first".into(),
        });
    }
    // skopeo, docker and umoci write ustar/GNU/PAX headers; refuse anything else up front
    // rather than echo a hostile file's bytes back in a header parse error.
    if got < 512 || &head[257..262] != b"ustar" {
        return Err(ImageError::NotAnImage {
            path: path.to_path_buf(),
            reason: "not a tar archive (no ustar header)".into(),
        });
    }
    file.seek(SeekFrom::Start(0))
        .map_err(|e| ImageError::io(path, e))?;
    let file_len = file.metadata().map_err(|e| ImageError::io(path, e))?.len();
    let mut archive = tar::Archive::new(file);
    let mut members = HashMap::new();
    let entries = archive
        .entries_with_seek()
        .map_err(|e| ImageError::tar(&what, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| ImageError::tar(&what, e))?;
        if members.len() >= limits.max_archive_members {
            return Err(ImageError::limit(
                format!("{what}: archive members"),
                limits.max_archive_members as u64,
            ));
        }
        let raw_name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let kind = entry.header().entry_type();
        if kind.is_dir() || raw_name.trim_matches(|c| c == '.' || c == '/').is_empty() {
            continue;
        }
        let name = clean_member_name(&raw_name, &what)?;
        let member = if kind.is_file() {
            let (offset, size) = (entry.raw_file_position(), entry.size());
            if offset.saturating_add(size) > file_len {
                return Err(ImageError::tar(
                    &what,
                    std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        format!("member {name} declares {size} bytes past the end of the file"),
                    ),
                ));
            }
            Member::File { offset, size }
        } else if kind.is_symlink() {
            let target = entry
                .link_name_bytes()
                .map(|t| String::from_utf8_lossy(&t).into_owned())
                .unwrap_or_default();
            Member::Link { target }
        } else {
            continue;
        };
        members.insert(name, member);
    }
    if members.is_empty() {
        return Err(ImageError::NotAnImage {
            path: path.to_path_buf(),
            reason: "the archive holds no files".into(),
        });
    }
    Ok(members)
}

fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_names() {
        assert_eq!(
            clean_member_name("./blobs/sha256/ab", "t").unwrap(),
            "blobs/sha256/ab"
        );
        assert_eq!(clean_member_name("/index.json", "t").unwrap(), "index.json");
        assert!(matches!(
            clean_member_name("a/../../etc/passwd", "t"),
            Err(ImageError::UnsafePath { .. })
        ));
        assert!(clean_member_name("./", "t").is_err());
    }
}
