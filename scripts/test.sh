#!/usr/bin/env bash
# Runs every test: the Rust workspace (unit, integration against real loopback peers), the chart
# checks and short fuzz runs. `make test` and .ci/run call this.
set -euo pipefail
cd "$(dirname "$0")/.."
export ENCLAVEID_SNP_TESTDATA="${ENCLAVEID_SNP_TESTDATA:-$(cd .. && pwd)/shared/testdata/snp}"
for part in scripts/test.d/*.sh; do
  echo "==> $part"
  bash "$part"
done
