"""prepare's tokenising: Spark ML (``prepare.ml_tokenize``) vs the Python tokeniser in ``mapInPandas`` (local[2]).

    .venv/bin/python benchmarks/tokenize_bench.py [--archive .../20news-bydate.tar.gz] [--repeats 3]

Reads the corpus's records once into a cached DataFrame, then, alternating, tokenises every text both ways and
sums the token counts (the two sums must be equal). Prints one JSON line per run (seconds, 1-minute load
average before and after) and a summary line with the median seconds of each and their ratio (ML / Python).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Iterator

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import pandas as pd  # noqa: E402

from semhash_spark.data import corpora  # noqa: E402
from semhash_spark.config import PrepareConfig  # noqa: E402


def _load() -> str:
    return open("/proc/loadavg").read().split()[0]


def _python_tokens(batches: Iterator[pd.DataFrame], cfg: PrepareConfig) -> Iterator[pd.DataFrame]:
    """The tokenising half of prepare's classify stage before Spark ML (corpora.tokenize per record)."""
    for pdf in batches:
        yield pd.DataFrame(
            {
                "tokens": [
                    corpora.tokenize(t, cfg.min_token_len, cfg.max_token_len, tokens=cfg.tokens) for t in pdf["text"]
                ]
            }
        )


def main() -> None:
    ap = argparse.ArgumentParser()
    data = Path(os.environ.get("SEMHASH_DATA_DIR", ROOT.parent / "shared" / "data"))
    ap.add_argument("--archive", default=str(data / "20newsgroups" / "20news-bydate.tar.gz"))
    ap.add_argument("--dataset", default="20ng")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    from pyspark.sql import functions as F

    from semhash_spark.data.prepare import ml_tokenize
    from semhash_spark.io.spark import get_spark

    spark = get_spark("tokenize-bench", master="local[2]")
    cfg = PrepareConfig()
    texts = [r["text"] for r in corpora.read_records(args.dataset, args.archive) if r["text"]]
    df = spark.createDataFrame([(t,) for t in texts], "text string").repartition(2).cache()
    df.count()
    runs = {
        "python": lambda: df.mapInPandas(functools.partial(_python_tokens, cfg=cfg), "tokens array<string>"),
        "spark_ml": lambda: ml_tokenize(df, "text", "tokens", cfg).select("tokens"),
    }
    seconds: dict[str, list[float]] = {k: [] for k in runs}
    totals = {}
    for rep in range(args.repeats):
        for name, build in runs.items():
            before = _load()
            t0 = time.perf_counter()
            totals[name] = build().select(F.sum(F.size("tokens"))).first()[0]
            s = time.perf_counter() - t0
            seconds[name].append(s)
            print(
                json.dumps(
                    {
                        "run": name,
                        "repeat": rep,
                        "docs": len(texts),
                        "tokens": totals[name],
                        "seconds": round(s, 2),
                        "load1_before": before,
                        "load1_after": _load(),
                    }
                ),
                flush=True,
            )
    if totals["python"] != totals["spark_ml"]:
        raise SystemExit(f"token counts differ: {totals}")
    med = {k: statistics.median(v) for k, v in seconds.items()}
    print(
        json.dumps(
            {
                "docs": len(texts),
                "median_seconds": {k: round(v, 2) for k, v in med.items()},
                "ratio_spark_ml_over_python": round(med["spark_ml"] / med["python"], 3),
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
