"""Every rendered command line of our containers parses with the real binaries, in every mode.

The aks and kata-cc pods cannot run here (no vTPM, no SEV guest device), but their arguments
can still be checked against the binaries' command-line parsers: clap stops at a trailing
`--help` with exit 0 only if every argument before it is known and well-formed, so a flag the
chart passes and the binary does not know (or a renamed one) fails here, not on the cluster.
"""

import os
import socket
import subprocess

import pytest

from conftest import FIXTURES, MODES, all_pod_specs, by_name, cargo_binary, containers, pod_spec, render

OURS = {
    "init-secrets": "enclaveid-init",
    "init-proxy": "enclaveid-init",
    "renew": "enclaveid-init",
    "attest": "enclaveid-attest",
}
PROBED = {"proxy": "enclaveid-proxy", "attest": "enclaveid-attest"}


def parses(binary, argv):
    proc = subprocess.run([str(binary)] + argv + ["--help"], capture_output=True, text=True, timeout=30, check=False)
    assert proc.returncode == 0, f"{binary.name} {' '.join(argv)}: exit {proc.returncode}\n{proc.stderr}"


DEV_AKV = ("--set", "vault.url=akv:https://dev.vault.azure.net")


@pytest.mark.parametrize("mode,extra", [(m, ()) for m in MODES] + [("microk8s", DEV_AKV)])
def test_rendered_args_parse(helm, mode, extra):
    binaries = {name: cargo_binary(name) for name in set(OURS.values()) | set(PROBED.values())}
    checked = set()
    for spec in all_pod_specs(render(helm, mode, extra)):
        for _, c in containers(spec):
            if c["name"] in OURS:
                parses(binaries[OURS[c["name"]]], c["args"])
                checked.add(c["name"])
            for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
                if c["name"] in PROBED and kind in c:
                    command = c[kind]["exec"]["command"]
                    assert command[0] == f"/usr/local/bin/{PROBED[c['name']]}"
                    parses(binaries[PROBED[c["name"]]], command[1:])
                    checked.add(f"{c['name']} {kind}")
    assert checked >= set(OURS) | {"proxy startupProbe", "attest livenessProbe"}, checked


def test_the_trick_catches_an_unknown_flag():
    """The `--help` check is not vacuous: an unknown flag before it fails."""
    init = cargo_binary("enclaveid-init")
    proc = subprocess.run([str(init), "proxy", "--vault", "dir:/v", "--no-such-flag", "1", "--help"],
                          capture_output=True, text=True, timeout=30, check=False)
    assert proc.returncode == 2, proc.stdout


def test_aks_release_flags_are_the_vtpm_ones(helm):
    """aks: every init command releases through the vTPM with the flags init documents
    (`secrets` too: it releases the secret to derive the CA key)."""
    init = cargo_binary("enclaveid-init")
    spec = next(iter(all_pod_specs(render(helm, "aks"))))
    for command, name in (("secrets", "init-secrets"), ("proxy", "init-proxy"), ("renew", "renew")):
        help_text = subprocess.run([str(init), command, "--help"], capture_output=True, text=True, check=True).stdout
        for flag in ("--evidence", "--tcti", "--vcek", "--maa"):
            assert flag in help_text, (command, flag)
        args = by_name(spec, name)["args"]
        assert args[args.index("--evidence") + 1] == "vtpm", name


RENDERED_POLICY = "/etc/enclaveid/release-policy/release-policy.json"


def run_secrets(init, args):
    """Runs `enclaveid-init secrets` with rendered args against a vault address that refuses
    connections (a loopback port bound but not listening), so it gets exactly as far as its
    first vault request. Exit 2 = the chart's flags are refused; exit 1 after "making sure the
    master secret exists" = every flag was accepted and the release policy was built."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        port = held.getsockname()[1]
        argv = list(args)
        argv[argv.index("--vault") + 1] = f"akv:https://127.0.0.1:{port}"
        if RENDERED_POLICY in argv:
            argv[argv.index(RENDERED_POLICY)] = str(FIXTURES / "release-policy.json")
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "RUST_LOG": "error"}
        return subprocess.run([str(init)] + argv + ["--retry-deadline", "1s"], capture_output=True, text=True,
                              timeout=120, env=env, check=False)


@pytest.mark.parametrize(
    "mode,extra",
    [("aks", ()), ("aks", ("--set-file", f"vault.releasePolicy={FIXTURES / 'release-policy.json'}")), ("kata-cc", ()),
     ("microk8s", DEV_AKV)],
)
def test_rendered_secrets_args_are_accepted_past_parsing(helm, mode, extra):
    """The `--help` check cannot see clap's conflicts or init's own checks (a release policy must
    come from a file, --host-data or --cvm-policy): run the rendered init-secrets command line up
    to its first vault request."""
    init = cargo_binary("enclaveid-init")
    args = by_name(pod_spec(render(helm, mode, extra)), "init-secrets")["args"]
    assert args[0] == "secrets"
    proc = run_secrets(init, args)
    assert proc.returncode == 1, f"exit {proc.returncode}: {' '.join(args)}\n{proc.stderr}"
    assert "making sure the master secret exists" in proc.stderr, proc.stderr
    assert "unreachable" in proc.stderr, proc.stderr


def test_secrets_without_a_policy_source_is_refused():
    """The run above is not vacuous: aks args without --cvm-policy (and no policy file) exit 2
    naming --release-policy, and a policy file together with --cvm-policy exits 2 too."""
    init = cargo_binary("enclaveid-init")
    base = ["secrets", "--vault", "akv:https://x.vault.azure.net", "--key-name", "k",
            "--maa", "https://sharedeus.eus.attest.azure.net", "--evidence", "vtpm"]
    proc = run_secrets(init, base)
    assert proc.returncode == 2, proc.stderr
    assert "--release-policy" in proc.stderr, proc.stderr
    proc = run_secrets(init, base + ["--cvm-policy", "--release-policy", RENDERED_POLICY])
    assert proc.returncode == 2, proc.stderr
    assert "cannot be used with" in proc.stderr, proc.stderr


def run_with_unreachable_vault(init, args, tmp_path):
    """Like run_secrets, for the rendered proxy and renew lines: the output directory is a
    scratch directory (`--allow-disk`, no tmpfs here), warnings are kept in the log."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        port = held.getsockname()[1]
        argv = list(args)
        argv[argv.index("--vault") + 1] = f"akv:https://127.0.0.1:{port}"
        if "--out" in argv:
            argv[argv.index("--out") + 1] = str(tmp_path)
            argv.append("--allow-disk")
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "RUST_LOG": "warn"}
        return subprocess.run([str(init)] + argv + ["--retry-deadline", "1s"], capture_output=True, text=True,
                              timeout=120, env=env, check=False)


def test_microk8s_akv_init_lines_reach_the_vault_without_skr(helm, tmp_path):
    """microk8s + akv: (confidentiality off): init-secrets, init-proxy and renew, as rendered, all
    get past every check to their first vault request, warning that SKR is off; nothing is
    written."""
    init = cargo_binary("enclaveid-init")
    spec = pod_spec(render(helm, "microk8s", DEV_AKV))
    for name, context in (("init-secrets", "making sure the master secret exists"),
                          ("init-proxy", "releasing the master secret"),
                          ("renew", "releasing the master secret")):
        args = by_name(spec, name)["args"]
        assert "--no-skr" in args, name
        proc = run_with_unreachable_vault(init, args, tmp_path)
        assert proc.returncode == 1, f"{name}: exit {proc.returncode}: {' '.join(args)}\n{proc.stderr}"
        assert context in proc.stderr, (name, proc.stderr)
        assert "unreachable" in proc.stderr, (name, proc.stderr)
        assert "NO SECURE KEY RELEASE" in proc.stderr, (name, proc.stderr)
        assert list(tmp_path.iterdir()) == [], (name, list(tmp_path.iterdir()))


def test_no_skr_is_what_lets_microk8s_akv_through():
    """The run above is not vacuous: the same secrets line without --no-skr exits 2 naming
    --release-policy (and pointing at --no-skr), and --no-skr with an SKR flag exits 2 naming
    both flags."""
    init = cargo_binary("enclaveid-init")
    base = ["secrets", "--vault", "akv:https://x.vault.azure.net"]
    proc = run_secrets(init, base)
    assert proc.returncode == 2, proc.stderr
    assert "--release-policy" in proc.stderr and "--no-skr" in proc.stderr, proc.stderr
    for extra in (["--maa", "https://sharedeus.eus.attest.azure.net"], ["--evidence", "simulated"],
                  ["--release-policy", RENDERED_POLICY]):
        proc = run_secrets(init, base + ["--no-skr"] + extra)
        assert proc.returncode == 2, (extra, proc.stderr)
        assert "--no-skr" in proc.stderr and extra[0] in proc.stderr, (extra, proc.stderr)
    proc = subprocess.run([str(init), "secrets", "--vault", "dir:/nonexistent", "--no-skr"], capture_output=True,
                          text=True, timeout=30, check=False)
    assert proc.returncode == 2, proc.stderr
    assert "akv: vaults only" in proc.stderr, proc.stderr
