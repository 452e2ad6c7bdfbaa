"""Shared fixtures: a session-scoped local Spark, the real data directory, a real S3 server on loopback."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def data_dir() -> Path:
    """The real data sets: $SEMHASH_DATA_DIR, else ../shared/data beside the checkout."""
    return Path(os.environ.get("SEMHASH_DATA_DIR", ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    d = data_dir()
    if not d.is_dir():
        pytest.skip(f"data directory {d} not found (set SEMHASH_DATA_DIR)")
    return d


@pytest.fixture(scope="session")
def spark():
    from semhash_spark.spark import get_spark

    session = get_spark("semhash-tests", master="local[2]")
    yield session
    session.stop()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A real SeaweedFS S3 server on loopback; yields it with its env (endpoint, keys) applied to os.environ."""
    from semhash_spark.embedded import LocalS3Server

    server = LocalS3Server(tmp_path_factory.mktemp("s3data"))
    server.start()
    saved = {k: os.environ.get(k) for k in server.env}
    os.environ.update(server.env)
    try:
        yield server
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
