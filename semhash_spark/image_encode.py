"""The Spark encode job for image datasets: the same shards, manifest and publish as documents.

Plan (nothing but file metadata reaches the driver):

1. Spark reads the Petastorm image Parquet (``images/split=*/``; an ``s3://`` dataset on a cluster is read by the
   executors through the store, :func:`sparkio.read_parquet`); ``mapInPandas`` decodes each Arrow batch's PNG
   bytes (Pillow) and encodes the images with the model (loaded once per Python worker from a broadcast of the
   checkpoint bytes) -> id, code, address, partition key; with a patch model, also the 81 glimpse codes of
   multiple semantic hashing.
2. ``repartition(partition key)`` + ``index.write_shard``: the address-partitioned code shards, as for documents.
3. With a patch model, each task of step 1's output also writes a side table
   ``versions/V/patches/<uuid>.parquet`` (id, code, patch_codes = 81 packed glimpse codes): multiple semantic
   hashing needs every glimpse of every image, not one address partition. Its files are listed in the manifest
   under ``patches`` with their checksums, and the patch model is copied to ``versions/V/patch_model/``.
4. The driver builds the manifest (``kind: images``), copies the model(s) next to the shards and publishes.
"""
from __future__ import annotations

import functools
import io
import json
import logging
import time
import uuid
from typing import Any, Iterator

import numpy as np
import pandas as pd

from . import codes as C
from . import index as ix
from . import msh
from . import sparkio, store
from .checkpoint import META, WEIGHTS, Hasher
from .config import ImagesConfig
from .encode import _hasher_from_bytes
from .query import read_patch_table  # noqa: F401 - the one reader of patch tables, where it was

log = logging.getLogger(__name__)

ENCODED_SCHEMA = "id string, code binary, address long, part string, patch_codes binary"
FILES_SCHEMA = "partition string, path string, rows long, bytes long, sha256 string, columns array<string>"
PATCH_DIR = "patches"
PATCH_MODEL_DIR = "patch_model"
ADDRESS_MODEL_DIR = "address_model"

def _hasher(version: str, blobs: dict[str, bytes]) -> Hasher:
    """One model per Python worker, model version and device: on the task's GPU when Spark gave it one
    (``TaskContext.resources()``), as document encode does."""
    return _hasher_from_bytes(version, blobs)


def decode_png_column(values, height: int, width: int, channels: int) -> np.ndarray:
    """PNG bytes written by the Petastorm image codec -> uint8 [n, H, W, C]."""
    from PIL import Image

    out = np.empty((len(values), height, width, channels), dtype=np.uint8)
    for i, v in enumerate(values):
        with Image.open(io.BytesIO(bytes(v))) as img:
            arr = np.asarray(img.convert("RGB" if channels == 3 else "L"), dtype=np.uint8)
        out[i] = arr.reshape(height, width, channels)
    return out


def encode_image_frames(frames: Iterator[pd.DataFrame], hasher: Hasher, patch_hasher: Hasher | None,
                        images_cfg: ImagesConfig, address_bits: int, partition_bits: int,
                        address_hasher: Hasher | None = None) -> Iterator[pd.DataFrame]:
    """Image rows -> id, ranking code, address (``address_hasher``'s code, else the ranking code's prefix),
    partition key (the address's prefix) and, with a patch model, the 81 glimpse codes."""
    for pdf in frames:
        if len(pdf) == 0:
            continue
        pixels = decode_png_column(pdf["image"].tolist(), images_cfg.height, images_cfg.width, images_cfg.channels)
        flat = pixels.reshape(len(pixels), -1)
        packed = hasher.codes(flat)
        address = C.prefix(address_hasher.codes(flat) if address_hasher is not None else packed, address_bits)
        part = address >> np.uint64(address_bits - partition_bits)
        out = pd.DataFrame({
            "id": pdf["id"].astype(str).to_numpy(),
            "code": [row.tobytes() for row in packed],
            "address": address.view(np.int64),
            "part": [C.partition_name(int(p), partition_bits) for p in part],
        })
        if patch_hasher is not None:
            pc = msh.patch_codes(patch_hasher, pixels, images_cfg)
            out["patch_codes"] = [row.tobytes() for row in pc.reshape(len(pc), -1)]
        else:
            out["patch_codes"] = None
        yield out


def patch_table_schema(code_bytes: int, patch_bytes: int):
    import pyarrow as pa

    return pa.schema([pa.field("id", pa.string(), nullable=False),
                      pa.field("code", pa.binary(code_bytes), nullable=False),
                      pa.field("patch_codes", pa.binary(msh.N_PATCHES * patch_bytes), nullable=False)])


def write_patch_table(version_uri: str, code_bytes: int, patch_bytes: int, pdf: pd.DataFrame) -> dict | None:
    """One task's (id, code, patch_codes) rows -> ``patches/<uuid>.parquet``; returns the file's metadata."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if len(pdf) == 0:
        return None
    schema = patch_table_schema(code_bytes, patch_bytes)
    table = pa.Table.from_arrays([
        pa.array(pdf["id"].astype(str).tolist(), pa.string()),
        pa.array([bytes(v) for v in pdf["code"]], schema.field("code").type),
        pa.array([bytes(v) for v in pdf["patch_codes"]], schema.field("patch_codes").type),
    ], schema=schema)
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    data = buf.getvalue()
    path = f"{PATCH_DIR}/{uuid.uuid4().hex}.parquet"
    store.write_bytes(store.join(version_uri, path), data)
    return {"partition": "", "path": path, "rows": len(pdf), "bytes": len(data), "sha256": store.sha256_bytes(data),
            "columns": list(schema.names)}


def encode_images_to_index(spark, model_uri: str, data_uri: str, index_uri: str, cfg, *,
                           patch_model_uri: str | None = None, version: str | None = None,
                           address_model_uri: str | None = None) -> dict[str, Any]:
    """Encodes every image of ``data_uri`` (train and test) and publishes a new index version.

    ``address_model_uri``: a short image model (the papers' 28 bits) whose code is each image's address, copied
    into the version as ``address_model/``; without it the address is the ranking code's prefix."""
    from . import images as im

    t0 = time.time()
    if not store.exists(store.join(model_uri, META)):
        raise ValueError(f"no model at {model_uri!r} (model.json not found); run semhash train first")
    blobs_raw = {WEIGHTS: store.read_bytes(store.join(model_uri, WEIGHTS)),
                 META: store.read_bytes(store.join(model_uri, META))}
    meta = json.loads(blobs_raw[META])
    if meta.get("kind") != "images":
        raise ValueError(f"{model_uri!r} is a {meta.get('kind')!r} model; image datasets need an image model")
    dmeta = im.read_metadata(data_uri)               # dataset.json, local or s3:// (images are read below)
    shape = (dmeta["height"], dmeta["width"], dmeta["channels"])
    if meta["sizes"][0] != int(np.prod(shape)):
        raise ValueError(f"{model_uri!r} takes {meta['sizes'][0]} inputs but {data_uri!r} has images {shape}")
    images_cfg = ImagesConfig(**{**cfg.images.__dict__, "height": shape[0], "width": shape[1], "channels": shape[2]})
    patch_raw, patch_meta = None, None
    if patch_model_uri:
        patch_raw = {WEIGHTS: store.read_bytes(store.join(patch_model_uri, WEIGHTS)),
                     META: store.read_bytes(store.join(patch_model_uri, META))}
        patch_meta = json.loads(patch_raw[META])
        if patch_meta.get("kind") != "image_patches":
            raise ValueError(f"--patch-model {patch_model_uri!r} is a {patch_meta.get('kind')!r} model, "
                             "not image_patches")
        pcfg = patch_meta["config"]["images"]
        images_cfg = ImagesConfig(**{**images_cfg.__dict__, "patch_side": pcfg["patch_side"],
                                     "patch_fovea": pcfg["patch_fovea"]})
    bits = int(meta["bits"])
    address_bits = min(cfg.index.address_bits, bits)
    address_raw, address_meta = None, None
    if address_model_uri:
        from .encode import _address_model

        address_raw, address_meta = _address_model(address_model_uri, meta)
        if address_meta["sizes"][0] != meta["sizes"][0]:
            raise ValueError(f"the address model {address_model_uri!r} takes {address_meta['sizes'][0]} inputs, "
                             f"the ranking model {meta['sizes'][0]}")
        address_bits = int(address_meta["bits"])
    address_version = address_meta["model_version"] if address_meta else None
    partition_bits = min(cfg.index.partition_bits, address_bits)
    code_bytes = C.code_bytes(bits)
    base = ix.current_version(index_uri)                     # CURRENT must still be here when we publish
    model_version = meta["model_version"]
    patch_version = patch_meta["model_version"] if patch_meta else None
    patch_bytes = C.code_bytes(int(patch_meta["bits"])) if patch_meta else 0
    blobs = spark.sparkContext.broadcast({"model": blobs_raw, "patch": patch_raw, "address": address_raw})
    s3_env = store.driver_s3_env()

    def encode(frames):
        b = blobs.value
        hasher = _hasher(model_version, b["model"])
        patch_hasher = _hasher(patch_version, b["patch"]) if patch_version else None
        address_hasher = _hasher(address_version, b["address"]) if address_version else None
        yield from encode_image_frames(frames, hasher, patch_hasher, images_cfg, address_bits, partition_bits,
                                       address_hasher)

    def write(frames, version_uri: str):
        store.apply_s3_env(s3_env)
        for pdf in frames:
            metas = ix.write_shard(version_uri, partition_bits, code_bytes, pdf[["id", "code", "address"]],
                                   address_bits=address_bits)
            if metas:
                yield pd.DataFrame([{k: m[k] for k in ("partition", "path", "rows", "bytes", "sha256", "columns")}
                                    for m in metas])

    def write_patches(frames, version_uri: str):
        store.apply_s3_env(s3_env)
        for pdf in frames:
            m = write_patch_table(version_uri, code_bytes, patch_bytes, pdf)
            if m:
                yield pd.DataFrame([m])

    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(cfg.encode.batch_size))
    try:
        imgs = sparkio.read_parquet(spark, data_uri, [f"{im.IMAGES_DIR}/split={s}" for s in im.SPLITS],
                                    ["id", "image"])
    except FileNotFoundError:
        raise ValueError(f"{data_uri!r} has no images (no images/split=* files); run semhash prepare") from None
    n_tasks = min(cfg.encode.shuffle_partitions or max(2, spark.sparkContext.defaultParallelism), 1 << partition_bits)
    cached = []

    def write_version(version: str, version_uri: str) -> dict:
        encoded = imgs.mapInPandas(encode, ENCODED_SCHEMA)
        if patch_version:
            # Encoding the 81 glimpses is the expensive part: do it once, then feed both writers from the result.
            encoded = encoded.cache()
            cached.append(encoded)
        files_df = encoded.drop("patch_codes").repartition(n_tasks, "part") \
            .sortWithinPartitions("part", "address", "id") \
            .mapInPandas(functools.partial(write, version_uri=version_uri), FILES_SCHEMA)
        files = [r.asDict() for r in files_df.collect()]     # file metadata only
        extra: dict[str, Any] = {"kind": "images"}
        if address_meta:
            extra["address_model"] = {"uri": address_model_uri, "version": address_version,
                                      "path": ADDRESS_MODEL_DIR, "kind": "images", "bits": address_bits}
        if patch_version:
            pfiles = [r.asDict() for r in encoded.select("id", "code", "patch_codes")
                      .mapInPandas(functools.partial(write_patches, version_uri=version_uri), FILES_SCHEMA).collect()]
            pfiles.sort(key=lambda f: f["path"])
            extra["patches"] = {"bits": int(patch_meta["bits"]), "code_bytes": patch_bytes,
                                "count": sum(int(f["rows"]) for f in pfiles), "model": PATCH_MODEL_DIR,
                                "model_version": patch_version, "glimpses": msh.describe(images_cfg),
                                "files": [{k: f[k] for k in ("path", "rows", "bytes", "sha256")} for f in pfiles]}
        return dict(bits=bits, address_bits=address_bits, partition_bits=partition_bits, files=files,
                    model={"uri": model_uri, "version": model_version, "path": "model", "kind": "images"},
                    data={"uri": data_uri, "name": dmeta.get("name"), "shape": list(shape)}, **extra)

    models = {"model": blobs_raw} | ({PATCH_MODEL_DIR: patch_raw} if patch_raw else {}) \
        | ({ADDRESS_MODEL_DIR: address_raw} if address_raw else {})
    try:
        manifest = ix.publish_version(index_uri, write_version, base=base, version=version, models=models)
    finally:
        for df in cached:
            df.unpersist()
        blobs.unpersist()
    version = manifest["version"]
    files = [f for p in manifest["partitions"] for f in p["files"]]
    seconds = time.time() - t0
    count = int(manifest["count"])
    return {"version": version, "index": index_uri, "kind": "images", "bits": bits, "address_bits": address_bits,
            "partition_bits": partition_bits, "count": count, "partitions": len(manifest["partitions"]),
            "files": len(files), "patch_codes": bool(patch_version), "seconds": round(seconds, 2),
            "images_per_second": round(count / max(seconds, 1e-9), 1), "model_version": model_version,
            "address_model_version": address_version}
