"""Batch near-duplicate detection: every pair of indexed codes within Hamming distance ``r``, exactly, in Spark.

Pigeonhole (as in Manku et al.'s simhash tables and Norouzi et al.'s multi-index hashing): split a code's
``bits`` into ``r + 1`` contiguous substrings ("segments"). Two codes within distance ``r`` differ in at most
``r`` segments, so at least one segment is equal. The job, with nothing but counts reaching the driver:

1. Read the shards once (``id, code`` and, to verify, the word columns). Spark expressions (no Python) turn
   each code into its big-endian 64-bit words ``w0..`` and its ``r + 1`` segment keys; ``posexplode`` makes
   ``r + 1`` rows ``(seg, key, id, w0.., [words])`` per code. ``key`` is the segment's value (XOR-folded to 64
   bits when a segment is longer: a collision only adds candidates, which the kernel rejects).
2. One shuffle: ``repartition`` by bucket ``(seg, key)``, ``sortWithinPartitions``, then ``mapInArrow``
   streams each task's sorted rows through a compiled kernel (:mod:`semhash_spark.index._dedup_kernels`): all pairs of a bucket,
   full distance by popcount over the code words, kept when ``<= r`` and when ``seg`` is the FIRST segment on
   which the two codes agree — so each pair comes out once, without a ``distinct``. Candidates never become
   Spark rows; only kept pairs leave the task. A bucket of more than ``block_size`` rows (hot) is not paired
   but counted: the task streams past it and emits a marker ``(seg, key, n)`` instead.
3. Hot buckets, only if there are any: their rows (the markers, a small table, broadcast) are split into
   ``nb = ceil(n / block_size)`` blocks by a hash of the id; a row of block ``b`` goes to the tiles
   ``(min(b, c), max(b, c))`` for every block ``c``, so a pair of rows in blocks ``b < c`` meets only in tile
   ``(b, c)`` and a pair in one block only in ``(b, b)``; no tile holds much more than ``2 * block_size`` rows
   and the work spreads over tasks. A second shuffle by tile, and the same kernel pairs each tile.
4. Verification, when asked, runs in the same kernel task: the word columns travel with the exploded rows, and
   each kept pair gets its cosine of TF-IDF vectors (raw counts times the model's idf, as
   :func:`semhash_spark.evaluation.evaluate.tfidf`) or Jaccard of word sets; the pairs within ``r`` are counted, then those
   below the threshold dropped. No join of pairs back to the documents. :func:`verify_pairs` does the same for
   a pairs DataFrame from elsewhere (by joins).
5. Clusters: connected components of the pairs by min-label propagation with pointer jumping, each round
   checkpointed (:func:`connected_components`); a cluster is named by its smallest id.

The driver plan: an index of at most ``local_max_docs`` documents (:data:`LOCAL_MAX_DOCS`) is read by Spark,
collected once, and calibrated, counted, paired and checked in the driver by the same kernels over the same
sorted bucket rows (:func:`local_pairs`), every bucket whole; the answers are the Spark plan's. At that size a
shuffle's tasks and a dozen small jobs cost more than the pairs.

Output of :func:`dedup_job` (``OUT`` a local path or ``s3://``, written by
:func:`semhash_spark.io.sparkio.write_parquet`)::

    OUT/pairs/*.parquet      id_a string, id_b string, distance int, [similarity double]   (id_a < id_b, once)
    OUT/clusters/*.parquet   id string, cluster string, size long                        (docs in some pair)
    OUT/summary.json         counts, radius, segments, hot buckets, seconds

Reading the index: the version's shard files, listed by its manifest, are read with
:func:`semhash_spark.io.sparkio.read_parquet`: Spark's reader on local paths, an ``s3://`` index staged locally in
local mode and read by the executors through the store on a cluster (no hadoop-aws needed).
"""

from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from semhash_spark import codes as C
from semhash_spark.data import dataset as ds
from semhash_spark.index import published as ix
from semhash_spark.index import leases
from semhash_spark.io import sparkio, store
from semhash_spark.models.inference import META  # not from .checkpoint: that imports torch into every Spark worker

log = logging.getLogger(__name__)

# codes per block of a hot bucket: a tile holds about 2 * 16384 rows at most (about 256 MiB of word hashes at
# 1,000 distinct words a document). A row goes to as many tiles as its bucket has blocks, so small blocks
# multiply the shuffle; the candidates are the same whatever the size.
DEFAULT_BLOCK = 16384
MAX_CC_ITERATIONS = 64
PAIRS_DIR, CLUSTERS_DIR, SUMMARY_FILE = "pairs", "clusters", "summary.json"
MEASURES = ("cosine", "jaccard")
TILE_KEYS = ("seg", "key", "lo", "hi")
HASHES = ds.WORD_HASHES  # the documents' whole word sets, hashed (prepare): Jaccard on the text itself
FRESH = "fresh"  # int8: 1 for the documents a --since run compares against the whole index
DEFAULT_MAX_PAIRS = 200_000_000
DEFAULT_TARGET_RECALL = 0.9
DEFAULT_CALIBRATION_SAMPLE = 20_000
CALIBRATION_BANDS, CALIBRATION_ROWS = 25, 5
CALIBRATION_MIN_PAIRS = 100  # fewer pairs above the threshold in the sample: the radius is a rough estimate
LOCAL_CC_MAX = 2_000_000  # pairs up to this many are clustered on the driver (scipy), more in Spark
LOCAL_MAX_DOCS = 100_000  # indexes up to this many documents are paired on the driver: one collect, no shuffle
LOCAL_MAX_CANDIDATES = 50_000_000  # ... when their candidates are at most this many (more: in Spark, on every core)
LOCAL_MAX_BYTES = 512 << 20  # ... and the files it would collect hold at most this much (Spark's maxResultSize: 1g)


class DedupError(ValueError):
    """A dedup request cannot be served (bad radius, no documents to verify on, ...); the message says why."""


@dataclass(frozen=True)
class Verify:
    """Content verification of candidate pairs: ``measure`` (cosine of TF-IDF, or Jaccard of word sets) >= threshold."""

    measure: str
    threshold: float

    @classmethod
    def parse(cls, text: "str | Verify | None") -> "Verify | None":
        """``"cosine:0.9"`` or ``"jaccard:0.8"`` -> Verify; None or "" -> None."""
        if text is None or isinstance(text, Verify):
            return text
        if not str(text).strip():
            return None
        measure, sep, value = str(text).partition(":")
        measure = measure.strip().lower()
        try:
            threshold = float(value)
        except ValueError:
            threshold = float("nan")
        if measure not in MEASURES or not sep or not 0.0 <= threshold <= 1.0:
            raise DedupError(f"verify {text!r}: expected cosine:T or jaccard:T with 0 <= T <= 1 (e.g. cosine:0.9)")
        return cls(measure, threshold)

    def __str__(self) -> str:
        return f"{self.measure}:{self.threshold:g}"


# --------------------------------------------------------------------------------------------------- segments


def segments(bits: int, radius: int) -> list[tuple[int, int]]:
    """The ``radius + 1`` contiguous bit ranges ``[start, end)`` of the pigeonhole split (lengths differ by <= 1)."""
    if not 0 <= radius < bits:
        raise DedupError(f"radius {radius} must be in [0, {bits}) for {bits}-bit codes")
    base, extra = divmod(bits, radius + 1)
    out, start = [], 0
    for i in range(radius + 1):
        end = start + base + (1 if i < extra else 0)
        out.append((start, end))
        start = end
    return out


def n_words(bits: int) -> int:
    return max(1, (C.code_bytes(bits) + 7) // 8)


def _signed(u: int) -> int:
    return u - (1 << 64) if u >= 1 << 63 else u


def segment_masks(segs: list[tuple[int, int]], nwords: int) -> list[list[int]]:
    """``masks[i][w]``: the bits of segment ``i`` inside big-endian word ``w``, as a signed 64-bit integer."""
    out = []
    for s, e in segs:
        row = []
        for w in range(nwords):
            lo, hi = max(s, 64 * w), min(e, 64 * w + 64)
            m = 0
            for p in range(lo, hi):
                m |= 1 << (63 - (p - 64 * w))
            row.append(_signed(m))
        out.append(row)
    return out


def code_words(codes: np.ndarray) -> np.ndarray:
    """Packed ``uint8[n, nbytes]`` -> ``int64[n, nwords]``: zero-padded big-endian 64-bit words (bit 0 = MSB of w0)."""
    n, nbytes = codes.shape
    nwords = max(1, (nbytes + 7) // 8)
    pad = np.zeros((n, 8 * nwords), dtype=np.uint8)
    pad[:, :nbytes] = codes
    return pad.view(">u8").astype(np.uint64).view(np.int64)


def segment_keys(codes: np.ndarray, bits: int, segs: list[tuple[int, int]]) -> np.ndarray:
    """``int64[n, len(segs)]``: each segment's value (segments over 64 bits: XOR of their 64-bit chunks)."""
    n = codes.shape[0]
    bits01 = np.unpackbits(codes, axis=1, count=bits, bitorder="big")
    out = np.empty((n, len(segs)), dtype=np.int64)
    for i, (s, e) in enumerate(segs):
        key = np.zeros(n, dtype=np.uint64)
        for cs in range(s, e, 64):
            ce = min(cs + 64, e)
            chunk = np.zeros((n, 64), dtype=np.uint8)
            chunk[:, 64 - (ce - cs) :] = bits01[:, cs:ce]
            key ^= np.packbits(chunk, axis=1, bitorder="big").view(">u8").ravel().astype(np.uint64)
        out[:, i] = key.view(np.int64)
    return out


# --------------------------------------------------------------------------------------------------- arrow columns


def _binary_buffers(arr: "pa.Array | pa.ChunkedArray") -> tuple[np.ndarray, np.ndarray]:
    """A binary Arrow column -> ``(offsets int64[n + 1], data uint8[...])``: the values without a copy per row."""
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    large = pa.types.is_large_binary(arr.type)
    _, offs_buf, data_buf = arr.buffers()
    offs = np.frombuffer(offs_buf, np.int64 if large else np.int32)[arr.offset : arr.offset + len(arr) + 1]
    data = np.frombuffer(data_buf, np.uint8) if data_buf is not None else np.zeros(0, np.uint8)
    return offs.astype(np.int64), data


def _word_lists(ids_col, counts_col=None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """The ``word_ids``/``word_counts`` columns (:func:`semhash_spark.data.dataset.encode_sparse`) -> CSR parts
    ``(indptr int64[n + 1], ids int32[nnz], counts float32[nnz] or None without counts_col)``."""
    ioffs, idata = _binary_buffers(ids_col)
    rel = ioffs - ioffs[0]
    if np.any(rel % 4):
        raise DedupError("word_ids rows must hold 4-byte values")
    ids = np.require(idata[ioffs[0] : ioffs[-1]].view("<i4"), np.int32, "A")
    counts = None
    if counts_col is not None:
        coffs, cdata = _binary_buffers(counts_col)
        if not np.array_equal(rel, coffs - coffs[0]):
            raise DedupError("word_ids and word_counts rows must hold the same number of 4-byte values")
        counts = np.require(cdata[coffs[0] : coffs[-1]].view("<f4"), np.float32, "A")
    return rel // 4, ids, counts


def _hash_lists(col) -> tuple[np.ndarray, np.ndarray]:
    """The ``word_hashes`` column -> CSR parts ``(indptr int64[n + 1], hashes int64[nnz])`` (nulls: empty sets)."""
    offs, data = _binary_buffers(col)
    rel = offs - offs[0]
    if np.any(rel % 8):
        raise DedupError("word_hashes rows must hold 8-byte values")
    return rel // 8, np.require(data[offs[0] : offs[-1]].view("<i8"), np.int64, "A")


def _word_idf(measure: str, idf: np.ndarray | None, vocab_size: int | None) -> np.ndarray:
    """The idf a check on vocabulary words weighs them by: the given one (cosine needs it), else ones over
    ``vocab_size`` words (Jaccard)."""
    if measure == "cosine" and idf is None:
        raise DedupError("cosine similarity needs idf statistics (the model's vocab or the dataset's vocab.json)")
    if idf is None:
        if vocab_size is None:
            raise DedupError("jaccard similarity needs vocab_size (or idf)")
        idf = np.ones(vocab_size, dtype=np.float64)
    return np.asarray(idf, dtype=np.float64)


def _weighted_words(ids_col, counts_col, measure: str, idf: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The word columns -> ``(indptr, ids, weights)`` for :func:`~semhash_spark.index._dedup_kernels.pair_similarity`:
    counts times ``idf`` for cosine, ones for Jaccard (``counts_col`` None)."""
    indptr, ids, counts = _word_lists(ids_col, counts_col)
    if ids.size and (ids.min() < 0 or ids.max() >= idf.size):
        raise DedupError(f"word id out of range [0, {idf.size}): {ids.min()}..{ids.max()}")
    weights = counts.astype(np.float64) * idf[ids] if counts is not None else np.ones(ids.size)
    return indptr, ids, weights


def _low_bits(n: int) -> int:
    return _signed((1 << n) - 1)


def word_columns(code: "F.Column", code_bytes: int) -> list["F.Column"]:
    """Spark expressions: the packed code column -> its zero-padded big-endian 64-bit words (as :func:`code_words`;
    native, no Python). A code of another length is an error naming it."""
    nwords = max(1, (code_bytes + 7) // 8)
    length = F.coalesce(F.length(code), F.lit(-1))
    checked = F.when(
        length != code_bytes,
        F.raise_error(
            F.concat(F.lit("code of "), length.cast("string"), F.lit(f" bytes: the index's codes have {code_bytes}"))
        ),
    ).otherwise(code)
    pad = 8 * nwords - code_bytes
    padded = F.concat(checked, F.unhex(F.lit("00" * pad))) if pad else checked
    half = lambda start: F.conv(F.hex(F.substring(padded, start, 4)), 16, 10).cast("long")  # noqa: E731
    return [F.shiftleft(half(8 * w + 1), 32).bitwiseOR(half(8 * w + 5)) for w in range(nwords)]


def _bit_range(words: list["F.Column"], start: int, end: int) -> "F.Column":
    """Bits ``[start, end)`` (at most 64) of the big-endian words as an integer (the first bit the most
    significant)."""
    wa, wb = start // 64, (end - 1) // 64
    if wa == wb:
        v = F.shiftrightunsigned(words[wa], 64 * (wa + 1) - end)
        return v if end - start == 64 else v.bitwiseAND(F.lit(_low_bits(end - start)))
    high, low = 64 * wb - start, end - 64 * wb
    return F.shiftleft(words[wa].bitwiseAND(F.lit(_low_bits(high))), low).bitwiseOR(
        F.shiftrightunsigned(words[wb], 64 - low)
    )


def key_columns(words: list["F.Column"], segs: list[tuple[int, int]]) -> list["F.Column"]:
    """Spark expressions: each segment's key from the word columns (as :func:`segment_keys`: the segment's value,
    XOR of its 64-bit chunks when longer)."""
    out = []
    for s, e in segs:
        out.append(
            functools.reduce(
                lambda x, y: x.bitwiseXOR(y), [_bit_range(words, cs, min(cs + 64, e)) for cs in range(s, e, 64)]
            )
        )
    return out


# --------------------------------------------------------------------------------------------------- pairs


def bucket_rows(codes_df: DataFrame, bits: int, segs: list[tuple[int, int]]) -> DataFrame:
    """``codes_df(id, code, [word_ids, word_counts])`` -> ``(seg, key, id, w0.., [word_ids, word_counts])``: a
    row per code and segment (Spark expressions, no Python)."""
    nwords = n_words(bits)
    words = [f"w{w}" for w in range(nwords)]
    extra = [c for c in (*ix.WORD_COLUMNS, HASHES, FRESH) if c in codes_df.columns]
    wcols = word_columns(F.col("code"), C.code_bytes(bits))
    coded = codes_df.select(F.col("id").cast("string").alias("id"), *(c.alias(n) for c, n in zip(wcols, words)), *extra)
    keys = key_columns([F.col(w) for w in words], segs)
    return coded.select(F.posexplode(F.array(*keys)).alias("seg", "key"), "id", *words, *extra)


def tile_hot(rows: DataFrame, hot: DataFrame, block_size: int) -> DataFrame:
    """The rows of the hot buckets (``hot(seg, key, n)``, a small table, broadcast) in their tiles
    ``(seg, key, lo, hi, blk, ...)``: ``nb = ceil(n / block_size)`` blocks by a hash of the id, a row of block
    ``b`` in the tiles ``(min(b, c), max(b, c))`` for every block ``c``."""
    nb = F.ceil(F.col("n") / F.lit(block_size)).cast("int")
    rows = (
        rows.join(F.broadcast(hot.select("seg", "key", nb.alias("nb"))), ["seg", "key"])
        .withColumn("blk", F.pmod(F.xxhash64("id"), F.col("nb")).cast("int"))
        .withColumn("c", F.explode(F.sequence(F.lit(0), F.col("nb") - 1)))
    )
    rest = [c for c in rows.columns if c not in ("seg", "key", "nb", "blk", "c")]
    return rows.select("seg", "key", F.least("blk", "c").alias("lo"), F.greatest("blk", "c").alias("hi"), "blk", *rest)


def _tile_batches(
    batches: Iterator[pa.RecordBatch],
    radius: int,
    segmask: np.ndarray,
    nwords: int,
    limit: int,
    measure: str | None,
    idf: np.ndarray | None,
    min_sim: float = 0.0,
) -> Iterator[pa.RecordBatch]:
    """A task's rows sorted by ``(key, seg, lo, hi, blk)`` -> its kept pairs, and (``limit > 0``) a marker row
    ``(hot_seg, hot_key, hot_n)`` for each bucket of more than ``limit`` rows, whose pairs it skips. A tile cut
    by a batch boundary is held back and finished with the next batch; a hot bucket is counted, never held.
    Each kernel call also yields a count row ``(-1, 0, pairs within the radius)``. With ``min_sim > 0`` only the
    pairs of similarity >= ``min_sim`` leave the task (a Jaccard pair that cannot reach it stops early)."""
    from semhash_spark.index import _dedup_kernels as K

    def col_of(t: pa.Table, c: str) -> np.ndarray:  # one chunk: no copy; tiles of pass 1 are all (0, 0)
        return t.column(c).to_numpy() if c in t.column_names else np.zeros(t.num_rows, np.int32)

    def pairs(t: pa.Table, stop: int) -> Iterator[pa.RecordBatch]:
        col = functools.partial(col_of, t)
        words = np.stack([col(f"w{w}") for w in range(nwords)], axis=1).view(np.uint64)
        fresh = t.column(FRESH).to_numpy() if FRESH in t.column_names else np.ones(t.num_rows, np.int8)
        a, b, d, hs, hn = K.tile_pairs(
            col("seg"), col("key"), col("lo"), col("hi"), col("blk"), words, segmask, radius, stop, limit, fresh
        )
        if hs.size:
            yield markers(col("seg")[hs], col("key")[hs], hn)
        if a.size == 0:
            return
        yield markers([-1], [0], [a.size])
        sim = None
        if measure == "jaccard" and HASHES in t.column_names:
            indptr, hashes = _hash_lists(t.column(HASHES))
            sim = K.pair_similarity(indptr, hashes, np.ones(hashes.size), a, b, False, min_sim)
        elif measure is not None:
            indptr, ids, weights = _weighted_words(
                t.column("word_ids"), t.column("word_counts") if measure == "cosine" else None, measure, idf
            )
            sim = K.pair_similarity(indptr, ids, weights, a, b, measure == "cosine", min_sim)
        if sim is not None and min_sim > 0:
            keep = np.flatnonzero(sim >= min_sim)
            a, b, d, sim = a[keep], b[keep], d[keep], sim[keep]
            if a.size == 0:
                return
        ia, ib = t.column("id").take(a), t.column("id").take(b)
        first = pc.less(ia, ib)
        out = {"id_a": pc.if_else(first, ia, ib), "id_b": pc.if_else(first, ib, ia), "distance": pa.array(d)}
        if sim is not None:
            out["similarity"] = pa.array(sim)
        out = {k: (v.combine_chunks() if isinstance(v, pa.ChunkedArray) else v) for k, v in out.items()}
        yield pa.RecordBatch.from_pydict(
            out | {c: pa.nulls(a.size, typ) for c, typ in MARKER_TYPES.items()}, schema=schema
        )

    def markers(seg, key, n) -> pa.RecordBatch:
        cols = {c: pa.nulls(len(n), schema.field(c).type) for c in schema.names if c not in MARKER_TYPES}
        return pa.RecordBatch.from_pydict(
            cols
            | {
                "hot_seg": pa.array(seg, pa.int32()),
                "hot_key": pa.array(key, pa.int64()),
                "hot_n": pa.array(n, pa.int64()),
            },
            schema=schema,
        )

    schema = pa.schema(
        [("id_a", pa.string()), ("id_b", pa.string()), ("distance", pa.int32())]
        + ([("similarity", pa.float64())] if measure is not None else [])
        + list(MARKER_TYPES.items())
    )
    pending, skip = None, None  # skip: [seg, key, rows] of a hot bucket being counted
    for batch in batches:
        t = pa.Table.from_batches([batch])
        t = (t if pending is None else pa.concat_tables([pending, t])).combine_chunks()
        pending = None
        if skip is not None and t.num_rows:
            seg, key = t.column("seg").to_numpy(), t.column("key").to_numpy()
            head = (
                int(np.argmin((seg == skip[0]) & (key == skip[1])))
                if not ((seg[-1] == skip[0]) and (key[-1] == skip[1]))
                else t.num_rows
            )
            skip[2] += head
            if head == t.num_rows:
                continue
            yield markers([skip[0]], [skip[1]], [skip[2]])
            skip, t = None, t.slice(head).combine_chunks()
        n = t.num_rows
        if n == 0:
            continue
        same = np.ones(n, dtype=bool)  # rows of the last tile: a suffix, the rows are sorted
        for c in TILE_KEYS:
            v = col_of(t, c)
            same &= v == v[-1]
        stop = n - int(same.sum())
        if stop:
            yield from pairs(t, stop)
        pending = t.slice(stop)
        if limit and pending.num_rows > limit:
            skip = [pending.column("seg")[0].as_py(), pending.column("key")[0].as_py(), pending.num_rows]
            pending = None
    if skip is not None:
        yield markers([skip[0]], [skip[1]], [skip[2]])
    if pending is not None and pending.num_rows:
        yield from pairs(pending.combine_chunks(), pending.num_rows)


MARKER_TYPES = {"hot_seg": pa.int32(), "hot_key": pa.int64(), "hot_n": pa.int64()}


def _kernel_pass(
    tiles: DataFrame,
    radius: int,
    segs: list[tuple[int, int]],
    nwords: int,
    limit: int,
    measure: str | None,
    idf: np.ndarray | None,
    min_sim: float = 0.0,
) -> DataFrame:
    """One shuffle (by tile), a sort, and the pair kernel over each task's rows."""
    # the key first: Spark sorts on a prefix of the first column, and 4..r+1 segment numbers make a poor one
    keys = [c for c in ("key", "seg", "lo", "hi", "blk") if c in tiles.columns]
    segmask = np.array(segment_masks(segs, nwords), dtype=np.int64).view(np.uint64)
    schema = (
        "id_a string, id_b string, distance int"
        + (", similarity double" if measure else "")
        + ", hot_seg int, hot_key long, hot_n long"
    )
    fn = functools.partial(
        _tile_batches,
        radius=radius,
        segmask=segmask,
        nwords=nwords,
        limit=limit,
        measure=measure,
        idf=idf,
        min_sim=min_sim,
    )
    by = [c for c in keys if c != "blk"]  # a tile's rows in one task, its blocks in order
    return tiles.repartition(*by).sortWithinPartitions(*keys).mapInArrow(fn, schema)


def bucket_census(
    rows: DataFrame, segs: list[tuple[int, int]], block_size: int, max_pairs: int | None = None, top: int = 5
) -> dict[str, Any]:
    """Counts the candidate pairs the kernel will examine, per bucket ``(seg, key)``, before any pair is formed:
    ``candidates`` (pairs sharing a bucket, with a ``fresh`` row when the rows have that column), ``buckets``
    (of two rows or more), ``largest`` (rows of the biggest), ``hot`` (buckets of more than ``block_size`` rows)
    and, only when there are more than ``max_pairs`` candidates, ``top``: the ``top`` buckets with the most
    candidates, as ``(segment, bits, key, rows, candidates)``."""
    n = F.count(F.lit(1))
    if FRESH in rows.columns:
        fresh = F.sum(F.col(FRESH).cast("long"))
        per = rows.groupBy("seg", "key").agg(n.alias("n"), fresh.alias("f"))
        cand = F.col("f") * (F.col("n") - F.col("f")) + F.col("f") * (F.col("f") - 1) / 2
    else:
        per = rows.groupBy("seg", "key").agg(n.alias("n"))
        cand = F.col("n") * (F.col("n") - 1) / 2
    per = per.where(F.col("n") > 1).select("seg", "key", "n", cand.cast("long").alias("c"))
    agg = per.agg(
        F.sum("c").alias("c"),
        F.count(F.lit(1)).alias("b"),
        F.max("n").alias("m"),
        F.count(F.when(F.col("n") > block_size, 1)).alias("h"),
    ).first()
    out = {
        "candidates": int(agg["c"] or 0),
        "buckets": int(agg["b"] or 0),
        "largest": int(agg["m"] or 0),
        "hot": int(agg["h"] or 0),
        "top": [],
    }
    if max_pairs is not None and out["candidates"] > max_pairs:
        out["top"] = [
            _hot_bucket(segs, r["seg"], r["key"], r["n"], r["c"]) for r in per.orderBy(F.desc("c")).limit(top).collect()
        ]
    return out


def _hot_bucket(segs: list[tuple[int, int]], seg: int, key: int, rows: int, candidates: int) -> dict[str, Any]:
    """One of the census's ``top`` buckets, as the budget error names it."""
    s, e = segs[int(seg)]
    return {
        "segment": int(seg),
        "bits": f"{s}-{e - 1}",
        "key": f"{int(key) & ((1 << 64) - 1):x}",
        "rows": int(rows),
        "candidates": int(candidates),
    }


def _budget_error(census: dict[str, Any], radius: int, max_pairs: int) -> DedupError:
    hot = "; ".join(
        f"segment {b['segment']} (bits {b['bits']}) = {b['key']}: {b['rows']} codes, {b['candidates']} pairs"
        for b in census["top"]
    )
    return DedupError(
        f"radius {radius} would compare {census['candidates']} candidate pairs, over the budget max_pairs="
        f"{max_pairs} (--max-pairs); the largest of {census['buckets']} shared buckets hold {census['largest']} "
        f"codes. Hottest buckets: {hot}. Many codes equal on a whole segment mean collapsed codes (check the "
        "model) or a radius too large: lower --radius, or raise --max-pairs"
    )


def find_pairs(
    codes_df: DataFrame,
    bits: int,
    radius: int,
    block_size: int = DEFAULT_BLOCK,
    *,
    similarity: str | None = None,
    idf: np.ndarray | None = None,
    vocab_size: int | None = None,
    threshold: float | None = None,
    max_pairs: int | None = DEFAULT_MAX_PAIRS,
) -> tuple[DataFrame, DataFrame, dict[str, int]]:
    """Every pair of rows of ``codes_df(id string, code binary)`` within Hamming ``radius``, exactly; the hot
    buckets ``(seg, key, n)``; and the counts ``pairs_within_radius``, ``pairs`` (those with ``similarity >=
    threshold`` when a threshold is given) and ``hot_buckets``. The DataFrames are materialised (checkpointed).

    Pass 1: every bucket is one tile; the kernel computes the pairs of buckets of at most ``block_size`` rows
    and only counts the bigger ones (hot). Pass 2, only if some bucket was hot: those buckets' rows, tiled by
    :func:`tile_hot`, through the kernel again. A pair comes out of the bucket of its first agreeing segment
    only, so the two passes never repeat a pair. ``similarity="cosine"`` or ``"jaccard"`` (``codes_df`` then
    has ``word_ids``, and ``word_counts`` for cosine; Jaccard is on ``word_hashes`` instead when ``codes_df`` has
    them) adds each pair's ``similarity``, computed in the same task (cosine weighs counts by ``idf``); with a
    ``threshold`` only the pairs at or above it leave the task (the others are only counted). With a ``fresh``
    column only pairs with a fresh row come out.

    Before any pair is formed, the candidates are counted per bucket (:func:`bucket_census`); more than
    ``max_pairs`` (None: no limit) stops the job with a :class:`DedupError` naming the radius and the hottest
    buckets. The counts returned add ``candidates``.
    """
    if block_size < 1:
        raise DedupError(f"block_size must be >= 1, got {block_size}")
    cols = ["id", "code"] + ([FRESH] if FRESH in codes_df.columns else [])
    if similarity is not None:
        if similarity not in MEASURES:
            raise DedupError(f"similarity {similarity!r}: expected one of {', '.join(MEASURES)}")
    if similarity == "jaccard" and HASHES in codes_df.columns:
        cols.append(HASHES)
    elif similarity is not None:
        cols += ["word_ids"] + (["word_counts"] if similarity == "cosine" else [])
        missing = [c for c in cols if c not in codes_df.columns]
        if missing:
            raise DedupError(f"similarity {similarity!r} needs the columns {', '.join(missing)} in codes_df")
        idf = _word_idf(similarity, idf, vocab_size)
    if threshold is not None and similarity is None:
        raise DedupError(f"threshold {threshold} needs a similarity (cosine or jaccard)")
    segs, nwords = segments(bits, radius), n_words(bits)
    rows = bucket_rows(codes_df.select(*cols), bits, segs)
    if FRESH in rows.columns:  # only the buckets holding a fresh row can hold a pair that counts
        hit = rows.where(F.col(FRESH) == 1).select("seg", "key").distinct()
        rows = rows.join(hit, ["seg", "key"], "left_semi")
    census = bucket_census(rows, segs, block_size, max_pairs)
    if max_pairs is not None and census["candidates"] > max_pairs:
        raise _budget_error(census, radius, max_pairs)
    tiles = rows  # pass 1: a bucket is one tile (lo = hi = blk = 0, not shipped)
    is_pair, is_hot = F.col("id_a").isNotNull(), F.col("hot_seg") >= 0
    kept = is_pair & (F.col("similarity") >= F.lit(threshold)) if threshold is not None else is_pair

    def counted(df: DataFrame) -> dict[str, int]:  # one job for the three counts
        row = df.agg(
            F.sum(F.when(F.col("hot_seg") == -1, F.col("hot_n"))).alias("w"),
            F.count(F.when(kept, 1)).alias("k"),
            F.count(F.when(is_hot, 1)).alias("h"),
        ).first()
        return {"pairs_within_radius": int(row["w"] or 0), "pairs": int(row["k"]), "hot_buckets": int(row["h"])}

    min_sim = float(threshold) if threshold is not None else 0.0  # Jaccard below it: bounded, not computed
    out = _kernel_pass(tiles, radius, segs, nwords, block_size, similarity, idf, min_sim).localCheckpoint()
    counts = counted(out) | {"candidates": census["candidates"]}
    pair_cols = [c for c in out.columns if c not in MARKER_TYPES]
    hot = out.where(is_hot).select(
        F.col("hot_seg").alias("seg"), F.col("hot_key").alias("key"), F.col("hot_n").alias("n")
    )
    pairs = out.where(is_pair).select(*pair_cols)
    if counts["hot_buckets"]:
        hot = hot.localCheckpoint()
        more = _kernel_pass(tile_hot(rows, hot, block_size), radius, segs, nwords, 0, similarity, idf, min_sim)
        more = more.localCheckpoint()
        extra = counted(more)
        counts["pairs_within_radius"] += extra["pairs_within_radius"]
        counts["pairs"] += extra["pairs"]
        pairs = pairs.unionByName(more.where(is_pair).select(*pair_cols))
    return pairs, hot, counts


def hamming_pairs(
    codes_df: DataFrame,
    bits: int,
    radius: int,
    block_size: int = DEFAULT_BLOCK,
    *,
    similarity: str | None = None,
    idf: np.ndarray | None = None,
    vocab_size: int | None = None,
) -> DataFrame:
    """Every pair of rows of ``codes_df(id string, code binary)`` within Hamming ``radius``: exact.

    Returns ``(id_a, id_b, distance, [similarity])`` with ``id_a < id_b``, each pair once (see :func:`find_pairs`).
    """
    return find_pairs(codes_df, bits, radius, block_size, similarity=similarity, idf=idf, vocab_size=vocab_size)[0]


# --------------------------------------------------------------------------------------------------- verify


def _similarities(
    frames: Iterator[pd.DataFrame], measure: str, idf: np.ndarray | None, vocab_size: int
) -> Iterator[pd.DataFrame]:
    """Pairs with both documents' sparse counts -> the pairs with their similarity (one sparse product per batch)."""
    import scipy.sparse as sp

    for pdf in frames:
        if len(pdf) == 0:
            continue
        a = ds.csr_from_binary(pdf["a_ids"].tolist(), pdf["a_counts"].tolist(), vocab_size)
        b = ds.csr_from_binary(pdf["b_ids"].tolist(), pdf["b_counts"].tolist(), vocab_size)
        if measure == "cosine":
            w = sp.diags(idf.astype(np.float64))
            a, b = (a.astype(np.float64) @ w).tocsr(), (b.astype(np.float64) @ w).tocsr()
            dot = np.asarray(a.multiply(b).sum(axis=1)).ravel()
            na = np.sqrt(np.asarray(a.multiply(a).sum(axis=1)).ravel())
            nb = np.sqrt(np.asarray(b.multiply(b).sum(axis=1)).ravel())
            denom = na * nb
            sim = np.divide(dot, denom, out=np.zeros_like(dot), where=denom > 0)
        else:
            a.data[:] = 1.0
            b.data[:] = 1.0
            inter = np.asarray(a.multiply(b).sum(axis=1)).ravel()
            union = a.getnnz(axis=1) + b.getnnz(axis=1) - inter
            sim = np.divide(inter, union, out=np.zeros_like(inter, dtype=np.float64), where=union > 0)
        yield pd.DataFrame(
            {
                "id_a": pdf["id_a"],
                "id_b": pdf["id_b"],
                "distance": pdf["distance"],
                "similarity": np.clip(sim, 0.0, 1.0),
            }
        )


def verify_pairs(
    pairs: DataFrame, docs: DataFrame, verify: Verify, idf: np.ndarray | None, vocab_size: int
) -> DataFrame:
    """Keeps the pairs whose documents (``docs(id, word_ids, word_counts)``) are similar enough; adds ``similarity``."""
    if verify.measure == "cosine" and idf is None:
        raise DedupError("cosine verification needs idf statistics (the model's vocab or the dataset's vocab.json)")
    d = docs.select("id", "word_ids", "word_counts")
    da = d.select(F.col("id").alias("id_a"), F.col("word_ids").alias("a_ids"), F.col("word_counts").alias("a_counts"))
    db = d.select(F.col("id").alias("id_b"), F.col("word_ids").alias("b_ids"), F.col("word_counts").alias("b_counts"))
    joined = pairs.join(da, "id_a").join(db, "id_b")
    fn = functools.partial(_similarities, measure=verify.measure, idf=idf, vocab_size=vocab_size)
    scored = joined.select("id_a", "id_b", "distance", "a_ids", "a_counts", "b_ids", "b_counts").mapInPandas(
        fn, "id_a string, id_b string, distance int, similarity double"
    )
    return scored.where(F.col("similarity") >= F.lit(verify.threshold))


# --------------------------------------------------------------------------------------------------- driver plan


@dataclass
class DriverRows:
    """A small index's rows on the driver (:func:`collect_rows`): ``ids object[n]``, ``codes uint8[n, nbytes]``,
    ``fresh int8[n]`` (None: every row counts), and the word lists a check reads as CSR parts ``indptr``,
    ``values`` (int64 word hashes or int32 word ids) and ``weights`` (None without a check)."""

    ids: np.ndarray
    codes: np.ndarray
    fresh: np.ndarray | None = None
    indptr: np.ndarray | None = None
    values: np.ndarray | None = None
    weights: np.ndarray | None = None


def collect_rows(
    codes_df: DataFrame,
    bits: int,
    measure: str | None = None,
    idf: np.ndarray | None = None,
    vocab_size: int | None = None,
) -> DriverRows:
    """``codes_df(id, code, [fresh], [word_hashes | word_ids, word_counts])`` collected once (the driver plan);
    the word lists are the ones :func:`find_pairs` checks ``measure`` on (``word_hashes`` when present), weighed
    as there (``idf``, ``vocab_size``)."""
    words = []
    if measure == "jaccard" and HASHES in codes_df.columns:
        words = [HASHES]
    elif measure is not None:
        words = ["word_ids"] + (["word_counts"] if measure == "cosine" else [])
    cols = ["id", "code"] + ([FRESH] if FRESH in codes_df.columns else []) + words
    pdf = codes_df.select(*cols).toPandas()
    n, nbytes = len(pdf), C.code_bytes(bits)
    raw = pdf["code"].tolist()
    wrong = next((b for b in raw if b is None or len(b) != nbytes), False)
    if wrong is not False:
        raise DedupError(f"code of {-1 if wrong is None else len(wrong)} bytes: the index's codes have {nbytes}")
    rows = DriverRows(
        ids=pdf["id"].astype(str).to_numpy(object),
        codes=np.frombuffer(b"".join(raw), np.uint8).reshape(n, nbytes),
        fresh=pdf[FRESH].to_numpy(np.int8) if FRESH in pdf.columns else None,
    )
    if words == [HASHES]:
        from semhash_spark.data import wordsets

        rows.indptr, rows.values = wordsets.hash_lists(pdf[HASHES].tolist())
        rows.weights = np.ones(rows.values.size)
    elif words:
        idf = _word_idf(measure, idf, vocab_size)
        col = lambda c: pa.array(pdf[c].tolist(), pa.binary())  # noqa: E731
        counts = col("word_counts") if measure == "cosine" else None
        rows.indptr, rows.values, rows.weights = _weighted_words(col("word_ids"), counts, measure, idf)
    return rows


def local_census(
    keys: np.ndarray,
    fresh: np.ndarray | None,
    segs: list[tuple[int, int]],
    block_size: int,
    max_pairs: int | None = None,
    top: int = 5,
) -> dict[str, Any]:
    """:func:`bucket_census` of the driver plan, from the segment keys ``int64[n, r + 1]``: the same counts (a
    bucket counts only when it holds a fresh row, where ``fresh`` is given)."""
    per = []
    for s in range(keys.shape[1]):
        uniq, inv, n = np.unique(keys[:, s], return_inverse=True, return_counts=True)
        if fresh is None:
            cand = n * (n - 1) // 2
            live = n > 1
        else:
            f = np.bincount(inv, weights=fresh, minlength=uniq.size).astype(np.int64)
            cand = f * (n - f) + f * (f - 1) // 2
            live = (n > 1) & (f > 0)
        per.append((np.full(int(live.sum()), s), uniq[live], n[live], cand[live]))
    seg, key, n, cand = (np.concatenate(x) for x in zip(*per))
    out = {
        "candidates": int(cand.sum()),
        "buckets": int(n.size),
        "largest": int(n.max()) if n.size else 0,
        "hot": int((n > block_size).sum()),
        "top": [],
    }
    if max_pairs is not None and out["candidates"] > max_pairs:
        out["top"] = [_hot_bucket(segs, seg[i], key[i], n[i], cand[i]) for i in np.argsort(-cand, kind="stable")[:top]]
    return out


def local_pairs(
    rows: DriverRows,
    bits: int,
    radius: int,
    *,
    measure: str | None = None,
    threshold: float | None = None,
    block_size: int = DEFAULT_BLOCK,
    max_pairs: int | None = DEFAULT_MAX_PAIRS,
    max_candidates: int | None = None,
) -> tuple[pd.DataFrame | None, dict[str, int]]:
    """:func:`find_pairs` on the driver, for an index small enough to collect: the same pigeonhole buckets, census
    and budget, the same compiled kernel over the rows sorted by bucket (every bucket whole: one process has no
    tasks to spread a hot bucket over), the check on the collected word lists. Returns the pairs (``id_a < id_b,
    distance, [similarity]``; only those at or above ``threshold`` when given) and the counts of
    :func:`find_pairs`, with ``hot_buckets`` the buckets of more than ``block_size`` rows (paired whole).

    More than ``max_candidates`` candidates (the driver's share: one thread, and every pair within the radius
    held before the check) returns ``(None, counts)`` without pairing: the caller pairs in Spark instead."""
    from semhash_spark.index import _dedup_kernels as K

    segs, nwords = segments(bits, radius), n_words(bits)
    keys = segment_keys(rows.codes, bits, segs)
    census = local_census(keys, rows.fresh, segs, block_size, max_pairs)
    if max_pairs is not None and census["candidates"] > max_pairs:
        raise _budget_error(census, radius, max_pairs)
    if max_candidates is not None and census["candidates"] > max_candidates:
        return None, {"candidates": census["candidates"]}
    n, m = keys.shape
    doc = np.tile(np.arange(n, dtype=np.int64), m)
    seg = np.repeat(np.arange(m, dtype=np.int32), n)
    key = keys.T.ravel()
    order = np.lexsort((doc, seg, key))  # a bucket's rows together, as the Spark plan's sorted task rows
    doc, seg, key = doc[order], seg[order], key[order]
    zeros = np.zeros(doc.size, np.int32)
    fresh = rows.fresh[doc] if rows.fresh is not None else np.ones(doc.size, np.int8)
    segmask = np.array(segment_masks(segs, nwords), dtype=np.int64).view(np.uint64)
    words = code_words(rows.codes).view(np.uint64)[doc]
    a, b, d, _, _ = K.tile_pairs(seg, key, zeros, zeros, zeros, words, segmask, radius, doc.size, 0, fresh)
    a, b = doc[a], doc[b]
    counts = {"candidates": census["candidates"], "pairs_within_radius": int(a.size), "hot_buckets": census["hot"]}
    out: dict[str, Any] = {}
    if measure is not None:
        min_sim = float(threshold) if threshold is not None else 0.0
        sim = K.pair_similarity(rows.indptr, rows.values, rows.weights, a, b, measure == "cosine", min_sim)
        if threshold is not None:
            keep = np.flatnonzero(sim >= threshold)
            a, b, d, sim = a[keep], b[keep], d[keep], sim[keep]
        out["similarity"] = sim.astype(np.float64)
    ia, ib = rows.ids[a], rows.ids[b]
    first = ia < ib
    pairs = pd.DataFrame(
        {"id_a": np.where(first, ia, ib), "id_b": np.where(first, ib, ia), "distance": d.astype(np.int32), **out}
    )
    counts["pairs"] = len(pairs)
    return pairs, counts


# --------------------------------------------------------------------------------------------------- clusters


def local_components(spark: SparkSession, pairs: DataFrame) -> DataFrame:
    """``pairs(id_a, id_b)`` -> ``(id, cluster, size)`` as :func:`connected_components`, computed on the driver
    (scipy) for a pair count the caller has bounded: a few Spark jobs fewer than the label propagation."""
    return spark.createDataFrame(
        _components(pairs.select("id_a", "id_b").toPandas()), "id string, cluster string, size long"
    )


def _components(pdf: pd.DataFrame) -> pd.DataFrame:
    """``pdf(id_a, id_b)`` -> ``(id, cluster, size)`` as :func:`local_components`, in memory."""
    import scipy.sparse as sps
    from scipy.sparse.csgraph import connected_components as components

    ids, inv = np.unique(
        np.concatenate([pdf["id_a"].to_numpy(object), pdf["id_b"].to_numpy(object)]), return_inverse=True
    )
    m = len(pdf)
    graph = sps.coo_matrix((np.ones(m, np.int8), (inv[:m], inv[m:])), shape=(ids.size, ids.size))
    _, comp = components(graph, directed=False)
    first = np.full(comp.max() + 1 if comp.size else 0, ids.size, np.int64)
    np.minimum.at(first, comp, np.arange(ids.size))  # ids are sorted: the smallest index is the min id
    size = np.bincount(comp)
    return pd.DataFrame({"id": ids.astype(str), "cluster": ids[first[comp]].astype(str), "size": size[comp]})


def _checkpoint(df: DataFrame) -> DataFrame:
    """Materialises ``df`` and cuts its lineage AND its size estimate.

    A checkpointed DataFrame keeps its plan's size estimate; over iterated joins that estimate is a product that
    grows without bound (and once ran the driver out of memory computing it), so the rows are re-wrapped as a
    plain RDD-backed DataFrame, JVM side (no Python round trip).
    """
    spark = df.sparkSession
    ck = df.localCheckpoint()
    return DataFrame(spark._jsparkSession.createDataFrame(ck._jdf.rdd(), ck._jdf.schema()), spark)


def connected_components(pairs: DataFrame, max_iterations: int = MAX_CC_ITERATIONS) -> tuple[DataFrame, int]:
    """``pairs(id_a, id_b)`` -> ``(id, cluster)`` for every id in some pair; ``cluster`` = the component's min id.

    Labels are vertex ids of the same component that never rise (``label(v) <= v``). Each round: every vertex
    takes the smallest label among itself and its neighbours, and offers that minimum to its label too
    (hooking, as in Shiloach-Vishkin: a labelled tree moves at once); then pointer jumping
    (``label := label(label)``) runs until no label moves, which collapses chains of labels in a logarithmic
    number of jumps. The fixpoint labels every component with its minimum. Every step is checkpointed (lineage
    cut) and counts the labels it moved; a round that moves none ends the loop. Returns the labels and the rounds
    run.
    """
    moved = F.col("moved")
    e = pairs.select(F.col("id_a").alias("src"), F.col("id_b").alias("dst"))
    edges = _checkpoint(e.union(e.select(F.col("dst").alias("src"), F.col("src").alias("dst"))))
    labels = _checkpoint(
        edges.groupBy("src")
        .agg(F.min("dst").alias("m"))
        .select(F.col("src").alias("id"), F.least("src", "m").alias("label"))
    )
    for rounds in range(1, max_iterations + 1):
        nbr = (
            edges.join(labels.withColumnRenamed("id", "dst"), "dst")
            .groupBy("src")
            .agg(F.min("label").alias("nl"))
            .withColumnRenamed("src", "id")
        )
        # hooking: a vertex also offers its neighbours' minimum to its label, so a whole labelled tree moves at once
        hooks = labels.join(nbr, "id").groupBy("label").agg(F.min("nl").alias("hl")).withColumnRenamed("label", "id")
        best = F.least("label", "nl", F.coalesce("hl", "label"))
        step = _checkpoint(
            labels.join(nbr, "id")
            .join(hooks, "id", "left")
            .select("id", best.alias("label"), (best < F.col("label")).alias("moved"))
        )
        changed = step.where(moved).count()
        labels = step.select("id", "label")
        for _ in range(max_iterations):
            x, y = labels.alias("x"), labels.alias("y")  # y.id = x.label, so y.label <= x.label
            jumped = _checkpoint(
                x.join(y, F.col("x.label") == F.col("y.id")).select(
                    F.col("x.id").alias("id"),
                    F.col("y.label").alias("label"),
                    (F.col("y.label") != F.col("x.label")).alias("moved"),
                )
            )
            jumps = jumped.where(moved).count()
            labels = jumped.select("id", "label")
            changed += jumps
            if jumps == 0:
                break
        log.debug("connected components: round %d moved %d labels", rounds, changed)
        if changed == 0:
            return labels.withColumnRenamed("label", "cluster"), rounds
    raise DedupError(f"connected components did not converge in {max_iterations} rounds")


# --------------------------------------------------------------------------------------------------- reading


def read_shards(
    spark: SparkSession, index_uri: str, version: str | None = None, columns: tuple[str, ...] = ("id", "code")
) -> tuple[DataFrame, dict]:
    """The version's shard rows (``columns``) as a DataFrame, read straight from its files; and its manifest."""
    version = version or ix.read_current(index_uri)["version"]
    manifest = ix.read_manifest(index_uri, version)
    paths = [f["path"] for p in manifest["partitions"] for f in p["files"]]
    if not paths:
        types = {
            "id": "string",
            "code": "binary",
            "word_ids": "binary",
            "word_counts": "binary",
            ix.HASH_COLUMN: "string",
        }
        return spark.createDataFrame([], ", ".join(f"{c} {types.get(c, 'string')}" for c in columns)), manifest
    return sparkio.read_parquet(spark, ix.version_prefix(index_uri, version), paths, columns), manifest


def _idf_and_vocab(index_uri: str, version: str, data_dir: str | None) -> tuple[np.ndarray | None, int | None]:
    """idf (the model's vocab statistics, else the dataset's vocab.json) and the vocabulary size."""
    meta_uri = store.join(ix.version_prefix(index_uri, version), "model", META)
    vocab = store.read_json(meta_uri).get("vocab") if store.exists(meta_uri) else None
    if vocab and "doc_freq" in vocab and "num_train_docs" in vocab:
        df = np.asarray(vocab["doc_freq"], dtype=np.float64)
        return ds.idf(df, int(vocab["num_train_docs"])), len(df)
    if data_dir is not None:
        words, df, n = ds.read_vocab(data_dir)
        return ds.idf(df, n), len(words)
    return None, None


def _dataset_docs(spark: SparkSession, data_uri: str, want: list[str]) -> DataFrame:
    """The prepared dataset's documents, ``id`` and the columns of ``want`` that it has."""
    docs = sparkio.read_parquet(spark, data_uri, [ds.DOCS_DIR])
    return docs.select(F.col(ds.ID).alias("id"), *[c for c in want if c in docs.columns])


def _codes_with_words(
    spark: SparkSession,
    index_uri: str,
    version: str,
    manifest: dict,
    data_uri: str | None,
    measure: str = "cosine",
    small: bool = False,
) -> tuple[DataFrame, str | None, str]:
    """``(id, code, ...)`` of the version's documents with what ``measure`` checks, read once; the dataset's
    folder (for its vocab.json); and what the check reads: ``word_hashes`` (Jaccard on the documents' whole word
    sets, from the shards or the dataset of ``data_uri``) or ``word_ids`` (the model's vocabulary words).
    ``small``: the index's ``(id, code)`` rows are broadcast to the dataset's (a join without a shuffle).
    """
    have = set(manifest.get("columns", ()))

    def codes() -> DataFrame:
        df = read_shards(spark, index_uri, version)[0]
        return F.broadcast(df) if small else df

    if measure == "jaccard" and HASHES in have:
        return read_shards(spark, index_uri, version, ("id", "code", HASHES))[0], None, HASHES
    root = None
    if data_uri is not None:
        on_s3_cluster = store.is_s3(data_uri) and sparkio.on_cluster(spark)
        root = None if on_s3_cluster else sparkio.readable_root(spark, data_uri)
    if measure == "jaccard" and data_uri is not None:
        docs = _dataset_docs(spark, data_uri, [HASHES])
        if HASHES in docs.columns:
            return codes().join(docs, "id"), root, HASHES
    if set(ix.WORD_COLUMNS) <= have:
        return read_shards(spark, index_uri, version, ("id", "code", *ix.WORD_COLUMNS))[0], None, "word_ids"
    if data_uri is None:
        raise DedupError(
            f"version {version} of {index_uri} stores no word counts; pass data_uri (--data) "
            "to verify pairs on the documents"
        )
    docs = _dataset_docs(spark, data_uri, [ds.WORD_IDS, ds.WORD_COUNTS])
    missing = [c for c in (ds.WORD_IDS, ds.WORD_COUNTS) if c not in docs.columns]
    if missing:
        raise DedupError(f"{data_uri}: its documents have no {', '.join(missing)} column")
    return codes().join(docs, "id"), root, "word_ids"


def _collect_bytes(manifest: dict, data_uri: str | None) -> int:
    """What the driver plan would collect, bounded from above by file sizes: the version's shard files (from its
    manifest), plus the dataset's document files when the words may come from ``data_uri`` (one listing)."""
    total = sum(int(f["bytes"]) for p in manifest["partitions"] for f in p["files"])
    if data_uri is not None and HASHES not in manifest.get("columns", ()):
        docs = store.join(data_uri, ds.DOCS_DIR)
        total += sum(size for key, size in store.list_prefix(docs) if key.endswith(".parquet"))
    return total


def _fresh_rows(
    spark: SparkSession,
    index_uri: str,
    version: str,
    manifest: dict,
    since: str,
    codes_df: DataFrame,
    small: bool = False,
) -> tuple[DataFrame, dict[str, Any]]:
    """``codes_df`` with ``fresh`` = 1 for the documents added or changed since version ``since`` (a new id, or
    another content hash, or another code where the shards keep no hash), 0 for the others. ``small``: both
    joins broadcast their right side (no shuffle)."""
    hint = F.broadcast if small else (lambda df: df)
    if since == version:
        raise DedupError(f"--since {since} is the version being deduplicated: nothing changed since it")
    try:
        old_manifest = ix.read_manifest(index_uri, since)
    except Exception as e:  # noqa: BLE001  (a missing or unreadable manifest)
        raise DedupError(f"--since {since}: no readable version {since} in {index_uri} ({e})") from e
    key = ix.HASH_COLUMN if all(ix.HASH_COLUMN in m.get("columns", ()) for m in (manifest, old_manifest)) else "code"
    old = read_shards(spark, index_uri, since, ("id", key))[0]
    now = read_shards(spark, index_uri, version, ("id", key))[0]
    fresh = now.join(hint(old), ["id", key], "left_anti").select("id", F.lit(1).cast("byte").alias(FRESH))
    marked = codes_df.join(hint(fresh), "id", "left").withColumn(FRESH, F.coalesce(F.col(FRESH), F.lit(0).cast("byte")))
    return marked, {"since": since, "changed_by": key}


def calibrate_radius(
    codes_df: DataFrame,
    bits: int,
    threshold: float,
    target_recall: float = DEFAULT_TARGET_RECALL,
    *,
    sample: int = DEFAULT_CALIBRATION_SAMPLE,
    total: int | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """The smallest Hamming radius that catches ``target_recall`` of the pairs of Jaccard >= ``threshold`` in a
    sample of ``sample`` documents of ``codes_df(code, word_hashes)`` (``total`` rows in all), collected to the
    driver (:func:`calibrate_sample`)."""
    from semhash_spark.data import wordsets

    _check_calibration(target_recall, sample)
    df = codes_df.select("code", HASHES)
    fraction = 1.0 if total is None or total <= sample else sample / total
    if fraction < 1.0:
        df = df.sample(fraction=fraction, seed=seed)
    pdf = df.toPandas()
    n = len(pdf)
    codes = np.frombuffer(b"".join(pdf["code"].tolist()), np.uint8).reshape(n, -1)
    indptr, hashes = wordsets.hash_lists(pdf[HASHES].tolist())
    return calibrate_sample(codes, indptr, hashes, bits, threshold, target_recall, seed=seed)


def _check_calibration(target_recall: float, sample: int) -> None:
    if not 0.0 < target_recall <= 1.0:
        raise DedupError(f"target recall {target_recall} must be in (0, 1]")
    if sample < 2:
        raise DedupError(f"calibration sample {sample} must be at least 2 documents")


def calibrate_sample(
    codes: np.ndarray,
    indptr: np.ndarray,
    hashes: np.ndarray,
    bits: int,
    threshold: float,
    target_recall: float = DEFAULT_TARGET_RECALL,
    *,
    seed: int = 0,
) -> dict[str, Any]:
    """:func:`calibrate_radius` on a sample in memory: packed ``codes uint8[n, nbytes]`` and the documents' word
    hash sets (CSR ``indptr``, ``hashes``).

    The sample's pairs above the threshold are found by MinHash LSH (125 permutations, 25 bands of 5, so a pair at
    Jaccard 0.7 is a candidate with probability 0.99) and checked exactly on the word-hash sets; the radius is the
    ``target_recall`` quantile of their code distances. A uniform sample of documents gives a uniform sample of
    pairs (each kept with the same probability), so the quantile estimates the whole index's.
    """
    from semhash_spark.index import _dedup_kernels as K
    from semhash_spark.data import wordsets

    n = codes.shape[0]
    sig = wordsets.minhash(indptr, hashes, CALIBRATION_BANDS * CALIBRATION_ROWS, seed=seed + 1)
    cand = wordsets.lsh_pairs(sig, CALIBRATION_BANDS, CALIBRATION_ROWS, seed=seed + 2)
    sim = K.pair_similarity(indptr, hashes, np.ones(hashes.size), cand[:, 0], cand[:, 1], False)
    above = cand[sim >= threshold]
    out: dict[str, Any] = {
        "sample_docs": n,
        "candidates": int(cand.shape[0]),
        "pairs_above": int(above.shape[0]),
        "target_recall": target_recall,
    }
    if above.shape[0] == 0:
        raise DedupError(
            f"no pair of Jaccard >= {threshold:g} among {n} sampled documents: the radius cannot be "
            "calibrated; pass --radius (or a larger calibration sample)"
        )
    dist = np.sort(np.unpackbits(codes[above[:, 0]] ^ codes[above[:, 1]], axis=1).sum(axis=1))
    k = max(int(np.ceil(target_recall * dist.size)) - 1, 0)
    radius = int(min(dist[k], bits - 1))
    out.update(
        {
            "radius": radius,
            "recall_in_sample": round(float(np.mean(dist <= radius)), 4),
            "distance_quantiles": {q: int(np.quantile(dist, q / 100, method="higher")) for q in (50, 90, 99)},
        }
    )
    if above.shape[0] < CALIBRATION_MIN_PAIRS:
        # a sample of a fraction f of the documents holds about f^2 of the pairs: large indexes need large samples
        out["warning"] = (
            f"radius {radius} calibrated on only {above.shape[0]} pairs of Jaccard >= {threshold:g} among {n} "
            f"sampled documents: a rough estimate; a larger --calibration-sample (pairs grow as its square) or "
            "--radius gives a firmer one"
        )
        log.warning("dedup: %s", out["warning"])
    return out


def _calibrate_rows(
    rows: DriverRows, bits: int, threshold: float, target_recall: float, sample: int, seed: int = 0
) -> dict[str, Any]:
    """:func:`calibrate_radius` of the driver plan: a uniform sample of the collected rows (all up to ``sample``)."""
    _check_calibration(target_recall, sample)
    n = rows.codes.shape[0]
    if n <= sample:
        return calibrate_sample(rows.codes, rows.indptr, rows.values, bits, threshold, target_recall, seed=seed)
    pick = np.sort(np.random.default_rng(seed).choice(n, sample, replace=False))
    indptr = np.zeros(pick.size + 1, np.int64)
    np.cumsum(np.diff(rows.indptr)[pick], out=indptr[1:])
    take = np.concatenate([np.arange(rows.indptr[i], rows.indptr[i + 1]) for i in pick])
    return calibrate_sample(rows.codes[pick], indptr, rows.values[take], bits, threshold, target_recall, seed=seed)


def _stable_names(labels: DataFrame, previous: DataFrame) -> DataFrame:
    """``labels(id, cluster)`` renamed so a cluster keeps the id it had in ``previous(id, cluster)`` while any of
    its members stays: each old cluster goes to the new cluster of its smallest surviving member, and a new
    cluster takes the smallest old id it was given (else its own smallest id)."""
    old = labels.join(previous.select("id", F.col("cluster").alias("old")), "id")
    owner = (
        old.groupBy("old")
        .agg(F.min(F.struct("id", "cluster")).alias("m"))
        .select("old", F.col("m.cluster").alias("cluster"))
    )
    names = owner.groupBy("cluster").agg(F.min("old").alias("name"))
    return labels.join(names, "cluster", "left").select("id", F.coalesce("name", "cluster").alias("cluster"))


def _stable_names_local(members: pd.DataFrame, previous: pd.DataFrame) -> pd.DataFrame:
    """:func:`_stable_names` of the driver plan, on ``members(id, cluster, size)`` in memory (the sizes stay: a
    renaming keeps every cluster's members)."""
    old = members[["id", "cluster"]].merge(previous.rename(columns={"cluster": "old"})[["id", "old"]], on="id")
    owner = old.sort_values("id").groupby("old", sort=False)["cluster"].first()  # its smallest surviving member's
    names = owner.reset_index().groupby("cluster")["old"].min()
    return members.assign(cluster=members["cluster"].map(names).fillna(members["cluster"]))


# --------------------------------------------------------------------------------------------------- entry points


def near_duplicate_pairs(
    codes_df: DataFrame,
    bits: int,
    radius: int,
    verify: "str | Verify | None" = None,
    *,
    idf: np.ndarray | None = None,
    vocab_size: int | None = None,
    block_size: int = DEFAULT_BLOCK,
    max_pairs: int | None = DEFAULT_MAX_PAIRS,
) -> tuple[DataFrame, dict[str, int]]:
    """The pairs of ``codes_df(id, code, [word_ids, word_counts | word_hashes], [fresh])`` within ``radius``,
    verified in the same task when ``verify`` is given (``similarity >= threshold``), materialised
    (checkpointed; the verified pairs are a filter over it). Returns them and the counts ``segments``,
    ``candidates``, ``hot_buckets``, ``pairs_within_radius``, ``pairs``; more than ``max_pairs`` candidates
    raise a :class:`DedupError` before any pair is formed."""
    check = Verify.parse(verify)
    if check is None:
        codes_df = codes_df.select("id", "code", *([FRESH] if FRESH in codes_df.columns else []))
    pairs, _, counts = find_pairs(
        codes_df,
        bits,
        radius,
        block_size,
        similarity=check and check.measure,
        idf=idf,
        vocab_size=vocab_size,
        threshold=check and check.threshold,
        max_pairs=max_pairs,
    )
    if check is not None:
        pairs = pairs.where(F.col("similarity") >= F.lit(check.threshold))
    return pairs, {"segments": radius + 1, **counts}


def find_near_duplicates(
    spark: SparkSession,
    index_uri: str,
    radius: int | None = None,
    *,
    version: str | None = None,
    verify: "str | Verify | None" = None,
    data_uri: str | None = None,
    block_size: int = DEFAULT_BLOCK,
    max_iterations: int = MAX_CC_ITERATIONS,
    max_pairs: int | None = DEFAULT_MAX_PAIRS,
    target_recall: float = DEFAULT_TARGET_RECALL,
    calibration_sample: int = DEFAULT_CALIBRATION_SAMPLE,
    since: str | None = None,
    previous_uri: str | None = None,
    local_cc_max: int = LOCAL_CC_MAX,
    local_max_docs: int = LOCAL_MAX_DOCS,
    local_max_candidates: int = LOCAL_MAX_CANDIDATES,
    local_max_bytes: int = LOCAL_MAX_BYTES,
) -> tuple[DataFrame, DataFrame, dict[str, Any]]:
    """All pairs of documents of an index version within Hamming ``radius`` (exact), optionally verified on
    their words, and their clusters. Returns ``(pairs_df, clusters_df, summary)``; the DataFrames are
    checkpointed (computed once), the summary holds counts only.

    ``radius=None`` (with ``verify="jaccard:T"``) calibrates the radius on a sample (:func:`calibrate_radius`).
    ``since=V`` pairs only the documents added or changed since version ``V`` with the whole index;
    ``previous_uri`` (the output of the run on ``V``) then adds its pairs whose documents are unchanged and
    still indexed, and the clusters keep their previous ids (:func:`_stable_names`). Up to ``local_cc_max``
    pairs are clustered on the driver (:func:`local_components`), more in Spark (:func:`connected_components`).

    An index of at most ``local_max_docs`` documents (0: none) takes the driver plan: its rows are collected once
    and calibrated, counted, paired and checked in this process by the same kernels (:func:`local_pairs`), with
    the same results; a small job spends more on a shuffle's tasks than on its pairs. Larger ones, those whose
    files (shards, and the dataset's documents when the words come from ``data_uri``) hold more than
    ``local_max_bytes``, and those whose census counts more than ``local_max_candidates`` candidate pairs (work
    for every core) run in Spark, with nothing but counts reaching the driver.
    """
    t0 = time.time()
    check = Verify.parse(verify)
    version = version or ix.read_current(index_uri)["version"]
    manifest = ix.read_manifest(index_uri, version)
    bits = int(manifest["bits"])
    if previous_uri is not None and since is None:
        raise DedupError("a previous run's output (--previous) is only used with --since VERSION")
    idf = vocab_size = None
    checked_on = None
    on_driver = (
        0 < int(manifest["count"]) <= local_max_docs
        and _collect_bytes(manifest, data_uri if check is not None else None) <= local_max_bytes
    )
    if check is None:
        codes_df = read_shards(spark, index_uri, version)[0]
    else:
        codes_df, data_dir, checked_on = _codes_with_words(
            spark, index_uri, version, manifest, data_uri, check.measure, small=on_driver
        )
        if checked_on != HASHES:
            idf, vocab_size = _idf_and_vocab(index_uri, version, data_dir)
            if vocab_size is None:
                raise DedupError(
                    f"no vocabulary for version {version} of {index_uri}: its model/{META} has none; "
                    "pass data_uri (--data)"
                )
            if check.measure == "jaccard":
                log.warning(
                    "dedup: no word hashes in the index or the dataset (prepared before they were kept): "
                    "Jaccard is checked on the model's vocabulary words only"
                )
    calibration = None
    if radius is None:  # checked before anything is read; calibrated below
        if check is None or check.measure != "jaccard" or checked_on != HASHES:
            raise DedupError(
                "the radius can be chosen automatically only for --verify jaccard:T on documents "
                "with word hashes (a dataset prepared by this version, --data); else pass --radius"
            )
    incremental = None
    if since is not None:
        codes_df, incremental = _fresh_rows(spark, index_uri, version, manifest, since, codes_df, small=on_driver)
        if not on_driver:
            codes_df = codes_df.localCheckpoint()
            incremental["fresh_docs"] = int(codes_df.where(F.col(FRESH) == 1).count())
    rows = pairs_pdf = None
    if on_driver:  # one collect; calibration, census, pairs and checks in this process (the driver plan)
        rows = collect_rows(codes_df, bits, check and check.measure, idf, vocab_size)
        if incremental is not None:
            incremental["fresh_docs"] = int(rows.fresh.sum())
    if radius is None:
        if rows is not None:
            calibration = _calibrate_rows(rows, bits, check.threshold, target_recall, calibration_sample)
        else:
            calibration = calibrate_radius(
                codes_df, bits, check.threshold, target_recall, sample=calibration_sample, total=int(manifest["count"])
            )
        radius = calibration["radius"]
        log.info("dedup: radius %d calibrated for jaccard >= %g: %s", radius, check.threshold, calibration)
    if rows is not None:
        pairs_pdf, counts = local_pairs(
            rows,
            bits,
            radius,
            measure=check and check.measure,
            threshold=check and check.threshold,
            block_size=block_size,
            max_pairs=max_pairs,
            max_candidates=local_max_candidates,
        )
        if pairs_pdf is None:
            log.info(
                "dedup: %d candidate pairs, over the driver plan's %d: pairing in Spark",
                counts["candidates"],
                local_max_candidates,
            )
            rows = None
    if rows is not None:
        counts["segments"] = radius + 1
        schema = "id_a string, id_b string, distance int" + (", similarity double" if check is not None else "")
        pairs = spark.createDataFrame(pairs_pdf, schema)
    else:
        pairs, counts = near_duplicate_pairs(
            codes_df, bits, radius, check, idf=idf, vocab_size=vocab_size, block_size=block_size, max_pairs=max_pairs
        )
    summary: dict[str, Any] = {
        "index": index_uri,
        "version": version,
        "bits": bits,
        "radius": radius,
        "plan": "driver" if rows is not None else "spark",
        "segments": counts["segments"],
        "codes": int(manifest["count"]),
        "block_size": block_size,
        "candidates": counts["candidates"],
        "hot_buckets": counts["hot_buckets"],
        "pairs_within_radius": counts["pairs_within_radius"],
    }
    if calibration is not None:
        summary["calibration"] = calibration
    if check is not None:
        summary["verify"] = str(check)
        summary["verified_on"] = "word set" if checked_on == HASHES else "vocabulary words"
    summary["pairs"] = counts["pairs"]
    if incremental is not None:
        summary.update(incremental)
    previous = None  # the previous run's clusters, with --previous
    if pairs_pdf is not None:  # the driver plan: the previous run and the clusters in memory too
        if previous_uri is not None:
            prev_pairs = sparkio.read_parquet(spark, previous_uri, [PAIRS_DIR]).toPandas()  # one run's pairs
            stay = rows.ids[rows.fresh == 0]
            still = prev_pairs["id_a"].isin(stay) & prev_pairs["id_b"].isin(stay)
            kept = prev_pairs.loc[still, list(pairs_pdf.columns)]
            summary["previous_pairs_kept"] = len(kept)
            summary["pairs"] += len(kept)
            pairs_pdf = pd.concat([pairs_pdf, kept], ignore_index=True)
            pairs = spark.createDataFrame(pairs_pdf, pairs.schema)
            previous = sparkio.read_parquet(spark, previous_uri, [CLUSTERS_DIR]).select("id", "cluster").toPandas()
        members = _components(pairs_pdf)
        if previous is not None:
            members = _stable_names_local(members, previous)
        clusters, rounds = spark.createDataFrame(members, "id string, cluster string, size long"), 0
        largest = int(members["size"].max()) if len(members) else 0
        sizes = {"clusters": members["cluster"].nunique(), "docs": len(members), "largest": largest}
    else:
        if previous_uri is not None:
            prev_pairs = sparkio.read_parquet(spark, previous_uri, [PAIRS_DIR])
            stay = codes_df.where(F.col(FRESH) == 0).select("id")
            kept = (
                prev_pairs.join(stay.withColumnRenamed("id", "id_a"), "id_a", "left_semi")
                .join(stay.withColumnRenamed("id", "id_b"), "id_b", "left_semi")
                .select(*pairs.columns)
            ).localCheckpoint()
            summary["previous_pairs_kept"] = int(kept.count())
            pairs = pairs.unionByName(kept)
            summary["pairs"] += summary["previous_pairs_kept"]
            previous = sparkio.read_parquet(spark, previous_uri, [CLUSTERS_DIR]).select("id", "cluster")
        if summary["pairs"] <= local_cc_max:
            labels, rounds = local_components(spark, pairs).select("id", "cluster"), 0
        else:
            labels, rounds = connected_components(pairs, max_iterations)
        if previous is not None:
            labels = _stable_names(labels, previous)
        clusters = labels.withColumn("size", F.count(F.lit(1)).over(Window.partitionBy("cluster"))).localCheckpoint()
        sizes = (
            clusters.groupBy("cluster")
            .agg(F.count(F.lit(1)).alias("n"))
            .agg(F.count(F.lit(1)).alias("clusters"), F.sum("n").alias("docs"), F.max("n").alias("largest"))
            .first()
        )
    summary.update(
        {
            "clusters": int(sizes["clusters"] or 0),
            "clustered_docs": int(sizes["docs"] or 0),
            "largest_cluster": int(sizes["largest"] or 0),
            "cc_rounds": rounds,
            "seconds": round(time.time() - t0, 2),
        }
    )
    log.info(
        "near-duplicates of %s version %s within %d: %d pairs, %d clusters",
        index_uri,
        version,
        radius,
        summary["pairs"],
        summary["clusters"],
    )
    return pairs, clusters, summary


def dedup_job(
    spark: SparkSession,
    index_uri: str,
    radius: int | None,
    out_uri: str,
    verify: "str | Verify | None" = None,
    *,
    version: str | None = None,
    data_uri: str | None = None,
    block_size: int = DEFAULT_BLOCK,
    **options: Any,
) -> dict[str, Any]:
    """Runs :func:`find_near_duplicates` (``options``: its ``max_pairs``, ``target_recall``,
    ``calibration_sample``, ``since``, ``previous_uri``); writes ``OUT/pairs``, ``OUT/clusters`` (Parquet),
    ``OUT/summary.json``."""
    t0 = time.time()
    if options.get("previous_uri") and str(options["previous_uri"]).rstrip("/") == str(out_uri).rstrip("/"):
        raise DedupError(f"--out {out_uri} is the previous run's output (--previous): write to another place")
    version = version or ix.read_current(index_uri)["version"]
    with leases.reading(index_uri, version):  # retention keeps the version while the job reads its shards
        pairs, clusters, summary = find_near_duplicates(
            spark,
            index_uri,
            radius,
            version=version,
            verify=verify,
            data_uri=data_uri,
            block_size=block_size,
            **options,
        )
        sparkio.write_parquet(pairs, store.join(out_uri, PAIRS_DIR))
        sparkio.write_parquet(clusters.select("id", "cluster", "size"), store.join(out_uri, CLUSTERS_DIR))
    summary.update({"out": out_uri, "seconds": round(time.time() - t0, 2)})
    store.write_json(store.join(out_uri, SUMMARY_FILE), summary)
    return summary
