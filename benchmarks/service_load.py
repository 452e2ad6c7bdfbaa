"""Load test of the lookup service: a fixed request rate on loopback while a new version is published and the S3
server is restarted. Bounded: ``rate * duration`` requests at most, each with a timeout; stops by itself.

    .venv/bin/python benchmarks/service_load.py                 # 60 s at 50 requests/s
    .venv/bin/python benchmarks/service_load.py --duration 10   # the short variant (tests/test_service_load.py)
    .venv/bin/python benchmarks/service_load.py --throughput    # side by side: library, service, bare framework

``--throughput`` builds one index as ``semhash encode`` lays it out by default (64-bit codes, 20-bit address, 8
partition bits: about 255 partitions at 18,846 codes) on a local path and reports, on the same queries: the
library's in-process queries/s (one query a call, and batches), the service's requests/s with 1 and 8 closed-loop
keep-alive clients (single-query requests), the service's queries/s with batched requests (packed codes), and a
bare FastAPI endpoint's requests/s (the HTTP stack's floor), each with p50/p99; and the ratios.

The service runs as its own process (``python -m semhash_spark.service``, what ``semhash serve`` runs) against a
real SeaweedFS S3 server (:class:`semhash_spark.io.embedded.LocalS3Server`) on 127.0.0.1. The schedule is open-loop
(request i is due at ``i / rate``); latency counts from the due time, so a stall shows up. Prints one JSON report.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from fastapi import Request, Response

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from load_util import ServiceProcess, passed, scenario  # noqa: E402  (shared with tests/test_service_load.py)
from semhash_spark.client import SemhashClient, ServiceError  # noqa: E402
from semhash_spark.io.embedded import LocalS3Server  # noqa: E402
from semhash_spark.service.app import free_port  # noqa: E402
from service_util import build_index  # noqa: E402


# ---------------------------------------------------------------------------------------------- throughput


def bare_app():
    """The floor: one async FastAPI route that reads its body and answers a small orjson document."""
    import orjson
    from fastapi import FastAPI

    app = FastAPI()

    @app.post("/search")
    async def search(request: Request) -> Response:
        await request.body()
        return Response(orjson.dumps({"version": "bare", "results": [[]]}), media_type="application/json")

    @app.get("/readyz")
    async def ready() -> dict:
        return {"status": "ok"}

    return app


def closed_loop(url: str, send, clients: int, seconds: float) -> dict:
    """``clients`` threads, each with its own keep-alive client, calling ``send(client, i)`` for ``seconds``."""
    lat: list[float] = []
    errors = []
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def worker(w):
        c = SemhashClient(url, timeout=10, retries=0)
        mine, i = [], w
        while time.monotonic() < stop:
            t = time.perf_counter()
            try:
                send(c, i)
                mine.append(time.perf_counter() - t)
            except (ServiceError, OSError) as e:
                with lock:
                    errors.append(repr(e)[:200])
            i += clients
        with lock:
            lat.extend(mine)

    t0 = time.monotonic()
    ts = [threading.Thread(target=worker, args=(w,)) for w in range(clients)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    wall = time.monotonic() - t0
    a = np.array(lat) * 1000 if lat else np.zeros(1)
    return {
        "clients": clients,
        "requests": len(lat),
        "per_s": round(len(lat) / wall, 1),
        "errors": len(errors),
        "p50_ms": round(float(np.median(a)), 3),
        "p99_ms": round(float(np.percentile(a, 99)), 3),
        "first_errors": errors[:3],
    }


def throughput(workdir: Path, n: int = 18846, seconds: float = 10.0, batch: int = 1000, seed: int = 0) -> dict:
    from semhash_spark import codes as C
    from semhash_spark.index import query as Q
    from semhash_spark.service.settings import Settings
    from semhash_spark.service.runtime import Service

    uri = str(workdir / "index")
    info = build_index(uri, n=n, vocab_size=300, bits=64, address_bits=20, partition_bits=8, seed=seed)
    db = info["codes"]
    rng = np.random.default_rng(seed)
    bits01 = C.unpack_bits(db[rng.choice(n, 20000)], 64)
    q = C.pack_bits(bits01 ^ (rng.random(bits01.shape) < 0.03))  # indexed codes with about 2 bits flipped
    hexes = C.to_hex(q)
    report: dict = {"codes": n, "seconds_per_case": seconds, "batch": batch, "k": 10}

    # the library in-process, over the same loaded partitions as the service's one structure
    svc = Service(Settings(index_uri=uri, log_requests=False))
    assert svc.poll(), "version did not load"
    v = svc.current
    loaded = v.current_structure()
    report["partitions"] = v.npartitions
    Q.answer(loaded, q[:1], k=10)
    lat = []
    stop = time.monotonic() + seconds
    i = 0
    while time.monotonic() < stop:
        t = time.perf_counter()
        Q.answer(loaded, q[i % len(q) : i % len(q) + 1], k=10)
        lat.append(time.perf_counter() - t)
        i += 1
    a = np.array(lat) * 1000
    report["library_single"] = {
        "per_s": round(len(a) / (a.sum() / 1000), 1),
        "p50_ms": round(float(np.median(a)), 3),
        "p99_ms": round(float(np.percentile(a, 99)), 3),
    }
    t = time.perf_counter()
    for j in range(0, len(q), batch):
        Q.answer(loaded, q[j : j + batch], k=10)
    report["library_batched_qps"] = round(len(q) / (time.perf_counter() - t), 1)
    svc.stop()
    H = C.hamming(q[:20], db)

    def one(c, i):
        return c.search(codes=[hexes[i % len(hexes)]], k=10)

    def many(c, i):
        j = (i * batch) % (len(q) - batch)
        return c.search_codes(q[j : j + batch], k=10)

    proc = ServiceProcess(uri, {}, workdir / "service.log")
    try:
        proc.wait_ready()
        c = SemhashClient(proc.url)
        for j in range(20):  # answers are exact before anything is timed
            assert [h["distance"] for h in one(c, j)["results"][0]] == sorted(H[j])[:10], "service answer differs"
        report["service_1_client"] = closed_loop(proc.url, one, 1, seconds)
        report["service_8_clients"] = closed_loop(proc.url, one, 8, seconds)
        b = closed_loop(proc.url, many, 2, seconds)
        b["queries_per_s"] = round(b["per_s"] * batch, 1)
        report["service_batched_2_clients"] = b
    finally:
        proc.stop()
    port = free_port()
    bare = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), "--bare-server", str(port)],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        cwd=str(ROOT),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    burl = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                SemhashClient(burl, timeout=2, retries=0).ready()
                break
            except (ServiceError, OSError):
                if time.monotonic() > deadline:
                    raise RuntimeError("bare server did not start") from None
                time.sleep(0.2)
        report["bare_1_client"] = closed_loop(burl, one, 1, seconds)
        report["bare_8_clients"] = closed_loop(burl, one, 8, seconds)
    finally:
        bare.terminate()
        bare.wait(timeout=15)
    report["ratio_service_over_bare_8_clients"] = round(
        report["service_8_clients"]["per_s"] / max(report["bare_8_clients"]["per_s"], 1e-9), 3
    )
    report["ratio_service_8_over_library_single"] = round(
        report["service_8_clients"]["per_s"] / report["library_single"]["per_s"], 3
    )
    return report


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--duration", type=float, default=60.0)
    p.add_argument("--rate", type=float, default=50.0, help="requests per second (open loop)")
    p.add_argument("--codes", type=int, default=20000, help="codes in each published version")
    p.add_argument("--threads", type=int, default=8)
    p.add_argument("--throughput", action="store_true", help="side by side: library, service, bare framework")
    p.add_argument("--seconds", type=float, default=10.0, help="--throughput: seconds per case")
    p.add_argument("--n", type=int, default=18846, help="--throughput: codes in the index")
    p.add_argument("--batch", type=int, default=1000, help="--throughput: queries per batched request")
    p.add_argument("--bare-server", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.bare_server:
        import uvicorn

        uvicorn.run(bare_app(), host="127.0.0.1", port=args.bare_server, log_level="warning", access_log=False)
        return 0
    if args.throughput:
        with tempfile.TemporaryDirectory(prefix="semhash-throughput-") as d:
            report = throughput(Path(d), n=args.n, seconds=args.seconds, batch=args.batch)
        print(json.dumps(report, indent=1))
        return 0 if report["service_8_clients"]["errors"] == 0 else 1
    with tempfile.TemporaryDirectory(prefix="semhash-load-") as d:
        with LocalS3Server(Path(d) / "s3") as s3:
            os.environ.update(s3.env)
            report = scenario(s3, Path(d), duration=args.duration, rate=args.rate, n=args.codes, threads=args.threads)
    print(json.dumps(report, indent=1))
    return 0 if passed(report) else 1


if __name__ == "__main__":
    sys.exit(main())
