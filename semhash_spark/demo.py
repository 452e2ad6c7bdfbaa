"""``semhash demo``: the whole document path on the embedded stack (local Spark, a real local S3 server).

prepare 20 Newsgroups -> train -> encode + publish to S3 -> a few queries -> evaluate against the baselines.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

DEMO_QUERIES = (
    "nasa space shuttle launch orbit moon",
    "windows dos driver printer file",
    "hockey playoff goalie team season",
    "gun control law rights crime",
)


def default_data_dir() -> Path | None:
    candidates = [
        os.environ.get("SEMHASH_DATA_DIR"),
        Path(__file__).resolve().parents[2] / "shared" / "data",
        Path.cwd().parent / "shared" / "data",
    ]
    for c in candidates:
        if c and (Path(c) / "20newsgroups").is_dir():
            return Path(c)
    return None


def _20ng_source(data_dir: str | None, workdir: Path) -> tuple[str, str]:
    """(dataset, source): the bydate archive from the data directory, else sklearn's download as JSONL."""
    d = Path(data_dir) if data_dir else default_data_dir()
    if d is not None and (d / "20newsgroups" / "20news-bydate.tar.gz").is_file():
        return "20ng", str(d / "20newsgroups" / "20news-bydate.tar.gz")
    from sklearn.datasets import fetch_20newsgroups

    log.info("no 20 Newsgroups archive in a data directory: downloading it with scikit-learn")
    out = workdir / "20ng.jsonl"
    home = str(d / "20newsgroups" / "sklearn_data_home") if d else None
    with out.open("w") as f:
        for split in ("train", "test"):
            b = fetch_20newsgroups(subset=split, data_home=home)
            for i, (text, y) in enumerate(zip(b.data, b.target)):
                f.write(
                    json.dumps(
                        {
                            "id": f"{b.target_names[y]}/{split}-{i}",
                            "text": text,
                            "labels": [b.target_names[y]],
                            "split": split,
                        }
                    )
                    + "\n"
                )
    return "jsonl", str(out)


def _step(n: int, total: int, what: str) -> float:
    print(f"\n[{n}/{total}] {what}", flush=True)
    return time.time()


def run_demo(
    data_dir: str | None = None, workdir: str = "semhash-demo", bits: int = 64, quick: bool = False
) -> dict[str, Any]:
    from semhash_spark.evaluation.assess import evaluate_model
    from semhash_spark.config import load_config
    from semhash_spark.io.embedded import LocalS3Server
    from semhash_spark.index.encode import encode_to_index
    from semhash_spark.training.fit import train_model
    from semhash_spark.index.lookup import Searcher
    from semhash_spark.data.prepare import prepare_dataset
    from semhash_spark.io.spark import get_spark
    from semhash_spark.io import store

    work = Path(workdir).absolute()
    work.mkdir(parents=True, exist_ok=True)
    overrides = ["pretrain.epochs=2", "finetune.epochs=2"] if quick else []
    cfg = load_config(None, overrides).with_bits(bits)
    total = 6
    summary: dict[str, Any] = {"workdir": str(work), "schedule": "quick" if quick else "full"}
    smoke = (
        (
            " -- SMOKE RUN (--quick: 2 pretraining and 2 fine-tuning epochs, not the real model; run without "
            "--quick for the model's real precision)"
        )
        if quick
        else ""
    )
    if quick:
        summary["note"] = "smoke run: a 2+2-epoch schedule checks the pipeline; its precision is not the model's"
    t_all = time.time()
    server = LocalS3Server(work / "s3")
    server.start()
    saved_env = {k: os.environ.get(k) for k in server.env}
    os.environ.update(server.env)
    try:
        print(f"local S3 server (SeaweedFS) at {server.endpoint}, bucket s3://{server.bucket}", flush=True)
        data_uri = f"s3://{server.bucket}/demo/data/20ng"
        model_uri = f"s3://{server.bucket}/demo/models/20ng-{bits}bit"
        index_uri = f"s3://{server.bucket}/demo/indexes/20ng-{bits}bit"

        t = _step(1, total, "prepare: tokenise, 2000-word vocabulary, word counts, quarantine (Spark local[2])")
        dataset, source = _20ng_source(data_dir, work)
        spark = get_spark("semhash-demo")
        local_data = work / "data-20ng"
        report = prepare_dataset(spark, dataset, source, str(local_data), cfg.prepare)
        store.upload_dir(str(local_data), data_uri)
        kept, bad = report["kept"], sum(report["quarantined"].values())
        print(
            f"    kept {kept['train']} train and {kept['test']} test documents, quarantined {bad} -> {data_uri} "
            f"({time.time() - t:.0f}s)",
            flush=True,
        )
        summary["prepare"] = {k: report[k] for k in ("kept", "quarantined", "vocab_size")}

        t = _step(
            2,
            total,
            f"train: 2000-{'-'.join(map(str, cfg.model.hidden))}-{bits} RBM stack, CD-1 "
            "pretraining, then fine-tuning with code noise",
        )
        trained = train_model(data_uri, model_uri, cfg, np=1, progress=True)
        print(
            f"    model {trained['model_version']} -> {model_uri}; validation precision@100 "
            f"{trained['best_val_precision']:.3f} ({time.time() - t:.0f}s)",
            flush=True,
        )
        summary["train"] = trained

        t = _step(3, total, "encode: Spark job writes address-partitioned shards, then publishes the version")
        enc = encode_to_index(spark, model_uri, data_uri, index_uri, cfg)
        print(
            f"    version {enc['version']}: {enc['count']} codes in {enc['partitions']} partitions "
            f"({enc['docs_per_second']:.0f} docs/s, {time.time() - t:.0f}s)",
            flush=True,
        )
        summary["encode"] = enc

        t = _step(4, total, "query: nearest documents of a few texts (address ball, then TF-IDF re-ranking)")
        searcher = Searcher.open(index_uri)
        queries = []
        for text in DEMO_QUERIES:
            hits = searcher.search_texts([text], k=5)[0]
            reranked = searcher.search_texts([text], k=5, rerank="tfidf")[0]
            print(f"    {text!r}")
            print("      hamming:      " + ", ".join(f"{h['id']} ({h['distance']})" for h in hits))
            print("      tfidf rerank: " + ", ".join(f"{h['id']} ({h['score']:.2f})" for h in reranked))
            queries.append({"text": text, "hamming": hits, "reranked": reranked})
        address_bits = searcher.index.address_bits
        ball = searcher.search_texts([DEMO_QUERIES[0]], address_radius=4, k=None)[0]
        print(
            f"    Hamming ball of radius 4 around the {address_bits}-bit address of {DEMO_QUERIES[0]!r}: "
            f"{len(ball)} documents, partitions read so far: {searcher.index.partitions_read}",
            flush=True,
        )
        summary["queries"] = len(queries)

        t = _step(5, total, "evaluate: test documents as queries, train as database, against TF-IDF, LSA, LSH")
        plot = work / f"pr-{bits}bit.png"
        ev = evaluate_model(model_uri, data_uri, plot_path=str(plot))
        rows = [("semantic hashing" + (" (smoke)" if quick else ""), ev)] + [
            (f"{n}", ev["baselines"][n]) for n in ("tfidf", "lsa", "lsh")
        ]
        for name, r in rows:
            print(f"    {name:18s} P@100 {r['precision_at_100']:.3f}   mAP {r['map']:.3f}")
        print(f"    precision-recall plot: {plot} ({time.time() - t:.0f}s)", flush=True)
        summary["evaluate"] = {
            "bits": bits,
            "precision_at_100": ev["precision_at_100"],
            "map": ev["map"],
            "baselines": {n: {"precision_at_100": ev["baselines"][n]["precision_at_100"]} for n in ev["baselines"]},
            "plot": str(plot),
        }
        if quick:
            print(f"    {smoke.strip(' -')}", flush=True)
        _step(6, total, f"done in {time.time() - t_all:.0f}s{smoke}")
    finally:
        server.stop()
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    summary["seconds"] = round(time.time() - t_all, 1)
    return summary
