#!/usr/bin/env bash
# Installs the tools of the end-to-end benchmark (not run by CI: CI runs no benchmarks).
# Idempotent. Debian 12: nginx + stream module, HAProxy, wrk, profilers; ghostunnel from the Go
# module proxy.
set -euo pipefail
if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive

need=()
command -v nginx >/dev/null || need+=(nginx)
[ -e /usr/lib/nginx/modules/ngx_stream_module.so ] || need+=(libnginx-mod-stream)
command -v haproxy >/dev/null || need+=(haproxy)
command -v wrk >/dev/null || need+=(wrk)
command -v strace >/dev/null || need+=(strace)
command -v valgrind >/dev/null || need+=(valgrind)
command -v perf >/dev/null || need+=(linux-perf)
command -v openssl >/dev/null || need+=(openssl)
command -v curl >/dev/null || need+=(curl)
if [ ${#need[@]} -gt 0 ]; then
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# ghostunnel, pinned. `go install github.com/ghostunnel/ghostunnel@v1.8.4` fails behind a module
# proxy that refuses the module's version list (go install looks the list up for deprecation
# notices), so download the pinned module and build it in place: same source, same result.
# The `nopkcs11` tag does not compile in v1.8.4 (CertificateFromPKCS11Module signature mismatch),
# so build with cgo: it only needs gcc (miekg/pkcs11 dlopens the module at run time).
GHOSTUNNEL_VERSION="${GHOSTUNNEL_VERSION:-v1.8.4}"
BENCH_BIN="${BENCH_BIN:-/work/benchtools/bin}"
if [ ! -x "$BENCH_BIN/ghostunnel" ]; then
  command -v go >/dev/null || { echo "install.sh: go is needed for ghostunnel" >&2; exit 1; }
  mkdir -p "$BENCH_BIN"
  if ! GOBIN="$BENCH_BIN" go install "github.com/ghostunnel/ghostunnel@$GHOSTUNNEL_VERSION"; then
    dir="$(go mod download -json "github.com/ghostunnel/ghostunnel@$GHOSTUNNEL_VERSION" |
      sed -n 's/.*"Dir": "\(.*\)".*/\1/p')"
    (cd "$dir" && CGO_ENABLED=1 GOFLAGS=-mod=mod go build -trimpath -o "$BENCH_BIN/ghostunnel" .)
  fi
fi
echo "ghostunnel: $("$BENCH_BIN/ghostunnel" --version 2>&1 | head -1) at $BENCH_BIN/ghostunnel"
echo "benchmark tools ready; set GHOSTUNNEL=$BENCH_BIN/ghostunnel if you moved it"
