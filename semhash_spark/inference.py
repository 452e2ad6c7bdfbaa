"""Query-side inference without torch: a trained encoder's forward pass in numpy, from the safetensors weights.

``semhash query``, the lookup service and the image searcher encode a handful of queries at a time; loading torch
for that costs seconds of start-up and hundreds of MB. :func:`load_encoder` reads a checkpoint
(``model.safetensors`` + ``model.json``) with ``safetensors.numpy`` and returns an :class:`Encoder` with the
query-side interface of :class:`semhash_spark.checkpoint.Hasher` (``bits``, ``version``, ``vocab``, ``meta``,
``config``, ``codes``), giving the same codes. Batch encoding (Spark, GPUs) keeps the torch model.

The encoder is a plain stack of layers ``h = activation(h @ weight.T + bias)`` (``weight`` ``[out, in]`` as
``torch.nn.Linear`` stores it) whose last output is compared with a threshold. ``model.json`` may describe the
stack itself (any model kind)::

    "encoder": {"layers": [{"weight": "<tensor name>", "bias": "<tensor name>", "activation": "sigmoid"}, ...],
                "threshold": 0.5}

Without it the stack is the deep autoencoder's: ``ae.encoder.<i>.weight`` / ``.bias`` for ``i`` over
``sizes``, every layer logistic, threshold ``threshold`` (0.5). This module imports neither torch nor pyspark.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
from safetensors.numpy import load as st_load_numpy

from . import codes as codes_mod
from . import store
from .config import Config, config_from_dict

FORMAT = "semhash-model/1"
WEIGHTS = "model.safetensors"
META = "model.json"


class CheckpointError(ValueError):
    """A model location is missing, unreadable or of another format."""


def _sigmoid(a: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-a))


ACTIVATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "sigmoid": _sigmoid,
    "relu": lambda a: np.maximum(a, 0),
    "tanh": np.tanh,
    "linear": lambda a: a,
    "identity": lambda a: a,
}
INPUT_TRANSFORMS = ("log1p_idf_l2",)   # documents_vae: l2_normalise(log(1 + counts) * idf); none: the raw input


@dataclass(frozen=True)
class Layer:
    weight: np.ndarray      # float32 [out, in]
    bias: np.ndarray        # float32 [out]
    activation: str


def weights_version(tensors: dict[str, np.ndarray]) -> str:
    """The model version: a hash of the weights (the same bytes :func:`checkpoint.weights_version` hashes)."""
    h = hashlib.sha256()
    for k in sorted(tensors):
        h.update(k.encode())
        h.update(np.ascontiguousarray(tensors[k]).tobytes())
    return h.hexdigest()[:16]


def encoder_spec(meta: dict[str, Any]) -> dict[str, Any]:
    """The encoder's layer stack as ``model.json`` describes it, or the deep autoencoder's default stack."""
    spec = meta.get("encoder")
    if spec:
        return spec
    sizes = meta.get("sizes") or []
    if len(sizes) < 2:
        raise CheckpointError("model.json describes no encoder (neither 'encoder' nor 'sizes')")
    layers = [{"weight": f"ae.encoder.{i}.weight", "bias": f"ae.encoder.{i}.bias", "activation": "sigmoid"}
              for i in range(len(sizes) - 1)]
    return {"layers": layers, "threshold": float(meta.get("threshold", 0.5))}


def encoder_layers(tensors: dict[str, np.ndarray], spec: dict[str, Any], uri: str = "model") -> list[Layer]:
    """The float32 layers ``spec`` names, checked to chain (each layer's input is the previous one's output)."""
    layers: list[Layer] = []
    for i, l in enumerate(spec.get("layers") or []):
        act = l.get("activation", "sigmoid")
        if act not in ACTIVATIONS:
            raise CheckpointError(f"{uri!r}: encoder layer {i} has unknown activation {act!r}; "
                                  f"expected one of {sorted(ACTIVATIONS)}")
        missing = [l.get(k) for k in ("weight", "bias") if l.get(k) not in tensors]
        if missing:
            raise CheckpointError(f"{uri!r}: encoder layer {i} names tensors not in {WEIGHTS}: {missing}")
        w = np.ascontiguousarray(tensors[l["weight"]], dtype=np.float32)
        b = np.ascontiguousarray(tensors[l["bias"]], dtype=np.float32)
        if w.ndim != 2 or b.shape != (w.shape[0],) or (layers and layers[-1].weight.shape[0] != w.shape[1]):
            raise CheckpointError(f"{uri!r}: encoder layer {i} has weight {w.shape} and bias {b.shape}, which do not "
                                  "chain with the layer below")
        layers.append(Layer(w, b, act))
    if not layers:
        raise CheckpointError(f"{uri!r}: the encoder has no layers")
    return layers


@dataclass
class Encoder:
    """A trained encoder, ready to turn dense inputs into packed codes with numpy alone."""

    layers: list[Layer]
    threshold: float
    meta: dict[str, Any]
    config: Config
    input_transform: str | None = None      # one of INPUT_TRANSFORMS, applied before the first layer
    input_scale: np.ndarray | None = None   # its per-input weights (idf), float32 [n_input]

    @property
    def bits(self) -> int:
        return int(self.layers[-1].weight.shape[0])

    @property
    def n_input(self) -> int:
        return int(self.layers[0].weight.shape[1])

    @property
    def version(self) -> str:
        return self.meta["model_version"]

    @property
    def vocab(self) -> list[str]:
        return self.meta.get("vocab", {}).get("words", [])

    def code_probabilities(self, x: np.ndarray, batch_size: int = 4096) -> np.ndarray:
        """Dense inputs ``[n, n_input]`` -> the last layer's outputs ``float32[n, bits]``."""
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.n_input:
            raise ValueError(f"the encoder takes inputs of width {self.n_input}, got shape {x.shape}")
        out = []
        for s in range(0, x.shape[0], batch_size):
            h = self._transform(x[s : s + batch_size])
            for layer in self.layers:
                h = ACTIVATIONS[layer.activation](h @ layer.weight.T + layer.bias)
            out.append(h.astype(np.float32, copy=False))
        return np.concatenate(out) if out else np.zeros((0, self.bits), np.float32)

    def _transform(self, x: np.ndarray) -> np.ndarray:
        if self.input_transform is None:
            return x
        h = np.log1p(np.maximum(x, 0)) * self.input_scale
        return h / np.maximum(np.linalg.norm(h, axis=1, keepdims=True), 1e-8)

    def codes(self, x: np.ndarray) -> np.ndarray:
        """Dense inputs -> packed codes ``uint8[n, ceil(bits/8)]`` (MSB first)."""
        return codes_mod.pack_bits(self.code_probabilities(x) > self.threshold)

    def codes_from_csr(self, counts, batch_size: int = 2048) -> np.ndarray:
        """Sparse word counts (scipy CSR ``[n, V]``) -> packed codes, densifying one batch at a time."""
        parts = [self.codes(counts[i : i + batch_size].toarray()) for i in range(0, counts.shape[0], batch_size)]
        return np.concatenate(parts) if parts else np.zeros((0, codes_mod.code_bytes(self.bits)), np.uint8)


def encoder_from_parts(weights: bytes, meta: dict[str, Any], uri: str = "model") -> Encoder:
    """The encoder from the bytes of ``model.safetensors`` and the parsed ``model.json`` (format and version
    checked)."""
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{uri!r} holds format {meta.get('format')!r}, expected {FORMAT!r}")
    try:
        tensors = st_load_numpy(weights)
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error types for corrupt files
        raise CheckpointError(f"{uri!r}: {WEIGHTS} is unreadable: {e}") from None
    if weights_version(tensors) != meta.get("model_version"):
        raise CheckpointError(f"weights in {uri!r} do not match model_version {meta.get('model_version')}")
    spec = encoder_spec(meta)
    layers = encoder_layers(tensors, spec, uri)
    transform, scale = spec.get("input"), None
    if transform is not None:
        if transform not in INPUT_TRANSFORMS:
            raise CheckpointError(f"{uri!r}: unknown encoder input transform {transform!r}; expected one of "
                                  f"{INPUT_TRANSFORMS}")
        scale = tensors.get(spec.get("input_scale"))
        if scale is None or scale.shape != (layers[0].weight.shape[1],):
            raise CheckpointError(f"{uri!r}: the input transform needs its scale tensor "
                                  f"{spec.get('input_scale')!r} of {layers[0].weight.shape[1]} values")
        scale = np.ascontiguousarray(scale, dtype=np.float32)
    return Encoder(layers, float(spec.get("threshold", 0.5)), meta, config_from_dict(meta["config"]),
                   transform, scale)


def load_encoder(uri: str) -> Encoder:
    """The numpy encoder of the checkpoint at ``uri`` (a local folder or ``s3://`` prefix)."""
    meta_uri = store.join(uri, META)
    if not store.exists(meta_uri):
        raise CheckpointError(f"no model at {uri!r}: {META} not found")
    meta = json.loads(store.read_bytes(meta_uri))
    return encoder_from_parts(store.read_bytes(store.join(uri, WEIGHTS)), meta, uri)
