//! The release policy of the master-secret key, in Azure Key Vault's format
//! (`{"version":"1.0.0","anyOf":[{"authority":…,"allOf":[{"claim":…,"equals":…}]}]}`), read
//! from a file or built from flags.

use std::path::Path;

use serde::{Deserialize, Serialize};

/// Errors reading or building a release policy (configuration errors: exit code 2).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// The policy file could not be read.
    #[error("release policy file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The policy file is not a valid policy document.
    #[error("release policy file {path}: {detail}")]
    Parse {
        /// The file.
        path: String,
        /// Why.
        detail: String,
    },
    /// A flag value is not acceptable.
    #[error("{field}={value:?}: {reason}")]
    Field {
        /// The flag.
        field: &'static str,
        /// Its value.
        value: String,
        /// Why.
        reason: &'static str,
    },
}

/// A release policy document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleasePolicy {
    /// Policy grammar version, `1.0.0`.
    pub version: String,
    /// Alternatives, one per trusted attestation authority.
    #[serde(rename = "anyOf")]
    pub any_of: Vec<AuthorityClaims>,
}

/// The claims required from one authority.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthorityClaims {
    /// The MAA instance URL whose tokens are accepted.
    pub authority: String,
    /// Every claim must match.
    #[serde(rename = "allOf")]
    pub all_of: Vec<ClaimEquals>,
}

/// One `{"claim": name, "equals": value}` condition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClaimEquals {
    /// Claim name in the MAA token, e.g. `x-ms-sevsnpvm-hostdata`.
    pub claim: String,
    /// Required value (string or boolean).
    pub equals: serde_json::Value,
}

/// The flags a policy is built from when no file is given.
#[derive(Debug, Clone)]
pub struct PolicyFlags {
    /// MAA authority URL.
    pub authority: String,
    /// Pod policy hash (`host_data`), 64 hex characters.
    pub host_data: String,
    /// Required `x-ms-compliance-status`, e.g. `azure-compliant-uvm`.
    pub compliance_status: Option<String>,
}

impl ReleasePolicy {
    /// Reads and checks a policy file.
    pub fn from_file(path: &Path) -> Result<Self, PolicyError> {
        let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let policy: Self = serde_json::from_str(&text).map_err(|e| PolicyError::Parse {
            path: path.display().to_string(),
            detail: e.to_string(),
        })?;
        if policy.any_of.is_empty() || policy.any_of.iter().any(|a| a.all_of.is_empty()) {
            return Err(PolicyError::Parse {
                path: path.display().to_string(),
                detail: "anyOf and every allOf must be non-empty".into(),
            });
        }
        Ok(policy)
    }

    /// Builds the standard SNP policy: attestation type `sevsnpvm`, the pod policy hash as
    /// `x-ms-sevsnpvm-hostdata`, optionally a compliance status, and not debuggable.
    pub fn from_flags(flags: &PolicyFlags) -> Result<Self, PolicyError> {
        if !flags.authority.starts_with("https://") {
            return Err(PolicyError::Field {
                field: "--maa",
                value: flags.authority.clone(),
                reason: "the attestation authority must be an https URL",
            });
        }
        let host_data = flags.host_data.to_ascii_lowercase();
        if host_data.len() != 64 || !host_data.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(PolicyError::Field {
                field: "--host-data",
                value: flags.host_data.clone(),
                reason: "must be the 32-byte pod policy hash as 64 hex characters",
            });
        }
        let mut all_of = vec![
            claim("x-ms-attestation-type", "sevsnpvm".into()),
            claim("x-ms-sevsnpvm-hostdata", host_data.into()),
        ];
        if let Some(status) = &flags.compliance_status {
            all_of.push(claim("x-ms-compliance-status", status.clone().into()));
        }
        all_of.push(claim("x-ms-sevsnpvm-is-debuggable", false.into()));
        Ok(Self {
            version: "1.0.0".into(),
            any_of: vec![AuthorityClaims {
                authority: flags.authority.trim_end_matches('/').to_owned(),
                all_of,
            }],
        })
    }

    /// Builds the AKS confidential-VM policy (MAA guest attestation, `attest/AzureGuest`): the
    /// SNP claims sit under `x-ms-isolation-tee`; attestation type `sevsnpvm` and the compliance
    /// status (default `azure-compliant-cvm`, Azure's CVM SKR policy). There is no per-pod
    /// `host_data` on a CVM node: the key is released to any compliant CVM this authority
    /// attests, so keep the vault's access policy (the workload identity) narrow.
    pub fn for_cvm(authority: &str, compliance_status: Option<&str>) -> Result<Self, PolicyError> {
        if !authority.starts_with("https://") {
            return Err(PolicyError::Field {
                field: "--maa",
                value: authority.to_owned(),
                reason: "the attestation authority must be an https URL",
            });
        }
        let all_of = vec![
            claim(
                "x-ms-isolation-tee.x-ms-attestation-type",
                "sevsnpvm".into(),
            ),
            claim(
                "x-ms-isolation-tee.x-ms-compliance-status",
                compliance_status.unwrap_or(CVM_COMPLIANCE_STATUS).into(),
            ),
        ];
        Ok(Self {
            version: "1.0.0".into(),
            any_of: vec![AuthorityClaims {
                authority: authority.trim_end_matches('/').to_owned(),
                all_of,
            }],
        })
    }

    /// The JSON bytes stored as the key's release policy.
    #[must_use]
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a policy of strings and booleans always serialises")
    }
}

/// MAA's compliance status of an Azure confidential VM.
pub const CVM_COMPLIANCE_STATUS: &str = "azure-compliant-cvm";

fn claim(name: &str, equals: serde_json::Value) -> ClaimEquals {
    ClaimEquals {
        claim: name.into(),
        equals,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags() -> PolicyFlags {
        PolicyFlags {
            authority: "https://sharedeus.eus.attest.azure.net/".into(),
            host_data: "AB".repeat(32),
            compliance_status: Some("azure-compliant-uvm".into()),
        }
    }

    #[test]
    fn flags_build_the_documented_policy() {
        let p = ReleasePolicy::from_flags(&flags()).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&p.to_json()).unwrap();
        assert_eq!(
            v["anyOf"][0]["authority"],
            "https://sharedeus.eus.attest.azure.net"
        );
        let claims = &v["anyOf"][0]["allOf"];
        assert_eq!(claims[0]["equals"], "sevsnpvm");
        assert_eq!(claims[1]["equals"], "ab".repeat(32));
        assert_eq!(claims[2]["claim"], "x-ms-compliance-status");
        assert_eq!(claims[3]["equals"], false);
    }

    #[test]
    fn the_cvm_policy_reads_the_isolation_tee_claims() {
        let p = ReleasePolicy::for_cvm("https://maa.example/", None).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&p.to_json()).unwrap();
        assert_eq!(v["anyOf"][0]["authority"], "https://maa.example");
        let claims = &v["anyOf"][0]["allOf"];
        assert_eq!(
            claims[0]["claim"],
            "x-ms-isolation-tee.x-ms-attestation-type"
        );
        assert_eq!(claims[0]["equals"], "sevsnpvm");
        assert_eq!(claims[1]["equals"], "azure-compliant-cvm");
        assert!(ReleasePolicy::for_cvm("http://maa", None).is_err());
    }

    #[test]
    fn bad_flags_name_the_field() {
        let mut f = flags();
        f.host_data = "xyz".into();
        let e = ReleasePolicy::from_flags(&f).unwrap_err().to_string();
        assert!(e.contains("--host-data=\"xyz\""), "{e}");
        let mut f = flags();
        f.authority = "http://maa".into();
        assert!(ReleasePolicy::from_flags(&f).is_err());
    }

    #[test]
    fn files_round_trip_and_unknown_fields_fail() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.json");
        let p = ReleasePolicy::from_flags(&flags()).unwrap();
        std::fs::write(&path, p.to_json()).unwrap();
        assert_eq!(ReleasePolicy::from_file(&path).unwrap(), p);
        std::fs::write(&path, br#"{"version":"1.0.0","anyOf":[],"extra":1}"#).unwrap();
        assert!(ReleasePolicy::from_file(&path).is_err());
    }
}
