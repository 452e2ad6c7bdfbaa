"""The prepared-dataset format ``semhash-docs/1`` (see docs/architecture.md, "Prepared dataset").

::

    data_dir/dataset.json   {"format", "name", "vocab_size", "counts": {"train", "test", "quarantined"},
                             "vocab_fingerprint", "source", "created_at", ...}
    data_dir/vocab.json     {"words": [...], "doc_freq": [...], "num_train_docs": n}      (index = word id)
    data_dir/docs/split=<split>/*.parquet
        id string, labels list<string>, word_ids binary (int32 LE, ascending), word_counts binary (float32 LE),
        length int32 (in-vocabulary word count), content_hash string (sha1 of the raw text),
        word_hashes binary (int64 LE, ascending: the 64-bit hashes of the distinct tokens, vocabulary or not),
        snippet string (the text's first prepare.snippet_words words, at most snippet_chars; null when off;
        absent in datasets prepared before it)
    data_dir/quarantine/*.parquet   id string (nullable), source string, reason string, excerpt string

Sparse count vectors are two binary columns because Petastorm's batch reader needs columns of equal-length
values; :func:`encode_sparse` / :func:`decode_sparse` convert, :func:`csr_from_binary` decodes a whole column
into a ``scipy.sparse.csr_matrix`` without densifying. The metadata functions take a local path or an ``s3://``
URI (through :mod:`semhash_spark.io.store`); reading a split is for local directories (``store.local_copy`` stages
one, Spark jobs read ``s3://`` through :mod:`semhash_spark.io.sparkio`).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

if TYPE_CHECKING:  # scipy is imported where sparse rows are built (not by the service)
    import scipy.sparse as sp

from semhash_spark.io import store
from semhash_spark.config import PrepareConfig
from semhash_spark.data.corpora import tokenize

FORMAT = "semhash-docs/1"
SPLITS = ("train", "test")
DATASET_FILE = "dataset.json"
VOCAB_FILE = "vocab.json"
DOCS_DIR = "docs"
QUARANTINE_DIR = "quarantine"

ID, LABELS, WORD_IDS, WORD_COUNTS, LENGTH, CONTENT_HASH = (
    "id",
    "labels",
    "word_ids",
    "word_counts",
    "length",
    "content_hash",
)
WORD_HASHES = "word_hashes"  # the document's whole word set (every token, not only the vocabulary), hashed
SNIPPET = "snippet"  # the text's first words (prepare.snippet_words; null when off): shown beside hits
DOC_COLUMNS = (ID, LABELS, WORD_IDS, WORD_COUNTS, LENGTH, CONTENT_HASH, WORD_HASHES, SNIPPET)
DOC_SCHEMA = pa.schema(
    [
        (ID, pa.string()),
        (LABELS, pa.list_(pa.string())),
        (WORD_IDS, pa.binary()),
        (WORD_COUNTS, pa.binary()),
        (LENGTH, pa.int32()),
        (CONTENT_HASH, pa.string()),
        (WORD_HASHES, pa.binary()),
        (SNIPPET, pa.string()),
    ]
)
QUARANTINE_COLUMNS = ("id", "source", "reason", "excerpt")
QUARANTINE_SCHEMA = pa.schema([(c, pa.string()) for c in QUARANTINE_COLUMNS])

_IDS_DTYPE = np.dtype("<i4")
_COUNTS_DTYPE = np.dtype("<f4")


# ---------------------------------------------------------------------------------------------------- metadata
def split_dir(data_dir: str | os.PathLike, split: str) -> Path:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    return Path(data_dir) / DOCS_DIR / f"split={split}"


def split_uri(data_uri: str, split: str) -> str:
    """:func:`split_dir` as a store URI (local path or ``s3://``)."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    return store.join(str(data_uri), DOCS_DIR, f"split={split}")


def vocab_fingerprint(words: Sequence[str]) -> str:
    """sha256 of the words joined by newlines, in word-id order."""
    return hashlib.sha256("\n".join(words).encode("utf-8")).hexdigest()


def _write_json(path: str | os.PathLike, obj: Any) -> None:
    text = json.dumps(obj, indent=1, sort_keys=False) + "\n"
    if store.is_s3(str(path)):  # one PUT: atomic by itself
        store.write_bytes(str(path), text.encode())
        return
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _read_json(uri: str, missing: str) -> Any:
    """The JSON object at a local path or ``s3://`` URI; ``missing`` is the ValueError's text when it is absent."""
    if store.is_s3(uri):
        try:
            return store.read_json(uri)
        except store.NotFound:
            raise ValueError(missing) from None
    path = Path(uri)
    if not path.is_file():
        raise ValueError(missing)
    return json.loads(path.read_text())


def write_vocab(data_dir: str | os.PathLike, words: Sequence[str], doc_freq: Sequence[int], num_train_docs: int) -> str:
    """Writes vocab.json and returns the vocabulary fingerprint."""
    if len(words) != len(doc_freq):
        raise ValueError(f"{len(words)} words but {len(doc_freq)} document frequencies")
    _write_json(
        store.join(str(data_dir), VOCAB_FILE),
        {"words": list(words), "doc_freq": [int(x) for x in doc_freq], "num_train_docs": int(num_train_docs)},
    )
    return vocab_fingerprint(words)


def write_metadata(
    data_dir: str | os.PathLike,
    *,
    name: str,
    vocab_size: int,
    counts: Mapping[str, int],
    vocab_fingerprint: str,
    source: str,
    **extra: Any,
) -> dict:
    """Writes dataset.json (last, once docs/ and vocab.json are in place) and returns it."""
    meta = {
        "format": FORMAT,
        "name": name,
        "vocab_size": int(vocab_size),
        "counts": {k: int(v) for k, v in counts.items()},
        "vocab_fingerprint": vocab_fingerprint,
        "source": source,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **extra,
    }
    _write_json(store.join(str(data_dir), DATASET_FILE), meta)
    return meta


def read_metadata(data_dir: str | os.PathLike, expected_format: str = FORMAT) -> dict:
    """Reads and checks dataset.json (``expected_format``: documents' by default; images pass theirs)."""
    path = store.join(str(data_dir), DATASET_FILE)
    meta = _read_json(path, f"{path!r} not found: {str(data_dir)!r} is not a prepared dataset (run semhash prepare)")
    if meta.get("format") != expected_format:
        raise ValueError(f"{path!r} has format {meta.get('format')!r}; this version reads {expected_format!r}")
    return meta


def read_vocab(data_dir: str | os.PathLike) -> tuple[list[str], np.ndarray, int]:
    """Returns (words, doc_freq int64[V], num_train_docs) from vocab.json."""
    path = store.join(str(data_dir), VOCAB_FILE)
    v = _read_json(path, f"{path!r} not found: {str(data_dir)!r} is not a prepared dataset")
    words, doc_freq = v["words"], np.asarray(v["doc_freq"], dtype=np.int64)
    if len(words) != len(doc_freq):
        raise ValueError(f"{str(path)!r}: {len(words)} words but {len(doc_freq)} document frequencies")
    return words, doc_freq, int(v["num_train_docs"])


def idf(doc_freq: np.ndarray, n: int) -> np.ndarray:
    """Smooth inverse document frequency, log((1 + n) / (1 + df)) + 1 (as scikit-learn's smooth_idf)."""
    df = np.asarray(doc_freq, dtype=np.float64)
    return (np.log((1.0 + n) / (1.0 + df)) + 1.0).astype(np.float32)


# ---------------------------------------------------------------------------------------------------- sparse rows
def encode_sparse(ids: np.ndarray, counts: np.ndarray) -> tuple[bytes, bytes]:
    """(word ids, counts) -> (int32 LE bytes, float32 LE bytes). Ids must be ascending and unique."""
    ids = np.asarray(ids, dtype=_IDS_DTYPE)
    counts = np.asarray(counts, dtype=_COUNTS_DTYPE)
    if ids.shape != counts.shape or ids.ndim != 1:
        raise ValueError(f"ids {ids.shape} and counts {counts.shape} must be 1-D and of equal length")
    if ids.size > 1 and not np.all(ids[1:] > ids[:-1]):
        raise ValueError("word ids must be strictly ascending")
    return ids.tobytes(), counts.tobytes()


def decode_sparse(ids_bytes: bytes, counts_bytes: bytes) -> tuple[np.ndarray, np.ndarray]:
    """The inverse of :func:`encode_sparse`: (int32[k], float32[k]), read-only views of the bytes."""
    ids = np.frombuffer(ids_bytes, dtype=_IDS_DTYPE)
    counts = np.frombuffer(counts_bytes, dtype=_COUNTS_DTYPE)
    if ids.shape != counts.shape:
        raise ValueError(f"{ids.size} word ids but {counts.size} counts")
    return ids, counts


def csr_from_binary(word_ids: Sequence[bytes], word_counts: Sequence[bytes], vocab_size: int) -> sp.csr_matrix:
    """Rows of encoded sparse vectors -> csr_matrix float32 [n, vocab_size] (one copy of the values, no densify)."""
    import scipy.sparse as sp  # here, not at import: a [service] install (query by code) has no scipy

    n = len(word_ids)
    if len(word_counts) != n:
        raise ValueError(f"{n} word_ids rows but {len(word_counts)} word_counts rows")
    nbytes = np.fromiter((len(b) for b in word_ids), dtype=np.int64, count=n)
    if np.any(nbytes % 4) or not np.array_equal(nbytes, np.fromiter((len(b) for b in word_counts), np.int64, n)):
        raise ValueError("word_ids and word_counts rows must hold the same number of 4-byte values")
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(nbytes // 4, out=indptr[1:])
    indices = np.frombuffer(b"".join(word_ids), dtype=_IDS_DTYPE).astype(np.int32)
    data = np.frombuffer(b"".join(word_counts), dtype=_COUNTS_DTYPE).astype(np.float32)
    if indices.size and (indices.min() < 0 or indices.max() >= vocab_size):
        raise ValueError(f"word id out of range [0, {vocab_size}): {indices.min()}..{indices.max()}")
    return sp.csr_matrix((data, indices, indptr), shape=(n, vocab_size))


def vectorize(
    text: str, vocab_index: Mapping[str, int], cfg: PrepareConfig = PrepareConfig()
) -> tuple[np.ndarray, np.ndarray]:
    """Text -> (ascending word ids int32, counts float32) over the vocabulary, tokenised as prepare does."""
    return count_vector(tokenize(text, cfg.min_token_len, cfg.max_token_len, tokens=cfg.tokens), vocab_index)


def count_vector(tokens: Sequence[str], vocab_index: Mapping[str, int]) -> tuple[np.ndarray, np.ndarray]:
    """Tokens -> (ascending word ids int32, counts float32); out-of-vocabulary tokens are ignored."""
    ids = np.fromiter((i for i in (vocab_index.get(w) for w in tokens) if i is not None), dtype=np.int32)
    uniq, counts = np.unique(ids, return_counts=True)
    return uniq.astype(np.int32), counts.astype(np.float32)


# ---------------------------------------------------------------------------------------------------- reading a split
@dataclass
class SplitData:
    """One split in memory: ``counts`` is csr float32 [n, V]; fields not asked for are None."""

    ids: np.ndarray | None  # object[n] of str
    labels: list[list[str]] | None
    counts: sp.csr_matrix | None
    content_hash: np.ndarray | None  # object[n] of str

    def __len__(self) -> int:
        for x in (self.ids, self.labels, self.content_hash):
            if x is not None:
                return len(x)
        return 0 if self.counts is None else self.counts.shape[0]


def split_files(data_dir: str | os.PathLike, split: str) -> list[Path]:
    """The Parquet files of a split in name order (the order :func:`read_split` returns rows in)."""
    d = split_dir(data_dir, split)
    if not d.is_dir():
        raise ValueError(f"{str(d)!r} not found: {str(data_dir)!r} has no {split} split")
    return sorted(p for p in d.iterdir() if p.name.endswith(".parquet") and not p.name.startswith((".", "_")))


def read_split(
    data_dir: str | os.PathLike, split: str, columns: Sequence[str] = (ID, LABELS, "counts", CONTENT_HASH)
) -> SplitData:
    """Reads a whole split (files in name order). ``columns`` picks among id, labels, counts, content_hash."""
    unknown = set(columns) - {ID, LABELS, "counts", CONTENT_HASH}
    if unknown:
        raise ValueError(f"unknown columns {sorted(unknown)}; choose among id, labels, counts, content_hash")
    vocab_size = read_metadata(data_dir)["vocab_size"]
    cols = [c for c in (ID, LABELS, CONTENT_HASH) if c in columns]
    if "counts" in columns:
        cols += [WORD_IDS, WORD_COUNTS]
    ids, labels, hashes, mats = [], [], [], []
    for f in split_files(data_dir, split):
        t = pq.read_table(f, columns=cols)
        if ID in columns:
            ids.extend(t.column(ID).to_pylist())
        if LABELS in columns:
            labels.extend([x or [] for x in t.column(LABELS).to_pylist()])
        if CONTENT_HASH in columns:
            hashes.extend(t.column(CONTENT_HASH).to_pylist())
        if "counts" in columns:
            mats.append(csr_from_binary(t.column(WORD_IDS).to_pylist(), t.column(WORD_COUNTS).to_pylist(), vocab_size))
    counts = None
    if "counts" in columns:
        import scipy.sparse as sp

        counts = (
            sp.vstack(mats, format="csr", dtype=np.float32)
            if mats
            else sp.csr_matrix((0, vocab_size), dtype=np.float32)
        )
    return SplitData(
        ids=np.array(ids, dtype=object) if ID in columns else None,
        labels=labels if LABELS in columns else None,
        counts=counts,
        content_hash=np.array(hashes, dtype=object) if CONTENT_HASH in columns else None,
    )
