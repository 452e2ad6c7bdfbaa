"""The Petastorm loader on a small prepared split of real 20 Newsgroups posts, written directly in the
``semhash-docs/1`` format with row groups of unequal sizes (so shard row counts differ)."""

from __future__ import annotations

import collections
import itertools

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import scipy.sparse as sp

from semhash_spark.data import corpora, loader as data
from semhash_spark.data import dataset as ds
from semhash_spark.config import PrepareConfig

N_DOCS = 900
VOCAB = 500
ROW_GROUPS = [(0, 97), (97, 350), (350, 400), (400, 612), (612, 700), (700, 733), (733, 900)]  # rows [a, b)
FILES = [[0, 1], [2], [3, 4, 5], [6]]  # row groups per file -> 4 files, 7 row groups


@pytest.fixture(scope="module")
def data_dir(shared_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("docs")
    recs = list(
        itertools.islice(
            (
                r
                for r in corpora.read_records(
                    "20ng", shared_data / "20newsgroups" / "20news-bydate.tar.gz", strip_headers=True
                )
                if r["split"] == "train"
            ),
            0,
            None,
            12,
        )
    )[:N_DOCS]
    cfg = PrepareConfig()
    totals = collections.Counter(w for r in recs for w in corpora.tokenize(r["text"]))
    words = [w for w, _ in sorted(totals.items(), key=lambda kv: (-kv[1], kv[0]))[:VOCAB]]
    index = {w: i for i, w in enumerate(words)}
    rows = []
    for r in recs:
        b_ids, b_counts = ds.encode_sparse(*ds.vectorize(r["text"], index, cfg))
        rows.append(
            {
                "id": r["id"],
                "labels": r["labels"],
                "word_ids": b_ids,
                "word_counts": b_counts,
                "length": len(b_ids) // 4,
                "content_hash": "",
            }
        )
    train = ds.split_dir(out, "train")
    train.mkdir(parents=True)
    for k, groups in enumerate(FILES):
        with pq.ParquetWriter(train / f"part-{k:05d}.parquet", ds.DOC_SCHEMA) as w:
            for g in groups:
                a, b = ROW_GROUPS[g]
                w.write_table(pa.Table.from_pylist(rows[a:b], schema=ds.DOC_SCHEMA))
    ds.split_dir(out, "test").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist([], schema=ds.DOC_SCHEMA), ds.split_dir(out, "test") / "part-00000.parquet")
    ds.write_vocab(out, words, np.zeros(len(words), dtype=np.int64), N_DOCS)
    ds.write_metadata(
        out,
        name="test-20ng",
        vocab_size=len(words),
        counts={"train": N_DOCS, "test": 0, "quarantined": 0},
        vocab_fingerprint=ds.vocab_fingerprint(words),
        source="20ng subset",
    )
    return out


def test_written_layout(data_dir):
    assert sum(pq.ParquetFile(f).metadata.num_row_groups for f in ds.split_files(data_dir, "train")) == len(ROW_GROUPS)
    assert len(ds.read_split(data_dir, "train", columns=("id",))) == N_DOCS


@pytest.mark.parametrize("shuffle,seed", [(True, 0), (True, 7), (False, 3)])
def test_two_shards_deliver_every_row_exactly_once(data_dir, shuffle, seed):
    expected = [data.count_rows(data_dir, "train", s, 2, seed=seed) for s in range(2)]
    assert sum(expected) == N_DOCS and expected[0] != expected[1]  # unequal row groups: the count is per shard
    seen = []
    for s in range(2):
        ids = [
            i
            for b in data.iter_batches(data_dir, "train", 64, cur_shard=s, shard_count=2, shuffle=shuffle, seed=seed)
            for i in b.ids
        ]
        assert len(ids) == expected[s]
        seen.extend(ids)
    assert len(seen) == len(set(seen)) == N_DOCS
    assert set(seen) == set(ds.read_split(data_dir, "train", columns=("id",)).ids)


def test_count_rows_matches_for_many_seeds_and_shard_counts(data_dir):
    rg_rows = [b - a for a, b in ROW_GROUPS]
    for shard_count in (1, 3, 7):
        for seed in (0, 1, 2, 11):
            counts = [data.count_rows(data_dir, "train", s, shard_count, seed=seed) for s in range(shard_count)]
            assert sum(counts) == N_DOCS
            if shard_count == 7:
                assert sorted(counts) == sorted(rg_rows)  # one row group each
    got = sum(len(b) for b in data.iter_batches(data_dir, "train", 50, cur_shard=2, shard_count=3, seed=11))
    assert got == data.count_rows(data_dir, "train", 2, 3, seed=11)


def test_batch_sizes_and_epochs(data_dir):
    sizes = [len(b) for b in data.iter_batches(data_dir, "train", 128, seed=1)]
    assert sizes == [128] * (N_DOCS // 128) + [N_DOCS % 128]
    sizes = [len(b) for b in data.iter_batches(data_dir, "train", 100, shuffle=False, seed=1)]
    assert sizes == [100] * 9
    batches = list(data.iter_batches(data_dir, "train", 128, num_epochs=2, shuffle_buffer=200, seed=5))
    assert [len(b) for b in batches] == [128] * (2 * N_DOCS // 128) + [2 * N_DOCS % 128]
    assert set(collections.Counter(i for b in batches for i in b.ids).values()) == {2}


def test_readers_print_nothing_on_stdout(data_dir, capfd):
    """Petastorm prints 'Cache cleanup complete.' when a reader closes; commands keep stdout for their JSON line."""
    assert sum(len(b) for b in data.iter_batches(data_dir, "train", 128, seed=1)) == N_DOCS
    out, _ = capfd.readouterr()
    assert out == ""


def test_sparse_rows_round_trip(data_dir):
    full = ds.read_split(data_dir, "train", columns=("id", "counts"))
    row_of = {i: k for k, i in enumerate(full.ids)}
    n = 0
    for b in data.iter_batches(data_dir, "train", 100, seed=2, shuffle_buffer=300):
        assert isinstance(b.counts, sp.csr_matrix) and b.counts.dtype == np.float32
        assert b.counts.shape == (len(b), VOCAB) and b.ids.dtype == object
        ref = full.counts[[row_of[i] for i in b.ids]]
        assert (b.counts != ref).nnz == 0
        n += len(b)
    assert n == N_DOCS and full.counts.nnz > 20 * N_DOCS


def test_shuffle_is_seeded(data_dir):
    order = lambda seed: [i for b in data.iter_batches(data_dir, "train", 64, seed=seed) for i in b.ids]  # noqa: E731
    assert order(4) == order(4) and order(4) != order(5)
    # shuffle=False: no shuffle buffer and row groups in Petastorm's (seeded) shard order, each kept whole
    stored = {i: k for k, i in enumerate(ds.read_split(data_dir, "train", columns=("id",)).ids)}
    pos = np.array([stored[i] for b in data.iter_batches(data_dir, "train", 64, shuffle=False) for i in b.ids])
    runs = np.split(pos, np.flatnonzero(np.diff(pos) != 1) + 1)
    bounds = {a for a, _ in ROW_GROUPS} | {N_DOCS}
    assert all(r[0] in bounds and r[-1] + 1 in bounds for r in runs) and sorted(pos) == list(range(N_DOCS))


def test_encode_decode_sparse():
    ids, counts = np.array([0, 3, 1999], dtype=np.int32), np.array([2, 1, 5], dtype=np.float32)
    b_ids, b_counts = ds.encode_sparse(ids, counts)
    assert len(b_ids) == len(b_counts) == 12 and b_ids[:4] == b"\x00\x00\x00\x00" and b_ids[4:8] == b"\x03\x00\x00\x00"
    back = ds.decode_sparse(b_ids, b_counts)
    assert np.array_equal(back[0], ids) and np.array_equal(back[1], counts)
    m = ds.csr_from_binary([b_ids, b"", b_ids], [b_counts, b"", b_counts], 2000)
    assert m.shape == (3, 2000) and m[1].nnz == 0 and m[2, 1999] == 5
    with pytest.raises(ValueError, match="ascending"):
        ds.encode_sparse(np.array([3, 1]), np.array([1, 1]))
    with pytest.raises(ValueError, match="out of range"):
        ds.csr_from_binary([b_ids], [b_counts], 1000)


def test_errors_and_empty_split(data_dir, monkeypatch):
    with pytest.raises(ValueError, match="fewer than shard_count=8"):
        data.count_rows(data_dir, "train", 0, 8)
    with pytest.raises(ValueError, match="cur_shard"):
        data.count_rows(data_dir, "train", 2, 2)
    assert data.count_rows(data_dir, "test") == 0 and list(data.iter_batches(data_dir, "test", 10)) == []
    real = data.count_rows
    monkeypatch.setattr(data, "count_rows", lambda *a, **k: real(*a, **k) + 1)  # as if the pool lost a row
    with pytest.raises(RuntimeError, match="delivered 900 rows, expected 901"):
        list(data.iter_batches(data_dir, "train", 100))


@pytest.mark.slow  # a process pool: tens of seconds
def test_process_pool_delivers_all_rows(data_dir):
    ids = [
        i
        for b in data.iter_batches(data_dir, "train", 100, reader_pool="process", workers_count=2, seed=0)
        for i in b.ids
    ]
    assert len(ids) == len(set(ids)) == N_DOCS
