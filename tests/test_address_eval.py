"""address_eval: the papers' address-ball lookup in evaluate, checked against brute force and whole-database ranking."""

from __future__ import annotations

import json

import numpy as np
import pytest

from semhash_spark import codes as C
from semhash_spark.data import dataset as ds
from semhash_spark.evaluation.address_eval import address_lookup_metrics, addresses_of
from semhash_spark.evaluation.evaluate import (
    evaluate_methods,
    hamming_method,
    label_matrices,
    lsh_codes,
    relevance,
    tfidf_method,
    tie_permutation,
)


@pytest.fixture(scope="module")
def small(small_dataset):
    words, doc_freq, n_train = ds.read_vocab(small_dataset)
    train = ds.read_split(small_dataset, "train", columns=(ds.ID, ds.LABELS, "counts"))
    test = ds.read_split(small_dataset, "test", columns=(ds.ID, ds.LABELS, "counts"))
    return train, test, ds.idf(doc_freq, n_train)


def test_full_radius_is_the_whole_database_ranking(small):
    """At radius = address bits the shortlist is the whole database: its re-ranked precision is evaluate's P@100."""
    train, test, idf = small
    abits = 6
    rank_tr, rank_te = lsh_codes(train.counts, idf, 32, seed=1), lsh_codes(test.counts, idf, 32, seed=1)
    rankers = {"code": hamming_method(rank_tr, rank_te, 32), "tfidf": tfidf_method(train.counts, test.counts, idf)}
    a_tr = addresses_of(lsh_codes(train.counts, idf, abits, seed=2), abits)
    a_te = addresses_of(lsh_codes(test.counts, idf, abits, seed=2), abits)
    out = address_lookup_metrics(a_tr, a_te, abits, rankers, train.labels, test.labels, radii=[abits], tie_seed=3)
    whole = evaluate_methods(rankers, train.labels, test.labels, tie_seed=3)
    full = out["by_radius"][str(abits)]
    assert full["shortlist_mean"] == full["shortlist_median"] == len(train.labels)
    assert full["recall"] == pytest.approx(1.0)
    assert full["rerank_code_precision_at_100"] == pytest.approx(whole["code"]["precision_at_100"])
    assert full["rerank_tfidf_precision_at_100"] == pytest.approx(whole["tfidf"]["precision_at_100"])
    assert full["rerank_code_map_at_1000"] == pytest.approx(whole["code"]["map_at_1000"])
    assert full["rerank_tfidf_map_at_1000"] == pytest.approx(whole["tfidf"]["map_at_1000"])
    assert out["num_queries"] == whole["code"]["num_queries"]


def test_each_radius_matches_brute_force(small):
    train, test, idf = small
    abits = 10
    rank_tr, rank_te = lsh_codes(train.counts, idf, 16, seed=4), lsh_codes(test.counts, idf, 16, seed=4)
    tf = tfidf_method(train.counts, test.counts, idf)
    rankers = {"code": hamming_method(rank_tr, rank_te, 16), "tfidf": tf}
    addr_tr, addr_te = lsh_codes(train.counts, idf, abits, seed=5), lsh_codes(test.counts, idf, abits, seed=5)
    out = address_lookup_metrics(
        addresses_of(addr_tr, abits),
        addresses_of(addr_te, abits),
        abits,
        rankers,
        train.labels,
        test.labels,
        radii=range(5),
    )

    ldb, lq = label_matrices(train.labels, test.labels)
    rel = relevance(lq, ldb)
    keep = rel.any(axis=1)
    H_addr = C.hamming(addr_te, addr_tr)  # [Q, N]
    H_code = C.hamming(rank_te, rank_tr)
    cos = tf.scores(np.arange(len(test.labels)))
    tie = np.empty(len(train.labels), np.int64)
    tie[tie_permutation(len(train.labels), 0)] = np.arange(len(train.labels))
    prev = None
    for r in range(5):
        want = {"size": [], "recall": [], "precision": [], "code": [], "tfidf": []}
        for i in np.flatnonzero(keep):
            short = np.flatnonzero(H_addr[i] <= r)
            want["size"].append(len(short))
            want["recall"].append(rel[i, short].sum() / rel[i].sum())
            want["precision"].append(rel[i, short].mean() if len(short) else 0.0)
            for name, key in (("code", H_code[i, short]), ("tfidf", -cos[i, short])):
                best = sorted(zip(key, tie[short], short))[:100]
                want[name].append(np.mean([rel[i, j] for _, _, j in best]) if best else 0.0)
        got = out["by_radius"][str(r)]
        assert got["shortlist_mean"] == pytest.approx(np.mean(want["size"]))
        assert got["shortlist_median"] == pytest.approx(np.median(want["size"]))
        assert got["recall"] == pytest.approx(np.mean(want["recall"]))
        assert got["precision"] == pytest.approx(np.mean(want["precision"]))
        assert got["rerank_code_precision_at_100"] == pytest.approx(np.mean(want["code"]))
        assert got["rerank_tfidf_precision_at_100"] == pytest.approx(np.mean(want["tfidf"]))
        assert prev is None or got["recall"] >= prev  # the ball only grows with r
        prev = got["recall"]
    assert out["by_radius"]["0"]["shortlist_mean"] < out["by_radius"]["4"]["shortlist_mean"]


def test_mismatched_sizes_are_named(small):
    train, test, idf = small
    tf = tfidf_method(train.counts, test.counts, idf)
    with pytest.raises(ValueError, match="query addresses"):
        address_lookup_metrics(
            np.zeros(len(train.labels), np.uint64), np.zeros(3, np.uint64), 8, {"tfidf": tf}, train.labels, test.labels
        )


@pytest.mark.slow
def test_evaluate_with_an_address_model_reports_the_lookup(small_dataset, tmp_path, capsys):
    """Two trained models (a short address code and a longer ranking code) through ``semhash evaluate``."""
    from semhash_spark.cli import main

    def run(argv):
        assert main(argv) == 0, capsys.readouterr().err[-2000:]
        return json.loads(capsys.readouterr().out.strip().splitlines()[-1])

    small = [
        "--no-progress",
        "--set",
        "model.hidden=[64]",
        "--set",
        "pretrain.epochs=10",
        "--set",
        "pretrain.batch_size=20",
        "--set",
        "finetune.epochs=4",
        "--set",
        "finetune.batch_size=20",
        "--set",
        "finetune.lr=1e-3",
        "--set",
        "finetune.val_queries=100",
    ]
    for bits in (8, 24):
        run(["train", "--data", str(small_dataset), "--bits", str(bits), "--out", str(tmp_path / f"m{bits}"), *small])
    ev = run(
        [
            "evaluate",
            "--model",
            str(tmp_path / "m24"),
            "--address-model",
            str(tmp_path / "m8"),
            "--data",
            str(small_dataset),
            "--json",
            "--plot",
            "",
        ]
    )
    assert ev["baselines"]["binary_lsa"]["bits"] == 24
    al = ev["address_lookup"]
    assert al["bits"] == 8 and sorted(al["by_radius"]) == ["0", "1", "2", "3", "4"]
    sizes = [al["by_radius"][str(r)]["shortlist_mean"] for r in range(5)]
    recalls = [al["by_radius"][str(r)]["recall"] for r in range(5)]
    assert sizes == sorted(sizes) and recalls == sorted(recalls) and sizes[0] < sizes[4] <= 400
    for res in al["by_radius"].values():
        for key in ("recall", "precision", "rerank_code_precision_at_100", "rerank_tfidf_precision_at_100"):
            assert 0.0 <= res[key] <= 1.0
    # Four balanced groups (chance 0.25): a radius-4 ball of 8-bit addresses, re-ranked by TF-IDF, finds topics.
    assert al["by_radius"]["4"]["rerank_tfidf_precision_at_100"] > 0.4


def test_binary_lsa_thresholds_each_component_at_its_median(small):
    """Binary LSA: every bit splits the train documents in half, and the codes rank better than chance."""
    from semhash_spark.evaluation.evaluate import binary_lsa_codes, binary_lsa_method, evaluate_methods

    train, test, idf = small
    tr, te = binary_lsa_codes(train.counts, test.counts, idf, 16, seed=0)
    assert tr.shape == (len(train.labels), 2) and te.shape == (len(test.labels), 2)
    ones = C.unpack_bits(tr, 16).mean(axis=0)
    assert np.all(np.abs(ones - 0.5) <= 1.0 / len(train.labels))  # above the median: half of them, per bit
    res = evaluate_methods(
        {"b": binary_lsa_method(train.counts, test.counts, idf, 16, seed=0)}, train.labels, test.labels
    )["b"]
    assert res["bits"] == 16
    assert res["precision_at_100"] > 0.35  # four balanced groups: chance is 0.25
