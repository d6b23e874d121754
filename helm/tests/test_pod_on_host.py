"""Run the rendered microk8s pod and its `helm test` pod on this host, with the real binaries.

The containers' args, the proxy ConfigMaps and the test pod's curl script are taken from the
render and executed as written; only what a pod network provides is replaced: tmpfs and Secret
mount paths point at temporary directories, 0.0.0.0 listeners bind 127.0.0.1, and the test
proxy's upstream `<svc>.<ns>.svc.cluster.local:PORT` dials 127.0.0.1:PORT (server_name is kept,
so the workload's certificate SAN is still checked). The app is an HTTP server in this process.
Processes are started by the test and stopped by PID.
"""

import http.server
import json
import os
import shutil
import socket
import subprocess
import tempfile
import threading
from pathlib import Path

import pytest
import yaml

from conftest import by_name, cargo_binary, helm_template, one

BODY = b"hello through the mesh\n"


class App(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (http.server's naming)
        self.send_response(200)
        self.send_header("Content-Length", str(len(BODY)))
        self.end_headers()
        self.wfile.write(BODY)

    def log_message(self, *args):
        pass


def free_port():
    # The proxy needs its ports in its config file, so they are picked before it starts.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Proxy:
    """An enclaveid-proxy process; ready once it logs `listening` (no polling, no sleeps)."""

    def __init__(self, binary, config, env):
        self.proc = subprocess.Popen(
            [str(binary)],
            env={**env, "ENCLAVEID_PROXY_CONFIG": str(config), "LOG_FORMAT": "json", "RUST_LOG": "info"},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines = []
        self.ready = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append(line)
            try:
                event = json.loads(line)
            except ValueError:
                continue
            # tracing's JSON layer puts the message at the top level or under "fields".
            if "listening" in (event.get("message"), event.get("fields", {}).get("message")):
                self.ready.set()
        self.ready.set()

    def wait_ready(self):
        assert self.ready.wait(30) and self.proc.poll() is None, "proxy did not start:\n" + "".join(self.lines)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


def localize(config_text, admin_port=None):
    """The pod network replaced by loopback: 0.0.0.0 -> 127.0.0.1, cluster DNS -> 127.0.0.1."""
    cfg = yaml.safe_load(config_text)
    if admin_port is not None:
        cfg["admin"]["listen"] = f"127.0.0.1:{admin_port}"
    cfg["admin"]["listen"] = cfg["admin"]["listen"].replace("0.0.0.0", "127.0.0.1")
    for listener in cfg.get("inbound", []):
        listener["listen"] = listener["listen"].replace("0.0.0.0", "127.0.0.1")
    for listener in cfg.get("outbound", []):
        host, port = listener["upstream"].rsplit(":", 1)
        listener.setdefault("server_name", host)
        listener["upstream"] = f"127.0.0.1:{port}"
    return cfg


def run_args(binary, args, mounts):
    """Runs a rendered container's args with its mount paths mapped to local directories."""
    mapped = []
    for arg in args:
        for pod_path, local in mounts.items():
            arg = arg.replace(pod_path, str(local))
        mapped.append(arg)
    proc = subprocess.run([str(binary)] + mapped, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, f"{binary.name} {' '.join(mapped)}:\n{proc.stdout}{proc.stderr}"


@pytest.fixture
def shm_dir():
    # The key directories must be a tmpfs, as in the pod (init refuses anything else).
    base = Path("/dev/shm") if Path("/dev/shm").is_dir() else None
    if base is None:
        pytest.skip("no /dev/shm tmpfs on this machine")
    path = Path(tempfile.mkdtemp(prefix="enclaveid-helm-", dir=base))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_rendered_pod_and_helm_test_run_for_real(helm, tmp_path, shm_dir):
    init_bin = cargo_binary("enclaveid-init")
    proxy_bin = cargo_binary("enclaveid-proxy")
    curl = shutil.which("curl")
    assert curl, "curl is needed (scripts/ci-deps/base.sh)"

    app = http.server.ThreadingHTTPServer(("127.0.0.1", 0), App)
    threading.Thread(target=app.serve_forever, daemon=True).start()
    inbound, workload_admin, test_admin, outbound = (free_port() for _ in range(4))
    proxies = []
    try:
        args = [
            "--set", "deployment=microk8s",
            "--set", "proxy.inbound[0].name=api",
            "--set", f"proxy.inbound[0].port={inbound}",
            "--set", f"proxy.inbound[0].forward=127.0.0.1:{app.server_address[1]}",
            "--set", "proxy.inbound[0].protocol=http",
            "--set", f"proxy.adminPort={test_admin}",
            "--set", f"tests.outboundPort={outbound}",
        ]
        docs = [d for d in yaml.safe_load_all(helm_template(helm, args).stdout) if d]
        pod = one(docs, "Deployment")["spec"]["template"]["spec"]
        test_pod = one(docs, "Pod", "-test-mesh")["spec"]
        env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "TMPDIR")}

        # The operator's step (docs/deploy-microk8s.md): create the dev vault, then the Secret.
        vault = tmp_path / "dev-vault"
        vault.mkdir()
        subprocess.run([str(init_bin), "secrets", "--vault", f"dir:{vault}"], check=True, capture_output=True)

        # The workload pod: init-secrets, init-proxy, then the proxy with the rendered ConfigMap.
        tls = shm_dir / "workload"
        tls.mkdir()
        mounts = {"/var/run/enclaveid/dev-vault": vault, "/run/enclaveid/tls": tls}
        run_args(init_bin, by_name(pod, "init-secrets")["args"], mounts)
        run_args(init_bin, by_name(pod, "init-proxy")["args"], mounts)
        assert sorted(p.name for p in tls.iterdir()) == ["ca.pem", "cert.pem", "key.pem"]
        cfg = localize(one(docs, "ConfigMap", "enclaveid-proxy")["data"]["proxy.yaml"], workload_admin)
        cfg["tls"] = {k: str(tls / Path(v).name) for k, v in cfg["tls"].items()}
        (tmp_path / "proxy.yaml").write_text(yaml.safe_dump(cfg))
        proxies.append(Proxy(proxy_bin, tmp_path / "proxy.yaml", env))
        proxies[-1].wait_ready()

        # Without a client certificate the inbound port refuses: the app is reachable only via mTLS.
        plain = subprocess.run([curl, "-sk", "--max-time", "5", f"https://127.0.0.1:{inbound}/"], capture_output=True,
                               check=False)
        assert plain.returncode != 0 and BODY not in plain.stdout

        # The helm test pod: its own init-proxy and proxy, then its curl script, verbatim.
        test_tls = shm_dir / "test"
        test_tls.mkdir()
        run_args(init_bin, by_name(test_pod, "init-proxy")["args"],
                 {"/var/run/enclaveid/dev-vault": vault, "/run/enclaveid/tls": test_tls})
        test_cfg = localize(one(docs, "ConfigMap", "-test-proxy")["data"]["proxy.yaml"])
        test_cfg["tls"] = {k: str(test_tls / Path(v).name) for k, v in test_cfg["tls"].items()}
        (tmp_path / "test-proxy.yaml").write_text(yaml.safe_dump(test_cfg))
        test_proxy = Proxy(proxy_bin, tmp_path / "test-proxy.yaml", env)
        proxies.append(test_proxy)
        test_proxy.wait_ready()
        curl_container = by_name(test_pod, "curl")
        script = subprocess.run(curl_container["command"] + curl_container["args"], capture_output=True, timeout=60,
                                check=False)
        assert script.returncode == 0, script.stderr.decode()
        assert script.stdout == BODY
        # The script ends with POST /shutdown on the test proxy's admin port: it drains and exits 0.
        assert test_proxy.proc.wait(40) == 0, "".join(test_proxy.lines)
    finally:
        for proxy in proxies:
            proxy.stop()
        app.shutdown()
