//! Test helpers: build real OCI images with Debian's `umoci` and convert them with `skopeo`.
//!
//! Both tools are installed by `scripts/ci-deps/deploy.sh`. Without them a test says so loudly
//! and is skipped, except under `CI=true`, where it fails.

// Helpers panic on failure by design: a broken fixture must stop the test.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// Returns false (after a loud message) when a tool is missing outside CI; panics in CI.
pub fn have_tools() -> bool {
    let missing: Vec<&str> = ["umoci", "skopeo"]
        .into_iter()
        .filter(|tool| {
            Command::new(tool)
                .arg("--version")
                .output()
                .map_or(true, |o| !o.status.success())
        })
        .collect();
    if missing.is_empty() {
        return true;
    }
    let msg = format!(
        "missing {}: install with `SUDO= bash scripts/ci-deps/deploy.sh` (Debian packages umoci, skopeo)",
        missing.join(", ")
    );
    assert!(std::env::var("CI").as_deref() != Ok("true"), "{msg}");
    eprintln!("SKIPPING: {msg}");
    false
}

/// Runs a command and panics with its stderr when it fails.
pub fn run(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// An OCI image layout with one tag, `v1`, built with umoci.
pub struct Layout {
    pub dir: PathBuf,
    work: PathBuf,
}

impl Layout {
    /// `umoci init` + `umoci new` + a first layer with a small app and a config.
    pub fn base(work: &Path, name: &str) -> Self {
        let dir = work.join(name);
        run(Command::new("umoci").args(["init", "--layout"]).arg(&dir));
        run(Command::new("umoci")
            .args(["new", "--image"])
            .arg(image_ref(&dir)));
        let layout = Self {
            dir,
            work: work.to_path_buf(),
        };
        layout.edit(|rootfs| {
            std::fs::create_dir_all(rootfs.join("app/conf")).unwrap();
            write_mode(
                &rootfs.join("app/enclaveid-proxy"),
                b"\x7fELF pretend binary",
                0o755,
            );
            write_mode(
                &rootfs.join("app/conf/proxy.yaml"),
                b"admin: { listen: 127.0.0.1:15000 }\n",
                0o644,
            );
            write_mode(&rootfs.join("app/conf/secondary.yaml"), b"x: 1\n", 0o644);
            std::os::unix::fs::symlink("enclaveid-proxy", rootfs.join("app/proxy")).unwrap();
        });
        layout.config(&[
            "--config.entrypoint",
            "/app/enclaveid-proxy",
            "--config.user",
            "65532:65532",
            "--config.env",
            "LOG_FORMAT=json",
        ]);
        layout
    }

    /// A copy of this layout under a new name (same blobs), to derive a variant from.
    pub fn copy(&self, name: &str) -> Self {
        let dir = self.work.join(name);
        run(Command::new("cp").arg("-a").arg(&self.dir).arg(&dir));
        Self {
            dir,
            work: self.work.clone(),
        }
    }

    /// Unpacks, lets `change` edit the root file system, and repacks a new layer.
    pub fn edit(&self, change: impl FnOnce(&Path)) {
        let bundle = self.work.join(format!(
            "bundle-{}",
            self.dir.file_name().unwrap().to_string_lossy()
        ));
        let _ = std::fs::remove_dir_all(&bundle);
        run(Command::new("umoci")
            .args(["unpack", "--rootless", "--image"])
            .arg(image_ref(&self.dir))
            .arg(&bundle));
        change(&bundle.join("rootfs"));
        run(Command::new("umoci")
            .args(["repack", "--image"])
            .arg(image_ref(&self.dir))
            .arg(&bundle));
        std::fs::remove_dir_all(&bundle).unwrap();
    }

    /// Changes the image config with `umoci config` flags.
    pub fn config(&self, flags: &[&str]) {
        run(Command::new("umoci")
            .args(["config", "--image"])
            .arg(image_ref(&self.dir))
            .args(flags));
    }

    /// `skopeo copy oci:DIR:v1 <transport>:FILE`; returns FILE.
    pub fn skopeo_to(&self, transport: &str, file_name: &str) -> PathBuf {
        let out = self.work.join(file_name);
        run(Command::new("skopeo")
            .args(["copy", "--quiet", "--insecure-policy"])
            .arg(format!("oci:{}", image_ref(&self.dir)))
            .arg(format!("{transport}:{}", out.display())));
        out
    }
}

fn image_ref(dir: &Path) -> String {
    format!("{}:v1", dir.display())
}

/// Writes a file and sets its mode.
pub fn write_mode(path: &Path, data: &[u8], mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, data).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}
