"""Training a document model from a prepared dataset: one process, or N Horovod ranks each reading its shard.

``train_model`` is what ``semhash train`` and ``jobs/train.py`` call. Each rank runs :func:`rank_main`: it reads
its Petastorm shard (``cur_shard=rank``, ``shard_count=size``), trains with :func:`train.train_stack`, and rank 0
alone writes checkpoints and the final model.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from typing import Any

import numpy as np
import torch

from . import data as data_mod
from . import dataset as ds
from . import store
from .checkpoint import save_model
from .config import Config, config_from_dict
from .distributed import Dist, current, device_for, run_processes
from .train import STATE_DIR, Validator, is_validation_id, train_stack

log = logging.getLogger(__name__)


def _fingerprint(cfg: Config, vocab_fp: str, counts: dict) -> str:
    blob = json.dumps({"cfg": cfg.to_dict(), "vocab": vocab_fp, "counts": counts}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _validator(data_dir: str, cfg: Config) -> Validator | None:
    """Validation queries carved from train by id hash, against a sample of the other training documents."""
    if cfg.finetune.val_fraction <= 0:
        return None
    train = ds.read_split(data_dir, "train", columns=(ds.ID, ds.LABELS, "counts"))
    if not any(train.labels):
        log.warning("training documents have no labels: fine-tuning runs all epochs without validation")
        return None
    val = is_validation_id(train.ids, cfg.finetune.val_fraction)
    rng = np.random.default_rng(cfg.train.seed)
    q = np.flatnonzero(val)
    db = np.flatnonzero(~val)
    q = rng.choice(q, size=min(len(q), cfg.finetune.val_queries), replace=False) if len(q) else q
    db = rng.choice(db, size=min(len(db), 20_000), replace=False)
    v = Validator(train.counts[q], [train.labels[i] for i in q], train.counts[db], [train.labels[i] for i in db],
                  seed=cfg.train.seed)
    return v if v.usable else None


def rank_main(data_dir: str, out_uri: str, cfg_dict: dict, np_expected: int, progress: bool) -> dict[str, Any] | None:
    """Everything one rank does. Runs in this process (np=1) or in each Horovod process."""
    cfg = config_from_dict(cfg_dict)
    dist: Dist = current(np_expected)
    if cfg.train.threads > 0:
        torch.set_num_threads(cfg.train.threads)
    elif dist.size > 1:
        torch.set_num_threads(max(1, (os.cpu_count() or 2) // dist.size))
    device = device_for(dist, cfg.train.device)
    meta = ds.read_metadata(data_dir)
    words, doc_freq, n_train = ds.read_vocab(data_dir)
    vocab_size = len(words)
    val_fraction = cfg.finetune.val_fraction
    seed = cfg.train.seed

    def source(epoch: int, batch_size: int):
        # distributed: each rank reads its own shard; the same seed on every rank keeps the shard assignment
        for batch in data_mod.iter_batches(data_dir, "train", batch_size, cur_shard=dist.rank,
                                           shard_count=dist.size, num_epochs=1, shuffle=True,
                                           seed=seed + epoch, reader_pool=cfg.train.reader_pool,
                                           vocab_size=vocab_size):
            keep = ~is_validation_id(batch.ids, val_fraction)
            if keep.any():
                yield batch.ids[keep], batch.counts[keep]

    validator = _validator(data_dir, cfg) if dist.is_chief else None
    fingerprint = _fingerprint(cfg, meta.get("vocab_fingerprint", ""), meta.get("counts", {}))
    t0 = time.time()
    model, metrics = train_stack(
        source, cfg, sizes=[vocab_size, *cfg.model.hidden, cfg.model.bits], first_kind="constrained_poisson",
        output="softmax", code_mode="noise", dist=dist, out_uri=out_uri, fingerprint=fingerprint,
        validator=validator, device=device, progress_bar=progress,
    )
    metrics["train_seconds"] = round(time.time() - t0, 1)
    metrics["world_size"] = dist.size
    result = None
    if dist.is_chief:
        extra = {
            "vocab": {"words": words, "doc_freq": [int(x) for x in doc_freq], "num_train_docs": int(n_train),
                      "fingerprint": meta.get("vocab_fingerprint") or ds.vocab_fingerprint(words)},
            "data": {"name": meta.get("name"), "counts": meta.get("counts")},
            "metrics": metrics,
        }
        model_meta = save_model(out_uri, model, cfg, extra)
        store.delete_prefix(store.join(out_uri, STATE_DIR))
        result = {"model": out_uri, "model_version": model_meta["model_version"], "bits": cfg.model.bits,
                  "best_val_precision": metrics.get("best_val_precision"), "best_epoch": metrics.get("best_epoch"),
                  "train_seconds": metrics["train_seconds"], "world_size": dist.size}
    dist.barrier()
    return result


def train_model(data_uri: str, out_uri: str, cfg: Config, *, np: int = 1, progress: bool = True) -> dict[str, Any]:
    """Trains the document model on ``data_uri``'s train split and writes it to ``out_uri``."""
    data_dir = store.local_copy(data_uri)
    meta = ds.read_metadata(data_dir)
    if meta.get("counts", {}).get("train", 1) == 0:
        raise ValueError(f"{data_uri!r} has no training documents")
    if cfg.model.bits < 1:
        raise ValueError(f"--bits must be positive, got {cfg.model.bits}")
    if np > 1:
        results = run_processes(rank_main, (data_dir, out_uri, cfg.to_dict(), np, progress), np)
        return next(r for r in results if r is not None)
    return rank_main(data_dir, out_uri, cfg.to_dict(), 1, progress)
