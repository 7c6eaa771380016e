"""Hot routes: the worker-facing stacking endpoints, dispatched without Starlette's router.

Why: a worker's start/complete/fail/heartbeat is one Redis script; the Python
around it is the cost. Starlette's router tries each of ~100 routes' regexes
in turn and every request then passes through its exception middleware, the
exception-handling wrapper and ``request_response``, each adding a coroutine
and a ``send`` wrapper (measured with py-spy in BENCHMARKS.md, "HTTP
single-task endpoints"). This layer sits inside the app's other middleware
(``Timed``, ``BodyLimit``, and Starlette's ``ServerErrorMiddleware`` outside
them, so the access log, metrics, body limit and the 500 envelope are the
same) and, for a request whose method and path fit one of its routes,
calls that route's own handler with a Starlette ``Request`` and renders an
exception with the app's own handler for it. The routes stay declared in
Starlette (``api/stacking.py``): the OpenAPI document, ``url_path_for`` and
every request this layer does not take (HEAD, other methods, a ``root_path``)
go through the router exactly as before.

A route template may have at most one ``{param}`` (the ``str`` convertor: one
non-empty path segment), which is what the hot routes have; matching is a
prefix and suffix test, equivalent to Starlette's ``[^/]+`` regex.
"""
from __future__ import annotations

from typing import Any, Awaitable, Callable, Mapping, Sequence

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

Handler = Callable[[Request, Exception], Awaitable[Response]]


class _Shape:
    """One route as a literal prefix, an optional path parameter and a literal suffix."""

    __slots__ = ("route", "prefix", "param", "suffix")

    def __init__(self, route: Route) -> None:
        path = route.path
        self.route = route
        if "{" not in path:
            self.prefix, self.param, self.suffix = path, "", ""
            return
        head, _, rest = path.partition("{")
        spec, _, tail = rest.partition("}")
        name, _, convertor = spec.partition(":")
        if "{" in tail or convertor not in ("", "str"):
            raise ValueError(f"hot route {path!r}: at most one {{param}} of the str convertor")
        self.prefix, self.param, self.suffix = head, name, tail

    def match(self, path: str) -> dict[str, str] | None:
        if not self.param:
            return {} if path == self.prefix else None
        if not (path.startswith(self.prefix) and path.endswith(self.suffix)):
            return None
        value = path[len(self.prefix):len(path) - len(self.suffix)]
        if not value or "/" in value:
            return None
        return {self.param: value}


class HotRoutes:
    """ASGI middleware: serve ``routes`` directly, hand everything else to the app it wraps."""

    def __init__(self, app: ASGIApp, routes: Sequence[Route], handlers: Mapping[Any, Handler]) -> None:
        self.app = app
        self.by_method: dict[str, list[_Shape]] = {}
        for route in routes:
            for method in route.methods or ():
                if method != "HEAD":  # Starlette answers HEAD of a GET route without a body: left to it
                    self.by_method.setdefault(method, []).append(_Shape(route))
        # Most specific first: a longer literal suffix before a shorter one (``/links/{id}/start`` before ``/links/{id}``).
        for shapes in self.by_method.values():
            shapes.sort(key=lambda s: (-len(s.suffix), -len(s.prefix)))
        # Exception (the 500 handler) is ServerErrorMiddleware's, as in Starlette: not taken here.
        self.handlers = {cls: h for cls, h in handlers.items() if isinstance(cls, type) and cls is not Exception}

    def _handler(self, exc: Exception) -> Handler | None:
        for cls in type(exc).__mro__:
            handler = self.handlers.get(cls)
            if handler is not None:
                return handler
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not scope.get("root_path"):
            path = scope["path"]
            for shape in self.by_method.get(scope["method"], ()):
                params = shape.match(path)
                if params is not None:
                    route = shape.route
                    scope["route"], scope["endpoint"], scope["path_params"] = route, route.endpoint, params
                    request = Request(scope, receive, send)
                    try:
                        response = await route.endpoint(request)
                    except Exception as exc:
                        handler = self._handler(exc)
                        if handler is None:
                            raise  # to ServerErrorMiddleware: the app's 500 envelope
                        response = await handler(request, exc)
                    await response(scope, receive, send)
                    return
        await self.app(scope, receive, send)
