//! The `vtpm` provider against a real software TPM (swtpm, Debian) on loopback.
//!
//! The harness starts swtpm in socket mode with its own state directory and kills it by PID on
//! drop. swtpm listens on Unix sockets in that directory; the TCTI's TCP ports (command port P,
//! control port P+1) are listeners this test binds on `127.0.0.1:0` and holds for the whole
//! test, forwarding each connection to swtpm's sockets. No port is ever released and re-bound,
//! so a parallel test cannot take one, not even while swtpm restarts. It provisions what the Azure paravisor would: an AK (RSA 2048,
//! restricted signing, RSASSA SHA-256) persisted at 0x81000003, and an HCL report in NV index
//! 0x01400001 whose SNP report (signed by the simulated VCEK) commits to runtime-claims JSON
//! holding that AK as the `HCLAkPub` JWK. The provider then produces evidence that the verifier
//! accepts (with `allow_simulated`, the chain being the simulated one), both as a library and
//! through `serve` + `verify`; the server answers 503 while the TPM is down and recovers.

#![allow(clippy::unwrap_used)] // helpers of #[test] functions: a panic is the failure report

mod common;

use std::io::ErrorKind;
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::SystemTime;

use base64::Engine as _;
use enclaveid_attest::provider::{self, ProviderConfig, ProviderKind, VcekSource};
use enclaveid_attest_verifier::simulated::{ReportFields, SimulatedChain};
use enclaveid_attest_verifier::{binding, Expectations, Policy};
use rsa::pkcs8::DecodePublicKey as _;
use rsa::traits::PublicKeyParts as _;

/// swtpm's default limit for one NV index.
const SWTPM_NV_LIMIT: usize = 2048;

/// A swtpm process (daemonised, so its sockets listen before `launch` returns) behind the
/// test's own TCP listeners.
struct Swtpm {
    state: tempfile::TempDir,
    port: u16,
    pid: Option<u32>,
    forwards: Vec<Forward>,
}

/// A loopback listener held by the test; each connection is piped to a Unix socket of swtpm.
/// While swtpm is down the connect fails and the TCP connection is ended at once, which the
/// TCTI sees as a dead TPM (a connection queued on a listener nobody serves would hang instead).
struct Forward {
    addr: std::net::SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Forward {
    fn start(listener: TcpListener, target: PathBuf) -> Self {
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            for tcp in listener.incoming() {
                if stopped.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(tcp) = tcp else { continue };
                let Ok(unix) = UnixStream::connect(&target) else {
                    refuse(tcp);
                    continue;
                };
                pipe(tcp, unix);
            }
        });
        Self {
            addr,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Forward {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag; then the listener closes with the thread.
        let _ = TcpStream::connect(self.addr);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Ends a connection while swtpm is down: a FIN, then whatever the client sent is read until it
/// closes. Dropping the socket with the client's bytes unread would send a reset, and
/// tcti-swtpm 3.2 takes a reset control exchange for a success (`read` returns -1 into a
/// `size_t`); an orderly end is the clean "TPM unreachable" a refused connection used to give.
fn refuse(tcp: TcpStream) {
    std::thread::spawn(move || {
        let mut tcp = tcp;
        let _ = tcp.shutdown(Shutdown::Write);
        let _ = tcp.set_read_timeout(Some(std::time::Duration::from_secs(30)));
        let _ = std::io::copy(&mut tcp, &mut std::io::sink());
    });
}

/// Copies both ways until either side ends; each direction passes its EOF on as a shutdown.
fn pipe(tcp: TcpStream, unix: UnixStream) {
    let (tcp_back, unix_back) = (tcp.try_clone().unwrap(), unix.try_clone().unwrap());
    std::thread::spawn(move || {
        let (mut from, mut to) = (tcp, unix);
        let _ = std::io::copy(&mut from, &mut to);
        let _ = to.shutdown(Shutdown::Write);
    });
    std::thread::spawn(move || {
        let (mut from, mut to) = (unix_back, tcp_back);
        let _ = std::io::copy(&mut from, &mut to);
        let _ = to.shutdown(Shutdown::Write);
    });
}

/// Two listeners on consecutive loopback ports (the TCTI's command port P and control port
/// P+1), both bound here and kept: P from `127.0.0.1:0`, then P+1 if it is free, else again.
fn listener_pair() -> (TcpListener, TcpListener) {
    for _ in 0..100 {
        let first = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = first.local_addr().unwrap().port();
        if port == u16::MAX {
            continue;
        }
        match TcpListener::bind(("127.0.0.1", port + 1)) {
            Ok(second) => return (first, second),
            Err(e) if e.kind() == ErrorKind::AddrInUse => {}
            Err(e) => panic!("binding 127.0.0.1:{}: {e}", port + 1),
        }
    }
    panic!("no two consecutive free loopback ports in 100 tries");
}

impl Swtpm {
    fn start() -> Self {
        let state = tempfile::tempdir().unwrap();
        let (command, control) = listener_pair();
        let port = command.local_addr().unwrap().port();
        let forwards = vec![
            Forward::start(command, state.path().join("cmd.sock")),
            Forward::start(control, state.path().join("ctrl.sock")),
        ];
        let mut swtpm = Self {
            state,
            port,
            pid: None,
            forwards,
        };
        assert!(
            swtpm.launch(),
            "swtpm did not start; see {}",
            swtpm.state.path().join("log").display()
        );
        swtpm
    }

    /// Starts swtpm on the state directory's Unix sockets; false if it did not start.
    fn launch(&mut self) -> bool {
        let dir = self.state.path();
        let pid_file = dir.join("swtpm.pid");
        for stale in [&pid_file, &dir.join("cmd.sock"), &dir.join("ctrl.sock")] {
            let _ = std::fs::remove_file(stale);
        }
        let status = Command::new("swtpm")
            .args(["socket", "--tpm2", "--daemon"])
            .arg("--pid")
            .arg(format!("file={}", pid_file.display()))
            .arg("--tpmstate")
            .arg(format!("dir={}", dir.display()))
            .arg("--server")
            .arg(format!(
                "type=unixio,path={}",
                dir.join("cmd.sock").display()
            ))
            .arg("--ctrl")
            .arg(format!(
                "type=unixio,path={}",
                dir.join("ctrl.sock").display()
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

    /// Kills swtpm by PID and waits until it is gone (the state directory and the test's
    /// listeners stay).
    fn stop(&mut self) {
        if let Some(pid) = self.pid.take() {
            let _ = Command::new("kill").arg(pid.to_string()).status();
            // Bounded wait for the process to exit, so its state is released for a restart.
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
        self.forwards.clear();
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
