"""Real Horovod processes (gloo): two ranks train on their own shards and agree on one model."""

from __future__ import annotations

import os
import json

import pytest
import torch

from launch_util import check_trained
from semhash_spark.models.checkpoint import load_model
from semhash_spark.config import load_config
from semhash_spark.training.fit import train_model

TINY = ["model.hidden=[32]", "pretrain.epochs=2", "finetune.epochs=2", "finetune.val_queries=50"]


def _train_killed_in_finetuning(dataset, out, cfg, when) -> None:
    """Trains into ``out`` until the first fine-tuning step at which ``when()`` holds, which raises KeyboardInterrupt
    as a kill would."""
    import semhash_spark.training.train as T

    real = T.finetune_step_async

    def dying(*a, **k):
        if when():
            raise KeyboardInterrupt("killed")
        return real(*a, **k)

    T.finetune_step_async = dying
    try:
        with pytest.raises(KeyboardInterrupt):
            train_model(str(dataset), str(out), cfg, progress=False)
    finally:
        T.finetune_step_async = real


@pytest.mark.slow
def test_two_horovod_processes_train_one_model(small_dataset, tmp_path):
    cfg = load_config(None, TINY).with_bits(16)
    out = tmp_path / "model2"
    result = train_model(str(small_dataset), str(out), cfg, np=2, progress=False)
    assert result["world_size"] == 2
    hasher = load_model(str(out))
    assert hasher.bits == 16
    metrics = hasher.meta["metrics"]
    # Each rank read its own shard: per-rank rows average to about half of the non-validation training rows.
    rows = metrics["pretrain"][0]["rows_per_rank"]
    assert 100 < rows < 300, rows
    assert not (out / "_train_state").exists()  # rank 0 removed its resumable state after the final save
    check_trained(out, small_dataset)  # the two shards were disjoint and covered the train split


@pytest.mark.slow
def test_single_process_resumes_from_checkpoint(small_dataset, tmp_path):
    """A run stopped after pretraining resumes there and ends with the model an uninterrupted run makes."""
    cfg = load_config(None, TINY).with_bits(16)
    full = tmp_path / "full"
    train_model(str(small_dataset), str(full), cfg, progress=False)
    # Interrupted: run pretraining only (0 fine-tune epochs would finish), emulate by saving state at the
    # stage boundary through a run whose fine-tuning raises on its first batch.
    part = tmp_path / "part"
    _train_killed_in_finetuning(small_dataset, part, cfg, lambda: True)
    state = json.loads((part / "_train_state" / "state.json").read_text())
    assert state["progress"]["stage"] == "finetune"
    train_model(str(small_dataset), str(part), cfg, progress=False)
    a, b = load_model(str(full)), load_model(str(part))
    for (n, p), (_, q) in zip(a.model.named_parameters(), b.model.named_parameters()):
        torch.testing.assert_close(p, q, msg=n)


def test_single_process_resumes_mid_finetuning_with_adam_state(small_dataset, tmp_path):
    """Killed in the second fine-tuning epoch, a run resumes from the first one's checkpoint (weights and the fused
    Adam's moments and step count) and ends with the model of an uninterrupted run. Without a validation split the
    model is the last epoch's, so it depends on the restored optimiser state."""
    cfg = load_config(None, [*TINY, "finetune.epochs=3", "finetune.val_fraction=0"]).with_bits(16)
    full = tmp_path / "full"
    train_model(str(small_dataset), str(full), cfg, progress=False)
    part = tmp_path / "part"
    state_file = part / "_train_state" / "state.json"

    def after_first_epoch() -> bool:
        progress = json.loads(state_file.read_text())["progress"] if state_file.exists() else {}
        return progress.get("stage") == "finetune" and progress.get("epoch", 0) >= 1

    _train_killed_in_finetuning(small_dataset, part, cfg, after_first_epoch)
    from safetensors.torch import load_file

    saved = load_file(str(part / "_train_state" / json.loads(state_file.read_text())["weights"]))
    assert any(k.startswith("adam.") and k.endswith(".exp_avg") for k in saved)  # the resume has moments to restore
    train_model(str(small_dataset), str(part), cfg, progress=False)
    a, b = load_model(str(full)), load_model(str(part))
    assert b.meta["metrics"]["resumed_from"]["stage"] == "finetune"
    for (n, p), (_, q) in zip(a.model.named_parameters(), b.model.named_parameters()):
        assert torch.equal(p, q), n


def test_horovod_background_loop_settings_before_init(monkeypatch):
    """horovod.run 0.28.1 exports HOROVOD_CYCLE_TIME / HOROVOD_CACHE_CAPACITY as "(None,)" (read as 0 by the C++
    side: a negotiation loop that never sleeps, no response cache); a rank drops those and, on CPU, negotiates
    every CPU_CYCLE_TIME_MS unless the user chose a cycle time."""
    from semhash_spark.training import distributed as D

    monkeypatch.setattr(D.torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("HOROVOD_CYCLE_TIME", "(None,)")
    monkeypatch.setenv("HOROVOD_CACHE_CAPACITY", "(None,)")
    D._tune_background_loop()
    assert os.environ["HOROVOD_CYCLE_TIME"] == D.CPU_CYCLE_TIME_MS
    assert "HOROVOD_CACHE_CAPACITY" not in os.environ
    monkeypatch.setenv("HOROVOD_CYCLE_TIME", "2.5")
    D._tune_background_loop()
    assert os.environ["HOROVOD_CYCLE_TIME"] == "2.5"
    monkeypatch.delenv("HOROVOD_CYCLE_TIME")
    monkeypatch.setattr(D.torch.cuda, "is_available", lambda: True)
    D._tune_background_loop()
    assert "HOROVOD_CYCLE_TIME" not in os.environ  # GPUs keep Horovod's own default (1 ms)
