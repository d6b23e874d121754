//! The `vtpm` provider against a real software TPM (swtpm, Debian) on loopback.
//!
//! The harness starts swtpm in socket mode on free loopback ports with its own state directory
//! and kills it by PID on drop. It provisions what the Azure paravisor would: an AK (RSA 2048,
//! restricted signing, RSASSA SHA-256) persisted at 0x81000003, and an HCL report in NV index
//! 0x01400001 whose SNP report (signed by the simulated VCEK) commits to runtime-claims JSON
//! holding that AK as the `HCLAkPub` JWK. The provider then produces evidence that the verifier
//! accepts (with `allow_simulated`, the chain being the simulated one), both as a library and
//! through `serve` + `verify`; the server answers 503 while the TPM is down and recovers.

#![allow(clippy::unwrap_used)] // helpers of #[test] functions: a panic is the failure report

mod common;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::SystemTime;

use base64::Engine as _;
use enclaveid_attest::provider::{self, ProviderConfig, ProviderKind, VcekSource};
use enclaveid_attest_verifier::simulated::{ReportFields, SimulatedChain};
use enclaveid_attest_verifier::{binding, Expectations, Policy};
use rsa::pkcs8::DecodePublicKey as _;
use rsa::traits::PublicKeyParts as _;

/// swtpm's default limit for one NV index.
const SWTPM_NV_LIMIT: usize = 2048;

/// A swtpm process (daemonised, so its sockets listen before `start` returns).
struct Swtpm {
    state: tempfile::TempDir,
    port: u16,
    pid: Option<u32>,
}

/// Two consecutive free loopback ports (swtpm's command port and, at +1, its control port).
fn free_port_pair() -> u16 {
    loop {
        let first = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = first.local_addr().unwrap().port();
        if port < u16::MAX && TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
            return port;
        }
    }
}

impl Swtpm {
    fn start() -> Self {
        let mut swtpm = Self {
            state: tempfile::tempdir().unwrap(),
            port: 0,
            pid: None,
        };
        for _ in 0..10 {
            swtpm.port = free_port_pair();
            if swtpm.launch() {
                return swtpm;
            }
        }
        panic!(
            "swtpm did not start; see {}",
            swtpm.state.path().join("log").display()
        );
    }

    /// Starts swtpm on `self.port` with the state directory; false if it could not bind.
    fn launch(&mut self) -> bool {
        let dir = self.state.path();
        let pid_file = dir.join("swtpm.pid");
        let _ = std::fs::remove_file(&pid_file);
        let status = Command::new("swtpm")
            .args(["socket", "--tpm2", "--daemon"])
            .arg("--pid")
            .arg(format!("file={}", pid_file.display()))
            .arg("--tpmstate")
            .arg(format!("dir={}", dir.display()))
            .arg("--server")
            .arg(format!("type=tcp,port={},bindaddr=127.0.0.1", self.port))
            .arg("--ctrl")
            .arg(format!(
                "type=tcp,port={},bindaddr=127.0.0.1",
                self.port + 1
            ))
            .args(["--flags", "not-need-init,startup-clear"])
            .arg("--log")
            .arg(format!("file={},level=1", dir.join("log").display()))
            .status()
            .unwrap();
        if !status.success() {
            return false;
        }
        let pid = std::fs::read_to_string(&pid_file).unwrap();
        self.pid = Some(pid.trim().parse().unwrap());
        true
    }

    fn tcti(&self) -> String {
        format!("swtpm:host=127.0.0.1,port={}", self.port)
    }

    /// Kills swtpm by PID and waits until it is gone (the state directory stays).
    fn stop(&mut self) {
        if let Some(pid) = self.pid.take() {
            let _ = Command::new("kill").arg(pid.to_string()).status();
            // Bounded wait for the process to exit, so the ports are free for a restart.
            for _ in 0..200 {
                let alive = Command::new("kill")
                    .args(["-0", &pid.to_string()])
                    .stderr(std::process::Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success());
                if !alive {
                    return;
                }
                std::thread::sleep(std::time::Duration::from_millis(25));
            }
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
    }

    /// Runs a tpm2-tools command against this TPM; panics with its stderr on failure.
    fn tpm2(&self, tool: &str, args: &[&str]) -> String {
        let out = Command::new(tool)
            .args(args)
            .current_dir(self.state.path())
            .env("TPM2TOOLS_TCTI", self.tcti())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{tool} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Creates the Azure-shaped AK and persists it at 0x81000003; returns its PEM.
    fn provision_ak(&self) -> String {
        // swtpm has three transient slots and no resource manager: flush after each step.
        self.tpm2(
            "tpm2_createprimary",
            &[
                "-Q",
                "-C",
                "o",
                "-g",
                "sha256",
                "-G",
                "rsa",
                "-c",
                "primary.ctx",
            ],
        );
        self.tpm2("tpm2_flushcontext", &["-t"]);
        self.tpm2(
            "tpm2_create",
            &[
                "-Q",
                "-C",
                "primary.ctx",
                "-G",
                "rsa2048:rsassa-sha256:null",
                "-a",
                "fixedtpm|fixedparent|sensitivedataorigin|userwithauth|restricted|sign",
                "-u",
                "ak.pub",
                "-r",
                "ak.priv",
            ],
        );
        self.tpm2("tpm2_flushcontext", &["-t"]);
        self.tpm2(
            "tpm2_load",
            &[
                "-Q",
                "-C",
                "primary.ctx",
                "-u",
                "ak.pub",
                "-r",
                "ak.priv",
                "-c",
                "ak.ctx",
            ],
        );
        self.tpm2(
            "tpm2_evictcontrol",
            &["-Q", "-C", "o", "-c", "ak.ctx", "0x81000003"],
        );
        self.tpm2("tpm2_flushcontext", &["-t"]);
        self.tpm2(
            "tpm2_readpublic",
            &["-Q", "-c", "0x81000003", "-f", "pem", "-o", "ak.pem"],
        );
        std::fs::read_to_string(self.state.path().join("ak.pem")).unwrap()
    }

    /// Defines NV 0x01400001 (owner read/write) and writes the HCL report into it.
    fn provision_hcl(&self, hcl: &[u8]) {
        let path = self.state.path().join("hcl.bin");
        std::fs::write(&path, hcl).unwrap();
        self.tpm2(
            "tpm2_nvdefine",
            &[
                "0x01400001",
                "-C",
                "o",
                "-s",
                &hcl.len().to_string(),
                "-a",
                "ownerread|ownerwrite|authread|authwrite",
            ],
        );
        self.tpm2("tpm2_nvwrite", &["0x01400001", "-C", "o", "-i", "hcl.bin"]);
    }
}

impl Drop for Swtpm {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Azure's runtime-claims JSON with the AK as the `HCLAkPub` JWK, built here independently of
/// the verifier's helpers.
fn var_data(ak_pem: &str) -> Vec<u8> {
    let ak = rsa::RsaPublicKey::from_public_key_pem(ak_pem).unwrap();
    let b64 =
        |n: &rsa::BigUint| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(n.to_bytes_be());
    serde_json::json!({
        "keys": [{
            "e": b64(ak.e()),
            "key_ops": ["sign"],
            "kid": "HCLAkPub",
            "kty": "RSA",
            "n": b64(ak.n()),
        }],
        "vm-configuration": {
            "console-enabled": false,
            "secure-boot": true,
            "tpm-enabled": true,
            "vmUniqueId": "00000000-0000-0000-0000-000000000000",
        },
        "user-data": "00".repeat(64),
    })
    .to_string()
    .into_bytes()
}

fn write_chain(dir: &Path, chain: &SimulatedChain) -> PathBuf {
    let path = dir.join("vcek-chain.pem");
    std::fs::write(
        &path,
        format!("{}{}{}", chain.vcek_pem(), chain.ask_pem(), chain.ark_pem()),
    )
    .unwrap();
    path
}

#[test]
fn vtpm_provider_against_swtpm() {
    if !["swtpm", "tpm2_createprimary", "curl"]
        .iter()
        .all(|tool| common::require_tool(tool))
    {
        return;
    }
    let mut tpm = Swtpm::start();
    let ak_pem = tpm.provision_ak();
    let chain = SimulatedChain::new().unwrap();
    let claims = var_data(&ak_pem);
    let hcl = chain.hcl_report(&claims, &ReportFields::default());
    assert!(
        hcl.len() <= SWTPM_NV_LIMIT,
        "HCL report of {} bytes",
        hcl.len()
    );
    tpm.provision_hcl(&hcl);
    let chain_file = write_chain(tpm.state.path(), &chain);

    // The library path.
    let mut config = ProviderConfig::new(ProviderKind::Vtpm);
    config.tcti = tpm.tcti();
    config.vcek = VcekSource::File(chain_file.clone());
    let vtpm = provider::build(&config).unwrap();
    assert_eq!(vtpm.name(), "vtpm");
    let nonce = b"a fresh nonce of 32 bytes length".to_vec();
    let spki = [0x42; 32];
    let evidence = vtpm.evidence(binding::report_data(&spki, &nonce)).unwrap();
    let expect = Expectations {
        nonce: nonce.clone(),
        tls_spki_sha256: spki,
    };
    let mut policy = Policy {
        allow_simulated: true,
        ..Policy::default()
    };
    let report = enclaveid_attest_verifier::verify(&evidence, &expect, &policy, SystemTime::now());
    assert!(report.passed, "{report}");
    assert_eq!(evidence.provider.as_str(), "vtpm");
    assert_eq!(
        base64::engine::general_purpose::STANDARD
            .decode(evidence.hcl_report.as_deref().unwrap())
            .unwrap(),
        hcl
    );

    // The same evidence does not prove another nonce or key, nor pass without allow_simulated.
    let other_nonce = Expectations {
        nonce: vec![0; 32],
        tls_spki_sha256: spki,
    };
    assert!(
        !enclaveid_attest_verifier::verify(&evidence, &other_nonce, &policy, SystemTime::now())
            .passed
    );
    let other_key = Expectations {
        nonce: nonce.clone(),
        tls_spki_sha256: [0x43; 32],
    };
    assert!(
        !enclaveid_attest_verifier::verify(&evidence, &other_key, &policy, SystemTime::now())
            .passed
    );
    policy.allow_simulated = false;
    assert!(
        !enclaveid_attest_verifier::verify(&evidence, &expect, &policy, SystemTime::now()).passed
    );

    // The binary path: serve --provider vtpm, verify over TLS.
    let vcek = format!("file:{}", chain_file.display());
    let tcti = tpm.tcti();
    let server = common::Serve::start(&["--provider", "vtpm", "--tcti", &tcti, "--vcek", &vcek]);
    let out = common::run(&["verify", &server.url(), "--allow-simulated"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for check in [
        "✓ binding.quote_extra_data",
        "✓ quote.signature",
        "✓ hcl.var_data_binding",
    ] {
        assert!(text.contains(check), "{check} in {text}");
    }

    // The TPM goes away: 503 with the reason, and the server keeps going; back: 200 again.
    tpm.stop();
    let path = format!("/attestation?nonce={}", "77".repeat(16));
    let down = common::get_insecure(&server.addr, &path);
    assert_eq!(down.status, 503, "{down:?}");
    assert!(down.body.contains("TPM"), "{down:?}");
    assert!(tpm.launch(), "swtpm restarts on its state");
    let up = common::get_insecure(&server.addr, &path);
    assert_eq!(up.status, 200, "{up:?}");
    let out = common::run(&["verify", &server.url(), "--allow-simulated"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn an_empty_tpm_is_a_clean_error() {
    if !common::require_tool("swtpm") {
        return;
    }
    let tpm = Swtpm::start();
    let mut config = ProviderConfig::new(ProviderKind::Vtpm);
    config.tcti = tpm.tcti();
    config.vcek = VcekSource::File("/nonexistent".into());
    let vtpm = provider::build(&config).unwrap();
    let err = vtpm.evidence([0; 64]).unwrap_err().to_string();
    assert!(err.contains("HCL report"), "{err}");
}
