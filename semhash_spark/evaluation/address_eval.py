"""The papers' lookup, measured: a short address code's Hamming ball as the shortlist, re-ranked by a long code or by
TF-IDF (Salakhutdinov & Hinton, "Semantic hashing", 2009: 20-bit addresses, radius up to 4, shortlist re-ranked by
128-bit codes or TF-IDF).

Test documents are the queries and train documents the database, a database document relevant to a query when they
share a label, as in :mod:`semhash_spark.evaluation.evaluate`. For each radius: the shortlist size (mean, median), its recall
(relevant documents found over all relevant in the database) and precision, and the precision of the top
``min(100, shortlist)`` after ranking the shortlist by the ranking code (Hamming, ties in ``evaluate``'s fixed
order) or by TF-IDF cosine, and the ranked shortlist's AP over its top 1000 (``evaluate``'s ``map_at_1000``
definition; the images' figure). An empty shortlist counts 0 in every precision. Queries with no relevant database
document are skipped, as in ``evaluate``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from semhash_spark import codes as C
from semhash_spark.index.address import AddressTable
from semhash_spark.evaluation.evaluate import (
    _CHUNK_ELEMENTS,
    AP_CUTOFF,
    RankingMethod,
    label_matrices,
    relevance,
    subsample_queries,
    tie_permutation,
)

log = logging.getLogger(__name__)

RERANK_TOP = 100


def address_lookup_metrics(
    train_addresses: np.ndarray,
    test_addresses: np.ndarray,
    address_bits: int,
    rankers: dict[str, RankingMethod],
    db_labels: Sequence[Sequence[str]],
    query_labels: Sequence[Sequence[str]],
    *,
    radii: Sequence[int] = (0, 1, 2, 3, 4),
    queries: np.ndarray | None = None,
    tie_seed: int = 0,
) -> dict:
    """``{"bits", "num_queries", "by_radius": {"r": {...}}}`` of the address ball re-ranked by each of ``rankers``.

    ``train_addresses``/``test_addresses``: ``uint64`` address values (``codes.prefix`` of the address codes);
    ``rankers``: name -> a :class:`RankingMethod` over the same queries and database (e.g. ``{"code":
    hamming_method(...), "tfidf": tfidf_method(...)}``), reported as ``rerank_<name>_precision_at_100``.
    """
    num_db, num_q = len(db_labels), len(query_labels)
    if len(train_addresses) != num_db or len(test_addresses) != num_q:
        raise ValueError(
            f"{len(train_addresses)} database and {len(test_addresses)} query addresses for "
            f"{num_db} database and {num_q} query label lists"
        )
    for name, m in rankers.items():
        if (m.num_database, m.num_queries) != (num_db, num_q):
            raise ValueError(f"ranker {name!r} ranks {m.num_database} x {m.num_queries}, not {num_db} x {num_q}")
    table = AddressTable(train_addresses, address_bits)
    test_addresses = np.asarray(test_addresses, dtype=np.uint64)
    ldb, lq = label_matrices(db_labels, query_labels)
    rows = np.arange(num_q, dtype=np.int64) if queries is None else np.asarray(queries, dtype=np.int64)
    rows = rows[np.asarray((lq[rows] @ ldb.sum(axis=0).T) > 0).ravel()]
    if rows.size == 0:
        raise ValueError("no query has a relevant database document: check the labels")
    tie_rank = np.empty(num_db, np.int64)
    tie_rank[tie_permutation(num_db, tie_seed)] = np.arange(num_db)

    radii = [int(r) for r in radii]
    size = {r: [] for r in radii}
    recall = {r: [] for r in radii}
    prec = {r: [] for r in radii}
    rerank = {r: {name: [] for name in rankers} for r in radii}
    chunk = max(1, _CHUNK_ELEMENTS // max(1, num_db))
    for s in range(0, rows.size, chunk):
        q = rows[s : s + chunk]
        rel = relevance(lq[q], ldb)  # bool[m, N]
        nrel = rel.sum(axis=1)
        scores = {name: (m.scores(q), m.descending) for name, m in rankers.items()}
        for r in radii:
            lims, ids, _ = table.ball(test_addresses[q], r)
            for i in range(q.size):
                short = ids[lims[i] : lims[i + 1]]
                hits = rel[i, short]
                size[r].append(short.size)
                recall[r].append(hits.sum() / nrel[i])
                prec[r].append(hits.mean() if short.size else 0.0)
                top = min(RERANK_TOP, short.size)
                for name, (sc, desc) in scores.items():
                    if top == 0:
                        rerank[r][name].append((0.0, 0.0))
                        continue
                    v = sc[i, short]
                    ranked = hits[np.lexsort((tie_rank[short], -v if desc else v))[:AP_CUTOFF]]
                    nth = np.cumsum(ranked)
                    ap = float((nth / np.arange(1, ranked.size + 1))[ranked].sum() / max(1, nth[-1]))
                    rerank[r][name].append((ranked[:top].mean(), ap))
        log.debug("address lookup: queries %d-%d of %d", s, s + q.size, rows.size)

    by_radius = {}
    for r in radii:
        res = {
            "shortlist_mean": float(np.mean(size[r])),
            "shortlist_median": float(np.median(size[r])),
            "recall": float(np.mean(recall[r])),
            "precision": float(np.mean(prec[r])),
        }
        for name in rankers:
            p_at, ap = np.asarray(rerank[r][name]).reshape(-1, 2).T
            res[f"rerank_{name}_precision_at_{RERANK_TOP}"] = float(p_at.mean())
            res[f"rerank_{name}_map_at_1000"] = float(ap.mean())
        by_radius[str(r)] = res
        log.info(
            "address r=%d: shortlist mean %.0f median %.0f recall %.3f precision %.3f %s",
            r,
            res["shortlist_mean"],
            res["shortlist_median"],
            res["recall"],
            res["precision"],
            " ".join(f"{k}={v:.3f}" for k, v in res.items() if k.startswith("rerank_")),
        )
    return {"bits": int(address_bits), "num_queries": int(rows.size), "by_radius": by_radius}


def addresses_of(codes: np.ndarray, bits: int) -> np.ndarray:
    """``uint64`` address values of packed ``bits``-bit address codes (all their bits, MSB first)."""
    return C.prefix(C.as_codes(codes, bits), bits)


def address_model_lookup(
    address_hasher,
    train_x,
    test_x,
    rankers: dict[str, RankingMethod],
    db_labels: Sequence[Sequence[str]],
    query_labels: Sequence[Sequence[str]],
    *,
    max_radius: int,
    max_queries: int = 0,
    tie_seed: int = 0,
    papers_bits: int = 20,
    encode=None,
) -> dict:
    """``evaluate --address-model`` for any modality: the address model's codes of the inputs (``encode``, by
    default its ``codes``) as addresses, the ball at r = 0..``max_radius`` re-ranked by ``rankers``."""
    abits = address_hasher.bits
    encode = encode or address_hasher.codes
    if abits > 32:
        raise ValueError(
            f"the address model has {abits}-bit codes; an address is a short code (the papers: {papers_bits} bits)"
        )
    out = address_lookup_metrics(
        addresses_of(encode(train_x), abits),
        addresses_of(encode(test_x), abits),
        abits,
        rankers,
        db_labels,
        query_labels,
        radii=range(min(max_radius, abits) + 1),
        queries=subsample_queries(len(query_labels), max_queries, tie_seed),
        tie_seed=tie_seed,
    )
    out["model_version"] = address_hasher.version
    return out
