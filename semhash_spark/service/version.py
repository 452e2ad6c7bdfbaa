"""One published index version as the service holds it: the verified manifest, the model and vocabulary that
turn text into codes, and the reading of one partition into a searchable :class:`Partition`.

A :class:`LoadedVersion` never changes after it is built; the service swaps whole objects, so a request that took
one sees that version only. Partitions are read on demand (through :class:`~.cache.PartitionCache`): each shard's
size and sha256 are checked against the manifest, its schema, row count and prefix against the format.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from semhash_spark import codes as C
from semhash_spark.index import published as X
from semhash_spark.io import store
from semhash_spark.index import query as Q

log = logging.getLogger(__name__)

MODEL_DIR = "model"
ADDRESS_MODEL_DIR = "address_model"


Partition = (
    Q.PartData
)  # one partition as read and verified (the reader is :func:`semhash_spark.index.query.read_partition`)


@dataclass(frozen=True, eq=False)
class LoadedVersion:
    """A verified version: manifest, geometry, partition table, and the model (None if the index has no copy)."""

    index_uri: str
    version: str
    manifest: dict
    hasher: Any = None  # inference.Encoder (numpy: the service does not import torch)
    model_error: str | None = None  # why text queries cannot be served, when hasher is None
    address_hasher: Any = None  # inference.Encoder of the address model, when the index has one

    # derived in __post_init__
    bits: int = 0
    code_bytes: int = 0
    address_bits: int = 0
    partition_bits: int = 0
    part_names: tuple = ()
    part_vals: np.ndarray = None  # type: ignore[assignment]
    part_rows: np.ndarray = None  # type: ignore[assignment]
    part_off: np.ndarray = None  # type: ignore[assignment]
    has_words: bool = False
    vocab_index: dict | None = None
    idf: np.ndarray | None = None
    prepare: Any = None  # config.PrepareConfig of the model
    address_from_model: bool = False
    _shared: dict = field(default_factory=dict, repr=False)  # the search structure, rebuilt as partitions load

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
        set_("address_from_model", Q.address_from_model(m))
        self._shared["lock"] = threading.Lock()
        self._shared["loaded"] = Q.Loaded([], self.bits, self.address_bits)
        if self.hasher is not None:
            vocab = self.hasher.meta.get("vocab") or {}
            words = list(vocab.get("words") or [])
            if words:
                set_("vocab_index", {w: i for i, w in enumerate(words)})
                set_("idf", Q.idf_of(vocab))
            set_("prepare", self.hasher.config.prepare)

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(cls, index_uri: str, version: str | None = None) -> "LoadedVersion":
        """Resolves ``CURRENT`` (unless ``version``), reads and checks the manifest and lists every file it names.

        Raises :class:`~semhash_spark.index.published.IndexStoreError` (or ``store.StoreError``) when the version does not
        verify; the model's absence or failure only disables text queries (``model_error``).
        """
        if version is None:
            version = X.read_current(index_uri)["version"]
        manifest = X.read_manifest(index_uri, version)  # format, counts, partition order
        X.verify_files(index_uri, version, manifest)  # every shard exists with its size
        hasher, model_error = cls._load_model(index_uri, version, manifest)
        address_hasher = None
        if Q.address_from_model(manifest):
            from semhash_spark.models import inference

            uri = store.join(
                X.version_prefix(index_uri, version), manifest["address_model"].get("path") or ADDRESS_MODEL_DIR
            )
            try:
                address_hasher = inference.load_encoder(uri)
            except inference.CheckpointError as e:
                model_error = model_error or f"version {version} has no usable address model ({e}); query by ids"
            else:
                if address_hasher.bits != int(manifest["address_bits"]):
                    raise X.IndexFormatError(
                        f"{uri}: the address model makes {address_hasher.bits}-bit codes, "
                        f"the index holds {manifest['address_bits']}-bit addresses"
                    )
        return cls(
            index_uri=index_uri,
            version=version,
            manifest=manifest,
            hasher=hasher,
            model_error=model_error,
            address_hasher=address_hasher,
        )

    @staticmethod
    def _load_model(index_uri: str, version: str, manifest: dict):
        from semhash_spark.models import inference

        uri = store.join(X.version_prefix(index_uri, version), MODEL_DIR)
        try:
            hasher = inference.load_encoder(uri)
        except inference.CheckpointError as e:
            return None, f"version {version} has no usable model ({e}); query by codes or ids"
        if hasher.bits != int(manifest["bits"]):
            raise X.IndexFormatError(
                f"{uri}: the model makes {hasher.bits}-bit codes, the index holds {manifest['bits']}-bit codes"
            )
        return hasher, None

    def patch_table(self) -> Q.PatchTable:
        """The version's patch table and patch model (multiple semantic hashing), read and verified once."""
        if not self.manifest.get("patches"):
            raise ValueError(
                f"version {self.version} has no patch codes: encode with --patch-model for multiple semantic hashing"
            )
        if self.hasher is None:
            raise ValueError(self.model_error or f"version {self.version} has no model")
        with self._shared["lock"]:
            if "patches" not in self._shared:
                patch = X.load_version_model(
                    self.index_uri, self.version, self.manifest, self.manifest["patches"]["model"]
                )
                self._shared["patches"] = Q.PatchTable.read(
                    self.index_uri, self.version, self.manifest, self.hasher, patch
                )
            return self._shared["patches"]

    # ------------------------------------------------------------------ geometry
    @property
    def npartitions(self) -> int:
        return len(self.part_names)

    @property
    def count(self) -> int:
        return int(self.manifest["count"])

    def prefix_distances(self, qpart: int) -> np.ndarray:
        """Hamming distance from a query's partition prefix to every partition's (``int32[npartitions]``)."""
        return Q.prefix_distances(self.part_vals, qpart)

    # ------------------------------------------------------------------ reading and searching
    def read_partition(self, p: int) -> Partition:
        """Reads partition ``p``'s shards and checks them against the manifest (size, sha256, schema, prefix)."""
        part = Q.read_partition(self.index_uri, self.version, self.manifest, p, verify=True)
        log.debug(
            "read partition %s of %s: %d rows, %d bytes in memory", part.name, self.version, len(part), part.nbytes
        )
        return part

    def current_structure(self) -> Q.Loaded:
        """The version's search structure as it is now (over the partitions loaded so far)."""
        return self._shared["loaded"]

    def loaded(self, parts: list[Partition], cached: list[Partition] = ()) -> Q.Loaded:
        """The version's one search structure, holding at least ``parts``: the current one when it does, else
        rebuilt over ``parts`` and the partitions still ``cached`` (so evicted ones leave it)."""
        current = self._shared["loaded"]
        if all(p.number in current.numbers for p in parts):
            return current
        with self._shared["lock"]:
            current = self._shared["loaded"]
            if all(p.number in current.numbers for p in parts):
                return current
            by_number = {p.number: p for p in cached}
            by_number.update((p.number, p) for p in parts)
            new = Q.Loaded(list(by_number.values()), self.bits, self.address_bits)
            self._shared["loaded"] = new
            log.debug(
                "version %s: search structure over %d partitions, %d codes", self.version, len(new.numbers), new.ntotal
            )
            return new
