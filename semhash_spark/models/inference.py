"""Query-side inference without torch: a trained encoder's forward pass in numpy, from the safetensors weights.

``semhash query``, the lookup service and the image searcher encode a handful of queries at a time; loading torch
for that costs seconds of start-up and hundreds of MB. :func:`load_encoder` reads a checkpoint
(``model.safetensors`` + ``model.json``) with ``safetensors.numpy`` and returns an :class:`Encoder` with the
query-side interface of :class:`semhash_spark.models.checkpoint.Hasher` (``bits``, ``version``, ``vocab``, ``meta``,
``config``, ``codes``), giving the same codes. Batch encoding (Spark, GPUs) keeps the torch model.

The encoder is a plain stack of layers ``h = activation(h @ weight.T + bias)`` (``weight`` ``[out, in]`` as
``torch.nn.Linear`` stores it) whose last output is compared with a threshold. ``model.json`` may describe the
stack itself (any model kind)::

    "encoder": {"layers": [{"weight": "<tensor name>", "bias": "<tensor name>", "activation": "sigmoid"}, ...],
                "threshold": 0.5}

Without it the stack is the deep autoencoder's: ``ae.encoder.<i>.weight`` / ``.bias`` for ``i`` over
``sizes``, every layer logistic, threshold ``threshold`` (0.5).

``"network": "kmeans_triangle"`` (model kind ``image_kmeans``, :mod:`semhash_spark.training.kmeans_fit`) puts a fixed
feature extractor in front of a one-layer stack: :class:`KMeansFeatures` computes in numpy what
:meth:`semhash_spark.models.kmeans_features.KMeansFeatureHasher.features` computes in torch (contrast-normalised,
ZCA-whitened patches, triangle activations against the centroids, ``adaptive_avg_pool2d``, square root,
standardisation); the code layer ``kf.code`` (sigmoid, threshold 0.5) follows. This module imports neither torch
nor pyspark.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
from safetensors.numpy import load as st_load_numpy

from semhash_spark import codes as codes_mod
from semhash_spark.io import store
from semhash_spark.config import Config, config_from_dict

FORMAT = "semhash-model/1"
KMEANS_NETWORK = "kmeans_triangle"  # kmeans_fit.NETWORK (kept here: importing kmeans_fit would load torch)
CONTRAST_EPS = 10.0  # models.kmeans_features.CONTRAST_EPS
IMAGES_PER_STEP = 128  # images whose patches are featurised at once (128 x L x K floats)
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
INPUT_TRANSFORMS = ("log1p_idf_l2",)  # documents_vae: l2_normalise(log(1 + counts) * idf); none: the raw input


@dataclass(frozen=True)
class Layer:
    weight: np.ndarray  # float32 [out, in]
    bias: np.ndarray  # float32 [out]
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
    layers = [
        {"weight": f"ae.encoder.{i}.weight", "bias": f"ae.encoder.{i}.bias", "activation": "sigmoid"}
        for i in range(len(sizes) - 1)
    ]
    return {"layers": layers, "threshold": float(meta.get("threshold", 0.5))}


def encoder_layers(tensors: dict[str, np.ndarray], spec: dict[str, Any], uri: str = "model") -> list[Layer]:
    """The float32 layers ``spec`` names, checked to chain (each layer's input is the previous one's output)."""
    layers: list[Layer] = []
    for i, l in enumerate(spec.get("layers") or []):
        act = l.get("activation", "sigmoid")
        if act not in ACTIVATIONS:
            raise CheckpointError(
                f"{uri!r}: encoder layer {i} has unknown activation {act!r}; expected one of {sorted(ACTIVATIONS)}"
            )
        missing = [l.get(k) for k in ("weight", "bias") if l.get(k) not in tensors]
        if missing:
            raise CheckpointError(f"{uri!r}: encoder layer {i} names tensors not in {WEIGHTS}: {missing}")
        w = np.ascontiguousarray(tensors[l["weight"]], dtype=np.float32)
        b = np.ascontiguousarray(tensors[l["bias"]], dtype=np.float32)
        if w.ndim != 2 or b.shape != (w.shape[0],) or (layers and layers[-1].weight.shape[0] != w.shape[1]):
            raise CheckpointError(
                f"{uri!r}: encoder layer {i} has weight {w.shape} and bias {b.shape}, which do not "
                "chain with the layer below"
            )
        layers.append(Layer(w, b, act))
    if not layers:
        raise CheckpointError(f"{uri!r}: the encoder has no layers")
    return layers


def _adaptive_bins(n: int, out: int) -> list[tuple[int, int]]:
    """The input ranges of ``adaptive_avg_pool`` 's ``out`` bins over ``n`` positions (they may overlap)."""
    return [((i * n) // out, -((-(i + 1) * n) // out)) for i in range(out)]


@dataclass(frozen=True)
class KMeansFeatures:
    """The fixed feature extractor of a ``network: kmeans_triangle`` checkpoint, in numpy (float32 throughout,
    the operations of :class:`semhash_spark.models.kmeans_features.KMeansFeatureHasher` in the same order)."""

    height: int
    width: int
    channels: int
    patch: int
    stride: int
    pool: int
    zca_mean: np.ndarray  # [d]
    zca: np.ndarray  # [d, d]
    centroids: np.ndarray  # [K, d]
    feature_mean: np.ndarray  # [K * pool^2]
    feature_std: np.ndarray  # [K * pool^2]

    @property
    def n_input(self) -> int:
        return self.height * self.width * self.channels

    @property
    def n_features(self) -> int:
        return int(self.centroids.shape[0]) * self.pool * self.pool

    def patches(self, x: np.ndarray) -> np.ndarray:
        """Raw pixels ``[n, H*W*C]`` -> contrast-normalised patches ``[n, L, C*patch*patch]`` (``F.unfold``'s
        order: positions row-major, patch values channel, row, column)."""
        h, w, c, p, s = self.height, self.width, self.channels, self.patch, self.stride
        img = np.asarray(x, dtype=np.float32).reshape(-1, h, w, c)
        win = np.lib.stride_tricks.sliding_window_view(img, (p, p), axis=(1, 2))[:, ::s, ::s]  # [n, r, q, C, p, p]
        n, rows, cols = win.shape[:3]
        pt = np.ascontiguousarray(win).reshape(n, rows * cols, c * p * p)
        mean = pt.mean(-1, keepdims=True)
        var = pt.var(-1, keepdims=True, ddof=1)  # torch.var is unbiased
        return (pt - mean) / np.sqrt(var + np.float32(CONTRAST_EPS))

    def triangle(self, wp: np.ndarray) -> np.ndarray:
        """Whitened patches ``[..., d]`` -> triangle activations ``[..., K]``."""
        c = self.centroids
        c2 = (c * c).sum(1)
        z = np.sqrt(np.maximum((wp * wp).sum(-1, keepdims=True) - 2 * (wp @ c.T) + c2, 0))
        return np.maximum(z.mean(-1, keepdims=True) - z, 0)

    def pooled(self, x: np.ndarray) -> np.ndarray:
        """Raw pixels -> ``sqrt`` of the activations averaged over ``pool x pool`` cells, ``[n, K * pool^2]``
        (``F.adaptive_avg_pool2d``'s bins)."""
        rows = (self.height - self.patch) // self.stride + 1
        cols = (self.width - self.patch) // self.stride + 1
        rbins, cbins = _adaptive_bins(rows, self.pool), _adaptive_bins(cols, self.pool)
        k = int(self.centroids.shape[0])
        out = []
        for s in range(0, x.shape[0], IMAGES_PER_STEP):
            p = self.patches(x[s : s + IMAGES_PER_STEP])
            n = p.shape[0]
            f = self.triangle((p - self.zca_mean) @ self.zca)  # [n, L, K]
            f = f.transpose(0, 2, 1).reshape(n, k, rows, cols)
            cells = np.empty((n, k, self.pool, self.pool), np.float32)
            for i, (r0, r1) in enumerate(rbins):
                for j, (c0, c1) in enumerate(cbins):
                    cells[:, :, i, j] = f[:, :, r0:r1, c0:c1].mean(axis=(2, 3))
            out.append(cells.reshape(n, -1))
        if not out:
            return np.zeros((0, self.n_features), np.float32)
        return np.sqrt(np.concatenate(out))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Raw pixels ``[n, H*W*C]`` (HWC, 0-255) -> standardised features, the code layer's input."""
        return ((self.pooled(x) - self.feature_mean) / self.feature_std).astype(np.float32, copy=False)


def kmeans_features(tensors: dict[str, np.ndarray], meta: dict[str, Any], uri: str = "model") -> KMeansFeatures:
    """The feature extractor of a ``network: kmeans_triangle`` checkpoint (weights ``kf.*``, shape
    ``meta["features"]``), its tensors checked against that shape."""
    spec = meta.get("features") or {}
    try:
        h, w, c, p, s, k, pool = (
            int(spec[n]) for n in ("height", "width", "channels", "patch", "stride", "centroids", "pool")
        )
    except (KeyError, TypeError, ValueError):
        raise CheckpointError(
            f"{uri!r}: {META} describes no k-means features ('features' with height, width, "
            f"channels, patch, stride, centroids, pool), got {spec!r:.200}"
        ) from None
    if min(h, w, c, p, s, k, pool) < 1 or min(h, w) < p:
        raise CheckpointError(f"{uri!r}: k-means features {spec!r:.200} are not a valid shape")
    d, nf = c * p * p, k * pool * pool
    want = {
        "kf.zca_mean": (d,),
        "kf.zca": (d, d),
        "kf.centroids": (k, d),
        "kf.feature_mean": (nf,),
        "kf.feature_std": (nf,),
    }
    bad = {
        n: (None if n not in tensors else tuple(tensors[n].shape))
        for n, shape in want.items()
        if n not in tensors or tuple(tensors[n].shape) != shape
    }
    if bad:
        raise CheckpointError(
            f"{uri!r}: the k-means tensors do not fit the features in {META}: expected "
            f"{ {n: want[n] for n in bad} }, got {bad}"
        )
    t = {n: np.ascontiguousarray(tensors[n], dtype=np.float32) for n in want}
    return KMeansFeatures(
        h, w, c, p, s, pool, t["kf.zca_mean"], t["kf.zca"], t["kf.centroids"], t["kf.feature_mean"], t["kf.feature_std"]
    )


@dataclass
class Encoder:
    """A trained encoder, ready to turn dense inputs into packed codes with numpy alone."""

    layers: list[Layer]
    threshold: float
    meta: dict[str, Any]
    config: Config
    input_transform: str | None = None  # one of INPUT_TRANSFORMS, applied before the first layer
    input_scale: np.ndarray | None = None  # its per-input weights (idf), float32 [n_input]
    features: KMeansFeatures | None = None  # raw pixels -> the code layer's input (network kmeans_triangle)

    @property
    def bits(self) -> int:
        return int(self.layers[-1].weight.shape[0])

    @property
    def n_input(self) -> int:
        if self.features is not None:
            return int(self.features.n_input)
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
            if self.features is not None:
                h = self.features(h)
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
    if meta.get("network") == KMEANS_NETWORK:  # model kind image_kmeans: features, then the code layer
        feats = kmeans_features(tensors, meta, uri)
        spec = {
            "layers": [{"weight": "kf.code.weight", "bias": "kf.code.bias", "activation": "sigmoid"}],
            "threshold": float(meta.get("threshold", 0.5)),
        }
        layers = encoder_layers(tensors, spec, uri)
        if layers[0].weight.shape[1] != feats.n_features:
            raise CheckpointError(
                f"{uri!r}: the code layer takes {layers[0].weight.shape[1]} inputs, the k-means "
                f"features are {feats.n_features}"
            )
        return Encoder(layers, spec["threshold"], meta, config_from_dict(meta["config"]), features=feats)
    spec = encoder_spec(meta)
    layers = encoder_layers(tensors, spec, uri)
    transform, scale = spec.get("input"), None
    if transform is not None:
        if transform not in INPUT_TRANSFORMS:
            raise CheckpointError(
                f"{uri!r}: unknown encoder input transform {transform!r}; expected one of {INPUT_TRANSFORMS}"
            )
        scale = tensors.get(spec.get("input_scale"))
        if scale is None or scale.shape != (layers[0].weight.shape[1],):
            raise CheckpointError(
                f"{uri!r}: the input transform needs its scale tensor "
                f"{spec.get('input_scale')!r} of {layers[0].weight.shape[1]} values"
            )
        scale = np.ascontiguousarray(scale, dtype=np.float32)
    return Encoder(layers, float(spec.get("threshold", 0.5)), meta, config_from_dict(meta["config"]), transform, scale)


def load_encoder(uri: str) -> Encoder:
    """The numpy encoder of the checkpoint at ``uri`` (a local folder or ``s3://`` prefix)."""
    meta_uri = store.join(uri, META)
    if not store.exists(meta_uri):
        raise CheckpointError(f"no model at {uri!r}: {META} not found")
    meta = json.loads(store.read_bytes(meta_uri))
    return encoder_from_parts(store.read_bytes(store.join(uri, WEIGHTS)), meta, uri)
