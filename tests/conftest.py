"""Shared fixtures: a session-scoped local Spark, the real data directory, a real S3 server on loopback."""

from __future__ import annotations

import json
import os
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


# The test tiers: `make test` runs everything, `make test-fast` (-m "not slow") leaves out tests marked slow.
# A test is marked slow by hand, or here when it needs a slow fixture (directly or through another fixture) or
# lives in a module that launches training processes through launch_util.
SLOW_FIXTURES = frozenset({"spark", "s3_server", "cluster"})


def pytest_collection_modifyitems(config, items):
    for item in items:
        module = getattr(item, "module", None)
        launches = module is not None and any(
            getattr(v, "__module__", None) == "launch_util" for v in vars(module).values()
        )
        if launches or SLOW_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


def missing_data(reason: str) -> None:
    """Skips a test whose data set is absent; under CI (CI=true) fails instead, so a missing mount is seen."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: the data sets are required)", pytrace=False)
    pytest.skip(reason)


def data_dir() -> Path:
    """The real data sets: $SEMHASH_DATA_DIR, else ../shared/data beside the checkout."""
    return Path(os.environ.get("SEMHASH_DATA_DIR", ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    d = data_dir()
    if not d.is_dir():
        missing_data(f"data directory {d} not found (set SEMHASH_DATA_DIR)")
    return d


@pytest.fixture(scope="session")
def spark():
    from semhash_spark.io.spark import get_spark

    session = get_spark("semhash-tests", master="local[2]")
    yield session
    session.stop()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A real SeaweedFS S3 server on loopback; yields it with its env (endpoint, keys) applied to os.environ."""
    from semhash_spark.io.embedded import LocalS3Server

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


GROUPS = ("rec.sport.hockey", "sci.space", "comp.graphics", "talk.politics.guns")


@pytest.fixture(scope="session")
def small_corpus(shared_data, tmp_path_factory):
    """400 train / 160 test real 20 Newsgroups posts of four groups, as JSONL, plus three bad lines."""
    archive = shared_data / "20newsgroups" / "20news-bydate.tar.gz"
    if not archive.is_file():
        missing_data(f"no 20 Newsgroups archive at {archive}")
    want = {("train", g): 100 for g in GROUPS} | {("test", g): 40 for g in GROUPS}
    out = tmp_path_factory.mktemp("corpus") / "small.jsonl"
    with tarfile.open(archive) as tar, out.open("w") as f:
        for m in tar:
            parts = m.name.split("/")
            if not m.isfile() or len(parts) != 3:
                continue
            split = "train" if parts[0].endswith("train") else "test"
            key = (split, parts[1])
            if want.get(key, 0) <= 0:
                continue
            want[key] -= 1
            text = tar.extractfile(m).read().decode("latin-1")
            f.write(
                json.dumps({"id": f"{parts[1]}/{parts[2]}", "text": text, "labels": [parts[1]], "split": split}) + "\n"
            )
        f.write('{"id": "broken", "text": \n')  # invalid JSON
        f.write(json.dumps({"id": "nothing", "text": "the of and", "labels": ["x"], "split": "train"}) + "\n")
        f.write(json.dumps({"text": "no id here", "labels": []}) + "\n")
    return out


@pytest.fixture(scope="session")
def small_dataset(spark, small_corpus, tmp_path_factory):
    """The small corpus prepared (500-word vocabulary) into a local dataset folder."""
    from semhash_spark.config import PrepareConfig
    from semhash_spark.data.prepare import prepare_dataset

    out = tmp_path_factory.mktemp("small-dataset")
    prepare_dataset(spark, "jsonl", str(small_corpus), str(out), PrepareConfig(vocab_size=500, files_per_split=4))
    return out
