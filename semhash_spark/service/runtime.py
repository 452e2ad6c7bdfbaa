"""The running service without HTTP: the version served, the partition cache, and the thread that follows CURRENT.

The follower reads ``CURRENT`` every ``poll_seconds``. A new version is opened (manifest checked, every shard
listed with its size, model loaded), its hot partitions are read into the cache, and only then does ``current``
point at it -- one reference assignment, so each request, which takes ``current`` once, sees one version from start
to end. A version that does not verify is never served: the old one stays, and the failure is logged and counted
once; the follower then leaves that version alone (no lease, no verification) until its manifest changes.
A warm-up that the store interrupts is tried again at the next poll; a shard that is corrupt does not hold the
switch back (queries that need it answer ``partial``).

Reader leases (:mod:`semhash_spark.index.leases`): the service takes a lease on a version *before* reading its manifest,
renews the lease on the version it serves at every poll, and releases a version once it no longer serves it, so a
re-index's retention never deletes the files under it.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from concurrent.futures import wait

from semhash_spark.index import published as X
from semhash_spark.index import leases
from semhash_spark.io import store

from .cache import PartitionCache
from .metrics import Metrics
from .limits import LimitExceeded, check_work
from .searcher import BatchTooLarge, Outcome, Query, QueryError, Searcher
from .settings import Settings
from .version import LoadedVersion

log = logging.getLogger(__name__)

_WARM_TIMEOUT_S = 120.0


class Service:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.metrics = Metrics()
        self.cache = PartitionCache(
            settings.cache_bytes,
            threads=settings.load_threads,
            failure_backoff_s=settings.failure_backoff_s,
            on_event=self.metrics.cache_event,
        )
        self.searcher = Searcher(self.cache, settings)
        self.current: LoadedVersion | None = None
        self.ready = False  # the first version is loaded and warmed
        self.refused: str | None = None  # why CURRENT's version is not served (it did not verify)
        self.last_poll_error: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._refused: dict[str, str | None] = {}  # version -> sha256 of the manifest it was refused with
        self.reader_id = f"service-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._leased_at = 0.0  # monotonic time of the last lease renewal on `current`
        self._retired: str | None = None  # the version replaced at the last switch; released a poll later

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> "Service":
        if self._thread is None:
            self._thread = threading.Thread(target=self._follow, name="semhash-follow", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        self.cache.close()
        for version in {v.version for v in (self.current,) if v is not None} | ({self._retired} - {None}):
            self._release(version)

    def search(self, q: Query) -> Outcome:
        v = self.current  # taken once: the whole request sees this version
        if v is None:
            raise NotReady("no index version is loaded yet")
        try:
            check_work(q.kind, q.values, q.k, q.rerank, self.settings)  # before any work is done
        except LimitExceeded as e:
            raise (BatchTooLarge(str(e)) if e.status == 413 else QueryError(str(e))) from None
        out = self.searcher.run(v, q)
        self.metrics.cache_bytes.set(self.cache.bytes)
        self.metrics.queries.labels(q.kind).inc(len(out.codes))
        if out.partial:
            self.metrics.partial.inc()
        return out

    # ------------------------------------------------------------------ following CURRENT
    def _follow(self) -> None:
        from semhash_spark.index.mih import warm_up

        warm_up()  # compile the lookup loops before the first version is served
        while not self._stop.is_set():
            try:
                self.poll()
            except Exception:  # noqa: BLE001 - the follower must outlive any single failure
                log.exception("unexpected error while following %s", self.settings.index_uri)
            self._stop.wait(self.settings.poll_seconds)

    def poll(self) -> bool:
        """Reads CURRENT once; loads and switches to a new version. True if it switched."""
        uri = self.settings.index_uri
        if self.current is not None:  # partitions of a replaced version that late requests read again
            self.cache.drop(lambda key, v=self.current.version: key[0] == v)
        try:
            version = X.read_current(uri)["version"]
        except (X.IndexStoreError, store.StoreError, ValueError) as e:
            self.metrics.poll_errors.inc()
            if self.last_poll_error != str(e):
                log.warning("cannot read CURRENT of %s: %s", uri, e, extra={"index": uri})
            self.last_poll_error = str(e)
            return False
        self.last_poll_error = None
        if self._retired is not None:
            self._release(self._retired)
            self._retired = None
        self._renew()
        if self.current is not None and self.current.version == version:
            self.refused = None
            return False
        if version in self._refused:
            try:
                if self._manifest_sha(version) == self._refused[version]:
                    return False  # refused before, manifest unchanged: not leased, not verified
            except store.StoreError:  # cannot tell now: look again at the next poll
                return False
            log.info(
                "the manifest of refused version %s changed: verifying it again", version, extra={"version": version}
            )
        manifest_sha = None
        try:
            leases.acquire(uri, version, self.reader_id, ttl_seconds=self.settings.lease_ttl_s)  # before the manifest
            manifest_sha = self._manifest_sha(version)
            new = LoadedVersion.open(uri, version)
        except (X.IndexStoreError, store.StoreError, ValueError) as e:
            self._release(version)
            self.metrics.version_failures.inc()
            if isinstance(e, store.StoreError) and not isinstance(e, store.NotFound):
                log.warning("cannot load version %s yet: %s", version, e, extra={"version": version})
            else:
                log.error(
                    "refusing version %s of %s until its manifest changes: %s",
                    version,
                    uri,
                    e,
                    extra={"version": version},
                )
                self._refused[version] = manifest_sha
                self.refused = f"version {version} refused: {e}"
            return False
        self._refused.pop(version, None)
        self.refused = None
        if new.model_error:
            log.warning("%s", new.model_error, extra={"version": version})
        if not self._warm(new):
            self.metrics.version_failures.inc()
            self._release(version)
            return False
        self._switch(new)
        return True

    def _manifest_sha(self, version: str) -> str | None:
        """sha256 of the version's manifest as stored, None when it has none."""
        try:
            return store.sha256_bytes(store.read_bytes(X.manifest_uri(self.settings.index_uri, version)))
        except store.NotFound:
            return None

    def _renew(self) -> None:
        """Renews the lease on the served version every third of its TTL (a failure is retried next poll)."""
        if self.current is None or time.monotonic() - self._leased_at < self.settings.lease_ttl_s / 3:
            return
        try:
            leases.acquire(
                self.settings.index_uri, self.current.version, self.reader_id, ttl_seconds=self.settings.lease_ttl_s
            )
            self._leased_at = time.monotonic()
        except (store.StoreError, ValueError) as e:
            log.warning("could not renew the lease on version %s: %s", self.current.version, e)

    def _release(self, version: str) -> None:
        try:
            leases.release(self.settings.index_uri, version, self.reader_id)
        except store.StoreError as e:  # it expires by itself
            log.warning("could not release the lease on version %s: %s", version, e)

    def _warm(self, new: LoadedVersion) -> bool:
        """Reads the new version's likely partitions into the cache; False if the store failed underneath."""
        old = self.current
        if old is None:
            if not self.settings.preload:
                return True
            wanted, budget = list(range(new.npartitions)), self.cache.capacity
        else:  # the partitions hot in the old version, most recently used first, within half the budget
            names = [old.part_names[p] for ver, p in self.cache.keys() if ver == old.version]
            index_of = {n: i for i, n in enumerate(new.part_names)}
            wanted, budget = [index_of[n] for n in names if n in index_of], self.cache.capacity // 2
        t0, loaded, transient, parts = time.monotonic(), 0, False, []
        step = max(1, self.settings.load_threads)
        for s in range(0, len(wanted), step):
            futures = [
                self.cache.get((new.version, p), lambda p=p: new.read_partition(p)) for p in wanted[s : s + step]
            ]
            wait(futures, timeout=_WARM_TIMEOUT_S)
            for f in futures:
                e = f.exception() if f.done() else TimeoutError("partition read timed out")
                if e is None:
                    loaded += f.result().nbytes
                    parts.append(f.result())
                elif isinstance(e, (store.StoreError, TimeoutError)) and not isinstance(e, store.NotFound):
                    transient = True
                else:
                    log.error("version %s: %s", new.version, e, extra={"version": new.version})
            if transient:
                log.warning("warming version %s stopped: the store is failing; will retry", new.version)
                return False
            if loaded >= budget:
                break
        if parts:
            new.loaded(parts)  # the version's one search structure, before it takes traffic
        log.info(
            "warmed version %s: %d bytes in %.2fs",
            new.version,
            loaded,
            time.monotonic() - t0,
            extra={"version": new.version},
        )
        return True

    def _switch(self, new: LoadedVersion) -> None:
        old, self.current = self.current, new
        self._leased_at = time.monotonic()
        self.ready = True
        if old is not None and old.version != new.version:
            self._retired = old.version  # late requests may still read it: released at the next poll
        self.metrics.set_version(new.version, new.count)
        if old is not None:
            self.metrics.version_switches.inc()
            self.cache.drop(lambda key: key[0] == new.version)
        self.metrics.cache_bytes.set(self.cache.bytes)
        log.info(
            "serving version %s (%d codes, %d partitions)%s",
            new.version,
            new.count,
            new.npartitions,
            f", was {old.version}" if old else "",
            extra={"version": new.version},
        )


class NotReady(RuntimeError):
    """No version has been loaded yet."""
