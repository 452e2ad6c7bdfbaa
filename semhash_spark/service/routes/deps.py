"""Dependencies shared by routes: the running service and the optional bearer token."""

from __future__ import annotations

import secrets

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from ..runtime import Service

_bearer = HTTPBearer(auto_error=False, description="Required when the service was started with a token")


async def service(request: Request) -> Service:  # async: no thread-pool hop per request
    return request.app.state.service


async def require_token(
    svc: Service = Depends(service), creds: HTTPAuthorizationCredentials | None = Depends(_bearer)
) -> None:
    token = svc.settings.token
    if token is None:
        return
    if creds is None or creds.scheme.lower() != "bearer":
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "missing bearer token (Authorization: Bearer <token>)",
            headers={"WWW-Authenticate": "Bearer"},
        )
    if not secrets.compare_digest(creds.credentials.encode(), token.encode()):
        raise HTTPException(status.HTTP_403_FORBIDDEN, "wrong bearer token")
