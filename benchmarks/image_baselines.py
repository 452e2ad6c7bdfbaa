"""Pixel hashing baselines on CIFAR-10: the figures deep image codes must beat.

    .venv/bin/python benchmarks/image_baselines.py --data ../shared/data/cifar10-jpeg/cifar10-jpeg.tar.gz \\
        [--bits 28 64 256] [--max-queries 0] [--json OUT.json] [--grid GRID.png --grid-bits 64]

Test images are the queries, train images the database, relevant = same class. One run computes exact Euclidean
distance on the raw pixels and LSH, spectral hashing, PCA hashing and PCA-ITQ at each bit count, all fitted on the
train pixels (3072 uint8 values, HWC order) and evaluated by :func:`semhash_spark.evaluation.evaluate.evaluate_methods` on the
same queries and tie order as ``semhash evaluate`` uses. Prints a Markdown table and, last, a JSON summary.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import sys
import tarfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from semhash_spark.evaluation.evaluate import (  # noqa: E402
    euclidean_method,
    evaluate_methods,
    rank_database,
    subsample_queries,
    tie_permutation,
)
from semhash_spark.evaluation.image_eval import grid_query_rows, hashing_baseline_methods, write_retrieval_grid  # noqa: E402

log = logging.getLogger("image_baselines")
HASHING = ("lsh", "sh", "pcah", "pca_itq")
NAMES = {"euclidean": "Euclidean (exact, pixels)", "lsh": "LSH", "sh": "SH", "pcah": "PCAH", "pca_itq": "PCA-ITQ"}


def load_cifar_jpeg(archive: Path) -> dict[str, tuple[np.ndarray, list[str]]]:
    """``{split: (uint8[n, 32, 32, 3], labels)}`` from ``cifar10-jpeg/{train,test}/<class>/NNNN.jpg``, by path."""
    from PIL import Image

    found: dict[str, list[tuple[str, str, np.ndarray]]] = {"train": [], "test": []}
    with tarfile.open(archive) as tar:
        for m in tar:
            parts = m.name.split("/")
            if not m.isfile() or len(parts) != 4 or parts[1] not in found:
                continue
            image = Image.open(io.BytesIO(tar.extractfile(m).read())).convert("RGB")
            found[parts[1]].append((m.name, parts[2], np.asarray(image)))
    out = {}
    for split, rows in found.items():
        rows.sort(key=lambda r: r[0])
        out[split] = (np.stack([r[2] for r in rows]), [r[1] for r in rows])
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="cifar10-jpeg.tar.gz")
    p.add_argument("--bits", type=int, nargs="+", default=[28, 64, 256])
    p.add_argument("--max-queries", type=int, default=0, help="0 = all test images")
    p.add_argument("--tie-seed", type=int, default=0)
    p.add_argument("--seed", type=int, default=0, help="random choices of LSH and ITQ")
    p.add_argument("--json", help="write the full results here")
    p.add_argument("--grid", help="write a PNG of top-10 retrievals here")
    p.add_argument("--grid-bits", type=int, default=64)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    t0 = time.perf_counter()
    data = load_cifar_jpeg(Path(args.data))
    (train_img, y_train), (test_img, y_test) = data["train"], data["test"]
    x_train, x_test = train_img.reshape(len(train_img), -1), test_img.reshape(len(test_img), -1)
    t_load = time.perf_counter() - t0
    log.info("loaded %d train and %d test images in %.1fs", len(x_train), len(x_test), t_load)

    t0 = time.perf_counter()
    methods = {
        f"{n}@{b}": m
        for (n, b), m in hashing_baseline_methods(HASHING, x_train, x_test, args.bits, seed=args.seed).items()
    }
    methods["euclidean"] = euclidean_method(x_train, x_test)
    t_fit = time.perf_counter() - t0

    t0 = time.perf_counter()
    queries = subsample_queries(len(x_test), args.max_queries, args.tie_seed)
    db_labels, q_labels = [[y] for y in y_train], [[y] for y in y_test]
    res = evaluate_methods(methods, db_labels, q_labels, queries=queries, tie_seed=args.tie_seed)
    t_eval = time.perf_counter() - t0

    print(f"\n{res['euclidean']['num_queries']} queries x {len(x_train)} database images\n")
    print("| method | bits | P@100 | MAP | mAP@1000 |\n|---|---|---|---|---|")
    r = res["euclidean"]
    print(f"| {NAMES['euclidean']} | - | {r['precision_at_100']:.3f} | {r['map']:.3f} | {r['map_at_1000']:.3f} |")
    for n in HASHING:
        for b in args.bits:
            r = res[f"{n}@{b}"]
            print(f"| {NAMES[n]} | {b} | {r['precision_at_100']:.3f} | {r['map']:.3f} | {r['map_at_1000']:.3f} |")

    if args.grid:
        rows = grid_query_rows(queries, 5, args.tie_seed)
        tie_perm = tie_permutation(len(x_train), args.tie_seed)
        shown = ["euclidean", *(f"{n}@{args.grid_bits}" for n in HASHING)]
        top = {
            (
                NAMES["euclidean"] if m == "euclidean" else f"{NAMES[m.split('@')[0]]} {args.grid_bits}-bit"
            ): rank_database(methods[m].scores(rows), tie_perm, descending=False)[:, :10]
            for m in shown
        }
        write_retrieval_grid(args.grid, (train_img, test_img), rows, top, db_labels, q_labels)

    summary = {
        "num_queries": res["euclidean"]["num_queries"],
        "num_database": len(x_train),
        "bits": args.bits,
        "map_at_1000": {m: round(r["map_at_1000"], 4) for m, r in res.items()},
        "seconds": {"load": round(t_load, 1), "fit_encode": round(t_fit, 1), "evaluate": round(t_eval, 1)},
    }
    if args.json:
        Path(args.json).write_text(json.dumps({"results": res, **summary}, indent=1))
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
