"""Files shipped with the package: ``conf/*.yaml``, the ``jobs/*.py`` spark-submit entry points, and the log4j2
configuration given to Spark.

An installed wheel holds them inside the package (``semhash_spark/conf``, ``semhash_spark/jobs``: pyproject maps the
checkout's top-level ``conf/`` and ``jobs/`` there); a checkout on ``PYTHONPATH`` has them beside the package.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

_CHECKOUT = Path(__file__).resolve().parents[1]


def _find(folder: str, name: str) -> Path:
    packaged = resources.files("semhash_spark").joinpath(folder, name)
    if packaged.is_file():
        return Path(str(packaged))
    checkout = _CHECKOUT / folder / name
    if checkout.is_file():
        return checkout
    raise FileNotFoundError(
        f"{folder}/{name} is neither in the installed package ({packaged}) nor in a checkout "
        f"({checkout}): reinstall semhash_spark, or pass the file explicitly"
    )


def conf_file(name: str) -> Path:
    """A configuration shipped with the project, e.g. ``conf_file("images.yaml")``."""
    return _find("conf", name)


def job_file(name: str) -> Path:
    """A spark-submit entry point, e.g. ``job_file("encode.py")`` (``spark-submit $(...) ARGS``)."""
    return _find("jobs", name)


def log4j2_file() -> Path:
    """The log4j2 configuration handed to Spark's driver: warnings and errors, without routine start-up noise."""
    return Path(str(resources.files("semhash_spark").joinpath("log4j2.properties")))
