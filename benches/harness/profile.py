"""Where the time goes, for ours (`tcp`) against nginx and HAProxy on the same two-hop path:

- syscalls per request and per new connection: `strace -c -f` attached to every thread of both
  sidecars during a fixed wrk load (strace slows everything; only the counts per request matter);
- instructions per request and per handshake: both sidecars under `valgrind --tool=callgrind`,
  the instructions of an unloaded run subtracted (this VM exposes no hardware counters, so
  `perf stat -e instructions` is not supported), with the top functions by self cost;
- a CPU profile by symbol: `perf record -e cpu-clock` (software clock, works without a PMU).
"""

from __future__ import annotations

import argparse
import datetime as dt
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

from . import certs, load, ours, peers, procs
from .peers import Side, start_backend

HERE = Path(__file__).resolve().parent.parent


def _pair(peer: peers.Peer, work: Path, pki: certs.Pki, ports: procs.PortAllocator,
          backend: int, tag: str) -> tuple[procs.Proc, procs.Proc, int]:
    i, o = ports.take(), ports.take()
    pin = peer.start_inbound(work, f"{tag}-in", Side(i, backend, pki.server, pki.ca))
    pout = peer.start_outbound(work, f"{tag}-out", Side(o, i, pki.client, pki.ca))
    return pin, pout, o


def strace_counts(peer: peers.Peer, work: Path, pki: certs.Pki, ports: procs.PortAllocator,
                  backend: int, seconds: int, close: bool,
                  path: str = "/small") -> tuple[float, list[tuple[str, float]]]:
    """Syscalls per request (both sidecars) and the top syscalls per request."""
    pin, pout, o = _pair(peer, work, pki, ports, backend, f"{peer.name}-strace")
    try:
        load.wrk(o, "/small", 16, 1, 1, close=close)
        tids = procs.threads(pin.pid) + procs.threads(pout.pid)
        out = work / f"{peer.name}-{close}-{path.strip('/')}.strace"
        argv = ["strace", "-c", "-f", "-o", str(out)]
        for t in tids:
            argv += ["-p", str(t)]
        st = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1.0)  # attach
        r = load.wrk(o, path, 64 if path == "/small" else 16, seconds, 1, close=close)
        st.send_signal(signal.SIGINT)
        st.wait(30)
    finally:
        procs.stop(pout)
        procs.stop(pin)
    total, top = parse_strace_c(out.read_text(), max(r.requests, 1))
    return total, top[:6]


def parse_strace_c(text: str, per: int) -> tuple[float, list[tuple[str, float]]]:
    """`strace -c` summary → (calls per unit, [(syscall, calls per unit)] by count). A syscall
    that failed some calls (EAGAIN on a non-blocking socket, mostly) is named `name(N err)` with
    its failed calls per unit: those reads found nothing to read."""
    total, top = 0, []
    for line in text.splitlines():
        cols = line.split()
        if len(cols) >= 5 and cols[0][0].isdigit() and cols[-1] != "total":
            calls = int(cols[3])
            name = cols[-1]
            if len(cols) == 6 and int(cols[4]):
                name += f"({int(cols[4]) / per:.1f} err)"
            top.append((name, calls / per))
        if cols and cols[-1] == "total":
            total = int(cols[3])
    top.sort(key=lambda t: -t[1])
    return total / per, top


def selftest() -> None:
    text = """% time     seconds  usecs/call     calls    errors syscall
------ ----------- ----------- --------- --------- ----------------
 60.00    0.060000           6     10000      2000 recvfrom
 40.00    0.040000           4      8000           writev
------ ----------- ----------- --------- --------- ----------------
100.00    0.100000           5     18000      2000 total
"""
    total, top = parse_strace_c(text, 1000)
    assert total == 18.0 and top == [("recvfrom(2.0 err)", 10.0), ("writev", 8.0)], top
    assert _cell(*top[0]) == "recvfrom 10.0 (2.0 failed)" and _cell(*top[1]) == "writev 8.0"


def _callgrind_total(files: list[Path]) -> int:
    total = 0
    for f in files:
        for line in f.read_text(errors="replace").splitlines():
            if line.startswith(("summary:", "totals:")):
                total += int(line.split()[1])
                break
    return total


def callgrind(peer: peers.Peer, work: Path, pki: certs.Pki, ports: procs.PortAllocator,
              backend: int, seconds: int, close: bool | None) -> tuple[int, int, list[Path]]:
    """Total instructions of both sidecars (and every child) for a run; `close` None = no load.
    Returns (instructions, requests, callgrind files)."""
    d = work / f"cg-{peer.name}-{close}"
    d.mkdir()
    procs.WRAP[:] = ["valgrind", "--tool=callgrind", "--trace-children=yes",
                     f"--callgrind-out-file={d}/cg.%p"]
    procs.LISTEN_DEADLINE_S = 120
    try:
        pin, pout, o = _pair(peer, work, pki, ports, backend, f"{peer.name}-cg")
    finally:
        procs.WRAP.clear()
        procs.LISTEN_DEADLINE_S = 20
    requests = 0
    try:
        if close is not None:
            requests = load.wrk(o, "/small", 8, seconds, 1, close=close).requests
        else:
            time.sleep(seconds)
    finally:
        procs.stop(pout, grace=120)
        procs.stop(pin, grace=120)
    files = sorted(d.glob("cg.*"))
    return _callgrind_total(files), requests, files


def top_functions(files: list[Path], n: int = 12) -> list[str]:
    if not shutil.which("callgrind_annotate") or not files:
        return []
    out = subprocess.run(["callgrind_annotate", "--inclusive=no", *map(str, files[:1])],
                         capture_output=True, text=True, timeout=300).stdout
    rows = []
    for line in out.splitlines():
        m = re.match(r"\s*([\d,]+) \(\s*([\d.]+)%\)\s+(.*)", line)
        if m and "PROGRAM TOTALS" not in line:
            rows.append(f"{m.group(2)}% {m.group(3)[:110]}")
        if len(rows) >= n:
            break
    return rows


def perf_profile(peer: peers.Peer, work: Path, pki: certs.Pki, ports: procs.PortAllocator,
                 backend: int, seconds: int, close: bool) -> list[str]:
    """Top symbols by CPU samples (both sidecars) during a wrk load."""
    pin, pout, o = _pair(peer, work, pki, ports, backend, f"{peer.name}-perf")
    data = work / f"{peer.name}-{close}.perf.data"
    try:
        load.wrk(o, "/small", 16, 1, 1, close=close)
        pids = ",".join(str(p) for p in procs.tree_pids(pin.pid) + procs.tree_pids(pout.pid))
        rec = subprocess.Popen(["perf", "record", "-e", "cpu-clock", "-F", "999", "-g",
                                "-o", str(data), "-p", pids], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
        load.wrk(o, "/small", 64, seconds, 1, close=close)
        rec.send_signal(signal.SIGINT)
        rec.wait(60)
    finally:
        procs.stop(pout)
        procs.stop(pin)
    rep = subprocess.run(["perf", "report", "-i", str(data), "--stdio", "--no-children",
                          "--sort", "dso,sym", "--percent-limit", "1.5", "-g", "none"],
                         capture_output=True, text=True, timeout=300).stdout
    rows = [ln.strip() for ln in rep.splitlines() if ln.strip() and not ln.startswith("#")]
    folded = HERE / "results" / f"{peer.name}-{'conn' if close else 'keepalive'}.perf-folded.txt"
    script = subprocess.run(["perf", "script", "-i", str(data)], capture_output=True, text=True,
                            timeout=600).stdout
    folded.write_text(_fold(script))
    return rows[:15]


def _fold(script: str) -> str:
    """perf script → folded stacks (`comm;frame;...;leaf count`), for any flame-graph renderer."""
    counts: dict[str, int] = {}
    for block in script.split("\n\n"):
        lines = [ln for ln in block.splitlines() if ln.strip()]
        if not lines:
            continue
        comm = lines[0].split()[0]
        frames = []
        for ln in lines[1:]:
            parts = ln.strip().split(None, 1)
            if len(parts) == 2:
                frames.append(parts[1].split(" (")[0].split("+0x")[0])
        key = ";".join([comm, *reversed(frames)])
        counts[key] = counts.get(key, 0) + 1
    return "".join(f"{k} {v}\n" for k, v in sorted(counts.items(), key=lambda kv: -kv[1]))


def main(args: argparse.Namespace) -> int:
    started = dt.datetime.now(dt.timezone.utc)
    work = Path(procs.tempfile_dir())
    pki = certs.make_pki(work / "pki")
    ports = procs.PortAllocator(args.port_base + 500)
    backend_port = ports.take()
    backend = start_backend(work, backend_port)
    chosen = [p for p in [ours.Ours("tcp", ports), peers.Nginx(), peers.Haproxy(),
                          peers.Ghostunnel(), peers.Relay()]
              if p.name in args.peers.split(",") and p.available() is None]
    parts = set(args.parts.split(","))
    lines = [f"# Profile, {started:%Y-%m-%d %H:%M} UTC", "",
             f"Command: `python3 benches/bench.py profile --peers {args.peers} --parts "
             f"{args.parts}`", "", f"Load average at the start: "
             f"{' '.join(Path('/proc/loadavg').read_text().split()[:3])}", "",
             f"enclaveid-proxy: `{ours.binary()}`", ""]
    try:
        if "strace" in parts:
            _strace_section(chosen, work, pki, ports, backend_port, lines)
        if "callgrind" in parts:
            _callgrind_section(chosen, work, pki, ports, backend_port, lines)
        if "dhat" in parts:
            for p in chosen:
                lines += ["", f"Heap per idle connection, {p.name} (valgrind --tool=dhat, "
                          f"{args.dhat_conns} idle proxied connections):", "", "```",
                          *dhat_idle(p, work, pki, ports, backend_port, args.dhat_conns),
                          "```"]
                print("\n".join(lines[-12:]), flush=True)
        if "perf" in parts and shutil.which("perf"):
            for p in chosen:
                for close in (False, True):
                    rows = perf_profile(p, work, pki, ports, backend_port, 8, close)
                    lines += ["", f"perf, {p.name}, {'new connections' if close else 'keep-alive'}"
                              " (top symbols by cpu-clock samples, both sidecars):", "", "```",
                              *rows, "```"]
    finally:
        procs.stop(backend)
        shutil.rmtree(work, ignore_errors=True)
    lines += ["", f"Load average at the end: {' '.join(Path('/proc/loadavg').read_text().split()[:3])}"]
    text = "\n".join(lines) + "\n"
    print(text)
    out = HERE / "results" / f"{started:%Y-%m-%d-%H%M}-profile.md"
    out.write_text(text)
    print(f"wrote {out}")
    return 0


def _strace_section(chosen: list[peers.Peer], work: Path, pki: certs.Pki,
                    ports: procs.PortAllocator, backend_port: int, lines: list[str]) -> None:
    lines += ["## Syscalls (strace -c -f on every thread of both sidecars)", "",
              "| path | syscalls per keep-alive request | top (per request) | "
              "syscalls per new connection | top (per connection) | syscalls per 1 MiB "
              "response | top (per response) |",
              "|---|---:|---|---:|---|---:|---|"]
    for p in chosen:
        ka, ka_top = strace_counts(p, work, pki, ports, backend_port, 5, close=False)
        nc, nc_top = strace_counts(p, work, pki, ports, backend_port, 5, close=True)
        fmt = lambda top: ", ".join(_cell(n, c) for n, c in top)  # noqa: E731
        big, big_top = strace_counts(p, work, pki, ports, backend_port, 5, close=False,
                                     path="/big")
        lines.append(f"| {p.name} | {ka:.1f} | {fmt(ka_top)} | {nc:.1f} | {fmt(nc_top)} | "
                     f"{big:.0f} | {fmt(big_top[:4])} |")
        print(lines[-1], flush=True)


def _cell(name: str, calls: float) -> str:
    """`recvfrom(2.0 err)`, 10.0 → `recvfrom 10.0 (2.0 failed)`."""
    base, _, err = name.partition("(")
    return f"{base} {calls:.1f}" + (f" ({err.removesuffix(' err)')} failed)" if err else "")


def _callgrind_section(chosen: list[peers.Peer], work: Path, pki: certs.Pki,
                       ports: procs.PortAllocator, backend_port: int, lines: list[str]) -> None:
    lines += ["", "## Instructions (valgrind --tool=callgrind, both sidecars, unloaded "
              "run subtracted)", "",
              "| path | instructions per keep-alive request | instructions per new "
              "connection (full mTLS handshake) |", "|---|---:|---:|"]
    tops: dict[str, list[str]] = {}
    for p in chosen:
        idle, _, _ = callgrind(p, work, pki, ports, backend_port, 10, None)
        ka, ka_n, _ = callgrind(p, work, pki, ports, backend_port, 10, False)
        nc, nc_n, files = callgrind(p, work, pki, ports, backend_port, 10, True)
        tops[p.name] = top_functions(files)
        lines.append(f"| {p.name} | {(ka - idle) / max(ka_n, 1):,.0f} ({ka_n} requests) | "
                     f"{(nc - idle) / max(nc_n, 1):,.0f} ({nc_n} connections) |")
        print(lines[-1], flush=True)
    for name, rows in tops.items():
        lines += ["", f"Top functions by own instructions, {name}, new-connection run "
                  "(first process's file):", "", "```", *rows, "```"]


_ALLOC_NOISE = ("library/std/", "library/alloc/", "library/core/", "vgpreload", "mem.c:",
                "hashbrown", "/bytes-", "OPENSSL_zalloc", "OPENSSL_malloc")


def dhat_idle(peer: peers.Peer, work: Path, pki: certs.Pki, ports: procs.PortAllocator,
              backend: int, count: int) -> list[str]:
    """Heap bytes per idle proxied connection and the allocation sites that hold them, from
    `valgrind --tool=dhat` on both sidecars while `count` idle connections are open."""
    d = work / f"dhat-{peer.name}"
    d.mkdir()
    procs.WRAP[:] = ["valgrind", "--tool=dhat", "--trace-children=yes", "--num-callers=40",
                     f"--dhat-out-file={d}/dhat.%p"]
    procs.LISTEN_DEADLINE_S = 120
    try:
        pin, pout, o = _pair(peer, work, pki, ports, backend, f"{peer.name}-dhat")
    finally:
        procs.WRAP.clear()
        procs.LISTEN_DEADLINE_S = 20
    try:
        load.open_idle(o, 4)
        socks = load.open_idle(o, count)
        time.sleep(2)
        procs.stop(pout, grace=120)
        procs.stop(pin, grace=120)
        for s in socks:
            s.close()
    finally:
        procs.stop(pout, grace=120)
        procs.stop(pin, grace=120)
    import json  # noqa: PLC0415

    rows = []
    for f in sorted(d.glob("dhat.*")):
        j = json.loads(f.read_text())
        if not j.get("pps"):
            continue
        gb = sum(pp.get("gb", 0) for pp in j["pps"])
        side = "inbound" if "-in" in j.get("cmd", "") else "outbound"
        rows.append(f"{Path(f).name} ({side}): heap at peak {gb / 1024:,.0f} KiB = "
                    f"{gb / count / 1024:.1f} KiB per connection; largest holders at peak:")
        sites: dict[str, int] = {}
        for pp in j["pps"]:
            frames = [j["ftbl"][i] for i in pp["fs"]]
            site = next((fr for fr in frames if not any(n in fr for n in _ALLOC_NOISE)),
                        frames[0] if frames else "?")
            site = re.sub(r"^0x[0-9A-Fa-f]+: ", "", site)
            site = re.sub(r"\(/[^()]*/(registry/src/[^/]+/|work/main/)", "(", site)[:120]
            sites[site] = sites.get(site, 0) + pp.get("gb", 0)
        for site, b in sorted(sites.items(), key=lambda kv: -kv[1])[:8]:
            rows.append(f"  {b / count:8,.0f} B/conn  {site}")
    return rows
