"""Near-duplicates and re-index: the pigeonhole join vs MinHashLSH and exact all-pairs answers; re-index runs.

    .venv/bin/python benchmarks/dedup_bench.py --data DATA_DIR --model MODEL_DIR [--json OUT.json]

Three parts, all in one run (``--skip-20ng`` / ``--skip-reindex`` / ``--skip-scale`` to leave one out):

1. **20 Newsgroups near-duplicates.** The prepared corpus (train + test) plus injected edited copies: for each
   edit rate in ``--edit-rates``, ``--copies`` documents are copied with that fraction of their in-vocabulary
   tokens replaced by random vocabulary words (drawn by document frequency). The copies and the corpus are
   encoded with the model by the Spark encode job into an index. Ground truth is the exact all-pairs answer:
   every pair whose word sets have Jaccard similarity >= ``--jaccard`` (this finds 20ng's own cross-posts and
   quoted replies as well as the injected copies), computed by chunked sparse products. Then, timed in the same
   run on the same documents and Spark session:
   - semhash: all pairs within Hamming radius r (exact), verified by Jaccard >= threshold, for each r in
     ``--radii``; and the whole ``dedup_job`` (pairs, verification, clusters, Parquet output) at the middle r;
   - Spark MLlib ``MinHashLSH.approxSimilarityJoin`` with Jaccard distance <= 1 - threshold, for each number
     of hash tables in ``--minhash-tables``.
   Both start from a cached DataFrame in a warm session (one untimed run of each on 2,000 documents first):
   semhash from the index's rows (codes made by the encode job, not timed: an index is built once), MinHashLSH
   from the documents' binary word vectors (it hashes them inside its timed run). Timed: the pairs materialised
   (checkpointed) and counted; collecting them for scoring is not timed.
   Recall and precision are against the exact answer; recall is also given per edit rate on the injected pairs.
2. **Scale.** ``N`` random 64-bit codes (1 in 100 a copy of its neighbour with 0-3 bits flipped) generated in
   Spark and written to Parquet; the time of ``near_duplicate_pairs`` (all pairs, materialised and counted) from
   those files, the session warm, at a radius (``N:R`` in ``--scale``)
   against a brute-force popcount all-pairs scan (numba, all cores). The scan runs in full up to
   ``--brute-max`` codes (and must agree with Spark's count); above that its time is extrapolated from its
   measured pair rate (the scan is exactly quadratic). Uniform codes are the pigeonhole join's easy case for
   bucket balance; the 20ng part runs on real, clustered codes.
3. **Re-index.** The prepared corpus, repeated to ``--reindex-docs`` documents, through ``reindex``: the first
   run (a full build), a nightly run after
   ``--reindex-fraction`` of the documents were deleted, changed and added, the same input again (publishes
   nothing) and ``--full`` on it, with the reports' counts, partitions rewritten and seconds.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import scipy.sparse as sp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from semhash_spark import dataset as ds  # noqa: E402

# --------------------------------------------------------------------------------------------------- 20ng part


def load_corpus(data_dir: str):
    ids, counts = [], []
    for split in ds.SPLITS:
        s = ds.read_split(data_dir, split, columns=("id", "counts"))
        ids.extend(s.ids)
        counts.append(s.counts)
    return list(ids), sp.vstack(counts, format="csr")


def edited_copies(counts: sp.csr_matrix, ids: list[str], rates: list[float], copies: int, seed: int = 0):
    """For each rate, ``copies`` random documents with that fraction of their tokens replaced."""
    rng = np.random.default_rng(seed)
    df = np.asarray((counts > 0).sum(axis=0)).ravel().astype(np.float64)
    p = df / df.sum()
    new_ids, rows, sources = [], [], []
    for rate in rates:
        for src in rng.choice(len(ids), copies, replace=False):
            row = counts[src]
            tokens = np.repeat(row.indices, row.data.astype(np.int64))
            hit = rng.random(tokens.size) < rate
            tokens = tokens.copy()
            tokens[hit] = rng.choice(counts.shape[1], int(hit.sum()), p=p)
            words, n = np.unique(tokens, return_counts=True)
            rows.append((words.astype(np.int32), n.astype(np.float32)))
            new_ids.append(f"copy-{rate:g}-{ids[src]}")
            sources.append((ids[src], new_ids[-1], rate))
    data = np.concatenate([r[1] for r in rows])
    indices = np.concatenate([r[0] for r in rows])
    indptr = np.concatenate([[0], np.cumsum([r[0].size for r in rows])])
    return new_ids, sp.csr_matrix((data, indices, indptr), shape=(len(rows), counts.shape[1])), sources


def write_dataset(src_dir: str, out: Path, ids: list[str], counts: sp.csr_matrix, files: int = 8) -> None:
    """The augmented corpus in the prepared-dataset layout (all in the train split; vocab copied)."""
    d = out / ds.DOCS_DIR / "split=train"
    d.mkdir(parents=True)
    for name in (ds.DATASET_FILE, ds.VOCAB_FILE):
        shutil.copy(Path(src_dir) / name, out / name)
    meta = json.loads((out / ds.DATASET_FILE).read_text())
    meta["counts"] = {"train": len(ids), "test": 0, "quarantined": 0}
    (out / ds.DATASET_FILE).write_text(json.dumps(meta))
    for f in range(files):
        rows = []
        for r in range(f, len(ids), files):
            row = counts[r]
            wi, wc = ds.encode_sparse(row.indices, row.data)
            rows.append({"id": ids[r], "labels": [], "word_ids": wi, "word_counts": wc, "length": int(row.data.sum()),
                         "content_hash": ids[r]})
        pq.write_table(pa.Table.from_pylist(rows, schema=ds.DOC_SCHEMA), d / f"part-{f:03d}.parquet")


def exact_jaccard_pairs(counts: sp.csr_matrix, ids: list[str], threshold: float, chunk: int = 2000) -> set:
    """Every pair with Jaccard(word sets) >= threshold: chunked sparse products (the exact reference)."""
    b = (counts > 0).astype(np.float32).tocsr()
    nnz = np.asarray(b.sum(axis=1)).ravel()
    bt = b.T.tocsc()
    out = set()
    for s in range(0, b.shape[0], chunk):
        inter = (b[s:s + chunk] @ bt).toarray()
        jac = inter / np.maximum(nnz[s:s + chunk, None] + nnz[None, :] - inter, 1)
        i, j = np.nonzero(jac >= threshold - 1e-9)
        keep = j > i + s
        for a, c in zip(i[keep] + s, j[keep]):
            out.add((min(ids[a], ids[c]), max(ids[a], ids[c])))
    return out


def scores(found: set, truth: set, injected: list) -> dict:
    hit = len(found & truth)
    out = {"pairs": len(found), "recall": round(hit / max(len(truth), 1), 4),
           "precision": round(hit / max(len(found), 1), 4)}
    per_rate = {}
    for rate in sorted({r for _, _, r in injected}):
        pairs = {(min(a, b), max(a, b)) for a, b, r in injected if r == rate}
        in_truth = pairs & truth
        per_rate[f"{rate:g}"] = {"injected": len(pairs), "in_truth": len(in_truth),
                                 "recall_in_truth": round(len(found & in_truth) / max(len(in_truth), 1), 4)}
    out["injected"] = per_rate
    return out


def run_20ng(spark, args, work: Path) -> dict:
    from pyspark.ml.feature import MinHashLSH
    from pyspark.ml.linalg import SparseVector, VectorUDT
    from pyspark.sql import functions as F
    from pyspark.sql.types import StringType, StructField, StructType

    from semhash_spark import dedup
    from semhash_spark.config import load_config
    from semhash_spark.encode import encode_to_index

    model = work / "model"
    shutil.copytree(args.model, model, ignore=shutil.ignore_patterns("_train_state"))    # read a copy
    ids, counts = load_corpus(args.data)
    rates = [float(x) for x in args.edit_rates.split(",")]
    cids, ccounts, injected = edited_copies(counts, ids, rates, args.copies)
    all_ids, all_counts = ids + cids, sp.vstack([counts, ccounts], format="csr")
    data = work / "data"
    write_dataset(args.data, data, all_ids, all_counts)
    res: dict = {"docs": len(all_ids), "corpus_docs": len(ids), "injected": len(cids), "edit_rates": rates,
                 "jaccard": args.jaccard}

    t = time.time()
    truth = exact_jaccard_pairs(all_counts, all_ids, args.jaccard)
    res["exact"] = {"pairs": len(truth), "seconds": round(time.time() - t, 2),
                    "method": "all pairs, chunked sparse products on the driver (numpy/scipy)"}
    print(f"exact all-pairs: {len(truth)} pairs with Jaccard >= {args.jaccard} in {res['exact']['seconds']} s",
          flush=True)

    cfg = load_config(None, [])
    t = time.time()
    enc = encode_to_index(spark, str(model), str(data), str(work / "index"), cfg)
    res["encode"] = {"seconds": round(time.time() - t, 2), "bits": enc["bits"], "count": enc["count"]}
    print(f"encode: {enc['count']} docs in {res['encode']['seconds']} s", flush=True)

    index = str(work / "index")
    # Both sides start from the same place: the documents in a cached DataFrame, the session warm (one untimed
    # run of each on a small subset). semhash's input is the written index's rows (id, code, word_ids,
    # word_counts), read once and cached: the codes were made by the encode job above (not timed), as an index is
    # built once and deduplicated many times; MinHashLSH's input is the same documents as binary word vectors,
    # cached; it hashes them inside its timed run (that is its index).
    docs, manifest = dedup.read_shards(spark, index, columns=("id", "code", "word_ids", "word_counts"))
    docs = docs.localCheckpoint()
    bits, vocab = manifest["bits"], all_counts.shape[1]
    check = dedup.Verify("jaccard", args.jaccard)
    res["timed"] = ("semhash: near_duplicate_pairs (tiles, pair kernel, Jaccard in the same task, pairs "
                    "checkpointed and counted) from the cached index rows; MinHashLSH: fit + approxSimilarityJoin, "
                    "pairs a < b checkpointed and counted, from the cached vectors; collecting the pairs for "
                    "scoring is not timed")
    dedup.near_duplicate_pairs(docs.limit(2000), bits, 3, check, vocab_size=vocab)      # warm-up, not timed
    res["semhash"] = []
    for r in [int(x) for x in args.radii.split(",")]:
        t = time.time()
        verified, counts = dedup.near_duplicate_pairs(docs, bits, r, check, vocab_size=vocab,
                                                      block_size=args.block_size)
        secs = time.time() - t
        found = {(x.id_a, x.id_b) for x in verified.select("id_a", "id_b").collect()}
        within = dedup.hamming_pairs(docs, bits, r, args.block_size)                  # not timed: for the record
        hamming_only = {(x.id_a, x.id_b) for x in within.select("id_a", "id_b").collect()}
        row = {"radius": r, "seconds": round(secs, 2), "pairs_within_radius": counts["pairs_within_radius"],
               "hot_buckets": counts["hot_buckets"],
               "hamming_only_recall": round(len(hamming_only & truth) / max(len(truth), 1), 4),
               "hamming_only_precision": round(len(hamming_only & truth) / max(len(hamming_only), 1), 4),
               **scores(found, truth, injected)}
        assert len(hamming_only) == counts["pairs_within_radius"], (len(hamming_only), counts)
        res["semhash"].append(row)
        print(f"semhash r={r}: {json.dumps(row)}", flush=True)
    mid = [int(x) for x in args.radii.split(",")][len(args.radii.split(",")) // 2]
    t = time.time()
    job = dedup.dedup_job(spark, index, mid, str(work / "dedup-out"), f"jaccard:{args.jaccard}",
                          block_size=args.block_size)
    res["dedup_job"] = {"radius": mid, "seconds": round(time.time() - t, 2), "pairs": job["pairs"],
                        "clusters": job["clusters"], "largest_cluster": job["largest_cluster"],
                        "timed": "the whole job: read the index, pairs, verification, clusters, Parquet out"}
    print(f"dedup_job r={mid}: {json.dumps(res['dedup_job'])}", flush=True)

    # MinHashLSH on the same documents (binary word-set vectors), same session
    rows = [(all_ids[i], SparseVector(vocab, all_counts[i].indices.tolist(), [1.0] * all_counts[i].nnz))
            for i in range(len(all_ids)) if all_counts[i].nnz]
    schema = StructType([StructField("id", StringType()), StructField("features", VectorUDT())])
    vec = spark.createDataFrame(rows, schema).repartition(spark.sparkContext.defaultParallelism).localCheckpoint()
    vec.count()

    def minhash(df, tables):
        lsh = MinHashLSH(inputCol="features", outputCol="hashes", numHashTables=tables, seed=1).fit(df)
        joined = lsh.approxSimilarityJoin(df, df, 1.0 - args.jaccard + 1e-9, distCol="dist")
        pairs = joined.select(F.col("datasetA.id").alias("a"), F.col("datasetB.id").alias("b")) \
            .where(F.col("a") < F.col("b")).localCheckpoint()
        pairs.count()
        return pairs

    minhash(vec.limit(2000), 1)                                                        # warm-up, not timed
    res["minhash"] = []
    for tables in [int(x) for x in args.minhash_tables.split(",")]:
        t = time.time()
        pairs = minhash(vec, tables)
        secs = time.time() - t
        found = {(p.a, p.b) for p in pairs.collect()}
        row = {"hash_tables": tables, "seconds": round(secs, 2), **scores(found, truth, injected)}
        res["minhash"].append(row)
        print(f"MinHashLSH tables={tables}: {json.dumps(row)}", flush=True)
    return res


# --------------------------------------------------------------------------------------------------- scale part

def _splitmix(x: np.ndarray) -> np.ndarray:
    x = (x + np.uint64(0x9E3779B97F4A7C15)).astype(np.uint64)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def synthetic_codes(start: int, stop: int) -> np.ndarray:
    """64-bit codes ``uint64[stop - start]`` for rows start..stop: random, and every row with i % 100 == 1 a copy of
    row i - 1 with (i // 100) % 4 bits flipped (planted near-duplicates)."""
    with np.errstate(over="ignore"):
        i = np.arange(start, stop, dtype=np.uint64)
        base = np.where(i % np.uint64(100) == 1, i - np.uint64(1), i)
        code = _splitmix(base)
        flips = ((i // np.uint64(100)) % np.uint64(4)).astype(np.int64)
        planted = (i % np.uint64(100) == 1)
        for k in range(3):                     # flip up to three distinct bits, positions from another hash
            pos = (_splitmix(i * np.uint64(3) + np.uint64(k + 7)) % np.uint64(21)).astype(np.uint64) + np.uint64(21 * k)
            mask = np.where(planted & (flips > k), np.uint64(1) << pos, np.uint64(0))
            code ^= mask
    return code


def _gen_frames(frames):
    import pandas as pd

    for pdf in frames:
        ids = pdf["id"].to_numpy()
        if len(ids) == 0:
            continue
        lo, hi = int(ids.min()), int(ids.max()) + 1
        codes = synthetic_codes(lo, hi)[ids - lo]
        raw = codes.astype(">u8").tobytes()
        yield pd.DataFrame({"id": [f"{x:010d}" for x in ids], "code": [raw[8 * k: 8 * k + 8] for k in range(len(ids))]})


def brute_count(words: np.ndarray, radius: int) -> int:
    """Pairs i < j with popcount(w_i ^ w_j) <= radius: the full quadratic scan, numba-parallel."""
    return int(_brute_kernel()(words, radius))


_KERNEL = None


def _brute_kernel():
    global _KERNEL
    if _KERNEL is None:
        import numba

        @numba.njit(parallel=True, cache=False)
        def count(words, radius):
            n = words.shape[0]
            per = np.zeros(n, dtype=np.int64)
            for i in numba.prange(n):
                wi = words[i]
                c = 0
                for j in range(i + 1, n):
                    x = wi ^ words[j]
                    x = x - ((x >> np.uint64(1)) & np.uint64(0x5555555555555555))
                    x = (x & np.uint64(0x3333333333333333)) + ((x >> np.uint64(2)) & np.uint64(0x3333333333333333))
                    x = (x + (x >> np.uint64(4))) & np.uint64(0x0F0F0F0F0F0F0F0F)
                    if ((x * np.uint64(0x0101010101010101)) >> np.uint64(56)) <= radius:
                        c += 1
                per[i] = c
            return per.sum()

        _KERNEL = count
    return _KERNEL


def run_scale(spark, args, work: Path) -> dict:
    from semhash_spark import dedup

    out = {"bits": 64, "rows": []}
    # the brute-force pair rate, measured on a warm kernel
    sample = synthetic_codes(0, min(args.brute_rate_sample, 10**9))
    brute_count(sample[:1000], args.scale_radius)
    t = time.time()
    brute_count(sample, args.scale_radius)
    rate = (len(sample) * (len(sample) - 1) / 2) / (time.time() - t)
    out["brute_pairs_per_second"] = round(rate)
    print(f"brute force: {rate / 1e9:.2f} G pairs/s", flush=True)
    for entry in args.scale.split(","):
        n, _, r = entry.partition(":")
        n, radius = int(n), int(r) if r else args.scale_radius
        path = work / f"codes-{n}"
        n_files = max(2, n // 500_000)
        spark.range(0, n, numPartitions=n_files).select("id").mapInPandas(_gen_frames, "id string, code binary") \
            .write.mode("overwrite").parquet(str(path))
        codes_df = spark.read.parquet(str(path))
        if not out["rows"]:                      # the session warm (Python workers, kernels loaded): not timed
            dedup.near_duplicate_pairs(codes_df.limit(10000), 64, radius, block_size=args.block_size)
        t = time.time()
        _, counts = dedup.near_duplicate_pairs(codes_df, 64, radius, block_size=args.block_size)
        spark_s = time.time() - t
        pairs = counts["pairs"]
        row = {"codes": n, "radius": radius, "spark_seconds": round(spark_s, 1), "pairs": pairs,
               "hot_buckets": counts["hot_buckets"]}
        if n <= args.brute_max:
            words = synthetic_codes(0, n)
            t = time.time()
            brute = brute_count(words, radius)
            row.update({"brute_seconds": round(time.time() - t, 1), "brute_pairs": brute, "agree": brute == pairs,
                        "brute_measured": True})
        else:
            row.update({"brute_seconds": round(n * (n - 1) / 2 / rate, 1), "brute_measured": False})
        row["speedup"] = round(row["brute_seconds"] / spark_s, 1)
        out["rows"].append(row)
        print(f"scale: {json.dumps(row)}", flush=True)
        shutil.rmtree(path, ignore_errors=True)
    return out


# --------------------------------------------------------------------------------------------------- reindex part

def replicate(data_dir: str, out: Path, n_docs: int, files: int = 16) -> None:
    """The prepared corpus repeated to ``n_docs`` documents (ids and content hashes suffixed with the copy number)."""
    src = pa.concat_tables([pq.read_table(f) for s in ds.SPLITS for f in ds.split_files(data_dir, s)])
    dest = out / ds.DOCS_DIR / "split=train"
    dest.mkdir(parents=True)
    for name in (ds.DATASET_FILE, ds.VOCAB_FILE):
        shutil.copy(Path(data_dir) / name, out / name)
    tables = []
    for rep in range(-(-n_docs // src.num_rows)):
        t = src.slice(0, min(src.num_rows, n_docs - rep * src.num_rows))
        for col in (ds.ID, ds.CONTENT_HASH):
            t = t.set_column(t.schema.get_field_index(col), col,
                             pa.array([f"{x}#{rep}" for x in t.column(col).to_pylist()]))
        tables.append(t)
    table = pa.concat_tables(tables)
    per = -(-table.num_rows // files)
    for f in range(files):
        pq.write_table(table.slice(f * per, per), dest / f"part-{f:05d}.parquet")


def edit_dataset(src: Path, out: Path, fraction: float, seed: int = 0) -> dict:
    """Tonight's corpus: ``src`` with ``fraction`` of its documents deleted, changed and added (a third each)."""
    rng = np.random.default_rng(seed)
    shutil.copytree(src, out)
    files = [f for split in ds.SPLITS if ds.split_dir(out, split).is_dir() for f in ds.split_files(out, split)]
    tables = [pq.read_table(f).to_pylist() for f in files]
    n = sum(len(t) for t in tables)
    k = max(1, int(n * fraction / 3))
    everyone = [r["id"] for t in tables for r in t]
    picked = rng.choice(len(everyone), 3 * k, replace=False)
    delete = {everyone[i] for i in picked[:k]}
    change = {everyone[i] for i in picked[k:2 * k]}
    add_from = {everyone[i] for i in picked[2 * k:]}
    added = []
    for f, t in zip(files, tables):
        keep = []
        for r in t:
            if r["id"] in add_from:
                added.append({**r, "id": "new-" + r["id"], "content_hash": "new-" + r["content_hash"]})
            if r["id"] in delete:
                continue
            if r["id"] in change:
                r = {**r, "word_counts": (np.frombuffer(r["word_counts"], "<f4") * 2).astype("<f4").tobytes(),
                     "content_hash": "edited-" + r["content_hash"]}
            keep.append(r)
        pq.write_table(pa.Table.from_pylist(keep, schema=ds.DOC_SCHEMA), f)
    pq.write_table(pa.Table.from_pylist(added, schema=ds.DOC_SCHEMA), files[0].parent / "part-added.parquet")
    return {"docs": n, "deleted": k, "changed": k, "added": k}


def run_reindex(spark, args, work: Path) -> dict:
    from semhash_spark.config import load_config
    from semhash_spark.reindex import reindex

    work.mkdir(parents=True, exist_ok=True)
    model = work / "model"
    shutil.copytree(args.model, model, ignore=shutil.ignore_patterns("_train_state"))
    base = work / "base"
    replicate(args.data, base, args.reindex_docs)
    edits = edit_dataset(base, work / "tonight", args.reindex_fraction)
    cfg = load_config(None, [])
    index = str(work / "index")
    keys = ("published", "full", "reason", "added", "changed", "deleted", "unchanged", "partitions",
            "partitions_rewritten", "partitions_carried", "files_copied", "seconds")
    out = {"edits": edits, "address_bits": cfg.index.address_bits, "partition_bits": cfg.index.partition_bits}
    tonight = work / "tonight"
    runs = (("first run (full build)", base, False), ("nightly run", tonight, False),
            ("same input again", tonight, False), ("--full on the same input", tonight, True))
    for name, data, full in runs:
        rep = reindex(spark, str(data), str(model), index, cfg, full=full)
        out[name] = {k: rep.get(k) for k in keys}
        print(f"reindex {name}: {json.dumps(out[name])}", flush=True)
    return out


# --------------------------------------------------------------------------------------------------- main

def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", help="prepared 20 Newsgroups dataset (semhash prepare --dataset 20ng)")
    p.add_argument("--model", help="a document model trained on --data (64 bits)")
    p.add_argument("--workdir", help="scratch folder (default: a temporary one, removed at the end)")
    p.add_argument("--json", help="write the results here")
    p.add_argument("--copies", type=int, default=500, help="injected copies per edit rate")
    p.add_argument("--edit-rates", default="0.02,0.05,0.1,0.2")
    p.add_argument("--jaccard", type=float, default=0.7, help="near-duplicate: Jaccard of word sets >= this")
    p.add_argument("--radii", default="3,6,10")
    p.add_argument("--minhash-tables", default="1,2", help="MinHashLSH numHashTables to run (5 took > 20 min)")
    p.add_argument("--block-size", type=int, default=2048)
    p.add_argument("--scale", default="100000,1000000,10000000:1,10000000:2",
                   help="code counts for the scale part, each N or N:RADIUS")
    p.add_argument("--scale-radius", type=int, default=3, help="radius where --scale gives none")
    p.add_argument("--brute-max", type=int, default=200000, help="run the brute-force scan in full up to this size")
    p.add_argument("--brute-rate-sample", type=int, default=100000, help="codes used to measure the scan's rate")
    p.add_argument("--reindex-docs", type=int, default=200000,
                   help="re-index part: the corpus repeated to this many documents")
    p.add_argument("--reindex-fraction", type=float, default=0.0003,
                   help="re-index part: fraction of documents deleted, changed and added (a third each)")
    p.add_argument("--skip-20ng", action="store_true")
    p.add_argument("--skip-scale", action="store_true")
    p.add_argument("--skip-reindex", action="store_true")
    args = p.parse_args()
    if not (args.skip_20ng and args.skip_reindex) and not (args.data and args.model):
        p.error("--data and --model are needed for the 20 Newsgroups and re-index parts "
                "(or --skip-20ng --skip-reindex)")

    os.environ.setdefault("SEMHASH_DRIVER_MEMORY", "6g")
    from semhash_spark.spark import get_spark

    spark = get_spark("dedup-bench", master="local[2]", conf={"spark.sql.shuffle.partitions": "8"})
    work = Path(args.workdir or tempfile.mkdtemp(prefix="dedup-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    results = {"machine": {"cpus": os.cpu_count(), "spark_master": "local[2]"},
               "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    try:
        if not args.skip_20ng:
            results["20ng"] = run_20ng(spark, args, work / "20ng")
        if not args.skip_reindex:
            results["reindex"] = run_reindex(spark, args, work / "reindex")
        if not args.skip_scale:
            results["scale"] = run_scale(spark, args, work / "scale")
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    print(json.dumps(results))


if __name__ == "__main__":
    main()
