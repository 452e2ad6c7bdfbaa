"""Training an image model (Krizhevsky & Hinton 2011) from a ``semhash-images/1`` dataset, one process or N ranks.

The same :func:`semhash_spark.training.train.train_stack` as documents: a Gaussian-Bernoulli RBM on normalised pixels
(zero mean, unit variance per pixel over the training set), binary RBMs above it, CD-1 with momentum, then the
unrolled autoencoder fine-tuned on squared reconstruction error with the code units rounded to 0/1 in the
forward pass (straight-through). ``model.kind: image_patches`` trains the patch model of multiple semantic
hashing on retina glimpses (:mod:`semhash_spark.models.msh`) instead of whole images.

Each rank reads its Petastorm shard once (``loader.read_image_shard(cur_shard=rank, shard_count=size)``) and keeps
it as uint8 in memory across epochs (50,000 CIFAR images are 150 MB). The per-pixel statistics are summed over
ranks. The saved model takes *raw* pixels: the normalisation is folded into the first encoder layer (and its
inverse into the last decoder layer), so encode and query need nothing but the checkpoint; the statistics are
also kept in ``model.json`` (``input_normalisation``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from typing import Any

import numpy as np
import torch

from semhash_spark.data import loader as data_mod
from semhash_spark.data import images as im
from semhash_spark.models import msh
from semhash_spark.io import store
from semhash_spark.models.checkpoint import save_model
from semhash_spark.config import Config
from semhash_spark.training.distributed import Dist
from semhash_spark.models.autoencoder import DeepAutoencoder
from semhash_spark.training.train import STATE_DIR, Validator, is_validation_id, train_stack

log = logging.getLogger(__name__)

STD_FLOOR = 1.0  # pixel std floor (grey levels): constant pixels (MNIST borders) are not blown up
PATCHES_PER_IMAGE = 4  # glimpses drawn per image and epoch for the patch model


def _fingerprint(cfg: Config, meta: dict) -> str:
    blob = json.dumps(
        {
            "cfg": cfg.to_dict(),
            "counts": meta.get("counts"),
            "labels": meta.get("labels"),
            "shape": [meta.get("height"), meta.get("width"), meta.get("channels")],
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def input_rows(pixels: np.ndarray, cfg: Config, rng: np.random.Generator | None = None) -> np.ndarray:
    """uint8 [B, H, W, C] -> float32 model inputs: flattened images, or glimpses for the patch model.

    Patch model: with ``rng``, ``PATCHES_PER_IMAGE`` random glimpses of the 81 per image (training); without,
    the central glimpse (validation).
    """
    if cfg.model.kind != "image_patches":
        return pixels.reshape(len(pixels), -1).astype(np.float32)
    out = []
    for s in range(0, len(pixels), 128):  # 128 images x 81 glimpses x 768 floats: 32 MB
        g = msh.glimpses(pixels[s : s + 128], cfg.images)  # [b, 81, D]
        if rng is None:
            out.append(g[:, msh.CENTRE])
            continue
        pick = rng.integers(0, g.shape[1], size=(len(g), PATCHES_PER_IMAGE))
        out.append(np.take_along_axis(g, pick[:, :, None], axis=1).reshape(-1, g.shape[2]))
    return np.concatenate(out) if out else np.zeros((0, cfg.images.patch_side**2 * cfg.images.channels), np.float32)


def _stats(x: np.ndarray, dist: Dist) -> tuple[np.ndarray, np.ndarray]:
    """Per-input mean and std over every rank's rows (sums allreduced; means of sums cancel in the ratio)."""
    s = torch.from_numpy(x.sum(0, dtype=np.float64))
    ss = torch.from_numpy((x.astype(np.float64) ** 2).sum(0))
    n = torch.tensor([float(len(x))], dtype=torch.float64)
    dist.allreduce_mean_([s, ss, n], name="pixel.stats")  # distributed
    mean = (s / n).numpy()
    std = np.sqrt(np.maximum((ss / n).numpy() - mean**2, 0.0))
    return mean.astype(np.float32), np.maximum(std, STD_FLOOR).astype(np.float32)


def fold_normalisation(model: DeepAutoencoder, mean: np.ndarray, std: np.ndarray) -> None:
    """Makes the model take and return raw pixels: enc0(x') with x' = (x - m)/s, dec_last * s + m."""
    m, s = torch.from_numpy(mean), torch.from_numpy(std)
    with torch.no_grad():
        first, last = model.encoder[0], model.decoder[-1]
        first.bias.sub_(first.weight @ (m / s))
        first.weight.div_(s[None, :])
        last.weight.mul_(s[:, None])
        last.bias.mul_(s).add_(m)


def _validator(pixels: np.ndarray, labels: np.ndarray, ids: np.ndarray, cfg: Config, mean, std) -> Validator | None:
    if cfg.finetune.val_fraction <= 0:
        return None
    val = is_validation_id(ids, cfg.finetune.val_fraction)
    rng = np.random.default_rng(cfg.train.seed)
    q, db = np.flatnonzero(val), np.flatnonzero(~val)
    q = rng.choice(q, size=min(len(q), cfg.finetune.val_queries), replace=False) if len(q) else q
    db = rng.choice(db, size=min(len(db), 10_000), replace=False)

    def rows(sel):
        return (input_rows(pixels[sel], cfg) - mean) / std

    v = Validator(rows(q), [[str(labels[i])] for i in q], rows(db), [[str(labels[i])] for i in db], seed=cfg.train.seed)
    return v if v.usable else None


def train_images_rank(
    dist: Dist, data_dir: str, out_uri: str, cfg: Config, progress: bool, device: torch.device
) -> dict[str, Any] | None:
    """One rank of image training on a staged dataset (set up by :func:`semhash_spark.training.fit.rank_main`)."""
    meta = im.read_metadata(data_dir)
    seed = cfg.train.seed
    # distributed: each rank reads its own Petastorm shard once, with the same seed on every rank
    shard = data_mod.read_image_shard(
        data_dir, "train", cur_shard=dist.rank, shard_count=dist.size, seed=seed, reader_pool=cfg.train.reader_pool
    )
    train_rows = ~is_validation_id(shard.ids, cfg.finetune.val_fraction)
    stat_rng = np.random.default_rng(seed + dist.rank)
    sample = np.flatnonzero(train_rows)
    sample = stat_rng.choice(sample, size=min(len(sample), 20_000), replace=False)
    mean, std = _stats(
        input_rows(shard.pixels[sample], cfg, stat_rng if cfg.model.kind == "image_patches" else None), dist
    )
    mean_t, std_t = torch.from_numpy(mean), torch.from_numpy(std)
    # distributed: every rank takes the same number of steps (shards differ by a row group's size), else the
    # allreduce of the longest shard would wait forever; the rows past the shortest shard rotate with the epoch
    min_rows = min(dist.allgather_object(int(train_rows.sum()), name="image.rows"))  # distributed

    def source(epoch: int, batch_size: int):
        rng = np.random.default_rng([seed, epoch, dist.rank])
        order = rng.permutation(np.flatnonzero(train_rows))[:min_rows]
        patches = cfg.model.kind == "image_patches"
        step = max(1, batch_size // PATCHES_PER_IMAGE) if patches else batch_size
        for s in range(0, len(order), step):
            sel = np.sort(order[s : s + step])
            x = torch.from_numpy(input_rows(shard.pixels[sel], cfg, rng if patches else None))
            ids = np.repeat(shard.ids[sel], PATCHES_PER_IMAGE) if patches else shard.ids[sel]
            yield ids, (x - mean_t) / std_t

    validator = None
    if dist.is_chief:
        full = shard if dist.size == 1 else data_mod.read_image_shard(data_dir, "train", seed=seed)
        validator = _validator(full.pixels, full.labels, full.ids, cfg, mean, std)
    fingerprint = _fingerprint(cfg, meta)
    n_input = int(mean.shape[0])
    t0 = time.time()
    model, metrics = train_stack(
        source,
        cfg,
        sizes=[n_input, *cfg.model.hidden, cfg.model.bits],
        first_kind="gaussian",
        output="linear",
        code_mode="round",
        dist=dist,
        out_uri=out_uri,
        fingerprint=fingerprint,
        validator=validator,
        device=device,
        progress_bar=progress,
    )
    metrics["train_seconds"] = round(time.time() - t0, 1)
    metrics["world_size"] = dist.size
    result = None
    if dist.is_chief:
        fold_normalisation(model, mean, std)
        extra = {
            "data": {
                "name": meta.get("name"),
                "counts": meta.get("counts"),
                "labels": meta.get("labels"),
                "height": meta["height"],
                "width": meta["width"],
                "channels": meta["channels"],
            },
            "input_normalisation": {
                "folded": True,
                "std_floor": STD_FLOOR,
                "mean": [round(float(v), 4) for v in mean],
                "std": [round(float(v), 4) for v in std],
            },
            "metrics": metrics,
        }
        if cfg.model.kind == "image_patches":
            extra["patches"] = msh.describe(cfg.images)
        model_meta = save_model(out_uri, model, cfg, extra)
        store.delete_prefix(store.join(out_uri, STATE_DIR))
        result = {
            "model": out_uri,
            "kind": cfg.model.kind,
            "model_version": model_meta["model_version"],
            "bits": cfg.model.bits,
            "best_val_precision": metrics.get("best_val_precision"),
            "best_epoch": metrics.get("best_epoch"),
            "train_seconds": metrics["train_seconds"],
            "world_size": dist.size,
        }
    # every rank returns the summary (TorchDistributor keeps one rank's return value)
    return dist.broadcast_object(result, name="summary")  # distributed


def image_config(data_uri: str, meta: dict[str, Any], cfg: Config) -> Config:
    """Checks that ``cfg`` trains an image model on this ``semhash-images/1`` dataset; ``cfg`` with its image size."""
    if cfg.model.kind not in ("images", "image_patches", "image_kmeans"):
        raise ValueError(
            f"model.kind {cfg.model.kind!r} cannot train on the image dataset {data_uri!r}; "
            "use conf/images.yaml (model.kind: images), conf/images-best.yaml (image_kmeans) "
            "or model.kind=image_patches"
        )
    if meta.get("counts", {}).get("train", 0) == 0:
        raise ValueError(f"{data_uri!r} has no training images")
    if (cfg.images.height, cfg.images.width, cfg.images.channels) != (meta["height"], meta["width"], meta["channels"]):
        cfg = cfg.replace(
            images=type(cfg.images)(
                **{
                    **cfg.images.__dict__,
                    "height": meta["height"],
                    "width": meta["width"],
                    "channels": meta["channels"],
                }
            )
        )
    return cfg
