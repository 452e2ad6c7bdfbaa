"""Typed, frozen configuration: ``conf/*.yaml`` -> dataclasses, with ``--set section.key=value`` overrides.

The library never reads YAML or the environment itself: jobs and the CLI call :func:`load_config` and hand the
resulting objects down. Unknown keys and wrong types are errors that name the key.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A configuration file or override is wrong; the message names the key."""


@dataclass(frozen=True)
class PrepareConfig:
    vocab_size: int = 2000  # the papers' 2000-word vocabulary
    min_token_len: int = 2
    max_token_len: int = 30
    tokens: str = "letters"  # letters | alnum (runs of letters and digits): corpora.TOKEN_PATTERNS
    min_doc_words: int = 1  # documents with fewer in-vocabulary words are quarantined
    strip_headers: bool = False  # 20ng: keep headers (as in the quality notes' baselines)
    test_fraction: float = 0.2  # jsonl without a split field: deterministic split by id hash
    files_per_split: int = 8  # Parquet files per split (row groups feed Petastorm shards)
    snippet_words: int = 30  # the stored snippet: the text's first words (0: no snippet) ...
    snippet_chars: int = 200  # ... cut to at most this many characters


@dataclass(frozen=True)
class ImagesConfig:
    """Image datasets (``semhash-images/1``): every image is resized to height x width x channels."""

    height: int = 32
    width: int = 32
    channels: int = 3  # 3: grey images (MNIST) are replicated to RGB; 1: colour images become grey
    files_per_split: int = 8  # Parquet files (one row group each) per split: Petastorm shards
    patch_side: int = 16  # multiple semantic hashing: each of the 81 retina glimpses is side x side
    patch_fovea: int = 8  # the centre fovea x fovea of a glimpse is at full resolution, the rest at half


@dataclass(frozen=True)
class ModelConfig:
    kind: str = "documents"  # documents | documents_vae | images | image_patches | image_kmeans
    hidden: tuple[int, ...] = (500, 500)  # 2000-500-500-{bits}
    bits: int = 64


@dataclass(frozen=True)
class FeaturesConfig:
    """``model.kind: image_kmeans``: k-means patch features (Coates, Lee & Ng 2011) under a binary code layer."""

    patch: int = 6  # patch side (the paper's 6 x 6)
    stride: int = 3  # between patches (the paper: 1; 3 costs a ninth)
    centroids: int = 400  # K
    pool: int = 2  # activations summed over pool x pool cells (the paper's quadrants)
    pool_candidates: tuple[int, ...] = ()  # pooling grids training picks from by validation precision (() = pool)
    patch_samples: int = 100_000  # random training patches for whitening and k-means
    kmeans_iters: int = 10
    fit_images: int = 20_000  # training images whose features fit the code layer (0: all)
    zca_eps: float = 0.1  # added to the eigenvalues of the patch covariance before whitening
    itq_iters: int = 50  # the code layer starts as PCA + ITQ of the features
    balance_weight: float = 0.1  # code-layer fine-tuning (finetune.epochs): per-bit mean^2 ...
    decorrelation_weight: float = 0.1  # ... and squared off-diagonal bit correlations, beside the similarity loss


@dataclass(frozen=True)
class PretrainConfig:
    epochs: int = 30
    batch_size: int = 100
    lr: float = 0.1  # binary RBMs; the Poisson layer uses lr * poisson_lr_scale
    poisson_lr_scale: float = 0.1
    momentum_start: float = 0.5  # Hinton's recipe: 0.5 for the first epochs, then 0.9
    momentum_final: float = 0.9
    momentum_switch_epoch: int = 5
    weight_decay: float = 2e-4
    init_std: float = 0.01


@dataclass(frozen=True)
class FinetuneConfig:
    epochs: int = 20
    batch_size: int = 100
    lr: float = 1e-4
    noise_std: float = 4.0  # deterministic Gaussian noise of variance 16 on the code inputs
    val_fraction: float = 0.1  # carved from train to choose the epoch by retrieval precision
    patience: int = 4
    binarize_epochs: int = 5  # phase 2: noise + straight-through rounded codes, from phase 1's best (0: off)
    binarize_code_lr_scale: float = 10.0  # phase 2: the code layer's learning rate multiplier
    val_queries: int = 1000


@dataclass(frozen=True)
class VaeConfig:
    """``model.kind: documents_vae`` (semhash_spark.training.vae_fit); validation uses finetune.val_fraction/val_queries."""

    epochs: int = 30
    batch_size: int = 100
    lr: float = 1e-3  # Adam
    activation: str = "relu"  # hidden layers: relu | tanh | sigmoid
    neighbours: int = 10  # TF-IDF nearest training neighbours mixed into each target (0: own words only)
    neighbour_weight: float = 0.5  # target = (1 - w) own word distribution + w neighbours' mean
    neighbour_pool: int = 20000  # neighbours are searched among at most this many training documents
    kl_weight: float = 0.02  # KL(q || Bernoulli(0.5)) per document
    balance_weight: float = 0.1  # batch bit-balance term
    decorrelation_weight: float = 0.1
    contrast_weight: float = 0.0  # InfoNCE pulling each document's bits towards one of its neighbours' (0: off)
    contrast_temperature: float = 0.2
    contrast_neighbours: int = 0  # positives drawn from the nearest this many of the neighbours (0: all of them)
    contrast_positives: int = 1  # positives per document in each batch, one InfoNCE term each (averaged)
    word_dropout: float = 0.0  # training only: each word's count dropped with this probability (input noise)
    vocab_candidates: tuple[int, ...] = ()  # input widths (most frequent N words) picked by validation TF-IDF
    patience: int = 6  # epochs without validation gain before stopping
    collapse_bucket_share: float = 0.2  # warn (and defend) when the largest address holds more of the codes
    collapse_constant_fraction: float = 0.25  # ... or more than this fraction of bits is nearly constant


@dataclass(frozen=True)
class TrainConfig:
    seed: int = 1234
    lr_scaling: str = "linear"  # how learning rates scale with the world size: linear | sqrt | none
    device: str = "auto"  # auto | cpu | cuda
    threads: int = 0  # torch threads per process; 0 = cores divided by ranks
    checkpoint_every: int = 1  # epochs between resumable checkpoints
    reader_pool: str = "dummy"  # petastorm reader pool: dummy | process (the thread pool can lose rows)


@dataclass(frozen=True)
class IndexConfig:
    address_bits: int = 20  # the papers' 20-bit memory addresses (without an address model: the code's prefix)
    partition_bits: int = 8  # leading bits that name a shard folder
    store_counts: bool = True  # keep word counts in shards for TF-IDF re-ranking
    rerank_candidates: int = 100  # shortlist size before TF-IDF re-ranking


@dataclass(frozen=True)
class EncodeConfig:
    batch_size: int = 2048  # Arrow batch size for the encode UDF
    shuffle_partitions: int = 0  # 0: one Spark partition per two cores


@dataclass(frozen=True)
class EvaluateConfig:
    max_queries: int = 0  # 0: every test document is a query
    tie_seed: int = 0
    plot: bool = True


@dataclass(frozen=True)
class GenerateConfig:
    """``semhash generate``: synthetic corpora shaped like a real one (see semhash_spark.data.generate)."""

    topics: int = 40  # LDA topics fitted to the source corpus, shared by all classes
    lda_iterations: int = 10  # batch variational EM passes of the topic-model fit
    docs_per_task: int = 10_000  # documents per Spark task (one Parquet file per split each)
    images_per_task: int = 20_000  # images per Spark task
    max_shift: int = 4  # images: shift of up to this many pixels each way
    min_crop: float = 0.75  # images: crop side as a fraction of the image (resized back)
    noise_std: float = 8.0  # images: Gaussian pixel noise, 0..255 scale
    flip: bool = True  # images: random horizontal flips (never for MNIST digits)


@dataclass(frozen=True)
class Config:
    prepare: PrepareConfig = field(default_factory=PrepareConfig)
    images: ImagesConfig = field(default_factory=ImagesConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    features: FeaturesConfig = field(default_factory=FeaturesConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    vae: VaeConfig = field(default_factory=VaeConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    index: IndexConfig = field(default_factory=IndexConfig)
    encode: EncodeConfig = field(default_factory=EncodeConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))

    def replace(self, **sections: Any) -> "Config":
        return dataclasses.replace(self, **sections)

    def with_bits(self, bits: int) -> "Config":
        if bits <= 0:
            raise ConfigError(f"model.bits must be positive, got {bits}")
        return self.replace(model=dataclasses.replace(self.model, bits=bits))


# Ranges checked at load, by section.key: (lowest, highest) inclusive (None: unbounded), or a tuple of choices.
# A value outside names its key: `model.bits=0` is refused, never trained as some default.
_INF = None
RANGES: dict[str, Any] = {
    "prepare.vocab_size": (1, _INF),
    "prepare.min_token_len": (1, _INF),
    "prepare.max_token_len": (1, _INF),
    "prepare.min_doc_words": (0, _INF),
    "prepare.test_fraction": (0.0, 1.0),
    "prepare.files_per_split": (1, _INF),
    "images.height": (1, _INF),
    "images.width": (1, _INF),
    "images.channels": (1, 3),
    "images.files_per_split": (1, _INF),
    "images.patch_side": (1, _INF),
    "images.patch_fovea": (1, _INF),
    "model.kind": ("documents", "documents_vae", "images", "image_patches", "image_kmeans"),
    "model.hidden": (1, _INF),
    "model.bits": (1, _INF),
    "vae.vocab_candidates": (1, _INF),
    "pretrain.epochs": (0, _INF),
    "pretrain.batch_size": (1, _INF),
    "pretrain.lr": (0.0, _INF),
    "pretrain.poisson_lr_scale": (0.0, _INF),
    "pretrain.momentum_start": (0.0, 1.0),
    "pretrain.momentum_final": (0.0, 1.0),
    "pretrain.momentum_switch_epoch": (0, _INF),
    "pretrain.weight_decay": (0.0, _INF),
    "pretrain.init_std": (0.0, _INF),
    "finetune.epochs": (0, _INF),
    "finetune.batch_size": (1, _INF),
    "finetune.lr": (0.0, _INF),
    "finetune.noise_std": (0.0, _INF),
    "finetune.val_fraction": (0.0, 1.0),
    "finetune.patience": (0, _INF),
    "finetune.binarize_epochs": (0, _INF),
    "finetune.binarize_code_lr_scale": (0.0, _INF),
    "finetune.val_queries": (1, _INF),
    "train.lr_scaling": ("linear", "sqrt", "none"),
    "train.threads": (0, _INF),
    "train.checkpoint_every": (1, _INF),
    "train.reader_pool": ("dummy", "process", "thread"),
    "index.address_bits": (0, 64),
    "index.partition_bits": (0, 24),
    "index.rerank_candidates": (1, _INF),
    "encode.batch_size": (1, _INF),
    "encode.shuffle_partitions": (0, _INF),
    "evaluate.max_queries": (0, _INF),
    "generate.topics": (1, _INF),
    "generate.lda_iterations": (1, _INF),
    "generate.docs_per_task": (1, _INF),
    "generate.images_per_task": (1, _INF),
    "generate.max_shift": (0, _INF),
    "generate.min_crop": (0.0, 1.0),
    "generate.noise_std": (0.0, _INF),
}


def _check_range(key: str, value: Any) -> None:
    rule = RANGES.get(key)
    if rule is None:
        return
    if isinstance(value, tuple):  # a list of layer sizes: every item in range
        for v in value:
            _check_range(key, v)
        return
    if isinstance(rule[0], str):
        if value not in rule:
            raise ConfigError(f"{key}: {value!r} is not one of {list(rule)}")
        return
    lo, hi = rule
    if value != value or (lo is not None and value < lo) or (hi is not None and value > hi):  # NaN too
        bound = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise ConfigError(f"{key}: {value!r} is out of range (must be {bound})")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if origin is tuple:
        if isinstance(value, str):
            value = [v for v in value.replace("[", "").replace("]", "").split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (item_tp, _) = typing.get_args(tp)
        return tuple(_coerce(v, item_tp, key) for v in value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        try:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: expected an integer, got {value!r}") from None
    if tp is float:
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: expected a number, got {value!r}") from None
    if tp is str:
        if not isinstance(value, (str, int, float)):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return str(value)
    raise AssertionError(f"unsupported config type {tp} for {key}")


def _build(cls: type, data: dict[str, Any], prefix: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(
            f"unknown config key {prefix + unknown[0]!r}; known keys under {prefix or 'the top level'}: {sorted(names)}"
        )
    kwargs = {}
    for name, value in data.items():
        tp = hints[name]
        key = prefix + name
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, value, key + ".")
        else:
            kwargs[name] = _coerce(value, tp, key)
            _check_range(key, kwargs[name])
    obj = cls(**kwargs)
    if isinstance(obj, PrepareConfig) and obj.max_token_len < obj.min_token_len:
        raise ConfigError(
            f"{prefix}max_token_len: {obj.max_token_len} is below {prefix}min_token_len ({obj.min_token_len})"
        )
    if isinstance(obj, ImagesConfig) and (obj.channels not in (1, 3) or obj.patch_fovea > obj.patch_side):
        raise ConfigError(
            f"{prefix}channels must be 1 or 3 and {prefix}patch_fovea ({obj.patch_fovea}) at most "
            f"{prefix}patch_side ({obj.patch_side}); got channels={obj.channels}"
        )
    return obj


def _set_override(tree: dict[str, Any], assignment: str) -> None:
    if "=" not in assignment:
        raise ConfigError(f"override {assignment!r} must look like section.key=value")
    key, raw = assignment.split("=", 1)
    parts = key.strip().split(".")
    if len(parts) != 2 or not all(parts):
        raise ConfigError(f"override key {key!r} must be section.key (e.g. pretrain.epochs)")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        value = raw
    tree.setdefault(parts[0], {})
    if not isinstance(tree[parts[0]], dict):
        raise ConfigError(f"{parts[0]!r} is not a config section")
    tree[parts[0]][parts[1]] = raw if value is None else value


def load_config(path: str | Path | None = None, overrides: typing.Sequence[str] = ()) -> Config:
    """Reads a YAML config (or the built-in defaults when ``path`` is None) and applies overrides."""
    tree: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {str(p)!r} does not exist")
        try:
            loaded = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {str(p)!r} is not valid YAML: {e}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {str(p)!r} must hold a mapping of sections")
        tree = loaded
    for assignment in overrides:
        _set_override(tree, assignment)
    return _build(Config, tree, "")


def config_from_dict(data: dict[str, Any]) -> Config:
    """Rebuilds a Config saved with :meth:`Config.to_dict` (e.g. from a checkpoint)."""
    return _build(Config, data, "")
