"""HTTP plumbing shared by the contracts: JSON bodies, size limits, access log.

Both middlewares are plain ASGI (no ``BaseHTTPMiddleware``): they add a few
microseconds per request, which matters for the single start/complete path.
"""
from __future__ import annotations

import asyncio
import hmac
import os
import time
from typing import Any, Awaitable, Callable, Sequence

import orjson
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from engine.errors import EngineError, Forbidden, InvalidInput

from .logs import iso_ms

PIPE_BUF = 4096  # POSIX: a write of at most this many bytes to a pipe is atomic (Linux: 4096)
MAX_BODY = 1024 * 1024  # spec: bodies over 1 MiB -> 413
MAX_BULK_BODY = 256 * 1024 * 1024  # bulk imports: 100,000 tasks of ~2 KB (documented in the README)


class PayloadTooLarge(EngineError):
    code = "payload_too_large"


class Unauthorized(EngineError):
    code = "unauthorized"


LOOPBACK = ("127.0.0.1", "::1", "localhost", "testclient")


def is_loopback(request: Request) -> bool:
    """Whether the client is on this machine (what the API answers when no token is configured)."""
    return bool(request.client) and request.client.host in LOOPBACK


def require_bearer(request: Request, token: str, setting: str, what: str, refused: str,
                   also: Callable[[Request, str], bool] | None = None) -> None:
    """The operator-style auth every token-guarded API shares: with ``token`` set,
    ``Authorization: Bearer <token>`` (compared in constant time), or another credential
    ``also(request, token)`` accepts (the dashboard's session cookie), or Unauthorized(``refused``);
    unset, loopback clients only (Forbidden naming ``setting``)."""
    if token:
        given = request.headers.get("authorization", "")
        if not (given.startswith("Bearer ") and hmac.compare_digest(given[7:].encode(), token.encode())
                or also is not None and also(request, token)):
            raise Unauthorized(refused)
    elif not is_loopback(request):
        raise Forbidden(f"{setting} is not set: {what} only answers loopback clients")


class JSON(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return content if isinstance(content, bytes) else orjson.dumps(content)


class Fixed(JSON):
    """A constant JSON answer whose body and headers are rendered once, when the class is
    made (``Fixed.of``): start, complete and fail all answer ``{"success":true}``, and
    ``Response.__init__`` (render, then encode the headers) was 0.77 us of each such
    request against 0.18 us for this. Each instance gets its own copy of the header list,
    so that a middleware adding a header changes only its own response."""

    _fixed_headers: list[tuple[bytes, bytes]] = []

    def __init__(self) -> None:  # noqa: D107 - everything was rendered by ``of``
        self.raw_headers = list(self._fixed_headers)

    @classmethod
    def of(cls, body: bytes, status_code: int = 200) -> type["Fixed"]:
        template = JSON(body, status_code=status_code)
        return type("FixedAnswer", (cls,), {"body": template.body, "status_code": status_code, "background": None,
                                            "_fixed_headers": template.raw_headers})


async def read_body(request: Request, limit: int = MAX_BODY) -> bytes:
    """The request body, read once from ASGI ``receive`` (what ``Request.stream()`` does,
    without an async generator: the event loop registers each one in a WeakSet, about a
    microsecond of a hot request). Raises PayloadTooLarge past ``limit`` bytes, and
    Starlette's ClientDisconnect if the client goes away first."""
    chunks: list[bytes] = []
    size = 0
    receive = request.receive
    while True:
        message = await receive()
        if message["type"] == "http.request":
            chunk = message.get("body", b"")
            if chunk:
                chunks.append(chunk)
                size += len(chunk)
                if size > limit:
                    raise PayloadTooLarge(f"request body exceeds {limit} bytes")
            if not message.get("more_body", False):
                break
        elif message["type"] == "http.disconnect":
            raise ClientDisconnect()
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)  # joined once: no quadratic copies of 100 MB imports


async def read_json(request: Request, limit: int = MAX_BODY, required: bool = True) -> Any:
    """The request body as JSON; ``{}`` for an empty optional body. Raises InvalidInput/PayloadTooLarge."""
    body = await read_body(request, limit)
    if not body.strip():
        if required:
            raise InvalidInput("a JSON body is required")
        return {}
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"malformed JSON: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidInput("the JSON body must be an object")
    return data


ErrorRenderer = Callable[[Request, Exception], Awaitable[Response]]


class BodyLimit:
    """Refuse a declared Content-Length over the limit before any handler runs."""

    def __init__(self, app: ASGIApp, render: Callable[[Scope, EngineError], Response],
                 bulk_prefixes: tuple[str, ...] = ()) -> None:
        self.app = app
        self.render = render
        self.bulk_prefixes = bulk_prefixes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            refusal = oversized(scope, self.render, self.bulk_prefixes)
            if refusal is not None:
                await refusal(scope, receive, send)
                return
        await self.app(scope, receive, send)


def oversized(scope: Scope, render: Callable[[Scope, EngineError], Response],
              bulk_prefixes: tuple[str, ...] = ()) -> Response | None:
    """The 413 for an HTTP request whose declared Content-Length is over its limit
    (``MAX_BULK_BODY`` under ``bulk_prefixes``, else ``MAX_BODY``), else None."""
    limit = MAX_BULK_BODY if scope["path"].startswith(bulk_prefixes) else MAX_BODY
    for name, value in scope["headers"]:
        if name == b"content-length" and value.isdigit() and int(value) > limit:
            return render(scope, PayloadTooLarge(f"request body exceeds {limit} bytes"))
    return None


def access_log_enabled() -> bool:
    """``TASKHUB_ACCESS_LOG`` (default on, spec README): ``0`` switches the access log off."""
    return os.environ.get("TASKHUB_ACCESS_LOG", "1").strip().lower() not in ("0", "false", "no", "off")


Observer = Callable[[Scope, int, float], None]


class Timed:
    """Times every HTTP request once and hands ``(scope, status, seconds)`` to each observer.

    The access log and the per-route latency histogram (api/metrics.py) both
    need the status and the duration; one plain-ASGI layer with one timer and
    one ``send`` wrapper serves both, instead of a middleware each on the
    start/complete hot path. The scope it passes carries the matched ``route``
    and the caller that handlers leave in ``state``. Observers must be cheap
    and must not raise.
    """

    def __init__(self, app: ASGIApp, observers: Sequence[Observer]) -> None:
        self.app = app
        self.observers = tuple(observers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            seconds = time.perf_counter() - started
            for observe in self.observers:
                observe(scope, status, seconds)


class AccessLog:
    """One line per request: time, method, path, status, duration, caller (never a key or token).

    Written with ``os.write`` to stderr rather than through ``logging``: a
    LogRecord, a formatter and a lock cost more than the rest of a
    start/complete request's Python work (BENCHMARKS.md, HTTP section). The
    lines of the requests that end in one event-loop tick are written together
    at the end of it (``call_soon``), in writes of whole lines of at most
    ``PIPE_BUF`` bytes: a write that size to a pipe is atomic, so the lines of
    several web workers sharing honcho's pipe never interleave mid-line, and a
    busy worker makes one write per tick instead of one per request. Outside an
    event loop a line is written at once. The timestamp is formatted once per second. With ``TASKHUB_LOG_FORMAT=json``
    (``api/logs.py``) the line is one JSON object: ``ts`` (milliseconds),
    ``level``, ``logger``, ``msg``, ``method``, ``path``, ``status``, ``ms``,
    ``caller``; orjson encodes it in about a microsecond.
    """

    def __init__(self, write: Callable[[bytes], Any] | None = None, fmt: str | None = None) -> None:
        from .logs import log_format

        self.write = write or (lambda line: os.write(2, line))
        self.json = (fmt or log_format()) == "json"
        self._lines: list[bytes] = []
        self._size = 0
        self._stamp: tuple[int, str] = (-1, "")

    def _now(self) -> str:
        """The text line's timestamp, whole seconds: the one ISO-8601 formatter
        (``engine.service.iso_ms``) without the milliseconds, derived once per second
        (deriving it per line was 0.76 us of a line's 1.9 us). One tuple, read once."""
        second = int(time.time())
        stamp = self._stamp
        if stamp[0] != second:
            stamp = self._stamp = (second, iso_ms(second)[:-5] + "Z")
        return stamp[1]

    def _json(self, method: str, path: str, status: int, ms: float, caller: str) -> bytes:
        return orjson.dumps({"ts": iso_ms(time.time()), "level": "INFO", "logger": "taskhub.access",
                             "msg": f"{method} {path} {status}", "method": method, "path": path,
                             "status": status, "ms": round(ms, 1), "caller": caller}) + b"\n"

    def __call__(self, scope: Scope, status: int, seconds: float) -> None:
        """An observer of ``Timed``: writes the request's line."""
        caller = scope.get("state", {}).get("caller", "-")
        ms = seconds * 1000
        if self.json:
            data = self._json(scope["method"], scope["path"], status, ms, caller)
        else:
            data = (f"{self._now()} access {scope['method']} {scope['path']} {status} {ms:.1f}ms {caller}\n"
                    ).encode(errors="replace")
        if self._size + len(data) > PIPE_BUF and self._lines:
            self.flush()
        if not self._lines:
            try:
                asyncio.get_running_loop().call_soon(self.flush)
            except RuntimeError:  # no event loop: at once
                self._emit(data)
                return
        self._lines.append(data)
        self._size += len(data)

    def flush(self) -> None:
        """Write the lines held so far (at most ``PIPE_BUF`` bytes, whole lines)."""
        if self._lines:
            data = b"".join(self._lines)
            self._lines, self._size = [], 0
            self._emit(data)

    def _emit(self, data: bytes) -> None:
        try:
            self.write(data)
        except OSError:  # a closed or full stderr must not fail the request
            pass
