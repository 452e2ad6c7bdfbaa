"""Reader leases: how a reader tells retention "I am still reading this index version, do not delete it".

Layout (beside the version's shards)::

    INDEX_URI/versions/V/_readers/<reader-id>.json   {"reader", "version", "acquired_at", "expires_at"}

Protocol:

- A reader (a batch job, ``HammingIndex``, the service) calls :func:`acquire` **before** it reads the version's
  manifest, renews (``acquire`` again with the same id) before ``expires_at``, and :func:`release` s when done.
  If the manifest is gone once the lease is written, the version is being deleted: release and re-resolve
  ``CURRENT``.
- Retention (:func:`semhash_spark.index.reindex.apply_retention`) skips a version with a live lease; otherwise it
  deletes the manifest first, checks the leases again (restoring the manifest and skipping the version if one
  appeared), and only then deletes the files. A reader that follows the protocol either sees no manifest or is
  seen by the second check.

A crashed reader's lease simply expires. Clocks: ``expires_at`` is UTC; keep TTLs well above clock skew.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import uuid
from datetime import datetime, timedelta, timezone
from typing import Iterator

from semhash_spark.index import published as ix
from semhash_spark.io import store

log = logging.getLogger(__name__)

READERS_DIR = "_readers"
DEFAULT_TTL_SECONDS = 6 * 3600


def _now(now: datetime | None) -> datetime:
    now = now or datetime.now(timezone.utc)
    return now if now.tzinfo else now.replace(tzinfo=timezone.utc)


def lease_uri(index_uri: str, version: str, reader_id: str) -> str:
    if not reader_id or "/" in reader_id or reader_id.startswith("."):
        raise ValueError(f"bad reader id {reader_id!r}: no '/', not starting with '.'")
    return store.join(ix.version_prefix(index_uri, version), READERS_DIR, f"{reader_id}.json")


def acquire(
    index_uri: str,
    version: str,
    reader_id: str | None = None,
    ttl_seconds: float = DEFAULT_TTL_SECONDS,
    now: datetime | None = None,
) -> str:
    """Writes (or renews) a lease on ``version`` valid for ``ttl_seconds``; returns the reader id."""
    if ttl_seconds <= 0:
        raise ValueError(f"ttl_seconds must be positive, got {ttl_seconds}")
    reader_id = reader_id or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    t = _now(now)
    store.write_json(
        lease_uri(index_uri, version, reader_id),
        {
            "reader": reader_id,
            "version": version,
            "acquired_at": t.isoformat(),
            "expires_at": (t + timedelta(seconds=ttl_seconds)).isoformat(),
        },
    )
    return reader_id


def release(index_uri: str, version: str, reader_id: str) -> None:
    store.delete(lease_uri(index_uri, version, reader_id))


@contextlib.contextmanager
def reading(index_uri: str, version: str, ttl_seconds: float = DEFAULT_TTL_SECONDS) -> Iterator[str]:
    """``with reading(index, V):`` holds a lease on ``V`` for the block (renew inside for blocks over the TTL)."""
    reader_id = acquire(index_uri, version, ttl_seconds=ttl_seconds)
    try:
        yield reader_id
    finally:
        try:
            release(index_uri, version, reader_id)
        except store.StoreError as e:  # the lease expires by itself
            log.warning("could not release lease %s on %s: %s", reader_id, version, e)


def live(index_uri: str, version: str, now: datetime | None = None) -> list[dict]:
    """The leases on ``version`` that have not expired at ``now``. An unreadable lease counts as live."""
    t = _now(now)
    root = store.join(ix.version_prefix(index_uri, version), READERS_DIR)
    out = []
    for name, _ in store.list_prefix(root):
        if not name.endswith(".json"):
            continue
        try:
            lease = store.read_json(store.join(root, name))
            expires = datetime.fromisoformat(lease["expires_at"])
            expires = expires if expires.tzinfo else expires.replace(tzinfo=timezone.utc)
        except store.NotFound:  # released meanwhile
            continue
        except (store.StoreError, KeyError, TypeError, ValueError) as e:
            log.warning("unreadable lease %s on %s (%s): treating it as live", name, version, e)
            out.append({"reader": name[: -len(".json")], "expires_at": None})
            continue
        if expires > t:
            out.append(lease)
    return out
