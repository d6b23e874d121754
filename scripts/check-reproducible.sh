#!/usr/bin/env bash
# Builds the release binaries twice, from two fresh clones of HEAD at different paths with
# separate target directories, and compares their SHA-256. Exit 0 only if every binary is
# bit-for-bit identical. Each build runs build/release-build.sh, the recipe of the Dockerfiles'
# build stage (build paths remapped out of the binaries, SOURCE_DATE_EPOCH from the commit, no
# incremental state); the base-image side of reproducibility is checked by `make verify-images`.
#
#   scripts/check-reproducible.sh [--keep]      (WORK=/some/dir to choose the scratch dir,
#                                                BINS="enclaveid-proxy" to check fewer binaries)
#
# A script, not a CI step: two release builds take a long while on 2 cores. Result of a run is
# recorded in docs/reproducible-builds.md.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
work="${WORK:-$(mktemp -d "${TMPDIR:-/tmp}/enclaveid-repro.XXXXXX")}"
keep="${1:-}"
read -r -a bins <<<"${BINS:-enclaveid-proxy enclaveid-init enclaveid-attest}"
commit="$(git -C "$root" rev-parse HEAD)"
export SOURCE_DATE_EPOCH="$(git -C "$root" log -1 --format=%ct)"

# Two different depths and names, so any leaked path would differ between the builds.
src_a="$work/a/src"
src_b="$work/bb/deeper/checkout"
target_a="$work/a/target"
target_b="$work/bb/elsewhere/tgt"
rm -rf "$work/a" "$work/bb"
mkdir -p "$work/a" "$work/bb/deeper" "$work/bb/elsewhere"

build() { # SRC TARGET LOG
  local src="$1" target="$2" log="$3"
  git clone --quiet --no-local "$root" "$src"
  git -C "$src" checkout --quiet "$commit"
  (
    cd "$src"
    export CARGO_TARGET_DIR="$target"
    # The images' recipe, one crate per cargo run as in each Dockerfile (a single
    # `cargo build -p a -p b -p c` would unify features across the three binaries).
    for b in "${bins[@]}"; do
      /usr/bin/time -f "$b: %e s elapsed, %M KiB max RSS" bash "$src/build/release-build.sh" build "$b" "$target/out"
    done
  ) >"$log" 2>&1 || { tail -n 30 "$log" >&2; echo "error: build in $src failed (log: $log)" >&2; exit 1; }
  grep -E '^enclaveid-[a-z]+: [0-9.]+ s elapsed' "$log"
}

echo "commit $commit, SOURCE_DATE_EPOCH=$SOURCE_DATE_EPOCH, rustc $(rustc --version | cut -d' ' -f2)"
echo "build A: $src_a -> $target_a"
build "$src_a" "$target_a" "$work/build-a.log"
echo "build B: $src_b -> $target_b"
build "$src_b" "$target_b" "$work/build-b.log"

status=0
printf '%-20s %-64s %-64s %s\n' binary "sha256 (A)" "sha256 (B)" result
for b in "${bins[@]}"; do
  a="$(sha256sum "$target_a/out/$b" | cut -d' ' -f1)"
  bsum="$(sha256sum "$target_b/out/$b" | cut -d' ' -f1)"
  if [ "$a" = "$bsum" ]; then result=identical; else result=DIFFERENT; status=1; fi
  printf '%-20s %-64s %-64s %s\n' "$b" "$a" "$bsum" "$result"
  if [ "$result" = DIFFERENT ]; then
    echo "  $(cmp -l "$target_a/out/$b" "$target_b/out/$b" | wc -l) bytes differ;" \
         "leaked paths: $(grep -c -a -e "$work" "$target_a/out/$b" || true)" >&2
  fi
done
for b in "${bins[@]}"; do
  if grep -q -a -e "$work" "$target_a/out/$b"; then
    echo "warning: $b contains the build path $work" >&2; status=1
  fi
done
if [ "$keep" != "--keep" ]; then rm -rf "$work/a" "$work/bb"; fi
[ "$status" = 0 ] && echo "reproducible: every binary is identical" || echo "NOT reproducible" >&2
exit "$status"
