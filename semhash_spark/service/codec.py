"""Request parsing and response encoding of ``POST /search`` without per-item model validation.

Two request bodies are accepted:

* ``application/json``: the :class:`~.models.SearchRequest` object, parsed with orjson; scalars are checked one by
  one, arrays as a whole (hex codes become one ``uint8`` array with one ``bytes.fromhex``).
* ``application/octet-stream``: bulk codes, ``n * code_bytes`` raw packed bytes (most significant bit first, as
  the hex codes), with ``k``, ``radius``, ``address_radius`` and ``eps`` as query parameters.

Responses are written with orjson from the search's plain lists and dicts (the shape of
:class:`~.models.SearchResponse`).
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np
import orjson

from semhash_spark import codes as C

from .models import QUERY_FIELDS
from .searcher import Outcome, Query, QueryError

JSON = "application/json"
OCTETS = "application/octet-stream"
_SCALARS = ("k", "radius", "address_radius", "eps", "rerank", "msh", "details")


def parse_json(body: bytes) -> Query:
    """A JSON search body -> :class:`Query`; :class:`QueryError` names the field at fault."""
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise QueryError(f"the body is not valid JSON: {e}") from None
    if not isinstance(obj, dict):
        raise QueryError(f"the body must be a JSON object, got {type(obj).__name__}")
    unknown = sorted(set(obj) - set(QUERY_FIELDS) - set(_SCALARS))
    if unknown:
        raise QueryError(f"unknown field(s) {unknown}: send one of {list(QUERY_FIELDS)} and {list(_SCALARS)}")
    given = [f for f in QUERY_FIELDS if obj.get(f) is not None]
    if len(given) != 1:
        raise QueryError(f"send exactly one of {list(QUERY_FIELDS)}; got {given or 'none'}")
    kind = given[0]
    values = obj[kind]
    if not isinstance(values, list):
        raise QueryError(f"{kind} must be a list, got {type(values).__name__}")
    rerank = obj.get("rerank")
    if rerank is not None and rerank != "tfidf":
        raise QueryError(f"rerank={rerank!r}: the one re-ranking is 'tfidf'")
    msh = obj.get("msh", False)
    if not isinstance(msh, bool):
        raise QueryError(f"msh={msh!r}: must be true or false")
    details = obj.get("details", False)
    if not isinstance(details, bool):
        raise QueryError(f"details={details!r}: must be true or false")
    return Query(
        kind=kind,
        values=values,
        k=_int(obj, "k"),
        radius=_int(obj, "radius"),
        address_radius=_int(obj, "address_radius"),
        eps=_eps(obj.get("eps", 0.0)),
        rerank=rerank,
        msh=msh,
        details=details,
    )


def parse_octets(body: bytes, params: Mapping[str, str]) -> Query:
    """Raw packed codes with the query's parameters in the URL -> :class:`Query` of kind ``codes`` whose values
    are ``uint8[n, code_bytes]`` (the code width is checked against the served version by the searcher)."""
    unknown = sorted(set(params) - {"k", "radius", "address_radius", "eps"})
    if unknown:
        raise QueryError(f"unknown query parameter(s) {unknown}: k, radius, address_radius, eps")
    vals: dict[str, Any] = {}
    for name in ("k", "radius", "address_radius"):
        if name in params:
            try:
                vals[name] = int(params[name])
            except ValueError:
                raise QueryError(f"{name}={params[name]!r} is not an integer") from None
    try:
        eps = float(params.get("eps", 0.0))
    except ValueError:
        raise QueryError(f"eps={params['eps']!r} is not a number") from None
    if not body:
        raise QueryError("codes is empty: send at least one query")
    return Query(kind="codes", values=np.frombuffer(body, dtype=np.uint8), eps=_eps(eps), **vals)


def codes_array(values, bits: int) -> np.ndarray:
    """Hex strings or raw packed bytes -> ``uint8[n, code_bytes]``, checked as a whole (width, hex digits, no bit
    set beyond ``bits``); the error names the first code at fault."""
    nb = C.code_bytes(bits)
    if isinstance(values, np.ndarray):
        if values.size % nb:
            raise QueryError(
                f"a binary body of {values.size} bytes is not a whole number of {bits}-bit codes ({nb} bytes each)"
            )
        out = values.reshape(-1, nb)
    else:
        width = 2 * nb
        if not all(type(h) is str and len(h) == width for h in values):
            for i, h in enumerate(values):  # slow path: only to name the first bad code
                if not isinstance(h, str):
                    raise QueryError(f"codes[{i}] must be a hex string, got {type(h).__name__}")
                try:
                    C.from_hex(h, bits)
                except ValueError as e:
                    raise QueryError(f"codes[{i}]: {e} (this index holds {bits}-bit codes)") from None
        try:
            out = np.frombuffer(bytes.fromhex("".join(values)), dtype=np.uint8).reshape(-1, nb)
        except ValueError:
            for i, h in enumerate(values):
                try:
                    C.from_hex(h, bits)
                except ValueError as e:
                    raise QueryError(f"codes[{i}]: {e} (this index holds {bits}-bit codes)") from None
            raise QueryError("codes: not hex") from None
    spare = 8 * nb - bits
    if spare:
        bad = np.flatnonzero(out[:, -1] & ((1 << spare) - 1))
        if bad.size:
            raise QueryError(f"codes[{bad[0]}] has bits set beyond its {bits} bits")
    return out


def encode(out: Outcome, took_ms: float) -> bytes:
    """The response body (the shape of :class:`~.models.SearchResponse`, ``None`` fields left out)."""
    body: dict[str, Any] = {
        "version": out.version,
        "results": out.results,
        "codes": out.codes,
        "partial": out.partial,
        "missing_partitions": out.missing_partitions,
        "truncated": out.truncated,
        "took_ms": took_ms,
    }
    return orjson.dumps(body)


def _int(obj: dict, name: str) -> int | None:
    v = obj.get(name)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int):
        raise QueryError(f"{name}={v!r}: must be an integer")
    return v


def _eps(v) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
        raise QueryError(f"eps={v!r}: must be a finite number >= 0 (0: exact)")
    return float(v)
