//! Where the VCEK and its ASK/ARK come from, and the cache that keeps them.
//!
//! Sources ([`VcekSource`]):
//! - `report`: the certificate table the host attaches to an extended report (`sev-guest`);
//! - `thim[:URL]`: Azure's THIM endpoint (default [`THIM_URL`]), which answers JSON with
//!   `vcekCert` and `certificateChain` (ASK then ARK) for the VM's chip and current TCB;
//! - `file:PATH`: a PEM bundle (VCEK, ASK, ARK in any order) or a single DER VCEK.
//!
//! `auto` means `report` for `sev-guest` and `thim` for `vtpm`. When a source yields the VCEK
//! alone, the ASK and ARK come from the configured `cert_chain` file (AMD KDS form). Nothing
//! here names a product: whatever chain the source hands over (Milan, Genoa, Turin) is passed on,
//! and the verifier decides which pinned ARK it must chain to.
//!
//! Chains are cached in memory per (chip ID, reported TCB), so a TCB update fetches the new VCEK,
//! and optionally on disk (`vcek_cache_dir`) as JSON, written by atomic rename.

mod http;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Mutex;
use std::time::Duration;

use base64::Engine as _;
use der::{Decode as _, DecodePem as _, Encode as _};
use serde::{Deserialize, Serialize};
use thiserror::Error;
use tracing::{debug, info, warn};
use x509_cert::Certificate;

use super::sev_guest::CertTable;

/// Azure THIM's AMD certification endpoint (link-local IMDS).
pub const THIM_URL: &str = "http://169.254.169.254/metadata/THIM/amd/certification";

/// Largest VCEK file or THIM answer accepted.
const MAX_DOCUMENT: usize = 64 * 1024;

/// Where the VCEK comes from.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum VcekSource {
    /// `report` for `sev-guest`, `thim` for `vtpm`, nothing for `simulated`.
    #[default]
    Auto,
    /// The extended report's certificate table.
    Report,
    /// Azure THIM at this URL (plain `http://`).
    Thim(String),
    /// A PEM bundle or a DER VCEK on disk.
    File(PathBuf),
}

impl FromStr for VcekSource {
    type Err = VcekError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Self::Auto),
            "report" => Ok(Self::Report),
            "thim" => Ok(Self::Thim(THIM_URL.to_owned())),
            _ => {
                if let Some(url) = s.strip_prefix("thim:") {
                    http::Url::parse(url)?;
                    Ok(Self::Thim(url.to_owned()))
                } else if let Some(path) = s.strip_prefix("file:").filter(|p| !p.is_empty()) {
                    Ok(Self::File(PathBuf::from(path)))
                } else {
                    Err(VcekError::Source(s.to_owned()))
                }
            }
        }
    }
}

impl TryFrom<String> for VcekSource {
    type Error = VcekError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        value.parse()
    }
}

impl std::fmt::Display for VcekSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Auto => f.write_str("auto"),
            Self::Report => f.write_str("report"),
            Self::Thim(url) => write!(f, "thim:{url}"),
            Self::File(path) => write!(f, "file:{}", path.display()),
        }
    }
}

/// Why no VCEK chain could be had.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum VcekError {
    /// The `--vcek` value is not a known source.
    #[error("vcek={0:?}: must be auto, report, thim, thim:http://HOST[:PORT]/PATH or file:PATH")]
    Source(String),
    /// A URL is not `http://host[:port]/path`.
    #[error("vcek URL {url:?}: {reason}")]
    Url {
        /// The URL.
        url: String,
        /// Why it was refused.
        reason: &'static str,
    },
    /// Fetching from THIM failed.
    #[error("fetching {url}: {reason}")]
    Fetch {
        /// The URL.
        url: String,
        /// What went wrong.
        reason: String,
    },
    /// A file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A certificate document could not be parsed.
    #[error("{what}: {reason}")]
    Parse {
        /// What was parsed.
        what: String,
        /// Why it failed.
        reason: String,
    },
    /// A certificate is missing from every configured source.
    #[error("no {which} certificate from {origin}; configure cert_chain (--cert-chain) with the ASK and ARK, or another --vcek source")]
    Missing {
        /// `VCEK`, `ASK` or `ARK`.
        which: &'static str,
        /// The source that lacked it.
        origin: String,
    },
}

/// A VCEK with its ASK and ARK, as PEM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VcekChain {
    /// The VCEK (or VLEK).
    pub vcek: String,
    /// The ASK (or ASVK).
    pub ask: String,
    /// The ARK.
    pub ark: String,
}

/// Certificates found so far, DER.
#[derive(Debug, Default)]
struct Parts {
    vcek: Option<Vec<u8>>,
    ask: Option<Vec<u8>>,
    ark: Option<Vec<u8>>,
}

/// Resolves and caches VCEK chains for one provider.
#[derive(Debug)]
pub struct VcekResolver {
    source: VcekSource,
    cert_chain: Option<PathBuf>,
    cache_dir: Option<PathBuf>,
    memory: Mutex<HashMap<([u8; 64], u64), VcekChain>>,
}

impl VcekResolver {
    /// A resolver for `source` (already resolved from `auto` by the caller).
    #[must_use]
    pub fn new(
        source: VcekSource,
        cert_chain: Option<PathBuf>,
        cache_dir: Option<PathBuf>,
    ) -> Self {
        Self {
            source,
            cert_chain,
            cache_dir,
            memory: Mutex::new(HashMap::new()),
        }
    }

    /// The chain for the chip and TCB of `report` (1184 raw bytes). `table` is the extended
    /// report's certificates (DER), used by the `report` source.
    pub fn resolve(
        &self,
        report: &[u8],
        table: Option<&CertTable>,
    ) -> Result<VcekChain, VcekError> {
        let key = cache_key(report)?;
        // With the report source the host's table is authoritative and free: never cache it.
        if self.source != VcekSource::Report {
            let memory = self
                .memory
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some(chain) = memory.get(&key) {
                return Ok(chain.clone());
            }
            drop(memory);
            if let Some(chain) = self.load_from_disk(&key) {
                self.remember(key, &chain);
                return Ok(chain);
            }
        }
        let mut parts = match &self.source {
            VcekSource::Report | VcekSource::Auto => {
                let table = table.cloned().unwrap_or_default();
                Parts {
                    vcek: table.vcek,
                    ask: table.ask,
                    ark: table.ark,
                }
            }
            VcekSource::Thim(url) => fetch_thim(url)?,
            VcekSource::File(path) => parts_from_file(path)?,
        };
        if parts.ask.is_none() || parts.ark.is_none() {
            if let Some(path) = &self.cert_chain {
                let extra = parts_from_file(path)?;
                parts.ask = parts.ask.or(extra.ask);
                parts.ark = parts.ark.or(extra.ark);
            }
        }
        let source = self.source.to_string();
        let missing = |which| VcekError::Missing {
            which,
            origin: source.clone(),
        };
        let chain = VcekChain {
            vcek: pem("CERTIFICATE", &parts.vcek.ok_or_else(|| missing("VCEK"))?),
            ask: pem("CERTIFICATE", &parts.ask.ok_or_else(|| missing("ASK"))?),
            ark: pem("CERTIFICATE", &parts.ark.ok_or_else(|| missing("ARK"))?),
        };
        if self.source != VcekSource::Report {
            info!(source = %self.source, "VCEK chain fetched");
            self.remember(key, &chain);
            self.save_to_disk(&key, &chain);
        }
        Ok(chain)
    }

    fn remember(&self, key: ([u8; 64], u64), chain: &VcekChain) {
        self.memory
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(key, chain.clone());
    }

    fn cache_file(&self, key: &([u8; 64], u64)) -> Option<PathBuf> {
        let dir = self.cache_dir.as_ref()?;
        Some(dir.join(format!("vcek-{}-{:016x}.json", hex::encode(key.0), key.1)))
    }

    fn load_from_disk(&self, key: &([u8; 64], u64)) -> Option<VcekChain> {
        let path = self.cache_file(key)?;
        let text = std::fs::read(&path).ok()?;
        match serde_json::from_slice(&text) {
            Ok(chain) => {
                debug!(path = %path.display(), "VCEK chain from the disk cache");
                Some(chain)
            }
            Err(error) => {
                warn!(path = %path.display(), %error, "ignoring a corrupt VCEK cache file");
                None
            }
        }
    }

    fn save_to_disk(&self, key: &([u8; 64], u64), chain: &VcekChain) {
        let Some(path) = self.cache_file(key) else {
            return;
        };
        let tmp = path.with_extension("json.tmp");
        let body = serde_json::to_vec_pretty(chain).unwrap_or_default();
        let result = std::fs::create_dir_all(path.parent().unwrap_or(Path::new(".")))
            .and_then(|()| std::fs::write(&tmp, body))
            .and_then(|()| std::fs::rename(&tmp, &path));
        if let Err(error) = result {
            warn!(path = %path.display(), %error, "could not write the VCEK disk cache");
        }
    }
}

/// The chip ID (`0x1A0`, 64 bytes) and reported TCB (`0x180`, u64) of a raw report.
fn cache_key(report: &[u8]) -> Result<([u8; 64], u64), VcekError> {
    let short = || VcekError::Parse {
        what: "the SNP report".into(),
        reason: format!(
            "{} bytes, too short for chip_id and reported_tcb",
            report.len()
        ),
    };
    let chip: [u8; 64] = report
        .get(0x1A0..0x1E0)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(short)?;
    let tcb: [u8; 8] = report
        .get(0x180..0x188)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(short)?;
    Ok((chip, u64::from_le_bytes(tcb)))
}

/// Wraps DER in PEM armour.
fn pem(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str("-----END ");
    out.push_str(label);
    out.push_str("-----\n");
    out
}

/// Sorts certificates into VCEK, ASK and ARK: the ARK is self-signed, the VCEK (or VLEK) has a
/// common name `SEV-VCEK`/`SEV-VLEK`, and anything else is the ASK (or ASVK).
fn classify(what: &str, certs: Vec<Certificate>) -> Result<Parts, VcekError> {
    let mut parts = Parts::default();
    for cert in certs {
        let der = cert.to_der().map_err(|e| VcekError::Parse {
            what: what.to_owned(),
            reason: e.to_string(),
        })?;
        let tbs = &cert.tbs_certificate;
        let subject = tbs.subject.to_string();
        if tbs.subject == tbs.issuer {
            parts.ark = Some(der);
        } else if subject.contains("CN=SEV-VCEK") || subject.contains("CN=SEV-VLEK") {
            parts.vcek = Some(der);
        } else {
            parts.ask = Some(der);
        }
    }
    Ok(parts)
}

fn parse_pem_bundle(what: &str, text: &[u8]) -> Result<Vec<Certificate>, VcekError> {
    let parse_error = |reason: String| VcekError::Parse {
        what: what.to_owned(),
        reason,
    };
    let text = std::str::from_utf8(text).map_err(|e| parse_error(e.to_string()))?;
    let mut certs = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("-----BEGIN CERTIFICATE-----") {
        let block = &rest[start..];
        let end_marker = "-----END CERTIFICATE-----";
        let end = block
            .find(end_marker)
            .ok_or_else(|| parse_error("unterminated CERTIFICATE block".into()))?
            + end_marker.len();
        let cert = Certificate::from_pem(&block.as_bytes()[..end])
            .map_err(|e| parse_error(e.to_string()))?;
        certs.push(cert);
        rest = &block[end..];
    }
    if certs.is_empty() {
        return Err(parse_error("no CERTIFICATE block".into()));
    }
    Ok(certs)
}

fn parts_from_file(path: &Path) -> Result<Parts, VcekError> {
    let bytes = read_limited(path)?;
    let what = path.display().to_string();
    if bytes.starts_with(b"-----") || bytes.windows(11).any(|w| w == b"-----BEGIN ") {
        classify(&what, parse_pem_bundle(&what, &bytes)?)
    } else {
        let cert = Certificate::from_der(&bytes).map_err(|e| VcekError::Parse {
            what: what.clone(),
            reason: format!("neither PEM nor a DER certificate: {e}"),
        })?;
        classify(&what, vec![cert])
    }
}

fn read_limited(path: &Path) -> Result<Vec<u8>, VcekError> {
    let read_error = |source| VcekError::Read {
        path: path.to_owned(),
        source,
    };
    let len = std::fs::metadata(path).map_err(read_error)?.len();
    if len > MAX_DOCUMENT as u64 {
        return Err(VcekError::Parse {
            what: path.display().to_string(),
            reason: format!("{len} bytes, more than the {MAX_DOCUMENT}-byte limit"),
        });
    }
    std::fs::read(path).map_err(read_error)
}

/// THIM's answer (fields we do not use are ignored: THIM may add more).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ThimAnswer {
    vcek_cert: String,
    certificate_chain: String,
}

/// Parses a THIM answer into its parts.
fn parse_thim(url: &str, body: &[u8]) -> Result<Parts, VcekError> {
    let answer: ThimAnswer = serde_json::from_slice(body).map_err(|e| VcekError::Parse {
        what: format!("THIM answer from {url}"),
        reason: e.to_string(),
    })?;
    let mut certs = parse_pem_bundle("THIM vcekCert", answer.vcek_cert.as_bytes())?;
    certs.extend(parse_pem_bundle(
        "THIM certificateChain",
        answer.certificate_chain.as_bytes(),
    )?);
    classify("THIM answer", certs)
}

fn fetch_thim(url: &str) -> Result<Parts, VcekError> {
    let body = http::get(
        url,
        &[("Metadata", "true")],
        Duration::from_secs(10),
        MAX_DOCUMENT,
    )?;
    parse_thim(url, &body)
}

#[cfg(test)]
mod tests;
