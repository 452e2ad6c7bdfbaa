"""semhash_spark: semantic hashing on Spark."""

from importlib import metadata as _metadata

try:
    __version__ = _metadata.version("semhash_spark")
except _metadata.PackageNotFoundError:  # a checkout on PYTHONPATH, not installed
    __version__ = "0+unknown"


def __getattr__(name: str):
    """``semhash_spark.read_documents``, imported on first use (it needs pyspark; the lookup service does not)."""
    if name == "read_documents":
        from semhash_spark.data.documents import read_documents

        return read_documents
    raise AttributeError(f"module 'semhash_spark' has no attribute {name!r}")


__all__ = ["__version__", "read_documents"]
