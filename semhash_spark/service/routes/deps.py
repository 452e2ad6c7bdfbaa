"""Dependencies shared by routes: the running service. The bearer token is checked by
:class:`..limits.GuardMiddleware` before any route runs (and documented in the OpenAPI schema by the app)."""

from __future__ import annotations

from fastapi import Request

from ..runtime import Service


async def service(request: Request) -> Service:  # async: no thread-pool hop per request
    return request.app.state.service
