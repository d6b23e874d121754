"""Medians, ratios to the best peer, and the Markdown tables of a run."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

# (key, heading, higher is better, format)
METRICS = [
    ("small_rps", "small req/s", True, "{:,.0f}"),
    ("small_p50_ms", "p50 ms", False, "{:.2f}"),
    ("small_p99_ms", "p99 ms", False, "{:.2f}"),
    ("big_mb_s", "1 MiB MB/s", True, "{:,.0f}"),
    ("hs_per_s", "handshakes/s", True, "{:,.0f}"),
    ("rss_mib", "pair peak RSS MiB", False, "{:.1f}"),
    ("cpu_us_per_req", "pair CPU µs/small req", False, "{:.0f}"),
]
REFERENCE = "direct"
# Limits of the machine, not sidecars: no ratio, never the best peer.
LIMITS = ("direct", "relay")
OTHERS = ("nginx", "haproxy", "ghostunnel")


@dataclass
class Samples:
    """Every repetition's figures for one peer."""

    peer: str
    values: dict[str, list[float]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def add(self, key: str, value: float) -> None:
        self.values.setdefault(key, []).append(value)

    def median(self, key: str) -> float | None:
        v = self.values.get(key)
        return statistics.median(v) if v else None


def _best(samples: list[Samples], key: str, higher: bool) -> float | None:
    vals = [m for s in samples if s.peer not in LIMITS
            and not (key == "hs_per_s" and s.peer == "ours-http")
            if (m := s.median(key)) is not None and m > 0]
    if not vals:
        return None
    return max(vals) if higher else min(vals)


def side_by_side(samples: list[Samples]) -> str:
    """The main table: each figure's median and, in parentheses, its ratio to the best peer."""
    head = "| path | " + " | ".join(h for _, h, _, _ in METRICS) + " |"
    sep = "|---|" + "---:|" * len(METRICS)
    rows = [head, sep]
    for s in samples:
        cells = []
        for key, _, higher, fmt in METRICS:
            m = s.median(key)
            if m is None:
                cells.append("–")
                continue
            best = _best(samples, key, higher)
            ratio = f" ({m / best:.2f}×)" if best and s.peer not in LIMITS else ""
            cells.append(fmt.format(m) + ratio)
        rows.append(f"| {s.peer} | " + " | ".join(cells) + " |")
    if any(s.peer == "ours-http" for s in samples):
        rows += ["", "In `http` mode the new-connection column counts new *app* connections per "
                 "second: HTTP/2 between the sidecars carries them over already-open mTLS "
                 "connections, so it is not a handshake rate."]
    return "\n".join(rows)


def spread(samples: list[Samples]) -> str:
    """Every raw sample, so the noise is visible next to the medians."""
    rows = ["| path | " + " | ".join(h for _, h, _, _ in METRICS) + " |",
            "|---|" + "---|" * len(METRICS)]
    for s in samples:
        cells = []
        for key, _, _, fmt in METRICS:
            v = s.values.get(key, [])
            cells.append(" / ".join(fmt.format(x) for x in v) if v else "–")
        rows.append(f"| {s.peer} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


TARGETS = [
    # (metric, target ratio, higher-is-better, against, description)
    ("small_rps", 1.5, True, "best", "small requests: throughput ≥ 1.5× best peer"),
    ("small_p99_ms", 0.6, False, "best", "small requests: p99 ≤ 0.6× best peer"),
    ("big_mb_s", 1.5, True, "best", "1 MiB responses: MB/s ≥ 1.5× best peer"),
    ("hs_per_s", 2.0, True, "best", "new connections: handshakes/s ≥ 2× best peer"),
    ("rss_mib", 0.25, False, "haproxy", "pair peak RSS ≤ 0.25× HAProxy's"),
]


def targets(samples: list[Samples], ours: str = "ours-tcp") -> str:
    """Issue 6's targets for `ours` against the best of nginx, HAProxy and ghostunnel."""
    by = {s.peer: s for s in samples}
    if ours not in by:
        return f"_{ours} did not run: no target can be judged._"
    rows = ["| target | ours | reference | ratio | met |", "|---|---:|---:|---:|:---:|"]
    for key, goal, higher, against, desc in TARGETS:
        mine = by[ours].median(key)
        refs = [(p, by[p].median(key)) for p in OTHERS if p in by and by[p].median(key)]
        if against != "best":
            refs = [r for r in refs if r[0] == against]
        if mine is None or not refs:
            rows.append(f"| {desc} | – | – | – | n/a |")
            continue
        ref_peer, ref = (max if higher else min)(refs, key=lambda r: r[1])
        ratio = mine / ref
        met = ratio >= goal if higher else ratio <= goal
        rows.append(f"| {desc} | {mine:,.2f} | {ref:,.2f} ({ref_peer}) | {ratio:.2f}× | "
                    f"{'yes' if met else 'no'} |")
    http = by.get("ours-http")
    if http and http.median("small_rps"):
        refs = [by[p].median("small_rps") for p in OTHERS if p in by and by[p].median("small_rps")]
        if refs:
            ratio = http.median("small_rps") / max(refs)
            rows.append(f"| `http` mode throughput ≥ best peer's `tcp` | "
                        f"{http.median('small_rps'):,.0f} | {max(refs):,.0f} | {ratio:.2f}× | "
                        f"{'yes' if ratio >= 1 else 'no'} |")
    return "\n".join(rows)
