"""The build side of the deployment: Dockerfiles, the pinned images file, `make helm-chart`.

No container engine runs here, so the Dockerfiles are checked for the properties that make the
images reproducible and small; the pin file and the Makefile are exercised for real.
"""

import hashlib
import re
import shutil
import subprocess

import pytest
import yaml

from conftest import CHART, FIXTURES, KUBE_VERSION, ROOT, by_name, cargo_binary, helm_template, pod_spec

DOCKERFILES = sorted(ROOT.glob("*/Dockerfile"))
DIGEST_REF = re.compile(r"@sha256:[0-9a-f]{64}$")


def test_every_binary_crate_has_a_dockerfile():
    assert {p.parent.name for p in DOCKERFILES} == {"proxy", "init", "attest"}


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_dockerfile_is_reproducible_and_minimal(dockerfile):
    text = dockerfile.read_text()
    crate = dockerfile.parent.name
    args = dict(re.findall(r"^ARG (\w+)=(\S+)$", text, re.M))
    froms = re.findall(r"^FROM (\S+)", text, re.M)
    assert len(froms) == 2, "multi-stage: a build stage and a final stage"
    for ref in froms:
        image = args.get(ref.strip("${}"), ref)
        assert DIGEST_REF.search(image), f"base image not pinned by digest: {image}"
    assert "distroless" in args["RUNTIME_IMAGE"] or froms[-1] == "scratch"
    assert f"cargo build --locked --release -p enclaveid-{crate}" in text
    assert "SOURCE_DATE_EPOCH" in text and "--remap-path-prefix" in text and "-ffile-prefix-map" in text
    final = text[text.rindex("FROM "):]
    assert re.search(r"^USER 65532:65532$", final, re.M), "the final stage runs as non-root"
    assert f'ENTRYPOINT ["/usr/local/bin/enclaveid-{crate}"]' in final
    assert "RUN " not in final, "nothing runs in the final stage (no shell there)"


# What gcr.io/distroless/cc-debian12 already ships (glibc, libgcc, OpenSSL 3).
DISTROLESS_CC = re.compile(r"^(linux-vdso|ld-linux|libc|libm|libdl|libpthread|librt|libgcc_s|libcrypto|libssl)\b")


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_final_image_has_every_shared_library_the_binary_needs(dockerfile):
    """ldd on the built binary: whatever distroless/cc lacks must be copied by the Dockerfile."""
    binary = cargo_binary(f"enclaveid-{dockerfile.parent.name}")
    ldd = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, check=True).stdout
    needed = {line.split()[0].rsplit("/", 1)[-1] for line in ldd.splitlines() if line.strip()}
    extra = sorted(lib for lib in needed if not DISTROLESS_CC.match(lib))
    text = dockerfile.read_text()
    for lib in extra:
        assert lib in text, f"{dockerfile.parent.name}: {lib} is linked but not copied into the final image"
    if extra:
        assert "COPY --from=build /out/lib/ /usr/lib/x86_64-linux-gnu/" in text


def test_dockerignore_keeps_outputs_out_of_the_context():
    ignored = (ROOT / ".dockerignore").read_text().split()
    for entry in (".git", "target", "targets", "renders"):
        assert entry in ignored


def test_kaniko_job_is_reproducible_on_a_maintained_fork(kubernetes_validate, tmp_path):
    text = (ROOT / "build" / "kaniko-job.yaml").read_text()
    assert "--reproducible" in text
    assert re.search(r"osscontainertools/kaniko:v[\d.]+@sha256:[0-9a-f]{64}", (ROOT / "build" / "kaniko-build.sh").read_text())
    assert "--digest-file=/dev/termination-log" in text
    values = {
        "NAME": "proxy",
        "BUILD_NAMESPACE": "enclaveid-build",
        "KANIKO_IMAGE": "ghcr.io/osscontainertools/kaniko@sha256:" + "0" * 64,
        "CONTEXT": "git://example.invalid/enclaveid.git#refs/heads/main#" + "1" * 40,
        "DOCKERFILE": "proxy/Dockerfile",
        "DESTINATION": "registry.example.invalid/enclaveid/proxy:abc",
        "SOURCE_DATE_EPOCH": "1764000000",
        "REGISTRY_SECRET": "registry-push",
    }
    rendered = re.sub(r"\$\{([A-Z_]+)\}", lambda m: values[m.group(1)], text)
    job = yaml.safe_load(rendered)
    assert job["kind"] == "Job" and job["spec"]["backoffLimit"] == 0
    out = tmp_path / "job.yaml"
    out.write_text(rendered)
    proc = subprocess.run(kubernetes_validate + ["--strict", "-k", KUBE_VERSION, str(out)], capture_output=True,
                          text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_pinned_file_drives_the_render(helm, tmp_path):
    images = tmp_path / "images.yaml"
    shutil.copy(ROOT / "helm" / "images.yaml", images)
    digests = {}
    for name in ("proxy", "init", "attest"):
        digests[name] = "sha256:" + hashlib.sha256(name.encode()).hexdigest()
        subprocess.run(
            ["python3", str(ROOT / "build" / "pin-digest.py"), str(images), name, f"reg.example/eid/{name}", digests[name]],
            check=True,
            capture_output=True,
        )
    text = images.read_text()
    assert text.count("# ") >= 3, "comments survive pinning"
    args = ["--set", "deployment=aks", "-f", str(images), "-f", str(FIXTURES / "aks.yaml")]
    spec = pod_spec([d for d in yaml.safe_load_all(helm_template(helm, args).stdout) if d])
    assert by_name(spec, "proxy")["image"] == f"reg.example/eid/proxy@{digests['proxy']}"
    assert by_name(spec, "init-proxy")["image"] == f"reg.example/eid/init@{digests['init']}"
    assert by_name(spec, "attest")["image"] == f"reg.example/eid/attest@{digests['attest']}"
    bad = subprocess.run(
        ["python3", str(ROOT / "build" / "pin-digest.py"), str(images), "proxy", "r/p", "sha256:nothex"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert bad.returncode != 0 and "not a sha256 digest" in bad.stderr


def test_make_helm_chart(helm, tmp_path):
    out = tmp_path / "renders"
    run = subprocess.run(
        ["make", "-s", "-C", str(ROOT), "helm-chart", "DEPLOYMENT=microk8s", f"RENDERS={out}", f"HELM={helm}",
         f"KUBE_VERSION={KUBE_VERSION}"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    docs = [d for d in yaml.safe_load_all((out / "microk8s.yaml").read_text()) if d]
    assert {d["kind"] for d in docs} >= {"Deployment", "Service", "NetworkPolicy", "ConfigMap", "ServiceAccount"}
    # aks with the committed pin file (no digests until `make` has built) fails, naming the field.
    run = subprocess.run(
        ["make", "-s", "-C", str(ROOT), "helm-chart", "DEPLOYMENT=aks", f"RENDERS={out}", f"HELM={helm}"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode != 0 and "digest is required" in run.stderr
    assert not (out / "aks.yaml").exists() and not (out / "aks.yaml.tmp").exists()
    run = subprocess.run(["make", "-s", "-C", str(ROOT), "helm-chart", "DEPLOYMENT=gke"], capture_output=True, text=True,
                         check=False)
    assert run.returncode != 0 and "DEPLOYMENT=microk8s|aks|kata-cc" in run.stderr
    assert CHART.exists()
