"""Building the SparkSession the jobs run in (local by default; any master through spark-submit)."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
from typing import Iterator

from pyspark import SparkConf, SparkContext
from pyspark.sql import SparkSession

log = logging.getLogger(__name__)


def get_spark(app_name: str = "semhash", master: str | None = None, conf: dict[str, str] | None = None) -> SparkSession:
    """Returns the active session, or builds one.

    Run directly (tests, ``semhash`` CLI), ``master`` defaults to ``local[2]`` on loopback and Python workers use
    this interpreter, so the venv's packages are there. Under ``spark-submit`` (``SEMHASH_UNDER_SUBMIT``, set by
    ``jobs/*.py``) the master, the driver's address and memory and the executors' Python come from the submit
    command and its properties file: the defaults below only fill in settings it left unset, and the driver is
    never pinned to loopback (executors on other hosts must reach it).
    """
    under_submit = bool(os.environ.get("SEMHASH_UNDER_SUBMIT"))
    if not under_submit:
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)  # spark.pyspark.python (submit) sets it first
    os.environ.setdefault("PYARROW_IGNORE_TIMEZONE", "1")
    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    builder = SparkSession.builder.appName(app_name)
    if master is None and "spark.master" not in (conf or {}) and not under_submit:
        master = os.environ.get("SEMHASH_SPARK_MASTER", "local[2]")
    if master:
        builder = builder.master(master)
    defaults = {
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.sql.execution.arrow.maxRecordsPerBatch": "4096",
        "spark.sql.shuffle.partitions": "8",
        "spark.ui.showConsoleProgress": "false",  # progress is logged by spark_progress() instead
        "spark.python.worker.reuse": "true",
    }
    if under_submit:
        SparkContext._ensure_initialized()  # joins spark-submit's JVM, which holds its settings
        submitted = SparkConf()  # spark-submit's --conf and properties file
        defaults = {k: v for k, v in defaults.items() if not submitted.contains(k)}
    else:
        defaults.update(
            {
                "spark.driver.memory": os.environ.get("SEMHASH_DRIVER_MEMORY", "2g"),
                "spark.driver.host": os.environ.get("SPARK_LOCAL_IP", "127.0.0.1"),
                "spark.driver.bindAddress": os.environ.get("SPARK_LOCAL_IP", "127.0.0.1"),
            }
        )
    settings = {**defaults, **(conf or {})}
    java_opts = settings.get("spark.driver.extraJavaOptions", "")
    if not under_submit and "log4j2.configurationFile" not in java_opts:
        # the JVM starts with this (pyspark passes the builder's settings to spark-submit): no banner, no routine WARNs
        settings["spark.driver.extraJavaOptions"] = f"{java_opts} {_log4j2_option()}".strip()
    for k, v in settings.items():
        builder = builder.config(k, v)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel(os.environ.get("SEMHASH_SPARK_LOG_LEVEL", "WARN"))
    describe_jobs(app_name.replace("-", " "), spark)
    return spark


def _log4j2_option() -> str:
    from semhash_spark.resources import log4j2_file

    return f"-Dlog4j2.configurationFile={log4j2_file().as_uri()}"


def describe_jobs(name: str, spark: SparkSession | None = None) -> None:
    """Names the Spark jobs this thread runs from now on after a stage of the project (``semhash encode: shards``):
    the job description in the UI and the stage names that :func:`spark_progress` logs, instead of call sites such as
    ``parquet at NativeMethodAccessorImpl.java:0``."""
    sc = spark.sparkContext if spark is not None else SparkContext._active_spark_context
    if sc is None:
        return
    sc.setJobDescription(name)
    sc.setLocalProperty("callSite.short", name)
    sc.setLocalProperty("callSite.long", name)


@contextlib.contextmanager
def stage(name: str) -> Iterator[None]:
    """:func:`describe_jobs` for the jobs of one block; the previous names come back after it."""
    sc = SparkContext._active_spark_context
    if sc is None:
        yield
        return
    keys = ("spark.job.description", "callSite.short", "callSite.long")
    before = {k: sc.getLocalProperty(k) for k in keys}
    outer = before["spark.job.description"]  # the command's name: "semhash prepare: write Parquet ..."
    describe_jobs(f"{outer}: {name}" if outer and not name.startswith(outer) else name)
    try:
        yield
    finally:
        for k, v in before.items():
            sc.setLocalProperty(k, v)


@contextlib.contextmanager
def spark_progress(every_seconds: float = 10.0) -> Iterator[None]:
    """While the block runs, logs the running Spark stages of this process's SparkContext (whenever one exists)
    every ``every_seconds`` -- ``stage 3 (mapInPandas at encode.py:140): 17/64 tasks, 2 running`` -- and a line
    when a stage ends; nothing while no stage runs.

    Read from the status tracker, so it works on any master and in logs where the console bar would not.
    """
    if every_seconds <= 0:
        yield
        return
    stop = threading.Event()

    def line(info) -> str:
        failed = f", {info.numFailedTasks} failed" if info.numFailedTasks else ""
        return (
            f"stage {info.stageId} ({info.name}): {info.numCompletedTasks}/{info.numTasks} tasks, "
            f"{info.numActiveTasks} running{failed}"
        )

    def poll() -> None:
        last, seen = 0.0, {}
        while not stop.wait(1.0):
            sc = SparkContext._active_spark_context
            if sc is None:
                continue
            try:
                tracker = sc.statusTracker()
                active = {i: tracker.getStageInfo(i) for i in tracker.getActiveStageIds()}
            except Exception:  # the context is stopping
                continue
            active = {i: info for i, info in active.items() if info is not None}
            for i in [i for i in seen if i not in active]:
                log.info("stage %d (%s) done: %d tasks", i, *seen.pop(i))
            now = time.monotonic()
            if active and now - last >= every_seconds:
                last = now
                for info in active.values():
                    log.info("%s", line(info))
            seen.update({i: (info.name, info.numTasks) for i, info in active.items()})

    thread = threading.Thread(target=poll, name="spark-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)
