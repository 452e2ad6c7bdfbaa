"""A small client of the lookup service (standard library only) and ``semhash query --server URL``.

    c = SemhashClient("http://127.0.0.1:8080", token=None)
    c.health()                                   # {"status": "ok", "version": ..., ...}
    c.search(texts=["gpu driver crash"], k=10)   # {"version": ..., "results": [[{"id", "distance"}, ...]], ...}

One keep-alive connection per client; a client is not meant to be shared between threads. Requests that meet a
503 or a connection error are retried with exponential backoff (a search is idempotent).

Bulk use: :meth:`SemhashClient.search_many` streams any number of queries in batches;
:meth:`SemhashClient.search_codes` sends packed codes as one binary body; :func:`spark_search` returns the
function for ``DataFrame.mapInPandas`` (one client per Python worker, reused across its tasks).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import sys
import threading
import time
from typing import Any, Iterable, Iterator, Sequence
from urllib.parse import urlsplit


class ServiceError(RuntimeError):
    """The service answered with an error status; ``status`` and the service's message are kept."""

    def __init__(self, status: int, message: str):
        self.status, self.message = status, message
        super().__init__(f"HTTP {status}: {message}")


class SemhashClient:
    def __init__(
        self, url: str, token: str | None = None, timeout: float = 30.0, retries: int = 4, backoff_s: float = 0.2
    ):
        parts = urlsplit(url if "://" in url else "http://" + url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not a service URL: {url!r} (expected http://host:port)")
        self.scheme, self.host = parts.scheme, parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.base = parts.path.rstrip("/")
        self.token, self.timeout = token, timeout
        self.retries, self.backoff_s = max(0, int(retries)), float(backoff_s)
        self._conn: http.client.HTTPConnection | None = None

    # ------------------------------------------------------------------ API
    def search(
        self,
        *,
        ids: Sequence[str] | None = None,
        texts: Sequence[str] | None = None,
        codes: Sequence[str] | None = None,
        word_counts: Sequence[dict] | None = None,
        radius: int | None = None,
        k: int | None = None,
        rerank: str | None = None,
        eps: float | None = None,
        address_radius: int | None = None,
        images: Sequence[bytes] | None = None,
        msh: bool | None = None,
        details: bool = False,
    ) -> dict:
        """POST /search with exactly one of ids / texts / codes / word_counts / images (image file bytes; ``msh``:
        multiple semantic hashing) (``eps > 0``: k nearest stops early, each result within ``1 + eps`` of the
        true distance of its rank; ``details``: hits carry their stored labels and snippet)."""
        import base64

        body: dict[str, Any] = {}
        if images is not None:
            images = [base64.b64encode(b).decode("ascii") for b in images]
        for name, value in (
            ("ids", ids),
            ("texts", texts),
            ("codes", codes),
            ("word_counts", word_counts),
            ("images", images),
        ):
            if value is not None:
                body[name] = list(value)
        for name, value in (
            ("radius", radius),
            ("address_radius", address_radius),
            ("k", k),
            ("rerank", rerank),
            ("eps", eps),
            ("msh", msh),
        ):
            if value is not None:
                body[name] = value
        if details:  # sent only when asked: older services reject unknown fields
            body["details"] = True
        return self.request("POST", "/search", body)

    def search_codes(
        self,
        codes,
        *,
        k: int | None = None,
        radius: int | None = None,
        address_radius: int | None = None,
        eps: float | None = None,
    ) -> dict:
        """POST /search with ``uint8[n, code_bytes]`` packed codes as one ``application/octet-stream`` body."""
        import numpy as np

        from urllib.parse import urlencode

        params = {
            n: v
            for n, v in (("k", k), ("radius", radius), ("address_radius", address_radius), ("eps", eps))
            if v is not None
        }
        data = np.ascontiguousarray(codes, dtype=np.uint8).tobytes()
        return self.request("POST", "/search?" + urlencode(params), data, content_type="application/octet-stream")

    def search_many(self, kind: str, values: Iterable, batch_size: int = 1000, **params) -> Iterator[dict]:
        """Streams ``values`` (ids, texts, hex codes or word counts; ``kind`` names which) in requests of
        ``batch_size`` queries; yields one ``{"query", "version", "results"}`` per query, in order."""
        if kind not in ("ids", "texts", "codes", "word_counts"):
            raise ValueError(f"kind={kind!r}: one of ids, texts, codes, word_counts")
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size}: must be at least 1")
        batch: list = []
        for v in values:
            batch.append(v)
            if len(batch) == batch_size:
                yield from self._batch(kind, batch, params)
                batch = []
        if batch:
            yield from self._batch(kind, batch, params)

    def _batch(self, kind: str, batch: list, params: dict) -> Iterator[dict]:
        out = self.search(**{kind: batch}, **params)
        for v, res in zip(batch, out["results"]):
            yield {"query": v, "version": out["version"], "results": res}

    def health(self) -> dict:
        """GET /healthz (raises :class:`ServiceError` 503 until an index version is loaded)."""
        return self.request("GET", "/healthz")

    def ready(self) -> dict:
        return self.request("GET", "/readyz")

    def metrics(self) -> str:
        return self.request("GET", "/metrics", raw=True)

    # ------------------------------------------------------------------ transport
    def request(
        self,
        method: str,
        path: str,
        body: dict | bytes | None = None,
        raw: bool = False,
        content_type: str = "application/json",
    ):
        """One request; a 503 or a connection error is retried ``retries`` times with exponential backoff."""
        data = body if body is None or isinstance(body, bytes) else _dumps(body)
        headers = {"Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = content_type
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        for attempt in range(self.retries + 1):
            try:
                status, payload = self._send(method, path, data, headers)
            except (OSError, http.client.HTTPException):
                if attempt == self.retries:
                    raise
            else:
                if status != 503 or attempt == self.retries:
                    break
            time.sleep(self.backoff_s * (2**attempt))
        if status >= 400:
            raise ServiceError(status, _message(payload))
        return payload.decode() if raw else _loads(payload)

    def _send(self, method: str, path: str, data: bytes | None, headers: dict) -> tuple[int, bytes]:
        for attempt in (0, 1):  # a kept-alive connection the server closed is reopened once at once
            conn = self._connection()
            try:
                conn.request(method, self.base + path, body=data, headers=headers)
                resp = conn.getresponse()
                return resp.status, resp.read()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                self.close()
                if attempt:
                    raise
            except (OSError, http.client.HTTPException):
                self.close()  # never reuse a connection left mid-request
                raise
        raise AssertionError("unreachable")

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            cls = http.client.HTTPSConnection if self.scheme == "https" else http.client.HTTPConnection
            self._conn = cls(self.host, self.port, timeout=self.timeout)
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> "SemhashClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


Client = SemhashClient  # the name semhash_spark.cli uses

try:
    import orjson

    _dumps, _loads = orjson.dumps, orjson.loads
except ImportError:  # the client alone needs only the standard library
    _dumps, _loads = (lambda o: json.dumps(o).encode()), json.loads


def stream_ids_file(client: SemhashClient, path: str, out, batch_size: int = 1000, **params) -> int:
    """Searches every id of ``path`` (one a line, blank lines skipped; ``-``: stdin) in batches; writes one JSON
    line per id to ``out``; returns how many."""
    params = {n: v for n, v in params.items() if v is not None}
    f = sys.stdin if path == "-" else open(path, encoding="utf-8")
    n = 0
    try:
        ids = (line.strip() for line in f)
        for r in client.search_many("ids", (x for x in ids if x), batch_size=batch_size, **params):
            out.write(json.dumps(r) + "\n")
            n += 1
    finally:
        if f is not sys.stdin:
            f.close()
    return n


# ---------------------------------------------------------------------------------------------- Spark

SPARK_SCHEMA = "query string, version string, rank int, id string, distance int"
_WORKER = threading.local()


def worker_client(url: str, token: str | None = None, **kw) -> SemhashClient:
    """The client of this Python worker (and thread) for ``url``: created once, its connection kept alive across
    the tasks the worker runs."""
    clients = _WORKER.__dict__.setdefault("clients", {})
    key = (url, token, os.getpid())
    if key not in clients:
        clients[key] = SemhashClient(url, token=token, **kw)
    return clients[key]


def spark_search(
    url: str,
    column: str,
    kind: str = "codes",
    *,
    k: int | None = 10,
    radius: int | None = None,
    address_radius: int | None = None,
    batch_size: int = 1000,
    token: str | None = None,
):
    """For ``df.mapInPandas(spark_search(url, "code"), SPARK_SCHEMA)``: each row's ``column`` (ids, texts or hex
    codes, as ``kind`` says) is searched in batches of ``batch_size``; one output row per hit, ranked from 0."""

    def run(frames):
        import pandas as pd

        c = worker_client(url, token)
        params = {n: v for n, v in (("k", k), ("radius", radius), ("address_radius", address_radius)) if v is not None}
        for pdf in frames:
            rows = []
            for r in c.search_many(kind, pdf[column].tolist(), batch_size=batch_size, **params):
                rows.extend((r["query"], r["version"], i, h["id"], h["distance"]) for i, h in enumerate(r["results"]))
            yield pd.DataFrame(rows, columns=["query", "version", "rank", "id", "distance"]).astype(
                {"rank": "int32", "distance": "int32"}
            )

    return run


def _message(payload: bytes) -> str:
    try:
        detail = json.loads(payload).get("detail")
    except (ValueError, AttributeError):
        return payload.decode(errors="replace")[:500]
    if isinstance(detail, list):  # request validation errors: [{"loc": [...], "msg": ...}, ...]
        return "; ".join(f"{'.'.join(str(x) for x in d.get('loc', []))}: {d.get('msg')}" for d in detail)
    return str(detail)


# ---------------------------------------------------------------------------------------------- CLI


def query_server(
    server: str,
    *,
    ids: Sequence[str] | None = None,
    texts: Sequence[str] | None = None,
    codes: Sequence[str] | None = None,
    word_counts: Sequence[dict] | None = None,
    radius: int | None = None,
    k: int | None = None,
    rerank: str | None = None,
    eps: float | None = None,
    token: str | None = None,
    timeout: float = 30.0,
    address_radius: int | None = None,
) -> dict:
    """One search against a running service; the response as a dict (raises :class:`ServiceError`)."""
    with SemhashClient(server, token=token, timeout=timeout) as c:
        return c.search(
            ids=ids,
            texts=texts,
            codes=codes,
            word_counts=word_counts,
            radius=radius,
            k=k,
            rerank=rerank,
            eps=eps,
            address_radius=address_radius,
        )


def add_query_server_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Flags of ``semhash query --server URL`` (one of --id / --text / --code, repeatable)."""
    p.add_argument("--server", required=True, help="service URL, e.g. http://127.0.0.1:8080")
    p.add_argument("--id", dest="ids", action="append", help="document id (repeatable)")
    p.add_argument("--text", dest="texts", action="append", help="raw text (repeatable)")
    p.add_argument("--code", dest="codes", action="append", help="hex code (repeatable)")
    p.add_argument("--radius", type=int, help="Hamming radius on the ranking code")
    p.add_argument("--address-radius", type=int, help="Hamming radius on the address code (the papers' lookup)")
    p.add_argument("-k", "--k", type=int)
    p.add_argument("--rerank", choices=["tfidf"])
    p.add_argument("--eps", type=float, help="k nearest: stop early, each result within 1 + eps (default 0: exact)")
    p.add_argument("--token", help="bearer token (default: $SEMHASH_TOKEN)")
    return p


def query_server_main(args: argparse.Namespace | Sequence[str] | None = None) -> int:
    """Prints the service's answer as JSON; exit 1 with the service's message on an error status."""
    import os

    if args is None or not isinstance(args, argparse.Namespace):
        args = add_query_server_arguments(argparse.ArgumentParser(prog="semhash query")).parse_args(
            None if args is None else list(args)
        )
    try:
        out = query_server(
            args.server,
            ids=args.ids,
            texts=args.texts,
            codes=args.codes,
            radius=args.radius,
            address_radius=args.address_radius,
            k=args.k,
            rerank=args.rerank,
            eps=args.eps,
            token=args.token or os.environ.get("SEMHASH_TOKEN"),
        )
    except (ServiceError, OSError) as e:
        print(f"semhash query: {e}", file=sys.stderr)
        return 1
    json.dump(out, sys.stdout, indent=1)
    sys.stdout.write("\n")
    return 0
