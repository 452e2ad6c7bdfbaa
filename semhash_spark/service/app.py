"""The FastAPI application and the ``semhash serve`` entry point.

``build_app(settings)`` returns an app whose lifespan starts the :class:`~.runtime.Service` (and its follower of
CURRENT) and stops it; :func:`serve_main` is what the CLI calls; :func:`running_server` runs an app on a real
uvicorn server in a background thread (tests, benchmarks).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import socket
import threading
import time
from typing import Iterator, Sequence

from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from fastapi.responses import HTMLResponse

from .limits import GuardMiddleware
from .routes import health, search
from .runtime import Service
from .settings import Settings, SettingsError, add_serve_arguments, resolve_token, settings_from_args  # noqa: F401

log = logging.getLogger("semhash_spark.service")


def build_app(settings: Settings, service: Service | None = None) -> FastAPI:
    """The HTTP API over one index URI. The service starts with the app (lifespan) unless one is passed in."""
    svc = service or Service(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        svc.start()
        log.info("semhash service starting", extra={"settings": settings.public()})
        try:
            yield
        finally:
            svc.stop()

    app = FastAPI(
        title="semhash lookup service",
        version="1",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        description="Semantic hashing lookup over a published index: exact Hamming k-NN and range "
        "search, the papers' address lookup, TF-IDF re-ranking.",
    )
    app.state.service = svc
    _local_docs(app)
    app.include_router(search.router)
    app.include_router(health.router)
    _document_bearer(app)

    app.add_middleware(ObserveMiddleware, service=svc, settings=settings)
    app.add_middleware(GuardMiddleware, settings=settings)  # outermost: before any body is read
    return app


def _document_bearer(app: FastAPI) -> None:
    """The bearer token in the OpenAPI schema (Swagger's Authorize button): enforced by GuardMiddleware, so no
    route declares it as a dependency."""
    generate = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = generate()
            schemes = schema.setdefault("components", {}).setdefault("securitySchemes", {})
            schemes["HTTPBearer"] = {
                "type": "http",
                "scheme": "bearer",
                "description": "Required when the service was started with a token",
            }
        return app.openapi_schema

    app.openapi = openapi


class ObserveMiddleware:
    """Each request's time and status into the metrics, and the request log: a plain ASGI middleware (Starlette's
    ``@app.middleware("http")`` runs every request through an extra task and body stream)."""

    def __init__(self, app: ASGIApp, service: Service, settings: Settings):
        self.app, self.svc, self.settings = app, service, settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        status = 500  # unless a response starts: an exception escaped

        async def send_observed(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_observed)
        finally:
            dt = time.perf_counter() - t0
            path = getattr(scope.get("route"), "path", "other")  # the router sets the matched route in the scope
            self.svc.metrics.request_seconds.labels(path, str(status)).observe(dt)
            if self.settings.log_requests and path != "/metrics":
                v = self.svc.current
                log.info(
                    "request",
                    extra={
                        "method": scope["method"],
                        "path": path,
                        "status": status,
                        "ms": round(1000 * dt, 3),
                        "version": v.version if v else None,
                    },
                )


def _local_docs(app: FastAPI) -> None:
    """``/docs`` from assets served by this process (an air-gapped cluster reaches no CDN).

    With the ``swagger-ui-bundle`` package, the Swagger UI page with its bundled script and styles under
    ``/docs/static``; without it, a plain page pointing at ``/openapi.json``.
    """
    try:
        from swagger_ui_bundle import swagger_ui_path
    except ImportError:
        swagger_ui_path = None
    if swagger_ui_path is not None:
        from fastapi.openapi.docs import get_swagger_ui_html
        from fastapi.staticfiles import StaticFiles

        app.mount("/docs/static", StaticFiles(directory=str(swagger_ui_path)), name="swagger-ui")

        @app.get("/docs", include_in_schema=False)
        def docs() -> HTMLResponse:
            return get_swagger_ui_html(
                openapi_url=app.openapi_url,
                title=f"{app.title} - API",
                swagger_js_url="/docs/static/swagger-ui-bundle.js",
                swagger_css_url="/docs/static/swagger-ui.css",
                swagger_favicon_url="/docs/static/favicon-32x32.png",
            )

        return

    @app.get("/docs", include_in_schema=False)
    def docs_plain() -> HTMLResponse:
        return HTMLResponse(
            f"<!doctype html><title>{app.title}</title><h1>{app.title}</h1><p>The interactive "
            "page needs the swagger-ui-bundle package; the API description is at "
            f"<a href='{app.openapi_url}'>{app.openapi_url}</a>.</p>"
        )


# ---------------------------------------------------------------------------------------------- running


def serve_main(args: argparse.Namespace | Sequence[str] | None = None) -> int:
    """``semhash serve``: runs the service until interrupted. ``args`` from :func:`add_serve_arguments` (or argv)."""
    if args is None or not isinstance(args, argparse.Namespace):
        parser = add_serve_arguments(argparse.ArgumentParser(prog="semhash serve"))
        args = parser.parse_args(None if args is None else list(args))
    import uvicorn

    from .logs import configure

    level = getattr(args, "log_level", "info")
    configure(level)
    os.environ.setdefault("AWS_MAX_ATTEMPTS", "2")  # fail fast to partial answers; the follower retries
    settings = settings_from_args(args)
    uvicorn.run(
        build_app(settings),
        host=settings.host,
        port=settings.port,
        log_config=None,
        log_level=level.lower(),
        access_log=False,
    )
    return 0


@contextlib.contextmanager
def running_server(app: FastAPI, host: str = "127.0.0.1", port: int = 0, ready_timeout: float = 30.0) -> Iterator[str]:
    """Runs ``app`` on a real uvicorn server in a thread; yields its base URL; stops it on exit."""
    import uvicorn

    port = port or free_port(host)
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_config=None, access_log=False, lifespan="on"))
    thread = threading.Thread(target=server.run, name="semhash-uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + ready_timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError(f"uvicorn did not start on {host}:{port}")
        time.sleep(0.02)
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]
