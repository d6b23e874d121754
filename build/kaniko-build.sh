#!/usr/bin/env bash
# Builds one EnclaveID image with Kaniko in the current cluster (kubectl's context) and prints
# its pushed digest; with PIN=1 (the default) it also writes the digest into helm/images.yaml,
# the one pinned file the chart is rendered with.
#
#   build/kaniko-build.sh NAME [DESTINATION]      NAME: proxy | init | attest
#
# Environment:
#   REGISTRY          registry/prefix to push to, e.g. myacr.azurecr.io/enclaveid (required)
#   CONTEXT           Kaniko build context; default git://<origin>#<HEAD's ref>#<commit>, so the
#                     cluster builds exactly the committed tree (commit and push first)
#   BUILD_NAMESPACE   namespace for the Job (default enclaveid-build)
#   REGISTRY_SECRET   dockerconfigjson Secret with push rights (default registry-push)
#   KANIKO_IMAGE      default: the osscontainertools/kaniko executor pinned in
#                     build/base-images.env (which also gives RUST_IMAGE and RUNTIME_IMAGE)
#   SOURCE_DATE_EPOCH default: the commit time of HEAD
#   PIN               1: update helm/images.yaml (default); 0: only print
set -euo pipefail
cd "$(dirname "$0")/.."

name="${1:?usage: build/kaniko-build.sh NAME [DESTINATION]}"
[ -f "$name/Dockerfile" ] || { echo "error: no $name/Dockerfile" >&2; exit 2; }
: "${REGISTRY:?set REGISTRY, e.g. REGISTRY=myacr.azurecr.io/enclaveid}"
commit="$(git rev-parse HEAD)"
tag="${TAG:-$(git rev-parse --short=12 HEAD)}"
destination="${2:-$REGISTRY/$name:$tag}"
repository="${destination%:*}"
export NAME="$name" DESTINATION="$destination" DOCKERFILE="$name/Dockerfile"
export BUILD_NAMESPACE="${BUILD_NAMESPACE:-enclaveid-build}"
export REGISTRY_SECRET="${REGISTRY_SECRET:-registry-push}"
# The base images and the executor, by digest, from the one pinned file (KEY=VALUE lines).
pin() {
  local value
  value="$(sed -n "s/^$1=//p" build/base-images.env)"
  [[ "$value" =~ @sha256:[0-9a-f]{64}$ ]] || { echo "error: build/base-images.env: $1 is not pinned by digest ('$value')" >&2; exit 2; }
  printf '%s' "$value"
}
RUST_IMAGE="$(pin RUST_IMAGE)"
RUNTIME_IMAGE="$(pin RUNTIME_IMAGE)"
KANIKO_IMAGE="${KANIKO_IMAGE:-$(pin KANIKO_IMAGE)}"
export RUST_IMAGE RUNTIME_IMAGE KANIKO_IMAGE
export SOURCE_DATE_EPOCH="${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct)}"
if [ -z "${CONTEXT:-}" ]; then
  origin="$(git remote get-url origin 2>/dev/null || true)"
  [ -n "$origin" ] || { echo "error: no git remote 'origin'; set CONTEXT (git://, https://...tar.gz, s3://, gs://, az://)" >&2; exit 2; }
  if [ -n "$(git status --porcelain -- . ':!renders' ':!helm/images.yaml')" ]; then
    echo "warning: the work tree has uncommitted changes; Kaniko builds commit $commit" >&2
  fi
  origin="${origin#https://}"; origin="${origin#git@}"; origin="${origin/://}"
  CONTEXT="git://${origin}#$(git symbolic-ref -q HEAD || echo refs/heads/main)#${commit}"
fi
export CONTEXT

job="enclaveid-build-$name"
echo "==> building $name at $commit with Kaniko in $(kubectl config current-context) -> $destination"
kubectl get namespace "$BUILD_NAMESPACE" >/dev/null 2>&1 || kubectl create namespace "$BUILD_NAMESPACE"
kubectl -n "$BUILD_NAMESPACE" delete job "$job" --ignore-not-found --wait=true
python3 - build/kaniko-job.yaml <<'PY' | kubectl apply -f -
import os, re, sys
text = open(sys.argv[1]).read()
print(re.sub(r"\$\{([A-Z_]+)\}", lambda m: os.environ[m.group(1)], text))
PY

# Wait for complete or failed, whichever comes first.
deadline=$((SECONDS + 5400))
while :; do
  status="$(kubectl -n "$BUILD_NAMESPACE" get job "$job" -o jsonpath='{.status.succeeded}/{.status.failed}')"
  case "$status" in
    1/*) break ;;
    */1) kubectl -n "$BUILD_NAMESPACE" logs "job/$job" --tail=50 >&2 || true
         echo "error: Kaniko build of $name failed" >&2; exit 1 ;;
  esac
  [ "$SECONDS" -lt "$deadline" ] || { echo "error: build of $name timed out" >&2; exit 1; }
  sleep 10
done
digest="$(kubectl -n "$BUILD_NAMESPACE" get pods -l "job-name=$job" \
  -o jsonpath='{.items[0].status.containerStatuses[0].state.terminated.message}')"
if ! [[ "$digest" =~ ^sha256:[0-9a-f]{64}$ ]]; then
  echo "error: no digest from the Kaniko pod (got '$digest')" >&2; exit 1
fi
echo "$name $repository@$digest"
if [ "${PIN:-1}" = 1 ]; then
  python3 build/pin-digest.py helm/images.yaml "$name" "$repository" "$digest"
fi
