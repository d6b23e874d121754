//! Shared harness for the attest integration tests: the test vectors, required external tools,
//! throwaway TLS identities, and the `enclaveid-attest` binary run as a real process.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)] // a test harness: panics are the failure report

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

/// The `enclaveid-attest` binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_enclaveid-attest")
}

/// Runs the binary to completion.
pub fn run(args: &[&str]) -> Output {
    Command::new(bin())
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("the binary runs")
}

/// The SNP vectors (`ENCLAVEID_SNP_TESTDATA` or `<workspace>/../shared/testdata/snp`); absent
/// is a loud message, and a failure under `CI=true`.
pub fn testdata() -> Option<PathBuf> {
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

/// True if `tool` is on PATH. Missing: a loud message, and a failure under `CI=true`.
pub fn require_tool(tool: &str) -> bool {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        let message = format!("{tool} is not installed: run scripts/ci-deps/attest.sh");
        assert!(std::env::var("CI").as_deref() != Ok("true"), "{message}");
        eprintln!("!!! SKIPPING: {message}");
    }
    found
}

/// A throwaway self-signed TLS identity written to a temp dir.
pub struct TlsFiles {
    pub dir: tempfile::TempDir,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub cert_pem: String,
    pub key_pem: String,
}

pub fn tls_files(name: &str) -> TlsFiles {
    let certified = rcgen::generate_simple_self_signed(vec![name.to_owned(), "localhost".into()])
        .expect("rcgen makes a certificate");
    let dir = tempfile::tempdir().unwrap();
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    let cert_pem = certified.cert.pem();
    let key_pem = certified.signing_key.serialize_pem();
    std::fs::write(&cert, &cert_pem).unwrap();
    std::fs::write(&key, &key_pem).unwrap();
    TlsFiles {
        dir,
        cert,
        key,
        cert_pem,
        key_pem,
    }
}

/// `enclaveid-attest serve` as a child process on loopback ports chosen by the OS; killed by
/// PID on drop.
pub struct Serve {
    child: Child,
    pub addr: String,
    pub admin: String,
    pub tls: TlsFiles,
}

impl Serve {
    /// Starts `serve` with these extra flags and waits for its "listening on" line.
    pub fn start(extra: &[&str]) -> Self {
        let tls = tls_files("attest.test");
        let mut child = Command::new(bin())
            .args(["serve", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
            .arg("--tls-cert")
            .arg(&tls.cert)
            .arg("--tls-key")
            .arg(&tls.key)
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("serve starts");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        // "listening on 127.0.0.1:P (admin 127.0.0.1:Q)"
        let mut words = line.split_whitespace();
        let addr = words
            .nth(2)
            .unwrap_or_else(|| panic!("no listen line: {line:?}"));
        let admin = words.nth(1).unwrap_or_default().trim_end_matches(')');
        Self {
            addr: addr.to_owned(),
            admin: admin.to_owned(),
            child,
            tls,
        }
    }

    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// The server's PID (to check it is still alive).
    pub fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTP answer as curl saw it.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: String,
    pub body: String,
}

/// `curl` (a real foreign client) with `args`, returning status, headers and body.
pub fn curl(args: &[&str]) -> Answer {
    let dir = tempfile::tempdir().unwrap();
    let headers = dir.path().join("h");
    let body = dir.path().join("b");
    let out = Command::new("curl")
        .args(["-s", "--max-time", "20", "-D"])
        .arg(&headers)
        .arg("-o")
        .arg(&body)
        .args(["-w", "%{http_code}"])
        .args(args)
        .output()
        .expect("curl runs");
    Answer {
        status: String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or(0),
        headers: std::fs::read_to_string(&headers).unwrap_or_default(),
        body: std::fs::read_to_string(&body).unwrap_or_default(),
    }
}

/// `GET https://ADDR/PATH_AND_QUERY` with no certificate check.
pub fn get_insecure(addr: &str, path: &str) -> Answer {
    curl(&["-k", &format!("https://{addr}{path}")])
}
