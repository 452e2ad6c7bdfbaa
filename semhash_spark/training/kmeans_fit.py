"""Training ``model.kind: image_kmeans``: k-means patch features (Coates, Lee & Ng 2011) and a binary code layer.

1. Random ``patch x patch`` training patches, contrast-normalised, give the ZCA whitening; mini-batch-free
   k-means (Lloyd's iterations, the paper's initialisation: small random centroids, empty clusters re-seeded from
   data) gives ``features.centroids`` centroids.
2. ``features.fit_images`` training images (all with 0) and the validation images are encoded once
   (:meth:`KMeansFeatureHasher.pooled`); the training features' mean and std are kept.
3. The code layer starts as PCA + ITQ of the standardised features (Gong & Lazebnik), then ``finetune.epochs`` of
   Adam with straight-through sign codes on a loss that asks code inner products to match feature cosines, with
   bit-balance and decorrelation terms. A validation split carved from train (``finetune.val_fraction``, by id
   hash) picks the epoch by precision@100; epoch 0 is the ITQ layer itself.

One process (``--np 1``): the work is two matrix products per patch, and torch uses every core it is given.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import torch

from semhash_spark import codes as codes_mod
from semhash_spark.data import loader as data_mod
from semhash_spark.data import images as im
from semhash_spark.models.checkpoint import FORMAT, save_tensors, weights_version
from semhash_spark.config import Config
from semhash_spark.evaluation.hashing_baselines import PCAITQ
from semhash_spark.models.kmeans_features import KMeansFeatureHasher
from semhash_spark.training.train import Validator, is_validation_id

log = logging.getLogger(__name__)

NETWORK = "kmeans_triangle"  # model.json "network": which module rebuilds the checkpoint
PATCHES_PER_IMAGE = 40  # patches drawn per sampled training image


def sample_patches(model: KMeansFeatureHasher, pixels: np.ndarray, n: int, rng: np.random.Generator) -> torch.Tensor:
    """``n`` contrast-normalised patches (all positions, stride 1) from random training images: ``[n, d]``."""
    imgs = rng.choice(len(pixels), size=min(len(pixels), -(-n // PATCHES_PER_IMAGE)), replace=False)
    out = []
    for s in range(0, len(imgs), 256):
        p = model.patches(torch.from_numpy(pixels[np.sort(imgs[s : s + 256])].reshape(-1, pixels[0].size)), stride=1)
        pick = torch.from_numpy(rng.integers(0, p.shape[1], size=(p.shape[0], PATCHES_PER_IMAGE)))
        out.append(torch.gather(p, 1, pick[:, :, None].expand(-1, -1, p.shape[2])).reshape(-1, p.shape[2]))
    return torch.cat(out)[:n]


def fit_whitening(p: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """ZCA of patches ``[n, d]``: ``(mean, V diag(1 / sqrt(e + eps)) V^T)`` (eigendecomposition in float64)."""
    x = p.double()
    mean = x.mean(0)
    evals, evecs = torch.linalg.eigh(torch.cov((x - mean).T))
    zca = evecs @ torch.diag(1.0 / torch.sqrt(evals.clamp_min(0) + eps)) @ evecs.T
    return mean.float(), zca.float()


def kmeans(w: torch.Tensor, k: int, iters: int, generator: torch.Generator) -> torch.Tensor:
    """Lloyd's k-means on rows ``w [n, d]`` -> centroids ``[k, d]``; empty clusters re-seeded from random rows."""
    if len(w) < k:
        raise ValueError(
            f"k-means with {k} centroids needs at least {k} patches, got {len(w)}: lower "
            "features.centroids or raise features.patch_samples"
        )
    cent = torch.randn(k, w.shape[1], generator=generator) * 0.1
    w2 = (w * w).sum(1, keepdim=True)
    for _ in range(iters):
        assign = torch.cat(
            [
                (w2[s : s + 65536] - 2 * w[s : s + 65536] @ cent.T + (cent * cent).sum(1)).argmin(1)
                for s in range(0, len(w), 65536)
            ]
        )
        sums = torch.zeros_like(cent).index_add_(0, assign, w)
        counts = torch.bincount(assign, minlength=k).float()
        cent = torch.where(counts[:, None] > 0, sums / counts.clamp_min(1)[:, None], cent)
        empty = torch.nonzero(counts == 0).flatten()
        if len(empty):
            cent[empty] = w[torch.randint(0, len(w), (len(empty),), generator=generator)]
    return cent


def bit_statistics(codes: np.ndarray, bits: int, address_bits: int = 20) -> dict[str, float]:
    """Per-bit balance, mean absolute pairwise bit correlation and the largest address bucket's share."""
    b = codes_mod.unpack_bits(codes, bits).astype(np.float64)
    means = b.mean(0)
    corr = np.corrcoef(b.T) if len(b) > 1 else np.eye(bits)
    off = np.abs(np.nan_to_num(corr)[~np.eye(bits, dtype=bool)])
    width = min(bits, address_bits)
    addr = b[:, :width] @ (2.0 ** np.arange(width - 1, -1, -1))
    _, counts = np.unique(addr, return_counts=True)
    return {
        "bit_mean_min": round(float(means.min()), 4),
        "bit_mean_max": round(float(means.max()), 4),
        "mean_abs_bit_correlation": round(float(off.mean()) if off.size else 0.0, 4),
        "largest_bucket_share": round(float(counts.max() / len(b)), 4),
    }


def _code_fn(layer: torch.nn.Linear):
    @torch.no_grad()
    def codes(x: np.ndarray) -> np.ndarray:
        return codes_mod.pack_bits((layer(torch.from_numpy(x)) > 0).numpy())

    return codes


def finetune_code_layer(
    layer: torch.nn.Linear, feats: np.ndarray, cfg: Config, validator: Validator | None, seed: int
) -> dict[str, Any]:
    """Straight-through fine-tuning of the code layer on ``feats`` (module docstring, step 3); keeps the best
    epoch."""
    bits, fc, ft = layer.out_features, cfg.features, cfg.finetune
    code = _code_fn(layer)
    best = {
        "epoch": 0,
        "precision": validator.precision(code) if validator else None,
        "state": {k: v.clone() for k, v in layer.state_dict().items()},
    }
    history = [best["precision"]]
    if ft.epochs <= 0:
        return {"val_precision": history, "best_epoch": 0}
    opt = torch.optim.Adam(layer.parameters(), lr=ft.lr)
    x = torch.from_numpy(feats)
    xn = x / x.norm(dim=1, keepdim=True).clamp_min(1e-6)
    g = torch.Generator().manual_seed(seed)
    eye = torch.eye(bits)
    stale = 0
    for epoch in range(1, ft.epochs + 1):
        perm = torch.randperm(len(x), generator=g)
        for s in range(0, len(x), ft.batch_size):
            i = perm[s : s + ft.batch_size]
            u = layer(x[i])
            t = torch.tanh(u)
            b = t + (torch.sign(u) - t).detach()  # forward: sign; backward: tanh
            loss = (
                (((b @ b.T) / bits - xn[i] @ xn[i].T) ** 2).mean()
                + fc.balance_weight * (b.mean(0) ** 2).mean()
                + fc.decorrelation_weight * (((b.T @ b) / len(i) - eye) ** 2).mean()
            )
            opt.zero_grad()
            loss.backward()
            opt.step()
        if not np.isfinite(loss.item()):
            raise RuntimeError(
                f"code-layer fine-tuning diverged at epoch {epoch} (loss {loss.item()}); lower finetune.lr"
            )
        p = validator.precision(code) if validator else None
        history.append(p)
        log.info("code layer epoch %d: loss %.4f, validation precision@100 %s", epoch, loss.item(), p)
        if validator is None or p > best["precision"]:
            best, stale = (
                {"epoch": epoch, "precision": p, "state": {k: v.clone() for k, v in layer.state_dict().items()}},
                0,
            )
        else:
            stale += 1
            if stale >= ft.patience:
                break
    layer.load_state_dict(best["state"])
    return {"val_precision": history, "best_epoch": best["epoch"]}


def _validator(feats: np.ndarray, labels: np.ndarray, val: np.ndarray, cfg: Config) -> Validator | None:
    rng = np.random.default_rng(cfg.train.seed)
    q, db = np.flatnonzero(val), np.flatnonzero(~val)
    if not len(q):
        return None
    q = rng.choice(q, size=min(len(q), cfg.finetune.val_queries), replace=False)
    db = rng.choice(db, size=min(len(db), 10_000), replace=False)
    v = Validator(
        feats[q], [[str(labels[i])] for i in q], feats[db], [[str(labels[i])] for i in db], seed=cfg.train.seed
    )
    return v if v.usable else None


def _itq_candidate(pooled: np.ndarray, val: np.ndarray, cfg: Config, seed: int) -> dict[str, Any]:
    """Standardised features and their PCA + ITQ code layer (fitted on the non-validation rows) for one pooling
    grid."""
    bits = cfg.model.bits
    fmean, fstd = pooled[~val].mean(0), pooled[~val].std(0) + 1e-3
    feats = ((pooled - fmean) / fstd).astype(np.float32)
    if bits > min(feats.shape[1], int((~val).sum())):
        raise ValueError(
            f"--bits {bits} exceeds the {feats.shape[1]} features (or training images); "
            "raise features.centroids or use fewer bits"
        )
    itq = PCAITQ(bits, n_iter=cfg.features.itq_iters, seed=seed).fit(feats[~val])
    proj = itq.pca_.components_[:, :bits] @ itq.rotation_  # [F, bits]
    layer = torch.nn.Linear(feats.shape[1], bits)
    with torch.no_grad():
        layer.weight.copy_(torch.from_numpy(proj.T.astype(np.float32)))
        layer.bias.copy_(torch.from_numpy((-(itq.pca_.mean_ @ proj)).astype(np.float32)))
    return {
        "feats": feats,
        "mean": fmean.astype(np.float32),
        "std": fstd.astype(np.float32),
        "itq": itq,
        "layer": layer,
    }


def train_kmeans_model(data_dir: str, out_uri: str, cfg: Config) -> dict[str, Any]:
    """Trains ``model.kind: image_kmeans`` on a local ``semhash-images/1`` dataset and writes it to ``out_uri``."""
    t0 = time.time()
    meta = im.read_metadata(data_dir)
    if meta["counts"].get("train", 0) == 0:
        raise ValueError(f"{data_dir!r} has no training images")
    fc, seed = cfg.features, cfg.train.seed
    if cfg.train.threads > 0:
        torch.set_num_threads(cfg.train.threads)
    torch.manual_seed(seed)
    rng, gen = np.random.default_rng(seed), torch.Generator().manual_seed(seed)
    shard = data_mod.read_image_shard(data_dir, "train", seed=seed, reader_pool=cfg.train.reader_pool)
    val = is_validation_id(shard.ids, cfg.finetune.val_fraction)
    train_px = shard.pixels[~val]
    # the code layer is fitted on the features of fit_images training images (and every validation image)
    fit = np.flatnonzero(~val)
    if 0 < fc.fit_images < len(fit):
        fit = np.sort(rng.choice(fit, size=fc.fit_images, replace=False))
    rows = np.sort(np.concatenate([fit, np.flatnonzero(val)]))
    labels, val = shard.labels[rows], val[rows]
    h, w, c = meta["height"], meta["width"], meta["channels"]
    pools = tuple(fc.pool_candidates) or (fc.pool,)
    model = KMeansFeatureHasher(h, w, c, fc.patch, fc.stride, fc.centroids, pools[0], cfg.model.bits)
    with torch.no_grad():
        p = sample_patches(model, train_px, fc.patch_samples, rng)
        zca_mean, zca = fit_whitening(p, fc.zca_eps)
        model.zca_mean.copy_(zca_mean)
        model.zca.copy_(zca)
        model.centroids.copy_(kmeans(model.whiten(p), fc.centroids, fc.kmeans_iters, gen))
        del p
        t_kmeans = time.time() - t0
        log.info("whitening and %d centroids in %.1fs; features of %d images", fc.centroids, t_kmeans, len(rows))
        grids = model.pooled_grids(torch.from_numpy(shard.pixels[rows].reshape(len(rows), -1)), pools)
        t_feats = time.time() - t0 - t_kmeans
    best, pool_val = None, {}
    for pool, pooled in zip(pools, grids):
        cand = _itq_candidate(pooled.numpy(), val, cfg, seed)
        cand["validator"] = _validator(cand["feats"], labels, val, cfg)
        p = cand["validator"].precision(_code_fn(cand["layer"])) if cand["validator"] else None
        pool_val[str(pool)] = p
        log.info(
            "pooling grid %d x %d: %d features, PCA + ITQ validation precision@100 %s",
            pool,
            pool,
            cand["feats"].shape[1],
            p,
        )
        if best is None or (p is not None and p > best[1]):
            best = (pool, p if p is not None else -1.0, cand)
    del grids
    pool, _, cand = best
    feats, itq, validator = cand["feats"], cand["itq"], cand["validator"]
    chosen = KMeansFeatureHasher(h, w, c, fc.patch, fc.stride, fc.centroids, pool, cfg.model.bits)
    with torch.no_grad():
        for name in ("zca_mean", "zca", "centroids"):
            getattr(chosen, name).copy_(getattr(model, name))
        chosen.feature_mean.copy_(torch.from_numpy(cand["mean"]))
        chosen.feature_std.copy_(torch.from_numpy(cand["std"]))
        chosen.code.load_state_dict(cand["layer"].state_dict())
    model = chosen
    log.info("features in %.1fs; PCA + ITQ code layer fitted", t_feats)
    tuned = finetune_code_layer(model.code, feats[~val], cfg, validator, seed)
    stats = bit_statistics(_code_fn(model.code)(feats[~val]), cfg.model.bits, cfg.index.address_bits)
    if stats["bit_mean_min"] < 0.05 or stats["bit_mean_max"] > 0.95 or stats["largest_bucket_share"] > 0.05:
        log.warning("the codes concentrate on the training images: %s", stats)
    metrics = {
        "kmeans_seconds": round(t_kmeans, 1),
        "feature_seconds": round(t_feats, 1),
        "train_seconds": round(time.time() - t0, 1),
        "pool": pool,
        "pool_val_precision": pool_val,
        "best_epoch": tuned["best_epoch"],
        "val_precision": tuned["val_precision"],
        "best_val_precision": tuned["val_precision"][tuned["best_epoch"]],
        "itq_loss": [round(itq.loss_[0], 2), round(itq.loss_[-1], 2)],
        "bit_statistics": stats,
    }
    tensors = {f"kf.{k}": v for k, v in model.state_dict().items()}
    model_meta = {
        "format": FORMAT,
        "kind": "images",
        "network": NETWORK,
        "features": model.describe(),
        "sizes": [h * w * c, model.n_features, cfg.model.bits],
        "bits": cfg.model.bits,
        "threshold": 0.5,
        "config": cfg.to_dict(),
        "model_version": weights_version(tensors),
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "data": {
            "name": meta.get("name"),
            "counts": meta.get("counts"),
            "labels": meta.get("labels"),
            "height": h,
            "width": w,
            "channels": c,
        },
        "metrics": metrics,
    }
    save_tensors(out_uri, tensors, model_meta)
    log.info("image_kmeans model %s: %s", model_meta["model_version"], metrics)
    return {
        "model": out_uri,
        "kind": cfg.model.kind,
        "model_version": model_meta["model_version"],
        "bits": cfg.model.bits,
        "best_val_precision": metrics["best_val_precision"],
        "best_epoch": metrics["best_epoch"],
        "train_seconds": metrics["train_seconds"],
        "world_size": 1,
        "bit_statistics": stats,
    }
