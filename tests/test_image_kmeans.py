"""``model.kind: image_kmeans`` (conf/images-best.yaml): k-means patch features + a binary code layer, trained on
real CIFAR-10 images and used through the same commands as the papers' image model."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from semhash_spark import codes as C
from semhash_spark.data import loader as data_mod
from semhash_spark.data import image_sources, images
from semhash_spark.config import ImagesConfig
from semhash_spark.training.kmeans_fit import bit_statistics, kmeans
from test_images import small_cifar, small_image_data  # noqa: F401 - the tiny image dataset

ROOT = Path(__file__).resolve().parents[1]
PER_CLASS_TRAIN, PER_CLASS_TEST = 40, 10


@pytest.fixture(scope="module")
def cifar_data(spark, shared_data, tmp_path_factory) -> Path:
    """40 train / 10 test real CIFAR-10 JPEGs per class, prepared (400 / 100 images)."""
    archive = shared_data / "cifar10-jpeg" / "cifar10-jpeg.tar.gz"
    if not archive.is_file():
        pytest.skip("no CIFAR-10 archive")
    root = tmp_path_factory.mktemp("cifar-kmeans")
    want: dict[tuple[str, str], int] = {}
    with tarfile.open(archive) as tar:
        for m in tar:
            key = image_sources._folder_key(m.name.split("/")) if m.isfile() else None
            if key is None:
                continue
            split, label, name = key
            if want.get((split, label), 0) >= (PER_CLASS_TRAIN if split == "train" else PER_CLASS_TEST):
                continue
            want[(split, label)] = want.get((split, label), 0) + 1
            out = root / "src" / split / label / name
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(tar.extractfile(m).read())
    images.prepare_images(spark, "imagefolder", str(root / "src"), str(root / "data"), ImagesConfig(files_per_split=2))
    return root / "data"


def test_kmeans_recovers_separated_clusters():
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    x = (centres[:, None, :] + 0.5 * torch.randn(3, 200, 2, generator=g)).reshape(-1, 2)
    found = kmeans(x, 3, 10, g)
    assert torch.cdist(centres, found).min(1).values.max() < 0.5
    with pytest.raises(ValueError, match="features.centroids"):
        kmeans(x[:2], 3, 10, g)


def test_bit_statistics_see_a_collapsed_code():
    rng = np.random.default_rng(0)
    good = C.pack_bits(rng.random((4000, 32)) < 0.5)
    bad = C.pack_bits(np.repeat(rng.random((4000, 1)) < 0.5, 32, axis=1))
    g, b = bit_statistics(good, 32), bit_statistics(bad, 32)
    assert g["mean_abs_bit_correlation"] < 0.05 and g["largest_bucket_share"] < 0.01
    assert b["mean_abs_bit_correlation"] > 0.99 and b["largest_bucket_share"] > 0.4


def test_image_kmeans_trains_encodes_and_beats_random_codes(cifar_data, tmp_path, capsys):
    from semhash_spark import cli
    from semhash_spark.models.checkpoint import load_model
    from semhash_spark.evaluation.image_assess import evaluate_image_model

    model = tmp_path / "m"
    small = [
        "--set",
        "features.centroids=64",
        "--set",
        "features.patch_samples=20000",
        "--set",
        "finetune.epochs=1",
        "--set",
        "finetune.val_fraction=0.2",
        "--set",
        "finetune.val_queries=60",
    ]
    assert (
        cli.main(
            [
                "train",
                "--config",
                str(ROOT / "conf" / "images-best.yaml"),
                "--data",
                str(cifar_data),
                "--bits",
                "16",
                "--out",
                str(model),
                *small,
            ]
        )
        == 0
    )
    meta = json.loads((model / "model.json").read_text())
    # training picks the pooling grid from the configuration's candidates by validation precision
    cands = [int(g) for g in meta["config"]["features"]["pool_candidates"]]
    pool, pool_val = meta["metrics"]["pool"], meta["metrics"]["pool_val_precision"]
    assert len(cands) > 1 and sorted(int(g) for g in pool_val) == sorted(cands)
    assert pool_val[str(pool)] == max(pool_val.values()) and meta["features"]["pool"] == pool
    assert meta["kind"] == "images" and meta["network"] == "kmeans_triangle"
    assert meta["sizes"] == [3072, 64 * pool * pool, 16]
    assert meta["metrics"]["best_epoch"] in (0, 1)

    hasher = load_model(str(model))
    train = data_mod.read_image_shard(str(cifar_data), "train")
    codes = hasher.codes(train.pixels.reshape(len(train), -1))
    assert codes.shape == (len(train), 2)
    bits = C.unpack_bits(codes, 16).mean(0)
    assert bits.min() > 0.15 and bits.max() < 0.85, bits  # balanced bits on the training images

    res = evaluate_image_model(str(model), str(cifar_data), baseline_bits=(16,))
    # 10 balanced classes: random codes have mAP@1000 near the 0.1 chance level on 400 database images
    assert res["num_queries"] == 100 and res["map_at_1000"] > 0.13, res["map_at_1000"]

    # encode + query --image: a training image finds itself at distance 0 through the published index
    index = tmp_path / "index"
    capsys.readouterr()
    assert cli.main(["encode", "--model", str(model), "--data", str(cifar_data), "--index", str(index)]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["count"] == 500
    query_file = sorted((cifar_data.parent / "src" / "train" / "ship").iterdir())[3]
    assert cli.main(["query", "--index", str(index), "--image", str(query_file), "--k", "5", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["results"][0]
    assert hits[0]["distance"] == 0 and f"train/ship/{query_file.name}" in [h["id"] for h in hits if h["distance"] == 0]


def test_numpy_encoder_gives_the_torch_codes_of_an_image_kmeans_model(
    spark, small_cifar, small_image_data, tmp_path, capsys
):
    """The lookup side's numpy forward pass (semhash_spark.models.inference) of a k-means model against the torch one, on
    600 images (the tiny set's real ones, then flipped, shifted and noised copies), and an ImageSearcher over an
    index encoded with that model answering a query image."""
    from semhash_spark import cli
    from semhash_spark.models import inference
    from semhash_spark.models.checkpoint import load_model
    from semhash_spark.config import load_config
    from semhash_spark.index.image_lookup import ImageSearcher
    from semhash_spark.training.kmeans_fit import train_kmeans_model

    model = tmp_path / "m"
    cfg = load_config(
        ROOT / "conf" / "images-best.yaml",
        [
            "features.centroids=32",
            "features.patch_samples=5000",
            "finetune.epochs=1",
            "features.pool_candidates=[4]",  # overlapping adaptive bins on the 9 x 9 grid
            "finetune.val_fraction=0.2",
            "finetune.val_queries=50",
        ],
    ).with_bits(16)
    train_kmeans_model(str(small_image_data), str(model), cfg)
    enc = inference.load_encoder(str(model))
    assert enc.features is not None and enc.bits == 16 and enc.n_input == 3072 and enc.features.pool == 4
    pixels = np.concatenate([data_mod.read_image_shard(str(small_image_data), s).pixels for s in ("train", "test")])
    rng = np.random.default_rng(0)
    extra = pixels[rng.integers(0, len(pixels), size=600 - len(pixels))]
    extra = np.roll(extra[:, :, ::-1], rng.integers(-3, 4), axis=2).astype(np.int16)
    extra = np.clip(extra + rng.integers(-12, 13, size=extra.shape), 0, 255).astype(np.uint8)
    x = np.concatenate([pixels, extra]).reshape(600, -1).astype(np.float32)
    hasher = load_model(str(model))
    np.testing.assert_allclose(
        enc.code_probabilities(x, batch_size=250), hasher.code_probabilities(x), rtol=1e-4, atol=1e-5
    )
    numpy_codes, torch_codes = enc.codes(x), hasher.codes(x)
    assert numpy_codes.shape == torch_codes.shape == (600, 2) and numpy_codes.dtype == np.uint8
    assert np.array_equal(numpy_codes, torch_codes), int((numpy_codes != torch_codes).any(axis=1).sum())
    assert len(np.unique(numpy_codes, axis=0)) > 10
    with pytest.raises(ValueError, match="width 3072"):
        enc.codes(x[:, :100])

    index = tmp_path / "index"
    assert cli.main(["encode", "--model", str(model), "--data", str(small_image_data), "--index", str(index)]) == 0
    capsys.readouterr()
    searcher = ImageSearcher.open(str(index))
    assert searcher.hasher.features is not None  # the numpy k-means path, no torch model
    query_file = sorted((small_cifar / "train" / "ship").iterdir())[3]
    query_id = f"train/ship/{query_file.name}"
    hits = searcher.search_images(searcher.load_images([query_file.read_bytes()]), k=5)[0]
    assert len(hits) == 5 and hits[0]["distance"] == 0 and query_id in [h["id"] for h in hits if h["distance"] == 0]
