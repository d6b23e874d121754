#!/usr/bin/env bash
# The Helm chart: helm lint and helm template in every mode, kubernetes-validate on every render,
# assertions on the rendered pods, and the real enclaveid-proxy checking the rendered config
# (built by 10-cargo.sh), and the build side (Dockerfiles, the release recipe, Kaniko job, the
# image and base-image pin files, make helm-chart).
# Tools: scripts/ci-deps/deploy.sh.
set -euo pipefail
cd "$(dirname "$0")/../.."
command -v go >/dev/null 2>&1 || PATH="$PATH:/usr/local/go/bin"
PATH="$PATH:$(go env GOPATH 2>/dev/null || echo "$HOME/go")/bin"
export PATH
if ! command -v helm >/dev/null; then
  echo "helm not found: run scripts/ci-deps/deploy.sh (go install helm.sh/helm/v3/cmd/helm@v3.22.0)" >&2
  exit 1
fi
# Every FROM and the Kaniko executor by digest, from build/base-images.env (also in test_build.py).
python3 scripts/check-base-images.py
# The on-host pod test runs the real binaries; after 10-cargo.sh this is a no-op link check.
cargo build --locked -q -p enclaveid-proxy -p enclaveid-init -p enclaveid-attest
python3 -m pytest -q -p no:cacheprovider helm/tests
