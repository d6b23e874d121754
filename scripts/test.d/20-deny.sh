#!/usr/bin/env bash
# Supply chain (deny.toml): permitted licences, banned crates (ring, OpenSSL, native-tls,
# webpki-roots), crates.io as the only source, duplicate versions as warnings. The advisories
# check is not run: its database is fetched over git, which this build machine cannot reach
# (docs/security.md).
# Then the unsafe-code rule: `unsafe_code = "forbid"` is a workspace lint, every member inherits
# it, and the only code that may opt out is one SEV-guest ioctl module in attest/src, with a
# `// SAFETY:` comment before each unsafe block.
set -euo pipefail
cd "$(dirname "$0")/../.."

if ! cargo deny --version >/dev/null 2>&1; then
  echo "cargo-deny is missing: run scripts/ci-deps/security.sh (or scripts/install-test-deps.sh)" >&2
  exit 1
fi
cargo deny --locked check licenses bans sources

fail=0
grep -Eq '^unsafe_code = "forbid"' Cargo.toml || { echo "Cargo.toml: [workspace.lints.rust] must set unsafe_code = \"forbid\"" >&2; fail=1; }

members=$(cargo metadata --no-deps --format-version 1 --locked \
  | python3 -c 'import json,sys,os; [print(os.path.relpath(os.path.dirname(p["manifest_path"]))) for p in json.load(sys.stdin)["packages"]]')
for dir in $members; do
  manifest="$dir/Cargo.toml"
  if awk '/^\[lints\]/{l=1;next} /^\[/{l=0} l && /^workspace *= *true/{ok=1} END{exit !ok}' "$manifest"; then
    continue
  fi
  # The one crate allowed its own lint table (to lower forbid to deny for its ioctl module).
  if [ "$dir" = attest ] && grep -Eq '^unsafe_code *= *"deny"' "$manifest"; then
    continue
  fi
  echo "$manifest: must inherit the workspace lints ([lints] workspace = true)" >&2
  fail=1
done

# Files that use `unsafe` (blocks, fns, impls) or opt out of the lint, over every member's sources.
mapfile -t unsafe_files < <(for dir in $members; do
  grep -rlE --include='*.rs' '(^|[^_[:alnum:]"])unsafe([[:space:]]*\{|[[:space:]]+(fn|impl|extern)[^[:alnum:]])|allow\(unsafe_code\)|expect\(unsafe_code\)' \
    "$dir" --exclude-dir=target --exclude-dir=fuzz || true
done | sort -u)
echo "files with unsafe code or allow(unsafe_code): ${#unsafe_files[@]} ${unsafe_files[*]:-}"
if [ "${#unsafe_files[@]}" -gt 1 ]; then
  echo "unsafe code is allowed in one module only (the SEV-guest ioctl module in attest/src)" >&2
  fail=1
fi
for f in "${unsafe_files[@]}"; do
  case "$f" in
    attest/src/*sev*ioctl*|attest/src/*ioctl*) ;;
    *) echo "$f: unsafe code outside attest/src (the SEV-guest ioctl module)" >&2; fail=1 ;;
  esac
  # Every unsafe block needs a `// SAFETY:` comment: in the comment block right above it (or
  # above the statement it opens), or on its own line.
  awk -v f="$f" '
    { line[NR] = $0 }
    /unsafe[[:space:]]*\{/ {
      ok = ($0 ~ /SAFETY:/)
      i = NR - 1
      while (i > 0 && line[i] ~ /^[[:space:]]*\/\//) { if (line[i] ~ /SAFETY:/) ok = 1; i-- }
      if (!ok) { printf "%s:%d: unsafe block without a // SAFETY: comment\n", f, NR > "/dev/stderr"; bad = 1 }
    }
    END { exit bad }' "$f" || fail=1
done
exit "$fail"
