"""Latency tails of the multi-index hash on skewed codes: this tree against a git revision, side by side in one run.

    PYTHONPATH=. .venv/bin/python benchmarks/mih_tails.py --baseline 74c03fd --sizes 1000000,10000000
    PYTHONPATH=. .venv/bin/python benchmarks/mih_tails.py --baseline 74c03fd --codes C.npy --queries Q.npy

Codes: ``skewed`` (synthetic, 64-bit: codes scattered around 100,000 centres drawn with Zipf(0.9) weights, the
centres' bits set with probabilities uniform in 0.02-0.6, each bit then flipped with probability 0.05: hot
substring buckets like a trained model's, measured and printed; at 1M codes the largest bucket holds about 15,000
and a query has about 230 codes within radius 2 and 1,070 within 4 on average, against 9,457, 167 and 605 for the
model codes of docs/benchmarks-log.md's 2026-12-06 run), or packed codes from ``--codes`` (e.g. the model
codes cached by ``lookup_bench.py``) with queries from ``--queries``. Both indexes (``MultiIndexHash`` of this tree
and of ``--baseline``, its ``index/mih.py`` and ``index/_mih_kernels.py`` read with ``git show``) are built on the same codes
with the same substring count. Each query is timed on both back to back, one query per call, the order
alternating; both answers must be equal. Prints median / p99 / max latency per radius (and k=10), also in thread
CPU time (less disturbed by other work on a shared machine), the result counts, and writes JSON with ``--json``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]

from semhash_spark.index import mih  # noqa: E402


def skewed_codes(n: int, nq: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    nc = 100_000
    p = rng.uniform(0.02, 0.6, size=64)
    bits = (rng.random((nc, 64)) < p).astype(np.uint64)
    centres = (bits << np.arange(64, dtype=np.uint64)).sum(1).astype(np.uint64)
    w = 1.0 / np.arange(1, nc + 1) ** 0.9
    w /= w.sum()

    def draw(k: int) -> np.ndarray:
        words = centres[rng.choice(nc, size=k, p=w)]
        for b in range(64):
            words ^= (rng.random(k) < 0.05).astype(np.uint64) << np.uint64(b)
        return words.view(np.uint8).reshape(k, 8)

    return draw(n), draw(nq)


def baseline_module(rev: str, tmp: Path):
    """``mih`` as of git revision ``rev``, with its own compiled kernels, importable beside this tree's."""
    for name in ("mih", "_mih_kernels"):
        src = subprocess.run(
            ["git", "-C", str(ROOT), "show", f"{rev}:semhash_spark/{name}.py"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        src = src.replace("from semhash_spark import _mih_kernels as _K", "import _mih_kernels_base as _K")
        (tmp / f"{name}_base.py").write_text(src)
    sys.path.insert(0, str(tmp))
    spec = importlib.util.spec_from_file_location("mih_base", tmp / "mih_base.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["mih_base"] = mod
    spec.loader.exec_module(mod)
    return mod


def bucket_stats(ix) -> list[int]:
    return [int(np.diff(t.offsets).max()) if t.offsets is not None else -1 for t in ix._tables]


def run(db: np.ndarray, q: np.ndarray, base_mod, label: str) -> dict:
    t = time.perf_counter()
    new = mih.MultiIndexHash(db, 64)
    t_new = time.perf_counter() - t
    t = time.perf_counter()
    old = base_mod.MultiIndexHash(db, 64, m=new.m)
    t_old = time.perf_counter() - t
    out = {
        "codes": label,
        "n": int(db.shape[0]),
        "queries": int(q.shape[0]),
        "m": new.m,
        "largest_buckets": bucket_stats(new),
        "build_s": {"this": round(t_new, 1), "baseline": round(t_old, 1)},
        "tasks": {},
    }
    print(
        f"{label}, {db.shape[0]:,} codes: m={new.m}, largest bucket per table {out['largest_buckets']}, "
        f"build {t_new:.1f} s (baseline {t_old:.1f} s)",
        flush=True,
    )
    tasks = [("radius", 2), ("radius", 4), ("knn", 10)]
    for kind, val in tasks:

        def call(ix, qq):
            return ix.range_search(qq, val) if kind == "radius" else ix.search(qq, val)

        call(new, q[:4])
        call(old, q[:4])
        lat = {"this": [], "baseline": []}
        cpu = {"this": [], "baseline": []}
        nres = []
        for i in range(q.shape[0]):
            qq = q[i : i + 1]
            order = [("this", new), ("baseline", old)][:: 1 if i % 2 == 0 else -1]
            res = {}
            for name, ix in order:
                c, t = time.thread_time(), time.perf_counter()
                res[name] = call(ix, qq)
                lat[name].append(time.perf_counter() - t)
                cpu[name].append(time.thread_time() - c)
            if not all(np.array_equal(a, b) for a, b in zip(res["this"], res["baseline"])):
                raise SystemExit(f"{label} {kind} {val}: query {i} answered differently")
            nres.append(int(res["this"][0][-1]) if kind == "radius" else val)
        row = {}
        for name, v in lat.items():
            v, c = np.array(v) * 1e6, np.array(cpu[name]) * 1e6
            row[name] = {
                "p50_us": round(float(np.median(v)), 1),
                "p99_us": round(float(np.percentile(v, 99)), 1),
                "max_us": round(float(v.max()), 1),
                "cpu_p50_us": round(float(np.median(c)), 1),
                "cpu_p99_us": round(float(np.percentile(c, 99)), 1),
            }
        row["results"] = {
            "mean": round(float(np.mean(nres)), 1),
            "p99": float(np.percentile(nres, 99)),
            "max": int(max(nres)),
        }
        out["tasks"][f"{kind}{val}"] = row
        print(
            f"  {kind} {val}: this {row['this']['p50_us']:.0f} / {row['this']['p99_us']:.0f} / "
            f"{row['this']['max_us']:.0f} us (p50 / p99 / max), baseline {row['baseline']['p50_us']:.0f} / "
            f"{row['baseline']['p99_us']:.0f} / {row['baseline']['max_us']:.0f} us; p99 ratio "
            f"{row['baseline']['p99_us'] / row['this']['p99_us']:.2f}x; thread CPU p50 / p99 this "
            f"{row['this']['cpu_p50_us']:.0f} / {row['this']['cpu_p99_us']:.0f}, baseline "
            f"{row['baseline']['cpu_p50_us']:.0f} / {row['baseline']['cpu_p99_us']:.0f} us (p99 ratio "
            f"{row['baseline']['cpu_p99_us'] / row['this']['cpu_p99_us']:.2f}x); results mean {row['results']['mean']:,.0f}"
            f", p99 {row['results']['p99']:,.0f}, max {row['results']['max']:,}",
            flush=True,
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--baseline", required=True, help="git revision to compare against")
    ap.add_argument("--sizes", default="1000000", help="comma-separated sizes of skewed synthetic code sets")
    ap.add_argument("--queries-n", type=int, default=300, help="queries per size")
    ap.add_argument("--codes", help="packed 64-bit codes (.npy) instead of synthetic ones")
    ap.add_argument("--queries", help="packed query codes (.npy), with --codes")
    ap.add_argument("--json")
    a = ap.parse_args()
    print(f"loadavg before: {open('/proc/loadavg').read().strip()}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        base_mod = baseline_module(a.baseline, Path(tmp))
        runs = []
        if a.codes:
            db = np.ascontiguousarray(np.load(a.codes, mmap_mode="r"))
            q = np.ascontiguousarray(np.load(a.queries)[: a.queries_n])
            runs.append(run(db, q, base_mod, os.path.basename(a.codes)))
        else:
            for n in (int(s) for s in a.sizes.split(",")):
                db, q = skewed_codes(n, a.queries_n)
                runs.append(run(db, q, base_mod, "skewed"))
                del db
    print(f"loadavg after: {open('/proc/loadavg').read().strip()}", flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps({"baseline": a.baseline, "runs": runs}, indent=1))


if __name__ == "__main__":
    main()
