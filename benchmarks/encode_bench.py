"""Spark encode job vs single-process torch inference of the same model, side by side in one run.

    .venv/bin/python benchmarks/encode_bench.py --data DATA_DIR --model MODEL_URI [--docs 800000]

The corpus is the prepared dataset's documents repeated (new ids) up to ``--docs`` rows. The Spark side runs the
whole job (read, encode, shuffle by partition, write shards, publish) on ``local[2]``; the torch side only reads
the same Parquet files and encodes them in one process with 2 threads. Peak driver memory (Python driver and
JVM) is sampled for each corpus size to show it does not grow with the corpus.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from semhash_spark.data import dataset as ds  # noqa: E402


def replicate(data_dir: str, out_dir: Path, n_docs: int, files: int = 16) -> None:
    """Writes ``n_docs`` rows (the corpus repeated, ids suffixed) in the prepared-dataset layout."""
    src = pa.concat_tables([pq.read_table(f) for s in ds.SPLITS for f in ds.split_files(data_dir, s)])
    dest = out_dir / ds.DOCS_DIR / "split=train"
    dest.mkdir(parents=True)
    for name in (ds.DATASET_FILE, ds.VOCAB_FILE):
        shutil.copy(Path(data_dir) / name, out_dir / name)
    per_file = -(-n_docs // files)
    written = 0
    rep = 0
    for f in range(files):
        parts, rows = [], 0
        while rows < per_file and written + rows < n_docs:
            take = min(src.num_rows, per_file - rows, n_docs - written - rows)
            t = src.slice(0, take)
            ids = pa.array([f"{i}#{rep}" for i in t.column(ds.ID).to_pylist()])
            parts.append(t.set_column(t.schema.get_field_index(ds.ID), ds.ID, ids))
            rows += take
            rep += 1
        if parts:
            pq.write_table(pa.concat_tables(parts), dest / f"part-{f:05d}.parquet", row_group_size=20_000)
        written += rows


class PeakRSS:
    """Samples the RSS of this process and of its JVM child every 0.2 s."""

    def __init__(self):
        self.peak_py = self.peak_jvm = 0
        self._stop = threading.Event()

    def __enter__(self):
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self):
        me = psutil.Process()
        while not self._stop.wait(0.2):
            self.peak_py = max(self.peak_py, me.memory_info().rss)
            for c in me.children(recursive=True):
                try:
                    if "java" in c.name():
                        self.peak_jvm = max(self.peak_jvm, c.memory_info().rss)
                except psutil.Error:
                    pass

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()


def torch_baseline(data_dir: Path, model_uri: str, threads: int) -> tuple[int, float]:
    import torch

    from semhash_spark.models.checkpoint import load_model

    torch.set_num_threads(threads)
    hasher = load_model(model_uri)
    vocab = ds.read_metadata(data_dir)["vocab_size"]
    n, t0 = 0, time.time()
    for f in ds.split_files(data_dir, "train"):
        for batch in pq.ParquetFile(f).iter_batches(batch_size=2048, columns=[ds.ID, ds.WORD_IDS, ds.WORD_COUNTS]):
            counts = ds.csr_from_binary(batch.column(1).to_pylist(), batch.column(2).to_pylist(), vocab)
            hasher.codes(counts.toarray())
            n += batch.num_rows
    return n, time.time() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True, help="a prepared dataset (e.g. 20 Newsgroups)")
    ap.add_argument("--model", required=True)
    ap.add_argument("--docs", type=int, nargs="+", default=[200_000, 800_000])
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    from semhash_spark.config import load_config
    from semhash_spark.index.encode import encode_to_index
    from semhash_spark.io.spark import get_spark

    work = Path(args.workdir or tempfile.mkdtemp(prefix="semhash-encode-bench-"))
    cfg = load_config(None)
    rows = []
    with PeakRSS():
        spark = get_spark("encode-bench", master="local[2]")
    for n_docs in args.docs:
        data = work / f"data-{n_docs}"
        if not data.exists():
            replicate(args.data, data, n_docs)
        index = work / f"index-{n_docs}"
        shutil.rmtree(index, ignore_errors=True)
        with PeakRSS() as mem:
            report = encode_to_index(spark, args.model, str(data), str(index), cfg)
        n_torch, s_torch = torch_baseline(data, args.model, threads=2)
        row = {
            "docs": n_docs,
            "spark_seconds": report["seconds"],
            "spark_docs_per_s": report["docs_per_second"],
            "torch_docs": n_torch,
            "torch_seconds": round(s_torch, 2),
            "torch_docs_per_s": round(n_torch / s_torch, 1),
            "ratio_spark_over_torch": round(report["docs_per_second"] / (n_torch / s_torch), 3),
            "peak_driver_python_mib": round(mem.peak_py / 2**20),
            "peak_driver_jvm_mib": round(mem.peak_jvm / 2**20),
            "partitions": report["partitions"],
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    spark.stop()
    print(json.dumps({"encode_benchmark": rows}))


if __name__ == "__main__":
    main()
