"""Each launcher runs two real ranks on the small dataset: they train one model, each reads its own shard (the
shards are disjoint and cover the train split) and rank 0 alone writes checkpoints."""
from __future__ import annotations


import pytest

from launch_util import (TINY, check_trained, finish, kill_group, last_json, rank_processes, start, train_command,
                         wait_for_state)
from semhash_spark.config import load_config
from semhash_spark.fit import train_model


@pytest.mark.slow
def test_horovodrun_launcher_reruns_the_command_under_horovodrun(small_dataset, tmp_path):
    """`semhash train --launcher horovodrun --np 2` execs horovodrun, whose two copies of the command are ranks."""
    out = tmp_path / "model"
    proc = start(train_command(small_dataset, out, "--launcher", "horovodrun", "--np", "2",
                               sets=[*TINY, "pretrain.epochs=4"]), tmp_path / "log")
    try:
        seen = {}
        s = wait_for_state(out, proc, lambda s: s["progress"]["epoch"] >= 1)
        seen = rank_processes(proc.pid)
        assert sorted(seen) == [0, 1], seen          # two ranks, started by horovodrun
        rc = finish(proc, 240)
    finally:
        if proc.poll() is None:
            kill_group(proc)
    log = (tmp_path / "log").read_text(errors="replace")
    assert rc == 0, log[-3000:]
    assert s["saved_by_rank"] == 0 and s["pid"] == seen[0].pid     # the checkpoint came from rank 0's process
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

    code = ("import sys, semhash_spark.fit, semhash_spark.torch_dist, semhash_spark.train; "
            "assert not any(m == 'horovod' or m.startswith('horovod.') for m in sys.modules), "
            "[m for m in sys.modules if m.startswith('horovod')]")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_unknown_launcher_is_named(small_dataset, tmp_path):
    cfg = load_config(None, TINY).with_bits(16)
    with pytest.raises(ValueError, match="'mpi'"):
        train_model(str(small_dataset), str(tmp_path / "m"), cfg, np=2, launcher="mpi")
