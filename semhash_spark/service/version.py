"""One published index version as the service holds it: the verified manifest, the model and vocabulary that
turn text into codes, and the reading of one partition into a searchable :class:`Partition`.

A :class:`LoadedVersion` never changes after it is built; the service swaps whole objects, so a request that took
one sees that version only. Partitions are read on demand (through :class:`~.cache.PartitionCache`): each shard's
size and sha256 are checked against the manifest, its schema, row count and prefix against the format.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from semhash_spark import codes as C
from semhash_spark import index as X
from semhash_spark import store
from semhash_spark.mih import MultiIndexHash

log = logging.getLogger(__name__)

MODEL_DIR = "model"


@dataclass(eq=False)
class Partition:
    """The rows of one partition: codes in a :class:`MultiIndexHash` over the bits after the partition prefix."""

    number: int                        # position in the manifest
    name: str
    offset: int                        # ordinal of its first row
    mih: MultiIndexHash
    suffix: bool                       # distances from ``mih`` leave out the prefix bits (add the prefix distance)
    address: np.ndarray                # uint64[n]
    ids: Any                           # pyarrow StringArray
    word_ids: Any = None               # pyarrow BinaryArray (int32 LE) or None
    word_counts: Any = None            # pyarrow BinaryArray (float32 LE) or None
    id_hash: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))    # sorted hash(id)
    id_order: np.ndarray = field(default_factory=lambda: np.empty(0, np.int32))   # rows in id_hash order

    def __len__(self) -> int:
        return self.mih.ntotal

    @property
    def nbytes(self) -> int:
        arrays = (self.address, self.id_hash, self.id_order)
        arrow = [a for a in (self.ids, self.word_ids, self.word_counts) if a is not None]
        return self.mih.nbytes + sum(a.nbytes for a in arrays) + sum(a.nbytes for a in arrow) + 256

    def find_ids(self, wanted: list[str]) -> dict[str, int]:
        """Rows of the ``wanted`` ids present here (id -> row)."""
        out = {}
        for w in wanted:
            h = hash(w)
            lo = np.searchsorted(self.id_hash, h, "left")
            hi = np.searchsorted(self.id_hash, h, "right")
            for j in range(lo, hi):
                row = int(self.id_order[j])
                if self.ids[row].as_py() == w:
                    out[w] = row
                    break
        return out

    def words_of(self, row: int) -> tuple[np.ndarray, np.ndarray]:
        """Stored bag of words of a row: (word ids int32, counts float32)."""
        ids = np.frombuffer(self.word_ids[row].as_py() or b"", dtype="<i4")
        counts = np.frombuffer(self.word_counts[row].as_py() or b"", dtype="<f4")
        return ids, counts


@dataclass(frozen=True, eq=False)
class LoadedVersion:
    """A verified version: manifest, geometry, partition table, and the model (None if the index has no copy)."""

    index_uri: str
    version: str
    manifest: dict
    hasher: Any = None                 # inference.Encoder (numpy: the service does not import torch)
    model_error: str | None = None     # why text queries cannot be served, when hasher is None

    # derived in __post_init__
    bits: int = 0
    code_bytes: int = 0
    address_bits: int = 0
    partition_bits: int = 0
    part_names: tuple = ()
    part_vals: np.ndarray = None       # type: ignore[assignment]
    part_rows: np.ndarray = None       # type: ignore[assignment]
    part_off: np.ndarray = None        # type: ignore[assignment]
    has_words: bool = False
    vocab_index: dict | None = None
    idf: np.ndarray | None = None
    prepare: Any = None                # config.PrepareConfig of the model

    def __post_init__(self):
        m = self.manifest
        parts = m["partitions"]
        rows = np.array([int(p["rows"]) for p in parts], dtype=np.int64)
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731 - frozen dataclass
        set_("bits", int(m["bits"]))
        set_("code_bytes", C.code_bytes(int(m["bits"])))
        set_("address_bits", int(m["address_bits"]))
        set_("partition_bits", int(m["partition_bits"]))
        set_("part_names", tuple(p["partition"] for p in parts))
        set_("part_vals", np.array([int(p["partition"], 16) for p in parts], dtype=np.uint64))
        set_("part_rows", rows)
        set_("part_off", np.concatenate([[0], np.cumsum(rows)]).astype(np.int64))
        set_("has_words", set(X.WORD_COLUMNS) <= set(m.get("columns", ())))
        if self.hasher is not None:
            from semhash_spark.dataset import idf

            vocab = self.hasher.meta.get("vocab") or {}
            words = list(vocab.get("words") or [])
            if words:
                set_("vocab_index", {w: i for i, w in enumerate(words)})
                df = np.asarray(vocab.get("doc_freq") or np.zeros(len(words)), dtype=np.int64)
                set_("idf", idf(df, int(vocab.get("num_train_docs") or 0)))
            set_("prepare", self.hasher.config.prepare)

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(cls, index_uri: str, version: str | None = None) -> "LoadedVersion":
        """Resolves ``CURRENT`` (unless ``version``), reads and checks the manifest and lists every file it names.

        Raises :class:`~semhash_spark.index.IndexStoreError` (or ``store.StoreError``) when the version does not
        verify; the model's absence or failure only disables text queries (``model_error``).
        """
        if version is None:
            version = X.read_current(index_uri)["version"]
        manifest = X.read_manifest(index_uri, version)            # format, counts, partition order
        X.verify_files(index_uri, version, manifest)              # every shard exists with its size
        hasher, model_error = cls._load_model(index_uri, version, manifest)
        return cls(index_uri=index_uri, version=version, manifest=manifest, hasher=hasher, model_error=model_error)

    @staticmethod
    def _load_model(index_uri: str, version: str, manifest: dict):
        from semhash_spark import inference

        uri = store.join(X.version_prefix(index_uri, version), MODEL_DIR)
        try:
            hasher = inference.load_encoder(uri)
        except inference.CheckpointError as e:
            return None, f"version {version} has no usable model ({e}); query by codes or ids"
        if hasher.bits != int(manifest["bits"]):
            raise X.IndexFormatError(f"{uri}: the model makes {hasher.bits}-bit codes, the index holds "
                                     f"{manifest['bits']}-bit codes")
        return hasher, None

    # ------------------------------------------------------------------ geometry
    @property
    def npartitions(self) -> int:
        return len(self.part_names)

    @property
    def count(self) -> int:
        return int(self.manifest["count"])

    def prefix_distances(self, qpart: int) -> np.ndarray:
        """Hamming distance from a query's partition prefix to every partition's (``int32[npartitions]``)."""
        x = (self.part_vals ^ np.uint64(qpart)).reshape(-1, 1)
        return C.popcount64(x)

    # ------------------------------------------------------------------ reading a partition
    def read_partition(self, p: int) -> Partition:
        """Reads partition ``p``'s shards, checks them against the manifest, and builds its search structure."""
        import pyarrow as pa

        vp = X.version_prefix(self.index_uri, self.version)
        entry = self.manifest["partitions"][p]
        tables = []
        for f in entry["files"]:
            uri = store.join(vp, f["path"])
            try:
                data = store.read_bytes(uri)
            except store.NotFound:
                raise X.IndexFormatError(f"{uri}: listed in the manifest but missing") from None
            if len(data) != int(f["bytes"]):
                raise X.ChecksumMismatch(f"{uri}: {len(data)} bytes, the manifest says {f['bytes']}")
            digest = store.sha256_bytes(data)
            if digest != f["sha256"]:
                raise X.ChecksumMismatch(f"{uri}: sha256 {digest}, the manifest says {f['sha256']}")
            tables.append(self._parse(uri, data, int(f["rows"])))
        columns = ["id", "code", "address"] + (list(X.WORD_COLUMNS) if self.has_words else [])
        if tables:
            table = pa.concat_tables([t.select(columns) for t in tables]).combine_chunks()
        else:
            table = X.shard_schema(self.code_bytes, self.has_words).empty_table().select(columns)
        code = table.column("code").chunk(0) if table.num_rows else None
        if code is not None:
            buf = np.frombuffer(code.buffers()[1], dtype=np.uint8)
            start = code.offset * self.code_bytes
            codes = buf[start:start + len(code) * self.code_bytes].reshape(-1, self.code_bytes)
        else:
            codes = np.zeros((0, self.code_bytes), dtype=np.uint8)
        address = table.column("address").to_numpy().astype(np.uint64, copy=False)
        if np.any(C.prefix(codes, self.partition_bits) != self.part_vals[p]):
            raise X.IndexFormatError(f"partition {entry['partition']} of {vp} holds codes outside it")
        if np.any(C.prefix(codes, self.address_bits) != address):
            raise X.IndexFormatError(f"partition {entry['partition']} of {vp}: address column disagrees with codes")
        suffix = self.partition_bits < self.bits
        mih = MultiIndexHash(codes, self.bits, start_bit=self.partition_bits if suffix else 0)
        ids = table.column("id").chunk(0) if table.num_rows else pa.array([], pa.string())
        hashes = np.fromiter((hash(s) for s in ids.to_pylist()), dtype=np.int64, count=len(ids))
        order = np.argsort(hashes, kind="stable").astype(np.int32)
        words = {}
        if self.has_words:
            for c in X.WORD_COLUMNS:
                words[c] = table.column(c).chunk(0) if table.num_rows else pa.array([], pa.binary())
        part = Partition(number=p, name=entry["partition"], offset=int(self.part_off[p]), mih=mih, suffix=suffix,
                         address=np.ascontiguousarray(address), ids=ids, word_ids=words.get("word_ids"),
                         word_counts=words.get("word_counts"), id_hash=hashes[order], id_order=order)
        log.debug("read partition %s of %s: %d rows, %d bytes in memory", part.name, vp, len(part), part.nbytes)
        return part

    def _parse(self, uri: str, data: bytes, rows: int):
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(pa.BufferReader(data))
        except Exception as e:  # noqa: BLE001 - any parse failure is a format error naming the file
            raise X.IndexFormatError(f"{uri}: not a readable Parquet shard ({e})") from None
        if table.num_rows != rows:
            raise X.IndexFormatError(f"{uri}: {table.num_rows} rows, the manifest says {rows}")
        names = set(table.column_names)
        if not set(X.BASE_COLUMNS) <= names or table.schema.field("code").type != pa.binary(self.code_bytes):
            raise X.IndexFormatError(f"{uri}: schema {table.schema} is not a {self.bits}-bit shard")
        if self.has_words and not set(X.WORD_COLUMNS) <= names:
            raise X.IndexFormatError(f"{uri}: lacks the word columns the manifest lists")
        if table.column("code").null_count or table.column("id").null_count:
            raise X.IndexFormatError(f"{uri}: null ids or codes")
        return table
