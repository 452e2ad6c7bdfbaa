"""Airflow DAG: nightly re-index of the semhash index, then the near-duplicate report of the new version.

Copy into the Airflow dags folder (needs apache-airflow-providers-apache-spark and a ``spark_default``
connection). ``max_active_runs=1`` keeps one re-index per index at a time; a failed or killed run is safe to
retry, since ``CURRENT`` only moves on a complete publish.
"""

from datetime import datetime, timedelta

from airflow import DAG
from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator

REPO = "/opt/semhash"
DATA = "s3://semhash/corpus/tonight"
MODEL = "s3://semhash/models/current"
INDEX = "s3://semhash/index"

with DAG(
    dag_id="semhash_nightly_reindex",
    schedule="30 2 * * *",
    start_date=datetime(2024, 1, 1),
    catchup=False,
    max_active_runs=1,
    default_args={"retries": 2, "retry_delay": timedelta(minutes=10)},
    tags=["semhash"],
) as dag:
    reindex = SparkSubmitOperator(
        task_id="reindex",
        application=f"{REPO}/jobs/reindex.py",
        application_args=["--data", DATA, "--model", MODEL, "--index", INDEX, "--retention-days", "7"],
        conn_id="spark_default",
    )
    dedup = SparkSubmitOperator(
        task_id="dedup",
        application=f"{REPO}/jobs/dedup.py",
        application_args=[
            "--index",
            INDEX,
            "--radius",
            "3",
            "--out",
            "s3://semhash/reports/dedup",
            "--verify",
            "cosine:0.9",
        ],
        conn_id="spark_default",
    )
    reindex >> dedup
