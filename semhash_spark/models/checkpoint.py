"""Self-describing model checkpoints: ``model.safetensors`` (weights, no pickle) + ``model.json`` (everything else).

``model.json`` holds the format, kind, layer sizes, bit count, the encoder's layer stack (``encoder``, read by
:mod:`semhash_spark.models.inference` for torch-free queries), the whole config, the vocabulary and its
fingerprint (documents), the idf statistics, training metrics and a model version (hash of the weights).
:func:`load_model` rebuilds a :class:`Hasher` from the two files alone.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from semhash_spark import codes as codes_mod
from semhash_spark.io import store
from semhash_spark.config import Config, config_from_dict
from semhash_spark.models.inference import FORMAT, META, WEIGHTS, CheckpointError, encoder_spec  # noqa: F401 - names of this format
from semhash_spark.models.autoencoder import DeepAutoencoder
from semhash_spark.models.kmeans_features import KMeansFeatureHasher


def weights_version(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for k in sorted(tensors):
        h.update(k.encode())
        h.update(tensors[k].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def save_tensors(uri: str, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Writes weights then metadata (each write atomic); readers look at the metadata, written last."""
    cpu = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    store.write_bytes(store.join(uri, WEIGHTS), st_save(cpu))
    store.write_bytes(store.join(uri, META), json.dumps(meta, indent=1).encode())


def load_tensors(uri: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    meta_uri = store.join(uri, META)
    if not store.exists(meta_uri):
        raise CheckpointError(f"no model at {uri!r}: {META} not found")
    meta = json.loads(store.read_bytes(meta_uri))
    tensors = st_load(store.read_bytes(store.join(uri, WEIGHTS)))
    return tensors, meta


@dataclass
class Hasher:
    """A trained model ready to turn inputs into packed codes."""

    model: DeepAutoencoder
    meta: dict[str, Any]
    config: Config

    @property
    def bits(self) -> int:
        return self.model.bits

    @property
    def version(self) -> str:
        return self.meta["model_version"]

    @property
    def vocab(self) -> list[str]:
        return self.meta.get("vocab", {}).get("words", [])

    @torch.no_grad()
    def code_probabilities(self, x: np.ndarray | torch.Tensor, batch_size: int = 4096) -> np.ndarray:
        """Dense inputs ``[n, n_input]`` -> code-unit probabilities ``float32[n, bits]``."""
        self.model.eval()
        device = next(self.model.parameters()).device  # a GPU when the encode task was given one
        x = torch.as_tensor(x, dtype=torch.float32)
        out = [self.model.encode(x[i : i + batch_size].to(device)).cpu() for i in range(0, x.shape[0], batch_size)]
        return torch.cat(out).numpy() if out else np.zeros((0, self.bits), np.float32)

    def codes(self, x: np.ndarray | torch.Tensor) -> np.ndarray:
        """Dense inputs -> packed codes ``uint8[n, ceil(bits/8)]`` (threshold 0.5, MSB first)."""
        return codes_mod.pack_bits(self.code_probabilities(x) > self.meta.get("threshold", 0.5))

    def codes_from_csr(self, counts, batch_size: int = 2048) -> np.ndarray:
        """Sparse word counts (scipy CSR ``[n, V]``) -> packed codes, densifying one batch at a time."""
        parts = [self.codes(counts[i : i + batch_size].toarray()) for i in range(0, counts.shape[0], batch_size)]
        return np.concatenate(parts) if parts else np.zeros((0, codes_mod.code_bytes(self.bits)), np.uint8)


def save_model(uri: str, model: DeepAutoencoder, config: Config, extra: dict[str, Any]) -> dict[str, Any]:
    tensors = {f"ae.{k}": v for k, v in model.state_dict().items()}
    meta = {
        "format": FORMAT,
        "kind": config.model.kind,
        "sizes": model.sizes,
        "output": model.output,
        "code_mode": model.code_mode,
        "bits": model.bits,
        "threshold": 0.5,
        "config": config.to_dict(),
        "encoder": encoder_spec({"sizes": model.sizes, "threshold": 0.5}),  # what inference.Encoder computes
        "model_version": weights_version(tensors),
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **extra,
    }
    save_tensors(uri, tensors, meta)
    return meta


def load_model(uri: str) -> Hasher:
    tensors, meta = load_tensors(uri)
    return hasher_from_parts(tensors, meta, uri)


def _check_sizes(sizes: Any, tensors: dict[str, torch.Tensor], uri: str) -> None:
    """``sizes`` in model.json must be positive integers that the stored weights have, layer by layer."""
    if not (
        isinstance(sizes, list)
        and len(sizes) >= 2
        and all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in sizes)
    ):
        raise CheckpointError(
            f"{META} in {uri!r}: 'sizes' must be a list of at least two positive integers, got {sizes!r:.200}"
        )
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        w = tensors.get(f"ae.encoder.{i}.weight")
        if w is None or tuple(w.shape) != (b, a):
            raise CheckpointError(
                f"{META} in {uri!r}: sizes {sizes} say layer {i} is {a} -> {b}, the weights hold "
                f"{None if w is None else tuple(w.shape)[::-1]}"
            )


def hasher_from_parts(tensors: dict[str, torch.Tensor], meta: dict[str, Any], uri: str = "model") -> Hasher:
    """Rebuilds the model from its weights and ``model.json`` contents (checks format and weights version)."""
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{uri!r} holds format {meta.get('format')!r}, expected {FORMAT!r}")
    if (meta.get("encoder") or {}).get("input"):  # model.kind documents_vae: an input transform, then layers
        return _encoder_hasher(tensors, meta, uri)
    try:
        if meta.get("network") == "kmeans_triangle":  # model.kind image_kmeans: semhash_spark.training.kmeans_fit
            model = KMeansFeatureHasher.from_checkpoint(tensors, meta)
        else:
            _check_sizes(meta.get("sizes"), tensors, uri)  # before the model allocates a single layer
            model = DeepAutoencoder(meta["sizes"], output=meta["output"], code_mode=meta["code_mode"])
            model.load_state_dict({k[len("ae.") :]: v for k, v in tensors.items() if k.startswith("ae.")})
    except RuntimeError as e:
        raise CheckpointError(f"weights in {uri!r} do not fit the model described in {META}: {e}") from None
    if weights_version(tensors) != meta["model_version"]:
        raise CheckpointError(f"weights in {uri!r} do not match model_version {meta['model_version']}")
    model.eval()
    return Hasher(model=model, meta=meta, config=config_from_dict(meta["config"]))


def _encoder_hasher(tensors: dict[str, torch.Tensor], meta: dict[str, Any], uri: str) -> Hasher:
    from semhash_spark.models.vae import CodeEncoder

    if weights_version(tensors) != meta["model_version"]:
        raise CheckpointError(f"weights in {uri!r} do not match model_version {meta['model_version']}")
    try:
        model = CodeEncoder.from_description(meta["encoder"], tensors)
    except (KeyError, RuntimeError, ValueError) as e:
        raise CheckpointError(f"weights in {uri!r} do not fit the encoder described in {META}: {e}") from None
    return Hasher(model=model, meta=meta, config=config_from_dict(meta["config"]))
