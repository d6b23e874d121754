"""CPU accounting of one load: where the machine's CPU time went while wrk ran.

Around every wrk run the harness reads, for every process of each group, user and system time
from /proc/PID/stat (both sidecars, the backend nginx), wrk's own time from the rusage of the
reaped child, and the machine's busy/idle/steal from /proc/stat. Everything is divided by the
load's unit (a request, a new connection, or a MB of response), so the figures of different
peers and runs compare even when their rates do not.

This kernel has tick-based accounting without IRQ time accounting (`CONFIG_TICK_CPU_ACCOUNTING`,
no `CONFIG_IRQ_TIME_ACCOUNTING`): softirq work (loopback packet delivery) is charged to the
system time of the process it interrupted, so the sidecars' and wrk's system time already holds
most of the network stack's cost. "other" is the machine's busy time that no process of the run
accounts for: other users' builds on this shared VM, the harness, kernel threads.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from . import procs

CORES = os.cpu_count() or 2
# Parts of one load's CPU, per unit, in µs (keys `<load>_<part>_us` in the samples).
PARTS = ("side_user", "side_sys", "wrk", "backend")
# Shares of the machine's CPU time during the load, in % of CORES × wall time.
SHARES = ("other_pct", "idle_pct", "steal_pct")


@dataclass(frozen=True)
class Snapshot:
    """Cumulative CPU seconds at one instant."""

    side_user: float
    side_sys: float
    backend: float
    machine: dict[str, float]


def snap(side_pids: list[int], backend_pid: int | None) -> Snapshot:
    user = system = 0.0
    for p in side_pids:
        u, s = procs.cpu_split(p)
        user += u
        system += s
    backend = sum(procs.cpu_split(backend_pid)) if backend_pid else 0.0
    return Snapshot(user, system, backend, procs.machine_cpu())


def shares(before: Snapshot, after: Snapshot, wrk_s: float) -> dict[str, float]:
    """The machine's time during the load, split: our processes, other work, idle, steal (%)."""
    d = {k: after.machine[k] - before.machine[k] for k in before.machine}
    total = d["busy"] + d["idle"] + d["steal"]
    if total <= 0:
        return {k: 0.0 for k in SHARES}
    ours = ((after.side_user - before.side_user) + (after.side_sys - before.side_sys)
            + (after.backend - before.backend) + wrk_s)
    other = max(d["busy"] - ours, 0.0)
    return {"other_pct": 100 * other / total, "idle_pct": 100 * d["idle"] / total,
            "steal_pct": 100 * d["steal"] / total}


def per_unit(before: Snapshot, after: Snapshot, wrk_s: float, units: float) -> dict[str, float]:
    """µs per unit of each part, plus the machine shares (%)."""
    units = max(units, 1e-9)
    out = {
        "side_user_us": (after.side_user - before.side_user) / units * 1e6,
        "side_sys_us": (after.side_sys - before.side_sys) / units * 1e6,
        "wrk_us": wrk_s / units * 1e6,
        "backend_us": (after.backend - before.backend) / units * 1e6,
    }
    out.update(shares(before, after, wrk_s))
    return out


def selftest() -> None:
    """Unit-free checks of the parsing and the arithmetic (no tools, no processes started)."""
    u, s = procs.parse_pid_stat("42 (a) b) c) S 1 2 3 4 5 6 7 8 9 10 111 222 0 0")
    assert (u, s) == (111, 222), (u, s)
    c = procs.parse_proc_stat("cpu  10 1 5 100 2 0 3 7 0 0\ncpu0 1 1 1 1 1 1 1 1 0 0\n")
    assert c == {"user": 10, "nice": 1, "system": 5, "idle": 100, "iowait": 2, "irq": 0,
                 "softirq": 3, "steal": 7}, c
    m = procs.machine_cpu()
    assert {"busy", "idle", "steal", "softirq"} <= m.keys() and m["busy"] > 0, m
    a = Snapshot(1.0, 1.0, 1.0, {"busy": 10.0, "idle": 10.0, "steal": 0.0, "softirq": 0.0})
    b = Snapshot(1.5, 1.25, 1.5, {"busy": 12.5, "idle": 11.0, "steal": 0.5, "softirq": 0.1})
    pu = per_unit(a, b, wrk_s=0.5, units=1000)
    assert round(pu["side_user_us"]) == 500 and round(pu["side_sys_us"]) == 250, pu
    assert round(pu["wrk_us"]) == 500 and round(pu["backend_us"]) == 500, pu
    # busy 2.5 s = 1.75 s ours + 0.75 s other; total 4 s: other 18.75 %, idle 25 %, steal 12.5 %
    assert abs(pu["other_pct"] - 18.75) < 1e-9 and abs(pu["idle_pct"] - 25) < 1e-9, pu
    assert abs(pu["steal_pct"] - 12.5) < 1e-9, pu
    u0, s0 = procs.cpu_split(os.getpid())
    assert u0 >= 0 and s0 >= 0
