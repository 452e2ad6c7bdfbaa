"""Retrieval metrics against hand-worked examples and brute force; baselines on real 20 Newsgroups."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass

import numpy as np
import pytest
from conftest import missing_data
import scipy.sparse as sp
import scipy.sparse.linalg  # noqa: F401  (sp.linalg.norm)

from semhash_spark import codes as C
from semhash_spark.evaluation.evaluate import (
    RECALL_LEVELS,
    RankingMethod,
    cosine_method,
    evaluate_codes,
    evaluate_methods,
    hamming_method,
    idf_from_doc_freq,
    label_matrices,
    plot_pr_curves,
    rank_database,
    rank_metrics_from_scores,
    ranked_relevance_metrics,
    relevance,
    subsample_queries,
    tfidf,
    tfidf_method,
    tie_permutation,
)

log = logging.getLogger(__name__)


@dataclass
class Split:
    labels: list[list[str]]
    counts: sp.csr_matrix


def fixed_scores(scores: np.ndarray, descending: bool) -> RankingMethod:
    scores = np.asarray(scores)
    return RankingMethod(lambda rows: scores[rows], scores.shape[0], scores.shape[1], descending)


def pr_at(metrics: dict, level: float) -> float:
    return metrics["pr"][0, RECALL_LEVELS.index(level)]


# ---------------------------------------------------------------------------------------------------- metric math


def test_metrics_of_a_hand_worked_ranking():
    # Relevant at ranks 1, 3 and 6 of 6.
    m = ranked_relevance_metrics(np.array([[1, 0, 1, 0, 0, 1]], dtype=bool), ks=(1, 2, 3, 5, 100))
    assert m["num_relevant"][0] == 3
    assert m["p@1"][0] == 1.0
    assert m["p@2"][0] == 0.5
    assert m["p@3"][0] == pytest.approx(2 / 3)
    assert m["p@5"][0] == pytest.approx(2 / 5)
    assert m["p@100"][0] == pytest.approx(3 / 6)  # k beyond the database: over min(k, N)
    assert m["ap"][0] == pytest.approx((1 / 1 + 2 / 3 + 3 / 6) / 3)
    assert m["ap_at_1000"][0] == pytest.approx(m["ap"][0])
    # Precision at the first rank whose recall reaches the level: 1 hit at rank 1, 2 at rank 3, 3 at rank 6.
    assert pr_at(m, 0.001) == 1.0
    assert pr_at(m, 0.3) == 1.0
    assert pr_at(m, 0.4) == pytest.approx(2 / 3)
    assert pr_at(m, 0.6) == pytest.approx(2 / 3)
    assert pr_at(m, 0.7) == pytest.approx(0.5)
    assert pr_at(m, 1.0) == pytest.approx(0.5)


def test_pr_levels_that_are_exact_fractions_need_no_extra_hit():
    # 10 relevant: recall 0.3 is reached at the 3rd hit exactly (0.3 * 10 is 3.0000000000000004 in floats).
    rel = np.zeros((1, 40), dtype=bool)
    rel[0, np.arange(10) * 4] = True  # hits at ranks 1, 5, 9, ..., 37
    m = ranked_relevance_metrics(rel)
    assert pr_at(m, 0.3) == pytest.approx(3 / 9)
    assert pr_at(m, 0.7) == pytest.approx(7 / 25)
    assert pr_at(m, 1.0) == pytest.approx(10 / 37)


def test_ap_at_1000_truncates_and_normalises_by_relevant_within_the_top_1000():
    # Hashing papers' mAP@1000 (CalcTopMap): divide by the hits within the top 1000, 0 when there are none.
    rel = np.zeros((4, 1500), dtype=bool)
    rel[0, [0, 1199]] = True  # second hit beyond the cut-off: it neither adds nor divides
    rel[1, :1100] = True  # more relevant documents than the cut-off, all ranked first
    rel[2, [1, 3, 1000]] = True  # hits at ranks 2 and 4 within, rank 1001 outside
    rel[3, [1000, 1400]] = True  # no hit within the top 1000
    m = ranked_relevance_metrics(rel)
    assert m["ap"][0] == pytest.approx((1 + 2 / 1200) / 2)
    assert m["ap_at_1000"][0] == pytest.approx(1.0)
    assert m["ap"][1] == pytest.approx(1.0)
    assert m["ap_at_1000"][1] == pytest.approx(1.0)
    assert m["ap_at_1000"][2] == pytest.approx((1 / 2 + 2 / 4) / 2)
    assert m["ap"][2] == pytest.approx((1 / 2 + 2 / 4 + 3 / 1001) / 3)
    assert m["ap_at_1000"][3] == 0.0 and m["ap"][3] > 0


def test_query_without_relevant_documents_scores_zero_and_others_are_unaffected():
    rel = np.array([[0, 0, 0, 0], [0, 1, 0, 1]], dtype=bool)
    m = ranked_relevance_metrics(rel, ks=(2,))
    assert m["ap"][0] == 0 and m["p@2"][0] == 0 and not m["pr"][0].any()
    assert m["ap"][1] == pytest.approx((1 / 2 + 2 / 4) / 2)
    assert m["p@2"][1] == 0.5


def test_average_precision_matches_sklearn_on_distinct_scores():
    from sklearn.metrics import average_precision_score

    rng = np.random.default_rng(3)
    scores = rng.standard_normal((5, 300))  # distinct, so sklearn's step-wise AP is the ranked AP
    rel = rng.random((5, 300)) < 0.2
    order = rank_database(scores, tie_permutation(300, 0), descending=True)
    m = ranked_relevance_metrics(np.take_along_axis(rel, order, axis=1))
    for i in range(5):
        assert m["ap"][i] == pytest.approx(average_precision_score(rel[i], scores[i]))


# ---------------------------------------------------------------------------------------------------- ranking, ties


def test_ties_follow_the_fixed_permutation():
    n = 500
    rng = np.random.default_rng(0)
    dist = rng.integers(0, 4, (3, n)).astype(np.uint8)  # many ties
    perm = tie_permutation(n, tie_seed=7)
    assert np.array_equal(np.sort(perm), np.arange(n))
    assert np.array_equal(perm, tie_permutation(n, tie_seed=7))
    assert not np.array_equal(perm, tie_permutation(n, tie_seed=8))
    pos = np.empty(n, dtype=np.int64)
    pos[perm] = np.arange(n)
    order = rank_database(dist, perm, descending=False)
    for i in range(3):
        assert np.array_equal(order[i], np.lexsort((pos, dist[i])))  # key: (distance, position in the permutation)
    # All tied: the ranking is the permutation itself, in both directions.
    assert np.array_equal(rank_database(np.zeros((1, n), np.uint8), perm, descending=False)[0], perm)
    assert np.array_equal(rank_database(np.ones((1, n), np.float32), perm, descending=True)[0], perm)
    # Descending similarities: the negated key, the same tie rule.
    sim = rng.integers(0, 3, (2, n)).astype(np.float32)
    order = rank_database(sim, perm, descending=True)
    for i in range(2):
        assert np.array_equal(order[i], np.lexsort((pos, -sim[i])))


def test_tie_broken_metrics_are_deterministic_and_depend_only_on_tie_seed():
    rng = np.random.default_rng(1)
    db = rng.integers(0, 2, (400, 1), dtype=np.uint8) << 7  # 1-bit codes: everything ties
    q = rng.integers(0, 2, (50, 1), dtype=np.uint8) << 7
    db_labels = [[str(x)] for x in rng.integers(0, 4, 400)]
    q_labels = [[str(x)] for x in rng.integers(0, 4, 50)]
    runs = [rank_metrics_from_scores(hamming_method(db, q, 1), db_labels, q_labels, tie_seed=s) for s in (0, 0, 1)]
    assert runs[0] == runs[1]
    assert runs[0]["map_at_1000"] != runs[2]["map_at_1000"]


def test_without_ties_metrics_do_not_depend_on_database_order_or_tie_seed():
    rng = np.random.default_rng(2)
    scores = rng.standard_normal((30, 200))
    db_labels = [[str(x)] for x in rng.integers(0, 5, 200)]
    q_labels = [[str(x)] for x in rng.integers(0, 5, 30)]
    base = rank_metrics_from_scores(fixed_scores(scores, True), db_labels, q_labels, tie_seed=0, precision_at=(10,))
    shuffle = rng.permutation(200)
    moved = rank_metrics_from_scores(
        fixed_scores(scores[:, shuffle], True),
        [db_labels[j] for j in shuffle],
        q_labels,
        tie_seed=5,
        precision_at=(10,),
    )
    assert moved == base


def test_chunking_does_not_change_the_result():
    rng = np.random.default_rng(4)
    db = rng.integers(0, 256, (300, 2), dtype=np.uint8)
    q = rng.integers(0, 256, (41, 2), dtype=np.uint8)
    db_labels = [[str(x)] for x in rng.integers(0, 3, 300)]
    q_labels = [[str(x)] for x in rng.integers(0, 3, 41)]
    method = hamming_method(db, q, 16)
    whole = rank_metrics_from_scores(method, db_labels, q_labels, chunk_size=1000)
    assert rank_metrics_from_scores(method, db_labels, q_labels, chunk_size=7) == whole


# ---------------------------------------------------------------------------------------------------- methods


@pytest.mark.parametrize("bits", [8, 20, 64, 128])
def test_hamming_method_matches_codes_hamming(bits):
    rng = np.random.default_rng(bits)
    a = C.pack_bits(rng.integers(0, 2, (37, bits)))
    b = C.pack_bits(rng.integers(0, 2, (53, bits)))
    got = hamming_method(b, a, bits).scores(np.arange(37))
    assert np.array_equal(got, C.hamming(a, b))


def test_cosine_and_tfidf_methods_match_brute_force():
    from sklearn.metrics.pairwise import cosine_similarity

    rng = np.random.default_rng(5)
    train = sp.random(60, 30, density=0.2, format="csr", random_state=1, data_rvs=lambda n: rng.integers(1, 5, n))
    test = sp.random(10, 30, density=0.2, format="csr", random_state=2, data_rvs=lambda n: rng.integers(1, 5, n))
    idf = idf_from_doc_freq(np.asarray((train > 0).sum(axis=0)).ravel(), 60)
    w_train = train.toarray() * idf
    w_test = test.toarray() * idf
    expect = cosine_similarity(w_test, w_train)
    assert np.allclose(tfidf_method(train, test, idf).scores(np.arange(10)), expect, atol=1e-5)
    assert np.allclose(cosine_method(w_train, w_test).scores(np.arange(10)), expect, atol=1e-5)
    norms = sp.linalg.norm(tfidf(train, idf), axis=1)
    assert np.allclose(norms[np.asarray(train.sum(axis=1)).ravel() > 0], 1.0, atol=1e-5)


# ---------------------------------------------------------------------------------------------------- relevance


def test_multilabel_relevance_and_skipped_queries():
    db_labels = [["a"], ["b", "c"], ["c"], []]
    q_labels = [["c"], [], ["a", "b"], ["zzz"]]
    ldb, lq = label_matrices(db_labels, q_labels)
    rel = relevance(lq, ldb)
    assert rel.tolist() == [
        [False, True, True, False],
        [False, False, False, False],
        [True, True, False, False],
        [False, False, False, False],
    ]
    scores = np.array([[0, 1, 2, 3]] * 4, dtype=np.uint8)  # database order is the ranking
    m = rank_metrics_from_scores(fixed_scores(scores, False), db_labels, q_labels, precision_at=(1, 2))
    assert m["skipped_queries"] == 2  # no label, and a label no database document has
    assert m["num_queries"] == 2
    assert m["precision_at_1"] == pytest.approx((0 + 1) / 2)
    assert m["precision_at_2"] == pytest.approx((0.5 + 1) / 2)
    assert m["map"] == pytest.approx(((1 / 2 + 2 / 3) / 2 + 1) / 2)


def test_perfect_codes_give_precision_one():
    rng = np.random.default_rng(6)
    classes = 8
    y_db, y_q = rng.integers(0, classes, 2000), rng.integers(0, classes, 200)
    one_hot = lambda y: C.pack_bits(np.eye(classes, dtype=np.uint8)[y])  # noqa: E731
    m = rank_metrics_from_scores(
        hamming_method(one_hot(y_db), one_hot(y_q), classes), [[str(c)] for c in y_db], [[str(c)] for c in y_q]
    )
    assert m["precision_at_100"] == 1.0
    assert m["map"] == pytest.approx(1.0)
    assert m["map_at_1000"] == pytest.approx(1.0)
    assert all(p == pytest.approx(1.0) for _, p in m["pr_curve"])


def test_random_codes_score_chance():
    rng = np.random.default_rng(7)
    classes = 10
    db = rng.integers(0, 256, (3000, 4), dtype=np.uint8)
    q = rng.integers(0, 256, (300, 4), dtype=np.uint8)
    db_labels = [[str(c)] for c in rng.integers(0, classes, 3000)]
    q_labels = [[str(c)] for c in rng.integers(0, classes, 300)]
    m = rank_metrics_from_scores(hamming_method(db, q, 32), db_labels, q_labels)
    assert m["precision_at_100"] == pytest.approx(0.1, abs=0.01)
    assert m["map"] == pytest.approx(0.1, abs=0.01)
    assert m["pr_curve"][-1][1] == pytest.approx(0.1, abs=0.01)  # at full recall: the base rate


# ---------------------------------------------------------------------------------------------------- entry points


def synthetic_corpus(rng, n, classes=4, vocab=40):
    """Documents whose words come mostly from their class's block of the vocabulary."""
    y = rng.integers(0, classes, n)
    block = vocab // classes
    rows = []
    for c in y:
        p = np.full(vocab, 0.2 / vocab)
        p[c * block : (c + 1) * block] += 0.8 / block
        rows.append(rng.multinomial(30, p / p.sum()))
    return Split([[f"class{c}"] for c in y], sp.csr_matrix(np.asarray(rows, dtype=np.float32))), y


def test_evaluate_codes_reports_codes_and_baselines(tmp_path):
    rng = np.random.default_rng(8)
    train, y_train = synthetic_corpus(rng, 400)
    test, y_test = synthetic_corpus(rng, 120)
    test.labels[0] = []  # one unlabelled query
    idf = idf_from_doc_freq(np.asarray((train.counts > 0).sum(axis=0)).ravel(), 400)
    bits = 8
    code = lambda y: C.pack_bits(np.eye(bits, dtype=np.uint8)[y])  # noqa: E731
    plot = tmp_path / "pr.png"
    out = evaluate_codes(code(y_train), code(y_test), bits, train, test, idf, plot_path=plot)

    assert json.loads(json.dumps(out)) == out
    figures = {"precision_at_100", "map", "map_at_1000", "pr_curve", "num_queries", "num_database", "skipped_queries"}
    assert figures | {"bits", "baselines"} <= set(out)
    assert set(out["baselines"]) == {"tfidf", "lsa", "lsh", "binary_lsa"}
    for r in out["baselines"].values():
        assert figures <= set(r)
        assert (r["num_queries"], r["num_database"], r["skipped_queries"]) == (119, 400, 1)
    assert out["baselines"]["lsa"]["dims"] == bits and out["baselines"]["lsh"]["bits"] == bits
    assert out["baselines"]["binary_lsa"]["bits"] == bits
    assert (out["bits"], out["num_queries"], out["skipped_queries"]) == (bits, 119, 1)
    assert out["map"] == pytest.approx(1.0)  # label codes: every relevant document ranks first
    assert [r for r, _ in out["pr_curve"]] == list(RECALL_LEVELS)
    assert out["baselines"]["tfidf"]["precision_at_100"] > 0.6  # the classes are easy to tell apart
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    sub = evaluate_codes(code(y_train), code(y_test), bits, train, test, idf, max_queries=30, baselines=("tfidf",))
    assert set(sub["baselines"]) == {"tfidf"}
    assert sub["num_queries"] + sub["skipped_queries"] == 30
    assert sub == evaluate_codes(
        code(y_train), code(y_test), bits, train, test, idf, max_queries=30, baselines=("tfidf",)
    )
    with pytest.raises(ValueError, match="unknown baselines"):
        evaluate_codes(code(y_train), code(y_test), bits, train, test, idf, baselines=("bm25",))
    with pytest.raises(ValueError, match="must agree"):
        evaluate_codes(code(y_train)[:-1], code(y_test), bits, train, test, idf)


def test_subsample_queries_is_deterministic_and_sorted():
    a = subsample_queries(1000, 100, seed=0)
    assert np.array_equal(a, subsample_queries(1000, 100, seed=0))
    assert a.size == 100 and np.all(np.diff(a) > 0)
    assert not np.array_equal(a, subsample_queries(1000, 100, seed=1))
    assert np.array_equal(subsample_queries(50, 0), np.arange(50))
    assert np.array_equal(subsample_queries(50, 80), np.arange(50))


def test_plot_pr_curves_writes_png(tmp_path):
    curve = [[r, 1 - r / 2] for r in RECALL_LEVELS]
    path = plot_pr_curves({"a": curve, "b": [[r, p / 2] for r, p in curve]}, tmp_path / "sub" / "pr.png", "t")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_evaluate_methods_rejects_mismatched_sizes():
    method = fixed_scores(np.zeros((3, 4)), True)
    with pytest.raises(ValueError, match="database"):
        evaluate_methods({"m": method}, [["a"]] * 5, [["a"]] * 3)


# ---------------------------------------------------------------------------------------------------- real data


@pytest.mark.slow
def test_baselines_on_20newsgroups_match_quality_notes(shared_data):
    """TF-IDF, LSA-64 and LSH-64 near the calibration figures (QUALITY-NOTES.md); random codes at chance."""
    home = shared_data / "20newsgroups" / "sklearn_data_home"
    if not (home / "20news-bydate_py3.pkz").is_file():
        missing_data(f"20 Newsgroups cache not found under {home}")
    from sklearn.datasets import fetch_20newsgroups
    from sklearn.feature_extraction.text import CountVectorizer

    t0 = time.perf_counter()
    raw_train = fetch_20newsgroups(data_home=str(home), subset="train", download_if_missing=False)
    raw_test = fetch_20newsgroups(data_home=str(home), subset="test", download_if_missing=False)
    vectorizer = CountVectorizer(max_features=2000, stop_words="english")
    names = raw_train.target_names
    train = Split([[names[i]] for i in raw_train.target], vectorizer.fit_transform(raw_train.data).tocsr())
    test = Split([[names[i]] for i in raw_test.target], vectorizer.transform(raw_test.data).tocsr())
    idf = idf_from_doc_freq(np.asarray((train.counts > 0).sum(axis=0)).ravel(), train.counts.shape[0])

    rng = np.random.default_rng(0)
    bits = 64
    random_codes = [rng.integers(0, 256, (len(s.labels), bits // 8), dtype=np.uint8) for s in (train, test)]
    out = evaluate_codes(*random_codes, bits, train, test, idf, max_queries=3000)
    p100 = {name: r["precision_at_100"] for name, r in out["baselines"].items()}
    log.info("20ng P@100 random=%.3f %s in %.1fs", out["precision_at_100"], p100, time.perf_counter() - t0)
    print(f"\n20ng {out['num_queries']} queries: random-64 P@100 {out['precision_at_100']:.3f} mAP {out['map']:.3f}")
    for name, r in out["baselines"].items():
        print(f"20ng {name:5s} P@100 {r['precision_at_100']:.3f}  mAP {r['map']:.3f}  mAP@1000 {r['map_at_1000']:.3f}")

    assert (out["num_queries"], out["num_database"], out["skipped_queries"]) == (3000, 11314, 0)
    assert out["precision_at_100"] == pytest.approx(0.053, abs=0.01)  # 20 roughly balanced classes
    assert 0.28 <= p100["tfidf"] <= 0.37  # notes: .324
    assert 0.31 <= p100["lsa"] <= 0.40  # notes: .356
    assert 0.07 <= p100["lsh"] <= 0.14  # notes: .103
    assert p100["lsa"] > p100["tfidf"] > p100["lsh"] > out["precision_at_100"]
    # PR curves fall as recall grows, and end at the base rate.
    for r in [out, *out["baselines"].values()]:
        precision = [p for _, p in r["pr_curve"]]
        assert precision[0] > precision[-1]
        assert precision[-1] == pytest.approx(0.053, abs=0.01)
