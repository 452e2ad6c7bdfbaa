"""The one reader of verified partitions and the one implementation of every query over an index version.

The library (:class:`~semhash_spark.index.published.HammingIndex`, :class:`~semhash_spark.index.lookup.Searcher`,
``semhash query --index``) and the service (``semhash serve``, ``POST /search``) both read partitions with
:func:`read_partition` and answer with :func:`answer` over one :class:`Loaded` structure, so a query means the same
everywhere:

- ``k``: the k nearest items by Hamming distance of the *ranking* code (exact; ``eps > 0`` may stop early).
- ``radius``: every item whose *ranking* code is within ``radius`` of the query's.
- ``address_radius``: the papers' memory lookup, every item whose *address* code is within ``address_radius`` of
  the query's address (the Hamming ball), ordered by the ranking code's distance.
- Given together they intersect: ``k`` cuts to the k nearest by ranking code, ``radius`` filters on it.
- ``rerank="tfidf"``: the shortlist (the address ball, else the ``radius`` ball, else the ``candidates`` nearest)
  ordered by TF-IDF cosine between the query's words and each item's stored words, ties by ranking distance.

Results are ordered by (ranking distance, ordinal) unless re-ranked. The address code is either the first
``address_bits`` bits of the ranking code (indexes written without an address model) or the code of a model of
its own (the manifest's ``address_model``); partitions are prefixes of the address code either way.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from semhash_spark import codes as C
from semhash_spark.index import published as X
from semhash_spark.io import store
from semhash_spark.index.mih import MultiIndexHash

try:  # the address ball's table (branch addreval); a linear popcount over the addresses until it is there
    from semhash_spark.index.address import AddressTable
except ImportError:  # pragma: no cover - depends on the merge order
    AddressTable = None

RERANKS = ("tfidf",)


class QueryError(ValueError):
    """The query is malformed or cannot be answered by this index; the message says why and what to send."""


# --------------------------------------------------------------------------------------------------- geometry


def address_from_model(manifest: dict) -> bool:
    """True when the index's addresses come from an address model of their own, not the ranking code's prefix."""
    return bool(manifest.get("address_model"))


def partition_of_address(address: np.ndarray, address_bits: int, partition_bits: int) -> np.ndarray:
    """The partition (the first ``partition_bits`` bits of the address) of each ``uint64`` address."""
    return np.asarray(address, dtype=np.uint64) >> np.uint64(address_bits - partition_bits)


def prefix_distances(part_vals: np.ndarray, qpart: int) -> np.ndarray:
    """Hamming distance from a query's partition prefix to every partition's (``int32[npartitions]``)."""
    return C.popcount64((np.asarray(part_vals, dtype=np.uint64) ^ np.uint64(qpart)).reshape(-1, 1))


def needed_partitions(
    manifest: dict,
    part_vals: np.ndarray,
    codes: np.ndarray | None,
    addresses: np.ndarray | None,
    *,
    k: int | None,
    radius: int | None,
    address_radius: int | None,
) -> np.ndarray:
    """Partition numbers a batch of queries must read: the union over queries. The address ball reads partitions
    within ``address_radius`` of the query address's prefix; a ranking-code ball does the same only where the
    address is the ranking code's prefix; k nearest without either reads every partition."""
    pb, ab = int(manifest["partition_bits"]), int(manifest["address_bits"])
    n = len(part_vals)
    if address_radius is not None:
        pref = partition_of_address(addresses, ab, pb)
        need = np.zeros(n, dtype=bool)
        for x in np.unique(pref):
            need |= prefix_distances(part_vals, int(x)) <= address_radius
        return np.flatnonzero(need)
    if radius is not None and not address_from_model(manifest):
        need = np.zeros(n, dtype=bool)
        for x in np.unique(C.prefix(codes, pb)):
            need |= prefix_distances(part_vals, int(x)) <= radius
        return np.flatnonzero(need)
    return np.arange(n)


# --------------------------------------------------------------------------------------------------- reading


@dataclass(eq=False)
class PartData:
    """The rows of one partition as read and verified: codes, addresses, ids and (optionally) stored words."""

    number: int  # position in the manifest (-1: an in-memory index's only piece)
    name: str
    offset: int  # ordinal of its first row
    codes: np.ndarray  # uint8[n, code_bytes], the ranking codes
    address: np.ndarray  # uint64[n], the address codes
    ids: Any  # pyarrow StringArray
    word_ids: Any = None  # pyarrow BinaryArray (int32 LE) or None
    word_counts: Any = None  # pyarrow BinaryArray (float32 LE) or None
    labels: Any = None  # pyarrow ListArray of strings or None (shards without text columns)
    snippet: Any = None  # pyarrow StringArray or None
    _id_index: dict | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return int(self.codes.shape[0])

    @property
    def nbytes(self) -> int:
        arrow = [a for a in (self.ids, self.word_ids, self.word_counts, self.labels, self.snippet) if a is not None]
        return int(self.codes.nbytes + self.address.nbytes + sum(a.nbytes for a in arrow) + 256)

    def find_ids(self, wanted: Sequence[str]) -> dict[str, int]:
        """Rows of the ``wanted`` ids present here (id -> row)."""
        if self._id_index is None:
            self._id_index = {s: i for i, s in enumerate(self.ids.to_pylist())}
        return {w: self._id_index[w] for w in wanted if w in self._id_index}

    def words_of(self, row: int) -> tuple[np.ndarray, np.ndarray]:
        """Stored bag of words of a row: (word ids int32, counts float32)."""
        ids = np.frombuffer(self.word_ids[row].as_py() or b"", dtype="<i4")
        counts = np.frombuffer(self.word_counts[row].as_py() or b"", dtype="<f4")
        return ids, counts

    def text_of(self, row: int) -> dict[str, Any]:
        """What a person reads beside a hit: ``{"labels", "snippet"}`` (empty when the shards keep no text)."""
        if self.labels is None:
            return {}
        return {"labels": self.labels[row].as_py() or [], "snippet": self.snippet[row].as_py()}


def read_partition(index_uri: str, version: str, manifest: dict, p: int, *, verify: bool = True) -> PartData:
    """Reads partition ``p`` of a version and checks it: each file's size (and sha256 when ``verify``) against the
    manifest, its schema and row count, every address inside the partition and, where the address is the ranking
    code's prefix, equal to it. Raises :class:`~semhash_spark.index.published.IndexFormatError` or
    :class:`~semhash_spark.index.published.ChecksumMismatch` naming the file."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    bits, ab, pb = int(manifest["bits"]), int(manifest["address_bits"]), int(manifest["partition_bits"])
    cb = C.code_bytes(bits)
    has_words = set(X.WORD_COLUMNS) <= set(manifest.get("columns", ()))
    has_text = set(X.TEXT_COLUMNS) <= set(manifest.get("columns", ()))  # indexes encoded before: without
    vp = X.version_prefix(index_uri, version)
    entry = manifest["partitions"][p]
    tables = []
    for f in entry["files"]:
        uri = store.join(vp, f["path"])
        try:
            data = store.read_bytes(uri)
        except store.NotFound:
            raise X.IndexFormatError(f"{uri}: listed in the manifest but missing") from None
        if len(data) != int(f["bytes"]):
            raise X.ChecksumMismatch(f"{uri}: {len(data)} bytes, the manifest says {f['bytes']}")
        if verify:
            digest = store.sha256_bytes(data)
            if digest != f["sha256"]:
                raise X.ChecksumMismatch(f"{uri}: sha256 {digest}, the manifest says {f['sha256']}")
        try:
            table = pq.read_table(pa.BufferReader(data))
        except Exception as e:  # noqa: BLE001 - any parse failure is a format error naming the file
            raise X.IndexFormatError(f"{uri}: not a readable Parquet shard ({e})") from None
        if table.num_rows != int(f["rows"]):
            raise X.IndexFormatError(f"{uri}: {table.num_rows} rows, the manifest says {f['rows']}")
        names = set(table.column_names)
        if not set(X.BASE_COLUMNS) <= names or table.schema.field("code").type != pa.binary(cb):
            raise X.IndexFormatError(f"{uri}: schema {table.schema} is not a {bits}-bit shard")
        if has_words and not set(X.WORD_COLUMNS) <= names:
            raise X.IndexFormatError(f"{uri}: lacks the word columns the manifest lists")
        if has_text and not set(X.TEXT_COLUMNS) <= names:
            raise X.IndexFormatError(f"{uri}: lacks the text columns the manifest lists")
        if table.column("code").null_count or table.column("id").null_count:
            raise X.IndexFormatError(f"{uri}: null ids or codes")
        tables.append(table)
    columns = (
        ["id", "code", "address"]
        + (list(X.WORD_COLUMNS) if has_words else [])
        + (list(X.TEXT_COLUMNS) if has_text else [])
    )
    if tables:
        table = pa.concat_tables([t.select(columns) for t in tables]).combine_chunks()
    else:
        table = X.shard_schema(cb, has_words, with_text=has_text).empty_table().select(columns)
    if table.num_rows:
        code = table.column("code").chunk(0)
        buf = np.frombuffer(code.buffers()[1], dtype=np.uint8)
        start = code.offset * cb
        codes = buf[start : start + len(code) * cb].reshape(-1, cb)
        ids = table.column("id").chunk(0)
    else:
        codes, ids = np.zeros((0, cb), dtype=np.uint8), pa.array([], pa.string())
    address = np.ascontiguousarray(table.column("address").to_numpy().astype(np.uint64, copy=False))
    value = int(entry["partition"], 16)
    outside = ab < 64 and bool(np.any(address >> np.uint64(ab)))
    if outside or np.any(partition_of_address(address, ab, pb) != np.uint64(value)):
        raise X.IndexFormatError(f"partition {entry['partition']} of {vp} holds addresses outside it")
    if not address_from_model(manifest) and np.any(C.prefix(codes, ab) != address):
        raise X.IndexFormatError(
            f"partition {entry['partition']} of {vp}: address column disagrees with the codes' first {ab} bits"
        )
    words = {}
    if has_words:
        for c in X.WORD_COLUMNS:
            words[c] = table.column(c).chunk(0) if table.num_rows else pa.array([], pa.binary())
    text = {}
    if has_text:
        for c in X.TEXT_COLUMNS:
            text[c] = table.column(c).chunk(0) if table.num_rows else table.column(c).combine_chunks()
    offset = int(sum(int(q["rows"]) for q in manifest["partitions"][:p]))
    return PartData(
        number=p,
        name=entry["partition"],
        offset=offset,
        codes=codes,
        address=address,
        ids=ids,
        word_ids=words.get("word_ids"),
        word_counts=words.get("word_counts"),
        labels=text.get("labels"),
        snippet=text.get("snippet"),
    )


# --------------------------------------------------------------------------------------------------- searching


class Loaded:
    """One search structure over the partitions loaded so far (any subset of a version's, or an in-memory index):
    their ranking codes concatenated in ordinal order under one :class:`~semhash_spark.index.mih.MultiIndexHash`, their
    addresses under one address table. A query runs once over all of them, whatever the number of partitions."""

    def __init__(self, parts: Sequence[PartData], bits: int, address_bits: int):
        self.parts = sorted(parts, key=lambda p: p.offset)
        self.bits, self.address_bits = int(bits), int(address_bits)
        self.numbers = frozenset(p.number for p in self.parts)
        nums = np.array(sorted(self.numbers), dtype=np.int64)
        self._has = np.zeros(int(nums.max()) + 1 if nums.size else 0, dtype=bool)
        self._has[nums[nums >= 0]] = True
        cb = C.code_bytes(bits)
        lens = np.array([len(p) for p in self.parts], dtype=np.int64)
        self.starts = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)  # position of each piece
        self.offsets = np.array([p.offset for p in self.parts], dtype=np.int64)  # ordinal of each piece
        self.ntotal = int(self.starts[-1])
        codes = np.concatenate([p.codes for p in self.parts]) if self.parts else np.zeros((0, cb), np.uint8)
        self.address = np.concatenate([p.address for p in self.parts]) if self.parts else np.zeros(0, np.uint64)
        self.ordinal = np.repeat(self.offsets - self.starts[:-1], lens) + np.arange(self.ntotal, dtype=np.int64)
        self.mih = MultiIndexHash(codes, bits) if self.ntotal else None
        self._addr_table = None
        self._ids = None
        self._lock = threading.Lock()

    def holds(self, numbers: np.ndarray) -> bool:
        """True when every partition in ``numbers`` is in this structure."""
        numbers = np.asarray(numbers, dtype=np.int64)
        if numbers.size == 0:
            return True
        if numbers.size > len(self.numbers) or int(numbers.max()) >= self._has.size:
            return False
        return bool(self._has[numbers].all())

    @property
    def nbytes(self) -> int:
        return int(self.address.nbytes + self.ordinal.nbytes + (self.mih.nbytes if self.mih is not None else 0))

    # ------------------------------------------------------------------ the three searches (positions)
    def knn(self, q: np.ndarray, k: int, eps: float = 0.0) -> list[tuple[np.ndarray, np.ndarray]]:
        if self.mih is None:
            return [_empty() for _ in range(len(q))]
        D, I = self.mih.search(q, k, eps=eps)
        return [(D[i][I[i] >= 0], I[i][I[i] >= 0]) for i in range(len(q))]

    def within(self, q: np.ndarray, radius: int) -> list[tuple[np.ndarray, np.ndarray]]:
        if self.mih is None:
            return [_empty() for _ in range(len(q))]
        lims, D, I = self.mih.range_search(q, radius)
        return [(D[lims[i] : lims[i + 1]], I[lims[i] : lims[i + 1]]) for i in range(len(q))]

    def address_ball(
        self, q: np.ndarray, q_address: np.ndarray, address_radius: int
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """Items whose address is within ``address_radius`` of each query's, with ranking distances, nearest
        first by (ranking distance, position)."""
        if self.mih is None:
            return [_empty() for _ in range(len(q))]
        lims, rows, _ = self._ball(np.asarray(q_address, dtype=np.uint64), address_radius)
        out = []
        for i in range(len(q)):
            r = np.asarray(rows[lims[i] : lims[i + 1]], dtype=np.int64)
            d = self.mih.distances(q[i : i + 1], r)
            o = np.lexsort((r, d))
            out.append((d[o].astype(np.int32), r[o]))
        return out

    def _ball(self, q_address: np.ndarray, radius: int):
        if AddressTable is not None:
            if self._addr_table is None:
                with self._lock:
                    if self._addr_table is None:
                        self._addr_table = AddressTable(self.address, self.address_bits)
            return self._addr_table.ball(q_address, radius)
        lims = np.zeros(len(q_address) + 1, dtype=np.int64)
        rows, dists = [], []
        for i, a in enumerate(q_address):
            d = C.popcount64((self.address ^ np.uint64(a)).reshape(-1, 1))
            hit = np.flatnonzero(d <= radius)
            rows.append(hit)
            dists.append(d[hit])
            lims[i + 1] = lims[i] + hit.size
        cat = lambda xs, t: np.concatenate(xs).astype(t) if xs else np.empty(0, t)  # noqa: E731
        return lims, cat(rows, np.int64), cat(dists, np.int32)

    # ------------------------------------------------------------------ rows
    def locate(self, pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(piece index, row inside the piece) of structure positions."""
        pos = np.asarray(pos, dtype=np.int64)
        piece = np.searchsorted(self.starts, pos, side="right") - 1
        return piece, pos - self.starts[piece]

    def locate_ordinals(self, ordinals: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(piece index, row) of ordinals; piece -1 where the ordinal's partition is not loaded here."""
        o = np.asarray(ordinals, dtype=np.int64)
        piece = np.searchsorted(self.offsets, o, side="right") - 1
        ok = piece >= 0
        lens = np.diff(self.starts)
        row = o - self.offsets[np.maximum(piece, 0)]
        ok &= row < lens[np.maximum(piece, 0)] if len(lens) else np.zeros_like(ok)
        return np.where(ok, piece, -1), row

    def ids(self, pos: np.ndarray) -> list[str]:
        pos = np.asarray(pos, dtype=np.int64)
        if pos.size == 0:
            return []
        if self._ids is None:  # the ids' UTF-8 bytes and offsets, read without a per-call Arrow kernel
            import pyarrow as pa

            arr = pa.concat_arrays([p.ids for p in self.parts]) if len(self.parts) > 1 else self.parts[0].ids
            offs = np.frombuffer(arr.buffers()[1], dtype=np.int32)[arr.offset : arr.offset + len(arr) + 1]
            data = arr.buffers()[2]
            self._ids = (offs.astype(np.int64), data.to_pybytes() if data is not None else b"")
        offs, data = self._ids
        return [data[a:b].decode() for a, b in zip(offs[pos].tolist(), offs[pos + 1].tolist())]

    def bags(self, pos: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        piece, row = self.locate(pos)
        return [self.parts[int(p)].words_of(int(r)) for p, r in zip(piece, row)]

    def texts(self, pos: np.ndarray) -> list[dict[str, Any]]:
        """Each position's ``{"labels", "snippet"}`` (``{}`` where its shards keep no text columns)."""
        piece, row = self.locate(pos)
        return [self.parts[int(p)].text_of(int(r)) for p, r in zip(piece, row)]


def _empty() -> tuple[np.ndarray, np.ndarray]:
    return np.empty(0, np.int32), np.empty(0, np.int64)


# --------------------------------------------------------------------------------------------------- scoring


def idf_of(vocab: dict | None) -> np.ndarray | None:
    """The model vocabulary's smooth idf (``dataset.idf``), float64; None without document frequencies."""
    from semhash_spark.data.dataset import idf

    if not vocab or vocab.get("doc_freq") is None:
        return None
    return idf(np.asarray(vocab["doc_freq"], dtype=np.int64), int(vocab.get("num_train_docs") or 0)).astype(np.float64)


def tfidf_cosine(
    idf: np.ndarray, query_bag: tuple[np.ndarray, np.ndarray], bags: Sequence[tuple[np.ndarray, np.ndarray]]
) -> np.ndarray:
    """TF-IDF cosine between one bag of words ``(ids ascending, counts)`` and each of ``bags`` (float64)."""

    def unit(ids, counts):
        ids = np.asarray(ids, dtype=np.int64)
        w = np.asarray(counts, dtype=np.float64) * idf[ids]
        n = np.linalg.norm(w)
        return ids, (w / n if n > 0 else w)

    qi, qv = unit(*query_bag)
    out = np.zeros(len(bags), dtype=np.float64)
    for j, bag in enumerate(bags):
        di, dv = unit(*bag)
        common, a, b = np.intersect1d(qi, di, assume_unique=True, return_indices=True)
        out[j] = float(qv[a] @ dv[b]) if common.size else 0.0
    return out


# --------------------------------------------------------------------------------------------------- answering


@dataclass
class Answer:
    """One query's results: ordinals, ranking distances and (re-ranked) scores, best first; ``ids`` by ordinal.
    ``address_distance``: each hit's address-code distance (address lookups); ``texts``: each hit's labels and
    snippet (when asked for, on an index that keeps them)."""

    ordinal: np.ndarray
    distance: np.ndarray
    ids: list[str]
    score: np.ndarray | None = None
    truncated: bool = False
    address_distance: np.ndarray | None = None
    texts: list[dict[str, Any]] | None = None

    def hits(self) -> list[dict[str, Any]]:
        """``[{"id", "distance"[, "address_distance"][, "score"][, "labels", "snippet"]}]``: the shape of
        ``POST /search`` results and ``semhash query --json``."""
        dist = self.distance.tolist()
        if self.score is None and self.address_distance is None and self.texts is None:
            return [{"id": i, "distance": d} for i, d in zip(self.ids, dist)]
        out = [{"id": i, "distance": d} for i, d in zip(self.ids, dist)]
        if self.address_distance is not None:
            for h, a in zip(out, self.address_distance.tolist()):
                h["address_distance"] = a
        if self.score is not None:
            for h, s in zip(out, self.score.tolist()):
                h["score"] = round(s, 6)
        if self.texts is not None:
            for h, t in zip(out, self.texts):
                h.update(t)
        return out


def knn_hits(loaded: Loaded, q: np.ndarray, k: int, eps: float = 0.0) -> list[list[dict[str, Any]]]:
    """``answer(loaded, q, k=k, eps=eps)`` as :meth:`Answer.hits` lists, built for the whole batch at once (one
    search call, one id lookup): the bulk path of plain k nearest."""
    if loaded.mih is None:
        return [[] for _ in range(len(q))]
    D, I = loaded.mih.search(q, k, eps=eps)
    ok = I >= 0
    ids = loaded.ids(I[ok])
    dist = D[ok].tolist()
    ends = np.cumsum(ok.sum(axis=1)).tolist()
    out, a = [], 0
    for b in ends:
        out.append([{"id": i, "distance": d} for i, d in zip(ids[a:b], dist[a:b])])
        a = b
    return out


def check(
    k: int | None, radius: int | None, address_radius: int | None, rerank: str | None, eps: float, address_bits: int
) -> None:
    """The meaning shared by every entry point; raises :class:`QueryError` naming the parameter."""
    if k is None and radius is None and address_radius is None:
        raise QueryError(
            "give k (nearest by ranking code), radius (ranking-code ball) and/or address_radius (address ball)"
        )
    if k is not None and k < 1:
        raise QueryError(f"k={k}: must be at least 1")
    if radius is not None and radius < 0:
        raise QueryError(f"radius={radius}: must be >= 0")
    if address_radius is not None and not 0 <= address_radius <= address_bits:
        raise QueryError(f"address_radius={address_radius}: must be in 0..{address_bits} (the address's bits)")
    if rerank is not None and rerank not in RERANKS:
        raise QueryError(
            f"rerank={rerank!r}: use 'tfidf' (order by the ranking code is the default; the address "
            "ball is address_radius)"
        )
    if eps and (k is None or radius is not None or address_radius is not None or rerank is not None):
        raise QueryError("eps applies to k nearest neighbours alone: give k without radius, address_radius or rerank")


def answer(
    loaded: Loaded,
    q: np.ndarray,
    *,
    k: int | None = None,
    radius: int | None = None,
    address_radius: int | None = None,
    q_address: np.ndarray | None = None,
    rerank: str | None = None,
    bags: Sequence | None = None,
    bags_of=None,
    idf: np.ndarray | None = None,
    candidates: int = 100,
    max_results: int | None = None,
    eps: float = 0.0,
    details: bool = False,
) -> list[Answer]:
    """Every query of a batch over one :class:`Loaded`, with the meaning of the module docstring.

    ``bags``: the queries' words for ``rerank="tfidf"``; ``bags_of(positions)`` the stored words of items (default:
    the loaded partitions'). ``max_results`` caps a list without ``k`` (``truncated`` set when it cut).
    ``details``: add each hit's stored labels and snippet. Address lookups carry each hit's address distance.
    """
    nq = len(q)
    if address_radius is not None:
        if q_address is None:
            raise QueryError("address_radius needs the queries' address codes")
        lists = loaded.address_ball(q, q_address, address_radius)
        if radius is not None:
            lists = [(d[d <= radius], r[d <= radius]) for d, r in lists]
    elif radius is not None:
        lists = loaded.within(q, radius)
    elif rerank:
        lists = loaded.knn(q, max(candidates, k or 0))
    else:
        lists = loaded.knn(q, k, eps=eps)
    out = []
    for i, (d, pos) in enumerate(lists):
        cut = False
        score = None
        if rerank:
            if max_results is not None and len(d) > max_results and (address_radius is not None or radius is not None):
                d, pos, cut = d[:max_results], pos[:max_results], True  # the nearest max_results of the ball
            stored = bags_of(pos) if bags_of is not None else loaded.bags(pos)
            score = tfidf_cosine(idf, bags[i], stored)
            o = np.lexsort((loaded.ordinal[pos], d, -score))
            limit = k if k is not None else max_results
            o = o[:limit] if limit is not None else o
            d, pos, score = d[o], pos[o], score[o]
        else:
            limit = k if k is not None else max_results
            if limit is not None and len(d) > limit:
                cut = k is None
                d, pos = d[:limit], pos[:limit]
        adist = None
        if address_radius is not None:
            adist = C.popcount64((loaded.address[pos] ^ np.uint64(q_address[i])).reshape(-1, 1)).astype(np.int32)
        out.append(
            Answer(
                ordinal=loaded.ordinal[pos],
                distance=d.astype(np.int32),
                ids=loaded.ids(pos),
                score=score,
                truncated=cut,
                address_distance=adist,
                texts=loaded.texts(pos) if details else None,
            )
        )
    assert len(out) == nq
    return out


# --------------------------------------------------------------------------------------------------- MSH (images)


def read_patch_table(index_uri: str, version: str, manifest: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The version's patch table: (ids object[n], codes uint8[n, code_bytes], patch codes uint8[n, 81,
    patch_bytes]), checksums verified."""
    import io

    import pyarrow.parquet as pq

    from semhash_spark.models import msh

    info = manifest.get("patches")
    if not info:
        raise QueryError(
            f"index version {version} has no patch codes: encode with --patch-model for multiple semantic hashing"
        )
    vuri = X.version_prefix(index_uri, version)
    ids, codes, patches = [], [], []
    for f in info["files"]:
        data = store.read_bytes(store.join(vuri, f["path"]))
        if store.sha256_bytes(data) != f["sha256"]:
            raise X.ChecksumMismatch(f"{f['path']}: sha256 does not match the manifest")
        t = pq.read_table(io.BytesIO(data))
        ids.extend(t.column("id").to_pylist())
        codes.append(X.codes_from_column(t.column("code").to_pylist(), manifest["code_bytes"]))
        pb = info["code_bytes"]
        patches.append(
            X.codes_from_column(t.column("patch_codes").to_pylist(), msh.N_PATCHES * pb).reshape(-1, msh.N_PATCHES, pb)
        )
    return np.asarray(ids, dtype=object), np.concatenate(codes), np.concatenate(patches)


@dataclass(eq=False)
class PatchTable:
    """Multiple semantic hashing over one image version: its patch model, glimpse geometry and patch table."""

    ids: np.ndarray  # object[n]
    codes: np.ndarray  # uint8[n, code_bytes], the images' ranking codes
    index: Any  # msh.PatchIndex over the images' glimpse codes
    patch_encoder: Any  # the version's patch model (inference.Encoder or checkpoint.Hasher)
    images_cfg: Any  # config.ImagesConfig: image size and glimpse geometry

    @classmethod
    def read(cls, index_uri: str, version: str, manifest: dict, encoder, patch_encoder) -> "PatchTable":
        """From the version's patch files and models (``encoder`` the image model: the image size)."""
        from semhash_spark.models import msh
        from semhash_spark.config import ImagesConfig

        ids, codes, patches = read_patch_table(index_uri, version, manifest)
        icfg = dict(encoder.meta["config"]["images"])
        pc = patch_encoder.meta["config"]["images"]
        d = encoder.meta["data"]
        icfg.update(
            patch_side=pc["patch_side"],
            patch_fovea=pc["patch_fovea"],
            height=d["height"],
            width=d["width"],
            channels=d["channels"],
        )
        return cls(ids, codes, msh.PatchIndex.build(patches, patch_encoder.bits), patch_encoder, ImagesConfig(**icfg))


def msh_hits(table: PatchTable, pixels: np.ndarray, q: np.ndarray, k: int | None) -> list[list[dict[str, Any]]]:
    """Multiple semantic hashing: every image found by a radius-3 lookup of any of a query's 81 glimpses scores
    ``2^(3-d)``, summed over glimpses; ordered by score, then the ranking code's distance, then row; images no
    glimpse found are not returned. ``pixels`` uint8 [n, H, W, C], ``q`` their ranking codes; at most ``k``."""
    from semhash_spark.models import msh

    if k is not None and k < 1:
        raise QueryError(f"k={k}: must be at least 1")
    qp = msh.patch_codes(table.patch_encoder, pixels, table.images_cfg)
    out = []
    for r in range(len(pixels)):
        scores = table.index.scores(qp[r])
        found = np.flatnonzero(scores > 0)
        d = C.hamming(q[r : r + 1], table.codes[found])[0] if len(found) else np.zeros(0, np.int64)
        s = scores[found]
        order = np.lexsort((found, d, -s))
        order = order[:k] if k else order
        out.append([{"id": table.ids[found[j]], "distance": int(d[j]), "score": float(s[j])} for j in order])
    return out
