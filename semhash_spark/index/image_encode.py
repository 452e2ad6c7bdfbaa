"""Images in the one encode job (:func:`semhash_spark.index.encode.encode_to_index`): reader, encoder, patch table.

Plan (nothing but file metadata reaches the driver):

1. Spark reads the Petastorm image Parquet (``images/split=*/``; an ``s3://`` dataset on a cluster is read by the
   executors through the store, :func:`sparkio.read_parquet`); ``mapInPandas`` decodes each Arrow batch's PNG
   bytes (Pillow) and encodes the images with the model (loaded once per Python worker from a broadcast of the
   checkpoint bytes) -> id, code, address, partition key; with a patch model, also the 81 glimpse codes of
   multiple semantic hashing.
2. ``repartition(partition key)`` + ``published.write_shard``: the address-partitioned code shards, as for documents.
3. With a patch model, each task of step 1's output also writes a side table
   ``versions/V/patches/<uuid>.parquet`` (id, code, patch_codes = 81 packed glimpse codes): multiple semantic
   hashing needs every glimpse of every image, not one address partition. Its files are listed in the manifest
   under ``patches`` with their checksums, and the patch model is copied to ``versions/V/patch_model/``.
4. The driver builds the manifest (``kind: images``), copies the model(s) next to the shards and publishes.
"""

from __future__ import annotations

import functools
import io
import logging
import uuid
from typing import Iterator

import numpy as np
import pandas as pd

from semhash_spark import codes as C
from semhash_spark.models import msh
from semhash_spark.io import sparkio, store
from semhash_spark.models.checkpoint import Hasher
from semhash_spark.config import ImagesConfig
from semhash_spark.index.encode import FILES_SCHEMA, Modality, _model_blobs, code_frame
from semhash_spark.index.query import read_patch_table  # noqa: F401 - the one reader of patch tables, where it was

log = logging.getLogger(__name__)

ENCODED_SCHEMA = "id string, code binary, address long, part string, patch_codes binary"
PATCH_DIR = "patches"
PATCH_MODEL_DIR = "patch_model"


def decode_png_column(values, height: int, width: int, channels: int) -> np.ndarray:
    """PNG bytes written by the Petastorm image codec -> uint8 [n, H, W, C]."""
    from PIL import Image

    out = np.empty((len(values), height, width, channels), dtype=np.uint8)
    for i, v in enumerate(values):
        with Image.open(io.BytesIO(bytes(v))) as img:
            arr = np.asarray(img.convert("RGB" if channels == 3 else "L"), dtype=np.uint8)
        out[i] = arr.reshape(height, width, channels)
    return out


def encode_image_frames(
    frames: Iterator[pd.DataFrame],
    hasher: Hasher,
    patch_hasher: Hasher | None,
    images_cfg: ImagesConfig,
    address_bits: int,
    partition_bits: int,
    address_hasher: Hasher | None = None,
) -> Iterator[pd.DataFrame]:
    """Image rows -> id, ranking code, address (``address_hasher``'s code, else the ranking code's prefix),
    partition key (the address's prefix) and, with a patch model, the 81 glimpse codes."""
    for pdf in frames:
        if len(pdf) == 0:
            continue
        pixels = decode_png_column(pdf["image"].tolist(), images_cfg.height, images_cfg.width, images_cfg.channels)
        out = code_frame(
            pdf["id"], pixels.reshape(len(pixels), -1), hasher, address_bits, partition_bits, address_hasher
        )
        if patch_hasher is not None:
            pc = msh.patch_codes(patch_hasher, pixels, images_cfg)
            out["patch_codes"] = [row.tobytes() for row in pc.reshape(len(pc), -1)]
        else:
            out["patch_codes"] = None
        yield out


def patch_table_schema(code_bytes: int, patch_bytes: int):
    import pyarrow as pa

    return pa.schema(
        [
            pa.field("id", pa.string(), nullable=False),
            pa.field("code", pa.binary(code_bytes), nullable=False),
            pa.field("patch_codes", pa.binary(msh.N_PATCHES * patch_bytes), nullable=False),
        ]
    )


def write_patch_table(version_uri: str, code_bytes: int, patch_bytes: int, pdf: pd.DataFrame) -> dict | None:
    """One task's (id, code, patch_codes) rows -> ``patches/<uuid>.parquet``; returns the file's metadata."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if len(pdf) == 0:
        return None
    schema = patch_table_schema(code_bytes, patch_bytes)
    table = pa.Table.from_arrays(
        [
            pa.array(pdf["id"].astype(str).tolist(), pa.string()),
            pa.array([bytes(v) for v in pdf["code"]], schema.field("code").type),
            pa.array([bytes(v) for v in pdf["patch_codes"]], schema.field("patch_codes").type),
        ],
        schema=schema,
    )
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    data = buf.getvalue()
    path = f"{PATCH_DIR}/{uuid.uuid4().hex}.parquet"
    store.write_bytes(store.join(version_uri, path), data)
    return {
        "partition": "",
        "path": path,
        "rows": len(pdf),
        "bytes": len(data),
        "sha256": store.sha256_bytes(data),
        "columns": list(schema.names),
    }


class ImageEncode(Modality):
    """Images for the encode job: Petastorm PNG rows -> codes (and, with a patch model, the 81 glimpse codes,
    written to the ``patches/`` side table that multiple semantic hashing reads)."""

    kind = "images"
    rate = "images_per_second"
    schema = ENCODED_SCHEMA

    def __init__(self, model_uri: str, meta: dict, data_uri: str, cfg, patch_model_uri: str | None = None):
        from semhash_spark.data import images as im

        if meta.get("kind") != "images":
            raise ValueError(f"{model_uri!r} is a {meta.get('kind')!r} model; image datasets need an image model")
        dmeta = im.read_metadata(data_uri)  # dataset.json, local or s3:// (images are read below)
        shape = (dmeta["height"], dmeta["width"], dmeta["channels"])
        if meta["sizes"][0] != int(np.prod(shape)):
            raise ValueError(f"{model_uri!r} takes {meta['sizes'][0]} inputs but {data_uri!r} has images {shape}")
        self.images_cfg = ImagesConfig(
            **{**cfg.images.__dict__, "height": shape[0], "width": shape[1], "channels": shape[2]}
        )
        self.data_uri, self.name, self.shape = data_uri, dmeta.get("name"), list(shape)
        self.code_bytes = C.code_bytes(int(meta["bits"]))
        self.patch_meta, self.patch_bytes, self.hashers, self.models = None, 0, {}, {}
        if patch_model_uri:
            patch_raw, self.patch_meta = _model_blobs(patch_model_uri, "patch model")
            if self.patch_meta.get("kind") != "image_patches":
                raise ValueError(
                    f"--patch-model {patch_model_uri!r} is a {self.patch_meta.get('kind')!r} model, not image_patches"
                )
            pcfg = self.patch_meta["config"]["images"]
            self.images_cfg = ImagesConfig(
                **{**self.images_cfg.__dict__, "patch_side": pcfg["patch_side"], "patch_fovea": pcfg["patch_fovea"]}
            )
            self.patch_bytes = C.code_bytes(int(self.patch_meta["bits"]))
            self.hashers = {"patch": (self.patch_meta["model_version"], patch_raw)}
            self.models = {PATCH_MODEL_DIR: patch_raw}

    def read(self, spark):
        from semhash_spark.data import images as im

        try:
            return sparkio.read_parquet(
                spark, self.data_uri, [f"{im.IMAGES_DIR}/split={s}" for s in im.SPLITS], ["id", "image"]
            )
        except FileNotFoundError:
            raise ValueError(
                f"{self.data_uri!r} has no images (no images/split=* files); run semhash prepare"
            ) from None

    def encode(self, frames, hashers, address_bits, partition_bits):
        return encode_image_frames(
            frames,
            hashers["model"],
            hashers.get("patch"),
            self.images_cfg,
            address_bits,
            partition_bits,
            hashers.get("address"),
        )

    def side_files(self, encoded, version_uri: str, write_rows) -> dict:
        if self.patch_meta is None:
            return {}
        cb, pb = self.code_bytes, self.patch_bytes

        def writer(vuri, pdf):
            m = write_patch_table(vuri, cb, pb, pdf)
            return [m] if m else []

        pfiles = [
            r.asDict()
            for r in encoded.select("id", "code", "patch_codes")
            .mapInPandas(functools.partial(write_rows, writer=writer), FILES_SCHEMA)
            .collect()
        ]
        pfiles.sort(key=lambda f: f["path"])
        return {
            "patches": {
                "bits": int(self.patch_meta["bits"]),
                "code_bytes": pb,
                "count": sum(int(f["rows"]) for f in pfiles),
                "model": PATCH_MODEL_DIR,
                "model_version": self.patch_meta["model_version"],
                "glimpses": msh.describe(self.images_cfg),
                "files": [{k: f[k] for k in ("path", "rows", "bytes", "sha256")} for f in pfiles],
            }
        }

    def manifest(self) -> dict:
        return {"kind": "images", "data": {"uri": self.data_uri, "name": self.name, "shape": self.shape}}

    def report(self) -> dict:
        return {"patch_codes": self.patch_meta is not None}
