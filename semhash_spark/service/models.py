"""Request and response bodies of the HTTP API (pydantic); kept apart from the search engine's own types."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

QUERY_FIELDS = ("ids", "texts", "codes", "word_counts", "images")


class SearchRequest(BaseModel):
    """Exactly one of ``ids``, ``texts``, ``codes``, ``word_counts``, ``images``; ``k``, ``radius`` and/or
    ``address_radius``."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"codes": ["a3f09c1d22e4b801"], "k": 10},
                {"texts": ["gpu drivers crash on resume"], "address_radius": 4, "k": 20, "rerank": "tfidf"},
                {"ids": ["doc-17"], "k": 5},
                {"codes": ["a3f09c1d22e4b801"], "k": 10, "eps": 0.2},
            ]
        },
    )

    ids: list[str] | None = Field(None, description="Document ids of this index: find their neighbours")
    texts: list[str] | None = Field(
        None, description="Raw texts, tokenised with the index's vocabulary and encoded with its model"
    )
    codes: list[str] | None = Field(None, description="Hex codes, 2*ceil(bits/8) digits, most significant bit first")
    word_counts: list[dict[str, float]] | None = Field(None, description="Bags of words: word -> count")
    images: list[str] | None = Field(
        None,
        description="Image files (PNG, JPEG, ...) as base64, for image indexes: "
        "resized and encoded with the index's model",
    )
    k: int | None = Field(
        None, description="Nearest neighbours to return (exact, Hamming distance of the ranking code)"
    )
    radius: int | None = Field(None, description="Hamming radius on the ranking code: every item within it")
    address_radius: int | None = Field(
        None,
        description="Hamming radius on the address code: the papers' lookup, "
        "every item whose address is within it, ordered by the "
        "ranking code",
    )
    eps: float = Field(
        0.0,
        description="k nearest only: 0 (default) is exact; eps > 0 stops early, each result "
        "within (1 + eps) times the true distance of its rank",
    )
    msh: bool = Field(
        False,
        description="images only: multiple semantic hashing (the 81 glimpses' patch codes "
        "vote; results by score, then ranking distance); with k alone",
    )
    details: bool = Field(
        False,
        description="Each hit also carries its stored labels and snippet (the first words "
        "of its text), when the index keeps them",
    )
    rerank: Literal["tfidf"] | None = Field(
        None,
        description="'tfidf': order the shortlist (address ball, radius ball, else the nearest candidates) by "
        "TF-IDF cosine of the items' words",
    )

    @model_validator(mode="after")
    def _one_kind(self) -> "SearchRequest":
        given = [f for f in QUERY_FIELDS if getattr(self, f) is not None]
        if len(given) != 1:
            raise ValueError(f"send exactly one of {list(QUERY_FIELDS)}; got {given or 'none'}")
        return self

    @property
    def kind(self) -> str:
        return next(f for f in QUERY_FIELDS if getattr(self, f) is not None)


class HitOut(BaseModel):
    id: str
    distance: int = Field(description="Hamming distance of the ranking code")
    score: float | None = Field(None, description="TF-IDF cosine (rerank='tfidf') or the glimpses' votes (msh)")
    address_distance: int | None = Field(
        None, description="Hamming distance of the address code (address_radius lookups only)"
    )
    labels: list[str] | None = Field(None, description="The item's labels (details=true, indexes that keep them)")
    snippet: str | None = Field(None, description="The first words of the item's text (details=true)")


class SearchResponse(BaseModel):
    version: str = Field(description="The index version that answered every query of this request")
    results: list[list[HitOut]] = Field(description="One list per query, nearest (or best scored) first")
    codes: list[str] = Field(description="Each query's code, hex")
    partial: bool = Field(False, description="Some partitions could not be read; see missing_partitions")
    missing_partitions: list[str] = []
    truncated: bool = Field(False, description="A radius-only query had more results than the service returns")
    took_ms: float


class HealthResponse(BaseModel):
    status: str
    version: str | None = None
    codes: int | None = None
    partitions: int | None = None
    cache_bytes: int | None = None
    cache_partitions: int | None = None
    last_poll_error: str | None = None
    refused: str | None = Field(
        None,
        description="Why the version CURRENT names is not served (it did not "
        "verify: a shard or model file differs from its manifest)",
    )


class ErrorResponse(BaseModel):
    detail: str
