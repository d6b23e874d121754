//! Faults during renewal (issue 7 §4), on the real `enclaveid-init` binary: the output tmpfs is
//! full when the leaf is due. The old files must stay intact and usable, the failure must be
//! logged, and the renewer must retry (not exit) until space comes back.
//!
//! The tmpfs is a real 64 KiB one, mounted by the test (`mount -t tmpfs`, as root or through
//! `sudo -n`). Where no tmpfs can be mounted, the same fault is made with a directory whose
//! writes fail (mode 0555, which binds a non-root process).

#![allow(clippy::unwrap_used, reason = "a failed step is a failed test")]

mod support;

use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::{bin, proxy_args, run, snapshot};

/// A small tmpfs mounted for the test, unmounted on drop; or a plain directory to make
/// read-only when mounting is not possible.
struct Out {
    dir: tempfile::TempDir,
    tmpfs: bool,
    sudo: bool,
}

impl Out {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().to_str().unwrap().to_owned();
        let args = [
            "-t",
            "tmpfs",
            "-o",
            "size=64k,mode=0700",
            "tmpfs",
            target.as_str(),
        ];
        let direct = Command::new("mount")
            .args(args)
            .stderr(Stdio::null())
            .status();
        if direct.is_ok_and(|s| s.success()) {
            return Self {
                dir,
                tmpfs: true,
                sudo: false,
            };
        }
        let sudo = Command::new("sudo")
            .arg("-n")
            .arg("mount")
            .args(args)
            .stderr(Stdio::null())
            .status();
        let tmpfs = sudo.is_ok_and(|s| s.success());
        if !tmpfs {
            eprintln!("cannot mount a tmpfs here: using a directory whose writes fail instead");
        }
        Self {
            dir,
            tmpfs,
            sudo: tmpfs,
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Makes every new write in the directory fail.
    fn fill(&self) -> &'static str {
        if self.tmpfs {
            let mut f = std::fs::File::create(self.path().join(".filler")).unwrap();
            let block = vec![0u8; 4096];
            while f.write_all(&block).and_then(|()| f.sync_all()).is_ok() {}
            "ENOSPC (tmpfs full)"
        } else {
            std::fs::set_permissions(self.path(), std::fs::Permissions::from_mode(0o555)).unwrap();
            "EACCES (directory read-only)"
        }
    }

    fn free(&self) {
        if self.tmpfs {
            std::fs::remove_file(self.path().join(".filler")).unwrap();
        } else {
            std::fs::set_permissions(self.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        }
    }
}

impl Drop for Out {
    fn drop(&mut self) {
        if self.tmpfs {
            let target = self.dir.path().to_str().unwrap().to_owned();
            let mut cmd = if self.sudo {
                let mut c = Command::new("sudo");
                c.args(["-n", "umount"]);
                c
            } else {
                Command::new("umount")
            };
            let _ = cmd.arg(&target).status();
        } else {
            let _ = std::fs::set_permissions(self.path(), std::fs::Permissions::from_mode(0o700));
        }
    }
}

struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn the_three(dir: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    let mut s = snapshot(dir);
    s.retain(|name, _| !name.starts_with(".filler"));
    s
}

/// The three files load as a matching set that chains to the CA.
fn usable(dir: &Path) -> Result<(), String> {
    let read = |n: &str| std::fs::read(dir.join(n)).map_err(|e| format!("{n}: {e}"));
    enclaveid_pki::tls::Material::from_pem(
        &read("ca.pem")?,
        &read("cert.pem")?,
        &read("key.pem")?,
        ["ca.pem", "cert.pem", "key.pem"],
    )
    .map(|_| ())
    .map_err(|e| e.to_string())
}

#[test]
fn a_full_tmpfs_during_renewal_keeps_the_old_files_and_is_retried() {
    let vault = tempfile::tempdir().unwrap();
    let secrets = run(bin().args([
        "secrets",
        "--vault",
        &format!("dir:{}", vault.path().display()),
    ]));
    assert_eq!(secrets.status.code(), Some(0));
    let out = Out::new();
    let mut args = proxy_args(vault.path(), out.path());
    if out.tmpfs {
        // A real tmpfs: no --allow-disk needed, and the check that it is one is exercised.
        args.retain(|a| a != "--allow-disk");
    }
    args.extend(["--validity".into(), "15s".into()]);
    assert_eq!(run(bin().args(&args)).status.code(), Some(0));
    usable(out.path()).unwrap();

    let fault = out.fill();
    let before = the_three(out.path());
    let log_path: PathBuf = vault.path().join("renew.log");
    let log = std::fs::File::create(&log_path).unwrap();
    args[0] = "renew".into();
    let mut renew = Child(
        bin()
            .args(&args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    );

    // The leaf is due at 2/3 of its life (about 10 s after issue); watch past that, but not
    // past its expiry (15 s), so "usable" still means the old leaf is served.
    let start = Instant::now();
    let mut exited = None;
    while start.elapsed() < Duration::from_secs(12) {
        if let Some(status) = renew.0.try_wait().unwrap() {
            exited = Some(status);
            break;
        }
        assert_eq!(
            the_three(out.path()),
            before,
            "files changed while the disk was full"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let log_text = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let files_after_fault = the_three(out.path());
    let intact = files_after_fault == before && usable(out.path()).is_ok();
    println!(
        "renewal with {fault}: old files intact and usable: {intact}; renewer {}",
        exited.map_or("still running (retrying)".to_owned(), |s| format!(
            "exited with {s}"
        ))
    );
    assert!(intact, "the old files must stay intact");
    assert!(
        log_text().contains("No space left") || log_text().contains("Permission denied"),
        "the failed write must be logged:\n{}",
        log_text()
    );
    assert!(
        exited.is_none(),
        "the renewer gave up instead of retrying (exit {exited:?}); it must keep the old files \
         and retry until the write succeeds. Log:\n{}",
        log_text()
    );

    // Space comes back: the next attempt renews.
    out.free();
    let deadline = Instant::now() + Duration::from_secs(20);
    while the_three(out.path()) == before {
        assert!(
            Instant::now() < deadline,
            "never renewed after space came back:\n{}",
            log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    usable(out.path()).unwrap();
    assert_eq!(the_three(out.path()).len(), 3, "only the three files");
    Command::new("kill")
        .args(["-TERM", &renew.0.id().to_string()])
        .status()
        .unwrap();
    assert_eq!(renew.0.wait().unwrap().code(), Some(0));
}
