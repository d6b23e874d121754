#!/usr/bin/env bash
# Short fuzz runs of the proxy's and init's hostile-input parsers (issue 7; the verifier's own
# targets run in 50-fuzz-attest.sh):
#   proxy/fuzz: config (the YAML config), http (request heads, headers and the XFCC header),
#               pem_der (the TLS files and peer certificates);
#   init/fuzz:  release_jws (the AKV key-release JWS and x5c chain),
#               release_payload (the released JWK, key_hsm unwrap, master-secret material).
# cargo-fuzz comes from scripts/ci-deps/fuzz.sh; libFuzzer needs nightly flags, which the stable
# toolchain accepts with RUSTC_BOOTSTRAP=1. FUZZ_SECONDS overrides the per-target time (20 s).
# Seeds are committed under <crate>/fuzz/seeds/<target>; the growing corpus is not.
# Any crash fails this step and leaves its input in <crate>/fuzz/artifacts/<target>/.
set -euo pipefail
cd "$(dirname "$0")/../.."
root="$(pwd)"
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "cargo-fuzz is missing: run scripts/ci-deps/fuzz.sh (or scripts/install-test-deps.sh)" >&2
  exit 1
fi
export RUSTC_BOOTSTRAP=1
# Shared with 50-fuzz-attest.sh on the dev machine; inside the clone's target/ elsewhere.
default_target="${root}/target/fuzz"
[ -d /work/targets ] && default_target=/work/targets/fuzz
export CARGO_TARGET_DIR="${FUZZ_TARGET_DIR:-${default_target}}"
seconds="${FUZZ_SECONDS:-20}"

run_crate() {
  local dir="$1"
  shift
  (
    cd "${root}/${dir}"
    # `cargo fuzz build` takes one target or none (= all of them).
    cargo fuzz build 2>&1 | tail -n 3
    for t in "$@"; do
      echo "--> fuzz ${dir} ${t} for ${seconds}s"
      mkdir -p "corpus/${t}"
      seeds=()
      [ -d "seeds/${t}" ] && seeds=("seeds/${t}")
      extra=()
      asan="${ASAN_OPTIONS:-}"
      # The http target keeps one tokio runtime and two proxies alive across inputs, so memory
      # held by their tasks is not a per-input leak: leak detection is off for it alone.
      if [ "${t}" = http ]; then
        extra=(-detect_leaks=0)
        asan="detect_leaks=0"
      fi
      # -rss_limit_mb: a parser that balloons on hostile input is a finding too.
      ASAN_OPTIONS="${asan}" cargo fuzz run "${t}" "corpus/${t}" "${seeds[@]}" -- \
        -max_total_time="${seconds}" -rss_limit_mb=2048 -timeout=10 "${extra[@]}" 2>&1 | tail -n 2
    done
  )
}

proxy_targets=(config pem_der)
# The http target needs the proxy's header/XFCC API; built only once it is there.
[ -f proxy/fuzz/fuzz_targets/http.rs ] && proxy_targets+=(http)
run_crate proxy/fuzz "${proxy_targets[@]}"
run_crate init/fuzz release_jws release_payload
