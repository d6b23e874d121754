//! Malformed, truncated and hostile images give errors, never panics: truncated archives,
//! garbage, corrupted blobs, path traversal in a docker manifest, huge declared sizes.

// Fixture builders panic on failure by design.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;

use common::{have_tools, Layout};
use enclaveid_image::{compare, ImageError};

fn tar_with(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (name, data) in entries {
        let mut header = tar::Header::new_ustar();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(0);
        header.set_entry_type(tar::EntryType::Regular);
        builder.append_data(&mut header, name, *data).unwrap();
    }
    builder.into_inner().unwrap()
}

fn err_for(path: &Path) -> ImageError {
    let other = path.parent().unwrap().join("other-missing");
    compare(path, &other).expect_err("a broken image must not compare")
}

#[test]
fn truncated_archives_are_errors() {
    if !have_tools() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let base = Layout::base(work.path(), "base");
    for transport in ["docker-archive", "oci-archive"] {
        let full = base.skopeo_to(transport, &format!("{transport}.tar"));
        let bytes = std::fs::read(&full).unwrap();
        // Cut at many points inside headers and members (a cut in the trailing zero blocks
        // loses nothing and may still read).
        for cut in [
            100,
            512,
            700,
            bytes.len() / 4,
            bytes.len() / 3,
            bytes.len() / 2,
            bytes.len() * 2 / 3,
        ] {
            let path = work.path().join(format!("{transport}-cut-{cut}.tar"));
            std::fs::write(&path, &bytes[..cut]).unwrap();
            let result = compare(&base.dir, &path);
            assert!(
                result.is_err(),
                "{transport} cut at {cut} of {} compared",
                bytes.len()
            );
        }
    }
}

#[test]
fn corrupted_layer_blob_fails_its_digest() {
    if !have_tools() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let base = Layout::base(work.path(), "base");
    let bad = base.copy("bad");
    // Flip one byte in the largest blob (the layer) of the copy.
    let blob = std::fs::read_dir(bad.dir.join("blobs/sha256"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .unwrap();
    let mut bytes = std::fs::read(&blob).unwrap();
    let last = bytes.len() - 9; // inside the gzip trailer's CRC/size or the deflate stream
    bytes[last] ^= 0x01;
    std::fs::write(&blob, bytes).unwrap();
    let err = compare(&base.dir, &bad.dir).unwrap_err();
    assert!(
        matches!(
            err,
            ImageError::DigestMismatch { .. } | ImageError::Tar { .. }
        ),
        "{err}"
    );
}

#[test]
fn garbage_and_empty_inputs_are_errors() {
    let work = tempfile::tempdir().unwrap();
    let garbage = work.path().join("garbage.tar");
    std::fs::write(&garbage, [0x5a_u8; 3000]).unwrap();
    assert!(matches!(
        err_for(&garbage),
        ImageError::Tar { .. } | ImageError::NotAnImage { .. }
    ));

    let empty_dir = work.path().join("empty");
    std::fs::create_dir(&empty_dir).unwrap();
    let err = err_for(&empty_dir);
    assert!(matches!(err, ImageError::NotAnImage { .. }), "{err}");

    let gz = work.path().join("image.tar.gz");
    std::fs::write(&gz, [0x1f, 0x8b, 8, 0, 0, 0]).unwrap();
    let err = err_for(&gz);
    assert!(err.to_string().contains("decompress"), "{err}");

    let bad_json = work.path().join("bad-json.tar");
    std::fs::write(
        &bad_json,
        tar_with(&[("manifest.json", b"[{\"Config\": 5")]),
    )
    .unwrap();
    assert!(matches!(err_for(&bad_json), ImageError::Json { .. }));
}

#[test]
fn docker_manifest_path_traversal_is_refused() {
    let work = tempfile::tempdir().unwrap();
    let evil = work.path().join("evil.tar");
    let manifest = br#"[{"Config":"../../../etc/passwd","RepoTags":["x:1"],"Layers":[]}]"#;
    std::fs::write(&evil, tar_with(&[("manifest.json", manifest)])).unwrap();
    let err = err_for(&evil);
    assert!(matches!(err, ImageError::UnsafePath { .. }), "{err}");
    assert!(err.to_string().contains("../../../etc/passwd"), "{err}");

    let config = br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":["sha256:0000000000000000000000000000000000000000000000000000000000000000"]}}"#;
    let manifest = br#"[{"Config":"c.json","Layers":["a/../../layer.tar"]}]"#;
    std::fs::write(
        &evil,
        tar_with(&[("manifest.json", manifest), ("c.json", config)]),
    )
    .unwrap();
    assert!(matches!(err_for(&evil), ImageError::UnsafePath { .. }));
}

#[test]
fn oci_digest_injection_is_refused() {
    let work = tempfile::tempdir().unwrap();
    let evil = work.path().join("evil.tar");
    let index = br#"{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:../../../../etc/shadow","size":10}]}"#;
    std::fs::write(
        &evil,
        tar_with(&[("oci-layout", b"{}"), ("index.json", index)]),
    )
    .unwrap();
    let err = err_for(&evil);
    assert!(matches!(err, ImageError::InvalidDigest { .. }), "{err}");
}

#[test]
fn huge_declared_member_is_an_error() {
    // A member header claiming 8 GiB in a small file: refused, nothing allocated.
    let work = tempfile::tempdir().unwrap();
    let path = work.path().join("huge.tar");
    let mut header = tar::Header::new_gnu();
    header.set_path("manifest.json").unwrap();
    header.set_size(8 << 30);
    header.set_mode(0o644);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header.set_entry_type(tar::EntryType::Regular);
    header.set_cksum();
    let mut bytes = header.as_bytes().to_vec();
    bytes.extend_from_slice(&[b'['; 1024]);
    std::fs::write(&path, bytes).unwrap();
    let err = err_for(&path);
    assert!(
        matches!(
            err,
            ImageError::Tar { .. } | ImageError::LimitExceeded { .. }
        ),
        "{err}"
    );
}

#[test]
fn layout_symlink_out_of_the_directory_is_refused() {
    if !have_tools() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let base = Layout::base(work.path(), "base");
    let evil = base.copy("evil");
    // Move the blobs elsewhere and link to them: content and digests are intact, but the
    // layout now reads outside its own directory.
    let outside = work.path().join("outside-blobs");
    std::fs::rename(evil.dir.join("blobs"), &outside).unwrap();
    std::os::unix::fs::symlink(&outside, evil.dir.join("blobs")).unwrap();
    let err = compare(&base.dir, &evil.dir).unwrap_err();
    assert!(matches!(err, ImageError::UnsafePath { .. }), "{err}");
    assert!(
        err.to_string().contains("outside the image layout"),
        "{err}"
    );
}
