//! The checks shared by every path: the ARK → ASK → VCEK chain, the report signature, the
//! VCEK's agreement with the report (product, TCB, hwID) and the policy rules.

use std::time::SystemTime;

use p384::ecdsa::signature::Verifier as _;
use x509_cert::Certificate;

use super::VerificationReport;
use crate::certs::{self, CertError, VcekInfo};
use crate::policy::Policy;
use crate::product::Product;
use crate::report::{self, AttestationReport};

/// The three certificates of a chain, sorted out of whatever bundle they came in.
#[derive(Debug, Clone)]
pub struct ChainCerts {
    /// The root (self-issued).
    pub ark: Certificate,
    /// The intermediate that issued the VCEK.
    pub ask: Certificate,
    /// The chip's endorsement key.
    pub vcek: Certificate,
}

/// What the chain and report checks established, for the caller's further checks.
#[derive(Debug, Clone)]
pub struct ChainOutcome {
    /// The parsed report.
    pub report: AttestationReport,
    /// The agreed product.
    pub product: Product,
}

/// Reads the VCEK (first certificate of `vcek`, PEM or DER) and finds the ARK (self-issued) and
/// the ASK (the issuer of the VCEK) among the other certificates of `vcek` and `others`.
pub fn parse_cert_inputs(vcek: &[u8], others: &[&[u8]]) -> Result<ChainCerts, CertError> {
    let mut pool = Vec::new();
    let leaf = if vcek.trim_ascii_start().starts_with(b"-----BEGIN") {
        let mut all = certs::parse_pem_chain("vcek", vcek)?.into_iter();
        let leaf = all.next().ok_or(CertError::Parse {
            which: "vcek",
            reason: "no certificate".into(),
        })?;
        pool.extend(all);
        leaf
    } else {
        certs::parse_cert("vcek", vcek)?
    };
    for input in others.iter().filter(|i| !i.trim_ascii().is_empty()) {
        pool.extend(certs::parse_pem_chain("ask/ark", input)?);
    }
    let self_issued = |c: &Certificate| c.tbs_certificate.subject == c.tbs_certificate.issuer;
    let ark = pool
        .iter()
        .find(|c| self_issued(c))
        .cloned()
        .ok_or(CertError::Parse {
            which: "ark",
            reason: "no self-issued ARK certificate given".into(),
        })?;
    let ask = pool
        .iter()
        .find(|c| !self_issued(c) && c.tbs_certificate.subject == leaf.tbs_certificate.issuer)
        // Fall back to any intermediate so that a wrong ASK fails a named check, not parsing.
        .or_else(|| pool.iter().find(|c| !self_issued(c)))
        .cloned()
        .ok_or(CertError::Parse {
            which: "ask",
            reason: "no ASK (intermediate) certificate given".into(),
        })?;
    Ok(ChainCerts {
        ark,
        ask,
        vcek: leaf,
    })
}

fn cn_product(name: &x509_cert::name::Name) -> (String, Option<(Product, bool)>) {
    let cn = certs::common_name(name).unwrap_or_default();
    let product = certs::product_from_cn(&cn);
    (cn, product)
}

fn window(cert: &Certificate) -> String {
    let (from, to) = certs::validity_window(cert);
    format!("{} .. {}", certs::format_time(from), certs::format_time(to))
}

/// Checks the chain and the certificates' agreement with each other; returns the product and
/// whether the chain is simulated if they agree.
fn check_chain(
    out: &mut VerificationReport,
    c: &ChainCerts,
    policy: &Policy,
    now: SystemTime,
) -> Option<(Product, VcekInfo)> {
    let (root_cn, root_named) = cn_product(&c.ark.tbs_certificate.subject);
    let (inter_cn, inter_named) = cn_product(&c.ask.tbs_certificate.subject);
    let (vcek_issuer_cn, issuer_named) = cn_product(&c.vcek.tbs_certificate.issuer);
    let pin = certs::pinned_product(&c.ark);
    let simulated_ark = pin.is_none() && matches!(root_named, Some((_, true)));
    let ark_found = format!(
        "{root_cn} with SPKI SHA-256 {}",
        hex::encode(certs::spki_sha256(&c.ark))
    );
    match pin {
        Some(p) => out.push(
            "ark.pinned",
            true,
            "SPKI SHA-256 of an AMD ARK (Milan, Genoa or Turin)",
            format!("AMD ARK-{p} ({ark_found})"),
        ),
        None if simulated_ark && policy.allow_simulated => {
            out.push(
                "ark.pinned",
                true,
                "an AMD ARK, or a simulated ARK (allow_simulated)",
                format!("simulated ARK ({ark_found})"),
            );
        }
        None => out.push(
            "ark.pinned",
            false,
            "SPKI SHA-256 of an AMD ARK (Milan, Genoa or Turin)",
            format!("unpinned {ark_found}"),
        ),
    }
    out.simulated = simulated_ark;
    for (name, child, issuer_label, issuer) in [
        ("ark.self_signed", &c.ark, "ARK", &c.ark),
        ("ask.signed_by_ark", &c.ask, "ARK", &c.ark),
        ("vcek.signed_by_ask", &c.vcek, "ASK", &c.ask),
    ] {
        match certs::verify_signed_by(name, child, issuer_label, issuer) {
            Ok(()) => out.push(
                name,
                true,
                format!("RSASSA-PSS SHA-384 signature by the {issuer_label}"),
                "valid",
            ),
            Err(e) => out.fail(
                name,
                format!("RSASSA-PSS SHA-384 signature by the {issuer_label}"),
                &e,
            ),
        }
    }
    let now_text = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or_else(|_| "before 1970".to_owned(), certs::format_time);
    for (name, cert) in [
        ("ark.validity", &c.ark),
        ("ask.validity", &c.ask),
        ("vcek.validity", &c.vcek),
    ] {
        // The time is named only on failure, so that a passing run prints the same every time.
        let valid = certs::valid_at(cert, now);
        let expected = if valid {
            "valid now".to_owned()
        } else {
            format!("valid at {now_text}")
        };
        out.push(name, valid, expected, window(cert));
    }
    let info = match VcekInfo::from_cert(&c.vcek) {
        Ok(i) => i,
        Err(e) => {
            out.fail(
                "vcek.extensions",
                "AMD product name, TCB and hwID extensions",
                &e,
            );
            return None;
        }
    };
    let named = [root_named, inter_named, issuer_named, info.product];
    let agreed = pin.or(root_named.map(|(p, _)| p));
    let consistent = named
        .iter()
        .all(|n| n.is_some() && n.map(|(p, _)| p) == agreed)
        && named
            .iter()
            .all(|n| n.map(|(_, s)| s) == Some(simulated_ark));
    let found = format!(
        "ARK pin {} / {root_cn} / {inter_cn} / VCEK issuer {vcek_issuer_cn} / VCEK product {}",
        pin.map_or("none".to_owned(), |p| p.to_string()),
        info.product_name
    );
    out.push(
        "chain.product",
        consistent,
        "one product named by ARK pin, ARK, ASK, VCEK issuer and VCEK",
        found,
    );
    let product = agreed.filter(|_| consistent)?;
    out.product = Some(product);
    Some((product, info))
}

/// Parses the report and runs every chain, signature and policy check on it. Returns the
/// report if it parsed and the chain agreed on a product (other checks may still have failed).
pub fn check_report_and_chain(
    out: &mut VerificationReport,
    raw_report: &[u8],
    c: &ChainCerts,
    policy: &Policy,
    now: SystemTime,
) -> Option<ChainOutcome> {
    let chain = check_chain(out, c, policy, now);
    let report = match AttestationReport::parse(raw_report) {
        Ok(r) => r,
        Err(e) => {
            out.fail("report.parse", "a 1184-byte SNP attestation report", &e);
            return None;
        }
    };
    let (product, info) = chain?;
    if let Some(cpu) = report.cpuid_product() {
        out.push(
            "report.cpuid_product",
            cpu == product,
            format!("{product} (from the chain)"),
            format!(
                "{cpu} (family {:#x} model {:#x})",
                report.cpuid_fam_id, report.cpuid_mod_id
            ),
        );
    } else if report.version >= 3 && (report.cpuid_fam_id, report.cpuid_mod_id) != (0, 0) {
        // All-zero CPUID fields mean "not reported" (early v3 firmware); anything else must map.
        out.push(
            "report.cpuid_product",
            false,
            format!("{product} (from the chain)"),
            format!(
                "unknown CPUID family {:#x} model {:#x}",
                report.cpuid_fam_id, report.cpuid_mod_id
            ),
        );
    }
    out.push(
        "policy.product",
        policy.products.contains(&product),
        format!("one of {:?}", policy.products),
        product.to_string(),
    );
    check_report_rules(out, raw_report, &report, product, &info, &c.vcek, policy);
    Some(ChainOutcome { report, product })
}

/// The rules on a parsed report whose chain agreed on `product`.
fn check_report_rules(
    out: &mut VerificationReport,
    raw_report: &[u8],
    report: &AttestationReport,
    product: Product,
    info: &VcekInfo,
    vcek: &Certificate,
    policy: &Policy,
) {
    let sig_ok = certs::vcek_key(vcek).and_then(|key| {
        let sig = p384::ecdsa::Signature::from_scalars(report.signature_r, report.signature_s)
            .map_err(|_| CertError::VcekKey)?;
        let signed = report::signed_bytes(raw_report).ok_or(CertError::VcekKey)?;
        key.verify(signed, &sig).map_err(|_| CertError::VcekKey)
    });
    out.push(
        "report.signature",
        sig_ok.is_ok(),
        "ECDSA P-384 SHA-384 signature over bytes 0x000..0x2A0 by the VCEK",
        if sig_ok.is_ok() { "valid" } else { "invalid" },
    );
    out.push(
        "report.version",
        report.version >= policy.min_report_version,
        format!(">= {}", policy.min_report_version),
        report.version.to_string(),
    );
    out.push(
        "report.signing_key",
        report.signing_key() == 0,
        "0 (VCEK)",
        report.signing_key().to_string(),
    );
    out.push(
        "policy.debug",
        policy.allow_debug || !report.debug_allowed(),
        if policy.allow_debug {
            "debug allowed or not"
        } else {
            "guest policy bit 19 (debug) clear"
        },
        format!(
            "policy {:#x}: debug {}",
            report.policy,
            if report.debug_allowed() {
                "allowed"
            } else {
                "disabled"
            }
        ),
    );
    out.push(
        "policy.vmpl",
        policy.vmpl_allowed(report.vmpl),
        policy.vmpl_rule(),
        report.vmpl.to_string(),
    );
    check_vcek_agreement(out, report, product, info, policy);
}

/// The report's agreement with its VCEK (TCB, hwID) and the TCB and chip-ID policy rules.
fn check_vcek_agreement(
    out: &mut VerificationReport,
    report: &AttestationReport,
    product: Product,
    info: &VcekInfo,
    policy: &Policy,
) {
    let reported = report.reported_tcb.decode(product);
    let tcb_equal = reported.bootloader == info.tcb.bootloader
        && reported.tee == info.tcb.tee
        && reported.snp == info.tcb.snp
        && reported.microcode == info.tcb.microcode
        && (!product.has_fmc() || reported.fmc == Some(info.tcb.fmc.unwrap_or(0)));
    out.push(
        "vcek.tcb",
        tcb_equal,
        format!("reported_tcb equal to the VCEK's {}", info.tcb),
        reported.to_string(),
    );
    let hwid_len = product.hwid_len();
    let hwid_ok = !report.chip_id_masked()
        && info.hwid.len() == hwid_len
        && report.chip_id[..hwid_len] == info.hwid[..];
    out.push(
        "vcek.hwid",
        hwid_ok,
        format!(
            "chip_id[0..{hwid_len}] equal to the VCEK hwID {}",
            hex::encode(&info.hwid)
        ),
        if report.chip_id_masked() {
            "chip ID masked".to_owned()
        } else {
            hex::encode(&report.chip_id[..hwid_len])
        },
    );
    out.push(
        "policy.min_tcb",
        reported.meets(&policy.min_tcb),
        format!(">= {}", policy.min_tcb),
        reported.to_string(),
    );
    allow_list(
        out,
        "policy.measurement",
        &policy.measurements,
        &report.measurement,
    );
    allow_list(
        out,
        "policy.host_data",
        &policy.host_data,
        &report.host_data,
    );
    let chip_ids: Vec<&[u8]> = policy.chip_ids.iter().map(Vec::as_slice).collect();
    let chip_found = &report.chip_id[..hwid_len];
    let chip_ok = chip_ids.is_empty()
        || chip_ids
            .iter()
            .any(|id| id.len() >= hwid_len && id[..hwid_len] == *chip_found);
    out.push(
        "policy.chip_id",
        chip_ok,
        list_text(&chip_ids),
        hex::encode(chip_found),
    );
}

fn list_text<T: AsRef<[u8]>>(list: &[T]) -> String {
    if list.is_empty() {
        "any (no allow-list)".to_owned()
    } else {
        let items: Vec<String> = list.iter().map(hex::encode).collect();
        format!("one of [{}]", items.join(", "))
    }
}

fn allow_list<const N: usize>(
    out: &mut VerificationReport,
    name: &str,
    list: &[[u8; N]],
    found: &[u8; N],
) {
    out.push(
        name,
        list.is_empty() || list.contains(found),
        list_text(list),
        hex::encode(found),
    );
}
