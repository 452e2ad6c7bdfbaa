"""Nightly re-index: diff by id and content hash, only affected partitions rewritten, idempotent, crash-safe,
retention."""

from __future__ import annotations

import json
import shutil
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from semhash_spark.data import dataset as ds
from semhash_spark.index import published as ix
from semhash_spark.index import leases
from semhash_spark.io import store
from semhash_spark.index.reindex import apply_retention, reindex, remap_words

N_DOCS = 120
DELETE = ["doc000", "doc001", "doc002", "doc003", "doc004"]
CHANGE = ["doc010", "doc011", "doc012", "doc013"]
ADD = {
    "new000": "doc050",
    "new001": "doc051",
    "new002": "doc052",
    "new003": "doc090",
    "new004": "doc091",
    "new005": "doc117",
}  # new id -> the document whose words it gets
COLUMNS = ["id", "code", "address", "word_ids", "word_counts", "content_hash", "labels", "snippet"]


def _write_dataset(out: Path, n_docs: int, vocab_size: int, seed: int = 0) -> Path:
    """A small prepared dataset (semhash-docs/1) written directly: four topics over a 100-word vocabulary."""
    import hashlib

    rng = np.random.default_rng(seed)
    words = [f"w{i:03d}" for i in range(vocab_size)]
    topic_words = np.array_split(np.arange(vocab_size), 4)
    rows = {s: [] for s in ds.SPLITS}
    for d in range(n_docs):
        ids = np.unique(rng.choice(topic_words[d % 4], 12))
        counts = rng.integers(1, 5, ids.size).astype(np.float32)
        wi, wc = ds.encode_sparse(ids, counts)
        rows["test" if d % 5 == 4 else "train"].append(
            {
                "id": f"doc{d:03d}",
                "labels": [f"t{d % 4}"],
                "word_ids": wi,
                "word_counts": wc,
                "length": int(counts.sum()),
                "content_hash": hashlib.sha1(wi + wc).hexdigest(),
            }
        )
    for split, split_rows in rows.items():
        d = ds.split_dir(out, split)
        d.mkdir(parents=True)
        for i in range(2):
            pq.write_table(pa.Table.from_pylist(split_rows[i::2], schema=ds.DOC_SCHEMA), d / f"part-{i}.parquet")
    doc_freq = np.zeros(vocab_size, dtype=np.int64)
    for r in rows["train"]:
        doc_freq[np.frombuffer(r["word_ids"], dtype="<i4")] += 1
    fp = ds.write_vocab(out, words, doc_freq, len(rows["train"]))
    ds.write_metadata(
        out,
        name="synthetic",
        vocab_size=vocab_size,
        counts={"train": len(rows["train"]), "test": len(rows["test"]), "quarantined": 0},
        vocab_fingerprint=fp,
        source="test_reindex",
    )
    return out


def _model(out: Path, words, doc_freq, n_train, seed: int, cfg, bits: int = 16) -> str:
    import torch

    from semhash_spark.models.checkpoint import save_model
    from semhash_spark.models.autoencoder import DeepAutoencoder

    torch.manual_seed(seed)
    ae = DeepAutoencoder([len(words), 32, bits])
    with torch.no_grad():  # large random weights: codes spread over the partitions
        for layer in ae.encoder:
            torch.nn.init.normal_(layer.weight, std=1.0)
            torch.nn.init.zeros_(layer.bias)
    save_model(
        str(out),
        ae,
        cfg,
        {
            "vocab": {
                "words": words,
                "doc_freq": [int(x) for x in doc_freq],
                "num_train_docs": n_train,
                "fingerprint": ds.vocab_fingerprint(words),
            }
        },
    )
    return str(out)


def _tonight(base: Path, out: Path) -> Path:
    """Tonight's corpus: the base dataset with DELETE removed, CHANGE edited (new hash, new counts), ADD added."""
    shutil.copytree(base, out)
    rows = {}
    for split in ds.SPLITS:
        for f in ds.split_files(base, split):
            for r in pq.read_table(f).to_pylist():
                rows[r["id"]] = r
    for split in ds.SPLITS:
        for i, f in enumerate(ds.split_files(out, split)):
            t = [r for r in pq.read_table(f).to_pylist() if r["id"] not in DELETE]
            for r in t:
                if r["id"] in CHANGE:
                    counts = np.frombuffer(r["word_counts"], dtype="<f4")
                    r["word_counts"] = (counts[::-1] * 2).astype("<f4").tobytes()
                    r["content_hash"] = "edited-" + r["content_hash"]
            if split == "train" and i == 0:
                t += [{**rows[src], "id": new, "content_hash": "new-" + new} for new, src in ADD.items()]
            pq.write_table(pa.Table.from_pylist(t, schema=ds.DOC_SCHEMA), f)
    return out


@pytest.fixture(scope="module", autouse=True)
def _few_shuffle_partitions(spark):
    old = spark.conf.get("spark.sql.shuffle.partitions")
    spark.conf.set("spark.sql.shuffle.partitions", "2")  # tiny data: one task per core
    yield
    spark.conf.set("spark.sql.shuffle.partitions", old)


@pytest.fixture(scope="module")
def env(spark, tmp_path_factory):
    """A 120-document prepared corpus, tonight's edited copy, two random 16-bit models and a config."""
    from semhash_spark.config import load_config

    root = tmp_path_factory.mktemp("reindex")
    _write_dataset(root / "base", N_DOCS, 100)
    cfg = load_config(None, ["model.hidden=[32]", "index.address_bits=8", "index.partition_bits=3"]).with_bits(16)
    words, doc_freq, n_train = ds.read_vocab(root / "base")
    out = {
        "base": str(root / "base"),
        "tonight": str(_tonight(root / "base", root / "tonight")),
        "cfg": cfg,
        "model_a": _model(root / "model_a", words, doc_freq, n_train, 1, cfg),
        "model_b": _model(root / "model_b", words, doc_freq, n_train, 2, cfg),
        "index": str(root / "index"),
    }
    out["first"] = reindex(spark, out["base"], out["model_a"], out["index"], cfg)  # the base index, built once
    return out


def _base_index(env, tmp_path) -> tuple[str, dict]:
    """A private copy of the base index (model A, base corpus) and the report of the run that built it."""
    index = str(tmp_path / "index")
    shutil.copytree(env["index"], index)
    return index, env["first"]


def _shard_rows(index_uri: str, version: str | None = None) -> dict[str, dict]:
    """id -> {code, content_hash, partition} read straight from the version's files."""
    version = version or ix.read_current(index_uri)["version"]
    m = ix.read_manifest(index_uri, version)
    out = {}
    for p in m["partitions"]:
        for f in p["files"]:
            for r in pq.read_table(str(Path(index_uri) / "versions" / version / f["path"])).to_pylist():
                out[r["id"]] = {"code": r["code"], "hash": r["content_hash"], "part": p["partition"]}
    return out


def _expected_codes(data_dir: str, model_uri: str) -> dict[str, bytes]:
    from semhash_spark.models.checkpoint import load_model

    hasher = load_model(model_uri)
    out = {}
    for split in ds.SPLITS:
        s = ds.read_split(data_dir, split, columns=("id", "counts"))
        out.update(zip(s.ids, (row.tobytes() for row in hasher.codes_from_csr(s.counts))))
    return out


def _files(manifest: dict) -> dict[str, list]:
    return {p["partition"]: [(f["path"], f["sha256"]) for f in p["files"]] for p in manifest["partitions"]}


def test_first_run_builds_everything_and_a_rerun_publishes_nothing(spark, env, tmp_path):
    index, first = _base_index(env, tmp_path)
    assert first["published"] and first["full"] and first["reason"] == "no published version"
    assert (first["added"], first["changed"], first["deleted"], first["unchanged"]) == (N_DOCS, 0, 0, 0)
    manifest = ix.read_manifest(index, first["version"])
    assert manifest["columns"] == COLUMNS and manifest["count"] == N_DOCS and len(manifest["partitions"]) >= 4
    rows = _shard_rows(index)
    assert {k: v["code"] for k, v in rows.items()} == _expected_codes(env["base"], env["model_a"])
    assert ix.HammingIndex.open(index).load_all().ntotal == N_DOCS  # every file checks out

    again = reindex(spark, env["base"], env["model_a"], index, env["cfg"])
    assert not again["published"] and again["version"] == first["version"]
    assert (again["added"], again["changed"], again["deleted"], again["unchanged"]) == (0, 0, 0, N_DOCS)
    assert ix.list_versions(index) == [first["version"]]


def test_incremental_run_rewrites_only_the_affected_partitions(spark, env, tmp_path):
    index, base = _base_index(env, tmp_path)
    before = _shard_rows(index)
    run = reindex(spark, env["tonight"], env["model_a"], index, env["cfg"])
    assert run["published"] and not run["full"] and run["previous_version"] == base["version"]
    assert (run["added"], run["changed"], run["deleted"], run["unchanged"]) == (
        len(ADD),
        len(CHANGE),
        len(DELETE),
        N_DOCS - len(CHANGE) - len(DELETE),
    )
    after = _shard_rows(index)
    assert {k: v["code"] for k, v in after.items()} == _expected_codes(env["tonight"], env["model_a"])
    assert all(after[i]["hash"].startswith("edited-") for i in CHANGE)
    assert all(after[i]["hash"] == before[i]["hash"] for i in after if i not in CHANGE and i in before)

    # the affected partitions, worked out independently: where changed/deleted rows were, where new rows went
    affected = {before[i]["part"] for i in CHANGE + DELETE} | {after[i]["part"] for i in CHANGE + list(ADD)}
    old_files = _files(ix.read_manifest(index, base["version"]))
    new_files = _files(ix.read_manifest(index, run["version"]))
    for part, files in new_files.items():
        if part in affected:
            assert not set(files) & set(old_files.get(part, [])), part  # rewritten
        else:
            assert files == old_files[part], part  # carried over, same bytes
    assert run["partitions_rewritten"] == len(affected) < len(old_files)
    assert run["partitions_carried"] == len(set(old_files) - affected) > 0
    # the old version is intact (copy-on-write) and both verify their checksums
    assert ix.HammingIndex.open(index, version=base["version"]).load_all().ntotal == N_DOCS
    assert ix.HammingIndex.open(index).load_all().ntotal == N_DOCS - len(DELETE) + len(ADD)

    again = reindex(spark, env["tonight"], env["model_a"], index, env["cfg"])
    assert not again["published"] and again["version"] == run["version"]
    assert len(ix.list_versions(index)) == 2


def test_crash_leaves_current_intact_and_the_next_run_completes(spark, env, tmp_path):
    index, base = _base_index(env, tmp_path)

    def crash(stage):
        if stage == "shards_written":
            raise RuntimeError("killed after writing shards")

    with pytest.raises(RuntimeError, match="killed"):
        reindex(spark, env["tonight"], env["model_a"], index, env["cfg"], hook=crash)
    assert ix.read_current(index)["version"] == base["version"]
    assert store.list_dir(store.join(index, "versions")) == [base["version"]]  # the partial version is gone
    # a kill -9 cannot clean up: leave a half-written version behind, as one would
    stale = ix.new_version_id(datetime.now(timezone.utc) - timedelta(days=1))
    src = next(iter(_files(ix.read_manifest(index, base["version"])).values()))[0][0]
    store.copy_object(
        store.join(ix.version_prefix(index, base["version"]), src), store.join(ix.version_prefix(index, stale), src)
    )
    assert ix.HammingIndex.open(index).load_all().ntotal == N_DOCS

    run = reindex(spark, env["tonight"], env["model_a"], index, env["cfg"])
    assert run["published"] and ix.read_current(index)["version"] == run["version"]
    assert run["retention"]["deleted"] == [stale]  # unpublished leftover, older than orphan_hours
    assert ix.HammingIndex.open(index).load_all().ntotal == N_DOCS - len(DELETE) + len(ADD)


def test_model_change_forces_a_full_rebuild(spark, env, tmp_path):
    index, base = _base_index(env, tmp_path)
    run = reindex(spark, env["base"], env["model_b"], index, env["cfg"])
    assert run["published"] and run["full"] and run["reason"].startswith("model changed")
    assert run["unchanged"] == N_DOCS and run["files_copied"] == 0
    new = ix.read_manifest(index, run["version"])
    assert run["partitions_rewritten"] == len(new["partitions"])
    assert new["model"]["version"] != ix.read_manifest(index, base["version"])["model"]["version"]
    assert {k: v["code"] for k, v in _shard_rows(index).items()} == _expected_codes(env["base"], env["model_b"])
    assert not reindex(spark, env["base"], env["model_b"], index, env["cfg"])["published"]
    full = reindex(spark, env["base"], env["model_b"], index, env["cfg"], full=True)
    assert full["published"] and full["reason"] == "requested"


# --------------------------------------------------------------------------------------------------- retention


def _publish_version(index: str, born: datetime) -> str:
    version = ix.new_version_id(born)
    import pandas as pd

    codes = np.arange(4, dtype=np.uint8).reshape(4, 1) * 64
    pdf = pd.DataFrame(
        {"id": list("abcd"), "code": [c.tobytes() for c in codes], "address": codes[:, 0].astype(np.uint64)}
    )
    files = ix.write_shard(ix.version_prefix(index, version), 2, 1, pdf)
    ix.publish(index, version, ix.build_manifest(version, 8, 8, 2, files))
    return version


def test_retention_never_deletes_current_or_a_leased_version(tmp_path, monkeypatch):
    index = str(tmp_path / "index")
    now = datetime.now(timezone.utc)
    old, leased, expired, racing, recent, current = (
        _publish_version(index, now - timedelta(days=d)) for d in (30, 29, 28, 27, 1, 20)
    )
    assert ix.read_current(index)["version"] == current  # older than the limit, but CURRENT
    leases.acquire(index, leased, "service-1", ttl_seconds=3600, now=now)
    leases.acquire(index, expired, "crashed-job", ttl_seconds=60, now=now - timedelta(hours=2))
    orphan_old = ix.new_version_id(now - timedelta(hours=12))  # killed runs: shards, no manifest
    orphan_new = ix.new_version_id(now - timedelta(minutes=10))
    for v in (orphan_old, orphan_new):
        store.write_bytes(store.join(ix.version_prefix(index, v), "part=0/x.parquet"), b"partial")

    real_live = leases.live
    calls = {"n": 0}

    def live(index_uri, version, now=None):
        if version == racing:  # a reader leases between retention's two checks
            calls["n"] += 1
            return [] if calls["n"] == 1 else [{"reader": "late"}]
        return real_live(index_uri, version, now)

    monkeypatch.setattr(leases, "live", live)
    out = apply_retention(index, 7, now=now, orphan_hours=6)
    assert sorted(out["deleted"]) == sorted([old, expired, orphan_old])
    assert sorted(out["leased"]) == sorted([leased, racing]) and not out["errors"]
    left = store.list_dir(store.join(index, "versions"))
    assert sorted(left) == sorted([leased, racing, recent, current, orphan_new])
    assert ix.read_manifest(index, racing)["version"] == racing  # its manifest was put back
    ix.HammingIndex.open(index).load_all()

    leases.release(index, leased, "service-1")
    monkeypatch.setattr(leases, "live", real_live)
    assert apply_retention(index, 7, now=now)["deleted"] == sorted([leased, racing])


def test_remap_words_maps_the_datasets_vocabulary_onto_the_models():
    import pandas as pd

    remap = np.array([-1, 1, -1, 0], dtype=np.int32)  # dataset [a, b, c, d] -> model [d, b, x]
    ids, counts = ds.encode_sparse(np.array([0, 1, 3]), np.array([1.0, 2.0, 3.0]))
    out = next(remap_words(iter([pd.DataFrame({"word_ids": [ids], "word_counts": [counts]})]), remap))
    got_ids, got_counts = ds.decode_sparse(out["word_ids"][0], out["word_counts"][0])
    assert got_ids.tolist() == [0, 1] and got_counts.tolist() == [3.0, 2.0]


def test_reindex_on_s3_copies_untouched_partitions_server_side(spark, env, s3_server):
    index = "s3://semhash/reindex-test/index"
    store.ensure_bucket("semhash")
    store.upload_dir(env["index"], index)  # the base index, as the first run published it
    base = env["first"]
    run = reindex(spark, env["tonight"], env["model_a"], index, env["cfg"])
    assert run["published"] and run["files_copied"] > 0 and run["previous_version"] == base["version"]
    assert ix.HammingIndex.open(index).load_all().ntotal == N_DOCS - len(DELETE) + len(ADD)


def test_semhash_reindex_command_prints_the_report(spark, env, tmp_path, capsys):
    from semhash_spark.cli import main

    index, base = _base_index(env, tmp_path)
    argv = [
        "reindex",
        "--data",
        env["tonight"],
        "--model",
        env["model_a"],
        "--index",
        index,
        "--retention-days",
        "3",
        "--set",
        "index.address_bits=8",
        "--set",
        "index.partition_bits=3",
    ]
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (report["added"], report["changed"], report["deleted"]) == (len(ADD), len(CHANGE), len(DELETE))
    assert report["version"] == ix.read_current(index)["version"] != base["version"] and not report["full"]


def test_reindex_from_a_raw_jsonl_corpus(spark, small_corpus, small_dataset, tmp_path, monkeypatch):
    """A raw corpus is prepared with the model's vocabulary; its bad lines are kept in the index's quarantine; a
    rerun on the same file publishes nothing; one edited line re-encodes exactly one document. The model's weights
    are read once per run."""
    from semhash_spark.models.checkpoint import WEIGHTS
    from semhash_spark.config import load_config
    from semhash_spark.index.reindex import reindex_corpus

    cfg = load_config(None, ["model.hidden=[32]", "index.address_bits=8", "index.partition_bits=3"]).with_bits(16)
    words, doc_freq, n_train = ds.read_vocab(small_dataset)
    model = _model(tmp_path / "model", words, doc_freq, n_train, seed=3, cfg=cfg)
    index = str(tmp_path / "index")
    reads, read_bytes = [], store.read_bytes

    def counted(uri):  # the real read, counted
        reads.append(uri)
        return read_bytes(uri)

    monkeypatch.setattr(store, "read_bytes", counted)
    first = reindex_corpus(spark, "jsonl", str(small_corpus), model, index, cfg)
    assert sum(u.endswith(WEIGHTS) for u in reads) == 1
    monkeypatch.undo()
    n = sum(first["prepared"]["kept"].values())
    assert first["published"] and first["added"] == n == 560 and first["prepared"]["records_read"] == 563
    assert sum(first["prepared"]["quarantined"].values()) == 3
    bad = pq.read_table(first["quarantine"]).to_pylist()
    assert len(bad) == 3 and all(r["reason"] for r in bad)
    assert reindex_corpus(spark, "jsonl", str(small_corpus), model, index, cfg)["published"] is False

    lines = small_corpus.read_text().splitlines()
    edited = json.loads(lines[0])
    edited["text"] += "\nmore words about the space shuttle launch"
    tonight = tmp_path / "tonight.jsonl"
    tonight.write_text("\n".join([json.dumps(edited)] + lines[1:]) + "\n")
    run = reindex_corpus(spark, "jsonl", str(tonight), model, index, cfg)
    assert (run["added"], run["changed"], run["deleted"], run["unchanged"]) == (0, 1, 0, n - 1)


def _s3_rows(index_uri: str, version: str) -> dict[str, dict]:
    """id -> {code, address, hash, partition} read straight from the version's files on the store."""
    out = {}
    for p in ix.read_manifest(index_uri, version)["partitions"]:
        for f in p["files"]:
            blob = store.read_bytes(store.join(ix.version_prefix(index_uri, version), f["path"]))
            for r in pq.read_table(pa.BufferReader(blob)).to_pylist():
                out[r["id"]] = {
                    "code": r["code"],
                    "address": r["address"],
                    "hash": r["content_hash"],
                    "part": p["partition"],
                }
    return out


def _expected_addresses(data_dir: str, model_uri: str, bits: int) -> dict[str, int]:
    from semhash_spark import codes as C
    from semhash_spark.models.checkpoint import load_model

    hasher = load_model(model_uri)
    out = {}
    for split in ds.SPLITS:
        s = ds.read_split(data_dir, split, columns=("id", "counts"))
        out.update(zip(s.ids, (int(a) for a in C.prefix(hasher.codes_from_csr(s.counts), bits))))
    return out


def test_reindex_keeps_the_address_model_on_s3(spark, env, s3_server, tmp_path):
    """An index encoded with an 8-bit address model: the nightly run re-encodes the changed documents with the
    version's own two models, keeps the carried rows' addresses, partitions by the address code, copies the
    address model into the new version; a new address model rebuilds everything."""
    from semhash_spark.index.encode import encode_to_index

    words, doc_freq, n_train = ds.read_vocab(env["base"])
    addr_a = _model(tmp_path / "addr_a", words, doc_freq, n_train, 3, env["cfg"], bits=8)
    addr_b = _model(tmp_path / "addr_b", words, doc_freq, n_train, 4, env["cfg"], bits=8)
    index = "s3://semhash/reindex-address/index"
    store.ensure_bucket("semhash")
    first = encode_to_index(spark, env["model_a"], env["base"], index, env["cfg"], address_model_uri=addr_a)
    assert first["address_bits"] == 8 and first["address_model_version"]
    before = _s3_rows(index, first["version"])

    run = reindex(spark, env["tonight"], env["model_a"], index, env["cfg"])
    assert run["published"] and not run["full"], run
    assert (run["added"], run["changed"], run["deleted"]) == (len(ADD), len(CHANGE), len(DELETE))
    assert run["address_model_version"] == first["address_model_version"]
    m = ix.read_manifest(index, run["version"])
    assert m["address_bits"] == 8 and m["partition_bits"] == 3
    assert m["address_model"]["version"] == first["address_model_version"] and m["address_model"]["bits"] == 8
    assert store.exists(store.join(ix.version_prefix(index, run["version"]), "address_model", "model.json"))
    after = _s3_rows(index, run["version"])
    assert {k: v["code"] for k, v in after.items()} == _expected_codes(env["tonight"], env["model_a"])
    want = _expected_addresses(env["tonight"], addr_a, 8)
    assert {k: v["address"] for k, v in after.items()} == want
    assert all(v["part"] == f"{v['address'] >> 5:x}" for v in after.values())  # partitioned by the address
    assert all(after[i]["address"] == before[i]["address"] for i in after if i in before and i not in CHANGE)
    assert run["partitions_rewritten"] < len(m["partitions"]) and run["files_copied"] > 0
    opened = ix.HammingIndex.open(index)
    assert opened.load_all().ntotal == N_DOCS - len(DELETE) + len(ADD)

    assert not reindex(spark, env["tonight"], env["model_a"], index, env["cfg"])["published"]
    new = reindex(spark, env["tonight"], env["model_a"], index, env["cfg"], address_model_uri=addr_b)
    assert new["published"] and new["full"] and new["reason"].startswith("address model changed")
    assert {k: v["address"] for k, v in _s3_rows(index, new["version"]).items()} == _expected_addresses(
        env["tonight"], addr_b, 8
    )
