"""POST /search: ids, texts, codes or word counts -> neighbours, with the version that answered."""
from __future__ import annotations

import time

from fastapi import APIRouter, Depends, HTTPException, status

from ..models import ErrorResponse, SearchRequest, SearchResponse
from ..runtime import NotReady, Service
from ..searcher import BatchTooLarge, Query, QueryError, Unavailable, UnknownId
from .deps import require_token, service

router = APIRouter()

_ERRORS = {401: {"model": ErrorResponse}, 403: {"model": ErrorResponse}, 404: {"model": ErrorResponse},
           413: {"model": ErrorResponse}, 422: {"model": ErrorResponse}, 503: {"model": ErrorResponse}}


@router.post("/search", response_model=SearchResponse, response_model_exclude_none=True, responses=_ERRORS,
             dependencies=[Depends(require_token)],
             summary="Nearest codes by Hamming distance (optionally re-ranked)")
def search(body: SearchRequest, svc: Service = Depends(service)) -> SearchResponse:
    t0 = time.perf_counter()
    q = Query(kind=body.kind, values=list(getattr(body, body.kind)), k=body.k, radius=body.radius,
              rerank=body.rerank, eps=body.eps, address_radius=body.address_radius)
    try:
        out = svc.search(q)
    except UnknownId as e:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(e)) from None
    except BatchTooLarge as e:
        raise HTTPException(status.HTTP_413_REQUEST_ENTITY_TOO_LARGE, str(e)) from None
    except QueryError as e:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_ENTITY, str(e)) from None
    except (Unavailable, NotReady) as e:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, str(e), headers={"Retry-After": "1"}) from None
    return SearchResponse(version=out.version, codes=out.codes, partial=out.partial,
                          missing_partitions=out.missing_partitions, truncated=out.truncated,
                          results=[[h.__dict__ for h in hits] for hits in out.results],
                          took_ms=round(1000 * (time.perf_counter() - t0), 3))
