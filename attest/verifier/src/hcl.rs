//! The Azure HCL report, read from vTPM NV index `0x01400001` on an Azure confidential VM.
//!
//! ```text
//! 0x000  header (32 B): "HCLA", u32 version (1), u32 report_size, u32 request_type (2), 0…
//! 0x020  SNP attestation report (1184 B)
//! 0x4C0  IgvmRequestData: u32 data_size, u32 version, u32 report_type (2 = SNP),
//!                         u32 hash_type (1 = SHA-256), u32 var_size
//! 0x4D4  variable data: UTF-8 JSON (runtime claims) of var_size bytes
//! ```
//!
//! The paravisor puts `SHA-256(variable data)` into `report_data[0..32]` of the SNP report,
//! so whatever the JSON says (notably the vTPM attestation key `HCLAkPub`) is covered by the
//! VCEK signature.

use base64::Engine as _;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::report::REPORT_LEN;

/// Offset of the SNP report.
pub const SNP_REPORT_OFFSET: usize = 0x20;
/// Offset of `IgvmRequestData`.
pub const IGVM_REQUEST_OFFSET: usize = 0x4C0;
/// Offset of the variable data.
pub const VAR_DATA_OFFSET: usize = 0x4D4;
/// Largest accepted HCL report.
pub const MAX_HCL_LEN: usize = 8 * 1024;
/// `report_type` of an SNP report.
pub const REPORT_TYPE_SNP: u32 = 2;
/// `hash_type` of SHA-256.
pub const HASH_TYPE_SHA256: u32 = 1;
/// Key ID of the vTPM attestation key in the runtime claims.
pub const AK_KID: &str = "HCLAkPub";

/// Why an HCL report or its claims were refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum HclError {
    /// Shorter than the fixed part, or longer than [`MAX_HCL_LEN`].
    #[error("HCL report is {len} bytes; it must be {VAR_DATA_OFFSET} to {MAX_HCL_LEN} bytes")]
    Length {
        /// Size found.
        len: usize,
    },
    /// The header does not start with `HCLA`.
    #[error("HCL report header is {found:?}, expected \"HCLA\"")]
    Magic {
        /// The first four bytes, hex.
        found: String,
    },
    /// `report_type` is not SNP.
    #[error("HCL report_type {0} is not 2 (SNP)")]
    ReportType(u32),
    /// `hash_type` is not SHA-256.
    #[error("HCL hash_type {0} is not 1 (SHA-256)")]
    HashType(u32),
    /// `var_size` points past the end of the report.
    #[error("HCL var_size {var_size} exceeds the {available} bytes after offset 0x4D4")]
    VarSize {
        /// Declared size.
        var_size: u32,
        /// Bytes available.
        available: usize,
    },
    /// The variable data is not the expected JSON.
    #[error("HCL runtime claims are not valid JSON: {0}")]
    Claims(String),
    /// No usable `HCLAkPub` key in the claims.
    #[error("HCL runtime claims have no usable RSA key with kid \"HCLAkPub\": {0}")]
    AkMissing(String),
}

/// `IgvmRequestData` of an HCL report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct IgvmRequestData {
    /// Size of this structure plus the variable data.
    pub data_size: u32,
    /// Structure version.
    pub version: u32,
    /// Report type (2 = SNP).
    pub report_type: u32,
    /// Hash of the variable data (1 = SHA-256).
    pub hash_type: u32,
    /// Size of the variable data.
    pub var_size: u32,
}

/// A parsed HCL report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HclReport {
    /// The raw SNP report (1184 bytes) inside.
    pub snp_report: Vec<u8>,
    /// The request data.
    pub request: IgvmRequestData,
    /// The variable data (runtime claims JSON), exactly `var_size` bytes.
    pub var_data: Vec<u8>,
}

#[derive(Deserialize)]
struct Claims {
    #[serde(default)]
    keys: Vec<Jwk>,
}

#[derive(Deserialize)]
struct Jwk {
    kid: Option<String>,
    kty: Option<String>,
    n: Option<String>,
    e: Option<String>,
}

fn u32_at(raw: &[u8], at: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&raw[at..at + 4]);
    u32::from_le_bytes(b)
}

impl HclReport {
    /// Parses an HCL report (trailing padding after the variable data is ignored).
    pub fn parse(raw: &[u8]) -> Result<Self, HclError> {
        if raw.len() < VAR_DATA_OFFSET || raw.len() > MAX_HCL_LEN {
            return Err(HclError::Length { len: raw.len() });
        }
        if &raw[..4] != b"HCLA" {
            return Err(HclError::Magic {
                found: hex::encode(&raw[..4]),
            });
        }
        let r = IGVM_REQUEST_OFFSET;
        let request = IgvmRequestData {
            data_size: u32_at(raw, r),
            version: u32_at(raw, r + 4),
            report_type: u32_at(raw, r + 8),
            hash_type: u32_at(raw, r + 12),
            var_size: u32_at(raw, r + 16),
        };
        if request.report_type != REPORT_TYPE_SNP {
            return Err(HclError::ReportType(request.report_type));
        }
        if request.hash_type != HASH_TYPE_SHA256 {
            return Err(HclError::HashType(request.hash_type));
        }
        let available = raw.len() - VAR_DATA_OFFSET;
        let var_len = usize::try_from(request.var_size).unwrap_or(usize::MAX);
        if var_len > available {
            return Err(HclError::VarSize {
                var_size: request.var_size,
                available,
            });
        }
        Ok(Self {
            snp_report: raw[SNP_REPORT_OFFSET..SNP_REPORT_OFFSET + REPORT_LEN].to_vec(),
            request,
            var_data: raw[VAR_DATA_OFFSET..VAR_DATA_OFFSET + var_len].to_vec(),
        })
    }

    /// SHA-256 of the variable data: what `report_data[0..32]` must hold.
    #[must_use]
    pub fn var_data_sha256(&self) -> [u8; 32] {
        Sha256::digest(&self.var_data).into()
    }

    /// True if the SNP report's `report_data[0..32]` commits to the variable data.
    #[must_use]
    pub fn binding_holds(&self, report_data: &[u8; 64]) -> bool {
        report_data[..32] == self.var_data_sha256()
    }

    /// The vTPM attestation key (`HCLAkPub`, an RSA JWK) from the runtime claims.
    pub fn ak_pub(&self) -> Result<rsa::RsaPublicKey, HclError> {
        let end = self
            .var_data
            .iter()
            .rposition(|&b| b != 0)
            .map_or(0, |i| i + 1);
        let claims: Claims = serde_json::from_slice(&self.var_data[..end])
            .map_err(|e| HclError::Claims(e.to_string()))?;
        let jwk = claims
            .keys
            .iter()
            .find(|k| k.kid.as_deref() == Some(AK_KID))
            .ok_or_else(|| HclError::AkMissing("no such key".into()))?;
        if jwk.kty.as_deref() != Some("RSA") {
            return Err(HclError::AkMissing(format!("kty is {:?}", jwk.kty)));
        }
        let b64 = |v: &Option<String>, name: &str| {
            let v = v
                .as_deref()
                .ok_or_else(|| HclError::AkMissing(format!("no {name}")))?;
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(v.trim_end_matches('='))
                .map_err(|_| HclError::AkMissing(format!("{name} is not base64url")))
        };
        let n = rsa::BigUint::from_bytes_be(&b64(&jwk.n, "n")?);
        let e = rsa::BigUint::from_bytes_be(&b64(&jwk.e, "e")?);
        rsa::RsaPublicKey::new(n, e).map_err(|e| HclError::AkMissing(e.to_string()))
    }
}

/// Lays out an HCL report around an SNP report and variable data (used to provision a fake HCL
/// report for tests and the simulated vTPM path). `report_data[0..32]` of `snp_report` must
/// already be `SHA-256(var_data)` for the result to verify.
#[must_use]
pub fn build(snp_report: &[u8; REPORT_LEN], var_data: &[u8]) -> Vec<u8> {
    let var_size = u32::try_from(var_data.len()).expect("variable data is far below 4 GiB");
    let mut out = vec![0u8; VAR_DATA_OFFSET];
    out[..4].copy_from_slice(b"HCLA");
    out[4..8].copy_from_slice(&1u32.to_le_bytes());
    let total = u32::try_from(VAR_DATA_OFFSET).expect("constant") + var_size;
    out[8..12].copy_from_slice(&total.to_le_bytes());
    out[12..16].copy_from_slice(&2u32.to_le_bytes());
    out[SNP_REPORT_OFFSET..SNP_REPORT_OFFSET + REPORT_LEN].copy_from_slice(snp_report);
    let r = IGVM_REQUEST_OFFSET;
    for (i, v) in [
        20 + var_size,
        1,
        REPORT_TYPE_SNP,
        HASH_TYPE_SHA256,
        var_size,
    ]
    .iter()
    .enumerate()
    {
        out[r + 4 * i..r + 4 * i + 4].copy_from_slice(&v.to_le_bytes());
    }
    out.extend_from_slice(var_data);
    out
}

/// Runtime-claims JSON carrying `ak` as the `HCLAkPub` JWK, in Azure's shape.
#[must_use]
pub fn claims_json(ak: &rsa::RsaPublicKey) -> String {
    use rsa::traits::PublicKeyParts as _;
    let enc =
        |b: &rsa::BigUint| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b.to_bytes_be());
    serde_json::json!({
        "keys": [{ "kid": AK_KID, "key_ops": ["sign"], "kty": "RSA", "e": enc(ak.e()), "n": enc(ak.n()) }],
        "vm-configuration": { "secure-boot": true, "tpm-enabled": true },
        "user-data": "0".repeat(128),
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_inputs_are_errors() {
        assert_eq!(
            HclReport::parse(&[0; 10]),
            Err(HclError::Length { len: 10 })
        );
        assert!(matches!(
            HclReport::parse(&[0; VAR_DATA_OFFSET]),
            Err(HclError::Magic { .. })
        ));
        let mut raw = build(&[0; REPORT_LEN], b"{}");
        raw[IGVM_REQUEST_OFFSET + 16] = 0xff;
        assert!(matches!(
            HclReport::parse(&raw),
            Err(HclError::VarSize { .. })
        ));
        let mut raw = build(&[0; REPORT_LEN], b"{}");
        raw[IGVM_REQUEST_OFFSET + 12] = 2;
        assert_eq!(HclReport::parse(&raw), Err(HclError::HashType(2)));
    }

    #[test]
    fn build_round_trips() {
        let raw = build(&[7; REPORT_LEN], b"{\"keys\":[]}");
        let hcl = HclReport::parse(&raw).unwrap();
        assert_eq!(hcl.snp_report, vec![7; REPORT_LEN]);
        assert_eq!(hcl.var_data, b"{\"keys\":[]}");
        assert!(matches!(hcl.ak_pub(), Err(HclError::AkMissing(_))));
    }
}
