"""The ``semhash`` command. Every subcommand calls one library function; ``jobs/*.py`` call the same ones.

Each command exits 0 on success, printing a JSON summary line last, and non-zero with a one-line reason on error
(``SEMHASH_DEBUG=1`` adds the traceback).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import time
from typing import Any, Callable, Sequence

log = logging.getLogger("semhash")
SPARK_COMMANDS = ("prepare", "encode", "dedup", "reindex")


IMAGE_CONF = "images.yaml"


def _default_conf(args) -> str | None:
    """The configuration when no --conf is given: conf/images.yaml to train on an image dataset, else built-in."""
    data = getattr(args, "data", None)
    if getattr(args, "conf", None) or not data or getattr(args, "fn", None) is not cmd_train:
        return getattr(args, "conf", None)
    from . import store

    meta_uri = store.join(data, "dataset.json")
    if store.exists(meta_uri) and json.loads(store.read_bytes(meta_uri)).get("kind") == "images":
        from pathlib import Path

        path = Path(__file__).resolve().parents[1] / "conf" / IMAGE_CONF
        if not path.is_file():
            raise ValueError(f"{str(path)!r} not found: pass the image configuration with --conf")
        return str(path)
    return None


def _config(args) -> Any:
    from .config import load_config

    cfg = load_config(_default_conf(args), getattr(args, "set", None) or ())
    if getattr(args, "bits", None) is not None:
        cfg = cfg.with_bits(args.bits)
    return cfg


def _print(result: dict, as_json: bool = True) -> None:
    print(json.dumps(result, default=str))


# --------------------------------------------------------------------------------------------------- commands
def cmd_prepare(args) -> dict:
    from .images import prepare_images
    from .image_sources import DATASETS as IMAGE_DATASETS
    from .prepare import prepare_dataset
    from .spark import get_spark

    cfg = _config(args)
    spark = get_spark("semhash-prepare", master=args.master)
    # --source and --out: local paths or s3:// (the executors read the source and write the dataset themselves)
    if args.dataset in IMAGE_DATASETS:
        report = prepare_images(spark, args.dataset, args.source, args.out, cfg.images)
    else:
        report = prepare_dataset(spark, args.dataset, args.source, args.out, cfg.prepare)
    report["out"] = args.out
    report.pop("out_dir", None)
    return report


def cmd_train(args) -> dict | None:
    from .fit import train_model

    cfg = _config(args)
    if args.launcher in ("spark", "torch"):   # horovod.spark.run and TorchDistributor need a SparkSession
        from .spark import get_spark

        master = args.master
        if master is None and not os.environ.get("SEMHASH_UNDER_SUBMIT"):
            master = f"local[{max(2, args.np)}]"    # one task slot per rank
        get_spark("semhash-train", master=master)
    # --launcher horovodrun outside a Horovod job re-runs this very command under `horovodrun -np N`
    command = [sys.executable, "-m", "semhash_spark.cli", *args.argv]
    return train_model(args.data, args.out, cfg, np=args.np, launcher=args.launcher,
                       progress=not args.no_progress, command=command)


def cmd_encode(args) -> dict:
    from .encode import encode_to_index
    from .spark import get_spark

    cfg = _config(args)
    spark = get_spark("semhash-encode", master=args.master)
    if _is_image_data(args.data):
        from .image_encode import encode_images_to_index

        return encode_images_to_index(spark, args.model, args.data, args.index, cfg,
                                      patch_model_uri=args.patch_model)
    return encode_to_index(spark, args.model, args.data, args.index, cfg)


def _is_image_data(data_uri: str) -> bool:
    from . import store

    meta_uri = store.join(data_uri, "dataset.json")
    return store.exists(meta_uri) and json.loads(store.read_bytes(meta_uri)).get("kind") == "images"


def cmd_query(args) -> dict:
    from .codes import from_hex
    from .lookup import Searcher

    if args.server:
        from .client import Client  # the HTTP client of `semhash serve`

        client = Client(args.server, token=os.environ.get("SEMHASH_TOKEN"))
        payload = client.search(texts=[args.text] if args.text else None,
                                codes=[args.code] if args.code else None,
                                ids=[args.id] if args.id else None, radius=args.radius, k=args.k,
                                rerank=args.rerank, eps=args.eps)
        return _show_results(args, payload["results"][0], payload.get("version"))
    if args.eps is not None:
        raise ValueError("--eps is an option of the service: use it with --server")
    if args.image:
        from pathlib import Path

        from .image_lookup import ImageSearcher

        searcher = ImageSearcher.open(args.index)
        pixels = searcher.load_images([Path(args.image).read_bytes()])
        k = args.k if args.k is not None else (None if args.radius is not None else 10)
        results = searcher.search_images(pixels, k=k, radius=args.radius, msh_lookup=args.msh)
        return _show_results(args, results[0], searcher.index.version)
    if not (args.text or args.code):
        raise ValueError("give --text, --image or --code (or --server URL with --id)")
    searcher = Searcher.open(args.index)
    k = args.k if args.k is not None else (None if args.radius is not None else 10)
    if args.text:
        results = searcher.search_texts([args.text], radius=args.radius, k=k, rerank=args.rerank)
    else:
        results = searcher.search_codes(from_hex(args.code, searcher.index.bits), radius=args.radius, k=k)
    return _show_results(args, results[0], searcher.index.version)


def _show_results(args, hits: list[dict], version: str | None) -> dict:
    if not args.json:
        print(f"index version {version}: {len(hits)} result(s)")
        for rank, h in enumerate(hits, 1):
            extra = f"  tfidf={h['score']:.3f}" if "score" in h else ""
            print(f"{rank:4d}. {h['id']}  hamming={h['distance']}{extra}")
    return {"version": version, "results": hits}


def cmd_evaluate(args) -> dict:
    from .assess import evaluate_model

    plot = args.plot
    if plot is None:
        plot = "semhash-pr.png"
    if _is_image_data(args.data):
        from .image_assess import evaluate_image_model

        grid = args.grid if args.grid is not None else "semhash-grid.png"
        return evaluate_image_model(args.model, args.data, plot_path=plot or None, grid_path=grid or None,
                                    max_queries=args.max_queries, patch_model_uri=args.patch_model,
                                    short_model_uri=args.short_model, msh_queries=args.msh_queries)
    return evaluate_model(args.model, args.data, plot_path=plot or None, max_queries=args.max_queries)


def cmd_dedup(args) -> dict:
    from .dedup import dedup_job
    from .spark import get_spark

    spark = get_spark("semhash-dedup", master=args.master)
    return dedup_job(spark, args.index, args.radius, args.out, args.verify, version=args.version, data_uri=args.data)


def cmd_reindex(args) -> dict:
    from .reindex import reindex
    from .spark import get_spark

    cfg = _config(args)
    spark = get_spark("semhash-reindex", master=args.master)
    kwargs = {"full": args.full}
    if args.retention_days is not None:
        kwargs["retention_days"] = args.retention_days
    if args.dataset:                  # a raw corpus: prepared first with the model's vocabulary
        from .reindex import reindex_corpus

        return reindex_corpus(spark, args.dataset, args.data, args.model, args.index, cfg, **kwargs)
    return reindex(spark, args.data, args.model, args.index, cfg, **kwargs)


def cmd_rollback(args) -> dict:
    from . import index as ix

    current = ix.current_version(args.index)             # None: CURRENT was deleted; --version restores it
    versions = ix.list_versions(args.index)
    if args.list:
        return {"index": args.index, "current": current, "versions": versions}
    if args.previous:
        if current is None:
            raise ValueError(f"{args.index}: no CURRENT to go back from; restore it with --version V "
                             f"(versions: {', '.join(versions) or 'none'})")
        older = [v for v in versions if v < current]
        if not older:
            raise ValueError(f"{args.index}: no version older than CURRENT {current} to roll back to "
                             f"(versions: {', '.join(versions) or 'none'})")
        target = older[-1]
    elif args.version:
        target = args.version
        if target not in versions:
            raise ValueError(f"{args.index}: no version {target!r} with a manifest "
                             f"(versions: {', '.join(versions) or 'none'}); see semhash rollback --list")
    else:
        raise ValueError("give --version V, --previous or --list")
    manifest = ix.rollback(args.index, target, verify_checksums=args.verify_checksums)
    return {"index": args.index, "version": target, "previous": current, "count": manifest["count"],
            "partitions": len(manifest["partitions"])}


def cmd_generate(args) -> dict:
    import tempfile
    from pathlib import Path

    from . import store
    from .demo import default_data_dir
    from .generate import DEFAULT_DOCUMENTS, DEFAULT_IMAGES, generate_documents, generate_images
    from .spark import get_spark

    cfg = _config(args)
    docs = args.kind == "documents"
    dataset = args.source_dataset or ("20ng" if docs else "cifar10")
    source = args.source
    if source is None:
        d = default_data_dir()
        if d is None:
            raise ValueError("no data directory with 20newsgroups/ found: give --source or set SEMHASH_DATA_DIR")
        source = str(d / "20newsgroups" / "20news-bydate.tar.gz") if docs else str(
            d / {"cifar10": "cifar10-jpeg/cifar10-jpeg.tar.gz", "mnist": "mnist"}.get(dataset, ""))
    size = args.size if args.size is not None else (DEFAULT_DOCUMENTS if docs else DEFAULT_IMAGES)
    spark = get_spark("semhash-generate", master=args.master)
    with tempfile.TemporaryDirectory(prefix="semhash-generate-") as tmp:
        out_dir = str(Path(tmp) / "out") if store.is_s3(args.out) else store.local_path(args.out)
        if docs:
            if store.exists(store.join(source, "dataset.json")):    # already a prepared dataset
                src_dir = store.local_copy(source)
            else:                                                    # a raw corpus: prepare it first
                from .prepare import prepare_dataset

                src_dir = str(Path(tmp) / "source")
                prepare_dataset(spark, dataset, source, src_dir, cfg.prepare)
            report = generate_documents(spark, src_dir, out_dir, cfg.generate, size=size, seed=args.seed,
                                        min_files=cfg.prepare.files_per_split)
        else:
            report = generate_images(spark, dataset, source, out_dir, cfg.images, cfg.generate, size=size,
                                     seed=args.seed)
        if store.is_s3(args.out):
            store.upload_dir(out_dir, args.out)
    report["out"] = args.out
    report.pop("out_dir", None)
    return report


def cmd_demo(args) -> dict:
    from .demo import run_demo

    return run_demo(data_dir=args.data_dir, workdir=args.workdir, bits=args.bits, quick=args.quick)


def cmd_serve(args) -> dict:
    from .service.main import serve_main  # the HTTP lookup service

    serve_main(args)
    return {"served": args.index}


# --------------------------------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="semhash", description="Semantic hashing on Spark: prepare, train, encode, "
                                "query, evaluate and serve binary-code indexes.")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, fn: Callable, help: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help, description=help)
        sp.set_defaults(fn=fn)
        return sp

    def conf_args(sp):
        sp.add_argument("--conf", help="YAML config (default: the built-in document configuration, conf/documents.yaml)")
        sp.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help="override one config value")

    sp = add("prepare", cmd_prepare, "turn a raw corpus into a Petastorm-readable Parquet dataset (Spark job)")
    sp.add_argument("--dataset", required=True, choices=["20ng", "reuters21578", "jsonl", "cifar10", "mnist", "imagefolder"])
    sp.add_argument("--source", required=True, help="archive, folder or file of the raw corpus: a local path or "
                    "s3://bucket/key-or-prefix")
    sp.add_argument("--out", required=True, help="DATA_URI: local path or s3://bucket/prefix")
    sp.add_argument("--master", help="Spark master (default local[2]; spark-submit sets it)")
    conf_args(sp)

    sp = add("train", cmd_train, "pretrain the RBM stack and fine-tune the autoencoder (Horovod)")
    sp.add_argument("--data", required=True, help="DATA_URI from semhash prepare")
    sp.add_argument("--bits", type=int, required=True, help="code length (20, 32, 64, 128, ...)")
    sp.add_argument("--out", required=True, help="MODEL_URI: local path or s3://bucket/prefix")
    sp.add_argument("--np", type=int, default=1, help="ranks (gloo on CPU, NCCL on GPU)")
    sp.add_argument("--launcher", default="local", choices=["local", "horovodrun", "spark", "torch"],
                    help="how the ranks start: local (this process, or horovod.run for --np > 1), horovodrun "
                    "(re-runs this command under horovodrun -np N; run under horovodrun, each copy is a rank), "
                    "spark (horovod.spark.run in Spark tasks), torch (pyspark TorchDistributor, no Horovod)")
    sp.add_argument("--master", help="Spark master for --launcher spark/torch (default local[max(2,np)]; "
                    "spark-submit sets it)")
    sp.add_argument("--no-progress", action="store_true", help="no progress bars")
    conf_args(sp)

    sp = add("encode", cmd_encode, "encode a corpus and publish address-partitioned code shards (Spark job)")
    sp.add_argument("--model", required=True)
    sp.add_argument("--data", required=True)
    sp.add_argument("--index", required=True, help="INDEX_URI: local path or s3://bucket/prefix")
    sp.add_argument("--patch-model", help="images: the 81-glimpse model (model.kind image_patches) whose codes are "
                    "stored for multiple semantic hashing")
    sp.add_argument("--master", help="Spark master (default local[2]; spark-submit sets it)")
    conf_args(sp)

    sp = add("query", cmd_query, "print the nearest documents of a query")
    sp.add_argument("--index", help="INDEX_URI (library lookup)")
    sp.add_argument("--server", help="URL of a `semhash serve` service instead of --index")
    sp.add_argument("--text")
    sp.add_argument("--image", help="an image file (image indexes)")
    sp.add_argument("--msh", action="store_true", help="with --image: multiple semantic hashing (81 glimpses, "
                    "radius 3, scores 2^(3-d), ranked with the full code); the index needs patch codes")
    sp.add_argument("--code", help="a hex code")
    sp.add_argument("--id", help="a document id (with --server)")
    sp.add_argument("--radius", type=int, help="Hamming radius around the query's address")
    sp.add_argument("--k", type=int, help="number of nearest documents (default 10 without --radius)")
    sp.add_argument("--rerank", choices=["tfidf"], help="re-rank the Hamming shortlist by TF-IDF cosine")
    sp.add_argument("--eps", type=float, help="with --server and k: stop early, each result within 1 + eps of the "
                    "true distance of its rank (default 0: exact)")
    sp.add_argument("--json", action="store_true", help="print only the JSON result")

    sp = add("evaluate", cmd_evaluate, "precision/recall of a model's codes against TF-IDF, LSA and LSH")
    sp.add_argument("--model", required=True)
    sp.add_argument("--data", required=True)
    sp.add_argument("--json", action="store_true", help="print one JSON object (always the last line)")
    sp.add_argument("--plot", help="PNG of the precision-recall curves (default semhash-pr.png; '' for none)")
    sp.add_argument("--max-queries", type=int, default=0, help="subsample the test queries (0: all)")
    sp.add_argument("--grid", help="images: PNG grid of queries and their top-10 per method (default "
                    "semhash-grid.png; '' for none)")
    sp.add_argument("--patch-model", help="images: the glimpse model, to add multiple semantic hashing ('msh')")
    sp.add_argument("--short-model", help="images: a 28-bit image model, the single-code lookup MSH is compared with")
    sp.add_argument("--msh-queries", type=int, default=1000, help="images: queries for the MSH comparison")

    sp = add("dedup", cmd_dedup, "all pairs of items whose codes lie within Hamming distance R (Spark job)")
    sp.add_argument("--index", required=True, help="INDEX_URI (its current version, or --version)")
    sp.add_argument("--radius", type=int, required=True)
    sp.add_argument("--out", required=True, help="where pairs/, clusters/ and summary.json go")
    sp.add_argument("--verify", help="check pairs on content: cosine:0.9 (TF-IDF) or jaccard:0.8 (word sets)")
    sp.add_argument("--version", help="an index version other than CURRENT")
    sp.add_argument("--data", help="DATA_URI with the documents' words, when the shards carry none")
    sp.add_argument("--master", help="Spark master (default local[2]; spark-submit sets it)")

    sp = add("reindex", cmd_reindex, "nightly re-index: encode new/changed documents, drop deleted ones, publish")
    sp.add_argument("--data", required=True, help="tonight's corpus: a prepared DATA_URI, or with --dataset the raw "
                                                  "source (e.g. a .jsonl file or folder)")
    sp.add_argument("--dataset", choices=["20ng", "reuters21578", "jsonl"],
                    help="--data is a raw corpus of this kind: prepare it with the model's vocabulary first "
                         "(bad records are kept under INDEX_URI/quarantine/)")
    sp.add_argument("--model", required=True)
    sp.add_argument("--index", required=True)
    sp.add_argument("--full", action="store_true", help="re-encode everything")
    sp.add_argument("--retention-days", type=float, help="delete versions older than this (never CURRENT or leased)")
    sp.add_argument("--master", help="Spark master (default local[2]; spark-submit sets it)")
    conf_args(sp)

    sp = add("rollback", cmd_rollback, "point CURRENT at another published version (re-verified first)")
    sp.add_argument("--index", required=True)
    which = sp.add_mutually_exclusive_group()
    which.add_argument("--version", help="the version to serve (see --list)")
    which.add_argument("--previous", action="store_true", help="the newest version older than CURRENT")
    which.add_argument("--list", action="store_true", help="only list the versions and CURRENT")
    sp.add_argument("--verify-checksums", action="store_true", help="re-hash every file, not only sizes")

    sp = add("generate", cmd_generate, "write a synthetic corpus shaped like a real one, at any size (Spark job)")
    sp.add_argument("--kind", required=True, choices=["documents", "images"])
    sp.add_argument("--out", required=True, help="DATA_URI: local path or s3://bucket/prefix")
    sp.add_argument("--size", type=int, help="documents (default 804414) or images (default 1600000)")
    sp.add_argument("--seed", type=int, default=0, help="the same seed writes the same corpus")
    sp.add_argument("--source", help="documents: a prepared DATA_URI or a raw corpus (default: 20 Newsgroups from "
                    "the data directory); images: the real images (default: CIFAR-10 from the data directory)")
    sp.add_argument("--source-dataset", choices=["20ng", "reuters21578", "jsonl", "cifar10", "mnist", "imagefolder"],
                    help="how to read a raw --source (default 20ng for documents, cifar10 for images)")
    sp.add_argument("--master", help="Spark master (default local[2]; spark-submit sets it)")
    conf_args(sp)

    sp = add("demo", cmd_demo, "prepare -> train -> encode -> publish -> query -> evaluate on 20 Newsgroups, "
             "against a local Spark and a local S3 server")
    sp.add_argument("--data-dir", help="data sets folder (default $SEMHASH_DATA_DIR or ../shared/data)")
    sp.add_argument("--workdir", default="semhash-demo", help="where the demo keeps its S3 data and outputs")
    sp.add_argument("--bits", type=int, default=64)
    sp.add_argument("--quick", action="store_true", help="few epochs, for smoke tests")

    sp = add("serve", cmd_serve, "HTTP lookup service over the current version of an index")
    sp.add_argument("--index", required=True)
    sp.add_argument("--port", type=int, default=8080)
    sp.add_argument("--host", default="127.0.0.1")
    sp.add_argument("--cache-bytes", type=int, default=1 << 30)
    sp.add_argument("--token", help="bearer token for query endpoints (visible in ps: prefer --token-file or "
                    "$SEMHASH_TOKEN)")
    sp.add_argument("--token-file", help="file holding the bearer token (default: $SEMHASH_TOKEN_FILE)")
    sp.add_argument("--max-body-bytes", type=int, default=8 << 20, help="request body limit in bytes (413 past it)")
    sp.add_argument("--poll-seconds", type=float, default=5.0, help="how often to look for a new version")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("py4j", "botocore", "urllib3", "petastorm", "matplotlib", "s3transfer", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    t0 = time.time()
    try:
        progress = contextlib.nullcontext()
        if args.command in SPARK_COMMANDS:      # running Spark stages, logged every SEMHASH_PROGRESS_SECONDS
            from .spark import spark_progress

            progress = spark_progress(float(os.environ.get("SEMHASH_PROGRESS_SECONDS", "10")))
        with progress:
            result = args.fn(args)
    except KeyboardInterrupt:
        print(f"semhash {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # one line for the user; the traceback on demand
        if os.environ.get("SEMHASH_DEBUG"):
            log.exception("semhash %s failed", args.command)
        msg = " ".join(str(e).split()) or type(e).__name__
        print(f"semhash {args.command}: error: {type(e).__name__}: {msg}", file=sys.stderr)
        return 1
    if isinstance(result, dict):
        result.setdefault("command", args.command)
        result.setdefault("elapsed_seconds", round(time.time() - t0, 1))
        _print(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
