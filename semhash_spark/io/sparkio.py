"""Parquet under store URIs as Spark DataFrames, on any master, with or without an S3 connector on the classpath.

When the session has an S3 connector (:func:`s3_connector`: ``s3a`` from hadoop-aws, or a configured ``fs.s3.impl``
such as EMRFS or Databricks'), ``s3://`` URIs are read and written by Spark's own Parquet reader and writer (split
planning, column pruning, predicate pushdown); the table below is the path where it has none:

=============  =====================================  ==============================================================
master         local path                             ``s3://bucket/prefix``
=============  =====================================  ==============================================================
``local[*]``   Spark's Parquet reader and writer      staged through a local copy (:func:`store.local_copy`) / a
                                                      temporary folder uploaded with :func:`store.upload_dir`
a cluster      Spark's reader and writer (the path    the executors read and write the files themselves through
               must be on a file system every node    :mod:`semhash_spark.io.store` (boto3): the driver lists the files,
               mounts: NFS, EFS, HDFS fuse, ...)      one task per file; no hadoop-aws / s3a jars needed
=============  =====================================  ==============================================================

``executors=True`` (:func:`read_parquet`, :func:`write_parquet`) takes the cluster's path for ``s3://`` in local mode
too; ``prepare`` uses it so that no stage of a dataset passes through the driver's disk, and :func:`write_objects`
returns the objects it wrote (for Petastorm's row-group metadata).

On a cluster the executors use their own S3 settings (instance role, ``spark.executorEnv.AWS_*``) and fall back
to the driver's (:func:`store.driver_s3_env`), exactly like the encode job's shard writer.

``spark.semhash.s3.connector`` chooses: ``auto`` (default: detected from the JVM's classpath and Hadoop
configuration), ``s3a`` or ``s3`` (use that scheme; an error when its file system class cannot be loaded), ``none``
(always the store path). :func:`write_objects` (one row group per object, for Petastorm's metadata) always uses
the store path.
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import os
import re
import shutil
import tempfile
import uuid
from typing import Any, Callable, Iterable, Iterator, Sequence

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from semhash_spark.io import store
from semhash_spark.io.spark import stage

log = logging.getLogger(__name__)

PATH_COLUMN = "_file"  # optional column: the file a row came from, relative to the root read
STAGE_ROWS = 5000  # records per staged file when the driver streams a source
UNIT_SHIFT = 40  # seq = unit index << 40 | record index, when executors read the units


def task_error(e: Exception) -> Exception:
    """The ValueError a Spark task raised, as a ValueError with its one-line message (readers name the bad input
    in it), instead of the JVM's multi-line wrapper; any other failure as it is."""
    found = re.findall(r"ValueError: (.+)", str(e))
    return ValueError(found[-1].strip()) if found else e


CONNECTOR_CONF = "spark.semhash.s3.connector"
CONNECTORS = ("auto", "s3a", "s3", "none")
S3A_CLASS = "org.apache.hadoop.fs.s3a.S3AFileSystem"


def _class_loadable(spark: SparkSession, name: str) -> bool:
    return bool(spark.sparkContext._jvm.org.apache.spark.util.Utils.classIsLoadable(name))


def s3_connector(spark: SparkSession) -> str | None:
    """The Hadoop scheme through which Spark itself reads ``s3://`` here (``"s3a"`` or ``"s3"``), or None (the
    store path). ``auto``: ``s3`` where the Hadoop configuration names an ``fs.s3.impl`` whose class loads (EMRFS,
    Databricks, or one set by the user), else ``s3a`` where hadoop-aws's S3AFileSystem is on the classpath."""
    choice = (spark.conf.get(CONNECTOR_CONF, "auto") or "auto").strip().lower()
    if choice not in CONNECTORS:
        raise ValueError(f"{CONNECTOR_CONF}={choice!r}: use one of {', '.join(CONNECTORS)}")
    if choice == "none":
        return None
    hconf = spark.sparkContext._jsc.hadoopConfiguration()
    s3_impl = hconf.get("fs.s3.impl")
    if choice == "s3a" or (choice == "auto" and not s3_impl):
        if _class_loadable(spark, hconf.get("fs.s3a.impl") or S3A_CLASS):
            _fill_s3a_settings(hconf)
            return "s3a"
        if choice == "s3a":
            raise ValueError(
                f"{CONNECTOR_CONF}=s3a but {S3A_CLASS} is not on the classpath: add hadoop-aws "
                f"(--packages org.apache.hadoop:hadoop-aws:<your Hadoop version>) or set it to auto"
            )
        return None
    if s3_impl and _class_loadable(spark, s3_impl):
        return "s3"
    if choice == "s3":
        raise ValueError(
            f"{CONNECTOR_CONF}=s3 but the Hadoop configuration's fs.s3.impl ({s3_impl}) does not "
            "load: set spark.hadoop.fs.s3.impl to a file system on the classpath, or use auto"
        )
    return None


def _fill_s3a_settings(hconf) -> None:
    """The store's endpoint (``AWS_ENDPOINT_URL``: path-style, as :mod:`store` uses it) for S3A where the session
    sets none; credentials come from S3A's own provider chain (environment, instance role)."""
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint and not hconf.get("fs.s3a.endpoint"):
        hconf.set("fs.s3a.endpoint", endpoint)
        hconf.set("fs.s3a.path.style.access", "true")
        hconf.set("fs.s3a.connection.ssl.enabled", str(endpoint.startswith("https:")).lower())
    region = os.environ.get("AWS_DEFAULT_REGION")
    if region and not hconf.get("fs.s3a.endpoint.region"):
        hconf.set("fs.s3a.endpoint.region", region)


def hadoop_uri(uri: str, scheme: str | None) -> str:
    """``uri`` as Spark's reader takes it: ``s3://bucket/key`` with the connector's scheme, a local path as
    ``file:`` URI (``scheme`` unused)."""
    if store.is_s3(uri):
        bucket, key = store.split_s3(uri)
        return f"{scheme}://{bucket}/{key}".rstrip("/")
    return "file://" + os.path.abspath(store.local_path(uri)).rstrip("/")


def on_cluster(spark: SparkSession) -> bool:
    """Whether tasks run outside this process (any master but ``local``): driver-local paths are not theirs."""
    return not spark.sparkContext.master.startswith("local")


def readable_root(spark: SparkSession, root: str) -> str:
    """Where Spark's own reader finds ``root``: local paths as they are, ``s3://`` staged locally in local mode.

    On a cluster an ``s3://`` root has no Spark-readable form here (use :func:`read_parquet`).
    """
    if not store.is_s3(root):
        return store.local_path(root)
    if on_cluster(spark):
        raise ValueError(f"{root!r}: on a cluster read s3:// data with sparkio.read_parquet (no s3a on the classpath)")
    return store.local_copy(root)


def _parquet_files(root: str, parts: Sequence[str]) -> list[tuple[str, int]]:
    """``(path relative to root, size)`` of the Parquet files at or under each of ``parts`` (one listing)."""
    listing = [
        (k, s)
        for k, s in store.list_prefix(root)
        if k.endswith(".parquet") and not any(seg.startswith((".", "_")) for seg in k.split("/"))
    ]
    wanted = [p.strip("/") for p in parts]
    if "" in wanted:
        return listing
    return [(k, s) for k, s in listing if any(k == p or k.startswith(p + "/") for p in wanted)]


def through_executors(spark: SparkSession, uri: str, executors: bool | None = None) -> bool:
    """Whether ``uri`` is read/written by the tasks through the store: ``s3://`` on a cluster (``executors=None``),
    or ``s3://`` on any master when ``executors`` is True (jobs that must not stage on the driver's disk)."""
    return store.is_s3(uri) and (on_cluster(spark) if executors is None else executors)


def read_parquet(
    spark: SparkSession,
    root: str,
    parts: Sequence[str] = ("",),
    columns: Sequence[str] | None = None,
    *,
    path_column: bool = False,
    executors: bool | None = None,
) -> DataFrame:
    """The rows of the Parquet files under ``root/part`` for each part (a folder or a file; ``""`` = all of root).

    Parts with no files are skipped; none at all is a ``FileNotFoundError`` naming them. ``columns`` selects
    columns (all when None); ``path_column`` adds :data:`PATH_COLUMN`, the file's path relative to ``root``.
    ``executors=True`` reads ``s3://`` through the tasks' store client in local mode too (see
    :func:`through_executors`).
    """
    scheme = s3_connector(spark) if store.is_s3(root) else None
    if scheme:  # Spark's own reader through the session's S3 connector
        keys = [k for k, _ in _parquet_files(root, parts)]  # one listing: which parts hold files
        have = [
            p
            for p in parts
            if any(not p.strip("/") or k == p.strip("/") or k.startswith(p.strip("/") + "/") for k in keys)
        ]
        return _read_with_spark(spark, root, hadoop_uri(root, scheme), have, columns, path_column)
    if through_executors(spark, root, executors):
        return _read_with_store(spark, root, parts, columns, path_column)
    base = os.path.abspath(readable_root(spark, root)).rstrip("/")
    have = [p for p in parts if os.path.exists(os.path.join(base, p.strip("/")) if p.strip("/") else base)]
    return _read_with_spark(spark, root, hadoop_uri(base, None), have, columns, path_column)


def _read_with_spark(
    spark: SparkSession, root: str, base: str, parts: Sequence[str], columns: Sequence[str] | None, path_column: bool
) -> DataFrame:
    """Spark's Parquet reader over ``base`` (a ``file:``, ``s3a:`` or ``s3:`` URI) and the ``parts`` under it that
    exist (a cluster reading local paths needs a shared file system)."""
    paths = [f"{base}/{p.strip('/')}" if p.strip("/") else base for p in parts]
    if not paths:
        raise FileNotFoundError(f"no Parquet files under {root!r}")
    with stage(f"read Parquet {root}"):  # the stage name, not 'parquet at NativeMethodAccessorImpl.java:0'
        df = spark.read.parquet(*paths)
    cols = [F.col(c) for c in (columns or df.columns)]
    if path_column:  # input_file_name() is a URI: <scheme>:/<base>/<rel>
        tail = re.escape(base.split(":", 1)[1].lstrip("/"))
        cols.append(F.regexp_extract(F.input_file_name(), tail + "/(.*)$", 1).alias(PATH_COLUMN))
    return df.select(*cols)


def _read_with_store(
    spark: SparkSession, root: str, parts: Sequence[str], columns: Sequence[str] | None, path_column: bool
) -> DataFrame:
    import pyarrow as pa
    import pyarrow.parquet as pq
    from pyspark.sql.pandas.types import from_arrow_schema

    files = _parquet_files(root, parts)
    if not files:
        raise FileNotFoundError(f"no Parquet files under {root!r} ({', '.join(parts) or 'root'})")
    # The schema from the smallest file's footer (one small read on the driver); Spark-compatible types.
    smallest = min(files, key=lambda f: f[1])[0]
    schema = _spark_compatible(pq.read_schema(io.BytesIO(store.read_bytes(store.join(root, smallest)))))
    if columns is not None:
        missing = [c for c in columns if c not in schema.names]
        if missing:
            raise ValueError(f"{root!r} has no column(s) {missing}; it has {schema.names}")
        schema = pa.schema([schema.field(c) for c in columns])
    if path_column:
        schema = schema.append(pa.field(PATH_COLUMN, pa.string()))
    s3_env = store.driver_s3_env()
    names = [c for c in schema.names if c != PATH_COLUMN]

    def read(batches):
        store.apply_s3_env(s3_env)
        for batch in batches:
            for rel in batch.column(0).to_pylist():
                table = pq.read_table(io.BytesIO(store.read_bytes(store.join(root, rel))), columns=names)
                table = _cast(table, schema, rel if path_column else None)
                yield from table.to_batches()

    log.info(
        "reading %d Parquet files (%.1f MB) under %s with the executors' S3 client",
        len(files),
        sum(s for _, s in files) / 1e6,
        root,
    )
    listing = spark.sparkContext.parallelize([(rel,) for rel, _ in files], len(files)).toDF("path string")
    return listing.mapInArrow(read, from_arrow_schema(schema))


def _spark_compatible(schema):
    """Arrow types Spark has no type for, as the nearest one: fixed-size binary -> binary, uint64 -> int64 (bits
    kept, as the index's ``address`` column is read elsewhere)."""
    import pyarrow as pa

    fields = []
    for f in schema:
        t = f.type
        if pa.types.is_fixed_size_binary(t):
            t = pa.binary()
        elif pa.types.is_uint64(t):
            t = pa.int64()
        elif pa.types.is_dictionary(t):
            t = t.value_type
        fields.append(pa.field(f.name, t, True))
    return pa.schema(fields)


def _cast(table, schema, path: str | None):
    import pyarrow as pa
    import pyarrow.compute as pc

    cols = []
    for f in schema:
        if f.name == PATH_COLUMN:
            cols.append(pa.array([path] * table.num_rows, pa.string()))
            continue
        col = table.column(f.name)
        if pa.types.is_uint64(col.type) and pa.types.is_int64(f.type):
            col = pa.chunked_array([c.view(pa.int64()) for c in col.chunks], pa.int64())
        elif col.type != f.type:
            col = pc.cast(col, f.type)
        cols.append(col)
    return pa.Table.from_arrays(cols, schema=schema).combine_chunks()


# --------------------------------------------------------------------------------------------------- writing


def remove_crc(root: str) -> None:
    """Removes the ``.crc`` side files Hadoop's local file system writes beside each file."""
    for dirpath, _, names in os.walk(root):
        for n in names:
            if n.endswith(".crc"):
                os.unlink(os.path.join(dirpath, n))


def write_parquet(df: DataFrame, out_uri: str, *, executors: bool | None = None) -> None:
    """Writes ``df`` as Parquet files under ``out_uri``, replacing what was there (like ``mode("overwrite")``).

    ``executors=True`` has the tasks write ``s3://`` objects themselves in local mode too (no local staging).
    """
    spark = df.sparkSession
    scheme = s3_connector(spark) if store.is_s3(out_uri) else None
    if scheme:  # Spark's own writer through the session's S3 connector
        _write_with_spark(df, out_uri, hadoop_uri(out_uri, scheme))
        return
    if not store.is_s3(out_uri):
        root = store.local_path(out_uri).rstrip("/")
        with stage(f"write Parquet {out_uri}"):
            df.write.mode("overwrite").parquet(root)
        remove_crc(root)
        return
    store.delete_prefix(out_uri)
    if not through_executors(spark, out_uri, executors):
        import tempfile

        with tempfile.TemporaryDirectory(prefix="semhash-out-") as tmp, stage(f"write Parquet {out_uri}"):
            df.write.mode("overwrite").parquet(tmp)
            remove_crc(tmp)
            store.upload_dir(tmp, out_uri)
        return
    _write_with_store(df, out_uri)


def _write_with_spark(df: DataFrame, out_uri: str, target: str) -> None:
    """Spark's Parquet writer to a ``file:``, ``s3a:`` or ``s3:`` URI (what the S3 connector branch runs)."""
    with stage(f"write Parquet {out_uri}"):
        df.write.mode("overwrite").parquet(target)


def write_objects(df: DataFrame, out_uri: str, *, compression: str = "snappy") -> list[dict]:
    """Replaces what is under ``out_uri`` (``s3://``) with one Parquet object per task written by the tasks
    themselves, on any master; returns ``[{path, rows}]`` of the objects (one row group each), sorted by path."""
    store.delete_prefix(out_uri)
    return _write_with_store(df, out_uri, compression)


def _write_with_store(df: DataFrame, out_uri: str, compression: str = "snappy") -> list[dict]:
    """Each task writes its rows as one ``part-NNNNN-<uuid>.parquet`` object (one row group) through the store; an
    empty result still gets one file (with the schema), as Spark's writer does. Returns ``[{path, rows}]`` of the
    files written (paths relative to ``out_uri``, sorted)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from pyspark import TaskContext
    from pyspark.sql.pandas.types import to_arrow_schema

    # Every field nullable: the batches a task sees may declare a column nullable that the plan calls not null.
    schema = pa.schema([f.with_nullable(True) for f in to_arrow_schema(df.schema)])
    s3_env = store.driver_s3_env()
    run = uuid.uuid4().hex[:12]

    def write(batches: Iterator) -> Iterator:
        store.apply_s3_env(s3_env)
        tables = [pa.Table.from_batches([b]).cast(schema) for b in batches]
        table = pa.concat_tables(tables) if tables else schema.empty_table()
        if table.num_rows == 0:
            return
        name = f"part-{TaskContext.get().partitionId():05d}-{run}.parquet"
        buf = io.BytesIO()
        pq.write_table(table, buf, compression=compression, row_group_size=table.num_rows)
        store.write_bytes(store.join(out_uri, name), buf.getvalue())
        yield pa.RecordBatch.from_pydict({"path": [name], "rows": [table.num_rows]})

    with stage(f"write Parquet {out_uri}"):
        written = sorted(
            (r.asDict() for r in df.mapInArrow(write, "path string, rows long").collect()), key=lambda r: r["path"]
        )
    if not written:
        buf = io.BytesIO()
        pq.write_table(schema.empty_table(), buf, compression=compression)
        store.write_bytes(store.join(out_uri, f"part-00000-{run}.parquet"), buf.getvalue())
        written = [{"path": f"part-00000-{run}.parquet", "rows": 0}]
    log.info("wrote %d Parquet files (%d rows) to %s", len(written), sum(r["rows"] for r in written), out_uri)
    return written


# ---------------------------------------------------------------------------------------------------- staging
def remove(uri: str) -> None:
    """Removes a local folder or everything under an ``s3://`` prefix; nothing there is fine."""
    if store.is_s3(uri):
        store.delete_prefix(uri)
    else:
        shutil.rmtree(uri, ignore_errors=True)


@contextlib.contextmanager
def staging(spark: SparkSession, out: str, name: str = "_staging") -> Iterator[str]:
    """``with staging(spark, out) as uri``: where a job's intermediate Parquet goes, emptied before and removed
    after: ``out/name`` for a local ``out`` and for ``s3://`` on a cluster (the executors reach it), a local
    temporary folder for ``s3://`` in local mode (the driver's disk is the executors' disk)."""
    uri = (
        tempfile.mkdtemp(prefix="semhash-staging-")
        if store.is_s3(out) and not on_cluster(spark)
        else store.join(out, name)
    )
    remove(uri)
    try:
        yield uri
    finally:
        remove(uri)


def stage_records(records: Iterable[dict], schema, staging: str) -> int:
    """The driver streams ``records`` (dicts with the fields of the pyarrow ``schema`` but ``seq``, which numbers
    them in reading order) into Parquet files of :data:`STAGE_ROWS` rows under ``staging`` (local or ``s3://``);
    returns how many it read. No record still leaves one file with the schema."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    fields = [n for n in schema.names if n != "seq"]
    cols: dict[str, list] = {n: [] for n in schema.names}
    seq = part = 0

    def flush() -> None:
        nonlocal part, cols
        buf = io.BytesIO()
        pq.write_table(pa.Table.from_pydict(cols, schema=schema), buf)
        store.write_bytes(store.join(staging, f"part-{part:05d}.parquet"), buf.getvalue())
        part += 1
        cols = {n: [] for n in schema.names}

    for rec in records:
        cols["seq"].append(seq)
        for k in fields:
            cols[k].append(rec[k])
        seq += 1
        if len(cols["seq"]) >= STAGE_ROWS:
            flush()
    if cols["seq"] or part == 0:
        flush()
    return seq


def _read_units(
    indexed_units: Iterator[tuple[int, Any]],
    read_unit: Callable[[Any], Iterable[dict]],
    fields: list[str],
    s3_env: dict,
) -> Iterator[tuple]:
    store.apply_s3_env(s3_env)  # S3 units: the driver's settings where the worker has none
    for k, unit in indexed_units:
        for i, rec in enumerate(read_unit(unit)):
            yield ((k << UNIT_SHIFT) | i, *(rec[f] for f in fields))


def stage_units(
    spark: SparkSession, units: list, read_unit: Callable[[Any], Iterable[dict]], schema, staging: str
) -> int:
    """Spark tasks read the ``units`` (one task each; ``read_unit(unit)`` yields records as for
    :func:`stage_records`) into Parquet under ``staging``; returns how many records were read. A reader's
    ``ValueError`` (not an archive, a bad file, ...) is raised as one line naming the unit."""
    from pyspark.sql.pandas.types import from_arrow_schema

    rdd = spark.sparkContext.parallelize(list(enumerate(units)), len(units)).mapPartitions(
        functools.partial(
            _read_units,
            read_unit=read_unit,
            fields=[n for n in schema.names if n != "seq"],
            s3_env=store.driver_s3_env(),
        )
    )
    try:
        write_parquet(spark.createDataFrame(rdd, from_arrow_schema(schema)), staging, executors=True)
    except Exception as e:
        raise task_error(e) from None
    return read_parquet(spark, staging, executors=True).count()
