#!/usr/bin/env bash
# The link order of enclaveid-proxy's executable code (benches/README.md, "Levers": the resident
# text of a sidecar is what it executes, once the executed functions sit together).
#
#   bash build/symbol-order.sh          regenerate proxy/symbol-order.txt (about 5 minutes)
#   bash build/symbol-order.sh check    how many of its names the current release link still has
#   STATIC_GLIBC=1 bash build/symbol-order.sh [check]   the same for proxy/symbol-order-static.txt
#
# proxy/build.rs passes proxy/symbol-order.txt to lld (--symbol-ordering-file) for release
# builds. Its names are mangled Rust symbols, whose hashes change with the proxy's dependencies,
# features and release profile (not with RUSTFLAGS or the code of a function): run `check` after
# such a change and regenerate when it reports less than 90 %. A stale name costs memory, never
# correctness: lld places what it does not find where it would have without the file.
#
# Regenerating: a release build linked with -Map (ENCLAVEID_PROXY_LINK_MAP), then a pair of
# sidecars (outbound -> mTLS -> inbound -> echo backends, as scripts/lib/mesh-rig.sh) serves a
# workload: tcp and http listeners, small and 200 kB exchanges, /metrics, /ready, /live, a client
# without a certificate, a client and a server from a rogue CA, a certificate reload, SIGHUP and
# a drain. It runs three times under callgrind (every executed instruction: tcp listeners only,
# tcp + http, tcp + http with LOG_FORMAT=json) and twice natively under perf (cpu-clock samples
# and page faults), because aws-lc picks AVX-512/SHA-NI/ADX code at run time that valgrind's CPU
# does not offer. Then build/symbol-order.py maps the addresses to input sections. Needs valgrind,
# perf, openssl, curl, python3. Measurement only, bounded, loopback only.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd -P)
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$(dirname "$root")/target}"
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
bin="$CARGO_TARGET_DIR/release/enclaveid-proxy"
order=proxy/symbol-order.txt
cargo_args=()
# STATIC_GLIBC=1: the static-glibc build (proxy/symbol-order-static.txt; see proxy/build.rs).
if [ "${STATIC_GLIBC:-0}" = 1 ]; then
  export RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static"
  cargo_args=(--target x86_64-unknown-linux-gnu)
  bin="$CARGO_TARGET_DIR/x86_64-unknown-linux-gnu/release/enclaveid-proxy"
  order=proxy/symbol-order-static.txt
fi

link() {
  ENCLAVEID_PROXY_LINK_MAP="$scratch/link.map" cargo build --release --locked -p enclaveid-proxy \
    "${cargo_args[@]}" >&2
  cp "$bin" "$scratch/enclaveid-proxy"
}

if [ "${1:-}" = check ]; then
  link
  python3 build/symbol-order.py check "$scratch/link.map" "$order"
  exit
fi
for tool in valgrind perf openssl curl python3; do
  command -v "$tool" >/dev/null || { echo "error: $tool is missing (bash benches/install.sh)" >&2; exit 1; }
done

# workload DIR MODE (tcp|both) [WRAPPER...]: one pair of sidecars through the whole workload.
workload() {
  local out="$1" mode="$2"; shift 2
  local wrap=("$@")
  (
    . scripts/lib/mesh-rig.sh
    rig_workdir
    rig_mint_pki
    APP=$(rig_port); APPH=$(rig_port); IN=$(rig_port); INH=$(rig_port); OUT=$(rig_port)
    OUTH=$(rig_port); ADMIN_IN=$(rig_port); ADMIN_OUT=$(rig_port); RP=$(rig_port); ROGUE=$(rig_port)
    cat > backend.yaml <<YAML
admin: { listen: "127.0.0.1:${ADMIN_IN}" }
tls: { ca: ${work}/backend/ca.pem, cert: ${work}/backend/cert.pem, key: ${work}/backend/key.pem, reload_interval_ms: 500 }
drain_timeout_ms: 2000
inbound:
  - { name: api, listen: "127.0.0.1:${IN}", forward: "127.0.0.1:${APP}", protocol: tcp, allow: ["spiffe://cluster.local/ns/default/sa/frontend"] }
YAML
    cat > frontend.yaml <<YAML
admin: { listen: "127.0.0.1:${ADMIN_OUT}" }
tls: { ca: ${work}/frontend/ca.pem, cert: ${work}/frontend/cert.pem, key: ${work}/frontend/key.pem, reload_interval_ms: 500 }
drain_timeout_ms: 2000
outbound:
  - { name: backend, listen: "127.0.0.1:${OUT}", upstream: "127.0.0.1:${IN}", server_name: backend.default.svc.cluster.local, protocol: tcp }
  - { name: rogue, listen: "127.0.0.1:${ROGUE}", upstream: "127.0.0.1:${RP}", server_name: backend.default.svc.cluster.local, protocol: tcp }
YAML
    if [ "$mode" = both ]; then
      echo "  - { name: apih, listen: \"127.0.0.1:${INH}\", forward: \"127.0.0.1:${APPH}\", protocol: http }" >> backend.yaml
      echo "  - { name: backendh, listen: \"127.0.0.1:${OUTH}\", upstream: \"localhost:${INH}\", server_name: backend.default.svc.cluster.local, protocol: http }" >> frontend.yaml
    else
      OUTH=0
    fi
    rig_write_echo echo; mv echo.py echo_tcp.py
    cat > echo_http.py <<'PY'
import asyncio, sys
async def handle(r, w):
    try:
        while True:
            head = await r.readuntil(b"\r\n\r\n")
            n = next((int(l.split(b":")[1]) for l in head.split(b"\r\n") if l.lower().startswith(b"content-length:")), 0)
            if n:
                await r.readexactly(n)
            w.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-type: text/plain\r\n\r\nok")
            await w.drain()
    except Exception:
        pass
    w.close()
async def main():
    srv = await asyncio.start_server(handle, "127.0.0.1", int(sys.argv[1]))
    async with srv:
        await srv.serve_forever()
asyncio.run(main())
PY
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout rogue.key -out rogue.pem \
      -days 2 -subj "/CN=rogue" 2>/dev/null
    python3 echo_tcp.py "$APP" & pids+=($!)
    python3 echo_http.py "$APPH" & pids+=($!)
    openssl s_server -accept "$RP" -cert rogue.pem -key rogue.key -www >/dev/null 2>&1 & pids+=($!)
    "${wrap[@]}" "$scratch/enclaveid-proxy" run --config backend.yaml > backend.log 2>&1 & pids+=($!); local w_in=$!
    "${wrap[@]}" "$scratch/enclaveid-proxy" run --config frontend.yaml > frontend.log 2>&1 & pids+=($!); local w_out=$!
    for a in "$ADMIN_IN" "$ADMIN_OUT"; do
      for _ in $(seq 600); do curl -fs "http://127.0.0.1:$a/ready" >/dev/null && break; sleep 0.2; done
      curl -fs "http://127.0.0.1:$a/ready" >/dev/null || { tail -n 5 backend.log frontend.log >&2; exit 1; }
    done
    # The sidecars themselves (a wrapper such as perf is their parent).
    local p_in p_out
    p_in=$(pgrep -P "$w_in" || echo "$w_in"); p_out=$(pgrep -P "$w_out" || echo "$w_out")
    python3 - "$OUT" "$OUTH" <<'PY'
import concurrent.futures as cf, socket, sys
port, porth = int(sys.argv[1]), int(sys.argv[2])
def tcp(i):
    with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
        n = 200_000 if i % 4 == 0 else 100
        for _ in range(3):
            s.sendall(b"x" * n)
            got = 0
            while got < n:
                got += len(s.recv(65536))
def http(i):
    with socket.create_connection(("127.0.0.1", porth), timeout=60) as s:
        for j in range(5):
            body = b"y" * (100_000 if j == 0 else 10)
            s.sendall(b"POST /p HTTP/1.1\r\nhost: backend\r\ncontent-length: %d\r\n\r\n" % len(body) + body)
            buf = b""
            while not buf.endswith(b"ok"):
                buf += s.recv(65536)
with cf.ThreadPoolExecutor(8) as ex:
    list(ex.map(tcp, range(40)))
    if porth:
        list(ex.map(http, range(40)))
PY
    for a in "$ADMIN_IN" "$ADMIN_OUT"; do
      curl -fs "http://127.0.0.1:$a/metrics" >/dev/null; curl -fs "http://127.0.0.1:$a/live" >/dev/null || true
    done
    timeout 20 openssl s_client -connect "127.0.0.1:$IN" -quiet </dev/null >/dev/null 2>&1 || true
    echo hi | timeout 20 openssl s_client -connect "127.0.0.1:$IN" -cert rogue.pem -key rogue.key -quiet >/dev/null 2>&1 || true
    python3 -c "import socket; s=socket.create_connection(('127.0.0.1', $ROGUE), timeout=20); s.sendall(b'x'); s.recv(10)" 2>/dev/null || true
    for sa in frontend backend; do
      openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$sa/key2.pem" -out "$sa.csr" \
        -subj "/CN=$sa" 2>/dev/null
      openssl x509 -req -in "$sa.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -days 1 -extfile "$sa.ext" \
        -out "$sa/cert2.pem" 2>/dev/null
      mv "$sa/key2.pem" "$sa/key.pem"; mv "$sa/cert2.pem" "$sa/cert.pem"
    done
    for a in "$ADMIN_IN" "$ADMIN_OUT"; do
      for _ in $(seq 100); do
        curl -fs "http://127.0.0.1:$a/metrics" | grep -q 'certificate_reloads_total{result="success"} [1-9]' && break
        sleep 0.2
      done
    done
    kill -HUP "$p_in" "$p_out"
    python3 -c "import socket; s=socket.create_connection(('127.0.0.1', $OUT), timeout=20); s.sendall(b'hi'); s.recv(10)"
    python3 -c "import socket,time; s=socket.create_connection(('127.0.0.1', $OUT)); s.sendall(b'a'); s.recv(1); time.sleep(4)" &
    sleep 1
    kill -TERM "$p_in" "$p_out"
    wait "$w_in" "$w_out" || true
  )
}

link
vg=(valgrind --tool=callgrind --dump-instr=yes --compress-pos=no --compress-strings=no)
mkdir -p "$scratch/tcp" "$scratch/http" "$scratch/json"
workload "$scratch/tcp" tcp "${vg[@]}" "--callgrind-out-file=$scratch/tcp/cg.%p"
workload "$scratch/http" both "${vg[@]}" "--callgrind-out-file=$scratch/http/cg.%p"
workload "$scratch/json" both env LOG_FORMAT=json "${vg[@]}" "--callgrind-out-file=$scratch/json/cg.%p"
cat > "$scratch/perf.sh" <<'SH'
#!/usr/bin/env bash
# shellcheck disable=SC2086 # PERF_ARGS is a list of options
exec perf record -q $PERF_ARGS -o "$PERF_OUT.$$.data" -- "$@"
SH
for mode in tcp both; do
  d="$scratch/$([ "$mode" = tcp ] && echo tcp || echo http)"
  export PERF_ARGS="-e cpu-clock -F 25000" PERF_OUT="$d/samples"
  workload "$d" "$mode" bash "$scratch/perf.sh"
  export PERF_ARGS="-e page-faults -c 1 -d" PERF_OUT="$d/faults"
  workload "$d" "$mode" bash "$scratch/perf.sh"
done
python3 build/symbol-order.py order "$scratch/link.map" enclaveid-proxy "$order" \
  "$scratch/tcp" "$scratch/http" "$scratch/json"
echo "wrote $order; rebuild and run: bash build/symbol-order.sh check" >&2
rm -rf "$scratch"
