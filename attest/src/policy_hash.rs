//! The SHA-256 that SNP `host_data` carries for a confidential pod's security policy.
//!
//! On Kata confidential pods and Azure confidential containers the host launches the utility VM
//! with `host_data = SHA-256(policy)`, where `policy` is the **decoded** Rego text; the pod spec
//! carries it base64-encoded (annotation `io.katacontainers.config.agent.policy`, or the
//! `ccePolicy` of an ACI container group). So a client can chain: a rebuilt image digest → the
//! pod policy that pins that digest → `host_data` in the attested report.
//!
//! [`policy_hash`] accepts either form: the base64 text as it appears in the annotation (line
//! breaks and surrounding whitespace ignored), or the raw Rego. [`PolicyInput::Auto`] decides:
//! text that is entirely valid standard base64 and decodes to UTF-8 is treated as base64;
//! anything else (Rego always has spaces, quotes or braces, which base64 never does) is hashed
//! as it is, byte for byte.

use base64::Engine as _;
use sha2::{Digest as _, Sha256};

/// How to read the policy file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum PolicyInput {
    /// Base64 if the whole file is valid base64 of UTF-8 text, else raw.
    #[default]
    Auto,
    /// The annotation value: base64 of the policy (whitespace ignored).
    Base64,
    /// The decoded policy text, hashed byte for byte.
    Raw,
}

/// Why a policy could not be hashed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyHashError {
    /// `--input base64` was given but the text is not base64.
    #[error("the policy is not valid base64: {0}")]
    NotBase64(String),
}

/// Which form was hashed, and the hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyHash {
    /// The 32-byte SHA-256 that `host_data` must equal.
    pub sha256: [u8; 32],
    /// True if the input was decoded from base64 first.
    pub decoded_base64: bool,
}

fn decode_base64(input: &[u8]) -> Result<Vec<u8>, base64::DecodeError> {
    let compact: Vec<u8> = input
        .iter()
        .copied()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    base64::engine::general_purpose::STANDARD.decode(compact)
}

/// Computes the `host_data` value for a policy file's contents.
pub fn policy_hash(input: &[u8], form: PolicyInput) -> Result<PolicyHash, PolicyHashError> {
    let (bytes, decoded_base64) = match form {
        PolicyInput::Raw => (input.to_vec(), false),
        PolicyInput::Base64 => (
            decode_base64(input).map_err(|e| PolicyHashError::NotBase64(e.to_string()))?,
            true,
        ),
        PolicyInput::Auto => match decode_base64(input) {
            Ok(decoded) if !decoded.is_empty() && std::str::from_utf8(&decoded).is_ok() => {
                (decoded, true)
            }
            _ => (input.to_vec(), false),
        },
    };
    Ok(PolicyHash {
        sha256: Sha256::digest(&bytes).into(),
        decoded_base64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms() {
        let rego = b"package policy\n\ndefault allow := true\n";
        let b64 = base64::engine::general_purpose::STANDARD.encode(rego);
        let want: [u8; 32] = Sha256::digest(rego).into();
        let auto = policy_hash(b64.as_bytes(), PolicyInput::Auto).unwrap();
        assert_eq!(auto.sha256, want);
        assert!(auto.decoded_base64);
        // Line-wrapped base64 with a trailing newline still decodes.
        let wrapped = format!("{}\n{}\n", &b64[..20], &b64[20..]);
        assert_eq!(
            policy_hash(wrapped.as_bytes(), PolicyInput::Base64)
                .unwrap()
                .sha256,
            want
        );
        let raw = policy_hash(rego, PolicyInput::Auto).unwrap();
        assert_eq!(raw.sha256, want);
        assert!(!raw.decoded_base64);
        assert!(policy_hash(rego, PolicyInput::Base64).is_err());
        assert_eq!(
            policy_hash(b64.as_bytes(), PolicyInput::Raw)
                .unwrap()
                .sha256,
            <[u8; 32]>::from(Sha256::digest(b64.as_bytes()))
        );
    }
}
