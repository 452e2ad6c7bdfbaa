"""Building the SparkSession the jobs run in (local by default; any master through spark-submit)."""
from __future__ import annotations

import os
import sys

from pyspark.sql import SparkSession


def get_spark(app_name: str = "semhash", master: str | None = None, conf: dict[str, str] | None = None) -> SparkSession:
    """Returns the active session, or builds one.

    Under ``spark-submit`` the master comes from the submit command; run directly (tests, ``semhash`` CLI),
    ``master`` defaults to ``local[2]``. Python workers use this interpreter, so the venv's packages are there.
    """
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYARROW_IGNORE_TIMEZONE", "1")
    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    builder = SparkSession.builder.appName(app_name)
    if master is None and "spark.master" not in (conf or {}) and not os.environ.get("SEMHASH_UNDER_SUBMIT"):
        master = os.environ.get("SEMHASH_SPARK_MASTER", "local[2]")
    if master:
        builder = builder.master(master)
    defaults = {
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.sql.execution.arrow.maxRecordsPerBatch": "4096",
        "spark.sql.shuffle.partitions": "8",
        "spark.ui.showConsoleProgress": "false",
        "spark.driver.memory": os.environ.get("SEMHASH_DRIVER_MEMORY", "2g"),
        "spark.python.worker.reuse": "true",
        "spark.driver.host": os.environ.get("SPARK_LOCAL_IP", "127.0.0.1"),
        "spark.driver.bindAddress": os.environ.get("SPARK_LOCAL_IP", "127.0.0.1"),
    }
    for k, v in {**defaults, **(conf or {})}.items():
        builder = builder.config(k, v)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel(os.environ.get("SEMHASH_SPARK_LOG_LEVEL", "WARN"))
    return spark
