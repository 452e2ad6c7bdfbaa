"""Image retrieval evaluation: deep codes against pixel baselines on the same queries, and a grid of retrievals.

Protocol as for documents (:mod:`semhash_spark.evaluation.evaluate`): test images are the queries, train images the database,
relevant = same label, the whole database ranked for every query, ties broken in one fixed random order. The
baselines are computed in the same run on the same pixels: Euclidean distance (the exact reference) and, at each bit
count asked, LSH, spectral hashing, PCA hashing and PCA-ITQ (:mod:`semhash_spark.evaluation.hashing_baselines`, fitted on the
train pixels).

Result keys match ``semhash evaluate`` for documents: ``bits``, ``precision_at_100``, ``map``, ``map_at_1000``,
``pr_curve``, ``num_queries``, ``num_database``, ``skipped_queries`` and ``baselines = {name: {same keys}}`` with the
baselines at the deep codes' bit count. ``baselines_by_bits = {"<bits>": {name: ...}}`` holds the hashing
baselines at every bit count, and ``extra_methods`` the other codes given (multiple semantic hashing, other lengths).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from semhash_spark.codes import as_codes
from semhash_spark.evaluation.evaluate import (
    RankingMethod,
    pr_title,
    euclidean_method,
    evaluate_methods,
    hamming_method,
    plot_pr_curves,
    rank_database,
    subsample_queries,
    tie_permutation,
)
from semhash_spark.evaluation.hashing_baselines import BASELINES as HASHING_BASELINES
from semhash_spark.evaluation.hashing_baselines import PCA, make_baseline

log = logging.getLogger(__name__)

IMAGE_BASELINES = ("euclidean", "lsh", "sh", "pcah", "pca_itq")
GRID_QUERIES = 5
GRID_TOP = 10
_NAMES = {"euclidean": "Euclidean", "lsh": "LSH", "sh": "SH", "pcah": "PCAH", "pca_itq": "PCA-ITQ"}
# frames: same label as the query / another label. Okabe-Ito blue and vermillion, told apart without colour vision
# too: the frame of another label's image is dashed
_GOOD, _BAD = (0, 114, 178), (213, 94, 0)

CodePair = tuple[np.ndarray, np.ndarray]


def _flat(x: np.ndarray, what: str) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim < 2 or x.shape[0] == 0:
        raise ValueError(f"{what} must be an array of images [n, ...], got shape {x.shape}")
    return x.reshape(x.shape[0], -1)


def _label_lists(labels: Sequence, what: str, n: int) -> list[list[str]]:
    if len(labels) != n:
        raise ValueError(f"{what}: {len(labels)} labels for {n} images")
    return [[str(x) for x in y] if isinstance(y, (list, tuple)) else [str(y)] for y in labels]


def _code_method(name: str, value, n_train: int, n_test: int) -> RankingMethod:
    """An extra method from a RankingMethod or packed codes ``(train, test)`` / ``(train, test, bits)``."""
    if isinstance(value, RankingMethod):
        return value
    if not isinstance(value, (tuple, list)) or len(value) not in (2, 3):
        raise ValueError(f"extra method {name!r} must be a RankingMethod or (train_codes, test_codes[, bits])")
    train, test = np.asarray(value[0]), np.asarray(value[1])
    bits = int(value[2]) if len(value) == 3 else 8 * train.shape[-1]  # padding bits are zero in both: same ranking
    method = hamming_method(as_codes(train, bits), as_codes(test, bits), bits)
    if (method.num_database, method.num_queries) != (n_train, n_test):
        raise ValueError(
            f"extra method {name!r} has {method.num_database} train and {method.num_queries} test codes "
            f"for {n_train} train and {n_test} test images"
        )
    return method


def hashing_baseline_methods(
    names: Sequence[str], train_x: np.ndarray, test_x: np.ndarray, bit_counts: Sequence[int], *, seed: int = 0
) -> dict[tuple[str, int], RankingMethod]:
    """``{(name, bits): Hamming ranking}`` of each hashing baseline fitted on ``train_x``; one PCA serves them all."""
    unknown = sorted(set(names) - set(HASHING_BASELINES))
    if unknown:
        raise ValueError(f"unknown hashing baselines {unknown}; choose from {sorted(HASHING_BASELINES)}")
    d = train_x.shape[1]
    pca_dims = max([min(b, d) if n == "sh" else b for n in names if n != "lsh" for b in bit_counts], default=0)
    pca = None
    if pca_dims:
        t0 = time.perf_counter()
        pca = PCA(pca_dims).fit(train_x)
        log.info("PCA %d -> %d dims on %d images in %.1fs", d, pca_dims, train_x.shape[0], time.perf_counter() - t0)
    methods = {}
    for b in bit_counts:
        for name in names:
            t0 = time.perf_counter()
            model = make_baseline(name, b, seed=seed)
            model = model.fit(train_x) if name == "lsh" else model.fit(train_x, pca=pca)
            methods[(name, b)] = hamming_method(model.encode(train_x), model.encode(test_x), b)
            log.info("%s-%d fitted and encoded in %.1fs", name, b, time.perf_counter() - t0)
    return methods


def evaluate_image_codes(
    train_x: np.ndarray,
    train_labels: Sequence,
    test_x: np.ndarray,
    test_labels: Sequence,
    deep_codes: CodePair,
    bits: int,
    *,
    baselines: Sequence[str] = IMAGE_BASELINES,
    baseline_bits: Sequence[int] | None = None,
    extra_methods: Mapping[str, CodePair | tuple | RankingMethod] | None = None,
    max_queries: int = 0,
    tie_seed: int = 0,
    seed: int = 0,
    grid_path: str | Path | None = None,
    images_for_grid: tuple[np.ndarray, np.ndarray] | None = None,
    grid_queries: int = GRID_QUERIES,
    plot_path: str | Path | None = None,
    plot_title: str = "",
) -> dict:
    """Metrics of the deep codes, the pixel baselines and any extra codes over the same queries; JSON-serialisable.

    ``train_x``/``test_x``: pixels ``[n, ...]`` (any real dtype; flattened); labels: one label per image (or a list of
    labels). ``deep_codes = (train_packed, test_packed)`` of ``bits`` bits. Hashing baselines are computed at
    ``bits`` and at every count in ``baseline_bits``, with random choices from ``seed``; ``tie_seed`` fixes the tie
    order and the query subsample (``max_queries`` > 0). ``grid_path``: a PNG of ``grid_queries`` fixed queries with
    the top-10 retrievals of each method (at ``bits``), drawn from ``images_for_grid = (train_images, test_images)``,
    uint8 ``[n, H, W]`` or ``[n, H, W, C]``. ``plot_path``: PR curves at ``bits``.
    """
    t0 = time.time()
    train_x, test_x = _flat(train_x, "train_x"), _flat(test_x, "test_x")
    if train_x.shape[1] != test_x.shape[1]:
        raise ValueError(f"train images have {train_x.shape[1]} values and test images {test_x.shape[1]}")
    n_train, n_test = train_x.shape[0], test_x.shape[0]
    db_labels = _label_lists(train_labels, "train", n_train)
    q_labels = _label_lists(test_labels, "test", n_test)
    unknown = sorted(set(baselines) - set(IMAGE_BASELINES))
    if unknown:
        raise ValueError(f"unknown image baselines {unknown}; choose from {list(IMAGE_BASELINES)}")
    extra = dict(extra_methods or {})
    clash = sorted(set(extra) & {"deep", *IMAGE_BASELINES})
    if clash:
        raise ValueError(f"extra method names {clash} clash with the deep codes or a baseline; rename them")

    methods: dict[str, RankingMethod] = {"deep": _code_method("deep", (*deep_codes, bits), n_train, n_test)}
    for name, value in extra.items():
        methods[name] = _code_method(name, value, n_train, n_test)
    bit_counts = sorted({int(bits), *(int(b) for b in (baseline_bits or ()))})
    if bit_counts[0] <= 0:
        raise ValueError(f"baseline bit counts must be positive, got {list(baseline_bits or ())}")
    hashing = [n for n in baselines if n != "euclidean"]
    for (name, b), method in hashing_baseline_methods(hashing, train_x, test_x, bit_counts, seed=seed).items():
        methods[f"{name}@{b}"] = method
    if "euclidean" in baselines:
        methods["euclidean"] = euclidean_method(train_x, test_x)

    queries = subsample_queries(n_test, max_queries, tie_seed)
    log.info(
        "evaluating %d-bit deep codes, %s at %s bits and %s on %d queries x %d images",
        bits,
        hashing,
        bit_counts,
        sorted(extra),
        queries.size,
        n_train,
    )
    res = evaluate_methods(methods, db_labels, q_labels, queries=queries, tie_seed=tie_seed)

    out = dict(res["deep"])
    out["bits"] = int(bits)
    out["baselines"] = {n: res[n if n == "euclidean" else f"{n}@{bits}"] for n in baselines}
    out["baselines_by_bits"] = {str(b): {n: res[f"{n}@{b}"] for n in hashing} for b in bit_counts}
    out["extra_methods"] = {name: res[name] for name in extra}
    for name, r in [("deep", out), *out["baselines"].items(), *out["extra_methods"].items()]:
        log.info("%-9s P@100 %.3f  mAP %.3f  mAP@1000 %.3f", name, r["precision_at_100"], r["map"], r["map_at_1000"])

    shown = ["deep", *extra, *(n if n == "euclidean" else f"{n}@{bits}" for n in baselines)]
    labels = {
        "deep": f"deep {bits}-bit",
        **{n: n for n in extra},
        "euclidean": "Euclidean",
        **{f"{n}@{bits}": f"{_NAMES[n]} {bits}-bit" for n in hashing},
    }
    if plot_path is not None:
        plot_pr_curves(
            {labels[m]: res[m]["pr_curve"] for m in shown}, plot_path, title=pr_title(plot_title, out["num_queries"])
        )
        out["plot"] = str(plot_path)
    if grid_path is not None:
        if images_for_grid is None:
            raise ValueError("grid_path needs images_for_grid = (train_images, test_images)")
        rows = grid_query_rows(queries, grid_queries, tie_seed)
        tie_perm = tie_permutation(n_train, tie_seed)
        top = {
            labels[m]: rank_database(methods[m].scores(rows), tie_perm, descending=methods[m].descending)[:, :GRID_TOP]
            for m in shown
        }
        write_retrieval_grid(grid_path, images_for_grid, rows, top, db_labels, q_labels)
        out["grid"] = str(grid_path)
    out["seconds"] = round(time.time() - t0, 1)
    return out


# ---------------------------------------------------------------------------------------------------- grid


def grid_query_rows(queries: np.ndarray, count: int, seed: int = 0) -> np.ndarray:
    """``count`` query rows drawn once from the evaluated ``queries`` with ``seed``, in ascending order."""
    queries = np.asarray(queries, dtype=np.int64)
    count = min(int(count), queries.size)
    rng = np.random.default_rng([seed, 0x6A09E667])
    return np.sort(rng.choice(queries, size=count, replace=False))


def _as_rgb(images: np.ndarray, what: str) -> np.ndarray:
    images = np.asarray(images)
    if images.ndim == 4 and images.shape[-1] == 1:
        images = images[..., 0]
    if images.ndim == 3:
        images = np.repeat(images[..., None], 3, axis=-1)
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(
            f"{what} must be uint8 [n, H, W] or [n, H, W, 1 or 3] images, got {images.dtype} {images.shape}"
        )
    return images


def retrieval_mosaic(
    images: tuple[np.ndarray, np.ndarray],
    query_rows: np.ndarray,
    top: Mapping[str, np.ndarray],
    db_labels: Sequence[Sequence[str]],
    q_labels: Sequence[Sequence[str]],
    pad: int = 2,
) -> tuple[np.ndarray, list[str], list[float]]:
    """The grid as one RGB array, its row titles and the x centres of its columns (query, then ranks 1..k).

    One row per (query, method): the query image (grey frame), then the method's top retrievals, framed solid blue
    when they share a label with the query and dashed vermillion otherwise. ``top[method]`` is
    ``int64[len(query_rows), k]`` database indices, best first. Rows run query by query, methods in the order of ``top``.
    """
    train_img, test_img = _as_rgb(images[0], "train images"), _as_rgb(images[1], "test images")
    if train_img.shape[0] != len(db_labels) or test_img.shape[0] != len(q_labels):
        raise ValueError(
            f"images_for_grid has {train_img.shape[0]} train and {test_img.shape[0]} test images "
            f"for {len(db_labels)} train and {len(q_labels)} test labels"
        )
    if train_img.shape[1:] != test_img.shape[1:]:
        raise ValueError(f"train images are {train_img.shape[1:]} and test images {test_img.shape[1:]}")
    h, w = train_img.shape[1:3]
    k = max(t.shape[1] for t in top.values())
    ch, cw = h + 2 * pad, w + 2 * pad
    n_rows = len(query_rows) * len(top)
    canvas = np.full((n_rows * ch, (k + 1) * cw + pad, 3), 255, dtype=np.uint8)
    titles = []

    def put(r: int, c: int, img: np.ndarray, colour) -> None:
        y, x = r * ch, c * cw + (pad if c > 0 else 0)  # a gap between the query and its retrievals
        canvas[y : y + ch, x : x + cw] = colour
        if colour == _BAD:  # dashes: white where (row + column) // 3 is odd
            yy, xx = np.mgrid[0:ch, 0:cw]
            canvas[y : y + ch, x : x + cw][((yy + xx) // 3) % 2 == 1] = 255
        canvas[y + pad : y + pad + h, x + pad : x + pad + w] = img

    r = 0
    for qi, q in enumerate(query_rows):
        q_set = set(q_labels[q])
        for name, idx in top.items():
            put(r, 0, test_img[q], (128, 128, 128))
            for c, j in enumerate(idx[qi], start=1):
                put(r, c, train_img[j], _GOOD if q_set & set(db_labels[j]) else _BAD)
            hits = sum(bool(q_set & set(db_labels[j])) for j in idx[qi])
            titles.append(f"{name} ({hits}/{len(idx[qi])})  q{int(q)}: {','.join(q_labels[q])}")
            r += 1
    centres = [cw / 2, *(c * cw + pad + cw / 2 for c in range(1, k + 1))]
    return canvas, titles, centres


def write_retrieval_grid(
    path: str | Path,
    images: tuple[np.ndarray, np.ndarray],
    query_rows: np.ndarray,
    top: Mapping[str, np.ndarray],
    db_labels: Sequence[Sequence[str]],
    q_labels: Sequence[Sequence[str]],
) -> Path:
    """Writes :func:`retrieval_mosaic` as a PNG with the row titles on the left; returns the path."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    canvas, titles, centres = retrieval_mosaic(images, query_rows, top, db_labels, q_labels)
    row_px = canvas.shape[0] / len(titles)
    inch = 0.55 / row_px  # inches per canvas pixel: each row 0.55 inch tall
    left, top_margin = 3.0, 0.6  # inches for the row titles and the column headers
    width, height = canvas.shape[1] * inch + left + 0.1, canvas.shape[0] * inch + top_margin + 0.1
    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    ax = fig.add_axes((left / width, 0.1 / height, canvas.shape[1] * inch / width, canvas.shape[0] * inch / height))
    ax.imshow(canvas, interpolation="nearest")
    ax.set_yticks((np.arange(len(titles)) + 0.5) * row_px, titles, fontsize=7)
    ax.set_xticks(centres, ["query", *map(str, range(1, len(centres)))], fontsize=7)
    ax.xaxis.tick_top()
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    ax.set_title(
        "Top retrievals per method: solid blue frame = same label as the query, dashed orange = another",
        fontsize=8,
        pad=14,
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    log.info("wrote the retrieval grid (%d queries x %d methods) to %s", len(query_rows), len(top), path)
    return path
