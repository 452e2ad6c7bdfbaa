"""sparkio: the executors' own S3 reader and writer (what a cluster uses for s3://) give the rows Spark's Parquet
reader gives, with the index's fixed-size binary and uint64 columns in Spark types; an empty result still writes a
readable file. Run in local mode against the real S3 server: the same task code a cluster runs."""

from __future__ import annotations

import io

import numpy as np
import pyarrow.parquet as pq
import pytest

from semhash_spark import codes as C
from semhash_spark.index import published as ix
from semhash_spark.io import sparkio, store


@pytest.fixture(scope="module")
def s3_index(s3_server, tmp_path_factory):
    from test_index import publish_codes

    store.ensure_bucket("semhash")
    local = str(tmp_path_factory.mktemp("sparkio") / "index")
    codes = C.pack_bits(np.random.default_rng(4).integers(0, 2, (300, 32)))
    version = publish_codes(local, codes, 32, 3, 16, words=True)
    uri = "s3://semhash/sparkio-test/index"
    store.upload_dir(local, uri)
    return uri, version, local


def test_store_reader_equals_spark_reader(spark, s3_index):
    uri, version, local = s3_index
    manifest = ix.read_manifest(uri, version)
    files = [f["path"] for p in manifest["partitions"] for f in p["files"]]
    root = ix.version_prefix(uri, version)
    cols = ["id", "code", "address", "word_ids"]
    got = sparkio._read_with_store(spark, root, files[1:], cols, path_column=True).collect()
    want = sparkio.read_parquet(spark, ix.version_prefix(local, version), files[1:], cols, path_column=True).collect()
    assert len(got) == sum(f["rows"] for p in manifest["partitions"] for f in p["files"] if f["path"] != files[0])
    key = lambda r: r["id"]  # noqa: E731
    assert [r.asDict() for r in sorted(got, key=key)] == [r.asDict() for r in sorted(want, key=key)]
    assert {r[sparkio.PATH_COLUMN] for r in got} == set(files[1:])
    assert all(isinstance(r["code"], (bytes, bytearray)) and len(r["code"]) == 4 for r in got)
    codes = np.frombuffer(b"".join(bytes(r["code"]) for r in got), np.uint8).reshape(-1, 4)
    assert [r["address"] & ((1 << 64) - 1) for r in got] == C.prefix(codes, 16).tolist()  # uint64 bits kept

    with pytest.raises(FileNotFoundError, match="no Parquet files"):
        sparkio._read_with_store(spark, root, ["part=zz"], cols, False)
    with pytest.raises(ValueError, match="no column"):
        sparkio._read_with_store(spark, root, [""], ["id", "nope"], False)


def test_store_writer_writes_one_object_per_task(spark, s3_server):
    store.ensure_bucket("semhash")
    out = "s3://semhash/sparkio-test/out"
    df = spark.createDataFrame([(f"d{i:03d}", i, float(i) / 3) for i in range(50)], "id string, n long, x double")
    sparkio._write_with_store(df.repartition(3), out)
    keys = [k for k, _ in store.list_prefix(out)]
    assert len(keys) == 3 and all(k.startswith("part-") and k.endswith(".parquet") for k in keys)
    rows = []
    for k in keys:
        rows += pq.read_table(io.BytesIO(store.read_bytes(store.join(out, k)))).to_pylist()
    assert sorted(rows, key=lambda r: r["id"]) == [r.asDict() for r in df.orderBy("id").collect()]

    empty = "s3://semhash/sparkio-test/empty"
    sparkio._write_with_store(df.where("n < 0"), empty)
    (key,), _ = zip(*store.list_prefix(empty))
    t = pq.read_table(io.BytesIO(store.read_bytes(store.join(empty, key))))
    assert t.num_rows == 0 and t.column_names == ["id", "n", "x"]


def test_write_objects_and_the_executors_path_in_local_mode(spark, s3_server):
    """write_objects lists what the tasks wrote (one row group per object); executors=True reads and writes s3://
    through the tasks in local mode, replacing what was there; a column the plan calls not null writes too."""
    from pyspark.sql import functions as F

    store.ensure_bucket("semhash")
    out = "s3://semhash/sparkio-test/objects"
    df = (
        spark.createDataFrame([(f"d{i:02d}", i) for i in range(20)], "id string, n long")
        .withColumn("tag", F.lit("x"))
        .withColumn("even", F.when(F.col("n") % 2 == 0, F.lit("yes")))
    )
    assert not df.schema["tag"].nullable
    written = sparkio.write_objects(df.repartition(2), out)
    assert [w["path"] for w in written] == [k for k, _ in store.list_prefix(out)]
    assert len(written) == 2 and sum(w["rows"] for w in written) == 20
    for w in written:
        assert pq.ParquetFile(io.BytesIO(store.read_bytes(store.join(out, w["path"])))).num_row_groups == 1
    back = sparkio.read_parquet(spark, out, executors=True)
    assert [r.asDict() for r in back.orderBy("id").collect()] == [r.asDict() for r in df.orderBy("id").collect()]

    sparkio.write_parquet(df.where("n < 5").coalesce(1), out, executors=True)
    assert len(store.list_prefix(out)) == 1
    assert sorted(r["id"] for r in sparkio.read_parquet(spark, out, executors=True).collect()) == [
        f"d{i:02d}" for i in range(5)
    ]


def test_spark_jobs_are_named_after_the_project_stage(spark, tmp_path):
    """Stage names read 'semhash ...: write Parquet <uri>', not 'parquet at NativeMethodAccessorImpl.java:0'."""
    from semhash_spark.io import sparkio
    from semhash_spark.io.spark import stage

    sc = spark.sparkContext
    tracker = sc.statusTracker()
    before = sc.getLocalProperty("callSite.short")
    sc.setLocalProperty("spark.jobGroup.id", "naming-test")  # to find the jobs afterwards
    try:
        with stage("semhash test"):
            sparkio.write_parquet(spark.range(50).repartition(2), str(tmp_path / "out"))
        assert sc.getLocalProperty("callSite.short") == before  # restored after the block
    finally:
        sc.setLocalProperty("spark.jobGroup.id", None)
    names = {
        tracker.getStageInfo(s).name
        for j in tracker.getJobIdsForGroup("naming-test")
        for s in tracker.getJobInfo(j).stageIds
        if tracker.getStageInfo(s) is not None
    }
    want = f"semhash test: write Parquet {tmp_path / 'out'}"
    assert names and all(want in n and "NativeMethodAccessorImpl" not in n for n in names), names


def test_s3_connector_is_detected_or_configured(spark):
    """This session has no hadoop-aws jar (none is available offline), so ``auto`` takes the store path; a
    configured ``fs.s3.impl`` whose class loads selects Spark's reader with the ``s3`` scheme; asking for a
    connector that is not there is an error naming it."""
    hconf = spark.sparkContext._jsc.hadoopConfiguration()
    assert not sparkio._class_loadable(spark, sparkio.S3A_CLASS)
    assert sparkio._class_loadable(spark, "org.apache.hadoop.fs.RawLocalFileSystem")
    try:
        assert sparkio.s3_connector(spark) is None
        spark.conf.set(sparkio.CONNECTOR_CONF, "s3a")
        with pytest.raises(ValueError, match="S3AFileSystem is not on the classpath"):
            sparkio.s3_connector(spark)
        spark.conf.set(sparkio.CONNECTOR_CONF, "s3")
        with pytest.raises(ValueError, match="fs.s3.impl"):
            sparkio.s3_connector(spark)
        spark.conf.set(sparkio.CONNECTOR_CONF, "sideways")
        with pytest.raises(ValueError, match="use one of auto, s3a, s3, none"):
            sparkio.s3_connector(spark)
        hconf.set("fs.s3.impl", "org.apache.hadoop.fs.RawLocalFileSystem")  # as EMRFS / Databricks set it
        for choice, want in (("auto", "s3"), ("s3", "s3"), ("none", None)):
            spark.conf.set(sparkio.CONNECTOR_CONF, choice)
            assert sparkio.s3_connector(spark) == want, choice
        hconf.set("fs.s3.impl", "com.example.NoSuchFileSystem")
        spark.conf.set(sparkio.CONNECTOR_CONF, "auto")
        assert sparkio.s3_connector(spark) is None  # a name that does not load
    finally:
        hconf.unset("fs.s3.impl")
        spark.conf.unset(sparkio.CONNECTOR_CONF)
    assert sparkio.hadoop_uri("s3://bucket/a/b/", "s3a") == "s3a://bucket/a/b"
    assert sparkio.hadoop_uri("s3://bucket/a", "s3") == "s3://bucket/a"


def test_connector_branch_round_trip_through_sparks_reader(spark, s3_index, tmp_path):
    """The functions the connector branch runs (Spark's writer and reader on a Hadoop URI, the file column
    taken from ``input_file_name``) on a ``file://`` URI, since no S3 connector jar is available offline: the rows
    and per-file paths equal the store reader's over the same shards on the real S3 server."""
    uri, version, _ = s3_index
    manifest = ix.read_manifest(uri, version)
    files = [f["path"] for p in manifest["partitions"] for f in p["files"]]
    root = ix.version_prefix(uri, version)
    cols = ["id", "code", "address", "word_ids"]
    want = sparkio._read_with_store(spark, root, files, cols, path_column=True)
    target = sparkio.hadoop_uri(str(tmp_path / "copy"), None)
    assert target.startswith("file:///")
    sparkio._write_with_spark(want.drop(sparkio.PATH_COLUMN).repartition(3), "copy", target)
    back = sparkio._read_with_spark(spark, "copy", target, [""], cols, path_column=True).collect()
    key = lambda r: r["id"]  # noqa: E731
    assert [{k: v for k, v in r.asDict().items() if k != sparkio.PATH_COLUMN} for r in sorted(back, key=key)] == [
        {k: v for k, v in r.asDict().items() if k != sparkio.PATH_COLUMN} for r in sorted(want.collect(), key=key)
    ]
    names = {r[sparkio.PATH_COLUMN] for r in back}
    assert (
        len(back) == manifest["count"]
        and len(names) == 3
        and all(n.endswith(".parquet") and "/" not in n for n in names)
    )
    # parts: only those present are read; none at all is a FileNotFoundError naming the root
    part = files[0].split("/")[0]
    by_part = sparkio._read_with_spark(
        spark, root, sparkio.hadoop_uri(ix.version_prefix(_local(s3_index), version), None), [part], ["id"], False
    ).count()
    assert by_part == sum(p["rows"] for p in manifest["partitions"] if f"part={p['partition']}" == part)
    with pytest.raises(FileNotFoundError, match="copy"):
        sparkio._read_with_spark(spark, "copy", target, [], cols, False)


def _local(s3_index):
    return s3_index[2]
