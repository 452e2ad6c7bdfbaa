"""The Spark encode job: a whole prepared corpus -> address-partitioned code shards under a new index version.

Plan (nothing but file metadata reaches the driver):

1. ``mapInPandas(encode)``: each Python worker loads the model once (from a broadcast of the checkpoint's bytes,
   cached per worker and model version) and turns Arrow batches of sparse word counts into packed codes,
   addresses and partition keys.
2. ``repartition(partition key)``: every address partition lands in one task.
3. ``mapInPandas(write)``: each task writes one Parquet shard per partition it holds straight to the store
   (``published.write_shard``) and returns the files' metadata.
4. The driver builds the manifest, copies the model next to the shards, verifies every file and only then
   writes ``CURRENT`` (``published.publish``). A job that fails before that publishes nothing and removes what it
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

from semhash_spark import codes as C
from semhash_spark.data import dataset as ds
from semhash_spark.index import published as ix
from semhash_spark.io import sparkio, store
from semhash_spark.models.checkpoint import WEIGHTS, META, Hasher

log = logging.getLogger(__name__)
ADDRESS_MODEL_DIR = "address_model"

ENCODED_SCHEMA = (
    "id string, code binary, address long, part string, word_ids binary, word_counts binary, "
    "content_hash string, labels array<string>, snippet string"
)
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

        from semhash_spark.models.checkpoint import hasher_from_parts

        torch.set_num_threads(int(os.environ.get("SEMHASH_ENCODE_THREADS", "1")))
        hasher = hasher_from_parts(st_load(blobs[WEIGHTS]), json.loads(blobs[META]))
        if device != "cpu":
            hasher.model.to(device)
            log.info("encoding on %s", device)
        while len(_WORKER_MODELS) >= 2:  # a job's two models: ranking + address, or image + patch
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


def code_frame(
    ids, x: np.ndarray, hasher: Hasher, address_bits: int, partition_bits: int, address_hasher: Hasher | None = None
) -> pd.DataFrame:
    """One batch of model inputs -> id, packed code, address (as signed int64), partition key (hex).

    The address is ``address_hasher``'s code (``address_bits`` = its bits) or, without one, the first
    ``address_bits`` bits of the ranking code; the partition key is the address's first ``partition_bits`` bits.

    The documents' ``content_hash`` passes through when the batch has it (re-indexing compares it), else null;
    so do ``labels`` and ``snippet`` (what ``semhash query`` shows beside a hit).
    """
    packed = hasher.codes(x)
    address = C.prefix(address_hasher.codes(x) if address_hasher is not None else packed, address_bits)
    part = address >> np.uint64(address_bits - partition_bits)
    return pd.DataFrame(
        {
            "id": ids.astype(str).to_numpy(),
            "code": [row.tobytes() for row in packed],
            "address": address.view(np.int64),
            "part": [C.partition_name(int(p), partition_bits) for p in part],
        }
    )


def encode_frames(
    frames: Iterator[pd.DataFrame],
    hasher: Hasher,
    vocab_size: int,
    address_bits: int,
    partition_bits: int,
    keep_words: bool,
    address_hasher: Hasher | None = None,
) -> Iterator[pd.DataFrame]:
    """Arrow batches of documents -> :func:`code_frame`'s columns, the words when ``keep_words``, and the
    documents' ``content_hash`` when the batch has it (re-indexing compares it), else null."""
    for pdf in frames:
        if len(pdf) == 0:
            continue
        counts = ds.csr_from_binary(pdf[ds.WORD_IDS].tolist(), pdf[ds.WORD_COUNTS].tolist(), vocab_size)
        out = code_frame(pdf[ds.ID], counts.toarray(), hasher, address_bits, partition_bits, address_hasher)
        for col in (ds.WORD_IDS, ds.WORD_COUNTS):
            out[col] = pdf[col].to_numpy() if keep_words else None
        out["content_hash"] = pdf[ds.CONTENT_HASH].to_numpy() if ds.CONTENT_HASH in pdf.columns else None
        for c in ix.TEXT_COLUMNS:
            out[c] = pdf[c].to_numpy() if c in pdf.columns else None
        yield out


class Modality:
    """What a modality supplies to the one encode job: checks, a reader, an encoder (batches -> codes) and the
    manifest's fields of its own. :class:`DocumentEncode` here, ``image_encode.ImageEncode`` for images."""

    kind = "documents"
    schema = ENCODED_SCHEMA
    shard_columns: list[str] = ["id", "code", "address"]
    hashers: dict[str, tuple[str, dict[str, bytes]]] = {}  # extra models the encoder needs: name -> (version, blobs)
    models: dict[str, dict[str, bytes]] = {}  # extra model folders copied into the version

    def read(self, spark):
        """The Spark rows to encode."""
        raise NotImplementedError

    def encode(self, frames, hashers: dict[str, Hasher], address_bits: int, partition_bits: int):
        """Arrow batches -> the :attr:`schema` rows (``hashers``: ``model``, ``address`` when given, extras)."""
        raise NotImplementedError

    def side_files(self, encoded, version_uri: str, write_rows) -> dict:
        """Extra manifest fields written from the encoded rows (the images' patch table); none by default."""
        return {}

    def manifest(self) -> dict:
        return {}

    def report(self) -> dict:
        return {}


class DocumentEncode(Modality):
    rate = "docs_per_second"

    def __init__(self, spark, model_uri: str, meta: dict, data_uri: str, cfg, splits: tuple[str, ...] = ds.SPLITS):
        if store.is_s3(data_uri) and sparkio.on_cluster(spark):  # executors read it through the store
            dmeta = store.read_json(store.join(data_uri, ds.DATASET_FILE))
        else:
            dmeta = ds.read_metadata(sparkio.readable_root(spark, data_uri))
        fp, mfp = dmeta.get("vocab_fingerprint"), meta.get("vocab", {}).get("fingerprint")
        if fp and mfp and fp != mfp:
            raise ValueError(
                f"the model {model_uri!r} was trained on another vocabulary than {data_uri!r} "
                f"(fingerprints {mfp[:12]} vs {fp[:12]}); re-prepare or retrain"
            )
        self.data_uri, self.splits, self.fingerprint = data_uri, splits, mfp
        self.vocab_size = int(dmeta["vocab_size"])
        self.keep_words = cfg.index.store_counts and meta.get("kind", "documents") == "documents"
        self.keep_hash = False

    def read(self, spark):
        try:
            docs = sparkio.read_parquet(spark, self.data_uri, [f"{ds.DOCS_DIR}/split={s}" for s in self.splits])
        except FileNotFoundError:
            raise ValueError(
                f"{self.data_uri!r} has no documents (no docs/split=* files); run semhash prepare"
            ) from None
        self.keep_hash = ds.CONTENT_HASH in docs.columns  # shards keep it so `semhash reindex` can diff
        keep_text = ds.SNIPPET in docs.columns  # labels + snippet for people (datasets since snippets)
        text = list(ix.TEXT_COLUMNS) if keep_text else []
        self.shard_columns = (
            ["id", "code", "address"]
            + ([ds.WORD_IDS, ds.WORD_COUNTS] if self.keep_words else [])
            + ([ds.CONTENT_HASH] if self.keep_hash else [])
            + text
        )
        return docs.select(ds.ID, ds.WORD_IDS, ds.WORD_COUNTS, *([ds.CONTENT_HASH] if self.keep_hash else []), *text)

    def encode(self, frames, hashers, address_bits, partition_bits):
        return encode_frames(
            frames,
            hashers["model"],
            self.vocab_size,
            address_bits,
            partition_bits,
            self.keep_words,
            hashers.get("address"),
        )

    def manifest(self) -> dict:
        return {"data": {"uri": self.data_uri, "vocab_fingerprint": self.fingerprint}, "has_words": self.keep_words}


def _model_blobs(uri: str, what: str = "model", hint: str = "run semhash train first") -> tuple[dict, dict]:
    """A model's files ({name: bytes}, read once: broadcast to the workers and copied into the version) and its
    metadata."""
    if not store.exists(store.join(uri, META)):
        raise ValueError(f"no {what} at {uri!r} (model.json not found); {hint}")
    blobs = {WEIGHTS: store.read_bytes(store.join(uri, WEIGHTS)), META: store.read_bytes(store.join(uri, META))}
    return blobs, json.loads(blobs[META])


def encode_to_index(
    spark,
    model_uri: str,
    data_uri: str,
    index_uri: str,
    cfg,
    *,
    version: str | None = None,
    splits: tuple[str, ...] = ds.SPLITS,
    address_model_uri: str | None = None,
    patch_model_uri: str | None = None,
) -> dict[str, Any]:
    """Encodes every item of ``data_uri`` (documents, or images when its ``dataset.json`` says so) with the model
    and publishes a new index version.

    ``address_model_uri``: a short model (e.g. 20 bits) on the same inputs whose codes are the items' addresses
    (partitions are their prefixes); copied into the version as ``address_model/``. Without it the address is
    the first ``index.address_bits`` bits of the ranking code. ``patch_model_uri`` (images): the glimpse model
    of multiple semantic hashing. Returns a report: version, counts, partitions, files, seconds, items per second.
    """
    t0 = time.time()
    blobs_raw, meta = _model_blobs(model_uri)
    from semhash_spark.data.images import dataset_kind

    if dataset_kind(data_uri) == "images":
        from semhash_spark.index.image_encode import ImageEncode

        modality: Modality = ImageEncode(model_uri, meta, data_uri, cfg, patch_model_uri)
    else:
        if patch_model_uri:
            raise ValueError(f"--patch-model is for image datasets; {data_uri!r} holds documents")
        modality = DocumentEncode(spark, model_uri, meta, data_uri, cfg, splits)
    bits = int(meta["bits"])
    address_bits = min(cfg.index.address_bits, bits)
    hashers = {"model": (meta["model_version"], blobs_raw), **modality.hashers}
    models = {"model": blobs_raw, **modality.models}
    extra_models = bool(modality.models)
    modality.hashers = modality.models = {}  # the blobs travel in the broadcast, not in every task's closure
    address_meta = None
    if address_model_uri:
        address_raw, address_meta = _address_model(address_model_uri, meta)
        address_bits = int(address_meta["bits"])
        hashers["address"] = (address_meta["model_version"], address_raw)
        models[ADDRESS_MODEL_DIR] = address_raw
    partition_bits = min(cfg.index.partition_bits, address_bits)
    code_bytes = C.code_bytes(bits)
    base = ix.current_version(index_uri)  # CURRENT must still be here when we publish
    bc = spark.sparkContext.broadcast(hashers)
    s3_env = store.driver_s3_env()

    def encode(frames):
        loaded = {name: _hasher_from_bytes(v, b) for name, (v, b) in bc.value.items()}
        yield from modality.encode(frames, loaded, address_bits, partition_bits)

    def write_rows(frames, version_uri: str, writer):
        store.apply_s3_env(s3_env)
        for pdf in frames:
            metas = writer(version_uri, pdf)
            if metas:
                yield pd.DataFrame(
                    [{k: m[k] for k in ("partition", "path", "rows", "bytes", "sha256", "columns")} for m in metas]
                )

    def write_shards(version_uri: str, pdf):
        return ix.write_shard(
            version_uri, partition_bits, code_bytes, pdf[modality.shard_columns], address_bits=address_bits
        )

    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(cfg.encode.batch_size))
    rows = modality.read(spark)
    n_tasks = min(cfg.encode.shuffle_partitions or max(2, spark.sparkContext.defaultParallelism), 1 << partition_bits)
    cached = []

    def write_version(version: str, version_uri: str) -> dict:
        encoded = rows.mapInPandas(encode, modality.schema)
        if extra_models:
            # Extra models (the images' 81 glimpses) are the expensive part: encode once, feed every writer.
            encoded = encoded.cache()
            cached.append(encoded)
        # One shard task per group of address partitions; a partition lives in exactly one task, sorted inside.
        files_df = (
            encoded.select(*modality.shard_columns, "part")
            .repartition(n_tasks, "part")
            .sortWithinPartitions("part", "address", "id")
            .mapInPandas(functools.partial(write_rows, version_uri=version_uri, writer=write_shards), FILES_SCHEMA)
        )
        files = [r.asDict() for r in files_df.collect()]  # file metadata only: O(partitions), never codes
        log.info(
            "wrote %d shard files: %d partitions, %d codes under %s",
            len(files),
            len({f["partition"] for f in files}),
            sum(int(f["rows"]) for f in files),
            version_uri,
        )
        extra = modality.side_files(encoded, version_uri, functools.partial(write_rows, version_uri=version_uri))
        if address_meta:
            extra["address_model"] = {
                "uri": address_model_uri,
                "version": address_meta["model_version"],
                "path": ADDRESS_MODEL_DIR,
                "kind": address_meta.get("kind"),
                "bits": address_bits,
            }
        return dict(
            bits=bits,
            address_bits=address_bits,
            partition_bits=partition_bits,
            files=files,
            model={"uri": model_uri, "version": meta["model_version"], "path": "model", "kind": meta.get("kind")},
            **modality.manifest(),
            **extra,
        )

    try:
        # The index carries the model(s) that made its codes, so a reader can encode queries with them.
        manifest = ix.publish_version(index_uri, write_version, base=base, version=version, models=models)
    finally:
        for df in cached:
            df.unpersist()
        bc.unpersist()
    seconds = time.time() - t0
    count = int(manifest["count"])
    return {
        "version": manifest["version"],
        "index": index_uri,
        "kind": modality.kind,
        "bits": bits,
        "address_bits": address_bits,
        "partition_bits": partition_bits,
        "count": count,
        "partitions": len(manifest["partitions"]),
        "files": sum(len(p["files"]) for p in manifest["partitions"]),
        "seconds": round(seconds, 2),
        modality.rate: round(count / max(seconds, 1e-9), 1),
        "model_version": meta["model_version"],
        "address_model_version": address_meta["model_version"] if address_meta else None,
        **modality.report(),
    }


def _address_model(uri: str, ranking_meta: dict) -> tuple[dict[str, bytes], dict]:
    """The address model's files and metadata, checked: a model of the ranking model's kind and inputs (and
    vocabulary) making at most 64 bits."""
    blobs, meta = _model_blobs(uri, "address model", "run semhash train --bits 20 first")
    bits = int(meta["bits"])
    if not 1 <= bits <= 64:
        raise ValueError(f"the address model {uri!r} makes {bits}-bit codes; an address has at most 64 bits")
    if meta.get("kind", "documents") != ranking_meta.get("kind", "documents"):
        raise ValueError(
            f"the address model {uri!r} is a {meta.get('kind')} model, the ranking model a "
            f"{ranking_meta.get('kind')} model"
        )
    a, r = meta.get("vocab", {}).get("fingerprint"), ranking_meta.get("vocab", {}).get("fingerprint")
    if a and r and a != r:
        raise ValueError(
            f"the address model {uri!r} was trained on another vocabulary than the ranking model "
            f"(fingerprints {a[:12]} vs {r[:12]}); train both on the same prepared data"
        )
    if meta.get("sizes") and ranking_meta.get("sizes") and meta["sizes"][0] != ranking_meta["sizes"][0]:
        raise ValueError(
            f"the address model {uri!r} takes {meta['sizes'][0]} inputs, the ranking model {ranking_meta['sizes'][0]}"
        )
    return blobs, meta
