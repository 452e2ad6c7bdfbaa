"""The published index: shard layout, manifest, atomic publish, and :class:`HammingIndex` (faiss-shaped lookup).

Layout (the contract in docs/architecture.md)::

    INDEX_URI/CURRENT                               {"version", "manifest": "versions/V/manifest.json", "published_at"}
    INDEX_URI/versions/V/manifest.json              format, bits, address_bits, partition_bits, count, columns,
                                                    model, data, partitions[{partition, rows, files[...]}]
    INDEX_URI/versions/V/part=<hex>/<uuid>.parquet  id, code fixed_size_binary(code_bytes), address uint64,
                                                    [word_ids binary, word_counts binary]

A code's partition is its first ``partition_bits`` bits; inside a file rows are sorted by (address, id). Ordinals
(the ``I`` that searches return) number the rows globally: partitions in manifest order (ascending prefix), files
in manifest order, rows in file order. They are stable for a published version.

Search is exact. A code whose partition prefix is at Hamming distance ``d`` from the query's prefix is at least
``d`` from the query, so :meth:`HammingIndex.search` probes partitions in rings of increasing prefix distance and
stops once its k-th best distance is below the next ring's; :meth:`HammingIndex.range_search` reads only the
partitions whose prefix is within the radius. Results are ordered by (distance, ordinal), exactly as brute force.
"""
from __future__ import annotations

import io
import json
import logging
import re
import secrets
import threading
import uuid as _uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from semhash_spark import codes as C
from semhash_spark import store

log = logging.getLogger(__name__)

FORMAT = "semhash-index/1"
CURRENT = "CURRENT"
MANIFEST = "manifest.json"
BASE_COLUMNS = ("id", "code", "address")
WORD_COLUMNS = ("word_ids", "word_counts")
HASH_COLUMN = "content_hash"                  # optional: the document's content hash, for incremental re-indexing
_FILE_KEYS = ("path", "rows", "bytes", "sha256")
_MODEL_FILE_KEYS = ("path", "bytes", "sha256")
_VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_LOAD_THREADS = 8


class IndexStoreError(Exception):
    """Base of the index's domain errors; the message names the file or URI."""


class IndexNotFound(IndexStoreError):
    """No published index (no CURRENT) or no such version."""


class IndexFormatError(IndexStoreError):
    """A manifest or shard does not follow the format (wrong schema, counts, missing file, wrong size)."""


class ChecksumMismatch(IndexStoreError):
    """A shard's bytes do not match the sha256 recorded in the manifest."""


class ConcurrentPublish(IndexStoreError):
    """Another writer moved ``CURRENT`` while this job ran: publishing would lose its update."""


# --------------------------------------------------------------------------------------------------- layout

def version_prefix(index_uri: str, version: str) -> str:
    """``INDEX_URI/versions/<version>``."""
    _check_version(version)
    return store.join(index_uri, "versions", version)


def manifest_uri(index_uri: str, version: str) -> str:
    return store.join(version_prefix(index_uri, version), MANIFEST)


def new_version_id(now: datetime | None = None) -> str:
    """A sortable version id: UTC timestamp to the microsecond plus a short random suffix."""
    now = now or datetime.now(timezone.utc)
    return now.strftime("%Y%m%dT%H%M%S%fZ") + "-" + secrets.token_hex(3)


def shard_path(partition: str, uuid: str) -> str:
    """Path of a shard relative to its version prefix: ``part=<hex>/<uuid>.parquet``."""
    return f"part={partition}/{uuid}.parquet"


def _check_version(version: str) -> None:
    if not isinstance(version, str) or not _VERSION_RE.match(version):
        raise ValueError(f"bad index version id {version!r}: letters, digits, '.', '_' and '-' only")


def shard_schema(code_bytes: int, with_words: bool = False, with_hash: bool = False):
    import pyarrow as pa

    fields = [pa.field("id", pa.string(), nullable=False),
              pa.field("code", pa.binary(code_bytes), nullable=False),
              pa.field("address", pa.uint64(), nullable=False)]
    if with_words:
        fields += [pa.field("word_ids", pa.binary()), pa.field("word_counts", pa.binary())]
    if with_hash:
        fields.append(pa.field(HASH_COLUMN, pa.string()))
    return pa.schema(fields)


# --------------------------------------------------------------------------------------------------- writing

def codes_from_column(values: Sequence[bytes], code_bytes: int) -> np.ndarray:
    """A column of ``bytes`` codes -> ``uint8[n, code_bytes]``; every value must have ``code_bytes`` bytes."""
    values = list(values)
    lengths = np.fromiter((len(v) for v in values), dtype=np.int64, count=len(values))
    bad = np.flatnonzero(lengths != code_bytes)
    if bad.size:
        raise ValueError(f"code at row {bad[0]} has {lengths[bad[0]]} bytes, expected {code_bytes}")
    return np.frombuffer(b"".join(bytes(v) for v in values), dtype=np.uint8).reshape(len(values), code_bytes)


def write_shard(version_uri: str, partition_bits: int, code_bytes: int, pdf) -> list[dict]:
    """Writes one Spark task's rows as one Parquet file per partition present; returns the files' metadata.

    Runs inside executors (e.g. from ``mapInPandas``). ``pdf`` has columns ``id``, ``code`` (bytes),
    ``address`` (uint64) and optionally ``word_ids``/``word_counts`` (bytes) and ``content_hash`` (str). Returns
    ``[{partition, path (relative to version_uri), rows, bytes, sha256, columns}]``.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    missing = [c for c in BASE_COLUMNS if c not in pdf.columns]
    if missing:
        raise ValueError(f"write_shard needs columns {list(BASE_COLUMNS)}; missing {missing}")
    with_words = all(c in pdf.columns for c in WORD_COLUMNS)
    with_hash = HASH_COLUMN in pdf.columns
    n = len(pdf)
    if n == 0:
        return []
    codes = codes_from_column(pdf["code"].tolist(), code_bytes)
    ids = np.asarray(pdf["id"].astype(str).to_numpy(), dtype=object)
    address = pdf["address"].to_numpy()
    # Spark has no unsigned longs: an int64 column carries the address's 64 bits (two's complement)
    address = address.astype(np.int64).view(np.uint64) if address.dtype.kind == "i" else address.astype(np.uint64)
    part = C.prefix(codes, partition_bits)
    order = np.lexsort((ids, address, part))                     # by partition, then address, then id
    codes, ids, address, part = codes[order], ids[order], address[order], part[order]
    words = [pdf[c].to_numpy(dtype=object)[order] for c in WORD_COLUMNS] if with_words else None
    hashes = pdf[HASH_COLUMN].to_numpy(dtype=object)[order] if with_hash else None
    bounds = np.concatenate([[0], np.flatnonzero(np.diff(part)) + 1, [n]])
    schema = shard_schema(code_bytes, with_words, with_hash)
    metas = []
    for s, e in zip(bounds[:-1], bounds[1:]):
        cols = [pa.array(ids[s:e], pa.string()),
                pa.FixedSizeBinaryArray.from_buffers(pa.binary(code_bytes), int(e - s),
                                                     [None, pa.py_buffer(codes[s:e].tobytes())]),
                pa.array(address[s:e], pa.uint64())]
        if words is not None:
            cols += [pa.array([bytes(v) for v in w[s:e]], pa.binary()) for w in words]
        if hashes is not None:
            cols.append(pa.array(hashes[s:e], pa.string()))
        buf = io.BytesIO()
        pq.write_table(pa.Table.from_arrays(cols, schema=schema), buf, compression="zstd")
        data = buf.getvalue()
        name = C.partition_name(int(part[s]), partition_bits)
        path = shard_path(name, _uuid.uuid4().hex)
        store.write_bytes(store.join(version_uri, path), data)
        metas.append({"partition": name, "path": path, "rows": int(e - s), "bytes": len(data),
                      "sha256": store.sha256_bytes(data), "columns": list(schema.names)})
    log.debug("wrote %d rows in %d shard files under %s", n, len(metas), version_uri)
    return metas


def build_manifest(version: str, bits: int, address_bits: int, partition_bits: int, files: Iterable[dict], *,
                   model: dict | None = None, data: dict | None = None, created_at: str | None = None,
                   **extra: Any) -> dict:
    """Groups ``write_shard`` metadata into the version's manifest (partitions ascending, files by path)."""
    _check_version(version)
    _check_bits(bits, address_bits, partition_bits)
    by_part: dict[int, list[dict]] = {}
    columns: list[str] | None = None
    seen = set()
    for f in files:
        if f["path"] in seen:
            raise IndexFormatError(f"shard file {f['path']} listed twice")
        seen.add(f["path"])
        value = _parse_partition(f["partition"], partition_bits)
        cols = list(f.get("columns") or BASE_COLUMNS)
        if columns is not None and cols != columns:
            raise IndexFormatError(f"shard file {f['path']} has columns {cols}, others have {columns}")
        columns = cols
        by_part.setdefault(value, []).append({k: f[k] for k in _FILE_KEYS})
    partitions = []
    for value in sorted(by_part):
        fl = sorted(by_part[value], key=lambda x: x["path"])
        partitions.append({"partition": C.partition_name(value, partition_bits),
                           "rows": sum(int(x["rows"]) for x in fl), "files": fl})
    manifest = {
        "format": FORMAT,
        "version": version,
        "created_at": created_at or _now(),
        "bits": int(bits),
        "code_bytes": C.code_bytes(bits),
        "address_bits": int(address_bits),
        "partition_bits": int(partition_bits),
        "count": sum(p["rows"] for p in partitions),
        "columns": columns or list(BASE_COLUMNS),
        "model": model,
        "data": data,
        "partitions": partitions,
        **extra,
    }
    validate_manifest(manifest)
    return manifest


def validate_manifest(manifest: dict, where: str = "manifest") -> None:
    """Checks a manifest's structure; raises :class:`IndexFormatError` naming ``where``."""
    try:
        if manifest.get("format") != FORMAT:
            raise IndexFormatError(f"{where}: format {manifest.get('format')!r}, this reader needs {FORMAT!r}")
        bits, ab, pb = int(manifest["bits"]), int(manifest["address_bits"]), int(manifest["partition_bits"])
        _check_bits(bits, ab, pb)
        if int(manifest["code_bytes"]) != C.code_bytes(bits):
            raise IndexFormatError(f"{where}: code_bytes {manifest['code_bytes']} does not fit {bits} bits")
        total, last = 0, -1
        for p in manifest["partitions"]:
            value = _parse_partition(p["partition"], pb)
            if value <= last:
                raise IndexFormatError(f"{where}: partitions not in ascending order at {p['partition']}")
            last = value
            rows = sum(int(f["rows"]) for f in p["files"])
            if rows != int(p["rows"]):
                raise IndexFormatError(f"{where}: partition {p['partition']} says {p['rows']} rows, files {rows}")
            for f in p["files"]:
                missing = [k for k in _FILE_KEYS if k not in f]
                if missing:
                    raise IndexFormatError(f"{where}: file entry {f} lacks {missing}")
                _check_relative(f["path"], where)
            total += rows
        patches = manifest.get("patches") or {}
        for f in patches.get("files") or ():
            _check_relative(f["path"], where)
        if patches.get("model") is not None:
            _check_relative(patches["model"], where)
        for f in manifest.get("model_files") or ():
            missing = [k for k in _MODEL_FILE_KEYS if k not in f]
            if missing:
                raise IndexFormatError(f"{where}: model file entry {f} lacks {missing}")
            _check_relative(f["path"], where)
        if total != int(manifest["count"]):
            raise IndexFormatError(f"{where}: count {manifest['count']} but partitions hold {total} rows")
        if not set(BASE_COLUMNS) <= set(manifest.get("columns", BASE_COLUMNS)):
            raise IndexFormatError(f"{where}: columns {manifest.get('columns')} lack {list(BASE_COLUMNS)}")
    except IndexFormatError:
        raise
    except (KeyError, TypeError, ValueError) as e:
        raise IndexFormatError(f"{where}: malformed ({type(e).__name__}: {e})") from None


def _check_relative(path: str, where: str) -> None:
    """A file path in a manifest stays inside its version folder: relative, no ``..``, no scheme."""
    if not isinstance(path, str) or not path or path.startswith(("/", "\\")) or "\\" in path or ":" in path \
            or any(part in ("", ".", "..") for part in path.split("/")):
        raise IndexFormatError(f"{where}: file path {path!r} leaves the version folder (relative paths only, "
                               "no '..')")


def _check_bits(bits: int, address_bits: int, partition_bits: int) -> None:
    if not (bits > 0 and 0 <= partition_bits <= address_bits <= min(64, bits)):
        raise IndexFormatError(
            f"need 0 <= partition_bits ({partition_bits}) <= address_bits ({address_bits}) <= min(64, bits={bits})")
    if partition_bits > 24:
        raise IndexFormatError(f"partition_bits {partition_bits} > 24 would make too many tiny shards")


def _parse_partition(name: str, partition_bits: int) -> int:
    try:
        value = int(name, 16)
    except (TypeError, ValueError):
        raise IndexFormatError(f"partition name {name!r} is not hex") from None
    if value >> partition_bits or name != C.partition_name(value, partition_bits):
        raise IndexFormatError(f"partition name {name!r} is not a {partition_bits}-bit prefix in canonical hex")
    return value


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# --------------------------------------------------------------------------------------------------- publish

def verify_files(index_uri: str, version: str, manifest: dict, verify_checksums: bool = False, *,
                 verify_models: bool = True) -> None:
    """Every file the manifest lists exists with its size (shards' sha256 when ``verify_checksums``; the model
    files' sha256 unless ``verify_models`` is False: a publisher that has just hashed what it wrote)."""
    vp = version_prefix(index_uri, version)
    present = dict(store.list_prefix(vp))                        # one listing instead of a HEAD per file
    for p in manifest["partitions"]:
        for f in p["files"]:
            uri = store.join(vp, f["path"])
            if f["path"] not in present:
                raise IndexFormatError(f"{uri}: listed in the manifest but missing")
            if present[f["path"]] != int(f["bytes"]):
                raise IndexFormatError(f"{uri}: {present[f['path']]} bytes, the manifest says {f['bytes']}")
            if verify_checksums:
                _check_sha(uri, store.read_bytes(uri), f["sha256"])
    for f in manifest.get("model_files") or ():
        uri = store.join(vp, f["path"])
        if present.get(f["path"]) != int(f["bytes"]):
            raise IndexFormatError(f"{uri}: {present.get(f['path'], 'no')} bytes, the manifest says {f['bytes']}")
    if verify_models or verify_checksums:
        verify_model_files(index_uri, version, manifest)


def verify_model_files(index_uri: str, version: str, manifest: dict, directory: str | None = None) -> dict[str, bytes]:
    """Reads the model files the manifest lists (those under ``directory``, or all) and checks their sha256.

    Returns ``{path: bytes}``; raises :class:`ChecksumMismatch` naming the file when one was edited.
    """
    vp = version_prefix(index_uri, version)
    out = {}
    for f in manifest.get("model_files") or ():
        if directory is not None and not f["path"].startswith(directory.rstrip("/") + "/"):
            continue
        uri = store.join(vp, f["path"])
        try:
            data = store.read_bytes(uri)
        except store.NotFound:
            raise IndexFormatError(f"{uri}: listed in the manifest but missing") from None
        _check_sha(uri, data, f["sha256"])
        out[f["path"]] = data
    return out


def load_version_model(index_uri: str, version: str, manifest: dict, directory: str = "model"):
    """The model a version carries (``versions/V/<directory>/``), its files checked against the manifest."""
    from . import checkpoint

    uri = store.join(version_prefix(index_uri, version), directory)
    verify_model_files(index_uri, version, manifest, directory)
    return checkpoint.load_model(uri)


_READ = object()


def publish(index_uri: str, version: str, manifest: dict, verify_checksums: bool = False, *,
            base: Any = _READ) -> None:
    """Publishes a version whose shards are written: verify files, write the manifest, then ``CURRENT`` last.

    ``CURRENT`` is written by compare-and-swap: it must still point at ``base`` (the version the job started from,
    None for an empty index; by default whatever it points at now), else :class:`ConcurrentPublish` is raised and
    nothing is published. Any failure before the final write leaves ``CURRENT`` (and every reader) where it was.
    """
    if manifest.get("version") != version:
        raise IndexFormatError(f"manifest is for version {manifest.get('version')!r}, publishing {version!r}")
    validate_manifest(manifest, f"manifest of {version}")
    verify_files(index_uri, version, manifest, verify_checksums, verify_models=False)   # sizes: hashed when written
    store.write_json(manifest_uri(index_uri, version), manifest)
    _write_current(index_uri, version, base)
    log.info("published %s version %s (%d codes, %d partitions)", index_uri, version, manifest["count"],
             len(manifest["partitions"]))


def current_version(index_uri: str) -> str | None:
    """The version ``CURRENT`` points at, None for an index with nothing published (a job's ``base``)."""
    try:
        return read_current(index_uri)["version"]
    except IndexNotFound:
        return None


def _write_current(index_uri: str, version: str, base: Any = _READ) -> None:
    uri = store.join(index_uri, CURRENT)
    got = store.read_tagged(uri)
    tag = got[1] if got is not None else None
    now = None
    if got is not None:
        try:
            now = json.loads(got[0])["version"]
        except (ValueError, KeyError, TypeError):
            raise IndexFormatError(f"{uri}: not a CURRENT pointer ({got[0][:200]!r})") from None
    if base is not _READ and now != base:
        raise ConcurrentPublish(f"{uri} moved from {base or 'nothing'} to {now or 'nothing'} while this job ran "
                                f"(another writer published); not publishing {version} over it: run the job again "
                                "to include both changes")
    body = (json.dumps({"version": version, "manifest": f"versions/{version}/{MANIFEST}", "published_at": _now()},
                       indent=1, sort_keys=True) + "\n").encode()
    try:
        store.write_bytes_if(uri, body, tag)
    except store.PreconditionFailed:
        raise ConcurrentPublish(f"{uri} was changed by another writer while version {version} was being "
                                "published; not published: run the job again to include both changes") from None


def publish_version(index_uri: str, write: Callable[[str, str], dict], *, models: dict[str, dict[str, bytes]],
                    base: Any = _READ, version: str | None = None, verify_checksums: bool = False) -> dict:
    """The one way a job publishes a new version; returns its manifest.

    ``write(version, version_uri)`` writes the shards and returns the manifest's fields (``bits``,
    ``address_bits``, ``partition_bits``, ``files`` and any extra keys for :func:`build_manifest`). Then the
    models (``{folder: {file name: bytes}}``) are copied into the version and listed with their sha256 under
    ``model_files``, the manifest is written, and ``CURRENT`` is swapped from ``base`` (see :func:`publish`;
    by default the version current when this call started). On any failure the unpublished version folder is
    removed and ``CURRENT`` is untouched.
    """
    if base is _READ:
        base = current_version(index_uri)
    version = version or new_version_id()
    vuri = version_prefix(index_uri, version)
    try:
        fields = dict(write(version, vuri))
        model_files = []
        for folder, blobs in models.items():
            for name, blob in blobs.items():
                path = f"{folder}/{name}"
                store.write_bytes(store.join(vuri, path), blob)
                model_files.append({"path": path, "bytes": len(blob), "sha256": store.sha256_bytes(blob)})
        manifest = build_manifest(version, fields.pop("bits"), fields.pop("address_bits"),
                                  fields.pop("partition_bits"), fields.pop("files"), model_files=model_files,
                                  **fields)
        publish(index_uri, version, manifest, verify_checksums, base=base)
    except BaseException:
        log.error("publishing version %s of %s failed; removing the unpublished version", version, index_uri)
        try:
            store.delete_prefix(vuri)
        except Exception as cleanup:  # noqa: BLE001 - never published: readers cannot see it either way
            log.warning("could not remove %s: %s", vuri, cleanup)
        raise
    return manifest


def read_current(index_uri: str) -> dict:
    """The ``CURRENT`` pointer: ``{"version", "manifest", "published_at"}``."""
    uri = store.join(index_uri, CURRENT)
    try:
        cur = store.read_json(uri)
    except store.NotFound as e:
        raise IndexNotFound(f"no published index at {index_uri} ({uri}: {e.cause})") from None
    if not isinstance(cur, dict) or "version" not in cur:
        raise IndexFormatError(f"{uri}: not a CURRENT pointer ({cur!r:.200})")
    _check_version(cur["version"])
    return cur


def read_manifest(index_uri: str, version: str) -> dict:
    uri = manifest_uri(index_uri, version)
    try:
        manifest = store.read_json(uri)
    except store.NotFound:
        raise IndexNotFound(f"version {version} of {index_uri} has no manifest ({uri})") from None
    validate_manifest(manifest, uri)
    if manifest["version"] != version:
        raise IndexFormatError(f"{uri}: says version {manifest['version']!r}")
    return manifest


def list_versions(index_uri: str) -> list[str]:
    """Published-or-publishable versions (those with a manifest), oldest first."""
    root = store.join(index_uri, "versions")
    return [v for v in store.list_dir(root)
            if _VERSION_RE.match(v) and store.exists(store.join(root, v, MANIFEST))]


def rollback(index_uri: str, version: str, verify_checksums: bool = False) -> dict:
    """Points ``CURRENT`` at another version (also when ``CURRENT`` is missing) after re-verifying its files."""
    base = current_version(index_uri)
    manifest = read_manifest(index_uri, version)
    verify_files(index_uri, version, manifest, verify_checksums)
    _write_current(index_uri, version, base)
    log.info("rolled %s back to version %s", index_uri, version)
    return manifest


def _check_sha(uri: str, data: bytes, expected: str) -> None:
    actual = store.sha256_bytes(data)
    if actual != expected:
        raise ChecksumMismatch(f"{uri}: sha256 {actual}, the manifest says {expected}")


# --------------------------------------------------------------------------------------------------- lookup

class HammingIndex:
    """Exact Hamming-space lookup over a published version (or codes in memory), shaped like faiss.

    ``search(q, k) -> (D, I)``, ``range_search(q, radius) -> (lims, D, I)``, ``address_lookup(q, radius)``;
    ``I`` holds ordinals, mapped to string ids by :meth:`ids_of`. Partitions are read on first use (each file's
    sha256 checked against the manifest when ``verify``) and kept; ``partitions_read`` counts them.
    """

    def __init__(self, manifest: dict, index_uri: str | None = None, verify: bool = True):
        if index_uri is not None:  # in-memory indexes (from_codes) have partitions without files
            validate_manifest(manifest, f"manifest of {index_uri}")
        self.manifest = manifest
        self.index_uri = index_uri
        self.version: str | None = manifest.get("version")
        self.verify = verify
        self.bits = int(manifest["bits"])
        self.code_bytes = C.code_bytes(self.bits)
        self.address_bits = int(manifest["address_bits"])
        self.partition_bits = int(manifest["partition_bits"])
        self.ntotal = int(manifest["count"])
        self.has_words = set(WORD_COLUMNS) <= set(manifest.get("columns", ()))
        parts = manifest["partitions"]
        self._part_names = [p["partition"] for p in parts]
        self._part_vals = np.array([int(p["partition"], 16) for p in parts], dtype=np.uint64)
        self._part_rows = np.array([int(p["rows"]) for p in parts], dtype=np.int64)
        self._part_off = np.concatenate([[0], np.cumsum(self._part_rows)]).astype(np.int64)
        nwords = max(1, (self.code_bytes + 7) // 8)
        self._words = np.zeros((self.ntotal, nwords), dtype=np.uint64)   # codes, zero-padded to 64-bit words
        self._addr = np.zeros(self.ntotal, dtype=np.uint64)
        self._ids = np.empty(self.ntotal, dtype=object)
        self._word_ids = np.empty(self.ntotal, dtype=object) if self.has_words else None
        self._word_counts = np.empty(self.ntotal, dtype=object) if self.has_words else None
        self._labels: np.ndarray | None = None       # position -> ordinal; None: the identity (published index)
        self._pos_of_label: np.ndarray | None = None
        self._loaded = np.zeros(len(parts), dtype=bool)
        self._lock = threading.Lock()
        self.partitions_read = 0

    # ------------------------------------------------------------------ constructors
    @classmethod
    def open(cls, index_uri: str, version: str | None = None, verify: bool = True) -> "HammingIndex":
        """Opens the version ``CURRENT`` points at (or ``version``); reads only the manifest until searched."""
        if version is None:
            version = read_current(index_uri)["version"]
        index = cls(read_manifest(index_uri, version), index_uri=index_uri, verify=verify)
        log.info("opened %s version %s: %d codes of %d bits in %d partitions", index_uri, version, index.ntotal,
                 index.bits, index.npartitions)
        return index

    @classmethod
    def from_codes(cls, codes: np.ndarray, ids: Sequence[str] | None = None, *, bits: int,
                   partition_bits: int = 0, address_bits: int | None = None,
                   word_ids: Sequence[bytes] | None = None, word_counts: Sequence[bytes] | None = None
                   ) -> "HammingIndex":
        """An in-memory index; ordinals are the row numbers of ``codes`` (like faiss ``add``)."""
        codes = _check_queries(codes, bits)
        n = codes.shape[0]
        address_bits = min(bits, 64) if address_bits is None else address_bits
        _check_bits(bits, address_bits, partition_bits)
        ids_arr = np.array([str(i) for i in range(n)] if ids is None else [str(x) for x in ids], dtype=object)
        if ids_arr.shape[0] != n:
            raise ValueError(f"{n} codes but {ids_arr.shape[0]} ids")
        part = C.prefix(codes, partition_bits)
        addr = C.prefix(codes, address_bits)
        order = np.lexsort((np.arange(n), addr, part))
        sp = part[order]
        bounds = np.concatenate([[0], np.flatnonzero(np.diff(sp)) + 1, [n]]).astype(np.int64)
        has_words = word_ids is not None and word_counts is not None
        manifest = {
            "format": FORMAT, "version": None, "created_at": _now(), "bits": bits,
            "code_bytes": C.code_bytes(bits), "address_bits": address_bits, "partition_bits": partition_bits,
            "count": n, "columns": list(BASE_COLUMNS) + (list(WORD_COLUMNS) if has_words else []),
            "model": None, "data": None,
            "partitions": [{"partition": C.partition_name(int(sp[s]), partition_bits), "rows": int(e - s),
                            "files": []} for s, e in zip(bounds[:-1], bounds[1:]) if e > s],
        }
        index = cls(manifest)
        index._words[:] = C.to_words(codes[order])
        index._addr[:] = addr[order]
        index._ids[:] = ids_arr[order]
        if has_words:
            index._word_ids[:] = np.asarray(list(word_ids), dtype=object)[order]
            index._word_counts[:] = np.asarray(list(word_counts), dtype=object)[order]
        index._labels = order.astype(np.int64)
        index._pos_of_label = np.empty(n, dtype=np.int64)
        index._pos_of_label[order] = np.arange(n)
        index._loaded[:] = True
        return index

    # ------------------------------------------------------------------ properties
    @property
    def npartitions(self) -> int:
        return len(self._part_names)

    @property
    def partitions(self) -> list[str]:
        return list(self._part_names)

    def __len__(self) -> int:
        return self.ntotal

    def __repr__(self) -> str:
        return (f"HammingIndex(version={self.version!r}, ntotal={self.ntotal}, bits={self.bits}, "
                f"address_bits={self.address_bits}, partition_bits={self.partition_bits}, "
                f"partitions={self.npartitions}, loaded={int(self._loaded.sum())})")

    # ------------------------------------------------------------------ search
    def search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact k nearest codes: ``D int32[nq, k]``, ``I int64[nq, k]`` ordered by (distance, ordinal), -1 padded."""
        qw, qpart, _ = self._queries(q)
        nq = qw.shape[0]
        D = np.full((nq, max(k, 0)), -1, dtype=np.int32)
        I = np.full((nq, max(k, 0)), -1, dtype=np.int64)
        if k <= 0 or self.ntotal == 0:
            return D, I
        for i in range(nq):
            pd = self._prefix_distances(qpart[i])
            order = np.argsort(pd, kind="stable")
            spd = pd[order]
            cuts = np.concatenate([[0], np.flatnonzero(np.diff(spd)) + 1, [len(spd)]])
            best_d = np.empty(0, dtype=np.int32)
            best_l = np.empty(0, dtype=np.int64)
            for r in range(len(cuts) - 1):
                d, lab = self._scan(qw[i], order[cuts[r]:cuts[r + 1]])
                best_d, best_l = _top_k(np.concatenate([best_d, d]), np.concatenate([best_l, lab]), k)
                if r + 2 < len(cuts) and len(best_d) == k and best_d[-1] < spd[cuts[r + 1]]:
                    break  # every code further out is at least the next ring's prefix distance away
            D[i, :len(best_d)] = best_d
            I[i, :len(best_l)] = best_l
        return D, I

    def range_search(self, q: np.ndarray, radius: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every code within Hamming ``radius``: CSR ``(lims int64[nq+1], D int32, I int64)``, per query by
        (distance, ordinal); only partitions whose prefix is within ``radius`` are read."""
        qw, qpart, _ = self._queries(q)
        return self._collect(qw, lambda i: self._within(qw[i], qpart[i], radius, None, None))

    def address_lookup(self, q: np.ndarray, radius: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Semantic hashing's lookup: codes whose ``address_bits``-bit address is within ``radius`` of the query's
        address (the paper's Hamming ball around the query address), as ``(lims, D, I)`` with full-code
        distances, per query by (distance, ordinal). With ``address_bits == bits`` it equals ``range_search``."""
        qw, qpart, qaddr = self._queries(q)
        return self._collect(qw, lambda i: self._within(qw[i], qpart[i], radius, qaddr[i], radius))

    # ------------------------------------------------------------------ row access
    def ids_of(self, I: np.ndarray) -> np.ndarray:
        """String ids (``object`` array shaped like ``I``); ``None`` where ``I`` is -1."""
        I = np.asarray(I, dtype=np.int64)
        out = np.full(I.shape, None, dtype=object)
        pos, ok = self._positions(I)
        out.reshape(-1)[ok] = self._ids[pos]
        return out

    def codes_of(self, I: np.ndarray) -> np.ndarray:
        """Packed codes ``uint8[*I.shape, code_bytes]``; zeros where ``I`` is -1."""
        I = np.asarray(I, dtype=np.int64)
        flat = np.zeros((I.size, self.code_bytes), dtype=np.uint8)
        pos, ok = self._positions(I)
        flat[ok] = self._codes_at(pos)
        return flat.reshape(I.shape + (self.code_bytes,))

    def word_counts_of(self, I: np.ndarray) -> np.ndarray:
        """Stored bag of words per row: ``object`` array shaped like ``I`` of ``(word_ids int32[m],
        word_counts float32[m])``; ``None`` where ``I`` is -1. Raises if the index stores no words."""
        if not self.has_words:
            raise IndexFormatError(f"index {self.index_uri or '(in memory)'} stores no word counts")
        I = np.asarray(I, dtype=np.int64)
        out = np.full(I.shape, None, dtype=object)
        pos, ok = self._positions(I)
        flat = out.reshape(-1)
        for j, p in zip(np.flatnonzero(ok), pos):
            flat[j] = (np.frombuffer(self._word_ids[p], dtype="<i4"), np.frombuffer(self._word_counts[p], dtype="<f4"))
        return out

    def load_all(self) -> "HammingIndex":
        """Reads every partition now (a service does this before taking traffic)."""
        self._ensure_loaded(np.arange(self.npartitions))
        return self

    # ------------------------------------------------------------------ internals
    def _queries(self, q):
        q = _check_queries(q, self.bits)
        return C.to_words(q), C.prefix(q, self.partition_bits), C.prefix(q, self.address_bits)

    def _prefix_distances(self, qpart) -> np.ndarray:
        return C.popcount64((self._part_vals ^ np.uint64(qpart)).reshape(-1, 1))

    def _rows(self, parts: np.ndarray) -> np.ndarray | slice:
        """Positions of the rows of partitions ``parts`` (a slice when that is all of them)."""
        if len(parts) == self.npartitions:
            return slice(None)
        lens = self._part_rows[parts]
        shift = self._part_off[parts] - (np.cumsum(lens) - lens)
        return np.arange(int(lens.sum()), dtype=np.int64) + np.repeat(shift, lens)

    def _label(self, rows) -> np.ndarray:
        if self._labels is not None:
            return self._labels[rows]
        return np.arange(self.ntotal, dtype=np.int64) if isinstance(rows, slice) else rows

    def _scan(self, qw_row: np.ndarray, parts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self._ensure_loaded(parts)
        rows = self._rows(parts)
        return C.hamming_words(qw_row, self._words[rows]), self._label(rows)

    def _within(self, qw_row, qpart, radius, qaddr, addr_radius):
        if radius < 0 or self.ntotal == 0:
            return np.empty(0, np.int32), np.empty(0, np.int64)
        parts = np.flatnonzero(self._prefix_distances(qpart) <= radius)
        if parts.size == 0:
            return np.empty(0, np.int32), np.empty(0, np.int64)
        self._ensure_loaded(parts)
        rows = self._rows(parts)
        if qaddr is not None:  # the address ball first, then full distances for the rows inside it
            ad = C.popcount64((self._addr[rows] ^ np.uint64(qaddr)).reshape(-1, 1))
            rows = np.flatnonzero(ad <= addr_radius) if isinstance(rows, slice) else rows[ad <= addr_radius]
            d = C.hamming_words(qw_row, self._words[rows])
            keep = slice(None)
        else:
            d = C.hamming_words(qw_row, self._words[rows])
            keep = d <= radius
        d, lab = d[keep], self._label(rows)[keep]
        o = np.lexsort((lab, d))
        return d[o], lab[o]

    @staticmethod
    def _collect(qw, per_query):
        nq = qw.shape[0]
        lims = np.zeros(nq + 1, dtype=np.int64)
        Ds, Is = [], []
        for i in range(nq):
            d, lab = per_query(i)
            Ds.append(d)
            Is.append(lab)
            lims[i + 1] = lims[i] + len(d)
        D = np.concatenate(Ds).astype(np.int32) if Ds else np.empty(0, np.int32)
        I = np.concatenate(Is).astype(np.int64) if Is else np.empty(0, np.int64)
        return lims, D, I

    def _positions(self, I: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        flat = I.reshape(-1)
        ok = flat >= 0
        if np.any(flat >= self.ntotal):
            raise ValueError(f"ordinal {int(flat.max())} out of range for an index of {self.ntotal} codes")
        labels = flat[ok]
        pos = self._pos_of_label[labels] if self._pos_of_label is not None else labels
        parts = np.unique(np.searchsorted(self._part_off, pos, side="right") - 1)
        self._ensure_loaded(parts)
        return pos, ok

    def _codes_at(self, pos) -> np.ndarray:
        return np.ascontiguousarray(self._words[pos]).view(np.uint8)[:, : self.code_bytes]

    def _ensure_loaded(self, parts: np.ndarray) -> None:
        parts = np.asarray(parts, dtype=np.int64)
        if self._loaded[parts].all():
            return
        with self._lock:
            missing = [int(p) for p in parts[~self._loaded[parts]]]
            if not missing:
                return
            if len(missing) == 1:
                results = [self._read_partition(missing[0])]
            else:  # object-store reads are I/O bound: overlap them
                with ThreadPoolExecutor(max_workers=min(_LOAD_THREADS, len(missing))) as pool:
                    results = list(pool.map(self._read_partition, missing))
            for p, cols in zip(missing, results):
                s, e = self._part_off[p], self._part_off[p + 1]
                self._words[s:e] = C.to_words(cols["code"])
                self._addr[s:e] = cols["address"]
                self._ids[s:e] = cols["id"]
                if self.has_words:
                    self._word_ids[s:e] = cols["word_ids"]
                    self._word_counts[s:e] = cols["word_counts"]
                self._loaded[p] = True
                self.partitions_read += 1

    def _read_partition(self, p: int) -> dict[str, np.ndarray]:
        """Reads and checks one partition's files -> columns as numpy arrays."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        vp = version_prefix(self.index_uri, self.version)
        entry = self.manifest["partitions"][p]
        expect_code = pa.binary(self.code_bytes)
        pieces: dict[str, list[np.ndarray]] = {}
        for f in entry["files"]:
            uri = store.join(vp, f["path"])
            try:
                data = store.read_bytes(uri)
            except store.NotFound:
                raise IndexFormatError(f"{uri}: listed in the manifest but missing") from None
            if len(data) != int(f["bytes"]):
                raise ChecksumMismatch(f"{uri}: {len(data)} bytes, the manifest says {f['bytes']}")
            if self.verify:
                _check_sha(uri, data, f["sha256"])
            try:
                table = pq.read_table(pa.BufferReader(data))
            except Exception as e:  # noqa: BLE001 - any parse failure is a format error naming the file
                raise IndexFormatError(f"{uri}: not a readable Parquet shard ({e})") from None
            if table.num_rows != int(f["rows"]):
                raise IndexFormatError(f"{uri}: {table.num_rows} rows, the manifest says {f['rows']}")
            names = set(table.column_names)
            if not set(BASE_COLUMNS) <= names or table.schema.field("code").type != expect_code:
                raise IndexFormatError(f"{uri}: schema {table.schema} is not a {self.bits}-bit shard")
            code = table.column("code").combine_chunks()
            if code.null_count:
                raise IndexFormatError(f"{uri}: null codes")
            buf = np.frombuffer(code.buffers()[1], dtype=np.uint8)
            start = code.offset * self.code_bytes
            cols = {"code": buf[start: start + len(code) * self.code_bytes].reshape(-1, self.code_bytes),
                    "address": table.column("address").to_numpy().astype(np.uint64, copy=False),
                    "id": np.asarray(table.column("id").to_numpy(zero_copy_only=False), dtype=object)}
            if self.has_words:
                for c in WORD_COLUMNS:
                    cols[c] = np.asarray(table.column(c).to_numpy(zero_copy_only=False), dtype=object)
            for k, v in cols.items():
                pieces.setdefault(k, []).append(v)
            value = self._part_vals[p]
            if np.any(C.prefix(cols["code"], self.partition_bits) != value):
                raise IndexFormatError(f"{uri}: holds codes outside partition {entry['partition']}")
            if np.any(C.prefix(cols["code"], self.address_bits) != cols["address"]):
                raise IndexFormatError(f"{uri}: address column disagrees with the codes' first "
                                       f"{self.address_bits} bits")
        log.debug("read partition %s of %s (%d rows)", entry["partition"], vp, entry["rows"])
        if not pieces:
            return {k: np.empty((0, self.code_bytes) if k == "code" else 0, dtype=np.uint8 if k == "code" else object)
                    for k in ("code", "address", "id", *WORD_COLUMNS)}
        return {k: np.concatenate(v) for k, v in pieces.items()}


def _check_queries(q: np.ndarray, bits: int) -> np.ndarray:
    q = C.as_codes(q, bits)
    spare = 8 * q.shape[1] - bits
    if spare and np.any(q[:, -1] & ((1 << spare) - 1)):
        raise ValueError(f"codes have bits set beyond their {bits} bits (the trailing {spare} bits must be 0)")
    return q


def _top_k(d: np.ndarray, lab: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k smallest by (distance, ordinal), sorted."""
    if len(d) > k:
        kth = np.partition(d, k - 1)[k - 1]
        keep = d <= kth
        d, lab = d[keep], lab[keep]
    o = np.lexsort((lab, d))[:k]
    return d[o].astype(np.int32, copy=False), lab[o].astype(np.int64, copy=False)
