"""The papers' lookup at 1M and 10M codes: the 20-bit address ball (``AddressTable.ball``), then the shortlist ranked
by the 128-bit code, against faiss ``IndexBinaryHash`` (b = 20, nflip = r) and ``IndexBinaryMultiHash``.

    .venv/bin/python benchmarks/address_lookup.py                         # 1M and 10M, r = 0..4, 200 queries
    .venv/bin/python benchmarks/address_lookup.py --sizes 100000,1000000 --queries 50 --budget 5   # a quick look

Codes: 128-bit codes scattered around ``--centres`` random centres (each bit flipped with probability ``--flip``),
as ``lookup_bench``'s ``clustered`` codes but 128 bits wide; queries are held out (drawn the same way, not from the
codes); the 1M set is the first 1M of the 10M set. The address is 20 bits of the code: the first 20 bits faiss's
``IndexBinaryHash`` hashes (bytes 0 and 1 and the low 4 bits of byte 2), so both probe the same ball and must
return the same top-k distances (checked). ``--wide-bits 24`` adds a 24-bit address at the large size.

Per radius, one query per call, each query on both sizes back to back (which goes first alternates): ``probe``
(``ball(ordered=False)``: the ball's addresses visited and their rows gathered, no ranking), ``lookup``
(``AddressTable.search``: the ball's items ranked by their 128-bit codes, read bucket by bucket, top ``k``), faiss ``IndexBinaryHash.search(q, k)`` with ``nflip = r`` (within ``--budget``
seconds per task), and ``IndexBinaryMultiHash(nhash=6, b=20)`` at nflip 0 and 1. Recall is by distance against
the exact top ``k`` (faiss ``IndexBinaryFlat``): results no farther than the true k-th. Prints Markdown tables with
p50 and p99 in microseconds and the large/small ratio of the p50, and writes JSON with ``--json``.
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

from semhash_spark.address import AddressTable  # noqa: E402

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
        self.table = AddressTable(faiss_address(words.view(np.uint8), address_bits), address_bits,
                                  codes=words.view(np.uint8))

    def probe(self, qa: np.ndarray, r: int):
        """The ball's rows (addresses visited, rows gathered; not sorted within a distance, not ranked)."""
        return self.table.ball(qa, r, ordered=False)

    def lookup(self, qa: np.ndarray, q8: np.ndarray, r: int, k: int):
        """Top ``k`` of the ball by 128-bit distance: ``(D, I)`` of one query, without the -1 padding."""
        D, I = self.table.search(qa, q8, r, k)
        return D[0][I[0] >= 0], I[0][I[0] >= 0]


def time_pair(fns: dict, nq: int, budget: float, flip: bool):
    """Per-query latencies (us) of each size's ``fns[size](i)``, the sizes back to back per query, within
    ``budget`` seconds (at least 5 queries); and the results."""
    sizes = list(fns)
    lat = {s: [] for s in sizes}
    out = {s: [] for s in sizes}
    t_end = time.perf_counter() + budget
    for i in range(nq):
        for s in (sizes if (i % 2 == 0) != flip else sizes[::-1]):
            t = time.perf_counter()
            res = fns[s](i)
            lat[s].append(time.perf_counter() - t)
            out[s].append(res)
        if time.perf_counter() > t_end and i >= 4:
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
    p.add_argument("--centres", type=int, default=10_000)
    p.add_argument("--flip", type=float, default=0.06)
    p.add_argument("--budget", type=float, default=20.0, help="seconds per timed task and size pair")
    p.add_argument("--wide-bits", type=int, default=24, help="also a wider address at the large size (0: none)")
    p.add_argument("--no-multihash", action="store_true")
    p.add_argument("--json")
    args = p.parse_args(argv)
    import faiss

    faiss.omp_set_num_threads(1)
    small, large = (int(s) for s in args.sizes.split(","))
    radii = [int(r) for r in args.radii.split(",")]
    k, nq = args.k, args.queries
    print(f"python {platform.python_version()}, numpy {np.__version__}, faiss {faiss.__version__}; "
          f"{args.centres} centres, flip {args.flip}, {nq} queries, k={k}", flush=True)

    rng = np.random.default_rng(0)
    centres = rng.integers(0, 2 ** 63, size=(args.centres, BITS // 64), dtype=np.int64).view(np.uint64) * \
        np.uint64(2) + rng.integers(0, 2, size=(args.centres, BITS // 64)).astype(np.uint64)
    t = time.perf_counter()
    db = clustered_codes(large, rng, centres, args.flip)
    q = clustered_codes(nq, rng, centres, args.flip)
    q8 = q.view(np.uint8)
    print(f"codes drawn in {time.perf_counter() - t:.0f}s", flush=True)
    sets = {small: db[:small], large: db}

    ours, exact_kth, fh, fm, rows = {}, {}, {}, {}, []
    for n, w in sets.items():
        t = time.perf_counter()
        ours[n] = Lookup(w, ADDRESS_BITS)
        tb = time.perf_counter() - t
        occ = np.diff(ours[n].table.offsets_)
        occ = occ[occ > 0]
        print(f"{n:,}: address table built in {tb:.1f}s; {occ.size:,} occupied addresses of {1 << ADDRESS_BITS:,}, "
              f"items per occupied address mean {occ.mean():.1f}, max {occ.max()}", flush=True)
        flat = faiss.IndexBinaryFlat(BITS)
        flat.add(w.view(np.uint8))
        D, _ = flat.search(q8, k)
        exact_kth[n] = D[:, k - 1]
        del flat
        t = time.perf_counter()
        fh[n] = faiss.IndexBinaryHash(BITS, ADDRESS_BITS)
        fh[n].add(w.view(np.uint8))
        print(f"  faiss IndexBinaryHash(b={ADDRESS_BITS}) built in {time.perf_counter() - t:.1f}s", flush=True)
        if not args.no_multihash:
            t = time.perf_counter()
            fm[n] = faiss.IndexBinaryMultiHash(BITS, BITS // ADDRESS_BITS, ADDRESS_BITS)
            fm[n].add(w.view(np.uint8))
            print(f"  faiss IndexBinaryMultiHash(nhash={BITS // ADDRESS_BITS}, b={ADDRESS_BITS}) built in "
                  f"{time.perf_counter() - t:.1f}s", flush=True)
        gc.collect()
    qa = {ADDRESS_BITS: faiss_address(q8, ADDRESS_BITS)}
    for lk in ours.values():       # compile (or load from numba's cache) before timing
        lk.lookup(qa[ADDRESS_BITS][:1], q8[:1], 1, k)

    def report(method, r, lat, outs, dists_of, shortlist=None):
        row = {"method": method, "radius": r}
        for n in (small, large):
            row[n] = {"p50_us": float(np.median(lat[n])), "p99_us": float(np.percentile(lat[n], 99)),
                      "queries": int(lat[n].size)}
            if dists_of is not None:
                row[n]["recall"] = recall_by_distance([dists_of(o) for o in outs[n]], exact_kth[n], k)
            if shortlist is not None:
                row[n]["shortlist_mean"] = float(np.mean([shortlist(o) for o in outs[n]]))
        row["ratio_p50"] = row[large]["p50_us"] / row[small]["p50_us"]
        rows.append(row)
        cells = " | ".join(f"{row[n]['p50_us']:.0f} / {row[n]['p99_us']:.0f}" for n in (small, large))
        rec = " / ".join(f"{row[n]['recall']:.3f}" for n in (small, large)) if dists_of is not None else ""
        sl = " / ".join(f"{row[n]['shortlist_mean']:.0f}" for n in (small, large)) if shortlist else ""
        print(f"| {method} | {r} | {cells} | {row['ratio_p50']:.2f} | {rec} | {sl} | "
              f"{row[small]['queries']} |", flush=True)

    print(f"\n| method | r | {small:,}: p50 / p99 us | {large:,}: p50 / p99 us | p50 ratio | recall@{k} | "
          f"shortlist | queries |\n|---|---|---|---|---|---|---|---|", flush=True)
    for j, r in enumerate(radii):
        a = qa[ADDRESS_BITS]
        lat, outs = time_pair({n: (lambda i, n=n: ours[n].probe(a[i:i + 1], r)) for n in sets}, nq, args.budget,
                              j % 2 == 1)
        report("AddressTable.ball (probe)", r, lat, outs, None, shortlist=lambda o: o[1].size)
        lat, outs = time_pair({n: (lambda i, n=n: ours[n].lookup(a[i:i + 1], q8[i:i + 1], r, k)) for n in sets}, nq,
                              args.budget, j % 2 == 1)
        report(f"ball + 128-bit top-{k} (lookup)", r, lat, outs, lambda o: o[0])
        ours_d = outs
        for n in sets:
            fh[n].nflip = r
        lat, outs = time_pair({n: (lambda i, n=n: fh[n].search(q8[i:i + 1], k)) for n in sets}, nq, args.budget,
                              j % 2 == 1)
        report(f"faiss IndexBinaryHash(b={ADDRESS_BITS}) nflip={r}", r, lat, outs,
               lambda o: o[0][0][o[1][0] >= 0])
        for n in sets:  # the same ball: the same top-k distances
            for i, (mine, theirs) in enumerate(zip(ours_d[n], outs[n])):
                fd = theirs[0][0][theirs[1][0] >= 0]
                if not np.array_equal(np.sort(mine[0]), np.sort(fd)):
                    raise SystemExit(f"r={r}, {n:,} codes, query {i}: lookup distances {mine[0].tolist()} differ "
                                     f"from IndexBinaryHash's {fd.tolist()}")
    if fm:
        for j, nflip in enumerate((0, 1)):
            for n in sets:
                fm[n].nflip = nflip
            lat, outs = time_pair({n: (lambda i, n=n: fm[n].search(q8[i:i + 1], k)) for n in sets}, nq,
                                  args.budget, j % 2 == 1)
            report(f"faiss IndexBinaryMultiHash(nhash={BITS // ADDRESS_BITS}, b={ADDRESS_BITS}) nflip={nflip}",
                   nflip, lat, outs, lambda o: o[0][0][o[1][0] >= 0])
    fh.clear()
    fm.clear()
    gc.collect()

    if args.wide_bits:
        wb = args.wide_bits
        wide = Lookup(db, wb)
        qa[wb] = faiss_address(q8, wb)
        wide.lookup(qa[wb][:1], q8[:1], 1, k)
        print(f"\n{large:,} codes with a {wb}-bit address (beside the {ADDRESS_BITS}-bit one):\n"
              f"| method | r | {ADDRESS_BITS}-bit: p50 / p99 us | {wb}-bit: p50 / p99 us | p50 ratio | recall@{k} | "
              f"shortlist | queries |\n|---|---|---|---|---|---|---|---|", flush=True)
        for j, r in enumerate(radii):
            lat, outs = time_pair({"narrow": lambda i: ours[large].lookup(qa[ADDRESS_BITS][i:i + 1], q8[i:i + 1], r, k),
                                   "wide": lambda i: wide.lookup(qa[wb][i:i + 1], q8[i:i + 1], r, k)}, nq, args.budget,
                                  j % 2 == 1)
            sl = {s: np.mean([ours[large].table.ball(qa[ADDRESS_BITS][i:i + 1], r)[1].size for i in range(nq)])
                  for s in ("narrow",)}
            sl["wide"] = np.mean([wide.table.ball(qa[wb][i:i + 1], r)[1].size for i in range(nq)])
            rec = {s: recall_by_distance([o[0] for o in outs[s]], exact_kth[large], k) for s in outs}
            row = {"method": f"lookup at {large:,}, address {ADDRESS_BITS} vs {wb} bits", "radius": r}
            for s in ("narrow", "wide"):
                row[s] = {"p50_us": float(np.median(lat[s])), "p99_us": float(np.percentile(lat[s], 99)),
                          "recall": rec[s], "shortlist_mean": float(sl[s]), "queries": int(lat[s].size)}
            rows.append(row)
            print(f"| lookup | {r} | {row['narrow']['p50_us']:.0f} / {row['narrow']['p99_us']:.0f} | "
                  f"{row['wide']['p50_us']:.0f} / {row['wide']['p99_us']:.0f} | "
                  f"{row['wide']['p50_us'] / row['narrow']['p50_us']:.2f} | {rec['narrow']:.3f} / {rec['wide']:.3f} | "
                  f"{sl['narrow']:.0f} / {sl['wide']:.0f} | {row['narrow']['queries']} |", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "faiss": faiss.__version__, "rows": rows},
                                              indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
