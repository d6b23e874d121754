"""The build side of the deployment: Dockerfiles, the pinned images file, `make helm-chart`.

No container engine runs here, so the Dockerfiles are checked for the properties that make the
images reproducible and small; the pin file and the Makefile are exercised for real.
"""

import hashlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import CHART, FIXTURES, KUBE_VERSION, ROOT, by_name, cargo_binary, helm_template, pod_spec

DOCKERFILES = sorted(ROOT.glob("*/Dockerfile"))
DIGEST_REF = re.compile(r"@sha256:[0-9a-f]{64}$")


def test_every_binary_crate_has_a_dockerfile():
    assert {p.parent.name for p in DOCKERFILES} == {"proxy", "init", "attest"}


RECIPE = ROOT / "build" / "release-build.sh"
PIN_FILE = ROOT / "build" / "base-images.env"
CHECK = ROOT / "scripts" / "check-base-images.py"
NEEDS_TSS = {"init", "attest"}


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_dockerfile_is_reproducible_and_minimal(dockerfile):
    text = dockerfile.read_text()
    crate = dockerfile.parent.name
    args = dict(re.findall(r"^ARG (\w+)=(\S+)$", text, re.M))
    froms = re.findall(r"^FROM (\S+)", text, re.M)
    assert froms == ["${RUST_IMAGE}", "${RUNTIME_IMAGE}"], "multi-stage: a build stage and a final stage"
    for ref in froms:
        assert DIGEST_REF.search(args[ref.strip("${}")]), f"base image not pinned by digest: {ref}"
    assert "distroless" in args["RUNTIME_IMAGE"]
    # The build stage is the shared recipe, nothing else: no flags of its own to drift.
    tss = " --tss" if crate in NEEDS_TSS else ""
    build_stage = text[text.index("FROM ${RUST_IMAGE}"):text.index("FROM ${RUNTIME_IMAGE}")]
    runs = re.findall(r"^RUN (.*)$", build_stage, re.M)
    assert runs == [f"bash /build/release-build.sh deps{tss}", f"bash build/release-build.sh build{tss} enclaveid-{crate} /out"]
    assert "ARG SOURCE_DATE_EPOCH=0" in build_stage
    assert "ENV " not in build_stage and "cargo " not in build_stage
    final = text[text.rindex("FROM "):]
    assert re.search(r"^USER 65532:65532$", final, re.M), "the final stage runs as non-root"
    assert f'ENTRYPOINT ["/usr/local/bin/enclaveid-{crate}"]' in final
    assert "RUN " not in final, "nothing runs in the final stage (no shell there)"
    assert ("COPY --from=build /out/lib/ /usr/lib/x86_64-linux-gnu/" in final) is (crate in NEEDS_TSS)
    # Admin listeners bind loopback: no admin port is advertised.
    assert not re.search(r"^EXPOSE .*\b150[01]0\b", final, re.M)


def test_the_three_build_stages_are_one_recipe():
    """The base-image ARGs and the build stages are identical but for the crate and --tss."""
    def build_part(path):
        text = path.read_text()
        part = text[text.index("\nARG "):text.index("FROM ${RUNTIME_IMAGE}")]
        return part.replace(f"enclaveid-{path.parent.name}", "enclaveid-CRATE").replace(" --tss", "")

    parts = {p.parent.name: build_part(p) for p in DOCKERFILES}
    assert len(set(parts.values())) == 1, parts


def test_release_recipe_environment(tmp_path):
    """The flags the images and scripts/check-reproducible.sh build with (`release-build.sh env`)."""
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(ROOT / "rust-toolchain.toml", src)
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "SOURCE_DATE_EPOCH": "1764000000",
           "CARGO_HOME": "/opt/cargo-home"}
    out = subprocess.run(["bash", str(RECIPE), "env"], cwd=src, env=env, capture_output=True, text=True, check=True)
    got = dict(line.split("=", 1) for line in out.stdout.splitlines())
    channel = re.search(r'channel = "(.*)"', (ROOT / "rust-toolchain.toml").read_text()).group(1)
    assert got["RUSTUP_TOOLCHAIN"] == channel
    assert got["SOURCE_DATE_EPOCH"] == "1764000000"
    assert got["CARGO_TARGET_DIR"] == str(tmp_path / "target"), "beside the source, never inside it"
    assert (got["CARGO_INCREMENTAL"], got["TZ"], got["LC_ALL"]) == ("0", "UTC", "C.UTF-8")
    for var, flag in (("RUSTFLAGS", "--remap-path-prefix"), ("CFLAGS", "-ffile-prefix-map")):
        assert got[var].split() == [f"{flag}={src}=/enclaveid", f"{flag}={tmp_path / 'target'}=/target",
                                    f"{flag}=/opt/cargo-home=/cargo"], var
    # A target directory inside the source would nest the remapped prefixes: refused.
    bad = subprocess.run(["bash", str(RECIPE), "env"], cwd=src, env={**env, "CARGO_TARGET_DIR": str(src / "target")},
                         capture_output=True, text=True, check=False)
    assert bad.returncode == 2 and "inside the source" in bad.stderr
    usage = subprocess.run(["bash", str(RECIPE), "build", "enclaveid-proxy"], cwd=src, env=env, capture_output=True,
                           text=True, check=False)
    assert usage.returncode == 2
    # check-reproducible.sh builds each crate through the same recipe, one crate per cargo run
    # like the images (one `cargo build -p a -p b` would unify features across the three).
    script = (ROOT / "scripts" / "check-reproducible.sh").read_text()
    assert 'build/release-build.sh" build' in script
    assert not re.search(r"^\s*[^#\s].*cargo build", script, re.M), "no cargo build of its own"


def test_base_images_come_from_the_one_pinned_file():
    proc = subprocess.run([sys.executable, str(CHECK)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "3 Dockerfiles" in proc.stdout
    pins = dict(line.split("=", 1) for line in PIN_FILE.read_text().splitlines() if line and not line.startswith("#"))
    assert set(pins) == {"RUST_IMAGE", "RUNTIME_IMAGE", "KANIKO_IMAGE"}
    assert all(DIGEST_REF.search(v) for v in pins.values())


def copy_build_tree(tmp_path):
    root = tmp_path / "repo"
    for rel in ["build/base-images.env", "build/kaniko-job.yaml", "build/kaniko-build.sh"] + [
            str(p.relative_to(ROOT)) for p in DOCKERFILES]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / rel, root / rel)
    return root


@pytest.mark.parametrize(
    "rel,old,new,message",
    [
        ("proxy/Dockerfile", "FROM ${RUNTIME_IMAGE}", "FROM gcr.io/distroless/cc-debian12:nonroot",
         "FROM gcr.io/distroless/cc-debian12:nonroot: not pinned by digest"),
        ("init/Dockerfile", "FROM ${RUNTIME_IMAGE}", "FROM gcr.io/distroless/static@sha256:" + "1" * 64,
         "a literal image; use ${NAME} from build/base-images.env"),
        ("attest/Dockerfile", "cc-debian12:nonroot@sha256:9", "cc-debian12:nonroot@sha256:8",
         "ARG RUNTIME_IMAGE default"),
        ("proxy/Dockerfile", "FROM ${RUST_IMAGE}", "FROM ${OTHER_IMAGE}", "OTHER_IMAGE is not in build/base-images.env"),
        ("build/base-images.env", "KANIKO_IMAGE=ghcr.io/osscontainertools/kaniko:v1.28.2@sha256:4ea0e730",
         "KANIKO_IMAGE=ghcr.io/osscontainertools/kaniko:v1.28.2@sha256:XYZ", "KANIKO_IMAGE="),
        ("build/kaniko-job.yaml", "image: ${KANIKO_IMAGE}", "image: ghcr.io/osscontainertools/kaniko:v1.28.2",
         "image: ghcr.io/osscontainertools/kaniko:v1.28.2: a literal"),
        ("build/kaniko-job.yaml", "            - --build-arg=RUNTIME_IMAGE=${RUNTIME_IMAGE}\n", "",
         "does not pass --build-arg=RUNTIME_IMAGE"),
        ("build/kaniko-build.sh", "set -euo pipefail", "set -euo pipefail\n# x@sha256:" + "2" * 64,
         "names a digest of its own"),
    ],
)
def test_base_image_check_catches(tmp_path, rel, old, new, message):
    root = copy_build_tree(tmp_path)
    path = root / rel
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))
    proc = subprocess.run([sys.executable, str(CHECK), "--root", str(root)], capture_output=True, text=True, check=False)
    assert proc.returncode == 1, proc.stdout
    assert message in proc.stderr, proc.stderr


def test_base_image_check_write_resyncs_the_dockerfiles(tmp_path):
    root = copy_build_tree(tmp_path)
    pins = (root / "build/base-images.env").read_text()
    new_digest = "sha256:" + "3" * 64
    (root / "build/base-images.env").write_text(re.sub(r"(RUST_IMAGE=\S+@)sha256:[0-9a-f]{64}", r"\g<1>" + new_digest,
                                                       pins))
    check = [sys.executable, str(CHECK), "--root", str(root)]
    assert subprocess.run(check, capture_output=True, check=False).returncode == 1
    assert subprocess.run(check + ["--write"], capture_output=True, check=False).returncode == 0
    assert subprocess.run(check, capture_output=True, check=False).returncode == 0
    for dockerfile in root.glob("*/Dockerfile"):
        assert f"rust:1.95.0-bookworm@{new_digest}" in dockerfile.read_text()


# What gcr.io/distroless/cc-debian12 already ships (glibc, libgcc, OpenSSL 3).
DISTROLESS_CC = re.compile(r"^(linux-vdso|ld-linux|libc|libm|libdl|libpthread|librt|libgcc_s|libcrypto|libssl)\b")


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_final_image_has_every_shared_library_the_binary_needs(dockerfile):
    """ldd on the built binary: whatever distroless/cc lacks must be copied by the recipe."""
    crate = dockerfile.parent.name
    binary = cargo_binary(f"enclaveid-{crate}")
    ldd = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, check=True).stdout
    needed = {line.split()[0].rsplit("/", 1)[-1] for line in ldd.splitlines() if line.strip()}
    extra = sorted(lib for lib in needed if not DISTROLESS_CC.match(lib))
    copied = re.search(r"^TSS_LIBS=\((.*)\)$", RECIPE.read_text(), re.M).group(1).split()
    for lib in extra:
        assert lib in copied, f"{crate}: {lib} is linked but build/release-build.sh does not copy it"
    if extra:
        assert crate in NEEDS_TSS, f"{crate} links {extra}: its Dockerfile must build with --tss"
        assert "libtss2-tcti-device.so.0" in copied, "tctildr dlopens the device TCTI at run time"


def test_dockerignore_keeps_outputs_out_of_the_context():
    ignored = (ROOT / ".dockerignore").read_text().split()
    for entry in (".git", "target", "targets", "renders"):
        assert entry in ignored


def test_kaniko_job_is_reproducible_on_a_maintained_fork(kubernetes_validate, tmp_path):
    text = (ROOT / "build" / "kaniko-job.yaml").read_text()
    assert "--reproducible" in text
    assert re.search(r"^KANIKO_IMAGE=ghcr.io/osscontainertools/kaniko:v[\d.]+@sha256:[0-9a-f]{64}$", PIN_FILE.read_text(), re.M)
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
        "RUST_IMAGE": "docker.io/library/rust:1.95.0-bookworm@sha256:" + "2" * 64,
        "RUNTIME_IMAGE": "gcr.io/distroless/cc-debian12:nonroot@sha256:" + "3" * 64,
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


def test_release_recipe_builds_and_installs_for_real(tmp_path):
    """`release-build.sh build --tss` on a throwaway one-crate workspace: the binary lands in OUT
    as 0555 with mtime SOURCE_DATE_EPOCH, the tpm2-tss libraries beside it, and no build path
    (the source and target directories here are unique temporary paths) is left in the binary."""
    cargo = shutil.which("cargo")
    assert cargo, "cargo is needed (rust-toolchain.toml)"
    src = tmp_path / "ws-src-unique"
    (src / "hello" / "src").mkdir(parents=True)
    shutil.copy(ROOT / "rust-toolchain.toml", src)
    (src / "Cargo.toml").write_text('[workspace]\nmembers = ["hello"]\nresolver = "2"\n')
    (src / "hello" / "Cargo.toml").write_text('[package]\nname = "hello"\nversion = "0.1.0"\nedition = "2021"\n')
    (src / "hello" / "src" / "main.rs").write_text('fn main() { if std::env::args().count() > 5 { panic!("at {}", file!()); } }\n')
    env = {k: v for k, v in os.environ.items() if k not in ("CARGO_TARGET_DIR", "RUSTFLAGS", "CFLAGS")}
    env["SOURCE_DATE_EPOCH"] = "1764000000"
    subprocess.run([cargo, "generate-lockfile", "--offline"], cwd=src, env=env, check=True, capture_output=True)
    out = tmp_path / "out"
    tss_dir = Path("/usr/lib/x86_64-linux-gnu")
    tss = ["--tss"] if (tss_dir / "libtss2-esys.so.0").exists() else []
    if not tss and os.environ.get("CI") == "true":
        pytest.fail("libtss2 not installed (scripts/ci-deps/attest.sh installs libtss2-dev)")
    proc = subprocess.run(["bash", str(RECIPE), "build", *tss, "hello", str(out)], cwd=src, env=env,
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    binary = out / "hello"
    assert oct(binary.stat().st_mode & 0o7777) == "0o555"
    assert int(binary.stat().st_mtime) == 1764000000
    data = binary.read_bytes()
    assert b"ws-src-unique" not in data and str(tmp_path / "target").encode() not in data
    assert subprocess.run([str(binary)], check=False).returncode == 0
    if tss:
        libs = sorted(p.name for p in (out / "lib").iterdir())
        assert "libtss2-tcti-device.so.0" in libs and "libtss2-esys.so.0" in libs
        assert all(int(p.stat().st_mtime) == 1764000000 for p in (out / "lib").iterdir())
