"""The papers' lookup at 1M and 10M codes: the 20-bit address ball (``AddressTable.ball``), then the shortlist ranked
by the 128-bit code, against faiss ``IndexBinaryHash`` (b = 20, nflip = r) and ``IndexBinaryMultiHash``.

    .venv/bin/python benchmarks/address_lookup.py                         # 1M and 10M, r = 0..4, 200 queries
    .venv/bin/python benchmarks/address_lookup.py --sizes 100000,1000000 --queries 50 --budget 5   # a quick look

Codes: 128-bit codes scattered around ``--centres`` random centres (each bit flipped with probability ``--flip``),
as ``lookup_bench``'s ``clustered`` codes but 128 bits wide; queries are held out (drawn the same way, not from the
codes); the 1M set is the first 1M of the 10M set. The address is 20 bits of the code: the first 20 bits faiss's
``IndexBinaryHash`` hashes (bytes 0 and 1 and the low 4 bits of byte 2), so both probe the same ball and must
return the same top-k distances (checked). ``--wide-bits 24`` adds a 24-bit address at the large size.

Per radius, the lookup's stages are timed apart, one query per call: ``visit`` (``AddressTable.visit``: the
ball's addresses enumerated and each one's run of rows read; a cost fixed by the bits and the radius), ``gather``
(``AddressTable.gather`` of those runs, unordered: the shortlist's row ids, growing with the collection),
``rerank`` (``AddressTable.rerank`` of those runs: the shortlist's 128-bit codes read and the top ``k`` kept), the
whole ``lookup`` (``AddressTable.search`` = visit + rerank), faiss ``IndexBinaryHash.search(q, k)`` with
``nflip = r``, and ``IndexBinaryMultiHash(nhash=6, b=20)`` at nflip 0 and 1. ``--wide-bits 24`` adds the large
size with a 24-bit address to visit and lookup. Every round times every query on every index back to back (the
order rotating from query to query), so a change in the machine's speed hits all sizes alike; a round's p50 is
its median, the reported p50 the median over ``--rounds`` rounds, the p99 of all rounds' latencies, and the
large/small ratio the median of the rounds' p50 ratios. ``--budget`` caps the seconds of one task's round (at
least 20 queries). Recall is by distance against the exact top ``k`` (faiss ``IndexBinaryFlat``): results no
farther than the true k-th. Prints Markdown tables in microseconds, and writes JSON with ``--json``.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from semhash_spark.index.address import AddressTable  # noqa: E402

BITS = 128
ADDRESS_BITS = 20


def clustered_codes(n: int, rng, centres: np.ndarray, flip: float) -> np.ndarray:
    """``uint64[n, 2]``: a random centre each, every bit flipped with probability ``flip`` (one bit at a time)."""
    words = centres[rng.integers(0, len(centres), size=n)]
    for w in range(BITS // 64):
        col = words[:, w].copy()
        for b in range(64):
            col ^= (rng.random(n) < flip).astype(np.uint64) << np.uint64(b)
        words[:, w] = col
    return np.ascontiguousarray(words)


def faiss_address(codes8: np.ndarray, bits: int) -> np.ndarray:
    """The integer of the first ``bits`` bits faiss's hash reads (bit ``i`` is bit ``i % 8`` of byte ``i // 8``)."""
    out = np.zeros(codes8.shape[0], np.uint64)
    for i in range(bits):
        out |= ((codes8[:, i // 8] >> (i % 8)) & 1).astype(np.uint64) << np.uint64(i)
    return out


class Lookup:
    """The papers' lookup over one code set: an address table holding the 128-bit codes its shortlist is ranked by."""

    def __init__(self, words: np.ndarray, address_bits: int):
        self.table = AddressTable(
            faiss_address(words.view(np.uint8), address_bits), address_bits, codes=words.view(np.uint8)
        )

    def probe(self, qa: np.ndarray, r: int):
        """The ball's rows (addresses visited, rows gathered; not sorted within a distance, not ranked)."""
        return self.table.ball(qa, r, ordered=False)

    def lookup(self, qa: np.ndarray, q8: np.ndarray, r: int, k: int):
        """Top ``k`` of the ball by 128-bit distance: faiss-shaped ``(D, I)`` padded with -1, as faiss returns
        them (the padding is dropped outside the timing, for both)."""
        return self.table.search(qa, q8, r, k)


def _hit_distances(out) -> np.ndarray:
    """The distances of a one-query faiss-shaped ``(D, I)``, the -1 padding dropped."""
    D, I = out
    return D[0][I[0] >= 0]


def time_sets(fns: dict, nq: int, budget: float, shift: int):
    """Per-query latencies (us) of each index's ``fns[name](i)``, the indexes back to back per query (the order
    rotating from query to query, starting at ``shift``), within ``budget`` seconds (at least 20 queries); and
    the results."""
    names = list(fns)
    lat = {s: [] for s in names}
    out = {s: [] for s in names}
    t_end = time.perf_counter() + budget
    for i in range(nq):
        rot = (i + shift) % len(names)
        for s in names[rot:] + names[:rot]:
            t = time.perf_counter()
            res = fns[s](i)
            lat[s].append(time.perf_counter() - t)
            out[s].append(res)
        if time.perf_counter() > t_end and i >= 19:
            break
    return {s: np.array(v) * 1e6 for s, v in lat.items()}, out


def recall_by_distance(dists: list, kth: np.ndarray, k: int) -> float:
    """Mean over queries of the results no farther than the true k-th distance, over ``k`` (missing ones miss)."""
    return float(np.mean([np.sum(np.asarray(d)[:k] <= kth[i]) / k for i, d in enumerate(dists)]))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default="1000000,10000000", help="two sizes: small,large")
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--radii", default="0,1,2,3,4")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--centres", type=int, default=10_000)
    p.add_argument("--flip", type=float, default=0.06)
    p.add_argument("--budget", type=float, default=10.0, help="seconds per timed task and round")
    p.add_argument("--wide-bits", type=int, default=24, help="also a wider address at the large size (0: none)")
    p.add_argument("--no-multihash", action="store_true")
    p.add_argument("--json")
    args = p.parse_args(argv)
    import faiss

    faiss.omp_set_num_threads(1)
    small, large = (int(s) for s in args.sizes.split(","))
    radii = [int(r) for r in args.radii.split(",")]
    k, nq = args.k, args.queries
    print(
        f"python {platform.python_version()}, numpy {np.__version__}, faiss {faiss.__version__}; "
        f"{args.centres} centres, flip {args.flip}, {nq} queries, k={k}, {args.rounds} rounds; "
        f"loadavg {Path('/proc/loadavg').read_text().strip()}",
        flush=True,
    )

    rng = np.random.default_rng(0)
    centres = rng.integers(0, 2**63, size=(args.centres, BITS // 64), dtype=np.int64).view(np.uint64) * np.uint64(
        2
    ) + rng.integers(0, 2, size=(args.centres, BITS // 64)).astype(np.uint64)
    t = time.perf_counter()
    db = clustered_codes(large, rng, centres, args.flip)
    q = clustered_codes(nq, rng, centres, args.flip)
    q8 = q.view(np.uint8)
    print(f"codes drawn in {time.perf_counter() - t:.0f}s", flush=True)
    S, L, W = f"{small:,}", f"{large:,}", f"{large:,} / {args.wide_bits} bits"
    sets = {S: (db[:small], ADDRESS_BITS), L: (db, ADDRESS_BITS)}
    if args.wide_bits:
        sets[W] = (db, args.wide_bits)

    ours, exact_kth, fh, fm, rows = {}, {}, {}, {}, []
    for name, (w, ab) in sets.items():
        t = time.perf_counter()
        ours[name] = Lookup(w, ab)
        tb = time.perf_counter() - t
        occ = np.diff(ours[name].table.offsets_)
        occ = occ[occ > 0]
        print(
            f"{name}: {ab}-bit address table built in {tb:.1f}s; {occ.size:,} occupied addresses of {1 << ab:,}, "
            f"items per occupied address mean {occ.mean():.1f}, max {occ.max()}",
            flush=True,
        )
        if name == W:
            continue
        flat = faiss.IndexBinaryFlat(BITS)
        flat.add(w.view(np.uint8))
        D, _ = flat.search(q8, k)
        exact_kth[name] = D[:, k - 1]
        del flat
        t = time.perf_counter()
        fh[name] = faiss.IndexBinaryHash(BITS, ADDRESS_BITS)
        fh[name].add(w.view(np.uint8))
        print(f"  faiss IndexBinaryHash(b={ADDRESS_BITS}) built in {time.perf_counter() - t:.1f}s", flush=True)
        if not args.no_multihash:
            t = time.perf_counter()
            fm[name] = faiss.IndexBinaryMultiHash(BITS, BITS // ADDRESS_BITS, ADDRESS_BITS)
            fm[name].add(w.view(np.uint8))
            print(
                f"  faiss IndexBinaryMultiHash(nhash={BITS // ADDRESS_BITS}, b={ADDRESS_BITS}) built in "
                f"{time.perf_counter() - t:.1f}s",
                flush=True,
            )
        gc.collect()
    if args.wide_bits:
        exact_kth[W] = exact_kth[L]
    qa = {name: faiss_address(q8, ab) for name, (_, ab) in sets.items()}
    for name, lk in ours.items():  # compile (or load from numba's cache) before timing
        lk.lookup(qa[name][:1], q8[:1], 1, k)
        lk.table.gather(lk.table.visit(qa[name][:1], 1), ordered=False)

    def timed(method, r, fns, names, dists_of=None, shortlist=None):
        """Rounds of ``fns`` over ``names``; one row: p50 (median of round medians), p99, ratio large/small."""
        lats, ratios, outs = {n: [] for n in names}, [], None
        for rnd in range(args.rounds):
            lat, outs = time_sets({n: fns[n] for n in names}, nq, args.budget, rnd)
            for n in names:
                lats[n].append(lat[n])
            if S in names and L in names:
                ratios.append(float(np.median(lat[L]) / np.median(lat[S])))
        row = {
            "method": method,
            "radius": r,
            "round_ratios": ratios,
            "ratio_p50": float(np.median(ratios)) if ratios else None,
        }
        for n in names:
            row[n] = {
                "p50_us": float(np.median([np.median(v) for v in lats[n]])),
                "p99_us": float(np.percentile(np.concatenate(lats[n]), 99)),
                "queries": int(lats[n][-1].size),
            }
            if dists_of is not None:
                m = len(outs[n])
                row[n]["recall"] = recall_by_distance([dists_of(o) for o in outs[n]], exact_kth[n][:m], k)
            if shortlist is not None:
                row[n]["shortlist_mean"] = float(np.mean([shortlist(o) for o in outs[n]]))
        rows.append(row)
        cells = " | ".join(f"{row[n]['p50_us']:.0f} / {row[n]['p99_us']:.0f}" if n in names else "" for n in sets)
        ratio = f"{row['ratio_p50']:.2f} ({min(ratios):.2f}-{max(ratios):.2f})" if ratios else ""
        rec = " / ".join(f"{row[n]['recall']:.3f}" for n in names) if dists_of is not None else ""
        sl = " / ".join(f"{row[n]['shortlist_mean']:.0f}" for n in names) if shortlist else ""
        print(f"| {method} | {r} | {cells} | {ratio} | {rec} | {sl} |", flush=True)
        return outs

    head = " | ".join(f"{n}: p50 / p99 us" for n in sets)
    print(
        f"\n| stage | r | {head} | {L}/{S} p50 (rounds) | recall@{k} | shortlist / runs |\n"
        f"|---|---|{'---|' * len(sets)}---|---|---|",
        flush=True,
    )
    ours_names = list(sets)
    for r in radii:
        runs = {n: [ours[n].table.visit(qa[n][i : i + 1], r) for i in range(nq)] for n in ours_names}
        timed(
            "visit",
            r,
            {n: (lambda i, n=n: ours[n].table.visit(qa[n][i : i + 1], r)) for n in ours_names},
            ours_names,
            shortlist=lambda o: o[1].size,
        )
        timed(
            "gather",
            r,
            {n: (lambda i, n=n: ours[n].table.gather(runs[n][i], ordered=False)) for n in ours_names},
            ours_names,
            shortlist=lambda o: o[1].size,
        )
        timed(
            f"rerank (128-bit top-{k})",
            r,
            {n: (lambda i, n=n: ours[n].table.rerank(runs[n][i], q8[i : i + 1], k)) for n in ours_names},
            ours_names,
        )
        ours_d = timed(
            "lookup (visit + rerank)",
            r,
            {n: (lambda i, n=n: ours[n].lookup(qa[n][i : i + 1], q8[i : i + 1], r, k)) for n in ours_names},
            ours_names,
            dists_of=_hit_distances,
        )
        for n in fh:
            fh[n].nflip = r
        outs = timed(
            f"faiss IndexBinaryHash(b={ADDRESS_BITS}) nflip={r}",
            r,
            {n: (lambda i, n=n: fh[n].search(q8[i : i + 1], k)) for n in fh},
            list(fh),
            dists_of=_hit_distances,
        )
        for n in fh:  # the same ball: the same top-k distances
            for i, (mine, theirs) in enumerate(zip(ours_d[n], outs[n])):
                md, fd = _hit_distances(mine), _hit_distances(theirs)
                if not np.array_equal(np.sort(md), np.sort(fd)):
                    raise SystemExit(
                        f"r={r}, {n} codes, query {i}: lookup distances {md.tolist()} differ "
                        f"from IndexBinaryHash's {fd.tolist()}"
                    )
    for nflip in (0, 1) if fm else ():
        for n in fm:
            fm[n].nflip = nflip
        timed(
            f"faiss IndexBinaryMultiHash(nhash={BITS // ADDRESS_BITS}, b={ADDRESS_BITS}) nflip={nflip}",
            nflip,
            {n: (lambda i, n=n: fm[n].search(q8[i : i + 1], k)) for n in fm},
            list(fm),
            dists_of=_hit_distances,
        )
    print(f"loadavg {Path('/proc/loadavg').read_text().strip()}", flush=True)
    if args.json:
        Path(args.json).write_text(
            json.dumps({"args": vars(args), "faiss": faiss.__version__, "rows": rows}, indent=1, default=str)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
