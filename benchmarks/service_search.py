"""The service's search in-process (no HTTP), side by side for two code trees on the same index and queries.

    .venv/bin/python benchmarks/service_search.py --base /tmp/base-tree      # this tree against another checkout

Builds one published index as ``semhash encode`` lays it out by default (64-bit codes, 20-bit address,
8 partition bits: about 255 partitions at 18,846 codes) on a local path, then in a child process per code tree
starts the service's :class:`~semhash_spark.service.runtime.Service` (follower not started: one ``poll`` loads and
warms the version) and times single-query ``Service.search`` calls (k = 10 by hex code, radius 2, and for trees
that have it ``address_radius`` 2), then batches of 1,000 codes. Each child checks its answers against brute force.
Prints one JSON report with each tree's figures and the ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def child(index_uri: str, queries: int, seed: int) -> dict:
    import numpy as np

    from semhash_spark import codes as C
    from semhash_spark.index import published as X
    from semhash_spark.service.runtime import Service
    from semhash_spark.service.searcher import Query
    from semhash_spark.service.settings import Settings

    svc = Service(Settings(index_uri=index_uri, log_requests=False, max_batch=1000))
    t0 = time.perf_counter()
    assert svc.poll(), "version did not load"
    load_s = time.perf_counter() - t0
    lib = X.HammingIndex.open(index_uri).load_all()
    db = lib.codes_of(np.arange(lib.ntotal))
    rng = np.random.default_rng(seed)
    bits01 = C.unpack_bits(db[rng.choice(len(db), queries)], lib.bits)
    q = C.pack_bits(bits01 ^ (rng.random(bits01.shape) < 0.03))  # indexed codes with about 2 bits flipped
    hexes = C.to_hex(q)
    out = {"load_seconds": round(load_s, 3), "partitions": lib.npartitions, "codes": lib.ntotal}

    def timed(make, name, check=None):
        svc.search(make(hexes[0]))  # first call: compile / build outside the timing
        lat = []
        for j, h in enumerate(hexes):
            t = time.perf_counter()
            res = svc.search(make(h))
            lat.append(time.perf_counter() - t)
            if check is not None and j < 50:
                check(j, res)
        lat = np.array(lat)
        out[name] = {
            "qps": round(len(lat) / lat.sum(), 1),
            "p50_ms": round(1000 * float(np.median(lat)), 3),
            "p99_ms": round(1000 * float(np.quantile(lat, 0.99)), 3),
        }

    H = C.hamming(q[:50], db)

    def check_knn(j, res):
        d = sorted(H[j])[:10]
        got = [h["distance"] if isinstance(h, dict) else h.distance for h in res.results[0]]
        assert got == d, "k=10 distances differ from brute force"

    def check_radius(j, res):
        assert len(res.results[0]) == int((H[j] <= 2).sum()), "radius 2 count differs from brute force"

    timed(lambda h: Query(kind="codes", values=[h], k=10), "k10", check_knn)
    timed(lambda h: Query(kind="codes", values=[h], radius=2), "radius2", check_radius)
    try:
        Query(kind="codes", values=[hexes[0]], address_radius=2)
        timed(lambda h: Query(kind="codes", values=[h], address_radius=2), "address_radius2")
    except TypeError:
        pass  # a tree without address_radius
    batch = hexes[:1000]
    svc.search(Query(kind="codes", values=batch[:10], k=10))
    t = time.perf_counter()
    reps = 3
    for _ in range(reps):
        svc.search(Query(kind="codes", values=batch, k=10))
    out["batch1000_k10_qps"] = round(reps * len(batch) / (time.perf_counter() - t), 1)
    svc.stop()
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--base", required=True, help="the other code tree (a checkout of the baseline commit)")
    p.add_argument("--n", type=int, default=18846, help="codes in the index (20 Newsgroups' size by default)")
    p.add_argument("--queries", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--child", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        print(json.dumps(child(a.child, a.queries, a.seed)))
        return 0
    sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
    from service_util import build_index

    with tempfile.TemporaryDirectory(prefix="semhash-service-search-") as tmp:
        uri = str(Path(tmp) / "index")
        build_index(uri, n=a.n, vocab_size=300, bits=64, address_bits=20, partition_bits=8, seed=a.seed)
        report = {"n": a.n, "queries": a.queries, "trees": {}}
        for name, tree in (("this", ROOT), ("base", Path(a.base).resolve())):
            env = {**os.environ, "PYTHONPATH": str(tree), "SEMHASH_LOG_LEVEL": "warning"}
            r = subprocess.run(
                [
                    sys.executable,
                    str(Path(__file__).resolve()),
                    "--base",
                    str(a.base),
                    "--child",
                    uri,
                    "--queries",
                    str(a.queries),
                    "--seed",
                    str(a.seed),
                ],
                env=env,
                capture_output=True,
                text=True,
                timeout=1800,
            )
            if r.returncode:
                raise SystemExit(f"{name} tree failed:\n{r.stderr[-3000:]}")
            report["trees"][name] = json.loads(r.stdout.strip().splitlines()[-1])
        this, base = report["trees"]["this"], report["trees"]["base"]
        report["ratio_this_over_base"] = {
            k: round(this[k]["qps"] / base[k]["qps"], 2) for k in ("k10", "radius2") if k in this and k in base
        }
        batch = round(this["batch1000_k10_qps"] / base["batch1000_k10_qps"], 2)
        report["ratio_this_over_base"]["batch1000_k10"] = batch
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
