//! `compare` on real OCI images made with umoci and converted with skopeo: identical images
//! pass across formats and independent builds; each kind of change is reported with its reason.

mod common;

use common::{have_tools, write_mode, Layout};
use enclaveid_image::{compare, Comparison, Difference};

fn changed_reasons<'a>(cmp: &'a Comparison, path: &str) -> &'a [Difference] {
    &cmp.changed
        .iter()
        .find(|c| c.path == path)
        .unwrap_or_else(|| panic!("{path} not reported as changed:\n{cmp}"))
        .reasons
}

#[test]
fn independent_builds_and_every_format_are_identical() {
    if !have_tools() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let first = Layout::base(work.path(), "first");
    // A second, independent build of the same content: other timestamps, other layer digests.
    let second = Layout::base(work.path(), "second");
    let cmp = compare(&first.dir, &second.dir).unwrap();
    assert!(cmp.is_identical(), "{cmp}");
    assert!(cmp
        .to_string()
        .ends_with("identical: every file and the config match"));
    assert!(cmp.expected.files >= 5, "{cmp}");

    let docker = first.skopeo_to("docker-archive", "first-docker.tar");
    let oci = first.skopeo_to("oci-archive", "first-oci.tar");
    for (a, b) in [
        (&first.dir, &docker),
        (&first.dir, &oci),
        (&docker, &oci),
        (&second.dir, &docker),
    ] {
        let cmp = compare(a, b).unwrap();
        assert!(
            cmp.is_identical(),
            "{} vs {}:\n{cmp}",
            a.display(),
            b.display()
        );
    }
    let cmp = compare(&first.dir, &docker).unwrap();
    assert_eq!(cmp.actual.format, "docker archive");
    assert_eq!(cmp.expected.format, "OCI layout");
}

#[test]
fn changed_byte_is_reported() {
    if !have_tools() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let base = Layout::base(work.path(), "base");
    let variant = base.copy("variant");
    variant.edit(|rootfs| {
        // Same length, one byte different.
        write_mode(
            &rootfs.join("app/conf/proxy.yaml"),
            b"admin: { listen: 127.0.0.1:15001 }\n",
            0o644,
        );
    });
    let cmp = compare(&base.dir, &variant.dir).unwrap();
    assert!(!cmp.is_identical());
    let reasons = changed_reasons(&cmp, "/app/conf/proxy.yaml");
    assert!(
        matches!(reasons, [Difference::Content { .. }]),
        "{reasons:?}"
    );
    assert_eq!(cmp.changed.len(), 1, "{cmp}");
    assert!(cmp.added.is_empty() && cmp.removed.is_empty(), "{cmp}");
    assert!(
        cmp.to_string()
            .contains("~ /app/conf/proxy.yaml: content sha256:"),
        "{cmp}"
    );

    // The other direction reads the same change.
    let back = compare(&variant.dir, &base.dir).unwrap();
    assert_eq!(back.changed.len(), 1);
}

#[test]
fn changed_mode_is_reported() {
    if !have_tools() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let base = Layout::base(work.path(), "base");
    let variant = base.copy("variant");
    variant.edit(|rootfs| {
        use std::os::unix::fs::PermissionsExt;
        let bin = rootfs.join("app/enclaveid-proxy");
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o4755)).unwrap();
    });
    let cmp = compare(&base.dir, &variant.dir).unwrap();
    let reasons = changed_reasons(&cmp, "/app/enclaveid-proxy");
    assert_eq!(
        reasons,
        [Difference::Mode {
            expected: 0o755,
            actual: 0o4755
        }]
    );
    assert!(cmp.to_string().contains("mode 0755 → 4755"), "{cmp}");
}

#[test]
fn added_file_is_reported() {
    if !have_tools() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let base = Layout::base(work.path(), "base");
    let variant = base.copy("variant");
    variant.edit(|rootfs| write_mode(&rootfs.join("app/backdoor"), b"#!/bin/sh\n", 0o755));
    // Seen through a docker archive, as a registry pull would be.
    let pulled = variant.skopeo_to("docker-archive", "variant.tar");
    let cmp = compare(&base.dir, &pulled).unwrap();
    assert_eq!(cmp.added.len(), 1, "{cmp}");
    assert_eq!(cmp.added[0].0, "/app/backdoor");
    assert_eq!(cmp.added[0].1.mode, 0o755);
    assert!(cmp.removed.is_empty() && cmp.changed.is_empty(), "{cmp}");
    assert!(
        cmp.to_string().contains("+ /app/backdoor (file, mode 0755"),
        "{cmp}"
    );
}

#[test]
fn file_hidden_by_whiteout_is_reported() {
    if !have_tools() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let base = Layout::base(work.path(), "base");
    let variant = base.copy("variant");
    // umoci repack records the deletion as a `.wh.secondary.yaml` entry in a new layer: the
    // file is still in the lower layer's bytes, and only flattening shows it gone.
    variant.edit(|rootfs| std::fs::remove_file(rootfs.join("app/conf/secondary.yaml")).unwrap());
    let flat = enclaveid_image::flatten(&variant.dir, &enclaveid_image::Limits::default()).unwrap();
    assert!(!flat.files.contains_key("/app/conf/secondary.yaml"));
    assert!(!flat.files.keys().any(|k| k.contains(".wh.")));
    let archive = variant.skopeo_to("oci-archive", "variant.tar");
    let cmp = compare(&base.dir, &archive).unwrap();
    assert_eq!(
        cmp.removed,
        vec!["/app/conf/secondary.yaml".to_string()],
        "{cmp}"
    );
    assert!(cmp.added.is_empty(), "{cmp}");
    assert!(
        cmp.to_string().contains("- /app/conf/secondary.yaml"),
        "{cmp}"
    );
}

#[test]
fn config_change_is_reported() {
    if !have_tools() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let base = Layout::base(work.path(), "base");
    let variant = base.copy("variant");
    variant.config(&["--config.user", "0:0", "--config.env", "RUST_LOG=trace"]);
    let cmp = compare(&base.dir, &variant.dir).unwrap();
    let fields: Vec<&str> = cmp.config.iter().map(|d| d.field).collect();
    assert_eq!(fields, ["Env", "User"], "{cmp}");
    assert!(
        cmp.added.is_empty() && cmp.removed.is_empty() && cmp.changed.is_empty(),
        "{cmp}"
    );
    assert!(
        cmp.to_string()
            .contains(r#"~ config User: "65532:65532" → "0:0""#),
        "{cmp}"
    );
}
