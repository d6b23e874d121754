//! Tests of the VCEK sources on the real vectors in `shared/testdata/snp` (see its README).

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use super::*;

/// The SNP test vectors: `ENCLAVEID_SNP_TESTDATA`, else `<workspace>/../shared/testdata/snp`.
/// Absent: a loud message, and a failure under `CI=true`.
fn testdata() -> Option<PathBuf> {
    let dir = std::env::var_os("ENCLAVEID_SNP_TESTDATA").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/testdata/snp"),
        PathBuf::from,
    );
    if dir.is_dir() {
        return Some(dir);
    }
    let message = format!(
        "SNP test vectors not found at {} (set ENCLAVEID_SNP_TESTDATA)",
        dir.display()
    );
    assert!(std::env::var("CI").as_deref() != Ok("true"), "{message}");
    eprintln!("!!! SKIPPING: {message}");
    None
}

fn milan_report(data: &Path) -> Vec<u8> {
    let text = std::fs::read(data.join("virtee-sev/report_milan.hex")).unwrap();
    enclaveid_attest_verifier::report::decode_raw_or_hex(&text).unwrap()
}

fn cn(pem_text: &str) -> String {
    let cert = Certificate::from_pem(pem_text.as_bytes()).unwrap();
    cert.tbs_certificate.subject.to_string()
}

#[test]
fn sources_parse() {
    assert_eq!("auto".parse::<VcekSource>().unwrap(), VcekSource::Auto);
    assert_eq!(
        "thim".parse::<VcekSource>().unwrap(),
        VcekSource::Thim(THIM_URL.into())
    );
    assert_eq!(
        "thim:http://127.0.0.1:9/x".parse::<VcekSource>().unwrap(),
        VcekSource::Thim("http://127.0.0.1:9/x".into())
    );
    assert_eq!(
        "file:/tmp/v.pem".parse::<VcekSource>().unwrap(),
        VcekSource::File("/tmp/v.pem".into())
    );
    for bad in ["", "kds", "file:", "thim:https://x/"] {
        assert!(bad.parse::<VcekSource>().is_err(), "{bad}");
    }
}

#[test]
fn thim_answer_of_azure_containers() {
    let Some(data) = testdata() else { return };
    let body =
        std::fs::read(data.join("confidential-sidecar-containers/uvm_host_amd_certificate.json"))
            .unwrap();
    let parts = parse_thim("test", &body).unwrap();
    let vcek = Certificate::from_der(parts.vcek.as_ref().unwrap()).unwrap();
    assert!(vcek
        .tbs_certificate
        .subject
        .to_string()
        .contains("SEV-VCEK"));
    let ark = Certificate::from_der(parts.ark.as_ref().unwrap()).unwrap();
    assert_eq!(ark.tbs_certificate.subject, ark.tbs_certificate.issuer);
    assert!(parts.ask.is_some());
    assert!(parse_thim("test", b"{\"vcekCert\": 1}").is_err());
    assert!(parse_thim("test", b"not json").is_err());
}

#[test]
fn file_source_with_a_chain_file_feeds_the_verifier() {
    let Some(data) = testdata() else { return };
    let report = milan_report(&data);
    let resolver = VcekResolver::new(
        VcekSource::File(data.join("virtee-sev/vcek_milan.der")),
        Some(data.join("virtee-sev/cert_chain_milan")),
        None,
    );
    let chain = resolver.resolve(&report, None).unwrap();
    assert!(cn(&chain.vcek).contains("SEV-VCEK"));
    assert!(cn(&chain.ask).contains("SEV-Milan"));
    assert!(cn(&chain.ark).contains("ARK-Milan"));
    // What the source hands over is exactly what the verifier needs.
    let policy = enclaveid_attest_verifier::Policy::default();
    let verdict = enclaveid_attest_verifier::verify_report(
        &report,
        chain.vcek.as_bytes(),
        format!("{}{}", chain.ask, chain.ark).as_bytes(),
        &policy,
        std::time::SystemTime::now(),
    );
    assert!(
        verdict.check("report.signature").is_some_and(|c| c.passed),
        "{verdict}"
    );
}

#[test]
fn turin_and_genoa_bundles_classify() {
    let Some(data) = testdata() else { return };
    let turin = parts_from_file(&data.join("virtee-sev/vcek_turin.der")).unwrap();
    assert!(turin.vcek.is_some() && turin.ask.is_none());
    let chain = parts_from_file(&data.join("virtee-sev/cert_chain_turin")).unwrap();
    assert!(chain.ask.is_some() && chain.ark.is_some() && chain.vcek.is_none());
    let genoa = parts_from_file(&data.join("go-sev-guest/ask_ark_genoa.pem")).unwrap();
    let ark = Certificate::from_der(genoa.ark.as_ref().unwrap()).unwrap();
    assert!(ark
        .tbs_certificate
        .subject
        .to_string()
        .contains("ARK-Genoa"));
    let bundle = parts_from_file(&data.join("trustee/az-snp-vtpm-vcek.pem")).unwrap();
    assert!(bundle.vcek.is_some() && bundle.ask.is_some() && bundle.ark.is_some());
}

#[test]
fn missing_pieces_are_named() {
    let Some(data) = testdata() else { return };
    let report = milan_report(&data);
    let resolver = VcekResolver::new(
        VcekSource::File(data.join("virtee-sev/vcek_milan.der")),
        None,
        None,
    );
    let err = resolver.resolve(&report, None).unwrap_err().to_string();
    assert!(
        err.contains("no ASK certificate") && err.contains("--cert-chain"),
        "{err}"
    );
    let resolver = VcekResolver::new(VcekSource::Report, None, None);
    let err = resolver
        .resolve(&report, Some(&CertTable::default()))
        .unwrap_err()
        .to_string();
    assert!(err.contains("no VCEK certificate from report"), "{err}");
    assert!(resolver.resolve(&[0; 100], None).is_err());
}

#[test]
fn report_table_is_used_as_is() {
    let Some(data) = testdata() else { return };
    let report = milan_report(&data);
    let chain_parts = parts_from_file(&data.join("virtee-sev/cert_chain_milan")).unwrap();
    let table = CertTable {
        vcek: Some(std::fs::read(data.join("virtee-sev/vcek_milan.der")).unwrap()),
        is_vlek: false,
        ask: chain_parts.ask,
        ark: chain_parts.ark,
    };
    let resolver = VcekResolver::new(VcekSource::Report, None, None);
    let chain = resolver.resolve(&report, Some(&table)).unwrap();
    assert!(cn(&chain.ark).contains("ARK-Milan"));
}

#[test]
fn hostile_files_give_errors() {
    let dir = tempfile::tempdir().unwrap();
    for (name, body) in [
        ("empty", &b""[..]),
        ("junk", b"\x30\x82\xff\xff garbage"),
        ("open-pem", b"-----BEGIN CERTIFICATE-----\nAAAA\n"),
        (
            "bad-pem",
            b"-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n",
        ),
    ] {
        let path = dir.path().join(name);
        std::fs::write(&path, body).unwrap();
        assert!(parts_from_file(&path).is_err(), "{name}");
    }
    let big = dir.path().join("big");
    std::fs::write(&big, vec![b'A'; MAX_DOCUMENT + 1]).unwrap();
    assert!(parts_from_file(&big)
        .unwrap_err()
        .to_string()
        .contains("limit"));
}

/// `python3 -m http.server` on loopback serving a directory; killed by PID on drop.
struct PythonHttp {
    child: Child,
    port: u16,
}

impl PythonHttp {
    fn start(root: &Path) -> Option<Self> {
        let spawned = Command::new("python3")
            .args([
                "-u",
                "-m",
                "http.server",
                "0",
                "--bind",
                "127.0.0.1",
                "--directory",
            ])
            .arg(root)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn();
        let mut child = match spawned {
            Ok(child) => child,
            Err(e) => {
                let message = format!("python3 not runnable ({e}); run scripts/ci-deps/attest.sh");
                assert!(std::env::var("CI").as_deref() != Ok("true"), "{message}");
                eprintln!("!!! SKIPPING: {message}");
                return None;
            }
        };
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        // "Serving HTTP on 127.0.0.1 port 40123 (http://127.0.0.1:40123/) ..."
        let port = line
            .split(" port ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("unexpected http.server banner {line:?}"));
        Some(Self { child, port })
    }
}

impl Drop for PythonHttp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn thim_fetch_and_caches() {
    let Some(data) = testdata() else { return };
    let root = tempfile::tempdir().unwrap();
    let thim_dir = root.path().join("metadata/THIM/amd");
    std::fs::create_dir_all(&thim_dir).unwrap();
    std::fs::copy(
        data.join("confidential-sidecar-containers/uvm_host_amd_certificate.json"),
        thim_dir.join("certification"),
    )
    .unwrap();
    let report =
        std::fs::read(data.join("confidential-sidecar-containers/snp_report.bin")).unwrap();
    let cache = tempfile::tempdir().unwrap();
    let Some(server) = PythonHttp::start(root.path()) else {
        return;
    };
    let url = format!(
        "http://127.0.0.1:{}/metadata/THIM/amd/certification",
        server.port
    );
    let resolver = VcekResolver::new(
        VcekSource::Thim(url.clone()),
        None,
        Some(cache.path().into()),
    );
    let first = resolver.resolve(&report, None).unwrap();
    assert!(cn(&first.vcek).contains("SEV-VCEK"));
    let wrong = VcekResolver::new(
        VcekSource::Thim(format!("http://127.0.0.1:{}/nothing", server.port)),
        None,
        None,
    );
    assert!(wrong
        .resolve(&report, None)
        .unwrap_err()
        .to_string()
        .contains("404"));
    drop(server);

    // THIM is gone: the memory cache answers, and a fresh resolver finds the disk cache.
    assert_eq!(resolver.resolve(&report, None).unwrap(), first);
    let restarted = VcekResolver::new(
        VcekSource::Thim(url.clone()),
        None,
        Some(cache.path().into()),
    );
    assert_eq!(restarted.resolve(&report, None).unwrap(), first);
    let uncached = VcekResolver::new(VcekSource::Thim(url), None, None);
    assert!(uncached.resolve(&report, None).is_err());
    // A different TCB is a different key: no stale VCEK.
    let mut newer = report.clone();
    newer[0x180] = newer[0x180].wrapping_add(1);
    assert!(restarted.resolve(&newer, None).is_err());
}
