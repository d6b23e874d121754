//! The checks of the Azure vTPM path: the HCL report (its SNP report goes through the chain
//! checks), the var-data binding, the AK, the quote signature, the PCR digest and extraData.

use std::time::SystemTime;

use rsa::traits::PublicKeyParts as _;

use super::chain::{check_report_and_chain, ChainCerts};
use super::VerificationReport;
use crate::evidence::DecodedVtpm;
use crate::hcl::HclReport;
use crate::policy::Policy;
use crate::vtpm::{self, QuoteInfo};

/// What the vTPM checks established.
#[derive(Debug, Clone)]
pub struct VtpmOutcome {
    /// The raw SNP report inside the HCL report.
    pub snp_report: Vec<u8>,
}

fn fingerprint(key: &rsa::RsaPublicKey) -> String {
    use sha2::Digest as _;
    let mut h = sha2::Sha256::new();
    h.update(key.n().to_bytes_be());
    h.update(key.e().to_bytes_be());
    format!(
        "RSA-{} key, SHA-256(n‖e) {}",
        key.size() * 8,
        hex::encode(&h.finalize()[..8])
    )
}

/// Runs the HCL, AK and quote checks; `expected_extra_data` is what the quote's extraData must
/// be. An empty `parts.ak_pub` skips only the comparison of the evidence's copy of the AK (the
/// AK used is always the one from the signed HCL claims).
pub fn check_vtpm(
    out: &mut VerificationReport,
    parts: &DecodedVtpm,
    certs: &ChainCerts,
    expected_extra_data: &[u8],
    policy: &Policy,
    now: SystemTime,
) -> Option<VtpmOutcome> {
    let hcl = match HclReport::parse(&parts.hcl_report) {
        Ok(h) => h,
        Err(e) => {
            out.fail(
                "hcl.parse",
                "an Azure HCL report with an SNP report and SHA-256 var data",
                &e,
            );
            return None;
        }
    };
    let outcome = check_report_and_chain(out, &hcl.snp_report, certs, policy, now)?;
    let want = hcl.var_data_sha256();
    out.push(
        "hcl.var_data_binding",
        hcl.binding_holds(&outcome.report.report_data),
        format!(
            "report_data[0..32] = SHA-256(var data) = {}",
            hex::encode(want)
        ),
        hex::encode(&outcome.report.report_data[..32]),
    );
    let ak = match hcl.ak_pub() {
        Ok(k) => k,
        Err(e) => {
            out.fail(
                "hcl.ak_pub",
                "an RSA HCLAkPub key in the HCL runtime claims",
                &e,
            );
            return None;
        }
    };
    out.push(
        "hcl.ak_pub",
        true,
        "an RSA HCLAkPub key in the HCL runtime claims",
        fingerprint(&ak),
    );
    if !parts.ak_pub.is_empty() {
        match vtpm::ak_from_pem(&parts.ak_pub) {
            Ok(given) => out.push(
                "vtpm.ak_matches_hcl",
                given == ak,
                fingerprint(&ak),
                fingerprint(&given),
            ),
            Err(e) => out.fail("vtpm.ak_matches_hcl", fingerprint(&ak), &e),
        }
    }
    match vtpm::verify_signature(&ak, &parts.quote_message, &parts.quote_signature) {
        Ok(()) => out.push(
            "quote.signature",
            true,
            "RSASSA-PKCS1-v1_5 SHA-256 signature by the HCL AK",
            "valid",
        ),
        Err(e) => out.fail(
            "quote.signature",
            "RSASSA-PKCS1-v1_5 SHA-256 signature by the HCL AK",
            &e,
        ),
    }
    let info = match QuoteInfo::parse(&parts.quote_message) {
        Ok(i) => i,
        Err(e) => {
            out.fail("quote.parse", "a TPMS_ATTEST quote", &e);
            return None;
        }
    };
    match info.check_pcrs(&parts.pcrs) {
        Ok(()) => out.push(
            "quote.pcr_digest",
            true,
            "SHA-256 of the selected PCRs equal to the quoted digest",
            hex::encode(&info.pcr_digest),
        ),
        Err(e) => out.fail(
            "quote.pcr_digest",
            "SHA-256 of the selected PCRs equal to the quoted digest",
            &e,
        ),
    }
    out.push(
        "binding.quote_extra_data",
        info.extra_data == expected_extra_data,
        hex::encode(expected_extra_data),
        hex::encode(&info.extra_data),
    );
    Some(VtpmOutcome {
        snp_report: hcl.snp_report,
    })
}
