"""Queries against a published index: text -> codes with the index's own models, then :mod:`semhash_spark.index.query`.

The library face of the one query module (``semhash query --index`` and ``Searcher``): ``k`` nearest by the ranking
code, ``radius`` the ranking-code ball, ``address_radius`` the papers' address ball (20-bit address, radius 4),
``rerank="tfidf"`` the shortlist ordered by TF-IDF cosine on the stored word counts (sec. 4.3 of the paper). The
service answers the same parameters with the same meaning and the same ``{"id", "distance"[, "score"]}`` hits
(address lookups add ``address_distance``; ``details=True`` adds the stored ``labels`` and ``snippet``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from semhash_spark import codes as C
from semhash_spark.data import dataset as ds
from semhash_spark.index import query as Q
from semhash_spark.models.inference import Encoder
from semhash_spark.config import PrepareConfig
from semhash_spark.index.published import HammingIndex, load_version_model, read_current

ADDRESS_MODEL_DIR = "address_model"


@dataclass
class Searcher:
    index: HammingIndex
    hasher: Encoder  # the version's model, in numpy (no torch in a lookup process)
    address_hasher: Encoder | None = None  # the address model, when the index has one

    @classmethod
    def open(cls, index_uri: str, version: str | None = None) -> "Searcher":
        version = version or read_current(index_uri)["version"]
        index = HammingIndex.open(index_uri, version=version)
        hasher = load_version_model(index_uri, version, index.manifest)  # checked against the manifest
        address_hasher = None
        if index.address_from_model:
            address_hasher = load_version_model(
                index_uri, version, index.manifest, index.manifest["address_model"].get("path") or ADDRESS_MODEL_DIR
            )
        return cls(index, hasher, address_hasher)

    @property
    def vocab_index(self) -> dict[str, int]:
        if not hasattr(self, "_vocab_index"):
            self._vocab_index = {w: i for i, w in enumerate(self.hasher.vocab)}
        return self._vocab_index

    @property
    def idf(self) -> np.ndarray | None:
        return Q.idf_of(self.hasher.meta.get("vocab"))

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

    def _dense(self, vecs) -> np.ndarray:
        dense = np.zeros((len(vecs), len(self.hasher.vocab)), dtype=np.float32)
        for r, (ids, counts) in enumerate(vecs):
            dense[r, ids] = counts
        return dense

    def encode_counts(self, vecs: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
        return self.hasher.codes(self._dense(vecs))

    def address_counts(self, vecs: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray | None:
        """Address codes (``uint64``) of bags of words with the address model; None without one."""
        if self.address_hasher is None:
            return None
        return C.prefix(self.address_hasher.codes(self._dense(vecs)), self.address_hasher.bits)

    def search_texts(
        self,
        texts: list[str],
        *,
        radius: int | None = None,
        k: int | None = 10,
        address_radius: int | None = None,
        rerank: str | None = None,
        candidates: int = 100,
        max_results: int | None = None,
        details: bool = False,
    ) -> list[list[dict[str, Any]]]:
        vecs = self.vectorize(texts)
        return self.search_codes(
            self.encode_counts(vecs),
            radius=radius,
            k=k,
            address_radius=address_radius,
            rerank=rerank,
            query_vectors=vecs,
            candidates=candidates,
            addresses=self.address_counts(vecs),
            max_results=max_results,
            details=details,
        )

    def search_codes(
        self,
        q: np.ndarray,
        *,
        radius: int | None = None,
        k: int | None = 10,
        address_radius: int | None = None,
        rerank: str | None = None,
        query_vectors=None,
        candidates: int = 100,
        addresses: np.ndarray | None = None,
        eps: float = 0.0,
        max_results: int | None = None,
        details: bool = False,
    ) -> list[list[dict[str, Any]]]:
        """Hits ``[{"id", "distance"[, "address_distance"][, "score"]}]`` per query (the shape of ``POST /search``
        results). ``max_results``: keep a ball's nearest that many (the service's ``max_results``); None: all.
        ``details``: each hit also carries its stored ``labels`` and ``snippet`` (indexes that keep them)."""
        return [
            a.hits()
            for a in self.answer(
                q,
                radius=radius,
                k=k,
                address_radius=address_radius,
                rerank=rerank,
                query_vectors=query_vectors,
                candidates=candidates,
                addresses=addresses,
                eps=eps,
                max_results=max_results,
                details=details,
            )
        ]

    def answer(
        self,
        q: np.ndarray,
        *,
        radius=None,
        k=10,
        address_radius=None,
        rerank=None,
        query_vectors=None,
        candidates: int = 100,
        addresses=None,
        eps: float = 0.0,
        max_results: int | None = None,
        details: bool = False,
    ) -> list[Q.Answer]:
        q = C.as_codes(q, self.index.bits)
        Q.check(k, radius, address_radius, rerank, eps, self.index.address_bits)
        if rerank and query_vectors is None:
            raise Q.QueryError("TF-IDF re-ranking needs the query's words (query by text or word counts)")
        if rerank and not self.index.has_words:
            raise Q.QueryError("this index stores no word counts: encode with index.store_counts=true to re-rank")
        qa = None
        if address_radius is not None:
            qa = self.index.query_addresses(q, addresses)
        if k is not None and radius is None and address_radius is None and not rerank:
            loaded, _ = self.index._knn_rings(q, k)  # reads rings of partitions only as far as needed
        else:
            need = Q.needed_partitions(
                self.index.manifest, self.index._part_vals, q, qa, k=k, radius=radius, address_radius=address_radius
            )
            loaded = self.index.loaded(need)
        return Q.answer(
            loaded,
            q,
            k=k,
            radius=radius,
            address_radius=address_radius,
            q_address=qa,
            rerank=rerank,
            bags=query_vectors,
            idf=self.idf,
            candidates=candidates,
            eps=eps,
            max_results=max_results,
            details=details,
        )
