"""Start-up of a lookup process, two checkouts side by side: the service until ready, and one `semhash query --server`.

    .venv/bin/python benchmarks/query_startup.py --index INDEX_URI --before OLD_CHECKOUT [--repeats 5]

For each checkout (``--before``, then this one; ``PYTHONPATH`` points the same interpreter at it): starts
``python -m semhash_spark.service --index INDEX_URI`` and times it from launch to ``/readyz`` answering ready
(the version loaded with its model), then times ``repeats`` runs of ``python -m semhash_spark.cli query --server
URL --text T --json`` from launch to exit, and counts the modules whose top package is ``torch`` or ``pyspark``
that each command imported (``python -X importtime``). The checkouts alternate run by run, so load on the machine
falls on both alike. Prints one JSON report with medians and ratios (before / after).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from semhash_spark.client import SemhashClient, ServiceError  # noqa: E402
from semhash_spark.service.app import free_port  # noqa: E402

HEAVY = ("torch", "pyspark")


def _env(tree: Path) -> dict:
    return {**os.environ, "PYTHONPATH": str(tree), "SPARK_LOCAL_IP": "127.0.0.1"}


def _heavy_modules(importtime_stderr: str) -> dict[str, int]:
    names = [l.split("|")[-1].strip() for l in importtime_stderr.splitlines() if l.startswith("import time:")]
    return {h: sum(1 for n in names if n.split(".")[0] == h) for h in HEAVY}


def service_ready_s(tree: Path, index: str, log: Path) -> tuple[float, dict, subprocess.Popen, str]:
    port = free_port()
    cmd = [
        sys.executable,
        "-X",
        "importtime",
        "-m",
        "semhash_spark.service",
        "--index",
        index,
        "--port",
        str(port),
        "--log-level",
        "warning",
    ]
    f = open(log, "w")
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, env=_env(tree), cwd=str(tree), stdout=f, stderr=subprocess.STDOUT)
    client = SemhashClient(f"http://127.0.0.1:{port}", timeout=2)
    while time.monotonic() - t0 < 180:
        if proc.poll() is not None:
            raise RuntimeError(f"service of {tree} exited with {proc.returncode}; see {log}")
        try:
            body = client.ready()
            if body.get("ready", True):
                return time.monotonic() - t0, body, proc, f"http://127.0.0.1:{port}"
        except (ServiceError, OSError):
            pass
        time.sleep(0.02)
    proc.kill()
    raise RuntimeError(f"service of {tree} not ready in 180 s")


def query_s(tree: Path, url: str, text: str) -> tuple[float, dict[str, int]]:
    cmd = [
        sys.executable,
        "-X",
        "importtime",
        "-m",
        "semhash_spark.cli",
        "query",
        "--server",
        url,
        "--text",
        text,
        "--k",
        "5",
        "--json",
    ]
    t0 = time.monotonic()
    proc = subprocess.run(cmd, env=_env(tree), cwd=str(tree), capture_output=True, text=True, timeout=120)
    dt = time.monotonic() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"query with {tree} failed: {proc.stderr[-2000:]}")
    json.loads(proc.stdout.strip().splitlines()[-1])
    return dt, _heavy_modules(proc.stderr)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--index", required=True, help="a published document index (local path or s3://)")
    p.add_argument("--before", required=True, help="the checkout to compare with (e.g. a git archive of main)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--text", default="the space shuttle launch was delayed by the weather")
    p.add_argument("--workdir", default="/tmp/engines/query_startup")
    args = p.parse_args()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    trees = {"before": Path(args.before).resolve(), "after": ROOT}
    ready: dict[str, list[float]] = {k: [] for k in trees}
    queries: dict[str, list[float]] = {k: [] for k in trees}
    heavy: dict[str, dict] = {}
    for r in range(args.repeats):
        for name, tree in trees.items():
            log = work / f"service-{name}-{r}.log"
            dt, _, proc, url = service_ready_s(tree, args.index, log)
            ready[name].append(dt)
            try:
                qt, mods = query_s(tree, url, args.text)
            finally:
                proc.terminate()
                proc.wait(timeout=30)
            queries[name].append(qt)
            heavy[f"query_{name}"] = mods
            heavy[f"service_{name}"] = _heavy_modules(log.read_text(errors="replace"))
    med = lambda xs: round(statistics.median(xs), 3)  # noqa: E731
    report = {
        "repeats": args.repeats,
        "index": args.index,
        "service_ready_s": {k: med(v) for k, v in ready.items()},
        "query_server_s": {k: med(v) for k, v in queries.items()},
        "ratio_before_over_after": {
            "service_ready": round(med(ready["before"]) / med(ready["after"]), 2),
            "query_server": round(med(queries["before"]) / med(queries["after"]), 2),
        },
        "heavy_modules_imported": heavy,
        "all_s": {"ready": ready, "query": queries},
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
