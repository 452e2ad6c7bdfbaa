"""semhash_spark.read_documents: a prepared data set as a DataFrame whose features column MLlib takes."""

from __future__ import annotations

import numpy as np
import pytest

import semhash_spark
from semhash_spark.data import dataset as ds


def test_read_documents_gives_mllib_sparse_vectors(spark, small_dataset):
    from pyspark.ml.feature import IDF
    from pyspark.ml.linalg import SparseVector

    df = semhash_spark.read_documents(spark, str(small_dataset))
    assert df.columns == ["id", "labels", "split", "features", "length"]
    meta = ds.read_metadata(small_dataset)
    rows = df.collect()
    assert len(rows) == meta["counts"]["train"] + meta["counts"]["test"] == 560
    by_id = {r["id"]: r for r in rows}
    for split in ds.SPLITS:  # the same counts Petastorm's columns hold
        data = ds.read_split(small_dataset, split, columns=(ds.ID, ds.LABELS, "counts"))
        for i in range(0, len(data.ids), 37):
            r = by_id[data.ids[i]]
            v = r["features"]
            assert isinstance(v, SparseVector) and v.size == meta["vocab_size"] and r["split"] == split
            want = data.counts[i]
            assert np.array_equal(v.indices, want.indices) and np.allclose(v.values, want.data)
            assert r["length"] == int(want.sum()) and list(r["labels"]) == data.labels[i]
    idf = IDF(inputCol="features", outputCol="tfidf").fit(df)  # MLlib takes the column as it is
    assert len(idf.idf) == meta["vocab_size"]
    assert semhash_spark.read_documents(spark, str(small_dataset), splits=("test",)).count() == 160


def test_read_documents_bad_split(spark, small_dataset):
    with pytest.raises(ValueError, match="choose one or more of"):
        semhash_spark.read_documents(spark, str(small_dataset), splits=("validation",))
