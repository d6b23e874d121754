//! The verification entry points: pure functions from evidence (plus the caller's nonce, the
//! TLS key it saw, a policy and the current time) to a [`VerificationReport`].
//!
//! Nothing here does I/O or reads a clock; the caller passes `now`. Every rule becomes one named
//! [`Check`] with what was expected and what was found, so the CLI can print one ✓/✗ line per
//! check (or JSON) and the verdict is simply "every check passed". A check that cannot run
//! because an earlier one failed (say, the report did not parse) is not listed; the failure
//! that stopped it is.

mod chain;
mod vtpm;

use std::time::SystemTime;

use serde::Serialize;

use crate::binding;
use crate::evidence::{Evidence, Provider};
use crate::policy::Policy;
use crate::product::Product;

pub use chain::{check_report_and_chain, parse_cert_inputs, ChainCerts, ChainOutcome};
pub use vtpm::check_vtpm;

/// The outcome of one rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    /// Stable dotted name, e.g. `report.signature`.
    pub name: String,
    /// Whether the rule held.
    pub passed: bool,
    /// What the rule required.
    pub expected: String,
    /// What the evidence showed.
    pub found: String,
}

/// Every check that ran, and the verdict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct VerificationReport {
    /// True only if at least one check ran and every check passed.
    pub passed: bool,
    /// The evidence provider, if known.
    pub provider: Option<Provider>,
    /// The product the chain and report agree on, if they do.
    pub product: Option<Product>,
    /// True if the evidence came from a simulated chain.
    pub simulated: bool,
    /// The checks, in the order they ran.
    pub checks: Vec<Check>,
}

/// What the verifier itself knows and the evidence must commit to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expectations {
    /// The nonce the client sent (16 to 64 bytes).
    pub nonce: Vec<u8>,
    /// SHA-256 of the DER `SubjectPublicKeyInfo` of the server's TLS key as the client saw it.
    pub tls_spki_sha256: [u8; 32],
}

impl VerificationReport {
    /// Appends a check and keeps the verdict current.
    pub fn push(
        &mut self,
        name: &str,
        passed: bool,
        expected: impl Into<String>,
        found: impl Into<String>,
    ) {
        self.checks.push(Check {
            name: name.to_owned(),
            passed,
            expected: expected.into(),
            found: found.into(),
        });
        self.passed = self.checks.iter().all(|c| c.passed);
    }

    /// Appends a check that failed because input could not be read.
    pub fn fail(&mut self, name: &str, expected: impl Into<String>, error: &dyn std::error::Error) {
        self.push(name, false, expected, error.to_string());
    }

    /// The first failed check, if any.
    #[must_use]
    pub fn first_failure(&self) -> Option<&Check> {
        self.checks.iter().find(|c| !c.passed)
    }

    /// Looks a check up by name.
    #[must_use]
    pub fn check(&self, name: &str) -> Option<&Check> {
        self.checks.iter().find(|c| c.name == name)
    }

    /// Serialises the report as pretty JSON.
    #[must_use]
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("the report is plain data and always serialises")
    }
}

impl std::fmt::Display for VerificationReport {
    /// One line per check (`✓ name: found (expected …)`), then the verdict.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for c in &self.checks {
            let mark = if c.passed { '✓' } else { '✗' };
            writeln!(
                f,
                "{mark} {}: {} (expected {})",
                c.name, c.found, c.expected
            )?;
        }
        let verdict = if self.passed { "PASS" } else { "FAIL" };
        let failed = self.checks.iter().filter(|c| !c.passed).count();
        write!(
            f,
            "{verdict}: {} checks, {failed} failed",
            self.checks.len()
        )
    }
}

/// Verifies evidence fetched from a server against the client's nonce and the server TLS key.
///
/// `sev-guest` and `simulated`: the report (chain, signature, policy) and
/// `report_data == SHA-256(SPKI) ‖ SHA-256(nonce)`. `vtpm`: the HCL report (chain, signature,
/// policy, var-data binding), the AK from its claims, the quote signature, the PCR digest and
/// `extraData == SHA-256(binding64)`. Simulated evidence is refused unless
/// `policy.allow_simulated`.
#[must_use]
pub fn verify(
    evidence: &Evidence,
    expect: &Expectations,
    policy: &Policy,
    now: SystemTime,
) -> VerificationReport {
    let mut out = VerificationReport {
        provider: Some(evidence.provider),
        ..VerificationReport::default()
    };
    let decoded = match evidence.decode() {
        Ok(d) => d,
        Err(e) => {
            out.fail(
                "evidence.decode",
                "well-formed evidence within size limits",
                &e,
            );
            return out;
        }
    };
    let sim = decoded.provider == Provider::Simulated;
    out.push(
        "provider.allowed",
        !sim || policy.allow_simulated,
        if policy.allow_simulated {
            "any provider (simulated allowed)"
        } else {
            "sev-guest or vtpm"
        },
        decoded.provider.as_str(),
    );
    let certs = match parse_cert_inputs(
        decoded.vcek.as_bytes(),
        &[decoded.ask.as_bytes(), decoded.ark.as_bytes()],
    ) {
        Ok(c) => c,
        Err(e) => {
            out.fail("certs.parse", "VCEK, ASK and ARK certificates", &e);
            return out;
        }
    };
    match &decoded.vtpm {
        None => {
            let Some(outcome) =
                check_report_and_chain(&mut out, &decoded.report, &certs, policy, now)
            else {
                return out;
            };
            check_report_data_binding(&mut out, &outcome.report.report_data, expect);
        }
        Some(vtpm) => {
            let extra = binding::vtpm_extra_data(&expect.tls_spki_sha256, &expect.nonce);
            let Some(outcome) = check_vtpm(&mut out, vtpm, &certs, &extra, policy, now) else {
                return out;
            };
            out.push(
                "hcl.report_matches",
                outcome.snp_report == decoded.report,
                "evidence `report` equal to the SNP report inside the HCL report",
                if outcome.snp_report == decoded.report {
                    "equal"
                } else {
                    "different"
                },
            );
        }
    }
    out
}

fn check_report_data_binding(
    out: &mut VerificationReport,
    report_data: &[u8; 64],
    expect: &Expectations,
) {
    let want = binding::binding64(&expect.tls_spki_sha256, &expect.nonce);
    out.push(
        "binding.tls_key",
        report_data[..32] == want[..32],
        format!(
            "report_data[0..32] = SHA-256(TLS SPKI) = {}",
            hex::encode(&want[..32])
        ),
        hex::encode(&report_data[..32]),
    );
    out.push(
        "binding.nonce",
        report_data[32..] == want[32..],
        format!(
            "report_data[32..64] = SHA-256(nonce) = {}",
            hex::encode(&want[32..])
        ),
        hex::encode(&report_data[32..]),
    );
}

/// Verifies a raw SNP report (as `verify-report` does): chain, signature and policy; there is
/// no binding to check. `vcek` is the VCEK in PEM or DER, optionally followed (PEM) by the ASK
/// and ARK; `chain` holds further PEM certificates (a KDS `cert_chain`: ASK then ARK) and may
/// be empty if `vcek` already carried them.
#[must_use]
pub fn verify_report(
    raw_report: &[u8],
    vcek: &[u8],
    chain: &[u8],
    policy: &Policy,
    now: SystemTime,
) -> VerificationReport {
    let mut out = VerificationReport::default();
    let certs = match parse_cert_inputs(vcek, &[chain]) {
        Ok(c) => c,
        Err(e) => {
            out.fail("certs.parse", "VCEK, ASK and ARK certificates", &e);
            return out;
        }
    };
    check_report_and_chain(&mut out, raw_report, &certs, policy, now);
    out
}

/// Verifies the vTPM parts of evidence against an explicit quote `extraData` (the raw nonce for
/// vectors made by other tools); [`verify`] uses `SHA-256(binding64)`. `hcl_report` carries the
/// SNP report; `ak_pub_pem`, if given, must be the AK from the HCL claims.
#[must_use]
#[allow(clippy::too_many_arguments)] // mirrors the evidence parts one to one
pub fn verify_vtpm_parts(
    hcl_report: &[u8],
    quote: &crate::vtpm::Quote,
    ak_pub_pem: Option<&str>,
    vcek: &[u8],
    chain: &[u8],
    expected_extra_data: &[u8],
    policy: &Policy,
    now: SystemTime,
) -> VerificationReport {
    let mut out = VerificationReport {
        provider: Some(Provider::Vtpm),
        ..VerificationReport::default()
    };
    let certs = match parse_cert_inputs(vcek, &[chain]) {
        Ok(c) => c,
        Err(e) => {
            out.fail("certs.parse", "VCEK, ASK and ARK certificates", &e);
            return out;
        }
    };
    let parts = crate::evidence::DecodedVtpm {
        hcl_report: hcl_report.to_vec(),
        quote_message: quote.message.clone(),
        quote_signature: quote.signature.clone(),
        pcrs: quote.pcrs.clone(),
        ak_pub: ak_pub_pem.unwrap_or_default().to_owned(),
    };
    check_vtpm(&mut out, &parts, &certs, expected_extra_data, policy, now);
    out
}
