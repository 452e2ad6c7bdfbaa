"""A small client of the lookup service (standard library only) and ``semhash query --server URL``.

    c = SemhashClient("http://127.0.0.1:8080", token=None)
    c.health()                                   # {"status": "ok", "version": ..., ...}
    c.search(texts=["gpu driver crash"], k=10)   # {"version": ..., "results": [[{"id", "distance"}, ...]], ...}

One keep-alive connection per client; a client is not meant to be shared between threads.
"""
from __future__ import annotations

import argparse
import http.client
import json
import sys
from typing import Any, Sequence
from urllib.parse import urlsplit


class ServiceError(RuntimeError):
    """The service answered with an error status; ``status`` and the service's message are kept."""

    def __init__(self, status: int, message: str):
        self.status, self.message = status, message
        super().__init__(f"HTTP {status}: {message}")


class SemhashClient:
    def __init__(self, url: str, token: str | None = None, timeout: float = 30.0):
        parts = urlsplit(url if "://" in url else "http://" + url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not a service URL: {url!r} (expected http://host:port)")
        self.scheme, self.host = parts.scheme, parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.base = parts.path.rstrip("/")
        self.token, self.timeout = token, timeout
        self._conn: http.client.HTTPConnection | None = None

    # ------------------------------------------------------------------ API
    def search(self, *, ids: Sequence[str] | None = None, texts: Sequence[str] | None = None,
               codes: Sequence[str] | None = None, word_counts: Sequence[dict] | None = None,
               radius: int | None = None, k: int | None = None, rerank: str | None = None,
               eps: float | None = None, address_radius: int | None = None) -> dict:
        """POST /search with exactly one of ids / texts / codes / word_counts (``eps > 0``: k nearest stops early,
        each result within ``1 + eps`` of the true distance of its rank)."""
        body: dict[str, Any] = {}
        for name, value in (("ids", ids), ("texts", texts), ("codes", codes), ("word_counts", word_counts)):
            if value is not None:
                body[name] = list(value)
        for name, value in (("radius", radius), ("address_radius", address_radius), ("k", k), ("rerank", rerank),
                            ("eps", eps)):
            if value is not None:
                body[name] = value
        return self.request("POST", "/search", body)

    def health(self) -> dict:
        """GET /healthz (raises :class:`ServiceError` 503 until an index version is loaded)."""
        return self.request("GET", "/healthz")

    def ready(self) -> dict:
        return self.request("GET", "/readyz")

    def metrics(self) -> str:
        return self.request("GET", "/metrics", raw=True)

    # ------------------------------------------------------------------ transport
    def request(self, method: str, path: str, body: dict | None = None, raw: bool = False):
        data = None if body is None else json.dumps(body).encode()
        headers = {"Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        for attempt in (0, 1):  # a kept-alive connection the server closed is reopened once
            conn = self._connection()
            try:
                conn.request(method, self.base + path, body=data, headers=headers)
                resp = conn.getresponse()
                payload = resp.read()
                break
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                self.close()
                if attempt:
                    raise
            except (OSError, http.client.HTTPException):
                self.close()                    # never reuse a connection left mid-request
                raise
        if resp.status >= 400:
            raise ServiceError(resp.status, _message(payload))
        return payload.decode() if raw else json.loads(payload)

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


Client = SemhashClient   # the name semhash_spark.cli uses


def _message(payload: bytes) -> str:
    try:
        detail = json.loads(payload).get("detail")
    except (ValueError, AttributeError):
        return payload.decode(errors="replace")[:500]
    if isinstance(detail, list):  # request validation errors: [{"loc": [...], "msg": ...}, ...]
        return "; ".join(f"{'.'.join(str(x) for x in d.get('loc', []))}: {d.get('msg')}" for d in detail)
    return str(detail)


# ---------------------------------------------------------------------------------------------- CLI

def query_server(server: str, *, ids: Sequence[str] | None = None, texts: Sequence[str] | None = None,
                 codes: Sequence[str] | None = None, word_counts: Sequence[dict] | None = None,
                 radius: int | None = None, k: int | None = None, rerank: str | None = None,
                 eps: float | None = None, token: str | None = None, timeout: float = 30.0,
                 address_radius: int | None = None) -> dict:
    """One search against a running service; the response as a dict (raises :class:`ServiceError`)."""
    with SemhashClient(server, token=token, timeout=timeout) as c:
        return c.search(ids=ids, texts=texts, codes=codes, word_counts=word_counts, radius=radius, k=k,
                        rerank=rerank, eps=eps, address_radius=address_radius)


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
            None if args is None else list(args))
    try:
        out = query_server(args.server, ids=args.ids, texts=args.texts, codes=args.codes, radius=args.radius,
                           address_radius=args.address_radius, k=args.k, rerank=args.rerank, eps=args.eps,
                           token=args.token or os.environ.get("SEMHASH_TOKEN"))
    except (ServiceError, OSError) as e:
        print(f"semhash query: {e}", file=sys.stderr)
        return 1
    json.dump(out, sys.stdout, indent=1)
    sys.stdout.write("\n")
    return 0
