"""enclaveid-proxy as a peer, in `tcp` and in `http` mode, configured through the YAML contract
of issue 2 section 2 (one inbound sidecar, one outbound sidecar, each with its admin port)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from . import procs
from .certs import SERVER_NAME
from .peers import Peer, Side

REPO = Path(__file__).resolve().parents[2]


def target_dir() -> Path:
    return Path(os.environ.get("CARGO_TARGET_DIR", "/work/targets/bench"))


def binary() -> Path:
    return Path(os.environ.get("ENCLAVEID_PROXY_BIN", target_dir() / "release/enclaveid-proxy"))


def build() -> str | None:
    """`cargo build --release -p enclaveid-proxy`; None on success, else the error's tail."""
    if "ENCLAVEID_PROXY_BIN" in os.environ:
        return None
    env = dict(os.environ, CARGO_TARGET_DIR=str(target_dir()))
    out = subprocess.run(["cargo", "build", "--release", "--locked", "-p", "enclaveid-proxy"],
                         cwd=REPO, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        return "\n".join(out.stderr.strip().splitlines()[-8:])
    return None


def extra_env() -> dict[str, str]:
    """Experiments: `BENCH_OURS_ENV="TOKIO_WORKER_THREADS=1 MALLOC_ARENA_MAX=2"`."""
    pairs = os.environ.get("BENCH_OURS_ENV", "").split()
    return dict(p.split("=", 1) for p in pairs if "=" in p)


class Ours(Peer):
    """enclaveid-proxy; `protocol` is `tcp` or `http` (HTTP/2 between the sidecars)."""

    def __init__(self, protocol: str, ports: procs.PortAllocator, variant: str = "",
                 env: dict[str, str] | None = None, binary_path: Path | None = None) -> None:
        self.protocol = protocol
        self.name = f"ours-{protocol}" + (f"[{variant}]" if variant else "")
        self.env = env or {}
        self.binary = binary_path
        self._ports = ports
        self.admin: dict[str, int] = {}

    def available(self) -> str | None:
        b = self.binary or binary()
        return None if b.is_file() else f"{b} not built"

    def _start(self, work: Path, tag: str, side: Side, section: str) -> procs.Proc:
        admin = self._ports.take()
        self.admin[tag] = admin
        conf = work / f"{tag}.yaml"
        # A short drain so that stopping a sidecar with idle connections open does not wait the
        # default 30 s; nothing else deviates from the defaults.
        conf.write_text(f"""\
admin: {{ listen: "127.0.0.1:{admin}" }}
drain_timeout_ms: 1000
tls:
  ca: "{side.ca}"
  cert: "{side.leaf.cert}"
  key: "{side.leaf.key}"
{section}""")
        env = {"RUST_LOG": os.environ.get("BENCH_RUST_LOG", "warn"), **extra_env(), **self.env}
        p = procs.start(tag, [str(self.binary or binary()), "--config", str(conf)], work, env=env)
        procs.wait_listening(side.listen, p)
        return p

    def start_inbound(self, work: Path, tag: str, side: Side) -> procs.Proc:
        return self._start(work, tag, side, f"""\
inbound:
  - name: bench
    listen: "127.0.0.1:{side.listen}"
    forward: "127.0.0.1:{side.target}"
    protocol: {self.protocol}
""")

    def start_outbound(self, work: Path, tag: str, side: Side) -> procs.Proc:
        return self._start(work, tag, side, f"""\
outbound:
  - name: bench
    listen: "127.0.0.1:{side.listen}"
    upstream: "127.0.0.1:{side.target}"
    server_name: {SERVER_NAME}
    protocol: {self.protocol}
""")
