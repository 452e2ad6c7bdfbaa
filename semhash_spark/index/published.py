"""The published index: shard layout, manifest, atomic publish, and :class:`HammingIndex` (faiss-shaped lookup).

Layout (the contract in docs/architecture.md)::

    INDEX_URI/CURRENT                               {"version", "manifest": "versions/V/manifest.json", "published_at"}
    INDEX_URI/versions/V/manifest.json              format, bits, address_bits, partition_bits, count, columns,
                                                    model, data, partitions[{partition, rows, files[...]}]
    INDEX_URI/versions/V/part=<hex>/<uuid>.parquet  id, code fixed_size_binary(code_bytes), address uint64,
                                                    [word_ids binary, word_counts binary],
                                                    [content_hash string], [labels list<string>, snippet string]

``address`` is the item's address code: the first ``address_bits`` bits of its code, or, when the manifest names an
``address_model`` (copied into ``versions/V/address_model/``), that model's code of ``address_bits`` bits. An item's
partition is its address's first ``partition_bits`` bits; inside a file rows are sorted by (address, id). Ordinals
(the ``I`` that searches return) number the rows globally: partitions in manifest order (ascending prefix), files
in manifest order, rows in file order. They are stable for a published version.

Search is exact (:mod:`semhash_spark.index.query`, shared with the service): the partitions a query needs are read
and verified, then searched as one structure; a ball on the address code, or on the ranking code where the
address is its prefix, reads only the partitions whose prefix is within the radius. Results are ordered by
(distance, ordinal), exactly as brute force.
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
from semhash_spark.io import store

log = logging.getLogger(__name__)

FORMAT = "semhash-index/1"
CURRENT = "CURRENT"
MANIFEST = "manifest.json"
BASE_COLUMNS = ("id", "code", "address")
WORD_COLUMNS = ("word_ids", "word_counts")
HASH_COLUMN = "content_hash"  # optional: the document's content hash, for incremental re-indexing
TEXT_COLUMNS = ("labels", "snippet")  # optional: what a person reads beside a hit (labels, first words)
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


def shard_schema(code_bytes: int, with_words: bool = False, with_hash: bool = False, with_text: bool = False):
    import pyarrow as pa

    fields = [
        pa.field("id", pa.string(), nullable=False),
        pa.field("code", pa.binary(code_bytes), nullable=False),
        pa.field("address", pa.uint64(), nullable=False),
    ]
    if with_words:
        fields += [pa.field("word_ids", pa.binary()), pa.field("word_counts", pa.binary())]
    if with_hash:
        fields.append(pa.field(HASH_COLUMN, pa.string()))
    if with_text:
        fields += [pa.field("labels", pa.list_(pa.string())), pa.field("snippet", pa.string())]
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


def write_shard(
    version_uri: str, partition_bits: int, code_bytes: int, pdf, address_bits: int | None = None
) -> list[dict]:
    """Writes one Spark task's rows as one Parquet file per partition present; returns the files' metadata.

    A row's partition is the first ``partition_bits`` bits of its ``address_bits``-bit address (without
    ``address_bits``: of its code, the layout of indexes whose address is the code's prefix).

    Runs inside executors (e.g. from ``mapInPandas``). ``pdf`` has columns ``id``, ``code`` (bytes),
    ``address`` (uint64) and optionally ``word_ids``/``word_counts`` (bytes), ``content_hash`` (str) and
    ``labels`` (lists of str) with ``snippet`` (str). Returns
    ``[{partition, path (relative to version_uri), rows, bytes, sha256, columns}]``.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    missing = [c for c in BASE_COLUMNS if c not in pdf.columns]
    if missing:
        raise ValueError(f"write_shard needs columns {list(BASE_COLUMNS)}; missing {missing}")
    with_words = all(c in pdf.columns for c in WORD_COLUMNS)
    with_hash = HASH_COLUMN in pdf.columns
    with_text = all(c in pdf.columns for c in TEXT_COLUMNS)
    n = len(pdf)
    if n == 0:
        return []
    codes = codes_from_column(pdf["code"].tolist(), code_bytes)
    ids = np.asarray(pdf["id"].astype(str).to_numpy(), dtype=object)
    address = pdf["address"].to_numpy()
    # Spark has no unsigned longs: an int64 column carries the address's 64 bits (two's complement)
    address = address.astype(np.int64).view(np.uint64) if address.dtype.kind == "i" else address.astype(np.uint64)
    if address_bits is None:
        part = C.prefix(codes, partition_bits)
    else:
        part = address >> np.uint64(address_bits - partition_bits)
    order = np.lexsort((ids, address, part))  # by partition, then address, then id
    codes, ids, address, part = codes[order], ids[order], address[order], part[order]
    words = [pdf[c].to_numpy(dtype=object)[order] for c in WORD_COLUMNS] if with_words else None
    hashes = pdf[HASH_COLUMN].to_numpy(dtype=object)[order] if with_hash else None
    texts = [pdf[c].to_numpy(dtype=object)[order] for c in TEXT_COLUMNS] if with_text else None
    bounds = np.concatenate([[0], np.flatnonzero(np.diff(part)) + 1, [n]])
    schema = shard_schema(code_bytes, with_words, with_hash, with_text)
    metas = []
    for s, e in zip(bounds[:-1], bounds[1:]):
        cols = [
            pa.array(ids[s:e], pa.string()),
            pa.FixedSizeBinaryArray.from_buffers(
                pa.binary(code_bytes), int(e - s), [None, pa.py_buffer(codes[s:e].tobytes())]
            ),
            pa.array(address[s:e], pa.uint64()),
        ]
        if words is not None:
            cols += [pa.array([bytes(v) for v in w[s:e]], pa.binary()) for w in words]
        if hashes is not None:
            cols.append(pa.array(hashes[s:e], pa.string()))
        if texts is not None:
            cols += [
                pa.array([None if v is None else list(v) for v in texts[0][s:e]], pa.list_(pa.string())),
                pa.array(texts[1][s:e], pa.string()),
            ]
        buf = io.BytesIO()
        pq.write_table(pa.Table.from_arrays(cols, schema=schema), buf, compression="zstd")
        data = buf.getvalue()
        name = C.partition_name(int(part[s]), partition_bits)
        path = shard_path(name, _uuid.uuid4().hex)
        store.write_bytes(store.join(version_uri, path), data)
        metas.append(
            {
                "partition": name,
                "path": path,
                "rows": int(e - s),
                "bytes": len(data),
                "sha256": store.sha256_bytes(data),
                "columns": list(schema.names),
            }
        )
    log.debug("wrote %d rows in %d shard files under %s", n, len(metas), version_uri)
    return metas


def build_manifest(
    version: str,
    bits: int,
    address_bits: int,
    partition_bits: int,
    files: Iterable[dict],
    *,
    model: dict | None = None,
    data: dict | None = None,
    created_at: str | None = None,
    **extra: Any,
) -> dict:
    """Groups ``write_shard`` metadata into the version's manifest (partitions ascending, files by path)."""
    _check_version(version)
    _check_bits(64 if extra.get("address_model") else bits, address_bits, partition_bits)
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
        partitions.append(
            {"partition": C.partition_name(value, partition_bits), "rows": sum(int(x["rows"]) for x in fl), "files": fl}
        )
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
        _check_bits(64 if manifest.get("address_model") else bits, ab, pb)  # an address model's own width
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
    if (
        not isinstance(path, str)
        or not path
        or path.startswith(("/", "\\"))
        or "\\" in path
        or ":" in path
        or any(part in ("", ".", "..") for part in path.split("/"))
    ):
        raise IndexFormatError(f"{where}: file path {path!r} leaves the version folder (relative paths only, no '..')")


def _check_bits(bits: int, address_bits: int, partition_bits: int) -> None:
    if not (bits > 0 and 0 <= partition_bits <= address_bits <= min(64, bits)):
        raise IndexFormatError(
            f"need 0 <= partition_bits ({partition_bits}) <= address_bits ({address_bits}) <= min(64, bits={bits})"
        )
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


def verify_files(
    index_uri: str, version: str, manifest: dict, verify_checksums: bool = False, *, verify_models: bool = True
) -> None:
    """Every file the manifest lists exists with its size (shards' sha256 when ``verify_checksums``; the model
    files' sha256 unless ``verify_models`` is False: a publisher that has just hashed what it wrote)."""
    vp = version_prefix(index_uri, version)
    present = dict(store.list_prefix(vp))  # one listing instead of a HEAD per file
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
    """The numpy encoder (:class:`inference.Encoder`, no torch) of the model a version carries
    (``versions/V/<directory>/``), built from the very bytes checked against the manifest."""
    from semhash_spark.models import inference

    uri = store.join(version_prefix(index_uri, version), directory)
    files = verify_model_files(index_uri, version, manifest, directory)
    d = directory.rstrip("/")
    weights, meta = files.get(f"{d}/{inference.WEIGHTS}"), files.get(f"{d}/{inference.META}")
    if weights is None or meta is None:  # a version written before model files were listed
        return inference.load_encoder(uri)
    return inference.encoder_from_parts(weights, json.loads(meta), uri)


_READ = object()


def publish(index_uri: str, version: str, manifest: dict, verify_checksums: bool = False, *, base: Any = _READ) -> None:
    """Publishes a version whose shards are written: verify files, write the manifest, then ``CURRENT`` last.

    ``CURRENT`` is written by compare-and-swap: it must still point at ``base`` (the version the job started from,
    None for an empty index; by default whatever it points at now), else :class:`ConcurrentPublish` is raised and
    nothing is published. Any failure before the final write leaves ``CURRENT`` (and every reader) where it was.
    """
    if manifest.get("version") != version:
        raise IndexFormatError(f"manifest is for version {manifest.get('version')!r}, publishing {version!r}")
    validate_manifest(manifest, f"manifest of {version}")
    verify_files(index_uri, version, manifest, verify_checksums, verify_models=False)  # sizes: hashed when written
    store.write_json(manifest_uri(index_uri, version), manifest)
    _write_current(index_uri, version, base)
    log.info(
        "published %s version %s (%d codes, %d partitions)",
        index_uri,
        version,
        manifest["count"],
        len(manifest["partitions"]),
    )


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
        raise ConcurrentPublish(
            f"{uri} moved from {base or 'nothing'} to {now or 'nothing'} while this job ran "
            f"(another writer published); not publishing {version} over it: run the job again "
            "to include both changes"
        )
    body = (
        json.dumps(
            {"version": version, "manifest": f"versions/{version}/{MANIFEST}", "published_at": _now()},
            indent=1,
            sort_keys=True,
        )
        + "\n"
    ).encode()
    try:
        store.write_bytes_if(uri, body, tag)
    except store.PreconditionFailed:
        raise ConcurrentPublish(
            f"{uri} was changed by another writer while version {version} was being "
            "published; not published: run the job again to include both changes"
        ) from None


def publish_version(
    index_uri: str,
    write: Callable[[str, str], dict],
    *,
    models: dict[str, dict[str, bytes]],
    base: Any = _READ,
    version: str | None = None,
    verify_checksums: bool = False,
) -> dict:
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
        manifest = build_manifest(
            version,
            fields.pop("bits"),
            fields.pop("address_bits"),
            fields.pop("partition_bits"),
            fields.pop("files"),
            model_files=model_files,
            **fields,
        )
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
    return [v for v in store.list_dir(root) if _VERSION_RE.match(v) and store.exists(store.join(root, v, MANIFEST))]


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

    ``search(q, k) -> (D, I)`` and ``range_search(q, radius) -> (lims, D, I)`` on the ranking code,
    ``address_lookup(q, address_radius)`` the address ball; ``I`` holds ordinals, mapped to string ids by
    :meth:`ids_of`. Partitions are read on first use with :func:`semhash_spark.index.query.read_partition` (each file's
    sha256 checked when ``verify``) and searched as one :class:`semhash_spark.index.query.Loaded`; ``partitions_read``
    counts them.
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
        self.address_from_model = bool(manifest.get("address_model"))
        parts = manifest["partitions"]
        self._part_names = [p["partition"] for p in parts]
        self._part_vals = np.array([int(p["partition"], 16) for p in parts], dtype=np.uint64)
        self._parts: dict[int, Any] = {}
        self._loaded_struct = None
        self._lock = threading.Lock()
        self.partitions_read = 0

    # ------------------------------------------------------------------ constructors
    @classmethod
    def open(cls, index_uri: str, version: str | None = None, verify: bool = True) -> "HammingIndex":
        """Opens the version ``CURRENT`` points at (or ``version``); reads only the manifest until searched."""
        if version is None:
            version = read_current(index_uri)["version"]
        index = cls(read_manifest(index_uri, version), index_uri=index_uri, verify=verify)
        log.info(
            "opened %s version %s: %d codes of %d bits in %d partitions",
            index_uri,
            version,
            index.ntotal,
            index.bits,
            index.npartitions,
        )
        return index

    @classmethod
    def from_codes(
        cls,
        codes: np.ndarray,
        ids: Sequence[str] | None = None,
        *,
        bits: int,
        partition_bits: int = 0,
        address_bits: int | None = None,
        word_ids: Sequence[bytes] | None = None,
        word_counts: Sequence[bytes] | None = None,
        addresses: np.ndarray | None = None,
    ) -> "HammingIndex":
        """An in-memory index; ordinals are the row numbers of ``codes`` (like faiss ``add``). ``addresses``:
        address codes of their own (``address_bits`` wide), else the first ``address_bits`` bits of the codes."""
        import pyarrow as pa

        from semhash_spark.index import query as Q

        codes = _check_queries(codes, bits)
        n = codes.shape[0]
        address_bits = min(bits, 64) if address_bits is None else address_bits
        _check_bits(bits if addresses is None else 64, address_bits, partition_bits)
        ids_list = [str(i) for i in range(n)] if ids is None else [str(x) for x in ids]
        if len(ids_list) != n:
            raise ValueError(f"{n} codes but {len(ids_list)} ids")
        if addresses is None:
            addr = C.prefix(codes, address_bits)
        else:
            addr = np.asarray(addresses, dtype=np.uint64).reshape(-1)
            if addr.shape[0] != n or (address_bits < 64 and np.any(addr >> np.uint64(address_bits))):
                raise ValueError(f"need one {address_bits}-bit address per code ({n})")
        part = Q.partition_of_address(addr, address_bits, partition_bits)
        vals, counts = np.unique(part, return_counts=True)
        has_words = word_ids is not None and word_counts is not None
        manifest = {
            "format": FORMAT,
            "version": None,
            "created_at": _now(),
            "bits": bits,
            "code_bytes": C.code_bytes(bits),
            "address_bits": address_bits,
            "partition_bits": partition_bits,
            "count": n,
            "columns": list(BASE_COLUMNS) + (list(WORD_COLUMNS) if has_words else []),
            "model": None,
            "data": None,
            "address_model": {"path": None} if addresses is not None else None,
            "partitions": [
                {"partition": C.partition_name(int(v), partition_bits), "rows": int(c), "files": []}
                for v, c in zip(vals, counts)
            ],
        }
        index = cls(manifest)
        piece = Q.PartData(
            number=-1,
            name="*",
            offset=0,
            codes=codes,
            address=addr,
            ids=pa.array(ids_list, pa.string()),
            word_ids=pa.array([bytes(x) for x in word_ids], pa.binary()) if has_words else None,
            word_counts=pa.array([bytes(x) for x in word_counts], pa.binary()) if has_words else None,
        )
        index._loaded_struct = Q.Loaded([piece], bits, address_bits)
        index._in_memory = True
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
        return (
            f"HammingIndex(version={self.version!r}, ntotal={self.ntotal}, bits={self.bits}, "
            f"address_bits={self.address_bits}, partition_bits={self.partition_bits}, "
            f"partitions={self.npartitions}, loaded={len(self._parts)})"
        )

    # ------------------------------------------------------------------ search
    def search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact k nearest codes: ``D int32[nq, k]``, ``I int64[nq, k]`` ordered by (distance, ordinal), -1 padded."""
        q = _check_queries(q, self.bits)
        nq = q.shape[0]
        D = np.full((nq, max(k, 0)), -1, dtype=np.int32)
        I = np.full((nq, max(k, 0)), -1, dtype=np.int64)
        if k <= 0 or self.ntotal == 0:
            return D, I
        loaded, lists = self._knn_rings(q, k)
        for i, (d, pos) in enumerate(lists):
            D[i, : len(d)], I[i, : len(d)] = d, loaded.ordinal[pos]
        return D, I

    def _knn_rings(self, q: np.ndarray, k: int):
        """k nearest over partitions read ring by ring: where the address is the code's prefix, a partition whose
        prefix is ``r`` from every query's holds nothing nearer than ``r``, so reading stops once each query's
        k-th distance is below the next ring; else every partition is read. Returns (Loaded, [(D, positions)])."""
        if self.address_from_model or getattr(self, "_in_memory", False):
            loaded = self.loaded(np.arange(self.npartitions))
            return loaded, loaded.knn(q, k)
        qp = C.prefix(q, self.partition_bits)
        pd = C.popcount64((self._part_vals[None, :] ^ qp[:, None]).reshape(-1, 1)).reshape(len(q), -1)
        near = pd.min(axis=0)
        radii = np.unique(near)
        for n, r in enumerate(radii):
            loaded = self.loaded(np.flatnonzero(near <= r))
            lists = loaded.knn(q, k)
            if n + 1 == len(radii) or len(loaded.numbers) == self.npartitions:
                return loaded, lists
            if all(len(d) == k and d[-1] < radii[n + 1] for d, _ in lists):
                return loaded, lists  # every partition not read is at least radii[n + 1] away
        raise AssertionError("unreachable")

    def range_search(self, q: np.ndarray, radius: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every code within Hamming ``radius`` of the ranking code: CSR ``(lims int64[nq+1], D int32, I int64)``,
        per query by (distance, ordinal); where the address is the code's prefix only partitions within
        ``radius`` are read."""
        from semhash_spark.index import query as Q

        q = _check_queries(q, self.bits)
        if radius < 0 or self.ntotal == 0:
            return np.zeros(len(q) + 1, np.int64), np.empty(0, np.int32), np.empty(0, np.int64)
        need = Q.needed_partitions(self.manifest, self._part_vals, q, None, k=None, radius=radius, address_radius=None)
        loaded = self.loaded(need)
        return _csr([(d, loaded.ordinal[pos]) for d, pos in loaded.within(q, radius)])

    def address_lookup(
        self, q: np.ndarray, address_radius: int, addresses: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Semantic hashing's lookup: codes whose address is within ``address_radius`` of the query's address (the
        papers' Hamming ball), as ``(lims, D, I)`` with ranking-code distances, per query by (distance, ordinal).
        ``addresses``: the queries' address codes; required when the index's addresses come from a model."""
        from semhash_spark.index import query as Q

        q = _check_queries(q, self.bits)
        qa = self.query_addresses(q, addresses)
        if address_radius < 0 or self.ntotal == 0:
            return np.zeros(len(q) + 1, np.int64), np.empty(0, np.int32), np.empty(0, np.int64)
        need = Q.needed_partitions(
            self.manifest, self._part_vals, q, qa, k=None, radius=None, address_radius=address_radius
        )
        loaded = self.loaded(need)
        return _csr([(d, loaded.ordinal[pos]) for d, pos in loaded.address_ball(q, qa, address_radius)])

    def query_addresses(self, q: np.ndarray, addresses: np.ndarray | None = None) -> np.ndarray:
        """The queries' addresses: given, or the first ``address_bits`` bits of their ranking codes."""
        if addresses is not None:
            a = np.asarray(addresses, dtype=np.uint64).reshape(-1)
            if a.shape[0] != len(q):
                raise ValueError(f"{len(q)} queries but {a.shape[0]} addresses")
            return a
        if self.address_from_model:
            raise ValueError(
                "this index's addresses come from an address model: give the queries' addresses "
                "(query by text, or pass addresses=)"
            )
        return C.prefix(q, self.address_bits)

    # ------------------------------------------------------------------ row access
    def loaded(self, parts: np.ndarray):
        """The search structure over every partition read so far, after reading ``parts``."""
        self._ensure_loaded(parts)
        return self._loaded_struct

    def ids_of(self, I: np.ndarray) -> np.ndarray:
        """String ids (``object`` array shaped like ``I``); ``None`` where ``I`` is -1."""
        I = np.asarray(I, dtype=np.int64)
        out = np.full(I.shape, None, dtype=object)
        loaded, piece, row, ok = self._at(I)
        out.reshape(-1)[ok] = [loaded.parts[int(p)].ids[int(r)].as_py() for p, r in zip(piece, row)]
        return out

    def codes_of(self, I: np.ndarray) -> np.ndarray:
        """Packed codes ``uint8[*I.shape, code_bytes]``; zeros where ``I`` is -1."""
        I = np.asarray(I, dtype=np.int64)
        flat = np.zeros((I.size, self.code_bytes), dtype=np.uint8)
        loaded, piece, row, ok = self._at(I)
        if ok.any():
            flat[ok] = np.stack([loaded.parts[int(p)].codes[int(r)] for p, r in zip(piece, row)])
        return flat.reshape(I.shape + (self.code_bytes,))

    def addresses_of(self, I: np.ndarray) -> np.ndarray:
        """Address codes ``uint64`` shaped like ``I``; 0 where ``I`` is -1."""
        I = np.asarray(I, dtype=np.int64)
        out = np.zeros(I.size, dtype=np.uint64)
        loaded, piece, row, ok = self._at(I)
        out[ok] = [loaded.parts[int(p)].address[int(r)] for p, r in zip(piece, row)]
        return out.reshape(I.shape)

    def word_counts_of(self, I: np.ndarray) -> np.ndarray:
        """Stored bag of words per row: ``object`` array shaped like ``I`` of ``(word_ids int32[m],
        word_counts float32[m])``; ``None`` where ``I`` is -1. Raises if the index stores no words."""
        if not self.has_words:
            raise IndexFormatError(f"index {self.index_uri or '(in memory)'} stores no word counts")
        I = np.asarray(I, dtype=np.int64)
        out = np.full(I.shape, None, dtype=object)
        loaded, piece, row, ok = self._at(I)
        flat = out.reshape(-1)
        for j, p, r in zip(np.flatnonzero(ok), piece, row):
            flat[j] = loaded.parts[int(p)].words_of(int(r))
        return out

    def load_all(self) -> "HammingIndex":
        """Reads every partition now (a service does this before taking traffic)."""
        self._ensure_loaded(np.arange(self.npartitions))
        return self

    # ------------------------------------------------------------------ internals
    def _at(self, I: np.ndarray):
        flat = I.reshape(-1)
        ok = flat >= 0
        if np.any(flat >= self.ntotal):
            raise ValueError(f"ordinal {int(flat.max())} out of range for an index of {self.ntotal} codes")
        if not getattr(self, "_in_memory", False):
            offs = np.concatenate([[0], np.cumsum([int(p["rows"]) for p in self.manifest["partitions"]])])
            self._ensure_loaded(np.unique(np.searchsorted(offs, flat[ok], side="right") - 1))
        loaded = self._loaded_struct
        piece, row = loaded.locate_ordinals(flat[ok])
        return loaded, piece, row, ok

    def _ensure_loaded(self, parts: np.ndarray) -> None:
        from semhash_spark.index import query as Q

        if getattr(self, "_in_memory", False):
            return
        parts = [int(p) for p in np.asarray(parts, dtype=np.int64)]
        if self._loaded_struct is not None and all(p in self._parts for p in parts):
            return
        with self._lock:
            missing = [p for p in parts if p not in self._parts]
            if missing:
                read = lambda p: Q.read_partition(
                    self.index_uri,
                    self.version,
                    self.manifest,
                    p,  # noqa: E731
                    verify=self.verify,
                )
                if len(missing) == 1:
                    results = [read(missing[0])]
                else:  # object-store reads are I/O bound: overlap them
                    with ThreadPoolExecutor(max_workers=min(_LOAD_THREADS, len(missing))) as pool:
                        results = list(pool.map(read, missing))
                for p, data in zip(missing, results):
                    self._parts[p] = data
                    self.partitions_read += 1
            if missing or self._loaded_struct is None:
                self._loaded_struct = Q.Loaded(list(self._parts.values()), self.bits, self.address_bits)


def _csr(lists) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    lims = np.zeros(len(lists) + 1, dtype=np.int64)
    for i, (d, _) in enumerate(lists):
        lims[i + 1] = lims[i] + len(d)
    D = np.concatenate([d for d, _ in lists]).astype(np.int32) if lists else np.empty(0, np.int32)
    I = np.concatenate([o for _, o in lists]).astype(np.int64) if lists else np.empty(0, np.int64)
    return lims, D, I


def _check_queries(q: np.ndarray, bits: int) -> np.ndarray:
    q = C.as_codes(q, bits)
    spare = 8 * q.shape[1] - bits
    if spare and np.any(q[:, -1] & ((1 << spare) - 1)):
        raise ValueError(f"codes have bits set beyond their {bits} bits (the trailing {spare} bits must be 0)")
    return q
