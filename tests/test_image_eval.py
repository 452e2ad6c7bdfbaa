"""Image evaluation on a few hundred real CIFAR-10 JPEGs: result keys, Euclidean against brute force, the grid."""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pytest
from conftest import missing_data

from semhash_spark import codes as C
from semhash_spark.evaluation.evaluate import (
    euclidean_method,
    evaluate_methods,
    hamming_method,
    rank_database,
    ranked_relevance_metrics,
    tie_permutation,
)
from semhash_spark.evaluation.hashing_baselines import PCAITQ
from semhash_spark.evaluation.image_eval import evaluate_image_codes, grid_query_rows, retrieval_mosaic

PER_CLASS = {"train": 50, "test": 12}
FIGURES = {"precision_at_100", "map", "map_at_1000", "pr_curve", "num_queries", "num_database", "skipped_queries"}


@pytest.fixture(scope="module")
def cifar(shared_data):
    """The first 50 train and 12 test JPEGs of each CIFAR-10 class: uint8 [n, 32, 32, 3] images and label names."""
    from PIL import Image

    archive = shared_data / "cifar10-jpeg" / "cifar10-jpeg.tar.gz"
    if not archive.is_file():
        missing_data(f"no CIFAR-10 JPEG archive at {archive}")
    got: dict[tuple[str, str], int] = {}
    out = {"train": ([], []), "test": ([], [])}
    with tarfile.open(archive) as tar:
        for m in tar:
            parts = m.name.split("/")  # cifar10-jpeg/<split>/<class>/NNNN.jpg
            if not m.isfile() or len(parts) != 4 or parts[1] not in out:
                continue
            key = (parts[1], parts[2])
            if got.get(key, 0) >= PER_CLASS[parts[1]]:
                continue
            got[key] = got.get(key, 0) + 1
            image = Image.open(io.BytesIO(tar.extractfile(m).read())).convert("RGB")
            out[parts[1]][0].append(np.asarray(image))
            out[parts[1]][1].append(parts[2])
    (x_train, y_train), (x_test, y_test) = [(np.stack(x), y) for x, y in (out["train"], out["test"])]
    assert x_train.shape == (500, 32, 32, 3) and x_test.shape == (120, 32, 32, 3)
    return x_train, y_train, x_test, y_test


def label_codes(labels, classes):
    """Perfect 16-bit codes: one bit per class."""
    eye = np.eye(16, dtype=np.uint8)
    return C.pack_bits(eye[[classes.index(y) for y in labels]])


@pytest.mark.slow  # a full evaluation with baselines: tens of seconds
def test_evaluate_image_codes_reports_deep_codes_baselines_and_extras(cifar, tmp_path):
    x_train, y_train, x_test, y_test = cifar
    classes = sorted(set(y_train))
    deep = (label_codes(y_train, classes), label_codes(y_test, classes))
    itq = PCAITQ(32, seed=1).fit(x_train.reshape(500, -1))
    itq_codes = (itq.encode(x_train.reshape(500, -1)), itq.encode(x_test.reshape(120, -1)))
    grid, plot = tmp_path / "grid.png", tmp_path / "pr.png"
    out = evaluate_image_codes(
        x_train,
        y_train,
        x_test,
        y_test,
        deep,
        16,
        baseline_bits=[8, 32],
        extra_methods={"itq32": itq_codes},
        grid_path=grid,
        images_for_grid=(x_train, x_test),
        plot_path=plot,
    )
    assert json.loads(json.dumps(out)) == out
    assert FIGURES | {"bits", "baselines", "baselines_by_bits", "extra_methods", "grid", "plot"} <= set(out)
    assert set(out["baselines"]) == {"euclidean", "lsh", "sh", "pcah", "pca_itq"}
    assert set(out["baselines_by_bits"]) == {"8", "16", "32"}
    for b, by_name in out["baselines_by_bits"].items():
        assert set(by_name) == {"lsh", "sh", "pcah", "pca_itq"}
        assert all(r["bits"] == int(b) for r in by_name.values())
    for name in ("lsh", "sh", "pcah", "pca_itq"):
        assert out["baselines"][name] == out["baselines_by_bits"]["16"][name]
    for r in [out, *out["baselines"].values(), *out["extra_methods"].values()]:
        assert FIGURES <= set(r)
        assert (r["num_queries"], r["num_database"], r["skipped_queries"]) == (120, 500, 0)
    # Label codes rank every same-class image first.
    assert out["bits"] == 16 and out["map"] == pytest.approx(1.0) and out["map_at_1000"] == pytest.approx(1.0)
    # Pixels on CIFAR are weak but above chance (0.1): exact Euclidean and PCA-ITQ; every method below the oracle.
    assert 0.1 < out["baselines"]["euclidean"]["precision_at_100"] < 0.5
    for r in [*out["baselines"].values(), *out["extra_methods"].values()]:
        assert r["map"] < 0.5
    # The extra codes give what evaluate_methods gives for them alone.
    alone = evaluate_methods({"m": hamming_method(*itq_codes, 32)}, [[y] for y in y_train], [[y] for y in y_test])
    assert out["extra_methods"]["itq32"] == alone["m"]
    for path in (grid, plot):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from PIL import Image

    width, height = Image.open(grid).size
    assert height > 5 * 7 * 30 and width > 11 * 30  # 5 queries x 7 methods rows of 11 images, upscaled

    # A fixed query subsample: deterministic, and the deep row stays perfect.
    sub = evaluate_image_codes(
        x_train, y_train, x_test, y_test, deep, 16, baselines=("euclidean", "pcah"), max_queries=30
    )
    assert sub["num_queries"] == 30 and set(sub["baselines"]) == {"euclidean", "pcah"}
    assert sub["baselines_by_bits"] == {"16": {"pcah": sub["baselines"]["pcah"]}}
    again = evaluate_image_codes(
        x_train, y_train, x_test, y_test, deep, 16, baselines=("euclidean", "pcah"), max_queries=30
    )
    assert {k: v for k, v in again.items() if k != "seconds"} == {k: v for k, v in sub.items() if k != "seconds"}


def test_euclidean_ranking_equals_brute_force_on_pixels(cifar):
    x_train, y_train, x_test, y_test = cifar
    db, qs = x_train.reshape(500, -1), x_test.reshape(120, -1)
    db64 = db.astype(np.float64)
    exact = np.stack([((db64 - q) ** 2).sum(axis=1) for q in qs.astype(np.float64)])  # [120, 500], one query a time
    perm = tie_permutation(500, tie_seed=3)
    pos = np.empty(500, dtype=np.int64)
    pos[perm] = np.arange(500)
    want = np.stack([np.lexsort((pos, exact[i])) for i in range(120)])  # key: (distance, tie position)

    exact_method = euclidean_method(db, qs, dtype=np.float64)
    assert np.allclose(exact_method.scores(np.arange(120)), exact, rtol=1e-12, atol=1e-6)
    assert np.array_equal(rank_database(exact_method.scores(np.arange(120)), perm, descending=False), want)

    fast = euclidean_method(db, qs)  # float32: the same order but for near-ties
    got = rank_database(fast.scores(np.arange(120)), perm, descending=False)
    along = np.take_along_axis(exact, got, axis=1)
    assert np.all(np.diff(along, axis=1) >= -1e-5 * along[:, 1:])
    assert (got == want).mean() > 0.99

    # Metrics through evaluate_methods equal those of the brute-force ranking.
    rel = np.asarray(y_test)[:, None] == np.asarray(y_train)[None, :]
    brute = ranked_relevance_metrics(np.take_along_axis(rel, want, axis=1))
    res = evaluate_methods({"e": exact_method}, [[y] for y in y_train], [[y] for y in y_test], tie_seed=3)["e"]
    assert res["map"] == pytest.approx(brute["ap"].mean())
    assert res["map_at_1000"] == pytest.approx(brute["ap_at_1000"].mean())
    assert res["precision_at_100"] == pytest.approx(brute["p@100"].mean())


def test_retrieval_mosaic_frames_mark_same_label_retrievals(cifar):
    x_train, y_train, x_test, y_test = cifar
    db_labels, q_labels = [[y] for y in y_train], [[y] for y in y_test]
    rows = grid_query_rows(np.arange(120), 3, seed=0)
    assert np.array_equal(rows, grid_query_rows(np.arange(120), 3, seed=0)) and rows.size == 3
    perm = tie_permutation(500, 0)
    euclid = rank_database(
        euclidean_method(x_train.reshape(500, -1), x_test.reshape(120, -1)).scores(rows), perm, descending=False
    )[:, :10]
    same_class = np.stack([[j for j in range(500) if y_train[j] == y_test[q]][:10] for q in rows])
    canvas, titles, centres = retrieval_mosaic(
        (x_train, x_test), rows, {"oracle": same_class, "euclid": euclid}, db_labels, q_labels
    )
    cell = 32 + 4
    assert canvas.shape == (3 * 2 * cell, 11 * cell + 2, 3) and len(titles) == 6 and len(centres) == 11
    for r in range(6):
        top = same_class if r % 2 == 0 else euclid
        q = rows[r // 2]
        assert np.array_equal(canvas[r * cell + 2 : r * cell + 34, 2:34], x_test[q])  # the query image first
        for c in range(1, 11):
            j = top[r // 2, c - 1]
            x0 = c * cell + 2
            corner = canvas[r * cell, x0]  # the frame's top-left pixel
            same = y_train[j] == y_test[q]
            assert tuple(corner) == ((0, 114, 178) if same else (213, 94, 0))  # blue / vermillion
            edge = canvas[r * cell, x0 : x0 + cell]  # the frame's top edge
            assert (edge == 255).all(axis=1).any() != same  # dashed only for another label
            assert np.array_equal(canvas[r * cell + 2 : r * cell + 34, x0 + 2 : x0 + 34], x_train[j])
    assert titles[0].startswith("oracle (10/10)")


def test_bad_inputs_are_clear_errors(cifar, tmp_path):
    x_train, y_train, x_test, y_test = cifar
    classes = sorted(set(y_train))
    deep = (label_codes(y_train, classes), label_codes(y_test, classes))
    with pytest.raises(ValueError, match="unknown image baselines"):
        evaluate_image_codes(x_train, y_train, x_test, y_test, deep, 16, baselines=("tfidf",))
    with pytest.raises(ValueError, match="499 labels for 500"):
        evaluate_image_codes(x_train, y_train[:-1], x_test, y_test, deep, 16)
    with pytest.raises(ValueError, match="clash"):
        evaluate_image_codes(x_train, y_train, x_test, y_test, deep, 16, extra_methods={"lsh": deep})
    with pytest.raises(ValueError, match=r"96 bits must have shape \(n, 12\)"):
        evaluate_image_codes(x_train, y_train, x_test, y_test, deep, 12 * 8)
    with pytest.raises(ValueError, match="images_for_grid"):
        evaluate_image_codes(
            x_train, y_train, x_test, y_test, deep, 16, baselines=("euclidean",), grid_path=tmp_path / "g.png"
        )
    with pytest.raises(ValueError, match="uint8"):
        evaluate_image_codes(
            x_train,
            y_train,
            x_test,
            y_test,
            deep,
            16,
            baselines=("euclidean",),
            grid_path=tmp_path / "g.png",
            images_for_grid=(x_train / 255.0, x_test),
        )
