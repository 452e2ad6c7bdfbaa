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
from semhash_spark import data as data_mod
from semhash_spark import image_sources, images
from semhash_spark.config import ImagesConfig
from semhash_spark.kmeans_fit import bit_statistics, kmeans

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
    images.prepare_images(spark, "imagefolder", str(root / "src"), str(root / "data"),
                          ImagesConfig(files_per_split=2))
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
    from semhash_spark.checkpoint import load_model
    from semhash_spark.image_assess import evaluate_image_model

    model = tmp_path / "m"
    small = ["--set", "features.centroids=64", "--set", "features.patch_samples=20000", "--set", "finetune.epochs=1",
             "--set", "finetune.val_fraction=0.2", "--set", "finetune.val_queries=60"]
    assert cli.main(["train", "--conf", str(ROOT / "conf" / "images-best.yaml"), "--data", str(cifar_data),
                     "--bits", "16", "--out", str(model), *small]) == 0
    meta = json.loads((model / "model.json").read_text())
    assert meta["kind"] == "images" and meta["network"] == "kmeans_triangle" and meta["sizes"] == [3072, 256, 16]
    assert meta["metrics"]["best_epoch"] in (0, 1)

    hasher = load_model(str(model))
    train = data_mod.read_image_shard(str(cifar_data), "train")
    codes = hasher.codes(train.pixels.reshape(len(train), -1))
    assert codes.shape == (len(train), 2)
    bits = C.unpack_bits(codes, 16).mean(0)
    assert bits.min() > 0.15 and bits.max() < 0.85, bits            # balanced bits on the training images

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
    hits = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["results"]
    assert hits[0]["distance"] == 0 and f"train/ship/{query_file.name}" in [h["id"] for h in hits
                                                                             if h["distance"] == 0]
