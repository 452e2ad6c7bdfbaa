"""Image datasets: readers, quarantine, the writer contract, and prepare -> train -> encode -> query -> evaluate."""

from __future__ import annotations

import io
import itertools
import json
import time
import tarfile
from pathlib import Path

import numpy as np
import pytest
from conftest import missing_data
from PIL import Image

from semhash_spark import codes as C
from semhash_spark.data import loader as data_mod
from semhash_spark.data import image_sources, images
from semhash_spark.config import ImagesConfig

PER_CLASS_TRAIN, PER_CLASS_TEST = 30, 8


def _png(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


@pytest.fixture(scope="module")
def small_cifar(shared_data, tmp_path_factory) -> Path:
    """30 train / 8 test real CIFAR-10 JPEGs per class in the class-folder layout (300 / 80 images)."""
    archive = shared_data / "cifar10-jpeg" / "cifar10-jpeg.tar.gz"
    if not archive.is_file():
        missing_data("no CIFAR-10 archive")
    root = tmp_path_factory.mktemp("cifar-small")
    want: dict[tuple[str, str], int] = {}
    with tarfile.open(archive) as tar:
        for m in tar:
            key = image_sources._folder_key(m.name.split("/")) if m.isfile() else None
            if key is None:
                continue
            split, label, name = key
            n = want.get((split, label), 0)
            if n >= (PER_CLASS_TRAIN if split == "train" else PER_CLASS_TEST):
                continue
            want[(split, label)] = n + 1
            out = root / split / label / name
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(tar.extractfile(m).read())
    return root


@pytest.fixture(scope="module")
def small_image_data(spark, small_cifar, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cifar-small-data")
    report = images.prepare_images(spark, "imagefolder", str(small_cifar), str(out), ImagesConfig(files_per_split=2))
    assert report["kept"]["train"] == 10 * PER_CLASS_TRAIN and report["kept"]["test"] == 10 * PER_CLASS_TEST
    return out


# ---------------------------------------------------------------------------------------------------- readers
def test_mnist_idx_records_and_grey_to_rgb(shared_data):
    folder = shared_data / "mnist"
    if not (folder / "train-images-idx3-ubyte.gz").is_file():
        missing_data("no MNIST files")
    recs = list(itertools.islice(image_sources.read_mnist(str(folder)), 3))
    assert [r["label"] for r in recs] == ["5", "0", "4"]  # MNIST's first three training digits
    assert recs[0]["shape"] == "28,28,1" and len(recs[0]["data"]) == 784 and recs[0]["split"] == "train"
    rgb = images.decode_image(recs[0]["data"], recs[0]["shape"], ImagesConfig())
    assert rgb.shape == (32, 32, 3) and rgb.dtype == np.uint8
    assert np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 1], rgb[..., 2])
    assert rgb.max() > 200  # a digit survived the resize
    grey = images.decode_image(recs[0]["data"], recs[0]["shape"], ImagesConfig(height=28, width=28, channels=1))
    assert np.array_equal(grey[..., 0], np.frombuffer(recs[0]["data"], np.uint8).reshape(28, 28))


def test_parse_idx_rejects_bad_files():
    with pytest.raises(ValueError, match="magic"):
        image_sources.parse_idx(b"\x01\x02\x08\x01" + b"\x00" * 8)
    with pytest.raises(ValueError, match="promises"):
        image_sources.parse_idx(b"\x00\x00\x08\x01\x00\x00\x00\x05" + b"\x01\x02")


def test_cifar_python_batches_are_read_in_hwc_order(tmp_path):
    import pickle

    rng = np.random.default_rng(0)
    chw = rng.integers(0, 256, size=(4, 3, 32, 32), dtype=np.uint8)
    batch = {
        b"data": chw.reshape(4, -1),
        b"labels": [0, 1, 1, 0],
        b"filenames": [f"f{i}.png".encode() for i in range(4)],
    }
    (tmp_path / "data_batch_1").write_bytes(pickle.dumps(batch))
    (tmp_path / "test_batch").write_bytes(pickle.dumps(batch))
    (tmp_path / "batches.meta").write_bytes(pickle.dumps({b"label_names": [b"cat", b"dog"]}))
    recs = list(image_sources.read_cifar10(str(tmp_path)))
    assert [r["split"] for r in recs] == ["train"] * 4 + ["test"] * 4
    assert recs[1]["label"] == "dog" and recs[1]["id"] == "train/dog/data_batch_1/f1.png"
    hwc = np.frombuffer(recs[2]["data"], np.uint8).reshape(32, 32, 3)
    assert np.array_equal(hwc, chw[2].transpose(1, 2, 0))


# ---------------------------------------------------------------------------------------------------- prepare
def test_prepare_imagefolder_converts_modes_and_quarantines_bad_files(spark, small_cifar, tmp_path):
    root = tmp_path / "folder"
    good = sorted((small_cifar / "train" / "cat").iterdir())[:3]
    for split in ("train", "test"):
        (root / split / "cat").mkdir(parents=True)
        (root / split / "odd").mkdir(parents=True)
    for f in good:
        (root / "train" / "cat" / f.name).write_bytes(f.read_bytes())
    (root / "test" / "cat" / "t.jpg").write_bytes(good[0].read_bytes())
    rgb = Image.open(good[1]).convert("RGB")
    odd = root / "train" / "odd"
    (odd / "cmyk.jpg").write_bytes(_png(rgb.convert("CMYK"), "JPEG"))
    pal = rgb.convert("P")
    pal.info["transparency"] = 0
    (odd / "palette.png").write_bytes(_png(pal))
    (odd / "grey.png").write_bytes(_png(rgb.convert("L")))
    (odd / "big.png").write_bytes(_png(rgb.resize((100, 60))))
    (odd / "rgba.png").write_bytes(_png(rgb.convert("RGBA")))
    (odd / "deep16.png").write_bytes(_png(Image.fromarray(np.full((8, 8), 40000, np.uint16))))
    (odd / "empty.jpg").write_bytes(b"")
    (odd / "truncated.jpg").write_bytes(good[2].read_bytes()[:200])
    (odd / "notes.png").write_bytes(b"this is not an image at all")
    (root / "test" / "odd" / "empty.png").write_bytes(b"")

    out = tmp_path / "data"
    report = images.prepare_images(spark, "imagefolder", str(root), str(out), ImagesConfig(files_per_split=2))
    assert report["records_read"] == 14
    assert report["kept"] == {"train": 8, "test": 1, "quarantined": 5}
    assert report["quarantined"] == {"empty file": 2, "undecodable": 2, "unsupported mode I;16": 1}
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["format"] == "semhash-images/1" and meta["kind"] == "images"
    assert meta["labels"] == ["cat", "odd"] and (meta["height"], meta["width"], meta["channels"]) == (32, 32, 3)
    assert images.is_image_dataset(out)

    shard = data_mod.read_image_shard(out, "train")
    assert shard.pixels.shape == (8, 32, 32, 3) and shard.pixels.dtype == np.uint8
    by_id = dict(zip(shard.ids, shard.pixels))
    assert np.array_equal(by_id["train/cat/" + good[0].name], np.asarray(Image.open(good[0]).convert("RGB")))
    grey = by_id["train/odd/grey.png"]
    assert np.array_equal(grey[..., 0], grey[..., 2])
    import pyarrow.parquet as pq

    q = pq.read_table(out / "quarantine").to_pandas()
    assert sorted(q["id"]) == [
        "test/odd/empty.png",
        "train/odd/deep16.png",
        "train/odd/empty.jpg",
        "train/odd/notes.png",
        "train/odd/truncated.jpg",
    ]
    assert q["source"].notna().all() and q["reason"].notna().all()


def test_write_image_dataset_contract(spark, tmp_path):
    """The writer others call: id, label, split, pixels (raw HWC bytes); bad rows are quarantined, not fatal."""
    cfg = ImagesConfig(height=4, width=4, channels=3, files_per_split=1)
    rng = np.random.default_rng(0)
    rows = [
        (
            f"img{i}",
            "a" if i % 2 else "b",
            "train" if i < 6 else "test",
            bytearray(rng.integers(0, 256, 48, dtype=np.uint8).tobytes()),
        )
        for i in range(8)
    ]
    rows += [
        ("img0", "a", "train", bytearray(48)),  # duplicate id
        ("short", "a", "train", bytearray(47)),  # wrong pixel count
        ("nosplit", "a", "valid", bytearray(48)),
    ]  # unknown split
    df = spark.createDataFrame(rows, "id string, label string, split string, pixels binary")
    report = images.write_image_dataset(spark, df, str(tmp_path / "gen"), cfg, name="generated")
    assert report["kept"] == {"train": 6, "test": 2, "quarantined": 3}
    assert set(report["quarantined"]) == {"duplicate id", "wrong pixel count (expected 48 bytes)", "unknown split"}
    shard = data_mod.read_image_shard(tmp_path / "gen", "test")
    got = dict(zip(shard.ids, shard.pixels))
    assert np.array_equal(got["img7"], np.frombuffer(bytes(rows[7][3]), np.uint8).reshape(4, 4, 3))
    # Petastorm's own reader reads it too (the contract), decoding with the Unischema's codec.
    from petastorm import make_reader

    with make_reader(data_mod.image_split_url(tmp_path / "gen", "train"), reader_pool_type="dummy") as reader:
        rows_read = list(reader)
    assert len(rows_read) == 6 and rows_read[0].image.shape == (4, 4, 3)


# ---------------------------------------------------------------------------------------------------- end to end
def test_images_end_to_end(spark, small_image_data, small_cifar, tmp_path, capsys):
    """prepare -> train (image config picked from dataset.json) -> patch model -> encode -> query -> evaluate."""
    from semhash_spark import cli
    from semhash_spark.evaluation.image_assess import evaluate_image_model
    from semhash_spark.index.image_lookup import ImageSearcher

    tiny = [
        "--set",
        "model.hidden=[64]",
        "--set",
        "pretrain.epochs=2",
        "--set",
        "finetune.epochs=2",
        "--set",
        "finetune.val_fraction=0.2",
        "--set",
        "finetune.val_queries=50",
        "--no-progress",
    ]
    model, patch_model, short_model = tmp_path / "m32", tmp_path / "patches", tmp_path / "m28"
    assert cli.main(["train", "--data", str(small_image_data), "--bits", "32", "--out", str(model), *tiny]) == 0
    meta = json.loads((model / "model.json").read_text())
    assert meta["kind"] == "images" and meta["sizes"] == [3072, 64, 32] and meta["code_mode"] == "round"
    assert meta["output"] == "linear" and meta["input_normalisation"]["folded"]
    assert cli.main(["train", "--data", str(small_image_data), "--bits", "28", "--out", str(short_model), *tiny]) == 0
    assert (
        cli.main(
            [
                "train",
                "--data",
                str(small_image_data),
                "--bits",
                "28",
                "--out",
                str(patch_model),
                *tiny,
                "--set",
                "model.kind=image_patches",
                "--set",
                "model.hidden=[32]",
            ]
        )
        == 0
    )
    assert json.loads((patch_model / "model.json").read_text())["sizes"] == [768, 32, 28]
    capsys.readouterr()

    index = tmp_path / "index"
    assert (
        cli.main(
            [
                "encode",
                "--model",
                str(model),
                "--data",
                str(small_image_data),
                "--index",
                str(index),
                "--patch-model",
                str(patch_model),
            ]
        )
        == 0
    )
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["count"] == 380 and report["patch_codes"] and report["kind"] == "images"

    # A training image as the query finds itself at distance 0, by its code and by multiple semantic hashing.
    query_file = sorted((small_cifar / "train" / "ship").iterdir())[3]
    query_id = f"train/ship/{query_file.name}"
    assert cli.main(["query", "--index", str(index), "--image", str(query_file), "--k", "5", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["results"][0]
    assert len(hits) == 5 and hits[0]["distance"] == 0 and query_id in [h["id"] for h in hits if h["distance"] == 0]
    searcher = ImageSearcher.open(str(index))
    pixels = searcher.load_images([query_file.read_bytes()])
    found = searcher.search_images(pixels, k=20, msh_lookup=True)[0]
    top = [h for h in found if h["score"] == found[0]["score"]]
    assert found[0]["score"] == 81 * 8 and query_id in [h["id"] for h in top]
    assert [h["score"] for h in found] == sorted((h["score"] for h in found), reverse=True)
    # MSH means the same through semhash query --index, the service and semhash query --server (one query module)
    assert cli.main(["query", "--index", str(index), "--image", str(query_file), "--k", "20", "--msh", "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["results"][0] == found
    from semhash_spark.client import SemhashClient, ServiceError
    from semhash_spark.service import Settings, build_app, running_server

    with running_server(build_app(Settings(index_uri=str(index), poll_seconds=0.2, log_requests=False))) as url:
        client = SemhashClient(url)
        deadline = time.monotonic() + 120
        while True:  # 503 until the first version is loaded
            try:
                if client.ready()["status"] == "ok":
                    break
            except ServiceError:
                if time.monotonic() > deadline:
                    raise
            time.sleep(0.2)
        svc = client.search(images=[query_file.read_bytes()], k=20, msh=True)
        assert svc["version"] == searcher.index.version and svc["results"][0] == found
        assert cli.main(["query", "--server", url, "--image", str(query_file), "--k", "20", "--msh", "--json"]) == 0
        assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["results"][0] == found
        with pytest.raises(Exception, match="msh is a query by images"):
            client.search(texts=["a ship"], k=5, msh=True)
    ball = searcher.search_images(pixels, k=None, radius=2)[0]
    assert query_id in [h["id"] for h in ball] and all(h["distance"] <= 32 for h in ball)
    with pytest.raises(ValueError, match="query image 0"):
        searcher.load_images([b"not an image"])

    _check_service_image_queries(str(index), query_file.read_bytes(), query_id)

    # The papers' two codes: the 28-bit model's code as the address, the 32-bit code ranks (library and service).
    index2 = tmp_path / "index2"
    assert (
        cli.main(
            [
                "encode",
                "--model",
                str(model),
                "--address-model",
                str(short_model),
                "--data",
                str(small_image_data),
                "--index",
                str(index2),
            ]
        )
        == 0
    )
    rep2 = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert rep2["bits"] == 32 and rep2["address_bits"] == 28 and rep2["address_model_version"]
    s2 = ImageSearcher.open(str(index2))
    assert s2.address_hasher is not None and s2.index.address_from_model
    own = s2.search_images(pixels, k=None, address_radius=0)[0]
    assert query_id in [h["id"] for h in own if h["distance"] == 0]
    qa = int(C.prefix(s2.address_hasher.codes(pixels.reshape(1, -1)), 28)[0])
    I = np.arange(s2.index.ntotal)
    same = {i for i, a in zip(s2.index.ids_of(I), s2.index.addresses_of(I)) if int(a) == qa}
    assert {h["id"] for h in own} == same
    _check_service_image_queries(str(index2), query_file.read_bytes(), query_id, address_ball=sorted(same))

    res = evaluate_image_model(
        str(model),
        str(small_image_data),
        max_queries=40,
        baseline_bits=(32,),
        patch_model_uri=str(patch_model),
        short_model_uri=str(short_model),
        msh_queries=20,
        grid_path=str(tmp_path / "grid.png"),
        address_model_uri=str(short_model),
    )
    assert set(res["baselines"]) == {"euclidean", "lsh", "sh", "pcah", "pca_itq"}
    for key in ("precision_at_100", "map", "map_at_1000", "pr_curve"):
        assert key in res and all(key in b for b in res["baselines"].values())
    assert res["num_queries"] == 40 and (tmp_path / "grid.png").stat().st_size > 0
    assert set(res["msh"]) >= {"msh", "single_28", "deep"} and res["msh"]["num_queries"] == 20
    assert 0 < res["msh"]["msh"]["map_at_1000"] <= 1
    al = res["address_lookup"]  # the 28-bit ball at r = 0..5 ranked by the 32-bit codes, beside the codes alone
    assert al["bits"] == 28 and sorted(al["by_radius"]) == [str(r) for r in range(6)]
    sizes = [al["by_radius"][str(r)]["shortlist_mean"] for r in range(6)]
    assert sizes == sorted(sizes) and sizes[-1] <= 380 and al["code_alone_map_at_1000"] == res["map_at_1000"]
    assert all(0 <= v["rerank_code_map_at_1000"] <= 1 for v in al["by_radius"].values())


def _check_service_image_queries(
    index_uri: str, image_bytes: bytes, query_id: str, address_ball: list | None = None
) -> None:
    """POST /search with base64 images through the real HTTP server; non-image bytes are a 422."""
    import base64
    import time
    import urllib.error
    import urllib.request

    from semhash_spark.service.app import build_app, running_server
    from semhash_spark.service.settings import Settings

    def post(url, body):
        req = urllib.request.Request(
            url + "/search", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    app = build_app(Settings(index_uri=index_uri, poll_seconds=0.5, log_requests=False))
    with running_server(app) as url:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(url + "/readyz", timeout=5) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            assert time.monotonic() < deadline, "service never became ready"
            time.sleep(0.2)
        status, body = post(url, {"images": [base64.b64encode(image_bytes).decode()], "k": 1000})
        assert status == 200, body
        assert body["results"][0][0]["distance"] == 0 and query_id in [
            h["id"] for h in body["results"][0] if h["distance"] == 0
        ]
        if address_ball is not None:  # the image's address by the address model, as the library
            status, body = post(url, {"images": [base64.b64encode(image_bytes).decode()], "address_radius": 0})
            assert status == 200 and sorted(h["id"] for h in body["results"][0]) == address_ball, body
        status, body = post(url, {"images": [base64.b64encode(b"GIF89a not really").decode()], "k": 3})
        assert status == 422 and "images[0] is not an image this index can read" in body["detail"], body
        status, body = post(url, {"images": ["%%% not base64"], "k": 3})
        assert status == 422 and "base64" in body["detail"]


def test_two_horovod_ranks_train_an_image_model(small_image_data, tmp_path):
    """Two ranks, each reading its own Petastorm shard, take the same number of steps and agree on one model."""
    from semhash_spark.config import load_config
    from semhash_spark.training.fit import train_model

    conf = Path(__file__).resolve().parents[1] / "conf" / "images.yaml"
    cfg = load_config(
        conf,
        [
            "model.hidden=[32]",
            "pretrain.epochs=1",
            "finetune.epochs=1",
            "finetune.val_fraction=0.2",
            "finetune.val_queries=50",
        ],
    ).with_bits(16)
    result = train_model(str(small_image_data), str(tmp_path / "m"), cfg, np=2, progress=False)
    assert result["world_size"] == 2 and result["bits"] == 16
    meta = json.loads((tmp_path / "m" / "model.json").read_text())
    assert meta["kind"] == "images" and meta["metrics"]["world_size"] == 2
    # every rank trained on its shard: the rows per rank add up to the training images outside validation
    rows = meta["metrics"]["pretrain"][0]["rows_per_rank"]
    assert 0 < 2 * rows <= 10 * PER_CLASS_TRAIN
