"""The Spark encode job: a whole prepared corpus -> address-partitioned code shards under a new index version.

Plan (nothing but file metadata reaches the driver):

1. ``mapInPandas(encode)``: each Python worker loads the model once (from a broadcast of the checkpoint's bytes,
   cached per worker and model version) and turns Arrow batches of sparse word counts into packed codes,
   addresses and partition keys.
2. ``repartition(partition key)``: every address partition lands in one task.
3. ``mapInPandas(write)``: each task writes one Parquet shard per partition it holds straight to the store
   (``index.write_shard``) and returns the files' metadata.
4. The driver builds the manifest, copies the model next to the shards, verifies every file and only then
   writes ``CURRENT`` (``index.publish``). A job that fails before that publishes nothing and removes what it
   wrote.
"""
from __future__ import annotations

import functools
import json
import logging
import os
import time
from typing import Any, Iterator

import numpy as np
import pandas as pd

from . import codes as C
from . import dataset as ds
from . import index as ix
from . import sparkio, store
from .checkpoint import WEIGHTS, META, Hasher

log = logging.getLogger(__name__)
ADDRESS_MODEL_DIR = "address_model"

ENCODED_SCHEMA = ("id string, code binary, address long, part string, word_ids binary, word_counts binary, "
                  "content_hash string, labels array<string>, snippet string")
FILES_SCHEMA = "partition string, path string, rows long, bytes long, sha256 string, columns array<string>"

_WORKER_MODELS: dict[str, Hasher] = {}


def _hasher_from_bytes(version: str, blobs: dict[str, bytes]) -> Hasher:
    """The model for this Python worker, built once per model version and device (``spark.python.worker.reuse``),
    on the GPU Spark gave the task when it has one (documents and images alike)."""
    device = _task_device()
    hasher = _WORKER_MODELS.get(f"{version}@{device}")
    if hasher is None:
        import torch
        from safetensors.torch import load as st_load

        from .checkpoint import hasher_from_parts

        torch.set_num_threads(int(os.environ.get("SEMHASH_ENCODE_THREADS", "1")))
        hasher = hasher_from_parts(st_load(blobs[WEIGHTS]), json.loads(blobs[META]))
        if device != "cpu":
            hasher.model.to(device)
            log.info("encoding on %s", device)
        while len(_WORKER_MODELS) >= 2:     # a job's two models: ranking + address, or image + patch
            _WORKER_MODELS.pop(next(iter(_WORKER_MODELS)))
        _WORKER_MODELS[f"{version}@{device}"] = hasher
    return hasher


def _task_device() -> str:
    """``cuda:<n>`` when Spark gave this task a GPU (``spark.task.resource.gpu.amount``) and torch sees it, else
    ``cpu``. Tasks sharing a GPU (amount < 1) share the device; the addresses are the discovery script's."""
    try:
        import torch
        from pyspark import TaskContext

        ctx = TaskContext.get()
        gpus = ctx.resources().get("gpu") if ctx is not None else None
        if gpus is not None and gpus.addresses and torch.cuda.is_available():
            return f"cuda:{int(gpus.addresses[0])}"
    except (ImportError, ValueError):
        pass
    return "cpu"


def encode_frames(frames: Iterator[pd.DataFrame], hasher: Hasher, vocab_size: int, address_bits: int,
                  partition_bits: int, keep_words: bool, address_hasher: Hasher | None = None
                  ) -> Iterator[pd.DataFrame]:
    """Arrow batches of documents -> id, packed code, address (as signed int64), partition key (hex).

    The address is ``address_hasher``'s code (``address_bits`` = its bits) or, without one, the first
    ``address_bits`` bits of the ranking code; the partition key is the address's first ``partition_bits`` bits.

    The documents' ``content_hash`` passes through when the batch has it (re-indexing compares it), else null;
    so do ``labels`` and ``snippet`` (what ``semhash query`` shows beside a hit).
    """
    for pdf in frames:
        if len(pdf) == 0:
            continue
        counts = ds.csr_from_binary(pdf[ds.WORD_IDS].tolist(), pdf[ds.WORD_COUNTS].tolist(), vocab_size)
        dense = counts.toarray()
        packed = hasher.codes(dense)
        address = C.prefix(address_hasher.codes(dense) if address_hasher is not None else packed, address_bits)
        part = address >> np.uint64(address_bits - partition_bits)
        out = pd.DataFrame({
            "id": pdf[ds.ID].astype(str).to_numpy(),
            "code": [row.tobytes() for row in packed],
            "address": address.view(np.int64),
            "part": [C.partition_name(int(p), partition_bits) for p in part],
        })
        if keep_words:
            out["word_ids"] = pdf[ds.WORD_IDS].to_numpy()
            out["word_counts"] = pdf[ds.WORD_COUNTS].to_numpy()
        else:
            out["word_ids"] = None
            out["word_counts"] = None
        out["content_hash"] = pdf[ds.CONTENT_HASH].to_numpy() if ds.CONTENT_HASH in pdf.columns else None
        for c in ix.TEXT_COLUMNS:
            out[c] = pdf[c].to_numpy() if c in pdf.columns else None
        yield out


def encode_to_index(spark, model_uri: str, data_uri: str, index_uri: str, cfg, *, version: str | None = None,
                    splits: tuple[str, ...] = ds.SPLITS, address_model_uri: str | None = None) -> dict[str, Any]:
    """Encodes every document of ``data_uri`` with the model and publishes a new index version.

    ``address_model_uri``: a short model (e.g. 20 bits) trained on the same vocabulary whose codes are the items'
    addresses (partitions are their prefixes); copied into the version as ``address_model/``. Without it the
    address is the first ``index.address_bits`` bits of the ranking code.
    Returns a report: version, counts, partitions, files, seconds, documents per second.
    """
    t0 = time.time()
    if not store.exists(store.join(model_uri, META)):
        raise ValueError(f"no model at {model_uri!r} (model.json not found); run semhash train first")
    # Read each file once: the bytes are broadcast to the workers and copied into the index version.
    tensors_blob = store.read_bytes(store.join(model_uri, WEIGHTS))
    meta_blob = store.read_bytes(store.join(model_uri, META))
    meta = json.loads(meta_blob)
    bits = int(meta["bits"])
    address_bits = min(cfg.index.address_bits, bits)
    address_blobs, address_meta = None, None
    if address_model_uri:
        address_blobs, address_meta = _address_model(address_model_uri, meta)
        address_bits = int(address_meta["bits"])
    partition_bits = min(cfg.index.partition_bits, address_bits)
    if store.is_s3(data_uri) and sparkio.on_cluster(spark):   # executors read it through the store
        dmeta = store.read_json(store.join(data_uri, ds.DATASET_FILE))
    else:
        dmeta = ds.read_metadata(sparkio.readable_root(spark, data_uri))
    fp = dmeta.get("vocab_fingerprint")
    if fp and meta.get("vocab", {}).get("fingerprint") and fp != meta["vocab"]["fingerprint"]:
        raise ValueError(
            f"the model {model_uri!r} was trained on another vocabulary than {data_uri!r} "
            f"(fingerprints {meta['vocab']['fingerprint'][:12]} vs {fp[:12]}); re-prepare or retrain")
    vocab_size = int(dmeta["vocab_size"])
    base = ix.current_version(index_uri)                     # CURRENT must still be here when we publish
    model_version = meta["model_version"]
    blobs = spark.sparkContext.broadcast({WEIGHTS: tensors_blob, META: meta_blob})
    address_bc = spark.sparkContext.broadcast(address_blobs) if address_blobs else None
    address_version = address_meta["model_version"] if address_meta else None
    keep_words = cfg.index.store_counts and meta.get("kind", "documents") == "documents"
    code_bytes = C.code_bytes(bits)
    s3_env = store.driver_s3_env()

    def encode(frames):
        hasher = _hasher_from_bytes(model_version, blobs.value)
        address_hasher = _hasher_from_bytes(address_version, address_bc.value) if address_bc is not None else None
        yield from encode_frames(frames, hasher, vocab_size, address_bits, partition_bits, keep_words,
                                 address_hasher)

    def write(frames, version_uri: str):
        store.apply_s3_env(s3_env)
        for pdf in frames:
            cols = ["id", "code", "address"] + (["word_ids", "word_counts"] if keep_words else []) + \
                ([ds.CONTENT_HASH] if keep_hash else []) + (list(ix.TEXT_COLUMNS) if keep_text else [])
            metas = ix.write_shard(version_uri, partition_bits, code_bytes, pdf[cols], address_bits=address_bits)
            if metas:
                yield pd.DataFrame([{k: m[k] for k in ("partition", "path", "rows", "bytes", "sha256", "columns")}
                                    for m in metas])

    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(cfg.encode.batch_size))
    try:
        docs = sparkio.read_parquet(spark, data_uri, [f"{ds.DOCS_DIR}/split={s}" for s in splits])
    except FileNotFoundError:
        raise ValueError(f"{data_uri!r} has no documents (no docs/split=* files); run semhash prepare") from None
    keep_hash = ds.CONTENT_HASH in docs.columns              # shards keep it so `semhash reindex` can diff
    keep_text = ds.SNIPPET in docs.columns                   # labels + snippet for people (datasets since snippets)
    docs = docs.select(ds.ID, ds.WORD_IDS, ds.WORD_COUNTS, *([ds.CONTENT_HASH] if keep_hash else []),
                       *(ix.TEXT_COLUMNS if keep_text else []))
    n_tasks = cfg.encode.shuffle_partitions or max(2, spark.sparkContext.defaultParallelism)
    n_tasks = min(n_tasks, 1 << partition_bits)

    def write_version(version: str, version_uri: str) -> dict:
        encoded = docs.mapInPandas(encode, ENCODED_SCHEMA)
        # One shard task per group of address partitions; a partition lives in exactly one task, sorted inside.
        files_df = encoded.repartition(n_tasks, "part").sortWithinPartitions("part", "address", "id") \
            .mapInPandas(functools.partial(write, version_uri=version_uri), FILES_SCHEMA)
        files = [r.asDict() for r in files_df.collect()]     # file metadata only: O(partitions), never codes
        log.info("wrote %d shard files: %d partitions, %d codes under %s", len(files),
                 len({f["partition"] for f in files}), sum(int(f["rows"]) for f in files), version_uri)
        return dict(bits=bits, address_bits=address_bits, partition_bits=partition_bits, files=files,
                    model={"uri": model_uri, "version": model_version, "path": "model", "kind": meta.get("kind")},
                    data={"uri": data_uri, "vocab_fingerprint": meta.get("vocab", {}).get("fingerprint")},
                    has_words=keep_words,
                    **({"address_model": {"uri": address_model_uri, "version": address_version,
                                          "path": ADDRESS_MODEL_DIR, "kind": address_meta.get("kind"),
                                          "bits": address_bits}} if address_meta else {}))

    try:
        # The index carries the model that made its codes, so a reader can encode queries with it.
        models = {"model": {WEIGHTS: tensors_blob, META: meta_blob}}
        if address_blobs:
            models[ADDRESS_MODEL_DIR] = address_blobs
        manifest = ix.publish_version(index_uri, write_version, base=base, version=version, models=models)
    finally:
        blobs.unpersist()
        if address_bc is not None:
            address_bc.unpersist()
    version = manifest["version"]
    files = [f for p in manifest["partitions"] for f in p["files"]]
    seconds = time.time() - t0
    count = int(manifest["count"])
    return {
        "version": version, "index": index_uri, "bits": bits, "address_bits": address_bits,
        "partition_bits": partition_bits, "count": count, "partitions": len(manifest["partitions"]),
        "files": len(files), "seconds": round(seconds, 2), "docs_per_second": round(count / max(seconds, 1e-9), 1),
        "model_version": model_version, "address_model_version": address_version,
    }


def _address_model(uri: str, ranking_meta: dict) -> tuple[dict[str, bytes], dict]:
    """The address model's files and metadata, checked: a document model of at most 64 bits on the ranking
    model's vocabulary."""
    if not store.exists(store.join(uri, META)):
        raise ValueError(f"no address model at {uri!r} (model.json not found); run semhash train --bits 20 first")
    blobs = {WEIGHTS: store.read_bytes(store.join(uri, WEIGHTS)), META: store.read_bytes(store.join(uri, META))}
    meta = json.loads(blobs[META])
    bits = int(meta["bits"])
    if not 1 <= bits <= 64:
        raise ValueError(f"the address model {uri!r} makes {bits}-bit codes; an address has at most 64 bits")
    if meta.get("kind", "documents") != ranking_meta.get("kind", "documents"):
        raise ValueError(f"the address model {uri!r} is a {meta.get('kind')} model, the ranking model a "
                         f"{ranking_meta.get('kind')} model")
    a, r = meta.get("vocab", {}).get("fingerprint"), ranking_meta.get("vocab", {}).get("fingerprint")
    if a and r and a != r:
        raise ValueError(f"the address model {uri!r} was trained on another vocabulary than the ranking model "
                         f"(fingerprints {a[:12]} vs {r[:12]}); train both on the same prepared data")
    return blobs, meta
