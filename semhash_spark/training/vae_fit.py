"""Training ``model.kind: documents_vae`` (semhash_spark.models.vae) in one process.

The train split is read into memory (sparse), the validation split is carved from it by id hash as for the
papers' model. With ``vae.vocab_candidates`` the model reads only the vocabulary's first N words, N the candidate
whose TF-IDF ranking is most precise on validation (the saved encoder still takes full count rows). Each
remaining document's TF-IDF nearest neighbours (among at most ``vae.neighbour_pool``
training documents) are found once before training. Each epoch is scored by validation precision@100 of the
thresholded codes; the best epoch is kept. Every epoch also checks the validation database's codes for collapse
(one address holding a large share, constant bits): a warning is logged and the defences act (balance term
doubled, learning rate halved).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from semhash_spark.evaluation import bitstats
from semhash_spark import codes as codes_mod
from semhash_spark.data import dataset as ds
from semhash_spark.io import store
from semhash_spark.models.checkpoint import FORMAT, save_tensors, weights_version
from semhash_spark.config import Config
from semhash_spark.models.vae import (
    BernoulliHasher,
    balance_penalty,
    decorrelation_penalty,
    kl_to_half,
    neighbour_contrast,
)
from semhash_spark.training.train import Validator, is_validation_id

log = logging.getLogger(__name__)

KIND = "documents_vae"


def tfidf_rows(counts: sp.csr_matrix, idf: np.ndarray) -> sp.csr_matrix:
    """log(1 + tf) * idf, L2-normalised rows (the encoder's own input transform)."""
    x = counts.astype(np.float32).tocsr(copy=True)
    x.data = np.log1p(x.data)
    x = x.multiply(idf[None, :]).tocsr()
    norms = np.sqrt(np.asarray(x.multiply(x).sum(1)).ravel())
    return sp.diags(1.0 / np.maximum(norms, 1e-8)).dot(x).tocsr().astype(np.float32)


def nearest_neighbours(x: sp.csr_matrix, k: int, pool: int, seed: int, chunk: int = 1024) -> np.ndarray:
    """``int64[n, k]``: for every row, the ``k`` rows of a pool (at most ``pool`` rows) with the highest cosine."""
    n = x.shape[0]
    rng = np.random.default_rng(seed)
    cand = np.arange(n) if n <= pool else np.sort(rng.choice(n, size=pool, replace=False))
    k = min(k, len(cand) - 1)
    dense_pool = torch.from_numpy(x[cand].toarray().T.copy())  # [V, pool]
    out = np.empty((n, k), dtype=np.int64)
    pos_in_pool = np.full(n, -1, dtype=np.int64)
    pos_in_pool[cand] = np.arange(len(cand))
    for s in range(0, n, chunk):
        q = torch.from_numpy(x[s : s + chunk].toarray())
        sim = q @ dense_pool  # [chunk, pool]
        rows = np.arange(s, min(n, s + chunk))
        selfpos = pos_in_pool[rows]
        has = selfpos >= 0
        sim[torch.from_numpy(np.flatnonzero(has)), torch.from_numpy(selfpos[has])] = -np.inf
        out[s : s + len(rows)] = cand[torch.topk(sim, k, dim=1).indices.numpy()]
    return out


def neighbour_targets(counts: sp.csr_matrix, nbrs: np.ndarray | None, weight: float) -> sp.csr_matrix:
    """Each document's word distribution mixed with the mean distribution of its neighbours."""
    lengths = np.asarray(counts.sum(1)).ravel()
    own = sp.diags(1.0 / np.maximum(lengths, 1.0)).dot(counts).tocsr().astype(np.float32)
    if nbrs is None or nbrs.shape[1] == 0 or weight <= 0:
        return own
    n, k = nbrs.shape
    avg = sp.csr_matrix((np.full(n * k, 1.0 / k, np.float32), nbrs.ravel(), np.arange(0, n * k + 1, k)), shape=(n, n))
    return ((1.0 - weight) * own + weight * (avg @ own)).tocsr().astype(np.float32)


def _validator(train: ds.SplitData, val: np.ndarray, cfg: Config) -> Validator | None:
    if not any(train.labels):
        log.warning("training documents have no labels: training runs all epochs without validation")
        return None
    rng = np.random.default_rng(cfg.train.seed)
    q, db = np.flatnonzero(val), np.flatnonzero(~val)
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


def _input_width(train: ds.SplitData, val: np.ndarray, cfg: Config, idf: np.ndarray) -> tuple[int, dict[str, float]]:
    """How many of the vocabulary's first (most frequent) words the model reads and reconstructs: of
    ``vae.vocab_candidates``, the width whose TF-IDF ranking is most precise on the validation split (the smallest
    on a tie). The neighbour targets come from that ranking, and rare words help it on some corpora and dilute it on
    others, so the width is measured, not fixed."""
    vocab = train.counts.shape[1]
    widths = sorted({min(w, vocab) for w in cfg.vae.vocab_candidates}) or [vocab]
    if len(widths) == 1:
        return widths[0], {}
    validator = _validator(train, val, cfg)
    if validator is None:
        log.warning("no validation labels to choose the vocabulary width by: the model reads all %d words", vocab)
        return vocab, {}
    scores = {}
    for w in widths:
        scores[str(w)] = validator.precision_cosine(lambda c, w=w: tfidf_rows(c[:, :w], idf[:w]))
        log.info("vocabulary width %d: TF-IDF validation precision@100 %.4f", w, scores[str(w)])
    best = max(widths, key=lambda w: scores[str(w)])
    log.info("the model reads the %d most frequent of %d words", best, vocab)
    return best, scores


def _dropped(x: torch.Tensor, p: float) -> torch.Tensor:
    """Word dropout: each present word's count zeroed with probability ``p`` (every document keeps one word)."""
    if p <= 0:
        return x
    keep = (torch.rand_like(x) >= p) | (x == x.max(dim=1, keepdim=True).values)
    return x * keep


@torch.no_grad()
def _codes(model: BernoulliHasher, counts: sp.csr_matrix, batch: int = 2048) -> np.ndarray:
    model.eval()
    out = [
        model.encoder.encode(torch.from_numpy(counts[s : s + batch].toarray())).numpy() > 0.5
        for s in range(0, counts.shape[0], batch)
    ]
    return (
        codes_mod.pack_bits(np.concatenate(out))
        if out
        else np.zeros((0, codes_mod.code_bytes(model.encoder.bits)), np.uint8)
    )


def train_vae(data_uri: str, out_uri: str, cfg: Config, progress: bool = True) -> dict[str, Any]:
    """Trains and saves a ``documents_vae`` model; returns the same summary as the papers' model."""
    from tqdm.auto import tqdm

    from semhash_spark.training.fit import summary

    v = cfg.vae
    if v.epochs < 1 or v.batch_size < 2:
        raise ValueError(f"vae.epochs must be >= 1 and vae.batch_size >= 2, got {v.epochs} and {v.batch_size}")
    if not 0.0 <= v.neighbour_weight <= 1.0:
        raise ValueError(f"vae.neighbour_weight must lie in [0, 1], got {v.neighbour_weight}")
    if v.contrast_neighbours < 0 or v.contrast_positives < 1:
        raise ValueError(
            f"vae.contrast_neighbours must be >= 0 and vae.contrast_positives >= 1, got "
            f"{v.contrast_neighbours} and {v.contrast_positives}"
        )
    if cfg.train.threads > 0:
        torch.set_num_threads(cfg.train.threads)
    seed = cfg.train.seed
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    t0 = time.time()
    data_dir = store.local_copy(data_uri)
    meta = ds.read_metadata(data_dir)
    words, doc_freq, n_train = ds.read_vocab(data_dir)
    train = ds.read_split(data_dir, "train", columns=(ds.ID, ds.LABELS, "counts"))
    val = is_validation_id(train.ids, cfg.finetune.val_fraction)
    fit_rows = np.flatnonzero(~val)
    if len(fit_rows) < v.batch_size:
        raise ValueError(
            f"{data_uri!r} has {len(fit_rows)} training documents outside validation, fewer than "
            f"one batch of {v.batch_size}"
        )
    idf = ds.idf(doc_freq, n_train)
    width, width_val = _input_width(train, val, cfg, idf)
    if width < len(words):
        train = dataclasses.replace(train, counts=train.counts[:, :width].tocsr())
        idf = idf[:width]
    counts = train.counts[fit_rows]
    nbrs = None
    if v.neighbours > 0 and v.neighbour_weight > 0:
        nbrs = nearest_neighbours(tfidf_rows(counts, idf), v.neighbours, v.neighbour_pool, seed)
    targets = neighbour_targets(counts, nbrs, v.neighbour_weight)
    prep_seconds = time.time() - t0
    log.info(
        "%d training documents, %d neighbours each, targets ready in %.1fs",
        len(fit_rows),
        0 if nbrs is None else nbrs.shape[1],
        prep_seconds,
    )
    validator = _validator(train, val, cfg)
    n_pos = 0 if nbrs is None else nbrs.shape[1]
    if v.contrast_neighbours > 0:
        n_pos = min(n_pos, v.contrast_neighbours)

    model = BernoulliHasher(width, list(cfg.model.hidden), cfg.model.bits, v.activation, torch.from_numpy(idf))
    lr, balance_w = v.lr, v.balance_weight
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    best_state = {k: t.clone() for k, t in model.state_dict().items()}
    best_val, best_epoch, bad = -1.0, 0, 0
    history, warnings = [], []
    for epoch in tqdm(range(v.epochs), desc="documents_vae", disable=not progress, leave=False):
        te = time.time()
        model.train()
        order = rng.permutation(len(fit_rows))
        total, n = 0.0, 0
        for s in range(0, len(order) - 1, v.batch_size):
            idx = order[s : s + v.batch_size]
            if len(idx) < 2:
                continue
            x = _dropped(torch.from_numpy(counts[idx].toarray()), v.word_dropout)
            t = torch.from_numpy(targets[idx].toarray())
            q, b, logp = model(x)
            recon = -(t * logp).sum(1).mean()
            loss = (
                recon
                + v.kl_weight * kl_to_half(q)
                + balance_w * balance_penalty(q)
                + v.decorrelation_weight * decorrelation_penalty(b)
            )
            if v.contrast_weight > 0 and nbrs is not None:
                for _ in range(v.contrast_positives):
                    pos = nbrs[idx, rng.integers(0, n_pos, len(idx))]  # one of each document's nearest n_pos
                    _, b_pos = model.sample_bits(_dropped(torch.from_numpy(counts[pos].toarray()), v.word_dropout))
                    loss = loss + v.contrast_weight / v.contrast_positives * neighbour_contrast(
                        b, b_pos, v.contrast_temperature
                    )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(recon.detach()) * len(idx)
            n += len(idx)
        rec: dict[str, Any] = {"epoch": epoch + 1, "recon": total / max(n, 1), "seconds": round(time.time() - te, 2)}
        if not np.isfinite(rec["recon"]):
            raise RuntimeError(f"documents_vae training diverged at epoch {epoch + 1} (loss {rec['recon']})")
        if validator is not None:
            rec["val_precision"] = validator.precision(lambda c: _codes(model, c))
            stats = bitstats.bit_statistics(_codes(model, validator.db_x), cfg.model.bits, cfg.index.address_bits)
            rec["largest_bucket_share"] = stats["largest_bucket_share"]
            signs = bitstats.collapse_signs(
                stats,
                max_bucket_share=v.collapse_bucket_share,
                max_constant_fraction=v.collapse_constant_fraction,
                bits=cfg.model.bits,
            )
            if signs:
                balance_w, lr = max(2 * balance_w, 0.1), lr / 2
                for g in opt.param_groups:
                    g["lr"] = lr
                log.warning(
                    "codes are collapsing at epoch %d: %s; balance weight -> %g, learning rate -> %g",
                    epoch + 1,
                    "; ".join(signs),
                    balance_w,
                    lr,
                )
                warnings.append({"epoch": epoch + 1, "signs": signs, "balance_weight": balance_w, "lr": lr})
            elif rec["val_precision"] > best_val:
                best_val, best_epoch, bad = rec["val_precision"], epoch + 1, 0
                best_state = {k: t.clone() for k, t in model.state_dict().items()}
            else:
                bad += 1
        else:
            best_state, best_epoch = {k: t.clone() for k, t in model.state_dict().items()}, epoch + 1
        history.append(rec)
        log.info(
            "documents_vae epoch %d/%d recon %.4f val %s (%.1fs)",
            epoch + 1,
            v.epochs,
            rec["recon"],
            rec.get("val_precision"),
            rec["seconds"],
        )
        if bad >= v.patience:
            log.info("early stop: no validation gain for %d epochs", v.patience)
            break
    if validator is not None and best_val < 0:
        log.warning("every epoch's codes showed collapse: keeping the last epoch's weights")
        best_state, best_epoch = {k: t.clone() for k, t in model.state_dict().items()}, len(history)
    model.load_state_dict(best_state)
    model.eval()
    metrics: dict[str, Any] = {
        "finetune": history,
        "best_val_precision": best_val,
        "best_epoch": best_epoch,
        "collapse_warnings": warnings,
        "vocab_width": width,
        "vocab_val_precision": width_val,
        "prepare_seconds": round(prep_seconds, 1),
        "train_seconds": round(time.time() - t0, 1),
        "world_size": 1,
    }
    stats_rows = validator.db_x if validator is not None else counts[:20_000]
    metrics["bit_stats"] = bitstats.bit_statistics(_codes(model, stats_rows), cfg.model.bits, cfg.index.address_bits)
    enc = model.encoder
    enc.fold_gain()
    enc = enc.widened(len(words))  # reads the dataset's whole count rows; words past the width weigh nothing
    tensors = {f"enc.{k}": t for k, t in enc.state_dict().items()}
    model_meta = {
        "format": FORMAT,
        "kind": KIND,
        "sizes": enc.sizes,
        "bits": enc.bits,
        "threshold": 0.5,
        "encoder": enc.description(),
        "config": cfg.to_dict(),
        "model_version": weights_version(tensors),
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "vocab": {
            "words": words,
            "doc_freq": [int(x) for x in doc_freq],
            "num_train_docs": int(n_train),
            "fingerprint": meta.get("vocab_fingerprint") or ds.vocab_fingerprint(words),
        },
        "data": {"name": meta.get("name"), "counts": meta.get("counts")},
        "metrics": metrics,
    }
    save_tensors(out_uri, tensors, model_meta)
    return summary(out_uri, model_meta)
