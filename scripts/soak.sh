#!/usr/bin/env bash
# Soak (issue 7 §5; not a CI step): a fixed request rate for SOAK_SECONDS (default 600) through
# two sidecars on loopback, app → outbound → mTLS → inbound → echo backend, in tcp mode.
#   - SOAK_CONNS long-lived connections (default 50), each sending a 1 KiB message every
#     100 ms and checking the echo byte for byte (500 messages/s by default);
#   - plus one new connection per second (a full mTLS handshake through both sidecars).
# Every failed or mismatched exchange is an error. Both sidecars' VmRSS and open fds are sampled
# every 10 s from /proc; the growth is stated from the first sample after warm-up to the last.
# Uses the release binary (built if missing), the openssl CLI and python3.
#   bash scripts/soak.sh            # SOAK_SECONDS=60 for a quick run
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_TOTAL="${SOAK_SECONDS:-600}"
CONNS="${SOAK_CONNS:-50}"
# PROXY_BIN: an already built binary to soak (default: the release build, built if missing).
. scripts/lib/mesh-rig.sh
rig_proxy_bin
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

rig_workdir
rig_mint_pki
APP=$(rig_port); IN=$(rig_port); OUT=$(rig_port); ADMIN_IN=$(rig_port); ADMIN_OUT=$(rig_port)
cat > backend.yaml <<EOF
admin: { listen: "127.0.0.1:${ADMIN_IN}" }
tls: { ca: ${work}/backend/ca.pem, cert: ${work}/backend/cert.pem, key: ${work}/backend/key.pem }
defaults: { max_connections: 20000 }
inbound:
  - { name: api, listen: "127.0.0.1:${IN}", forward: "127.0.0.1:${APP}", protocol: tcp, allow: ["spiffe://cluster.local/ns/default/sa/frontend"] }
EOF
cat > frontend.yaml <<EOF
admin: { listen: "127.0.0.1:${ADMIN_OUT}" }
tls: { ca: ${work}/frontend/ca.pem, cert: ${work}/frontend/cert.pem, key: ${work}/frontend/key.pem }
defaults: { max_connections: 20000 }
outbound:
  - { name: backend, listen: "127.0.0.1:${OUT}", upstream: "127.0.0.1:${IN}", server_name: backend.default.svc.cluster.local, protocol: tcp }
EOF
rig_write_echo
rig_start_pair

cat > load.py <<'EOF'
import asyncio, os, sys, time
out_port, seconds, conns, pid_in, pid_out = (int(a) for a in sys.argv[1:6])
stats = {"ok": 0, "err": 0, "handshakes": 0, "hs_err": 0}
errors = []
def proc(pid):
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    rss = next(int(l.split()[1]) for l in open(f"/proc/{pid}/status") if l.startswith("VmRSS:"))
    return rss, fds
async def steady(i, end):
    msg = os.urandom(1024)
    r, w = await asyncio.open_connection("127.0.0.1", out_port)
    next_t = time.monotonic()
    while time.monotonic() < end:
        try:
            w.write(msg); await w.drain()
            back = await asyncio.wait_for(r.readexactly(len(msg)), 5)
            if back == msg: stats["ok"] += 1
            else: stats["err"] += 1; errors.append(f"conn {i}: mismatch")
        except Exception as e:
            stats["err"] += 1; errors.append(f"conn {i}: {e!r}")
            r, w = await asyncio.open_connection("127.0.0.1", out_port)
        next_t += 0.1
        await asyncio.sleep(max(0, next_t - time.monotonic()))
    w.close()
async def churn(end):
    while time.monotonic() < end:
        t = time.monotonic()
        try:
            r, w = await asyncio.open_connection("127.0.0.1", out_port)
            w.write(b"hello"); await w.drain()
            if await asyncio.wait_for(r.readexactly(5), 5) == b"hello": stats["handshakes"] += 1
            else: stats["hs_err"] += 1
            w.close()
        except Exception as e:
            stats["hs_err"] += 1; errors.append(f"churn: {e!r}")
        await asyncio.sleep(max(0, 1 - (time.monotonic() - t)))
async def sample(end, samples):
    while time.monotonic() < end:
        samples.append((round(time.monotonic() - start), proc(pid_in), proc(pid_out)))
        print(f"t={samples[-1][0]:>4}s ok={stats['ok']} err={stats['err']} "
              f"inbound rss={samples[-1][1][0]}KiB fds={samples[-1][1][1]} "
              f"outbound rss={samples[-1][2][0]}KiB fds={samples[-1][2][1]}", flush=True)
        await asyncio.sleep(10)
async def main():
    global start
    start = time.monotonic(); end = start + seconds; samples = []
    await asyncio.gather(sample(end, samples), churn(end), *(steady(i, end) for i in range(conns)))
    # Growth is measured under load: the first sample after warm-up to the last in-run one.
    warm = samples[1] if len(samples) > 2 else samples[0]
    last = samples[-1]
    await asyncio.sleep(1)
    closed = (proc(pid_in)[1], proc(pid_out)[1])
    for name, k in (("inbound", 1), ("outbound", 2)):
        print(f"{name}: RSS {warm[k][0]} -> {last[k][0]} KiB (growth {last[k][0]-warm[k][0]:+} KiB, "
              f"max {max(s[k][0] for s in samples)}), fds {warm[k][1]} -> {last[k][1]} "
              f"(growth {last[k][1]-warm[k][1]:+}), measured from t={warm[0]}s to t={last[0]}s")
    print(f"after the clients closed: inbound fds {closed[0]}, outbound fds {closed[1]} "
          f"(at start: {samples[0][1][1]}, {samples[0][2][1]})")
    total = stats["ok"] + stats["err"]
    print(f"exchanges {total} ({total/seconds:.0f}/s), errors {stats['err']}; new mTLS connections "
          f"{stats['handshakes']}, failed {stats['hs_err']}")
    for e in errors[:10]: print("  error:", e)
    sys.exit(1 if stats["err"] or stats["hs_err"] else 0)
asyncio.run(main())
EOF
echo "soak: ${SECONDS_TOTAL}s, ${CONNS} connections x 10 msg/s + 1 new connection/s, tcp mode"
python3 load.py "$OUT" "$SECONDS_TOTAL" "$CONNS" "$PID_IN" "$PID_OUT"
