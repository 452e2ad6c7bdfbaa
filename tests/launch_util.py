"""Helpers for the launcher and robustness tests: run `semhash train` as a real command, find and kill ranks."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil

# A tiny document model: seconds per epoch on the small dataset, several epochs so a run can be cut mid-way.
TINY = ["model.hidden=[32]", "pretrain.epochs=2", "finetune.epochs=2", "finetune.val_queries=50"]
LONGER = [
    "model.hidden=[32]",
    "pretrain.epochs=8",
    "finetune.epochs=3",
    "finetune.val_queries=50",
    "finetune.patience=10",
]


def train_command(data, out, *extra: str, sets=TINY, bits: int = 16) -> list[str]:
    cmd = [
        sys.executable,
        "-m",
        "semhash_spark.cli",
        "train",
        "--data",
        str(data),
        "--out",
        str(out),
        "--bits",
        str(bits),
        "--no-progress",
        *extra,
    ]
    for s in sets:
        cmd += ["--set", s]
    return cmd


def start(cmd: list[str], log_path: Path) -> subprocess.Popen:
    """Starts a command in its own process group, output to ``log_path``."""
    env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1", "PYTHONUNBUFFERED": "1"}
    f = open(log_path, "wb")
    return subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def finish(proc: subprocess.Popen, timeout: float) -> int:
    """Waits for a started command; on timeout kills its whole process group and fails the test."""
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(proc)
        raise AssertionError(f"{proc.args[:6]} did not finish within {timeout:.0f} s (hang)") from None


def kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)


def last_json(log_path: Path) -> dict:
    lines = [l for l in log_path.read_text(errors="replace").splitlines() if l.startswith("{")]
    assert lines, log_path.read_text(errors="replace")[-3000:]
    return json.loads(lines[-1])


def rank_processes(root_pid: int, rank_var: str = "HOROVOD_RANK") -> dict[int, psutil.Process]:
    """Descendants of ``root_pid`` that are ranks (their environment sets ``rank_var``), by rank."""
    out = {}
    try:
        procs = psutil.Process(root_pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return out
    for p in procs:
        try:
            env = p.environ()
            if rank_var in env and "python" in os.path.basename(p.exe()):  # not the `sh -c env ...` wrappers
                out.setdefault(int(env[rank_var]), p)
        except (psutil.NoSuchProcess, psutil.AccessDenied, ValueError):
            continue
    return out


def state(out: Path) -> dict | None:
    p = out / "_train_state" / "state.json"
    try:
        return json.loads(p.read_text())
    except (FileNotFoundError, ValueError):
        return None


def wait_for_state(out: Path, proc: subprocess.Popen, pred, timeout: float = 120.0) -> dict:
    """Polls the resumable state until ``pred(state)`` holds (the run must still be going)."""
    t0 = time.time()
    while time.time() - t0 < timeout:
        s = state(out)
        if s is not None and pred(s):
            return s
        assert proc.poll() is None, f"the run ended (rc {proc.returncode}) before the state it waited for"
        time.sleep(0.05)
    raise AssertionError(f"no training state matching the condition within {timeout:.0f} s")


def train_ids_outside_validation(data_dir: Path, val_fraction: float = 0.1) -> int:
    from semhash_spark.data import dataset as ds
    from semhash_spark.training.train import is_validation_id

    ids = ds.read_split(str(data_dir), "train", columns=(ds.ID,)).ids
    return int((~is_validation_id(ids, val_fraction)).sum())


def check_trained(out: Path, data_dir: Path, world_size: int = 2) -> dict:
    """The model is there, rank shards were disjoint and covered the train split, the state is cleaned up."""
    from semhash_spark.models.checkpoint import load_model

    hasher = load_model(str(out))
    m = hasher.meta["metrics"]
    assert m["world_size"] == world_size
    n_train = json.loads((data_dir / "dataset.json").read_text())["counts"]["train"]
    shards = m["shards"]
    assert len(shards["rows_per_rank"]) == world_size and min(shards["rows_per_rank"]) > 0, shards
    assert sum(shards["rows_per_rank"]) == n_train, (shards, n_train)
    assert shards["disjoint"] and shards["covers_train"], shards
    assert not (out / "_train_state").exists()
    assert np.isfinite(m["finetune"][-1]["loss"])
    return m
