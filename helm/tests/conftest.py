"""Helpers for the chart tests: render with the pinned helm, parse, find containers.

Tools come from scripts/ci-deps/deploy.sh (helm via `go install`, kubernetes-validate via pip).
A missing tool fails the test under CI=true and skips it loudly otherwise.
"""

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "enclaveid"
FIXTURES = Path(__file__).resolve().parent / "fixtures"
KUBE_VERSION = "1.37.0"
MODES = ["microk8s", "aks", "kata-cc"]
INSTALL_HINT = "install it with: SUDO= bash scripts/ci-deps/deploy.sh"


def find_tool(name):
    """The tool's path, looking in $(go env GOPATH)/bin too (where go install puts helm)."""
    path = shutil.which(name)
    if path:
        return path
    go = shutil.which("go") or "/usr/local/go/bin/go"
    try:
        gopath = subprocess.run([go, "env", "GOPATH"], capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        gopath = ""
    candidate = Path(gopath or Path.home() / "go") / "bin" / name
    if candidate.exists():
        return str(candidate)
    message = f"{name} not found; {INSTALL_HINT}"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)
    return None


@pytest.fixture(scope="session")
def helm():
    return find_tool("helm")


@pytest.fixture(scope="session")
def kubernetes_validate():
    """The validator as a command, run as a module of this interpreter (no PATH shims needed)."""
    import importlib.util
    import sys

    if importlib.util.find_spec("kubernetes_validate") is None:
        message = f"kubernetes-validate is not installed for {sys.executable}; {INSTALL_HINT}"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return [sys.executable, "-m", "kubernetes_validate"]


def mode_args(mode, extra=()):
    """Values an operator would pass for each mode (digests from the test images file)."""
    args = ["--set", f"deployment={mode}"]
    if mode != "microk8s":
        args += ["-f", str(FIXTURES / "images-test.yaml"), "-f", str(FIXTURES / "aks.yaml")]
    if mode == "kata-cc":
        policy = str(FIXTURES / "kata-policy.rego")
        args += ["--set-file", f"kataCC.policy={policy}", "--set-file", f"tests.kataPolicy={policy}"]
        args += ["--set-file", f"vault.releasePolicy={FIXTURES / 'release-policy.json'}"]
    return args + list(extra)


def helm_template(helm, args, expect_ok=True):
    cmd = [helm, "template", "t", str(CHART), "--namespace", "prod", "--kube-version", KUBE_VERSION]
    proc = subprocess.run(cmd + list(args), capture_output=True, text=True, check=False)
    if expect_ok:
        assert proc.returncode == 0, f"helm template {' '.join(args)} failed:\n{proc.stderr}"
    else:
        assert proc.returncode != 0, f"helm template {' '.join(args)} should have failed"
    return proc


def render(helm, mode, extra=()):
    proc = helm_template(helm, mode_args(mode, extra))
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def render_error(helm, mode, extra=()):
    return helm_template(helm, mode_args(mode, extra), expect_ok=False).stderr


def one(docs, kind, name_suffix=""):
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"].endswith(name_suffix)]
    assert len(found) == 1, f"want one {kind} *{name_suffix}, got {[d['metadata']['name'] for d in found]}"
    return found[0]


def pod_spec(docs):
    return one(docs, "Deployment")["spec"]["template"]["spec"]


def all_pod_specs(docs):
    specs = [d["spec"]["template"]["spec"] for d in docs if d["kind"] == "Deployment"]
    specs += [d["spec"] for d in docs if d["kind"] == "Pod"]
    return specs


def containers(spec):
    """Every container of a pod spec, init containers first, as (list name, container)."""
    return [("initContainers", c) for c in spec.get("initContainers", [])] + [
        ("containers", c) for c in spec.get("containers", [])
    ]


def by_name(spec, name):
    for _, c in containers(spec):
        if c["name"] == name:
            return c
    raise AssertionError(f"no container {name}: {[c['name'] for _, c in containers(spec)]}")


def exec_probe(container, kind):
    """The command of a container's exec probe (asserting it is one)."""
    probe = container[kind]
    assert set(probe) & {"httpGet", "tcpSocket", "grpc"} == set(), f"{container['name']} {kind}: {probe}"
    return probe["exec"]["command"]


def mounts(container):
    return {m["name"]: m for m in container.get("volumeMounts", [])}


def cargo_binary(name):
    """A workspace binary built by scripts/test.d/10-cargo.sh (or by hand); skip or fail if absent."""
    for base in filter(None, [os.environ.get("CARGO_TARGET_DIR"), str(ROOT / "target")]):
        for profile in ("debug", "release"):
            candidate = Path(base) / profile / name
            if candidate.exists():
                return candidate
    message = f"{name} not built; run `cargo build -p {name}` (CI: scripts/test.d/10-cargo.sh builds it)"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)
    return None
