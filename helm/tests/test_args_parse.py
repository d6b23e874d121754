"""Every rendered command line of our containers parses with the real binaries, in every mode.

The aks and kata-cc pods cannot run here (no vTPM, no SEV guest device), but their arguments
can still be checked against the binaries' command-line parsers: clap stops at a trailing
`--help` with exit 0 only if every argument before it is known and well-formed, so a flag the
chart passes and the binary does not know (or a renamed one) fails here, not on the cluster.
"""

import subprocess

import pytest

from conftest import MODES, all_pod_specs, by_name, cargo_binary, containers, render

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


@pytest.mark.parametrize("mode", MODES)
def test_rendered_args_parse(helm, mode):
    binaries = {name: cargo_binary(name) for name in set(OURS.values()) | set(PROBED.values())}
    checked = set()
    for spec in all_pod_specs(render(helm, mode)):
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
    """aks: init-proxy and renew release through the vTPM with the flags init documents."""
    init = cargo_binary("enclaveid-init")
    help_text = subprocess.run([str(init), "proxy", "--help"], capture_output=True, text=True, check=True).stdout
    for flag in ("--evidence", "--tcti", "--vcek", "--maa"):
        assert flag in help_text, flag
    spec = next(iter(all_pod_specs(render(helm, "aks"))))
    args = by_name(spec, "init-proxy")["args"]
    assert args[args.index("--evidence") + 1] == "vtpm"
