"""Throwaway P-256 PKI made with the openssl CLI, shared by every peer of a run.

One mesh CA signs the outbound (client) and inbound (server) leaves, a leaf with a wrong SAN,
and a second, rogue CA signs a client and a server leaf that otherwise look right. Everything
lives in a temporary directory that the harness deletes; nothing is ever written to the repo.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

SERVER_NAME = "backend.default.svc.cluster.local"
SERVER_URI = "spiffe://cluster.local/ns/default/sa/backend"
CLIENT_NAME = "frontend.default.svc.cluster.local"
CLIENT_URI = "spiffe://cluster.local/ns/default/sa/frontend"
WRONG_NAME = "other.default.svc.cluster.local"


@dataclass(frozen=True)
class Leaf:
    """A leaf certificate, its key, and the two concatenated (HAProxy's `crt` format)."""

    cert: Path
    key: Path
    combined: Path


@dataclass(frozen=True)
class Pki:
    """Every file a run needs."""

    ca: Path
    server: Leaf
    client: Leaf
    wrong_san_server: Leaf
    rogue_ca: Path
    rogue_client: Leaf
    rogue_server: Leaf


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _make_ca(d: Path, name: str) -> tuple[Path, Path]:
    key, cert = d / f"{name}.key", d / f"{name}.pem"
    _openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", str(key), cwd=d)
    _openssl(
        "req", "-x509", "-new", "-key", str(key), "-sha256", "-days", "2",
        "-subj", f"/CN={name}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        "-addext", "subjectKeyIdentifier=hash",
        "-out", str(cert), cwd=d,
    )
    return cert, key


def _make_leaf(d: Path, name: str, ca: tuple[Path, Path], dns: str, uri: str) -> Leaf:
    key, csr, cert = d / f"{name}.key", d / f"{name}.csr", d / f"{name}.pem"
    ext = d / f"{name}.ext"
    ext.write_text(
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature\n"
        "extendedKeyUsage=serverAuth,clientAuth\n"
        "authorityKeyIdentifier=keyid\n"
        f"subjectAltName=DNS:{dns},URI:{uri}\n"
    )
    # PKCS#8 keys: rustls-pemfile, Go, nginx and HAProxy all read them.
    _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
             "-out", str(key), cwd=d)
    _openssl("req", "-new", "-key", str(key), "-subj", f"/CN={dns}", "-out", str(csr), cwd=d)
    _openssl(
        "x509", "-req", "-in", str(csr), "-CA", str(ca[0]), "-CAkey", str(ca[1]),
        "-CAcreateserial", "-days", "1", "-sha256", "-extfile", str(ext), "-out", str(cert),
        cwd=d,
    )
    combined = d / f"{name}.combined.pem"
    combined.write_text(cert.read_text() + key.read_text())
    return Leaf(cert=cert, key=key, combined=combined)


def make_pki(d: Path) -> Pki:
    """Creates the CA, the rogue CA and every leaf under `d`."""
    d.mkdir(parents=True, exist_ok=True)
    ca = _make_ca(d, "mesh-ca")
    rogue = _make_ca(d, "rogue-ca")
    pki = Pki(
        ca=ca[0],
        server=_make_leaf(d, "server", ca, SERVER_NAME, SERVER_URI),
        client=_make_leaf(d, "client", ca, CLIENT_NAME, CLIENT_URI),
        wrong_san_server=_make_leaf(d, "wrong-san", ca, WRONG_NAME,
                                    "spiffe://cluster.local/ns/default/sa/other"),
        rogue_ca=rogue[0],
        rogue_client=_make_leaf(d, "rogue-client", rogue, CLIENT_NAME, CLIENT_URI),
        rogue_server=_make_leaf(d, "rogue-server", rogue, SERVER_NAME, SERVER_URI),
    )
    # nginx workers drop to `nobody`: the throwaway keys must be readable by them.
    d.chmod(0o755)
    for f in d.iterdir():
        f.chmod(0o644)
    return pki
