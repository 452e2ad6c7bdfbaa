"""Each launcher runs two real ranks on the small dataset: they train one model, each reads its own shard (the
shards are disjoint and cover the train split) and rank 0 alone writes checkpoints."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from launch_util import (
    TINY,
    check_trained,
    finish,
    kill_group,
    last_json,
    rank_processes,
    start,
    train_command,
    wait_for_state,
)
from semhash_spark.config import load_config
from semhash_spark.training.fit import train_model
from test_images import PER_CLASS_TRAIN, small_cifar, small_image_data  # noqa: F401 - the tiny image dataset

ROOT = Path(__file__).resolve().parents[1]
TINY_IMAGES = [
    "model.hidden=[32]",
    "pretrain.epochs=1",
    "finetune.epochs=1",
    "finetune.val_fraction=0.2",
    "finetune.val_queries=50",
]


def _check_image_model(out: Path, world_size: int) -> dict:
    """An image model trained by ``world_size`` ranks on their own shards, the resumable state cleaned up."""
    meta = json.loads((out / "model.json").read_text())
    assert meta["kind"] == "images" and meta["bits"] == 16 and meta["metrics"]["world_size"] == world_size
    rows = meta["metrics"]["pretrain"][0]["rows_per_rank"]  # each rank's rows, averaged over the ranks
    assert 0 < world_size * rows <= 10 * PER_CLASS_TRAIN, rows
    assert not (out / "_train_state").exists()
    return meta


@pytest.mark.slow
def test_horovodrun_launcher_reruns_the_command_under_horovodrun(small_dataset, tmp_path):
    """`semhash train --launcher horovodrun --np 2` execs horovodrun, whose two copies of the command are ranks."""
    out = tmp_path / "model"
    proc = start(
        train_command(small_dataset, out, "--launcher", "horovodrun", "--np", "2", sets=[*TINY, "pretrain.epochs=4"]),
        tmp_path / "log",
    )
    try:
        seen = {}
        s = wait_for_state(out, proc, lambda s: s["progress"]["epoch"] >= 1)
        seen = rank_processes(proc.pid)
        assert sorted(seen) == [0, 1], seen  # two ranks, started by horovodrun
        rc = finish(proc, 240)
    finally:
        if proc.poll() is None:
            kill_group(proc)
    log = (tmp_path / "log").read_text(errors="replace")
    assert rc == 0, log[-3000:]
    assert s["saved_by_rank"] == 0 and s["pid"] == seen[0].pid  # the checkpoint came from rank 0's process
    summary = last_json(tmp_path / "log")
    assert summary["world_size"] == 2 and summary["model"] == str(out)
    check_trained(out, small_dataset)


@pytest.mark.slow
def test_spark_launcher_runs_ranks_in_spark_tasks(spark, small_dataset, tmp_path):
    cfg = load_config(None, TINY).with_bits(16)
    out = tmp_path / "model"
    result = train_model(str(small_dataset), str(out), cfg, np=2, launcher="spark", progress=False)
    assert result["world_size"] == 2
    m = check_trained(out, small_dataset)
    # linear learning-rate scaling: the run reports the world size it scaled by
    assert m["world_size"] == 2


@pytest.mark.slow
def test_torch_distributor_launcher_trains_without_horovod(spark, small_dataset, tmp_path):
    cfg = load_config(None, TINY).with_bits(16)
    out = tmp_path / "model"
    result = train_model(str(small_dataset), str(out), cfg, np=2, launcher="torch", progress=False)
    assert result["world_size"] == 2
    check_trained(out, small_dataset)


def test_the_torch_path_never_imports_horovod():
    import subprocess
    import sys

    code = (
        "import sys, semhash_spark.training.fit, semhash_spark.training.torch_dist, semhash_spark.training.train; "
        "assert not any(m == 'horovod' or m.startswith('horovod.') for m in sys.modules), "
        "[m for m in sys.modules if m.startswith('horovod')]"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_unknown_launcher_is_named(small_dataset, tmp_path):
    cfg = load_config(None, TINY).with_bits(16)
    with pytest.raises(ValueError, match="'mpi'"):
        train_model(str(small_dataset), str(tmp_path / "m"), cfg, np=2, launcher="mpi")


@pytest.mark.slow
def test_spark_submit_train_job_on_an_image_dataset(small_image_data, tmp_path):
    """`spark-submit jobs/train.py --data IMAGES` (the job's default launcher: horovod.spark.run) trains an image
    model with conf/images.yaml, two ranks in Spark tasks."""
    out = tmp_path / "model"
    submit = Path(sys.executable).parent / "spark-submit"
    cmd = [
        str(submit),
        "--master",
        "local[2]",
        "--conf",
        "spark.ui.enabled=false",
        str(ROOT / "jobs" / "train.py"),
        "--data",
        str(small_image_data),
        "--out",
        str(out),
        "--bits",
        "16",
        "--np",
        "2",
        "--no-progress",
    ]
    for s in TINY_IMAGES:
        cmd += ["--set", s]
    env = {
        **os.environ,
        "SPARK_LOCAL_IP": "127.0.0.1",
        "PYSPARK_PYTHON": sys.executable,
        "PYSPARK_DRIVER_PYTHON": sys.executable,
    }
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["world_size"] == 2 and summary["model"] == str(out)
    _check_image_model(out, 2)


@pytest.mark.slow
def test_torch_distributor_launcher_trains_an_image_model(spark, small_image_data, tmp_path):
    conf = ROOT / "conf" / "images.yaml"
    cfg = load_config(conf, TINY_IMAGES).with_bits(16)
    out = tmp_path / "model"
    result = train_model(str(small_image_data), str(out), cfg, np=2, launcher="torch", progress=False)
    assert result["world_size"] == 2 and result["model"] == str(out)
    _check_image_model(out, 2)
