#!/usr/bin/env bash
# Tools for the supply-chain checks (issue 7, docs/security.md): cargo-deny, built from the
# crate registry with its own lock file. Compiling it takes a few minutes on 2 cores; it is
# skipped when the pinned version is already installed. cargo-cyclonedx (the SBOM) is not a CI
# step: scripts/sbom.sh installs it on first use.
set -euo pipefail
CARGO_DENY_VERSION="0.20.2"

if ! cargo deny --version 2>/dev/null | grep -q " ${CARGO_DENY_VERSION}$"; then
  echo "installing cargo-deny ${CARGO_DENY_VERSION} with cargo install (takes a few minutes)"
  cargo install cargo-deny --locked --version "${CARGO_DENY_VERSION}" --quiet
fi
cargo deny --version
