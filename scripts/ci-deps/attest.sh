#!/usr/bin/env bash
# attest/: swtpm + tpm2-tools for the vTPM provider tests (a real software TPM on loopback),
# libtss2-dev for tss-esapi (the vtpm provider's TPM access), prometheus for `promtool check
# metrics`, python3 (its http.server serves the stored THIM answer in the VCEK tests) and umoci
# (real OCI layouts for the verify-image CLI test).
set -euo pipefail
need=()
command -v swtpm >/dev/null || need+=(swtpm)
command -v swtpm_setup >/dev/null || need+=(swtpm-tools)
command -v tpm2_createprimary >/dev/null || need+=(tpm2-tools)
command -v promtool >/dev/null || need+=(prometheus)
command -v python3 >/dev/null || need+=(python3)
command -v umoci >/dev/null || need+=(umoci)
dpkg -s libtss2-dev >/dev/null 2>&1 || need+=(libtss2-dev)
if [ "${#need[@]}" -gt 0 ]; then
  $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
