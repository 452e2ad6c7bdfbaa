"""Request bounds, enforced before the work is done: authentication before the body is read, a body-size limit
counted while the body arrives, a decoded-pixel limit read from image headers, and a per-request work limit.

:class:`GuardMiddleware` is pure ASGI (it sees the raw ``receive`` stream, so a 1 GB body is refused after
``max_body_bytes`` bytes, never buffered); :func:`check_work` and :func:`check_image_sizes` run on the parsed
request before the search starts. Every refusal names the limit and the setting that raises it.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import secrets
import warnings

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .settings import Settings

# Paths whose requests carry no body and no query data: served without a token (probes, metrics, the API page).
OPEN_PATHS = ("/healthz", "/readyz", "/metrics", "/docs", "/openapi.json", "/docs/")


class LimitExceeded(ValueError):
    """A request asks for more than a configured limit; ``status`` is 413 or 422."""

    def __init__(self, message: str, status: int = 413):
        super().__init__(message)
        self.status = status


class GuardMiddleware:
    """Bearer token before the body, then the body counted as it arrives (413 past ``max_body_bytes``)."""

    def __init__(self, app: ASGIApp, settings: Settings):
        self.app, self.settings = app, settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", ())}
        path = scope.get("path", "")
        token = self.settings.token
        if token is not None and not path.startswith(OPEN_PATHS):
            auth = headers.get("authorization", "")
            scheme, _, given = auth.partition(" ")
            if scheme.lower() != "bearer" or not given.strip():
                await _reply(
                    send, 401, "missing bearer token (Authorization: Bearer <token>)", {"www-authenticate": "Bearer"}
                )
                await _drain(receive)
                return
            if not secrets.compare_digest(given.strip().encode(), token.encode()):
                await _reply(send, 403, "wrong bearer token")
                await _drain(receive)
                return
        limit = self.settings.max_body_bytes
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await _reply(send, 413, _too_large(int(declared), limit))
            await _drain(receive)
            return
        seen, started, refused = 0, False, False

        async def counted() -> Message:
            nonlocal seen, refused
            message = await receive()
            if message["type"] == "http.request" and not refused:
                seen += len(message.get("body", b""))
                if seen > limit:
                    refused = True
                    if not started:
                        await _reply(send, 413, _too_large(seen, limit, streamed=True))
                    if message.get("more_body"):
                        await _drain(receive)
                    return {"type": "http.disconnect"}  # the app stops reading; its own answer is dropped
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if refused:
                return
            started = True
            await send(message)

        await self.app(scope, counted, guarded_send)


DRAIN_BYTES = 16 << 20  # after a refusal, this much more of the body is read and dropped
DRAIN_SECONDS = 2.0


async def _drain(receive: Receive) -> None:
    """Reads and drops what the client is still sending (bounded in bytes and time), so that closing the connection
    does not reset it before the client has read the refusal; nothing is kept."""
    import anyio

    dropped = 0
    with anyio.move_on_after(DRAIN_SECONDS):
        while dropped < DRAIN_BYTES:
            message = await receive()
            if message["type"] != "http.request":
                return
            dropped += len(message.get("body", b""))
            if not message.get("more_body"):
                return


def _too_large(n: int, limit: int, streamed: bool = False) -> str:
    what = f"over {limit} bytes arrived" if streamed else f"{n} bytes"
    return (
        f"request body too large ({what}); the limit is max_body_bytes={limit} "
        "(semhash serve --max-body-bytes): split the batch"
    )


async def _reply(send: Send, status: int, detail: str, headers: dict[str, str] | None = None) -> None:
    body = json.dumps({"detail": detail}).encode()
    raw = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
    ]
    raw += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


def work_units(n_queries: int, k: int | None, rerank: str | None, settings: Settings) -> int:
    """Queries x the candidates each may return (k, else max_results), or the TF-IDF shortlist if larger."""
    per = k if k is not None else settings.max_results
    if rerank == "tfidf":
        per = max(per, settings.rerank_candidates)
    return n_queries * per


def check_work(kind: str, values: list, k: int | None, rerank: str | None, settings: Settings) -> None:
    """Raises :class:`LimitExceeded` when a request would cost more than the settings allow."""
    units = work_units(len(values), k, rerank, settings)
    if units > settings.max_work:
        raise LimitExceeded(
            f"{len(values)} queries x {units // max(1, len(values))} candidates each = {units} exceeds "
            f"max_work={settings.max_work} (queries x k, or x max_results without k): split the batch or lower k"
        )
    if kind == "texts":
        for i, t in enumerate(values):
            if isinstance(t, str) and len(t) > settings.max_text_chars:
                raise LimitExceeded(
                    f"texts[{i}] has {len(t)} characters; the limit is max_text_chars={settings.max_text_chars}", 422
                )
    if kind == "images":
        check_image_sizes(values, settings.max_image_pixels)


def check_image_sizes(values: list, max_pixels: int) -> None:
    """Reads each image's header only (Pillow opens lazily) and refuses one of more than ``max_pixels`` pixels."""
    from PIL import Image

    for i, x in enumerate(values):
        if not isinstance(x, str):
            continue  # the searcher names the type error
        try:
            raw = base64.b64decode(x, validate=True)
        except (binascii.Error, ValueError):
            continue  # the searcher names the encoding error
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                with Image.open(io.BytesIO(raw)) as img:  # header only: no pixel is decoded here
                    w, h = img.size
        except Image.DecompressionBombError:
            raise LimitExceeded(
                f"images[{i}] is a decompression bomb (over Pillow's pixel limit); the limit is "
                f"max_image_pixels={max_pixels}"
            ) from None
        except Exception:  # noqa: BLE001 - not an image: the searcher's decoder says why
            continue
        if w * h > max_pixels:
            raise LimitExceeded(f"images[{i}] is {w}x{h} = {w * h} pixels; the limit is max_image_pixels={max_pixels}")
