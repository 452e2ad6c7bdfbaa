"""``semhash evaluate`` on an image dataset: deep codes against pixel baselines, plus multiple semantic hashing.

Test images are the queries, train images the database, relevant = same label. The deep codes of the model and
the baselines (Euclidean on pixels, LSH, SH, PCAH, PCA-ITQ, at the model's bit count and at any ``baseline_bits``) are
ranked over the same queries by :func:`semhash_spark.evaluation.image_eval.evaluate_image_codes`.

With a patch model, ``msh`` compares on ``msh_queries`` of the same queries (MSH costs 81 ball lookups a query):

- ``msh``: multiple semantic hashing, images ranked by summed glimpse scores, ties by the model's code distance;
- ``single_short`` (with a 28-bit ``short_model``): the single-code lookup, images ranked by their 28-bit code's
  Hamming distance, ties by the model's code distance (the paper's 28-bit lookup pruned by the 256-bit ranking);
- ``deep``: the model's codes alone, on the same queries.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np

from semhash_spark import codes as C
from semhash_spark.data import loader as data_mod
from semhash_spark.data import images as im
from semhash_spark.models import msh
from semhash_spark.io import store
from semhash_spark.evaluation.bitstats import bit_statistics
from semhash_spark.models.checkpoint import Hasher, load_model
from semhash_spark.config import ImagesConfig
from semhash_spark.evaluation.evaluate import RankingMethod
from semhash_spark.evaluation.image_eval import IMAGE_BASELINES, evaluate_image_codes

log = logging.getLogger(__name__)

BASELINE_BITS = (28, 64, 256)  # the papers' code lengths: ask for them with baseline_bits=BASELINE_BITS


def _check_model(hasher: Hasher, uri: str, dmeta: dict, kinds: tuple[str, ...]) -> None:
    if hasher.meta.get("kind") not in kinds:
        raise ValueError(f"{uri!r} is a {hasher.meta.get('kind')!r} model; expected {' or '.join(kinds)}")
    data = hasher.meta.get("data", {})
    shape = (data.get("height"), data.get("width"), data.get("channels"))
    if shape != (dmeta["height"], dmeta["width"], dmeta["channels"]):
        raise ValueError(
            f"{uri!r} was trained on {shape} images, the dataset has "
            f"{(dmeta['height'], dmeta['width'], dmeta['channels'])}"
        )


def msh_method(
    patch_index: msh.PatchIndex,
    test_patch_codes: np.ndarray,
    long_train: np.ndarray,
    long_test: np.ndarray,
    long_bits: int,
) -> RankingMethod:
    """Scores = MSH score * (long_bits + 1) - long-code distance: MSH score first, the long code breaks ties."""

    def scores(rows):
        out = np.empty((len(rows), patch_index.count), dtype=np.float64)
        for j, r in enumerate(rows):
            d = C.hamming(long_test[r : r + 1], long_train)[0]
            out[j] = patch_index.scores(test_patch_codes[r]) * (long_bits + 1) - d
        return out

    return RankingMethod(scores, len(long_test), len(long_train), descending=True, info={"bits": long_bits})


def short_code_method(short_train, short_test, long_train, long_test, long_bits: int) -> RankingMethod:
    """The single short-code lookup: short-code distance first, the long code breaks ties."""

    def scores(rows):
        ds = C.hamming(short_test[rows], short_train).astype(np.int64)
        dl = C.hamming(long_test[rows], long_train).astype(np.int64)
        return ds * (long_bits + 1) + dl

    return RankingMethod(scores, len(long_test), len(long_train), descending=False, info={"bits": long_bits})


def _load(model_uri: str, data_uri: str):
    """(dataset.json, the checked image model, train images, test images)."""
    data_dir = store.local_copy(data_uri)
    dmeta = im.read_metadata(data_dir)
    hasher = load_model(model_uri)
    _check_model(hasher, model_uri, dmeta, ("images",))
    return dmeta, hasher, data_mod.read_image_shard(data_dir, "train"), data_mod.read_image_shard(data_dir, "test")


def evaluate_image_model(
    model_uri: str,
    data_uri: str,
    *,
    plot_path: str | None = None,
    grid_path: str | None = None,
    max_queries: int = 0,
    tie_seed: int = 0,
    baselines: tuple[str, ...] = IMAGE_BASELINES,
    baseline_bits: tuple[int, ...] = (),
    patch_model_uri: str | None = None,
    short_model_uri: str | None = None,
    msh_queries: int = 1000,
    address_model_uri: str | None = None,
) -> dict[str, Any]:
    t0 = time.time()
    dmeta, hasher, train, test = _load(model_uri, data_uri)
    if len(test) == 0:
        raise ValueError(f"{data_uri!r} has no test images to use as queries")
    flat_train, flat_test = train.pixels.reshape(len(train), -1), test.pixels.reshape(len(test), -1)
    deep = (hasher.codes(flat_train), hasher.codes(flat_test))
    result = evaluate_image_codes(
        flat_train,
        train.labels,
        flat_test,
        test.labels,
        deep,
        hasher.bits,
        baselines=baselines,
        baseline_bits=baseline_bits,
        plot_title=f"{dmeta.get('name') or data_uri}: model {hasher.version}, {hasher.bits}-bit codes",
        max_queries=max_queries,
        tie_seed=tie_seed,
        plot_path=plot_path,
        grid_path=grid_path,
        images_for_grid=(train.pixels, test.pixels) if grid_path else None,
    )
    if address_model_uri:
        from semhash_spark.evaluation.address_eval import address_model_lookup
        from semhash_spark.evaluation.evaluate import hamming_method

        short = load_model(address_model_uri)
        _check_model(short, address_model_uri, dmeta, ("images",))
        result["address_lookup"] = address_model_lookup(
            short,
            flat_train,
            flat_test,
            {"code": hamming_method(*deep, hasher.bits)},
            train.labels,
            test.labels,
            max_radius=5,
            max_queries=max_queries,
            tie_seed=tie_seed,
            papers_bits=28,
        )
        result["address_lookup"]["code_alone_map_at_1000"] = result["map_at_1000"]
    if patch_model_uri:
        result["msh"] = _evaluate_msh(
            hasher, deep, train, test, patch_model_uri, short_model_uri, dmeta, msh_queries, tie_seed
        )
    result["bit_stats"] = bit_statistics(deep[0], hasher.bits, hasher.config.index.address_bits)
    result.update(
        model_version=hasher.version, dataset=dmeta.get("name"), kind="images", seconds=round(time.time() - t0, 1)
    )
    return result


def _evaluate_msh(hasher, deep, train, test, patch_model_uri, short_model_uri, dmeta, msh_queries, tie_seed):
    t0 = time.time()
    patch = load_model(patch_model_uri)
    _check_model(patch, patch_model_uri, dmeta, ("image_patches",))
    pc = patch.meta["config"]["images"]
    icfg = ImagesConfig(
        height=dmeta["height"],
        width=dmeta["width"],
        channels=dmeta["channels"],
        patch_side=pc["patch_side"],
        patch_fovea=pc["patch_fovea"],
    )
    index = msh.PatchIndex.build(msh.patch_codes(patch, train.pixels, icfg), patch.bits)
    test_pc = msh.patch_codes(patch, test.pixels, icfg)
    log.info("patch codes: %d train and %d test images x 81 glimpses in %.1fs", len(train), len(test), time.time() - t0)
    methods: dict[str, Any] = {"msh": msh_method(index, test_pc, *deep, hasher.bits)}
    if short_model_uri:
        short = load_model(short_model_uri)
        _check_model(short, short_model_uri, dmeta, ("images",))
        n_tr, n_te = len(train), len(test)
        s_codes = (short.codes(train.pixels.reshape(n_tr, -1)), short.codes(test.pixels.reshape(n_te, -1)))
        methods[f"single_{short.bits}"] = short_code_method(*s_codes, *deep, hasher.bits)
    res = evaluate_image_codes(
        train.pixels.reshape(len(train), -1)[:, :1],
        train.labels,
        test.pixels.reshape(len(test), -1)[:, :1],
        test.labels,
        deep,
        hasher.bits,
        baselines=(),
        extra_methods=methods,
        max_queries=msh_queries,
        tie_seed=tie_seed,
    )
    out = {name: r for name, r in res["extra_methods"].items()}
    out["deep"] = {k: res[k] for k in ("precision_at_100", "map", "map_at_1000", "num_queries")}
    out.update(
        patch_bits=patch.bits,
        patch_model_version=patch.version,
        radius=msh.RADIUS,
        num_queries=res["num_queries"],
        seconds=round(time.time() - t0, 1),
    )
    return out


def evaluate_msh_model(
    model_uri: str,
    data_uri: str,
    patch_model_uri: str,
    *,
    short_model_uri: str | None = None,
    msh_queries: int = 1000,
    tie_seed: int = 0,
) -> dict[str, Any]:
    """Only the ``msh`` comparison of :func:`evaluate_image_model` (no pixel baselines): MSH, the single short
    code and the model's codes on the same ``msh_queries`` test images."""
    dmeta, hasher, train, test = _load(model_uri, data_uri)
    deep = (hasher.codes(train.pixels.reshape(len(train), -1)), hasher.codes(test.pixels.reshape(len(test), -1)))
    out = _evaluate_msh(hasher, deep, train, test, patch_model_uri, short_model_uri, dmeta, msh_queries, tie_seed)
    out.update(model_version=hasher.version, bits=hasher.bits, dataset=dmeta.get("name"))
    return out
