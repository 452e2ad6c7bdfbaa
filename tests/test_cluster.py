"""The prepare, encode and dedup jobs on a real Spark standalone cluster (a master and two workers on loopback,
started from the installed pyspark), submitted through infra/submit/submit.sh against the local S3 server: their
output equals the local-mode output of the same commands, and a failing job exits non-zero with its reason.

The workers share nothing with the driver but S3: prepare reads its source from S3 and the executors write the
dataset there; encode reads an s3:// dataset (documents and images) through the executors."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from semhash_spark.data import dataset as ds
from semhash_spark.index import published as ix
from semhash_spark.io import store
from semhash_spark.cli import main
from test_prepare import tiny_cifar  # noqa: F401 - the fixture: real CIFAR-10 images in class folders

ROOT = Path(__file__).resolve().parents[1]
SUBMIT = ROOT / "infra" / "submit" / "submit.sh"
BUCKET = "semhash"
PREFIX = f"s3://{BUCKET}/cluster-test"
ENCODE_SETS = ["--set", "index.address_bits=10", "--set", "index.partition_bits=3"]
DEDUP_ARGS = ["--radius", "1", "--verify", "cosine:0.2"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spark_home() -> str:
    import pyspark

    return os.path.dirname(os.path.abspath(pyspark.__file__))


def _master_state(ui_port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{ui_port}/json/", timeout=5) as r:
        return json.loads(r.read())


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A standalone master and two 1-core / 1 GiB workers; every process is killed (its group) at the end."""
    home = _spark_home()
    work = tmp_path_factory.mktemp("standalone")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}  # executors get S3 from the job
    env.update(
        SPARK_HOME=home,
        SPARK_LOCAL_IP="127.0.0.1",
        PYSPARK_PYTHON=sys.executable,
        SPARK_LOCAL_DIRS=str(work / "local"),
        SPARK_LOG_DIR=str(work / "logs"),
        SPARK_NO_DAEMONIZE="1",
    )
    port, ui = _free_port(), _free_port()
    url = f"spark://127.0.0.1:{port}"
    procs: list[subprocess.Popen] = []

    def start(name: str, *args: str) -> None:
        log = open(work / f"{name}.log", "wb")
        procs.append(
            subprocess.Popen(
                [f"{home}/bin/spark-class", *args],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        )
        log.close()

    try:
        start(
            "master",
            "org.apache.spark.deploy.master.Master",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--webui-port",
            str(ui),
        )
        for i in (1, 2):
            (work / f"worker{i}").mkdir()
            start(
                f"worker{i}",
                "org.apache.spark.deploy.worker.Worker",
                url,
                "--host",
                "127.0.0.1",
                "--webui-port",
                str(_free_port()),
                "--cores",
                "1",
                "--memory",
                "1g",
                "--work-dir",
                str(work / f"worker{i}"),
            )
        deadline = time.time() + 180
        while True:
            dead = [p.args[1] for p in procs if p.poll() is not None]
            if dead:
                raise RuntimeError(f"{dead} exited; see {work}/*.log")
            try:
                if len(_master_state(ui).get("workers", [])) >= 2 and all(
                    w["state"] == "ALIVE" for w in _master_state(ui)["workers"]
                ):
                    break
            except OSError:
                pass
            if time.time() > deadline:
                raise RuntimeError(f"the standalone cluster did not come up in 180 s; see {work}/*.log")
            time.sleep(1)
        yield {"url": url, "ui": ui, "work": work}
    finally:
        for p in procs:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()


def _submit(cluster, job: str, *args: str) -> subprocess.CompletedProcess:
    """``infra/submit/submit.sh standalone JOB ARGS`` with small executors and the S3 server's settings."""
    env = dict(os.environ)  # AWS_* of the S3 server, set by the s3_server fixture
    env.update(
        SPARK_HOME=_spark_home(),
        SPARK_MASTER_URL=cluster["url"],
        SPARK_LOCAL_IP="127.0.0.1",
        SEMHASH_PYTHON=sys.executable,
        SEMHASH_DRIVER_MEMORY="1g",
        SEMHASH_EXECUTOR_MEMORY="512m",
        SEMHASH_EXECUTOR_CORES="1",
        SEMHASH_EXECUTOR_OVERHEAD="256m",
        SEMHASH_MAX_CORES="2",
        SEMHASH_SHUFFLE_PARTITIONS="4",
        SEMHASH_PROGRESS_SECONDS="1",
    )
    env.pop("SEMHASH_UNDER_SUBMIT", None)
    env.pop("PYSPARK_PYTHON", None)  # the profile's spark.pyspark.python decides
    return subprocess.run(
        ["bash", str(SUBMIT), "standalone", job, *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=600
    )


def _summary(proc: subprocess.CompletedProcess) -> dict:
    """The JSON summary: the last line of stdout (spark-submit merges the Python driver's stderr into stdout, so
    the job's log lines come before it there)."""
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _local(capsys, *argv: str) -> dict:
    code = main(list(argv))
    out = capsys.readouterr()
    assert code == 0, out.err[-2000:]
    return json.loads(out.out.strip().splitlines()[-1])


def _shards(index_uri: str) -> tuple[dict, dict[str, tuple[bytes, str]]]:
    """The current manifest and id -> (code, partition), read from the files without Spark."""
    version = ix.read_current(index_uri)["version"]
    manifest = ix.read_manifest(index_uri, version)
    rows = {}
    for p in manifest["partitions"]:
        for f in p["files"]:
            t = pq.read_table(
                io.BytesIO(store.read_bytes(store.join(ix.version_prefix(index_uri, version), f["path"])))
            )
            for i, c in zip(t.column("id").to_pylist(), t.column("code").to_pylist()):
                assert i not in rows
                rows[i] = (c, p["partition"])
    return manifest, rows


def _parquet_rows(uri: str) -> list[dict]:
    rows = []
    for key, _ in store.list_prefix(uri):
        if key.endswith(".parquet"):
            rows += pq.read_table(io.BytesIO(store.read_bytes(store.join(uri, key)))).to_pylist()
    return rows


def _random_model(out: Path, data_dir: Path) -> str:
    """A 16-bit model with random weights over the dataset's vocabulary (encoding needs no training)."""
    import torch

    from semhash_spark.models.checkpoint import save_model
    from semhash_spark.config import load_config
    from semhash_spark.models.autoencoder import DeepAutoencoder

    words, doc_freq, n_train = ds.read_vocab(data_dir)
    cfg = load_config(None, ["model.hidden=[32]"]).with_bits(16)
    torch.manual_seed(7)
    ae = DeepAutoencoder([len(words), 32, 16])
    with torch.no_grad():  # large weights: codes spread over the partitions
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


@pytest.mark.slow
def test_encode_and_dedup_on_a_standalone_cluster_equal_local_mode(
    spark, s3_server, small_dataset, cluster, tmp_path, capsys
):
    store.ensure_bucket(BUCKET)
    data, model = f"{PREFIX}/data", f"{PREFIX}/model"
    store.upload_dir(small_dataset, data)
    store.upload_dir(_random_model(tmp_path / "model", Path(small_dataset)), model)

    # encode: local mode in this process, then the same command submitted to the cluster
    local = _local(capsys, "encode", "--model", model, "--data", data, "--index", f"{PREFIX}/index-local", *ENCODE_SETS)
    proc = _submit(
        cluster, "encode", "--model", model, "--data", data, "--index", f"{PREFIX}/index-cluster", *ENCODE_SETS
    )
    remote = _summary(proc)
    assert remote["command"] == "encode" and remote["count"] == local["count"] == 560
    assert re.search(r"stage \d+ \(.*\): \d+/\d+ tasks", proc.stdout), proc.stdout[-3000:]  # progress lines
    assert re.search(r"wrote \d+ shard files: \d+ partitions", proc.stdout)
    m_local, rows_local = _shards(f"{PREFIX}/index-local")
    m_remote, rows_remote = _shards(f"{PREFIX}/index-cluster")
    assert rows_remote == rows_local  # same code and partition for every id
    assert [(p["partition"], p["rows"]) for p in m_remote["partitions"]] == [
        (p["partition"], p["rows"]) for p in m_local["partitions"]
    ]
    assert len(m_local["partitions"]) > 1
    for key in ("count", "bits", "address_bits", "partition_bits", "columns"):
        assert m_remote[key] == m_local[key], key

    # dedup of each index: pairs (with their similarity), clusters and counts agree
    d_local = _local(capsys, "dedup", "--index", f"{PREFIX}/index-local", "--out", f"{PREFIX}/dedup-local", *DEDUP_ARGS)
    d_remote = _summary(
        _submit(cluster, "dedup", "--index", f"{PREFIX}/index-cluster", "--out", f"{PREFIX}/dedup-cluster", *DEDUP_ARGS)
    )
    for key in ("pairs_within_radius", "pairs", "clusters", "clustered_docs", "largest_cluster", "codes"):
        assert d_remote[key] == d_local[key], key
    assert 0 < d_local["pairs"] < d_local["pairs_within_radius"]  # verification kept some, dropped some

    def pairs(uri):
        return sorted((r["id_a"], r["id_b"], r["distance"], round(r["similarity"], 6)) for r in _parquet_rows(uri))

    def clusters(uri):
        return sorted((r["id"], r["cluster"], r["size"]) for r in _parquet_rows(uri))

    assert pairs(f"{PREFIX}/dedup-cluster/pairs") == pairs(f"{PREFIX}/dedup-local/pairs")
    assert len(pairs(f"{PREFIX}/dedup-local/pairs")) == d_local["pairs"]
    assert clusters(f"{PREFIX}/dedup-cluster/clusters") == clusters(f"{PREFIX}/dedup-local/clusters")
    assert store.read_json(f"{PREFIX}/dedup-cluster/summary.json")["pairs"] == d_local["pairs"]

    # the work ran on the cluster: the master lists both applications, and the workers ran their executors
    assert {"semhash-encode", "semhash-dedup"} <= {a["name"] for a in _master_state(cluster["ui"])["completedapps"]}
    assert len(list(cluster["work"].glob("worker*/app-*/*/stderr"))) >= 2


@pytest.mark.slow
def test_prepare_and_image_encode_with_everything_on_s3(s3_server, small_corpus, cluster, tmp_path, capsys, tiny_cifar):  # noqa: F811 - the fixture from test_prepare
    """Documents (one JSONL object) and images (class folders, one prefix per label) prepared on the cluster from
    S3 to S3 equal local mode's; the image dataset the cluster wrote is encoded by the cluster from S3 into the
    codes local mode gives."""
    from test_prepare import _image_rows, _index_codes, _random_image_model, _s3_parquet

    store.ensure_bucket(BUCKET)
    src = f"{PREFIX}/raw/small.jsonl"
    store.upload_file(small_corpus, src)
    sets = ["--set", "prepare.vocab_size=500", "--set", "prepare.files_per_split=4"]
    local = _local(capsys, "prepare", "--dataset", "jsonl", "--source", src, "--out", f"{PREFIX}/prep-local", *sets)
    remote = _summary(
        _submit(cluster, "prepare", "--dataset", "jsonl", "--source", src, "--out", f"{PREFIX}/prep-cluster", *sets)
    )
    for key in ("records_read", "kept", "quarantined", "skipped", "vocab_size", "vocab_fingerprint"):
        assert remote[key] == local[key], key
    assert local["kept"]["train"] > 300
    assert store.read_json(f"{PREFIX}/prep-cluster/vocab.json") == store.read_json(f"{PREFIX}/prep-local/vocab.json")
    for part in ("docs/split=train", "docs/split=test", "quarantine"):
        assert _s3_parquet(f"{PREFIX}/prep-cluster/{part}")[0] == _s3_parquet(f"{PREFIX}/prep-local/{part}")[0], part
    keys = [k for k, _ in store.list_prefix(f"{PREFIX}/prep-cluster")]
    assert "dataset.json" in keys and not [k for k in keys if k.startswith("_")]  # staging removed
    # a source on the driver's disk (client mode): the driver stages its records on S3 for the executors
    from_driver = _summary(
        _submit(
            cluster,
            "prepare",
            "--dataset",
            "jsonl",
            "--source",
            str(small_corpus),
            "--out",
            f"{PREFIX}/prep-cluster-2",
            *sets,
        )
    )
    assert from_driver["kept"] == local["kept"] and from_driver["vocab_fingerprint"] == local["vocab_fingerprint"]
    assert (
        _s3_parquet(f"{PREFIX}/prep-cluster-2/docs/split=test")[0]
        == _s3_parquet(f"{PREFIX}/prep-local/docs/split=test")[0]
    )

    store.upload_dir(tiny_cifar, f"{PREFIX}/raw/images")
    img_sets = ["--config", str(ROOT / "conf" / "images.yaml"), "--set", "images.files_per_split=2"]
    i_local = _local(
        capsys,
        "prepare",
        "--dataset",
        "imagefolder",
        "--source",
        f"{PREFIX}/raw/images",
        "--out",
        f"{PREFIX}/img-local",
        *img_sets,
    )
    i_remote = _summary(
        _submit(
            cluster,
            "prepare",
            "--dataset",
            "imagefolder",
            "--source",
            f"{PREFIX}/raw/images",
            "--out",
            f"{PREFIX}/img-cluster",
            *img_sets,
        )
    )
    assert i_remote["kept"] == i_local["kept"] and i_remote["quarantined"] == i_local["quarantined"]
    assert _image_rows(store.local_copy(f"{PREFIX}/img-cluster")) == _image_rows(
        store.local_copy(f"{PREFIX}/img-local")
    )

    model = f"{PREFIX}/img-model"
    store.upload_dir(_random_image_model(tmp_path / "img-model"), model)
    e_local = _local(
        capsys,
        "encode",
        "--model",
        model,
        "--data",
        f"{PREFIX}/img-local",
        "--index",
        f"{PREFIX}/img-index-local",
        *ENCODE_SETS,
    )
    proc = _submit(
        cluster,
        "encode",
        "--model",
        model,
        "--data",
        f"{PREFIX}/img-cluster",
        "--index",
        f"{PREFIX}/img-index-cluster",
        *ENCODE_SETS,
    )
    e_remote = _summary(proc)
    assert (
        e_remote["kind"] == "images"
        and e_remote["count"] == e_local["count"] == i_local["kept"]["train"] + i_local["kept"]["test"]
    )
    assert "with the executors' S3 client" in proc.stdout  # the executors read the s3:// dataset
    assert _index_codes(f"{PREFIX}/img-index-cluster") == _index_codes(f"{PREFIX}/img-index-local")


@pytest.mark.slow
def test_a_failing_job_exits_non_zero_with_its_reason(s3_server, cluster):
    store.ensure_bucket(BUCKET)
    proc = _submit(
        cluster,
        "encode",
        "--model",
        f"{PREFIX}/no-such-model",
        "--data",
        f"{PREFIX}/data",
        "--index",
        f"{PREFIX}/index-never",
    )
    assert proc.returncode != 0
    lines = proc.stdout.strip().splitlines()  # the Python driver's stderr, merged by spark-submit
    assert lines and lines[-1].startswith("semhash encode: error:"), (proc.stdout + proc.stderr)[-3000:]
    assert "no model at" in lines[-1] and "no-such-model" in lines[-1]
    assert not store.exists(f"{PREFIX}/index-never/CURRENT")
