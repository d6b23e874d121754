#!/usr/bin/env bash
# `make verify-images`: for every image pinned in helm/images.yaml that has a Dockerfile here,
#   1. pull the published image by its pinned digest with skopeo,
#   2. rebuild it from this commit with Kaniko in the current cluster (pushed under a
#      verify-<commit> tag, never over the pinned one), and pull that too,
#   3. compare the two file by file with `enclaveid-attest verify-image REBUILT PUBLISHED`.
# Exits 0 only if every image is identical. Equal manifest digests are reported as a bonus:
# --reproducible makes them likely, but the file-level comparison is the verdict.
#
# Environment: REGISTRY (for the rebuild), and what build/kaniko-build.sh reads;
#   ENCLAVEID_ATTEST: the verifier command (default: cargo run --release -p enclaveid-attest --)
set -euo pipefail
cd "$(dirname "$0")/.."
command -v skopeo >/dev/null || { echo "error: skopeo not found (apt-get install skopeo)" >&2; exit 2; }
attest="${ENCLAVEID_ATTEST:-cargo run -q --locked --release -p enclaveid-attest --}"
out="renders/verify"
mkdir -p "$out"
commit="$(git rev-parse --short=12 HEAD)"

pinned() { # NAME -> "repository digest" from helm/images.yaml
  awk -v want="$1" '
    /^  [a-z-]+:$/ { name = substr($1, 1, length($1) - 1) }
    name == want && $1 == "repository:" { repo = $2 }
    name == want && $1 == "digest:" { gsub(/"/, "", $2); dig = $2 }
    END { print repo, dig }' helm/images.yaml
}

status=0
for dockerfile in */Dockerfile; do
  name="${dockerfile%/Dockerfile}"
  read -r repository digest < <(pinned "$name")
  if [ -z "$digest" ]; then
    echo "==> $name: no digest pinned in helm/images.yaml (run make first); skipped" >&2
    status=1; continue
  fi
  echo "==> $name: published $repository@$digest"
  skopeo copy --quiet "docker://$repository@$digest" "docker-archive:$out/$name-published.tar"
  rebuilt="$(PIN=0 REGISTRY="${REGISTRY:?set REGISTRY for the rebuild}" \
    build/kaniko-build.sh "$name" "$repository:verify-$commit" | tail -n 1)"
  rebuilt_digest="${rebuilt##*@}"
  skopeo copy --quiet "docker://$repository@$rebuilt_digest" "docker-archive:$out/$name-rebuilt.tar"
  if [ "$rebuilt_digest" = "$digest" ]; then
    echo "    rebuilt digest equals the published one ($digest)"
  else
    echo "    rebuilt digest $rebuilt_digest differs; comparing the file trees"
  fi
  if $attest verify-image "$out/$name-rebuilt.tar" "$out/$name-published.tar"; then
    echo "    $name: identical"
  else
    echo "    $name: DIFFERENT (see the list above)" >&2
    status=1
  fi
done
exit "$status"
