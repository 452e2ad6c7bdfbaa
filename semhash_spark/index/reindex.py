"""Nightly re-indexing: tonight's corpus and the current index version -> a new version, re-encoding only what changed.

Documents are identified by ``id`` and ``content_hash`` (the prepared dataset's sha1 of the raw text; the encode
and re-index jobs keep it in the shards). Plan (nothing but counts, partition names and file metadata reaches
the driver):

1. Diff: tonight's ``(id, content_hash)`` full-outer-joined with the current shards' ``(id, content_hash,
   partition)`` -> each id is added, changed, deleted or unchanged (checkpointed).
2. Encode the added and changed documents (the model broadcast once, loaded once per Python worker, as the
   encode job does). The affected partitions are those of the encoded rows and the old partitions of changed or
   deleted rows.
3. Rewrite only the affected partitions: their unchanged old rows (read from those partitions' files only,
   never re-encoded) plus the encoded rows, written by ``published.write_shard`` into the new version.
4. Carry the other partitions over by copying their files to the same relative paths in the new version
   (a server-side copy on S3, a hard link locally: no bytes move through the job), so every version stays
   self-contained and readers and retention need no cross-version references.
5. Copy the model, build the manifest and publish (``CURRENT`` written last). Any failure before that leaves
   ``CURRENT`` on the old version; the partial version is removed, and one left behind by a killed run (no
   manifest) is removed by a later run's retention.

A full rebuild (every document re-encoded, every partition rewritten) happens on request, when there is no
current version, when the model (its weights version) or the index layout changed, or when the current shards
lack a column the new ones have (e.g. no content hashes yet). A run that finds nothing added, changed or deleted
publishes nothing (idempotent). Retention then deletes versions older than ``retention_days``, never
``CURRENT`` and never one with a live reader lease (:mod:`semhash_spark.index.leases`). Run one re-index per index at
a time (the schedules in ``infra/schedule`` make sure of it).

An index encoded with an address model (``semhash encode --address-model``) keeps one: new and changed documents
get their address from the address model copied into the current version (or from ``address_model_uri``, whose
new weights version forces a full rebuild), carried rows keep their stored addresses, shards stay partitioned by
the address code, and the address model is copied into the new version.

When tonight's dataset was prepared with a vocabulary other than the model's (a nightly ``semhash prepare``
picks it from tonight's corpus), new and changed documents are mapped onto the model's words (:func:`remap_words`).
Shards and documents are read with :func:`semhash_spark.io.sparkio.read_parquet` (on a cluster, ``s3://`` by the
executors through the store).
"""

from __future__ import annotations

import functools
import json
import logging
import re
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Iterator

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from semhash_spark import codes as C
from semhash_spark.data import dataset as ds
from semhash_spark.index import published as ix
from semhash_spark.index import leases
from semhash_spark.io import sparkio, store
from semhash_spark.models.checkpoint import META, WEIGHTS
from semhash_spark.index.encode import (
    ADDRESS_MODEL_DIR,
    ENCODED_SCHEMA,
    FILES_SCHEMA,
    _address_model,
    _hasher_from_bytes,
    encode_frames,
)

log = logging.getLogger(__name__)

ADDED, CHANGED, DELETED, UNCHANGED = "added", "changed", "deleted", "unchanged"
DEFAULT_RETENTION_DAYS = 7.0
DEFAULT_ORPHAN_HOURS = 6.0  # unpublished version folders (killed runs) older than this are removed
_COPY_THREADS = 8
_PART_RE = r"part=([0-9a-f]+)/[^/]*$"
_VERSION_TIME = re.compile(r"^(\d{8}T\d{12})Z")

Hook = Callable[[str], None]


# --------------------------------------------------------------------------------------------------- helpers


def _model_meta_blob(model_uri: str) -> bytes:
    meta_uri = store.join(model_uri, META)
    if not store.exists(meta_uri):
        raise ValueError(f"no model at {model_uri!r} ({META} not found); run semhash train first")
    return store.read_bytes(meta_uri)


def _model(model_uri: str) -> tuple[bytes, bytes, dict]:
    """The model's weights and ``model.json`` as bytes (shipped to the encode tasks), and the parsed metadata."""
    meta_blob = _model_meta_blob(model_uri)
    return store.read_bytes(store.join(model_uri, WEIGHTS)), meta_blob, json.loads(meta_blob)


def _shard_rows(spark: SparkSession, index_uri: str, version: str, files: list[str], columns: list[str]) -> DataFrame:
    """Rows of the given shard files of ``version`` with their partition (from the file's folder) as ``part``."""
    if not files:
        types = {"code": "binary", "word_ids": "binary", "word_counts": "binary", "labels": "array<string>"}
        schema = ", ".join(f"{c} {types.get(c, 'string')}" for c in [*columns, "part"])
        return spark.createDataFrame([], schema)
    df = sparkio.read_parquet(spark, ix.version_prefix(index_uri, version), files, columns, path_column=True)
    return df.select(*columns, F.regexp_extract(F.col(sparkio.PATH_COLUMN), _PART_RE, 1).alias("part"))


def _signed_long(col):
    """A shard's ``uint64`` address column (Spark reads it as ``decimal(20,0)``) as the int64 of the same bits."""
    half, full = (F.lit(str(v)).cast("decimal(21,0)") for v in (2**63, 2**64))
    return F.when(col >= half, col - full).otherwise(col).cast("long")


def _files_of(manifest: dict, partitions: set[str] | None = None) -> list[str]:
    return [
        f["path"]
        for p in manifest["partitions"]
        if partitions is None or p["partition"] in partitions
        for f in p["files"]
    ]


def _vocab_remap(data_uri: str, meta: dict) -> "np.ndarray | None":
    """None when the dataset's vocabulary is the model's; else ``int32[V_data]``: model word id or -1.

    A nightly ``semhash prepare`` picks its vocabulary from tonight's corpus, which may differ from the one the
    model was trained on; the new and changed documents are then mapped onto the model's words (words the
    model does not know are dropped, as out-of-vocabulary words are when preparing).
    """
    dmeta = store.read_json(store.join(data_uri, ds.DATASET_FILE))
    mvocab = meta.get("vocab") or {}
    if dmeta.get("vocab_fingerprint") and dmeta.get("vocab_fingerprint") == mvocab.get("fingerprint"):
        return None
    if not mvocab.get("words"):
        raise ValueError("the model has no vocabulary in its model.json; it cannot re-index documents")
    words = store.read_json(store.join(data_uri, ds.VOCAB_FILE))["words"]
    if words == mvocab["words"]:
        return None
    where = {w: i for i, w in enumerate(mvocab["words"])}
    remap = np.array([where.get(w, -1) for w in words], dtype=np.int32)
    log.warning(
        "the dataset's vocabulary differs from the model's: mapping it (%d of %d dataset words known to the model)",
        int((remap >= 0).sum()),
        len(words),
    )
    return remap


def remap_words(frames: Iterator[pd.DataFrame], remap: np.ndarray) -> Iterator[pd.DataFrame]:
    """Rewrites ``word_ids``/``word_counts`` from the dataset's word ids to the model's (unknown words dropped)."""
    for pdf in frames:
        ids_out, counts_out = [], []
        for wi, wc in zip(pdf[ds.WORD_IDS], pdf[ds.WORD_COUNTS]):
            i, c = ds.decode_sparse(wi, wc)
            j = remap[i]
            keep = j >= 0
            order = np.argsort(j[keep], kind="stable")
            b_ids, b_counts = ds.encode_sparse(j[keep][order], c[keep][order])
            ids_out.append(b_ids)
            counts_out.append(b_counts)
        yield pdf.assign(**{ds.WORD_IDS: ids_out, ds.WORD_COUNTS: counts_out})


def _full_reason(
    old: dict | None,
    full: bool,
    model_version: str,
    layout: tuple[int, int, int],
    columns: list[str],
    address_version: str | None = None,
) -> str | None:
    if old is None:
        return "no published version"
    if full:
        return "requested"
    old_model = (old.get("model") or {}).get("version")
    if old_model != model_version:
        return f"model changed ({old_model} -> {model_version})"
    old_address = (old.get("address_model") or {}).get("version")
    if old_address != address_version:
        return f"address model changed ({old_address} -> {address_version})"
    if (int(old["bits"]), int(old["address_bits"]), int(old["partition_bits"])) != layout:
        return "index layout changed (bits, address_bits or partition_bits)"
    if list(old.get("columns", [])) != columns:
        return f"stored columns changed ({old.get('columns')} -> {columns})"
    return None


# --------------------------------------------------------------------------------------------------- the job


def reindex(
    spark: SparkSession,
    data_uri: str,
    model_uri: str,
    index_uri: str,
    cfg,
    *,
    full: bool = False,
    retention_days: float = DEFAULT_RETENTION_DAYS,
    now: datetime | None = None,
    orphan_hours: float = DEFAULT_ORPHAN_HOURS,
    splits: tuple[str, ...] = ds.SPLITS,
    hook: Hook | None = None,
    address_model_uri: str | None = None,
) -> dict[str, Any]:
    """Brings ``index_uri`` up to date with the prepared dataset ``data_uri``; returns the run report.

    ``address_model_uri``: the address model (default: the one in the current version, if it has one).

    ``hook(stage)`` is called after "diffed", "encoded" and "shards_written" (tests use it to simulate a crash).
    ``now`` is the clock for retention and leases (default: the real UTC time).
    """
    t0 = time.time()
    if retention_days < 0 or orphan_hours < 0:
        raise ValueError(f"retention_days ({retention_days}) and orphan_hours ({orphan_hours}) must be >= 0")
    hook = hook or (lambda stage: None)
    tensors_blob, meta_blob, meta = _model(model_uri)
    model_version = meta["model_version"]
    bits = int(meta["bits"])
    code_bytes = C.code_bytes(bits)
    keep_words = cfg.index.store_counts and meta.get("kind", "documents") == "documents"
    columns = list(ix.BASE_COLUMNS) + (list(ix.WORD_COLUMNS) if keep_words else []) + [ix.HASH_COLUMN]

    vocab_size = int(meta["sizes"][0])
    remap = _vocab_remap(data_uri, meta)
    try:
        tonight = sparkio.read_parquet(spark, data_uri, [f"{ds.DOCS_DIR}/split={s}" for s in splits])
    except FileNotFoundError:
        raise ValueError(f"{data_uri!r} has no documents (no docs/split=* files); run semhash prepare") from None
    if ds.CONTENT_HASH not in tonight.columns:
        raise ValueError(f"{data_uri!r} has no {ds.CONTENT_HASH} column; re-run semhash prepare")
    keep_text = ds.SNIPPET in tonight.columns  # labels + snippet, as encode keeps them
    text_cols = list(ix.TEXT_COLUMNS) if keep_text else []
    columns += text_cols
    tonight = tonight.select(ds.ID, ds.WORD_IDS, ds.WORD_COUNTS, ds.CONTENT_HASH, *text_cols)

    try:
        base = ix.read_current(index_uri)["version"]
        old = ix.read_manifest(index_uri, base)
    except ix.IndexNotFound:
        base, old = None, None
    if address_model_uri is None and old is not None and old.get("address_model"):
        address_model_uri = store.join(ix.version_prefix(index_uri, base), old["address_model"]["path"])
        address_source = old["address_model"].get("uri") or address_model_uri
    else:
        address_source = address_model_uri
    address_blobs, address_meta = _address_model(address_model_uri, meta) if address_model_uri else (None, None)
    address_version = address_meta["model_version"] if address_meta else None
    address_bits = int(address_meta["bits"]) if address_meta else min(cfg.index.address_bits, bits)
    partition_bits = min(cfg.index.partition_bits, address_bits)
    reason = _full_reason(old, full, model_version, (bits, address_bits, partition_bits), columns, address_version)

    # 1. diff by id and content hash
    new_side = tonight.select(ds.ID, F.col(ds.CONTENT_HASH).alias("new_hash"), F.lit(True).alias("in_new"))
    if old is not None:
        hash_col = ix.HASH_COLUMN if ix.HASH_COLUMN in old.get("columns", []) else None
        old_rows = _shard_rows(spark, index_uri, base, _files_of(old), ["id"] + ([hash_col] if hash_col else []))
        old_hash = F.col(hash_col) if hash_col else F.lit(None).cast("string")
        old_side = old_rows.select("id", old_hash.alias("old_hash"), F.lit(True).alias("in_old"), "part")
    else:
        old_side = spark.createDataFrame([], "id string, old_hash string, in_old boolean, part string")
    status = (
        F.when(F.col("in_old").isNull(), ADDED)
        .when(F.col("in_new").isNull(), DELETED)
        .when(F.col("new_hash").isNotNull() & (F.col("new_hash") == F.col("old_hash")), UNCHANGED)
        .otherwise(CHANGED)
    )
    diff = new_side.join(old_side, "id", "full_outer").select("id", "part", status.alias("status")).localCheckpoint()
    counts = {k: 0 for k in (ADDED, CHANGED, DELETED, UNCHANGED)}
    counts.update({r["status"]: int(r["count"]) for r in diff.groupBy("status").count().collect()})
    hook("diffed")
    report: dict[str, Any] = {
        "index": index_uri,
        "previous_version": base,
        **counts,
        "full": reason is not None,
        "reason": reason,
        "vocab_remapped": remap is not None,
    }
    if reason is None and counts[ADDED] + counts[CHANGED] + counts[DELETED] == 0:
        report.update(
            {
                "published": False,
                "version": base,
                "partitions_rewritten": 0,
                "partitions_carried": 0,
                "count": int(old["count"]),
                "model_version": model_version,
            }
        )
        report["retention"] = _retention(index_uri, retention_days, now, orphan_hours)
        report["seconds"] = round(time.time() - t0, 2)
        log.info("re-index of %s: nothing changed since version %s; nothing published", index_uri, base)
        return report

    # 2. encode what is new or changed
    blobs = spark.sparkContext.broadcast({WEIGHTS: tensors_blob, META: meta_blob})
    address_bc = spark.sparkContext.broadcast(address_blobs) if address_blobs else None

    def encode(frames: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        hasher = _hasher_from_bytes(model_version, blobs.value)
        address_hasher = _hasher_from_bytes(address_version, address_bc.value) if address_bc is not None else None
        if remap is not None:
            frames = remap_words(frames, remap)
        yield from encode_frames(frames, hasher, vocab_size, address_bits, partition_bits, keep_words, address_hasher)

    # an address model's addresses cannot be recomputed from the code: carried rows keep their stored ones
    row_cols = (
        ["id", "code", "part"]
        + (["address"] if address_meta else [])
        + (list(ix.WORD_COLUMNS) if keep_words else [])
        + [ix.HASH_COLUMN]
        + text_cols
    )
    write_cols = list(columns)  # what write_shard gets, in shard order
    s3_env = store.driver_s3_env()

    def flush(pieces: list[pd.DataFrame], version_uri: str) -> Iterator[pd.DataFrame]:
        pdf = pd.concat(pieces, ignore_index=True)
        codes = ix.codes_from_column(pdf["code"].tolist(), code_bytes)
        if address_meta is None:
            pdf = pdf.assign(address=C.prefix(codes, address_bits))  # carried rows: recomputed, not read
        metas = ix.write_shard(
            version_uri,
            partition_bits,
            code_bytes,
            pdf[write_cols],
            address_bits=address_bits if address_meta else None,
        )
        if metas:
            yield pd.DataFrame(
                [{k: m[k] for k in ("partition", "path", "rows", "bytes", "sha256", "columns")} for m in metas]
            )

    def write(frames: Iterator[pd.DataFrame], version_uri: str) -> Iterator[pd.DataFrame]:
        """Rows sorted by partition -> one shard file per partition (one partition's rows in memory at a time)."""
        store.apply_s3_env(s3_env)  # tasks write the shards straight to the store
        pending: list[pd.DataFrame] = []
        for pdf in frames:
            if len(pdf) == 0:
                continue
            part = pdf["part"].to_numpy()
            cuts = np.concatenate([[0], np.flatnonzero(part[1:] != part[:-1]) + 1, [len(pdf)]])
            for s, e in zip(cuts[:-1], cuts[1:]):
                if pending and pending[-1]["part"].iat[0] != part[s]:
                    yield from flush(pending, version_uri)
                    pending = []
                pending.append(pdf.iloc[s:e])
        if pending:
            yield from flush(pending, version_uri)

    done: dict[str, Any] = {}

    def write_version(version: str, version_uri: str) -> dict:
        if reason is not None:
            to_encode = tonight
        else:
            todo = diff.where(F.col("status").isin(ADDED, CHANGED)).select("id")
            to_encode = tonight.join(todo, ds.ID, "left_semi")
        encoded = to_encode.mapInPandas(encode, ENCODED_SCHEMA).select(*row_cols)
        if reason is not None:
            affected = None  # every partition
            rows = encoded
        else:
            encoded = encoded.localCheckpoint()  # encode once: used twice below
            gone = diff.where(F.col("status").isin(CHANGED, DELETED))
            affected = {r["part"] for r in encoded.select("part").distinct().collect()}
            affected |= {r["part"] for r in gone.select("part").distinct().collect()}
            stored = [c for c in row_cols if c != "part"]
            carried = _shard_rows(spark, index_uri, base, _files_of(old, affected), stored)
            carried = carried.join(gone.select("id"), "id", "left_anti")
            if address_meta:
                carried = carried.withColumn("address", _signed_long(F.col("address")))
            rows = encoded.unionByName(carried.select(*row_cols))
        hook("encoded")
        n_tasks = cfg.encode.shuffle_partitions or max(2, spark.sparkContext.defaultParallelism)
        n_tasks = max(1, min(n_tasks, 1 << partition_bits, len(affected) if affected is not None else 1 << 30))
        files = [
            r.asDict()
            for r in rows.repartition(n_tasks, "part")
            .sortWithinPartitions("part")
            .mapInPandas(functools.partial(write, version_uri=version_uri), FILES_SCHEMA)
            .collect()
        ]

        # 4. carry the untouched partitions over: copies at the same relative paths
        copies = (
            []
            if affected is None
            else [
                {"partition": p["partition"], **f, "columns": list(old["columns"])}
                for p in old["partitions"]
                if p["partition"] not in affected
                for f in p["files"]
            ]
        )
        old_uri = ix.version_prefix(index_uri, base) if base else None

        def carry(f: dict) -> None:
            store.copy_object(store.join(old_uri, f["path"]), store.join(version_uri, f["path"]))

        with ThreadPoolExecutor(max_workers=_COPY_THREADS) as pool:
            list(pool.map(carry, copies))
        hook("shards_written")
        done.update(files=files, copies=copies, affected=affected)
        return dict(
            bits=bits,
            address_bits=address_bits,
            partition_bits=partition_bits,
            files=files + copies,
            model={"uri": model_uri, "version": model_version, "path": "model", "kind": meta.get("kind")},
            data={"uri": data_uri, "vocab_fingerprint": meta.get("vocab", {}).get("fingerprint")},
            has_words=keep_words,
            **(
                {
                    "address_model": {
                        "uri": address_source,
                        "version": address_version,
                        "path": ADDRESS_MODEL_DIR,
                        "kind": address_meta.get("kind"),
                        "bits": address_bits,
                    }
                }
                if address_meta
                else {}
            ),
            reindex={"base_version": base, "full": reason is not None, "reason": reason, **counts},
        )

    # 5. publish: CURRENT must still be at ``base`` (a concurrent run that published first makes this one fail)
    try:
        models = {"model": {WEIGHTS: tensors_blob, META: meta_blob}}
        if address_blobs:
            models[ADDRESS_MODEL_DIR] = address_blobs
        manifest = ix.publish_version(index_uri, write_version, base=base, models=models)
    except BaseException:
        log.error("re-index failed; CURRENT stays where it was (this run started from %s)", base)
        raise
    finally:
        blobs.unpersist()
        if address_bc is not None:
            address_bc.unpersist()
    version = manifest["version"]
    files, copies, affected = done["files"], done["copies"], done["affected"]

    rewritten = {f["partition"] for f in files} | (affected or set())
    report.update(
        {
            "published": True,
            "version": version,
            "count": int(manifest["count"]),
            "partitions": len(manifest["partitions"]),
            "partitions_rewritten": len(rewritten),
            "partitions_carried": len({c["partition"] for c in copies}),
            "files_copied": len(copies),
            "model_version": model_version,
            "address_model_version": address_version,
        }
    )
    report["retention"] = _retention(index_uri, retention_days, now, orphan_hours)
    report["seconds"] = round(time.time() - t0, 2)
    log.info(
        "re-indexed %s: version %s (%s)",
        index_uri,
        version,
        ", ".join(f"{k} {counts[k]}" for k in (ADDED, CHANGED, DELETED, UNCHANGED)),
    )
    return report


# --------------------------------------------------------------------------------------------------- retention


def _retention(index_uri: str, retention_days: float, now: datetime | None, orphan_hours: float) -> dict[str, Any]:
    """Retention after a run: its failure is reported, never undoes or hides the run's own outcome."""
    try:
        return apply_retention(index_uri, retention_days, now=now, orphan_hours=orphan_hours)
    except store.StoreError as e:
        log.warning("retention on %s failed: %s", index_uri, e)
        return {"deleted": [], "leased": [], "errors": [str(e)]}


def version_time(index_uri: str, version: str) -> datetime | None:
    """When a version was made: from its id (``YYYYMMDDTHHMMSSffffffZ-...``), else its manifest's created_at."""
    m = _VERSION_TIME.match(version)
    if m:
        return datetime.strptime(m.group(1), "%Y%m%dT%H%M%S%f").replace(tzinfo=timezone.utc)
    try:
        created = datetime.fromisoformat(store.read_json(ix.manifest_uri(index_uri, version))["created_at"])
        return created if created.tzinfo else created.replace(tzinfo=timezone.utc)
    except (store.StoreError, KeyError, TypeError, ValueError):
        return None


def apply_retention(
    index_uri: str, retention_days: float, *, now: datetime | None = None, orphan_hours: float = DEFAULT_ORPHAN_HOURS
) -> dict[str, Any]:
    """Deletes versions older than ``retention_days`` (and unpublished leftovers older than ``orphan_hours``).

    Never ``CURRENT``, never a version with a live reader lease, never a version it cannot date. Deletion removes
    the manifest first, re-checks the leases (restoring the manifest if a reader appeared), then the files.
    Returns ``{"deleted": [...], "leased": [...], "errors": [...]}``.
    """
    if retention_days < 0:
        raise ValueError(f"retention_days must be >= 0, got {retention_days}")
    now = now or datetime.now(timezone.utc)
    try:
        current = ix.read_current(index_uri)["version"]
    except ix.IndexNotFound:
        current = None
    out: dict[str, list] = {"deleted": [], "leased": [], "errors": []}
    for version in store.list_dir(store.join(index_uri, "versions")):
        if version == current or not ix._VERSION_RE.match(version):
            continue
        born = version_time(index_uri, version)
        if born is None:
            continue
        has_manifest = store.exists(ix.manifest_uri(index_uri, version))
        limit = timedelta(days=retention_days) if has_manifest else timedelta(hours=orphan_hours)
        if now - born <= limit:
            continue
        try:
            if leases.live(index_uri, version, now):
                out["leased"].append(version)
                continue
            manifest = store.read_bytes(ix.manifest_uri(index_uri, version)) if has_manifest else None
            if manifest is not None:
                store.delete(ix.manifest_uri(index_uri, version))  # no new reader can open it now
                if leases.live(index_uri, version, now):  # one leased meanwhile: put it back
                    store.write_bytes(ix.manifest_uri(index_uri, version), manifest)
                    out["leased"].append(version)
                    continue
            store.delete_prefix(ix.version_prefix(index_uri, version))
            out["deleted"].append(version)
            log.info("retention: deleted version %s of %s", version, index_uri)
        except store.StoreError as e:
            log.warning("retention: could not delete version %s: %s", version, e)
            out["errors"].append(f"{version}: {e}")
    return out


def reindex_corpus(
    spark: SparkSession, dataset: str, source: str, model_uri: str, index_uri: str, cfg, **kwargs
) -> dict[str, Any]:
    """:func:`reindex` from a raw corpus (``dataset`` one of prepare's: ``jsonl``, ``20ng``, ``reuters21578``).

    Tonight's corpus is prepared first with the model's own vocabulary and tokeniser settings, so documents are
    vectorised exactly as the model expects; bad records are quarantined as ``semhash prepare`` does, and the
    quarantine table of the run is kept under ``INDEX_URI/quarantine/<UTC time>/`` (the report says where).
    """
    import dataclasses
    import tempfile

    from semhash_spark.config import config_from_dict
    from semhash_spark.data.prepare import prepare_dataset

    meta = json.loads(_model_meta_blob(model_uri))  # vocabulary and tokeniser only: reindex reads the weights
    words = list((meta.get("vocab") or {}).get("words") or [])
    if not words:
        raise ValueError(f"the model {model_uri!r} records no vocabulary; re-index from a prepared DATA_URI instead")
    prep_cfg = dataclasses.replace(config_from_dict(meta["config"]).prepare, vocab_size=len(words))
    with tempfile.TemporaryDirectory(prefix="semhash-reindex-") as tmp:
        prepared = prepare_dataset(spark, dataset, source, tmp, prep_cfg, name=f"{dataset}-reindex", vocab=words)
        report = reindex(spark, tmp, model_uri, index_uri, cfg, **kwargs)
        report["prepared"] = {k: prepared[k] for k in ("records_read", "kept", "quarantined", "skipped")}
        if prepared["quarantined"]:
            stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
            uri = store.join(index_uri, "quarantine", stamp)
            store.upload_dir(f"{tmp}/{ds.QUARANTINE_DIR}", uri)
            report["quarantine"] = uri
    report["source"] = source
    return report
