#!/usr/bin/env bash
# Tools every part of the suite uses: TLS peers (curl, openssl) and build tooling.
set -euo pipefail
$SUDO apt-get install -y -qq --no-install-recommends curl openssl ca-certificates pkg-config libssl-dev >/dev/null
