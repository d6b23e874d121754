//! From a store to "this config and these layers, in order": the OCI `index.json` →
//! (nested index →) manifest → config path, or the docker-archive `manifest.json` path.
//!
//! Every OCI blob is named by a digest that is checked for shape here and for content when it
//! is read; a docker archive's layers are checked against the config's `rootfs.diff_ids`.

use std::collections::BTreeMap;

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::error::ImageError;
use crate::source::{clean_member_name, Store};
use crate::Limits;

/// How deep nested image indexes are followed.
const MAX_INDEX_DEPTH: usize = 4;

/// The parts of an image config that `compare` checks (the runtime contract of the image).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageConfig {
    /// `config.Entrypoint`.
    pub entrypoint: Option<Vec<String>>,
    /// `config.Cmd`.
    pub cmd: Option<Vec<String>>,
    /// `config.Env`, in order.
    pub env: Vec<String>,
    /// `config.User`.
    pub user: String,
    /// `config.WorkingDir`.
    pub working_dir: String,
    /// `config.ExposedPorts` keys, sorted.
    pub exposed_ports: Vec<String>,
    /// `config.Labels`.
    pub labels: BTreeMap<String, String>,
    /// `config.StopSignal`.
    pub stop_signal: String,
    /// `architecture`.
    pub architecture: String,
    /// `os`.
    pub os: String,
}

/// One layer to apply: where its bytes are and what to check them against.
#[derive(Debug, Clone)]
pub(crate) struct LayerRef {
    /// Member name in the store.
    pub(crate) name: String,
    /// Digest of the stored (possibly compressed) bytes, when the format names one.
    pub(crate) blob_digest: Option<String>,
    /// Size from the descriptor, when the format gives one.
    pub(crate) size: Option<u64>,
    /// Expected digest of the uncompressed tar (`rootfs.diff_ids[i]`).
    pub(crate) diff_id: Option<String>,
    /// Media type, when known.
    pub(crate) media_type: Option<String>,
}

/// A resolved image: format, manifest digest (OCI only), config and layers.
#[derive(Debug)]
pub(crate) struct Resolved {
    pub(crate) format: &'static str,
    pub(crate) manifest_digest: Option<String>,
    pub(crate) config: ImageConfig,
    pub(crate) layers: Vec<LayerRef>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Descriptor {
    media_type: Option<String>,
    digest: String,
    size: u64,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct IndexOrManifest {
    schema_version: Option<u32>,
    media_type: Option<String>,
    manifests: Option<Vec<Descriptor>>,
    config: Option<Descriptor>,
    layers: Option<Vec<Descriptor>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

#[derive(Deserialize, Default)]
struct RawConfigFile {
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    os: String,
    #[serde(default)]
    config: Option<RawRuntime>,
    #[serde(default)]
    rootfs: Option<RawRootfs>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct RawRuntime {
    entrypoint: Option<Vec<String>>,
    cmd: Option<Vec<String>>,
    env: Option<Vec<String>>,
    user: Option<String>,
    working_dir: Option<String>,
    exposed_ports: Option<BTreeMap<String, serde_json::Value>>,
    labels: Option<BTreeMap<String, String>>,
    stop_signal: Option<String>,
}

#[derive(Deserialize, Default)]
struct RawRootfs {
    #[serde(default)]
    diff_ids: Vec<String>,
}

/// Resolves the single image in `store`.
pub(crate) fn resolve(store: &Store, limits: &Limits) -> Result<Resolved, ImageError> {
    if store.contains("index.json") {
        resolve_oci(store, limits)
    } else if store.contains("manifest.json") {
        resolve_docker(store, limits)
    } else {
        Err(ImageError::NotAnImage {
            path: store.path().to_path_buf(),
            reason: "neither index.json (OCI) nor manifest.json (docker archive) found".into(),
        })
    }
}

/// Checks a digest's shape and returns the blob's member name.
pub(crate) fn blob_name(what: &str, digest: &str) -> Result<String, ImageError> {
    let hex = digest.strip_prefix("sha256:").filter(|h| {
        h.len() == 64
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    });
    match hex {
        Some(hex) => Ok(format!("blobs/sha256/{hex}")),
        None => Err(ImageError::InvalidDigest {
            what: what.into(),
            value: digest.into(),
        }),
    }
}

fn parse<T: for<'de> Deserialize<'de>>(what: &str, bytes: &[u8]) -> Result<T, ImageError> {
    serde_json::from_slice(bytes).map_err(|source| ImageError::Json {
        what: what.into(),
        source,
    })
}

/// Reads a small blob by descriptor and checks its size and digest.
fn read_blob(
    store: &Store,
    desc: &Descriptor,
    what: &str,
    limits: &Limits,
) -> Result<Vec<u8>, ImageError> {
    let name = blob_name(&format!("{what}.digest"), &desc.digest)?;
    let bytes = store.read_small(&name, limits.max_json_bytes)?;
    if bytes.len() as u64 != desc.size {
        return Err(ImageError::SizeMismatch {
            digest: desc.digest.clone(),
            expected: desc.size,
            actual: bytes.len() as u64,
        });
    }
    let actual = hex::encode(Sha256::digest(&bytes));
    if desc.digest[7..] != actual {
        return Err(ImageError::DigestMismatch {
            expected: desc.digest.clone(),
            actual,
        });
    }
    Ok(bytes)
}

fn resolve_oci(store: &Store, limits: &Limits) -> Result<Resolved, ImageError> {
    let index_bytes = store.read_small("index.json", limits.max_json_bytes)?;
    let mut doc: IndexOrManifest = parse("index.json", &index_bytes)?;
    let mut what = String::from("index.json");
    let mut manifest_digest = None;
    for _ in 0..=MAX_INDEX_DEPTH {
        if let Some(manifests) = doc.manifests.take() {
            let chosen = choose(store, &what, manifests)?;
            what = format!("manifest {}", chosen.digest);
            let bytes = read_blob(store, &chosen, &what, limits)?;
            manifest_digest = Some(chosen.digest.clone());
            doc = parse(&what, &bytes)?;
            continue;
        }
        if doc.schema_version.is_some_and(|v| v != 2) {
            return Err(ImageError::Unsupported {
                what,
                reason: format!("schemaVersion {:?}", doc.schema_version),
            });
        }
        let (Some(config), Some(layers)) = (doc.config.take(), doc.layers.take()) else {
            return Err(ImageError::Unsupported {
                what,
                reason: format!("not an image manifest (mediaType {:?})", doc.media_type),
            });
        };
        let config_bytes = read_blob(store, &config, &format!("{what} config"), limits)?;
        let (config, diff_ids) = parse_config(&format!("config {}", config.digest), &config_bytes)?;
        if diff_ids.len() != layers.len() {
            return Err(ImageError::Unsupported {
                what,
                reason: format!(
                    "{} layers but {} rootfs.diff_ids in the config",
                    layers.len(),
                    diff_ids.len()
                ),
            });
        }
        check_layer_count(&what, layers.len(), limits)?;
        let layers = layers
            .into_iter()
            .zip(diff_ids)
            .enumerate()
            .map(|(i, (desc, diff_id))| {
                Ok(LayerRef {
                    name: blob_name(&format!("{what} layers[{i}].digest"), &desc.digest)?,
                    blob_digest: Some(desc.digest),
                    size: Some(desc.size),
                    diff_id: Some(diff_id),
                    media_type: desc.media_type,
                })
            })
            .collect::<Result<_, ImageError>>()?;
        return Ok(Resolved {
            format: if matches!(store, Store::Dir { .. }) {
                "OCI layout"
            } else {
                "OCI archive"
            },
            manifest_digest,
            config,
            layers,
        });
    }
    Err(ImageError::limit(
        format!("{what}: nested indexes"),
        MAX_INDEX_DEPTH as u64,
    ))
}

/// Picks the one manifest of an index, or the `linux/amd64` one when several are listed.
fn choose(store: &Store, what: &str, manifests: Vec<Descriptor>) -> Result<Descriptor, ImageError> {
    if manifests.len() == 1 {
        return Ok(manifests
            .into_iter()
            .next()
            .expect("length checked to be 1"));
    }
    let count = manifests.len();
    let candidates = manifests
        .iter()
        .map(|d| {
            d.annotations
                .get("org.opencontainers.image.ref.name")
                .cloned()
                .unwrap_or_else(|| d.digest.clone())
        })
        .collect::<Vec<_>>()
        .join(", ");
    if count == 0 {
        return Err(ImageError::NotAnImage {
            path: store.path().to_path_buf(),
            reason: format!("{what} lists no manifests"),
        });
    }
    Err(ImageError::Ambiguous {
        path: store.path().to_path_buf(),
        count,
        candidates,
    })
}

fn check_layer_count(what: &str, count: usize, limits: &Limits) -> Result<(), ImageError> {
    if count > limits.max_layers {
        return Err(ImageError::limit(
            format!("{what}: {count} layers"),
            limits.max_layers as u64,
        ));
    }
    Ok(())
}

fn resolve_docker(store: &Store, limits: &Limits) -> Result<Resolved, ImageError> {
    let bytes = store.read_small("manifest.json", limits.max_json_bytes)?;
    let entries: Vec<DockerEntry> = parse("manifest.json", &bytes)?;
    let context = format!("{} manifest.json", store.path().display());
    let entry = match entries.len() {
        1 => entries.into_iter().next().expect("length checked to be 1"),
        0 => {
            return Err(ImageError::NotAnImage {
                path: store.path().to_path_buf(),
                reason: "manifest.json lists no images".into(),
            })
        }
        count => {
            return Err(ImageError::Ambiguous {
                path: store.path().to_path_buf(),
                count,
                candidates: entries
                    .iter()
                    .map(|e| e.repo_tags.clone().unwrap_or_default().join("|"))
                    .collect::<Vec<_>>()
                    .join(", "),
            })
        }
    };
    let config_name = clean_member_name(&entry.config, &context)?;
    let config_bytes = store.read_small(&config_name, limits.max_json_bytes)?;
    let (config, diff_ids) = parse_config(&config_name, &config_bytes)?;
    if diff_ids.len() != entry.layers.len() {
        return Err(ImageError::Unsupported {
            what: context,
            reason: format!(
                "{} layers but {} rootfs.diff_ids in the config",
                entry.layers.len(),
                diff_ids.len()
            ),
        });
    }
    check_layer_count(&context, entry.layers.len(), limits)?;
    let layers = entry
        .layers
        .iter()
        .zip(diff_ids)
        .map(|(layer, diff_id)| {
            Ok(LayerRef {
                name: clean_member_name(layer, &context)?,
                blob_digest: None,
                size: None,
                diff_id: Some(diff_id),
                media_type: None,
            })
        })
        .collect::<Result<_, ImageError>>()?;
    Ok(Resolved {
        format: "docker archive",
        manifest_digest: None,
        config,
        layers,
    })
}

fn parse_config(what: &str, bytes: &[u8]) -> Result<(ImageConfig, Vec<String>), ImageError> {
    let raw: RawConfigFile = parse(what, bytes)?;
    let runtime = raw.config.unwrap_or_default();
    let diff_ids = raw.rootfs.unwrap_or_default().diff_ids;
    for (i, id) in diff_ids.iter().enumerate() {
        blob_name(&format!("{what} rootfs.diff_ids[{i}]"), id)?;
    }
    let config = ImageConfig {
        entrypoint: runtime.entrypoint,
        cmd: runtime.cmd,
        env: runtime.env.unwrap_or_default(),
        user: runtime.user.unwrap_or_default(),
        working_dir: runtime.working_dir.unwrap_or_default(),
        exposed_ports: runtime
            .exposed_ports
            .unwrap_or_default()
            .into_keys()
            .collect(),
        labels: runtime.labels.unwrap_or_default(),
        stop_signal: runtime.stop_signal.unwrap_or_default(),
        architecture: raw.architecture,
        os: raw.os,
    };
    Ok((config, diff_ids))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_shapes() {
        let good = format!("sha256:{}", "a".repeat(64));
        assert!(blob_name("d", &good).is_ok());
        for bad in [
            "sha256:../../etc",
            "sha512:abc",
            "sha256:ABC",
            &format!("sha256:{}", "A".repeat(64)),
        ] {
            assert!(
                matches!(blob_name("d", bad), Err(ImageError::InvalidDigest { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn config_fields() {
        let doc = br#"{"architecture":"amd64","os":"linux","config":{"User":"65532:65532",
            "Env":["A=1"],"Entrypoint":["/bin/x"],"ExposedPorts":{"15006/tcp":{}}},
            "rootfs":{"type":"layers","diff_ids":[]}}"#;
        let (config, ids) = parse_config("c", doc).unwrap();
        assert_eq!(config.user, "65532:65532");
        assert_eq!(config.exposed_ports, vec!["15006/tcp".to_string()]);
        assert!(ids.is_empty());
    }
}
