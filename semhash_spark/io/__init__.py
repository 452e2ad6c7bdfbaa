"""The edges to storage and compute engines: ``store`` (the only object-store code: local paths and ``s3://`` URIs,
atomic writes, checksums, staging), ``spark`` (the SparkSession with its defaults and logging), ``sparkio`` (Parquet
under store URIs as DataFrames on any master) and ``embedded`` (a real S3 server on loopback for the demo and
tests). It imports no other subpackage, only the top-level modules ``config``, ``codes``, ``resources``,
``progress`` (checked by tests/test_layout.py).
"""
