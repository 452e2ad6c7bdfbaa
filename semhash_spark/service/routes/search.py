"""POST /search: ids, texts, codes or word counts -> neighbours, with the version that answered.

The body is parsed and the response written by :mod:`..codec` (orjson; arrays checked as a whole, not item by
item); ``application/octet-stream`` bodies carry raw packed codes with the parameters in the URL. The search
itself runs in the thread pool: its compiled loops release the GIL, so requests overlap.
"""

from __future__ import annotations

import time

from fastapi import APIRouter, HTTPException, Request, Response, status
from starlette.concurrency import run_in_threadpool

from .. import codec
from ..models import ErrorResponse, SearchRequest, SearchResponse
from ..runtime import NotReady, Service
from ..searcher import BatchTooLarge, QueryError, Unavailable, UnknownId

router = APIRouter()
_INLINE = 64  # hex codes (or packed bytes) up to which a request is answered on the event loop

_ERRORS = {
    401: {"model": ErrorResponse},
    403: {"model": ErrorResponse},
    404: {"model": ErrorResponse},
    413: {"model": ErrorResponse},
    415: {"model": ErrorResponse},
    422: {"model": ErrorResponse},
    503: {"model": ErrorResponse},
}

_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            codec.JSON: {"schema": SearchRequest.model_json_schema(ref_template="#/components/schemas/{model}")},
            codec.OCTETS: {
                "schema": {
                    "type": "string",
                    "format": "binary",
                    "description": "codes only: n * code_bytes raw packed codes; k, radius, "
                    "address_radius, eps as query parameters",
                }
            },
        },
    }
}


@router.post(
    "/search",
    response_model=SearchResponse,
    responses=_ERRORS,
    openapi_extra={**_BODY, "security": [{"HTTPBearer": []}]},  # the token: GuardMiddleware checks it
    summary="Nearest codes by Hamming distance (optionally re-ranked)",
)
async def search(request: Request) -> Response:
    """No FastAPI dependencies: solving them was the largest part of a small request's cost."""
    t0 = time.perf_counter()
    svc: Service = request.app.state.service
    body = await request.body()
    ctype = request.headers.get("content-type", codec.JSON).split(";")[0].strip().lower()
    try:
        if ctype == codec.OCTETS:
            q = codec.parse_octets(body, request.query_params)
        elif ctype in (codec.JSON, "") or ctype.endswith("+json"):
            q = codec.parse_json(body)
        else:
            raise HTTPException(
                status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
                f"content-type {ctype!r}: send {codec.JSON} or {codec.OCTETS} (packed codes)",
            )
        if q.kind == "codes" and len(q.values) <= _INLINE and _all_loaded(svc):
            out = svc.search(q)  # a few codes, nothing to read: cheaper than a hop to the thread pool
        else:
            out = await run_in_threadpool(svc.search, q)
    except UnknownId as e:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(e)) from None
    except BatchTooLarge as e:
        raise HTTPException(status.HTTP_413_REQUEST_ENTITY_TOO_LARGE, str(e)) from None
    except QueryError as e:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_ENTITY, str(e)) from None
    except (Unavailable, NotReady) as e:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, str(e), headers={"Retry-After": "1"}) from None
    return Response(codec.encode(out, round(1000 * (time.perf_counter() - t0), 3)), media_type=codec.JSON)


def _all_loaded(svc: Service) -> bool:
    """Every partition of the served version is in its search structure (a search reads nothing)."""
    v = svc.current
    return v is not None and len(v.current_structure().numbers) == v.npartitions
