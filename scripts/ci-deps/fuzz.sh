#!/usr/bin/env bash
# cargo-fuzz for the short fuzz runs in scripts/test.d/50-fuzz-attest.sh (and any other crate's
# fuzz/ folder). libFuzzer needs a C++ toolchain to build its runtime; the stable toolchain runs
# it with RUSTC_BOOTSTRAP=1 (no nightly on these machines). Idempotent.
set -euo pipefail
command -v c++ >/dev/null || $SUDO apt-get install -y -qq --no-install-recommends g++ >/dev/null
if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked --quiet
fi
cargo fuzz --version
