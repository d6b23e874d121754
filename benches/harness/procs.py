"""Starting, watching and stopping the real programs of a run (stopped by PID, never by name).

Every process is started in its own session, remembered in a registry, and killed at exit even
when the harness fails. Listeners are awaited by connecting to them, with a deadline.
"""

from __future__ import annotations

import atexit
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

_LIVE: list[subprocess.Popen] = []
# Prepended to every started program's argv (the profiler sets it to run peers under valgrind).
WRAP: list[str] = []
# How long to wait for a listener (valgrind needs far longer than a native start).
LISTEN_DEADLINE_S = 20.0


def _kill_all() -> None:
    for p in list(_LIVE):
        stop(p)


atexit.register(_kill_all)


class PortAllocator:
    """Hands out loopback ports below the kernel's ephemeral range, checking each is free.

    Staying below 32768 keeps our listeners out of the way of other programs that bind port 0.
    """

    def __init__(self, base: int) -> None:
        self._next = base

    def take(self) -> int:
        while True:
            port = self._next
            self._next += 1
            if self._next >= 32768:
                raise RuntimeError("ran out of ports below the ephemeral range")
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port


@dataclass
class Proc:
    """A started program: its Popen, a short name and its log file."""

    name: str
    popen: subprocess.Popen
    log: Path
    extra_pids: list[int] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.popen.pid


def start(name: str, argv: list[str], logdir: Path, env: dict[str, str] | None = None,
          cwd: Path | None = None) -> Proc:
    """Starts `argv` in its own session with stdout and stderr going to `logdir/name.log`."""
    log = logdir / f"{name}.log"
    fh = log.open("ab")
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    p = subprocess.Popen([*WRAP, *argv], stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                         env=full_env, cwd=cwd, start_new_session=True)
    fh.close()
    _LIVE.append(p)
    return Proc(name=name, popen=p, log=log)


def stop(p: subprocess.Popen | Proc, grace: float = 5.0) -> None:
    """SIGTERM to the process group we created, then SIGKILL after `grace` seconds."""
    popen = p.popen if isinstance(p, Proc) else p
    if popen.poll() is None:
        try:
            os.killpg(popen.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            popen.wait(grace)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(popen.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            popen.wait()
    if popen in _LIVE:
        _LIVE.remove(popen)


def wait_listening(port: int, proc: Proc, deadline_s: float | None = None) -> None:
    """Connects to 127.0.0.1:`port` until it accepts; fails fast if `proc` exits."""
    deadline_s = deadline_s or LISTEN_DEADLINE_S
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if proc.popen.poll() is not None:
            raise RuntimeError(f"{proc.name} exited with {proc.popen.returncode}; log: "
                               f"{tail(proc.log)}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"{proc.name} not listening on {port} after {deadline_s}s; log: "
                       f"{tail(proc.log)}")


def tail(path: Path, n: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


def threads(pid: int) -> list[int]:
    """Every thread id of every process in the tree of `pid`."""
    out = []
    for p in tree_pids(pid):
        try:
            out += [int(t.name) for t in Path(f"/proc/{p}/task").iterdir()]
        except OSError:
            pass
    return out


def tree_pids(pid: int) -> list[int]:
    """`pid` and all its descendants (nginx master + workers, for example)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def status_kib(pid: int, key: str) -> int:
    """A `kB` field of /proc/PID/status (VmHWM, VmRSS, ...), 0 if the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_kib(pid: int, key: str) -> int:
    """Sum of a status field over a process and its descendants."""
    return sum(status_kib(p, key) for p in tree_pids(pid))


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process tree so far (clock ticks from /proc/PID/stat)."""
    return sum(cpu_split(pid))


def parse_pid_stat(text: str) -> tuple[int, int]:
    """(utime, stime) in clock ticks from the text of /proc/PID/stat (the command name, in
    parentheses, may itself hold spaces and parentheses: split after the last `)`)."""
    fields = text.rsplit(")", 1)[1].split()
    return int(fields[11]), int(fields[12])


def cpu_split(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of a process tree so far, every thread of every process."""
    tick = os.sysconf("SC_CLK_TCK")
    user = system = 0
    for p in tree_pids(pid):
        try:
            u, s = parse_pid_stat(Path(f"/proc/{p}/stat").read_text())
        except (OSError, IndexError, ValueError):
            continue
        user += u
        system += s
    return user / tick, system / tick


# Columns of the `cpu` line of /proc/stat (proc(5)); guest time is already inside user/nice.
_STAT_COLS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")


def parse_proc_stat(text: str) -> dict[str, int]:
    """The machine-wide `cpu` line of /proc/stat as {column: ticks}."""
    line = next(ln for ln in text.splitlines() if ln.startswith("cpu "))
    vals = [int(v) for v in line.split()[1:]]
    return dict(zip(_STAT_COLS, vals + [0] * (len(_STAT_COLS) - len(vals))))


def machine_cpu() -> dict[str, float]:
    """Machine-wide CPU seconds so far: busy (user+nice+system+irq+softirq), idle (+iowait),
    steal (time the hypervisor gave to other guests), and softirq on its own."""
    tick = os.sysconf("SC_CLK_TCK")
    c = parse_proc_stat(Path("/proc/stat").read_text())
    busy = c["user"] + c["nice"] + c["system"] + c["irq"] + c["softirq"]
    return {"busy": busy / tick, "idle": (c["idle"] + c["iowait"]) / tick,
            "steal": c["steal"] / tick, "softirq": (c["irq"] + c["softirq"]) / tick}


def tempfile_dir() -> str:
    """A world-readable temporary directory (nginx workers run as `nobody`)."""
    import tempfile  # noqa: PLC0415

    d = tempfile.mkdtemp(prefix="enclaveid-bench-")
    os.chmod(d, 0o755)
    return d
