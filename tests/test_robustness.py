"""Training survives kills and bad data: a dead rank fails the job clearly, a restart resumes from the last
checkpoint and ends with the model an uninterrupted run makes; checkpoints are written atomically; empty
documents and a last batch of one row train; NaN stops the run naming the layer and epoch."""

from __future__ import annotations

import json
import os
import signal

import numpy as np
import psutil
import pytest
import scipy.sparse as sp
import torch

from launch_util import (
    LONGER,
    check_trained,
    finish,
    kill_group,
    last_json,
    rank_processes,
    start,
    state,
    train_command,
    wait_for_state,
)
from semhash_spark.data import dataset as ds
from semhash_spark.io import store
from semhash_spark.models.checkpoint import load_model
from semhash_spark.config import load_config
from semhash_spark.training.distributed import Dist
from semhash_spark.training.train import (
    Progress,
    StateError,
    TrainingDiverged,
    _load_state,
    _save_state,
    lr_scale,
    train_stack,
)

KILL_AT = lambda s: s["progress"]["stage"] == "pretrain" and s["progress"]["epoch"] >= 2  # noqa: E731


def _same_weights(a_uri, b_uri):
    a, b = load_model(str(a_uri)), load_model(str(b_uri))
    for (n, p), (_, q) in zip(a.model.named_parameters(), b.model.named_parameters()):
        torch.testing.assert_close(p, q, msg=n)
    assert a.version == b.version


@pytest.fixture(scope="module")
def reference(small_dataset, tmp_path_factory):
    """An uninterrupted two-rank run (horovod.run) of the longer tiny configuration."""
    out = tmp_path_factory.mktemp("reference") / "model"
    log = out.parent / "log"
    proc = start(train_command(small_dataset, out, "--np", "2", sets=LONGER), log)
    assert finish(proc, 300) == 0, log.read_text(errors="replace")[-3000:]
    return out


@pytest.mark.slow
def test_a_killed_rank_fails_the_job_and_the_restart_resumes_to_the_same_model(small_dataset, reference, tmp_path):
    out = tmp_path / "model"
    cmd = train_command(small_dataset, out, "--np", "2", sets=LONGER)
    proc = start(cmd, tmp_path / "log1")
    try:
        wait_for_state(out, proc, KILL_AT)
        ranks = rank_processes(proc.pid)
        assert sorted(ranks) == [0, 1], ranks
        ranks[1].send_signal(signal.SIGKILL)
        rc = finish(proc, 150)  # fails, within the bound: no hang
    finally:
        if proc.poll() is None:
            kill_group(proc)
    log = (tmp_path / "log1").read_text(errors="replace")
    assert rc != 0
    assert "semhash train: error: RankFailed: a rank of the horovod.run job failed" in log, log[-3000:]
    before = state(out)
    assert before["saved_by_rank"] == 0

    proc = start(cmd, tmp_path / "log2")
    assert finish(proc, 300) == 0, (tmp_path / "log2").read_text(errors="replace")[-3000:]
    summary = last_json(tmp_path / "log2")
    p = before["progress"]
    assert summary["resumed_from"] == {"stage": p["stage"], "layer": p["layer"], "epoch": p["epoch"]}
    check_trained(out, small_dataset)
    _same_weights(reference, out)


@pytest.mark.slow
def test_a_killed_driver_takes_its_ranks_down_and_the_restart_resumes(small_dataset, reference, tmp_path):
    out = tmp_path / "model"
    cmd = train_command(small_dataset, out, "--np", "2", sets=LONGER)
    proc = start(cmd, tmp_path / "log1")
    try:
        wait_for_state(out, proc, KILL_AT)
        ranks = rank_processes(proc.pid)
        assert sorted(ranks) == [0, 1], ranks
        os.kill(proc.pid, signal.SIGKILL)  # the driver alone
        proc.wait(timeout=30)
        gone, alive = psutil.wait_procs(list(ranks.values()), timeout=60)
        assert not alive, f"ranks outlived their driver: {alive}"
    finally:
        kill_group(proc)
    before = state(out)
    proc = start(cmd, tmp_path / "log2")
    assert finish(proc, 300) == 0, (tmp_path / "log2").read_text(errors="replace")[-3000:]
    p = before["progress"]
    assert last_json(tmp_path / "log2")["resumed_from"] == {
        "stage": p["stage"],
        "layer": p["layer"],
        "epoch": p["epoch"],
    }
    _same_weights(reference, out)


@pytest.mark.slow
def test_a_killed_torch_rank_fails_the_job_and_the_restart_resumes(small_dataset, tmp_path):
    out = tmp_path / "model"
    cmd = train_command(small_dataset, out, "--launcher", "torch", "--np", "2", sets=LONGER)
    proc = start(cmd, tmp_path / "log1")
    try:
        wait_for_state(out, proc, KILL_AT, timeout=180)
        ranks = rank_processes(proc.pid, "RANK")
        assert sorted(ranks) == [0, 1], ranks
        ranks[1].send_signal(signal.SIGKILL)
        rc = finish(proc, 150)
    finally:
        if proc.poll() is None:
            kill_group(proc)
    log = (tmp_path / "log1").read_text(errors="replace")
    assert rc != 0
    assert "RankFailed: a rank of the TorchDistributor job failed" in log, log[-3000:]
    before = state(out)
    proc = start(cmd, tmp_path / "log2")
    assert finish(proc, 300) == 0, (tmp_path / "log2").read_text(errors="replace")[-3000:]
    p = before["progress"]
    assert last_json(tmp_path / "log2")["resumed_from"] == {
        "stage": p["stage"],
        "layer": p["layer"],
        "epoch": p["epoch"],
    }
    check_trained(out, small_dataset)


# ------------------------------------------------------------------------------------------- atomic state
@pytest.fixture(params=["local", "s3"])
def state_uri(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "model")
    request.getfixturevalue("s3_server")
    store.ensure_bucket("robust")
    return f"s3://robust/{tmp_path.name}/model"


def test_a_kill_between_the_state_writes_leaves_the_previous_state(state_uri, monkeypatch):
    _save_state(state_uri, Progress(epoch=1), {"w": torch.ones(3)}, "fp", {"pretrain": [1]})
    real = store.write_bytes

    def killed_before_commit(uri, data):
        if uri.endswith("state.json"):
            raise KeyboardInterrupt("killed")
        return real(uri, data)

    monkeypatch.setattr(store, "write_bytes", killed_before_commit)
    with pytest.raises(KeyboardInterrupt):
        _save_state(state_uri, Progress(epoch=2), {"w": torch.full((3,), 2.0)}, "fp")
    monkeypatch.undo()
    prog, tensors, metrics = _load_state(state_uri, "fp")
    assert prog.epoch == 1 and metrics == {"pretrain": [1]}
    torch.testing.assert_close(tensors["w"], torch.ones(3))
    # the next save commits and removes the weights of both older saves
    _save_state(state_uri, Progress(epoch=3), {"w": torch.full((3,), 3.0)}, "fp")
    names = store.list_dir(store.join(state_uri, "_train_state"))
    assert len(names) == 2 and "state.json" in names, names
    prog, tensors, _ = _load_state(state_uri, "fp")
    assert prog.epoch == 3 and float(tensors["w"][0]) == 3.0


def test_corrupt_state_weights_are_refused(state_uri):
    _save_state(state_uri, Progress(epoch=1), {"w": torch.ones(3)}, "fp")
    meta = json.loads(store.read_bytes(store.join(state_uri, "_train_state", "state.json")))
    store.write_bytes(store.join(state_uri, "_train_state", meta["weights"]), b"not the weights")
    with pytest.raises(StateError, match="checksum"):
        _load_state(state_uri, "fp")


# ------------------------------------------------------------------------------------------- bad data
def _train_rows(small_dataset):
    train = ds.read_split(str(small_dataset), "train", columns=(ds.ID, "counts"))
    return np.asarray(train.ids, dtype=object), train.counts.tocsr().astype(np.float32)


def _tiny_cfg(*extra):
    return load_config(
        None,
        [
            "model.hidden=[24]",
            "pretrain.epochs=2",
            "finetune.epochs=2",
            "pretrain.batch_size=50",
            "finetune.batch_size=50",
            *extra,
        ],
    ).with_bits(8)


def test_empty_documents_and_a_last_batch_of_one_row_train(small_dataset, tmp_path):
    ids, counts = _train_rows(small_dataset)
    meta = json.loads((small_dataset / "dataset.json").read_text())
    assert meta["counts"]["quarantined"] > 0  # the corpus had bad records; prepare set them aside
    # 3 documents with no in-vocabulary word, and a row count that leaves one row for the last batch
    n = (len(ids) // 50) * 50 - 50 + 1 - 3
    ids = np.concatenate([ids[:n], np.array(["empty-1", "empty-2", "empty-3"], dtype=object)])
    counts = sp.vstack([counts[:n], sp.csr_matrix((3, counts.shape[1]), dtype=np.float32)], format="csr")
    assert len(ids) % 50 == 1
    sizes_seen = []

    def source(epoch, batch_size):
        for s in range(0, len(ids), batch_size):
            sizes_seen.append(min(batch_size, len(ids) - s))
            yield ids[s : s + batch_size], counts[s : s + batch_size]

    cfg = _tiny_cfg()
    model, metrics = train_stack(
        source,
        cfg,
        sizes=[counts.shape[1], 24, 8],
        first_kind="constrained_poisson",
        output="softmax",
        code_mode="noise",
        dist=Dist(),
        out_uri=str(tmp_path / "m"),
        fingerprint="x",
        progress_bar=False,
    )
    assert 1 in sizes_seen
    assert all(np.isfinite(r["recon_error"]) for r in metrics["pretrain"])
    assert all(np.isfinite(r["loss"]) for r in metrics["finetune"])
    with torch.no_grad():
        probs = model.encode(torch.from_numpy(counts[-3:].toarray()))
    assert torch.isfinite(probs).all()


@pytest.mark.parametrize(
    "bad_epoch, message",
    [
        (1, r"pretraining layer 1 \(\d+x24\), epoch 2: reconstruction error is nan"),
        (10_001, r"fine-tuning, epoch 2: reconstruction error is nan"),
    ],
)
def test_nan_stops_training_naming_the_layer_and_epoch(small_dataset, tmp_path, bad_epoch, message):
    ids, counts = _train_rows(small_dataset)

    def source(epoch, batch_size):
        for s in range(0, len(ids), batch_size):
            c = counts[s : s + batch_size].copy()
            if epoch == bad_epoch:
                c.data[:] = np.nan  # a corrupt batch (or a diverging layer) gives NaN
            yield ids[s : s + batch_size], c

    with pytest.raises(TrainingDiverged, match=message):
        train_stack(
            source,
            _tiny_cfg(),
            sizes=[counts.shape[1], 24, 8],
            first_kind="constrained_poisson",
            output="softmax",
            code_mode="noise",
            dist=Dist(),
            out_uri=str(tmp_path / "m"),
            fingerprint="x",
            progress_bar=False,
        )


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_training_moves_to_cuda_with_batches_densified_on_the_device(small_dataset, tmp_path):
    from semhash_spark.training.distributed import device_for
    from semhash_spark.training.train import densify

    device = device_for(Dist(), "auto")
    assert device.type == "cuda"
    ids, counts = _train_rows(small_dataset)
    x = densify(counts[:7], device)
    assert x.device.type == "cuda" and torch.equal(x.cpu(), torch.from_numpy(counts[:7].toarray()))

    def source(epoch, batch_size):
        for s in range(0, len(ids), batch_size):
            yield ids[s : s + batch_size], counts[s : s + batch_size]

    model, metrics = train_stack(
        source,
        _tiny_cfg(),
        sizes=[counts.shape[1], 24, 8],
        first_kind="constrained_poisson",
        output="softmax",
        code_mode="noise",
        dist=Dist(),
        out_uri=str(tmp_path / "m"),
        fingerprint="x",
        device=device,
        progress_bar=False,
    )
    assert all(np.isfinite(r["loss"]) for r in metrics["finetune"])


def test_learning_rates_scale_with_the_world_size_as_configured():
    assert [lr_scale(m, 4) for m in ("linear", "sqrt", "none")] == [4.0, 2.0, 1.0]
    with pytest.raises(ValueError, match="'cubic'"):
        lr_scale("cubic", 2)
