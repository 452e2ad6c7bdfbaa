"""``semhash prepare`` from a local archive to a local dataset vs from ``s3://`` to ``s3://`` (local[2]).

    .venv/bin/python benchmarks/prepare_s3_bench.py [--archive .../20news-bydate.tar.gz]

Starts the embedded S3 server (SeaweedFS on loopback), uploads the archive, then runs the two ``semhash prepare``
commands as a user would (each its own process and JVM): the local run streams the archive on the driver, the S3
run has a task read the object and the executors write the dataset's objects. Prints one JSON line per run with
the wall time, the 1-minute load average before and after, and the job's summary (whose vocabulary fingerprint
must be the same).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from semhash_spark.io import store  # noqa: E402
from semhash_spark.io.embedded import LocalS3Server  # noqa: E402


def _load() -> str:
    return open("/proc/loadavg").read().split()[0]


def main() -> None:
    ap = argparse.ArgumentParser()
    data = Path(os.environ.get("SEMHASH_DATA_DIR", ROOT.parent / "shared" / "data"))
    ap.add_argument("--archive", default=str(data / "20newsgroups" / "20news-bydate.tar.gz"))
    ap.add_argument("--dataset", default="20ng")
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="prepare-s3-bench-")
    server = LocalS3Server(os.path.join(tmp, "s3"))
    server.start()
    os.environ.update(server.env)
    try:
        store.ensure_bucket("semhash")
        name = os.path.basename(args.archive)
        store.upload_file(args.archive, f"s3://semhash/raw/{name}")
        runs = [
            ("local", args.archive, os.path.join(tmp, "local")),
            ("s3", f"s3://semhash/raw/{name}", "s3://semhash/data/bench"),
        ]
        for run, source, out in runs:
            before, t0 = _load(), time.time()
            p = subprocess.run(
                [
                    str(ROOT / ".venv" / "bin" / "semhash"),
                    "prepare",
                    "--dataset",
                    args.dataset,
                    "--source",
                    source,
                    "--out",
                    out,
                ],
                capture_output=True,
                text=True,
            )
            seconds = round(time.time() - t0, 1)
            last = (p.stdout.strip().splitlines() or [""])[-1] if p.returncode == 0 else p.stderr[-500:]
            print(
                json.dumps(
                    {
                        "run": run,
                        "seconds": seconds,
                        "load1_before": before,
                        "load1_after": _load(),
                        "rc": p.returncode,
                        "summary": json.loads(last) if p.returncode == 0 else last,
                    }
                ),
                flush=True,
            )
    finally:
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
