"""Load test of the lookup service: a fixed request rate on loopback while a new version is published and the S3
server is restarted. Bounded: ``rate * duration`` requests at most, each with a timeout; stops by itself.

    .venv/bin/python benchmarks/service_load.py                 # 60 s at 50 requests/s
    .venv/bin/python benchmarks/service_load.py --duration 10   # the short variant (tests/test_service_load.py)

The service runs as its own process (``python -m semhash_spark.service``, what ``semhash serve`` runs) against a
real SeaweedFS S3 server (:class:`semhash_spark.embedded.LocalS3Server`) on 127.0.0.1. The schedule is open-loop
(request i is due at ``i / rate``); latency counts from the due time, so a stall shows up. Prints one JSON report.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from load_util import passed, scenario  # noqa: E402  (the scenario, shared with tests/test_service_load.py)
from semhash_spark.embedded import LocalS3Server  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--duration", type=float, default=60.0)
    p.add_argument("--rate", type=float, default=50.0, help="requests per second (open loop)")
    p.add_argument("--codes", type=int, default=20000, help="codes in each published version")
    p.add_argument("--threads", type=int, default=8)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="semhash-load-") as d:
        with LocalS3Server(Path(d) / "s3") as s3:
            os.environ.update(s3.env)
            report = scenario(s3, Path(d), duration=args.duration, rate=args.rate, n=args.codes,
                              threads=args.threads)
    print(json.dumps(report, indent=1))
    return 0 if passed(report) else 1


if __name__ == "__main__":
    sys.exit(main())
