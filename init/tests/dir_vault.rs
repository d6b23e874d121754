//! End-to-end runs of the real `enclaveid-init` binary against a `dir:` vault: `secrets` is
//! idempotent, `proxy` writes exactly three files with the right modes, every kind of bad CA
//! certificate is refused with nothing written, bad configuration exits 2, and `renew` rotates.

// Helpers outside #[test] fns panic on setup failure, like the tests themselves.
#![allow(clippy::unwrap_used)]

mod support;

use std::path::Path;
use std::time::Duration;

use enclaveid_pki::derive::{derive_ca_key, MasterSecret};
use enclaveid_pki::issue::{self, CaParams};
use support::{bin, mode, proxy_args, run, snapshot};
use time::OffsetDateTime;

fn secrets(vault: &Path) -> std::process::Output {
    run(bin().args(["secrets", "--vault", &format!("dir:{}", vault.display())]))
}

fn disk_tempdir() -> tempfile::TempDir {
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap()
}

#[test]
fn secrets_is_idempotent_and_proxy_writes_three_files() {
    let vault = disk_tempdir();
    let out = disk_tempdir();
    let first = secrets(vault.path());
    assert_eq!(first.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&first.stderr).contains("confidentiality is OFF"));
    let after_first = snapshot(vault.path());
    assert_eq!(
        after_first.keys().collect::<Vec<_>>(),
        ["ca.pem", "master-secret"]
    );
    assert_eq!(mode(&vault.path().join("master-secret")), 0o400);

    // The second run changes nothing.
    assert_eq!(secrets(vault.path()).status.code(), Some(0));
    assert_eq!(snapshot(vault.path()), after_first);

    let outside = disk_tempdir();
    let before_outside = snapshot(outside.path());
    let res = run(bin()
        .args(proxy_args(vault.path(), out.path()))
        .current_dir(outside.path()));
    assert_eq!(res.status.code(), Some(0));
    let files = snapshot(out.path());
    assert_eq!(
        files.keys().collect::<Vec<_>>(),
        ["ca.pem", "cert.pem", "key.pem"]
    );
    assert_eq!(mode(&out.path().join("ca.pem")), 0o444);
    assert_eq!(mode(&out.path().join("cert.pem")), 0o444);
    assert_eq!(mode(&out.path().join("key.pem")), 0o400);
    assert_eq!(files["ca.pem"], after_first["ca.pem"]);
    // Nothing outside --out: the vault and the working directory are untouched.
    assert_eq!(snapshot(vault.path()), after_first);
    assert_eq!(snapshot(outside.path()), before_outside);

    // The leaf chains to the CA, carries the SANs, and its key is in key.pem.
    let (_, leaf) = x509_parser::pem::parse_x509_pem(&files["cert.pem"]).unwrap();
    let leaf = leaf.parse_x509().unwrap();
    let (_, ca) = x509_parser::pem::parse_x509_pem(&files["ca.pem"]).unwrap();
    let ca = ca.parse_x509().unwrap();
    leaf.verify_signature(Some(ca.public_key())).unwrap();
    let sans = format!(
        "{:?}",
        leaf.subject_alternative_name().unwrap().unwrap().value
    );
    assert!(
        sans.contains("spiffe://cluster.local/ns/prod/sa/api"),
        "{sans}"
    );
    assert!(sans.contains("api.prod.svc.cluster.local"), "{sans}");
    let validity = leaf.validity().not_after.timestamp() - leaf.validity().not_before.timestamp();
    assert_eq!(
        validity,
        24 * 3600 + 60,
        "24 h from issuance, backdated by a minute"
    );
    let key = rcgen::KeyPair::from_pem(std::str::from_utf8(&files["key.pem"]).unwrap()).unwrap();
    assert_eq!(
        rcgen::PublicKeyData::subject_public_key_info(&key),
        leaf.public_key().raw
    );
    // Key material never reaches the logs.
    let stderr = String::from_utf8_lossy(&res.stderr);
    assert!(!stderr.contains("PRIVATE KEY"));
}

/// Sets up a vault with a secret and a CA certificate, replaces the CA certificate with `bad`,
/// and checks that `proxy` exits 1 naming `expect` and writes nothing.
fn refused(bad: impl FnOnce(&Path) -> String, expect: &str) {
    let vault = disk_tempdir();
    let out = disk_tempdir();
    assert_eq!(secrets(vault.path()).status.code(), Some(0));
    let pem = bad(vault.path());
    let ca = vault.path().join("ca.pem");
    std::fs::remove_file(&ca).unwrap();
    std::fs::write(&ca, pem).unwrap();
    let res = run(bin().args(proxy_args(vault.path(), out.path())));
    assert_eq!(res.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&res.stderr);
    assert!(stderr.contains(expect), "expected {expect:?} in:\n{stderr}");
    assert!(stderr.contains("nothing was written"), "{stderr}");
    assert!(snapshot(out.path()).is_empty(), "files were written");
    // `secrets` refuses the same certificate and leaves the vault as it is.
    let before = snapshot(vault.path());
    let res = secrets(vault.path());
    assert_eq!(res.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&res.stderr).contains("refusing to continue"));
    assert_eq!(snapshot(vault.path()), before);
}

fn vault_key(vault: &Path) -> enclaveid_pki::derive::CaKey {
    let secret = MasterSecret::new(std::fs::read(vault.join("master-secret")).unwrap()).unwrap();
    derive_ca_key(&secret)
}

#[test]
fn tampered_ca_is_refused() {
    refused(
        |vault| {
            // Same key, different subject, original signature: the self-signature breaks.
            let pem = std::fs::read_to_string(vault.join("ca.pem")).unwrap();
            let (_, p) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).unwrap();
            let mut der = p.contents;
            let at = der
                .windows(b"Cluster CA".len())
                .position(|w| w == b"Cluster CA")
                .unwrap();
            der[at] = b'K';
            pem_of(&der)
        },
        "self-signature does not verify",
    );
}

#[test]
fn ca_from_another_secret_is_refused() {
    refused(
        |_| {
            let other = derive_ca_key(&MasterSecret::new(vec![0x5a; 32]).unwrap());
            issue::self_signed_ca(&other, &CaParams::new(OffsetDateTime::now_utc())).unwrap()
        },
        "does not match the key derived from the master secret",
    );
}

#[test]
fn expired_ca_is_refused() {
    refused(
        |vault| {
            let now = OffsetDateTime::now_utc();
            let params = CaParams {
                common_name: "EnclaveID Cluster CA".into(),
                not_before: now - time::Duration::days(20),
                not_after: now - time::Duration::days(10),
            };
            issue::self_signed_ca(&vault_key(vault), &params).unwrap()
        },
        "expired",
    );
}

fn pem_of(der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let body: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!(
        "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
        body.join("\n")
    )
}

#[test]
fn configuration_errors_exit_2_and_write_nothing() {
    let vault = disk_tempdir();
    let out = disk_tempdir();
    assert_eq!(secrets(vault.path()).status.code(), Some(0));

    // Not a tmpfs, and no --allow-disk.
    let mut args = proxy_args(vault.path(), out.path());
    args.retain(|a| a != "--allow-disk");
    let res = run(bin().args(&args));
    assert_eq!(res.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&res.stderr).contains("not tmpfs"));
    assert!(snapshot(out.path()).is_empty());

    // Unknown vault scheme, bad SPIFFE id, unknown flag, bad duration.
    for (flag, value) in [
        ("--vault", "s3:bucket"),
        ("--uri", "spiffe://cluster.local/not-a-workload"),
        ("--validity", "5y"),
    ] {
        let mut args = proxy_args(vault.path(), out.path());
        let at = args
            .iter()
            .position(|a| a == flag)
            .map_or(args.len(), |i| i);
        if at < args.len() {
            args[at + 1] = value.into();
        } else {
            args.extend([flag.into(), value.into()]);
        }
        let res = run(bin().args(&args));
        assert_eq!(res.status.code(), Some(2), "{flag}={value}");
        assert!(snapshot(out.path()).is_empty());
    }
    let res = run(bin().args(["proxy", "--no-such-flag"]));
    assert_eq!(res.status.code(), Some(2));
    // akv: secrets without a release policy; an unknown evidence provider; a vTPM TCTI that
    // tpm2-tss cannot load.
    let res = run(bin().args(["secrets", "--vault", "akv:https://127.0.0.1:9"]));
    assert_eq!(res.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&res.stderr).contains("--release-policy"));
    for (evidence, tcti, named) in [
        ("tdx", "device:/dev/tpmrm0", "--evidence"),
        ("vtpm", "bogus:x", "--tcti"),
    ] {
        let mut args = proxy_args(vault.path(), out.path());
        args[2] = "akv:https://127.0.0.1:9".into();
        args.extend(["--maa".into(), "https://127.0.0.1:9".into()]);
        args.extend(["--evidence".into(), evidence.into()]);
        args.extend(["--tcti".into(), tcti.into()]);
        let res = run(bin().args(&args));
        assert_eq!(res.status.code(), Some(2), "--evidence {evidence}");
        assert!(
            String::from_utf8_lossy(&res.stderr).contains(named),
            "{named}"
        );
        assert!(snapshot(out.path()).is_empty());
    }

    // A vault without a secret is a runtime failure, not a usage error.
    let empty = disk_tempdir();
    let res = run(bin().args(proxy_args(empty.path(), out.path())));
    assert_eq!(res.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&res.stderr).contains("run `enclaveid-init secrets` first"));
}

#[test]
fn tmpfs_output_is_accepted_without_allow_disk() {
    let shm = Path::new("/dev/shm");
    if !shm.is_dir() {
        eprintln!("/dev/shm missing: tmpfs acceptance not exercised");
        return;
    }
    let vault = disk_tempdir();
    let out = tempfile::tempdir_in(shm).unwrap();
    assert_eq!(secrets(vault.path()).status.code(), Some(0));
    let mut args = proxy_args(vault.path(), out.path());
    args.retain(|a| a != "--allow-disk");
    assert_eq!(run(bin().args(&args)).status.code(), Some(0));
    assert_eq!(snapshot(out.path()).len(), 3);
}

#[test]
fn renew_rotates_the_leaf_in_place() {
    let vault = disk_tempdir();
    let out = disk_tempdir();
    assert_eq!(secrets(vault.path()).status.code(), Some(0));
    let mut args = proxy_args(vault.path(), out.path());
    args[0] = "renew".into();
    args.extend(["--validity".into(), "3s".into()]);
    let mut child = bin()
        .args(&args)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let _guard = KillOnDrop(child.id());
    let cert = out.path().join("cert.pem");
    let read = || std::fs::read(&cert).ok();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut seen = Vec::new();
    while seen.len() < 3 && std::time::Instant::now() < deadline {
        if let Some(c) = read() {
            if seen.last() != Some(&c) {
                seen.push(c);
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        seen.len() >= 3,
        "expected two rotations, saw {} certificates",
        seen.len()
    );
    assert_eq!(mode(&out.path().join("key.pem")), 0o400);
    assert_eq!(snapshot(out.path()).len(), 3, "only the three files");
    // SIGTERM stops it cleanly.
    let pid = child.id().to_string();
    std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
}

struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-KILL", &self.0.to_string()])
            .stderr(std::process::Stdio::null())
            .status();
    }
}

#[test]
fn an_unreachable_vault_is_retried_then_exits_1() {
    // A port that was just free: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = disk_tempdir();
    let policy = disk_tempdir();
    let policy_file = policy.path().join("policy.json");
    std::fs::write(
        &policy_file,
        r#"{"version":"1.0.0","anyOf":[{"authority":"https://maa.example","allOf":[{"claim":"x-ms-attestation-type","equals":"sevsnpvm"}]}]}"#,
    )
    .unwrap();
    let start = std::time::Instant::now();
    let res = run(bin().args([
        "secrets",
        "--vault",
        &format!("akv:https://127.0.0.1:{port}"),
        "--vault-emulator",
        "--release-policy",
        policy_file.to_str().unwrap(),
        "--retry-deadline",
        "3s",
        "--auth",
        "managed-identity",
    ]));
    let elapsed = start.elapsed();
    assert_eq!(res.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&res.stderr);
    assert!(stderr.contains("gave up after"), "{stderr}");
    assert!(stderr.contains("unreachable"), "{stderr}");
    assert!(stderr.matches("transient failure").count() >= 2, "{stderr}");
    assert!(elapsed < Duration::from_secs(20), "took {elapsed:?}");
    assert!(snapshot(out.path()).is_empty());
}

#[test]
fn renew_replaces_a_stale_leaf_at_once_and_keeps_a_current_one() {
    let vault = disk_tempdir();
    let out = disk_tempdir();
    assert_eq!(secrets(vault.path()).status.code(), Some(0));
    assert_eq!(
        run(bin().args(proxy_args(vault.path(), out.path())))
            .status
            .code(),
        Some(0)
    );
    let written = std::fs::read(out.path().join("cert.pem")).unwrap();

    // Same SANs, 24 h leaf just written: renew keeps it (next renewal in 16 h).
    let mut args = proxy_args(vault.path(), out.path());
    args[0] = "renew".into();
    let child = bin()
        .args(&args)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let guard = KillOnDrop(child.id());
    let output = wait_for_log(child, "next renewal scheduled");
    drop(guard);
    assert!(output.contains("next renewal scheduled"), "{output}");
    assert_eq!(std::fs::read(out.path().join("cert.pem")).unwrap(), written);

    // Different SANs: the file is stale and is replaced immediately.
    args.extend(["--dns".into(), "extra.prod.svc".into()]);
    let child = bin()
        .args(&args)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let guard = KillOnDrop(child.id());
    let output = wait_for_log(child, "next renewal scheduled");
    drop(guard);
    assert!(output.contains("leaf certificate written"), "{output}");
    let replaced = std::fs::read(out.path().join("cert.pem")).unwrap();
    assert_ne!(replaced, written);
    let (_, cert) = x509_parser::pem::parse_x509_pem(&replaced).unwrap();
    let cert = cert.parse_x509().unwrap();
    let sans = format!(
        "{:?}",
        cert.subject_alternative_name().unwrap().unwrap().value
    );
    assert!(sans.contains("extra.prod.svc"), "{sans}");
}

/// Reads the child's stderr until `needle` appears (or 20 s pass), then kills it.
fn wait_for_log(mut child: std::process::Child, needle: &str) -> String {
    use std::io::Read as _;
    let mut stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stderr.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut text = String::new();
    while !text.contains(needle) && std::time::Instant::now() < deadline {
        if let Ok(chunk) = rx.recv_timeout(Duration::from_millis(200)) {
            text.push_str(&String::from_utf8_lossy(&chunk));
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    text
}
