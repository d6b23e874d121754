"""The admin listeners (proxy 15000, attest 15010) are loopback-only unless scraping is opted in.

DESIGN.md: the proxy's admin port is loopback. It serves /config and POST /shutdown besides
/metrics, so the chart binds it (and attest's) to 127.0.0.1, probes both with exec probes that
run the container's own binary, and exposes them on the pod IP only with `metrics.expose`,
admitting only `metrics.from` in the NetworkPolicy.
"""

import subprocess

import pytest
import yaml

from conftest import (
    KUBE_VERSION,
    MODES,
    all_pod_specs,
    by_name,
    containers,
    exec_probe,
    helm_template,
    mode_args,
    one,
    pod_spec,
    render,
    render_error,
)

PROMETHEUS = ["--set-json", 'metrics.from=[{"namespaceSelector": {"matchLabels": '
              '{"kubernetes.io/metadata.name": "monitoring"}}}]']


def arg(args, flag):
    return args[args.index(flag) + 1]


@pytest.mark.parametrize("mode", MODES)
def test_admin_listeners_bind_loopback_and_are_probed_by_exec(helm, mode):
    docs = render(helm, mode)
    for cm in [d for d in docs if d["kind"] == "ConfigMap" and "proxy.yaml" in d.get("data", {})]:
        assert yaml.safe_load(cm["data"]["proxy.yaml"])["admin"]["listen"] == "127.0.0.1:15000", cm["metadata"]["name"]
    spec = pod_spec(docs)
    assert arg(by_name(spec, "attest")["args"], "--admin") == "127.0.0.1:15010"
    for pod in all_pod_specs(docs):
        for _, c in containers(pod):
            for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
                if kind in c and c["name"] in ("proxy", "attest"):
                    command = exec_probe(c, kind)
                    assert command[0] == f"/usr/local/bin/enclaveid-{c['name']}"
                    assert command[1:3] == ["probe", "--url"]
                    assert command[3].startswith("http://127.0.0.1:"), command
                    # The binary gives up before the kubelet does, so its reason is recorded.
                    assert int(command[command.index("--timeout-ms") + 1]) < c[kind]["timeoutSeconds"] * 1000
            # Nothing declares an admin port for other pods to find.
            names = {p.get("name") for p in c.get("ports", [])}
            assert not names & {"proxy-admin", "attest-admin"}, c["name"]
    proxy, attest = by_name(spec, "proxy"), by_name(spec, "attest")
    assert exec_probe(proxy, "readinessProbe")[3] == "http://127.0.0.1:15000/ready"
    assert exec_probe(proxy, "livenessProbe")[3] == "http://127.0.0.1:15000/live"
    assert exec_probe(attest, "readinessProbe")[3] == "http://127.0.0.1:15010/ready"
    assert exec_probe(attest, "livenessProbe")[3] == "http://127.0.0.1:15010/metrics"
    [rule] = one(docs, "NetworkPolicy")["spec"]["ingress"]
    assert not {p["port"] for p in rule["ports"]} & {15000, 15010}
    annotations = one(docs, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert "prometheus.io/scrape" not in annotations


def test_probe_timeouts_follow_the_value(helm):
    spec = pod_spec(render(helm, "microk8s", ["--set", "probes.timeoutSeconds=5", "--set", "probes.startupSeconds=300"]))
    proxy = by_name(spec, "proxy")
    assert proxy["startupProbe"]["failureThreshold"] == 300
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert proxy[kind]["timeoutSeconds"] == 5
        assert exec_probe(proxy, kind)[-2:] == ["--timeout-ms", "4800"]
    err = render_error(helm, "microk8s", ["--set", "probes.timeoutSeconds=0"])
    assert "timeoutSeconds" in err, err


def test_metrics_expose_needs_named_peers(helm):
    err = render_error(helm, "aks", ["--set", "metrics.expose=true"])
    assert "metrics.from is required when metrics.expose is true" in err, err
    # Without a NetworkPolicy there is nothing to name peers in.
    docs = render(helm, "microk8s", ["--set", "metrics.expose=true", "--set", "networkPolicy.enabled=false"])
    assert not [d for d in docs if d["kind"] == "NetworkPolicy"]


@pytest.mark.parametrize("mode", MODES)
def test_metrics_expose_opens_the_admin_ports_to_prometheus_only(helm, kubernetes_validate, tmp_path, mode):
    args = mode_args(mode, ["--set", "metrics.expose=true"] + PROMETHEUS)
    proc = helm_template(helm, args)
    docs = [d for d in yaml.safe_load_all(proc.stdout) if d]
    cfg = yaml.safe_load(one(docs, "ConfigMap", "enclaveid-proxy")["data"]["proxy.yaml"])
    assert cfg["admin"]["listen"] == "0.0.0.0:15000"
    spec = pod_spec(docs)
    assert arg(by_name(spec, "attest")["args"], "--admin") == "0.0.0.0:15010"
    assert {"name": "proxy-admin", "containerPort": 15000, "protocol": "TCP"} in by_name(spec, "proxy")["ports"]
    assert {"name": "attest-admin", "containerPort": 15010, "protocol": "TCP"} in by_name(spec, "attest")["ports"]
    # Probes stay exec probes: they work on either bind address.
    exec_probe(by_name(spec, "proxy"), "readinessProbe")
    # The helm test pod's own proxy is never scraped: its admin stays on loopback.
    test_cfg = yaml.safe_load(one(docs, "ConfigMap", "-test-proxy")["data"]["proxy.yaml"])
    assert test_cfg["admin"]["listen"] == "127.0.0.1:15000"
    inbound, admin = one(docs, "NetworkPolicy")["spec"]["ingress"]
    assert sorted(p["port"] for p in inbound["ports"]) == [15006, 15443]
    assert "from" not in inbound
    assert sorted(p["port"] for p in admin["ports"]) == [15000, 15010]
    assert admin["from"] == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]
    annotations = one(docs, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == "15000"
    # The Service still carries only the mesh and attestation ports.
    assert {p["port"] for p in one(docs, "Service")["spec"]["ports"]} == {15006, 15443}
    out = tmp_path / "render.yaml"
    out.write_text(proc.stdout)
    check = subprocess.run(kubernetes_validate + ["--strict", "-k", KUBE_VERSION, str(out)], capture_output=True,
                           text=True, check=False)
    assert check.returncode == 0, check.stdout + check.stderr


def test_pod_monitor_is_opt_in_and_needs_expose(helm):
    assert not [d for d in render(helm, "aks") if d["kind"] == "PodMonitor"]
    err = render_error(helm, "aks", ["--set", "metrics.podMonitor.enabled=true"])
    assert "metrics.podMonitor.enabled needs metrics.expose=true" in err, err
    docs = render(helm, "aks", ["--set", "metrics.expose=true", "--set", "metrics.podMonitor.enabled=true",
                                "--set", "metrics.podMonitor.labels.release=prom"] + PROMETHEUS)
    monitor = one(docs, "PodMonitor")
    assert monitor["metadata"]["labels"]["release"] == "prom"
    assert [e["port"] for e in monitor["spec"]["podMetricsEndpoints"]] == ["proxy-admin", "attest-admin"]
    workload = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert all(workload.get(k) == v for k, v in monitor["spec"]["selector"]["matchLabels"].items())
