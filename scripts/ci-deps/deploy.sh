#!/usr/bin/env bash
# Tools for the deployment checks (helm/tests, attest/image/tests, docs/diagrams):
#   helm (Go module, pinned), kubernetes-validate (PyPI, pinned; ships the Kubernetes schemas),
#   pytest, umoci + skopeo (Debian; build real OCI images in the verify-image tests), graphviz.
# Idempotent: every part checks before it installs.
set -euo pipefail
HELM_VERSION="v3.22.0"
KUBERNETES_VALIDATE_VERSION="1.37.0"
PYTEST_VERSION="8.3.4"

missing=()
for tool in umoci skopeo dot; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if [ "${#missing[@]}" -gt 0 ]; then
  ${SUDO:-} apt-get install -y -qq --no-install-recommends umoci skopeo graphviz >/dev/null
fi

# Go comes with the machine image (/usr/local/go); helm is built from the Go module proxy.
command -v go >/dev/null 2>&1 || PATH="$PATH:/usr/local/go/bin"
command -v go >/dev/null 2>&1 || { echo "error: go not found (needed to install helm)" >&2; exit 1; }
gobin="$(go env GOPATH)/bin"
# `go install` leaves no version in `helm version`; read the module version from the binary.
if ! go version -m "$gobin/helm" 2>/dev/null | grep -Eq "^\s+mod\s+helm.sh/helm/v3\s+${HELM_VERSION}\s"; then
  echo "installing helm ${HELM_VERSION} with go install (takes a few minutes)"
  go install "helm.sh/helm/v3/cmd/helm@${HELM_VERSION}"
fi
echo "helm: $(go version -m "$gobin/helm" | awk '$1 == "mod" {print $3}')"

installed="$(python3 -m pip show kubernetes-validate 2>/dev/null || true)"
if ! grep -qx "Version: ${KUBERNETES_VALIDATE_VERSION}" <<<"$installed"; then
  python3 -m pip install -q "kubernetes-validate==${KUBERNETES_VALIDATE_VERSION}"
fi
if ! python3 -m pytest --version >/dev/null 2>&1; then
  python3 -m pip install -q "pytest==${PYTEST_VERSION}"
fi
