"""How the multi-index hash's query time grows with the collection: 1M and 10M codes held at once, each query
timed on both back to back, so the ratio is not skewed by the machine's minute-to-minute speed.

    .venv/bin/python benchmarks/lookup_scaling.py                                   # random and clustered codes
    .venv/bin/python benchmarks/lookup_scaling.py --kinds random,clustered,model --source DATA --model MODEL

The code sets and queries are ``lookup_bench``'s (the 1M set is the first 1M of the 10M set; model codes come
from its cache, or are sampled and encoded first). Each index chooses its substring count from its codes, as
``MultiIndexHash`` does by default; ``--m 3`` fixes it. Every round times each task (radius 2, radius 4, k=10)
with one query per call over all queries, each query on both indexes back to back (which goes first alternates);
a round's ratio is its large median over its small median. Prints each round and the median ratio over
rounds, and writes JSON with ``--json``.

``--eps 0.1,0.2`` adds k=10 with early stopping (``MultiIndexHash.search(q, 10, eps=...)``) at each value, with its
recall at each size against the exact answer: by row (the exact rows found) and by distance (results no farther
than the true 10th neighbour: among codes tied at that distance any is a right answer).
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lookup_bench import BITS, make  # noqa: E402

from semhash_spark.index.mih import MultiIndexHash  # noqa: E402

TASKS = (
    ("radius 2", lambda ix, x: ix.range_search(x, 2)),
    ("radius 4", lambda ix, x: ix.range_search(x, 4)),
    ("k=10", lambda ix, x: ix.search(x, 10)),
)


def medians_us(ixs: dict, fn, q: np.ndarray, flip: bool) -> dict:
    """Median latency per index, one query per call; each query is timed on every index back to back (the order
    alternating from query to query), so a change in the machine's speed hits both sizes alike."""
    sizes = list(ixs)
    lat = {n: np.empty(q.shape[0]) for n in sizes}
    for i in range(q.shape[0]):
        for n in sizes if (i % 2 == 0) != flip else sizes[::-1]:
            t = time.perf_counter()
            fn(ixs[n], q[i : i + 1])
            lat[n][i] = time.perf_counter() - t
    return {n: float(np.median(v) * 1e6) for n, v in lat.items()}


def recalls(ix, q: np.ndarray, exact: tuple[np.ndarray, np.ndarray], eps: float) -> dict:
    """Recall of ``search(q, k, eps=eps)`` against ``exact``, the exact ``(D, I)``: by row and by distance."""
    D0, I0 = exact
    k = I0.shape[1]
    D, I = ix.search(q, k, eps=eps)
    by_row = np.mean([len(set(a) & set(b)) / k for a, b in zip(I.tolist(), I0.tolist())])
    by_dist = float(np.mean(D <= D0[:, -1:]))
    return {"by_row": float(by_row), "by_distance": by_dist}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default="1000000,10000000", help="two sizes: small,large")
    p.add_argument("--kinds", default="random,clustered")
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--m", type=int, help="fixed substring count (default: chosen from the codes)")
    p.add_argument("--source", help="kind model: see lookup_bench")
    p.add_argument("--model", help="kind model: see lookup_bench")
    p.add_argument("--cache", default="/tmp/semhash-lookup-model")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--eps", default="", help="comma-separated eps > 0 for early-stopping k=10 (default: none)")
    p.add_argument("--json")
    args = p.parse_args(argv)
    eps = [float(e) for e in args.eps.split(",") if e.strip()]
    if any(not e > 0 for e in eps):
        p.error("--eps values must be > 0")
    tasks = TASKS + tuple((f"k=10 eps={e:g}", lambda ix, x, e=e: ix.search(x, 10, eps=e)) for e in eps)
    small, large = (int(s) for s in args.sizes.split(","))
    model_args = (
        {"source": args.source, "model_dir": args.model, "cache": Path(args.cache), "workers": args.workers}
        if "model" in args.kinds.split(",")
        else None
    )
    if model_args and not (args.source and args.model):
        p.error("--kinds model needs --source and --model")
    out = []
    for kind in args.kinds.split(","):
        db, q = make(kind, large, args.queries, model_args=model_args)
        ixs = {n: MultiIndexHash(db[:n], BITS, m=args.m) for n in (small, large)}
        print(f"## {kind}: m={ixs[small].m} at {small:,}, m={ixs[large].m} at {large:,}", flush=True)
        for ix in ixs.values():
            for _, fn in tasks:
                fn(ix, q[:3])
        per = {task: {"small": [], "large": [], "ratio": []} for task, _ in tasks}
        exact = {n: ix.search(q, 10) for n, ix in ixs.items()} if eps else {}
        for e in eps:
            rec = {n: recalls(ix, q, exact[n], e) for n, ix in ixs.items()}
            per[f"k=10 eps={e:g}"]["recall"] = {"small": rec[small], "large": rec[large]}
        for r in range(args.rounds):
            for task, fn in tasks:
                med = medians_us(ixs, fn, q, flip=r % 2 == 1)
                per[task]["small"].append(med[small])
                per[task]["large"].append(med[large])
                per[task]["ratio"].append(med[large] / med[small])
            print(
                f"  round {r + 1}: "
                + "; ".join(
                    f"{t} {per[t]['small'][-1]:.0f} / {per[t]['large'][-1]:.0f} us = {per[t]['ratio'][-1]:.2f}"
                    for t, _ in tasks
                ),
                flush=True,
            )
        for task, _ in tasks:
            ratios = per[task]["ratio"]
            rec = per[task].get("recall")
            recall = (
                " | recall by row {:.3f} / {:.3f}, by distance {:.3f} / {:.3f}".format(
                    rec["small"]["by_row"],
                    rec["large"]["by_row"],
                    rec["small"]["by_distance"],
                    rec["large"]["by_distance"],
                )
                if rec
                else ""
            )
            print(
                f"| {kind} | {task} | {np.median(per[task]['small']):.0f} | {np.median(per[task]['large']):.0f} | "
                f"{np.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f}){recall} |",
                flush=True,
            )
            out.append({"data": kind, "task": task, "m_small": ixs[small].m, "m_large": ixs[large].m, **per[task]})
        del ixs, db
        gc.collect()
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
