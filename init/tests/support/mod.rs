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

/// A bearer-token source for the Key Vault client: the test doubles accept any token (Entra ID
/// is not under test).
#[derive(Debug)]
pub struct StaticToken;

#[async_trait::async_trait]
impl azure_core::credentials::TokenCredential for StaticToken {
    async fn get_token(
        &self,
        _scopes: &[&str],
        _options: Option<azure_core::credentials::TokenRequestOptions<'_>>,
    ) -> azure_core::Result<azure_core::credentials::AccessToken> {
        Ok(azure_core::credentials::AccessToken::new(
            "test-token",
            time::OffsetDateTime::now_utc() + time::Duration::hours(1),
        ))
    }
}

/// The attest crate's simulated SNP provider (real report layout, software-signed), built once
/// per test binary because its RSA-4096 chain takes seconds.
pub fn simulated_evidence() -> std::sync::Arc<dyn enclaveid_init::evidence::EvidenceSource> {
    use std::sync::{Arc, OnceLock};
    static PROVIDER: OnceLock<Arc<dyn enclaveid_init::evidence::EvidenceSource>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| {
            let built = enclaveid_attest::provider::build(
                &enclaveid_attest::provider::ProviderConfig::new(
                    enclaveid_attest::provider::ProviderKind::Simulated,
                ),
            )
            .unwrap();
            Arc::new(enclaveid_init::evidence::AttestProvider::new(built))
        })
        .clone()
}

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
