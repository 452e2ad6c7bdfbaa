"""Image datasets ``semhash-images/1``: the Spark prepare job, the writer, decoding and reading helpers.

::

    DATA_URI/dataset.json   {"format": "semhash-images/1", "kind": "images", "name", "height", "width", "channels",
                             "labels": [sorted label names], "counts": {"train", "test", "quarantined"}, ...}
    DATA_URI/images/split=train|test/   Petastorm datasets (Unischema "SemhashImages", semhash_spark.data.loader):
                                         id, label, split (str), image uint8 (H, W, C) as PNG
    DATA_URI/quarantine/*.parquet        id, source, reason

Prepare: the driver streams the raw records (file bytes or raw pixels, :mod:`semhash_spark.data.image_sources`) into
staging Parquet; Spark tasks decode and resize them (:func:`decode_image`); :func:`write_image_dataset` writes the
kept images and the quarantine. Modes: every mode Pillow converts faithfully to 8-bit RGB/L (``RGB``, ``L``,
``P``, ``PA``, ``LA``, ``RGBA``, ``CMYK``, ``YCbCr``, ``1``, ...) is converted (alpha is dropped: composited on
black); 16/32-bit integer and float modes (``I``, ``I;16*``, ``F``) have no single 8-bit mapping and are
quarantined. Grey images become RGB by replication when ``images.channels`` is 3; with ``channels: 1``
colour images become grey (ITU-R 601 luma). Every image is resized to ``height x width`` (bicubic, aspect not
kept). Zero-size and undecodable files, unreadable records and duplicate ids are quarantined with the reason.

``source`` and ``out_dir`` may be ``s3://`` URIs. An ``s3://`` source is read by Spark tasks
(:func:`image_sources.input_units` / :func:`image_sources.read_unit`), never staged by the driver; with an
``s3://`` out_dir the executors write the Petastorm Parquet and the quarantine through the store
(:func:`semhash_spark.data.loader.write_image_split`, :func:`sparkio.write_parquet`), staging goes to a local temporary
folder in local mode or ``out_dir/_staging/`` on a cluster, and the driver writes dataset.json last.
"""

from __future__ import annotations

import functools
import io
import json
import logging
import os
import time
from dataclasses import asdict
from typing import Any, Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from semhash_spark.data import loader as data_mod
from semhash_spark.data import dataset
from semhash_spark.data import image_sources
from semhash_spark.io import sparkio, store
from semhash_spark.config import ImagesConfig

log = logging.getLogger(__name__)

FORMAT = "semhash-images/1"
KIND = "images"
IMAGES_DIR = "images"
QUARANTINE_DIR = "quarantine"
DATASET_FILE = "dataset.json"
SPLITS = ("train", "test")

EMPTY_FILE = "empty file"
DUPLICATE_ID = "duplicate id"
BAD_SPLIT = "unknown split"
WRONG_SIZE = "wrong pixel count"
NO_LABEL = "no label"
_UNFAITHFUL_MODES = ("I", "F")  # and every I;16* mode

_STAGE_ARROW = pa.schema(
    [
        ("seq", pa.int64()),
        ("id", pa.string()),
        ("label", pa.string()),
        ("split", pa.string()),
        ("source", pa.string()),
        ("data", pa.binary()),
        ("shape", pa.string()),
        ("error", pa.string()),
    ]
)
_DECODED_SCHEMA = "seq long, id string, label string, split string, source string, pixels binary, reason string"


# ---------------------------------------------------------------------------------------------------- metadata
def _dataset_json(data_dir: str | os.PathLike) -> dict | None:
    """dataset.json at a local path or ``s3://`` URI, None when there is none."""
    uri = store.join(str(data_dir), DATASET_FILE)
    if not store.exists(uri):
        return None
    return store.read_json(uri)


def is_image_dataset(data_dir: str | os.PathLike) -> bool:
    meta = _dataset_json(data_dir)
    return meta is not None and meta.get("kind") == KIND


def read_metadata(data_dir: str | os.PathLike) -> dict:
    """Reads and checks an image dataset's dataset.json (the documents' reader with this format)."""
    return dataset.read_metadata(data_dir, FORMAT)


def dataset_kind(data_dir: str | os.PathLike) -> str:
    """``images`` or ``documents``, from dataset.json."""
    meta = _dataset_json(data_dir)
    if meta is None:
        raise ValueError(
            f"{store.join(str(data_dir), DATASET_FILE)!r} not found: {str(data_dir)!r} is not a "
            "prepared dataset (run semhash prepare)"
        )
    return meta.get("kind", "documents")


# ---------------------------------------------------------------------------------------------------- decoding
def to_array(img, cfg: ImagesConfig) -> np.ndarray:
    """A PIL image of any supported mode -> uint8 [H, W, C] at the configured size (see the module notes)."""
    from PIL import Image

    mode = img.mode
    if mode in _UNFAITHFUL_MODES or mode.startswith("I;"):
        raise ValueError(f"unsupported mode {mode}")
    if mode in ("RGBA", "LA", "PA", "P") and ("A" in mode or "transparency" in img.info):
        img = img.convert("RGBA")
        base = Image.new("RGBA", img.size, (0, 0, 0, 255))
        img = Image.alpha_composite(base, img)
    img = img.convert("RGB" if cfg.channels == 3 else "L")
    if img.size != (cfg.width, cfg.height):
        img = img.resize((cfg.width, cfg.height), Image.Resampling.BICUBIC)
    arr = np.asarray(img, dtype=np.uint8)
    return arr.reshape(cfg.height, cfg.width, cfg.channels)


def decode_image(data: bytes | None, shape: str | None, cfg: ImagesConfig) -> np.ndarray:
    """File bytes (``shape`` None) or raw HWC pixels (``shape`` "H,W,C") -> uint8 [H, W, C]; ValueError names why."""
    from PIL import Image, UnidentifiedImageError

    if data is None or len(data) == 0:
        raise ValueError(EMPTY_FILE)
    if shape:
        h, w, c = (int(x) for x in shape.split(","))
        if len(data) != h * w * c:
            raise ValueError(f"{WRONG_SIZE}: {len(data)} bytes for shape {shape}")
        arr = np.frombuffer(data, dtype=np.uint8).reshape(h, w, c)
        img = Image.fromarray(arr[..., 0] if c == 1 else arr, mode="L" if c == 1 else "RGB")
        return to_array(img, cfg)
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            return to_array(img, cfg)
    except UnidentifiedImageError:
        raise ValueError("undecodable: not an image Pillow can identify") from None
    except ValueError:
        raise
    except (OSError, SyntaxError, Image.DecompressionBombError) as e:
        raise ValueError(f"undecodable: {' '.join(str(e).split())[:120]}") from None


def _decode_batches(frames: Iterator[pd.DataFrame], cfg_dict: dict) -> Iterator[pd.DataFrame]:
    cfg = ImagesConfig(**cfg_dict)
    for pdf in frames:
        pixels, reasons = [], []
        for data, shape, error in zip(pdf["data"], pdf["shape"], pdf["error"]):
            if error is not None:
                pixels.append(None)
                reasons.append(error)
                continue
            try:
                pixels.append(decode_image(data, shape, cfg).tobytes())
                reasons.append(None)
            except ValueError as e:
                pixels.append(None)
                reasons.append(str(e))
        yield pd.DataFrame(
            {
                "seq": pdf["seq"],
                "id": pdf["id"],
                "label": pdf["label"],
                "split": pdf["split"],
                "source": pdf["source"],
                "pixels": pixels,
                "reason": reasons,
            }
        )


# ---------------------------------------------------------------------------------------------------- writer
def write_image_dataset(
    spark: SparkSession,
    df: DataFrame,
    out_dir: str,
    cfg: Any,
    *,
    quarantine: DataFrame | None = None,
    name: str = "images",
    source: str = "",
    extra: dict | None = None,
) -> dict:
    """Writes a ``semhash-images/1`` dataset from a DataFrame of ``id, label, split, pixels`` (raw uint8 HWC bytes,
    row-major, already ``cfg.height x cfg.width x cfg.channels``).

    Rows with a wrong pixel count, an unknown split, no label or an id seen before (every copy after the first
    by id order of ``seq`` when the frame has it) are quarantined; ``quarantine`` (``id, source, reason``) adds
    rows already rejected upstream. ``cfg`` is an :class:`ImagesConfig` (or a whole Config). Returns the report.
    """
    cfg = getattr(cfg, "images", cfg)
    if not isinstance(cfg, ImagesConfig):
        raise TypeError(f"cfg must be an ImagesConfig or a Config, got {type(cfg).__name__}")
    out = _out_uri(out_dir)
    store.delete(store.join(out, DATASET_FILE))  # written last: a half-written dataset has none
    nbytes = cfg.height * cfg.width * cfg.channels
    order = F.col("seq") if "seq" in df.columns else F.monotonically_increasing_id()
    has_source = "source" in df.columns
    df = df.withColumn("_order", order)
    rank = F.row_number().over(Window.partitionBy("id").orderBy("_order"))
    checked = df.withColumn(
        "reason",
        F.when(F.col("id").isNull(), F.lit("no id"))
        .when(~F.col("split").isin(*SPLITS), F.lit(BAD_SPLIT))
        .when(F.col("label").isNull() | (F.col("label") == ""), F.lit(NO_LABEL))
        .when(
            F.col("pixels").isNull() | (F.length("pixels") != nbytes), F.lit(f"{WRONG_SIZE} (expected {nbytes} bytes)")
        )
        .when(rank > 1, F.lit(DUPLICATE_ID)),
    ).withColumn("source", F.col("source") if has_source else F.lit(None).cast("string"))
    with sparkio.staging(spark, out, "_staging") as staging:
        _write(checked, store.join(staging, "checked"))
        checked = _read(spark, store.join(staging, "checked"))
        kept = checked.where(F.col("reason").isNull())
        counts = {r["split"]: r["count"] for r in kept.groupBy("split").count().collect()}
        labels = sorted(r["label"] for r in kept.select("label").distinct().collect())
        if counts.get("train", 0) == 0:
            raise ValueError(
                f"no training image survived in {out!r}; quarantine reasons: "
                f"{_reasons(checked.where(F.col('reason').isNotNull()))}"
            )
        sparkio.remove(store.join(out, IMAGES_DIR))
        for split in SPLITS:
            if counts.get(split, 0):
                split_uri = store.join(out, IMAGES_DIR, f"split={split}")
                url = split_uri if store.is_s3(split_uri) else "file://" + os.path.abspath(split_uri)
                data_mod.write_image_split(
                    spark,
                    kept.where(F.col("split") == split),
                    url,
                    cfg.height,
                    cfg.width,
                    cfg.channels,
                    cfg.files_per_split,
                )
        rejected = checked.where(F.col("reason").isNotNull()).select("id", "source", "reason")
        if quarantine is not None:
            rejected = rejected.unionByName(quarantine.select("id", "source", "reason"))
        _write(rejected.coalesce(1), store.join(out, QUARANTINE_DIR))
        reasons = _reasons(rejected)
    if not store.is_s3(out):
        sparkio.remove_crc(os.path.join(out, IMAGES_DIR))
    n_q = sum(reasons.values())
    meta = {
        "format": FORMAT,
        "kind": KIND,
        "name": name,
        "height": cfg.height,
        "width": cfg.width,
        "channels": cfg.channels,
        "labels": labels,
        "counts": {"train": int(counts.get("train", 0)), "test": int(counts.get("test", 0)), "quarantined": n_q},
        "quarantine_reasons": reasons,
        "source": source,
        "images": asdict(cfg),
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **(extra or {}),
    }
    store.write_bytes(store.join(out, DATASET_FILE), (json.dumps(meta, indent=1) + "\n").encode())  # atomic
    return {
        "name": name,
        "kind": KIND,
        "kept": meta["counts"] | {"quarantined": n_q},
        "quarantined": reasons,
        "labels": len(labels),
        "out_dir": out,
    }


def _out_uri(out_dir: str | os.PathLike) -> str:
    """``out_dir`` as a store URI: an absolute local path (created) or ``s3://bucket/prefix``."""
    out = str(out_dir)
    if store.is_s3(out):
        store.split_s3(out)
        return out.rstrip("/")
    path = os.path.abspath(store.local_path(out))
    os.makedirs(path, exist_ok=True)
    return path


def _write(df: DataFrame, uri: str) -> None:
    sparkio.write_parquet(df, uri, executors=True)  # s3://: the tasks write the objects, in any mode


def _read(spark: SparkSession, uri: str) -> DataFrame:
    return sparkio.read_parquet(spark, uri, executors=True)


def _reasons(df: DataFrame) -> dict[str, int]:
    """Counts by reason, with free-text details (after ':') folded into their reason."""
    short = F.split(F.col("reason"), ":").getItem(0)
    return {r["r"]: int(r["count"]) for r in df.select(short.alias("r")).groupBy("r").count().collect()}


# ---------------------------------------------------------------------------------------------------- prepare
def prepare_images(spark: SparkSession, dataset: str, source: str, out_dir: str, cfg: ImagesConfig) -> dict:
    """``semhash prepare --dataset {cifar10,mnist,imagefolder}``: raw images -> ``semhash-images/1`` at out_dir.

    ``source`` and ``out_dir`` are local paths or ``s3://`` URIs (module notes: who reads and writes what).
    """
    t0 = time.time()
    source = str(source)
    if store.is_s3(source):  # validates dataset and source before any write
        units, records = image_sources.input_units(dataset, source), None
    else:
        units, records = None, image_sources.read_source(dataset, source)
    out = _out_uri(out_dir)
    with sparkio.staging(spark, out, "_prepare") as work:
        if units is not None:
            log.info("prepare %s: reading %d unit(s) of %s on executors", dataset, len(units), source)
            n_read = sparkio.stage_units(spark, units, image_sources.read_unit, _STAGE_ARROW, store.join(work, "raw"))
        else:
            n_read = sparkio.stage_records(records, _STAGE_ARROW, store.join(work, "raw"))
        spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", "1000")
        raw = _read(spark, store.join(work, "raw")).select(*_STAGE_ARROW.names)
        decoded = raw.repartition(max(2, spark.sparkContext.defaultParallelism)).mapInPandas(
            functools.partial(_decode_batches, cfg_dict=asdict(cfg)), _DECODED_SCHEMA
        )
        _write(decoded, store.join(work, "decoded"))
        decoded = _read(spark, store.join(work, "decoded"))
        good = decoded.where(F.col("reason").isNull())
        bad = decoded.where(F.col("reason").isNotNull()).select("id", "source", "reason")
        name = {"cifar10": "cifar10", "mnist": "mnist"}.get(
            dataset, source.rstrip("/").rsplit("/", 1)[-1].split(".")[0]
        )
        report = write_image_dataset(
            spark,
            good.select("seq", "id", "label", "split", "source", "pixels"),
            out,
            cfg,
            quarantine=bad,
            name=name,
            source=source,
            extra={"records_read": n_read, "dataset": dataset},
        )
    total = report["kept"]["train"] + report["kept"]["test"] + report["kept"]["quarantined"]
    if total != n_read:
        raise RuntimeError(f"prepare lost images: read {n_read}, kept + quarantined = {total}")
    report.update(records_read=n_read, seconds=round(time.time() - t0, 1))
    return report
