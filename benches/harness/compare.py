"""The side-by-side run: every peer on the two-hop path, N repetitions, medians and ratios."""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from . import account, checks, load, procs, report
from .certs import Pki
from .peers import Peer, Side, start_backend


@dataclass(frozen=True)
class Plan:
    """The knobs of one run (each has a CLI flag in bench.py)."""

    reps: int
    seconds: int
    warmup: int
    threads: int
    small_conns: int
    big_conns: int
    hs_conns: int
    idle_counts: tuple[int, ...]


def _loadavg() -> str:
    return Path("/proc/loadavg").read_text().split(" ", 3)[:3].__str__()


def _load(samples: report.Samples, name: str, pids: list[int], backend_pid: int | None,
          run: Callable[[], load.WrkResult], unit: Callable[[load.WrkResult], float]
          ) -> load.WrkResult:
    """One timed wrk run with its CPU accounting (`<name>_<part>` samples, per `unit`)."""
    before = account.snap(pids, backend_pid)
    r = run()
    after = account.snap(pids, backend_pid)
    for k, v in account.per_unit(before, after, r.user_s + r.sys_s, unit(r)).items():
        samples.add(f"{name}_{k}", v)
    return r


def _measure(samples: report.Samples, port: int, plan: Plan, pids: list[int],
             log: list[str], backend_pid: int | None = None) -> None:
    load.wrk(port, "/small", plan.small_conns, plan.warmup, plan.threads)
    per_req = lambda res: res.requests  # noqa: E731
    r = _load(samples, "small", pids, backend_pid,
              lambda: load.wrk(port, "/small", plan.small_conns, plan.seconds, plan.threads),
              per_req)
    samples.add("small_rps", r.rps)
    samples.add("small_p50_ms", r.p50_ms)
    samples.add("small_p99_ms", r.p99_ms)
    if pids:
        small = samples.values
        samples.add("cpu_us_per_req", small["small_side_user_us"][-1]
                    + small["small_side_sys_us"][-1])
    log.append(f"{samples.peer} small: {r}")
    b = _load(samples, "big", pids, backend_pid,
              lambda: load.wrk(port, "/big", plan.big_conns, plan.seconds, plan.threads),
              lambda res: res.bytes / 1e6)
    samples.add("big_mb_s", b.mb_s)
    log.append(f"{samples.peer} big: {b}")
    h = _load(samples, "hs", pids, backend_pid,
              lambda: load.wrk(port, "/small", plan.hs_conns, plan.seconds, plan.threads,
                               close=True), per_req)
    samples.add("hs_per_s", h.rps)
    log.append(f"{samples.peer} handshake: {h}")
    for name, res in (("small", r), ("1 MiB", b), ("new-connection", h)):
        if res.errors > res.requests * 0.001:
            samples.notes.append(f"{name}: {res.errors} errors in {res.requests} requests")


def _start_pair(peer: Peer, work: Path, pki: Pki, ports: procs.PortAllocator, backend: int,
                tag: str) -> tuple[procs.Proc, procs.Proc, int, int]:
    inbound, outbound = ports.take(), ports.take()
    pin = peer.start_inbound(work, f"{tag}-in", Side(inbound, backend, pki.server, pki.ca))
    try:
        pout = peer.start_outbound(work, f"{tag}-out", Side(outbound, inbound, pki.client, pki.ca))
    except Exception:
        procs.stop(pin)
        raise
    return pin, pout, inbound, outbound


def run(peers: list[Peer], work: Path, pki: Pki, ports: procs.PortAllocator, plan: Plan,
        out: list[str]) -> tuple[list[report.Samples], list[checks.CheckResult], list[str]]:
    """Checks every peer, then measures all of them `plan.reps` times in rotating order."""
    log: list[str] = []
    backend = ports.take()
    backend_proc = start_backend(work, backend)
    big_sha = hashlib.sha256((work / "www" / "big").read_bytes()).hexdigest()

    usable, results = [], []
    for peer in peers:
        why = peer.available()
        if why:
            out.append(f"- **{peer.name}** skipped: {why}")
            continue
        try:
            pin, pout, i, o = _start_pair(peer, work, pki, ports, backend, f"{peer.name}-check")
        except RuntimeError as e:
            out.append(f"- **{peer.name}** skipped: does not start: {e}")
            continue
        try:
            res = checks.run_checks(peer, work, pki, ports, backend, i, o, big_sha)
        finally:
            procs.stop(pout)
            procs.stop(pin)
        results.append(res)
        if res.failed:
            out.append(f"- **{peer.name}** excluded, failed checks: {', '.join(res.failed)}")
        else:
            usable.append(peer)
        print(f"checks {peer.name}: passed {len(res.passed)}, failed {res.failed}", flush=True)

    samples = {"direct": report.Samples("direct")}
    samples.update({p.name: report.Samples(p.name) for p in usable if p.limit})
    samples.update({p.name: report.Samples(p.name) for p in usable if not p.limit})
    for rep in range(plan.reps):
        order = usable[rep % max(len(usable), 1):] + usable[:rep % max(len(usable), 1)]
        print(f"rep {rep + 1}/{plan.reps} load {_loadavg()}", flush=True)
        _measure(samples["direct"], backend, plan, [], log, backend_proc.pid)
        for peer in order:
            pin, pout, _, o = _start_pair(peer, work, pki, ports, backend, f"{peer.name}-r{rep}")
            try:
                t0 = time.monotonic()
                _measure(samples[peer.name], o, plan, [pin.pid, pout.pid], log,
                         backend_proc.pid)
                hwm = procs.tree_kib(pin.pid, "VmHWM") + procs.tree_kib(pout.pid, "VmHWM")
                samples[peer.name].add("rss_mib", hwm / 1024)
                print(f"  {peer.name}: {time.monotonic() - t0:.0f}s "
                      f"rps={samples[peer.name].values['small_rps'][-1]:,.0f}", flush=True)
            finally:
                procs.stop(pout)
                procs.stop(pin)

    for peer in usable:
        for count in plan.idle_counts if not peer.limit else ():
            pin, pout, _, o = _start_pair(peer, work, pki, ports, backend, f"{peer.name}-idle")
            try:
                load.open_idle(o, 8)  # warm: first connection setup allocations
                pids = [pin.pid, pout.pid]
                before = sum(procs.tree_kib(p, "VmRSS") for p in pids)
                socks = load.open_idle(o, count)
                after = sum(procs.tree_kib(p, "VmRSS") for p in pids)
                samples[peer.name].add(f"idle_kib_per_conn_{count}", (after - before) / count)
                for s in socks:
                    s.close()
            except (OSError, RuntimeError) as e:
                samples[peer.name].notes.append(f"idle {count}: failed: {e}")
            finally:
                procs.stop(pout)
                procs.stop(pin)
    procs.stop(backend_proc)
    return list(samples.values()), results, log


def idle_table(samples: list[report.Samples], counts: tuple[int, ...]) -> str:
    rows = ["| path | " + " | ".join(f"KiB per idle conn @ {c:,}" for c in counts) + " |",
            "|---|" + "---:|" * len(counts)]
    for s in samples:
        if s.peer in report.LIMITS:
            continue
        cells = [f"{m:.1f}" if (m := s.median(f"idle_kib_per_conn_{c}")) is not None else "–"
                 for c in counts]
        rows.append(f"| {s.peer} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def dump_json(path: Path, samples: list[report.Samples], plan: Plan) -> None:
    path.write_text(json.dumps({
        "plan": plan.__dict__,
        "samples": {s.peer: {"values": s.values, "notes": s.notes} for s in samples},
        "host": os.uname().nodename,
    }, indent=1))
