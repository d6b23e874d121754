//! Layer flattening on hand-built tars: whiteouts, opaque directories, hard links, hostile paths.

use super::*;

enum Item<'a> {
    File(&'a str, &'a [u8], u32),
    Dir(&'a str),
    Link(&'a str, &'a str),
    Raw(&'a [u8], &'a [u8]),
}

fn layer(items: &[Item<'_>]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for item in items {
        let mut header = tar::Header::new_gnu();
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(0);
        match item {
            Item::File(path, data, mode) => {
                header.set_entry_type(tar::EntryType::Regular);
                header.set_size(data.len() as u64);
                header.set_mode(*mode);
                builder.append_data(&mut header, path, *data).unwrap();
            }
            Item::Dir(path) => {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_size(0);
                header.set_mode(0o755);
                builder.append_data(&mut header, path, &[][..]).unwrap();
            }
            Item::Link(path, target) => {
                header.set_entry_type(tar::EntryType::Link);
                header.set_size(0);
                header.set_mode(0o644);
                builder.append_link(&mut header, path, target).unwrap();
            }
            Item::Raw(name, data) => {
                // Bypass the builder's path checks to write a hostile name.
                header.set_entry_type(tar::EntryType::Regular);
                header.set_size(data.len() as u64);
                header.set_mode(0o644);
                header.as_old_mut().name[..name.len()].copy_from_slice(name);
                header.set_cksum();
                builder.append(&header, *data).unwrap();
            }
        }
    }
    builder.into_inner().unwrap()
}

fn flatten_layers(layers: &[Vec<u8>]) -> Result<FileTree, ImageError> {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::Dir {
        root: dir.path().to_path_buf(),
    };
    let mut tree = FileTree::new();
    let mut budget = Budget::default();
    for (i, bytes) in layers.iter().enumerate() {
        let name = format!("layer{i}");
        std::fs::write(dir.path().join(&name), bytes).unwrap();
        let layer_ref = LayerRef {
            name,
            blob_digest: None,
            size: None,
            diff_id: None,
            media_type: None,
        };
        apply_layer(
            &store,
            &layer_ref,
            i,
            &mut tree,
            &mut budget,
            &Limits::default(),
        )?;
    }
    Ok(tree)
}

#[test]
fn file_whiteout_removes_file_and_children() {
    let base = layer(&[
        Item::Dir("etc"),
        Item::File("etc/a", b"a", 0o644),
        Item::Dir("opt/d"),
        Item::File("opt/d/x", b"x", 0o644),
    ]);
    let top = layer(&[
        Item::File("etc/.wh.a", b"", 0o644),
        Item::File("opt/.wh.d", b"", 0o644),
    ]);
    let tree = flatten_layers(&[base, top]).unwrap();
    assert!(tree.contains_key("/etc"));
    assert!(!tree.contains_key("/etc/a"));
    assert!(!tree.contains_key("/opt/d"));
    assert!(!tree.contains_key("/opt/d/x"));
    assert!(!tree.keys().any(|k| k.contains(".wh.")));
}

#[test]
fn opaque_whiteout_hides_lower_children_only() {
    let base = layer(&[
        Item::Dir("d"),
        Item::File("d/old", b"1", 0o644),
        Item::File("dd", b"keep", 0o644),
    ]);
    // The new file comes before the marker in tar order: it must survive.
    let top = layer(&[
        Item::File("d/new", b"2", 0o644),
        Item::File("d/.wh..wh..opq", b"", 0o644),
    ]);
    let tree = flatten_layers(&[base, top]).unwrap();
    assert!(tree.contains_key("/d"));
    assert!(tree.contains_key("/d/new"));
    assert!(!tree.contains_key("/d/old"));
    assert!(
        tree.contains_key("/dd"),
        "a sibling sharing the prefix is untouched"
    );
}

#[test]
fn file_replacing_directory_drops_its_children() {
    let base = layer(&[Item::Dir("x"), Item::File("x/y", b"1", 0o644)]);
    let top = layer(&[Item::File("x", b"now a file", 0o600)]);
    let tree = flatten_layers(&[base, top]).unwrap();
    assert_eq!(tree["/x"].kind, Kind::File);
    assert_eq!(tree["/x"].mode, 0o600);
    assert!(!tree.contains_key("/x/y"));
}

#[test]
fn hard_link_carries_target_content() {
    let one = layer(&[
        Item::File("bin/a", b"same", 0o755),
        Item::Link("bin/b", "bin/a"),
    ]);
    let tree = flatten_layers(&[one]).unwrap();
    assert_eq!(tree["/bin/b"].kind, Kind::HardLink);
    assert_eq!(tree["/bin/b"].sha256, tree["/bin/a"].sha256);
    assert_eq!(tree["/bin/b"].link.as_deref(), Some("/bin/a"));
}

#[test]
fn content_and_mode_recorded() {
    let one = layer(&[Item::File("./app", b"hello", 0o4755)]);
    let tree = flatten_layers(&[one]).unwrap();
    let app = &tree["/app"];
    assert_eq!(app.mode, 0o4755);
    assert_eq!(app.size, 5);
    assert_eq!(
        app.sha256.as_deref(),
        Some("2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824")
    );
}

#[test]
fn parent_traversal_is_refused() {
    let evil = layer(&[Item::Raw(b"../../etc/passwd", b"root::0:0")]);
    let err = flatten_layers(&[evil]).unwrap_err();
    assert!(matches!(err, ImageError::UnsafePath { .. }), "{err}");
    assert!(err.to_string().contains(".."), "{err}");
}

#[test]
fn truncated_layer_is_an_error() {
    let mut bytes = layer(&[Item::File("big", &[7u8; 4096], 0o644)]);
    bytes.truncate(512 + 1000);
    let err = flatten_layers(&[bytes]).unwrap_err();
    assert!(matches!(err, ImageError::Tar { .. }), "{err}");
}

#[test]
fn garbage_layer_is_an_error() {
    let err = flatten_layers(&[vec![0x42; 700]]).unwrap_err();
    assert!(matches!(err, ImageError::Tar { .. }), "{err}");
}

#[test]
fn gzip_layer_is_read() {
    use std::io::Write;
    let plain = layer(&[Item::File("z", b"zipped", 0o644)]);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&plain).unwrap();
    let tree = flatten_layers(&[gz.finish().unwrap()]).unwrap();
    assert_eq!(tree["/z"].size, 6);
}

#[test]
fn entry_limit_is_enforced() {
    let many: Vec<String> = (0..20).map(|i| format!("f{i}")).collect();
    let items: Vec<Item<'_>> = many.iter().map(|n| Item::File(n, b"", 0o644)).collect();
    let bytes = layer(&items);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("l"), bytes).unwrap();
    let store = Store::Dir {
        root: dir.path().to_path_buf(),
    };
    let limits = Limits {
        max_entries: 10,
        ..Limits::default()
    };
    let layer_ref = LayerRef {
        name: "l".into(),
        blob_digest: None,
        size: None,
        diff_id: None,
        media_type: None,
    };
    let err = apply_layer(
        &store,
        &layer_ref,
        0,
        &mut FileTree::new(),
        &mut Budget::default(),
        &limits,
    )
    .unwrap_err();
    assert!(matches!(err, ImageError::LimitExceeded { .. }), "{err}");
}

#[test]
fn decompression_bomb_stops_at_the_limit() {
    use std::io::Write;
    // 8 MiB of zeros compresses to a few KiB; the limit is 1 MiB of decompressed bytes.
    let zeros = vec![0u8; 8 << 20];
    let plain = layer(&[Item::File("bomb", &zeros, 0o644)]);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(&plain).unwrap();
    let bytes = gz.finish().unwrap();
    assert!(bytes.len() < 64 << 10);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("l"), bytes).unwrap();
    let store = Store::Dir {
        root: dir.path().to_path_buf(),
    };
    let limits = Limits {
        max_unpacked_bytes: 1 << 20,
        ..Limits::default()
    };
    let layer_ref = LayerRef {
        name: "l".into(),
        blob_digest: None,
        size: None,
        diff_id: None,
        media_type: None,
    };
    let err = apply_layer(
        &store,
        &layer_ref,
        0,
        &mut FileTree::new(),
        &mut Budget::default(),
        &limits,
    )
    .unwrap_err();
    assert!(
        matches!(err, ImageError::LimitExceeded { limit, .. } if limit == 1 << 20),
        "{err}"
    );
}
