"""Library lookup against faiss's binary indexes on the same codes and queries, plus the service end to end.

    .venv/bin/python benchmarks/lookup_bench.py                         # 1M and 10M codes, 200 queries, + service
    .venv/bin/python benchmarks/lookup_bench.py --sizes 100000 --queries 50 --no-service    # a quick look
    .venv/bin/python benchmarks/lookup_bench.py --kinds model --source DATA --model MODEL --no-service

For each code set (64-bit; ``random``: uniform bits; ``clustered``: codes scattered around 10,000 random centres
with each bit flipped with probability 0.06 -- synthetic; ``model``: codes a trained model gives documents drawn
from the topic model ``semhash generate`` fits to ``--source`` (its sampler, ``generate.sample_counts``, batches
of 8,192 documents from their own random streams, so a smaller size is a prefix of a larger one), encoded by the
64-bit ``--model`` on the same vocabulary, cached under ``--cache``; its queries are other documents of the same
process, not in the index) and each size: build time and memory, then radius 2, radius 4 and k=10 with one query
per call (median and p99 latency, single thread) and with all queries in one call (mean per query), and recall
against exact (faiss ``IndexBinaryFlat``; ties counted by distance). Queries are held out: drawn like the codes,
not from them. faiss's ``range_search`` keeps distances ``< radius``, so it is given ``radius + 1``. Every method
is timed for at most ``--budget`` seconds per task (the number of queries timed is reported). The multi-index
hash chooses its substring count from the codes (``mih.choose_substrings``; the choice and its estimates are
printed); ``--extra-m 3,5`` also times it with fixed counts. Prints Markdown tables, the largest size's median
over the smallest's for each of our indexes, and writes JSON with ``--json``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from semhash_spark.index.mih import MultiIndexHash, default_substrings, scan_distances  # noqa: E402

BITS = 64


# ----------------------------------------------------------------------------------------------- data


def random_codes(n: int, rng) -> np.ndarray:
    return rng.integers(0, 256, size=(n, BITS // 8), dtype=np.uint8)


def clustered_codes(n: int, rng, centres: np.ndarray, flip: float = 0.06) -> np.ndarray:
    words = centres[rng.integers(0, len(centres), size=n)].copy()
    for b in range(BITS):  # one bit at a time keeps memory at O(n)
        words ^= (rng.random(n) < flip).astype(np.uint64) << np.uint64(b)
    return words.view(np.uint8).reshape(n, 8)


# model-produced codes: documents drawn from the topic model ``semhash generate`` fits, encoded by a trained model

MODEL_BATCH = 8192  # documents per random stream; the stream of batch j is default_rng([seed, stream, j])


def load_topic_model(source: str, cache: Path, seed: int = 0):
    """``semhash generate``'s topic model of the prepared corpus ``source`` (default GenerateConfig), fitted once and
    kept in ``cache`` as plain arrays (no pickle)."""
    from semhash_spark.data import dataset as ds
    from semhash_spark.config import GenerateConfig
    from semhash_spark.data.generate import TopicModel, fit_topic_model

    meta = ds.read_metadata(source)
    path = cache / f"topics-{meta['vocab_fingerprint'][:16]}-seed{seed}.npz"
    if not path.exists():
        t = time.perf_counter()
        train = ds.read_split(source, "train", columns=(ds.LABELS, "counts"))
        tm = fit_topic_model(train.counts, train.labels, meta["counts"].get("test", 0), GenerateConfig(), seed)
        cache.mkdir(parents=True, exist_ok=True)
        arrays = {
            k: getattr(tm, k) for k in ("class_prior", "alpha", "topics", "topic_cdf", "lengths", "length_offsets")
        }
        np.savez(path, classes=np.array(json.dumps(tm.classes)), test_num=tm.test_num, total_num=tm.total_num, **arrays)
        print(f"  topic model of {source} fitted in {time.perf_counter() - t:.0f}s: {tm.summary()}", flush=True)
    z = np.load(path, allow_pickle=False)
    return TopicModel(
        classes=tuple(tuple(c) for c in json.loads(str(z["classes"]))),
        **{k: z[k] for k in ("class_prior", "alpha", "topics", "topic_cdf", "lengths", "length_offsets")},
        test_num=int(z["test_num"]),
        total_num=int(z["total_num"]),
    )


_WORKER: dict = {}


def _init_worker(source: str, model_dir: str, cache: Path, seed: int) -> None:
    import torch

    from semhash_spark.models.checkpoint import load_model

    torch.set_num_threads(1)  # one process per core instead
    _WORKER.update(hasher=load_model(model_dir), topics=load_topic_model(source, cache, seed), seed=seed)


def _encode_batch(task: tuple[int, int, int]) -> tuple[int, np.ndarray]:
    """Batch ``j`` of ``stream``: MODEL_BATCH documents drawn like ``semhash generate``'s, the first ``size`` encoded
    by the model's own forward (``Hasher.codes``)."""
    from semhash_spark.data.generate import sample_counts

    stream, j, size = task
    _, counts = sample_counts(_WORKER["topics"], np.random.default_rng([_WORKER["seed"], stream, j]), MODEL_BATCH)
    return j, _WORKER["hasher"].codes(counts[:size].toarray())


def model_codes(
    n: int, stream: int, source: str, model_dir: str, cache: Path, workers: int = 2, seed: int = 0
) -> np.ndarray:
    """The first ``n`` codes of ``stream`` (0: database, 1: queries, so queries are documents not in the index):
    batches of MODEL_BATCH documents sampled from the topic model and encoded by the model at ``model_dir``,
    cached in ``cache`` (a shorter request reads the prefix of a longer cached one)."""
    import multiprocessing

    from semhash_spark.data import dataset as ds

    meta = json.loads((Path(model_dir) / "model.json").read_text())
    stem = f"codes-{meta['model_version']}-seed{seed}-stream{stream}-"
    for f in sorted(cache.glob(stem + "*.npy"), key=lambda f: int(f.stem.rsplit("-", 1)[1])):
        if int(f.stem.rsplit("-", 1)[1]) >= n:
            return np.load(f, mmap_mode="r")[:n].copy()
    if meta["bits"] != BITS or meta["vocab"]["words"] != ds.read_vocab(source)[0]:
        raise SystemExit(f"--model {model_dir} must be a {BITS}-bit model on the vocabulary of --source {source}")
    load_topic_model(source, cache, seed)  # fitted once here, read by the workers
    out, t, done = np.empty((n, BITS // 8), np.uint8), time.perf_counter(), 0
    tasks = [(stream, j, min(MODEL_BATCH, n - i)) for j, i in enumerate(range(0, n, MODEL_BATCH))]
    with multiprocessing.get_context("spawn").Pool(workers, _init_worker, (source, model_dir, cache, seed)) as pool:
        for j, codes in pool.imap_unordered(_encode_batch, tasks):
            out[j * MODEL_BATCH : j * MODEL_BATCH + len(codes)] = codes
            done += 1
            if done % 100 == 0:
                print(
                    f"  stream {stream}: {done * MODEL_BATCH:,} of {n:,} documents encoded "
                    f"({time.perf_counter() - t:.0f}s)",
                    flush=True,
                )
    cache.mkdir(parents=True, exist_ok=True)
    np.save(cache / f"{stem}{n}.npy", out)
    print(
        f"  {n:,} model codes (stream {stream}) sampled and encoded in {time.perf_counter() - t:.0f}s "
        f"({workers} processes)",
        flush=True,
    )
    return out


def make(kind: str, n: int, nq: int, seed: int = 0, model_args: dict | None = None):
    if kind == "model":
        return (model_codes(n, 0, **model_args, seed=seed), model_codes(nq, 1, **model_args, seed=seed))
    rng = np.random.default_rng(seed)
    if kind == "random":
        return random_codes(n, rng), random_codes(nq, rng)
    centres = rng.integers(0, 2**63, size=10_000, dtype=np.int64).view(np.uint64) * np.uint64(2) + rng.integers(
        0, 2, size=10_000
    ).astype(np.uint64)
    return clustered_codes(n, rng, centres), clustered_codes(nq, rng, centres)


# ----------------------------------------------------------------------------------------------- timing


def rss() -> int:
    """Bytes in use on the C heap (glibc ``mallinfo2``: small blocks + mmapped blocks), which numpy and faiss
    both allocate from; falls back to the process RSS."""
    import ctypes

    class _MallInfo2(ctypes.Structure):
        _fields_ = [
            (f, ctypes.c_size_t)
            for f in (
                "arena",
                "ordblks",
                "smblks",
                "hblks",
                "hblkhd",
                "usmblks",
                "fsmblks",
                "uordblks",
                "fordblks",
                "keepcost",
            )
        ]

    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallinfo2.restype = _MallInfo2
        mi = libc.mallinfo2()
        return int(mi.uordblks + mi.hblkhd)
    except (OSError, AttributeError):
        import psutil

        return psutil.Process().memory_info().rss


def timed(fn, q: np.ndarray, budget: float):
    """Per-query latencies (one query per call) within ``budget`` seconds, and each call's result."""
    lat, out, t_end = [], [], time.perf_counter() + budget
    for i in range(q.shape[0]):
        t = time.perf_counter()
        out.append(fn(q[i : i + 1]))
        lat.append(time.perf_counter() - t)
        if time.perf_counter() > t_end and i >= 4:
            break
    lat = np.array(lat) * 1e6
    return {"median_us": float(np.median(lat)), "p99_us": float(np.percentile(lat, 99)), "queries": len(lat)}, out


def batch_time(fn, q: np.ndarray, budget: float):
    t = time.perf_counter()
    fn(q)
    dt = time.perf_counter() - t
    return float(dt / q.shape[0] * 1e6) if dt < 10 * budget else None


def range_recall(got: list, exact: list) -> float | None:
    """Found / exact pairs over the timed queries (None when the exact balls are all empty)."""
    tot = sum(len(e) for e in exact)
    if tot == 0:
        return None
    return sum(len(set(g) & set(e)) for g, e in zip(got, exact)) / tot


def knn_recall(got_d: list, exact_kth: np.ndarray, k: int) -> float:
    """Tie-aware recall@k: returned results no farther than the exact k-th distance, out of k."""
    return float(np.mean([min(k, int(np.sum((d >= 0) & (d <= kth)))) / k for d, kth in zip(got_d, exact_kth)]))


# ----------------------------------------------------------------------------------------------- methods


def code_stats(db: np.ndarray) -> dict:
    """How far codes are from uniform: distinct codes, bit balance, and the largest 21-bit bucket (the size of the
    multi-index hash's substrings at 64 bits)."""
    w = db.view(">u8").ravel()
    ones = np.unpackbits(db[:1_000_000], axis=1).mean(axis=0)
    top = np.bincount((w >> np.uint64(43)).astype(np.int64), minlength=1 << 21)
    return {
        "distinct": int(np.unique(w).size),
        "bit_mean_min": float(ones.min()),
        "bit_mean_max": float(ones.max()),
        "largest_21bit_bucket": int(top.max()),
    }


def run_size(
    kind: str,
    n: int,
    nq: int,
    budget: float,
    rows: list,
    faiss_hash_bits: int,
    model_args: dict | None = None,
    extra_m: tuple[int, ...] = (),
):
    import faiss

    faiss.omp_set_num_threads(1)
    db, q = make(kind, n, nq, model_args=model_args)
    cstats = code_stats(db)
    print(f"\n## {kind}, {n:,} codes, {nq} queries; {cstats}", flush=True)

    # exact answers (faiss flat is exact)
    flat = faiss.IndexBinaryFlat(BITS)
    flat.add(db)
    exact = {}
    for r in (2, 4):
        lims, D, I = flat.range_search(q, r + 1)
        exact[r] = [I[lims[i] : lims[i + 1]].tolist() for i in range(nq)]
    Dk, _ = flat.search(q, 10)
    exact_kth = Dk[:, 9]
    ball_sizes = {r: float(np.mean([len(e) for e in exact[r]])) for r in (2, 4)}
    del flat
    gc.collect()

    def build(name, make_index):
        gc.collect()
        m0, t = rss(), time.perf_counter()
        ix = make_index()
        build_s = time.perf_counter() - t
        mem = max(0, rss() - m0)
        return ix, build_s, mem

    methods = []
    ours, b_s, mem = build("ours", lambda: MultiIndexHash(db, BITS))  # m chosen from the codes
    print(
        f"  semhash substring count: m={ours.m} (default {default_substrings(n, BITS)}); estimated costs "
        f"{json.dumps({m: {t: round(v) for t, v in c.items()} for m, c in ours.substring_costs.items()})}",
        flush=True,
    )

    def add_ours(label, ix, b_s, mem):
        methods.append(
            (
                f"semhash MultiIndexHash ({label})",
                ix,
                b_s,
                max(mem, ix.nbytes),
                lambda ix, x, r: ix.range_search(x, r),
                lambda ix, x: ix.search(x, 10),
                ix.nbytes,
            )
        )

    add_ours(f"m={ours.m}", ours, b_s, mem)
    for m in extra_m:  # fixed substring counts, for comparison with the chosen one
        add_ours(f"m={m} fixed", *build("ours", lambda m=m: MultiIndexHash(db, BITS, m=m)))

    def faiss_flat():
        ix = faiss.IndexBinaryFlat(BITS)
        ix.add(db)
        return ix

    def faiss_hash():
        ix = faiss.IndexBinaryHash(BITS, faiss_hash_bits)
        ix.add(db)
        return ix

    def faiss_multi():
        ix = faiss.IndexBinaryMultiHash(BITS, 3, 21)
        ix.add(db)
        return ix

    for name, maker in (
        ("faiss IndexBinaryFlat", faiss_flat),
        (f"faiss IndexBinaryHash(b={faiss_hash_bits})", faiss_hash),
        ("faiss IndexBinaryMultiHash(nhash=3, b=21)", faiss_multi),
    ):
        ix, b_s, mem = build(name, maker)
        methods.append((name, ix, b_s, mem, None, None, None))

    for name, ix, b_s, mem, rfn, kfn, nbytes in methods:
        is_faiss = rfn is None
        for task in ("radius 2", "radius 4", "k=10"):
            settings = [None]
            if is_faiss and "Hash" in name:  # nflip: bits flipped in each hash key; exact range needs enough
                settings = (
                    {"radius 2": [0, 2], "radius 4": [1, 4], "k=10": [1, 3]}[task]
                    if "Multi" in name
                    else {"radius 2": [2], "radius 4": [4], "k=10": [2, 4]}[task]
                )
            for nflip in settings:
                if nflip is not None:
                    ix.nflip = nflip
                if task.startswith("radius"):
                    r = int(task.split()[1])
                    if is_faiss:
                        f = lambda x, r=r, ix=ix: ix.range_search(x, r + 1)
                        ids_of = lambda res: res[2].tolist()  # noqa: E731
                    else:
                        f = lambda x, r=r, ix=ix, rfn=rfn: rfn(ix, x, r)
                        ids_of = lambda res: res[2].tolist()  # noqa: E731
                    stats, outs = timed(f, q, budget)
                    rec = range_recall([ids_of(o) for o in outs], exact[r][: len(outs)])
                else:
                    f = (lambda x, ix=ix: ix.search(x, 10)) if is_faiss else (lambda x, ix=ix, kfn=kfn: kfn(ix, x))
                    stats, outs = timed(f, q, budget)
                    rec = knn_recall([o[0][0] for o in outs], exact_kth[: len(outs)], 10)
                bt = batch_time(f, q, budget) if stats["median_us"] * nq < 1e6 * budget * 2 else None
                method = name + (f" nflip={nflip}" if nflip is not None else "")
                row = {
                    "data": kind,
                    "n": n,
                    "method": method,
                    "index": "semhash (chosen m)" if ix is ours else method,
                    "task": task,
                    **stats,
                    "batch_us_per_query": bt,
                    "recall": rec,
                    "build_s": b_s,
                    "mem_bytes": mem,
                    "mem_mb_per_million": mem / n * 1e6 / 2**20,
                    "ball": ball_sizes.get(int(task.split()[1])) if task.startswith("radius") else None,
                    "codes": cstats,
                }
                rows.append(row)
                print(
                    f"| {row['method']} | {task} | {stats['median_us']:.0f} | {stats['p99_us']:.0f} | "
                    f"{'' if bt is None else f'{bt:.1f}'} | {'n/a' if rec is None else f'{rec:.3f}'} | "
                    f"{stats['queries']} |",
                    flush=True,
                )
        print(
            f"  {name}: build {b_s:.2f}s, memory {mem / 2**20:.1f} MiB "
            f"({mem / n * 1e6 / 2**20:.1f} MiB per million codes)",
            flush=True,
        )
        del ix
        gc.collect()
    methods.clear()
    print(
        f"  mean exact ball size: r=2 {ball_sizes[2]:.2f}, r=4 {ball_sizes[4]:.2f}; "
        f"mean 10th-NN distance {exact_kth.mean():.2f}",
        flush=True,
    )


def scan_throughput(n: int = 10_000_000, reps: int = 5) -> float:
    rng = np.random.default_rng(0)
    words = rng.integers(0, 2**63, size=n, dtype=np.int64).view(np.uint64)
    out = np.empty(n, dtype=np.int32)
    scan_distances(words, words[0], out=out)
    t = time.perf_counter()
    for i in range(reps):
        scan_distances(words, words[i], out=out)
    return n * reps / (time.perf_counter() - t)


# ----------------------------------------------------------------------------------------------- service


def service_bench(n: int, duration: float, threads: int) -> dict:
    """End-to-end HTTP: one client (latency) then ``threads`` clients (throughput), closed loop, k=10 codes."""
    import tempfile
    import threading

    from semhash_spark.client import SemhashClient
    from semhash_spark.io.embedded import LocalS3Server
    import service_load  # noqa: E402 - benchmarks/ is beside this file
    from service_util import build_index

    out = {}
    with tempfile.TemporaryDirectory(prefix="semhash-svc-bench-") as d, LocalS3Server(Path(d) / "s3") as s3:
        os.environ.update(s3.env)
        uri = s3.uri("bench")
        v = build_index(uri, n=n, bits=64, address_bits=20, partition_bits=6, seed=1)
        svc = service_load.ServiceProcess(uri, s3.env, Path(d) / "service.log", poll_seconds=10)
        try:
            svc.wait_ready()
            bodies = [{"codes": [bytes(v["codes"][i]).hex()], "k": 10} for i in range(0, n, max(1, n // 500))]
            for nthreads in (1, threads):
                lat, stop, lock = [], time.monotonic() + duration, threading.Lock()
                errors = [0]

                def worker(seed):
                    c, i = SemhashClient(svc.url), seed
                    while time.monotonic() < stop:
                        t = time.perf_counter()
                        try:
                            c.request("POST", "/search", bodies[i % len(bodies)])
                        except Exception:  # noqa: BLE001
                            errors[0] += 1
                        with lock:
                            lat.append(time.perf_counter() - t)
                        i += 7

                ts = [threading.Thread(target=worker, args=(s,)) for s in range(nthreads)]
                t0 = time.monotonic()
                for t in ts:
                    t.start()
                for t in ts:
                    t.join()
                el = time.monotonic() - t0
                a = np.array(lat) * 1000
                out[f"clients={nthreads}"] = {
                    "requests": len(a),
                    "errors": errors[0],
                    "qps": len(a) / el,
                    "p50_ms": float(np.median(a)),
                    "p99_ms": float(np.percentile(a, 99)),
                }
                print(
                    f"  service, {n:,} codes, {nthreads} client(s): {len(a) / el:.0f} req/s, "
                    f"p50 {np.median(a):.2f} ms, p99 {np.percentile(a, 99):.2f} ms, errors {errors[0]}",
                    flush=True,
                )
        finally:
            svc.stop()
    return out


def print_ratios(rows: list[dict]) -> None:
    """Median latency at the largest size over the smallest, per index, data and task (the issue's 10M/1M)."""
    sizes = sorted({r["n"] for r in rows})
    if len(sizes) < 2:
        return
    med = {(r["index"], r["data"], r["task"], r["n"]): r["median_us"] for r in rows}
    print(f"\n| index | data | task | median {sizes[-1]:,} / {sizes[0]:,} |", flush=True)
    for (index, data, task, n), v in med.items():
        if n == sizes[-1] and (index, data, task, sizes[0]) in med and index.startswith("semhash"):
            print(f"| {index} | {data} | {task} | {v / med[(index, data, task, sizes[0])]:.2f} |", flush=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default="1000000,10000000")
    p.add_argument("--kinds", default="random,clustered")
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--budget", type=float, default=8.0, help="seconds of timing per method and task")
    p.add_argument("--hash-bits", type=int, default=24, help="b of faiss IndexBinaryHash")
    p.add_argument("--no-service", action="store_true")
    p.add_argument("--service-codes", type=int, default=100_000)
    p.add_argument("--service-seconds", type=float, default=10.0)
    p.add_argument("--json", help="write every figure here")
    p.add_argument("--extra-m", default="", help="also time the multi-index hash with these fixed substring counts")
    p.add_argument("--source", help="kind model: the prepared corpus whose topic model draws the documents")
    p.add_argument("--model", help="kind model: the 64-bit model (directory) that encodes them")
    p.add_argument("--cache", default="/tmp/semhash-lookup-model", help="kind model: fitted topic model and codes")
    p.add_argument("--workers", type=int, default=2, help="kind model: processes that sample and encode")
    args = p.parse_args(argv)
    model_args = None
    if "model" in args.kinds.split(","):
        if not (args.source and args.model):
            p.error("--kinds model needs --source (a prepared corpus) and --model (a 64-bit model on its vocabulary)")
        model_args = {
            "source": args.source,
            "model_dir": args.model,
            "cache": Path(args.cache),
            "workers": args.workers,
        }
    import faiss

    info = {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "faiss": faiss.__version__,
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
    }
    print("# lookup benchmark", json.dumps(info), flush=True)
    print("| method | task | median us | p99 us | batch us/query | recall | queries timed |", flush=True)
    rows: list[dict] = []
    t = time.perf_counter()
    rate = scan_throughput()
    print(f"linear popcount scan (one core): {rate / 1e6:.0f} M codes/s ({time.perf_counter() - t:.1f}s)", flush=True)
    for n in [int(s) for s in args.sizes.split(",") if s]:
        for kind in args.kinds.split(","):
            run_size(
                kind,
                n,
                args.queries,
                args.budget,
                rows,
                args.hash_bits,
                model_args,
                tuple(int(m) for m in args.extra_m.split(",") if m),
            )
    print_ratios(rows)
    service = None if args.no_service else service_bench(args.service_codes, args.service_seconds, threads=8)
    if args.json:
        Path(args.json).write_text(
            json.dumps({"info": info, "scan_codes_per_s": rate, "rows": rows, "service": service}, indent=1)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
