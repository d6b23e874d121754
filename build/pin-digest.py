#!/usr/bin/env python3
"""Write one image's repository and digest into helm/images.yaml, keeping its comments.

usage: build/pin-digest.py FILE NAME REPOSITORY sha256:DIGEST
"""
import re
import sys


def main():
    if len(sys.argv) != 5:
        sys.exit(__doc__)
    path, name, repository, digest = sys.argv[1:]
    if not re.fullmatch(r"sha256:[0-9a-f]{64}", digest):
        sys.exit(f"error: {digest!r} is not a sha256 digest")
    text = open(path, encoding="utf-8").read()
    block = re.compile(
        rf"(^  {re.escape(name)}:\n)((?:    .*\n|\s*#.*\n)*?)(    repository: ).*\n((?:    .*\n)*?)(    digest: ).*\n",
        re.M,
    )
    new, count = block.subn(
        lambda m: f"{m.group(1)}{m.group(2)}{m.group(3)}{repository}\n{m.group(4)}{m.group(5)}\"{digest}\"\n",
        text,
        count=1,
    )
    if count != 1:
        sys.exit(f"error: no images.{name} block with repository and digest in {path}")
    open(path, "w", encoding="utf-8").write(new)
    print(f"pinned images.{name} = {repository}@{digest} in {path}")


if __name__ == "__main__":
    main()
