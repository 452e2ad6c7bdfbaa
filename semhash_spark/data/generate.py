"""``semhash generate``: corpora shaped like the papers' at any size, from a topic model or real images.

Documents (``semhash-docs/1``, interchangeable with :mod:`semhash_spark.data.prepare`'s output)
    A topic model is fitted to a prepared real corpus (by default 20 Newsgroups with the project's 2000-word
    vocabulary), keeping its labels as classes:

    * ``K`` topics (``generate.topics``) over the vocabulary, fitted by LDA (Blei, Ng & Jordan 2003; scikit-learn's
      batch variational EM) on all training documents, so classes share topics as real newsgroups do;
    * per class ``c`` (a distinct label set of a training document) a Dirichlet prior ``alpha_c = s_c * m_c`` over
      topic proportions: ``m_c`` is the mean of the fitted topic proportions of the class's documents and the
      precision ``s_c`` their moment estimate, the median over topics of ``m(1 - m) / var - 1`` (Minka 2000,
      "Estimating a Dirichlet distribution", sec. 1); classes with fewer than 5 documents use the corpus-wide
      precision;
    * document lengths (in-vocabulary word counts) are resampled from the real lengths of the class.

    A generated document draws its class from the training class frequencies, ``theta ~ Dirichlet(alpha_c)``,
    its length ``N`` from the class, and its counts ``~ Multinomial(N, theta @ topics)`` -- LDA's generative
    process with the class's own prior. Document ``i`` (id ``doc-<i, 9 digits>``) is test when
    ``floor((i + 1) p) > floor(i p)``, with ``p`` the source's test fraction, so both splits keep the source's
    proportion exactly (to one document). ``content_hash`` is the sha1 of its word_ids and word_counts bytes.

Images (``semhash-images/1``, written by :func:`semhash_spark.data.images.write_image_dataset`)
    Image ``j`` is a transformed copy of source image ``order[j mod n]`` (``n`` readable source images of both
    splits, ``order`` a permutation drawn from the seed, so any prefix samples every class and split), keeping
    its label and split: a random crop of side ``min_crop..1`` of the image resized back
    (bicubic), a shift of up to ``max_shift`` pixels each way (edges repeated), a horizontal flip with
    probability 1/2 (``generate.flip``; never for MNIST, whose digits are not mirror-symmetric) and Gaussian
    pixel noise of std ``noise_std``, clipped to 0..255. Ids are ``img-<j, 9 digits>``.

Determinism: document ``i`` depends only on (model, seed, ``i // BLOCK_DOCS``) and image ``j`` only on (seed,
``j``, its source image), never on how many tasks or executors run: each Spark task generates whole blocks
from ``numpy.random.default_rng([seed, block])``. A corpus of size ``n`` is a prefix of a larger one with the
same seed. The driver fits the model on the (small) real corpus and collects only counts and document
frequencies of what the tasks generated, never the generated corpus.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from pyspark.sql import SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from semhash_spark.data import dataset as ds
from semhash_spark.config import GenerateConfig

if TYPE_CHECKING:
    from semhash_spark.config import ImagesConfig

log = logging.getLogger(__name__)

BLOCK_DOCS = 256  # documents drawn from one random stream; part of the determinism contract
DEFAULT_DOCUMENTS = 804_414  # the papers' Reuters RCV2 corpus size (Salakhutdinov & Hinton 2009)
DEFAULT_IMAGES = 1_600_000  # the 32x32 tiny images of Krizhevsky & Hinton 2011 (very deep autoencoders)
MIN_CLASS_DOCS = 5  # fewer documents: the class borrows the corpus-wide Dirichlet precision
_DOC_STREAM, _IMAGE_STREAM = 1, 2

_DOCS_SPARK = T.StructType(
    [
        T.StructField(ds.ID, T.StringType()),
        T.StructField(ds.LABELS, T.ArrayType(T.StringType())),
        T.StructField("split", T.StringType()),
        T.StructField(ds.WORD_IDS, T.BinaryType()),
        T.StructField(ds.WORD_COUNTS, T.BinaryType()),
        T.StructField(ds.LENGTH, T.IntegerType()),
        T.StructField(ds.CONTENT_HASH, T.StringType()),
    ]
)
_DOCFREQ_SPARK = T.StructType([T.StructField("doc_freq", T.BinaryType()), T.StructField("n", T.LongType())])


# ---------------------------------------------------------------------------------------------------- topic model
@dataclass(frozen=True)
class TopicModel:
    """Labelled LDA-style generator fitted to a real corpus; shapes in the comments (C classes, K topics, V words)."""

    classes: tuple[tuple[str, ...], ...]  # C label sets
    class_prior: np.ndarray  # float64 [C], training frequencies
    alpha: np.ndarray  # float64 [C, K], Dirichlet prior of each class over topics
    topics: np.ndarray  # float64 [K, V], rows sum to 1
    topic_cdf: np.ndarray  # float64 [K, V], cumulative sums of the rows of topics
    lengths: np.ndarray  # int64 [sum of class sizes], real lengths grouped by class
    length_offsets: np.ndarray  # int64 [C + 1], class c's lengths are lengths[off[c]:off[c+1]]
    test_num: int  # the source's test fraction is test_num / total_num
    total_num: int

    @property
    def vocab_size(self) -> int:
        return self.topics.shape[1]

    def summary(self) -> dict:
        precision = self.alpha.sum(axis=1)
        return {
            "model": "labelled LDA (per-class Dirichlet over shared topics)",
            "topics": int(self.topics.shape[0]),
            "classes": len(self.classes),
            "dirichlet_precision_median": float(np.median(precision)),
            "length_median": float(np.median(self.lengths)),
            "test_fraction": self.test_num / self.total_num,
        }


def _dirichlet_precision(theta: np.ndarray) -> float:
    """Moment estimate of a Dirichlet's precision from samples [n, K]: median over k of m(1-m)/var - 1."""
    m, v = theta.mean(axis=0), theta.var(axis=0)
    ok = v > 1e-12
    return float(np.median(m[ok] * (1.0 - m[ok]) / v[ok] - 1.0)) if ok.any() else 1.0


def fit_topic_model(counts, labels: list[list[str]], num_test: int, cfg: GenerateConfig, seed: int) -> TopicModel:
    """Fits the generator to real training documents: ``counts`` csr [n, V], ``labels`` one list per document."""
    from sklearn.decomposition import LatentDirichletAllocation

    n = counts.shape[0]
    if n < 2:
        raise ValueError(f"the source's train split has {n} documents; a topic model needs at least 2")
    if cfg.topics < 1 or cfg.lda_iterations < 1:
        raise ValueError(
            f"generate.topics and generate.lda_iterations must be at least 1, got {cfg.topics}, {cfg.lda_iterations}"
        )
    lda = LatentDirichletAllocation(
        n_components=cfg.topics, learning_method="batch", max_iter=cfg.lda_iterations, random_state=seed, n_jobs=1
    )
    theta = lda.fit_transform(counts)  # [n, K], rows sum to 1
    topics = lda.components_ / lda.components_.sum(axis=1, keepdims=True)
    keys = [tuple(sorted(set(l))) for l in labels]
    classes = sorted(set(keys))
    index = {c: i for i, c in enumerate(classes)}
    y = np.fromiter((index[k] for k in keys), dtype=np.int64, count=n)
    lengths = np.asarray(counts.sum(axis=1)).ravel().round().astype(np.int64)
    s_all = _dirichlet_precision(theta)
    alpha, groups = np.zeros((len(classes), cfg.topics)), []
    for c in range(len(classes)):
        members = y == c
        t = theta[members]
        s = _dirichlet_precision(t) if members.sum() >= MIN_CLASS_DOCS else s_all
        alpha[c] = np.maximum(s, 1e-3) * t.mean(axis=0)
        groups.append(np.sort(np.maximum(lengths[members], 1)))
    offsets = np.concatenate([[0], np.cumsum([len(g) for g in groups])]).astype(np.int64)
    return TopicModel(
        classes=tuple(classes),
        class_prior=np.bincount(y, minlength=len(classes)) / n,
        alpha=alpha,
        topics=topics,
        topic_cdf=np.cumsum(topics, axis=1),
        lengths=np.concatenate(groups),
        length_offsets=offsets,
        test_num=int(num_test),
        total_num=int(n + num_test),
    )


def is_test(index: np.ndarray, test_num: int, total_num: int) -> np.ndarray:
    """Item ``i`` is test when floor((i+1) p) > floor(i p), p = test_num / total_num (exact integer arithmetic)."""
    i = np.asarray(index, dtype=np.int64)
    return (i + 1) * test_num // total_num > i * test_num // total_num


def _categorical(cdf: np.ndarray, row: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Draws one category per entry of ``row`` from cdf[row] (rows of cumulative probabilities), ``u`` uniform."""
    n_cat = cdf.shape[1]
    flat = (cdf / cdf[:, -1:] + np.arange(cdf.shape[0])[:, None]).ravel()  # row r's cdf shifted into [r, r+1]
    pos = np.searchsorted(flat, row + u * (1.0 - 1e-12), side="right")
    return np.minimum(pos - row * n_cat, n_cat - 1)


def sample_documents(model: TopicModel, rng: np.random.Generator, n: int):
    """Draws ``n`` documents from the generative process: ``(y int64[n], length int64[n], keys, counts)``, where
    ``keys`` (sorted) are ``document * V + word id`` of the nonzero counts and ``counts`` int64 their counts.

    Words are drawn token by token (topic z ~ theta_d, word ~ topics[z]), which is the same distribution as
    Multinomial(N, theta_d @ topics) at a fraction of its cost for short documents. The draws from ``rng`` are
    part of the determinism contract of :func:`generate_block`, which calls this with ``n = BLOCK_DOCS``.
    """
    v = model.vocab_size
    y = rng.choice(len(model.classes), size=n, p=model.class_prior)
    g = rng.standard_gamma(model.alpha[y])  # [n, K]
    total = g.sum(axis=1, keepdims=True)
    theta = np.where(total > 0, g / np.where(total > 0, total, 1.0), 1.0 / g.shape[1])
    lo, hi = model.length_offsets[y], model.length_offsets[y + 1]
    length = model.lengths[lo + (rng.random(n) * (hi - lo)).astype(np.int64)]
    doc = np.repeat(np.arange(n), length)  # one entry per token
    z = _categorical(np.cumsum(theta, axis=1), doc, rng.random(doc.size))
    w = _categorical(model.topic_cdf, z, rng.random(doc.size))
    keys, counts = np.unique(doc * v + w, return_counts=True)  # sorted: by document, then word id
    return y, length, keys, counts


def sample_counts(model: TopicModel, rng: np.random.Generator, n: int):
    """``n`` documents drawn as by :func:`sample_documents`: ``(y int64[n], counts float32 CSR [n, V])``."""
    import scipy.sparse as sp

    y, _, keys, counts = sample_documents(model, rng, n)
    v = model.vocab_size
    indptr = np.searchsorted(keys // v, np.arange(n + 1))
    return y, sp.csr_matrix((counts.astype(np.float32), (keys % v).astype(np.int32), indptr), shape=(n, v))


def generate_block(model: TopicModel, seed: int, block: int) -> dict[str, list]:
    """The BLOCK_DOCS documents of ``block`` as columns of the prepared-dataset schema (plus ``split``)."""
    rng = np.random.default_rng([seed, _DOC_STREAM, block])
    b, v = BLOCK_DOCS, model.vocab_size
    y, length, keys, counts = sample_documents(model, rng, b)
    word_ids = (keys % v).astype("<i4")
    word_counts = counts.astype("<f4")
    bounds = np.searchsorted(keys // v, np.arange(b + 1))
    ids_buf, counts_buf = word_ids.tobytes(), word_counts.tobytes()
    first = block * b
    split = np.where(is_test(np.arange(first, first + b), model.test_num, model.total_num), "test", "train")
    cols: dict[str, list] = {
        k: [] for k in (ds.ID, ds.LABELS, "split", ds.WORD_IDS, ds.WORD_COUNTS, ds.LENGTH, ds.CONTENT_HASH)
    }
    for r in range(b):
        b_ids, b_counts = ids_buf[4 * bounds[r] : 4 * bounds[r + 1]], counts_buf[4 * bounds[r] : 4 * bounds[r + 1]]
        cols[ds.ID].append(f"doc-{first + r:09d}")
        cols[ds.LABELS].append(list(model.classes[y[r]]))
        cols["split"].append(str(split[r]))
        cols[ds.WORD_IDS].append(b_ids)
        cols[ds.WORD_COUNTS].append(b_counts)
        cols[ds.LENGTH].append(int(length[r]))
        cols[ds.CONTENT_HASH].append(hashlib.sha1(b_ids + b_counts).hexdigest())
    return cols


def _generate_doc_batches(blocks: Iterator[pd.DataFrame], model_bc, seed: int, size: int) -> Iterator[pd.DataFrame]:
    model = model_bc.value
    for pdf in blocks:
        for block in pdf["id"].tolist():
            cols = generate_block(model, seed, int(block))
            keep = min(BLOCK_DOCS, size - int(block) * BLOCK_DOCS)  # the last block is cut to the size
            frame = pd.DataFrame({k: v[:keep] for k, v in cols.items()})
            frame[ds.LENGTH] = frame[ds.LENGTH].astype("int32")
            yield frame


def _doc_freq_partials(batches: Iterator[pd.DataFrame], vocab_size: int) -> Iterator[pd.DataFrame]:
    df, n = np.zeros(vocab_size, dtype=np.int64), 0
    for pdf in batches:
        df += np.bincount(np.frombuffer(b"".join(pdf[ds.WORD_IDS]), dtype="<i4"), minlength=vocab_size)
        n += len(pdf)
    yield pd.DataFrame({"doc_freq": [df.astype("<i8").tobytes()], "n": [n]})


def _tasks(size: int, per_task: int, min_tasks: int, block: int) -> tuple[int, int]:
    """(blocks, Spark tasks): enough tasks for ``min_tasks`` files per split, at most one per block."""
    n_blocks = -(-size // block)
    return n_blocks, max(1, min(n_blocks, max(min_tasks, -(-size // max(1, per_task)))))


def _check_size_seed(size: int, seed: int) -> None:
    if not isinstance(size, int) or size < 1:
        raise ValueError(f"--size must be a positive number of items, got {size!r}")
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"--seed must be a non-negative integer, got {seed!r}")


def generate_documents(
    spark: SparkSession,
    source_dir: str,
    out_dir: str,
    cfg: GenerateConfig = GenerateConfig(),
    *,
    size: int = DEFAULT_DOCUMENTS,
    seed: int = 0,
    min_files: int = 8,
    num_tasks: int | None = None,
) -> dict:
    """Fits the topic model to the prepared dataset ``source_dir`` and writes ``size`` documents to ``out_dir``.

    ``min_files``: at least this many Parquet files per split (Petastorm shards need row groups);
    ``num_tasks`` overrides the number of Spark tasks (the output does not depend on it). Returns the report
    ``{"kind", "name", "size", "seed", "kept": {split: n}, "vocab_size", "model", "seconds": {...}, "out_dir"}``.
    """
    _check_size_seed(size, seed)
    t0 = time.time()
    meta = ds.read_metadata(source_dir)
    words, _, _ = ds.read_vocab(source_dir)
    train = ds.read_split(source_dir, "train", columns=(ds.LABELS, "counts"))
    model = fit_topic_model(train.counts, train.labels, meta["counts"].get("test", 0), cfg, seed)
    t_fit = time.time() - t0
    log.info("generate: topic model fitted in %.1fs: %s", t_fit, model.summary())

    out = Path(out_dir).absolute()
    out.mkdir(parents=True, exist_ok=True)
    (out / ds.DATASET_FILE).unlink(missing_ok=True)  # a failed run must not look like a finished dataset
    for d in (ds.DOCS_DIR, ds.QUARANTINE_DIR):
        shutil.rmtree(out / d, ignore_errors=True)
    n_blocks, tasks = _tasks(size, cfg.docs_per_task, min_files, BLOCK_DOCS)
    tasks = num_tasks or tasks
    model_bc = spark.sparkContext.broadcast(model)
    t1 = time.time()
    try:
        spark.range(0, n_blocks, numPartitions=tasks).mapInPandas(
            functools.partial(_generate_doc_batches, model_bc=model_bc, seed=seed, size=size), _DOCS_SPARK
        ).write.partitionBy("split").parquet(str(out / ds.DOCS_DIR))
    finally:
        model_bc.unpersist()
    t_write = time.time() - t1
    written = spark.read.parquet(str(out / ds.DOCS_DIR))
    kept = {s: 0 for s in ds.SPLITS} | {r["split"]: r["count"] for r in written.groupBy("split").count().collect()}
    partials = (
        written.where(F.col("split") == "train")
        .select(ds.WORD_IDS)
        .mapInPandas(functools.partial(_doc_freq_partials, vocab_size=len(words)), _DOCFREQ_SPARK)
        .collect()
    )
    doc_freq = np.sum([np.frombuffer(p["doc_freq"], dtype="<i8") for p in partials], axis=0)
    if sum(kept.values()) != size or int(sum(p["n"] for p in partials)) != kept["train"]:
        raise RuntimeError(f"generate wrote {kept} documents, expected {size} in all")
    for p in [*(out / ds.DOCS_DIR).rglob(".*.crc"), *(out / ds.DOCS_DIR).glob("_SUCCESS")]:
        p.unlink()
    (out / ds.QUARANTINE_DIR).mkdir()
    pq.write_table(ds.QUARANTINE_SCHEMA.empty_table(), out / ds.QUARANTINE_DIR / "part-00000.parquet")
    fingerprint = ds.write_vocab(out, words, doc_freq, kept["train"])
    name = f"{meta.get('name', 'corpus')}-generated"
    generator = {
        "kind": "documents",
        "size": size,
        "seed": seed,
        "block_docs": BLOCK_DOCS,
        "source": str(source_dir),
        "source_name": meta.get("name"),
        "source_vocab_fingerprint": meta.get("vocab_fingerprint"),
        "config": asdict(cfg),
        **model.summary(),
    }
    ds.write_metadata(
        out,
        name=name,
        vocab_size=len(words),
        counts={"train": kept["train"], "test": kept["test"], "quarantined": 0},
        vocab_fingerprint=fingerprint,
        source=f"semhash generate from {source_dir}",
        generator=generator,
    )
    seconds = {"fit": round(t_fit, 1), "generate_and_write": round(t_write, 1), "total": round(time.time() - t0, 1)}
    report = {
        "kind": "documents",
        "name": name,
        "size": size,
        "seed": seed,
        "kept": kept,
        "vocab_size": len(words),
        "model": model.summary(),
        "tasks": tasks,
        "seconds": seconds,
        "docs_per_second": round(size / max(t_write, 1e-9), 1),
        "out_dir": str(out),
    }
    log.info("generate documents: %s", report)
    return report


# ---------------------------------------------------------------------------------------------------- images
_SOURCE_ARROW_FIELDS = ("seq", "id", "label", "split", "data", "shape", "error")
_DECODED_SPARK = "seq long, label string, split string, pixels binary, reason string"
_IMAGES_SPARK = "seq long, id string, label string, split string, pixels binary"


def augment(img: np.ndarray, rng: np.random.Generator, cfg: GenerateConfig, flip: bool) -> np.ndarray:
    """uint8 [H, W, C] -> a transformed copy: random crop resized back, shift, optional flip, Gaussian noise."""
    from PIL import Image

    h, w, c = img.shape
    side = rng.uniform(cfg.min_crop, 1.0)
    ch, cw = max(1, int(round(h * side))), max(1, int(round(w * side)))
    top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    out = img[top : top + ch, left : left + cw]
    if (ch, cw) != (h, w):
        pil = Image.fromarray(out[..., 0] if c == 1 else out, mode="L" if c == 1 else "RGB")
        out = np.asarray(pil.resize((w, h), Image.Resampling.BICUBIC), dtype=np.uint8).reshape(h, w, c)
    m = cfg.max_shift
    if m > 0:
        dy, dx = (int(x) for x in rng.integers(-m, m + 1, size=2))
        padded = np.pad(out, ((m, m), (m, m), (0, 0)), mode="edge")
        out = padded[m - dy : m - dy + h, m - dx : m - dx + w]
    if flip and rng.random() < 0.5:
        out = out[:, ::-1]
    noisy = out.astype(np.float32) + rng.normal(0.0, cfg.noise_std, size=out.shape).astype(np.float32)
    return np.clip(np.rint(noisy), 0, 255).astype(np.uint8)


def _decode_source(frames: Iterator[pd.DataFrame], images_cfg) -> Iterator[pd.DataFrame]:
    from semhash_spark.data.images import decode_image

    for pdf in frames:
        pixels, reasons = [], []
        for data, shape, error in zip(pdf["data"], pdf["shape"], pdf["error"]):
            try:
                if error is not None:
                    raise ValueError(error)
                pixels.append(decode_image(data, shape, images_cfg).tobytes())
                reasons.append(None)
            except ValueError as e:
                pixels.append(None)
                reasons.append(str(e))
        yield pd.DataFrame(
            {"seq": pdf["seq"], "label": pdf["label"], "split": pdf["split"], "pixels": pixels, "reason": reasons}
        )


def source_order(n: int, seed: int) -> np.ndarray:
    """The order in which generated images cycle through the n readable source images: image j copies source
    ``source_order(n, seed)[j % n]`` (indexes in reading order), so any prefix samples every class and split."""
    return np.random.default_rng([seed, _IMAGE_STREAM]).permutation(n)


def _augment_batches(
    frames: Iterator[pd.DataFrame],
    index_bc,
    size: int,
    seed: int,
    shape: tuple[int, int, int],
    cfg: GenerateConfig,
    flip: bool,
) -> Iterator[pd.DataFrame]:
    good, position = index_bc.value  # sorted seqs of the readable sources; each one's place in the order
    n_good = len(good)
    for pdf in frames:
        rows: dict[str, list] = {"seq": [], "id": [], "label": [], "split": [], "pixels": []}
        for seq, label, split, pixels in zip(pdf["seq"], pdf["label"], pdf["split"], pdf["pixels"]):
            src = np.frombuffer(pixels, dtype=np.uint8).reshape(shape)
            for j in range(int(position[np.searchsorted(good, seq)]), size, n_good):  # j = k * n_good + place
                img = augment(src, np.random.default_rng([seed, _IMAGE_STREAM, j]), cfg, flip)
                rows["seq"].append(j), rows["id"].append(f"img-{j:09d}"), rows["label"].append(label)
                rows["split"].append(split), rows["pixels"].append(img.tobytes())
                if len(rows["seq"]) >= 2000:
                    yield pd.DataFrame(rows)
                    rows = {k: [] for k in rows}
        if rows["seq"]:
            yield pd.DataFrame(rows)


def _stage_source(dataset: str, source: str, staging: Path, rows_per_file: int = 5000) -> int:
    import pyarrow as pa

    from semhash_spark.data import image_sources

    schema = pa.schema(
        [
            ("seq", pa.int64()),
            ("id", pa.string()),
            ("label", pa.string()),
            ("split", pa.string()),
            ("data", pa.binary()),
            ("shape", pa.string()),
            ("error", pa.string()),
        ]
    )
    staging.mkdir(parents=True)
    cols: dict[str, list] = {k: [] for k in _SOURCE_ARROW_FIELDS}
    n = part = 0
    for rec in image_sources.read_source(dataset, source):
        cols["seq"].append(n)
        for k in _SOURCE_ARROW_FIELDS[1:]:
            cols[k].append(rec[k])
        n += 1
        if len(cols["seq"]) >= rows_per_file:
            pq.write_table(pa.Table.from_pydict(cols, schema=schema), staging / f"part-{part:05d}.parquet")
            cols, part = {k: [] for k in _SOURCE_ARROW_FIELDS}, part + 1
    if cols["seq"]:
        pq.write_table(pa.Table.from_pydict(cols, schema=schema), staging / f"part-{part:05d}.parquet")
    return n


def generate_images(
    spark: SparkSession,
    dataset: str,
    source: str,
    out_dir: str,
    images_cfg: ImagesConfig,
    cfg: GenerateConfig = GenerateConfig(),
    *,
    size: int = DEFAULT_IMAGES,
    seed: int = 0,
    num_tasks: int | None = None,
) -> dict:
    """Writes ``size`` transformed copies of the real images of ``source`` (``dataset``: cifar10, mnist or
    imagefolder, read by :mod:`semhash_spark.data.image_sources`) as a ``semhash-images/1`` dataset at ``out_dir``.

    Source images that cannot be read or decoded are left out (counted in the report). ``num_tasks`` sets the
    number of Spark tasks (the output does not depend on it).
    """
    from semhash_spark.data.images import write_image_dataset

    _check_size_seed(size, seed)
    if not (0 < cfg.min_crop <= 1) or cfg.max_shift < 0 or cfg.noise_std < 0:
        raise ValueError(
            f"need 0 < generate.min_crop <= 1, generate.max_shift >= 0, generate.noise_std >= 0; got "
            f"{cfg.min_crop}, {cfg.max_shift}, {cfg.noise_std}"
        )
    t0 = time.time()
    out = Path(out_dir).absolute()
    work = out / "_generate"
    shutil.rmtree(work, ignore_errors=True)
    try:
        n_read = _stage_source(dataset, source, work / "source")
        if n_read == 0:
            raise ValueError(f"source {source!r} holds no {dataset} images")
        spark.read.parquet(str(work / "source")).mapInPandas(
            functools.partial(_decode_source, images_cfg=images_cfg), _DECODED_SPARK
        ).write.parquet(str(work / "decoded"))
        decoded = spark.read.parquet(str(work / "decoded"))
        good_seqs = np.sort(
            np.array(
                [r["seq"] for r in decoded.where(F.col("reason").isNull()).select("seq").collect()], dtype=np.int64
            )
        )  # source indexes only
        if good_seqs.size == 0:
            raise ValueError(f"no image of {source!r} could be decoded")
        shape = (images_cfg.height, images_cfg.width, images_cfg.channels)
        flip = cfg.flip and dataset != "mnist"
        tasks = num_tasks or max(1, min(good_seqs.size, -(-size // max(1, cfg.images_per_task))))
        position = np.argsort(source_order(good_seqs.size, seed))  # inverse permutation: place of each source
        index_bc = spark.sparkContext.broadcast((good_seqs, position))
        try:
            sources = decoded.where(F.col("reason").isNull())
            generated = sources.repartition(tasks, "seq").mapInPandas(
                functools.partial(
                    _augment_batches, index_bc=index_bc, size=size, seed=seed, shape=shape, cfg=cfg, flip=flip
                ),
                _IMAGES_SPARK,
            )
            name = f"{dataset}-generated"
            generator = {
                "kind": "images",
                "size": size,
                "seed": seed,
                "source": str(source),
                "source_dataset": dataset,
                "source_images": int(good_seqs.size),
                "flip": flip,
                "config": asdict(cfg),
            }
            report = write_image_dataset(
                spark,
                generated,
                str(out),
                images_cfg,
                name=name,
                source=f"semhash generate from {source}",
                extra={"generator": generator},
            )
        finally:
            index_bc.unpersist()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    kept = report["kept"]
    if kept["train"] + kept["test"] != size:
        raise RuntimeError(f"generate wrote {kept} images, expected {size}")
    seconds = round(time.time() - t0, 1)
    report.update(
        kind="images",
        size=size,
        seed=seed,
        source_images=int(good_seqs.size),
        source_unreadable=int(n_read - good_seqs.size),
        seconds=seconds,
        images_per_second=round(size / max(seconds, 1e-9), 1),
    )
    log.info("generate images: %s", report)
    return report
