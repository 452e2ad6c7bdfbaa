"""The service load scenario (tests/test_service_load.py and benchmarks/service_load.py): a fixed request rate on
loopback against ``python -m semhash_spark.service`` while a new version is published and the S3 server restarted."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from semhash_spark.client import SemhashClient, ServiceError
from semhash_spark.io.embedded import LocalS3Server
from semhash_spark.service.app import free_port
from service_util import build_index

ROOT = Path(__file__).resolve().parents[1]


def run_load(
    url: str, bodies: list[dict], rate: float, duration: float, events=(), threads: int = 8, timeout: float = 10.0
) -> dict:
    """Sends ``bodies`` round-robin at ``rate`` per second for ``duration`` seconds; runs each ``(at_s, name, fn)``
    of ``events`` in its own thread at its time. Returns counts, latencies, versions seen and errors."""
    total = int(rate * duration)
    t0 = time.monotonic() + 0.2
    lock = threading.Lock()
    nxt = [0]
    records: list[tuple[float, float, int, str | None, bool, str | None, float, float]] = []

    def worker():
        c = SemhashClient(url, timeout=timeout, retries=0)  # every error counts
        while True:
            with lock:
                i = nxt[0]
                nxt[0] += 1
            if i >= total:
                return
            due = t0 + i / rate
            time.sleep(max(0.0, due - time.monotonic()))
            body, err, status, version, partial = bodies[i % len(bodies)], None, 0, None, False
            sent = time.monotonic()
            try:
                out = c.request("POST", "/search", body)
                status, version, partial = 200, out["version"], out["partial"]
                tags = {h["id"].split("-")[1] for r in out["results"] for h in r}
                if len(tags) > 1:
                    err = f"mixed versions in one answer: {sorted(tags)}"
            except ServiceError as e:
                status, err = e.status, e.message[:200]
            except Exception as e:  # noqa: BLE001 - a transport failure is an error of the run
                err = f"{type(e).__name__}: {e}"[:200]
            done = time.monotonic()
            with lock:
                records.append((due - t0, done - due, status, version, partial, err, sent, done))

    fired = []

    def fire(at, name, fn):
        time.sleep(max(0.0, t0 + at - time.monotonic()))
        s = time.monotonic()
        try:
            detail = fn()
            fired.append(
                {"event": name, "at_s": round(s - t0, 2), "took_s": round(time.monotonic() - s, 2), "detail": detail}
            )
        except Exception as e:  # noqa: BLE001
            fired.append({"event": name, "at_s": round(s - t0, 2), "error": repr(e)})

    ev_threads = [threading.Thread(target=fire, args=ev, daemon=True) for ev in events]
    workers = [threading.Thread(target=worker, daemon=True) for _ in range(threads)]
    for t in ev_threads + workers:
        t.start()
    for t in workers:
        t.join(timeout=duration + 4 * timeout)
    for t in ev_threads:
        t.join(timeout=60)
    records.sort()
    lat = np.array([r[1] for r in records]) * 1000 if records else np.zeros(1)
    errors = [r for r in records if r[5] is not None]
    versions, stale = _version_order(records)
    span = (records[-1][0] + records[-1][1]) if records else 0.0
    return {
        "planned": total,
        "completed": len(records),
        "errors": len(errors),
        "partial": sum(r[4] for r in records),
        "rate_target": rate,
        "rate_achieved": round(len(records) / max(span, 1e-9), 1),
        "latency_ms": {
            "p50": round(float(np.percentile(lat, 50)), 2),
            "p99": round(float(np.percentile(lat, 99)), 2),
            "max": round(float(lat.max()), 2),
        },
        "versions_in_order": versions,
        "stale_answers": stale,
        "events": fired,
        "first_errors": [r[5] for r in errors[:5]],
    }


def _version_order(records: list[tuple]) -> tuple[list[str], int]:
    """The versions in the order their first answers arrived, and how many answers were stale: an older version
    for a request sent after a newer version's answer had arrived. Only that order is causal; requests sent
    concurrently around a switch may be answered in either version, whatever their scheduled order."""
    answered = sorted((r[7], r[6], r[3]) for r in records if r[3])  # (done, sent, version)
    versions: list[str] = []
    for _, _, v in answered:
        if v not in versions:
            versions.append(v)
    rank = {v: i for i, v in enumerate(versions)}
    dones = np.array([d for d, _, _ in answered])
    newest = np.maximum.accumulate(np.array([rank[v] for _, _, v in answered])) if answered else np.zeros(0, int)
    stale = 0
    for _, sent, v in answered:
        k = int(np.searchsorted(dones, sent, side="left"))  # answers that arrived before this request was sent
        stale += bool(k and newest[k - 1] > rank[v])
    return versions, stale


class ServiceProcess:
    """``python -m semhash_spark.service`` in its own process (stderr to a log file)."""

    def __init__(self, index_uri: str, env: dict, log_path: Path, poll_seconds: float = 0.5):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [
            sys.executable,
            "-m",
            "semhash_spark.service",
            "--index",
            index_uri,
            "--port",
            str(self.port),
            "--poll-seconds",
            str(poll_seconds),
            "--fetch-timeout",
            "2",
            "--log-level",
            "warning",
        ]
        self.log = open(log_path, "ab")
        self.proc = subprocess.Popen(
            cmd,
            env={**os.environ, **env, "PYTHONPATH": str(ROOT)},
            cwd=str(ROOT),
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def wait_ready(self, timeout: float = 90.0) -> dict:
        c = SemhashClient(self.url, timeout=2)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"service exited with {self.proc.returncode}")
            try:
                return c.ready()
            except (ServiceError, OSError):
                time.sleep(0.2)
        raise RuntimeError("service not ready in time")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def scenario(
    s3: LocalS3Server,
    workdir: Path,
    duration: float = 60.0,
    rate: float = 50.0,
    n: int = 20000,
    bits: int = 64,
    threads: int = 8,
) -> dict:
    """The whole run on a started S3 server whose settings are in ``os.environ``: index v1 published, the service
    up, then the load with a new version published at 1/3 of the run and the S3 server restarted at 2/3."""
    uri = s3.uri(f"load-index-{int(time.time() * 1000)}")
    t = time.monotonic()
    v1 = build_index(uri, n=n, bits=bits, address_bits=20, partition_bits=6, seed=1)
    build_s = time.monotonic() - t
    svc = ServiceProcess(uri, {**s3.env, "AWS_MAX_ATTEMPTS": "2"}, workdir / "service.log")
    try:
        svc.wait_ready()
        rng = np.random.default_rng(0)
        bodies = [{"codes": [bytes(v1["codes"][i]).hex()], "k": 10} for i in rng.choice(n, 64, replace=False)]
        bodies += [{"codes": [bytes(v1["codes"][i]).hex()], "radius": 3} for i in rng.choice(n, 32)]
        events = [
            (
                duration / 3,
                "publish v2",
                lambda: build_index(uri, n=n, bits=bits, address_bits=20, partition_bits=6, seed=2)["version"],
            ),
            (2 * duration / 3, "restart S3", lambda: s3.restart() and "restarted"),
        ]
        report = run_load(svc.url, bodies, rate, duration, events=events, threads=threads)
    finally:
        svc.stop()
    report.update(v1=v1["version"], index_codes=n, bits=bits, build_s=round(build_s, 2))
    return report


def passed(report: dict) -> bool:
    """Zero errors, every planned request done, both versions answered and no stale answer after the switch."""
    return (
        report["errors"] == 0
        and report["completed"] == report["planned"]
        and len(report["versions_in_order"]) == 2
        and report["stale_answers"] == 0
    )
