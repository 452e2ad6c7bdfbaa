"""The ``semhash`` command. Every subcommand calls one library function; ``jobs/*.py`` call the same ones.

Each command exits 0 on success, printing a JSON summary line last, and non-zero with a one-line reason on error
(``SEMHASH_DEBUG=1`` adds the traceback).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import logging
import os
import sys
import time
from typing import Any, Callable, Iterator, Sequence

from semhash_spark.service.settings import parse_size  # noqa: F401 - the one size parser (semhash serve's flags use it)

log = logging.getLogger("semhash")
SPARK_COMMANDS = ("prepare", "encode", "dedup", "reindex")


IMAGE_CONF = "images.yaml"


def _default_conf(args) -> str | None:
    """The configuration when no --config is given: conf/images.yaml to train on an image dataset, else built-in."""
    data = getattr(args, "data", None)
    if getattr(args, "config", None) or not data or getattr(args, "fn", None) is not cmd_train:
        return getattr(args, "config", None)
    from semhash_spark.io import store

    meta_uri = store.join(data, "dataset.json")
    if store.exists(meta_uri) and json.loads(store.read_bytes(meta_uri)).get("kind") == "images":
        from semhash_spark.resources import conf_file

        return str(conf_file(IMAGE_CONF))
    return None


def _config(args) -> Any:
    from semhash_spark.config import load_config

    cfg = load_config(_default_conf(args), getattr(args, "set", None) or ())
    if getattr(args, "bits", None) is not None:
        cfg = cfg.with_bits(args.bits)
    return cfg


def _print(result: dict, as_json: bool = True) -> None:
    print(json.dumps(result, default=str), flush=True)


def _spark_conf(args) -> dict[str, str]:
    """Spark properties given as ``--conf KEY=VALUE``."""
    return dict(getattr(args, "spark_conf", None) or {})


_RESULT_STREAM: list = []  # the command's real stdout while _stdout_to_stderr redirects it


@contextlib.contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    """Everything written to stdout while the block runs -- by Python, native code, the JVM or child processes
    (Petastorm's ``Cache cleanup complete.``, the demo's narration) -- goes to stderr, so that stdout carries
    only the command's JSON line."""
    out = sys.stdout
    out.flush()
    try:
        saved = os.dup(1)
        os.dup2(2, 1)
    except OSError:  # no file descriptors (embedded interpreters): Python-level only
        saved = None
    stream = out  # where a command that streams its results writes (query --ids-file)
    try:
        if saved is not None and out.fileno() == 1:
            stream = os.fdopen(os.dup(saved), "w")
    except (OSError, ValueError):  # a captured stdout (pytest) has no file descriptor: write to it
        pass
    _RESULT_STREAM.append(stream)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        _RESULT_STREAM.pop()
        stream.flush()
        if stream is not out:
            stream.close()
        sys.stdout.flush()
        if saved is not None:
            os.dup2(saved, 1)
            os.close(saved)


# --------------------------------------------------------------------------------------------------- commands
def cmd_prepare(args) -> dict:
    from semhash_spark.data.images import prepare_images
    from semhash_spark.data.image_sources import DATASETS as IMAGE_DATASETS
    from semhash_spark.data.prepare import prepare_dataset
    from semhash_spark.io.spark import get_spark

    cfg = _config(args)
    spark = get_spark("semhash-prepare", master=args.master, conf=_spark_conf(args))
    # --source and --out: local paths or s3:// (the executors read the source and write the dataset themselves)
    if args.dataset in IMAGE_DATASETS:
        report = prepare_images(spark, args.dataset, args.source, args.out, cfg.images)
    else:
        report = prepare_dataset(spark, args.dataset, args.source, args.out, cfg.prepare)
    report["out"] = args.out
    report.pop("out_dir", None)
    return report


def cmd_train(args) -> dict | None:
    from semhash_spark.training.fit import train_model

    cfg = _config(args)
    if args.launcher in ("spark", "torch"):  # horovod.spark.run and TorchDistributor need a SparkSession
        from semhash_spark.io.spark import get_spark

        master = args.master
        if master is None and not os.environ.get("SEMHASH_UNDER_SUBMIT"):
            master = f"local[{max(2, args.np)}]"  # one task slot per rank
        get_spark("semhash-train", master=master, conf=_spark_conf(args))
    # --launcher horovodrun outside a Horovod job re-runs this very command under `horovodrun -np N`
    command = [sys.executable, "-m", "semhash_spark.cli", *args.argv]
    return train_model(
        args.data,
        args.out,
        cfg,
        np=args.np,
        launcher=args.launcher,
        progress=not (args.no_progress or args.quiet),
        command=command,
    )


def cmd_encode(args) -> dict:
    from semhash_spark.index.encode import encode_to_index
    from semhash_spark.io.spark import get_spark

    cfg = _config(args)
    spark = get_spark("semhash-encode", master=args.master, conf=_spark_conf(args))
    return encode_to_index(
        spark,
        args.model,
        args.data,
        args.index,
        cfg,
        address_model_uri=args.address_model,
        patch_model_uri=args.patch_model,
    )


def _is_image_data(data_uri: str) -> bool:
    from semhash_spark.io import store

    meta_uri = store.join(data_uri, "dataset.json")
    return store.exists(meta_uri) and json.loads(store.read_bytes(meta_uri)).get("kind") == "images"


def cmd_query(args) -> dict:
    k = args.k if args.k is not None else (None if args.radius is not None or args.address_radius is not None else 10)
    details = bool(args.details) or _human(args)  # the table shows labels and snippets; JSON only with --details
    if args.server:
        from semhash_spark.client import Client  # the HTTP client of `semhash serve`

        client = Client(args.server, token=os.environ.get("SEMHASH_TOKEN"))
        if getattr(args, "ids_file", None):
            from semhash_spark.client import stream_ids_file

            out = _RESULT_STREAM[-1] if _RESULT_STREAM else sys.stdout  # one JSON line per query
            stream_ids_file(
                client,
                args.ids_file,
                out,
                batch_size=args.batch_size,
                radius=args.radius,
                k=k,
                address_radius=args.address_radius,
                rerank=args.rerank,
                details=True if args.details else None,
            )
            return None
        from pathlib import Path

        from semhash_spark.client import ServiceError

        search = functools.partial(
            client.search,
            texts=[args.text] if args.text else None,
            codes=[args.code] if args.code else None,
            ids=[args.id] if args.id else None,
            radius=args.radius,
            k=k,
            address_radius=args.address_radius,
            rerank=args.rerank,
            eps=args.eps,
            images=[Path(args.image).read_bytes()] if args.image else None,
            msh=True if args.msh else None,
        )
        try:
            payload = search(details=details)
        except ServiceError as e:  # a service from before `details`: the table without labels and snippets
            if not details or args.details or e.status != 422 or "details" not in e.message:
                raise
            payload = search()
        return _show_results(args, payload["results"][0], payload.get("version"))
    if not args.index:
        raise ValueError("give --index INDEX_URI (library lookup) or --server URL (through the service)")
    if args.id:
        raise ValueError("--id is a query of the service: use it with --server")
    if args.image:
        from pathlib import Path

        from semhash_spark.index.image_lookup import ImageSearcher

        searcher = ImageSearcher.open(args.index)
        pixels = searcher.load_images([Path(args.image).read_bytes()])
        results = searcher.search_images(
            pixels, k=k, radius=args.radius, address_radius=args.address_radius, msh_lookup=args.msh
        )
        return _show_results(args, results[0], searcher.index.version)
    if not (args.text or args.code):
        raise ValueError("give --text, --image or --code (or --server URL with --id)")
    from semhash_spark.codes import from_hex
    from semhash_spark.index.lookup import Searcher

    searcher = Searcher.open(args.index)
    if args.text:
        results = searcher.search_texts(
            [args.text],
            radius=args.radius,
            k=k,
            address_radius=args.address_radius,
            rerank=args.rerank,
            details=details,
        )
    else:
        results = searcher.search_codes(
            from_hex(args.code, searcher.index.bits),
            radius=args.radius,
            k=k,
            address_radius=args.address_radius,
            eps=args.eps or 0.0,
            details=details,
        )
    return _show_results(args, results[0], searcher.index.version)


def _show_results(args, hits: list[dict], version: str | None) -> dict:
    """The summary is ``{"version", "results": [hits]}``, the shape of ``POST /search``; a table on stderr with
    each hit's distances, labels and first words (where the index keeps them)."""
    if _human(args):
        print(f"index version {version}: {len(hits)} result(s)", file=sys.stderr)
        for rank, h in enumerate(hits, 1):
            extra = f"  address={h['address_distance']}" if "address_distance" in h else ""
            extra += f"  tfidf={h['score']:.3f}" if "score" in h else ""
            extra += f"  [{', '.join(h['labels'])}]" if h.get("labels") else ""
            print(f"{rank:4d}. {h['id']}  hamming={h['distance']}{extra}", file=sys.stderr)
            if h.get("snippet"):
                print(f"      {h['snippet']}", file=sys.stderr)
    if not getattr(args, "details", False):
        hits = [{k: v for k, v in h.items() if k not in ("labels", "snippet")} for h in hits]
    return {"version": version, "results": [hits]}


def _human(args) -> bool:
    """Whether to write a human-readable summary (to stderr): not with --json or --quiet."""
    return not (getattr(args, "json", False) or getattr(args, "quiet", False))


def _baselines(args, known: tuple[str, ...]) -> tuple[str, ...]:
    """``--baselines``: 'all', 'none' or a comma-separated subset of ``known``."""
    text = (args.baselines or "all").strip().lower()
    if text == "all":
        return known
    if text == "none":
        return ()
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(
            f"--baselines {args.baselines!r}: unknown {unknown} for this data set; choose from "
            f"{', '.join(known)}, or all / none"
        )
    return names


def _show_evaluation(args, result: dict) -> None:
    if not _human(args):
        return
    rows = [(f"{result.get('bits')}-bit codes", result)] + list((result.get("baselines") or {}).items())
    print(
        f"{result.get('dataset')}: model {result.get('model_version')}, {result.get('num_queries')} queries",
        file=sys.stderr,
    )
    print(f"  {'method':22s} {'P@100':>7s} {'mAP':>7s}", file=sys.stderr)
    for name, r in rows:
        print(f"  {name:22s} {r['precision_at_100']:7.3f} {r['map']:7.3f}", file=sys.stderr)
    for key in ("plot", "grid"):
        if result.get(key):
            print(f"  {key}: {result[key]}", file=sys.stderr)


def cmd_evaluate(args) -> dict:
    from semhash_spark.evaluation.assess import evaluate_model

    plot = args.plot
    if plot is None:
        plot = "semhash-pr.png"
    if _is_image_data(args.data):
        from semhash_spark.evaluation.image_assess import evaluate_image_model
        from semhash_spark.evaluation.image_eval import IMAGE_BASELINES

        grid = args.grid if args.grid is not None else "semhash-grid.png"
        bits = tuple(int(b) for b in (args.baseline_bits or "").split(",") if b.strip())
        result = evaluate_image_model(
            args.model,
            args.data,
            plot_path=plot or None,
            grid_path=grid or None,
            max_queries=args.max_queries,
            patch_model_uri=args.patch_model,
            short_model_uri=args.short_model,
            msh_queries=args.msh_queries,
            baselines=_baselines(args, IMAGE_BASELINES),
            baseline_bits=bits,
            address_model_uri=args.address_model,
        )
    else:
        from semhash_spark.evaluation.evaluate import BASELINES

        result = evaluate_model(
            args.model,
            args.data,
            plot_path=plot or None,
            max_queries=args.max_queries,
            baselines=_baselines(args, BASELINES),
            address_model_uri=args.address_model,
        )
    _show_evaluation(args, result)
    return result


def cmd_dedup(args) -> dict:
    from semhash_spark.index.dedup import LOCAL_MAX_DOCS, dedup_job
    from semhash_spark.io.spark import get_spark

    # the shard files are listed by the manifest: listed on the driver, not by a Spark job of one task per file
    conf = {"spark.sql.sources.parallelPartitionDiscovery.threshold": "1024", **_spark_conf(args)}
    spark = get_spark("semhash-dedup", master=args.master, conf=conf)
    max_pairs = args.max_pairs if args.max_pairs and args.max_pairs > 0 else None
    return dedup_job(
        spark,
        args.index,
        args.radius,
        args.out,
        args.verify,
        version=args.version,
        data_uri=args.data,
        max_pairs=max_pairs,
        target_recall=args.target_recall,
        calibration_sample=args.calibration_sample,
        since=args.since,
        previous_uri=args.previous,
        local_max_docs=LOCAL_MAX_DOCS if args.local_max_docs is None else max(args.local_max_docs, 0),
    )


def cmd_reindex(args) -> dict:
    from semhash_spark.index.reindex import reindex
    from semhash_spark.io.spark import get_spark

    cfg = _config(args)
    spark = get_spark("semhash-reindex", master=args.master, conf=_spark_conf(args))
    kwargs = {"full": args.full, "address_model_uri": args.address_model}
    if args.retention_days is not None:
        kwargs["retention_days"] = args.retention_days
    if args.dataset:  # a raw corpus: prepared first with the model's vocabulary
        from semhash_spark.index.reindex import reindex_corpus

        return reindex_corpus(spark, args.dataset, args.data, args.model, args.index, cfg, **kwargs)
    return reindex(spark, args.data, args.model, args.index, cfg, **kwargs)


def cmd_rollback(args) -> dict:
    from semhash_spark.index import published as ix

    current = ix.current_version(args.index)  # None: CURRENT was deleted; --version restores it
    versions = ix.list_versions(args.index)
    if args.list:
        details = []
        for v in versions:
            try:
                m = ix.read_manifest(args.index, v)
                row = {
                    "version": v,
                    "created_at": m.get("created_at"),
                    "count": int(m["count"]),
                    "bits": m["bits"],
                    "partitions": len(m["partitions"]),
                    "model": (m.get("model") or {}).get("version"),
                }
            except Exception as e:  # an unreadable manifest is listed with its reason
                row = {"version": v, "error": f"{type(e).__name__}: {e}"}
            details.append(row | {"current": v == current})
        _show_versions(args, details)
        return {"index": args.index, "current": current, "versions": versions, "details": details}
    if args.previous:
        if current is None:
            raise ValueError(
                f"{args.index}: no CURRENT to go back from; restore it with --version V "
                f"(versions: {', '.join(versions) or 'none'})"
            )
        older = [v for v in versions if v < current]
        if not older:
            raise ValueError(
                f"{args.index}: no version older than CURRENT {current} to roll back to "
                f"(versions: {', '.join(versions) or 'none'})"
            )
        target = older[-1]
    elif args.version:
        target = args.version
        if target not in versions:
            raise ValueError(
                f"{args.index}: no version {target!r} with a manifest "
                f"(versions: {', '.join(versions) or 'none'}); see semhash rollback --list"
            )
    else:
        raise ValueError("give --version V, --previous or --list")
    manifest = ix.rollback(args.index, target, verify_checksums=args.verify_checksums)
    return {
        "index": args.index,
        "version": target,
        "previous": current,
        "count": manifest["count"],
        "partitions": len(manifest["partitions"]),
    }


def _show_versions(args, details: list[dict]) -> None:
    """``rollback --list`` for people: one row per version, oldest first, CURRENT marked."""
    if not _human(args):
        return
    print(f"  {'VERSION':32s} {'CREATED (UTC)':20s} {'CODES':>11s} {'BITS':>5s} {'PARTS':>6s}  MODEL", file=sys.stderr)
    for d in details:
        mark = "*" if d["current"] else " "
        if "error" in d:
            print(f"{mark} {d['version']:32s} unreadable: {d['error']}", file=sys.stderr)
            continue
        created = (d.get("created_at") or "")[:19].replace("T", " ")
        print(
            f"{mark} {d['version']:32s} {created:20s} {d['count']:>11,d} {d['bits']:>5} {d['partitions']:>6}  "
            f"{d.get('model') or ''}",
            file=sys.stderr,
        )
    print("  (* = CURRENT)", file=sys.stderr)


def cmd_generate(args) -> dict:
    import tempfile
    from pathlib import Path

    from semhash_spark.io import store
    from semhash_spark.demo import default_data_dir
    from semhash_spark.data.generate import DEFAULT_DOCUMENTS, DEFAULT_IMAGES, generate_documents, generate_images
    from semhash_spark.io.spark import get_spark

    cfg = _config(args)
    docs = args.kind == "documents"
    dataset = args.source_dataset or ("20ng" if docs else "cifar10")
    source = args.source
    if source is None:
        d = default_data_dir()
        if d is None:
            raise ValueError("no data directory with 20newsgroups/ found: give --source or set SEMHASH_DATA_DIR")
        source = (
            str(d / "20newsgroups" / "20news-bydate.tar.gz")
            if docs
            else str(d / {"cifar10": "cifar10-jpeg/cifar10-jpeg.tar.gz", "mnist": "mnist"}.get(dataset, ""))
        )
    size = args.size if args.size is not None else (DEFAULT_DOCUMENTS if docs else DEFAULT_IMAGES)
    spark = get_spark("semhash-generate", master=args.master, conf=_spark_conf(args))
    with tempfile.TemporaryDirectory(prefix="semhash-generate-") as tmp:
        out_dir = str(Path(tmp) / "out") if store.is_s3(args.out) else store.local_path(args.out)
        if docs:
            if store.exists(store.join(source, "dataset.json")):  # already a prepared dataset
                src_dir = store.local_copy(source)
            else:  # a raw corpus: prepare it first
                from semhash_spark.data.prepare import prepare_dataset

                src_dir = str(Path(tmp) / "source")
                prepare_dataset(spark, dataset, source, src_dir, cfg.prepare)
            report = generate_documents(
                spark, src_dir, out_dir, cfg.generate, size=size, seed=args.seed, min_files=cfg.prepare.files_per_split
            )
        else:
            report = generate_images(
                spark, dataset, source, out_dir, cfg.images, cfg.generate, size=size, seed=args.seed
            )
        if store.is_s3(args.out):
            store.upload_dir(out_dir, args.out)
    report["out"] = args.out
    report.pop("out_dir", None)
    return report


def cmd_demo(args) -> dict:
    from semhash_spark.demo import run_demo

    return run_demo(data_dir=args.data_dir, workdir=args.workdir, bits=args.bits, quick=args.quick)


def cmd_serve(args) -> dict:
    from semhash_spark.service.main import serve_main  # the HTTP lookup service

    serve_main(args)
    return {"served": args.index}


# --------------------------------------------------------------------------------------------------- parser
class _Formatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows an option's default in its help unless there is none to show (None, False) or the help names it."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.default in (None, False, argparse.SUPPRESS) or "default" in text or not action.option_strings:
            return text
        return super()._get_help_string(action)


class _ConfAction(argparse.Action):
    """``--conf KEY=VALUE``: a Spark property (repeatable), as for spark-submit. ``--conf FILE`` (a YAML file, the
    old spelling of ``--config``) still works for one release, with a deprecation warning."""

    def __call__(self, parser, namespace, value, option_string=None):
        key, eq, _ = value.partition("=")
        if eq and key.strip() and not os.path.exists(value):
            props = dict(getattr(namespace, "spark_conf", None) or {})
            props[key.strip()] = value.split("=", 1)[1]
            namespace.spark_conf = props
            return
        if not eq and not value.endswith((".yaml", ".yml", ".json")) and not os.path.exists(value):
            parser.error(
                f"--conf {value!r}: not KEY=VALUE (a Spark property) nor a config file; "
                "the YAML configuration is --config FILE"
            )
        log.warning("--conf FILE is deprecated (it will mean only Spark properties): use --config %s", value)
        namespace.config = value


def _version() -> str:
    from semhash_spark import __version__

    return __version__


def _global_flags(p: argparse.ArgumentParser, defaults: bool) -> None:
    """-v/-q/--json, accepted before and after the subcommand; the subcommand's copies only set what is given."""
    d = (lambda v: v) if defaults else (lambda v: argparse.SUPPRESS)
    p.add_argument("-v", "--verbose", action="store_true", default=d(False), help="debug logging on stderr")
    p.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        default=d(False),
        help="only warnings and errors on stderr; no progress bars",
    )
    p.add_argument(
        "--json",
        action="store_true",
        default=d(False),
        help="no human-readable summary on stderr: only the JSON line on stdout",
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="semhash",
        formatter_class=_Formatter,
        description="Semantic hashing on Spark: prepare, train, encode, query, evaluate and "
        "serve binary-code indexes. Every command prints one JSON line on stdout; logs and "
        "progress go to stderr.",
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    _global_flags(p, defaults=True)
    common = argparse.ArgumentParser(add_help=False)
    _global_flags(common, defaults=False)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, fn: Callable, help: str) -> argparse.ArgumentParser:
        # "resolve": a subcommand may define its own --json etc. over the common flags
        sp = sub.add_parser(
            name, help=help, description=help, parents=[common], formatter_class=_Formatter, conflict_handler="resolve"
        )
        sp.set_defaults(fn=fn)
        return sp

    def conf_args(sp):
        sp.add_argument(
            "--config",
            metavar="FILE",
            help="YAML configuration (default: the built-in document "
            "configuration, conf/documents.yaml; conf/images.yaml to train on images)",
        )
        sp.add_argument(
            "--conf", action=_ConfAction, metavar="KEY=VALUE", help="a Spark property, as for spark-submit (repeatable)"
        )
        sp.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help="override one config value")

    sp = add("prepare", cmd_prepare, "turn a raw corpus into a Petastorm-readable Parquet dataset (Spark job)")
    sp.add_argument(
        "--dataset", required=True, choices=["20ng", "reuters21578", "jsonl", "cifar10", "mnist", "imagefolder"]
    )
    sp.add_argument(
        "--source",
        required=True,
        help="archive, folder or file of the raw corpus: a local path or s3://bucket/key-or-prefix",
    )
    sp.add_argument("--out", required=True, help="DATA_URI: local path or s3://bucket/prefix")
    sp.add_argument("--master", help="Spark master (default local[2]; spark-submit sets it)")
    conf_args(sp)

    sp = add("train", cmd_train, "pretrain the RBM stack and fine-tune the autoencoder (Horovod)")
    sp.add_argument("--data", required=True, help="DATA_URI from semhash prepare")
    sp.add_argument("--bits", type=int, required=True, help="code length (20, 32, 64, 128, ...)")
    sp.add_argument("--out", required=True, help="MODEL_URI: local path or s3://bucket/prefix")
    sp.add_argument("--np", type=int, default=1, help="ranks (gloo on CPU, NCCL on GPU)")
    sp.add_argument(
        "--launcher",
        default="local",
        choices=["local", "horovodrun", "spark", "torch"],
        help="how the ranks start: local (this process, or horovod.run for --np > 1), horovodrun "
        "(re-runs this command under horovodrun -np N; run under horovodrun, each copy is a rank), "
        "spark (horovod.spark.run in Spark tasks), torch (pyspark TorchDistributor, no Horovod)",
    )
    sp.add_argument(
        "--master", help="Spark master for --launcher spark/torch (default local[max(2,np)]; spark-submit sets it)"
    )
    sp.add_argument("--no-progress", action="store_true", help="no progress bars")
    conf_args(sp)

    sp = add("encode", cmd_encode, "encode a corpus and publish address-partitioned code shards (Spark job)")
    sp.add_argument("--model", required=True, help="RANKING_MODEL: the (long) code every item is ranked by")
    sp.add_argument(
        "--address-model",
        help="ADDRESS_MODEL: a (short, <= 64-bit) model whose code is each item's "
        "address (default: the first index.address_bits bits of the ranking code)",
    )
    sp.add_argument("--data", required=True)
    sp.add_argument("--index", required=True, help="INDEX_URI: local path or s3://bucket/prefix")
    sp.add_argument(
        "--patch-model",
        help="images: the 81-glimpse model (model.kind image_patches) whose codes are "
        "stored for multiple semantic hashing",
    )
    sp.add_argument("--master", help="Spark master (default local[2]; spark-submit sets it)")
    conf_args(sp)

    sp = add("query", cmd_query, "print the nearest documents of a query")
    sp.add_argument("--index", help="INDEX_URI (library lookup)")
    sp.add_argument("--server", help="URL of a `semhash serve` service instead of --index")
    sp.add_argument("--text")
    sp.add_argument("--image", help="an image file (image indexes)")
    sp.add_argument(
        "--msh",
        action="store_true",
        help="with --image: multiple semantic hashing (81 glimpses, "
        "radius 3, scores 2^(3-d), ranked with the full code); the index needs patch codes",
    )
    sp.add_argument("--code", help="a hex code")
    sp.add_argument("--id", help="a document id (with --server)")
    sp.add_argument(
        "--ids-file",
        help="with --server: a file of document ids, one a line ('-': stdin), searched in "
        "batches; prints one JSON line {query, version, results} per id",
    )
    sp.add_argument("--batch-size", type=int, default=1000, help="queries per request with --ids-file")
    sp.add_argument("--radius", type=int, help="Hamming radius on the ranking code: every item within it")
    sp.add_argument(
        "--address-radius",
        type=int,
        help="Hamming radius on the address code: the papers' lookup "
        "(every item whose address is within it), ordered by the ranking code",
    )
    sp.add_argument("--k", type=int, help="number of nearest items by ranking code (default 10 without a radius)")
    sp.add_argument("--rerank", choices=["tfidf"], help="order the shortlist by TF-IDF cosine")
    sp.add_argument(
        "--eps",
        type=float,
        help="k nearest alone: stop early, each result within 1 + eps of the "
        "true distance of its rank (default 0: exact)",
    )
    sp.add_argument(
        "--details",
        action="store_true",
        help="the JSON hits also carry each item's labels and "
        "snippet (the table on stderr always shows them where the index keeps them)",
    )

    sp = add("evaluate", cmd_evaluate, "precision/recall of a model's codes against TF-IDF, LSA and LSH")
    sp.add_argument("--model", required=True)
    sp.add_argument("--data", required=True)
    sp.add_argument("--plot", help="PNG of the precision-recall curves (default semhash-pr.png; '' for none)")
    sp.add_argument("--max-queries", type=int, default=0, help="subsample the test queries (0: all)")
    sp.add_argument(
        "--address-model",
        help="a short-code model (20 bits for documents, 28 for images) whose "
        "Hamming balls (r = 0..4; images 0..5) are re-ranked by --model's codes (and documents by "
        "TF-IDF): 'address_lookup'",
    )
    sp.add_argument(
        "--baselines",
        default="all",
        help="what the codes are compared with: 'all', 'none', or a "
        "comma-separated list (documents: tfidf,lsa,lsh; images: euclidean,lsh,sh,pcah,pca_itq), each at "
        "the model's bit count",
    )
    sp.add_argument(
        "--baseline-bits",
        metavar="BITS,...",
        help="images: also run the hashing baselines at these "
        "code lengths, e.g. 28,64,256 (the papers'); by default only at the model's",
    )
    sp.add_argument(
        "--grid", help="images: PNG grid of queries and their top-10 per method (default semhash-grid.png; '' for none)"
    )
    sp.add_argument("--patch-model", help="images: the glimpse model, to add multiple semantic hashing ('msh')")
    sp.add_argument("--short-model", help="images: a 28-bit image model, the single-code lookup MSH is compared with")
    sp.add_argument("--msh-queries", type=int, default=1000, help="images: queries for the MSH comparison")

    sp = add("dedup", cmd_dedup, "all pairs of items whose codes lie within Hamming distance R (Spark job)")
    sp.add_argument("--index", required=True, help="INDEX_URI (its current version, or --version)")
    sp.add_argument(
        "--radius",
        type=int,
        help="Hamming radius; without it (and with --verify jaccard:T) the radius "
        "that catches --target-recall of a sample's pairs above T",
    )
    sp.add_argument("--out", required=True, help="where pairs/, clusters/ and summary.json go")
    sp.add_argument("--verify", help="check pairs on content: cosine:0.9 (TF-IDF) or jaccard:0.8 (word sets)")
    sp.add_argument(
        "--target-recall",
        type=float,
        default=0.9,
        help="with no --radius: the share of a sample's pairs above the Jaccard threshold to catch",
    )
    sp.add_argument("--calibration-sample", type=int, default=20000, help="documents sampled to pick the radius")
    sp.add_argument(
        "--max-pairs",
        type=int,
        default=200_000_000,
        help="stop before pairing when more candidate pairs share buckets (0: no limit)",
    )
    sp.add_argument("--since", help="pair only the documents added or changed since this index version")
    sp.add_argument(
        "--previous",
        help="with --since: the output of the run on that version (its pairs are kept and its cluster ids stay)",
    )
    sp.add_argument(
        "--local-max-docs",
        type=int,
        help="an index of at most this many documents (default 100,000) is paired on the driver, without a "
        "shuffle; 0: always in Spark",
    )
    sp.add_argument("--version", help="an index version other than CURRENT")
    sp.add_argument("--data", help="DATA_URI with the documents' words, when the shards carry none")
    sp.add_argument("--master", help="Spark master (default local[2]; spark-submit sets it)")
    sp.add_argument(
        "--conf", action=_ConfAction, metavar="KEY=VALUE", help="a Spark property, as for spark-submit (repeatable)"
    )

    sp = add("reindex", cmd_reindex, "nightly re-index: encode new/changed documents, drop deleted ones, publish")
    sp.add_argument(
        "--data",
        required=True,
        help="tonight's corpus: a prepared DATA_URI, or with --dataset the raw source (e.g. a .jsonl file or folder)",
    )
    sp.add_argument(
        "--dataset",
        choices=["20ng", "reuters21578", "jsonl"],
        help="--data is a raw corpus of this kind: prepare it with the model's vocabulary first "
        "(bad records are kept under INDEX_URI/quarantine/)",
    )
    sp.add_argument("--model", required=True)
    sp.add_argument("--index", required=True)
    sp.add_argument(
        "--address-model",
        help="ADDRESS_MODEL (default: the current version's, if it has one); a new one re-encodes everything",
    )
    sp.add_argument("--full", action="store_true", help="re-encode everything")
    sp.add_argument("--retention-days", type=float, help="delete versions older than this (never CURRENT or leased)")
    sp.add_argument("--master", help="Spark master (default local[2]; spark-submit sets it)")
    conf_args(sp)

    sp = add("rollback", cmd_rollback, "point CURRENT at another published version (re-verified first)")
    sp.add_argument("--index", required=True)
    which = sp.add_mutually_exclusive_group(required=True)
    which.add_argument("--version", help="the version to serve (see --list)")
    which.add_argument("--previous", action="store_true", help="the newest version older than CURRENT")
    which.add_argument("--list", action="store_true", help="only list the versions and CURRENT")
    sp.add_argument("--verify-checksums", action="store_true", help="re-hash every file, not only sizes")

    sp = add("generate", cmd_generate, "write a synthetic corpus shaped like a real one, at any size (Spark job)")
    sp.add_argument("--kind", required=True, choices=["documents", "images"])
    sp.add_argument("--out", required=True, help="DATA_URI: local path or s3://bucket/prefix")
    sp.add_argument("--size", type=int, help="documents (default 804414) or images (default 1600000)")
    sp.add_argument("--seed", type=int, default=0, help="the same seed writes the same corpus")
    sp.add_argument(
        "--source",
        help="documents: a prepared DATA_URI or a raw corpus (default: 20 Newsgroups from "
        "the data directory); images: the real images (default: CIFAR-10 from the data directory)",
    )
    sp.add_argument(
        "--source-dataset",
        choices=["20ng", "reuters21578", "jsonl", "cifar10", "mnist", "imagefolder"],
        help="how to read a raw --source (default 20ng for documents, cifar10 for images)",
    )
    sp.add_argument("--master", help="Spark master (default local[2]; spark-submit sets it)")
    conf_args(sp)

    sp = add(
        "demo",
        cmd_demo,
        "prepare -> train -> encode -> publish -> query -> evaluate on 20 Newsgroups, "
        "against a local Spark and a local S3 server",
    )
    sp.add_argument("--data-dir", help="data sets folder (default $SEMHASH_DATA_DIR or ../shared/data)")
    sp.add_argument("--workdir", default="semhash-demo", help="where the demo keeps its S3 data and outputs")
    sp.add_argument("--bits", type=int, default=64)
    sp.add_argument("--quick", action="store_true", help="few epochs, for smoke tests")

    sp = add("serve", cmd_serve, "HTTP lookup service over the current version of an index")
    from semhash_spark.service.settings import (
        add_serve_arguments,
    )  # the one set of flags (python -m semhash_spark.service too)

    add_serve_arguments(sp)
    for sp in sub.choices.values():  # options without help still show their default
        for action in sp._actions:
            if action.help is None and action.option_strings and action.default not in (None, False):
                action.help = "default: %(default)s"
    p.command_parsers = sub.choices  # main() reports usage errors with the subcommand's usage
    return p


# per command: a check of the parsed flags that argparse cannot express; returns a usage error or None
USAGE_CHECKS: dict[str, Callable[[argparse.Namespace], str | None]] = {
    "query": lambda a: (
        None
        if (getattr(a, "index", None) or getattr(a, "server", None))
        else "give --index INDEX_URI (library lookup) or --server URL (a running semhash serve)"
    ),
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    check = USAGE_CHECKS.get(args.command)
    problem = check(args) if check else None
    if problem:
        parser.command_parsers[args.command].error(problem)
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(level=level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("py4j", "botocore", "urllib3", "petastorm", "matplotlib", "s3transfer", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if args.quiet:
        os.environ.setdefault("SEMHASH_PROGRESS_SECONDS", "0")
    t0 = time.time()
    try:
        progress = contextlib.nullcontext()
        if args.command in SPARK_COMMANDS:  # running Spark stages, logged every SEMHASH_PROGRESS_SECONDS
            from semhash_spark.io.spark import spark_progress

            progress = spark_progress(float(os.environ.get("SEMHASH_PROGRESS_SECONDS", "10")))
        with _stdout_to_stderr(), progress:
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
        if args.command != "query":  # query prints exactly POST /search's {"version", "results"}
            result.setdefault("command", args.command)
            result.setdefault("elapsed_seconds", round(time.time() - t0, 1))
        _print(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
