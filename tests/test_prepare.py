"""The Spark prepare job: quarantine on a JSON Lines corpus with every kind of bad record (checked against a
plain-Python reference), and the real 20 Newsgroups and Reuters-21578 (ModApte) corpora."""

from __future__ import annotations

import collections
import dataclasses
import gzip
import hashlib
import io
import itertools
import json
import tarfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import missing_data

from semhash_spark.data import corpora
from semhash_spark.data import dataset as ds
from semhash_spark.config import PrepareConfig
from semhash_spark.data.prepare import prepare_dataset

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
    (root / "part-c.jsonl.gz").write_bytes(whole[:40])  # cut before the end of its first line
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
    n_b = len(docs) - len(docs) // 2  # good lines at the head of part-b; the two copies follow 5 bad ones
    assert {r["id"] for r in dup} == {docs[0]["id"]}
    assert sorted(r["source"] for r in dup) == [f"part-b.jsonl.gz:{n_b + 5}", f"part-b.jsonl.gz:{n_b + 6}"]
    bad_split = next(r for r in q if r["reason"] == "bad split")
    assert bad_split["id"] == "x6" and "validation" in bad_split["excerpt"]
    assert all(r["source"] for r in q)

    train = ds.read_split(out, "train")
    test = ds.read_split(out, "test")
    assert sorted(train.ids) == sorted(kept["train"]) and sorted(test.ids) == sorted(kept["test"])
    assert docs[0]["id"] in set(train.ids) | set(test.ids)  # the first copy of a duplicate stays
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
        assert [str(f.type) for f in t.schema] == [
            "string",
            "list<element: string>",
            "binary",
            "binary",
            "int32",
            "string",
            "binary",
            "string",
        ]
    train = ds.read_split(out, "train")
    assert train.counts.shape == (n_train, len(words)) and train.counts.dtype == np.float32
    assert np.array_equal(np.asarray((train.counts > 0).sum(axis=0)).ravel(), doc_freq)
    by_id = {d["id"]: d for d in docs}
    explicit_split = {d["id"] for i, d in enumerate(docs) if i % 2}  # the fixture drops "split" from even lines
    vocab_index = {w: i for i, w in enumerate(words)}
    lengths = np.concatenate(
        [pq.read_table(f, columns=["length"]).column(0).to_numpy() for f in ds.split_files(out, "train")]
    )
    assert np.array_equal(lengths, np.asarray(train.counts.sum(axis=1)).ravel().astype(np.int32))
    assert lengths.min() >= CFG.min_doc_words
    # Spark's output feeds the Petastorm loader: two shards deliver every train row once
    from semhash_spark.data import loader as data

    shards = [
        [i for b in data.iter_batches(out, "train", 32, cur_shard=s, shard_count=2) for i in b.ids] for s in range(2)
    ]
    assert [len(x) for x in shards] == [data.count_rows(out, "train", s, 2) for s in range(2)]
    assert sorted(shards[0] + shards[1]) == sorted(train.ids)
    for row, doc_id in itertools.islice(enumerate(train.ids), 0, None, 17):
        d = by_id[doc_id]
        ids, counts = ds.vectorize(d["text"], vocab_index, CFG)  # query-time encoding == prepare's
        assert np.array_equal(train.counts[row].indices, ids) and np.array_equal(train.counts[row].data, counts)
        assert train.labels[row] == d["labels"]
        assert train.content_hash[row] == hashlib.sha1(d["text"].encode()).hexdigest()
        if doc_id in explicit_split:
            assert d["split"] == "train"
        else:
            assert corpora.hash_split(doc_id, CFG.test_fraction) == "train"
    # each document keeps its first words for people reading query results
    rows = [r for f in ds.split_files(out, "train") for r in pq.read_table(f, columns=[ds.ID, ds.SNIPPET]).to_pylist()]
    assert len(rows) == n_train and all(
        r[ds.SNIPPET] == corpora.snippet(by_id[r[ds.ID]]["text"], CFG.snippet_words, CFG.snippet_chars) for r in rows
    )
    assert 0 < max(len(r[ds.SNIPPET]) for r in rows) <= CFG.snippet_chars


UNICODE_TEXTS = [
    "Café naïve résumé: e\u0301te\u0301 ΟΔΟΣ straße İstanbul x² 𝐀𝐁𝐂 hello_world don't Ⅻ ǅemal ﬁne Ⅷ½",
    "हिन्दी भाषा ਪੰਜਾਬੀ 日本語のテキスト 一二三 ١٢٣ abc١٢٣ x11 486 3d KELVIN\u212a İI ı ΣΑΣ",
    "",
    "a I the of 42",
]


def test_spark_ml_tokenizer_gives_the_tokens_and_counts_of_the_python_tokenizer(spark, shared_data):
    """prepare tokenises with Spark ML (RegexTokenizer, StopWordsRemover), queries with corpora.tokenize: on real
    20 Newsgroups posts and on texts of other scripts (combining marks, supplementary-plane letters, numerals,
    ligatures) both give the same tokens, and CountVectorizer over the vocabulary the same counts."""
    from pyspark.ml.feature import CountVectorizerModel

    from semhash_spark.data.prepare import ml_tokenize

    texts = [d["text"] for d in _real_docs(shared_data, n_per_group=40)] + UNICODE_TEXTS
    df = spark.createDataFrame(list(enumerate(texts)), "i long, text string")
    for cfg in (CFG, dataclasses.replace(CFG, tokens="alnum", min_token_len=1, max_token_len=5)):
        rows = {r["i"]: r["tokens"] for r in ml_tokenize(df, "text", "tokens", cfg).collect()}
        want = [corpora.tokenize(t, cfg.min_token_len, cfg.max_token_len, tokens=cfg.tokens) for t in texts]
        assert [rows[i] for i in range(len(texts))] == want, cfg
        assert sum(len(w) for w in want[-len(UNICODE_TEXTS) :]) > 10
    vocab = sorted({w for t in want for w in t})[::3]
    index = {w: i for i, w in enumerate(vocab)}
    cv = CountVectorizerModel.from_vocabulary(vocab, inputCol="tokens", outputCol="counts")
    for r in cv.transform(ml_tokenize(df, "text", "tokens", CFG)).collect():
        ids, counts = ds.count_vector(corpora.tokenize(texts[r["i"]], CFG.min_token_len, CFG.max_token_len), index)
        assert r["counts"].indices.tolist() == ids.tolist() and r["counts"].values.tolist() == counts.tolist()


def test_snippet_is_the_first_words_bounded_and_can_be_off():
    text = "  Subject:\tRe: engines\n\nmy  car's engine\u00a0stalls when cold " + "word " * 100
    assert corpora.snippet(text, 4, 200) == "Subject: Re: engines my"
    assert corpora.snippet(text, 30, 40) == "Subject: Re: engines my car's engine sta"
    assert len(corpora.snippet(text, 30, 200).split()) == 30
    assert corpora.snippet("short text", 30, 200) == "short text"
    assert corpora.snippet(text, 0, 200) is None and corpora.snippet(None, 30, 200) is None
    with pytest.raises(ValueError, match="snippet_words"):
        prepare_dataset(None, "jsonl", "/nonexistent", "/tmp/x", dataclasses.replace(CFG, snippet_words=-1))


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
        prepare_dataset(
            spark,
            "jsonl",
            str(tmp_path / "blank.jsonl"),
            str(tmp_path / "o"),
            dataclasses.replace(CFG, files_per_split=0),
        )
    only_test = tmp_path / "only_test.jsonl"
    only_test.write_text(
        "".join(json.dumps({"id": f"t{i}", "text": "orbit launch rocket", "split": "test"}) + "\n" for i in range(5))
        + "{broken\n"
    )
    with pytest.raises(ValueError, match="train split .* is empty"):
        prepare_dataset(spark, "jsonl", str(only_test), str(tmp_path / "o"), CFG)
    assert not (tmp_path / "o" / ds.DATASET_FILE).exists() and not (tmp_path / "o" / "_staging").exists()


@pytest.mark.slow
def test_20ng_full(spark, shared_data, tmp_path):
    out = tmp_path / "20ng"
    report = prepare_dataset(
        spark, "20ng", str(shared_data / "20newsgroups" / "20news-bydate.tar.gz"), str(out), PrepareConfig()
    )
    q = sum(report["quarantined"].values())
    assert report["records_read"] == 18846 and report["skipped"] == {}
    assert report["kept"]["train"] + report["kept"]["test"] + q == 18846
    assert report["kept"]["train"] >= 11314 - q and report["kept"]["test"] >= 7532 - q
    assert q <= 10  # with headers kept, no post is empty
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
    report = prepare_dataset(
        spark, "reuters21578", str(shared_data / "reuters21578" / "reuters21578.tar.gz"), str(out), PrepareConfig()
    )
    q = sum(report["quarantined"].values())
    assert report["records_read"] == 21578
    assert report["skipped"] == {"not in split": 21578 - 9603 - 3299}
    assert report["kept"]["train"] + report["kept"]["test"] + q == 9603 + 3299
    assert report["kept"]["train"] >= 9603 - q and report["kept"]["test"] >= 3299 - q and q <= 10
    test = ds.read_split(out, "test", columns=("id", "labels"))
    labels = dict(zip(test.ids, test.labels))
    assert sum(1 for v in labels.values() if v) == 3019  # label-less documents are kept too
    train = ds.read_split(out, "train", columns=("id", "labels"))
    by_id = dict(zip(train.ids, train.labels))
    assert by_id["5"] == ["grain", "wheat", "corn", "barley", "oat", "sorghum"] and by_id["8"] == []


def test_empty_test_split_is_written_and_readable(spark, tmp_path):
    from semhash_spark.data import loader as data

    src = tmp_path / "train_only.jsonl"
    words = ["orbit", "launch", "rocket", "engine", "brake", "wheel"]
    src.write_text(
        "".join(
            json.dumps({"id": f"d{i}", "text": " ".join(words[i % 3 + k] for k in range(3)), "split": "train"}) + "\n"
            for i in range(40)
        )
    )
    report = prepare_dataset(
        spark, "jsonl", str(src), str(tmp_path / "out"), dataclasses.replace(CFG, files_per_split=4)
    )
    assert report["kept"] == {"train": 40, "test": 0} and report["quarantined"] == {}
    assert len(ds.read_split(tmp_path / "out", "test")) == 0
    assert data.count_rows(tmp_path / "out", "test") == 0 and list(data.iter_batches(tmp_path / "out", "test", 8)) == []
    assert sum(
        len(b) for b in data.iter_batches(tmp_path / "out", "train", 8, cur_shard=1, shard_count=4)
    ) == data.count_rows(tmp_path / "out", "train", 1, 4)


# -------------------------------------------------------------------------------------------------- s3:// in, s3:// out
# The executors read the source objects and write the dataset's objects through the store (what a multi-host
# cluster needs); run here in local mode against the real S3 server, with the same task code a cluster runs.
S3 = "s3://semhash/prepare-test"


def _s3_parquet(uri: str) -> tuple[list[dict], list[str]]:
    """Rows of every Parquet object under uri (sorted by id, then source) and the object keys."""
    from semhash_spark.io import store

    keys = [k for k, _ in store.list_prefix(uri) if k.endswith(".parquet")]
    rows = [r for k in keys for r in pq.read_table(io.BytesIO(store.read_bytes(store.join(uri, k)))).to_pylist()]
    return sorted(rows, key=lambda r: (r["id"] or "", r.get("source") or "")), keys


def _local_parquet(path) -> list[dict]:
    rows = [r for f in sorted(path.glob("*.parquet")) for r in pq.read_table(f).to_pylist()]
    return sorted(rows, key=lambda r: (r["id"] or "", r.get("source") or ""))


def _assert_same_dataset(s3_out: str, local_out) -> None:
    """The s3:// dataset holds what the local one holds: metadata, vocabulary, every split's rows, quarantine."""
    from semhash_spark.io import store

    meta, local_meta = store.read_json(f"{s3_out}/dataset.json"), ds.read_metadata(local_out)
    for key in (
        "format",
        "name",
        "vocab_size",
        "counts",
        "vocab_fingerprint",
        "quarantine_reasons",
        "skipped",
        "records_read",
        "prepare",
    ):
        assert meta[key] == local_meta[key], key
    assert store.read_json(f"{s3_out}/vocab.json") == json.loads((local_out / ds.VOCAB_FILE).read_text())
    assert ds.read_vocab(s3_out)[0] == ds.read_vocab(local_out)[0]  # the readers take s3:// too
    for split in ds.SPLITS:
        rows, keys = _s3_parquet(ds.split_uri(s3_out, split))
        assert rows == _local_parquet(ds.split_dir(local_out, split)), split
        assert len(keys) == len(ds.split_files(local_out, split))  # files_per_split objects
    assert _s3_parquet(f"{s3_out}/{ds.QUARANTINE_DIR}")[0] == _local_parquet(local_out / ds.QUARANTINE_DIR)
    assert not [k for k, _ in store.list_prefix(s3_out) if k.startswith("_")]  # no staging left behind


@pytest.fixture(scope="module")
def s3_bucket(s3_server):
    from semhash_spark.io import store

    store.ensure_bucket("semhash")
    return S3


def test_s3_jsonl_files_to_s3_dataset_equal_local(spark, s3_bucket, jsonl_corpus, prepared_jsonl):
    """Three JSONL objects (one a truncated gzip) read by the executors; the dataset written by them to S3."""
    from semhash_spark.io import store

    root, _, _ = jsonl_corpus
    local_out, local_report = prepared_jsonl
    store.upload_dir(root, f"{S3}/jsonl-src")
    report = prepare_dataset(spark, "jsonl", f"{S3}/jsonl-src", f"{S3}/jsonl-data", CFG)
    assert {k: report[k] for k in ("records_read", "kept", "quarantined", "skipped", "vocab_fingerprint")} == {
        k: local_report[k] for k in ("records_read", "kept", "quarantined", "skipped", "vocab_fingerprint")
    }
    _assert_same_dataset(f"{S3}/jsonl-data", local_out)

    # A failed re-run into the same prefix leaves no dataset.json behind: a half-written dataset is never valid.
    store.write_bytes(
        f"{S3}/bad-src/only-test.jsonl",
        json.dumps({"id": "t", "text": "orbit launch rocket", "split": "test"}).encode(),
    )
    with pytest.raises(ValueError, match="train split .* is empty"):
        prepare_dataset(spark, "jsonl", f"{S3}/bad-src", f"{S3}/jsonl-data", CFG)
    assert not store.exists(f"{S3}/jsonl-data/dataset.json")
    assert not [k for k, _ in store.list_prefix(f"{S3}/jsonl-data") if k.startswith("_")]


@pytest.fixture(scope="module")
def small_20ng_tar(shared_data, tmp_path_factory):
    """A 20news-bydate.tar.gz of the first 25 train and 10 test posts of four groups of the real archive."""
    want = {
        (s, g): n
        for g in ("comp.graphics", "rec.autos", "sci.space", "talk.politics.guns")
        for s, n in (("20news-bydate-train", 25), ("20news-bydate-test", 10))
    }
    out = tmp_path_factory.mktemp("ng") / "20news-bydate.tar.gz"
    with tarfile.open(shared_data / "20newsgroups" / "20news-bydate.tar.gz") as src, tarfile.open(out, "w:gz") as dst:
        for m in src:
            parts = m.name.split("/")
            if m.isfile() and len(parts) == 3 and want.get((parts[0], parts[1]), 0) > 0:
                want[(parts[0], parts[1])] -= 1
                dst.addfile(m, src.extractfile(m))
    return out


def test_s3_20ng_archive_and_extracted_prefix_equal_local(spark, s3_bucket, small_20ng_tar, tmp_path):
    """One archive object is read by one task and its records spread for tokenising; the extracted layout
    (one unit per newsgroup prefix) gives the same documents."""
    from semhash_spark.io import store

    cfg = dataclasses.replace(CFG, files_per_split=2, strip_headers=True)
    local_out = tmp_path / "local"
    prepare_dataset(spark, "20ng", str(small_20ng_tar), str(local_out), cfg)
    store.upload_file(small_20ng_tar, f"{S3}/ng-src/20news-bydate.tar.gz")
    report = prepare_dataset(spark, "20ng", f"{S3}/ng-src/20news-bydate.tar.gz", f"{S3}/ng-data", cfg)
    assert report["records_read"] == 140 and report["kept"]["train"] > 90
    _assert_same_dataset(f"{S3}/ng-data", local_out)

    with tarfile.open(small_20ng_tar) as tar:
        tar.extractall(tmp_path / "extracted")
    store.upload_dir(tmp_path / "extracted", f"{S3}/ng-extracted")
    assert len(corpora.input_units("20ng", f"{S3}/ng-extracted")) == 8  # 2 splits x 4 groups
    prepare_dataset(spark, "20ng", f"{S3}/ng-extracted", f"{S3}/ng-data-2", cfg)
    meta = store.read_json(f"{S3}/ng-data-2/dataset.json")
    assert meta["counts"] == ds.read_metadata(local_out)["counts"]
    for split in ds.SPLITS:
        assert _s3_parquet(ds.split_uri(f"{S3}/ng-data-2", split))[0] == _local_parquet(ds.split_dir(local_out, split))


def test_s3_bad_sources_are_one_line_errors_naming_them(spark, s3_bucket, small_20ng_tar, capsys):
    from semhash_spark.io import store
    from semhash_spark.cli import main

    with pytest.raises(ValueError, match=f"source '{S3}/no-such-key' does not exist"):
        prepare_dataset(spark, "jsonl", f"{S3}/no-such-key", f"{S3}/never", CFG)
    store.write_bytes(f"{S3}/wrong/corpus.jsonl", b'{"id": "a", "text": "space"}\n')
    with pytest.raises(ValueError, match=f"source '{S3}/wrong/corpus.jsonl' is not a 20news-bydate"):
        prepare_dataset(spark, "20ng", f"{S3}/wrong/corpus.jsonl", f"{S3}/never", CFG)
    # named like an archive, but JSON inside: the executor's reader fails, the driver reports it in one line
    store.write_bytes(f"{S3}/wrong/20news-bydate.tar.gz", b'{"id": "a", "text": "space"}\n')
    code = main(
        ["prepare", "--dataset", "20ng", "--source", f"{S3}/wrong/20news-bydate.tar.gz", "--out", f"{S3}/never"]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and err[-1].startswith("semhash prepare: error: ValueError:"), err[-3:]
    assert f"'{S3}/wrong/20news-bydate.tar.gz' is not a tar or tar.gz archive" in err[-1]
    assert not store.list_prefix(f"{S3}/never")


# ---------------------------------------------------------------------------------------------------- images on S3
@pytest.fixture(scope="module")
def tiny_cifar(shared_data, tmp_path_factory):
    """10 train / 3 test real CIFAR-10 JPEGs per class (class-folder layout), plus an empty and a corrupt file."""
    from semhash_spark.data import image_sources

    archive = shared_data / "cifar10-jpeg" / "cifar10-jpeg.tar.gz"
    if not archive.is_file():
        missing_data("no CIFAR-10 archive")
    root = tmp_path_factory.mktemp("tiny-cifar")
    want: dict[tuple[str, str], int] = {}
    with tarfile.open(archive) as tar:
        for m in tar:
            key = image_sources._folder_key(m.name.split("/")) if m.isfile() else None
            if key is None or want.get(key[:2], 0) >= (10 if key[0] == "train" else 3):
                continue
            want[key[:2]] = want.get(key[:2], 0) + 1
            (root / key[0] / key[1]).mkdir(parents=True, exist_ok=True)
            (root / key[0] / key[1] / key[2]).write_bytes(tar.extractfile(m).read())
    (root / "train" / "cat" / "zz-empty.png").write_bytes(b"")
    (root / "test" / "dog" / "zz-corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return root


def _image_rows(data_dir) -> dict[str, list[tuple]]:
    from semhash_spark.data import loader as data

    out = {}
    for split in ds.SPLITS:
        b = data.read_image_shard(data_dir, split)
        out[split] = sorted((i, lab, p.tobytes()) for i, lab, p in zip(b.ids, b.labels, b.pixels))
    return out


def test_s3_image_folder_to_s3_dataset_equal_local_and_encoded_from_s3(spark, s3_bucket, tiny_cifar, tmp_path, capsys):
    """Class-folder images on S3 (one task per <split>/<label>/ prefix) -> a Petastorm dataset written to S3 by
    the executors: the same images, labels and quarantine as from the local folder; Petastorm reads it in two
    shards; encode reads the s3:// dataset and gives the same codes as from the local one."""
    from semhash_spark.data import loader as data, images
    from semhash_spark.io import store
    from semhash_spark.cli import main
    from semhash_spark.config import ImagesConfig

    cfg = ImagesConfig(files_per_split=2)
    local_out = tmp_path / "local"
    local = images.prepare_images(spark, "imagefolder", str(tiny_cifar), str(local_out), cfg)
    store.upload_dir(tiny_cifar, f"{S3}/img-src")
    assert len(images.image_sources.input_units("imagefolder", f"{S3}/img-src")) == 20
    remote = images.prepare_images(spark, "imagefolder", f"{S3}/img-src", f"{S3}/img-data", cfg)
    assert remote["kept"] == local["kept"] == {"train": 100, "test": 30, "quarantined": 2}
    assert remote["quarantined"] == local["quarantined"] == {"empty file": 1, "undecodable": 1}
    meta = store.read_json(f"{S3}/img-data/dataset.json")
    local_meta = json.loads((local_out / "dataset.json").read_text())
    for key in ("format", "kind", "height", "width", "channels", "labels", "counts", "quarantine_reasons"):
        assert meta[key] == local_meta[key], key
    assert images.is_image_dataset(f"{S3}/img-data") and images.dataset_kind(f"{S3}/img-data") == "images"
    keys = [k for k, _ in store.list_prefix(f"{S3}/img-data")]
    assert "images/split=train/_common_metadata" in keys and not [k for k in keys if k.startswith("_")]
    assert sum(k.startswith("images/split=train/part-") for k in keys) == 2

    staged = store.local_copy(f"{S3}/img-data")  # what training does with an s3:// image dataset
    assert _image_rows(staged) == _image_rows(local_out)
    shards = [data.read_image_shard(staged, "train", cur_shard=s, shard_count=2).ids for s in range(2)]
    assert (
        len(shards[0])
        and len(shards[1])
        and sorted([*shards[0], *shards[1]]) == sorted(i for i, _, _ in _image_rows(local_out)["train"])
    )
    q, _ = _s3_parquet(f"{S3}/img-data/quarantine")
    assert [(r["id"], r["reason"].split(":")[0]) for r in q] == [
        (r["id"], r["reason"].split(":")[0]) for r in _local_parquet(local_out / "quarantine")
    ]
    assert {r["source"] for r in q} == {f"{S3}/img-src/train/cat/zz-empty.png", f"{S3}/img-src/test/dog/zz-corrupt.jpg"}

    model = _random_image_model(tmp_path / "model")
    codes = {}
    for name, data_uri in (("local", str(local_out)), ("s3", f"{S3}/img-data")):
        index = f"{S3}/img-index-{name}"
        assert main(["encode", "--model", model, "--data", data_uri, "--index", index]) == 0, capsys.readouterr().err
        assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["count"] == 130
        codes[name] = _index_codes(index)
    assert codes["s3"] == codes["local"] and len(set(codes["local"].values())) > 1


def _random_image_model(out) -> str:
    """A 16-bit image model with random weights over 32x32x3 inputs (encoding needs no training)."""
    import torch

    from semhash_spark.models.checkpoint import save_model
    from semhash_spark.config import load_config
    from semhash_spark.models.autoencoder import DeepAutoencoder

    conf = Path(__file__).resolve().parents[1] / "conf" / "images.yaml"
    cfg = load_config(str(conf), ["model.hidden=[32]"]).with_bits(16)
    torch.manual_seed(3)
    ae = DeepAutoencoder([3072, 32, 16], output="linear", code_mode="round")
    with torch.no_grad():
        for layer in ae.encoder:
            torch.nn.init.normal_(layer.weight, std=0.05)
            torch.nn.init.zeros_(layer.bias)
    save_model(str(out), ae, cfg, {"data": {"height": 32, "width": 32, "channels": 3}})
    return str(out)


def _index_codes(index_uri: str) -> dict[str, bytes]:
    from semhash_spark.index import published as ix

    version = ix.read_current(index_uri)["version"]
    root = ix.version_prefix(index_uri, version)
    rows, _ = _s3_parquet(root)
    return {r["id"]: r["code"] for r in rows}


def test_s3_units_read_what_the_local_readers_read(s3_bucket, shared_data, tiny_cifar, tmp_path):
    """Each s3:// layout, read unit by unit as the tasks read it, yields the local reader's records: Reuters SGML
    files in an archive, MNIST's idx files, an image archive, class folders (sources aside)."""
    from semhash_spark.data import image_sources
    from semhash_spark.io import store

    reuters = shared_data / "reuters21578" / "reuters21578.tar.gz"
    store.upload_file(reuters, f"{S3}/units/reuters/reuters21578.tar.gz")
    (unit,) = corpora.input_units("reuters21578", f"{S3}/units/reuters")
    got = list(itertools.islice(corpora.read_unit("reuters21578", unit), 300))
    assert got == list(itertools.islice(corpora.read_records("reuters21578", reuters), 300))

    mnist = shared_data / "mnist"
    for f in mnist.glob("*-ubyte.gz"):
        store.upload_file(f, f"{S3}/units/mnist/{f.name}")
    (unit,) = image_sources.input_units("mnist", f"{S3}/units/mnist")
    local = image_sources.read_source("mnist", str(mnist))
    assert list(itertools.islice(image_sources.read_unit(unit), 50)) == list(itertools.islice(local, 50))

    archive = tmp_path / "tiny.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tiny_cifar, arcname="tiny")
    store.upload_file(archive, f"{S3}/units/tiny.tar.gz")
    (unit,) = image_sources.input_units("imagefolder", f"{S3}/units/tiny.tar.gz")
    assert list(image_sources.read_unit(unit)) == list(image_sources.read_source("imagefolder", str(archive)))

    store.upload_dir(tiny_cifar, f"{S3}/units/folders")
    units = image_sources.input_units("cifar10", f"{S3}/units/folders")
    got = [{**r, "source": None} for u in units for r in image_sources.read_unit(u)]
    assert got == [{**r, "source": None} for r in image_sources.read_source("cifar10", str(tiny_cifar))]

    # CIFAR-10 python batches under a prefix (a small batch in the original pickle format, one folder deeper)
    import pickle

    chw = np.random.default_rng(0).integers(0, 256, size=(4, 3, 32, 32), dtype=np.uint8)
    batch = {
        b"data": chw.reshape(4, -1),
        b"labels": [0, 1, 1, 0],
        b"filenames": [f"f{i}.png".encode() for i in range(4)],
    }
    batches = tmp_path / "cifar" / "cifar-10-batches-py"
    batches.mkdir(parents=True)
    meta = {b"label_names": [b"a", b"b"]}
    for name, blob in (("data_batch_1", batch), ("test_batch", batch), ("batches.meta", meta)):
        (batches / name).write_bytes(pickle.dumps(blob))
    store.upload_dir(tmp_path / "cifar", f"{S3}/units/cifar")
    (unit,) = image_sources.input_units("cifar10", f"{S3}/units/cifar")
    got = list(image_sources.read_unit(unit))
    want = list(image_sources.read_source("cifar10", str(tmp_path / "cifar")))
    assert len(got) == 8 and [{**r, "source": None} for r in got] == [{**r, "source": None} for r in want]
    assert got[5]["source"] == f"{S3}/units/cifar/cifar-10-batches-py:test_batch[1]"

    with pytest.raises(ValueError, match=f"'{S3}/units/mnist/train-images-idx3-ubyte.gz' must be the prefix"):
        image_sources.input_units("mnist", f"{S3}/units/mnist/train-images-idx3-ubyte.gz")
    with pytest.raises(ValueError, match=f"'{S3}/units/reuters' has no train/ or test/ folder"):
        image_sources.input_units("imagefolder", f"{S3}/units/reuters")
    with pytest.raises(ValueError, match=f"'{S3}/units/nothing' does not exist"):
        image_sources.input_units("cifar10", f"{S3}/units/nothing")
