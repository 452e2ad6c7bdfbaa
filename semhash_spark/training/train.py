"""Greedy layer-wise RBM pretraining and autoencoder fine-tuning: one update step, several loops.

The same :func:`pretrain_step` / :func:`finetune_step` serve one process and Horovod ranks; the loops take a
``BatchSource`` (``(epoch, batch_size) -> iterable of (ids, CSR counts)``) so they never see Petastorm or the whole corpus,
and a :class:`~semhash_spark.training.distributed.Dist` so they never import Horovod. Rank 0 alone writes checkpoints;
a run resumes from the last one (stage, layer, epoch, weights and optimiser state).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable

import numpy as np
import scipy.sparse as sp
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from semhash_spark import codes as codes_mod
from semhash_spark import progress
from semhash_spark.io import store
from semhash_spark.config import Config
from semhash_spark.training.distributed import Dist
from semhash_spark.models.autoencoder import DeepAutoencoder, deterministic_noise, id_keys
from semhash_spark.models.rbm import RBM_KINDS, BinaryRBM, CDStats, MomentumSGD

log = logging.getLogger(__name__)

BatchSource = Callable[[int, int], Iterable[tuple[np.ndarray, Any]]]  # (epoch, batch_size) -> (ids, counts)
STATE_DIR = "_train_state"
STATE_FILE = "state.json"  # written last: names the weights file of the same epoch and its sha256


class TrainingDiverged(RuntimeError):
    """Reconstruction error became NaN/inf or exploded; the message names the layer and epoch."""


def densify(counts, device: torch.device) -> torch.Tensor:
    """One mini-batch of sparse counts (scipy CSR) -> dense float32 on the device.

    On a GPU the batch travels sparse and is densified there; on the CPU scipy's ``toarray`` is fastest.
    """
    if isinstance(counts, torch.Tensor):
        return counts.to(device=device, dtype=torch.float32)
    if hasattr(counts, "toarray"):
        if device.type == "cpu":
            return torch.from_numpy(counts.toarray().astype(np.float32, copy=False))
        csr = counts.tocsr()
        t = torch.sparse_csr_tensor(
            torch.from_numpy(csr.indptr.astype(np.int64)),
            torch.from_numpy(csr.indices.astype(np.int64)),
            torch.from_numpy(csr.data.astype(np.float32)),
            size=csr.shape,
        )
        return t.to(device).to_dense()
    return torch.as_tensor(np.asarray(counts), dtype=torch.float32, device=device)


# ---------------------------------------------------------------------------------------------------------------
# One update step each
# ---------------------------------------------------------------------------------------------------------------
def pretrain_step(
    rbm: BinaryRBM,
    opt: MomentumSGD,
    v: torch.Tensor,
    lr: float,
    momentum: float,
    dist: Dist,
    generator: torch.Generator | None = None,
) -> CDStats:
    return pretrain_step_async(rbm, opt, v, lr, momentum, dist, generator)()


def pretrain_step_async(
    rbm: BinaryRBM,
    opt: MomentumSGD,
    v: torch.Tensor,
    lr: float,
    momentum: float,
    dist: Dist,
    generator: torch.Generator | None = None,
) -> Callable[[], CDStats]:
    """The CD-1 gradients of one batch and the start of their average over the ranks.

    Returns the function that waits for the collective, applies the update and gives the batch's statistics; the
    caller prepares the next batch in between, so the collective's latency is hidden behind that work."""
    if v.shape[0] == 0:  # a rank whose batch was all validation rows still joins the step with zero gradients
        dW, db_v, db_h = (torch.zeros_like(t) for t in (rbm.W, rbm.b_v, rbm.b_h))
        stats = CDStats(0.0, 0.0, 0.0)
    else:
        dW, db_v, db_h, stats = rbm.cd_gradients(v, generator)
    wait = dist.allreduce_mean_async_([dW, db_v, db_h], name=f"cd{rbm.n_visible}x{rbm.n_hidden}")  # distributed

    def finish() -> CDStats:
        wait()
        opt.step({"W": dW, "b_v": db_v, "b_h": db_h}, lr=lr, momentum=momentum)
        return stats

    return finish


def finetune_step(
    model: DeepAutoencoder, optimizer: torch.optim.Optimizer, x: torch.Tensor, noise: torch.Tensor | None, dist: Dist
) -> float:
    return finetune_step_async(model, optimizer, x, noise, dist)()


def finetune_step_async(
    model: DeepAutoencoder, optimizer: torch.optim.Optimizer, x: torch.Tensor, noise: torch.Tensor | None, dist: Dist
) -> Callable[[], float]:
    """Forward and backward of one batch and the start of the gradients' average over the ranks (one grouped
    allreduce); returns the function that waits for it, steps the optimiser and gives the batch's loss."""
    model.train()
    optimizer.zero_grad(set_to_none=True)
    params = list(model.parameters())
    if x.shape[0] == 0:  # an empty batch (see pretrain_step) contributes zero gradients
        for p in params:
            p.grad = torch.zeros_like(p)
        loss = torch.zeros(())
    else:
        loss = model.loss(x, model(x, noise))
        loss.backward()
    wait = dist.allreduce_mean_async_([p.grad for p in params], name="ae.grad")  # distributed

    def finish() -> float:
        wait()
        optimizer.step()
        return float(loss.detach())

    return finish


def _batches_ahead(batches: Iterable[tuple[Any, Any]], prepare: Callable[[Any, Any], Any]) -> Callable[[], Any]:
    """A function giving the next prepared batch (``prepare(ids, counts)``), or None after the last.

    The loops ask for batch t+1 between starting step t's collective and finishing step t, so reading, densifying
    and (in pretraining) the frozen lower layers' forward pass overlap the allreduce; every batch is prepared
    exactly as it would be when its turn came."""
    it = iter(batches)

    def following() -> Any:
        item = next(it, None)
        return None if item is None else prepare(*item)

    return following


# ---------------------------------------------------------------------------------------------------------------
# Validation: retrieval precision of binary codes on a split carved from train
# ---------------------------------------------------------------------------------------------------------------
def is_validation_id(ids: Iterable[Any], fraction: float) -> np.ndarray:
    """Deterministic membership of the validation split (by id hash), the same on every rank."""
    keys = id_keys(ids)
    if fraction <= 0:
        return np.zeros(len(keys), dtype=bool)
    return (keys % np.uint64(10_000)).astype(np.int64) < int(round(fraction * 10_000))


@dataclass
class Validator:
    """Precision at ``k`` of Hamming ranking (or of a feature ranking, :meth:`precision_cosine`): validation queries
    against a database of training documents."""

    query_x: Any  # CSR or dense
    query_labels: list[list[str]]
    db_x: Any
    db_labels: list[list[str]]
    k: int = 100
    seed: int = 0

    def __post_init__(self):
        vocab = sorted({l for ls in self.query_labels + self.db_labels for l in ls})
        index = {l: i for i, l in enumerate(vocab)}

        def indicator(labels):
            m = np.zeros((len(labels), max(1, len(vocab))), dtype=np.float32)
            for r, ls in enumerate(labels):
                for l in ls:
                    m[r, index[l]] = 1
            return m

        self._lq, self._ldb = indicator(self.query_labels), indicator(self.db_labels)
        self._keep = self._lq.sum(1) > 0
        # One fixed random order breaks Hamming ties.
        self._tie = np.random.default_rng(self.seed).permutation(len(self.db_labels))

    @property
    def usable(self) -> bool:
        return bool(self._keep.sum() >= 10 and len(self.db_labels) > self.k)

    def precision(self, code_fn: Callable[[Any], np.ndarray]) -> float:
        qc = code_fn(self.query_x)[self._keep]
        dbc = code_fn(self.db_x)
        n = len(self.db_labels)
        return self._precision(lambda s, e: codes_mod.hamming(qc[s:e], dbc).astype(np.int64) * n + self._tie, len(qc))

    def precision_cosine(self, feature_fn: Callable[[Any], Any]) -> float:
        """Precision at ``k`` of ranking by the dot product of ``feature_fn``'s rows (L2-normalised: cosine), e.g.
        TF-IDF: what a feature choice is worth before any model is trained on it."""
        qf = feature_fn(self.query_x)[self._keep]
        dbf = feature_fn(self.db_x)
        dbt = dbf.T.tocsr() if sp.issparse(dbf) else dbf.T

        def key(s: int, e: int) -> np.ndarray:
            sim = qf[s:e] @ dbt
            return -(sim.toarray() if sp.issparse(sim) else np.asarray(sim))

        return self._precision(key, qf.shape[0])

    def _precision(self, key_fn: Callable[[int, int], np.ndarray], nq: int) -> float:
        """Share of relevant items among the ``k`` smallest keys of each query row (``key_fn(start, end)``)."""
        lq = self._lq[self._keep]
        total = 0.0
        for s in range(0, nq, 256):
            e = min(nq, s + 256)
            top = np.argpartition(key_fn(s, e), self.k - 1, axis=1)[:, : self.k]
            rel = (lq[s:e] @ self._ldb.T) > 0
            total += np.take_along_axis(rel, top, axis=1).sum()
        return float(total / (nq * self.k))


# ---------------------------------------------------------------------------------------------------------------
# Resumable state (rank 0 writes; every rank reads the same file on restart)
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class Progress:
    stage: str = "pretrain"  # pretrain | finetune | done
    layer: int = 0  # the RBM being trained (pretrain)
    epoch: int = 0  # the next epoch to run in this stage/layer
    best_val: float = -1.0
    best_epoch: int = -1
    bad_epochs: int = 0
    phase: int = 1  # fine-tuning phase: 1 = code noise (the paper), 2 = noise + rounded codes
    best_phase: int = 1
    history: list = field(default_factory=list)
    first_error: float | None = None  # the stage's (layer's) first epoch error, for the explosion check


class StateError(RuntimeError):
    """The resumable training state is unreadable or does not match its checksum; the message says what to do."""


def _save_state(
    out_uri: str,
    progress: Progress,
    tensors: dict[str, torch.Tensor],
    fingerprint: str,
    metrics: dict[str, Any] | None = None,
    rank: int = 0,
) -> None:
    """Writes the weights under a fresh name, then ``state.json`` pointing at them (the commit), then drops older
    weights. Each write is atomic (temp file + rename locally, one PUT on S3), so a kill at any moment leaves the
    previous state or the new one, never a mix."""
    blob = st_save({k: v.detach().cpu().contiguous() for k, v in tensors.items()})
    name = f"weights-{progress.stage}-{progress.layer}-{progress.epoch}-{time.time_ns():x}.safetensors"
    store.write_bytes(store.join(out_uri, STATE_DIR, name), blob)
    meta = {
        "progress": asdict(progress),
        "fingerprint": fingerprint,
        "weights": name,
        "sha256": store.sha256_bytes(blob),
        "metrics": metrics or {},
        "saved_at": time.time(),
        "saved_by_rank": rank,
        "pid": os.getpid(),
    }
    store.write_bytes(store.join(out_uri, STATE_DIR, STATE_FILE), json.dumps(meta).encode())
    for old in store.list_dir(store.join(out_uri, STATE_DIR)):
        old = old.rstrip("/").rsplit("/", 1)[-1]
        if old.startswith("weights-") and old != name:
            store.delete(store.join(out_uri, STATE_DIR, old))


def _load_state(out_uri: str, fingerprint: str) -> tuple[Progress, dict[str, torch.Tensor], dict[str, Any]] | None:
    meta_uri = store.join(out_uri, STATE_DIR, STATE_FILE)
    if not store.exists(meta_uri):
        return None
    meta = json.loads(store.read_bytes(meta_uri))
    if meta.get("fingerprint") != fingerprint:
        log.warning("ignoring the training state in %s: it belongs to another config or dataset", out_uri)
        return None
    if "weights" not in meta:
        log.warning("ignoring the training state in %s: an older format without a weights pointer", out_uri)
        return None
    weights_uri = store.join(out_uri, STATE_DIR, meta["weights"])
    blob = store.read_bytes(weights_uri)
    if store.sha256_bytes(blob) != meta["sha256"]:
        raise StateError(
            f"{weights_uri} does not match the checksum in {meta_uri}; delete "
            f"{store.join(out_uri, STATE_DIR)} to train from the start"
        )
    return Progress(**meta["progress"]), st_load(blob), meta.get("metrics") or {}


def _epoch_seed(seed: int, rank: int, layer: int, epoch: int) -> int:
    """The CD sampling seed of one rank, layer and epoch: a resumed run draws what an uninterrupted one draws."""
    digest = hashlib.blake2b(f"{seed}/{rank}/{layer}/{epoch}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def _check_finite(value: float, what: str, first: float | None) -> None:
    if not math.isfinite(value):
        raise TrainingDiverged(f"{what}: reconstruction error is {value}; lower the learning rate")
    if first is not None and first > 0 and value > 1e3 * first:
        raise TrainingDiverged(f"{what}: reconstruction error exploded from {first:.4g} to {value:.4g}")


# ---------------------------------------------------------------------------------------------------------------
# The loops
# ---------------------------------------------------------------------------------------------------------------
def build_rbms(sizes: list[int], first_kind: str, cfg: Config, seed: int) -> list[BinaryRBM]:
    g = torch.Generator().manual_seed(seed)
    rbms = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        cls = RBM_KINDS[first_kind] if i == 0 else BinaryRBM
        rbms.append(cls(a, b, init_std=cfg.pretrain.init_std, generator=g))
    return rbms


def _rbm_tensors(rbms: list[BinaryRBM], opt: MomentumSGD | None) -> dict[str, torch.Tensor]:
    out = {f"rbm.{i}.{k}": v for i, r in enumerate(rbms) for k, v in r.parameters_dict().items()}
    if opt is not None:
        out.update({f"opt.{k}": v for k, v in opt.state_dict().items()})
    return out


def _ae_tensors(model: DeepAutoencoder, optimizer: torch.optim.Optimizer, best: dict[str, torch.Tensor]):
    out = {f"ae.{k}": v for k, v in model.state_dict().items()}
    out.update({f"best.{k}": v for k, v in best.items()})
    for i, p in enumerate(model.parameters()):
        st = optimizer.state.get(p)
        if st:
            out[f"adam.{i}.exp_avg"] = st["exp_avg"]
            out[f"adam.{i}.exp_avg_sq"] = st["exp_avg_sq"]
            out[f"adam.{i}.step"] = torch.as_tensor(st["step"], dtype=torch.float64).reshape(1)
    return out


def _restore_adam(model: DeepAutoencoder, optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor]):
    fused = bool(optimizer.defaults.get("fused"))
    for i, p in enumerate(model.parameters()):
        if f"adam.{i}.exp_avg" in tensors:
            optimizer.state[p] = {
                "exp_avg": tensors[f"adam.{i}.exp_avg"].to(p.device, copy=True),
                "exp_avg_sq": tensors[f"adam.{i}.exp_avg_sq"].to(p.device, copy=True),
                # where torch.optim.Adam keeps its step count: on the parameter's device when fused, else the CPU
                "step": torch.tensor(
                    float(tensors[f"adam.{i}.step"][0]), dtype=torch.float32, device=p.device if fused else "cpu"
                ),
            }


def _finetune_optimizer(model: DeepAutoencoder, cfg: Config, scale: float, phase: int) -> torch.optim.Optimizer:
    """Adam over all weights; in phase 2 the code layer's learning rate is ``binarize_code_lr_scale`` times higher.

    Fused (one pass over each parameter, its gradient and moments) on CPU and CUDA: torch's default CPU Adam makes
    several passes over the 10 MB of a 2000-500-500-N model's parameters and as many over each moment
    (docs/benchmarks-log.md)."""
    lr = cfg.finetune.lr * scale
    fused = next(model.parameters()).device.type in ("cpu", "cuda")
    if phase == 1:
        return torch.optim.Adam(model.parameters(), lr=lr, fused=fused)
    code = list(model.encoder[-1].parameters())
    rest = [p for p in model.parameters() if all(p is not c for c in code)]
    return torch.optim.Adam(
        [{"params": rest}, {"params": code, "lr": lr * cfg.finetune.binarize_code_lr_scale}], lr=lr, fused=fused
    )


LR_SCALINGS = ("linear", "sqrt", "none")


def lr_scale(mode: str, world_size: int) -> float:
    """The learning-rate factor for ``world_size`` ranks averaging their gradients (``train.lr_scaling``).

    ``linear`` keeps the per-document step of one process (Goyal et al. 2017); ``sqrt`` keeps the gradient noise
    scale; ``none`` keeps the per-step rate (each epoch then takes ``world_size`` times fewer steps).
    """
    if mode not in LR_SCALINGS:
        raise ValueError(f"train.lr_scaling must be one of {LR_SCALINGS}, got {mode!r}")
    return {"linear": float(world_size), "sqrt": math.sqrt(world_size), "none": 1.0}[mode]


def train_stack(
    source: BatchSource,
    cfg: Config,
    *,
    sizes: list[int],
    first_kind: str,
    output: str,
    code_mode: str,
    dist: Dist,
    out_uri: str,
    fingerprint: str,
    validator: Validator | None = None,
    device: torch.device = torch.device("cpu"),
    progress_bar: bool = True,
) -> tuple[DeepAutoencoder, dict[str, Any]]:
    """Pretrains the RBM stack greedily, unrolls it and fine-tunes it; returns the model and its metrics."""
    with progress.logs_above_bars(progress_bar and dist.is_chief):
        return _train_stack(
            source,
            cfg,
            sizes=sizes,
            first_kind=first_kind,
            output=output,
            code_mode=code_mode,
            dist=dist,
            out_uri=out_uri,
            fingerprint=fingerprint,
            validator=validator,
            device=device,
            progress_bar=progress_bar,
        )


def _train_stack(
    source: BatchSource,
    cfg: Config,
    *,
    sizes: list[int],
    first_kind: str,
    output: str,
    code_mode: str,
    dist: Dist,
    out_uri: str,
    fingerprint: str,
    validator: Validator | None,
    device: torch.device,
    progress_bar: bool,
) -> tuple[DeepAutoencoder, dict[str, Any]]:
    seed = cfg.train.seed
    torch.manual_seed(seed + dist.rank)
    scale = lr_scale(cfg.train.lr_scaling, dist.size)
    rbms = build_rbms(sizes, first_kind, cfg, seed)
    # distributed: rank 0 reads the state and sends it (weights, optimiser state, progress) to the others, whose
    # hosts need not see MODEL_URI's local files
    resumed = dist.broadcast_object(_load_state(out_uri, fingerprint) if dist.is_chief else None, name="resume")
    prog, tensors, saved_metrics = resumed if resumed else (Progress(), {}, {})
    if resumed and dist.is_chief:
        log.info("resuming from %s: stage %s, layer %d, epoch %d", out_uri, prog.stage, prog.layer, prog.epoch)
    for i, r in enumerate(rbms):
        for k, p in r.parameters_dict().items():
            if f"rbm.{i}.{k}" in tensors:
                p.copy_(tensors[f"rbm.{i}.{k}"])
    for r in rbms:
        r.to(device)
        dist.broadcast_({k: v for k, v in r.parameters_dict().items()}, name=f"init{r.n_visible}")  # distributed
    show = progress_bar and dist.is_chief
    gen = torch.Generator(device=device)
    metrics: dict[str, Any] = {"pretrain": [], "finetune": []}
    metrics.update(saved_metrics)
    if resumed:
        metrics["resumed_from"] = {"stage": prog.stage, "layer": prog.layer, "epoch": prog.epoch}

    # --- greedy layer-wise pretraining with CD-1 (Hinton & Salakhutdinov 2006) ---------------------------------
    while prog.stage == "pretrain":
        i = prog.layer
        rbm = rbms[i]
        opt = MomentumSGD(rbm, cfg.pretrain.weight_decay)
        if prog.epoch > 0 and "opt.velocity.W" in tensors:
            opt.load_state_dict({k[len("opt.") :]: v.to(device) for k, v in tensors.items() if k.startswith("opt.")})
        lr = cfg.pretrain.lr * (cfg.pretrain.poisson_lr_scale if i == 0 and first_kind != "binary" else 1.0) * scale
        # rows of this rank, moved per batch; the total is known once the first epoch has been read
        bar = progress.bar(f"pretrain layer {i + 1}/{len(rbms)}", enabled=show)
        for epoch in range(prog.epoch, cfg.pretrain.epochs):
            momentum = (
                cfg.pretrain.momentum_start
                if epoch < cfg.pretrain.momentum_switch_epoch
                else cfg.pretrain.momentum_final
            )
            t0, sums, n = time.time(), np.zeros(3), 0
            gen.manual_seed(_epoch_seed(seed, dist.rank, i, epoch))

            def below(_ids, counts, i=i):  # the batch as layer i sees it (the layers below are frozen)
                with torch.no_grad():
                    v = densify(counts, device)
                    for lower in rbms[:i]:
                        v = lower.mean_hidden(v)
                    return v

            following = _batches_ahead(source(epoch, cfg.pretrain.batch_size), below)
            v = following()
            while v is not None:
                with torch.no_grad():
                    finish = pretrain_step_async(rbm, opt, v, lr, momentum, dist, gen)
                    v_next = following()  # the next batch, while the gradients are averaged
                    st = finish()
                sums += (st.recon_error * v.shape[0], st.saturated * v.shape[0], st.hidden_mean * v.shape[0])
                n += v.shape[0]
                bar.update(v.shape[0])
                v = v_next
            err, sat, hmean, rows = dist.allreduce_scalars([*(sums / max(n, 1)), n], name=f"pt{i}.{epoch}")
            what = f"pretraining layer {i + 1} ({rbm.n_visible}x{rbm.n_hidden}), epoch {epoch + 1}"
            _check_finite(err, what, prog.first_error)
            prog.first_error = prog.first_error if prog.first_error is not None else err
            rec = {
                "layer": i + 1,
                "epoch": epoch + 1,
                "recon_error": err,
                "saturated": sat,
                "hidden_mean": hmean,
                "seconds": time.time() - t0,
                "rows_per_rank": rows,
            }
            metrics["pretrain"].append(rec)
            if bar.total is None:
                bar.total = n * cfg.pretrain.epochs
                bar.n = n * (epoch + 1)
            bar.set_postfix(epoch=f"{epoch + 1}/{cfg.pretrain.epochs}", recon=f"{err:.4f}", sat=f"{sat:.2f}")
            if dist.is_chief:
                log.info(
                    "layer %d/%d epoch %d/%d recon %.4f saturated %.3f (%.1fs)",
                    i + 1,
                    len(rbms),
                    epoch + 1,
                    cfg.pretrain.epochs,
                    err,
                    sat,
                    rec["seconds"],
                )
            prog.epoch = epoch + 1
            if dist.is_chief and (prog.epoch % cfg.train.checkpoint_every == 0):
                _save_state(out_uri, prog, _rbm_tensors(rbms, opt), fingerprint, metrics, dist.rank)
        bar.close()
        prog.layer, prog.epoch, prog.first_error = i + 1, 0, None
        tensors = {}
        if prog.layer == len(rbms):
            prog.stage = "finetune"
        if dist.is_chief:
            _save_state(out_uri, prog, _rbm_tensors(rbms, None), fingerprint, metrics, dist.rank)

    # --- unroll and fine-tune (Semantic Hashing sec. 3) ----------------------------------------------------------
    # Phase 1 is the paper's: backpropagation with fixed Gaussian noise on the code units' inputs, the epoch chosen by
    # validation precision. Phase 2 ("binarise", finetune.binarize_epochs > 0) starts from phase 1's best weights and
    # also rounds the code units to 0/1 in the forward pass (straight-through, as Krizhevsky & Hinton do for images),
    # with the code layer learning binarize_code_lr_scale times faster, so the decoder learns from the very bits the
    # index stores; validation keeps phase 1's weights unless phase 2 beats them.
    model = DeepAutoencoder.from_rbms([r.cpu() for r in rbms], output=output, code_mode=code_mode).to(device)
    if prog.stage == "finetune" and prog.phase == 2:
        model.code_mode = "round"
    optimizer = _finetune_optimizer(model, cfg, scale, prog.phase)
    best = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if prog.stage == "finetune" and (prog.epoch > 0 or prog.phase == 2) and tensors:
        model.load_state_dict({k[3:]: v for k, v in tensors.items() if k.startswith("ae.")})
        best = {k[5:]: v.clone() for k, v in tensors.items() if k.startswith("best.")}
        _restore_adam(model, optimizer, tensors)
    dist.broadcast_(dict(model.state_dict()), name="ae.init")  # distributed

    def val_codes(x):
        return codes_mod.pack_bits(_probabilities(model, x, device) > 0.5)

    if prog.stage == "finetune" and prog.epoch == 0 and prog.phase == 1 and validator is not None and dist.is_chief:
        prog.best_val, prog.best_epoch = validator.precision(val_codes), 0
        log.info("validation precision@%d after pretraining: %.4f", validator.k, prog.best_val)
        metrics["val_precision_pretrained"] = prog.best_val
    has_val = dist.broadcast_object(validator is not None, name="has_val")  # distributed: only rank 0 validates
    noise_std = cfg.finetune.noise_std if code_mode == "noise" else 0.0
    phase_epochs = {1: cfg.finetune.epochs, 2: cfg.finetune.binarize_epochs}
    bar = progress.bar("fine-tune", enabled=show)  # rows of this rank, per batch, across both phases
    stop = prog.bad_epochs >= cfg.finetune.patience  # a run resumed after its early stop goes on from there
    while prog.stage == "finetune":
        if stop or prog.epoch >= phase_epochs[prog.phase]:
            if prog.phase == 1 and cfg.finetune.binarize_epochs > 0 and has_val:
                model.load_state_dict(best)  # phase 2 starts from phase 1's best epoch
                model.code_mode = "round"
                optimizer = _finetune_optimizer(model, cfg, scale, 2)
                prog.phase, prog.epoch, prog.bad_epochs, stop = 2, 0, 0, False
                if dist.is_chief:
                    log.info(
                        "fine-tune phase 2: rounding the codes (straight-through), code layer lr x%g",
                        cfg.finetune.binarize_code_lr_scale,
                    )
                continue
            break
        epoch = prog.epoch
        t0, total, n = time.time(), 0.0, 0

        def inputs(ids, counts):
            x = densify(counts, device)
            noise = deterministic_noise(id_keys(ids), model.bits, noise_std, seed).to(device) if noise_std > 0 else None
            return x, noise

        following = _batches_ahead(source(10_000 * prog.phase + epoch, cfg.finetune.batch_size), inputs)
        batch = following()
        while batch is not None:
            x, noise = batch
            finish = finetune_step_async(model, optimizer, x, noise, dist)
            batch = following()  # the next batch, while the gradients are averaged
            total += finish() * x.shape[0]
            n += x.shape[0]
            bar.update(x.shape[0])
        loss, rows = dist.allreduce_scalars([total / max(n, 1), n], name=f"ft{prog.phase}.{epoch}")
        what = f"fine-tuning{' phase 2' if prog.phase == 2 else ''}, epoch {epoch + 1}"
        _check_finite(loss, what, prog.first_error)
        prog.first_error = prog.first_error if prog.first_error is not None else loss
        rec = {
            "epoch": epoch + 1,
            "phase": prog.phase,
            "loss": loss,
            "seconds": time.time() - t0,
            "rows_per_rank": rows,
        }
        if has_val:
            if dist.is_chief:
                score = validator.precision(val_codes)
                rec["val_precision"] = score
                if score > prog.best_val:
                    prog.best_val, prog.best_epoch, prog.bad_epochs = score, epoch + 1, 0
                    prog.best_phase = prog.phase
                    best = {k: v.detach().clone() for k, v in model.state_dict().items()}
                else:
                    prog.bad_epochs += 1
                stop = prog.bad_epochs >= cfg.finetune.patience
            stop = dist.broadcast_object(stop, name=f"stop{prog.phase}.{epoch}")  # distributed
        else:
            best = {k: v.detach().clone() for k, v in model.state_dict().items()}
        metrics["finetune"].append(rec)
        if bar.total is None:
            bar.total = n * (cfg.finetune.epochs + cfg.finetune.binarize_epochs)
        bar.set_postfix(
            phase=prog.phase,
            epoch=f"{epoch + 1}/{phase_epochs[prog.phase]}",
            loss=f"{loss:.4f}",
            val=f"{rec.get('val_precision', float('nan')):.3f}",
        )
        if dist.is_chief:
            log.info(
                "fine-tune%s epoch %d/%d loss %.4f val %s (%.1fs)",
                " phase 2" if prog.phase == 2 else "",
                epoch + 1,
                phase_epochs[prog.phase],
                loss,
                rec.get("val_precision"),
                rec["seconds"],
            )
        prog.epoch = epoch + 1
        if dist.is_chief and (prog.epoch % cfg.train.checkpoint_every == 0 or stop):
            _save_state(out_uri, prog, _ae_tensors(model, optimizer, best), fingerprint, metrics, dist.rank)
        if stop:
            log.info("early stop: no validation gain for %d epochs", cfg.finetune.patience)
    bar.close()
    model.load_state_dict(best)
    model.code_mode = code_mode
    dist.broadcast_(dict(model.state_dict()), name="ae.best")  # distributed
    metrics.update(best_val_precision=prog.best_val, best_epoch=prog.best_epoch, best_phase=prog.best_phase)
    return model.cpu().eval(), metrics


@torch.no_grad()
def _probabilities(model: DeepAutoencoder, x, device: torch.device, batch: int = 2048) -> np.ndarray:
    model.eval()
    out = []
    for s in range(0, x.shape[0], batch):
        out.append(model.encode(densify(x[s : s + batch], device)).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, model.bits), np.float32)
