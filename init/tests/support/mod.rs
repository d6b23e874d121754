//! Helpers shared by the init integration tests: running the real binary, file modes, and
//! directory snapshots to prove nothing was written.

// Test helpers: a failed setup step should panic with its error.
#![allow(
    dead_code,
    unreachable_pub,
    clippy::unwrap_used,
    clippy::missing_panics_doc
)]

pub mod double;
pub mod lowkey;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::{Command, Output};

/// The binary under test.
pub fn bin() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_enclaveid-init"));
    cmd.env("RUST_LOG", "info").env_remove("ENCLAVEID_VAULT");
    cmd
}

/// Runs and returns the output, printing stderr for failing tests' diagnostics.
pub fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("spawn enclaveid-init");
    eprintln!(
        "--- {:?} exit {:?}\n{}",
        cmd.get_args().collect::<Vec<_>>(),
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Mode bits of a file.
pub fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

/// Every file under `dir` (recursively) with its contents.
pub fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let path = entry.path();
        if path.is_dir() {
            walk(root, &path, out);
        } else {
            let rel = path.strip_prefix(root).unwrap().display().to_string();
            out.insert(rel, std::fs::read(&path).unwrap_or_default());
        }
    }
}

/// Standard proxy arguments for a dir: vault.
pub fn proxy_args(vault: &Path, out: &Path) -> Vec<String> {
    vec![
        "proxy".into(),
        "--vault".into(),
        format!("dir:{}", vault.display()),
        "--out".into(),
        out.display().to_string(),
        "--dns".into(),
        "api.prod.svc.cluster.local".into(),
        "--dns".into(),
        "api.prod.svc".into(),
        "--uri".into(),
        "spiffe://cluster.local/ns/prod/sa/api".into(),
        "--allow-disk".into(),
    ]
}
