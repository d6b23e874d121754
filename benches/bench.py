#!/usr/bin/env python3
"""EnclaveID end-to-end benchmark: load generator → outbound sidecar → mTLS → inbound sidecar →
backend, on loopback, for enclaveid-proxy (tcp and http modes), nginx, HAProxy and ghostunnel.

    python3 benches/bench.py                  # the side-by-side table, 3 repetitions of 10 s
    python3 benches/bench.py --reps 5 --seconds 20 --idle 1000,9000
    python3 benches/bench.py limits           # openssl speed + the direct path
    python3 benches/bench.py profile          # strace -c, callgrind, perf for ours vs nginx
    python3 benches/bench.py profile --parts strace --peers ours-tcp,nginx,haproxy,ghostunnel
    python3 benches/bench.py selftest         # unit-free checks of the parsing and the tables
    python3 benches/bench.py tables --json benches/results/X.json   # the README's tables again

Tools: benches/install.sh. Results: benches/results/<UTC date>.md (and .json with raw samples).
"""

from __future__ import annotations

import argparse
import datetime as dt
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import certs, compare, ours, peers, procs, report, where  # noqa: E402

HERE = Path(__file__).resolve().parent


def _version(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "not installed"
    text = (out.stdout + out.stderr).strip().splitlines()
    return text[0] if text else "?"


def machine() -> list[str]:
    cpu = next((ln.split(":", 1)[1].strip() for ln in
                Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("model name")),
               "?")
    mem = Path("/proc/meminfo").read_text().splitlines()[0].split()[1]
    import os  # noqa: PLC0415
    return [
        f"- CPU: {cpu}, {os.cpu_count()} vCPUs (shared with other builds); "
        f"RAM {int(mem) // 1024} MiB; kernel {os.uname().release}",
        f"- nginx: {_version(['nginx', '-v'])}; HAProxy: {_version(['haproxy', '-v'])}",
        f"- ghostunnel: {_version([str(peers.ghostunnel_bin()), '--version'])}; "
        f"wrk: {_version(['wrk', '-v'])}",
        f"- OpenSSL: {_version(['openssl', 'version'])}; rustc: {_version(['rustc', '-V'])}",
        (f"- enclaveid-proxy: `{os.environ['ENCLAVEID_PROXY_BIN']}`, release build of commit "
         f"{os.environ.get('BENCH_PROXY_REV', '(not stated)')}" if "ENCLAVEID_PROXY_BIN" in os.environ
         else f"- enclaveid-proxy built from `{_version(['git', '-C', str(HERE.parent), 'describe', '--always', '--dirty'])}`")
        + " (release profile: the root Cargo.toml's, fat LTO since 6f91343)",
    ]


def cmd_compare(args: argparse.Namespace) -> int:
    started = dt.datetime.now(dt.timezone.utc)
    load_start = Path("/proc/loadavg").read_text().split()[:3]
    out: list[str] = []
    ports = procs.PortAllocator(args.port_base)
    wanted = args.peers.split(",")
    ours_peers: list[peers.Peer] = []
    if any(p.startswith("ours") for p in wanted):
        err = None if args.no_build else ours.build()
        if err:
            out.append(f"- **ours** not built: `cargo build --release -p enclaveid-proxy` "
                       f"failed:\n\n```\n{err}\n```")
        for proto in ("tcp", "http"):
            if f"ours-{proto}" in wanted and not err:
                ours_peers.append(ours.Ours(proto, ports))
    chosen = [p for p in peers.all_peers(ours_peers) if p.name in wanted]
    # Experiments: --variant 'name:tcp:/path/to/binary:KEY=V,KEY2=V' adds another `ours` peer.
    for spec in args.variant:
        name, proto, path, env = (spec.split(":", 3) + ["", "", ""])[:4]
        kv = dict(e.split("=", 1) for e in env.split(",") if "=" in e)
        chosen.append(ours.Ours(proto or "tcp", ports, variant=name, env=kv,
                                binary_path=Path(path) if path else None))
    plan = compare.Plan(reps=args.reps, seconds=args.seconds, warmup=args.warmup,
                        threads=args.threads, small_conns=args.small_conns,
                        big_conns=args.big_conns, hs_conns=args.hs_conns,
                        idle_counts=tuple(int(c) for c in args.idle.split(",") if c))
    work = Path(tempfile.mkdtemp(prefix="enclaveid-bench-"))
    work.chmod(0o755)  # nginx workers run as `nobody` and read the docroot and certificates
    try:
        pki = certs.make_pki(work / "pki")
        samples, checks, log = compare.run(chosen, work, pki, ports, plan, out)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    ended = dt.datetime.now(dt.timezone.utc)
    load_end = Path("/proc/loadavg").read_text().split()[:3]

    md = [f"# Side-by-side run, {started:%Y-%m-%d %H:%M}–{ended:%H:%M} UTC", "",
          f"Command: `python3 benches/bench.py {' '.join(sys.argv[1:])}`".replace(
              "bench.py compare", "bench.py"), "", *machine(), "",
          f"Plan: {plan.reps} repetitions, {plan.seconds} s per load after a {plan.warmup} s "
          f"warm-up; wrk -t{plan.threads}; small = 128-byte body, {plan.small_conns} keep-alive "
          f"connections; 1 MiB body over {plan.big_conns} keep-alive connections; new "
          f"connections = `Connection: close` on {plan.hs_conns} connections (one full mTLS "
          "handshake per request between the sidecars in `tcp` mode). TLS 1.3, X25519, "
          "P-256 ECDSA leaves from one throwaway CA, no resumption (checked). Peak RSS = sum "
          "of VmHWM over both sidecars' processes; CPU = user+sys of both sidecars during "
          "the small-request load, divided by its requests. `relay` is a plain TCP relay pair "
          "(nginx stream, no TLS, one worker each): like `direct`, a limit, not a sidecar. "
          "CPU accounting of every load: user and system time of every process of both "
          "sidecars and of the backend (/proc/PID/stat), wrk's (rusage), and the machine's "
          "busy/idle/steal (/proc/stat), over the load's window.", "",
          *([f"enclaveid-proxy ran with `{env}`.", ""] if (env := " ".join(
              f"{k}={v}" for k, v in ours.extra_env().items())) else []),
          f"Load average (1/5/15 min) at the start: {' '.join(load_start)}; at the end: "
          f"{' '.join(load_end)} (2 vCPUs; above 2 means other work was competing).", "",
          "## Medians (ratio to the best sidecar for that column)", "",
          report.side_by_side(samples), "",
          "## Targets of issue 6 (`ours-tcp` against the best of nginx, HAProxy, ghostunnel)", "",
          report.targets(samples), "",
          "## Where the CPU goes (medians of the per-unit figures)", "",
          *where.sections(samples), "",
          "## Idle connections (RSS growth of both sidecars per open idle proxied connection)", "",
          compare.idle_table(samples, plan.idle_counts), "",
          "## Every sample (one per repetition)", "", report.spread(samples), "",
          "## Correctness checks (before timing)", ""]
    for c in checks:
        md.append(f"- {c.peer}: {len(c.passed)} passed ({c.tls})"
                  + (f"; **failed: {', '.join(c.failed)}**" if c.failed else ""))
    md += out
    for s in samples:
        md += [f"- {s.peer}: {n}" for n in s.notes]
    text = "\n".join(md) + "\n"
    print(text)
    results = HERE / "results"
    results.mkdir(exist_ok=True)
    stem = results / f"{started:%Y-%m-%d-%H%M}"
    stem.with_suffix(".md").write_text(text)
    compare.dump_json(stem.with_suffix(".json"), samples, plan)
    (stem.parent / f"{stem.name}.log").write_text("\n".join(log) + "\n")
    print(f"wrote {stem.with_suffix('.md')}")
    return 0


def tables(path: Path | None) -> int:
    """Prints the README's tables (medians, targets, where the CPU goes) from a results .json."""
    if path is None or not path.is_file():
        print("tables: give --json benches/results/<run>.json", file=sys.stderr)
        return 2
    import json  # noqa: PLC0415
    samples = []
    for name, d in json.loads(path.read_text())["samples"].items():
        s = report.Samples(name)
        s.values, s.notes = d["values"], d["notes"]
        samples.append(s)
    print("\n".join(["## Medians (ratio to the best sidecar for that column)", "",
                     report.side_by_side(samples), "", "## Targets of issue 6", "",
                     report.targets(samples), "", "## Where the CPU goes", "",
                     *where.sections(samples)]))
    return 0


def selftest() -> int:
    """Checks the parsing of /proc and of wrk's output, and the tables' arithmetic, without
    starting anything."""
    from harness import account, load, profile  # noqa: PLC0415
    account.selftest()
    profile.selftest()
    where.selftest()
    load.selftest()
    s = report.Samples("ours-tcp")
    s.add("small_rps", 3.0)
    s.add("small_rps", 1.0)
    s.add("small_rps", 2.0)
    assert s.median("small_rps") == 2.0
    print("selftest: ok")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", nargs="?", default="compare",
                    choices=["compare", "limits", "profile", "selftest", "tables"])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="wrk threads")
    ap.add_argument("--small-conns", type=int, default=64)
    ap.add_argument("--big-conns", type=int, default=16)
    ap.add_argument("--hs-conns", type=int, default=64)
    ap.add_argument("--idle", default="1000", help="idle-connection counts, comma separated")
    ap.add_argument("--peers", default=None,
                    help="default: ours-tcp,ours-http,nginx,haproxy,ghostunnel,relay (compare), "
                         "ours-tcp,nginx,haproxy (profile; ghostunnel and relay on request)")
    ap.add_argument("--variant", action="append", default=[],
                    help="extra ours peer: NAME:tcp|http:[BINARY]:[KEY=V,...] (experiments)")
    ap.add_argument("--parts", default="strace,callgrind,dhat,perf",
                    help="profile: which parts, comma separated")
    ap.add_argument("--dhat-conns", type=int, default=200, help="profile: idle conns under dhat")
    ap.add_argument("--port-base", type=int, default=21000)
    ap.add_argument("--no-build", action="store_true", help="use the existing release binary")
    ap.add_argument("--json", type=Path, help="tables: a results .json of an earlier run")
    ap.add_argument("--keep", action="store_true", help="keep the temporary work directory")
    args = ap.parse_args()
    if args.peers is None:
        args.peers = ("ours-tcp,nginx,haproxy" if args.command == "profile"
                      else "ours-tcp,ours-http,nginx,haproxy,ghostunnel,relay")
    if args.command == "selftest":
        return selftest()
    if args.command == "tables":
        return tables(args.json)
    if args.command == "compare":
        return cmd_compare(args)
    from harness import limits, profile  # noqa: PLC0415
    return limits.main(args) if args.command == "limits" else profile.main(args)


if __name__ == "__main__":
    sys.exit(main())
