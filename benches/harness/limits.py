"""The physical limits of this machine: what the crypto alone allows (`openssl speed`, the same
OpenSSL 3 that nginx and HAProxy use; rustls uses aws-lc, measured by the criterion benches),
and the plaintext path without any proxy."""

from __future__ import annotations

import argparse
import datetime as dt
import re
import shutil
import subprocess
from pathlib import Path

from . import load, procs
from .peers import start_backend

HERE = Path(__file__).resolve().parent.parent


def _speed(args: list[str]) -> str:
    out = subprocess.run(["openssl", "speed", "-seconds", "3", *args], capture_output=True,
                         text=True, timeout=600)
    return out.stdout


def aes(multi: int) -> dict[str, float]:
    """MB/s at a 16 KiB block (a full TLS record) for AES-128-GCM and AES-256-GCM."""
    res = {}
    for alg in ("aes-128-gcm", "aes-256-gcm"):
        extra = ["-multi", str(multi)] if multi > 1 else []
        text = _speed([*extra, "-bytes", "16384", "-evp", alg])
        line = next(ln for ln in text.splitlines() if ln.startswith(alg.upper()))
        val = line.split()[-1].rstrip("k")
        res[alg] = float(val) * 1000 / 1e6  # openssl prints 1000s of bytes per second
    return res


def ecc() -> dict[str, float]:
    """Operations per second on one core: ECDSA P-256 sign and verify, X25519 derive."""
    res = {}
    text = _speed(["ecdsap256"])
    m = re.search(r"256 bits ecdsa \(nistp256\)\s+\S+s\s+\S+s\s+([\d.]+)\s+([\d.]+)", text)
    if m:
        res["ecdsa_p256_sign"] = float(m.group(1))
        res["ecdsa_p256_verify"] = float(m.group(2))
    text = _speed(["ecdhx25519"])
    m = re.search(r"253 bits ecdh \(X25519\)\s+\S+s\s+([\d.]+)", text)
    if m:
        res["x25519"] = float(m.group(1))
    return res


def handshake_ceiling(e: dict[str, float], cores: int) -> float:
    """Full mutual-TLS 1.3 handshakes/s the public-key crypto alone allows on `cores`, counting
    both ends: each side signs once (CertificateVerify), verifies twice (the peer's leaf against
    the CA, and its CertificateVerify), and does two X25519 scalar multiplications (key share and
    shared secret)."""
    per = (2 / e["ecdsa_p256_sign"] + 4 / e["ecdsa_p256_verify"] + 4 / e["x25519"])
    return cores / per


def main(args: argparse.Namespace) -> int:
    started = dt.datetime.now(dt.timezone.utc)
    lines = [f"# Physical limits, {started:%Y-%m-%d %H:%M} UTC", "",
             "Command: `python3 benches/bench.py limits`", ""]
    one = aes(1)
    both = aes(2)
    e = ecc()
    lines += ["| primitive (OpenSSL 3, `openssl speed -seconds 3`) | 1 core | 2 cores |",
              "|---|---:|---:|"]
    for alg in one:
        lines.append(f"| {alg.upper()} MB/s at 16 KiB | {one[alg]:,.0f} | {both[alg]:,.0f} |")
    for k, v in e.items():
        lines.append(f"| {k.replace('_', ' ')} ops/s | {v:,.0f} | – |")
    if {"ecdsa_p256_sign", "ecdsa_p256_verify", "x25519"} <= e.keys():
        lines += ["", f"Handshake ceiling from the public-key operations alone (both ends of "
                      f"every handshake on this machine; 2 signs, 4 verifies, 4 X25519 per "
                      f"handshake): **{handshake_ceiling(e, 1):,.0f}/s on one core, "
                      f"{handshake_ceiling(e, 2):,.0f}/s on two**."]
        # Bulk: every byte is encrypted once and decrypted once between the sidecars.
        lines += [f"Bulk ceiling from AES-128-GCM alone (one seal + one open per byte, the "
                  f"one-core rate on each of two cores): **{one['aes-128-gcm']:,.0f} MB/s**. "
                  "The 2-core column is `-multi 2`; it is only meaningful on a quiet machine."]
    work = Path(procs.tempfile_dir())
    ports = procs.PortAllocator(args.port_base + 900)
    port = ports.take()
    backend = start_backend(work, port)
    try:
        lines += ["", "Direct path, wrk → backend nginx, no proxy (medians of "
                  f"{args.reps}, {args.seconds} s each):", "",
                  "| load | figure |", "|---|---:|"]
        small, big, hs = [], [], []
        for _ in range(args.reps):
            small.append(load.wrk(port, "/small", args.small_conns, args.seconds, args.threads))
            big.append(load.wrk(port, "/big", args.big_conns, args.seconds, args.threads))
            hs.append(load.wrk(port, "/small", args.hs_conns, args.seconds, args.threads,
                               close=True))
        med = lambda xs, f: sorted(f(x) for x in xs)[len(xs) // 2]  # noqa: E731
        lines += [f"| small req/s | {med(small, lambda r: r.rps):,.0f} |",
                  f"| small p50 / p99 ms | {med(small, lambda r: r.p50_ms):.2f} / "
                  f"{med(small, lambda r: r.p99_ms):.2f} |",
                  f"| 1 MiB MB/s | {med(big, lambda r: r.mb_s):,.0f} |",
                  f"| new TCP connections/s (`Connection: close`) | "
                  f"{med(hs, lambda r: r.rps):,.0f} |"]
    finally:
        procs.stop(backend)
        shutil.rmtree(work, ignore_errors=True)
    text = "\n".join(lines) + "\n"
    print(text)
    out = HERE / "results" / f"{started:%Y-%m-%d-%H%M}-limits.md"
    out.write_text(text)
    print(f"wrote {out}")
    return 0
