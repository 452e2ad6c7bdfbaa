"""The sharded mini-batch loader: the only module that imports petastorm.

Each Horovod rank reads its own shard of a prepared split (``docs/split=<split>/``) with Petastorm's batch
reader. Petastorm assigns whole Parquet row groups to shards, so a split needs at least ``shard_count`` row
groups (prepare writes ``prepare.files_per_split`` files of one row group each). Row-group batches are re-cut
into mini-batches of exactly ``batch_size`` rows (the last one may be smaller) through a shuffle buffer, and
sparse rows stay sparse: a batch is a ``scipy.sparse.csr_matrix``, never a dense array.

:func:`count_rows` says, from Parquet metadata alone, how many rows a shard will deliver, using Petastorm's own
row-group listing and shard assignment; :func:`iter_batches` checks what it delivered against it and raises if a
row went missing (Petastorm's thread pool is known to lose rows silently, so the default pool is ``dummy``).
"""

from __future__ import annotations

import contextlib
import contextvars
import io
import logging
import os
import pickle
import random
import warnings
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import pyarrow.parquet as pq
import scipy.sparse as sp
from petastorm import make_batch_reader
from petastorm.etl import dataset_metadata
from petastorm.fs_utils import get_filesystem_and_path_or_paths

from semhash_spark.data import dataset as ds

# petastorm 0.13.1 drives pyarrow's legacy dataset API, and pyarrow 14 warns on every use (a dozen FutureWarnings
# per reader, thousands in a training run): nothing a user can act on, so they are kept out of the job's logs.
warnings.filterwarnings("ignore", category=FutureWarning, module=r"petastorm\.")

log = logging.getLogger(__name__)

READER_POOLS = ("dummy", "process", "thread")


# ---------------------------------------------------------------------------------------------------------------
# No code from data: Petastorm keeps a dataset's Unischema as a pickle in ``_common_metadata`` and unpickles it
# with a filter that still admits ``builtins`` (``exec``, ``eval``). Here the schema comes from this module's own
# code (images: :func:`image_schema` from dataset.json; documents: inferred from the Parquet schema), and any other
# caller of Petastorm's loader gets an unpickler that admits only the classes a Unischema is made of.
# ---------------------------------------------------------------------------------------------------------------
class UntrustedSchema(ValueError):
    """A dataset's ``_common_metadata`` holds a pickle that names something other than Petastorm schema classes."""


_NO_SCHEMA = object()  # read as plain Parquet: Petastorm infers the fields from the Arrow schema
_schema_override: contextvars.ContextVar = contextvars.ContextVar("semhash_petastorm_schema", default=None)
_SCHEMA_CLASSES = {
    ("collections", "OrderedDict"),
    ("petastorm.unischema", "Unischema"),
    ("petastorm.unischema", "UnischemaField"),
    ("petastorm.codecs", "ScalarCodec"),
    ("petastorm.codecs", "CompressedImageCodec"),
    ("petastorm.codecs", "NdarrayCodec"),
    ("petastorm.codecs", "CompressedNdarrayCodec"),
    ("decimal", "Decimal"),
}


class _SchemaUnpickler(pickle.Unpickler):
    """Admits Unischema, UnischemaField, Petastorm's codecs, numpy scalar types and Spark SQL data types only."""

    def find_class(self, module: str, name: str):
        import pyspark.sql.types as T

        if (module, name) in _SCHEMA_CLASSES:
            return super().find_class(module, name)
        found = getattr(np, name, None) if module == "numpy" else None
        if isinstance(found, type) and issubclass(found, np.generic):
            return found
        if (
            module == "pyspark.sql.types"
            and isinstance(getattr(T, name, None), type)
            and issubclass(getattr(T, name), T.DataType)
        ):
            return getattr(T, name)
        raise UntrustedSchema(
            f"the dataset's Petastorm metadata (_common_metadata) names {module}.{name}, which is "
            "not a Petastorm schema class; refusing to unpickle it (was the dataset tampered with?)"
        )


def _get_schema(dataset):
    """Replaces ``petastorm.etl.dataset_metadata.get_schema``: never runs code from the dataset folder."""
    override = _schema_override.get()
    if override is _NO_SCHEMA:
        raise dataset_metadata.PetastormMetadataError("semhash reads this dataset as plain Parquet")
    if override is not None:
        return override
    md = dataset.common_metadata.metadata if dataset.common_metadata else None
    if not md or dataset_metadata.UNISCHEMA_KEY not in md:
        raise dataset_metadata.PetastormMetadataError("no Unischema in the dataset's _common_metadata")
    return _SchemaUnpickler(io.BytesIO(md[dataset_metadata.UNISCHEMA_KEY])).load()


dataset_metadata.get_schema = _get_schema


@contextlib.contextmanager
def _schema(schema) -> Iterator[None]:
    """Within the block, Petastorm's readers use ``schema`` (or plain Parquet for ``_NO_SCHEMA``) for this thread."""
    token = _schema_override.set(schema)
    try:
        yield
    finally:
        _schema_override.reset(token)


@dataclass(frozen=True)
class DocBatch:
    ids: np.ndarray  # object[B] of str
    counts: sp.csr_matrix  # float32 [B, V]

    def __len__(self) -> int:
        return len(self.ids)


@contextlib.contextmanager
def _closing(reader) -> Iterator:
    """A Petastorm reader closed as its ``__exit__`` does (stop, join, cache cleanup), without the ``Cache cleanup
    complete.`` that Petastorm prints on stdout once per reader (per epoch in training); other output is logged."""
    try:
        yield reader
    finally:
        reader.stop()
        reader.join()
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            reader.cleanup_cache()
        for line in out.getvalue().splitlines():
            if line.strip() and line.strip() != "Cache cleanup complete.":
                log.warning("petastorm: %s", line)


def _split_url(data_dir: str | os.PathLike, split: str) -> str:
    d = ds.split_dir(data_dir, split)
    if not d.is_dir():
        raise ValueError(f"{str(d)!r} not found: {str(data_dir)!r} has no {split} split (run semhash prepare)")
    return "file://" + str(d.absolute())


def _row_groups(data_dir: str | os.PathLike, split: str) -> list[int]:
    """Rows per row group, in the order Petastorm's Reader lists them (same ParquetDataset, same loader)."""
    if not ds.split_files(data_dir, split):
        return []
    fs, path = get_filesystem_and_path_or_paths(_split_url(data_dir, split))
    with warnings.catch_warnings():  # petastorm 0.13.1 drives pyarrow's deprecated legacy dataset API
        warnings.simplefilter("ignore", FutureWarning)
        dataset = pq.ParquetDataset(path, filesystem=fs, validate_schema=False, metadata_nthreads=10)
        pieces = dataset_metadata.load_row_groups(dataset)
    rows, footers = [], {}
    for piece in pieces:
        if piece.path not in footers:
            with fs.open(piece.path, "rb") as f:
                footers[piece.path] = pq.ParquetFile(f).metadata
        rows.append(footers[piece.path].row_group(piece.row_group).num_rows)
    return rows


def _shard_indexes(n_row_groups: int, cur_shard: int, shard_count: int, seed: int | None) -> list[int]:
    """Petastorm 0.13.1's Reader._partition_row_groups: shuffle indexes with Random(seed), keep i % count == shard."""
    indexes = list(range(n_row_groups))
    if seed is not None:
        random.Random(seed).shuffle(indexes)
    return [i for i in indexes if i % shard_count == cur_shard]


def _check_shard(cur_shard: int, shard_count: int, n_row_groups: int, split: str) -> None:
    if not (isinstance(shard_count, int) and isinstance(cur_shard, int) and 0 <= cur_shard < shard_count):
        raise ValueError(
            f"need integers 0 <= cur_shard < shard_count, got cur_shard={cur_shard}, shard_count={shard_count}"
        )
    if 0 < n_row_groups < shard_count:
        raise ValueError(
            f"the {split} split has {n_row_groups} row groups, fewer than shard_count={shard_count}; "
            f"re-run prepare with prepare.files_per_split >= {shard_count}"
        )


def count_rows(
    data_dir: str | os.PathLike, split: str, cur_shard: int = 0, shard_count: int = 1, *, seed: int | None = 0
) -> int:
    """How many rows shard ``cur_shard`` of ``shard_count`` delivers per epoch (pass the seed given to iter_batches)."""
    rows = _row_groups(data_dir, split)
    _check_shard(cur_shard, shard_count, len(rows), split)
    return int(sum(rows[i] for i in _shard_indexes(len(rows), cur_shard, shard_count, seed)))


def _to_batch(ids: np.ndarray, word_ids: np.ndarray, word_counts: np.ndarray, vocab_size: int) -> DocBatch:
    return DocBatch(np.asarray(ids, dtype=object), ds.csr_from_binary(word_ids, word_counts, vocab_size))


def iter_batches(
    data_dir: str | os.PathLike,
    split: str,
    batch_size: int,
    *,
    cur_shard: int = 0,
    shard_count: int = 1,
    num_epochs: int | None = 1,
    shuffle: bool = True,
    seed: int | None = 0,
    reader_pool: str = "dummy",
    workers_count: int = 2,
    shuffle_buffer: int = 10_000,
    vocab_size: int | None = None,
) -> Iterator[DocBatch]:
    """Yields DocBatch(ids, counts csr float32 [B, V]) for one shard; B == batch_size except for the last batch.

    ``seed`` fixes Petastorm's shard assignment and row-group order and the shuffle buffer; every rank must pass
    the same seed (change it per epoch for a new order). Epochs follow one another without a break, so with
    ``num_epochs > 1`` only the final batch can be short. Raises RuntimeError if the shard delivered a different
    number of rows than :func:`count_rows` promised.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if reader_pool not in READER_POOLS:
        raise ValueError(f"unknown reader_pool {reader_pool!r}; expected one of {READER_POOLS}")
    if vocab_size is None:
        vocab_size = ds.read_metadata(data_dir)["vocab_size"]
    expected = count_rows(data_dir, split, cur_shard, shard_count, seed=seed)
    if expected == 0:
        log.warning("shard %d/%d of the %s split of %s is empty", cur_shard, shard_count, split, data_dir)
        return
    rng = np.random.default_rng(seed)
    buffer_rows = max(batch_size, shuffle_buffer) if shuffle else batch_size
    pending: list[DocBatch] = []
    n_pending = delivered = 0

    def drain(keep: int, final: bool = False) -> Iterator[DocBatch]:
        """Shuffles the pending rows and emits full batches while at least ``keep`` rows would remain."""
        nonlocal pending, n_pending, delivered
        ids = np.concatenate([b.ids for b in pending])
        counts = sp.vstack([b.counts for b in pending], format="csr", dtype=np.float32)
        if shuffle:
            order = rng.permutation(len(ids))
            ids, counts = ids[order], counts[order]
        start = 0
        while len(ids) - start - batch_size >= keep:
            yield DocBatch(ids[start : start + batch_size], counts[start : start + batch_size])
            start += batch_size
        if final and start < len(ids):
            yield DocBatch(ids[start:], counts[start:])
            start = len(ids)
        delivered += start
        pending = [DocBatch(ids[start:], counts[start:])] if start < len(ids) else []
        n_pending = len(ids) - start

    # Without shuffling, batches go out as soon as they are full; with it, rows wait in a buffer of
    # ``shuffle_buffer`` rows and half the buffer stays behind to mix with the next row groups.
    trigger, keep = (buffer_rows + batch_size, buffer_rows // 2) if shuffle else (batch_size, 0)
    with (
        _schema(_NO_SCHEMA),
        _closing(
            make_batch_reader(
                _split_url(data_dir, split),
                schema_fields=[ds.ID, ds.WORD_IDS, ds.WORD_COUNTS],
                reader_pool_type=reader_pool,
                workers_count=workers_count,
                seed=seed,
                shuffle_row_groups=shuffle,
                num_epochs=num_epochs,
                cur_shard=cur_shard,
                shard_count=shard_count,
            )
        ) as reader,
    ):
        for rg in reader:
            pending.append(_to_batch(rg.id, rg.word_ids, rg.word_counts, vocab_size))
            n_pending += len(rg.id)
            if n_pending >= trigger:
                yield from drain(keep)
    if n_pending:
        yield from drain(0, final=True)
    if num_epochs is not None and delivered != expected * num_epochs:
        raise RuntimeError(
            f"shard {cur_shard}/{shard_count} of {split} delivered {delivered} rows, expected "
            f"{expected * num_epochs} ({num_epochs} epochs); petastorm's {reader_pool!r} pool lost "
            "rows (use reader_pool='dummy' or 'process')"
        )


# ---------------------------------------------------------------------------------------------------------------
# Images (``semhash-images/1``): a Unischema with a PNG image codec, written and read through Petastorm
# ---------------------------------------------------------------------------------------------------------------
IMAGE_SCHEMA_NAME = "SemhashImages"


def image_schema(height: int, width: int, channels: int):
    """The Unischema of an image split: id, label, split (np.str_) and image uint8 (H, W, C) as PNG.

    Petastorm's image codec handles (H, W, 3) and (H, W) arrays, so one-channel images are stored as (H, W)
    and :func:`iter_image_batches` gives them back as (H, W, 1).
    """
    from petastorm.codecs import CompressedImageCodec, ScalarCodec
    from petastorm.unischema import Unischema, UnischemaField
    from pyspark.sql.types import StringType

    if channels not in (1, 3):
        raise ValueError(f"images.channels must be 1 or 3, got {channels}")
    shape = (height, width, 3) if channels == 3 else (height, width)
    return Unischema(
        IMAGE_SCHEMA_NAME,
        [
            UnischemaField("id", np.str_, (), ScalarCodec(StringType()), False),
            UnischemaField("label", np.str_, (), ScalarCodec(StringType()), False),
            UnischemaField("split", np.str_, (), ScalarCodec(StringType()), False),
            UnischemaField("image", np.uint8, shape, CompressedImageCodec("png"), False),
        ],
    )


def _encode_image_rows(rows, height: int, width: int, channels: int):
    """Runs in Spark tasks: (id, label, split, raw HWC bytes) -> Spark rows with the PNG-encoded image."""
    from petastorm.unischema import dict_to_spark_row

    schema = image_schema(height, width, channels)
    shape = schema.fields["image"].shape
    for r in rows:
        pixels = np.frombuffer(r["pixels"], dtype=np.uint8).reshape(shape)
        yield dict_to_spark_row(schema, {"id": r["id"], "label": r["label"], "split": r["split"], "image": pixels})


def write_image_split(spark, df, url: str, height: int, width: int, channels: int, files: int) -> None:
    """Writes one split (a DataFrame with id, label, split, pixels) as a Petastorm dataset at ``url``.

    ``files`` Parquet files of one row group each, so that up to ``files`` ranks can read their own shard.
    ``url`` is ``file://...`` (Spark's writer and Petastorm's ``materialize_dataset``) or ``s3://...``: then the
    tasks write the Parquet objects through the store (:func:`sparkio.write_objects`, no s3a) and the driver
    writes the ``_common_metadata`` object ``materialize_dataset`` would (Unischema, row groups per file).
    """
    import functools

    from petastorm.etl.dataset_metadata import materialize_dataset

    schema = image_schema(height, width, channels)
    rows = (
        df.select("id", "label", "split", "pixels")
        .repartition(files)
        .rdd.mapPartitions(functools.partial(_encode_image_rows, height=height, width=width, channels=channels))
    )
    if url.startswith("s3://"):
        _write_image_split_to_store(spark.createDataFrame(rows, schema.as_spark_schema()), url, schema)
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        with materialize_dataset(spark, url, schema, row_group_size_mb=1024):
            spark.createDataFrame(rows, schema.as_spark_schema()).write.mode("overwrite").option(
                "compression", "none"
            ).parquet(url)


def _write_image_split_to_store(sdf, url: str, schema) -> None:
    import io
    import json
    import pickle

    from petastorm.etl.dataset_metadata import ROW_GROUPS_PER_FILE_KEY, UNISCHEMA_KEY
    from pyspark.sql.pandas.types import to_arrow_schema

    from semhash_spark.io import sparkio, store

    written = sparkio.write_objects(sdf, url, compression="none")  # one row group per file
    arrow = to_arrow_schema(sdf.schema)
    arrow = arrow.with_metadata(
        {
            UNISCHEMA_KEY: pickle.dumps(schema),
            ROW_GROUPS_PER_FILE_KEY: json.dumps({w["path"]: 1 for w in written}).encode(),
        }
    )
    buf = io.BytesIO()
    pq.write_metadata(arrow, buf)
    store.write_bytes(store.join(url, "_common_metadata"), buf.getvalue())


@dataclass(frozen=True)
class ImageBatch:
    ids: np.ndarray  # object[B] of str
    labels: np.ndarray  # object[B] of str
    pixels: np.ndarray  # uint8 [B, H, W, C]

    def __len__(self) -> int:
        return len(self.ids)


def image_split_url(data_dir: str | os.PathLike, split: str) -> str:
    from pathlib import Path

    if split not in ds.SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {ds.SPLITS}")
    d = Path(data_dir) / "images" / f"split={split}"
    if not d.is_dir():
        raise ValueError(f"{str(d)!r} not found: {str(data_dir)!r} has no {split} split (run semhash prepare)")
    return "file://" + str(d.absolute())


def read_image_shard(
    data_dir: str | os.PathLike,
    split: str,
    *,
    cur_shard: int = 0,
    shard_count: int = 1,
    shuffle: bool = False,
    seed: int | None = 0,
    reader_pool: str = "dummy",
    workers_count: int = 2,
) -> ImageBatch:
    """Every image of one shard of a split, decoded by Petastorm's codec: ``pixels`` uint8 [n, H, W, C].

    Petastorm's ``make_reader`` assigns whole row groups to shards (``cur_shard`` of ``shard_count``; every rank
    must pass the same ``seed``).
    """
    if reader_pool not in READER_POOLS:
        raise ValueError(f"unknown reader_pool {reader_pool!r}; expected one of {READER_POOLS}")
    from petastorm import make_reader

    url = image_split_url(data_dir, split)
    from semhash_spark.data.images import read_metadata as read_image_metadata

    meta = read_image_metadata(data_dir)
    schema = image_schema(int(meta["height"]), int(meta["width"]), int(meta["channels"]))  # never the pickle
    ids, labels, images = [], [], []
    with warnings.catch_warnings(), _schema(schema):
        warnings.simplefilter("ignore", FutureWarning)
        with _closing(
            make_reader(
                url,
                reader_pool_type=reader_pool,
                workers_count=workers_count,
                seed=seed,
                shuffle_row_groups=shuffle,
                num_epochs=1,
                cur_shard=cur_shard,
                shard_count=shard_count,
            )
        ) as reader:
            for row in reader:
                ids.append(row.id)
                labels.append(row.label)
                images.append(row.image)
    if not images:
        log.warning("shard %d/%d of the %s images of %s is empty", cur_shard, shard_count, split, data_dir)
        return ImageBatch(np.zeros(0, object), np.zeros(0, object), np.zeros((0, 0, 0, 0), np.uint8))
    pixels = np.stack(images)
    if pixels.ndim == 3:
        pixels = pixels[..., None]
    return ImageBatch(np.asarray(ids, dtype=object), np.asarray(labels, dtype=object), pixels)


def iter_image_batches(
    data_dir: str | os.PathLike,
    split: str,
    batch_size: int,
    *,
    cur_shard: int = 0,
    shard_count: int = 1,
    shuffle: bool = True,
    seed: int | None = 0,
    reader_pool: str = "dummy",
) -> Iterator[ImageBatch]:
    """One epoch of one shard in mini-batches of ``batch_size`` (the last may be smaller), shuffled within the shard.

    The shard is decoded whole first (its rows are the shuffle buffer): 50,000 CIFAR images are 150 MB of uint8.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    shard = read_image_shard(
        data_dir,
        split,
        cur_shard=cur_shard,
        shard_count=shard_count,
        shuffle=shuffle,
        seed=seed,
        reader_pool=reader_pool,
    )
    order = np.random.default_rng(seed).permutation(len(shard)) if shuffle else np.arange(len(shard))
    for s in range(0, len(order), batch_size):
        sel = order[s : s + batch_size]
        yield ImageBatch(shard.ids[sel], shard.labels[sel], shard.pixels[sel])
