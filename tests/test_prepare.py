"""The Spark prepare job: quarantine on a JSON Lines corpus with every kind of bad record (checked against a
plain-Python reference), and the real 20 Newsgroups and Reuters-21578 (ModApte) corpora."""
from __future__ import annotations

import collections
import dataclasses
import gzip
import hashlib
import itertools
import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from semhash_spark import corpora
from semhash_spark import dataset as ds
from semhash_spark.config import PrepareConfig
from semhash_spark.prepare import prepare_dataset

CFG = PrepareConfig(vocab_size=300, min_doc_words=3, test_fraction=0.25, files_per_split=3)


def _real_docs(shared_data, n_per_group=60):
    """The first n_per_group posts of four newsgroups (train and test) from the real 20ng archive."""
    groups = ("comp.graphics", "rec.autos", "sci.space", "talk.politics.guns")
    seen = collections.Counter()
    docs = []
    for r in corpora.read_records("20ng", shared_data / "20newsgroups" / "20news-bydate.tar.gz", strip_headers=True):
        key = (r["labels"][0], r["split"])
        if r["labels"][0] in groups and seen[key] < n_per_group:
            seen[key] += 1
            docs.append({"id": r["id"], "text": r["text"], "labels": r["labels"], "split": r["split"]})
    return docs


def _bad_lines(first_id: str) -> list[tuple[bytes, str]]:
    """(line, expected quarantine reason) for every kind of bad record."""
    j = lambda o: json.dumps(o).encode()  # noqa: E731
    return [
        (b'{"id": "x1", "text": ', "invalid json"),
        (b"[1, 2, 3]", "invalid json"),
        ('{"id": "x2", "text": "na\xefve"}'.encode("latin-1"), "undecodable utf-8"),
        (j({"text": "orphan text about cars and engines"}), "missing id"),
        (j({"id": 17, "text": "numeric id"}), "bad id"),
        (j({"id": "x3", "labels": ["a"]}), "missing text"),
        (j({"id": "x4", "text": {"body": "nested"}}), "bad text"),
        (j({"id": "x5", "text": "space shuttle", "labels": "sci.space"}), "bad labels"),
        (j({"id": "x6", "text": "space shuttle", "split": "validation"}), "bad split"),
        (j({"id": first_id, "text": "a second copy of the first id", "split": "train"}), "duplicate id"),
        (j({"id": first_id, "text": "a third copy", "split": "test"}), "duplicate id"),
        (j({"id": "x7", "text": "1234 5678 !!! -- a I the of", "split": "train"}), "empty after tokenising"),
        (j({"id": "x8", "text": "zyzzyva quixotic flibbertigibbet", "split": "train"}), "too few vocabulary words"),
        (j({"id": "x9", "text": "zyzzyva quixotic", "split": "test"}), "too few vocabulary words"),
    ]


def _reference(records: list[dict], cfg: PrepareConfig):
    """Plain-Python prepare: (kept {split: [ids]}, quarantined Counter, words, doc_freq) for valid records."""
    seen, cand = set(), []
    quarantined = collections.Counter()
    for r in records:
        if r["error"]:
            quarantined[corpora.error_kind(r["error"])] += 1
        elif r["id"] in seen:
            quarantined["duplicate id"] += 1
        else:
            seen.add(r["id"])
            toks = corpora.tokenize(r["text"], cfg.min_token_len, cfg.max_token_len)
            if toks:
                cand.append((r, toks))
            else:
                quarantined["empty after tokenising"] += 1
    total = collections.Counter(w for r, toks in cand if r["split"] == "train" for w in toks)
    words = [w for w, _ in sorted(total.items(), key=lambda kv: (-kv[1], kv[0]))[: cfg.vocab_size]]
    vocab = set(words)
    kept = {"train": [], "test": []}
    df = collections.Counter()
    for r, toks in cand:
        if sum(t in vocab for t in toks) < cfg.min_doc_words:
            quarantined["too few vocabulary words"] += 1
        else:
            kept[r["split"]].append(r["id"])
            if r["split"] == "train":
                df.update(set(toks) & vocab)
    return kept, quarantined, words, [df[w] for w in words]


@pytest.fixture(scope="module")
def jsonl_corpus(shared_data, tmp_path_factory):
    """Two files (plain and gzip), half the records without a split field, bad lines spread over both, plus a
    truncated gzip file."""
    root = tmp_path_factory.mktemp("jsonl_corpus")
    docs = _real_docs(shared_data)
    lines = []
    for i, d in enumerate(docs):
        lines.append(json.dumps(d if i % 2 else {k: v for k, v in d.items() if k != "split"}).encode())
    bad = _bad_lines(docs[0]["id"])
    half = len(lines) // 2
    first = lines[:half] + [b for b, _ in bad[:5]]
    second = lines[half:] + [b for b, _ in bad[5:]]
    (root / "part-a.jsonl").write_bytes(b"\n".join(first) + b"\n")
    with gzip.open(root / "part-b.jsonl.gz", "wb") as f:
        f.write(b"\n".join(second) + b"\n")
    whole = gzip.compress(b"\n".join(lines[:20]) + b"\n")
    (root / "part-c.jsonl.gz").write_bytes(whole[:40])   # cut before the end of its first line
    return root, docs, bad


@pytest.fixture(scope="module")
def prepared_jsonl(spark, jsonl_corpus, tmp_path_factory):
    root, _, _ = jsonl_corpus
    out = tmp_path_factory.mktemp("prepared_jsonl")
    return out, prepare_dataset(spark, "jsonl", str(root), str(out), CFG)


def test_jsonl_quarantine_matches_reference(jsonl_corpus, prepared_jsonl):
    root, docs, bad = jsonl_corpus
    out, report = prepared_jsonl
    records = list(corpora.read_records("jsonl", root, test_fraction=CFG.test_fraction))
    kept, quarantined, words, doc_freq = _reference(records, CFG)

    assert report["records_read"] == len(records) == len(docs) + len(bad) + 1
    assert report["kept"] == {s: len(v) for s, v in kept.items()}
    assert report["quarantined"] == dict(quarantined)
    assert report["skipped"] == {}
    assert sum(report["kept"].values()) + sum(report["quarantined"].values()) == report["records_read"]
    # every planted problem is caught under its own reason; the truncated gzip is one "unreadable file"
    expected = collections.Counter(reason for _, reason in bad) + collections.Counter({"unreadable file": 1})
    assert all(quarantined[k] >= v for k, v in expected.items()), (quarantined, expected)
    assert set(report["quarantined"]) == set(expected)

    q = pq.read_table(out / ds.QUARANTINE_DIR).to_pylist()
    assert collections.Counter(r["reason"] for r in q) == quarantined
    dup = [r for r in q if r["reason"] == "duplicate id"]
    n_b = len(docs) - len(docs) // 2          # good lines at the head of part-b; the two copies follow 5 bad ones
    assert {r["id"] for r in dup} == {docs[0]["id"]}
    assert sorted(r["source"] for r in dup) == [f"part-b.jsonl.gz:{n_b + 5}", f"part-b.jsonl.gz:{n_b + 6}"]
    bad_split = next(r for r in q if r["reason"] == "bad split")
    assert bad_split["id"] == "x6" and "validation" in bad_split["excerpt"]
    assert all(r["source"] for r in q)

    train = ds.read_split(out, "train")
    test = ds.read_split(out, "test")
    assert sorted(train.ids) == sorted(kept["train"]) and sorted(test.ids) == sorted(kept["test"])
    assert docs[0]["id"] in set(train.ids) | set(test.ids)           # the first copy of a duplicate stays
    w, df, n = ds.read_vocab(out)
    assert w == words and df.tolist() == doc_freq and n == len(kept["train"])


def test_jsonl_prepared_format(jsonl_corpus, prepared_jsonl):
    _, docs, _ = jsonl_corpus
    out, report = prepared_jsonl
    meta = ds.read_metadata(out)
    assert meta["format"] == ds.FORMAT and meta["name"] == "jsonl" and meta["vocab_size"] == CFG.vocab_size
    assert meta["counts"] == {**report["kept"], "quarantined": sum(report["quarantined"].values())}
    words, doc_freq, n_train = ds.read_vocab(out)
    assert meta["vocab_fingerprint"] == hashlib.sha256("\n".join(words).encode()).hexdigest()
    assert not (out / "_staging").exists() and not list(out.rglob("*.crc"))

    for split in ds.SPLITS:
        files = ds.split_files(out, split)
        assert len(files) == CFG.files_per_split
        t = pq.read_table(files[0])
        assert t.schema.names == list(ds.DOC_COLUMNS)
        assert [str(f.type) for f in t.schema] == ["string", "list<element: string>", "binary", "binary", "int32",
                                                   "string"]
    train = ds.read_split(out, "train")
    assert train.counts.shape == (n_train, len(words)) and train.counts.dtype == np.float32
    assert np.array_equal(np.asarray((train.counts > 0).sum(axis=0)).ravel(), doc_freq)
    by_id = {d["id"]: d for d in docs}
    explicit_split = {d["id"] for i, d in enumerate(docs) if i % 2}   # the fixture drops "split" from even lines
    vocab_index = {w: i for i, w in enumerate(words)}
    lengths = np.concatenate([pq.read_table(f, columns=["length"]).column(0).to_numpy()
                              for f in ds.split_files(out, "train")])
    assert np.array_equal(lengths, np.asarray(train.counts.sum(axis=1)).ravel().astype(np.int32))
    assert lengths.min() >= CFG.min_doc_words
    # Spark's output feeds the Petastorm loader: two shards deliver every train row once
    from semhash_spark import data
    shards = [[i for b in data.iter_batches(out, "train", 32, cur_shard=s, shard_count=2) for i in b.ids]
              for s in range(2)]
    assert [len(x) for x in shards] == [data.count_rows(out, "train", s, 2) for s in range(2)]
    assert sorted(shards[0] + shards[1]) == sorted(train.ids)
    for row, doc_id in itertools.islice(enumerate(train.ids), 0, None, 17):
        d = by_id[doc_id]
        ids, counts = ds.vectorize(d["text"], vocab_index, CFG)       # query-time encoding == prepare's
        assert np.array_equal(train.counts[row].indices, ids) and np.array_equal(train.counts[row].data, counts)
        assert train.labels[row] == d["labels"]
        assert train.content_hash[row] == hashlib.sha1(d["text"].encode()).hexdigest()
        if doc_id in explicit_split:
            assert d["split"] == "train"
        else:
            assert corpora.hash_split(doc_id, CFG.test_fraction) == "train"


def test_single_file_on_driver_matches_files_on_executors(spark, jsonl_corpus, prepared_jsonl, tmp_path):
    """A single file is streamed by the driver; the same records as several files are read by executors."""
    root, _, _ = jsonl_corpus
    out, report = prepared_jsonl
    one = tmp_path / "all.jsonl"
    one.write_bytes((root / "part-a.jsonl").read_bytes() + gzip.decompress((root / "part-b.jsonl.gz").read_bytes()))
    report1 = prepare_dataset(spark, "jsonl", str(one), str(tmp_path / "out"), CFG)
    assert report1["kept"] == report["kept"] and report1["vocab_fingerprint"] == report["vocab_fingerprint"]
    q = dict(report["quarantined"])
    del q["unreadable file"]
    assert report1["quarantined"] == q
    assert sorted(ds.read_split(tmp_path / "out", "test").ids) == sorted(ds.read_split(out, "test").ids)


def test_prepare_errors(spark, shared_data, tmp_path):
    with pytest.raises(ValueError, match="unknown dataset 'rcv2'"):
        prepare_dataset(spark, "rcv2", str(tmp_path), str(tmp_path / "o"), CFG)
    with pytest.raises(ValueError, match="does not exist"):
        prepare_dataset(spark, "jsonl", str(tmp_path / "nope"), str(tmp_path / "o"), CFG)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no jsonl input files"):
        prepare_dataset(spark, "jsonl", str(tmp_path / "empty"), str(tmp_path / "o"), CFG)
    (tmp_path / "blank.jsonl").write_text("\n\n")
    with pytest.raises(ValueError, match="holds no jsonl records"):
        prepare_dataset(spark, "jsonl", str(tmp_path / "blank.jsonl"), str(tmp_path / "o"), CFG)
    with pytest.raises(ValueError, match="prepare.files_per_split"):
        prepare_dataset(spark, "jsonl", str(tmp_path / "blank.jsonl"), str(tmp_path / "o"),
                        dataclasses.replace(CFG, files_per_split=0))
    only_test = tmp_path / "only_test.jsonl"
    only_test.write_text("".join(json.dumps({"id": f"t{i}", "text": "orbit launch rocket", "split": "test"}) + "\n"
                                 for i in range(5)) + "{broken\n")
    with pytest.raises(ValueError, match="train split .* is empty"):
        prepare_dataset(spark, "jsonl", str(only_test), str(tmp_path / "o"), CFG)
    assert not (tmp_path / "o" / ds.DATASET_FILE).exists() and not (tmp_path / "o" / "_staging").exists()


@pytest.mark.slow
def test_20ng_full(spark, shared_data, tmp_path):
    out = tmp_path / "20ng"
    report = prepare_dataset(spark, "20ng", str(shared_data / "20newsgroups" / "20news-bydate.tar.gz"), str(out),
                             PrepareConfig())
    q = sum(report["quarantined"].values())
    assert report["records_read"] == 18846 and report["skipped"] == {}
    assert report["kept"]["train"] + report["kept"]["test"] + q == 18846
    assert report["kept"]["train"] >= 11314 - q and report["kept"]["test"] >= 7532 - q
    assert q <= 10      # with headers kept, no post is empty
    assert report["vocab_size"] == 2000
    words, doc_freq, n_train = ds.read_vocab(out)
    assert len(words) == len(set(words)) == 2000 and n_train == report["kept"]["train"]
    assert {"space", "god", "car", "windows", "government"} <= set(words)
    assert not set(words) & corpora.STOP_WORDS
    train = ds.read_split(out, "train", columns=("id", "labels", "counts"))
    assert train.counts.shape == (n_train, 2000)
    assert np.array_equal(np.asarray((train.counts > 0).sum(axis=0)).ravel(), doc_freq)
    assert len({lab[0] for lab in train.labels}) == 20
    assert all(i.split("/")[0] == lab[0] for i, lab in zip(train.ids, train.labels))
    # the vocabulary is ordered by total train count
    totals = np.asarray(train.counts.sum(axis=0)).ravel()
    assert np.all(np.diff(totals) <= 0)
    assert len(ds.split_files(out, "test")) == PrepareConfig().files_per_split


@pytest.mark.slow
def test_reuters_modapte(spark, shared_data, tmp_path):
    out = tmp_path / "reuters"
    report = prepare_dataset(spark, "reuters21578", str(shared_data / "reuters21578" / "reuters21578.tar.gz"),
                             str(out), PrepareConfig())
    q = sum(report["quarantined"].values())
    assert report["records_read"] == 21578
    assert report["skipped"] == {"not in split": 21578 - 9603 - 3299}
    assert report["kept"]["train"] + report["kept"]["test"] + q == 9603 + 3299
    assert report["kept"]["train"] >= 9603 - q and report["kept"]["test"] >= 3299 - q and q <= 10
    test = ds.read_split(out, "test", columns=("id", "labels"))
    labels = dict(zip(test.ids, test.labels))
    assert sum(1 for v in labels.values() if v) == 3019                # label-less documents are kept too
    train = ds.read_split(out, "train", columns=("id", "labels"))
    by_id = dict(zip(train.ids, train.labels))
    assert by_id["5"] == ["grain", "wheat", "corn", "barley", "oat", "sorghum"] and by_id["8"] == []


def test_empty_test_split_is_written_and_readable(spark, tmp_path):
    from semhash_spark import data

    src = tmp_path / "train_only.jsonl"
    words = ["orbit", "launch", "rocket", "engine", "brake", "wheel"]
    src.write_text("".join(json.dumps({"id": f"d{i}", "text": " ".join(words[i % 3 + k] for k in range(3)),
                                       "split": "train"}) + "\n" for i in range(40)))
    report = prepare_dataset(spark, "jsonl", str(src), str(tmp_path / "out"),
                             dataclasses.replace(CFG, files_per_split=4))
    assert report["kept"] == {"train": 40, "test": 0} and report["quarantined"] == {}
    assert len(ds.read_split(tmp_path / "out", "test")) == 0
    assert data.count_rows(tmp_path / "out", "test") == 0 and list(data.iter_batches(tmp_path / "out", "test", 8)) == []
    assert sum(len(b) for b in data.iter_batches(tmp_path / "out", "train", 8, cur_shard=1, shard_count=4)) == \
        data.count_rows(tmp_path / "out", "train", 1, 4)
