//! The result of comparing two flattened images: what was added, removed or changed, and why.
//!
//! Times are deliberately not compared (builders stamp them differently and reproducible builds
//! normalise them anyway); everything that changes what the image does is: content, kind,
//! permission bits, owner, link target, device numbers, extended attributes (file capabilities
//! live there) and the runtime config.

use std::fmt;

use crate::layer::{FileEntry, FileTree};
use crate::manifest::ImageConfig;

/// Which image a side of the comparison is, for the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageSummary {
    /// The path given.
    pub path: String,
    /// `OCI layout`, `OCI archive` or `docker archive`.
    pub format: &'static str,
    /// The manifest digest, when the format has one.
    pub manifest_digest: Option<String>,
    /// How many entries the flattened image has.
    pub files: usize,
}

/// One way a file differs between the expected and the actual image.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Difference {
    /// The kind changed (file → symlink, ...).
    Kind {
        /// Expected kind.
        expected: String,
        /// Actual kind.
        actual: String,
    },
    /// The content's SHA-256 changed.
    Content {
        /// Expected hex digest and size.
        expected: String,
        /// Actual hex digest and size.
        actual: String,
    },
    /// The permission bits changed.
    Mode {
        /// Expected `mode & 0o7777`.
        expected: u32,
        /// Actual `mode & 0o7777`.
        actual: u32,
    },
    /// The owner changed.
    Owner {
        /// Expected `(uid, gid)`.
        expected: (u64, u64),
        /// Actual `(uid, gid)`.
        actual: (u64, u64),
    },
    /// The symlink or hard-link target changed.
    LinkTarget {
        /// Expected target.
        expected: Option<String>,
        /// Actual target.
        actual: Option<String>,
    },
    /// Device numbers changed.
    Device {
        /// Expected `(major, minor)`.
        expected: Option<(u32, u32)>,
        /// Actual `(major, minor)`.
        actual: Option<(u32, u32)>,
    },
    /// Extended attributes differ; the names of those that differ.
    Xattrs {
        /// Attribute names added, removed or changed.
        names: Vec<String>,
    },
}

impl fmt::Display for Difference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Kind { expected, actual } => write!(f, "kind {expected} → {actual}"),
            Self::Content { expected, actual } => write!(f, "content {expected} → {actual}"),
            Self::Mode { expected, actual } => write!(f, "mode {expected:04o} → {actual:04o}"),
            Self::Owner { expected, actual } => write!(
                f,
                "owner {}:{} → {}:{}",
                expected.0, expected.1, actual.0, actual.1
            ),
            Self::LinkTarget { expected, actual } => {
                write!(f, "link target {expected:?} → {actual:?}")
            }
            Self::Device { expected, actual } => write!(f, "device {expected:?} → {actual:?}"),
            Self::Xattrs { names } => write!(f, "xattrs differ: {}", names.join(", ")),
        }
    }
}

/// A file present in both images whose metadata or content differs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Changed {
    /// Absolute path in the image.
    pub path: String,
    /// Every way it differs.
    pub reasons: Vec<Difference>,
}

/// A difference in the image config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigDifference {
    /// The OCI config field (`Entrypoint`, `Env`, `User`, ...).
    pub field: &'static str,
    /// The expected value, rendered as JSON.
    pub expected: String,
    /// The actual value, rendered as JSON.
    pub actual: String,
}

/// The outcome of `compare`: empty lists mean the images are identical.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Comparison {
    /// The expected image (usually the rebuild).
    pub expected: ImageSummary,
    /// The actual image (usually the one pulled from the registry).
    pub actual: ImageSummary,
    /// Paths only in the actual image, with their entries.
    pub added: Vec<(String, FileEntry)>,
    /// Paths only in the expected image.
    pub removed: Vec<String>,
    /// Paths in both that differ.
    pub changed: Vec<Changed>,
    /// Config fields that differ.
    pub config: Vec<ConfigDifference>,
}

impl Comparison {
    /// True when no file and no config field differs.
    #[must_use]
    pub fn is_identical(&self) -> bool {
        self.added.is_empty()
            && self.removed.is_empty()
            && self.changed.is_empty()
            && self.config.is_empty()
    }

    /// Compares two flattened images.
    pub(crate) fn build(
        expected: (ImageSummary, &FileTree, &ImageConfig),
        actual: (ImageSummary, &FileTree, &ImageConfig),
    ) -> Self {
        let (exp_files, act_files) = (expected.1, actual.1);
        let added = act_files
            .iter()
            .filter(|(p, _)| !exp_files.contains_key(*p))
            .map(|(p, e)| (p.clone(), e.clone()))
            .collect();
        let removed = exp_files
            .keys()
            .filter(|p| !act_files.contains_key(*p))
            .cloned()
            .collect();
        let changed = exp_files
            .iter()
            .filter_map(|(path, exp)| {
                let act = act_files.get(path)?;
                let reasons = differences(exp, act);
                (!reasons.is_empty()).then(|| Changed {
                    path: path.clone(),
                    reasons,
                })
            })
            .collect();
        Self {
            config: config_differences(expected.2, actual.2),
            expected: expected.0,
            actual: actual.0,
            added,
            removed,
            changed,
        }
    }
}

fn content(entry: &FileEntry) -> String {
    match &entry.sha256 {
        Some(hash) => format!(
            "sha256:{} ({} bytes)",
            &hash[..16.min(hash.len())],
            entry.size
        ),
        None => "none".into(),
    }
}

fn differences(exp: &FileEntry, act: &FileEntry) -> Vec<Difference> {
    let mut out = Vec::new();
    if exp.kind != act.kind {
        out.push(Difference::Kind {
            expected: exp.kind.to_string(),
            actual: act.kind.to_string(),
        });
    }
    if exp.sha256 != act.sha256 || exp.size != act.size {
        out.push(Difference::Content {
            expected: content(exp),
            actual: content(act),
        });
    }
    if exp.mode != act.mode {
        out.push(Difference::Mode {
            expected: exp.mode,
            actual: act.mode,
        });
    }
    if (exp.uid, exp.gid) != (act.uid, act.gid) {
        out.push(Difference::Owner {
            expected: (exp.uid, exp.gid),
            actual: (act.uid, act.gid),
        });
    }
    if exp.link != act.link {
        out.push(Difference::LinkTarget {
            expected: exp.link.clone(),
            actual: act.link.clone(),
        });
    }
    if exp.device != act.device {
        out.push(Difference::Device {
            expected: exp.device,
            actual: act.device,
        });
    }
    if exp.xattrs != act.xattrs {
        let mut names: Vec<String> = exp
            .xattrs
            .keys()
            .chain(act.xattrs.keys())
            .filter(|k| exp.xattrs.get(*k) != act.xattrs.get(*k))
            .cloned()
            .collect();
        names.dedup();
        out.push(Difference::Xattrs { names });
    }
    out
}

fn config_differences(exp: &ImageConfig, act: &ImageConfig) -> Vec<ConfigDifference> {
    fn json<T: serde::Serialize>(v: &T) -> String {
        serde_json::to_string(v).unwrap_or_else(|e| format!("<unprintable: {e}>"))
    }
    let mut out = Vec::new();
    let mut check = |field, e: String, a: String| {
        if e != a {
            out.push(ConfigDifference {
                field,
                expected: e,
                actual: a,
            });
        }
    };
    check("Entrypoint", json(&exp.entrypoint), json(&act.entrypoint));
    check("Cmd", json(&exp.cmd), json(&act.cmd));
    check("Env", json(&exp.env), json(&act.env));
    check("User", json(&exp.user), json(&act.user));
    check("WorkingDir", json(&exp.working_dir), json(&act.working_dir));
    check(
        "ExposedPorts",
        json(&exp.exposed_ports),
        json(&act.exposed_ports),
    );
    check("Labels", json(&exp.labels), json(&act.labels));
    check("StopSignal", json(&exp.stop_signal), json(&act.stop_signal));
    check(
        "architecture",
        json(&exp.architecture),
        json(&act.architecture),
    );
    check("os", json(&exp.os), json(&act.os));
    out
}

impl fmt::Display for ImageSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({}", self.path, self.format)?;
        if let Some(digest) = &self.manifest_digest {
            write!(f, ", manifest {digest}")?;
        }
        write!(f, ", {} entries)", self.files)
    }
}

impl fmt::Display for Comparison {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "expected: {}", self.expected)?;
        writeln!(f, "actual:   {}", self.actual)?;
        for (path, entry) in &self.added {
            write!(
                f,
                "+ {path} ({}, mode {:04o}, owner {}:{}",
                entry.kind, entry.mode, entry.uid, entry.gid
            )?;
            if let Some(hash) = &entry.sha256 {
                write!(f, ", sha256:{}", &hash[..16.min(hash.len())])?;
            }
            if let Some(link) = &entry.link {
                write!(f, ", → {link}")?;
            }
            writeln!(f, ")")?;
        }
        for path in &self.removed {
            writeln!(f, "- {path}")?;
        }
        for change in &self.changed {
            let reasons: Vec<String> = change.reasons.iter().map(ToString::to_string).collect();
            writeln!(f, "~ {}: {}", change.path, reasons.join("; "))?;
        }
        for diff in &self.config {
            writeln!(
                f,
                "~ config {}: {} → {}",
                diff.field, diff.expected, diff.actual
            )?;
        }
        if self.is_identical() {
            write!(f, "identical: every file and the config match")
        } else {
            write!(
                f,
                "different: {} added, {} removed, {} changed, {} config fields",
                self.added.len(),
                self.removed.len(),
                self.changed.len(),
                self.config.len()
            )
        }
    }
}
