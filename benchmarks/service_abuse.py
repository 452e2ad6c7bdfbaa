"""Abuse load on the lookup service (issue 22): 8 clients x 250 requests on loopback, well-formed queries mixed with
oversized bodies (announced and streamed, with and without the token), pixel bombs and over-limit work. Bounded:
8 x 250 requests, each with a timeout. Reports the service's peak RSS (sampled every 50 ms) and every status seen.

    .venv/bin/python benchmarks/service_abuse.py                  # 8 clients x 250 requests
    .venv/bin/python benchmarks/service_abuse.py --requests 40    # a short run

The service runs as its own process (``python -m semhash_spark.service``, what ``semhash serve`` runs) with a token,
over a published index on a local path. Passes when no well-formed request fails and every abusive one is refused
with 401/403/413/422.
"""

from __future__ import annotations

import argparse
import base64
import collections
import http.client
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "benchmarks")]

from service_load import ServiceProcess  # noqa: E402
from service_util import build_index, text_of  # noqa: E402

TOKEN = "bench-token"
BIG = 105 << 20  # the 105 MB body: announced in full, at most 1 MiB ever sent


def _png_bomb(side: int) -> bytes:
    import io
    import struct
    import zlib

    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (8, 8)).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    i = data.index(b"IHDR")
    data[i + 4 : i + 12] = struct.pack(">II", side, side)
    data[i + 17 : i + 21] = struct.pack(">I", zlib.crc32(bytes(data[i : i + 17])) & 0xFFFFFFFF)
    return bytes(data)


def _request(
    port: int, body: bytes | None, headers: dict, announce: int | None = None, stream: int = 0, timeout: float = 60.0
) -> int:
    """One POST /search; ``announce`` sends a larger Content-Length than the bytes sent, ``stream`` sends that
    many bytes chunked. Returns the status (0 when the connection failed)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        try:
            _send(conn, body, headers, announce, stream)
        except OSError:  # the service answered and closed before the whole body went out: read its answer
            pass
        r = conn.getresponse()
        r.read()
        return r.status
    except (OSError, http.client.HTTPException):
        return 0
    finally:
        conn.close()


def _send(conn, body: bytes | None, headers: dict, announce: int | None, stream: int) -> None:
    headers = {**headers, "Content-Type": "application/json"}
    if stream:

        def chunks():
            yield b'{"texts": ["'
            for _ in range(stream >> 16):
                yield b"a" * (1 << 16)

        conn.request("POST", "/search", body=chunks(), headers=headers, encode_chunked=True)
    elif announce is not None:
        conn.putrequest("POST", "/search")
        for k, v in {**headers, "Content-Length": str(announce)}.items():
            conn.putheader(k, v)
        conn.endheaders()
        conn.send(body)
    else:
        conn.request("POST", "/search", body=body, headers=headers)


def scenario(workdir: Path, clients: int = 8, requests: int = 250) -> dict:
    import psutil

    index = str(workdir / "index")
    info = build_index(index, n=20000, bits=64, address_bits=16, partition_bits=6)
    svc = ServiceProcess(index, {"SEMHASH_TOKEN": TOKEN}, workdir / "service.log")
    try:
        svc.wait_ready()
        proc = psutil.Process(svc.proc.pid)
        auth = {"Authorization": f"Bearer {TOKEN}"}
        codes = [bytes(c).hex() for c in info["codes"][:10_000]]
        bomb = base64.b64encode(_png_bomb(13_000)).decode()
        good = [
            ("codes k=10", json.dumps({"codes": codes[:50], "k": 10}).encode()),
            (
                "texts k=10 tfidf",
                json.dumps({"texts": [text_of(b) for b in info["bags"][:8]], "k": 10, "rerank": "tfidf"}).encode(),
            ),
            ("ids k=5", json.dumps({"ids": info["ids"][:20], "k": 5}).encode()),
        ]
        bulk = ("10,000 codes k=10", json.dumps({"codes": codes, "k": 10}).encode())
        bad = [
            ("105 MB announced, no token", dict(body=b"{" + b" " * (1 << 20), headers={}, announce=BIG)),
            ("105 MB announced, token", dict(body=b"{" + b" " * (1 << 20), headers=auth, announce=BIG)),
            ("16 MB streamed, token", dict(body=None, headers=auth, stream=16 << 20)),
            ("13000x13000 PNG", dict(body=json.dumps({"images": [bomb], "k": 1}).encode(), headers=auth)),
            ("1,000 codes k=1000", dict(body=json.dumps({"codes": codes[:1000], "k": 1000}).encode(), headers=auth)),
        ]
        statuses: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
        lock, peak, stop = threading.Lock(), [proc.memory_info().rss], threading.Event()
        baseline = peak[0]

        def sample():
            while not stop.is_set():
                try:
                    peak[0] = max(peak[0], proc.memory_info().rss)
                except psutil.Error:
                    return
                time.sleep(0.05)

        def client(c: int):
            for i in range(requests):
                if i % 2 == 0:
                    name, body = bulk if (i + c) % 50 == 0 else good[(i // 2 + c) % len(good)]
                    st = _request(svc.port, body, auth, timeout=300)  # a shared 2-core machine
                    name = "good: " + name
                else:
                    name, kw = bad[(i // 2 + c) % len(bad)]
                    st = _request(svc.port, **kw)
                    name = "abuse: " + name
                with lock:
                    statuses[name][st] += 1

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        t0 = time.monotonic()
        threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        seconds = time.monotonic() - t0
        stop.set()
        sampler.join()
    finally:
        svc.stop()
    good_failed = sum(n for k, ctr in statuses.items() if k.startswith("good") for s, n in ctr.items() if s != 200)
    abuse_admitted = sum(
        n
        for k, ctr in statuses.items()
        if k.startswith("abuse")
        for s, n in ctr.items()
        if s not in (401, 403, 413, 422)
    )
    return {
        "clients": clients,
        "requests_per_client": requests,
        "seconds": round(seconds, 1),
        "rss_start_mb": round(baseline / 2**20, 1),
        "rss_peak_mb": round(peak[0] / 2**20, 1),
        "good_failed": good_failed,
        "abuse_not_refused": abuse_admitted,
        "statuses": {k: dict(v) for k, v in sorted(statuses.items())},
        "index_codes": len(info["ids"]),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--requests", type=int, default=250, help="requests per client (half of them abusive)")
    a = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="semhash-abuse-") as tmp:
        report = scenario(Path(tmp), a.clients, a.requests)
    print(json.dumps(report))
    return 0 if report["good_failed"] == 0 and report["abuse_not_refused"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
