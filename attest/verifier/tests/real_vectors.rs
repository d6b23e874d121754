//! Real AMD SEV-SNP vectors from `$ENCLAVEID_SNP_TESTDATA` (see its README): every genuine
//! report/VCEK pair verifies, tampering and mismatched certificates are refused, and the Azure
//! vTPM evidence (Milan and Genoa) verifies including the AK and quote binding.

#![allow(clippy::unwrap_used, clippy::type_complexity)] // helpers of a test binary

mod support;

use std::path::Path;

use base64::Engine as _;
use enclaveid_attest_verifier::certs::{self, ARK_SPKI_PINS};
use enclaveid_attest_verifier::hcl::HclReport;
use enclaveid_attest_verifier::report::{decode_raw_or_hex, AttestationReport};
use enclaveid_attest_verifier::vtpm::{self, Quote, QuoteInfo};
use enclaveid_attest_verifier::{verify_report, verify_vtpm_parts, Policy, Product};
use sha2::{Digest, Sha256};
use support::{assert_fails, assert_pass, now, read};

/// (report, vcek, chain) of every genuine raw report in the vectors.
fn genuine(dir: &Path) -> Vec<(&'static str, Vec<u8>, Vec<u8>, Vec<u8>)> {
    let milan_chain = read(dir, "virtee-sev/cert_chain_milan");
    let hcl = read(dir, "trustee/az-snp-vtpm-hcl-report.bin");
    vec![
        (
            "virtee-sev milan",
            decode_raw_or_hex(&read(dir, "virtee-sev/report_milan.hex")).unwrap(),
            read(dir, "virtee-sev/vcek_milan.der"),
            milan_chain.clone(),
        ),
        (
            "trustee snp",
            read(dir, "trustee/snp-test-report.bin"),
            read(dir, "trustee/snp-test-vcek.der"),
            milan_chain,
        ),
        (
            "confidential-sidecar-containers",
            read(dir, "confidential-sidecar-containers/snp_report.bin"),
            read(
                dir,
                "confidential-sidecar-containers/uvm_host_amd_certificate.pem",
            ),
            Vec::new(),
        ),
        (
            "trustee az-snp-vtpm (HCL, milan)",
            HclReport::parse(&hcl).unwrap().snp_report,
            read(dir, "trustee/az-snp-vtpm-vcek.pem"),
            Vec::new(),
        ),
        (
            "trustee az-snp-vtpm (HCL, genoa)",
            genoa(dir).hcl_snp_report(),
            genoa(dir).vcek.into_bytes(),
            genoa_chain(dir),
        ),
    ]
}

struct Genoa {
    hcl: Vec<u8>,
    quote: Quote,
    vcek: String,
}

impl Genoa {
    fn hcl_snp_report(&self) -> Vec<u8> {
        HclReport::parse(&self.hcl).unwrap().snp_report
    }
}

fn genoa(dir: &Path) -> Genoa {
    let json: serde_json::Value =
        serde_json::from_slice(&read(dir, "trustee/az-snp-vtpm-evidence-genoa.json")).unwrap();
    let bytes = |v: &serde_json::Value| -> Vec<u8> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|b| u8::try_from(b.as_u64().unwrap()).unwrap())
            .collect()
    };
    let q = &json["quote"];
    Genoa {
        hcl: bytes(&json["report"]),
        quote: Quote {
            signature: bytes(&q["signature"]),
            message: bytes(&q["message"]),
            pcrs: q["pcrs"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| bytes(p).try_into().unwrap())
                .collect(),
        },
        vcek: json["vcek"].as_str().unwrap().to_owned(),
    }
}

fn genoa_chain(dir: &Path) -> Vec<u8> {
    [
        read(dir, "virtee-sev/genoa_ask.pem"),
        read(dir, "virtee-sev/genoa_ark.pem"),
    ]
    .concat()
}

#[test]
fn ark_pins_match_the_public_arks() {
    let Some(dir) = support::testdata() else {
        return;
    };
    for (product, pin) in ARK_SPKI_PINS {
        let file = format!("virtee-sev/{}_ark.pem", product.name().to_lowercase());
        let ark = certs::parse_cert("ark", &read(&dir, &file)).unwrap();
        assert_eq!(hex::encode(certs::spki_sha256(&ark)), pin, "{file}");
        assert_eq!(certs::pinned_product(&ark), Some(product));
    }
}

#[test]
fn every_genuine_report_verifies() {
    let Some(dir) = support::testdata() else {
        return;
    };
    for (name, report, vcek, chain) in genuine(&dir) {
        let out = verify_report(&report, &vcek, &chain, &Policy::default(), now());
        assert!(out.passed, "{name}:\n{out}");
    }
}

#[test]
fn products_are_recognised() {
    let Some(dir) = support::testdata() else {
        return;
    };
    let products: Vec<_> = genuine(&dir)
        .into_iter()
        .map(|(_, r, v, c)| verify_report(&r, &v, &c, &Policy::default(), now()).product)
        .collect();
    assert_eq!(products.last(), Some(&Some(Product::Genoa)));
    assert_eq!(products[0], Some(Product::Milan));
    let genoa_only = Policy {
        products: vec![Product::Genoa],
        ..Policy::default()
    };
    let (_, r, v, c) = genuine(&dir).remove(0);
    assert_fails(
        &verify_report(&r, &v, &c, &genoa_only, now()),
        "policy.product",
    );
}

#[test]
fn turin_chain_verifies_and_reads_an_8_byte_hwid() {
    let Some(dir) = support::testdata() else {
        return;
    };
    let vcek = certs::parse_cert("vcek", &read(&dir, "virtee-sev/vcek_turin.der")).unwrap();
    let chain =
        certs::parse_pem_chain("chain", &read(&dir, "virtee-sev/cert_chain_turin")).unwrap();
    let (ask, ark) = (&chain[0], &chain[1]);
    assert_eq!(certs::pinned_product(ark), Some(Product::Turin));
    certs::verify_signed_by("ark", ark, "ARK", ark).unwrap();
    certs::verify_signed_by("ask", ask, "ARK", ark).unwrap();
    certs::verify_signed_by("vcek", &vcek, "ASK", ask).unwrap();
    let info = certs::VcekInfo::from_cert(&vcek).unwrap();
    assert_eq!(info.product, Some((Product::Turin, false)));
    assert_eq!(info.hwid.len(), 8);
    assert_eq!(info.tcb.fmc, Some(0));
    assert_eq!(info.tcb.microcode, 9);
    // A Milan VCEK does not verify under the Turin ASK.
    let milan = certs::parse_cert("vcek", &read(&dir, "virtee-sev/vcek_milan.der")).unwrap();
    assert!(certs::verify_signed_by("vcek", &milan, "ASK", ask).is_err());
}

/// (offset, length, name) of every signed field of the report.
const SIGNED_FIELDS: &[(usize, usize, &str)] = &[
    (0x00, 4, "version"),
    (0x04, 4, "guest_svn"),
    (0x08, 8, "policy"),
    (0x10, 16, "family_id"),
    (0x20, 16, "image_id"),
    (0x30, 4, "vmpl"),
    (0x34, 4, "signature_algo"),
    (0x38, 8, "current_tcb"),
    (0x40, 8, "platform_info"),
    (0x48, 4, "key_info"),
    (0x4C, 4, "reserved"),
    (0x50, 64, "report_data"),
    (0x90, 48, "measurement"),
    (0xC0, 32, "host_data"),
    (0xE0, 48, "id_key_digest"),
    (0x110, 48, "author_key_digest"),
    (0x140, 32, "report_id"),
    (0x160, 32, "report_id_ma"),
    (0x180, 8, "reported_tcb"),
    (0x188, 24, "cpuid/reserved"),
    (0x1A0, 64, "chip_id"),
    (0x1E0, 8, "committed_tcb"),
    (0x1E8, 8, "versions"),
    (0x1F0, 8, "launch_tcb"),
    (0x1F8, 168, "mit vectors/reserved"),
];

#[test]
fn one_bit_change_in_any_signed_field_is_rejected() {
    let Some(dir) = support::testdata() else {
        return;
    };
    let (_, report, vcek, chain) = genuine(&dir).remove(0);
    for &(offset, len, field) in SIGNED_FIELDS {
        for at in [offset, offset + len - 1] {
            let mut bad = report.clone();
            bad[at] ^= 0x01;
            let out = verify_report(&bad, &vcek, &chain, &Policy::default(), now());
            assert!(!out.passed, "{field} at {at:#x} still verifies:\n{out}");
            if let Some(sig) = out.check("report.signature") {
                assert!(!sig.passed, "{field} at {at:#x}: signature still valid");
            } else {
                assert!(
                    out.check("report.parse").is_some_and(|c| !c.passed),
                    "{field}: {out}"
                );
            }
        }
    }
}

#[test]
fn vcek_of_another_chip_is_rejected() {
    let Some(dir) = support::testdata() else {
        return;
    };
    let (_, report, _, chain) = genuine(&dir).remove(0);
    let other = read(&dir, "go-sev-guest/vcek.testcer");
    let out = verify_report(&report, &other, &chain, &Policy::default(), now());
    assert_fails(&out, "report.signature");
    assert_fails(&out, "vcek.hwid");
    assert_fails(&out, "vcek.tcb");
}

#[test]
fn ask_of_the_wrong_product_is_rejected() {
    let Some(dir) = support::testdata() else {
        return;
    };
    let (_, report, vcek, _) = genuine(&dir).remove(0);
    let out = verify_report(
        &report,
        &vcek,
        &genoa_chain(&dir),
        &Policy::default(),
        now(),
    );
    assert_fails(&out, "vcek.signed_by_ask");
    assert_fails(&out, "chain.product");
    // The Genoa bundle from go-sev-guest is the same pair of certificates.
    let out = verify_report(
        &report,
        &vcek,
        &read(&dir, "go-sev-guest/ask_ark_genoa.pem"),
        &Policy::default(),
        now(),
    );
    assert_fails(&out, "vcek.signed_by_ask");
}

#[test]
fn debug_report_is_rejected_by_default() {
    let Some(dir) = support::testdata() else {
        return;
    };
    let report = read(&dir, "go-sev-guest/attestation.bin");
    let vcek = read(&dir, "go-sev-guest/vcek.testcer");
    let chain = read(&dir, "virtee-sev/cert_chain_milan");
    let out = verify_report(&report, &vcek, &chain, &Policy::default(), now());
    assert_fails(&out, "policy.debug");
    assert_eq!(out.checks.iter().filter(|c| !c.passed).count(), 1, "{out}");
    let lenient = Policy {
        allow_debug: true,
        ..Policy::default()
    };
    assert_pass(&verify_report(&report, &vcek, &chain, &lenient, now()));
}

#[test]
fn sidecar_host_data_is_the_policy_hash() {
    let Some(dir) = support::testdata() else {
        return;
    };
    let report = AttestationReport::parse(&read(
        &dir,
        "confidential-sidecar-containers/snp_report.bin",
    ))
    .unwrap();
    let b64 = read(
        &dir,
        "confidential-sidecar-containers/uvm_security_policy.base64",
    );
    let text = String::from_utf8(b64).unwrap();
    let policy = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .unwrap();
    assert_eq!(report.host_data, <[u8; 32]>::from(Sha256::digest(&policy)));
    // And an allow-list with that hash accepts the report, one without it refuses it.
    let vcek = read(
        &dir,
        "confidential-sidecar-containers/uvm_host_amd_certificate.pem",
    );
    let raw = read(&dir, "confidential-sidecar-containers/snp_report.bin");
    let allow = Policy {
        host_data: vec![report.host_data],
        ..Policy::default()
    };
    assert_pass(&verify_report(&raw, &vcek, &[], &allow, now()));
    let deny = Policy {
        host_data: vec![[0; 32]],
        ..Policy::default()
    };
    assert_fails(
        &verify_report(&raw, &vcek, &[], &deny, now()),
        "policy.host_data",
    );
}

#[test]
fn azure_vtpm_milan_verifies_with_ak_and_quote() {
    let Some(dir) = support::testdata() else {
        return;
    };
    let hcl = read(&dir, "trustee/az-snp-vtpm-hcl-report.bin");
    let quote = Quote::parse(&read(&dir, "trustee/az-snp-vtpm-quote.bin")).unwrap();
    let vcek = read(&dir, "trustee/az-snp-vtpm-vcek.pem");
    let out = verify_vtpm_parts(
        &hcl,
        &quote,
        None,
        &vcek,
        &[],
        b"challenge",
        &Policy::default(),
        now(),
    );
    assert_pass(&out);
    for check in [
        "hcl.var_data_binding",
        "hcl.ak_pub",
        "quote.signature",
        "quote.pcr_digest",
        "binding.quote_extra_data",
    ] {
        assert!(
            out.check(check).is_some_and(|c| c.passed),
            "{check}:\n{out}"
        );
    }
    let wrong_nonce = verify_vtpm_parts(
        &hcl,
        &quote,
        None,
        &vcek,
        &[],
        b"challengf",
        &Policy::default(),
        now(),
    );
    assert_fails(&wrong_nonce, "binding.quote_extra_data");
    let mut tampered = quote.clone();
    tampered.pcrs[7][0] ^= 1;
    let out = verify_vtpm_parts(
        &hcl,
        &tampered,
        None,
        &vcek,
        &[],
        b"challenge",
        &Policy::default(),
        now(),
    );
    assert_fails(&out, "quote.pcr_digest");
    let mut tampered = quote;
    tampered.message[20] ^= 1;
    let out = verify_vtpm_parts(
        &hcl,
        &tampered,
        None,
        &vcek,
        &[],
        b"challenge",
        &Policy::default(),
        now(),
    );
    assert_fails(&out, "quote.signature");
}

#[test]
fn azure_vtpm_genoa_verifies_with_ak_and_quote() {
    let Some(dir) = support::testdata() else {
        return;
    };
    let g = genoa(&dir);
    // The nonce trustee's test used; it is what the quote's extraData carries.
    let nonce = QuoteInfo::parse(&g.quote.message).unwrap().extra_data;
    assert_eq!(nonce.len(), 48);
    let out = verify_vtpm_parts(
        &g.hcl,
        &g.quote,
        None,
        g.vcek.as_bytes(),
        &genoa_chain(&dir),
        &nonce,
        &Policy::default(),
        now(),
    );
    assert_pass(&out);
    assert_eq!(out.product, Some(Product::Genoa));
    // A tampered var data (the AK lives there) breaks the HCL binding.
    let mut hcl = g.hcl.clone();
    let at = enclaveid_attest_verifier::hcl::VAR_DATA_OFFSET + 30;
    hcl[at] ^= 1;
    let out = verify_vtpm_parts(
        &hcl,
        &g.quote,
        None,
        g.vcek.as_bytes(),
        &genoa_chain(&dir),
        &nonce,
        &Policy::default(),
        now(),
    );
    assert_fails(&out, "hcl.var_data_binding");
}

#[test]
fn azure_cvm_tooling_vectors_parse_and_quote_verifies() {
    let Some(dir) = support::testdata() else {
        return;
    };
    let hcl = HclReport::parse(&read(&dir, "azure-cvm-tooling/hcl-report-snp.bin")).unwrap();
    let report = AttestationReport::parse(&hcl.snp_report).unwrap();
    assert!(hcl.binding_holds(&report.report_data));
    hcl.ak_pub().unwrap();
    let ak =
        vtpm::ak_from_pem(std::str::from_utf8(&read(&dir, "azure-cvm-tooling/akpub.pem")).unwrap())
            .unwrap();
    let quote = Quote::parse(&read(&dir, "azure-cvm-tooling/quote.bin")).unwrap();
    vtpm::verify_signature(&ak, &quote.message, &quote.signature).unwrap();
    let info = QuoteInfo::parse(&quote.message).unwrap();
    assert_eq!(info.extra_data, b"challenge");
    info.check_pcrs(&quote.pcrs).unwrap();
    // Its certificates belong to another chip: the report does not verify under them.
    let certs = read(&dir, "azure-cvm-tooling/certs.pem");
    let out = verify_report(&hcl.snp_report, &certs, &[], &Policy::default(), now());
    assert_fails(&out, "report.signature");
}

/// The worked example in docs/attestation.md shows exactly what `verify-report` prints for the
/// confidential-containers report; this keeps the page honest.
#[test]
fn worked_example_in_docs_is_exact() {
    let Some(dir) = support::testdata() else {
        return;
    };
    let raw = read(&dir, "confidential-sidecar-containers/snp_report.bin");
    let vcek = read(
        &dir,
        "confidential-sidecar-containers/uvm_host_amd_certificate.pem",
    );
    let rendered = verify_report(&raw, &vcek, &[], &Policy::default(), now()).to_string();
    let doc_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/attestation.md");
    let doc = std::fs::read_to_string(&doc_path).unwrap();
    let start = doc
        .find("<!-- worked-example-output -->")
        .expect("marker in docs/attestation.md");
    let block = &doc[start..];
    let body_start = block.find("```text\n").unwrap() + "```text\n".len();
    let body_end = block[body_start..].find("```").unwrap() + body_start;
    let shown = &block[body_start..body_end];
    if std::env::var_os("PRINT_WORKED_EXAMPLE").is_some() {
        println!("{rendered}");
    }
    assert_eq!(
        shown.trim_end(),
        rendered.trim_end(),
        "docs/attestation.md worked example is stale"
    );
}
