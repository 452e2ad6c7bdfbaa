"""Prepared documents for Spark SQL and MLlib: :func:`read_documents` turns a ``semhash prepare`` data set into a
DataFrame with an MLlib ``SparseVector`` of word counts per document.

The files are not changed: Petastorm still reads the binary ``word_ids``/``word_counts`` columns for training
(:mod:`semhash_spark.data.loader`); this decodes them once per row for users of ``pyspark.ml``.
"""

from __future__ import annotations

from functools import reduce
from typing import Sequence

import numpy as np
from pyspark.ml.linalg import SparseVector, VectorUDT
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from semhash_spark.data import dataset as ds
from semhash_spark.io import sparkio

FEATURES = "features"
SPLIT = "split"


def read_documents(spark: SparkSession, data_uri: str, splits: Sequence[str] = ds.SPLITS) -> DataFrame:
    """The documents of ``splits`` of a prepared data set (a local path or ``s3://``), one row each:

    ``id`` string, ``labels`` array<string>, ``split`` string, ``features`` vector (an MLlib ``SparseVector`` of
    in-vocabulary word counts; index ``i`` is ``vocab.json``'s ``words[i]``, size = the vocabulary size) and
    ``length`` int (the sum of the counts). ``features`` goes straight into ``pyspark.ml`` (``IDF``, ``LDA``,
    ``LogisticRegression``, ``BucketedRandomProjectionLSH``, ...).
    """
    unknown = [s for s in splits if s not in ds.SPLITS]
    if unknown or not splits:
        raise ValueError(f"splits {list(splits)!r}: choose one or more of {list(ds.SPLITS)}")
    meta = ds.read_metadata(data_uri)
    size = int(meta["vocab_size"])
    frames = []
    for split in splits:
        try:
            df = sparkio.read_parquet(
                spark,
                data_uri,
                [f"{ds.DOCS_DIR}/split={split}"],
                [ds.ID, ds.LABELS, ds.WORD_IDS, ds.WORD_COUNTS, ds.LENGTH],
            )
        except FileNotFoundError:  # a split with no documents (e.g. a corpus without test)
            continue
        frames.append(df.withColumn(SPLIT, F.lit(split)))
    if not frames:
        raise FileNotFoundError(f"{data_uri!r} holds no documents in {list(splits)}")
    df = reduce(DataFrame.unionByName, frames)

    @F.udf(returnType=VectorUDT())
    def to_vector(ids: bytes, counts: bytes) -> SparseVector:
        i, c = ds.decode_sparse(ids, counts)
        return SparseVector(size, i.astype(np.int32), c.astype(np.float64))

    return df.select(ds.ID, ds.LABELS, SPLIT, to_vector(ds.WORD_IDS, ds.WORD_COUNTS).alias(FEATURES), ds.LENGTH)
