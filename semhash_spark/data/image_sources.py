"""Readers of raw image collections: each yields records ``{id, label, split, source, data, shape, error}``.

- ``data`` is either the bytes of an image file (``shape`` None: decoded later, in Spark, by
  :func:`semhash_spark.data.images.decode_image`) or raw uint8 pixels in HWC order (``shape`` ``"H,W,C"``: the MNIST
  idx files and CIFAR-10's python batches).
- ``error`` is set when a record could not be read at all (it is quarantined with that reason).

Layouts:

- ``imagefolder``: ``ROOT/{train,test}/<label>/<image file>``, a folder or a ``.tar``/``.tar.gz`` archive of one
  (one extra top folder inside the archive or above ``train/`` is allowed). Ids are ``<split>/<label>/<file>``.
- ``cifar10``: the same class-folder layout (``cifar10-jpeg.tar.gz`` or its extracted folder), or the original
  python batches (``data_batch_1..5``, ``test_batch``, ``batches.meta``; folder or ``cifar-10-python.tar.gz``).
  The batches are pickles: read only archives you trust.
- ``mnist``: a folder with ``{train,t10k}-{images-idx3,labels-idx1}-ubyte`` files, gzipped or not.

``s3://`` sources (the same layouts as objects and prefixes) are split into *units* (:func:`input_units`) that
Spark tasks read with :func:`read_unit` through :mod:`semhash_spark.io.store`: one unit per ``<split>/<label>/``
prefix of a class-folder tree (its objects read one by one), or one unit for an archive, MNIST's idx files or
CIFAR-10's python batches (downloaded to a temporary folder and read by the local readers above, so ids and
sources match a local copy's, except that a class-folder image's ``source`` is its ``s3://`` URI).
"""

from __future__ import annotations

import gzip
import os
import pickle
import struct
import tarfile
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np

from semhash_spark.io import store

SPLITS = ("train", "test")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm")
DATASETS = ("cifar10", "mnist", "imagefolder")


def _record(
    id_: str,
    label: str,
    split: str,
    source: str,
    data: bytes | None,
    shape: str | None = None,
    error: str | None = None,
) -> dict:
    return {"id": id_, "label": label, "split": split, "source": source, "data": data, "shape": shape, "error": error}


def _is_archive(path: Path) -> bool:
    return path.is_file() and (path.name.endswith((".tar.gz", ".tgz", ".tar")))


def _folder_key(parts: list[str]) -> tuple[str, str, str] | None:
    """``[..., split, label, file]`` -> (split, label, file) when the path fits the class-folder layout."""
    if len(parts) < 3 or parts[-3] not in SPLITS:
        return None
    return parts[-3], parts[-2], parts[-1]


def _looks_like_image(name: str) -> bool:
    return not name.startswith(".") and (name.lower().endswith(IMAGE_SUFFIXES) or "." not in name)


def read_folder_tree(root: Path) -> Iterator[dict]:
    """``root/{train,test}/<label>/<file>`` (or one level deeper), sorted by path."""
    base = root
    if not any((root / s).is_dir() for s in SPLITS):
        subs = [d for d in sorted(root.iterdir()) if d.is_dir() and any((d / s).is_dir() for s in SPLITS)]
        if len(subs) != 1:
            raise ValueError(f"{str(root)!r} has no train/ or test/ folder of <label>/<image> files")
        base = subs[0]
    for split in SPLITS:
        sdir = base / split
        if not sdir.is_dir():
            continue
        for label_dir in sorted(d for d in sdir.iterdir() if d.is_dir()):
            for f in sorted(label_dir.iterdir()):
                if not f.is_file() or not _looks_like_image(f.name):
                    continue
                rid = f"{split}/{label_dir.name}/{f.name}"
                try:
                    data = f.read_bytes()
                except OSError as e:
                    yield _record(rid, label_dir.name, split, str(f), None, error=f"unreadable file: {e}")
                    continue
                yield _record(rid, label_dir.name, split, str(f), data)


def read_folder_archive(path: Path) -> Iterator[dict]:
    """The class-folder layout inside a tar archive, streamed in archive order."""
    with tarfile.open(path, "r:*") as tar:
        for m in tar:
            if not m.isfile():
                continue
            key = _folder_key(m.name.split("/"))
            if key is None or not _looks_like_image(key[2]):
                continue
            split, label, name = key
            rid = f"{split}/{label}/{name}"
            f = tar.extractfile(m)
            data = f.read() if f is not None else None
            yield _record(
                rid,
                label,
                split,
                f"{path.name}:{m.name}",
                data,
                error=None if data is not None else "unreadable archive member",
            )


# ---------------------------------------------------------------------------------------------------- CIFAR-10
_CIFAR_BATCHES = {**{f"data_batch_{i}": "train" for i in range(1, 6)}, "test_batch": "test"}


def _cifar_batch_records(name: str, blob: bytes, label_names: list[str], source: str) -> Iterator[dict]:
    d = pickle.loads(blob, encoding="bytes")  # CIFAR-10's own format; trusted input only
    data = np.asarray(d[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)  # CHW -> HWC
    split = _CIFAR_BATCHES[name]
    files = d.get(b"filenames", [None] * len(data))
    for i, (img, lab) in enumerate(zip(data, d[b"labels"])):
        fname = files[i].decode() if isinstance(files[i], bytes) else f"{i:05d}"
        label = label_names[lab]
        yield _record(
            f"{split}/{label}/{name}/{fname}",
            label,
            split,
            f"{source}:{name}[{i}]",
            np.ascontiguousarray(img).tobytes(),
            shape="32,32,3",
        )


def _cifar_python(blobs: dict[str, bytes], source: str) -> Iterator[dict]:
    if "batches.meta" not in blobs:
        raise ValueError(f"{source!r} has CIFAR-10 python batches but no batches.meta")
    meta = pickle.loads(blobs["batches.meta"], encoding="bytes")
    label_names = [x.decode() for x in meta[b"label_names"]]
    for name in sorted(_CIFAR_BATCHES, key=lambda n: (n == "test_batch", n)):
        if name in blobs:
            yield from _cifar_batch_records(name, blobs[name], label_names, source)


def read_cifar10(source: str) -> Iterator[dict]:
    path = Path(source)
    if _is_archive(path):
        with tarfile.open(path, "r:*") as tar:
            names = {Path(m.name).name: m for m in tar.getmembers() if m.isfile()}
            if "batches.meta" in names:
                blobs = {n: tar.extractfile(names[n]).read() for n in [*_CIFAR_BATCHES, "batches.meta"] if n in names}
                yield from _cifar_python(blobs, path.name)
                return
        yield from read_folder_archive(path)
        return
    if not path.is_dir():
        raise ValueError(f"--source {source!r} is neither a folder nor a .tar/.tar.gz archive")
    metas = sorted(path.rglob("batches.meta"))
    if metas:
        d = metas[0].parent
        yield from _cifar_python(
            {p.name: p.read_bytes() for p in d.iterdir() if p.name in _CIFAR_BATCHES or p.name == "batches.meta"},
            str(d),
        )
        return
    yield from read_folder_tree(path)


# ---------------------------------------------------------------------------------------------------- MNIST
def _open_maybe_gz(path: Path) -> bytes:
    raw = path.read_bytes()
    return gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw


def parse_idx(blob: bytes) -> np.ndarray:
    """An idx file (LeCun's format: zero, zero, type 0x08 = uint8, ndim, big-endian int32 dims, data)."""
    if len(blob) < 4 or blob[0] != 0 or blob[1] != 0:
        raise ValueError("not an idx file (bad magic number)")
    if blob[2] != 0x08:
        raise ValueError(f"idx element type 0x{blob[2]:02x} is not unsigned byte")
    ndim = blob[3]
    dims = struct.unpack(">" + "i" * ndim, blob[4 : 4 + 4 * ndim])
    n = int(np.prod(dims))
    data = np.frombuffer(blob, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != n:
        raise ValueError(f"idx file holds {data.size} values, its header promises {n} ({dims})")
    return data.reshape(dims)


def _find(folder: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    raise ValueError(f"{str(folder)!r} has no {stem}[.gz]")


def read_mnist(source: str) -> Iterator[dict]:
    folder = Path(source)
    if not folder.is_dir():
        raise ValueError(f"--source {source!r} must be the folder holding MNIST's idx files")
    for split, prefix in (("train", "train"), ("test", "t10k")):
        ipath, lpath = _find(folder, f"{prefix}-images-idx3-ubyte"), _find(folder, f"{prefix}-labels-idx1-ubyte")
        images, labels = parse_idx(_open_maybe_gz(ipath)), parse_idx(_open_maybe_gz(lpath))
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise ValueError(f"{ipath.name} ({images.shape}) and {lpath.name} ({labels.shape}) do not match")
        h, w = images.shape[1:]
        for i in range(len(images)):
            yield _record(
                f"{split}/{i:05d}",
                str(int(labels[i])),
                split,
                f"{ipath.name}[{i}]",
                images[i].tobytes(),
                shape=f"{h},{w},1",
            )


def read_imagefolder(source: str) -> Iterator[dict]:
    path = Path(source)
    if _is_archive(path):
        yield from read_folder_archive(path)
    elif path.is_dir():
        yield from read_folder_tree(path)
    else:
        raise ValueError(f"--source {source!r} is neither a folder nor a .tar/.tar.gz archive")


def read_source(dataset: str, source: str) -> Iterator[dict]:
    if dataset not in DATASETS:
        raise ValueError(f"unknown image dataset {dataset!r}; expected one of {DATASETS}")
    if not os.path.exists(source):
        raise ValueError(f"--source {source!r} does not exist")
    return {"cifar10": read_cifar10, "mnist": read_mnist, "imagefolder": read_imagefolder}[dataset](source)


# ---------------------------------------------------------------------------------------------------- s3:// sources
_MNIST_STEMS = [f"{p}-{k}-ubyte" for p in ("train", "t10k") for k in ("images-idx3", "labels-idx1")]
LABEL_DIR, DOWNLOAD = "labeldir", "download"  # unit kinds: a <split>/<label>/ prefix; objects read locally


def input_units(dataset: str, source: str) -> list[tuple[str, str, str]]:
    """The units of an ``s3://`` source, in the order the local readers read them: ``(kind, uri, dataset)``.

    Raises ValueError naming the source when it is missing or not laid out as ``dataset`` expects.
    """
    if dataset not in DATASETS:
        raise ValueError(f"unknown image dataset {dataset!r}; expected one of {DATASETS}")
    if not store.is_s3(source):
        raise ValueError(f"not an s3:// source: {source!r}")
    source = source.rstrip("/")
    keys = [k for k, _ in store.list_prefix(source)]
    if not keys:
        if not store.exists(source):
            raise ValueError(f"--source {source!r} does not exist (no object or prefix at this URI)")
        if dataset == "mnist":
            raise ValueError(f"--source {source!r} must be the prefix holding MNIST's idx files, not one object")
        if not _is_archive_name(source):
            raise ValueError(f"--source {source!r} is neither a prefix nor a .tar/.tar.gz archive")
        return [(DOWNLOAD, source, dataset)]
    if dataset == "mnist":
        names = {k for k in keys if "/" not in k}
        missing = [s for s in _MNIST_STEMS if s not in names and s + ".gz" not in names]
        if missing:
            raise ValueError(f"--source {source!r} has no {', '.join(m + '[.gz]' for m in missing)}")
        return [(DOWNLOAD, source, dataset)]
    if dataset == "cifar10":
        metas = sorted(k for k in keys if k.rsplit("/", 1)[-1] == "batches.meta")
        if metas:
            return [(DOWNLOAD, store.join(source, metas[0].rpartition("/")[0]), dataset)]
    # class folders: <split>/<label>/<file>, or one extra top folder above them (as read_folder_tree allows)
    dirs: dict[int, set] = {3: set(), 4: set()}
    for k in keys:
        parts = k.split("/")
        if len(parts) in dirs and parts[-3] in SPLITS and _looks_like_image(parts[-1]):
            dirs[len(parts)].add(tuple(parts[:-1]))
    found = dirs[3] or dirs[4]
    if not found or (not dirs[3] and len({d[0] for d in dirs[4]}) != 1):
        raise ValueError(f"--source {source!r} has no train/ or test/ folder of <label>/<image> files")
    ordered = sorted(found, key=lambda d: (SPLITS.index(d[-2]), d[-1]))
    return [(LABEL_DIR, store.join(source, *d), dataset) for d in ordered]


def _is_archive_name(uri: str) -> bool:
    return uri.endswith((".tar.gz", ".tgz", ".tar"))


def read_unit(unit: tuple[str, str, str]) -> Iterator[dict]:
    """The records of one unit from :func:`input_units` (runs in a Spark task; S3 settings already applied)."""
    kind, uri, dataset = unit
    if kind == LABEL_DIR:
        split, label = uri.rsplit("/", 2)[-2:]
        for rel, _ in store.list_prefix(uri):
            if "/" in rel or not _looks_like_image(rel):
                continue
            f = store.join(uri, rel)
            try:
                data = store.read_bytes(f)
            except store.StoreError as e:
                yield _record(f"{split}/{label}/{rel}", label, split, f, None, error=f"unreadable file: {e.cause}")
                continue
            yield _record(f"{split}/{label}/{rel}", label, split, f, data)
        return
    with tempfile.TemporaryDirectory(prefix="semhash-images-") as tmp:
        if store.exists(uri) and not store.list_prefix(uri):  # one object (an archive)
            local = os.path.join(tmp, uri.rsplit("/", 1)[-1])
            store.download_file(uri, local)
        else:  # a prefix: its top-level objects
            local = os.path.join(tmp, "source")
            for rel, _ in store.list_prefix(uri):
                if "/" not in rel:
                    store.download_file(store.join(uri, rel), os.path.join(local, rel))
        for rec in read_source(dataset, local):
            if rec["source"].startswith(local):
                rec["source"] = uri + rec["source"][len(local) :]
            yield rec
