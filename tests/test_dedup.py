"""Near-duplicates: the Spark pigeonhole join against brute-force all pairs, hot buckets, verification, clusters."""
from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pyspark.sql import functions as F

from semhash_spark import codes as C
from semhash_spark import dataset as ds
from semhash_spark import dedup
from semhash_spark import index as ix
from semhash_spark import store


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
    spark.conf.set("spark.sql.shuffle.partitions", "2")          # tiny data: one task per core
    yield
    spark.conf.set("spark.sql.shuffle.partitions", old)


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
            assert np.array_equal(same_words, same_bits)                       # masks select segment i
            if e - s <= 64:
                assert np.array_equal(keys[:, None, i] == keys[None, :, i], same_bits)
            else:                                                              # folded: equal bits -> equal keys
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
    rows = functools.reduce(lambda a, b: a.unionByName(b), frames).collect()      # one job for the ten cases
    for (bits, radius), want in expected.items():
        got = [(r.id_a, r.id_b, r.distance) for r in rows if r.bits == bits and r.radius == radius]
        assert len(got) == len(set(got)), (bits, radius)                          # each pair once
        assert all(a < b for a, b, _ in got)
        assert set(got) == want, (bits, radius)
    assert all(len(expected[(b, r)]) < len(expected[(b, r + 1)]) for b in (32, 64) for r in range(4))


def test_hot_bucket_is_split_into_blocks_and_stays_exact(spark):
    rng = np.random.default_rng(3)
    bits, radius, block = 32, 2, 16
    hot = np.tile(rng.integers(0, 2, (1, bits)), (180, 1))
    hot[60:, -1] ^= 1                                       # 60 identical, 120 at distance 1 from them
    hot[150:, 0] ^= 1                                       # 30 at distance 2 (differ in the first segment)
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
    assert {(r.seg, r.key): r.n for r in hot.collect()} == want and len(want) >= 2       # counted, exactly
    tiles = dedup.tile_hot(dedup.bucket_rows(df, bits, segs), hot, block)
    largest = tiles.groupBy(*dedup.TILE_KEYS).count().agg({"count": "max"}).first()[0]
    assert largest <= 4 * block < 180 // 2                  # no tile near the whole bucket (180 rows)


def test_kernel_task_streams_batches_and_counts_hot_buckets_it_skips():
    """The task function on its own, fed sorted rows in small batches: tiles and hot buckets cut by batch
    boundaries give the same pairs as one batch, and every bucket over the limit is counted, not paired."""
    rng = np.random.default_rng(9)
    bits, radius, limit = 32, 2, 12
    hot = np.tile(rng.integers(0, 2, (1, bits)), (40, 1))
    hot[20:, -1] ^= 1                                               # a hot bucket in the first segment
    codes = np.concatenate([C.pack_bits(hot), _planted(rng, 150, bits, 60, max_flips=2)])
    ids = [f"t{i:04d}" for i in range(len(codes))]
    segs = dedup.segments(bits, radius)
    keys, words = dedup.segment_keys(codes, bits, segs), dedup.code_words(codes)
    seg = np.repeat(np.arange(len(segs)), len(codes))
    key, row = keys.T.ravel(), np.tile(np.arange(len(codes)), len(segs))
    order = np.lexsort((seg, key))                                  # as the job sorts: key, then seg
    zeros = np.zeros(len(order), np.int32)
    table = pa.table({"seg": seg[order].astype(np.int32), "key": key[order], "lo": zeros, "hi": zeros,
                      "blk": zeros, "id": [ids[i] for i in row[order]], "w0": words[row[order], 0]})
    sizes = {(s, int(k)): int(n) for s in range(len(segs)) for k, n in zip(*np.unique(keys[:, s], return_counts=True))}
    within = _brute_pairs(codes, ids, radius)
    pos = {x: i for i, x in enumerate(ids)}

    def first_bucket(a, b):
        s = next(s for s in range(len(segs)) if keys[pos[a], s] == keys[pos[b], s])
        return s, int(keys[pos[a], s])
    want_pairs = {p for p in within if sizes[first_bucket(p[0], p[1])] <= limit}
    want_hot = {b: n for b, n in sizes.items() if n > limit}
    assert want_hot and want_pairs != within                        # some pairs are left to the hot pass
    segmask = np.array(dedup.segment_masks(segs, 1), dtype=np.int64).view(np.uint64)
    for size in (len(order), 97, 7, 3):
        out = pa.Table.from_batches(list(dedup._tile_batches(
            table.to_batches(max_chunksize=size), radius, segmask, 1, limit, None, None)))
        rows = out.to_pylist()
        got = [(r["id_a"], r["id_b"], r["distance"]) for r in rows if r["id_a"] is not None]
        assert len(got) == len(set(got)) and set(got) == want_pairs, size
        hot_rows = sorted(((r["hot_seg"], r["hot_key"]), r["hot_n"]) for r in rows if r["id_a"] is None)
        assert hot_rows == sorted(want_hot.items()), size                  # each once, with its full size


def test_connected_components_match_union_find(spark):
    chain = [(f"c{i:03d}", f"c{i + 1:03d}") for i in range(60)]           # a long path: 61 vertices
    star = [("s000", f"s{i:03d}") for i in range(1, 20)]
    loose = [("x1", "x2"), ("y2", "y1"), ("z", "a-z"), ("a-z", "m"), ("m", "c030")]
    pairs = [(min(a, b), max(a, b)) for a, b in chain + star + loose]
    df = spark.createDataFrame(pairs, "id_a string, id_b string")
    labels, rounds = dedup.connected_components(df)
    got = {r.id: r.cluster for r in labels.collect()}
    assert got == _union_find(pairs)
    assert rounds < 20                                      # pointer jumping: far fewer rounds than the path's 61


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
        if k < 60:                                           # a real near-duplicate: two words swapped
            w = words[src].copy()
            w[rng.choice(w.size, 2, replace=False)] = rng.choice(vocab, 2)
            w = np.unique(w)
        else:                                                # same neighbourhood in Hamming space, other text
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
    pdf = pd.DataFrame({"id": ids, "code": [c.tobytes() for c in packed], "address": C.prefix(packed, 16),
                        "word_ids": [e[0] for e in enc], "word_counts": [e[1] for e in enc]})
    files = ix.write_shard(vp, 2, 8, pdf.iloc[::2]) + ix.write_shard(vp, 2, 8, pdf.iloc[1::2])
    store.write_json(store.join(vp, "model", "model.json"),
                     {"vocab": {"doc_freq": doc_freq.tolist(), "num_train_docs": len(ids)}})
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
    rows = [{"id": i, "labels": [], "word_ids": e[0], "word_counts": e[1], "length": 1, "content_hash": i}
            for i, e in zip(ids, enc)]
    pq.write_table(pa.Table.from_pylist(rows, schema=ds.DOC_SCHEMA), data / ds.DOCS_DIR / "split=train" / "p.parquet")
    ds.write_vocab(data, [f"w{i}" for i in range(vocab)], doc_freq, len(ids))
    return {"index": index, "version": version, "codes": packed, "ids": ids, "cosine": tfidf @ tfidf.T,
            "jaccard": jaccard, "bare_index": bare, "data": str(data)}


def test_dedup_job_finds_verifies_clusters_and_writes_parquet(spark, dup_index, tmp_path):
    radius, out = 3, tmp_path / "out"
    summary = dedup.dedup_job(spark, dup_index["index"], radius, str(out), "cosine:0.8", block_size=3)
    assert summary["hot_buckets"] > 0                       # verification also runs in split (hot) buckets
    ids, pos = dup_index["ids"], {x: i for i, x in enumerate(dup_index["ids"])}
    within = _brute_pairs(dup_index["codes"], ids, radius)
    cos = dup_index["cosine"]
    want = {p for p in within if cos[pos[p[0]], pos[p[1]]] >= 0.8}
    pairs = pq.read_table(out / "pairs")
    assert pairs.column_names == ["id_a", "id_b", "distance", "similarity"]
    got = {(a, b, d): sim for a, b, d, sim in zip(*(pairs.column(c).to_pylist() for c in pairs.column_names))}
    assert len(got) == pairs.num_rows and all(a < b for a, b, _ in got)       # each pair once, ordered
    assert set(got) == want and 0 < len(want) < len(within)                    # the look-alikes are filtered out
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

    # Jaccard of word sets: joined onto given pairs (verify_pairs) and fused into the pair kernel agree
    docs, _ = dedup.read_shards(spark, dup_index["index"], columns=("id", "code", "word_ids", "word_counts"))
    cand = spark.createDataFrame(sorted(within), "id_a string, id_b string, distance int")
    jac = {(r.id_a, r.id_b): r.similarity
           for r in dedup.verify_pairs(cand, docs, dedup.Verify("jaccard", 0.7), None, 300).collect()}
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

    for cls, name in ((DataFrame, "collect"), (DataFrame, "toPandas"), (DataFrame, "toLocalIterator"),
                      (RDD, "collect"), (RDD, "toLocalIterator")):
        spy(cls, name)
    pairs, clusters, summary = dedup.find_near_duplicates(spark, dup_index["index"], 3, verify="cosine:0.8",
                                                          block_size=3)
    assert summary["hot_buckets"] > 0 and summary["pairs"] > 0
    assert seen and all(n <= 1 for _, _, n in seen), seen              # aggregates only (the cluster sizes)
    assert not any(cols and {"id", "code", "id_a", "w0", "word_ids"} & set(cols) for _, cols, _ in seen), seen


def test_verification_on_a_codes_only_index_reads_the_words_from_the_dataset(spark, dup_index, tmp_path):
    with pytest.raises(dedup.DedupError, match="stores no word counts; pass data_uri"):
        dedup.find_near_duplicates(spark, dup_index["bare_index"], 3, verify="jaccard:0.7")
    summary = dedup.dedup_job(spark, dup_index["bare_index"], 3, str(tmp_path / "out"), "jaccard:0.7",
                              data_uri=dup_index["data"])
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
