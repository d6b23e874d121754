"""Correctness before timing: the path works, and each peer refuses what it must refuse.

For every peer: the plaintext path returns the backend's exact bytes; the inbound refuses a
client certificate from a rogue CA and a client with no certificate; the outbound refuses a
server with the wrong SAN and a server from a rogue CA; the inbound does not resume sessions
(so every new connection in the handshake test is a full handshake).
"""

from __future__ import annotations

import hashlib
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

from . import load, procs
from .certs import SERVER_NAME, Leaf, Pki
from .peers import SMALL_BODY, Peer, Side


@dataclass
class CheckResult:
    """Outcome of the checks for one peer."""

    peer: str
    passed: list[str]
    failed: list[str]
    tls: str = ""


def _client_ctx(ca: Path, leaf: Leaf | None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_verify_locations(str(ca))
    if leaf is not None:
        ctx.load_cert_chain(str(leaf.cert), str(leaf.key))
    return ctx


def _tls_get(port: int, ca: Path, leaf: Leaf | None, session: ssl.SSLSession | None = None,
             ctx: ssl.SSLContext | None = None) -> tuple[int, ssl.SSLSession | None, str, bool]:
    """GET /small over TLS 1.3 straight to an inbound; returns (status, session, suite, reused).
    Status 0 means the peer closed or failed the connection."""
    ctx = ctx or _client_ctx(ca, leaf)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
                ctx.wrap_socket(raw, server_hostname=SERVER_NAME, session=session) as s:
            s.sendall(b"GET /small HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
            suite = f"{s.version()} {s.cipher()[0]}"
            status = int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/") else 0
            return status, s.session, suite, s.session_reused
    except (OSError, ssl.SSLError, ValueError, IndexError):
        return 0, None, "", False


def run_checks(peer: Peer, work: Path, pki: Pki, ports: procs.PortAllocator, backend: int,
               inbound: int, outbound: int, big_sha: str) -> CheckResult:
    """Runs every check against the running pair (inbound, outbound) and a few extra sides."""
    res = CheckResult(peer=peer.name, passed=[], failed=[])

    def record(name: str, ok: bool) -> None:
        (res.passed if ok else res.failed).append(name)

    status, body = load.http_get(outbound, "/small")
    record("small body intact", status == 200 and body == SMALL_BODY)
    status, body = load.http_get(outbound, "/big")
    record("1 MiB body intact", status == 200 and hashlib.sha256(body).hexdigest() == big_sha)
    if peer.limit:
        res.tls = "no TLS: a limit, not a sidecar"
        return res

    status, _, suite, _ = _tls_get(inbound, pki.ca, pki.client)
    record("mesh client accepted by inbound", status == 200)
    res.tls = suite
    status, *_ = _tls_get(inbound, pki.ca, pki.rogue_client)
    record("rogue-CA client refused by inbound", status == 0)
    status, *_ = _tls_get(inbound, pki.ca, None)
    record("client without certificate refused by inbound", status == 0)

    # Full handshakes only: a second connection offering the first one's session must not resume.
    ctx = _client_ctx(pki.ca, pki.client)
    status, session, _, _ = _tls_get(inbound, pki.ca, pki.client, ctx=ctx)
    status2, _, _, reused = _tls_get(inbound, pki.ca, pki.client, session=session, ctx=ctx)
    record("inbound does not resume sessions", status == 200 and status2 == 200 and not reused)

    # The impostor is a real `openssl s_server -www` (it answers any GET with 200), so only the
    # outbound's own verification can refuse it; some peers (ours) will not even start an
    # inbound with a certificate that does not chain to their CA.
    for label, leaf in (("wrong-SAN server", pki.wrong_san_server),
                        ("rogue-CA server", pki.rogue_server)):
        i2, o2 = ports.take(), ports.take()
        tag = f"{peer.name}-check-{label.split()[0].lower()}"
        bad_in = procs.start(f"{tag}-impostor", [
            "openssl", "s_server", "-quiet", "-www", "-tls1_3", "-accept", f"127.0.0.1:{i2}",
            "-cert", str(leaf.cert), "-key", str(leaf.key)], work)
        try:
            procs.wait_listening(i2, bad_in)
            out2 = peer.start_outbound(work, f"{tag}-out", Side(o2, i2, pki.client, pki.ca))
            try:
                try:
                    status, _ = load.http_get(o2, "/small")
                except OSError:
                    status = 0
                record(f"{label} refused by outbound", status != 200)
            finally:
                procs.stop(out2)
        finally:
            procs.stop(bad_in)
    return res
