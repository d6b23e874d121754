#!/usr/bin/env bash
# The one release-build recipe: the build stage of proxy/, init/ and attest/Dockerfile runs it,
# and so does scripts/check-reproducible.sh on the host, so the image and the reproducibility
# check compile with the very same flags.
#
#   release-build.sh deps [--tss]             build-stage packages (root, inside the rust image):
#                                             --tss: libtss2-dev 3.2.1-3 from snapshot.debian.org
#                                             at DEBIAN_SNAPSHOT, so rebuilds copy the same bytes
#   release-build.sh build [--tss] CRATE OUT  cargo build --locked --release -p CRATE from the
#                                             current directory, then install the binary (0555)
#                                             and, with --tss, the tpm2-tss libraries into OUT
#   release-build.sh env                      print the build environment (tests, debugging)
#
# Reproducible: SOURCE_DATE_EPOCH (default 0), the toolchain of rust-toolchain.toml, no
# incremental state, TZ=UTC, LC_ALL=C.UTF-8, and the source, target and cargo-home paths
# remapped out of the binary (--remap-path-prefix for Rust, -ffile-prefix-map for the C that
# aws-lc-sys compiles) to /enclaveid, /target and /cargo wherever the build runs.
# The target directory is $CARGO_TARGET_DIR, or ../target beside the source (never inside it:
# nested prefixes would make the remapping order-dependent).
set -euo pipefail

# tpm2-tss as linked by the vtpm provider, plus the device TCTI that tctildr dlopens at run
# time. SEV-SNP is x86_64 only, hence the fixed multiarch directory.
TSS_LIBS=(libtss2-esys.so.0 libtss2-sys.so.1 libtss2-mu.so.0 libtss2-tctildr.so.0 libtss2-tcti-device.so.0)
TSS_LIBDIR=/usr/lib/x86_64-linux-gnu
TSS_VERSION=3.2.1-3
DEBIAN_SNAPSHOT="${DEBIAN_SNAPSHOT:-20261115T000000Z}"

usage() {
  sed -n '6,12p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

setup_env() {
  local src target cargo_home channel
  src="$(pwd -P)"
  target="${CARGO_TARGET_DIR:-$(dirname "$src")/target}"
  cargo_home="${CARGO_HOME:-$HOME/.cargo}"
  case "$target/" in "$src"/*) echo "error: CARGO_TARGET_DIR=$target is inside the source $src" >&2; exit 2;; esac
  # The toolchain rust-toolchain.toml names, without its extra components (rustfmt, clippy),
  # which a release build does not need and a network-less build stage could not fetch.
  channel="$(sed -n 's/^channel *= *"\(.*\)"/\1/p' rust-toolchain.toml 2>/dev/null || true)"
  export SOURCE_DATE_EPOCH="${SOURCE_DATE_EPOCH:-0}"
  export RUSTUP_TOOLCHAIN="${RUSTUP_TOOLCHAIN:-${channel:?no channel in rust-toolchain.toml (run from the workspace root)}}"
  export CARGO_TARGET_DIR="$target" CARGO_HOME="$cargo_home"
  export CARGO_INCREMENTAL=0 CARGO_TERM_COLOR=never TZ=UTC LC_ALL=C.UTF-8
  export RUSTFLAGS="--remap-path-prefix=$src=/enclaveid --remap-path-prefix=$target=/target --remap-path-prefix=$cargo_home=/cargo"
  export CFLAGS="-ffile-prefix-map=$src=/enclaveid -ffile-prefix-map=$target=/target -ffile-prefix-map=$cargo_home=/cargo"
}

deps() {
  local tss=0
  while [ $# -gt 0 ]; do
    case "$1" in --tss) tss=1;; *) usage;; esac; shift
  done
  [ "$tss" = 1 ] || return 0
  rm -f /etc/apt/sources.list.d/* /etc/apt/sources.list
  {
    echo "deb [check-valid-until=no] http://snapshot.debian.org/archive/debian/${DEBIAN_SNAPSHOT} bookworm main"
    echo "deb [check-valid-until=no] http://snapshot.debian.org/archive/debian-security/${DEBIAN_SNAPSHOT} bookworm-security main"
  } > /etc/apt/sources.list.d/snapshot.list
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends pkg-config "libtss2-dev=${TSS_VERSION}"
  rm -rf /var/lib/apt/lists/*
}

build() {
  local tss=0
  while [ $# -gt 0 ]; do
    case "$1" in --tss) tss=1;; -*) usage;; *) break;; esac; shift
  done
  [ $# -eq 2 ] || usage
  local crate="$1" out="$2"
  setup_env
  cargo build --locked --release -p "$crate"
  install -D -m 0555 "$CARGO_TARGET_DIR/release/$crate" "$out/$crate"
  if [ "$tss" = 1 ]; then
    mkdir -p "$out/lib"
    for lib in "${TSS_LIBS[@]}"; do
      install -m 0444 "$(readlink -f "$TSS_LIBDIR/$lib")" "$out/lib/$lib"
    done
    touch --no-dereference --date="@${SOURCE_DATE_EPOCH}" "$out"/lib/* "$out/lib"
  fi
  touch --no-dereference --date="@${SOURCE_DATE_EPOCH}" "$out/$crate" "$out"
}

case "${1:-}" in
  deps) shift; deps "$@" ;;
  build) shift; build "$@" ;;
  env)
    setup_env
    for v in SOURCE_DATE_EPOCH RUSTUP_TOOLCHAIN CARGO_TARGET_DIR CARGO_HOME CARGO_INCREMENTAL CARGO_TERM_COLOR TZ LC_ALL RUSTFLAGS CFLAGS; do
      printf '%s=%s\n' "$v" "${!v}"
    done ;;
  *) usage ;;
esac
