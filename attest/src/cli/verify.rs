//! `verify` (online and offline) and `verify-report`.

use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use anyhow::{anyhow, Context as _};
use base64::Engine as _;
use enclaveid_attest_verifier::binding::curl_pin;
use enclaveid_attest_verifier::{Evidence, Expectations, Policy, VerificationReport};

use super::{Failure, VerifyArgs, VerifyReportArgs};
use crate::client::{self, Target};

/// Largest report, certificate or evidence file read.
const MAX_INPUT: u64 = 1024 * 1024;

fn read_input(flag: &str, path: &Path) -> Result<Vec<u8>, Failure> {
    let meta = std::fs::metadata(path)
        .map_err(|e| Failure::usage(anyhow!("{flag}={}: {e}", path.display())))?;
    if meta.len() > MAX_INPUT {
        return Err(Failure::usage(anyhow!(
            "{flag}={}: {} bytes, more than the {MAX_INPUT}-byte limit",
            path.display(),
            meta.len()
        )));
    }
    std::fs::read(path).map_err(|e| Failure::usage(anyhow!("{flag}={}: {e}", path.display())))
}

fn load_policy(path: Option<&Path>) -> Result<Policy, Failure> {
    let Some(path) = path else {
        return Ok(Policy::default());
    };
    let text = read_input("--policy", path)?;
    let text = String::from_utf8(text)
        .map_err(|_| Failure::usage(anyhow!("--policy={}: not UTF-8", path.display())))?;
    Policy::from_yaml(&text)
        .map_err(|e| Failure::usage(anyhow!("--policy={}: {e}", path.display())))
}

/// Parses the TLS key hash given as 64 hex digits or as a `sha256//BASE64` pin.
pub(crate) fn parse_spki_hash(text: &str) -> Result<[u8; 32], String> {
    let text = text.trim();
    let bytes = if let Some(b64) = text.strip_prefix("sha256//") {
        base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|e| format!("not a sha256//BASE64 pin: {e}"))?
    } else {
        hex::decode(text).map_err(|e| format!("not hex: {e}"))?
    };
    <[u8; 32]>::try_from(bytes.as_slice())
        .map_err(|_| format!("{} bytes, a SHA-256 is 32", bytes.len()))
}

fn print_result(
    report: &VerificationReport,
    json: bool,
    nonce: &[u8],
    spki: &[u8; 32],
    source: &str,
) -> ExitCode {
    let pin = curl_pin(spki);
    if json {
        let mut value = serde_json::to_value(report).unwrap_or_default();
        if let Some(object) = value.as_object_mut() {
            object.insert("source".into(), source.into());
            object.insert("nonce".into(), hex::encode(nonce).into());
            object.insert("tls_spki_sha256".into(), hex::encode(spki).into());
            if report.passed {
                object.insert("pin".into(), pin.clone().into());
            }
        }
        println!(
            "{}",
            serde_json::to_string_pretty(&value).unwrap_or_default()
        );
    } else {
        println!("{report}");
        if report.passed {
            println!("attested TLS key: {pin}");
            println!("(pin later requests with: curl --pinnedpubkey '{pin}' ...)");
        }
    }
    if report.passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

pub(super) fn verify(args: &VerifyArgs) -> Result<ExitCode, Failure> {
    let mut policy = load_policy(args.policy.as_deref())?;
    if args.allow_simulated {
        policy.allow_simulated = true;
    }
    if let Some(path) = &args.evidence {
        return verify_offline(args, path, &policy);
    }
    let url = args.url.as_deref().unwrap_or_default();
    let target = Target::parse(url).map_err(Failure::usage)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(Failure::runtime)?;
    let fetched = runtime
        .block_on(client::fetch(&target, Duration::from_secs(args.timeout)))
        .with_context(|| format!("fetching evidence from {url}"))
        .map_err(Failure::runtime)?;
    if let Some(save) = &args.save {
        std::fs::write(save, &fetched.raw)
            .map_err(|e| Failure::runtime(anyhow!("--save={}: {e}", save.display())))?;
        eprintln!(
            "saved the evidence to {}; re-check offline with: enclaveid-attest verify --evidence {} --nonce {} --tls-spki-sha256 {}",
            save.display(),
            save.display(),
            hex::encode(&fetched.nonce),
            hex::encode(fetched.tls_spki_sha256)
        );
    }
    let expect = Expectations {
        nonce: fetched.nonce.clone(),
        tls_spki_sha256: fetched.tls_spki_sha256,
    };
    let report =
        enclaveid_attest_verifier::verify(&fetched.evidence, &expect, &policy, SystemTime::now());
    Ok(print_result(
        &report,
        args.json,
        &fetched.nonce,
        &fetched.tls_spki_sha256,
        url,
    ))
}

fn verify_offline(args: &VerifyArgs, path: &Path, policy: &Policy) -> Result<ExitCode, Failure> {
    let nonce_text = args.nonce.as_deref().unwrap_or_default();
    let nonce = hex::decode(nonce_text.trim())
        .map_err(|e| Failure::usage(anyhow!("--nonce={nonce_text:?}: not hex: {e}")))?;
    let spki_text = args.tls_spki_sha256.as_deref().unwrap_or_default();
    let spki = parse_spki_hash(spki_text)
        .map_err(|e| Failure::usage(anyhow!("--tls-spki-sha256={spki_text:?}: {e}")))?;
    let raw = read_input("--evidence", path)?;
    let report = match Evidence::from_json(&raw) {
        Ok(evidence) => {
            let expect = Expectations {
                nonce: nonce.clone(),
                tls_spki_sha256: spki,
            };
            enclaveid_attest_verifier::verify(&evidence, &expect, policy, SystemTime::now())
        }
        Err(e) => {
            // Hostile or broken evidence is a failed verification, reported like any check.
            let mut report = VerificationReport::default();
            report.fail("evidence.parse", "evidence JSON", &e);
            report
        }
    };
    Ok(print_result(
        &report,
        args.json,
        &nonce,
        &spki,
        &path.display().to_string(),
    ))
}

pub(super) fn verify_report(args: &VerifyReportArgs) -> Result<ExitCode, Failure> {
    let mut policy = load_policy(args.policy.as_deref())?;
    if args.allow_debug {
        policy.allow_debug = true;
    }
    let raw = read_input("--report", &args.report)?;
    let vcek_path = args.vcek.as_deref().ok_or_else(|| {
        Failure::usage(anyhow!(
            "--vcek FILE is required: the report is checked against its VCEK, and the VCEK's chain against the pinned AMD roots"
        ))
    })?;
    let vcek = read_input("--vcek", vcek_path)?;
    let chain = match &args.cert_chain {
        Some(path) => read_input("--cert-chain", path)?,
        None => Vec::new(),
    };
    let report = match enclaveid_attest_verifier::report::decode_raw_or_hex(&raw) {
        Ok(bytes) => enclaveid_attest_verifier::verify_report(
            &bytes,
            &vcek,
            &chain,
            &policy,
            SystemTime::now(),
        ),
        Err(e) => {
            let mut report = VerificationReport::default();
            report.fail("report.parse", "a 1184-byte SNP report, raw or hex", &e);
            report
        }
    };
    if args.json {
        println!("{}", report.to_json());
    } else {
        println!("{report}");
    }
    Ok(if report.passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spki_hash_forms() {
        let h = [7u8; 32];
        assert_eq!(parse_spki_hash(&hex::encode(h)).unwrap(), h);
        assert_eq!(parse_spki_hash(&curl_pin(&h)).unwrap(), h);
        assert!(parse_spki_hash("abcd").is_err());
        assert!(parse_spki_hash("sha256//!!").is_err());
        assert!(parse_spki_hash("zz").is_err());
    }
}
