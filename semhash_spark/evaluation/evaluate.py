"""Retrieval metrics for codes, the baselines they are compared with (TF-IDF, LSA, LSH; Euclidean), and the PR plot.

Protocol (Salakhutdinov & Hinton, "Semantic Hashing"): test documents are queries, train documents the database;
a database document is relevant to a query when they share at least one label. Every method ranks the *whole*
database for each query; Hamming ties (and exact score ties) are broken in one fixed random order of the database,
a permutation drawn from ``tie_seed``, so that two methods or two runs are compared on the same footing.

A ranking method is a :class:`RankingMethod`: a function from a chunk of query rows to a dense
``[len(rows), num_database]`` score matrix plus the sort direction. Queries are processed in chunks so memory stays
``O(chunk * num_database)``; scores come from BLAS matmuls (Hamming distances too: ``(bits - s_q . s_db) / 2`` over
±1 vectors, exact in float32), and rankings from a stable sort over the tie-permuted database (a radix sort for
Hamming distances).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import scipy.sparse as sp

from semhash_spark.codes import as_codes

log = logging.getLogger(__name__)

RECALL_LEVELS: tuple[float, ...] = (
    0.001,
    0.002,
    0.005,
    0.01,
    0.02,
    0.05,
    0.1,
    0.2,
    0.3,
    0.4,
    0.5,
    0.6,
    0.7,
    0.8,
    0.9,
    1.0,
)
AP_CUTOFF = 1000
BASELINES = ("tfidf", "lsa", "lsh", "binary_lsa")
_CHUNK_ELEMENTS = 1 << 21  # query chunk size * database size; ~16 MB per int64 [chunk, N] array


class LabelledCounts(Protocol):
    """A split as the evaluator needs it: labels per document and word counts ``csr[n, V]``."""

    labels: Sequence[Sequence[str]]
    counts: sp.csr_matrix


@dataclass(frozen=True)
class RankingMethod:
    """Scores the whole database for chunks of queries.

    ``scores(rows)`` takes query row indices ``int64[m]`` and returns ``[m, num_database]`` scores in database order;
    ``descending`` says whether higher scores rank first (similarities) or lower (distances).
    """

    scores: Callable[[np.ndarray], np.ndarray]
    num_queries: int
    num_database: int
    descending: bool
    info: dict = field(default_factory=dict)  # extra figures reported with the metrics, e.g. {"bits": 64}


# ---------------------------------------------------------------------------------------------------- relevance


def label_matrices(
    db_labels: Sequence[Sequence[str]], query_labels: Sequence[Sequence[str]]
) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """Sparse 0/1 label indicators ``(L_db [N, C], L_q [Q, C])`` over the union of label names."""
    names = sorted({str(x) for labels in (db_labels, query_labels) for doc in labels for x in doc})
    col = {name: j for j, name in enumerate(names)}

    def indicator(labels: Sequence[Sequence[str]]) -> sp.csr_matrix:
        indptr = np.zeros(len(labels) + 1, dtype=np.int64)
        indices: list[int] = []
        for i, doc in enumerate(labels):
            cols = sorted({col[str(x)] for x in doc})
            indices.extend(cols)
            indptr[i + 1] = len(indices)
        data = np.ones(len(indices), dtype=np.float32)
        return sp.csr_matrix((data, np.asarray(indices, dtype=np.int64), indptr), shape=(len(labels), len(names)))

    return indicator(db_labels), indicator(query_labels)


def relevance(lq: sp.csr_matrix, ldb: sp.csr_matrix) -> np.ndarray:
    """``bool[Q, N]``: query i and database doc j share at least one label."""
    return (lq @ ldb.T).toarray() > 0


# ---------------------------------------------------------------------------------------------------- ranking


def tie_permutation(num_database: int, tie_seed: int = 0) -> np.ndarray:
    """The fixed random order ``int64[N]`` (database indices) in which ties are broken."""
    return np.random.default_rng(tie_seed).permutation(num_database).astype(np.int64)


def rank_database(scores: np.ndarray, tie_perm: np.ndarray, *, descending: bool) -> np.ndarray:
    """Database indices ``int64[m, N]``, best first; equal scores keep their order in ``tie_perm``.

    Sorting the tie-permuted columns with a stable sort gives exactly the order of the key
    ``(score, position in tie_perm)``; for small-integer distances numpy's stable sort is a radix sort.
    """
    keyed = np.asarray(scores)[:, tie_perm]
    if descending:
        keyed = -keyed if keyed.dtype.kind == "f" else -keyed.astype(np.int64)
    order = np.argsort(keyed, axis=1, kind="stable")
    return tie_perm[order]


def ranked_relevance_metrics(rel_ranked: np.ndarray, ks: Sequence[int] = (100,)) -> dict[str, np.ndarray]:
    """Per-query metrics from relevance in ranked order ``bool[m, N]``.

    Returns arrays of length ``m``: ``ap`` (average precision over the whole ranking), ``ap_at_1000``, ``p@k`` for
    each ``k`` (hits in the first ``k`` ranks over ``min(k, N)``), ``pr`` (``[m, len(RECALL_LEVELS)]``: precision at
    the first rank whose recall reaches each level) and ``num_relevant``. Queries with no relevant document get zeros
    everywhere.

    ``ap_at_1000`` is AP over the top 1000 as hashing papers compute it (ITQ, DPSH, HashNet's ``CalcTopMap``): the
    sum of the precision at each relevant rank ``r <= 1000`` divided by the number of relevant documents *within*
    the top 1000 (not by all relevant ones), and 0 when the top 1000 holds none. Its mean over queries is
    ``map_at_1000``.
    """
    rel_ranked = np.asarray(rel_ranked, dtype=bool)
    m, n = rel_ranked.shape
    rows, cols = np.nonzero(rel_ranked)  # row-major: the relevant ranks of each query, ascending
    nrel = np.bincount(rows, minlength=m)
    start = np.concatenate(([0], np.cumsum(nrel)[:-1]))
    nth = np.arange(rows.size) - start[rows] + 1  # this is the nth relevant document of its query
    prec_at_hit = nth / (cols + 1.0)
    safe = np.maximum(nrel, 1)

    out: dict[str, np.ndarray] = {"num_relevant": nrel}
    out["ap"] = np.bincount(rows, weights=prec_at_hit, minlength=m) / safe
    top = cols < AP_CUTOFF
    top_hits = np.bincount(rows[top], minlength=m)
    out["ap_at_1000"] = np.bincount(rows[top], weights=prec_at_hit[top], minlength=m) / np.maximum(top_hits, 1)
    for k in ks:
        out[f"p@{k}"] = np.bincount(rows[cols < k], minlength=m) / float(min(k, n))

    levels = np.asarray(RECALL_LEVELS)
    # Recall at rank i is hits(i) / nrel >= r  <=>  hits(i) >= ceil(r * nrel); the 1e-9 guards 0.3 * 10 = 3.0000000004.
    need = np.maximum(1, np.ceil(levels[None, :] * nrel[:, None] - 1e-9)).astype(np.int64)
    need = np.minimum(need, safe[:, None])
    has = nrel > 0
    pr = np.zeros((m, levels.size))
    if has.any():
        rank_of_need = cols[start[has, None] + need[has] - 1] + 1.0
        pr[has] = need[has] / rank_of_need
    out["pr"] = pr
    return out


def evaluate_methods(
    methods: Mapping[str, RankingMethod],
    db_labels: Sequence[Sequence[str]],
    query_labels: Sequence[Sequence[str]],
    *,
    queries: np.ndarray | None = None,
    tie_seed: int = 0,
    precision_at: Sequence[int] = (100,),
    chunk_size: int = 0,
) -> dict[str, dict]:
    """Metrics of several ranking methods over the same queries, relevance and tie order (one pass over queries).

    ``queries`` selects query rows (default: all). Queries with no relevant database document (in particular those
    with no label) are skipped and counted in ``skipped_queries``. Returns ``{name: metrics}``, each with
    ``precision_at_100`` (and ``precision_at_<k>`` for every ``k`` asked), ``map``, ``map_at_1000``, ``pr_curve``
    (``[[recall, precision], ...]`` at :data:`RECALL_LEVELS`), ``num_queries``, ``num_database``,
    ``skipped_queries`` and the method's ``info``.
    """
    if not methods:
        raise ValueError("no ranking methods to evaluate")
    num_db, num_q = len(db_labels), len(query_labels)
    for name, m in methods.items():
        if (m.num_database, m.num_queries) != (num_db, num_q):
            raise ValueError(
                f"method {name!r} ranks {m.num_database} database docs for {m.num_queries} queries, "
                f"but there are {num_db} database labels and {num_q} query labels"
            )
    ks = sorted({int(k) for k in (*precision_at, 100)})
    if ks[0] <= 0:
        raise ValueError(f"precision_at needs positive ranks, got {list(precision_at)}")
    ldb, lq = label_matrices(db_labels, query_labels)
    rows = np.arange(num_q, dtype=np.int64) if queries is None else np.asarray(queries, dtype=np.int64)
    has_rel = np.asarray((lq[rows] @ ldb.sum(axis=0).T) > 0).ravel()  # any database doc shares a label
    skipped = int((~has_rel).sum())
    rows = rows[has_rel]
    if skipped:
        log.warning("%d of %d queries have no relevant database document; skipped", skipped, skipped + rows.size)
    if rows.size == 0:
        raise ValueError("no query has a relevant database document: check the labels")

    tie_perm = tie_permutation(num_db, tie_seed)
    chunk = chunk_size or max(1, _CHUNK_ELEMENTS // max(1, num_db))
    parts: dict[str, list[dict[str, np.ndarray]]] = {name: [] for name in methods}
    for s in range(0, rows.size, chunk):
        q = rows[s : s + chunk]
        rel = relevance(lq[q], ldb)  # [m, N] in database order
        for name, method in methods.items():
            order = rank_database(method.scores(q), tie_perm, descending=method.descending)
            parts[name].append(ranked_relevance_metrics(np.take_along_axis(rel, order, axis=1), ks))
        log.debug("evaluated queries %d-%d of %d", s, s + q.size, rows.size)

    results = {}
    for name, chunks in parts.items():
        per_query = {key: np.concatenate([c[key] for c in chunks]) for key in chunks[0]}
        res: dict = {f"precision_at_{k}": float(per_query[f"p@{k}"].mean()) for k in ks}
        pr = per_query["pr"].mean(axis=0)
        res.update(
            map=float(per_query["ap"].mean()),
            map_at_1000=float(per_query["ap_at_1000"].mean()),
            pr_curve=[[float(r), float(p)] for r, p in zip(RECALL_LEVELS, pr)],
            num_queries=int(rows.size),
            num_database=int(num_db),
            skipped_queries=skipped,
        )
        res.update(methods[name].info)
        results[name] = res
    return results


def rank_metrics_from_scores(
    method: RankingMethod,
    db_labels: Sequence[Sequence[str]],
    query_labels: Sequence[Sequence[str]],
    **kwargs,
) -> dict:
    """Metrics of one ranking method; keyword arguments as :func:`evaluate_methods`."""
    return evaluate_methods({"method": method}, db_labels, query_labels, **kwargs)["method"]


# ---------------------------------------------------------------------------------------------------- methods


def _pm1(codes: np.ndarray, bits: int) -> np.ndarray:
    """Packed codes -> ``float32[n, bits]`` of ±1."""
    b = np.unpackbits(as_codes(codes, bits), axis=1, count=bits, bitorder="big").astype(np.float32)
    return 2.0 * b - 1.0


def hamming_method(train_codes: np.ndarray, test_codes: np.ndarray, bits: int) -> RankingMethod:
    """Hamming ranking of packed codes (ascending distance), as ``(bits - s_q . s_db) / 2`` over ±1 codes."""
    db = _pm1(train_codes, bits)
    qs = _pm1(test_codes, bits)
    dtype = np.uint8 if bits < 256 else np.uint16

    def scores(rows: np.ndarray) -> np.ndarray:
        dot = qs[rows] @ db.T  # [m, N], integers in [-bits, bits], exact in float32
        return np.rint((bits - dot) * 0.5).astype(dtype)

    return RankingMethod(scores, qs.shape[0], db.shape[0], descending=False, info={"bits": int(bits)})


def _l2_normalise(x):
    if sp.issparse(x):
        x = sp.csr_matrix(x, dtype=np.float32)
        norms = np.sqrt(np.asarray(x.multiply(x).sum(axis=1)).ravel())
        return sp.diags(1.0 / np.where(norms > 0, norms, 1.0)).astype(np.float32) @ x
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms > 0, norms, 1.0)


def cosine_method(train_vecs, test_vecs, **info) -> RankingMethod:
    """Cosine-similarity ranking (descending) of dense arrays or sparse matrices; zero vectors score 0."""
    db = _l2_normalise(train_vecs)
    qs = _l2_normalise(test_vecs)
    if sp.issparse(db):
        db_t = sp.csr_matrix(db.T)
    else:
        db_t = np.ascontiguousarray(db.T)

    def scores(rows: np.ndarray) -> np.ndarray:
        s = qs[rows] @ db_t
        return s.toarray() if sp.issparse(s) else np.asarray(s)

    return RankingMethod(scores, qs.shape[0], db.shape[0], descending=True, info=dict(info))


def euclidean_method(train_x, test_x, *, dtype=np.float32, **info) -> RankingMethod:
    """Exact Euclidean ranking (ascending squared distance) of dense vectors such as raw pixels ``[n, d]``.

    Squared distances are ``||q||^2 + ||x||^2 - 2 q . x``, one BLAS matmul per chunk of queries, on vectors centred
    on the database mean (distances are unchanged, rounding shrinks). Memory: the database as ``dtype[N, d]`` (50K
    CIFAR images: 0.6 GB in float32) plus the ``[chunk, N]`` scores. In float32 two distances closer than about
    ``1e-6`` of their size may swap; ``dtype=np.float64`` gives the exact order of integer pixels.
    """
    db = np.asarray(train_x)
    qs = np.asarray(test_x)
    if db.ndim != 2 or qs.ndim != 2 or db.shape[1] != qs.shape[1]:
        raise ValueError(
            f"euclidean ranking needs [n, d] database and query arrays of one width, got {db.shape} and {qs.shape}"
        )
    mean = np.zeros(db.shape[1])
    for s in range(0, db.shape[0], 4096):
        mean += db[s : s + 4096].sum(axis=0, dtype=np.float64)
    mean /= max(1, db.shape[0])

    def centred(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``x - mean`` as ``dtype[n, d]`` and its squared norms ``dtype[n]`` (summed in float64)."""
        out = np.empty(x.shape, dtype=dtype)
        sq = np.empty(x.shape[0], dtype=dtype)
        for s in range(0, x.shape[0], 4096):
            c = x[s : s + 4096] - mean  # float64 chunk
            out[s : s + 4096] = c
            sq[s : s + 4096] = np.einsum("ij,ij->i", c, c)
        return out, sq

    db, db_sq = centred(db)
    qs, q_sq = centred(qs)

    def scores(rows: np.ndarray) -> np.ndarray:
        d = qs[rows] @ db.T  # [m, N]; BLAS reads the transpose in place
        d *= -2
        d += db_sq
        d += q_sq[rows, None]
        return np.maximum(d, 0, out=d)

    return RankingMethod(scores, qs.shape[0], db.shape[0], descending=False, info=dict(info))


def idf_from_doc_freq(doc_freq: np.ndarray, num_docs: int) -> np.ndarray:
    """Smoothed idf ``log((1 + n) / (1 + df)) + 1`` (scikit-learn's), ``float32[V]``."""
    df = np.asarray(doc_freq, dtype=np.float64)
    return (np.log((1.0 + num_docs) / (1.0 + df)) + 1.0).astype(np.float32)


def tfidf(counts: sp.spmatrix, idf: np.ndarray) -> sp.csr_matrix:
    """TF-IDF rows ``csr[n, V]``: raw counts times idf, L2-normalised."""
    counts = sp.csr_matrix(counts, dtype=np.float32)
    idf = np.asarray(idf, dtype=np.float32).ravel()
    if idf.size != counts.shape[1]:
        raise ValueError(f"idf has {idf.size} entries for a vocabulary of {counts.shape[1]} words")
    return _l2_normalise(counts @ sp.diags(idf))


def tfidf_method(train_counts, test_counts, idf) -> RankingMethod:
    """Exact TF-IDF cosine over the whole database."""
    return cosine_method(tfidf(train_counts, idf), tfidf(test_counts, idf))


def lsa_method(train_counts, test_counts, idf, dims: int, *, seed: int = 0) -> RankingMethod:
    """LSA: a ``dims``-component TruncatedSVD fitted on train TF-IDF, cosine in the latent space."""
    from sklearn.decomposition import TruncatedSVD

    svd = TruncatedSVD(n_components=dims, algorithm="randomized", n_iter=7, random_state=seed)
    train_z = svd.fit_transform(tfidf(train_counts, idf))
    test_z = svd.transform(tfidf(test_counts, idf))
    return cosine_method(train_z, test_z, dims=int(dims))


def binary_lsa_codes(train_counts, test_counts, idf, bits: int, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Binary LSA (the semantic hashing paper's third baseline): the ``bits``-component LSA projection of TF-IDF,
    each component thresholded at its median over the train documents; packed ``(train_codes, test_codes)``."""
    from sklearn.decomposition import TruncatedSVD

    svd = TruncatedSVD(n_components=bits, algorithm="randomized", n_iter=7, random_state=seed)
    train_z = svd.fit_transform(tfidf(train_counts, idf))
    test_z = svd.transform(tfidf(test_counts, idf))
    med = np.median(train_z, axis=0)
    return (np.packbits(train_z > med, axis=1, bitorder="big"), np.packbits(test_z > med, axis=1, bitorder="big"))


def binary_lsa_method(train_counts, test_counts, idf, bits: int, *, seed: int = 0) -> RankingMethod:
    """Binary LSA codes (:func:`binary_lsa_codes`), Hamming ranking."""
    return hamming_method(*binary_lsa_codes(train_counts, test_counts, idf, bits, seed=seed), bits)


def lsh_codes(counts, idf, bits: int, *, seed: int = 0) -> np.ndarray:
    """Random-hyperplane LSH (Charikar's SimHash) of TF-IDF rows: packed ``uint8[n, ceil(bits/8)]``."""
    planes = np.random.default_rng(seed).standard_normal((np.asarray(idf).size, bits)).astype(np.float32)
    proj = tfidf(counts, idf) @ planes
    return np.packbits(np.asarray(proj) > 0, axis=1, bitorder="big")


def lsh_method(train_counts, test_counts, idf, bits: int, *, seed: int = 0) -> RankingMethod:
    """LSH on TF-IDF with ``bits`` hyperplanes drawn from ``seed`` (the same for train and test), Hamming ranking."""
    train_codes = lsh_codes(train_counts, idf, bits, seed=seed)
    return hamming_method(train_codes, lsh_codes(test_counts, idf, bits, seed=seed), bits)


def baseline_methods(
    names: Sequence[str], train: LabelledCounts, test: LabelledCounts, idf: np.ndarray, bits: int, *, seed: int = 0
) -> dict[str, RankingMethod]:
    """The text baselines by name (``tfidf``, ``lsa`` with ``bits`` dims, ``lsh`` and ``binary_lsa`` with ``bits``
    bits)."""
    unknown = sorted(set(names) - set(BASELINES))
    if unknown:
        raise ValueError(f"unknown baselines {unknown}; choose from {list(BASELINES)}")
    makers = {
        "tfidf": lambda: tfidf_method(train.counts, test.counts, idf),
        "lsa": lambda: lsa_method(train.counts, test.counts, idf, bits, seed=seed),
        "lsh": lambda: lsh_method(train.counts, test.counts, idf, bits, seed=seed),
        "binary_lsa": lambda: binary_lsa_method(train.counts, test.counts, idf, bits, seed=seed),
    }
    return {name: makers[name]() for name in names}


# ---------------------------------------------------------------------------------------------------- entry points


def subsample_queries(num_queries: int, max_queries: int, seed: int = 0) -> np.ndarray:
    """Sorted query rows: all of them, or ``max_queries`` drawn without replacement from ``seed``."""
    if max_queries <= 0 or max_queries >= num_queries:
        return np.arange(num_queries, dtype=np.int64)
    rng = np.random.default_rng([seed, 0x9E3779B9])  # independent of the tie order drawn from the same seed
    return np.sort(rng.choice(num_queries, size=max_queries, replace=False)).astype(np.int64)


def evaluate_codes(
    train_codes: np.ndarray,
    test_codes: np.ndarray,
    bits: int,
    train: LabelledCounts,
    test: LabelledCounts,
    idf: np.ndarray,
    *,
    max_queries: int = 0,
    tie_seed: int = 0,
    baselines: Sequence[str] = BASELINES,
    plot_path: str | Path | None = None,
    plot_title: str = "",
) -> dict:
    """Hamming-ranking metrics of the codes and of the baselines, on the same queries, relevance and tie order.

    Test documents are the queries, train documents the database. Returns a JSON-serialisable dict: ``bits``,
    ``precision_at_100``, ``map``, ``map_at_1000``, ``pr_curve``, ``num_queries``, ``num_database``,
    ``skipped_queries`` and ``baselines = {name: {same figures}}``. Writes the PR curves to ``plot_path`` if given,
    titled ``plot_title`` (e.g. data set, model and bits) over the number of queries.
    """
    train_codes = as_codes(train_codes, bits)
    test_codes = as_codes(test_codes, bits)
    for split, codes, docs in (("train", train_codes, train), ("test", test_codes, test)):
        if not (codes.shape[0] == len(docs.labels) == docs.counts.shape[0]):
            raise ValueError(
                f"{split}: {codes.shape[0]} codes, {len(docs.labels)} label lists and "
                f"{docs.counts.shape[0]} count rows must agree"
            )
    methods = {"codes": hamming_method(train_codes, test_codes, bits)}
    methods.update(baseline_methods(tuple(baselines), train, test, idf, bits, seed=0))  # fixed, apart from tie_seed
    queries = subsample_queries(test_codes.shape[0], max_queries, tie_seed)
    log.info(
        "evaluating %d-bit codes and %s on %d queries x %d database docs",
        bits,
        list(baselines),
        queries.size,
        train_codes.shape[0],
    )
    res = evaluate_methods(methods, train.labels, test.labels, queries=queries, tie_seed=tie_seed)

    out = dict(res.pop("codes"))
    out["bits"] = int(bits)
    out["baselines"] = res
    for name, r in [("codes", out), *res.items()]:
        log.info("%-6s P@100 %.3f  mAP %.3f  mAP@1000 %.3f", name, r["precision_at_100"], r["map"], r["map_at_1000"])
    if plot_path is not None:
        curves = {f"{bits}-bit codes": out["pr_curve"]}
        curves.update({_label(name, bits): r["pr_curve"] for name, r in res.items()})
        plot_pr_curves(curves, plot_path, title=pr_title(plot_title, out["num_queries"]))
    return out


def pr_title(head: str, num_queries: int) -> str:
    """The PR plot's title: ``head`` (data set, model, bits) over the number of queries."""
    return (
        f"{head}\nprecision-recall over {num_queries} queries" if head else f"Precision-recall, {num_queries} queries"
    )


def _label(name: str, bits: int) -> str:
    return {
        "tfidf": "TF-IDF",
        "lsa": f"LSA {bits} dims",
        "lsh": f"LSH {bits} bits",
        "binary_lsa": f"binary LSA {bits} bits",
    }.get(name, name)


def plot_pr_curves(curves: Mapping[str, Sequence[Sequence[float]]], path: str | Path, title: str = "") -> Path:
    """One PNG with a precision-recall curve per method, recall on a log axis as in the paper's figures."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.8))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for name, curve in curves.items():
        pts = np.asarray(curve, dtype=float).reshape(-1, 2)
        ax.plot(pts[:, 0], pts[:, 1], marker="o", markersize=3, label=name)
    ax.set_xscale("log")
    ax.set_xlim(min(RECALL_LEVELS) * 0.8, 1.05)
    ax.set_ylim(0.0, 1.0)
    ax.set_xlabel("Recall")
    ax.set_ylabel("Precision")
    ax.grid(True, which="both", alpha=0.3)
    if title:
        ax.set_title(title)
    ax.legend(loc="upper right", fontsize="small")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    log.info("wrote PR curves to %s", path)
    return path
