"""Answering a batch of queries against one :class:`~.version.LoadedVersion` (no HTTP here).

Queries come as ids, texts, word counts or hex codes and become codes (texts through the version's own model and
vocabulary). Then, per query:

- ``k`` (optionally capped by ``radius``): exact k nearest by full-code Hamming distance. Partitions are probed in
  rings of increasing prefix distance -- a code in a partition whose prefix is ``d`` from the query's is at least
  ``d`` away -- and the search stops once the k-th distance is below the next ring.
- ``radius`` alone: every code within ``radius`` (nearest first, at most ``max_results``); only partitions whose
  prefix is within ``radius`` are read, and inside each the multi-index hash is asked for ``radius - d``.
- ``rerank="code"``: the papers' memory lookup -- codes whose ``address_bits``-bit address is within ``radius`` of
  the query's address -- ordered by the full (longer) code's distance.
- ``rerank="tfidf"``: a shortlist (``radius`` ball, else the ``rerank_candidates`` nearest) ordered by TF-IDF cosine
  between the query's words and each document's stored words.

Ties are ordered by ordinal, as in :class:`~semhash_spark.index.HammingIndex`. Partitions that cannot be read
(store unreachable, shard missing or corrupt) are skipped and named in the outcome (``partial``); a request for
which none of the partitions it needed could be read raises :class:`Unavailable`.
"""
from __future__ import annotations

import logging
import math
import time
from concurrent.futures import wait
from dataclasses import dataclass, field

import numpy as np

from semhash_spark import codes as C

from .cache import PartitionCache
from .settings import Settings
from .version import LoadedVersion, Partition

log = logging.getLogger(__name__)

KINDS = ("ids", "texts", "codes", "word_counts", "images")
RERANKS = ("tfidf", "code")


class QueryError(ValueError):
    """The query is malformed or cannot be answered by this index; the message says why and what to send."""


class UnknownId(QueryError):
    """An id that the version does not hold."""


class BatchTooLarge(QueryError):
    """More queries in one request than the service accepts."""


class Unavailable(RuntimeError):
    """Nothing the request needs can be read now (store unreachable, every needed shard failing)."""


@dataclass(frozen=True)
class Query:
    kind: str                          # one of KINDS
    values: list                       # ids, texts, hex codes, or {word: count} dicts
    k: int | None = None
    radius: int | None = None
    rerank: str | None = None
    eps: float = 0.0                   # k nearest: 0 exact; > 0 each result within (1 + eps) of the true distance


@dataclass
class Hit:
    id: str
    distance: int
    score: float | None = None


@dataclass
class Outcome:
    version: str
    results: list[list[Hit]]
    codes: list[str]                   # each query's code, hex
    partial: bool = False
    missing_partitions: list[str] = field(default_factory=list)
    truncated: bool = False


@dataclass
class _Candidates:
    """Search results as parallel arrays; ``piece`` indexes ``parts`` for id and word look-ups."""

    d: np.ndarray
    ordinal: np.ndarray
    piece: np.ndarray
    row: np.ndarray
    parts: list

    @classmethod
    def empty(cls) -> "_Candidates":
        z = np.empty(0, np.int64)
        return cls(np.empty(0, np.int32), z, z, z, [])

    @classmethod
    def join(cls, pieces: list[tuple[Partition, np.ndarray, np.ndarray]]) -> "_Candidates":
        if not pieces:
            return cls.empty()
        parts = [p for p, _, _ in pieces]
        d = np.concatenate([x for _, x, _ in pieces]).astype(np.int32)
        row = np.concatenate([r for _, _, r in pieces]).astype(np.int64)
        piece = np.repeat(np.arange(len(pieces)), [len(r) for _, _, r in pieces])
        ordinal = np.array([p.offset for p in parts], dtype=np.int64)[piece] + row if len(parts) else row
        return cls(d, ordinal, piece, row, parts)

    def take(self, idx: np.ndarray) -> "_Candidates":
        return _Candidates(self.d[idx], self.ordinal[idx], self.piece[idx], self.row[idx], self.parts)

    def nearest(self, k: int | None = None) -> "_Candidates":
        """Sorted by (distance, ordinal), the first ``k``."""
        idx = np.arange(len(self.d))
        if k is not None and len(self.d) > k:
            idx = np.flatnonzero(self.d <= np.partition(self.d, k - 1)[k - 1])
        order = idx[np.lexsort((self.ordinal[idx], self.d[idx]))]
        return self.take(order if k is None else order[:k])

    def __len__(self) -> int:
        return len(self.d)


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
        req = _Request(v, self.cache, time.monotonic() + self.settings.fetch_timeout_s)
        codes, bags = self._resolve(v, q, req)
        results, truncated = [], False
        for i in range(codes.shape[0]):
            hits, cut = self._one(v, q, codes[i:i + 1], bags[i], req)
            results.append(hits)
            truncated |= cut
        if req.missing:
            if req.read == 0:
                raise Unavailable(f"no partition needed could be read from version {v.version}: "
                                  + "; ".join(f"{k}: {m}" for k, m in sorted(req.missing.items())[:5]))
            log.warning("partial answer: %d partitions missing", len(req.missing),
                        extra={"version": v.version, "missing": sorted(req.missing)[:20]})
        return Outcome(version=v.version, results=results, codes=C.to_hex(codes), partial=bool(req.missing),
                       missing_partitions=sorted(req.missing), truncated=truncated)

    def _check(self, q: Query) -> None:
        s = self.settings
        if q.kind not in KINDS:
            raise QueryError(f"unknown query kind {q.kind!r}; send one of {list(KINDS)}")
        if not q.values:
            raise QueryError(f"{q.kind} is empty: send at least one query")
        if len(q.values) > s.max_batch:
            raise BatchTooLarge(f"{len(q.values)} queries in one request; at most {s.max_batch} (split the batch)")
        if q.k is None and q.radius is None:
            raise QueryError("give k (nearest neighbours) and/or radius (Hamming ball)")
        if q.k is not None and not 1 <= q.k <= s.max_k:
            raise QueryError(f"k={q.k} is out of range: 1..{s.max_k}")
        if q.radius is not None and not 0 <= q.radius <= s.max_radius:
            raise QueryError(f"radius={q.radius} is out of range: 0..{s.max_radius}")
        if not (isinstance(q.eps, (int, float)) and math.isfinite(q.eps) and q.eps >= 0):
            raise QueryError(f"eps={q.eps!r}: must be a finite number >= 0 (0: exact)")
        if q.eps > 0 and (q.k is None or q.rerank == "code"):
            raise QueryError("eps applies to k nearest neighbours: give k (and no rerank='code')")
        if q.rerank is not None and q.rerank not in RERANKS:
            raise QueryError(f"rerank={q.rerank!r}: use 'tfidf' (documents) or 'code' (address shortlist)")
        if q.rerank == "code" and q.radius is None:
            raise QueryError("rerank='code' needs radius: the Hamming radius around the query's address")
        if q.rerank == "tfidf" and q.kind == "codes":
            raise QueryError("rerank='tfidf' needs words: query by ids, texts or word_counts, not codes")

    # ------------------------------------------------------------------ queries -> codes
    def _resolve(self, v: LoadedVersion, q: Query, req: _Request):
        """Codes ``uint8[nq, code_bytes]`` and, where known, each query's bag of words ``(ids, counts)``."""
        if q.rerank == "tfidf" and (not v.has_words or v.idf is None):
            raise QueryError(f"version {v.version} cannot re-rank by TF-IDF: "
                             + ("its shards store no word counts" if not v.has_words else "it has no vocabulary"))
        if q.kind == "codes":
            out = []
            for i, h in enumerate(q.values):
                if not isinstance(h, str):
                    raise QueryError(f"codes[{i}] must be a hex string, got {type(h).__name__}")
                try:
                    out.append(C.from_hex(h, v.bits))
                except ValueError as e:
                    raise QueryError(f"codes[{i}]: {e} (this index holds {v.bits}-bit codes)") from None
            return np.concatenate(out), [None] * len(out)
        if q.kind == "ids":
            return self._resolve_ids(v, q.values, req)
        if q.kind == "images":
            return self._image_codes(v, q.values), [None] * len(q.values)
        if v.hasher is None or v.vocab_index is None:
            raise QueryError(v.model_error or f"version {v.version} has no model vocabulary; query by codes or ids")
        bags = [self._bag(v, q.kind, i, x) for i, x in enumerate(q.values)]
        dense = np.zeros((len(bags), len(v.vocab_index)), dtype=np.float32)
        for i, (ids, counts) in enumerate(bags):
            dense[i, ids] = counts
        return v.hasher.codes(dense), bags

    @staticmethod
    def _image_codes(v: LoadedVersion, values: list) -> np.ndarray:
        """Base64 image files -> codes with the version's image model (resized as at prepare time)."""
        import base64
        import binascii

        from semhash_spark.config import ImagesConfig
        from semhash_spark.images import decode_image

        if v.hasher is None or v.hasher.meta.get("kind") != "images":
            raise QueryError(v.model_error or f"version {v.version} is not an image index; query it by texts, "
                             "codes or ids")
        d = v.hasher.meta["data"]
        cfg = ImagesConfig(height=d["height"], width=d["width"], channels=d["channels"])
        pixels = []
        for i, x in enumerate(values):
            if not isinstance(x, str):
                raise QueryError(f"images[{i}] must be a base64 string, got {type(x).__name__}")
            try:
                raw = base64.b64decode(x, validate=True)
            except (binascii.Error, ValueError):
                raise QueryError(f"images[{i}] is not valid base64") from None
            try:
                pixels.append(decode_image(raw, None, cfg))
            except ValueError as e:
                raise QueryError(f"images[{i}] is not an image this index can read: {e}") from None
        return v.hasher.codes(np.stack(pixels).reshape(len(pixels), -1))

    @staticmethod
    def _bag(v: LoadedVersion, kind: str, i: int, x) -> tuple[np.ndarray, np.ndarray]:
        from semhash_spark.dataset import vectorize

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
        batches = [cached] + [rest[i:i + step] for i in range(0, len(rest), step)]
        for batch in batches:
            if not remaining:
                break
            for part in req.partitions(batch):
                for key, row in part.find_ids(remaining).items():
                    where[key] = (part, row)
                remaining = [x for x in remaining if x not in where]
        if remaining:
            if req.missing:
                raise Unavailable(f"id {remaining[0]!r} is not in the partitions that could be read; "
                                  f"{len(req.missing)} partitions are unreadable now")
            raise UnknownId(f"unknown id {remaining[0]!r}: version {v.version} holds no such document")
        codes = np.concatenate([where[x][0].mih.codes_of([where[x][1]]) for x in ids])
        bags = [where[x][0].words_of(where[x][1]) if v.has_words else None for x in ids]
        return codes, bags

    # ------------------------------------------------------------------ one query
    def _one(self, v: LoadedVersion, q: Query, code: np.ndarray, bag, req: _Request) -> tuple[list[Hit], bool]:
        s = self.settings
        if q.rerank == "code":
            c = self._address_ball(v, code, q.radius, req).nearest()
            cut = q.k is None and len(c) > s.max_results
            return self._hits(c.take(np.arange(min(len(c), q.k or s.max_results)))), cut
        if q.rerank == "tfidf":
            cut = False
            if q.radius is not None:
                c = self._within(v, code, q.radius, req)
                cut = len(c) > s.max_results           # the shortlist is the nearest max_results of the ball
                c = c.nearest(s.max_results)
            else:
                c = self._knn(v, code, max(s.rerank_candidates, q.k or 0), None, req, q.eps)
            scores = self._cosines(v, bag, c)
            order = np.lexsort((c.ordinal, c.d, -scores))[: q.k or s.max_results]
            return self._hits(c.take(order), scores[order]), cut
        if q.k is not None:
            return self._hits(self._knn(v, code, q.k, q.radius, req, q.eps)), False
        c = self._within(v, code, q.radius, req)
        return self._hits(c.nearest(s.max_results)), len(c) > s.max_results

    def _within(self, v: LoadedVersion, code: np.ndarray, radius: int, req: _Request) -> _Candidates:
        pd = v.prefix_distances(int(C.prefix(code, v.partition_bits)[0]))
        pieces = []
        for part in req.partitions(np.flatnonzero(pd <= radius)):
            off = int(pd[part.number]) if part.suffix else 0
            _, D, I = part.mih.range_search(code, radius - off)
            pieces.append((part, D + off, I))
        return _Candidates.join(pieces)

    def _knn(self, v: LoadedVersion, code: np.ndarray, k: int, radius: int | None, req: _Request,
             eps: float = 0.0) -> _Candidates:
        """The k nearest (within ``radius`` if given), ring by ring of partitions around the query's address.
        ``eps > 0``: a ring, or the codes of a partition, are skipped once the k-th distance found is below
        ``1 + eps`` times what they are at least at, so each result is within ``1 + eps`` of the true distance of
        its rank (a skipped true neighbour is at least the k-th found over ``1 + eps``)."""
        pd = v.prefix_distances(int(C.prefix(code, v.partition_bits)[0]))
        best = _Candidates.empty()
        for ring in np.unique(pd):
            ring = int(ring)
            if radius is not None and ring > radius:
                break
            if len(best) == k and best.d[-1] < (1.0 + eps) * ring:
                break  # every code further out is at least `ring` away
            pieces = []
            for part in req.partitions(np.flatnonzero(pd == ring)):
                off = ring if part.suffix else 0
                limit = radius
                if len(best) == k:   # exact: ties at the k-th distance too (by ordinal); eps: below kth / (1 + eps)
                    kth = int(best.d[-1]) if eps == 0 else math.ceil(int(best.d[-1]) / (1.0 + eps)) - 1
                    limit = kth if limit is None else min(limit, kth)
                if limit is None:
                    D, I = part.mih.search(code, k, eps=eps)
                    ok = I[0] >= 0
                    pieces.append((part, D[0][ok] + off, I[0][ok]))
                elif limit >= off:
                    _, D, I = part.mih.range_search(code, limit - off)
                    pieces.append((part, D + off, I))
            if pieces:
                best = _merge(best, _Candidates.join(pieces), k)
        return best

    def _address_ball(self, v: LoadedVersion, code: np.ndarray, radius: int, req: _Request) -> _Candidates:
        qaddr = np.uint64(C.prefix(code, v.address_bits)[0])
        pd = v.prefix_distances(int(C.prefix(code, v.partition_bits)[0]))
        pieces = []
        for part in req.partitions(np.flatnonzero(pd <= radius)):
            rows = np.flatnonzero(C.popcount64((part.address ^ qaddr).reshape(-1, 1)) <= radius)
            off = int(pd[part.number]) if part.suffix else 0
            pieces.append((part, part.mih.distances(code, rows) + off, rows))
        return _Candidates.join(pieces)

    # ------------------------------------------------------------------ re-ranking and answers
    @staticmethod
    def _cosines(v: LoadedVersion, bag, c: _Candidates) -> np.ndarray:
        """TF-IDF cosine between the query's bag of words and each candidate's stored one."""
        def unit(ids, counts):
            w = counts.astype(np.float64) * v.idf[ids]
            n = np.linalg.norm(w)
            return ids, (w / n if n > 0 else w)

        qi, qv = unit(*bag)
        out = np.zeros(len(c), dtype=np.float64)
        for j in range(len(c)):
            di, dv = unit(*c.parts[c.piece[j]].words_of(int(c.row[j])))
            common, a, b = np.intersect1d(qi, di, assume_unique=True, return_indices=True)
            out[j] = float(qv[a] @ dv[b]) if common.size else 0.0
        return out

    @staticmethod
    def _hits(c: _Candidates, scores: np.ndarray | None = None) -> list[Hit]:
        out = []
        for j in range(len(c)):
            part = c.parts[c.piece[j]]
            out.append(Hit(id=part.ids[int(c.row[j])].as_py(), distance=int(c.d[j]),
                           score=None if scores is None else round(float(scores[j]), 6)))
        return out


def _merge(a: _Candidates, b: _Candidates, k: int) -> _Candidates:
    if not len(a):
        return b.nearest(k)
    parts = a.parts + b.parts
    joined = _Candidates(np.concatenate([a.d, b.d]), np.concatenate([a.ordinal, b.ordinal]),
                         np.concatenate([a.piece, b.piece + len(a.parts)]), np.concatenate([a.row, b.row]), parts)
    return joined.nearest(k)
