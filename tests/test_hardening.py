"""Issue 22's holes, each probed the way an attacker or a careless operator would (docs/operations.md,
"What is guarded"): no code from data, one writer per index, checksummed model files, bad records quarantined,
config ranges, bounded requests."""

from __future__ import annotations

import json
import pickle
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest


# ------------------------------------------------------------------------------------------- no code from data
class _Payload:
    """Unpickling this writes a marker file: what a planted Unischema pickle could do on a training host."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('pwned')",)


def _plant(split_dir, marker) -> None:
    """Writes (or rewrites) ``_common_metadata`` in a split folder with a payload as its Unischema."""
    from petastorm.etl.dataset_metadata import ROW_GROUPS_PER_FILE_KEY, UNISCHEMA_KEY

    common = split_dir / "_common_metadata"
    files = sorted(split_dir.glob("*.parquet"))
    schema = pq.read_schema(common if common.exists() else files[0])
    md = dict(schema.metadata or {})
    if ROW_GROUPS_PER_FILE_KEY not in md:  # what materialize_dataset records beside the Unischema
        md[ROW_GROUPS_PER_FILE_KEY] = json.dumps({f.name: pq.ParquetFile(f).num_row_groups for f in files}).encode()
    md[UNISCHEMA_KEY] = pickle.dumps(_Payload(marker))
    pq.write_metadata(schema.with_metadata(md), common)


def test_planted_pickle_in_a_document_dataset_never_runs(small_dataset, tmp_path):
    from semhash_spark.data import loader as data
    from semhash_spark.data import dataset as ds

    d = tmp_path / "docs"
    shutil.copytree(small_dataset, d)
    marker = tmp_path / "marker"
    _plant(ds.split_dir(d, "train"), marker)
    try:
        n = sum(len(b) for b in data.iter_batches(d, "train", 64, shuffle=False))
    finally:
        assert not marker.exists(), "the dataset's pickle ran"
    assert n == data.count_rows(d, "train") > 0


def test_planted_pickle_in_an_image_dataset_never_runs(spark, tmp_path):
    from petastorm import make_reader

    from semhash_spark.data import loader as data, images
    from semhash_spark.config import ImagesConfig

    rng = np.random.default_rng(0)
    rows = [
        (
            f"img{i}",
            "a" if i % 2 else "b",
            "train" if i < 6 else "test",
            bytearray(rng.integers(0, 256, 48, dtype=np.uint8).tobytes()),
        )
        for i in range(8)
    ]
    df = spark.createDataFrame(rows, "id string, label string, split string, pixels binary")
    images.write_image_dataset(
        spark, df, str(tmp_path / "img"), ImagesConfig(height=4, width=4, channels=3, files_per_split=1), name="planted"
    )
    marker = tmp_path / "marker"
    _plant(tmp_path / "img" / "images" / "split=train", marker)
    try:
        shard = data.read_image_shard(tmp_path / "img", "train")  # the schema comes from dataset.json
    finally:
        assert not marker.exists(), "the dataset's pickle ran"
    assert shard.pixels.shape == (6, 4, 4, 3)
    # Petastorm's own reader, called directly, meets the restricted unpickler: a clear error, no code run.
    with pytest.raises(data.UntrustedSchema, match="builtins.exec"):
        with make_reader(data.image_split_url(tmp_path / "img", "train"), reader_pool_type="dummy") as reader:
            list(reader)
    assert not marker.exists(), "the dataset's pickle ran"


# ------------------------------------------------------------------------------------- one writer per index
def _copy_version_writer(index_uri: str, src_version: str, gate=None):
    """A ``publish_version`` write step: copies ``src_version``'s shards (as a re-index carries partitions)."""
    from semhash_spark.index import published as X
    from semhash_spark.io import store

    manifest = X.read_manifest(index_uri, src_version)

    def write(version: str, vuri: str) -> dict:
        files = []
        for p in manifest["partitions"]:
            for f in p["files"]:
                store.copy_object(
                    store.join(X.version_prefix(index_uri, src_version), f["path"]), store.join(vuri, f["path"])
                )
                files.append({"partition": p["partition"], **f, "columns": manifest["columns"]})
        if gate is not None:
            gate()
        return dict(
            bits=manifest["bits"],
            address_bits=manifest["address_bits"],
            partition_bits=manifest["partition_bits"],
            files=files,
            model={"version": "test"},
        )

    return write


def _model_blobs():
    import torch
    from safetensors.torch import save as st_save

    from semhash_spark.models.checkpoint import META, WEIGHTS
    from service_util import make_model

    model = make_model(300, 32, 7)
    from semhash_spark.models import checkpoint
    from semhash_spark.config import load_config

    tensors = {f"ae.{k}": v.contiguous() for k, v in model.state_dict().items()}
    meta = {
        "format": checkpoint.FORMAT,
        "kind": "documents",
        "sizes": model.sizes,
        "output": model.output,
        "code_mode": model.code_mode,
        "bits": model.bits,
        "threshold": 0.5,
        "config": load_config(None).to_dict(),
        "model_version": checkpoint.weights_version(tensors),
        "vocab": {"words": [f"w{i}" for i in range(300)], "doc_freq": [1] * 300, "num_train_docs": 10},
    }
    del torch
    return {WEIGHTS: st_save(tensors), META: json.dumps(meta).encode()}


def _concurrent_publishers(index_uri: str) -> None:
    import threading

    from semhash_spark.index import published as X
    from test_index import publish_codes, random_codes

    v1 = publish_codes(index_uri, random_codes(32, 200, np.random.default_rng(1)), 32, 3, 12)
    barrier = threading.Barrier(2, timeout=60)
    outcome = {}

    def run(name: str) -> None:
        try:
            m = X.publish_version(index_uri, _copy_version_writer(index_uri, v1, barrier.wait), models={})
            outcome[name] = m["version"]
        except X.ConcurrentPublish as e:
            outcome[name] = e

    threads = [threading.Thread(target=run, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    won = [v for v in outcome.values() if isinstance(v, str)]
    lost = [e for e in outcome.values() if isinstance(e, X.ConcurrentPublish)]
    assert len(won) == 1 and len(lost) == 1, outcome  # never two "published" with one update lost
    assert X.read_current(index_uri)["version"] == won[0]
    assert "another writer" in str(lost[0]) and "run the job again" in str(lost[0])
    assert sorted(X.list_versions(index_uri)) == sorted([v1, won[0]])  # the loser removed its folder


def test_two_concurrent_publishers_on_a_local_index(tmp_path):
    _concurrent_publishers(str(tmp_path / "index"))


def test_two_concurrent_publishers_on_s3(s3_server):
    _concurrent_publishers(s3_server.uri("cas-index"))


def test_publish_fails_when_current_moved_since_the_job_started(tmp_path):
    from semhash_spark.index import published as X
    from test_index import publish_codes, random_codes

    uri = str(tmp_path / "index")
    v1 = publish_codes(uri, random_codes(32, 100, np.random.default_rng(2)), 32, 3, 12)
    other = {}

    def meanwhile():  # another run publishes while this one writes its shards
        other["v"] = publish_codes(uri, random_codes(32, 50, np.random.default_rng(3)), 32, 3, 12)

    with pytest.raises(X.ConcurrentPublish, match=f"moved from {v1} to"):
        X.publish_version(uri, _copy_version_writer(uri, v1, meanwhile), base=v1, models={})
    assert X.read_current(uri)["version"] == other["v"]


# --------------------------------------------------------------------------------- checksummed model files
def _published_with_model(uri: str) -> tuple[str, str]:
    from semhash_spark.index import published as X
    from test_index import publish_codes, random_codes

    v1 = publish_codes(uri, random_codes(32, 120, np.random.default_rng(4)), 32, 3, 12)
    m = X.publish_version(uri, _copy_version_writer(uri, v1), models={"model": _model_blobs()})
    return v1, m["version"]


def _swap_two_words(uri: str, version: str) -> None:
    from semhash_spark.index import published as X
    from semhash_spark.io import store

    meta_uri = store.join(X.version_prefix(uri, version), "model", "model.json")
    meta = json.loads(store.read_bytes(meta_uri))
    w = meta["vocab"]["words"]
    w[3], w[4] = w[4], w[3]
    store.write_bytes(meta_uri, json.dumps(meta).encode())


def test_model_files_are_listed_with_sha256_and_an_edit_is_refused(tmp_path):
    from semhash_spark.index import published as X
    from semhash_spark.index.lookup import Searcher

    uri = str(tmp_path / "index")
    _, v2 = _published_with_model(uri)
    manifest = X.read_manifest(uri, v2)
    assert sorted(f["path"] for f in manifest["model_files"]) == ["model/model.json", "model/model.safetensors"]
    assert Searcher.open(uri).hasher.vocab[3] == "w3"
    _swap_two_words(uri, v2)
    with pytest.raises(X.ChecksumMismatch, match="model/model.json"):
        Searcher.open(uri)
    with pytest.raises(X.ChecksumMismatch, match="model/model.json"):
        X.verify_files(uri, v2, manifest)


def test_the_service_refuses_a_version_whose_model_does_not_verify(s3_server):
    from semhash_spark.index import published as X
    from semhash_spark.service import Settings, build_app, running_server
    from test_service import wait_for

    uri = s3_server.uri("svc-model-sha")
    v1, v2 = _published_with_model(uri)
    _swap_two_words(uri, v2)
    app = build_app(Settings(index_uri=uri, poll_seconds=0.2, log_requests=False))
    with running_server(app) as url:
        wait_for(
            lambda: "model/model.json" in (_http(url, "GET", "/readyz")[1].get("refused") or ""),
            what="the refusal in /readyz",
        )
        status, ready = _http(url, "GET", "/readyz")
        assert status == 503 and ready["version"] is None and "sha256" in ready["refused"]
        assert X.read_current(uri)["version"] == v2


def test_manifest_paths_leaving_the_version_folder_are_refused(tmp_path):
    from semhash_spark.index import published as X
    from semhash_spark.io import store
    from test_index import publish_codes, random_codes

    uri = str(tmp_path / "index")
    v = publish_codes(uri, random_codes(32, 60, np.random.default_rng(5)), 32, 2, 12)
    (tmp_path / "secret.parquet").write_bytes(b"outside")
    good = X.read_manifest(uri, v)
    for bad in ("../../secret.parquet", "/etc/passwd", "part=0/../../../secret.parquet", "s3://other/x"):
        m = json.loads(json.dumps(good))
        m["partitions"][0]["files"][0]["path"] = bad
        store.write_json(X.manifest_uri(uri, v), m)
        with pytest.raises(X.IndexFormatError, match="leaves the version folder"):
            X.HammingIndex.open(uri)


def test_rollback_restores_a_deleted_current(tmp_path, capsys):
    from semhash_spark.index import published as X
    from semhash_spark.cli import main
    from test_index import publish_codes, random_codes

    uri = str(tmp_path / "index")
    v1 = publish_codes(uri, random_codes(32, 60, np.random.default_rng(6)), 32, 2, 12)
    (tmp_path / "index" / "CURRENT").unlink()
    assert main(["rollback", "--index", uri, "--previous"]) == 1
    assert "--version" in capsys.readouterr().err
    assert main(["rollback", "--index", uri, "--version", v1]) == 0
    assert X.read_current(uri)["version"] == v1


# --------------------------------------------------------------------------------------- smaller guards
def test_crafted_sizes_in_model_json_are_refused_before_allocating(tmp_path):
    from semhash_spark.models import checkpoint

    blobs = _model_blobs()
    d = tmp_path / "model"
    d.mkdir()
    (d / "model.safetensors").write_bytes(blobs["model.safetensors"])
    meta = json.loads(blobs["model.json"])
    meta["sizes"] = [2_000_000_000, 1_000_000, 32]  # ~8 PB of float32 if allocated
    (d / "model.json").write_text(json.dumps(meta))
    with pytest.raises(checkpoint.CheckpointError, match="sizes"):
        checkpoint.load_model(str(d))
    meta["sizes"] = [300, 0, 32]
    (d / "model.json").write_text(json.dumps(meta))
    with pytest.raises(checkpoint.CheckpointError, match="positive integers"):
        checkpoint.load_model(str(d))


@pytest.mark.parametrize(
    "override,key",
    [
        ("model.bits=0", "model.bits"),
        ("model.bits=-3", "model.bits"),
        ("pretrain.epochs=-1", "pretrain.epochs"),
        ("model.hidden=[0]", "model.hidden"),
        ("finetune.val_fraction=1.5", "finetune.val_fraction"),
        ("index.partition_bits=30", "index.partition_bits"),
    ],
)
def test_config_values_are_range_checked_at_load(override, key):
    from semhash_spark.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(None, [override])


def test_bits_zero_on_the_command_line_is_refused(tmp_path, capsys):
    from semhash_spark.cli import main

    code = main(["train", "--data", str(tmp_path / "nothing"), "--out", str(tmp_path / "m"), "--bits", "0"])
    assert code == 1 and "model.bits must be positive" in capsys.readouterr().err


def test_entrypoint_refuses_to_bind_all_interfaces_without_a_token(tmp_path):
    import os
    import subprocess
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "infra" / "service" / "entrypoint.sh"
    env = {"PATH": os.environ["PATH"], "SEMHASH_INDEX": "s3://bucket/index"}
    r = subprocess.run(["sh", str(script)], env=env, capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "without a token" in r.stderr


def test_token_file_keeps_the_token_off_the_command_line(tmp_path):
    import argparse

    from semhash_spark.service.app import add_serve_arguments, settings_from_args

    f = tmp_path / "token"
    f.write_text("s3cret\n")
    args = add_serve_arguments(argparse.ArgumentParser()).parse_args(["--index", "x", "--token-file", str(f)])
    assert settings_from_args(args).token == "s3cret"


# --------------------------------------------------------------------------------- bad records quarantined
def test_a_deeply_nested_or_unencodable_line_is_quarantined_not_fatal(spark, small_corpus, tmp_path):
    from semhash_spark.data import dataset as ds
    from semhash_spark.config import PrepareConfig
    from semhash_spark.data.prepare import prepare_dataset

    corpus = tmp_path / "nightly.jsonl"
    lines = small_corpus.read_text().splitlines()
    good = len(lines)
    lines.append('{"id": "deep", "text": "x", "labels": ' + "[" * 100_000 + "]" * 100_000 + "}")
    lines.append('{"id": "surrogate", "text": "broken \\ud800 text", "labels": ["x"]}')
    corpus.write_text("\n".join(lines) + "\n")
    report = prepare_dataset(
        spark, "jsonl", str(corpus), str(tmp_path / "out"), PrepareConfig(vocab_size=500, files_per_split=2)
    )
    assert report["records_read"] == good + 2
    assert report["quarantined"]["unreadable record"] == 2
    q = [
        r for r in pq.read_table(tmp_path / "out" / ds.QUARANTINE_DIR).to_pylist() if r["reason"] == "unreadable record"
    ]
    assert sorted(r["source"] for r in q) == [f"nightly.jsonl:{good + 1}", f"nightly.jsonl:{good + 2}"]


# ------------------------------------------------------------------------------------------ bounded requests
@pytest.fixture(scope="module")
def guarded(tmp_path_factory):
    """A document index on a local path served with a token and a 256 KiB body limit."""
    from semhash_spark.client import SemhashClient
    from semhash_spark.service import Settings, build_app, running_server
    from service_util import build_index
    from test_service import wait_for

    uri = str(tmp_path_factory.mktemp("guarded") / "index")
    info = build_index(uri, n=2000, bits=32, address_bits=16, partition_bits=4)
    app = build_app(
        Settings(index_uri=uri, token="s3cret", max_body_bytes=256 << 10, poll_seconds=0.5, log_requests=False)
    )
    with running_server(app) as url:
        c = SemhashClient(url, token="s3cret", timeout=300)  # 10,000 queries on a shared 2-core machine
        # the first version took over 20 s to load in `make test-fast` while other work shared the 2 cores
        wait_for(lambda: c.ready()["status"] == "ok", timeout=180, what="first version")
        info.update(url=url, client=c)
        yield info


def _raw_post(url: str, headers: dict, body_prefix: bytes, timeout: float = 5.0) -> tuple[int, dict]:
    """Sends the headers and only the first bytes of a body, then reads the answer (the rest is never sent)."""
    import http.client
    from urllib.parse import urlparse

    u = urlparse(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
    conn.putrequest("POST", "/search")
    for k, v in headers.items():
        conn.putheader(k, v)
    conn.endheaders()
    conn.send(body_prefix)
    r = conn.getresponse()
    out = r.status, json.loads(r.read() or b"{}")
    conn.close()
    return out


def _http(url: str, method: str, path: str, body=None, headers: dict | None = None, timeout: float = 30.0):
    """(status, JSON or text) of one request; an iterable body goes out chunked (no Content-Length)."""
    import http.client
    from urllib.parse import urlparse

    u = urlparse(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
    headers = dict(headers or {})
    if isinstance(body, (dict, list)):
        body = json.dumps(body).encode()
        headers.setdefault("Content-Type", "application/json")
    chunked = body is not None and not isinstance(body, (bytes, str))
    conn.request(method, path, body=body, headers=headers, encode_chunked=chunked)
    r = conn.getresponse()
    raw = r.read()
    conn.close()
    try:
        return r.status, json.loads(raw)
    except ValueError:
        return r.status, raw.decode("utf-8", "replace")


def test_an_unauthenticated_large_body_is_refused_before_it_is_read(guarded):
    big = 200 << 20  # announced, never sent: answered after 64 KiB
    status, body = _raw_post(
        guarded["url"], {"Content-Type": "application/json", "Content-Length": str(big)}, b"{" + b" " * (64 << 10)
    )
    assert status == 401 and "bearer" in body["detail"]
    status, _ = _raw_post(
        guarded["url"],
        {"Content-Type": "application/json", "Content-Length": str(big), "Authorization": "Bearer wrong"},
        b"{" + b" " * (64 << 10),
    )
    assert status == 403


def test_a_body_over_the_limit_is_refused_while_it_arrives(guarded):
    auth = {"Authorization": "Bearer s3cret", "Content-Type": "application/json"}
    status, body = _raw_post(guarded["url"], {**auth, "Content-Length": str(300 << 10)}, b"{")
    assert status == 413 and "max_body_bytes=262144" in body["detail"]

    def chunks():  # no Content-Length: counted as it arrives
        yield b'{"texts": ["'
        for _ in range(64):
            yield b"a" * (16 << 10)
        yield b'"], "k": 1}'

    status, body = _http(guarded["url"], "POST", "/search", chunks(), {**auth, "Transfer-Encoding": "chunked"})
    assert status == 413 and "max_body_bytes" in body["detail"], body
    assert guarded["client"].search(codes=["00000000"], k=1)["version"] == guarded["version"]  # still serving


def _png_header_bomb(width: int, height: int) -> bytes:
    """A small PNG whose header claims width x height pixels (what a decompression bomb looks like to Pillow)."""
    import io
    import struct
    import zlib

    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (8, 8)).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    ihdr = data.index(b"IHDR")
    data[ihdr + 4 : ihdr + 12] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[ihdr : ihdr + 17])) & 0xFFFFFFFF
    data[ihdr + 17 : ihdr + 21] = struct.pack(">I", crc)
    return bytes(data)


def test_an_image_of_too_many_pixels_is_refused_before_decoding(guarded):
    import base64

    bomb = base64.b64encode(_png_header_bomb(12_000, 12_000)).decode()
    status, body = _http(
        guarded["url"], "POST", "/search", {"images": [bomb], "k": 1}, {"Authorization": "Bearer s3cret"}
    )
    assert status == 413 and "max_image_pixels" in body["detail"]


def test_work_per_request_is_bounded_and_ordinary_bulk_use_admitted(guarded):
    codes = [f"{i * 2654435761 % (1 << 32):08x}" for i in range(10_000)]
    out = guarded["client"].search(codes=codes, k=10)  # 10,000 codes at k = 10: legitimate
    assert len(out["results"]) == 10_000 and all(len(r) == 10 for r in out["results"])
    auth = {"Authorization": "Bearer s3cret"}
    status, body = _http(guarded["url"], "POST", "/search", {"codes": codes[:1000], "k": 1000}, auth)
    assert status == 413 and "max_work=100000" in body["detail"]
    status, body = _http(guarded["url"], "POST", "/search", {"texts": ["word " * 30_000], "k": 1}, auth)
    assert status == 422 and "max_text_chars" in body["detail"]


def test_the_api_page_loads_nothing_from_outside(guarded):
    import re

    status, page = _http(guarded["url"], "GET", "/docs")
    assert status == 200 and "swagger-ui-bundle.js" in page
    assert not re.findall(r"""(?:src|href)=["']?https?://""", page), page[:500]
    for asset in re.findall(r"""(?:src|href)=["']([^"']+\.(?:js|css))["']""", page):
        assert _http(guarded["url"], "GET", asset)[0] == 200, asset


def test_two_reindex_runs_at_once_one_publishes_the_other_fails(spark, tmp_path):
    """The second `semhash reindex` to finish must not overwrite the first's CURRENT with a version built on the
    old base (issue 22: both said "published": true and one run's documents were gone)."""
    from semhash_spark.index import published as X
    from semhash_spark.config import load_config
    from semhash_spark.index.reindex import reindex
    from test_reindex import ADD, N_DOCS, _model, _tonight, _write_dataset
    from semhash_spark.data import dataset as ds

    _write_dataset(tmp_path / "base", N_DOCS, 100)
    tonight = str(_tonight(tmp_path / "base", tmp_path / "tonight"))
    cfg = load_config(None, ["model.hidden=[32]", "index.address_bits=8", "index.partition_bits=3"]).with_bits(16)
    model = _model(tmp_path / "model", *ds.read_vocab(tmp_path / "base"), 1, cfg)
    index = str(tmp_path / "index")
    first = reindex(spark, str(tmp_path / "base"), model, index, cfg)
    other = {}

    def the_other_run_finishes_first(stage):
        if stage == "diffed" and not other:
            other["run"] = reindex(spark, tonight, model, index, cfg)

    with pytest.raises(X.ConcurrentPublish, match=f"moved from {first['version']}"):
        reindex(spark, tonight, model, index, cfg, hook=the_other_run_finishes_first)
    assert other["run"]["published"] and X.read_current(index)["version"] == other["run"]["version"]
    ids = set(X.HammingIndex.open(index).load_all().ids_of(np.arange(N_DOCS - 5 + len(ADD))))
    assert set(ADD) <= ids
