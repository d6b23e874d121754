#!/usr/bin/env bash
# CycloneDX SBOMs (JSON, spec 1.5), one per binary, i.e. per container image: enclaveid-proxy,
# enclaveid-init and enclaveid-attest. Written to sbom/ (gitignored). Each lists every crate
# compiled into that binary for Linux, with version, licence, registry purl and checksum; build-time
# dependencies (the aws-lc-sys build, cmake, cc) are included since they shape the binary.
# Not a CI step. Installs cargo-cyclonedx from the crate registry on first use.
#   bash scripts/sbom.sh            # then: ls sbom/
set -euo pipefail
cd "$(dirname "$0")/.."
CARGO_CYCLONEDX_VERSION="0.5.9"
TARGET="${SBOM_TARGET:-x86_64-unknown-linux-gnu}"

if ! cargo cyclonedx --version 2>/dev/null | grep -q " ${CARGO_CYCLONEDX_VERSION}$"; then
  echo "installing cargo-cyclonedx ${CARGO_CYCLONEDX_VERSION} with cargo install (takes a few minutes)"
  cargo install cargo-cyclonedx --locked --version "${CARGO_CYCLONEDX_VERSION}" --quiet
fi

mkdir -p sbom
# Reproducible timestamps: the date of the commit the SBOM describes.
SOURCE_DATE_EPOCH="$(git log -1 --format=%ct 2>/dev/null || date +%s)"
export SOURCE_DATE_EPOCH
# One run over the workspace: cargo-cyclonedx writes `<bin>_bin.cdx.json` next to each manifest
# that has a binary target; each is moved into sbom/ at once.
cargo cyclonedx --format json --spec-version 1.5 --describe binaries --target "${TARGET}" --quiet
count=0
while IFS= read -r -d '' produced; do
  name="$(basename "${produced}" _bin.cdx.json)"
  mv "${produced}" "sbom/${name}.cdx.json"
  count=$((count + 1))
  # cargo metadata (which cargo-cyclonedx reads) lists optional dependencies that are named only
  # by a weak feature (`ring?/alloc` in rustls-webpki) as if they were built. Prune every
  # component that `cargo tree` does not compile into any workspace binary for this target, and
  # say so. (The workspace-wide set, not this binary's: an image build that compiles several
  # binaries at once unifies their features, so this never under-lists.)
  cargo tree --workspace -e normal,build --target "${TARGET}" --prefix none --format '{p}' \
    | awk '{print $1 "@" $2}' | sed 's/@v/@/' | sort -u > "sbom/.${name}.built"
  python3 - "sbom/${name}.cdx.json" "sbom/.${name}.built" <<'PY'
import json, sys
path, built_path = sys.argv[1], sys.argv[2]
built = set(open(built_path).read().split())
bom = json.load(open(path))
keep, pruned = [], []
for c in bom.get("components", []):
    (keep if f"{c['name']}@{c['version']}" in built else pruned).append(c)
refs = {c["bom-ref"] for c in keep} | {bom["metadata"]["component"]["bom-ref"]}
bom["components"] = keep
deps = []
for d in bom.get("dependencies", []):
    if d["ref"] in refs:
        d["dependsOn"] = [x for x in d.get("dependsOn", []) if x in refs]
        deps.append(d)
bom["dependencies"] = deps
json.dump(bom, open(path, "w"), indent=2)
no_licence = [c["name"] for c in keep if not c.get("licenses")]
print(f"{path}: CycloneDX {bom['specVersion']}, {len(keep)} components, "
      f"{len(no_licence)} without a licence {no_licence[:5]}; pruned (not built): "
      f"{sorted(c['name'] + '@' + c['version'] for c in pruned)}")
PY
  rm -f "sbom/.${name}.built"
done < <(find . -path ./target -prune -o -path ./sbom -prune -o -name '*_bin.cdx.json' -print0)
for bin in enclaveid-proxy enclaveid-init enclaveid-attest; do
  [ -s "sbom/${bin}.cdx.json" ] || { echo "no SBOM produced for ${bin}" >&2; exit 1; }
done
echo "${count} SBOMs in sbom/"
