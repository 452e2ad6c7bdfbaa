"""The numpy encoder (semhash_spark.models.inference) against the torch model: identical codes from real trained models,
any layer stack a checkpoint describes, clear errors, and no torch or pyspark in a lookup process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import save as np_save

from semhash_spark.models import inference
from semhash_spark.models.checkpoint import load_model
from semhash_spark.config import Config, load_config
from semhash_spark.training.fit import train_model
from test_images import small_cifar, small_image_data  # noqa: F401 - the tiny image dataset

ROOT = Path(__file__).resolve().parents[1]
# small batches and a faster fine-tuning rate: 400 training documents then make codes that vary (TINY's do not)
SMALL = [
    "model.hidden=[32]",
    "pretrain.epochs=4",
    "pretrain.batch_size=10",
    "finetune.epochs=2",
    "finetune.batch_size=10",
    "finetune.lr=0.001",
    "finetune.binarize_epochs=1",
    "finetune.val_queries=50",
]


def _same_codes(model_dir: Path, x: np.ndarray) -> None:
    torch_codes = load_model(str(model_dir)).codes(x)
    enc = inference.load_encoder(str(model_dir))
    np.testing.assert_allclose(
        enc.code_probabilities(x), load_model(str(model_dir)).code_probabilities(x), rtol=1e-5, atol=1e-6
    )
    numpy_codes = enc.codes(x)
    assert numpy_codes.shape == torch_codes.shape and numpy_codes.dtype == np.uint8
    assert np.array_equal(numpy_codes, torch_codes), int((numpy_codes != torch_codes).any(axis=1).sum())
    assert len(np.unique(numpy_codes, axis=0)) > 10  # a model whose codes say something


def test_numpy_encoder_gives_the_torch_codes_of_a_document_model(small_dataset, tmp_path):
    """10,000 documents: the real ones of the small dataset, then count vectors drawn from its word frequencies
    with its document lengths."""
    from semhash_spark.data import dataset as ds

    out = tmp_path / "model"
    train_model(str(small_dataset), str(out), load_config(None, SMALL).with_bits(32), progress=False)
    real = [ds.read_split(str(small_dataset), s, columns=("counts",)).counts for s in ("train", "test")]
    x = np.concatenate([c.toarray() for c in real]).astype(np.float32)
    rng = np.random.default_rng(0)
    freq = x.sum(0) / x.sum()
    lengths = rng.choice(x.sum(1).astype(np.int64), size=10_000 - len(x))
    synthetic = np.stack(
        [np.bincount(rng.choice(len(freq), size=max(n, 1), p=freq), minlength=len(freq)) for n in lengths]
    ).astype(np.float32)
    _same_codes(out, np.concatenate([x, synthetic]))


def test_numpy_encoder_gives_the_torch_codes_of_an_image_model(small_image_data, tmp_path):
    """1,000 images: the tiny CIFAR set's real images, then flipped, shifted and noised copies of them."""
    from semhash_spark.data import loader as data_mod

    cfg = load_config(
        ROOT / "conf" / "images.yaml",
        [
            "model.hidden=[32]",
            "pretrain.epochs=1",
            "finetune.epochs=1",
            "finetune.val_fraction=0.2",
            "finetune.val_queries=50",
        ],
    )
    out = tmp_path / "model"
    train_model(str(small_image_data), str(out), cfg.with_bits(32), progress=False)
    pixels = np.concatenate([data_mod.read_image_shard(str(small_image_data), s).pixels for s in ("train", "test")])
    rng = np.random.default_rng(0)
    extra = pixels[rng.integers(0, len(pixels), size=1000 - len(pixels))]
    extra = np.roll(extra[:, :, ::-1], rng.integers(-3, 4), axis=2).astype(np.int16)
    extra = np.clip(extra + rng.integers(-12, 13, size=extra.shape), 0, 255).astype(np.uint8)
    x = np.concatenate([pixels, extra]).reshape(1000, -1).astype(np.float32)
    _same_codes(out, x)


def _write_checkpoint(folder: Path, tensors: dict[str, np.ndarray], spec: dict | None) -> None:
    folder.mkdir()
    (folder / inference.WEIGHTS).write_bytes(np_save(tensors))
    meta = {
        "format": inference.FORMAT,
        "kind": "documents",
        "bits": 8,
        "config": Config().to_dict(),
        "model_version": inference.weights_version(tensors),
    }
    if spec is not None:
        meta["encoder"] = spec
    (folder / inference.META).write_text(json.dumps(meta))


def test_any_described_layer_stack_is_served(tmp_path):
    """A checkpoint's own ``encoder`` stack (names, activations, threshold) against the same stack in torch."""
    rng = np.random.default_rng(1)
    t = {
        "l0.w": rng.normal(size=(16, 40)).astype(np.float32),
        "l0.b": rng.normal(size=16).astype(np.float32),
        "l1.w": rng.normal(size=(12, 16)).astype(np.float32),
        "l1.b": rng.normal(size=12).astype(np.float32),
        "out.w": rng.normal(size=(8, 12)).astype(np.float32),
        "out.b": rng.normal(size=8).astype(np.float32),
    }
    spec = {
        "layers": [
            {"weight": "l0.w", "bias": "l0.b", "activation": "relu"},
            {"weight": "l1.w", "bias": "l1.b", "activation": "tanh"},
            {"weight": "out.w", "bias": "out.b", "activation": "linear"},
        ],
        "threshold": 0.0,
    }
    _write_checkpoint(tmp_path / "m", t, spec)
    enc = inference.load_encoder(str(tmp_path / "m"))
    x = rng.normal(size=(500, 40)).astype(np.float32)
    lin = torch.nn.functional.linear
    with torch.no_grad():
        h = torch.relu(lin(torch.from_numpy(x), torch.from_numpy(t["l0.w"]), torch.from_numpy(t["l0.b"])))
        h = torch.tanh(lin(h, torch.from_numpy(t["l1.w"]), torch.from_numpy(t["l1.b"])))
        ref = lin(h, torch.from_numpy(t["out.w"]), torch.from_numpy(t["out.b"])).numpy() > 0.0
    assert enc.bits == 8
    assert np.array_equal(enc.codes(x), np.packbits(ref, axis=1, bitorder="big"))
    with pytest.raises(ValueError, match="width 40"):
        enc.codes(x[:, :39])


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda s, t: s["layers"][1].update(activation="softsign"), "unknown activation 'softsign'"),
        (lambda s, t: s["layers"][1].update(weight="nope"), "names tensors not in"),
        (lambda s, t: t.update({"l1.w": np.zeros((8, 5), np.float32)}), "do not chain"),
        (lambda s, t: s.update(layers=[]), "no layers"),
    ],
)
def test_a_bad_encoder_description_is_named(tmp_path, change, message):
    t = {
        "l0.w": np.ones((6, 4), np.float32),
        "l0.b": np.zeros(6, np.float32),
        "l1.w": np.ones((8, 6), np.float32),
        "l1.b": np.zeros(8, np.float32),
    }
    spec = {
        "layers": [
            {"weight": "l0.w", "bias": "l0.b", "activation": "sigmoid"},
            {"weight": "l1.w", "bias": "l1.b", "activation": "sigmoid"},
        ]
    }
    change(spec, t)
    _write_checkpoint(tmp_path / "m", t, spec)
    with pytest.raises(inference.CheckpointError, match=message):
        inference.load_encoder(str(tmp_path / "m"))


def test_weights_that_do_not_match_the_model_version_are_refused(tmp_path):
    t = {"ae.encoder.0.weight": np.ones((8, 4), np.float32), "ae.encoder.0.bias": np.zeros(8, np.float32)}
    _write_checkpoint(tmp_path / "m", t, None)
    meta = json.loads((tmp_path / "m" / inference.META).read_text())
    meta["sizes"] = [4, 8]
    (tmp_path / "m" / inference.META).write_text(json.dumps({**meta, "model_version": "0" * 16}))
    with pytest.raises(inference.CheckpointError, match="do not match model_version"):
        inference.load_encoder(str(tmp_path / "m"))
    (tmp_path / "m" / inference.META).write_text(json.dumps(meta))
    assert inference.load_encoder(str(tmp_path / "m")).bits == 8  # the autoencoder's stack from ``sizes``


def test_lookup_processes_import_neither_torch_nor_pyspark():
    code = (
        "import sys, semhash_spark.models.inference, semhash_spark.index.lookup, semhash_spark.service.app, semhash_spark.cli; "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'pyspark')]; assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
