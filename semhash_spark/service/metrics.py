"""Prometheus metrics of one service instance (its own registry, so several apps can live in one process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)


class Metrics:
    def __init__(self):
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.request_seconds = Histogram(
            "semhash_request_seconds", "HTTP request latency", ["route", "status"], buckets=_LATENCY_BUCKETS, registry=r
        )
        self.queries = Counter("semhash_queries_total", "Queries answered, by query kind", ["kind"], registry=r)
        self.partial = Counter("semhash_partial_responses_total", "Responses missing some partitions", registry=r)
        self.cache_hits = Counter("semhash_cache_hits_total", "Partition lookups served from the cache", registry=r)
        self.cache_misses = Counter("semhash_cache_misses_total", "Partition lookups that started a read", registry=r)
        self.cache_bytes = Gauge("semhash_cache_bytes", "Bytes held by the partition cache", registry=r)
        self.cache_evictions = Counter("semhash_cache_evictions_total", "Partitions evicted from the cache", registry=r)
        self.partitions_read = Counter(
            "semhash_partitions_read_total", "Partition reads from the store, by outcome", ["outcome"], registry=r
        )
        self.version_info = Gauge(
            "semhash_index_version_info", "The index version served (value 1)", ["version"], registry=r
        )
        self.index_codes = Gauge("semhash_index_codes", "Codes in the version served", registry=r)
        self.version_switches = Counter("semhash_version_switches_total", "Versions switched to", registry=r)
        self.version_failures = Counter(
            "semhash_version_load_failures_total",
            "Attempts to load a new version that failed verification or reading",
            registry=r,
        )
        self.poll_errors = Counter("semhash_poll_errors_total", "Failed reads of CURRENT", registry=r)

    def cache_event(self, event: str, size: int = 0, evicted: int = 0, error: BaseException | None = None) -> None:
        """The partition cache's callback."""
        if event == "hit":
            self.cache_hits.inc()
        elif event == "miss":
            self.cache_misses.inc()
        elif event == "loaded":
            self.partitions_read.labels("ok").inc()
            if evicted:
                self.cache_evictions.inc(evicted)
        elif event == "load_error":
            self.partitions_read.labels("error").inc()

    def set_version(self, version: str, codes: int) -> None:
        self.version_info.clear()
        self.version_info.labels(version).set(1)
        self.index_codes.set(codes)

    def exposition(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
