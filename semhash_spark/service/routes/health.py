"""GET /healthz (200 once a version is loaded), GET /readyz (200 once it is loaded and warmed), GET /metrics."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Response, status

from ..models import HealthResponse
from ..runtime import Service
from .deps import service

router = APIRouter()


def _health(svc: Service, ok: bool, response: Response) -> HealthResponse:
    v = svc.current
    if not ok:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    return HealthResponse(
        status="ok" if ok else "loading",
        version=v.version if v else None,
        codes=v.count if v else None,
        partitions=v.npartitions if v else None,
        cache_bytes=svc.cache.bytes,
        cache_partitions=len(svc.cache),
        last_poll_error=svc.last_poll_error,
        refused=svc.refused,
    )


@router.get("/healthz", response_model=HealthResponse, summary="200 once an index version is loaded")
def healthz(response: Response, svc: Service = Depends(service)) -> HealthResponse:
    return _health(svc, svc.current is not None, response)


@router.get("/readyz", response_model=HealthResponse, summary="200 once a version is loaded and warmed")
def readyz(response: Response, svc: Service = Depends(service)) -> HealthResponse:
    """``refused`` says why the version CURRENT names is not served (the version loaded before goes on serving)."""
    return _health(svc, svc.ready and svc.current is not None, response)


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
def metrics(svc: Service = Depends(service)) -> Response:
    svc.metrics.cache_bytes.set(svc.cache.bytes)
    body, content_type = svc.metrics.exposition()
    return Response(content=body, media_type=content_type)
