# Shared by scripts/soak.sh and scripts/idle-conns.sh (measurement scripts, not CI steps): a
# throwaway mesh of two enclaveid-proxy processes on loopback, app → outbound → mTLS → inbound →
# echo backend. Source it from the repository root, then:
#   rig_proxy_bin    sets $bin: $PROXY_BIN, or the release build (built if missing)
#   rig_workdir      makes $work, cd's into it, and kills every PID in $pids on exit
#   rig_mint_pki     a mesh CA shaped like init's (P-256, pathlen 0) and leaves for
#                    frontend/ and backend/ (ca.pem, cert.pem, key.pem in each)
#   rig_port         prints a free loopback port
#   rig_write_echo [echo|http]  writes echo.py, the asyncio backend (byte echo, or HTTP/1.1 200s)
#   rig_start_pair   starts echo.py on $APP and the proxies from backend.yaml / frontend.yaml,
#                    sets $PID_IN / $PID_OUT and waits for both /ready ($ADMIN_IN, $ADMIN_OUT);
#                    exits 1 with the sidecars' last log lines if one is not ready in 10 s

rig_proxy_bin() {
  export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$(pwd)/target}"
  bin="${PROXY_BIN:-${CARGO_TARGET_DIR}/release/enclaveid-proxy}"
  [ -x "$bin" ] || cargo build --release --locked -p enclaveid-proxy
}

rig_workdir() {
  work="$(mktemp -d)"
  pids=()
  trap rig_cleanup EXIT
  cd "$work"
}

rig_cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$work"
}

rig_mint_pki() {
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ca.key -out ca.pem \
    -days 2 -subj "/CN=EnclaveID Cluster CA" -addext "basicConstraints=critical,CA:TRUE,pathlen:0" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
  for sa in frontend backend; do
    mkdir -p "$sa"
    openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$sa/key.pem" \
      -out "$sa.csr" -subj "/CN=$sa" 2>/dev/null
    printf 'subjectAltName=URI:spiffe://cluster.local/ns/default/sa/%s,DNS:%s.default.svc.cluster.local\nextendedKeyUsage=clientAuth,serverAuth\nkeyUsage=critical,digitalSignature\nbasicConstraints=critical,CA:FALSE\n' "$sa" "$sa" > "$sa.ext"
    openssl x509 -req -in "$sa.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -days 1 -extfile "$sa.ext" \
      -out "$sa/cert.pem" 2>/dev/null
    cp ca.pem "$sa/ca.pem"
  done
}

rig_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

rig_write_echo() {
  # $1 = echo (default): every byte back; http: one 2-byte 200 per HTTP/1.1 request head.
  local reply="${1:-echo}"
  cat > echo.py <<PY
import asyncio, sys
REPLY = "${reply}"
async def handle(r, w):
    try:
        if REPLY == "http":
            while await r.readuntil(b"\\r\\n\\r\\n"):
                w.write(b"HTTP/1.1 200 OK\\r\\ncontent-length: 2\\r\\ncontent-type: text/plain\\r\\n\\r\\nok")
                await w.drain()
        else:
            while data := await r.read(65536):
                w.write(data)
                await w.drain()
    except Exception:
        pass
    w.close()
async def main():
    srv = await asyncio.start_server(handle, "127.0.0.1", int(sys.argv[1]), backlog=4096)
    async with srv:
        await srv.serve_forever()
asyncio.run(main())
PY
}

rig_start_pair() {
  python3 echo.py "$APP" & pids+=($!)
  "$bin" run --config backend.yaml > backend.log 2>&1 & pids+=($!); PID_IN=$!
  "$bin" run --config frontend.yaml > frontend.log 2>&1 & pids+=($!); PID_OUT=$!
  for a in "$ADMIN_IN" "$ADMIN_OUT"; do
    for _ in $(seq 100); do curl -fs "http://127.0.0.1:$a/ready" >/dev/null && break; sleep 0.1; done
    # A port taken between rig_port and the bind, or a bad config: say so instead of measuring
    # a sidecar that is not there.
    if ! curl -fs "http://127.0.0.1:$a/ready" >/dev/null; then
      echo "a sidecar (admin port $a) is not ready after 10 s:" >&2
      tail -n 5 backend.log frontend.log >&2
      exit 1
    fi
  done
}
