"""Answering a batch of queries against one :class:`~.version.LoadedVersion` (no HTTP here).

Queries come as ids, texts, word counts, hex codes or images and become ranking codes and, where the query needs
the address ball, address codes (texts through the version's own models and vocabulary; ids from the stored
rows). The partitions the batch needs are read through the cache (each one verified by
:func:`semhash_spark.index.query.read_partition`), and the whole batch runs once over the version's one search structure
(:meth:`~.version.LoadedVersion.loaded`) with :func:`semhash_spark.index.query.answer`: the same meaning of ``k``,
``radius`` (ranking code), ``address_radius`` (address code) and ``rerank`` as the library's. A radius-only query
keeps its nearest ``max_results`` (``truncated``).

Partitions that cannot be read (store unreachable, shard missing or corrupt) are skipped and named in the outcome
(``partial``); a request for which none of the partitions it needed could be read raises :class:`Unavailable`.
"""

from __future__ import annotations

import logging
import math
import time
from concurrent.futures import wait
from dataclasses import dataclass, field

import numpy as np

from semhash_spark import codes as C
from semhash_spark.index import query as Q

from .cache import PartitionCache
from .settings import Settings
from .version import LoadedVersion, Partition

log = logging.getLogger(__name__)

KINDS = ("ids", "texts", "codes", "word_counts", "images")
RERANKS = Q.RERANKS
QueryError = Q.QueryError


class UnknownId(QueryError):
    """An id that the version does not hold."""


class BatchTooLarge(QueryError):
    """More queries in one request than the service accepts."""


class Unavailable(RuntimeError):
    """Nothing the request needs can be read now (store unreachable, every needed shard failing)."""


@dataclass(frozen=True)
class Query:
    kind: str  # one of KINDS
    values: list  # ids, texts, hex codes, or {word: count} dicts
    k: int | None = None
    radius: int | None = None  # ball on the ranking code
    rerank: str | None = None
    eps: float = 0.0  # k nearest: 0 exact; > 0 each result within (1 + eps) of the true distance
    address_radius: int | None = None  # ball on the address code (the papers' lookup)
    msh: bool = False  # images: multiple semantic hashing over the version's patch table
    details: bool = False  # hits carry their stored labels and snippet


@dataclass
class Hit:
    id: str
    distance: int
    score: float | None = None
    address_distance: int | None = None
    labels: list[str] | None = None
    snippet: str | None = None


@dataclass
class Outcome:
    version: str
    results: list[list[dict]]  # per query: {"id", "distance"[, "address_distance"][, "score"]
    # [, "labels", "snippet"]} (the shape of Hit), best first
    codes: list[str]  # each query's code, hex
    partial: bool = False
    missing_partitions: list[str] = field(default_factory=list)
    truncated: bool = False


def _hex_rows(codes: np.ndarray) -> list[str]:
    """Each row of ``uint8[n, nb]`` as hex (one conversion for the whole batch)."""
    h = np.ascontiguousarray(codes, dtype=np.uint8).tobytes().hex()
    w = 2 * codes.shape[1]
    return [h[i : i + w] for i in range(0, len(h), w)]


class _Request:
    """Per-request partition access: waits on the cache within the request's deadline, records what is missing."""

    def __init__(self, v: LoadedVersion, cache: PartitionCache, deadline: float):
        self.v, self.cache, self.deadline = v, cache, deadline
        self.missing: dict[str, str] = {}
        self.read = 0

    def partitions(self, numbers) -> list[Partition]:
        numbers = [int(p) for p in numbers if self.v.part_names[int(p)] not in self.missing]
        futures = {p: self.cache.get((self.v.version, p), lambda p=p: self.v.read_partition(p)) for p in numbers}
        wait(list(futures.values()), timeout=max(0.0, self.deadline - time.monotonic()))
        out = []
        for p, f in futures.items():
            name = self.v.part_names[p]
            if not f.done():
                self.missing[name] = "timed out reading the partition"
            elif f.exception() is not None:
                self.missing[name] = f"{type(f.exception()).__name__}: {f.exception()}"
            else:
                out.append(f.result())
        self.read += len(out)
        return out


class Searcher:
    def __init__(self, cache: PartitionCache, settings: Settings):
        self.cache, self.settings = cache, settings

    # ------------------------------------------------------------------ entry point
    def run(self, v: LoadedVersion, q: Query) -> Outcome:
        self._check(q)
        s = self.settings
        req = _Request(v, self.cache, time.monotonic() + s.fetch_timeout_s)
        if q.msh:
            return self._run_msh(v, q)
        codes, bags, addresses = self._resolve(v, q, req)
        if len(codes) > s.max_batch:
            raise BatchTooLarge(f"{len(codes)} queries in one request; at most {s.max_batch} (split the batch)")
        need = Q.needed_partitions(
            v.manifest, v.part_vals, codes, addresses, k=q.k, radius=q.radius, address_radius=q.address_radius
        )
        loaded = v.current_structure()
        if not loaded.holds(need):  # read what is not in the structure yet, through the cache
            parts = req.partitions(need)
            if req.missing and req.read == 0:
                raise Unavailable(
                    f"no partition needed could be read from version {v.version}: "
                    + "; ".join(f"{k}: {m}" for k, m in sorted(req.missing.items())[:5])
                )
            cached = [x for x in (self.cache.peek((v.version, p)) for p in range(v.npartitions)) if x is not None]
            loaded = v.loaded(parts, cached)
        if q.k is not None and q.radius is None and q.address_radius is None and q.rerank is None and not q.details:
            results, truncated = Q.knn_hits(loaded, codes, q.k, eps=q.eps), False  # the batch in one pass
        else:
            answers = Q.answer(
                loaded,
                codes,
                k=q.k,
                radius=q.radius,
                address_radius=q.address_radius,
                q_address=addresses,
                rerank=q.rerank,
                bags=bags,
                idf=v.idf,
                candidates=max(s.rerank_candidates, q.k or 0),
                max_results=s.max_results,
                eps=q.eps,
                details=q.details,
            )
            results, truncated = [a.hits() for a in answers], any(a.truncated for a in answers)
        if req.missing:
            log.warning(
                "partial answer: %d partitions missing",
                len(req.missing),
                extra={"version": v.version, "missing": sorted(req.missing)[:20]},
            )
        return Outcome(
            version=v.version,
            results=results,
            codes=_hex_rows(codes),
            partial=bool(req.missing),
            missing_partitions=sorted(req.missing),
            truncated=truncated,
        )

    def _run_msh(self, v: LoadedVersion, q: Query) -> Outcome:
        """Multiple semantic hashing (:func:`semhash_spark.index.query.msh_hits`, the library's): at most ``k``, else
        ``max_results``."""
        pixels = self._image_pixels(v, q.values)
        codes = v.hasher.codes(pixels)
        try:
            table = v.patch_table()
        except ValueError as e:
            raise QueryError(str(e)) from None
        d = v.hasher.meta["data"]
        limit = q.k or self.settings.max_results
        results = Q.msh_hits(
            table, pixels.reshape(len(pixels), d["height"], d["width"], d["channels"]), codes, limit + (q.k is None)
        )
        truncated = q.k is None and any(len(r) > limit for r in results)
        return Outcome(
            version=v.version, results=[r[:limit] for r in results], codes=_hex_rows(codes), truncated=truncated
        )

    def _check(self, q: Query) -> None:
        s = self.settings
        if q.kind not in KINDS:
            raise QueryError(f"unknown query kind {q.kind!r}; send one of {list(KINDS)}")
        if len(q.values) == 0:
            raise QueryError(f"{q.kind} is empty: send at least one query")
        if not isinstance(q.values, np.ndarray) and len(q.values) > s.max_batch:
            raise BatchTooLarge(f"{len(q.values)} queries in one request; at most {s.max_batch} (split the batch)")
        if q.k is not None and not 1 <= q.k <= s.max_k:
            raise QueryError(f"k={q.k} is out of range: 1..{s.max_k}")
        for name in ("radius", "address_radius"):
            value = getattr(q, name)
            if value is not None and not 0 <= value <= s.max_radius:
                raise QueryError(f"{name}={value} is out of range: 0..{s.max_radius}")
        if not (isinstance(q.eps, (int, float)) and math.isfinite(q.eps) and q.eps >= 0):
            raise QueryError(f"eps={q.eps!r}: must be a finite number >= 0 (0: exact)")
        if q.msh:
            if q.kind != "images" or q.radius is not None or q.address_radius is not None or q.rerank or q.eps:
                raise QueryError("msh is a query by images with k alone (no radius, address_radius, rerank or eps)")
            return
        Q.check(q.k, q.radius, q.address_radius, q.rerank, q.eps, 64)
        if q.rerank == "tfidf" and q.kind in ("codes", "images"):
            raise QueryError("rerank='tfidf' needs words: query by ids, texts or word_counts, not codes")

    # ------------------------------------------------------------------ queries -> codes
    def _resolve(self, v: LoadedVersion, q: Query, req: _Request):
        """Ranking codes ``uint8[nq, code_bytes]``, each query's bag of words ``(ids, counts)`` where known, and the
        address codes ``uint64[nq]`` when the query needs the address ball (None otherwise)."""
        if q.address_radius is not None and q.address_radius > v.address_bits:
            raise QueryError(f"address_radius={q.address_radius}: the addresses have {v.address_bits} bits")
        if q.kind == "ids":
            codes, bags, addresses = self._resolve_ids(v, q.values, req)
            return codes, bags, addresses if q.address_radius is not None else None
        codes, bags = self._resolve_codes(v, q, req)
        if q.address_radius is None:
            return codes, bags, None
        if not v.address_from_model:
            return codes, bags, C.prefix(codes, v.address_bits)
        if q.kind == "images" and v.address_hasher is not None:
            pixels = self._image_pixels(v, q.values)
            return codes, bags, C.prefix(v.address_hasher.codes(pixels), v.address_bits)
        if q.kind in ("codes", "images") or v.address_hasher is None:
            raise QueryError(
                f"address_radius needs the query's address code, which version {v.version} makes with "
                "an address model of its own: query by ids, texts or word_counts"
            )
        dense = np.zeros((len(bags), len(v.vocab_index)), dtype=np.float32)
        for i, (ids, counts) in enumerate(bags):
            dense[i, ids] = counts
        return codes, bags, C.prefix(v.address_hasher.codes(dense), v.address_bits)

    def _resolve_codes(self, v: LoadedVersion, q: Query, req: _Request):
        if q.rerank == "tfidf" and (not v.has_words or v.idf is None):
            raise QueryError(
                f"version {v.version} cannot re-rank by TF-IDF: "
                + ("its shards store no word counts" if not v.has_words else "it has no vocabulary")
            )
        if q.kind == "codes":
            from .codec import codes_array

            out = codes_array(q.values, v.bits)
            return out, [None] * len(out)
        if q.kind == "images":
            return self._image_codes(v, q.values), [None] * len(q.values)
        if v.hasher is None or v.vocab_index is None:
            raise QueryError(v.model_error or f"version {v.version} has no model vocabulary; query by codes or ids")
        bags = [self._bag(v, q.kind, i, x) for i, x in enumerate(q.values)]
        dense = np.zeros((len(bags), len(v.vocab_index)), dtype=np.float32)
        for i, (ids, counts) in enumerate(bags):
            dense[i, ids] = counts
        return v.hasher.codes(dense), bags

    @classmethod
    def _image_codes(cls, v: LoadedVersion, values: list) -> np.ndarray:
        """Base64 image files -> codes with the version's image model (resized as at prepare time)."""
        return v.hasher.codes(cls._image_pixels(v, values))

    @staticmethod
    def _image_pixels(v: LoadedVersion, values: list) -> np.ndarray:
        """Base64 image files -> pixels ``[n, H*W*C]`` at the size of the version's image model."""
        import base64
        import binascii

        from semhash_spark.index.image_lookup import NotAnImage, decode_query_images, query_images_config

        if v.hasher is None or v.hasher.meta.get("kind") != "images":
            raise QueryError(
                v.model_error or f"version {v.version} is not an image index; query it by texts, codes or ids"
            )
        raws = []
        for i, x in enumerate(values):
            if not isinstance(x, str):
                raise QueryError(f"images[{i}] must be a base64 string, got {type(x).__name__}")
            try:
                raws.append(base64.b64decode(x, validate=True))
            except (binascii.Error, ValueError):
                raise QueryError(f"images[{i}] is not valid base64") from None
        try:
            pixels = decode_query_images(raws, query_images_config(v.hasher))
        except NotAnImage as e:
            raise QueryError(f"images[{e.index}] is not an image this index can read: {e.reason}") from None
        return pixels.reshape(len(pixels), -1)

    @staticmethod
    def _bag(v: LoadedVersion, kind: str, i: int, x) -> tuple[np.ndarray, np.ndarray]:
        from semhash_spark.data.dataset import vectorize

        if kind == "texts":
            if not isinstance(x, str) or not x.strip():
                raise QueryError(f"texts[{i}] is empty: send the document's text")
            ids, counts = vectorize(x, v.vocab_index, v.prepare)
            if ids.size == 0:
                raise QueryError(f"texts[{i}] has no word of the index's {len(v.vocab_index)}-word vocabulary")
            return ids, counts
        if not isinstance(x, dict) or not x:
            raise QueryError(f"word_counts[{i}] must be a non-empty object of word -> count")
        pairs = {}
        for w, c in x.items():
            if isinstance(c, bool) or not isinstance(c, (int, float)) or not math.isfinite(c) or c <= 0:
                raise QueryError(f"word_counts[{i}][{w!r}] = {c!r}: counts must be positive numbers")
            j = v.vocab_index.get(w)
            if j is not None:
                pairs[j] = pairs.get(j, 0.0) + float(c)
        if not pairs:
            raise QueryError(f"word_counts[{i}] has no word of the index's vocabulary")
        ids = np.array(sorted(pairs), dtype=np.int32)
        return ids, np.array([pairs[j] for j in ids], dtype=np.float32)

    def _resolve_ids(self, v: LoadedVersion, ids: list, req: _Request):
        for i, x in enumerate(ids):
            if not isinstance(x, str) or not x:
                raise QueryError(f"ids[{i}] must be a non-empty string, got {x!r}")
        remaining = list(dict.fromkeys(ids))
        where: dict[str, tuple[Partition, int]] = {}
        cached = [p for p in range(v.npartitions) if self.cache.peek((v.version, p)) is not None]
        seen = set(cached)
        rest = [p for p in range(v.npartitions) if p not in seen]
        step = max(1, self.settings.load_threads)
        batches = [cached] + [rest[i : i + step] for i in range(0, len(rest), step)]
        for batch in batches:
            if not remaining:
                break
            for part in req.partitions(batch):
                for key, row in part.find_ids(remaining).items():
                    where[key] = (part, row)
                remaining = [x for x in remaining if x not in where]
        if remaining:
            if req.missing:
                raise Unavailable(
                    f"id {remaining[0]!r} is not in the partitions that could be read; "
                    f"{len(req.missing)} partitions are unreadable now"
                )
            raise UnknownId(f"unknown id {remaining[0]!r}: version {v.version} holds no such document")
        codes = np.stack([where[x][0].codes[where[x][1]] for x in ids])
        addresses = np.array([where[x][0].address[where[x][1]] for x in ids], dtype=np.uint64)
        bags = [where[x][0].words_of(where[x][1]) if v.has_words else None for x in ids]
        return codes, bags, addresses
