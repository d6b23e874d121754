#!/usr/bin/env python3
"""Checks that every base image is pinned by digest and comes from build/base-images.env.

    scripts/check-base-images.py [--root DIR] [--write]

- build/base-images.env: NAME=IMAGE@sha256:<64 hex> lines, each name once.
- Every FROM of every Dockerfile in the tree is `scratch`, an earlier stage, or `${NAME}` whose
  global ARG default is exactly the pinned NAME (a literal image is refused: it would be a
  second pin). --write rewrites those ARG defaults from the pin file.
- build/kaniko-job.yaml: every `image:` is a `${NAME}` of the pin file, and every NAME that a
  Dockerfile's FROM uses is passed as `--build-arg=NAME=${NAME}`.
- build/kaniko-build.sh names no digest of its own (it reads the pin file).
Exit 0 if all hold, 1 with one line per problem otherwise, 2 on bad usage.
"""

import argparse
import re
import sys
from pathlib import Path

PIN_FILE = Path("build/base-images.env")
KANIKO_JOB = Path("build/kaniko-job.yaml")
KANIKO_BUILD = Path("build/kaniko-build.sh")
PINNED = re.compile(r"^[a-z0-9][a-z0-9.-]*(:[0-9]+)?(/[a-z0-9._-]+)+(:[A-Za-z0-9._-]+)?@sha256:[0-9a-f]{64}$")
DIGEST = re.compile(r"@?sha256:[0-9a-f]{64}")
FROM = re.compile(r"^\s*FROM\s+(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?\s*$", re.I)
ARG = re.compile(r"^(\s*ARG\s+)([A-Za-z_][A-Za-z0-9_]*)(?:=(\S*))?\s*$", re.I)
VAR = re.compile(r"^\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?$")
SKIP_DIRS = {".git", "target", "targets", "node_modules", "renders"}


def read_pins(root, problems):
    pins = {}
    path = root / PIN_FILE
    if not path.is_file():
        problems.append(f"{PIN_FILE}: missing")
        return pins
    for n, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, value = line.partition("=")
        if not sep or not re.fullmatch(r"[A-Z_][A-Z0-9_]*", name):
            problems.append(f"{PIN_FILE}:{n}: not NAME=IMAGE@sha256:DIGEST: {line!r}")
        elif name in pins:
            problems.append(f"{PIN_FILE}:{n}: {name} is pinned twice")
        elif not PINNED.match(value):
            problems.append(f"{PIN_FILE}:{n}: {name}={value!r} is not pinned by digest (IMAGE@sha256:<64 hex>)")
        else:
            pins[name] = value
    return pins


def dockerfiles(root):
    found = []
    for path in sorted(root.rglob("*Dockerfile*")):
        rel = path.relative_to(root)
        if path.is_file() and not SKIP_DIRS & set(rel.parts[:-1]):
            found.append(path)
    return found


def check_dockerfile(root, path, pins, write, problems, used):
    rel = path.relative_to(root)
    lines = path.read_text().splitlines(keepends=True)
    global_args = {}  # name -> (line index, default)
    stages = set()
    seen_from = False
    for i, line in enumerate(lines):
        if m := ARG.match(line):
            if not seen_from:
                global_args[m.group(2)] = (i, m.group(3))
            continue
        m = FROM.match(line)
        if not m:
            continue
        seen_from = True
        ref, stage = m.group(1), m.group(2)
        where = f"{rel}:{i + 1}"
        if ref == "scratch" or ref in stages:
            pass
        elif var := VAR.match(ref):
            name = var.group(1)
            used.add(name)
            if name not in pins:
                problems.append(f"{where}: FROM {ref}: {name} is not in {PIN_FILE}")
            elif name not in global_args:
                problems.append(f"{where}: FROM {ref}: no global `ARG {name}=` before the first FROM")
            elif global_args[name][1] != pins[name]:
                if write:
                    j = global_args[name][0]
                    lines[j] = ARG.sub(lambda a: f"{a.group(1)}{name}={pins[name]}", lines[j].rstrip("\n")) + "\n"
                else:
                    problems.append(
                        f"{rel}:{global_args[name][0] + 1}: ARG {name} default {global_args[name][1]!r} differs from "
                        f"{PIN_FILE} ({pins[name]}); run scripts/check-base-images.py --write")
        else:
            why = "not pinned by digest" if not DIGEST.search(ref) else f"a literal image; use ${{NAME}} from {PIN_FILE}"
            problems.append(f"{where}: FROM {ref}: {why}")
        if stage:
            stages.add(stage)
    if not seen_from:
        problems.append(f"{rel}: no FROM")
    if write:
        path.write_text("".join(lines))


def check_kaniko(root, pins, used, problems):
    job = root / KANIKO_JOB
    if not job.is_file():
        problems.append(f"{KANIKO_JOB}: missing")
        return
    text = job.read_text()
    images = re.findall(r"^\s*image:\s*(\S+)\s*$", text, re.M)
    if not images:
        problems.append(f"{KANIKO_JOB}: no image:")
    for image in images:
        var = VAR.match(image)
        if not var:
            problems.append(f"{KANIKO_JOB}: image: {image}: a literal; use ${{NAME}} from {PIN_FILE}")
        elif var.group(1) not in pins:
            problems.append(f"{KANIKO_JOB}: image: {image}: {var.group(1)} is not in {PIN_FILE}")
    for name in sorted(used):
        if f"--build-arg={name}=${{{name}}}" not in text:
            problems.append(f"{KANIKO_JOB}: does not pass --build-arg={name}=${{{name}}} (a Dockerfile's FROM uses it)")
    build = root / KANIKO_BUILD
    if build.is_file() and DIGEST.search(build.read_text()):
        problems.append(f"{KANIKO_BUILD}: names a digest of its own; read it from {PIN_FILE}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[1])
    parser.add_argument("--write", action="store_true", help="rewrite the Dockerfiles' ARG defaults from the pin file")
    args = parser.parse_args(argv)
    root = args.root.resolve()
    problems = []
    pins = read_pins(root, problems)
    files = dockerfiles(root)
    if not files:
        problems.append("no Dockerfile found")
    used = set()
    for path in files:
        check_dockerfile(root, path, pins, args.write and not problems, problems, used)
    check_kaniko(root, pins, used, problems)
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    if problems:
        return 1
    print(f"base images: {len(files)} Dockerfiles and {KANIKO_JOB} use {len(pins)} digests from {PIN_FILE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
