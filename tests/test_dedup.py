"""Near-duplicates: the Spark pigeonhole join against brute-force all pairs, hot buckets, verification, clusters."""

from __future__ import annotations

import functools
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pyspark.sql import functions as F

from semhash_spark import codes as C
from semhash_spark.data import dataset as ds
from semhash_spark.index import dedup
from semhash_spark.index import published as ix
from semhash_spark.io import store


# --------------------------------------------------------------------------------------------------- helpers


def _planted(rng, n: int, bits: int, dups: int, max_flips: int = 4) -> np.ndarray:
    """``n`` random codes, then ``dups`` copies of earlier ones (some copies of copies), 0..max_flips bits flipped."""
    out = list(rng.integers(0, 2, (n, bits)))
    for _ in range(dups):
        src = out[rng.integers(0, len(out))].copy()
        src[rng.choice(bits, rng.integers(0, max_flips + 1), replace=False)] ^= 1
        out.append(src)
    return C.pack_bits(np.array(out))


def _brute_pairs(codes: np.ndarray, ids: list[str], radius: int) -> set[tuple[str, str, int]]:
    d = C.hamming(codes, codes)
    i, j = np.nonzero(np.triu(d <= radius, k=1))
    return {(min(ids[a], ids[b]), max(ids[a], ids[b]), int(d[a, b])) for a, b in zip(i, j)}


def _frame(spark, codes: np.ndarray, ids: list[str]):
    return spark.createDataFrame([(i, bytes(c)) for i, c in zip(ids, codes)], "id string, code binary")


def _union_find(pairs) -> dict[str, str]:
    parent: dict[str, str] = {}

    def find(x):
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in pairs:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    return {x: find(x) for x in parent}


@pytest.fixture(scope="module", autouse=True)
def _few_shuffle_partitions(spark):
    old = spark.conf.get("spark.sql.shuffle.partitions")
    spark.conf.set("spark.sql.shuffle.partitions", "2")  # tiny data: one task per core
    yield
    spark.conf.set("spark.sql.shuffle.partitions", old)


@pytest.fixture(params=["spark", "driver"])
def plan(request) -> int:
    """``local_max_docs`` for each of the job's plans: 0 runs everything in Spark, the default collects a small
    index to the driver (:func:`semhash_spark.index.dedup.local_pairs`). Both must give the same answers."""
    return 0 if request.param == "spark" else dedup.LOCAL_MAX_DOCS


def _plan_of(local_max_docs: int) -> str:
    return "driver" if local_max_docs else "spark"


# --------------------------------------------------------------------------------------------------- pure parts


@pytest.mark.parametrize("bits", [20, 32, 64, 128])
def test_segments_masks_and_keys_agree_with_the_bits(bits):
    rng = np.random.default_rng(bits)
    codes = _planted(rng, 60, bits, 60, max_flips=3)
    b01 = C.unpack_bits(codes, bits)
    words = dedup.code_words(codes)
    for radius in (0, 1, 3, 4):
        segs = dedup.segments(bits, radius)
        lengths = [e - s for s, e in segs]
        assert segs[0][0] == 0 and segs[-1][1] == bits and max(lengths) - min(lengths) <= 1
        assert all(a[1] == b[0] for a, b in zip(segs, segs[1:]))
        keys = dedup.segment_keys(codes, bits, segs)
        masks = dedup.segment_masks(segs, words.shape[1])
        for i, (s, e) in enumerate(segs):
            same_bits = (b01[:, None, s:e] == b01[None, :, s:e]).all(axis=2)
            same_words = np.ones_like(same_bits)
            for w, m in enumerate(masks[i]):
                same_words &= ((words[:, None, w] ^ words[None, :, w]) & np.int64(m)) == 0
            assert np.array_equal(same_words, same_bits)  # masks select segment i
            if e - s <= 64:
                assert np.array_equal(keys[:, None, i] == keys[None, :, i], same_bits)
            else:  # folded: equal bits -> equal keys
                assert (keys[:, None, i] == keys[None, :, i])[same_bits].all()


def test_spark_words_and_keys_equal_the_numpy_ones(spark):
    rng = np.random.default_rng(5)
    frames, want = [], {}
    for bits in (20, 64, 100, 128, 200):
        codes = C.pack_bits(rng.integers(0, 2, (40, bits)))
        cols = [dedup.code_words(codes)]
        words = dedup.word_columns(F.col("code"), C.code_bytes(bits))
        keys = []
        for radius in (0, 1, 4):
            segs = dedup.segments(bits, radius)
            cols.append(dedup.segment_keys(codes, bits, segs))
            keys += dedup.key_columns(words, segs)
        want[bits] = np.concatenate(cols, axis=1)
        df = _frame(spark, codes, [f"{i:03d}" for i in range(len(codes))])
        frames.append(df.select(F.lit(bits).alias("bits"), "id", F.array(*words, *keys).alias("v")))
    rows = functools.reduce(lambda a, b: a.unionByName(b), frames).collect()
    for bits, expected in want.items():
        got = np.array([r.v for r in sorted(rows, key=lambda r: r.id) if r.bits == bits])
        assert np.array_equal(got, expected), bits
    bad = spark.createDataFrame([("x", b"\x01\x02\x03")], "id string, code binary")
    with pytest.raises(Exception, match="code of 3 bytes: the index's codes have 8"):
        bad.select(*dedup.word_columns(F.col("code"), 8)).collect()


def test_verify_parse():
    assert dedup.Verify.parse("cosine:0.9") == dedup.Verify("cosine", 0.9)
    assert dedup.Verify.parse(" Jaccard:0.75") == dedup.Verify("jaccard", 0.75)
    assert dedup.Verify.parse(None) is None and dedup.Verify.parse("") is None
    for bad in ("cosine", "cosine:1.5", "euclid:0.3", "jaccard:x"):
        with pytest.raises(dedup.DedupError, match="cosine:T or jaccard:T"):
            dedup.Verify.parse(bad)
    with pytest.raises(dedup.DedupError, match="radius 64"):
        dedup.segments(64, 64)


# --------------------------------------------------------------------------------------------------- exact pairs


def test_pairs_equal_brute_force_for_radius_0_to_4(spark):
    rng = np.random.default_rng(7)
    frames, expected = [], {}
    for bits in (32, 64):
        codes = _planted(rng, 250, bits, 150)
        ids = [f"b{bits}-{i:04d}" for i in range(len(codes))]
        df = _frame(spark, codes, ids)
        for radius in range(5):
            expected[(bits, radius)] = _brute_pairs(codes, ids, radius)
            got = dedup.hamming_pairs(df, bits, radius, block_size=64)
            frames.append(got.selectExpr(f"{bits} as bits", f"{radius} as radius", "*"))
    rows = functools.reduce(lambda a, b: a.unionByName(b), frames).collect()  # one job for the ten cases
    for (bits, radius), want in expected.items():
        got = [(r.id_a, r.id_b, r.distance) for r in rows if r.bits == bits and r.radius == radius]
        assert len(got) == len(set(got)), (bits, radius)  # each pair once
        assert all(a < b for a, b, _ in got)
        assert set(got) == want, (bits, radius)
    assert all(len(expected[(b, r)]) < len(expected[(b, r + 1)]) for b in (32, 64) for r in range(4))


def test_hot_bucket_is_split_into_blocks_and_stays_exact(spark):
    rng = np.random.default_rng(3)
    bits, radius, block = 32, 2, 16
    hot = np.tile(rng.integers(0, 2, (1, bits)), (180, 1))
    hot[60:, -1] ^= 1  # 60 identical, 120 at distance 1 from them
    hot[150:, 0] ^= 1  # 30 at distance 2 (differ in the first segment)
    codes = np.concatenate([C.pack_bits(hot), _planted(rng, 100, bits, 20)])
    ids = [f"h{i:04d}" for i in range(len(codes))]
    df = _frame(spark, codes, ids)
    pairs, hot, counts = dedup.find_pairs(df, bits, radius, block)
    got = [(r.id_a, r.id_b, r.distance) for r in pairs.collect()]
    assert len(got) == len(set(got)) and set(got) == _brute_pairs(codes, ids, radius)
    segs = dedup.segments(bits, radius)
    keys = dedup.segment_keys(codes, bits, segs)
    sizes = {(s, int(k)): int(n) for s in range(len(segs)) for k, n in zip(*np.unique(keys[:, s], return_counts=True))}
    want = {b: n for b, n in sizes.items() if n > block}
    assert {(r.seg, r.key): r.n for r in hot.collect()} == want and len(want) >= 2  # counted, exactly
    tiles = dedup.tile_hot(dedup.bucket_rows(df, bits, segs), hot, block)
    largest = tiles.groupBy(*dedup.TILE_KEYS).count().agg({"count": "max"}).first()[0]
    assert largest <= 4 * block < 180 // 2  # no tile near the whole bucket (180 rows)


def test_kernel_task_streams_batches_and_counts_hot_buckets_it_skips():
    """The task function on its own, fed sorted rows in small batches: tiles and hot buckets cut by batch
    boundaries give the same pairs as one batch, and every bucket over the limit is counted, not paired."""
    rng = np.random.default_rng(9)
    bits, radius, limit = 32, 2, 12
    hot = np.tile(rng.integers(0, 2, (1, bits)), (40, 1))
    hot[20:, -1] ^= 1  # a hot bucket in the first segment
    codes = np.concatenate([C.pack_bits(hot), _planted(rng, 150, bits, 60, max_flips=2)])
    ids = [f"t{i:04d}" for i in range(len(codes))]
    segs = dedup.segments(bits, radius)
    keys, words = dedup.segment_keys(codes, bits, segs), dedup.code_words(codes)
    seg = np.repeat(np.arange(len(segs)), len(codes))
    key, row = keys.T.ravel(), np.tile(np.arange(len(codes)), len(segs))
    order = np.lexsort((seg, key))  # as the job sorts: key, then seg
    zeros = np.zeros(len(order), np.int32)
    table = pa.table(
        {
            "seg": seg[order].astype(np.int32),
            "key": key[order],
            "lo": zeros,
            "hi": zeros,
            "blk": zeros,
            "id": [ids[i] for i in row[order]],
            "w0": words[row[order], 0],
        }
    )
    sizes = {(s, int(k)): int(n) for s in range(len(segs)) for k, n in zip(*np.unique(keys[:, s], return_counts=True))}
    within = _brute_pairs(codes, ids, radius)
    pos = {x: i for i, x in enumerate(ids)}

    def first_bucket(a, b):
        s = next(s for s in range(len(segs)) if keys[pos[a], s] == keys[pos[b], s])
        return s, int(keys[pos[a], s])

    want_pairs = {p for p in within if sizes[first_bucket(p[0], p[1])] <= limit}
    want_hot = {b: n for b, n in sizes.items() if n > limit}
    assert want_hot and want_pairs != within  # some pairs are left to the hot pass
    segmask = np.array(dedup.segment_masks(segs, 1), dtype=np.int64).view(np.uint64)
    for size in (len(order), 97, 7, 3):
        out = pa.Table.from_batches(
            list(dedup._tile_batches(table.to_batches(max_chunksize=size), radius, segmask, 1, limit, None, None))
        )
        rows = out.to_pylist()
        got = [(r["id_a"], r["id_b"], r["distance"]) for r in rows if r["id_a"] is not None]
        assert len(got) == len(set(got)) and set(got) == want_pairs, size
        hot_rows = sorted(
            ((r["hot_seg"], r["hot_key"]), r["hot_n"]) for r in rows if r["id_a"] is None and r["hot_seg"] >= 0
        )
        assert hot_rows == sorted(want_hot.items()), size  # each once, with its full size
        assert sum(r["hot_n"] for r in rows if r["hot_seg"] == -1) == len(want_pairs), size  # the count rows


def test_jaccard_with_a_threshold_is_exact_above_it_and_bounded_below():
    """pair_similarity with min_sim: the same value as without for every pair at or above the threshold, and a
    value below it for every other pair (the size and merge bounds never drop a pair that reaches it)."""
    from semhash_spark.index import _dedup_kernels as K

    rng = np.random.default_rng(3)
    sets = []
    for _ in range(300):
        base = rng.choice(400, rng.integers(5, 120), replace=False)
        sets.append(np.unique(base))
        keep = base[rng.random(base.size) > rng.uniform(0, 0.5)]  # a near copy: some words dropped, some new
        sets.append(np.unique(np.concatenate([keep, rng.integers(400, 800, rng.integers(0, 10))])))
    indptr = np.r_[0, np.cumsum([x.size for x in sets])].astype(np.int64)
    ids = np.concatenate(sets).astype(np.int64)
    a, b = rng.integers(0, len(sets), 20000), rng.integers(0, len(sets), 20000)
    a, b = np.r_[a, np.arange(0, len(sets), 2)], np.r_[b, np.arange(1, len(sets), 2)]
    full = K.pair_similarity(indptr, ids, np.ones(ids.size), a, b, False)
    for t in (0.3, 0.7, 0.9):
        fast = K.pair_similarity(indptr, ids, np.ones(ids.size), a, b, False, t)
        above = full >= t
        assert above.sum() > 50 and (~above).sum() > 50
        np.testing.assert_array_equal(fast[above], full[above])
        assert np.all(fast[~above] < t)


def test_minhash_estimates_jaccard_and_lsh_finds_the_close_pairs():
    """The calibration's MinHash: the share of equal values estimates the Jaccard of the word-hash sets, and the
    LSH bands (25 of 5) make nearly every pair of Jaccard >= 0.7 a candidate."""
    from semhash_spark.index import _dedup_kernels as K
    from semhash_spark.data import wordsets

    rng = np.random.default_rng(5)
    vocab = rng.integers(-(1 << 63), 1 << 63, 5000, dtype=np.int64)
    sets = []
    for _ in range(400):
        words = rng.choice(vocab, rng.integers(30, 200), replace=False)
        sets.append(np.unique(words))
        cut = words[rng.random(words.size) > rng.uniform(0.0, 0.4)]
        sets.append(np.unique(np.concatenate([cut, rng.choice(vocab, rng.integers(0, 20))])))
    indptr = np.r_[0, np.cumsum([x.size for x in sets])].astype(np.int64)
    hashes = np.concatenate(sets).astype(np.int64)
    sig = wordsets.minhash(indptr, hashes, 125, seed=1)
    a, b = np.arange(0, len(sets), 2), np.arange(1, len(sets), 2)
    exact = K.pair_similarity(indptr, hashes, np.ones(hashes.size), a, b, False)
    est = (sig[a] == sig[b]).mean(axis=1)
    assert np.abs(est - exact).mean() < 0.05 and np.corrcoef(est, exact)[0, 1] > 0.95
    cand = {tuple(p) for p in wordsets.lsh_pairs(sig, 25, 5, seed=2).tolist()}
    close = [(int(x), int(y)) for x, y, j in zip(a, b, exact) if j >= 0.7]
    assert len(close) > 50 and sum(p in cand for p in close) >= 0.97 * len(close)


def test_connected_components_match_union_find(spark):
    chain = [(f"c{i:03d}", f"c{i + 1:03d}") for i in range(60)]  # a long path: 61 vertices
    star = [("s000", f"s{i:03d}") for i in range(1, 20)]
    loose = [("x1", "x2"), ("y2", "y1"), ("z", "a-z"), ("a-z", "m"), ("m", "c030")]
    pairs = [(min(a, b), max(a, b)) for a, b in chain + star + loose]
    df = spark.createDataFrame(pairs, "id_a string, id_b string")
    labels, rounds = dedup.connected_components(df)
    got = {r.id: r.cluster for r in labels.collect()}
    assert got == _union_find(pairs)
    assert rounds < 20  # pointer jumping: far fewer rounds than the path's 61


# --------------------------------------------------------------------------------------------------- on an index


@pytest.fixture(scope="module")
def dup_index(tmp_path_factory):
    """A published 64-bit index of 230 documents: 150 random, 60 near-duplicates (codes and words edited, some
    chained), 20 code-only look-alikes whose words are unrelated; word counts stored; idf in model/model.json."""
    rng = np.random.default_rng(11)
    bits, vocab = 64, 300
    codes = list(rng.integers(0, 2, (150, bits)))
    words = [np.unique(rng.choice(vocab, 25)) for _ in range(150)]
    for k in range(80):
        src = int(rng.integers(0, len(codes)))
        c = codes[src].copy()
        c[rng.choice(bits, rng.integers(0, 4), replace=False)] ^= 1
        if k < 60:  # a real near-duplicate: two words swapped
            w = words[src].copy()
            w[rng.choice(w.size, 2, replace=False)] = rng.choice(vocab, 2)
            w = np.unique(w)
        else:  # same neighbourhood in Hamming space, other text
            w = np.unique(rng.choice(vocab, 25))
        codes.append(c)
        words.append(w)
    packed = C.pack_bits(np.array(codes))
    ids = [f"doc{i:04d}" for i in range(len(packed))]
    counts = [rng.integers(1, 4, w.size).astype(np.float32) for w in words]
    enc = [ds.encode_sparse(w, c) for w, c in zip(words, counts)]
    doc_freq = np.bincount(np.concatenate(words), minlength=vocab)
    index = str(tmp_path_factory.mktemp("dedup") / "index")
    version = ix.new_version_id()
    vp = ix.version_prefix(index, version)
    pdf = pd.DataFrame(
        {
            "id": ids,
            "code": [c.tobytes() for c in packed],
            "address": C.prefix(packed, 16),
            "word_ids": [e[0] for e in enc],
            "word_counts": [e[1] for e in enc],
        }
    )
    files = ix.write_shard(vp, 2, 8, pdf.iloc[::2]) + ix.write_shard(vp, 2, 8, pdf.iloc[1::2])
    store.write_json(
        store.join(vp, "model", "model.json"), {"vocab": {"doc_freq": doc_freq.tolist(), "num_train_docs": len(ids)}}
    )
    ix.publish(index, version, ix.build_manifest(version, bits, 16, 2, files))
    idf = ds.idf(doc_freq, len(ids)).astype(np.float64)
    dense = np.zeros((len(ids), vocab))
    for r, (w, c) in enumerate(zip(words, counts)):
        dense[r, w] = c
    tfidf = dense * idf
    tfidf /= np.linalg.norm(tfidf, axis=1, keepdims=True)
    sets = (dense > 0).astype(float)
    inter = sets @ sets.T
    jaccard = inter / (sets.sum(1)[:, None] + sets.sum(1)[None, :] - inter)
    # the same documents as a codes-only index plus a prepared dataset holding their words
    bare = str(tmp_path_factory.mktemp("dedup-bare") / "index")
    bare_version = ix.new_version_id()
    bp = ix.version_prefix(bare, bare_version)
    cols = ["id", "code", "address"]
    files = ix.write_shard(bp, 2, 8, pdf[cols].iloc[::2]) + ix.write_shard(bp, 2, 8, pdf[cols].iloc[1::2])
    ix.publish(bare, bare_version, ix.build_manifest(bare_version, bits, 16, 2, files))
    data = tmp_path_factory.mktemp("dedup-data")
    (data / ds.DOCS_DIR / "split=train").mkdir(parents=True)
    rows = [
        {"id": i, "labels": [], "word_ids": e[0], "word_counts": e[1], "length": 1, "content_hash": i}
        for i, e in zip(ids, enc)
    ]
    old_schema = pa.schema([f for f in ds.DOC_SCHEMA if f.name != ds.WORD_HASHES])  # prepared before hashes
    pq.write_table(pa.Table.from_pylist(rows, schema=old_schema), data / ds.DOCS_DIR / "split=train" / "p.parquet")
    ds.write_vocab(data, [f"w{i}" for i in range(vocab)], doc_freq, len(ids))
    return {
        "index": index,
        "version": version,
        "codes": packed,
        "ids": ids,
        "cosine": tfidf @ tfidf.T,
        "jaccard": jaccard,
        "bare_index": bare,
        "data": str(data),
    }


def test_dedup_job_finds_verifies_clusters_and_writes_parquet(spark, dup_index, tmp_path, plan):
    radius, out = 3, tmp_path / "out"
    summary = dedup.dedup_job(
        spark, dup_index["index"], radius, str(out), "cosine:0.8", block_size=3, local_max_docs=plan
    )
    assert summary["hot_buckets"] > 0  # verification also runs in split (hot) buckets
    assert summary["plan"] == _plan_of(plan)
    ids, pos = dup_index["ids"], {x: i for i, x in enumerate(dup_index["ids"])}
    within = _brute_pairs(dup_index["codes"], ids, radius)
    cos = dup_index["cosine"]
    want = {p for p in within if cos[pos[p[0]], pos[p[1]]] >= 0.8}
    pairs = pq.read_table(out / "pairs")
    assert pairs.column_names == ["id_a", "id_b", "distance", "similarity"]
    got = {(a, b, d): sim for a, b, d, sim in zip(*(pairs.column(c).to_pylist() for c in pairs.column_names))}
    assert len(got) == pairs.num_rows and all(a < b for a, b, _ in got)  # each pair once, ordered
    assert set(got) == want and 0 < len(want) < len(within)  # the look-alikes are filtered out
    assert all(abs(s - cos[pos[a], pos[b]]) < 1e-5 for (a, b, _), s in got.items())

    clusters = pq.read_table(out / "clusters").to_pandas()
    assert list(clusters.columns) == ["id", "cluster", "size"]
    assert dict(zip(clusters.id, clusters.cluster)) == _union_find([(a, b) for a, b, _ in want])
    sizes = clusters.groupby("cluster").size()
    assert (sizes == clusters.groupby("cluster")["size"].first()).all()

    written = json.loads((out / "summary.json").read_text())
    assert written == json.loads(json.dumps(summary))
    assert (written["pairs_within_radius"], written["pairs"]) == (len(within), len(want))
    assert (written["clusters"], written["largest_cluster"]) == (len(sizes), sizes.max())
    assert written["version"] == dup_index["version"] and written["segments"] == radius + 1
    assert not list(Path(out).rglob("*.crc"))
    if plan:
        return  # the rest checks the Spark plan's parts

    # Jaccard of word sets: joined onto given pairs (verify_pairs) and fused into the pair kernel agree
    docs, _ = dedup.read_shards(spark, dup_index["index"], columns=("id", "code", "word_ids", "word_counts"))
    cand = spark.createDataFrame(sorted(within), "id_a string, id_b string, distance int")
    jac = {
        (r.id_a, r.id_b): r.similarity
        for r in dedup.verify_pairs(cand, docs, dedup.Verify("jaccard", 0.7), None, 300).collect()
    }
    jw = dup_index["jaccard"]
    assert set(jac) == {(a, b) for a, b, _ in within if jw[pos[a], pos[b]] >= 0.7}
    assert all(abs(s - jw[pos[a], pos[b]]) < 1e-9 for (a, b), s in jac.items())
    fused = dedup.hamming_pairs(docs, 64, radius, 2, similarity="jaccard", vocab_size=300).collect()
    assert {(r.id_a, r.id_b, r.distance) for r in fused} == within
    assert all(abs(r.similarity - jw[pos[r.id_a], pos[r.id_b]]) < 1e-9 for r in fused)


def test_nothing_but_counts_reaches_the_driver(spark, dup_index, monkeypatch):
    """Every row the job brings to the driver is one of its counts: no code, word or pair is collected."""
    from pyspark import RDD
    from pyspark.sql import DataFrame

    seen = []

    def spy(cls, name):
        real = getattr(cls, name)

        def wrapper(self, *args, **kwargs):
            out = real(self, *args, **kwargs)
            rows = out if isinstance(out, list) else list(out) if name != "toPandas" else out.to_dict("records")
            seen.append((name, getattr(self, "columns", None), len(rows)))
            return rows if name != "toPandas" else out

        monkeypatch.setattr(cls, name, wrapper)

    for cls, name in (
        (DataFrame, "collect"),
        (DataFrame, "toPandas"),
        (DataFrame, "toLocalIterator"),
        (RDD, "collect"),
        (RDD, "toLocalIterator"),
    ):
        spy(cls, name)
    pairs, clusters, summary = dedup.find_near_duplicates(
        spark, dup_index["index"], 3, verify="cosine:0.8", block_size=3, local_cc_max=0, local_max_docs=0
    )
    assert summary["hot_buckets"] > 0 and summary["pairs"] > 0
    assert seen and all(n <= 1 for _, _, n in seen), seen  # aggregates only (the cluster sizes)
    assert not any(cols and {"id", "code", "id_a", "w0", "word_ids"} & set(cols) for _, cols, _ in seen), seen


def test_verification_on_a_codes_only_index_reads_the_words_from_the_dataset(spark, dup_index, tmp_path, plan):
    with pytest.raises(dedup.DedupError, match="stores no word counts; pass data_uri"):
        dedup.find_near_duplicates(spark, dup_index["bare_index"], 3, verify="jaccard:0.7", local_max_docs=plan)
    summary = dedup.dedup_job(
        spark,
        dup_index["bare_index"],
        3,
        str(tmp_path / "out"),
        "jaccard:0.7",
        data_uri=dup_index["data"],
        local_max_docs=plan,
    )
    ids, pos, jw = dup_index["ids"], {x: i for i, x in enumerate(dup_index["ids"])}, dup_index["jaccard"]
    want = {p for p in _brute_pairs(dup_index["codes"], ids, 3) if jw[pos[p[0]], pos[p[1]]] >= 0.7}
    got = pq.read_table(tmp_path / "out" / "pairs").to_pylist()
    assert {(r["id_a"], r["id_b"], r["distance"]) for r in got} == want and summary["pairs"] == len(want) > 0


def test_semhash_dedup_command_prints_the_summary(spark, dup_index, tmp_path, capsys):
    from semhash_spark.cli import main

    out = tmp_path / "cli"
    assert main(["dedup", "--index", dup_index["index"], "--radius", "1", "--out", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    want = _brute_pairs(dup_index["codes"], dup_index["ids"], 1)
    assert summary["pairs"] == len(want) and summary["radius"] == 1 and "verify" not in summary
    got = pq.read_table(out / "pairs").to_pylist()
    assert {(r["id_a"], r["id_b"], r["distance"]) for r in got} == want


def test_dedup_job_reads_and_writes_s3(spark, dup_index, s3_server):
    index, out = "s3://semhash/dedup-test/index", "s3://semhash/dedup-test/out"
    store.ensure_bucket("semhash")
    store.upload_dir(dup_index["index"], index)
    summary = dedup.dedup_job(spark, index, 1, out)
    assert summary["pairs"] == len(_brute_pairs(dup_index["codes"], dup_index["ids"], 1))
    assert store.read_json(store.join(out, "summary.json")) == json.loads(json.dumps(summary))
    keys = [k for k, _ in store.list_prefix(out)]
    assert any(k.startswith("pairs/") and k.endswith(".parquet") for k in keys)
    assert any(k.startswith("clusters/") for k in keys) and not any(k.endswith(".crc") for k in keys)


# --------------------------------------------------------------------------------------------------- word sets


def _publish(index: str, ids: list[str], codes: np.ndarray, bits: int = 64) -> str:
    """Publishes ``(id, code)`` rows as a new version of ``index``; returns the version."""
    version = ix.new_version_id()
    vp = ix.version_prefix(index, version)
    pdf = pd.DataFrame({"id": ids, "code": [c.tobytes() for c in codes], "address": C.prefix(codes, 16)})
    files = ix.write_shard(vp, 2, C.code_bytes(bits), pdf.iloc[::2]) + ix.write_shard(
        vp, 2, C.code_bytes(bits), pdf.iloc[1::2]
    )
    ix.publish(index, version, ix.build_manifest(version, bits, 16, 2, files))
    return version


def _write_docs(data: Path, ids: list[str], tokens: list[list[str]], vocab: list[str]) -> None:
    """A prepared dataset of these documents: vocabulary counts and, as prepare writes them, word-set hashes."""
    from semhash_spark.data import wordsets

    index = {w: i for i, w in enumerate(vocab)}
    rows = []
    for i, toks in zip(ids, tokens):
        wi, wc = ds.count_vector(toks, index)
        b_ids, b_counts = ds.encode_sparse(wi, wc)
        rows.append(
            {
                "id": i,
                "labels": [],
                "word_ids": b_ids,
                "word_counts": b_counts,
                "length": int(wc.sum()),
                "content_hash": str(hash(tuple(toks))),
                "word_hashes": wordsets.word_set_hashes(toks),
            }
        )
    d = data / ds.DOCS_DIR / "split=train"
    d.mkdir(parents=True, exist_ok=True)
    for f in d.glob("*.parquet"):
        f.unlink()
    pq.write_table(pa.Table.from_pylist(rows, schema=ds.DOC_SCHEMA), d / "p.parquet")
    ds.write_vocab(data, vocab, np.ones(len(vocab), np.int64), len(ids))


def _text_corpus(rng, n: int = 300, copies: int = 140, lookalikes: int = 30, prefix: str = "t"):
    """Documents of 15 vocabulary words and 25 others; edited copies (m of 40 tokens replaced, code flips that
    grow with m); look-alikes that keep the vocabulary words but replace all the others (vocabulary Jaccard 1,
    word-set Jaccard about 0.2), codes 0-2 bits away."""
    universe = [f"w{i:04d}" for i in range(3000)]
    vocab = universe[:300]
    docs = [
        list(rng.choice(vocab, 15, replace=False)) + list(rng.choice(universe[300:], 25, replace=False))
        for _ in range(n)
    ]
    codes = list(rng.integers(0, 2, (n, 64)))
    for k in range(copies + lookalikes):
        src = int(rng.integers(0, len(docs)))
        toks, c = list(docs[src]), codes[src].copy()
        if k < copies:
            m = int(rng.integers(0, 13))
            for p in rng.choice(len(toks), m, replace=False):
                toks[p] = str(rng.choice(universe))
            flips = min(m // 2 + int(rng.integers(0, 3)), 10)
        else:
            toks = toks[:15] + list(rng.choice(universe[300:], 25, replace=False))
            flips = int(rng.integers(0, 3))
        c[rng.choice(64, flips, replace=False)] ^= 1
        docs.append(toks)
        codes.append(c)
    ids = [f"{prefix}{i:04d}" for i in range(len(docs))]
    return ids, docs, C.pack_bits(np.array(codes)), vocab


def _set_jaccard(a: list[str], b: list[str]) -> float:
    sa, sb = set(a), set(b)
    return len(sa & sb) / len(sa | sb)


@pytest.fixture(scope="module")
def text_index(tmp_path_factory):
    rng = np.random.default_rng(5)
    ids, docs, codes, vocab = _text_corpus(rng)
    index = str(tmp_path_factory.mktemp("dedup-text") / "index")
    version = _publish(index, ids, codes)
    data = tmp_path_factory.mktemp("dedup-text-data")
    _write_docs(data, ids, docs, vocab)
    return {
        "index": index,
        "version": version,
        "data": str(data),
        "ids": ids,
        "docs": docs,
        "codes": codes,
        "vocab": vocab,
    }


def _truth(t: dict, threshold: float) -> dict[tuple[str, str], int]:
    """Every pair with word-set Jaccard >= threshold, exactly, with its code distance."""
    ids, docs = t["ids"], t["docs"]
    d = C.hamming(t["codes"], t["codes"])
    out = {}
    for i in range(len(ids)):
        for j in range(i + 1, len(ids)):
            if _set_jaccard(docs[i], docs[j]) >= threshold:
                out[(min(ids[i], ids[j]), max(ids[i], ids[j]))] = int(d[i, j])
    return out


def test_prepare_keeps_the_hashes_of_every_token_of_a_document(spark, tmp_path):
    """The real prepare job on a JSONL corpus: word_hashes cover the words outside the vocabulary too, and their
    Jaccard is the word sets' own."""
    from semhash_spark.data import corpora, wordsets
    from semhash_spark.config import PrepareConfig
    from semhash_spark.data.prepare import prepare_dataset

    rng = np.random.default_rng(3)
    words = [f"word{chr(97 + i % 26)}{chr(97 + i // 26 % 26)}{chr(97 + i // 676)}" for i in range(2000)]
    texts = [" ".join(rng.choice(words, 60)) for _ in range(40)]
    src = tmp_path / "c.jsonl"
    src.write_text("".join(json.dumps({"id": f"j{i}", "text": t}) + "\n" for i, t in enumerate(texts)))
    prepare_dataset(
        spark,
        "jsonl",
        str(src),
        str(tmp_path / "data"),
        PrepareConfig(vocab_size=50, min_doc_words=1, files_per_split=1, test_fraction=0.0),
    )
    t = pq.read_table(tmp_path / "data" / ds.DOCS_DIR).to_pylist()
    assert len(t) == 40
    tokens = {f"j{i}": corpora.tokenize(x) for i, x in enumerate(texts)}
    by_id = {r["id"]: r for r in t}
    for i, r in by_id.items():
        hashes = np.frombuffer(r["word_hashes"], "<i8")
        assert hashes.size == len(set(tokens[i])) > np.frombuffer(r["word_ids"], "<i4").size
        assert r["word_hashes"] == wordsets.word_set_hashes(tokens[i])
        assert np.all(np.diff(hashes) > 0)
    a, b = "j0", "j1"
    ha, hb = (set(np.frombuffer(by_id[x]["word_hashes"], "<i8").tolist()) for x in (a, b))
    assert len(ha & hb) / len(ha | hb) == pytest.approx(_set_jaccard(tokens[a], tokens[b]))


def test_jaccard_is_checked_on_the_documents_whole_word_sets(spark, text_index, tmp_path, plan):
    """Against the exact word-set Jaccard of every pair: precision 1 and every pair within the radius above the
    threshold found; the look-alikes whose vocabulary words agree (vocabulary Jaccard 1) are rejected."""
    t, radius = text_index, 6
    summary = dedup.dedup_job(
        spark, t["index"], radius, str(tmp_path / "out"), "jaccard:0.7", data_uri=t["data"], local_max_docs=plan
    )
    assert summary["plan"] == _plan_of(plan)
    truth = _truth(t, 0.7)
    want = {p for p, d in truth.items() if d <= radius}
    got = pq.read_table(tmp_path / "out" / "pairs").to_pylist()
    assert {(r["id_a"], r["id_b"]) for r in got} == want and summary["pairs"] == len(want) > 50
    assert summary["verified_on"] == "word set"
    pos = {x: i for i, x in enumerate(t["ids"])}
    assert all(
        abs(r["similarity"] - _set_jaccard(t["docs"][pos[r["id_a"]]], t["docs"][pos[r["id_b"]]])) < 1e-9 for r in got
    )
    # the same pairs checked on vocabulary words only: the look-alikes pass there (what the word sets fix)
    vocab_only = dedup.find_near_duplicates(
        spark,
        t["index"],
        radius,
        verify="jaccard:0.7",
        data_uri=str(_vocab_only_copy(t, tmp_path)),
        local_max_docs=plan,
    )[2]
    assert vocab_only["verified_on"] == "vocabulary words" and vocab_only["pairs"] > summary["pairs"]


def _vocab_only_copy(t: dict, tmp_path: Path) -> Path:
    """The text index's dataset without word_hashes (as prepared before they were kept)."""
    data = tmp_path / "vocab-only"
    shutil.copytree(t["data"], data)
    f = next((data / ds.DOCS_DIR / "split=train").glob("*.parquet"))
    pq.write_table(pq.read_table(f).drop(["word_hashes"]), f)
    return data


def test_radius_is_calibrated_from_the_jaccard_threshold(spark, text_index, tmp_path, plan):
    """No --radius: the radius is the target-recall quantile of the code distances of the pairs above the
    threshold (here the sample is the whole index), reported in the summary; the recall reached follows."""
    t = text_index
    truth = _truth(t, 0.7)
    dist = np.sort(list(truth.values()))
    for target in (0.5, 0.9):
        want = int(dist[int(np.ceil(target * dist.size)) - 1])
        summary = dedup.dedup_job(
            spark,
            t["index"],
            None,
            str(tmp_path / f"out{target}"),
            "jaccard:0.7",
            data_uri=t["data"],
            target_recall=target,
            local_max_docs=plan,
        )
        cal = summary["calibration"]
        assert summary["radius"] == want and cal["radius"] == want, (target, cal)
        assert cal["pairs_above"] == len(truth) and cal["sample_docs"] == len(t["ids"])
        got = {(r["id_a"], r["id_b"]) for r in pq.read_table(tmp_path / f"out{target}" / "pairs").to_pylist()}
        assert got <= set(truth) and len(got) / len(truth) >= target
    # a sample smaller than the index still finds a radius near the whole index's
    part = dedup.find_near_duplicates(
        spark, t["index"], None, verify="jaccard:0.7", data_uri=t["data"], calibration_sample=300, local_max_docs=plan
    )[2]
    assert part["calibration"]["sample_docs"] < len(t["ids"]) and abs(part["radius"] - want) <= 2
    with pytest.raises(dedup.DedupError, match="only for --verify jaccard"):
        dedup.find_near_duplicates(spark, t["index"], None, verify="cosine:0.9", data_uri=t["data"])
    with pytest.raises(dedup.DedupError, match="only for --verify jaccard"):
        dedup.find_near_duplicates(
            spark, t["index"], None, verify="jaccard:0.7", data_uri=str(_vocab_only_copy(t, tmp_path))
        )


@pytest.mark.parametrize("pairs", [40, 150])
def test_calibration_on_few_pairs_warns(pairs):
    """A sample with fewer than CALIBRATION_MIN_PAIRS pairs above the threshold still gives a radius (the quantile
    of their distances), with a warning naming the count; with enough pairs, no warning."""
    rng = np.random.default_rng(pairs)
    n = 2 * pairs + 200
    sets = [rng.choice(1 << 40, 60, replace=False) for _ in range(n)]
    for k in range(pairs):  # document 2k + 1: a copy of 2k with 3 of its 60 words changed (Jaccard 0.9)
        sets[2 * k + 1] = np.concatenate([sets[2 * k][:57], rng.choice(1 << 40, 3) + (1 << 41)])
    indptr = np.concatenate([[0], np.cumsum([len(x) for x in sets])])
    hashes = np.concatenate([np.sort(x) for x in sets]).astype(np.int64)
    raw = rng.integers(0, 2, (n, 64))
    raw[1 : 2 * pairs : 2] = raw[0 : 2 * pairs : 2]
    raw[np.arange(1, 2 * pairs, 2), rng.integers(0, 64, pairs)] ^= 1  # each copy 1 bit away
    cal = dedup.calibrate_sample(C.pack_bits(raw), indptr, hashes, 64, 0.7, 0.9)
    assert cal["pairs_above"] == pairs and cal["radius"] == 1
    if pairs < dedup.CALIBRATION_MIN_PAIRS:
        assert f"only {pairs} pairs" in cal["warning"] and "--calibration-sample" in cal["warning"]
    else:
        assert "warning" not in cal


def test_collapsed_codes_stop_before_pairing_with_the_hot_buckets_named(spark, tmp_path, capsys, plan):
    """A skewed index (codes collapsed onto two points, a few bits of noise): the candidates are counted per
    bucket first and the job stops with a message naming the radius, the count and the hottest buckets."""
    rng = np.random.default_rng(2)
    centers = rng.integers(0, 2, (2, 64))
    raw = centers[rng.integers(0, 2, 6000)]
    raw[np.arange(6000), rng.integers(0, 64, 6000)] ^= rng.integers(0, 2, 6000)
    codes = C.pack_bits(raw)
    ids = [f"s{i:05d}" for i in range(len(codes))]
    index = str(tmp_path / "index")
    _publish(index, ids, codes)
    with pytest.raises(dedup.DedupError) as err:
        dedup.dedup_job(spark, index, 2, str(tmp_path / "out"), max_pairs=1_000_000, local_max_docs=plan)
    msg = str(err.value)
    assert "radius 2 would compare" in msg and "max_pairs=1000000" in msg and "--max-pairs" in msg
    assert "Hottest buckets: segment" in msg and "codes" in msg, msg
    counted = int(msg.split("would compare ")[1].split()[0])
    n = np.bincount(np.unique(raw, axis=0, return_inverse=True)[1].ravel())
    assert counted >= (n.max() * (n.max() - 1)) // 2 > 1_000_000  # at least the largest code's pairs
    assert not (tmp_path / "out").exists()  # nothing written
    from semhash_spark.cli import main

    args = ["dedup", "--index", index, "--radius", "1", "--out", str(tmp_path / "cli"), "--max-pairs", "1000"]
    assert main([*args, "--local-max-docs", str(plan)]) != 0
    assert "radius 1 would compare" in capsys.readouterr().err


def test_since_pairs_only_changed_documents_and_keeps_cluster_ids(spark, text_index, tmp_path, plan):
    """A nightly change (deletions, changed texts and codes, additions) deduplicated --since the old version with
    the old output: the same pairs and clusters as a full run, the old clusters keep their ids, even one whose
    naming (smallest) member was deleted."""
    t, radius = text_index, 6
    index = str(tmp_path / "index")
    v1 = _publish(index, t["ids"], t["codes"])
    job = functools.partial(dedup.dedup_job, spark, index, radius, local_max_docs=plan)
    job(str(tmp_path / "v1"), "jaccard:0.7", data_uri=t["data"])
    old_clusters = pq.read_table(tmp_path / "v1" / "clusters").to_pandas()
    old_of = dict(zip(old_clusters["id"], old_clusters["cluster"]))
    # a cluster that stays one without its smallest member (the cluster's name): a pair of two other members
    big = next(
        old_of[r["id_a"]]
        for r in pq.read_table(tmp_path / "v1" / "pairs").to_pylist()
        if old_of[r["id_a"]] not in (r["id_a"], r["id_b"])
    )
    rng = np.random.default_rng(8)
    ids, docs, codes = list(t["ids"]), [list(d) for d in t["docs"]], t["codes"].copy()
    gone = {big} | set(rng.choice([i for i in ids if old_of.get(i) != big], 9, replace=False).tolist())
    changed = rng.choice([k for k, i in enumerate(ids) if i not in gone and old_of.get(i) != big], 20, replace=False)
    for k in changed:
        docs[k] = docs[k][:20] + [f"new{k}-{j}" for j in range(20)]
        codes[k] = np.flip(codes[k])
    extra_ids, extra_docs, extra_codes, _ = _text_corpus(
        np.random.default_rng(9), n=20, copies=20, lookalikes=0, prefix="u"
    )
    keep = [k for k, i in enumerate(ids) if i not in gone]
    ids2 = [ids[k] for k in keep] + extra_ids
    docs2 = [docs[k] for k in keep] + extra_docs
    codes2 = np.concatenate([codes[keep], extra_codes])
    v2 = _publish(index, ids2, codes2)
    data2 = tmp_path / "data2"
    _write_docs(data2, ids2, docs2, t["vocab"])
    full = job(str(tmp_path / "full"), "jaccard:0.7", data_uri=str(data2))
    inc = job(str(tmp_path / "inc"), "jaccard:0.7", data_uri=str(data2), since=v1, previous_uri=str(tmp_path / "v1"))
    assert inc["fresh_docs"] == 20 + len(extra_ids) and inc["since"] == v1 and full["version"] == inc["version"] == v2
    pairs = {
        name: {(r["id_a"], r["id_b"]) for r in pq.read_table(tmp_path / name / "pairs").to_pylist()}
        for name in ("full", "inc")
    }
    assert pairs["inc"] == pairs["full"] and inc["pairs"] == full["pairs"] == len(pairs["full"])
    assert inc["candidates"] < full["candidates"]
    cl = {name: pq.read_table(tmp_path / name / "clusters").to_pandas() for name in ("full", "inc")}
    groups = {name: sorted(sorted(g["id"]) for _, g in c.groupby("cluster")) for name, c in cl.items()}
    assert groups["inc"] == groups["full"]
    inc_of = dict(zip(cl["inc"]["id"], cl["inc"]["cluster"]))
    stayed = [i for i in old_of if i in inc_of]
    # a cluster keeps its id while any member stays (unless merged into one with a smaller old id)
    assert sum(inc_of[i] == old_of[i] for i in stayed) >= 0.9 * len(stayed)
    members_of_big = [i for i in stayed if old_of[i] == big]
    assert members_of_big and big not in inc_of and {inc_of[i] for i in members_of_big} & {big}
    with pytest.raises(dedup.DedupError, match="is the version being deduplicated"):
        dedup.find_near_duplicates(spark, index, radius, since=v2, local_max_docs=plan)


def test_driver_and_spark_plans_give_the_same_pairs_clusters_and_counts(spark, dup_index, text_index):
    """The driver plan (a small index collected once) and the Spark plan are one algorithm: the same pairs,
    clusters and summary counts, with hot buckets (block_size 3) and with a calibrated radius; a small index whose
    census is over the driver's candidate budget goes to Spark after the census (and gives the same)."""
    cases = [
        (dup_index["index"], 3, "cosine:0.8", None, 3),
        (text_index["index"], None, "jaccard:0.7", text_index["data"], dedup.DEFAULT_BLOCK),
    ]
    for index, radius, verify, data, block in cases:
        runs = {}
        configs = (
            ("spark", {"local_max_docs": 0}),
            ("driver", {}),
            ("over budget", {"local_max_candidates": 1}),  # goes to Spark after the driver's census
            ("too many bytes", {"local_max_bytes": 1}),  # the files to collect are too big: Spark from the start
        )
        for name, options in configs:
            pairs, clusters, summary = dedup.find_near_duplicates(
                spark, index, radius, verify=verify, data_uri=data, block_size=block, **options
            )
            assert summary.pop("plan") == ("driver" if name == "driver" else "spark")
            runs[name] = (
                sorted(tuple(r) for r in pairs.collect()),
                sorted(tuple(r) for r in clusters.collect()),
                {k: v for k, v in summary.items() if k != "seconds"},
            )
        assert all(r == runs["spark"] for r in runs.values()) and runs["spark"][0], (index, runs)
