"""The service's one typed, frozen configuration and the one set of flags that builds it (``semhash serve`` and
``python -m semhash_spark.service`` share :func:`add_serve_arguments`); checked on creation."""

from __future__ import annotations

import argparse
import dataclasses
import os
from dataclasses import dataclass


class SettingsError(ValueError):
    """A setting is out of range; the message names it and says what would be accepted."""


@dataclass(frozen=True)
class Settings:
    index_uri: str  # s3://bucket/prefix (or a local path) holding CURRENT and versions/
    host: str = "127.0.0.1"
    port: int = 8080
    cache_bytes: int = 1 << 30  # partition cache budget (least recently used out)
    token: str | None = None  # bearer token guarding /search; None: open
    poll_seconds: float = 10.0  # how often CURRENT is read to follow new versions
    fetch_timeout_s: float = 5.0  # how long a request waits for partitions before answering partial
    failure_backoff_s: float = 2.0  # a partition that failed to load is not tried again for this long
    preload: bool = True  # read partitions into the cache before serving a version (up to the budget)
    max_batch: int = 10000  # queries per request (one batch through the compiled search)
    max_k: int = 1000
    max_body_bytes: int = 8 << 20  # request body, counted while it arrives (413 past it)
    max_work: int = 100_000  # queries x k (x max_results without k) per request: 10,000 codes at k=10
    max_text_chars: int = 100_000  # characters per text query
    max_image_pixels: int = 1 << 24  # width x height of one image query, read from its header before decoding
    max_radius: int = 16
    max_results: int = 1000  # per query, for radius-only queries (nearest kept, `truncated` set)
    rerank_candidates: int = 100  # shortlist size re-ranked by TF-IDF when no radius is given
    load_threads: int = 8  # concurrent partition reads
    log_requests: bool = True
    lease_ttl_s: float = 900.0  # reader lease on the served version (renewed every poll), so retention keeps it

    def __post_init__(self):
        if not isinstance(self.index_uri, str) or not self.index_uri.strip():
            raise SettingsError("index_uri: give the index location, e.g. s3://bucket/index")
        if not 0 <= self.port <= 65535:
            raise SettingsError(f"port: {self.port} is not a TCP port (0..65535; 0 picks a free one)")
        if self.cache_bytes < 1 << 20:
            raise SettingsError(f"cache_bytes: {self.cache_bytes} is below 1 MiB")
        if self.token is not None and (not self.token.strip() or any(c.isspace() for c in self.token)):
            raise SettingsError("token: must be non-empty and contain no whitespace")
        for name in ("poll_seconds", "fetch_timeout_s", "lease_ttl_s"):
            if getattr(self, name) <= 0:
                raise SettingsError(f"{name}: must be positive, got {getattr(self, name)}")
        if self.failure_backoff_s < 0:
            raise SettingsError(f"failure_backoff_s: must be >= 0, got {self.failure_backoff_s}")
        for name in (
            "max_batch",
            "max_k",
            "max_results",
            "rerank_candidates",
            "load_threads",
            "max_body_bytes",
            "max_work",
            "max_text_chars",
            "max_image_pixels",
        ):
            if getattr(self, name) < 1:
                raise SettingsError(f"{name}: must be at least 1, got {getattr(self, name)}")
        if self.lease_ttl_s < 3 * self.poll_seconds:
            raise SettingsError(
                f"lease_ttl_s: {self.lease_ttl_s} must be at least 3 x poll_seconds "
                f"({self.poll_seconds}) so the lease is renewed before it expires"
            )
        if self.max_radius < 0:
            raise SettingsError(f"max_radius: must be >= 0, got {self.max_radius}")

    def replace(self, **changes) -> "Settings":
        return dataclasses.replace(self, **changes)

    def public(self) -> dict:
        """The settings with the token hidden (for logs)."""
        d = dataclasses.asdict(self)
        d["token"] = "***" if self.token else None
        return d


# ---------------------------------------------------------------------------------------------- flags


def add_serve_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The flags of ``semhash serve``."""
    p.add_argument("--index", required=True, help="index URI holding CURRENT, e.g. s3://bucket/index")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0 in a container)")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--cache-bytes", type=parse_size, default=1 << 30, help="partition cache budget, e.g. 2G, 512M")
    p.add_argument(
        "--token",
        default=None,
        help="bearer token required on /search (visible in ps: prefer --token-file or $SEMHASH_TOKEN; none: open)",
    )
    p.add_argument("--token-file", default=None, help="file holding the bearer token (default: $SEMHASH_TOKEN_FILE)")
    p.add_argument(
        "--max-body-bytes", type=parse_size, default=8 << 20, help="request body limit, e.g. 8M (413 past it)"
    )
    p.add_argument("--poll-seconds", type=float, default=10.0, help="how often CURRENT is checked")
    p.add_argument(
        "--fetch-timeout",
        type=float,
        default=5.0,
        help="seconds a request waits for partitions before answering partial",
    )
    p.add_argument("--no-preload", action="store_true", help="read partitions only when a query needs them")
    p.add_argument("--max-batch", type=int, default=10000, help="queries per request, run as one batch (default 10000)")
    p.add_argument("--log-level", default="info")
    return p


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Settings from parsed flags; flags a caller's parser lacks take the defaults of :func:`add_serve_arguments`."""
    get = lambda name, default: getattr(args, name, default)  # noqa: E731
    return Settings(
        index_uri=args.index,
        host=get("host", "127.0.0.1"),
        port=get("port", 8080),
        cache_bytes=get("cache_bytes", 1 << 30),
        token=resolve_token(args),
        poll_seconds=get("poll_seconds", 10.0),
        fetch_timeout_s=get("fetch_timeout", 5.0),
        preload=not get("no_preload", False),
        max_batch=get("max_batch", 10000),
        max_body_bytes=get("max_body_bytes", 8 << 20),
    )


def resolve_token(args: argparse.Namespace, environ=None) -> str | None:
    """--token, else --token-file, else $SEMHASH_TOKEN, else $SEMHASH_TOKEN_FILE (a file keeps it out of ps)."""
    env = os.environ if environ is None else environ
    if getattr(args, "token", None):
        return args.token
    path = getattr(args, "token_file", None) or env.get("SEMHASH_TOKEN_FILE")
    if not path and env.get("SEMHASH_TOKEN"):
        return env["SEMHASH_TOKEN"]
    if not path:
        return None
    try:
        token = open(path, encoding="utf-8").read().strip()
    except OSError as e:
        raise SettingsError(f"token file {path!r} cannot be read: {e.strerror}") from None
    if not token:
        raise SettingsError(f"token file {path!r} is empty")
    return token


def parse_size(text: str) -> int:
    """A byte count written as 1073741824, 512M, 2G or 1.5GiB (binary multiples)."""
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    try:
        n = float(t[:-1]) * mult[t[-1]] if t and t[-1] in mult else float(t)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 1073741824, 512M, 2G)") from None
    if n < 0 or n != n:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (must be >= 0)")
    return int(n)
