"""Load generation: wrk for throughput and latency, a socket client for idle connections."""

from __future__ import annotations

import json
import resource
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

LUA = Path(__file__).resolve().parent.parent / "wrk" / "report.lua"


@dataclass(frozen=True)
class WrkResult:
    """What one wrk run measured."""

    requests: int
    bytes: int
    seconds: float
    errors: int
    p50_ms: float
    p99_ms: float
    # wrk's own CPU seconds (from the rusage of the reaped child), user and system.
    user_s: float = 0.0
    sys_s: float = 0.0

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    @property
    def mb_s(self) -> float:
        return self.bytes / self.seconds / 1e6


def wrk(port: int, path: str, conns: int, seconds: int, threads: int,
        close: bool = False) -> WrkResult:
    """Runs wrk against 127.0.0.1:`port``path`; `close` sends `Connection: close` every time."""
    argv = ["wrk", "-t", str(threads), "-c", str(conns), "-d", f"{seconds}s", "--latency",
            "--timeout", "10s", "-s", str(LUA)]
    if close:
        argv += ["-H", "Connection: close"]
    argv.append(f"http://127.0.0.1:{port}{path}")
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    if not any(ln.startswith("BENCHJSON ") for ln in out.stdout.splitlines()):
        raise RuntimeError(f"wrk printed no result: {out.stdout[-500:]} {out.stderr[-500:]}")
    return parse_wrk(out.stdout, r1.ru_utime - r0.ru_utime, r1.ru_stime - r0.ru_stime)


def parse_wrk(stdout: str, user_s: float = 0.0, sys_s: float = 0.0) -> WrkResult:
    """The result line that wrk/report.lua prints (`BENCHJSON {...}`)."""
    line = next(ln for ln in stdout.splitlines() if ln.startswith("BENCHJSON "))
    j = json.loads(line.removeprefix("BENCHJSON "))
    errors = sum(j[k] for k in ("connect_errors", "read_errors", "write_errors",
                                "status_errors", "timeouts"))
    return WrkResult(requests=j["requests"], bytes=j["bytes"],
                     seconds=j["duration_us"] / 1e6, errors=errors,
                     p50_ms=j["p50_us"] / 1000, p99_ms=j["p99_us"] / 1000,
                     user_s=user_s, sys_s=sys_s)


def selftest() -> None:
    out = ('Running 1s test\nBENCHJSON {"requests":2000,"bytes":4000000,"duration_us":2000000,'
           '"connect_errors":0,"read_errors":1,"write_errors":0,"status_errors":0,'
           '"timeouts":2,"p50_us":1500,"p90_us":2000,"p99_us":4000,"mean_us":1600.0,'
           '"max_us":9000}\n')
    r = parse_wrk(out, 0.5, 0.25)
    assert (r.rps, r.mb_s, r.errors, r.p50_ms, r.p99_ms) == (1000, 2.0, 3, 1.5, 4.0), r
    assert (r.user_s, r.sys_s) == (0.5, 0.25), r


def http_get(port: int, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
    """One plain HTTP/1.1 GET with `Connection: close`; returns (status, body)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(1 << 16):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    if not head:
        return 0, b""
    status = int(head.split(b" ", 2)[1])
    return status, body


def _request_keepalive(s: socket.socket) -> None:
    s.sendall(b"GET /small HTTP/1.1\r\nHost: bench\r\n\r\n")
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(4096)
        if not chunk:
            raise RuntimeError("connection closed before the response")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(int(ln.split(b":")[1]) for ln in head.split(b"\r\n")
                  if ln.lower().startswith(b"content-length:"))
    while len(body) < length:
        body += s.recv(4096)


def open_idle(port: int, count: int) -> list[socket.socket]:
    """Opens `count` keep-alive connections, each carrying one request end to end, and leaves
    them open and idle. The caller closes them."""
    socks = []
    try:
        for _ in range(count):
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            socks.append(s)
            _request_keepalive(s)
    except Exception:
        for s in socks:
            s.close()
        raise
    time.sleep(1.0)  # let the proxies' allocators settle before the RSS reading
    return socks
