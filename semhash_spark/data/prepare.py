"""The Spark prepare job: raw corpus -> prepared dataset (``semhash-docs/1``, see :mod:`semhash_spark.data.dataset`).

Stages (all under ``out_dir``'s ``_staging/``, removed at the end; see *Where the bytes go* below)::

    read       corpus records -> _staging/records/   (executors read when the source has several files or is on
                                                      S3; a local single archive is streamed by the driver in
                                                      chunks of sparkio.STAGE_ROWS)
    classify   tokenise (Spark ML's RegexTokenizer + StopWordsRemover: :func:`ml_tokenize`, the same tokens as
               :func:`corpora.tokenize`), flag reader errors, duplicate ids (every copy after the first in reading
               order), documents empty after tokenising; skip records outside the split -> _staging/tokens/
    vocab      the vocab_size words with the highest total count in the train candidates (ties: alphabetical)
    vectorise  sparse counts over the vocabulary, and the hashes of the whole word set (dedup checks pairs on
               them); fewer than min_doc_words in-vocabulary words -> quarantine
                                                   -> _staging/final/
    write      docs/split=<split>/ (files_per_split files each), quarantine/, vocab.json, dataset.json (last)

Nothing is dropped silently: every record read is kept, quarantined (with a reason) or skipped, and the job
checks that the three add up. ``doc_freq`` and ``num_train_docs`` in vocab.json describe the train split as
written, so IDF weights computed from vocab.json match ``read_split(data_dir, "train")``.

Where the bytes go. ``source`` and ``out_dir`` are local paths or ``s3://`` URIs:

- a local ``out_dir``: everything as Spark writes it, under ``out_dir`` (on a cluster this must be a file system
  every node mounts);
- an ``s3://`` ``out_dir``: the executors write the Parquet objects of ``docs/`` and ``quarantine/`` through
  :mod:`semhash_spark.io.store` (:func:`sparkio.write_parquet` with ``executors=True``); the driver writes vocab.json
  and then dataset.json, last, so a half-written dataset is never valid. Staging goes to a local temporary folder in
  local mode and to ``out_dir/_staging/`` (read and written by the executors) on a cluster: nothing is on the
  driver's disk that an executor needs.
- an ``s3://`` source is always read by the executors, one task per unit (a single archive is one task, its
  records then spread over the cluster for tokenising); a local single archive is streamed by the driver.
"""

from __future__ import annotations

import functools
import hashlib
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from semhash_spark.data import corpora
from semhash_spark.data import dataset as ds
from semhash_spark.io import sparkio, store
from semhash_spark.data import wordsets
from semhash_spark.config import PrepareConfig

log = logging.getLogger(__name__)


KEPT, QUARANTINED, SKIPPED, CANDIDATE = "kept", "quarantined", "skipped", "candidate"
DUPLICATE_ID = "duplicate id"
EMPTY = "empty after tokenising"
TOO_FEW_WORDS = "too few vocabulary words"
NOT_IN_SPLIT = "not in split"

_RECORD_ARROW = pa.schema(
    [
        ("seq", pa.int64()),
        ("id", pa.string()),
        ("text", pa.string()),
        ("labels", pa.list_(pa.string())),
        ("split", pa.string()),
        ("source", pa.string()),
        ("error", pa.string()),
    ]
)
_TEXT_SPARK = T.StructType(
    [
        T.StructField("seq", T.LongType()),
        T.StructField("id", T.StringType()),
        T.StructField("labels", T.ArrayType(T.StringType())),
        T.StructField("split", T.StringType()),
        T.StructField("source", T.StringType()),
        T.StructField("reason", T.StringType()),
        T.StructField("excerpt", T.StringType()),
        T.StructField("content_hash", T.StringType()),
        T.StructField("usable_text", T.StringType()),
        T.StructField("snippet", T.StringType()),
    ]
)
_TOKENS_SPARK = T.StructType(
    [
        T.StructField("seq", T.LongType()),
        T.StructField("id", T.StringType()),
        T.StructField("labels", T.ArrayType(T.StringType())),
        T.StructField("split", T.StringType()),
        T.StructField("source", T.StringType()),
        T.StructField("reason", T.StringType()),
        T.StructField("excerpt", T.StringType()),
        T.StructField("content_hash", T.StringType()),
        T.StructField("tokens", T.ArrayType(T.StringType())),
        T.StructField("snippet", T.StringType()),
    ]
)
_FINAL_SPARK = T.StructType(
    [
        T.StructField("id", T.StringType()),
        T.StructField("labels", T.ArrayType(T.StringType())),
        T.StructField("split", T.StringType()),
        T.StructField("source", T.StringType()),
        T.StructField("status", T.StringType()),
        T.StructField("reason", T.StringType()),
        T.StructField("excerpt", T.StringType()),
        T.StructField("content_hash", T.StringType()),
        T.StructField("word_ids", T.BinaryType()),
        T.StructField("word_counts", T.BinaryType()),
        T.StructField("length", T.IntegerType()),
        T.StructField("word_hashes", T.BinaryType()),
        T.StructField("snippet", T.StringType()),
    ]
)
_DOCFREQ_SPARK = T.StructType([T.StructField("doc_freq", T.BinaryType()), T.StructField("n", T.LongType())])


# ---------------------------------------------------------------------------------------------------- read
# Staged and final Parquet: Spark's reader and writer for local paths; for s3:// the executors' store client, in
# local mode as on a cluster (so no stage passes through the driver's disk).
def _write(df: DataFrame, uri: str) -> None:
    sparkio.write_parquet(df, uri, executors=True)


def _read(spark: SparkSession, uri: str) -> DataFrame:
    return sparkio.read_parquet(spark, uri, executors=True)


# ---------------------------------------------------------------------------------------------------- classify
def _describe_batches(
    batches: Iterator[pd.DataFrame], snippet_words: int = 0, snippet_chars: int = 0
) -> Iterator[pd.DataFrame]:
    """Per record: reader-error kind, excerpt, sha1 of the text, the text to tokenise ("" for errors and skips)
    and its snippet (the first words, for people reading query results)."""
    for pdf in batches:
        texts, errors, splits = pdf["text"].tolist(), pdf["error"].tolist(), pdf["split"].tolist()
        reason, excerpt, chash, usable_text, snippets = [], [], [], [], []
        for text, err, split in zip(texts, errors, splits):
            usable = err is None and split is not None and text is not None
            reason.append(corpora.error_kind(err) if err is not None else None)
            excerpt.append(text[: corpora.EXCERPT_CHARS] if text is not None else None)
            chash.append(hashlib.sha1(text.encode("utf-8")).hexdigest() if usable else None)
            usable_text.append(text if usable else "")
            snippets.append(corpora.snippet(text, snippet_words, snippet_chars) if usable else None)
        yield pd.DataFrame(
            {
                "seq": pdf["seq"],
                "id": pdf["id"],
                "labels": pdf["labels"],
                "split": pdf["split"],
                "source": pdf["source"],
                "reason": reason,
                "excerpt": excerpt,
                "content_hash": chash,
                "usable_text": usable_text,
                "snippet": snippets,
            }
        )


# Spark ML's RegexTokenizer runs Java regular expressions: these classes are the code points Python's
# TOKEN_PATTERNS match (letters: str.isalnum() but not a decimal digit or '_'; alnum: str.isalnum()).
ML_TOKEN_PATTERNS = {"letters": r"[\p{L}\p{Nl}\p{No}]+", "alnum": r"[\p{L}\p{N}]+"}


def ml_tokenize(df: DataFrame, input_col: str, output_col: str, cfg: PrepareConfig) -> DataFrame:
    """``corpora.tokenize`` as Spark ML transformers: ``RegexTokenizer`` (lower-cased runs of
    :data:`ML_TOKEN_PATTERNS`), the token-length bounds in code points (``length``; the tokenizer's own
    ``minTokenLength`` counts UTF-16 units), ``StopWordsRemover`` with :data:`corpora.STOP_WORDS`. A test checks
    the tokens equal ``corpora.tokenize``'s, which queries are tokenised with."""
    from pyspark.ml.feature import RegexTokenizer, StopWordsRemover

    if cfg.tokens not in ML_TOKEN_PATTERNS:
        raise ValueError(
            f"prepare.tokens: unknown token pattern {cfg.tokens!r}; use one of {sorted(ML_TOKEN_PATTERNS)}"
        )
    raw, sized = f"_{output_col}_raw", f"_{output_col}_sized"
    tokenizer = RegexTokenizer(
        inputCol=input_col,
        outputCol=raw,
        pattern=ML_TOKEN_PATTERNS[cfg.tokens],
        gaps=False,
        toLowercase=True,
        minTokenLength=1,
    )
    remover = StopWordsRemover(
        inputCol=sized, outputCol=output_col, stopWords=sorted(corpora.STOP_WORDS), caseSensitive=True
    )
    lo, hi = cfg.min_token_len, cfg.max_token_len
    out = tokenizer.transform(df).withColumn(sized, F.filter(raw, lambda t: (F.length(t) >= lo) & (F.length(t) <= hi)))
    return remover.transform(out).drop(raw, sized)


def _classify(records: DataFrame, cfg: PrepareConfig) -> DataFrame:
    described = records.mapInPandas(
        functools.partial(_describe_batches, snippet_words=cfg.snippet_words, snippet_chars=cfg.snippet_chars),
        _TEXT_SPARK,
    )
    tok = ml_tokenize(described, "usable_text", "tokens", cfg).select(*_TOKENS_SPARK.fieldNames())
    candidate = F.col("reason").isNull() & F.col("split").isNotNull()
    # First copy of an id in reading order wins. Rows that are not candidates are keyed by their own seq, so
    # they form groups of one instead of one huge group.
    key = F.when(candidate, F.col("id")).otherwise(F.col("seq").cast("string"))
    rank = F.row_number().over(Window.partitionBy(candidate, key).orderBy("seq"))
    return (
        tok.withColumn("_rank", rank)
        .withColumn(
            "status",
            F.when(F.col("reason").isNotNull(), QUARANTINED)
            .when(F.col("split").isNull(), SKIPPED)
            .when((F.col("_rank") > 1) | (F.size("tokens") == 0), QUARANTINED)
            .otherwise(CANDIDATE),
        )
        .withColumn(
            "reason",
            F.when(F.col("reason").isNotNull(), F.col("reason"))
            .when(F.col("split").isNull(), NOT_IN_SPLIT)
            .when(F.col("_rank") > 1, DUPLICATE_ID)
            .when(F.size("tokens") == 0, EMPTY),
        )
        .drop("_rank")
    )


# ---------------------------------------------------------------------------------------------------- vocab
def _build_vocab(classified: DataFrame, vocab_size: int) -> list[tuple[str, int]]:
    """The vocab_size most frequent words of the train candidates: [(word, total count)], by count desc, word."""
    rows = (
        classified.where((F.col("status") == CANDIDATE) & (F.col("split") == "train"))
        .select(F.explode("tokens").alias("word"))
        .groupBy("word")
        .count()
        .orderBy(F.desc("count"), F.asc("word"))
        .limit(vocab_size)
        .collect()
    )
    return [(r["word"], r["count"]) for r in rows]


# ---------------------------------------------------------------------------------------------------- vectorise
def _vectorize_batches(batches: Iterator[pd.DataFrame], vocab_bc, min_doc_words: int) -> Iterator[pd.DataFrame]:
    index = {w: i for i, w in enumerate(vocab_bc.value)}
    for pdf in batches:
        status, reason = pdf["status"].tolist(), pdf["reason"].tolist()
        word_ids, word_counts, length, hashes = [], [], [], []
        for j, tokens in enumerate(pdf["tokens"]):
            if status[j] != CANDIDATE:
                word_ids.append(None), word_counts.append(None), length.append(None), hashes.append(None)
                continue
            hashes.append(wordsets.word_set_hashes(tokens))
            ids, counts = ds.count_vector(tokens, index)  # the same function encodes queries
            b_ids, b_counts = ds.encode_sparse(ids, counts)
            n_words = int(counts.sum())
            word_ids.append(b_ids), word_counts.append(b_counts), length.append(n_words)
            if n_words < min_doc_words:
                status[j], reason[j] = QUARANTINED, TOO_FEW_WORDS
            else:
                status[j] = KEPT
        yield pd.DataFrame(
            {
                "id": pdf["id"],
                "labels": pdf["labels"],
                "split": pdf["split"],
                "source": pdf["source"],
                "status": status,
                "reason": reason,
                "excerpt": pdf["excerpt"],
                "content_hash": pdf["content_hash"],
                "word_ids": word_ids,
                "word_counts": word_counts,
                "length": pd.array(length, dtype="Int32"),
                "word_hashes": hashes,
                "snippet": pdf["snippet"],
            }
        )


def _doc_freq_partials(batches: Iterator[pd.DataFrame], vocab_size: int) -> Iterator[pd.DataFrame]:
    """One row per partition: int64 LE document frequencies (word ids are unique within a row) and row count."""
    df, n = np.zeros(vocab_size, dtype=np.int64), 0
    for pdf in batches:
        ids = np.frombuffer(b"".join(pdf["word_ids"]), dtype="<i4")
        df += np.bincount(ids, minlength=vocab_size)
        n += len(pdf)
    yield pd.DataFrame({"doc_freq": [df.astype("<i8").tobytes()], "n": [n]})


# ---------------------------------------------------------------------------------------------------- job
def _validate(dataset: str, source: str, cfg: PrepareConfig) -> list[str]:
    if cfg.vocab_size < 1:
        raise ValueError(f"prepare.vocab_size must be at least 1, got {cfg.vocab_size}")
    if cfg.tokens not in corpora.TOKEN_PATTERNS:
        raise ValueError(
            f"prepare.tokens: unknown token pattern {cfg.tokens!r}; use one of {sorted(corpora.TOKEN_PATTERNS)}"
        )
    if not 1 <= cfg.min_token_len <= cfg.max_token_len:
        raise ValueError(
            f"need 1 <= prepare.min_token_len <= prepare.max_token_len, got {cfg.min_token_len}, {cfg.max_token_len}"
        )
    if not 0.0 <= cfg.test_fraction < 1.0:
        raise ValueError(f"prepare.test_fraction must be in [0, 1), got {cfg.test_fraction}")
    if cfg.files_per_split < 1:
        raise ValueError(f"prepare.files_per_split must be at least 1, got {cfg.files_per_split}")
    if cfg.snippet_words < 0 or cfg.snippet_chars < 0:
        raise ValueError(
            f"prepare.snippet_words and prepare.snippet_chars must be >= 0 (0: no snippet), got "
            f"{cfg.snippet_words}, {cfg.snippet_chars}"
        )
    units = corpora.input_units(dataset, source)  # raises for an unknown dataset or a missing source
    if not units:
        raise ValueError(f"source {source!r} holds no {dataset} input files")
    return units


def prepare_dataset(
    spark: SparkSession,
    dataset: str,
    source: str,
    out_dir: str,
    cfg: PrepareConfig = PrepareConfig(),
    *,
    name: str | None = None,
    vocab: list[str] | None = None,
) -> dict:
    """Reads corpus ``dataset`` from ``source`` and writes a prepared dataset to ``out_dir``.

    Both are local paths or ``s3://`` URIs (module notes: who reads and writes what). ``vocab`` fixes the
    vocabulary (a model's words, in its order) instead of taking the train split's most frequent words: a nightly
    re-index vectorises tonight's corpus exactly as the model expects.

    Returns the report ``{"name", "records_read", "kept": {split: n}, "quarantined": {reason: n},
    "skipped": {reason: n}, "vocab_size", "vocab_fingerprint", "out_dir"}``. Raises ValueError for an unknown
    dataset, a missing source, a source without records, or an empty train split.
    """
    source = str(source)
    units = _validate(dataset, source, cfg)
    if store.is_s3(str(out_dir)):
        out = str(out_dir).rstrip("/")
        store.split_s3(out)  # names a bad URI (no bucket) before any work
        store.delete(store.join(out, ds.DATASET_FILE))  # a failed run must not look like a finished dataset
    else:
        path = Path(store.local_path(str(out_dir))).absolute()
        path.mkdir(parents=True, exist_ok=True)
        (path / ds.DATASET_FILE).unlink(missing_ok=True)
        out = str(path)
    with sparkio.staging(spark, out) as staging:  # executors stage under out/_staging/ (removed after)
        return _run(spark, dataset, source, units, out, staging, cfg, name or dataset, vocab)


def _run(
    spark: SparkSession,
    dataset: str,
    source: str,
    units: list[str],
    out: str,
    staging: str,
    cfg: PrepareConfig,
    name: str,
    fixed_vocab: list[str] | None = None,
) -> dict:
    records_dir = store.join(staging, "records")
    read_unit = functools.partial(
        corpora.read_unit, dataset, strip_headers=cfg.strip_headers, test_fraction=cfg.test_fraction
    )
    if len(units) == 1 and not store.is_s3(source):
        log.info("prepare %s: streaming %s on the driver", dataset, units[0])
        n_read = sparkio.stage_records(read_unit(units[0]), _RECORD_ARROW, records_dir)
    else:
        log.info("prepare %s: reading %d input unit(s) of %s on executors", dataset, len(units), source)
        n_read = sparkio.stage_units(spark, units, read_unit, _RECORD_ARROW, records_dir)
    if n_read == 0:
        raise ValueError(f"source {source!r} holds no {dataset} records")
    log.info("prepare %s: %d records read", dataset, n_read)

    records = _read(spark, records_dir).select(*_RECORD_ARROW.names)
    parallelism = spark.sparkContext.defaultParallelism
    if len(units) < parallelism and store.is_s3(source):  # one task read a whole archive: spread its records
        records = records.repartition(parallelism)
    _write(_classify(records, cfg), store.join(staging, "tokens"))
    classified = _read(spark, store.join(staging, "tokens"))
    vocab = [(w, 0) for w in fixed_vocab] if fixed_vocab else _build_vocab(classified, cfg.vocab_size)
    if not vocab:
        raise ValueError(
            f"the train split of {source!r} is empty: no train document survived reading, "
            "de-duplication and tokenising (check the source and prepare.test_fraction)"
        )
    words = [w for w, _ in vocab]
    if len(words) < cfg.vocab_size:
        log.warning(
            "prepare %s: only %d distinct train words, fewer than vocab_size=%d", dataset, len(words), cfg.vocab_size
        )

    vocab_bc = spark.sparkContext.broadcast(words)
    try:
        _write(
            classified.mapInPandas(
                functools.partial(_vectorize_batches, vocab_bc=vocab_bc, min_doc_words=cfg.min_doc_words), _FINAL_SPARK
            ),
            store.join(staging, "final"),
        )
    finally:
        vocab_bc.unpersist()
    final = _read(spark, store.join(staging, "final"))

    tally = final.groupBy("status", "split", "reason").count().collect()
    kept = {s: 0 for s in ds.SPLITS}
    quarantined: dict[str, int] = {}
    skipped: dict[str, int] = {}
    for r in tally:
        if r["status"] == KEPT:
            kept[r["split"]] += r["count"]
        elif r["status"] == QUARANTINED:
            quarantined[r["reason"]] = quarantined.get(r["reason"], 0) + r["count"]
        else:
            skipped[r["reason"]] = skipped.get(r["reason"], 0) + r["count"]
    total = sum(kept.values()) + sum(quarantined.values()) + sum(skipped.values())
    if total != n_read:
        raise RuntimeError(f"prepare lost records: read {n_read}, kept+quarantined+skipped = {total}")
    if kept["train"] == 0:
        raise ValueError(
            f"the train split of {source!r} is empty after quarantine "
            f"(min_doc_words={cfg.min_doc_words}); quarantined: {quarantined}"
        )

    for split in ds.SPLITS:
        rows = final.where((F.col("status") == KEPT) & (F.col("split") == split)).select(*ds.DOC_COLUMNS)
        if 0 < kept[split] < cfg.files_per_split:
            log.warning(
                "prepare %s: %s split has %d documents, fewer than files_per_split=%d",
                dataset,
                split,
                kept[split],
                cfg.files_per_split,
            )
        _write(rows.repartition(cfg.files_per_split), ds.split_uri(out, split))
    _write(
        final.where(F.col("status") == QUARANTINED).select(*ds.QUARANTINE_COLUMNS).coalesce(1),
        store.join(out, ds.QUARANTINE_DIR),
    )

    partials = (
        final.where((F.col("status") == KEPT) & (F.col("split") == "train"))
        .select("word_ids")
        .mapInPandas(functools.partial(_doc_freq_partials, vocab_size=len(words)), _DOCFREQ_SPARK)
        .collect()
    )
    doc_freq = np.sum([np.frombuffer(p["doc_freq"], dtype="<i8") for p in partials], axis=0)
    num_train = int(sum(p["n"] for p in partials))
    assert num_train == kept["train"], (num_train, kept["train"])

    fingerprint = ds.write_vocab(out, words, doc_freq, num_train)
    n_quarantined = sum(quarantined.values())
    ds.write_metadata(
        out,
        name=name,
        vocab_size=len(words),
        counts={"train": kept["train"], "test": kept["test"], "quarantined": n_quarantined},
        vocab_fingerprint=fingerprint,
        source=str(source),
        dataset=dataset,
        records_read=n_read,
        quarantine_reasons=quarantined,
        skipped=skipped,
        prepare=asdict(cfg),
    )
    report = {
        "name": name,
        "records_read": n_read,
        "kept": kept,
        "quarantined": quarantined,
        "skipped": skipped,
        "vocab_size": len(words),
        "vocab_fingerprint": fingerprint,
        "out_dir": str(out),
    }
    reasons = ", ".join(f"{n} {r}" for r, n in sorted(quarantined.items(), key=lambda x: -x[1])) or "none"
    log.info(
        "prepare %s: %d records read; kept %d train and %d test documents; quarantined %d (%s); "
        "%d-word vocabulary -> %s",
        dataset,
        n_read,
        kept["train"],
        kept["test"],
        n_quarantined,
        reasons,
        len(words),
        out,
    )
    return report
