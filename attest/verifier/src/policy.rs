//! The verification policy, read from YAML (`verify --policy FILE`).
//!
//! ```yaml
//! allow_debug: false            # default false: a guest whose policy allows debug is refused
//! max_vmpl: 0                   # default 0: the report must come from VMPL <= this
//! allowed_vmpls: [0]            # optional: an explicit list instead of (and in addition to) max_vmpl
//! min_tcb: { bootloader: 3, tee: 0, snp: 8, microcode: 115, fmc: 0 }   # default all 0
//! measurements: [<96 hex>]      # optional allow-list of launch measurements
//! host_data: [<64 hex>]         # optional allow-list of host_data (the pod policy hash)
//! chip_ids: [<16 or 128 hex>]   # optional allow-list of chip IDs
//! min_report_version: 2         # default 2
//! products: [Milan, Genoa, Turin]   # default all three
//! allow_simulated: false        # default false: simulated evidence is refused
//! ```
//!
//! Unknown keys are refused, and every error names the key path and the value.

use serde::Deserialize;

use crate::product::Product;
use crate::report::TcbVersion;

/// Largest accepted policy file.
pub const MAX_POLICY_LEN: usize = 256 * 1024;

/// A typed, validated policy. Construct with [`Policy::from_yaml`] or start from
/// [`Policy::default`] (the strict defaults) and adjust the public fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Accept a guest whose policy allows debugging.
    pub allow_debug: bool,
    /// Highest VMPL accepted.
    pub max_vmpl: u32,
    /// If set, the VMPL must be one of these (and still `<= max_vmpl`).
    pub allowed_vmpls: Option<Vec<u32>>,
    /// Minimum reported TCB.
    pub min_tcb: TcbVersion,
    /// Allowed launch measurements; empty means any.
    pub measurements: Vec<[u8; 48]>,
    /// Allowed `host_data` values; empty means any.
    pub host_data: Vec<[u8; 32]>,
    /// Allowed chip IDs (compared on the product's hwID length); empty means any.
    pub chip_ids: Vec<Vec<u8>>,
    /// Lowest accepted report version.
    pub min_report_version: u32,
    /// Products accepted.
    pub products: Vec<Product>,
    /// Accept evidence from the simulated chain.
    pub allow_simulated: bool,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            allow_debug: false,
            max_vmpl: 0,
            allowed_vmpls: None,
            min_tcb: TcbVersion::default(),
            measurements: Vec::new(),
            host_data: Vec::new(),
            chip_ids: Vec::new(),
            min_report_version: 2,
            products: Product::ALL.to_vec(),
            allow_simulated: false,
        }
    }
}

/// Why a policy file was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// The file is larger than [`MAX_POLICY_LEN`].
    #[error("policy file is {len} bytes, more than the {MAX_POLICY_LEN}-byte limit")]
    TooLarge {
        /// Size found.
        len: usize,
    },
    /// Not valid YAML for the policy schema (the message names the field).
    #[error("policy: {0}")]
    Yaml(#[from] serde_yaml_ng::Error),
    /// A field has a value that parses but is not acceptable.
    #[error("policy field {field}={value:?}: {reason}")]
    Field {
        /// Key path, e.g. `measurements[1]`.
        field: String,
        /// The offending value.
        value: String,
        /// Why it was refused.
        reason: String,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTcb {
    #[serde(default)]
    bootloader: u8,
    #[serde(default)]
    tee: u8,
    #[serde(default)]
    snp: u8,
    #[serde(default)]
    microcode: u8,
    fmc: Option<u8>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    allow_debug: Option<bool>,
    max_vmpl: Option<u32>,
    allowed_vmpls: Option<Vec<u32>>,
    min_tcb: Option<RawTcb>,
    measurements: Option<Vec<String>>,
    host_data: Option<Vec<String>>,
    chip_ids: Option<Vec<String>>,
    min_report_version: Option<u32>,
    products: Option<Vec<String>>,
    allow_simulated: Option<bool>,
}

fn field_err(field: String, value: &str, reason: impl Into<String>) -> PolicyError {
    PolicyError::Field {
        field,
        value: value.to_owned(),
        reason: reason.into(),
    }
}

fn hex_list<const N: usize>(name: &str, values: &[String]) -> Result<Vec<[u8; N]>, PolicyError> {
    values
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let mut out = [0u8; N];
            hex::decode_to_slice(v.trim(), &mut out).map_err(|_| {
                field_err(
                    format!("{name}[{i}]"),
                    v,
                    format!("expected {} hex digits", N * 2),
                )
            })?;
            Ok(out)
        })
        .collect()
}

const MAX_VMPL: u32 = 3;

impl TryFrom<RawPolicy> for Policy {
    type Error = PolicyError;

    fn try_from(raw: RawPolicy) -> Result<Self, PolicyError> {
        let defaults = Policy::default();
        let max_vmpl = raw.max_vmpl.unwrap_or(defaults.max_vmpl);
        if max_vmpl > MAX_VMPL {
            return Err(field_err(
                "max_vmpl".into(),
                &max_vmpl.to_string(),
                "VMPLs are 0 to 3",
            ));
        }
        if let Some(list) = &raw.allowed_vmpls {
            if let Some((i, v)) = list.iter().enumerate().find(|(_, v)| **v > MAX_VMPL) {
                return Err(field_err(
                    format!("allowed_vmpls[{i}]"),
                    &v.to_string(),
                    "VMPLs are 0 to 3",
                ));
            }
        }
        let min_tcb = raw.min_tcb.map_or(defaults.min_tcb, |t| TcbVersion {
            fmc: t.fmc,
            bootloader: t.bootloader,
            tee: t.tee,
            snp: t.snp,
            microcode: t.microcode,
        });
        let chip_ids = raw
            .chip_ids
            .unwrap_or_default()
            .iter()
            .enumerate()
            .map(|(i, v)| match hex::decode(v.trim()) {
                Ok(b) if b.len() == 8 || b.len() == 64 => Ok(b),
                _ => Err(field_err(
                    format!("chip_ids[{i}]"),
                    v,
                    "expected 16 hex digits (Turin hwID) or 128 hex digits (chip_id)",
                )),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let products = match raw.products {
            None => defaults.products,
            Some(names) => names
                .iter()
                .enumerate()
                .map(|(i, n)| match Product::from_name(n) {
                    Some((p, false)) => Ok(p),
                    _ => Err(field_err(
                        format!("products[{i}]"),
                        n,
                        "expected Milan, Genoa or Turin",
                    )),
                })
                .collect::<Result<Vec<_>, _>>()?,
        };
        let min_report_version = raw
            .min_report_version
            .unwrap_or(defaults.min_report_version);
        if !(2..=5).contains(&min_report_version) {
            return Err(field_err(
                "min_report_version".into(),
                &min_report_version.to_string(),
                "supported report versions are 2 to 5",
            ));
        }
        Ok(Self {
            allow_debug: raw.allow_debug.unwrap_or(defaults.allow_debug),
            max_vmpl,
            allowed_vmpls: raw.allowed_vmpls,
            min_tcb,
            measurements: hex_list("measurements", &raw.measurements.unwrap_or_default())?,
            host_data: hex_list("host_data", &raw.host_data.unwrap_or_default())?,
            chip_ids,
            min_report_version,
            products,
            allow_simulated: raw.allow_simulated.unwrap_or(defaults.allow_simulated),
        })
    }
}

impl Policy {
    /// Parses and validates a YAML policy. An empty document gives the defaults.
    pub fn from_yaml(text: &str) -> Result<Self, PolicyError> {
        if text.len() > MAX_POLICY_LEN {
            return Err(PolicyError::TooLarge { len: text.len() });
        }
        if text.trim().is_empty() {
            return Ok(Self::default());
        }
        let raw: RawPolicy = serde_yaml_ng::from_str(text)?;
        raw.try_into()
    }

    /// True if `vmpl` is acceptable.
    #[must_use]
    pub fn vmpl_allowed(&self, vmpl: u32) -> bool {
        vmpl <= self.max_vmpl
            && self
                .allowed_vmpls
                .as_ref()
                .is_none_or(|l| l.contains(&vmpl))
    }

    /// Human-readable form of the VMPL rule, for check output.
    #[must_use]
    pub fn vmpl_rule(&self) -> String {
        match &self.allowed_vmpls {
            Some(list) => format!("VMPL in {list:?} and <= {}", self.max_vmpl),
            None => format!("VMPL <= {}", self.max_vmpl),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_gives_strict_defaults() {
        let p = Policy::from_yaml("").unwrap();
        assert_eq!(p, Policy::default());
        assert!(!p.allow_debug && !p.allow_simulated && p.max_vmpl == 0);
    }

    #[test]
    fn full_policy_parses() {
        let yaml = format!(
            "allow_debug: true\nmax_vmpl: 2\nallowed_vmpls: [0, 2]\n\
             min_tcb: {{ bootloader: 3, snp: 8, microcode: 115 }}\n\
             measurements: ['{}']\nhost_data: ['{}']\nchip_ids: ['{}']\n\
             min_report_version: 3\nproducts: [Genoa]\nallow_simulated: true\n",
            "ab".repeat(48),
            "cd".repeat(32),
            "ef".repeat(8)
        );
        let p = Policy::from_yaml(&yaml).unwrap();
        assert!(p.allow_debug && p.allow_simulated);
        assert!(p.vmpl_allowed(2) && !p.vmpl_allowed(1) && !p.vmpl_allowed(3));
        assert_eq!(p.min_tcb.snp, 8);
        assert_eq!(p.measurements, vec![[0xab; 48]]);
        assert_eq!(p.products, vec![Product::Genoa]);
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            ("allow_debugg: true", "allow_debugg"),
            ("measurements: ['abcd']", "measurements[0]"),
            ("host_data: ['zz']", "host_data[0]"),
            ("products: [Milan, Rome]", "products[1]"),
            ("max_vmpl: 4", "max_vmpl"),
            ("min_tcb: { snpp: 1 }", "snpp"),
            ("min_report_version: 1", "min_report_version"),
            ("chip_ids: ['00']", "chip_ids[0]"),
            ("allow_simulated: maybe", "allow_simulated"),
        ];
        for (yaml, field) in cases {
            let err = Policy::from_yaml(yaml).unwrap_err().to_string();
            assert!(err.contains(field), "{yaml}: {err}");
        }
    }
}
