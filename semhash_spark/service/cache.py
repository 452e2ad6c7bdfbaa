"""A memory-bounded cache of loaded partitions: least recently used out, one load per key at a time.

Keys are ``(version, partition number)``. :meth:`PartitionCache.get` answers a future: done at once on a hit,
shared with the request already loading the key, or a new load on the reader pool. A failed load is remembered for
``failure_backoff_s`` so a corrupt shard or an unreachable store is not asked again by every request. Entries are
sized by the caller's ``sizeof``; evicting an entry only drops the cache's reference, so a request still holding a
partition keeps it alive until it is done.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, Hashable

log = logging.getLogger(__name__)


class PartitionCache:
    def __init__(
        self,
        capacity_bytes: int,
        threads: int = 8,
        failure_backoff_s: float = 2.0,
        sizeof: Callable[[Any], int] = lambda v: int(v.nbytes),
        on_event: Callable[..., None] | None = None,
    ):
        self.capacity = int(capacity_bytes)
        self.failure_backoff_s = failure_backoff_s
        self._sizeof = sizeof
        self._on_event = on_event or (lambda *a, **k: None)
        self._lock = threading.Lock()
        self._entries: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()
        self._loading: dict[Hashable, Future] = {}
        self._failed: dict[Hashable, tuple[float, BaseException]] = {}
        self._bytes = 0
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="semhash-load")

    # ------------------------------------------------------------------ reading
    def get(self, key: Hashable, load: Callable[[], Any]) -> Future:
        """A future of the value under ``key``, loading it with ``load()`` when absent."""
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                self._on_event("hit")
                return _done(self._entries[key][0])
            if key in self._loading:
                self._on_event("hit")
                return self._loading[key]
            failed = self._failed.get(key)
            if failed is not None and time.monotonic() - failed[0] < self.failure_backoff_s:
                fut: Future = Future()
                fut.set_exception(failed[1])
                return fut
            self._on_event("miss")
            fut = self._pool.submit(self._load, key, load)
            self._loading[key] = fut
            return fut

    def peek(self, key: Hashable) -> Any | None:
        """The cached value, without loading or touching its recency."""
        with self._lock:
            entry = self._entries.get(key)
            return None if entry is None else entry[0]

    def _load(self, key: Hashable, load: Callable[[], Any]) -> Any:
        try:
            value = load()
        except BaseException as e:
            with self._lock:
                self._loading.pop(key, None)
                self._failed[key] = (time.monotonic(), e)
            self._on_event("load_error", error=e)
            raise
        size = int(self._sizeof(value))
        with self._lock:
            self._loading.pop(key, None)
            self._failed.pop(key, None)
            if key in self._entries:
                self._bytes -= self._entries.pop(key)[1]
            self._entries[key] = (value, size)
            self._bytes += size
            evicted = self._evict_locked(keep=key)
        self._on_event("loaded", size=size, evicted=evicted)
        return value

    def _evict_locked(self, keep: Hashable) -> int:
        """Drops least recently used entries until within budget; ``keep`` (the newest) stays even if alone over."""
        n = 0
        for k in list(self._entries):
            if self._bytes <= self.capacity:
                break
            if k != keep:
                self._bytes -= self._entries.pop(k)[1]
                n += 1
        return n

    # ------------------------------------------------------------------ housekeeping
    def drop(self, keep: Callable[[Hashable], bool]) -> int:
        """Removes every entry whose key ``keep`` rejects (e.g. partitions of a replaced version)."""
        with self._lock:
            gone = [k for k in self._entries if not keep(k)]
            for k in gone:
                self._bytes -= self._entries.pop(k)[1]
            for k in [k for k in self._failed if not keep(k)]:
                del self._failed[k]
        return len(gone)

    def keys(self) -> list[Hashable]:
        """Cached keys, most recently used first."""
        with self._lock:
            return list(reversed(self._entries))

    @property
    def bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def _done(value: Any) -> Future:
    f: Future = Future()
    f.set_result(value)
    return f
