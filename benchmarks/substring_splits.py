"""How much work exact multi-index k-NN must do on uniform 64-bit codes, for every split into substring tables: a
model, not a timing. It explains why the 10M/1M latency ratio of exact k=10 on uniform codes stays near 3.

    .venv/bin/python benchmarks/substring_splits.py

For each split of 64 bits into 2-7 substrings of 8-26 bits, and each 10th-neighbour distance typical of the size
(13-15 bits at 10M, 14-16 at 1M, as measured in docs/benchmarks-log.md), it takes the cheapest per-table radii whose
pigeonhole cover reaches that distance (``sum(radius_j + 1) >= distance + 1``, as the search's shells do) and
costs them as probes times ``probe_cost`` plus the codes in the probed buckets (``n * ball(bits, r) / 2**bits``
per table: uniform codes). Prints the best splits at each size and the ones ``MultiIndexHash`` chooses.
"""

from __future__ import annotations

from itertools import combinations_with_replacement
from math import comb

SIZES = ((1_000_000, (14, 15, 16)), (10_000_000, (13, 14, 15)))
CHOSEN = {1_000_000: (12, 13, 13, 13, 13), 10_000_000: (16, 16, 16, 16)}  # MultiIndexHash picks m=5, m=4


def ball(bits: int, r: int) -> int:
    return sum(comb(bits, i) for i in range(min(r, bits) + 1)) if r >= 0 else 0


def cheapest(lens: tuple[int, ...], dist: int, n: int, probe_cost: float) -> tuple[float, int, float]:
    """(cost, probes, codes read) of the cheapest radii covering ``dist``: a knapsack over the tables."""
    need = dist + 1
    best = {0: (0.0, 0, 0.0)}
    for b in lens:
        nxt: dict[int, tuple[float, int, float]] = {}
        for c, (cost, probes, codes) in best.items():
            for r in range(-1, min(b, 8) + 1):
                p = ball(b, r)
                cand = (cost + probe_cost * p + n * p / 2**b, probes + p, codes + n * p / 2**b)
                c2 = min(need, c + r + 1)
                if c2 not in nxt or cand[0] < nxt[c2][0]:
                    nxt[c2] = cand
        best = nxt
    return best[need]


def main() -> int:
    for probe_cost in (40.0, 80.0):
        per_size = {}
        for n, dists in SIZES:
            rows = []
            for m in range(2, 8):
                for lens in combinations_with_replacement(range(8, 27), m):
                    if sum(lens) == 64:
                        r = [cheapest(lens, d, n, probe_cost) for d in dists]
                        rows.append((sum(x[0] for x in r) / len(r), lens, r))
            rows.sort()
            per_size[n] = rows[0][0]
            print(
                f"{n:,} codes, a probe = {probe_cost:g} codes read (cost: mean over 10th-neighbour distances "
                f"{dists}; per distance: probes, codes read)"
            )
            shown = rows[:3] + [x for x in rows[3:] if x[1] == CHOSEN[n]]
            for cost, lens, r in shown:
                tag = "  chosen" if lens == CHOSEN[n] else ""
                print(f"  {cost:>10,.0f}  {lens}  " + ", ".join(f"{p:,} / {c:,.0f}" for _, p, c in r) + tag)
        (small, _), (large, _) = SIZES
        print(f"  best 10M / best 1M: {per_size[large] / per_size[small]:.2f}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
