"""Queries against a published index: text -> code with the index's own model, Hamming lookup, TF-IDF re-ranking.

Semantics of a query (``semhash query`` and the library):

- ``radius`` alone: every document whose *address* (the first ``address_bits`` bits) lies within ``radius`` of
  the query's address — the paper's semantic-hashing memory lookup (20-bit codes, radius 4) — nearest first.
- ``k`` alone: the ``k`` nearest documents by full-code Hamming distance (exact).
- both: the address-ball shortlist, cut to the ``k`` nearest by full-code distance.
- ``rerank="tfidf"``: the shortlist (the ball, or the ``rerank_candidates`` nearest codes) re-ranked by TF-IDF
  cosine on the stored word counts, top ``k`` — 128-bit codes as a filter before TF-IDF (sec. 4.3 of the paper).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from . import codes as C
from . import dataset as ds
from .checkpoint import Hasher
from .config import PrepareConfig
from .index import HammingIndex, load_version_model, read_current


@dataclass
class Searcher:
    index: HammingIndex
    hasher: Hasher

    @classmethod
    def open(cls, index_uri: str, version: str | None = None) -> "Searcher":
        version = version or read_current(index_uri)["version"]
        index = HammingIndex.open(index_uri, version=version)
        hasher = load_version_model(index_uri, version, index.manifest)      # checked against the manifest
        return cls(index, hasher)

    @property
    def vocab_index(self) -> dict[str, int]:
        if not hasattr(self, "_vocab_index"):
            self._vocab_index = {w: i for i, w in enumerate(self.hasher.vocab)}
        return self._vocab_index

    @property
    def idf(self) -> np.ndarray:
        v = self.hasher.meta["vocab"]
        return ds.idf(np.asarray(v["doc_freq"], dtype=np.float64), int(v["num_train_docs"])).astype(np.float32)

    def vectorize(self, texts: list[str]) -> list[tuple[np.ndarray, np.ndarray]]:
        pcfg = self.hasher.config.prepare if hasattr(self.hasher.config, "prepare") else PrepareConfig()
        out = []
        for t in texts:
            if not t or not t.strip():
                raise ValueError("empty query text")
            ids, counts = ds.vectorize(t, self.vocab_index, pcfg)
            if len(ids) == 0:
                raise ValueError(f"no word of the query is in the index's vocabulary: {t[:60]!r}")
            out.append((ids, counts))
        return out

    def encode_counts(self, vecs: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
        dense = np.zeros((len(vecs), len(self.hasher.vocab)), dtype=np.float32)
        for r, (ids, counts) in enumerate(vecs):
            dense[r, ids] = counts
        return self.hasher.codes(dense)

    def search_texts(self, texts: list[str], *, radius: int | None = None, k: int | None = 10,
                     rerank: str | None = None, candidates: int = 100) -> list[list[dict[str, Any]]]:
        vecs = self.vectorize(texts)
        return self.search_codes(self.encode_counts(vecs), radius=radius, k=k, rerank=rerank,
                                 query_vectors=vecs, candidates=candidates)

    def search_codes(self, q: np.ndarray, *, radius: int | None = None, k: int | None = 10, rerank: str | None = None,
                     query_vectors=None, candidates: int = 100) -> list[list[dict[str, Any]]]:
        q = C.as_codes(q, self.index.bits)
        if radius is None and not k:
            raise ValueError("give radius and/or k")
        if rerank not in (None, "tfidf"):
            raise ValueError(f"unknown rerank {rerank!r}; expected 'tfidf'")
        if rerank and query_vectors is None:
            raise ValueError("TF-IDF re-ranking needs the query's words (query by text or word counts)")
        if rerank and not self.index.has_words:
            raise ValueError("this index stores no word counts: encode with index.store_counts=true to re-rank")
        results = []
        if radius is not None:
            lims, D, I = self.index.address_lookup(q, radius)
            lists = [(D[lims[i]:lims[i + 1]], I[lims[i]:lims[i + 1]]) for i in range(len(q))]
        else:
            want = max(k, candidates) if rerank else k
            D, I = self.index.search(q, want)
            lists = [(D[i][I[i] >= 0], I[i][I[i] >= 0]) for i in range(len(q))]
        for qi, (d, i) in enumerate(lists):
            if rerank:
                sims = self._tfidf_cosine(query_vectors[qi], i)
                order = np.lexsort((d, -sims))
                order = order[:k] if k else order
                results.append([{"id": x, "distance": int(dd), "score": round(float(s), 6)}
                                for x, dd, s in zip(self.index.ids_of(i[order]), d[order], sims[order])])
            else:
                if k and radius is not None:
                    d, i = d[:k], i[:k]
                results.append([{"id": x, "distance": int(dd)} for x, dd in zip(self.index.ids_of(i), d)])
        return results

    def _tfidf_cosine(self, qvec: tuple[np.ndarray, np.ndarray], ordinals: np.ndarray) -> np.ndarray:
        idf = self.idf
        qi, qc = qvec
        qv = np.zeros(len(idf), dtype=np.float32)
        qv[qi] = qc * idf[qi]
        qv /= max(np.linalg.norm(qv), 1e-12)
        sims = np.zeros(len(ordinals), dtype=np.float32)
        for r, (wi, wc) in enumerate(self.index.word_counts_of(ordinals)):
            if len(wi):
                w = wc * idf[wi]
                sims[r] = float(qv[wi] @ w) / max(float(np.linalg.norm(w)), 1e-12)
        return sims
