"""Where the CPU goes during each load, and what that allows: the tables of the "Where the CPU
goes" and "Feasibility" sections of benches/README.md, written into every results file so that
refreshing the README is a copy.

Every figure is the median over repetitions of a per-unit figure from `account` (µs of CPU per
request, per new connection, or per MB), so that a noisy repetition moves the rate but hardly
the cost per unit.
"""

from __future__ import annotations

from .account import CORES
from .report import LIMITS, OTHERS, Samples

# Both ends of one full mTLS 1.3 handshake with TLS13_AES_128_GCM_SHA256 and X25519, in memory,
# on one thread (criterion `handshake` bench, results/2026-11-28-1440-criterion-handshake.txt).
CRYPTO_US = 239.0
# (load key, unit, rate key, rate heading)
LOADS = {
    "small": ("request", "small_rps", "req/s"),
    "big": ("MB", "big_mb_s", "MB/s"),
    "hs": ("new connection", "hs_per_s", "conns/s"),
}


def _m(s: Samples, key: str) -> float | None:
    return s.median(key)


def pair_us(s: Samples, load: str) -> float | None:
    u, k = _m(s, f"{load}_side_user_us"), _m(s, f"{load}_side_sys_us")
    return None if u is None or k is None else u + k


def client_us(s: Samples, load: str) -> float | None:
    """C: what the load generator and the backend cost per unit (the same for any sidecar)."""
    w, b = _m(s, f"{load}_wrk_us"), _m(s, f"{load}_backend_us")
    return None if w is None or b is None else w + b


def _f(v: float | None, fmt: str = "{:,.0f}") -> str:
    return "–" if v is None else fmt.format(v)


def cpu_table(samples: list[Samples], load: str) -> str:
    """µs of CPU per unit of `load` for each part, and the machine's time that went elsewhere.
    "pair's cores" is how much of the machine the two sidecars got (pair µs × rate): on a
    machine shared with other work, the scheduler's share decides the rate as much as the
    cost does."""
    unit, rate_key, rate_head = LOADS[load]
    fmt = "{:,.1f}" if load != "hs" else "{:,.0f}"
    rows = [f"| path | {rate_head} | sidecars user µs/{unit} | sidecars sys µs | pair µs | "
            "pair's cores | wrk µs | backend µs | all four µs | other work % | idle % | "
            "steal % |",
            "|---|" + "---:|" * 11]
    for s in samples:
        if s.values.get(f"{load}_wrk_us") is None:
            continue
        pair, c = pair_us(s, load), client_us(s, load)
        total = None if c is None else c + (pair or 0.0)
        is_direct = s.peer == "direct"
        rows.append(
            f"| {s.peer} | {_f(_m(s, rate_key))} | "
            f"{'–' if is_direct else _f(_m(s, f'{load}_side_user_us'), fmt)} | "
            f"{'–' if is_direct else _f(_m(s, f'{load}_side_sys_us'), fmt)} | "
            f"{'–' if is_direct else _f(pair, fmt)} | "
            f"{'–' if is_direct or pair is None else _f(pair * (_m(s, rate_key) or 0) / 1e6, '{:.2f}')} | "
            f"{_f(_m(s, f'{load}_wrk_us'), fmt)} | "
            f"{_f(_m(s, f'{load}_backend_us'), fmt)} | {_f(total, fmt)} | "
            f"{_f(_m(s, f'{load}_other_pct'))} | {_f(_m(s, f'{load}_idle_pct'))} | "
            f"{_f(_m(s, f'{load}_steal_pct'))} |")
    return "\n".join(rows)


def handshake_split(samples: list[Samples]) -> str:
    """The new-connection load as shares of the 2 cores: the handshake crypto (239 µs per
    connection, both ends), the rest of the sidecars' user time, their system time (TCP
    connect/accept/close, epoll, loopback delivery), wrk, the backend, and what this run did
    not get (other work, idle, steal)."""
    rows = [f"| path | conns/s | crypto {CRYPTO_US:.0f} µs × rate | sidecars' other user | "
            "sidecars' sys | wrk | backend | other work | idle | steal | sum |",
            "|---|" + "---:|" * 10]
    for s in samples:
        rate, user = _m(s, "hs_per_s"), _m(s, "hs_side_user_us")
        if rate is None or user is None:
            continue
        tls = s.peer not in LIMITS and s.peer != "ours-http"
        share = lambda us: 100 * us * rate / (CORES * 1e6)  # noqa: E731
        crypto = share(CRYPTO_US) if tls else 0.0
        parts = [crypto, share(user) - crypto, share(_m(s, "hs_side_sys_us") or 0),
                 share(_m(s, "hs_wrk_us") or 0), share(_m(s, "hs_backend_us") or 0),
                 _m(s, "hs_other_pct") or 0, _m(s, "hs_idle_pct") or 0,
                 _m(s, "hs_steal_pct") or 0]
        cells = [f"{p:.0f} %" for p in parts]
        if not tls:
            cells[0] = "–"
        if s.peer == "direct":
            cells[1] = cells[2] = "–"
        rows.append(f"| {s.peer} | {rate:,.0f} | " + " | ".join(cells)
                    + f" | {sum(parts):.0f} % |")
    rows += ["", f"The crypto column is what {CRYPTO_US:.0f} µs per connection (both ends of a "
             "full handshake, rustls + aws-lc in memory, criterion) would take at the measured "
             "rate; for the peers it stands for the same work done by OpenSSL or Go's crypto "
             "(OpenSSL's public-key operations alone: 273 µs, `bench.py limits`). "
             "\"sidecars' other user\" is the rest of their user time (negative would mean a "
             "peer's handshake is cheaper than rustls' in memory). Shares are medians of "
             "each column, so the sum is near, not exactly, 100 %."]
    return "\n".join(rows)


def ceilings(samples: list[Samples]) -> str:
    """What the 2 cores would allow at each path's measured cost per new connection: with the
    whole machine for the run (wrk and backend included), with only the sidecar pair to pay
    for, and for the handshake crypto alone."""
    rows = ["| path | measured conns/s | 2 cores ÷ all four (whole machine, no other work) | "
            "2 cores ÷ pair (wrk and backend free) | measured ÷ whole-machine figure |",
            "|---|---:|---:|---:|---:|"]
    for s in samples:
        rate, pair, c = _m(s, "hs_per_s"), pair_us(s, "hs"), client_us(s, "hs")
        if rate is None or c is None:
            continue
        whole = CORES * 1e6 / (c + (pair or 0))
        alone = "–" if not pair else f"{CORES * 1e6 / pair:,.0f}"
        rows.append(f"| {s.peer} | {rate:,.0f} | {whole:,.0f} | {alone} | "
                    f"{rate / whole:.0%} |")
    rows += ["", f"The crypto alone ({CRYPTO_US:.0f} µs per handshake, both ends) allows "
             f"{CORES * 1e6 / CRYPTO_US:,.0f} handshakes/s on {CORES} cores."]
    return "\n".join(rows)


def _best_peer(samples: list[Samples], key: str, higher: bool = True) -> Samples | None:
    cands = [s for s in samples if s.peer in OTHERS and _m(s, key)]
    pick = max if higher else min
    return pick(cands, key=lambda s: _m(s, key)) if cands else None


def _cheapest_peer(samples: list[Samples], load: str) -> Samples | None:
    cands = [s for s in samples if s.peer in OTHERS and pair_us(s, load)]
    return min(cands, key=lambda s: pair_us(s, load)) if cands else None


def feasibility(samples: list[Samples], load: str, goals: list[tuple[str, float]],
                ours: str = "ours-tcp") -> str:
    """On a CPU-saturated box the throughput of a path is the cores over its CPU per unit, so
    against a peer whose pair costs S' a sidecar pair of cost S reaches at most
    (C + S') / (C + S), where C is the load generator's and the backend's cost. The reference
    is the cheapest peer pair (with a fair share of a saturated box it is the fastest; which peer
    is fastest in a given run also depends on how many threads it runs, see the caveats). For a
    target ratio R, S must be at most (C + S') / R − C; compare that with the plain TCP relay
    pair (the kernel's share of two extra hops, no TLS)."""
    unit, rate_key, _ = LOADS[load]
    by = {s.peer: s for s in samples}
    mine, ref, relay = by.get(ours), _cheapest_peer(samples, load), by.get("relay")
    fastest = _best_peer(samples, rate_key)
    if mine is None or ref is None or fastest is None or pair_us(mine, load) is None:
        return f"_{ours} or a peer did not run: no bound for this load._"
    c, s, s_ref = client_us(mine, load), pair_us(mine, load), pair_us(ref, load)
    if c is None or s_ref is None:
        return "_no CPU figures for this load._"
    fmt = "{:,.1f}"
    rows = [f"| quantity (µs of CPU per {unit}) | value |", "|---|---:|",
            f"| C: wrk + backend, in {ours}'s run | {fmt.format(c)} |",
            f"| S: {ours}'s pair (user + sys) | {fmt.format(s)} |",
            f"| S': the cheapest peer pair, {ref.peer} | {fmt.format(s_ref)} |"]
    floor = None
    if relay is not None and pair_us(relay, load) is not None:
        floor = pair_us(relay, load)
        rows.append(f"| plain TCP relay pair (nginx stream, no TLS): user + sys | "
                    f"{fmt.format(floor)} (sys {fmt.format(_m(relay, f'{load}_side_sys_us'))}) |")
    measured = (_m(mine, rate_key) or 0) / (_m(ref, rate_key) or 1)
    rows.append(f"| ratio these costs allow against {ref.peer}, (C + S') / (C + S) | "
                f"{(c + s_ref) / (c + s):.2f}× (measured: {measured:.2f}×; fastest peer in "
                f"this run: {fastest.peer}, pair {fmt.format(pair_us(fastest, load) or 0)}) |")
    if floor is not None:
        rows.append(f"| ratio a pair costing only the plain relay would allow, "
                    f"(C + S') / (C + relay) | {(c + s_ref) / (c + floor):.2f}× |")
    for label, ratio in goals:
        need = (c + s_ref) / ratio - c
        verdict = ""
        if floor is not None:
            verdict = (f" — {'below' if need < floor else 'above'} the plain relay's "
                       f"{fmt.format(floor)}")
        rows.append(f"| S needed for {label}: (C + S') / {ratio:.2f} − C | "
                    f"{'impossible (< 0)' if need <= 0 else fmt.format(need)}{verdict} |")
    return "\n".join(rows)


def p99_bound(samples: list[Samples], conns: int = 64, ours: str = "ours-tcp") -> str:
    """The p99 target split into what the CPU bounds and what it does not. With `conns`
    connections in a closed loop the mean latency is conns / rate (Little's law), so
    p99 ratio = mean-latency ratio × tail ratio, where the tail is p99 / mean. On a saturated
    box the mean-latency ratio is at least (C + S) / (C + S'); the tail is not bounded by the
    CPU (scheduling, other work, each proxy's batching)."""
    by = {s.peer: s for s in samples}
    mine, ref, relay = by.get(ours), _best_peer(samples, "small_p99_ms", higher=False), \
        by.get("relay")
    if mine is None or ref is None or not _m(mine, "small_rps") or not _m(ref, "small_rps"):
        return f"_{ours} or a peer did not run: no p99 split._"
    c, s, s_ref = client_us(mine, "small"), pair_us(mine, "small"), pair_us(ref, "small")
    if c is None or s is None or s_ref is None:
        return "_no CPU figures for the small load._"
    mean = lambda x: conns / _m(x, "small_rps") * 1e3  # noqa: E731  (ms)
    tail = lambda x: _m(x, "small_p99_ms") / mean(x)  # noqa: E731
    rows = ["| figure | ours | " + ref.peer + " (best p99) | ratio |", "|---|---:|---:|---:|",
            f"| p99 ms | {_m(mine, 'small_p99_ms'):.2f} | {_m(ref, 'small_p99_ms'):.2f} | "
            f"{_m(mine, 'small_p99_ms') / _m(ref, 'small_p99_ms'):.2f}× |",
            f"| mean latency ms ({conns} / rate) | {mean(mine):.2f} | {mean(ref):.2f} | "
            f"{mean(mine) / mean(ref):.2f}× |",
            f"| tail: p99 / mean | {tail(mine):.1f} | {tail(ref):.1f} | "
            f"{tail(mine) / tail(ref):.2f}× |"]
    floors = [("today's pair", "S", s)]
    if relay is not None and pair_us(relay, "small") is not None:
        floors.append(("a pair costing only the plain relay", "relay", pair_us(relay, "small")))
    for label, sym, cost in floors:
        m = (c + cost) / (c + s_ref)
        rows.append(f"| lowest mean-latency ratio the CPU allows, {label}: (C + {sym}) / "
                    f"(C + S') | | | {m:.2f}× |")
        rows.append(f"| tail ratio then needed for p99 0.6×: 0.6 / {m:.2f} | | | "
                    f"{0.6 / m:.2f}× |")
    return "\n".join(rows)


def cpu_spread(samples: list[Samples]) -> str:
    """Every repetition's pair cost and C, per load: the noise of the per-unit figures (much
    smaller than that of the rates)."""
    heads = [f"{load} {what}" for load in LOADS for what in ("pair µs", "C µs")]
    rows = ["| path | " + " | ".join(heads) + " |", "|---|" + "---|" * len(heads)]
    for s in samples:
        cells = []
        for load in LOADS:
            for a, b in ((f"{load}_side_user_us", f"{load}_side_sys_us"),
                         (f"{load}_wrk_us", f"{load}_backend_us")):
                xs, ys = s.values.get(a, []), s.values.get(b, [])
                pair = a.endswith("side_user_us")
                cells.append("–" if pair and s.peer == "direct" else
                             " / ".join(f"{x + y:,.0f}" for x, y in zip(xs, ys)) or "–")
        if any(c != "–" for c in cells):
            rows.append(f"| {s.peer} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def sections(samples: list[Samples]) -> list[str]:
    """The README's "Where the CPU goes" tables for one run, as Markdown lines."""
    out = ["### New connections: CPU per connection", "", cpu_table(samples, "hs"), "",
           "### New connections: the 2 cores during the load", "", handshake_split(samples), "",
           "### New connections: what the 2 cores allow at these costs", "", ceilings(samples),
           "",
           "### Small keep-alive requests: CPU per request", "", cpu_table(samples, "small"), "",
           "### 1 MiB responses: CPU per MB", "", cpu_table(samples, "big"), "",
           "### Feasibility on a CPU-saturated 2-core box (`ours-tcp` against the cheapest peer)", "",
           "Small keep-alive requests (the mean-latency row: with 64 connections in a closed loop "
           "the mean latency is 64 / rate, Little's law, so 0.6× the mean is 1.67× the rate):",
           "", feasibility(samples, "small", [("1.5× throughput", 1.5),
                                              ("mean latency 0.6×", 1 / 0.6)]), "",
           "Small requests' p99 = mean latency × tail (p99 / mean); the CPU bounds the first "
           "factor only:", "", p99_bound(samples),
           "", "New connections:", "",
           feasibility(samples, "hs", [("2× handshakes/s", 2.0)]), "",
           "1 MiB responses:", "", feasibility(samples, "big", [("1.5× MB/s", 1.5)]), "",
           "### CPU per unit, every repetition (pair = both sidecars, C = wrk + backend)", "",
           cpu_spread(samples)]
    return out


def selftest() -> None:
    """The tables from synthetic samples: the bound's arithmetic and the cells."""
    def mk(name: str, rate: float, su: float, ss: float, w: float, b: float) -> Samples:
        s = Samples(name)
        for load, key in (("small", "small_rps"), ("hs", "hs_per_s"), ("big", "big_mb_s")):
            s.add(key, rate)
            for k, v in (("side_user_us", su), ("side_sys_us", ss), ("wrk_us", w),
                         ("backend_us", b), ("other_pct", 10), ("idle_pct", 5),
                         ("steal_pct", 1)):
                s.add(f"{load}_{k}", v)
        return s
    ss = [mk("direct", 40000, 0, 0, 10, 10), mk("ours-tcp", 20000, 20, 30, 10, 10),
          mk("nginx", 18000, 25, 35, 10, 10), mk("relay", 30000, 5, 25, 10, 10)]
    text = feasibility(ss, "small", [("1.5× throughput", 1.5)])
    # C = 20, S = 50, S' = 60: reach 80/70 = 1.14; need 80/1.5 - 20 = 33.3 (above relay's 30)
    assert "| 1.14× (measured: 1.11×; fastest peer in this run: nginx, pair 60.0) |" in text, text
    assert "| S needed for 1.5× throughput: (C + S') / 1.50 − C | 33.3 — above the plain " \
        "relay's 30.0 |" in text, text
    assert "(C + S') / (C + relay) | 1.60× |" in text, text
    split = handshake_split(ss)
    assert "| ours-tcp | 20,000 |" in split and "| relay | 30,000 | – |" in split, split
    table = cpu_table(ss, "small")
    assert "| direct | 40,000 | – | – | – | – | 10.0 | 10.0 | 20.0 |" in table, table
    assert "| ours-tcp | 20,000 | 20.0 | 30.0 | 50.0 | 1.00 | 10.0 |" in table, table
    assert "| ours-tcp | 20,000 | 28,571 | 40,000 | 70% |" in ceilings(ss), ceilings(ss)
    assert "| ours-tcp | 50 | 20 | 50 | 20 | 50 | 20 |" in cpu_spread(ss), cpu_spread(ss)
    ss[1].add("small_p99_ms", 8.0)
    ss[2].add("small_p99_ms", 10.0)
    pb = p99_bound(ss)
    assert "| tail ratio then needed for p99 0.6×: 0.6 / 0.88 | | | 0.69× |" in pb, pb
    assert sections(ss)
