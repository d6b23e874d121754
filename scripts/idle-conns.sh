#!/usr/bin/env bash
# 10,000 idle connections (issue 7 §3; not a CI step): the app opens IDLE_CONNS (default 10000)
# plaintext connections to the outbound sidecar; each becomes an mTLS connection to the inbound
# sidecar and a plaintext one to the backend, then all stay idle. Both sidecars' VmRSS and fds
# are read from /proc before and with every connection open; the script prints KiB per
# connection for each sidecar, checks that every connection still echoes, then closes them all
# and checks that the fds come back. Raises `ulimit -n` (four sockets per connection in total).
#   bash scripts/idle-conns.sh      # PROXY_BIN=path to use an already built binary
set -euo pipefail
cd "$(dirname "$0")/.."
N="${IDLE_CONNS:-10000}"
. scripts/lib/mesh-rig.sh
rig_proxy_bin
ulimit -n 200000 2>/dev/null || ulimit -n "$(ulimit -Hn)"
# Each sidecar holds two sockets per connection. Where the hard limit cannot be raised (a
# container), measure as many connections as it allows and say so.
max=$(( ($(ulimit -n) - 100) / 2 ))
if [ "$N" -gt "$max" ]; then
  echo "note: the hard limit on open files is $(ulimit -Hn) and cannot be raised here; measuring ${max} connections instead of ${N}"
  N="$max"
fi
rig_workdir
rig_mint_pki
APP=$(rig_port); IN=$(rig_port); OUT=$(rig_port); ADMIN_IN=$(rig_port); ADMIN_OUT=$(rig_port)
LIMIT=$((N + 1000))
cat > backend.yaml <<YAML
admin: { listen: "127.0.0.1:${ADMIN_IN}" }
tls: { ca: ${work}/backend/ca.pem, cert: ${work}/backend/cert.pem, key: ${work}/backend/key.pem }
defaults: { max_connections: ${LIMIT}, idle_timeout_ms: 600000 }
inbound:
  - { name: api, listen: "127.0.0.1:${IN}", forward: "127.0.0.1:${APP}", protocol: tcp }
YAML
cat > frontend.yaml <<YAML
admin: { listen: "127.0.0.1:${ADMIN_OUT}" }
tls: { ca: ${work}/frontend/ca.pem, cert: ${work}/frontend/cert.pem, key: ${work}/frontend/key.pem }
defaults: { max_connections: ${LIMIT}, idle_timeout_ms: 600000 }
outbound:
  - { name: backend, listen: "127.0.0.1:${OUT}", upstream: "127.0.0.1:${IN}", server_name: backend.default.svc.cluster.local, protocol: tcp }
YAML
rig_write_echo
rig_start_pair

cat > idle.py <<'PY'
import asyncio, os, sys, time
port, n, pid_in, pid_out = (int(a) for a in sys.argv[1:5])
def proc(pid):
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    rss = next(int(l.split()[1]) for l in open(f"/proc/{pid}/status") if l.startswith("VmRSS:"))
    return rss, fds
async def one(sem):
    async with sem:
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(b"hi"); await w.drain()
        assert await asyncio.wait_for(r.readexactly(2), 30) == b"hi"
        return r, w
async def main():
    # Warm up (one connection through both sidecars), then measure the baseline.
    r, w = await one(asyncio.Semaphore(1)); w.close()
    await asyncio.sleep(1)
    base = (proc(pid_in), proc(pid_out))
    t = time.monotonic()
    sem = asyncio.Semaphore(200)  # at most 200 handshakes in flight
    conns = await asyncio.gather(*(one(sem) for _ in range(n)))
    opened = time.monotonic() - t
    await asyncio.sleep(5)  # idle
    full = (proc(pid_in), proc(pid_out))
    for name, b, f in (("inbound", base[0], full[0]), ("outbound", base[1], full[1])):
        per = (f[0] - b[0]) / n
        print(f"{name}: RSS {b[0]} -> {f[0]} KiB with {n} idle connections = {per:.2f} KiB per "
              f"connection; fds {b[1]} -> {f[1]}")
    print(f"opened {n} connections (each a full mTLS handshake between the sidecars) in {opened:.1f}s")
    # Every connection still works after idling.
    ok = 0
    for r, w in conns[:: max(1, n // 500)]:
        w.write(b"ok"); await w.drain()
        if await asyncio.wait_for(r.readexactly(2), 30) == b"ok": ok += 1
    print(f"{ok} sampled idle connections still echo")
    for r, w in conns: w.close()
    await asyncio.sleep(3)
    after = (proc(pid_in), proc(pid_out))
    print(f"after closing: inbound fds {after[0][1]} RSS {after[0][0]} KiB; outbound fds {after[1][1]} "
          f"RSS {after[1][0]} KiB")
    sys.exit(0 if after[0][1] <= base[0][1] + 2 and after[1][1] <= base[1][1] + 2 else 1)
asyncio.run(main())
PY
echo "idle connections: ${N} through outbound -> mTLS -> inbound -> backend (tcp mode)"
python3 idle.py "$OUT" "$N" "$PID_IN" "$PID_OUT"
