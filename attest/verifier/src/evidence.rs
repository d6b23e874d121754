//! The JSON evidence the server returns from `GET /attestation?nonce=HEX` and that
//! `verify --evidence FILE` reads.
//!
//! ```json
//! { "provider": "sev-guest" | "vtpm" | "simulated",
//!   "report": "<base64 of the 1184-byte SNP report>",
//!   "vcek": "<PEM>", "ask": "<PEM>", "ark": "<PEM>",
//!   "hcl_report": "<base64>",                                         (vtpm only)
//!   "quote": { "message": "<base64 TPMS_ATTEST>", "signature": "<base64>",
//!              "pcrs": ["<hex SHA-256 PCR 0>", …] },                   (vtpm only)
//!   "ak_pub": "<PEM SubjectPublicKeyInfo>" }                          (vtpm only)
//! ```
//!
//! Unknown fields are refused, every field has a size limit, and decoding checks that the
//! vTPM fields are present exactly when the provider is `vtpm`. Everything here is hostile input.

use base64::Engine as _;
use serde::{Deserialize, Serialize};

/// Largest accepted evidence document.
pub const MAX_JSON_LEN: usize = 64 * 1024;
/// Largest accepted PEM certificate or key.
pub const MAX_PEM_LEN: usize = 8 * 1024;
/// Largest accepted base64 field (HCL report, quote parts).
pub const MAX_B64_LEN: usize = 8 * 1024;
/// Most PCR values accepted in a quote.
pub const MAX_PCRS: usize = 24;

/// Which evidence provider produced the evidence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Provider {
    /// A raw report from `/dev/sev-guest` with `report_data` = the binding.
    SevGuest,
    /// An Azure CVM: HCL report + vTPM quote whose extraData carries the binding.
    Vtpm,
    /// A software chain, for development only; refused unless explicitly allowed.
    Simulated,
}

impl Provider {
    /// The wire name (`sev-guest`, `vtpm`, `simulated`).
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Provider::SevGuest => "sev-guest",
            Provider::Vtpm => "vtpm",
            Provider::Simulated => "simulated",
        }
    }
}

impl std::fmt::Display for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A TPM2 quote as carried in evidence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuoteJson {
    /// Base64 of the marshalled `TPMS_ATTEST`.
    pub message: String,
    /// Base64 of the raw RSASSA-PKCS1-v1_5 signature bytes.
    pub signature: String,
    /// The SHA-256 PCR bank, PCR 0 first, hex.
    pub pcrs: Vec<String>,
}

/// Evidence as it appears on the wire (strings, not yet decoded).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Evidence {
    /// The provider that produced this evidence.
    pub provider: Provider,
    /// Base64 of the raw SNP report.
    pub report: String,
    /// PEM of the VCEK.
    pub vcek: String,
    /// PEM of the ASK.
    pub ask: String,
    /// PEM of the ARK.
    pub ark: String,
    /// Base64 of the Azure HCL report (vtpm).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hcl_report: Option<String>,
    /// The vTPM quote (vtpm).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quote: Option<QuoteJson>,
    /// PEM of the AK public key (vtpm).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ak_pub: Option<String>,
}

/// Why evidence could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EvidenceError {
    /// The document is larger than [`MAX_JSON_LEN`].
    #[error("evidence is {len} bytes, more than the {MAX_JSON_LEN}-byte limit")]
    TooLarge {
        /// Size found.
        len: usize,
    },
    /// Not valid evidence JSON (unknown field, wrong type, …).
    #[error("evidence is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// A field exceeds its size limit.
    #[error("evidence field `{field}` is {len} bytes, more than its {max}-byte limit")]
    FieldTooLarge {
        /// Field name.
        field: &'static str,
        /// Size found.
        len: usize,
        /// Limit.
        max: usize,
    },
    /// A field is not valid base64 or hex.
    #[error("evidence field `{field}` is not valid {encoding}")]
    Encoding {
        /// Field name.
        field: String,
        /// `base64` or `hex`.
        encoding: &'static str,
    },
    /// A vtpm field is missing, or present for another provider.
    #[error("evidence field `{field}` is {problem} for provider {provider}")]
    Presence {
        /// Field name.
        field: &'static str,
        /// `missing` or `not allowed`.
        problem: &'static str,
        /// The provider.
        provider: Provider,
    },
}

/// Evidence with every field decoded to bytes (certificates stay PEM text).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodedEvidence {
    /// The provider.
    pub provider: Provider,
    /// Raw SNP report bytes.
    pub report: Vec<u8>,
    /// VCEK PEM.
    pub vcek: String,
    /// ASK PEM.
    pub ask: String,
    /// ARK PEM.
    pub ark: String,
    /// vTPM parts, present exactly for the `vtpm` provider.
    pub vtpm: Option<DecodedVtpm>,
}

/// The decoded vTPM parts of evidence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodedVtpm {
    /// Raw HCL report.
    pub hcl_report: Vec<u8>,
    /// Marshalled `TPMS_ATTEST`.
    pub quote_message: Vec<u8>,
    /// Raw quote signature.
    pub quote_signature: Vec<u8>,
    /// SHA-256 PCR values.
    pub pcrs: Vec<[u8; 32]>,
    /// AK public key PEM.
    pub ak_pub: String,
}

fn limit(field: &'static str, value: &str, max: usize) -> Result<(), EvidenceError> {
    if value.len() > max {
        return Err(EvidenceError::FieldTooLarge {
            field,
            len: value.len(),
            max,
        });
    }
    Ok(())
}

fn b64(field: &'static str, value: &str) -> Result<Vec<u8>, EvidenceError> {
    limit(field, value, MAX_B64_LEN)?;
    base64::engine::general_purpose::STANDARD
        .decode(value.trim())
        .map_err(|_| EvidenceError::Encoding {
            field: field.to_owned(),
            encoding: "base64",
        })
}

fn encode_b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

impl Evidence {
    /// Parses evidence JSON, refusing oversized documents before parsing.
    pub fn from_json(bytes: &[u8]) -> Result<Self, EvidenceError> {
        if bytes.len() > MAX_JSON_LEN {
            return Err(EvidenceError::TooLarge { len: bytes.len() });
        }
        Ok(serde_json::from_slice(bytes)?)
    }

    /// Serialises the evidence as pretty JSON.
    #[must_use]
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("evidence is plain strings and always serialises")
    }

    /// Builds `sev-guest` or `simulated` evidence from raw parts.
    #[must_use]
    pub fn new_report(provider: Provider, report: &[u8], vcek: &str, ask: &str, ark: &str) -> Self {
        Self {
            provider,
            report: encode_b64(report),
            vcek: vcek.to_owned(),
            ask: ask.to_owned(),
            ark: ark.to_owned(),
            hcl_report: None,
            quote: None,
            ak_pub: None,
        }
    }

    /// Adds the vTPM parts (and sets the provider to `vtpm`).
    #[must_use]
    pub fn with_vtpm(
        mut self,
        hcl_report: &[u8],
        quote_message: &[u8],
        quote_signature: &[u8],
        pcrs: &[[u8; 32]],
        ak_pub_pem: &str,
    ) -> Self {
        self.provider = Provider::Vtpm;
        self.hcl_report = Some(encode_b64(hcl_report));
        self.quote = Some(QuoteJson {
            message: encode_b64(quote_message),
            signature: encode_b64(quote_signature),
            pcrs: pcrs.iter().map(hex::encode).collect(),
        });
        self.ak_pub = Some(ak_pub_pem.to_owned());
        self
    }

    /// Checks the size limits and decodes every field.
    pub fn decode(&self) -> Result<DecodedEvidence, EvidenceError> {
        let report = b64("report", &self.report)?;
        for (field, pem) in [("vcek", &self.vcek), ("ask", &self.ask), ("ark", &self.ark)] {
            limit(field, pem, MAX_PEM_LEN)?;
        }
        let presence = |field, problem| EvidenceError::Presence {
            field,
            problem,
            provider: self.provider,
        };
        let vtpm = if self.provider == Provider::Vtpm {
            let hcl = self
                .hcl_report
                .as_deref()
                .ok_or_else(|| presence("hcl_report", "missing"))?;
            let quote = self
                .quote
                .as_ref()
                .ok_or_else(|| presence("quote", "missing"))?;
            let ak_pub = self.ak_pub.as_deref().filter(|k| !k.trim().is_empty());
            let ak_pub = ak_pub.ok_or_else(|| presence("ak_pub", "missing"))?;
            limit("ak_pub", ak_pub, MAX_PEM_LEN)?;
            if quote.pcrs.len() > MAX_PCRS {
                return Err(EvidenceError::FieldTooLarge {
                    field: "quote.pcrs",
                    len: quote.pcrs.len(),
                    max: MAX_PCRS,
                });
            }
            let pcrs = quote
                .pcrs
                .iter()
                .enumerate()
                .map(|(i, p)| {
                    let mut out = [0u8; 32];
                    hex::decode_to_slice(p, &mut out).map_err(|_| EvidenceError::Encoding {
                        field: format!("quote.pcrs[{i}]"),
                        encoding: "hex (32 bytes)",
                    })?;
                    Ok(out)
                })
                .collect::<Result<Vec<_>, EvidenceError>>()?;
            Some(DecodedVtpm {
                hcl_report: b64("hcl_report", hcl)?,
                quote_message: b64("quote.message", &quote.message)?,
                quote_signature: b64("quote.signature", &quote.signature)?,
                pcrs,
                ak_pub: ak_pub.to_owned(),
            })
        } else {
            for (field, present) in [
                ("hcl_report", self.hcl_report.is_some()),
                ("quote", self.quote.is_some()),
                ("ak_pub", self.ak_pub.is_some()),
            ] {
                if present {
                    return Err(presence(field, "not allowed"));
                }
            }
            None
        };
        Ok(DecodedEvidence {
            provider: self.provider,
            report,
            vcek: self.vcek.clone(),
            ask: self.ask.clone(),
            ark: self.ark.clone(),
            vtpm,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_unknown_fields() {
        let ev = Evidence::new_report(Provider::SevGuest, &[1, 2, 3], "v", "s", "a");
        let json = ev.to_json();
        assert!(json.contains("\"sev-guest\""));
        assert_eq!(Evidence::from_json(json.as_bytes()).unwrap(), ev);
        let bad = json.replacen("\"vcek\"", "\"extra\": 1, \"vcek\"", 1);
        let err = Evidence::from_json(bad.as_bytes()).unwrap_err().to_string();
        assert!(err.contains("unknown field `extra`"), "{err}");
    }

    #[test]
    fn vtpm_fields_must_match_provider() {
        let ev = Evidence::new_report(Provider::Vtpm, &[1], "v", "s", "a");
        assert!(matches!(
            ev.decode(),
            Err(EvidenceError::Presence {
                field: "hcl_report",
                ..
            })
        ));
        let ev = Evidence::new_report(Provider::SevGuest, &[1], "v", "s", "a").with_vtpm(
            &[1],
            &[2],
            &[3],
            &[[0; 32]],
            "k",
        );
        assert_eq!(ev.decode().unwrap().vtpm.unwrap().pcrs.len(), 1);
        let mut ev = ev;
        ev.provider = Provider::Simulated;
        assert!(matches!(
            ev.decode(),
            Err(EvidenceError::Presence {
                problem: "not allowed",
                ..
            })
        ));
    }

    #[test]
    fn limits_and_encodings() {
        let mut ev = Evidence::new_report(Provider::SevGuest, &[1], "v", "s", "a");
        ev.vcek = "x".repeat(MAX_PEM_LEN + 1);
        assert!(matches!(
            ev.decode(),
            Err(EvidenceError::FieldTooLarge { field: "vcek", .. })
        ));
        ev.report = "!!".into();
        assert!(matches!(ev.decode(), Err(EvidenceError::Encoding { .. })));
        let big = vec![b' '; MAX_JSON_LEN + 1];
        assert!(matches!(
            Evidence::from_json(&big),
            Err(EvidenceError::TooLarge { .. })
        ));
    }
}
