"""Render the chart in every mode: lint, schema-validate, and assert the pod's shape.

Checked: init order, the native sidecar and its probe, the key tmpfs and who mounts it (never
the app), the digest guard, the hardening of every container, the Service and NetworkPolicy
ports, workload identity, the mode specifics, and that bad values fail naming the field.
"""

import base64
import hashlib
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from conftest import (
    CHART,
    exec_probe,
    FIXTURES,
    KUBE_VERSION,
    MODES,
    ROOT,
    all_pod_specs,
    by_name,
    cargo_binary,
    containers,
    helm_template,
    mode_args,
    mounts,
    one,
    pod_spec,
    render,
    render_error,
)

KEY_MOUNTERS = {"init-proxy", "proxy", "renew", "attest"}


@pytest.mark.parametrize("mode", MODES)
def test_lint(helm, mode):
    proc = subprocess.run(
        [helm, "lint", "--strict", str(CHART), "--kube-version", KUBE_VERSION] + mode_args(mode),
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 chart(s) failed" in proc.stdout


@pytest.mark.parametrize(
    "mode,extra",
    [(m, ()) for m in MODES]
    + [("microk8s", ("--set", "proxy.nativeSidecar=false")), ("aks", ("--set", "attest.enabled=false")),
       ("microk8s", ("--set", "vault.url=akv:https://dev.vault.azure.net"))],
)
def test_kubernetes_schema(helm, kubernetes_validate, tmp_path, mode, extra):
    out = tmp_path / f"{mode}.yaml"
    out.write_text(helm_template(helm, mode_args(mode, extra)).stdout)
    proc = subprocess.run(
        kubernetes_validate + ["--strict", "-k", KUBE_VERSION, str(out)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "passed for resource deployment/" in proc.stdout + proc.stderr


@pytest.mark.parametrize("mode", MODES)
def test_init_order_and_native_sidecar(helm, mode):
    spec = pod_spec(render(helm, mode))
    names = [c["name"] for c in spec["initContainers"]]
    assert names == ["init-secrets", "init-proxy", "proxy", "renew"]
    for name in ("init-secrets", "init-proxy"):
        assert "restartPolicy" not in by_name(spec, name), "plain init containers run to completion"
    proxy = by_name(spec, "proxy")
    assert proxy["restartPolicy"] == "Always"
    # The admin listener is loopback: the kubelet runs the proxy's own probe inside the container.
    assert exec_probe(proxy, "startupProbe") == ["/usr/local/bin/enclaveid-proxy", "probe", "--url",
                                                 "http://127.0.0.1:15000/ready", "--timeout-ms", "1800"]
    assert proxy["startupProbe"]["timeoutSeconds"] == 2
    # The app is a regular container, so it starts only after the sidecar's startupProbe passes.
    assert "app" in [c["name"] for c in spec["containers"]]


def test_regular_container_mode_for_old_clusters(helm):
    docs = render(helm, "microk8s", ["--set", "proxy.nativeSidecar=false"])
    spec = pod_spec(docs)
    assert [c["name"] for c in spec["initContainers"]] == ["init-secrets", "init-proxy"]
    proxy = by_name(spec, "proxy")
    assert "restartPolicy" not in proxy
    assert [c["name"] for c in spec["containers"]][:2] == ["proxy", "renew"]
    # The helm test pod too: a long-running proxy as a plain init container would never finish.
    test_pod = one(docs, "Pod", "-test-mesh")["spec"]
    assert [c["name"] for c in test_pod["initContainers"]] == ["init-proxy"]
    assert [c["name"] for c in test_pod["containers"]] == ["proxy", "curl"]


@pytest.mark.parametrize("native", ["true", "false"])
@pytest.mark.parametrize("mode", MODES)
def test_container_names_are_unique_per_pod(helm, mode, native):
    """The API server refuses a pod whose init and regular containers share a name (the
    schema check cannot see that)."""
    for spec in all_pod_specs(render(helm, mode, ["--set", f"proxy.nativeSidecar={native}"])):
        names = [c["name"] for _, c in containers(spec)]
        assert len(names) == len(set(names)), names


@pytest.mark.parametrize("mode", MODES)
def test_key_tmpfs_and_who_mounts_it(helm, mode):
    for spec in all_pod_specs(render(helm, mode)):
        tls = {v["name"]: v for v in spec["volumes"]}["enclaveid-tls"]
        assert tls["emptyDir"]["medium"] == "Memory"
        assert tls["emptyDir"]["sizeLimit"] == "1Mi"
        for _, c in containers(spec):
            m = mounts(c).get("enclaveid-tls")
            if c["name"] in KEY_MOUNTERS:
                assert m is not None, f"{c['name']} needs the key volume"
                assert m["mountPath"] == "/run/enclaveid/tls"
                writable = c["name"] in {"init-proxy", "renew"}
                assert bool(m.get("readOnly")) is not writable, c["name"]
            else:
                assert m is None, f"{c['name']} must not see the key volume"
                assert not any(x["mountPath"].startswith("/run/enclaveid/tls") for x in c.get("volumeMounts", []))


def test_no_key_volume_in_any_app_container(helm):
    apps = [
        "--set", "app.containers[0].name=api",
        "--set", "app.containers[0].image=registry.example.invalid/api@sha256:" + "a" * 64,
        "--set", "app.containers[1].name=worker",
        "--set", "app.containers[1].image=registry.example.invalid/worker@sha256:" + "b" * 64,
    ]
    for mode in MODES:
        spec = pod_spec(render(helm, mode, apps))
        for name in ("api", "worker"):
            app = by_name(spec, name)
            assert set(mounts(app)) == {"app-tmp"}, mounts(app)
            assert "enclaveid-tls" not in str(app)


def test_app_volumes_only_their_own(helm, kubernetes_validate, tmp_path):
    app_values = ["-f", str(FIXTURES / "app-volumes.yaml")]
    proc = helm_template(helm, mode_args("microk8s", app_values))
    spec = pod_spec([d for d in yaml.safe_load_all(proc.stdout) if d])
    assert mounts(by_name(spec, "app"))["app-config"]["mountPath"] == "/etc/app"
    assert {v["name"]: v for v in spec["volumes"]}["app-config"]["configMap"]["name"] == "my-app-config"
    out = tmp_path / "render.yaml"
    out.write_text(proc.stdout)
    check = subprocess.run(kubernetes_validate + ["--strict", "-k", KUBE_VERSION, str(out)], capture_output=True,
                           text=True, check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    # The key tmpfs cannot be mounted into the app, by any route.
    err = render_error(helm, "microk8s", app_values + ["--set", "app.containers[0].volumeMounts[0].name=enclaveid-tls",
                                                       "--set", "app.containers[0].volumeMounts[0].mountPath=/keys"])
    assert 'app.containers[0].volumeMounts[0].name = "enclaveid-tls"' in err, err
    err = render_error(helm, "microk8s", app_values + [
        "--set-json", 'app.volumes=[{"name": "enclaveid-tls", "emptyDir": {"medium": "Memory"}}]'])
    assert "app.volumes" in err and "enclaveid-tls" in err, err
    err = render_error(helm, "microk8s", app_values + [
        "--set-json", 'app.volumes=[{"name": "host", "hostPath": {"path": "/"}}]'])
    assert "hostPath" in err and "app/volumes/0" in err, err


@pytest.mark.parametrize("mode", MODES)
def test_every_container_is_hardened(helm, mode):
    for spec in all_pod_specs(render(helm, mode)):
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        assert spec["automountServiceAccountToken"] is False
        for _, c in containers(spec):
            sc = c["securityContext"]
            assert sc["runAsNonRoot"] is True, c["name"]
            assert sc["readOnlyRootFilesystem"] is True, c["name"]
            assert sc["allowPrivilegeEscalation"] is False, c["name"]
            assert sc["capabilities"]["drop"] == ["ALL"], c["name"]
            assert "add" not in sc["capabilities"], c["name"]
            assert sc["seccompProfile"]["type"] == "RuntimeDefault", c["name"]


@pytest.mark.parametrize("mode", ["microk8s", "aks"])
def test_pod_security_admission_restricted(helm, mode):
    """microk8s and aks pods fit the `restricted` Pod Security Standard (kata-cc needs the
    sev-guest hostPath, which only `privileged` namespaces admit)."""
    allowed = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected", "secret"}
    for spec in all_pod_specs(render(helm, mode)):
        for volume in spec["volumes"]:
            kinds = set(volume) - {"name"}
            assert kinds <= allowed, volume
        for key in ("hostNetwork", "hostPID", "hostIPC"):
            assert not spec.get(key), key
        for _, c in containers(spec):
            assert all("hostPort" not in p for p in c.get("ports", [])), c["name"]


def test_pod_disruption_budget(helm):
    assert not [d for d in render(helm, "aks") if d["kind"] == "PodDisruptionBudget"]
    pdb = one(render(helm, "aks", ["--set", "podDisruptionBudget.enabled=true"]), "PodDisruptionBudget")
    assert pdb["spec"]["maxUnavailable"] == 1


@pytest.mark.parametrize("mode", MODES)
def test_service_targets_the_proxy_inbound_port(helm, mode):
    docs = render(helm, mode)
    spec = pod_spec(docs)
    svc = one(docs, "Service")
    proxy_ports = {p["name"]: p["containerPort"] for p in by_name(spec, "proxy")["ports"]}
    app_ports = {
        p.get("name"): p["containerPort"]
        for c in spec["containers"]
        if c["name"] not in ("attest", "proxy")
        for p in c.get("ports", [])
    }
    targets = {p["name"]: p["targetPort"] for p in svc["spec"]["ports"]}
    assert proxy_ports[targets["in-api"]] == 15006
    assert targets["in-api"] not in app_ports
    assert {p["port"] for p in svc["spec"]["ports"]} == {15006, 15443}
    netpol = one(docs, "NetworkPolicy")
    [rule] = netpol["spec"]["ingress"]
    assert sorted(p["port"] for p in rule["ports"]) == [15006, 15443]


def test_network_policy_without_attest_admits_only_inbound(helm):
    docs = render(helm, "aks", ["--set", "attest.enabled=false"])
    [rule] = one(docs, "NetworkPolicy")["spec"]["ingress"]
    assert [p["port"] for p in rule["ports"]] == [15006]
    assert [p["port"] for p in one(docs, "Service")["spec"]["ports"]] == [15006]
    assert "attest" not in [c["name"] for c in pod_spec(docs)["containers"]]


@pytest.mark.parametrize("mode", ["aks", "kata-cc"])
def test_digests_are_required(helm, mode):
    # Without the pinned images file the first EnclaveID image fails, named by its field.
    args = ["--set", f"deployment={mode}", "-f", str(FIXTURES / "aks.yaml")]
    if mode == "kata-cc":
        args += ["--set-file", f"kataCC.policy={FIXTURES / 'kata-policy.rego'}"]
        args += ["--set-file", f"vault.releasePolicy={FIXTURES / 'release-policy.json'}"]
    err = helm_template(helm, args, expect_ok=False).stderr
    assert "digest is required in" in err and "images." in err, err
    # An app image by tag only is refused too, named by its index.
    err = render_error(helm, mode, ["--set", "app.containers[0].name=app", "--set", "app.containers[0].image=nginx:1.27"])
    assert 'app.containers[0].image = "nginx:1.27": must be pinned by digest' in err, err
    # A digest of the wrong shape is refused by the schema, naming the field.
    err = render_error(helm, mode, ["--set", "images.proxy.digest=sha256:abc"])
    assert "images/proxy/digest" in err or "images.proxy.digest" in err, err


def test_microk8s_allows_tags_and_uses_digests_when_given(helm):
    spec = pod_spec(render(helm, "microk8s"))
    assert by_name(spec, "proxy")["image"] == "registry.example.invalid/enclaveid/proxy:0.1.0"
    spec = pod_spec(render(helm, "microk8s", ["-f", str(FIXTURES / "images-test.yaml")]))
    digest = hashlib.sha256(b"test-proxy").hexdigest()
    assert by_name(spec, "proxy")["image"] == f"registry.example.invalid/enclaveid/proxy@sha256:{digest}"


@pytest.mark.parametrize(
    "args,field",
    [
        (["--set", "deployment=gke"], "deployment"),
        (["--set", "proxy.inbound[0].port=99999"], "port"),
        (["--set", "proxy.inbund[0].port=15006"], "inbund"),
        (["--set", "keyVolume.sizeLimit=lots"], "sizeLimit"),
        (["--set", "attest.provider=tpm"], "provider"),
        (["--set", "podSecurityContext.runAsNonRoot=false"], "runAsNonRoot"),
        (
            ["--set", "proxy.inbound[0].name=api", "--set", "proxy.inbound[0].port=15006",
             "--set", "proxy.inbound[0].forward=10.0.0.5:8080"],
            "proxy.inbound[0].forward",
        ),
        (["--set", "vault.url=https://vault.example"], "vault"),
        (["--set", "vault.noSkrSecretName=no/slash"], "noSkrSecretName"),
    ],
)
def test_bad_values_fail_naming_the_field(helm, args, field):
    err = helm_template(helm, args, expect_ok=False).stderr
    assert field in err, f"error does not name {field}:\n{err}"


def test_confidentiality_follows_mode_and_can_be_overridden(helm):
    def confidential(docs):
        return one(docs, "Deployment")["spec"]["template"]["metadata"]["annotations"]["enclaveid.io/confidential"]

    assert confidential(render(helm, "microk8s")) == "false"
    assert confidential(render(helm, "aks")) == "true"
    assert confidential(render(helm, "kata-cc")) == "true"
    # Forcing it on in microk8s brings the guards with it: AKV, digests, no simulated evidence.
    err = render_error(helm, "microk8s", ["--set", "confidentiality.enabled=true"])
    assert "vault.url is required" in err or "digest is required" in err, err
    err = render_error(
        helm,
        "microk8s",
        ["--set", "confidentiality.enabled=true", "--set", "vault.url=akv:https://v.vault.azure.net",
         "-f", str(FIXTURES / "images-test.yaml"), "--set", "workloadIdentity.clientId=x"],
    )
    assert "vault.maaEndpoint is required in microk8s mode (confidentiality on)" in err, err
    err = render_error(
        helm,
        "microk8s",
        ["--set", "confidentiality.enabled=true", "--set", "vault.url=akv:https://v.vault.azure.net",
         "--set", "vault.maaEndpoint=https://sharedeus.eus.attest.azure.net",
         "-f", str(FIXTURES / "images-test.yaml"), "--set", "workloadIdentity.clientId=x"],
    )
    assert 'attest.provider = "simulated": refused' in err, err
    # And off in aks (for a dry run on a plain pool) is possible, with the dir: vault.
    docs = render(helm, "aks", ["--set", "confidentiality.enabled=false", "--set", "vault.url=dir:/vault",
                                "--set", "workloadIdentity.enabled=false"])
    assert confidential(docs) == "false"


INIT_COMMANDS = ("init-secrets", "init-proxy", "renew")
SKR_FLAGS = ("--maa", "--evidence", "--tcti", "--vcek", "--key-name", "--release-policy", "--cvm-policy")
DEV_AKV = ("--set", "vault.url=akv:https://dev.vault.azure.net")


def test_akv_without_skr_when_confidentiality_is_off(helm):
    """microk8s with an akv: vault has no TEE to release into: every init command (and the helm
    test pod's init-proxy) gets --no-skr and the plain secret's name, and none of the SKR flags."""
    docs = render(helm, "microk8s", DEV_AKV)
    specs = all_pod_specs(docs)
    assert len(specs) == 2, "the workload and the helm test pod"
    seen = []
    for spec in specs:
        for _, c in containers(spec):
            if c["name"] not in INIT_COMMANDS:
                continue
            args = c["args"]
            assert args[args.index("--vault") + 1] == "akv:https://dev.vault.azure.net", c["name"]
            assert "--no-skr" in args, c["name"]
            assert args[args.index("--master-secret-name") + 1] == "enclaveid-master-secret-noskr", c["name"]
            assert not set(SKR_FLAGS) & set(args), (c["name"], args)
            seen.append(c["name"])
    assert sorted(seen) == ["init-proxy", "init-proxy", "init-secrets", "renew"], seen
    # The name is a value; no dev-vault Secret is mounted for an akv: vault.
    spec = pod_spec(render(helm, "microk8s", DEV_AKV + ("--set", "vault.noSkrSecretName=my-dev-master")))
    for name in INIT_COMMANDS:
        args = by_name(spec, name)["args"]
        assert args[args.index("--master-secret-name") + 1] == "my-dev-master", name
        assert "dev-vault" not in mounts(by_name(spec, name)), name

    # Never where SKR is on, nor with the dir: vault.
    for mode, extra in [("microk8s", ()), ("aks", ()), ("kata-cc", ()),
                        ("microk8s", ("--set", "confidentiality.enabled=false"))]:
        for spec in all_pod_specs(render(helm, mode, extra)):
            for _, c in containers(spec):
                assert "--no-skr" not in c.get("args", []), (mode, extra, c["name"])
                assert "--master-secret-name" not in c.get("args", []), (mode, extra, c["name"])

    # SKR values with confidentiality off are refused, not silently dropped.
    err = render_error(helm, "microk8s", DEV_AKV + ("--set", "vault.maaEndpoint=https://sharedeus.eus.attest.azure.net"))
    assert "vault.maaEndpoint" in err and "--no-skr" in err, err
    err = render_error(helm, "microk8s", DEV_AKV + ("--set-file", f"vault.releasePolicy={FIXTURES / 'release-policy.json'}"))
    assert "vault.releasePolicy" in err and "--no-skr" in err, err
    # aks switched off for a dry run keeps its vault.maaEndpoint: refused the same way.
    err = render_error(helm, "aks", ["--set", "confidentiality.enabled=false", "--set", "workloadIdentity.enabled=false"])
    assert "vault.maaEndpoint" in err and "confidentiality is off" in err, err


def test_proxy_config_is_the_contract(helm):
    docs = render(helm, "aks")
    cfg = yaml.safe_load(one(docs, "ConfigMap", "enclaveid-proxy")["data"]["proxy.yaml"])
    assert set(cfg) <= {"admin", "tls", "inbound", "outbound", "defaults", "drain_timeout_ms", "dns"}
    assert cfg["tls"] == {
        "ca": "/run/enclaveid/tls/ca.pem",
        "cert": "/run/enclaveid/tls/cert.pem",
        "key": "/run/enclaveid/tls/key.pem",
    }
    assert cfg["admin"]["listen"] == "127.0.0.1:15000"
    assert cfg["inbound"] == [
        {"name": "api", "listen": "0.0.0.0:15006", "forward": "127.0.0.1:8080", "protocol": "http"}
    ]
    assert cfg["outbound"] == [
        {"name": "backend", "listen": "127.0.0.1:15001", "upstream": "backend.default.svc.cluster.local:15006",
         "protocol": "http"}
    ]
    app = by_name(pod_spec(docs), "app")
    assert {"name": "ENCLAVEID_OUTBOUND_BACKEND", "value": "127.0.0.1:15001"} in app["env"]


def test_proxy_dns_cache_values(helm, tmp_path):
    docs = render(helm, "aks", ["--set", "proxy.dns.cache_ttl_ms=0", "--set", "proxy.dns.cache_max_entries=64"])
    text = one(docs, "ConfigMap", "enclaveid-proxy")["data"]["proxy.yaml"]
    assert yaml.safe_load(text)["dns"] == {"cache_ttl_ms": 0, "cache_max_entries": 64}
    path = tmp_path / "proxy.yaml"
    path.write_text(text)
    binary = cargo_binary("enclaveid-proxy")
    proc = subprocess.run([str(binary), "check", "--config", str(path)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "dns" not in yaml.safe_load(one(render(helm, "aks"), "ConfigMap", "enclaveid-proxy")["data"]["proxy.yaml"])
    err = render_error(helm, "aks", ["--set", "proxy.dns.cache_ttl_ms=3600000"])
    assert "cache_ttl_ms" in err, err


@pytest.mark.parametrize("mode", MODES)
def test_proxy_accepts_the_rendered_config(helm, tmp_path, mode):
    """The real `enclaveid-proxy check` reads what the chart writes (built by 10-cargo.sh)."""
    binary = cargo_binary("enclaveid-proxy")
    # The binary must really check: an unknown key is exit 2 (guards against a stale stub).
    bad = tmp_path / "bad.yaml"
    bad.write_text("tls: {ca: /a, cert: /b, key: /c}\nnot_a_key: 1\n")
    proc = subprocess.run([str(binary), "check", "--config", str(bad)], capture_output=True, text=True, check=False)
    assert proc.returncode == 2, f"{binary} accepted an unknown key (stale build?): {proc.stdout}{proc.stderr}"
    for docs_cm in [d for d in render(helm, mode) if d["kind"] == "ConfigMap" and "proxy.yaml" in d["data"]]:
        path = tmp_path / f"{docs_cm['metadata']['name']}.yaml"
        path.write_text(docs_cm["data"]["proxy.yaml"])
        proc = subprocess.run([str(binary), "check", "--config", str(path)], capture_output=True, text=True,
                              check=False)
        assert proc.returncode == 0, f"{path.name}: {proc.stdout}{proc.stderr}"


def test_aks_specifics(helm):
    docs = render(helm, "aks")
    spec = pod_spec(docs)
    assert spec["nodeSelector"]["kubernetes.azure.com/security-type"] == "ConfidentialVM"
    assert any(t["key"] == "kubernetes.azure.com/confidential" for t in spec["tolerations"])
    assert 59 in spec["securityContext"]["supplementalGroups"]
    with_tpm = {c["name"] for _, c in containers(spec) if "squat.ai/tpmrm" in c.get("resources", {}).get("limits", {})}
    # Every container that releases the master secret (init-secrets too: it derives the CA key)
    # or produces evidence holds a vTPM unit; the proxy and the app never do.
    assert with_tpm == {"init-secrets", "init-proxy", "renew", "attest"}
    attest_args = by_name(spec, "attest")["args"]
    assert attest_args[attest_args.index("--tcti") + 1] == "device:/dev/tpmrm0"
    assert attest_args[attest_args.index("--vcek") + 1] == "thim"
    assert attest_args[attest_args.index("--admin") + 1] == "127.0.0.1:15010"
    assert by_name(spec, "attest")["args"][by_name(spec, "attest")["args"].index("--provider") + 1] == "vtpm"
    sa = one(docs, "ServiceAccount")
    assert sa["metadata"]["annotations"]["azure.workload.identity/client-id"]
    assert sa["metadata"]["labels"]["azure.workload.identity/use"] == "true"
    pod_meta = one(docs, "Deployment")["spec"]["template"]["metadata"]
    assert pod_meta["labels"]["azure.workload.identity/use"] == "true"
    skipped = pod_meta["annotations"]["azure.workload.identity/skip-containers"].split(";")
    assert set(skipped) == {"proxy", "attest", "app"}
    init_args = by_name(spec, "init-proxy")["args"]
    assert init_args[init_args.index("--vault") + 1] == "akv:https://enclaveid-test.vault.azure.net"
    # SKR on a CVM: MAA attest/AzureGuest with a transfer key in the vTPM, for every init
    # command: secrets releases the secret to derive the CA key, proxy to issue the leaf, renew
    # to re-issue it; the VCEK chain from THIM.
    for name in ("init-secrets", "init-proxy", "renew"):
        args = by_name(spec, name)["args"]
        assert args[args.index("--evidence") + 1] == "vtpm", name
        assert args[args.index("--tcti") + 1] == "device:/dev/tpmrm0", name
        assert args[args.index("--vcek") + 1] == "thim", name
        assert args[args.index("--maa") + 1] == "https://sharedeus.eus.attest.azure.net", name
    # Without vault.releasePolicy, secrets builds Azure's CVM release policy itself.
    secrets_args = by_name(spec, "init-secrets")["args"]
    assert "--cvm-policy" in secrets_args and "--release-policy" not in secrets_args, secrets_args
    assert "enclaveid-tls" not in mounts(by_name(spec, "init-secrets"))
    # The helm test pod's init-proxy releases too: same device, same flags.
    test_pod = one(docs, "Pod", "-test-mesh")["spec"]
    assert by_name(test_pod, "init-proxy")["args"] == init_args
    assert "squat.ai/tpmrm" in by_name(test_pod, "init-proxy")["resources"]["limits"]
    assert 59 in test_pod["securityContext"]["supplementalGroups"]
    assert "spiffe://cluster.local/ns/prod/sa/t-enclaveid" in init_args


def test_aks_release_policy_from_values(helm):
    """vault.releasePolicy replaces the built CVM policy (init refuses the two together); the
    secrets container still releases through the vTPM."""
    policy = ["--set-file", f"vault.releasePolicy={FIXTURES / 'release-policy.json'}"]
    secrets = by_name(pod_spec(render(helm, "aks", policy)), "init-secrets")
    assert "--cvm-policy" not in secrets["args"]
    assert secrets["args"][secrets["args"].index("--release-policy") + 1].startswith("/etc/enclaveid/release-policy/")
    assert set(mounts(secrets)) == {"release-policy"}, mounts(secrets)
    assert secrets["resources"]["limits"]["squat.ai/tpmrm"] == "1"
    assert secrets["args"][secrets["args"].index("--evidence") + 1] == "vtpm"


def test_kata_cc_specifics(helm):
    docs = render(helm, "kata-cc")
    spec = pod_spec(docs)
    policy = (FIXTURES / "kata-policy.rego").read_bytes()
    assert spec["runtimeClassName"] == "kata-cc-isolation"
    annotations = one(docs, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert base64.b64decode(annotations["io.katacontainers.config.agent.policy"]) == policy
    assert annotations["enclaveid.io/policy-sha256"] == hashlib.sha256(policy).hexdigest()
    attest_args = by_name(spec, "attest")["args"]
    assert attest_args[attest_args.index("--provider") + 1] == "sev-guest"
    with_device = {c["name"] for _, c in containers(spec) if "sev-guest" in mounts(c)}
    assert with_device == {"init-secrets", "init-proxy", "renew", "attest"}
    # init-secrets releases the secret (to derive the CA key) with the same evidence as init-proxy,
    # under the policy file (never --cvm-policy: that one is for CVM nodes).
    for name in ("init-secrets", "init-proxy", "renew"):
        args = by_name(spec, name)["args"]
        assert args[args.index("--evidence") + 1] == "sev-guest", name
        assert "--tcti" not in args, name
    secrets = by_name(spec, "init-secrets")
    assert "--cvm-policy" not in secrets["args"]
    assert secrets["args"][secrets["args"].index("--release-policy") + 1].startswith("/etc/enclaveid/release-policy/")
    assert set(mounts(secrets)) == {"release-policy", "sev-guest"}, mounts(secrets)
    no_policy = ["--set", "deployment=kata-cc", "-f", str(FIXTURES / "images-test.yaml"), "-f", str(FIXTURES / "aks.yaml")]
    err = helm_template(helm, no_policy, expect_ok=False).stderr
    assert "kataCC.policy is required" in err, err
    # A key made inside the pod must pin host_data: init-secrets needs a release policy.
    with_policy = no_policy + ["--set-file", f"kataCC.policy={FIXTURES / 'kata-policy.rego'}"]
    err = helm_template(helm, with_policy, expect_ok=False).stderr
    assert "vault.releasePolicy is required in kata-cc mode" in err, err
    docs = helm_template(helm, with_policy + ["--set", "init.secrets.enabled=false"]).stdout
    spec = pod_spec([d for d in yaml.safe_load_all(docs) if d])
    assert [c["name"] for c in spec["initContainers"]] == ["init-proxy", "proxy", "renew"]
    # SKR evidence for init comes from the same provider as attest's.
    args = by_name(spec, "init-proxy")["args"]
    assert args[args.index("--evidence") + 1] == "sev-guest"
    assert by_name(spec, "attest")["args"][-2:] == ["--sev-guest-device", "/dev/sev-guest"]


def test_kata_cc_remotefs_is_an_acknowledged_exception(helm):
    on = ["--set", "kataCC.remotefs.enabled=true", "--set", "kataCC.remotefs.args=e30="]
    err = render_error(helm, "kata-cc", on)
    assert "kataCC.remotefs.allowPrivileged" in err, err
    spec = pod_spec(render(helm, "kata-cc", on + ["--set", "kataCC.remotefs.allowPrivileged=true"]))
    privileged = [c["name"] for _, c in containers(spec) if c["securityContext"].get("privileged")]
    assert privileged == ["remotefs"]
    assert "enclaveid-tls" not in mounts(by_name(spec, "remotefs"))
    assert mounts(by_name(spec, "app"))["remotefs"]["readOnly"] is True


@pytest.mark.parametrize("mode", MODES)
def test_helm_test_pod_calls_through_the_mesh(helm, mode):
    docs = render(helm, mode)
    pod = one(docs, "Pod", "-test-mesh")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    # The Service and the NetworkPolicy select the workload only, never the test pod.
    labels = pod["metadata"]["labels"]
    for selector in (one(docs, "Service")["spec"]["selector"],
                     one(docs, "NetworkPolicy")["spec"]["podSelector"]["matchLabels"]):
        assert not all(labels.get(k) == v for k, v in selector.items()), selector
    workload_labels = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert all(workload_labels.get(k) == v for k, v in one(docs, "Service")["spec"]["selector"].items())
    spec = pod["spec"]
    assert [c["name"] for c in spec["initContainers"]] == ["init-proxy", "proxy"]
    curl = by_name(spec, "curl")
    assert "enclaveid-tls" not in mounts(curl)
    assert "http://127.0.0.1:15001/" in curl["args"][0]
    cfg = yaml.safe_load(one(docs, "ConfigMap", "-test-proxy")["data"]["proxy.yaml"])
    assert cfg["outbound"][0]["upstream"] == "t-enclaveid.prod.svc.cluster.local:15006"
    assert cfg["outbound"][0]["server_name"] == "t-enclaveid.prod.svc.cluster.local"


def test_notes_render(helm, tmp_path):
    """NOTES.txt renders (helm template skips it, so wrap it in a ConfigMap in a chart copy)."""
    chart = tmp_path / "enclaveid"
    shutil.copytree(CHART, chart)
    shutil.copy(chart / "templates" / "NOTES.txt", chart / "notes.tpl")
    (chart / "templates" / "zz-notes.yaml").write_text(
        'apiVersion: v1\nkind: ConfigMap\nmetadata: {name: notes}\n'
        'data:\n  notes: {{ tpl (.Files.Get "notes.tpl") . | quote }}\n'
    )

    def notes(kube_version, mode):
        cmd = [helm, "template", "t", str(chart), "--namespace", "prod", "--kube-version", kube_version]
        proc = subprocess.run(cmd + mode_args(mode), capture_output=True, text=True, check=False)
        assert proc.returncode == 0, proc.stderr
        docs = [d for d in yaml.safe_load_all(proc.stdout) if d]
        return next(d for d in docs if d["metadata"]["name"] == "notes")["data"]["notes"]

    text = notes(KUBE_VERSION, "kata-cc")
    assert hashlib.sha256((FIXTURES / "kata-policy.rego").read_bytes()).hexdigest() in text
    assert "helm test t -n prod" in text
    assert "native sidecars need 1.29" not in text
    old = notes("1.28.0", "microk8s")
    assert "native sidecars need 1.29" in old
    assert "--allow-simulated" in old
    assert "admin/metrics:    127.0.0.1 only" in old
    assert "raise replicaCount for availability" in old
    aks = notes(KUBE_VERSION, "aks")
    assert "the pod requests squat.ai/tpmrm (init-secrets, init-proxy, renew, attest) and joins group 59" in aks
    assert "allocatable.squat\\.ai/tpmrm" in aks, aks
    assert "Release policy of a key init-secrets creates: Azure's CVM policy (--cvm-policy" in aks, aks
