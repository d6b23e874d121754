"""The backend and the four sidecar implementations, each as an inbound and an outbound sidecar.

Every peer gets the same certificates, TLS 1.3 only, the X25519 group, AES-128-GCM where the
peer lets us choose (Go's TLS 1.3 suites are fixed; it picks AES-128-GCM on AES-NI machines), no
session tickets and no session cache, and its own default worker layout for the 2 cores
(nginx `worker_processes auto`, HAProxy's default `nbthread`, Go's GOMAXPROCS, tokio's default).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from . import procs
from .certs import SERVER_NAME, Leaf, Pki

SMALL_BODY = b"x" * 127 + b"\n"
BIG_SIZE = 1 << 20
CIPHER = "TLS_AES_128_GCM_SHA256"
GROUP = "X25519"
# The hard RLIMIT_NOFILE here is 20000 (and cannot be raised): two fds per proxied connection.
MAX_CONNS = 9600


@dataclass(frozen=True)
class Side:
    """One sidecar to start: where it listens, where it sends, and with which identity."""

    listen: int
    target: int
    leaf: Leaf
    ca: Path


def _nginx_main(work: Path, name: str, body: str, workers: str = "auto") -> Path:
    conf = work / f"{name}.nginx.conf"
    # Under valgrind (the profiler), one process that does the work: forked workers do not
    # leave their callgrind/dhat output behind.
    master = "off" if procs.WRAP else "on"
    workers = "1" if procs.WRAP else workers
    conf.write_text(f"""
load_module /usr/lib/nginx/modules/ngx_stream_module.so;
daemon off;
master_process {master};
worker_processes {workers};
worker_rlimit_nofile {MAX_CONNS * 2 + 200};
pid {work}/{name}.pid;
error_log {work}/{name}.error.log warn;
events {{ worker_connections {MAX_CONNS}; multi_accept on; }}
{body}
""")
    return conf


def start_backend(work: Path, port: int) -> procs.Proc:
    """nginx serving /small (128 bytes) and /big (1 MiB) over plain HTTP/1.1 on loopback."""
    docroot = work / "www"
    docroot.mkdir(exist_ok=True)
    (docroot / "small").write_bytes(SMALL_BODY)
    (docroot / "big").write_bytes(os.urandom(BIG_SIZE))
    docroot.chmod(0o755)
    for f in docroot.iterdir():
        f.chmod(0o644)
    conf = _nginx_main(work, "backend", f"""
http {{
  access_log off;
  sendfile on; tcp_nopush on; tcp_nodelay on;
  keepalive_timeout 600s; keepalive_requests 100000000;
  default_type application/octet-stream;
  server {{
    listen 127.0.0.1:{port} backlog=4096 reuseport;
    root {docroot};
    location / {{ }}
  }}
}}
""", workers="1")
    # One worker: the backend should cost the same for every peer, and stay cheap.
    p = procs.start("backend", ["nginx", "-c", str(conf)], work)
    procs.wait_listening(port, p)
    return p


class Peer:
    """A sidecar implementation: knows how to start its inbound and its outbound side."""

    name = "peer"
    # A limit of the machine rather than a sidecar (no TLS): checked for intact bodies only, and
    # left out of the ratios.
    limit = False

    def start_inbound(self, work: Path, tag: str, side: Side) -> procs.Proc:
        raise NotImplementedError

    def start_outbound(self, work: Path, tag: str, side: Side) -> procs.Proc:
        raise NotImplementedError

    def available(self) -> str | None:
        """None when the peer can run here, else why not."""
        return None


class Nginx(Peer):
    """nginx stream module: `ssl_verify_client on` in, `proxy_ssl` with a client cert out."""

    name = "nginx"

    def start_inbound(self, work: Path, tag: str, side: Side) -> procs.Proc:
        conf = _nginx_main(work, tag, f"""
stream {{
  server {{
    listen 127.0.0.1:{side.listen} ssl backlog=4096;
    ssl_certificate {side.leaf.cert};
    ssl_certificate_key {side.leaf.key};
    ssl_client_certificate {side.ca};
    ssl_verify_client on;
    ssl_verify_depth 1;
    ssl_protocols TLSv1.3;
    ssl_session_cache off;
    ssl_session_tickets off;
    ssl_conf_command Ciphersuites {CIPHER};
    ssl_conf_command Groups {GROUP};
    proxy_pass 127.0.0.1:{side.target};
  }}
}}
""")
        p = procs.start(tag, ["nginx", "-c", str(conf)], work)
        procs.wait_listening(side.listen, p)
        return p

    def start_outbound(self, work: Path, tag: str, side: Side) -> procs.Proc:
        conf = _nginx_main(work, tag, f"""
stream {{
  server {{
    listen 127.0.0.1:{side.listen} backlog=4096;
    proxy_pass 127.0.0.1:{side.target};
    proxy_ssl on;
    proxy_ssl_certificate {side.leaf.cert};
    proxy_ssl_certificate_key {side.leaf.key};
    proxy_ssl_trusted_certificate {side.ca};
    proxy_ssl_verify on;
    proxy_ssl_verify_depth 1;
    proxy_ssl_name {SERVER_NAME};
    proxy_ssl_server_name on;
    proxy_ssl_protocols TLSv1.3;
    proxy_ssl_session_reuse off;
    proxy_ssl_conf_command Ciphersuites {CIPHER};
    proxy_ssl_conf_command Groups {GROUP};
  }}
}}
""")
        p = procs.start(tag, ["nginx", "-c", str(conf)], work)
        procs.wait_listening(side.listen, p)
        return p


class Relay(Peer):
    """The kernel's share of two extra hops: an nginx stream pair relaying plain TCP (no TLS),
    one worker each, like one data-path thread per sidecar of ours, reading up to 64 KiB per
    call like ours. Not a sidecar (it does no mTLS): a limit, for the cost any relay pair pays
    in the kernel."""

    name = "relay"
    limit = True

    def _start(self, work: Path, tag: str, side: Side) -> procs.Proc:
        conf = _nginx_main(work, tag, f"""
stream {{
  server {{
    listen 127.0.0.1:{side.listen} backlog=4096;
    proxy_buffer_size 64k;
    proxy_pass 127.0.0.1:{side.target};
  }}
}}
""", workers="1")
        p = procs.start(tag, ["nginx", "-c", str(conf)], work)
        procs.wait_listening(side.listen, p)
        return p

    def start_inbound(self, work: Path, tag: str, side: Side) -> procs.Proc:
        return self._start(work, tag, side)

    def start_outbound(self, work: Path, tag: str, side: Side) -> procs.Proc:
        return self._start(work, tag, side)


def _haproxy_global(work: Path, tag: str) -> str:
    return f"""
global
  maxconn {MAX_CONNS}
  tune.ssl.cachesize 0
  ssl-default-bind-options ssl-min-ver TLSv1.3 no-tls-tickets
  ssl-default-bind-ciphersuites {CIPHER}
  ssl-default-server-options ssl-min-ver TLSv1.3 no-tls-tickets
  ssl-default-server-ciphersuites {CIPHER}
  stats socket {work}/{tag}.sock mode 600 level admin
defaults
  mode tcp
  maxconn {MAX_CONNS}
  timeout connect 5s
  timeout client 600s
  timeout server 600s
"""


class Haproxy(Peer):
    """HAProxy `mode tcp`: `verify required` on the bind, the client cert on the server line."""

    name = "haproxy"

    def _start(self, work: Path, tag: str, listen: int, body: str) -> procs.Proc:
        conf = work / f"{tag}.haproxy.cfg"
        conf.write_text(_haproxy_global(work, tag) + body)
        p = procs.start(tag, ["haproxy", "-db", "-f", str(conf)], work)
        procs.wait_listening(listen, p)
        return p

    def start_inbound(self, work: Path, tag: str, side: Side) -> procs.Proc:
        return self._start(work, tag, side.listen, f"""
listen inbound
  bind 127.0.0.1:{side.listen} ssl crt {side.leaf.combined} ca-file {side.ca} verify required curves {GROUP}
  server app 127.0.0.1:{side.target}
""")

    def start_outbound(self, work: Path, tag: str, side: Side) -> procs.Proc:
        return self._start(work, tag, side.listen, f"""
listen outbound
  bind 127.0.0.1:{side.listen}
  server peer 127.0.0.1:{side.target} ssl verify required ca-file {side.ca} crt {side.leaf.combined} verifyhost {SERVER_NAME} sni str({SERVER_NAME}) no-ssl-reuse
""")


def ghostunnel_bin() -> Path:
    for cand in (os.environ.get("GHOSTUNNEL"), "/work/benchtools/bin/ghostunnel",
                 str(Path.home() / "go/bin/ghostunnel")):
        if cand and Path(cand).is_file():
            return Path(cand)
    return Path("ghostunnel")


class Ghostunnel(Peer):
    """ghostunnel server (`--allow-all` = any cert from the CA) and client modes."""

    name = "ghostunnel"
    # The go.mod of ghostunnel says go 1.22, so ML-KEM is already off; say it anyway.
    env = {"GODEBUG": "tlsmlkem=0"}

    def available(self) -> str | None:
        b = ghostunnel_bin()
        return None if b.is_file() else "ghostunnel not installed (run benches/install.sh)"

    def start_inbound(self, work: Path, tag: str, side: Side) -> procs.Proc:
        p = procs.start(tag, [
            str(ghostunnel_bin()), "server", "--listen", f"127.0.0.1:{side.listen}",
            "--target", f"127.0.0.1:{side.target}", "--cert", str(side.leaf.cert),
            "--key", str(side.leaf.key), "--cacert", str(side.ca), "--allow-all",
            "--quiet=conns", "--quiet=handshake-errs", "--shutdown-timeout=1s",
        ], work, env=self.env)
        procs.wait_listening(side.listen, p)
        return p

    def start_outbound(self, work: Path, tag: str, side: Side) -> procs.Proc:
        p = procs.start(tag, [
            str(ghostunnel_bin()), "client", "--listen", f"127.0.0.1:{side.listen}",
            "--target", f"127.0.0.1:{side.target}", "--cert", str(side.leaf.cert),
            "--key", str(side.leaf.key), "--cacert", str(side.ca),
            "--override-server-name", SERVER_NAME,
            "--quiet=conns", "--quiet=handshake-errs", "--shutdown-timeout=1s",
        ], work, env=self.env)
        procs.wait_listening(side.listen, p)
        return p


def all_peers(ours: list[Peer]) -> list[Peer]:
    return [*ours, Nginx(), Haproxy(), Ghostunnel(), Relay()]
