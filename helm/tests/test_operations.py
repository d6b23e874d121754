"""The chart as an operator runs it: disruption budget, spread, rollout, the `helm test` pod,
token automount, and values.schema.json covering every value.
"""

import json
import re
import subprocess

import pytest
import yaml

from conftest import (
    CHART,
    KUBE_VERSION,
    MODES,
    all_pod_specs,
    by_name,
    containers,
    helm_template,
    mode_args,
    mounts,
    one,
    pod_spec,
    render,
    render_error,
)


def kinds(docs, kind):
    return [d for d in docs if d["kind"] == kind]


def test_pdb_follows_replicas(helm):
    assert not kinds(render(helm, "aks"), "PodDisruptionBudget"), "one replica: a PDB would protect nothing"
    pdb = one(render(helm, "aks", ["--set", "replicaCount=3"]), "PodDisruptionBudget")
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow", "broken pods never block a drain"
    workload = one(render(helm, "aks", ["--set", "replicaCount=3"]), "Deployment")["spec"]["selector"]["matchLabels"]
    assert pdb["spec"]["selector"]["matchLabels"] == workload
    assert not kinds(render(helm, "aks", ["--set", "replicaCount=3", "--set", "podDisruptionBudget.enabled=false"]),
                     "PodDisruptionBudget")
    pdb = one(render(helm, "aks", ["--set", "replicaCount=3", "--set", "podDisruptionBudget.minAvailable=50%"]),
              "PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == "50%" and "maxUnavailable" not in pdb["spec"]


@pytest.mark.parametrize(
    "args,message",
    [
        (["--set", "podDisruptionBudget.minAvailable=3"], "podDisruptionBudget.minAvailable = 3 with replicaCount = 3"),
        (["--set", "podDisruptionBudget.maxUnavailable=0"], "podDisruptionBudget.maxUnavailable = 0"),
        (["--set", "podDisruptionBudget.minAvailable=1", "--set", "podDisruptionBudget.maxUnavailable=1"],
         "set minAvailable or maxUnavailable, not both"),
        (["--set", "podDisruptionBudget.minAvailable=lots"], "minAvailable"),
    ],
)
def test_pdb_refuses_budgets_that_block_drains(helm, args, message):
    err = render_error(helm, "aks", ["--set", "replicaCount=3"] + args)
    assert message in err, err


def test_default_spread_only_with_replicas_and_only_if_none_given(helm):
    assert "topologySpreadConstraints" not in pod_spec(render(helm, "microk8s"))
    spec = pod_spec(render(helm, "microk8s", ["--set", "replicaCount=3"]))
    spread = spec["topologySpreadConstraints"]
    assert [c["topologyKey"] for c in spread] == ["kubernetes.io/hostname", "topology.kubernetes.io/zone"]
    for c in spread:
        assert c["whenUnsatisfiable"] == "ScheduleAnyway", "soft: a single-zone CVM pool still schedules"
        assert c["matchLabelKeys"] == ["pod-template-hash"]
        assert c["labelSelector"]["matchLabels"]["app.kubernetes.io/component"] == "workload"
    own = ["--set", "replicaCount=3", "--set-json",
           'topologySpreadConstraints=[{"maxSkew": 2, "topologyKey": "kubernetes.io/hostname", '
           '"whenUnsatisfiable": "DoNotSchedule"}]']
    assert [c["maxSkew"] for c in pod_spec(render(helm, "microk8s", own))["topologySpreadConstraints"]] == [2]
    off = ["--set", "replicaCount=3", "--set", "defaultTopologySpread=false"]
    assert "topologySpreadConstraints" not in pod_spec(render(helm, "microk8s", off))


def test_strategy_passes_through(helm):
    dep = one(render(helm, "aks", ["--set", "strategy.rollingUpdate.maxUnavailable=0",
                                   "--set", "strategy.rollingUpdate.maxSurge=1"]), "Deployment")
    assert dep["spec"]["strategy"] == {"rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}}
    assert "strategy" not in one(render(helm, "aks"), "Deployment")["spec"]
    err = render_error(helm, "aks", ["--set", "strategy.type=BlueGreen"])
    assert "strategy" in err, err


def test_operator_render_validates(helm, kubernetes_validate, tmp_path):
    args = mode_args("aks", ["--set", "replicaCount=3", "--set", "strategy.rollingUpdate.maxUnavailable=0"])
    proc = helm_template(helm, args)
    assert {"PodDisruptionBudget", "Deployment"} <= {d["kind"] for d in yaml.safe_load_all(proc.stdout) if d}
    out = tmp_path / "render.yaml"
    out.write_text(proc.stdout)
    check = subprocess.run(kubernetes_validate + ["--strict", "-k", KUBE_VERSION, str(out)], capture_output=True,
                           text=True, check=False)
    assert check.returncode == 0, check.stdout + check.stderr


@pytest.mark.parametrize("mode", MODES)
def test_helm_test_pod_is_bounded_and_keyless(helm, mode):
    docs = render(helm, mode)
    pod = one(docs, "Pod", "-test-mesh")
    spec = pod["spec"]
    assert spec["activeDeadlineSeconds"] == 300, "a hung vault or mesh must not hang `helm test`"
    assert spec["restartPolicy"] == "Never"
    for _, c in containers(spec):
        assert c.get("resources", {}).get("requests"), f"{c['name']} has no requests"
        assert c["resources"].get("limits", {}).get("memory"), f"{c['name']} has no memory limit"
    curl = by_name(spec, "curl")
    assert set(mounts(curl)) == set(), "the curl container sees no volume at all"
    # Both hook objects are cleaned up when the test passes and replaced on the next run.
    for obj in (pod, one(docs, "ConfigMap", "-test-proxy")):
        assert obj["metadata"]["annotations"]["helm.sh/hook-delete-policy"] == "before-hook-creation,hook-succeeded"
    if mode != "microk8s":
        skipped = pod["metadata"]["annotations"]["azure.workload.identity/skip-containers"].split(";")
        assert set(skipped) == {"proxy", "curl"}, "only init-proxy gets the federated token"


@pytest.mark.parametrize("mode", MODES)
def test_no_kubernetes_api_token_anywhere(helm, mode):
    """Nothing in the pod talks to the Kubernetes API: no token on the SA or in any pod."""
    docs = render(helm, mode)
    assert one(docs, "ServiceAccount")["automountServiceAccountToken"] is False
    for spec in all_pod_specs(docs):
        assert spec["automountServiceAccountToken"] is False
        assert all(v.get("projected") is None for v in spec["volumes"]), "no projected token volume"


def test_every_container_has_resources(helm):
    for mode in MODES:
        for spec in all_pod_specs(render(helm, mode)):
            for _, c in containers(spec):
                assert c.get("resources", {}).get("requests"), f"{mode}: {c['name']} has no requests"
                assert c["resources"].get("limits", {}).get("memory"), f"{mode}: {c['name']} has no memory limit"


# Maps whose keys are free-form (labels, annotations, Kubernetes objects passed through).
FREE_FORM = {"podAnnotations", "podLabels", "global", "affinity", "nodeSelector"}


def schema_paths(values, schema, path=""):
    """Yields (path, problem) for every value that the schema does not describe."""
    if not isinstance(values, dict):
        return
    props = schema.get("properties")
    if props is None:
        if not isinstance(schema.get("additionalProperties"), dict) and schema.get("type") != "object":
            yield path or "/", f"no properties in the schema: {schema}"
        return
    if schema.get("additionalProperties") is not False and path.split(".")[-1] not in FREE_FORM | {"podSecurityContext"}:
        yield path, "the schema admits unknown keys (additionalProperties is not false)"
    for key, value in values.items():
        sub = f"{path}.{key}" if path else key
        if key not in props:
            yield sub, "not in values.schema.json"
        elif key not in FREE_FORM:
            yield from schema_paths(value, props[key], sub)


def test_schema_covers_every_value_and_admits_no_unknown_key():
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    schema = json.loads((CHART / "values.schema.json").read_text())
    problems = list(schema_paths(values, schema))
    assert not problems, "\n".join(f"{p}: {why}" for p, why in problems)
    # And the other way: no schema property that values.yaml forgets to document.
    documented = set(values) | {"global"}
    assert set(schema["properties"]) <= documented, set(schema["properties"]) - documented


@pytest.mark.parametrize(
    "args,message",
    [
        (["--set", "attest.adminPort=15000"], "attest.adminPort = 15000: port already used by proxy.adminPort"),
        (["--set", "attest.port=15006"], "attest.port = 15006: port already used by proxy.inbound[0].port"),
        (["--set", "proxy.adminPort=15001"], "proxy.outbound[0].port = 15001: port already used by proxy.adminPort"),
    ],
)
def test_one_port_one_listener(helm, args, message):
    err = render_error(helm, "aks", args)
    assert message in err, err
    # attest off frees its ports.
    render(helm, "aks", ["--set", "attest.enabled=false", "--set", "attest.adminPort=15000"])


@pytest.mark.parametrize(
    "args,field",
    [
        (["--set", "metrics.expose=yes"], "expose"),
        (["--set", "metrics.podMonitor.interval=often"], "interval"),
        (["--set", "aks.vtpm.vcek=imds"], "vcek"),
        (["--set", "tests.activeDeadlineSeconds=5"], "activeDeadlineSeconds"),
        (["--set", "podDisruptionBudget.unhealthyPodEvictionPolicy=Never"], "unhealthyPodEvictionPolicy"),
        (["--set", "probes.startupSeconds=0"], "startupSeconds"),
    ],
)
def test_new_values_fail_naming_the_field(helm, args, field):
    err = helm_template(helm, args, expect_ok=False).stderr
    assert field in err, f"error does not name {field}:\n{err}"


def test_tpm_device_plugin_addon_matches_the_chart(kubernetes_validate):
    """helm/addons/tpm-device-plugin.yaml advertises what the aks pod requests, on the same pool."""
    path = CHART.parent / "addons" / "tpm-device-plugin.yaml"
    check = subprocess.run(kubernetes_validate + ["--strict", "-k", KUBE_VERSION, str(path)], capture_output=True,
                           text=True, check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    ds = yaml.safe_load(path.read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    spec = ds["spec"]["template"]["spec"]
    assert spec["nodeSelector"] == values["aks"]["nodeSelector"]
    assert spec["tolerations"] == values["aks"]["tolerations"]
    [container] = spec["containers"]
    assert re.search(r"@sha256:[0-9a-f]{64}$", container["image"])
    args = container["args"]
    domain = next(a.split("=", 1)[1] for a in args if a.startswith("--domain="))
    device = json.loads(args[args.index("--device") + 1])
    assert f"{domain}/{device['name']}" == values["aks"]["vtpm"]["resourceName"]
    [group] = device["groups"]
    assert [p["path"] for p in group["paths"]] == [values["aks"]["vtpm"]["tcti"].split(":", 1)[1]]
    assert group["count"] >= 2, "one workload pod holds two units (renew and attest)"
    assert ds["metadata"]["namespace"] == "kube-system", "the one privileged piece stays out of workload namespaces"


def test_init_env_reaches_the_vault_clients_only(helm):
    env = ["--set", "init.env[0].name=AZURE_AUTHORITY_HOST", "--set", "init.env[0].value=https://login.microsoftonline.us/"]
    spec = pod_spec(render(helm, "aks", env))
    for _, c in containers(spec):
        names = [e["name"] for e in c.get("env", [])]
        assert ("AZURE_AUTHORITY_HOST" in names) is (c["name"] in ("init-secrets", "init-proxy", "renew")), c["name"]
    test_pod = one(render(helm, "aks", env), "Pod", "-test-mesh")["spec"]
    assert "AZURE_AUTHORITY_HOST" in [e["name"] for e in by_name(test_pod, "init-proxy")["env"]]
    err = render_error(helm, "aks", ["--set", "init.env[0].name=RUST_LOG", "--set", "init.env[0].value=trace"])
    assert "init/env/0/name" in err, err
