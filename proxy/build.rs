//! Link-time layout of the release binary (benches/README.md, "Levers", measured there).
//!
//! A sidecar's resident memory is mostly its executable file paged in, and the kernel maps file
//! pages in blocks (64 KiB fault-around, larger page-cache folios) around every page touched. So
//! the functions a sidecar executes are linked next to each other, in the order of
//! `symbol-order.txt` (`build/symbol-order.sh` regenerates it from what a pair of sidecars
//! executes), and the relative relocations are packed (`DT_RELR`, glibc ≥ 2.36: Debian 12, the
//! runtime image's) instead of a 270 kB `.rela.dyn` that the loader reads at every start.
//! Release builds only; both are plain options of rust-lld, the default linker of the
//! `x86_64-unknown-linux-gnu` target: no code changes, and a name the file has but the link
//! does not is placed where it would have been anyway.
//!
//! `ENCLAVEID_PROXY_LINK_MAP=FILE` also writes lld's link map (how `build/symbol-order.sh` maps
//! executed addresses back to functions); it does not change the binary.

use std::env;
use std::path::Path;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=symbol-order.txt");
    println!("cargo:rerun-if-changed=symbol-order-static.txt");
    println!("cargo:rerun-if-env-changed=ENCLAVEID_PROXY_LINK_MAP");
    let release = env::var("PROFILE").is_ok_and(|p| p == "release");
    let linux = env::var("CARGO_CFG_TARGET_OS").is_ok_and(|os| os == "linux");
    if !release || !linux {
        return;
    }
    // A static-glibc build (`-C target-feature=+crt-static`, which needs `--target`) has other
    // symbol hashes (cargo's `-C metadata` depends on `--target`) and glibc's own functions, so
    // it has its own order (benches/README.md, "static glibc").
    let static_glibc = env::var("CARGO_CFG_TARGET_FEATURE")
        .is_ok_and(|features| features.split(',').any(|f| f == "crt-static"));
    let file = if static_glibc {
        "symbol-order-static.txt"
    } else {
        "symbol-order.txt"
    };
    let dir = env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let order = Path::new(&dir).join(file);
    println!(
        "cargo:rustc-link-arg-bins=-Wl,--symbol-ordering-file={}",
        order.display()
    );
    // lld warns about every name of the file that this link does not have (expected after a
    // dependency update, and harmless); `build/symbol-order.sh check` counts them instead.
    println!("cargo:rustc-link-arg-bins=-Wl,--no-warn-symbol-ordering");
    println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    if let Ok(map) = env::var("ENCLAVEID_PROXY_LINK_MAP") {
        println!("cargo:rustc-link-arg-bins=-Wl,-Map={map}");
        println!("cargo:rustc-link-arg-bins=-Wl,--no-demangle");
    }
}
