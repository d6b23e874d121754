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
import time
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


_NEXT_PORT = [20_000 + (os.getpid() * 7919 + int(time.time() * 1000)) % 12_000]


def free_port():
    """A free loopback port below the ephemeral range (32768+ on Linux), so no outgoing
    connection of a parallel process can take it between this check and the proxy's bind.
    The proxy needs its ports in its config file, so they are picked before it starts."""
    for _ in range(12_000):
        port = _NEXT_PORT[0]
        _NEXT_PORT[0] = 20_000 + (port - 20_000 + 1) % 12_000
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise AssertionError("no free port in 20000-31999")


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


def run_probe(container, kind, binaries):
    """Runs a rendered exec probe as the kubelet would, with the image path mapped to the build."""
    command = list(container[kind]["exec"]["command"])
    command[0] = str(binaries[command[0]])
    return subprocess.run(command, capture_output=True, text=True, timeout=container[kind]["timeoutSeconds"] + 10,
                          check=False)


def eventually_passes(container, kind, binaries, what, deadline_s=90):
    """Polls a rendered probe until it exits 0 (as the kubelet's periodSeconds would)."""
    end = time.monotonic() + deadline_s
    while True:
        proc = run_probe(container, kind, binaries)
        if proc.returncode == 0:
            return
        assert proc.returncode == 1, f"{kind}: exit {proc.returncode} is not a probe failure: {proc.stderr}"
        assert time.monotonic() < end, f"{what} {kind} still failing after {deadline_s}s: {proc.stderr}"
        time.sleep(0.25)


def test_rendered_exec_probes_against_the_real_binaries(helm, tmp_path, shm_dir):
    """The proxy's and attest's exec probes, verbatim from the render, against real processes
    whose admin listeners bind 127.0.0.1 as rendered: down = exit 1, up = exit 0."""
    init_bin = cargo_binary("enclaveid-init")
    proxy_bin = cargo_binary("enclaveid-proxy")
    attest_bin = cargo_binary("enclaveid-attest")
    binaries = {"/usr/local/bin/enclaveid-proxy": proxy_bin, "/usr/local/bin/enclaveid-attest": attest_bin}
    inbound, proxy_admin, attest_port, attest_admin = (free_port() for _ in range(4))
    args = [
        "--set", "deployment=microk8s",
        "--set-json", f'proxy.inbound=[{{"name": "api", "port": {inbound}, "forward": "127.0.0.1:8080"}}]',
        "--set", f"proxy.adminPort={proxy_admin}",
        "--set", f"attest.port={attest_port}",
        "--set", f"attest.adminPort={attest_admin}",
    ]
    docs = [d for d in yaml.safe_load_all(helm_template(helm, args).stdout) if d]
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    proxy_c, attest_c = by_name(pod, "proxy"), by_name(pod, "attest")
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "TMPDIR")}
    processes = []
    try:
        vault = tmp_path / "dev-vault"
        vault.mkdir()
        subprocess.run([str(init_bin), "secrets", "--vault", f"dir:{vault}"], check=True, capture_output=True)
        tls = shm_dir / "probes"
        tls.mkdir()
        mounts = {"/var/run/enclaveid/dev-vault": vault, "/run/enclaveid/tls": tls}
        run_args(init_bin, by_name(pod, "init-proxy")["args"], mounts)

        # Nothing listens yet: every probe fails with exit 1 (what keeps the app from starting).
        for container, kind in ((proxy_c, "startupProbe"), (proxy_c, "livenessProbe"), (attest_c, "readinessProbe")):
            proc = run_probe(container, kind, binaries)
            assert proc.returncode == 1, f"{container['name']} {kind} with nothing listening: {proc.returncode}"

        cfg = localize(one(docs, "ConfigMap", "enclaveid-proxy")["data"]["proxy.yaml"])
        assert cfg["admin"]["listen"] == f"127.0.0.1:{proxy_admin}", "rendered loopback, used as is"
        cfg["tls"] = {k: str(tls / Path(v).name) for k, v in cfg["tls"].items()}
        (tmp_path / "proxy.yaml").write_text(yaml.safe_dump(cfg))
        proxy = Proxy(proxy_bin, tmp_path / "proxy.yaml", env)
        processes.append(proxy.proc)
        proxy.wait_ready()
        for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
            eventually_passes(proxy_c, kind, binaries, "proxy")

        # attest serve with the rendered args (simulated provider in microk8s); only the pod-IP
        # listener becomes loopback, the admin address is used as rendered.
        attest_args = [a.replace("0.0.0.0:", "127.0.0.1:").replace("/run/enclaveid/tls", str(tls))
                       for a in attest_c["args"]]
        assert attest_args[attest_args.index("--admin") + 1] == f"127.0.0.1:{attest_admin}"
        attest = subprocess.Popen([str(attest_bin)] + attest_args, env={**env, "RUST_LOG": "warn"},
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        processes.append(attest)
        eventually_passes(attest_c, "livenessProbe", binaries, "attest")
        eventually_passes(attest_c, "readinessProbe", binaries, "attest")
        assert attest.poll() is None

        # Killed: liveness fails again (the kubelet would restart the container).
        attest.kill()
        attest.wait(10)
        assert run_probe(attest_c, "livenessProbe", binaries).returncode == 1
    finally:
        for proc in processes:
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)
