"""Training a model from a prepared dataset (documents or images): one process, or N ranks each reading its shard.

``train_model`` is what ``semhash train`` and ``jobs/train.py`` call, for either modality. Every launcher runs
:func:`rank_main` in each rank: it sets up the rank (engine, threads, device), stages the dataset locally and
runs the modality's rank function (documents: :func:`train_documents_rank`; images:
:func:`semhash_spark.training.image_fit.train_images_rank`), which reads its Petastorm shard (``cur_shard=rank``,
``shard_count=size``) and trains with :func:`train.train_stack`; rank 0 alone writes checkpoints and the model.

Launchers (``--launcher``):

| launcher | how the N ranks start | engine |
|---|---|---|
| ``local`` | this process (``--np 1``), or ``horovod.run`` on this host | Horovod (gloo / NCCL) |
| ``horovodrun`` | ``horovodrun -np N`` runs ``semhash train`` N times; each copy finds itself inside the job | Horovod |
| ``spark`` | ``horovod.spark.run`` in Spark tasks on the executors (``spark-submit jobs/train.py``) | Horovod |
| ``torch`` | ``pyspark.ml.torch.distributor.TorchDistributor`` (local mode: torchrun on the driver) | torch.distributed |
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from typing import Any, Sequence

import numpy as np
import torch

from semhash_spark.data import loader as data_mod
from semhash_spark.data import dataset as ds
from semhash_spark.io import store
from semhash_spark.models.checkpoint import save_model
from semhash_spark.config import Config, config_from_dict
from semhash_spark.training.distributed import (
    Dist,
    current,
    device_for,
    inside_horovod,
    launched_rank,
    run_horovodrun,
    run_on_spark,
    run_processes,
)
from semhash_spark.models.autoencoder import id_keys
from semhash_spark.training.train import STATE_DIR, Validator, is_validation_id, train_stack

log = logging.getLogger(__name__)

LAUNCHERS = ("local", "horovodrun", "spark", "torch")


_RESOURCE_KEYS = ("threads", "checkpoint_every")  # how a run uses the machine, not what it computes


def _fingerprint(cfg: Config, vocab_fp: str, counts: dict) -> str:
    """What a resumable state must match: the configuration (less resource settings), vocabulary and counts."""
    d = cfg.to_dict()
    d["train"] = {k: v for k, v in d["train"].items() if k not in _RESOURCE_KEYS}
    blob = json.dumps({"cfg": d, "vocab": vocab_fp, "counts": counts}, sort_keys=True)
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
    v = Validator(
        train.counts[q],
        [train.labels[i] for i in q],
        train.counts[db],
        [train.labels[i] for i in db],
        seed=cfg.train.seed,
    )
    return v if v.usable else None


def _steps_per_epoch(data_dir: str, size: int, batch_size: int, seed: int) -> int | None:
    """The mini-batches every rank takes this epoch: the fewest any rank's shard yields.

    Collectives run once per batch, so ranks must take the same number of steps or the last ones would wait on
    each other forever; each rank knows every shard's size from Parquet metadata, with no communication. Rows of
    a longer shard beyond that (less than a row group) wait for a later epoch, whose shards differ.
    """
    if size == 1:
        return None
    rows = [data_mod.count_rows(data_dir, "train", r, size, seed=seed) for r in range(size)]
    return min(math.ceil(n / batch_size) for n in rows)


class ShardLog:
    """Which documents this rank read in its first epoch (keys), for the disjoint-and-complete check."""

    def __init__(self):
        self.keys: list[np.ndarray] = []
        self.epoch: int | None = None

    def check(self, dist: Dist, n_train: int) -> dict[str, Any]:
        mine = np.concatenate(self.keys) if self.keys else np.zeros(0, np.uint64)
        every = dist.allgather_object(mine, name="shard.keys")  # distributed: one gather after training
        rows = [int(len(k)) for k in every]
        union = np.unique(np.concatenate(every)) if every else np.zeros(0, np.uint64)
        out = {
            "epoch": self.epoch,
            "rows_per_rank": rows,
            "disjoint": int(len(union)) == sum(rows),
            "covers_train": int(len(union)) == n_train,
        }
        if dist.is_chief and not (out["disjoint"] and out["covers_train"]):
            log.error("rank shards overlap or miss rows: %s (train split has %d rows)", out, n_train)
        return out


MODALITIES = ("documents", "images")


def rank_main(
    data_uri: str,
    out_uri: str,
    cfg_dict: dict,
    np_expected: int,
    progress: bool,
    engine: str = "horovod",
    s3_env: dict[str, str] | None = None,
    modality: str = "documents",
) -> dict[str, Any] | None:
    """Everything one rank does, under any launcher and for either modality. Returns the run summary (every rank).

    ``engine`` is ``horovod`` (Horovod ranks, or one process without it) or ``torch`` (``torch.distributed``
    under TorchDistributor)."""
    if s3_env:
        store.apply_s3_env(s3_env)  # executors without their own S3 settings use the driver's
    if modality not in MODALITIES:
        raise ValueError(f"unknown modality {modality!r}; expected one of {MODALITIES}")
    cfg = config_from_dict(cfg_dict)
    if engine == "torch":
        from semhash_spark.training.torch_dist import TorchDist  # no horovod on this path

        want_cuda = cfg.train.device == "cuda" or (cfg.train.device == "auto" and torch.cuda.is_available())
        dist: Dist = TorchDist(backend="nccl" if want_cuda else "gloo")
    else:
        dist = current(np_expected)
    try:
        device = rank_device(dist, cfg)
        data_dir = store.local_copy(data_uri)  # each rank stages the dataset on its own host (cached by content)
        if modality == "images":
            from semhash_spark.training.image_fit import train_images_rank

            return train_images_rank(dist, data_dir, out_uri, cfg, progress, device)
        return train_documents_rank(dist, data_dir, out_uri, cfg, progress, device)
    finally:
        if engine == "torch":
            dist.shutdown()


def rank_device(dist: Dist, cfg: Config) -> torch.device:
    """Sets this rank's torch threads (``train.threads``; 0: the cores divided among the ranks) and picks its device."""
    threads = cfg.train.threads if cfg.train.threads > 0 else max(1, (os.cpu_count() or 1) // max(1, dist.size))
    torch.set_num_threads(threads)
    return device_for(dist, cfg.train.device)


def train_documents_rank(
    dist: Dist, data_dir: str, out_uri: str, cfg: Config, progress: bool, device: torch.device
) -> dict[str, Any]:
    """One rank of document training on a staged dataset."""
    meta = ds.read_metadata(data_dir)
    words, doc_freq, n_train = ds.read_vocab(data_dir)
    vocab_size = len(words)
    val_fraction = cfg.finetune.val_fraction
    seed = cfg.train.seed
    shards = ShardLog()

    def source(epoch: int, batch_size: int):
        # distributed: each rank reads its own shard; the same seed on every rank keeps the shard assignment
        steps = _steps_per_epoch(data_dir, dist.size, batch_size, seed + epoch)
        record = shards.epoch is None
        if record:
            shards.epoch = epoch
        taken = 0
        for batch in data_mod.iter_batches(
            data_dir,
            "train",
            batch_size,
            cur_shard=dist.rank,
            shard_count=dist.size,
            num_epochs=1,
            shuffle=True,
            seed=seed + epoch,
            reader_pool=cfg.train.reader_pool,
            vocab_size=vocab_size,
        ):
            if record:
                shards.keys.append(id_keys(batch.ids))
            if steps is not None and taken >= steps:
                continue  # read to the end (the loader checks the shard is whole) without training on it
            taken += 1
            keep = ~is_validation_id(batch.ids, val_fraction)
            # with several ranks an all-validation batch still takes its step (zero gradient), keeping step counts
            if keep.any() or dist.size > 1:
                yield batch.ids[keep], batch.counts[keep]

    validator = _validator(data_dir, cfg) if dist.is_chief else None
    fingerprint = _fingerprint(cfg, meta.get("vocab_fingerprint", ""), meta.get("counts", {}))
    t0 = time.time()
    model, metrics = train_stack(
        source,
        cfg,
        sizes=[vocab_size, *cfg.model.hidden, cfg.model.bits],
        first_kind="constrained_poisson",
        output="softmax",
        code_mode="noise",
        dist=dist,
        out_uri=out_uri,
        fingerprint=fingerprint,
        validator=validator,
        device=device,
        progress_bar=progress,
    )
    metrics["train_seconds"] = round(time.time() - t0, 1)
    metrics["world_size"] = dist.size
    metrics["shards"] = shards.check(dist, int(meta.get("counts", {}).get("train", n_train)))
    result = None
    if dist.is_chief:
        extra = {
            "vocab": {
                "words": words,
                "doc_freq": [int(x) for x in doc_freq],
                "num_train_docs": int(n_train),
                "fingerprint": meta.get("vocab_fingerprint") or ds.vocab_fingerprint(words),
            },
            "data": {"name": meta.get("name"), "counts": meta.get("counts")},
            "metrics": metrics,
        }
        model_meta = save_model(out_uri, model, cfg, extra)
        store.delete_prefix(store.join(out_uri, STATE_DIR))
        result = summary(out_uri, model_meta)
    # every rank returns the summary (TorchDistributor keeps one rank's return value)
    return dist.broadcast_object(result, name="summary")  # distributed


def summary(out_uri: str, model_meta: dict[str, Any]) -> dict[str, Any]:
    """The JSON summary of a trained model, from its ``model.json``."""
    m = model_meta.get("metrics", {})
    return {
        "model": out_uri,
        "model_version": model_meta["model_version"],
        "bits": model_meta.get("bits"),
        "best_val_precision": m.get("best_val_precision"),
        "best_epoch": m.get("best_epoch"),
        "train_seconds": m.get("train_seconds"),
        "world_size": m.get("world_size"),
        "resumed_from": m.get("resumed_from"),
    }


def with_dataset_prepare(cfg: Config, meta: dict[str, Any]) -> Config:
    """``cfg`` with the tokenisation the dataset was prepared with, so the model vectorises query text the same way
    (datasets written before ``prepare.tokens`` existed were tokenised letters-only)."""
    prep = meta.get("prepare")
    if not prep:
        return cfg
    d = cfg.to_dict()
    d["prepare"] = {**d["prepare"], "tokens": "letters", **prep}
    return config_from_dict(d)


def train_model(
    data_uri: str,
    out_uri: str,
    cfg: Config,
    *,
    np: int = 1,
    launcher: str = "local",
    progress: bool = True,
    command: Sequence[str] | None = None,
) -> dict[str, Any] | None:
    """Trains a model on ``data_uri``'s train split (documents, or images when its ``dataset.json`` says
    ``kind: images``) and writes it to ``out_uri``.

    ``launcher`` says how the ``np`` ranks start (module docstring). ``horovodrun`` outside a Horovod job runs
    ``horovodrun -np N`` over ``command`` (the CLI passes its own command line), whose copies land in the branch
    inside the job; there, ranks other than 0 return None. A restarted run with the same configuration and data
    resumes from the last checkpoint under ``out_uri``.
    """
    if launcher not in LAUNCHERS:
        raise ValueError(f"unknown launcher {launcher!r}; expected one of {LAUNCHERS}")
    if np < 1:
        raise ValueError(f"--np must be at least 1, got {np}")
    if cfg.model.bits < 1:
        raise ValueError(f"--bits must be positive, got {cfg.model.bits}")
    meta = store.read_json(store.join(data_uri, ds.DATASET_FILE))
    if meta.get("kind") == "images":  # Krizhevsky & Hinton 2011: semhash_spark.training.image_fit
        from semhash_spark.training.image_fit import image_config

        modality, cfg = "images", image_config(data_uri, meta, cfg)
        if cfg.model.kind == "image_kmeans":  # k-means patch features + code layer (semhash_spark.training.kmeans_fit)
            from semhash_spark.training.kmeans_fit import train_kmeans_model

            if np != 1:
                raise ValueError(f"model.kind image_kmeans trains in one process (--np 1), not --np {np}")
            return train_kmeans_model(store.local_copy(data_uri), out_uri, cfg)
    else:
        if meta.get("counts", {}).get("train", 1) == 0:
            raise ValueError(f"{data_uri!r} has no training documents")
        modality, cfg = "documents", with_dataset_prepare(cfg, meta)
        if cfg.model.kind == "documents_vae":  # semhash_spark.training.vae_fit: one process
            from semhash_spark.training.vae_fit import train_vae

            if np != 1 or launcher != "local":
                raise ValueError(
                    f"model.kind documents_vae trains in one process (--np 1 --launcher local), "
                    f"not --np {np} --launcher {launcher}"
                )
            return train_vae(data_uri, out_uri, cfg, progress=progress)
        if cfg.model.kind != "documents":
            raise ValueError(
                f"model.kind {cfg.model.kind!r} cannot train on the document dataset {data_uri!r}; "
                "expected documents or documents_vae"
            )
    s3_env = store.driver_s3_env() if store.is_s3(data_uri) or store.is_s3(out_uri) else {}
    args = (data_uri, out_uri, cfg.to_dict(), np, progress)
    t0 = time.time()
    if launcher == "horovodrun" and inside_horovod():
        result = rank_main(*args, "horovod", None, modality)
        return result if launched_rank() == 0 else None
    if launcher in ("local", "horovodrun", "torch"):
        store.local_copy(data_uri)  # ranks on this host then find the dataset staged
    if launcher == "local":
        if np == 1:
            return rank_main(*args, "horovod", None, modality)
        results = run_processes(rank_main, (*args, "horovod", None, modality), np)
        return next(r for r in results if r is not None)
    if launcher == "horovodrun":
        if not command:
            raise ValueError("--launcher horovodrun outside a horovodrun job needs the command each rank runs")
        run_horovodrun(command, np)
    elif launcher == "spark":
        results = run_on_spark(rank_main, (*args, "horovod", s3_env, modality), np)
        return next(r for r in results if r is not None)
    else:
        from semhash_spark.training.torch_dist import run_torch_distributor

        return run_torch_distributor(rank_main, (*args, "torch", s3_env, modality), np)
    result = summary(out_uri, store.read_json(store.join(out_uri, "model.json")))
    result["launcher_seconds"] = round(time.time() - t0, 1)
    return result
