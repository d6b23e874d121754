//! Shared helpers for the integration tests: where the real SNP vectors live, and a fixed clock.
#![allow(dead_code, unreachable_pub)] // each test binary uses a different subset

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

/// The real-vector folder: `$ENCLAVEID_SNP_TESTDATA`, else `<workspace>/../shared/testdata/snp`.
/// Absent: a loud message and `None`, or a panic under `CI=true`.
pub fn testdata() -> Option<PathBuf> {
    let dir = std::env::var_os("ENCLAVEID_SNP_TESTDATA").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/testdata/snp"),
        PathBuf::from,
    );
    if dir.join("README.md").is_file() {
        return Some(dir);
    }
    let msg = format!(
        "SNP TEST VECTORS MISSING: {} does not exist; set ENCLAVEID_SNP_TESTDATA to the \
         shared/testdata/snp folder. The real-vector tests did NOT run.",
        dir.display()
    );
    assert!(std::env::var("CI").as_deref() != Ok("true"), "{msg}");
    eprintln!("\n!!!!!!!!!!\n{msg}\n!!!!!!!!!!\n");
    None
}

/// Reads a file of the vector folder.
pub fn read(dir: &std::path::Path, name: &str) -> Vec<u8> {
    std::fs::read(dir.join(name)).unwrap_or_else(|e| panic!("reading {name}: {e}"))
}

/// A fixed "now" inside every real VCEK's validity (2026-01-01T00:00:00Z).
pub fn now() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_hours(490_896)
}

/// Asserts every check passed, printing the report otherwise.
pub fn assert_pass(report: &enclaveid_attest_verifier::VerificationReport) {
    assert!(report.passed, "expected PASS:\n{report}");
}

/// Asserts the named check ran and failed.
pub fn assert_fails(report: &enclaveid_attest_verifier::VerificationReport, check: &str) {
    assert!(!report.passed, "expected FAIL:\n{report}");
    let c = report
        .check(check)
        .unwrap_or_else(|| panic!("check {check} did not run:\n{report}"));
    assert!(!c.passed, "check {check} passed:\n{report}");
}
