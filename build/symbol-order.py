#!/usr/bin/env python3
"""Writes proxy/symbol-order.txt from what a release sidecar executed (build/symbol-order.sh runs it).

    symbol-order.py order LINK_MAP BINARY_NAME OUT DIR...   every DIR holds callgrind files (cg.*,
                                        from --dump-instr=yes --compress-pos=no) and perf files
                                        (samples.*.data, faults.*.data) of one workload, named
                                        tcp, http or json; the order is tcp, then the rest
    symbol-order.py check LINK_MAP ORDER_FILE          how many names of ORDER_FILE the link has

The unit the linker moves is an input section (one function in Rust and in aws-lc's C; one
assembly file in aws-lc's asm), so every executed address is mapped to its input section through
lld's -Map output (linked with --no-demangle) and the section's first symbol is written.
"""

import bisect
import re
import subprocess
import sys
from pathlib import Path

LINE = re.compile(r"^\s*([0-9a-f]+)\s+([0-9a-f]+)\s+([0-9a-f]+)\s+(\d+) (\s*)(.*)$")


def parse_map(path):
    """(start, size, output section, first symbol) of every input section of .text."""
    secs, out = [], None
    for line in open(path, encoding="utf-8", errors="replace"):
        m = LINE.match(line.rstrip("\n"))
        if not m:
            continue
        vma, _lma, size, _align, indent, rest = m.groups()
        depth = len(indent) // 8
        if depth == 0:
            out = rest
        elif depth == 1:
            secs.append([int(vma, 16), int(size, 16), out, None])
        elif depth == 2 and secs and secs[-1][3] is None:
            secs[-1][3] = rest
    return sorted((s for s in secs if s[2] == ".text" and s[1] and s[3]), key=lambda s: s[0])


def callgrind_addrs(path, binary):
    addrs, ours = set(), False
    for line in open(path, encoding="utf-8", errors="replace"):
        if line.startswith("ob="):
            ours = line.rstrip().endswith("/" + binary)
        elif ours and line.startswith("0x"):
            addrs.add(int(line.split()[0], 16))
    return addrs


def perf_addrs(path, binary, field):
    """Addresses inside BINARY of perf samples (ip) or page faults (addr), made file-relative."""
    out = subprocess.run(["perf", "script", "-i", str(path), "--show-mmap-events", "-F", field],
                         capture_output=True, text=True, check=False).stdout
    addrs, base = set(), None
    for line in out.splitlines():
        if "PERF_RECORD_MMAP2" in line:
            if line.rstrip().endswith("/" + binary) and "@ 0 " in line:
                base = int(re.search(r"\[0x([0-9a-f]+)\(", line).group(1), 16)
            continue
        parts = line.split()
        if base is None or not parts:
            continue
        try:
            addrs.add(int(parts[0], 16) - base)
        except ValueError:
            pass
    return addrs


def order(map_path, binary, out_path, dirs):
    secs = parse_map(map_path)
    starts = [s[0] for s in secs]

    def section(addr):
        i = bisect.bisect_right(starts, addr) - 1
        return secs[i] if i >= 0 and addr < secs[i][0] + secs[i][1] else None

    tiers = {}
    for d in map(Path, dirs):
        addrs = set()
        for f in d.glob("cg.*"):
            addrs |= callgrind_addrs(f, binary)
        for f in d.glob("samples.*.data"):
            addrs |= perf_addrs(f, binary, "ip")
        for f in d.glob("faults.*.data"):
            addrs |= perf_addrs(f, binary, "addr")
        tiers.setdefault(d.name, set()).update(
            (s[0], s[1], s[3]) for s in map(section, addrs) if s)
    seen, lines = set(), []
    for name in ["tcp"] + sorted(t for t in tiers if t != "tcp"):
        # Small sections first in their original order; sections over 100 kB (aws-lc's AVX-512
        # AES-GCM file) last in the tier: only part of such a section is ever touched.
        tier = sorted(tiers.get(name, ()), key=lambda s: (s[1] > 100_000, s[0]))
        new = [s for s in tier if s[2] not in seen]
        seen.update(s[2] for s in new)
        lines += [s[2] for s in new]
        print(f"{name}: {len(new)} sections, {sum(s[1] for s in new)} bytes", file=sys.stderr)
    Path(out_path).write_text("".join(n + "\n" for n in lines), encoding="utf-8")


def check(map_path, order_path):
    names = {s[3] for s in parse_map(map_path)}
    wanted = Path(order_path).read_text(encoding="utf-8").split()
    found = sum(1 for n in wanted if n in names)
    print(f"{found} of {len(wanted)} names of {order_path} are in this link")
    return 0 if found * 10 >= len(wanted) * 9 else 1


if __name__ == "__main__":
    if len(sys.argv) >= 6 and sys.argv[1] == "order":
        order(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5:])
    elif len(sys.argv) == 4 and sys.argv[1] == "check":
        sys.exit(check(sys.argv[2], sys.argv[3]))
    else:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
