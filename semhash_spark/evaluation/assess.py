"""``semhash evaluate``: a trained model's codes against the classic baselines on the same split."""

from __future__ import annotations

import logging
import time
from typing import Any

from semhash_spark.data import dataset as ds
from semhash_spark.io import store
from semhash_spark.evaluation.bitstats import bit_statistics
from semhash_spark.models.checkpoint import load_model
from semhash_spark.evaluation.evaluate import evaluate_codes, hamming_method, tfidf_method

log = logging.getLogger(__name__)


def evaluate_model(
    model_uri: str,
    data_uri: str,
    *,
    plot_path: str | None = None,
    max_queries: int = 0,
    tie_seed: int = 0,
    baselines: tuple[str, ...] = ("tfidf", "lsa", "lsh", "binary_lsa"),
    address_model_uri: str | None = None,
) -> dict[str, Any]:
    """Test documents are the queries, train documents the database; relevant = shares a label.

    With ``address_model_uri`` (a short-code model, e.g. 20 bits) also the papers' lookup: ``address_lookup``."""
    t0 = time.time()
    hasher = load_model(model_uri)
    address_hasher = load_model(address_model_uri) if address_model_uri else None
    data_dir = store.local_copy(data_uri)
    meta = ds.read_metadata(data_dir)
    for uri, h in ((model_uri, hasher), (address_model_uri, address_hasher)):
        model_fp = h.meta.get("vocab", {}).get("fingerprint") if h is not None else None
        if model_fp and meta.get("vocab_fingerprint") and model_fp != meta["vocab_fingerprint"]:
            raise ValueError(f"the model {uri!r} was trained on another vocabulary than {data_uri!r}")
    words, doc_freq, n_train = ds.read_vocab(data_dir)
    train = ds.read_split(data_dir, "train", columns=(ds.ID, ds.LABELS, "counts"))
    test = ds.read_split(data_dir, "test", columns=(ds.ID, ds.LABELS, "counts"))
    if len(test) == 0:
        raise ValueError(f"{data_uri!r} has no test documents to use as queries")
    train_codes = hasher.codes_from_csr(train.counts)
    test_codes = hasher.codes_from_csr(test.counts)
    title = f"{meta.get('name') or data_uri}: model {hasher.version}, {hasher.bits}-bit codes"
    result = evaluate_codes(
        train_codes,
        test_codes,
        hasher.bits,
        train,
        test,
        ds.idf(doc_freq, n_train),
        max_queries=max_queries,
        tie_seed=tie_seed,
        baselines=baselines,
        plot_path=plot_path,
        plot_title=title,
    )
    if address_hasher is not None:
        from semhash_spark.evaluation.address_eval import address_model_lookup

        rankers = {
            "code": hamming_method(train_codes, test_codes, hasher.bits),
            "tfidf": tfidf_method(train.counts, test.counts, ds.idf(doc_freq, n_train)),
        }
        result["address_lookup"] = address_model_lookup(
            address_hasher,
            train.counts,
            test.counts,
            rankers,
            train.labels,
            test.labels,
            max_radius=4,
            max_queries=max_queries,
            tie_seed=tie_seed,
            encode=address_hasher.codes_from_csr,
        )
    result["bit_stats"] = bit_statistics(train_codes, hasher.bits, hasher.config.index.address_bits)  # of the database
    result["model_version"] = hasher.version
    result["dataset"] = meta.get("name")
    if plot_path:
        result["plot"] = str(plot_path)
    result["seconds"] = round(time.time() - t0, 1)
    return result
