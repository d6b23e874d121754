//! A real software TPM (swtpm) on loopback, provisioned as Azure's paravisor provisions a CVM's
//! vTPM: an AK (RSA-2048, restricted signing, RSASSA-SHA256) persisted at `0x81000003` and an
//! HCL report in NV `0x01400001`. Started per test on free loopback ports with its own state
//! directory and killed by PID on drop. (The same provisioning as attest's `tests/vtpm.rs`.)

#![allow(unreachable_pub, clippy::unwrap_used)] // test harness: a panic is a failed test

use std::net::TcpListener;
use std::process::{Command, Stdio};

/// A swtpm process (daemonised, so its sockets listen before `start` returns).
pub struct Swtpm {
    /// swtpm's state and the provisioning scratch files.
    pub state: tempfile::TempDir,
    port: u16,
    pid: Option<u32>,
}

/// True if `tool` is on PATH. Missing under `CI=true` fails the test, naming the install script.
pub fn require_tool(tool: &str) -> bool {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        let message = format!("{tool} is not installed: run scripts/ci-deps/init.sh");
        assert!(std::env::var("CI").as_deref() != Ok("true"), "{message}");
        eprintln!("!!! SKIPPING: {message}");
    }
    found
}

/// A free loopback port whose successor was free too (swtpm's command and control ports). swtpm
/// may still lose a race for them; `start` then retries on other ports.
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
    /// Starts swtpm (up to 10 attempts on fresh ports).
    pub fn start() -> Self {
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

    /// The TCTI for tss-esapi and tpm2-tools.
    pub fn tcti(&self) -> String {
        format!("swtpm:host=127.0.0.1,port={}", self.port)
    }

    /// Runs a tpm2-tools command in the state directory; panics with its stderr on failure.
    pub fn tpm2(&self, tool: &str, args: &[&str]) -> String {
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
    pub fn provision_ak(&self) -> String {
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
    pub fn provision_hcl(&self, hcl: &[u8]) {
        self.provision_nv("0x01400001", hcl);
    }

    /// Defines NV 0x01C101D0 and writes the AK certificate (DER) into it.
    pub fn provision_ak_cert(&self, der: &[u8]) {
        self.provision_nv("0x01C101D0", der);
    }

    fn provision_nv(&self, index: &str, data: &[u8]) {
        let file = format!("nv-{index}.bin");
        std::fs::write(self.state.path().join(&file), data).unwrap();
        self.tpm2(
            "tpm2_nvdefine",
            &[
                index,
                "-C",
                "o",
                "-s",
                &data.len().to_string(),
                "-a",
                "ownerread|ownerwrite|authread|authwrite",
            ],
        );
        self.tpm2("tpm2_nvwrite", &[index, "-C", "o", "-i", &file]);
    }

    /// Extends SHA-256 PCR `index` (the measured state changes).
    pub fn extend_pcr(&self, index: u8) {
        let value = "ab".repeat(32);
        self.tpm2("tpm2_pcrextend", &[&format!("{index}:sha256={value}")]);
    }
}

impl Drop for Swtpm {
    fn drop(&mut self) {
        if let Some(pid) = self.pid.take() {
            let _ = Command::new("kill").arg(pid.to_string()).status();
        }
    }
}
