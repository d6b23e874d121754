#!/usr/bin/env bash
# Short fuzz runs of the attestation verifier's hostile-input parsers (attest/verifier/fuzz):
# the SNP report, HCL report, vTPM quote, evidence JSON (through the whole verify) and the
# policy file. cargo-fuzz comes from scripts/ci-deps/fuzz.sh; libFuzzer needs nightly flags,
# which the stable toolchain accepts with RUSTC_BOOTSTRAP=1.
# FUZZ_SECONDS overrides the per-target time (default 20).
set -euo pipefail
cd "$(dirname "$0")/../../attest/verifier/fuzz"
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "cargo-fuzz is missing: run scripts/ci-deps/fuzz.sh (or scripts/install-test-deps.sh)" >&2
  exit 1
fi
export RUSTC_BOOTSTRAP=1
# /work/targets/fuzz on the development machines (shared, warm); ./target elsewhere.
target_dir="${FUZZ_TARGET_DIR:-/work/targets/fuzz}"
mkdir -p "$target_dir" 2>/dev/null || target_dir="$PWD/target"
export CARGO_TARGET_DIR="$target_dir"
seconds="${FUZZ_SECONDS:-20}"
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
if ! cargo fuzz build >"$log" 2>&1; then
  cat "$log" >&2
  echo "cargo fuzz build failed" >&2
  exit 1
fi
# Seed the corpora with the real vectors when they are there (copied into the ignored corpus/
# folders at run time, never committed).
td="${ENCLAVEID_SNP_TESTDATA:-$(cd ../../../.. && pwd)/shared/testdata/snp}"
if [ -d "$td" ]; then
  mkdir -p corpus/report corpus/hcl corpus/quote
  cp -f "$td"/*/snp_report.bin "$td"/*/attestation.bin "$td"/trustee/snp-test-report.bin \
    "$td"/virtee-sev/report_milan.hex "$td"/virtee-sev/vcek_milan.der corpus/report/ 2>/dev/null || true
  cp -f "$td"/trustee/az-snp-vtpm-hcl-report.bin "$td"/azure-cvm-tooling/hcl-report-snp.bin corpus/hcl/ 2>/dev/null || true
  cp -f "$td"/trustee/az-snp-vtpm-quote.bin "$td"/azure-cvm-tooling/quote.bin corpus/quote/ 2>/dev/null || true
fi
for t in evidence policy; do
  mkdir -p "corpus/$t"
  cp -f "seeds/$t"/* "corpus/$t/"
done
for t in report hcl quote evidence policy; do
  echo "--> fuzz $t for ${seconds}s"
  mkdir -p "corpus/$t"
  if ! cargo fuzz run "$t" "corpus/$t" -- -max_total_time="$seconds" -rss_limit_mb=2048 >"$log" 2>&1; then
    tail -n 60 "$log" >&2
    echo "fuzz target $t failed; the reproducer is under attest/verifier/fuzz/artifacts/$t" >&2
    exit 1
  fi
  grep -E '^Done|#[0-9]+.*DONE' "$log" | tail -n 1 || tail -n 1 "$log"
done
