"""Installing the package: the wheel ships conf/ and jobs/, and ``semhash_spark[service]`` alone (a fresh virtual
environment: no pyspark, torch or Horovod) serves a published index over HTTP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import tomllib
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("pyspark", "torch", "horovod", "petastorm")
# the interpreters pyproject's requires-python names: this one, and 3.12 where the machine has it
PYTHONS = {"3.11": "python3.11", "3.12": "python3.12"}


def _interpreter(version: str) -> str:
    import shutil

    if sys.version.startswith(version + "."):
        return sys.executable
    candidates = [
        shutil.which(PYTHONS[version]),  # on PATH, else a pyenv-installed one
        *sorted(map(str, Path.home().glob(f".pyenv/versions/{version}.*/bin/{PYTHONS[version]}"))),
    ]
    for found in filter(None, candidates):
        if subprocess.run([found, "-c", "import venv"], capture_output=True).returncode == 0:
            return found
    pytest.skip(f"no Python {version} on this machine")


def test_pyproject_lists_every_package_folder():
    """Packages are listed by hand (conf/ and jobs/ are mapped into the package): a new folder of modules must be
    listed too, or the wheel silently lacks it."""
    tool = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(tool["packages"])
    folders = {
        ".".join(p.parent.relative_to(ROOT).parts)
        for p in (ROOT / "semhash_spark").rglob("*.py")
        if "__pycache__" not in p.parts
    }
    assert folders <= listed, f"not in [tool.setuptools] packages: {sorted(folders - listed)}"
    for name, folder in tool["package-dir"].items():
        assert (ROOT / folder).is_dir() and name in listed


def _clean_env(**extra) -> dict:
    """The environment of a user's shell: no PYTHONPATH pointing at this checkout, no venv of ours."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    return env | extra


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.parametrize("python", sorted(PYTHONS))
def test_service_extra_installs_alone_and_serves_an_index(s3_server, tmp_path, python):
    from service_util import build_index

    from semhash_spark import codes as C

    # the wheel, built from a copy of this checkout (setuptools builds in the tree: no stale build/ may leak in)
    import shutil

    src, dist = tmp_path / "src", tmp_path / "dist"
    shutil.copytree(
        ROOT,
        src,
        ignore=shutil.ignore_patterns(
            ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", "tests", "benchmarks", "infra"
        ),
    )
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(dist), str(src)],
        check=True,
        cwd=tmp_path,
        env=_clean_env(),
    )
    (wheel,) = dist.glob("semhash_spark-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for f in [
        "semhash_spark/conf/images.yaml",
        "semhash_spark/conf/documents.yaml",
        "semhash_spark/jobs/encode.py",
        "semhash_spark/log4j2.properties",
    ]:
        assert f in names, f"{f} is not in {wheel.name}"

    # a fresh environment with the [service] extra only, from pip's own configuration
    venv = tmp_path / "venv"
    subprocess.run([_interpreter(python), "-m", "venv", str(venv)], check=True, env=_clean_env())
    py = venv / "bin" / "python"
    assert "include-system-site-packages = false" in (venv / "pyvenv.cfg").read_text()
    pip = subprocess.run(
        [str(py), "-m", "pip", "install", "-q", f"{wheel}[service]"],
        cwd=tmp_path,
        env=_clean_env(),
        capture_output=True,
        text=True,
    )
    assert pip.returncode == 0, pip.stderr[-3000:]
    listed = subprocess.run(
        [str(py), "-m", "pip", "list", "--format", "json"], check=True, capture_output=True, text=True, env=_clean_env()
    ).stdout
    installed = {p["name"].lower().replace("_", "-"): p["version"] for p in json.loads(listed)}
    assert not [h for h in HEAVY if h in installed], f"[service] pulled in {[h for h in HEAVY if h in installed]}"
    assert "fastapi" in installed and "semhash-spark" in installed

    # the installed package reads its configuration through importlib.resources, not from a checkout
    where = subprocess.run(
        [
            str(py),
            "-c",
            "from semhash_spark.resources import conf_file, job_file; "
            "print(conf_file('images.yaml')); print(job_file('train.py'))",
        ],
        cwd=tmp_path,
        env=_clean_env(),
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert all(p.startswith(str(venv)) and Path(p).is_file() for p in where), where

    # an index on the S3 server, built with this project's environment
    index_uri = f"s3://{s3_server.bucket}/install-test/index"
    built = build_index(index_uri, n=600, bits=32, address_bits=12, partition_bits=3, seed=3)
    port = _free_port()
    log = (tmp_path / "serve.log").open("w")
    proc = subprocess.Popen(
        [str(venv / "bin" / "semhash"), "serve", "--index", index_uri, "--port", str(port), "--cache-bytes", "64M"],
        cwd=tmp_path,
        stdout=log,
        stderr=subprocess.STDOUT,
        env=_clean_env(**s3_server.env),
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 400  # the first load compiles the numba kernels: minutes on a busy host
        while True:
            try:
                with urllib.request.urlopen(f"{base}/healthz", timeout=2) as r:
                    health = json.loads(r.read())
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            assert time.monotonic() < deadline, (tmp_path / "serve.log").read_text()[-3000:]
            time.sleep(0.5)
        assert health["version"] == built["version"] and health["codes"] == 600

        rng = np.random.default_rng(11)
        queries = C.pack_bits(rng.integers(0, 2, size=(5, 32)))
        body = json.dumps({"codes": C.to_hex(queries), "k": 7}).encode()
        req = urllib.request.Request(f"{base}/search", data=body, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as r:
            answer = json.loads(r.read())
        assert answer["version"] == built["version"] and not answer.get("partial")
        d = C.hamming(queries, built["codes"])
        for qi, hits in enumerate(answer["results"]):
            want = np.sort(d[qi])[:7]
            assert [h["distance"] for h in hits] == want.tolist()
            assert all(d[qi, built["ids"].index(h["id"])] == h["distance"] for h in hits)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()
    text = (tmp_path / "serve.log").read_text()
    assert "Traceback" not in text, text[-3000:]
