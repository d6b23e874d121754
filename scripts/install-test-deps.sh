#!/usr/bin/env bash
# Installs every tool the test suite needs on a fresh Debian machine. Idempotent: each part
# lives in scripts/ci-deps/<area>.sh and checks before it installs.
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive
if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
$SUDO apt-get update -qq
for part in scripts/ci-deps/*.sh; do
  echo "==> $part"
  SUDO="$SUDO" bash "$part"
done
