#!/usr/bin/env bash
# The Rust workspace: formatting, lints and every test.
set -euo pipefail
cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked --no-fail-fast
