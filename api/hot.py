"""Hot routes: the worker-facing stacking endpoints, dispatched in front of the app's middleware.

Why: a worker's start/complete/fail/heartbeat is one Redis script; the Python
around it is the cost. Starlette's router tries each of ~100 routes' regexes
in turn and every request then passes through its exception middleware, the
exception-handling wrapper and ``request_response``, each adding a coroutine
and a ``send`` wrapper (measured with py-spy in BENCHMARKS.md, "HTTP
single-task endpoints"). The layers outside the router cost as much again:
Starlette's ``ServerErrorMiddleware``, ``BodyLimit`` and ``Timed`` (whose
``send`` wrapper exists only to learn the status) were a quarter of a complete
request's instructions in the web process (``bench/app_instructions.py``).

So this is the app's outermost layer (``create_app`` puts it in front of the
middleware stack Starlette builds; ``Starlette.__call__`` still sets
``scope["app"]``). For a request whose method and path fit one of its routes
it does what those layers would, in one frame: the declared body size check
(``api.http.oversized``, the same 413, answered before a route is matched, so
it is counted unmatched as before), the route's own handler with a Starlette
``Request``, an exception rendered by the app's own handler for it,
an unexpected one by the app's 500 handler, sent and then raised, as
``ServerErrorMiddleware`` does, and the observers of ``Timed`` (access log,
latency histogram) called with the status sent and the duration. The routes
stay declared in Starlette (``api/stacking.py``): the OpenAPI document,
``url_path_for`` and every request this layer does not take (lifespan, HEAD,
other methods, a ``root_path``) go through the full stack exactly as before.

A route template may have at most one ``{param}`` (the ``str`` convertor: one
non-empty path segment), which is what the hot routes have; matching is a
prefix and suffix test, equivalent to Starlette's ``[^/]+`` regex.
"""
from __future__ import annotations

import time
from typing import Any, Awaitable, Callable, Mapping, Sequence

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from .http import Observer

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
    """ASGI app: serve ``routes`` itself, hand everything else to ``app`` (the middleware stack)."""

    def __init__(self, app: ASGIApp, routes: Sequence[Route], handlers: Mapping[Any, Handler],
                 observers: Sequence[Observer] = (), body_limit: Callable[[Scope], Response | None] | None = None
                 ) -> None:
        self.app = app
        self.by_method: dict[str, list[_Shape]] = {}
        for route in routes:
            for method in route.methods or ():
                if method != "HEAD":  # Starlette answers HEAD of a GET route without a body: left to it
                    self.by_method.setdefault(method, []).append(_Shape(route))
        # Most specific first: a longer literal suffix before a shorter one (``/links/{id}/start`` before ``/links/{id}``).
        for shapes in self.by_method.values():
            shapes.sort(key=lambda s: (-len(s.suffix), -len(s.prefix)))
        # Exception (the 500 handler) is kept apart: it answers what no other handler takes, then the error is raised.
        self.handlers = {cls: h for cls, h in handlers.items() if isinstance(cls, type) and cls is not Exception}
        self.unexpected = handlers.get(Exception)
        self.observers = tuple(observers)
        self.body_limit = body_limit

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
                    await self._serve(shape.route, params, scope, receive, send)
                    return
        await self.app(scope, receive, send)

    async def _serve(self, route: Route, params: dict[str, str], scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        status, sending = 500, False
        try:
            # The size check first, as BodyLimit runs before the router: a 413 is counted unmatched.
            response = self.body_limit(scope) if self.body_limit is not None else None
            if response is None:
                scope["route"], scope["endpoint"], scope["path_params"] = route, route.endpoint, params
                request = Request(scope, receive, send)
                try:
                    response = await route.endpoint(request)
                except Exception as exc:
                    handler = self._handler(exc)
                    if handler is None:
                        raise
                    response = await handler(request, exc)
            status, sending = response.status_code, True
            await response(scope, receive, send)
        except Exception as exc:
            # What ServerErrorMiddleware does with an error no handler took: the app's 500
            # handler (which logs it) answers if nothing was sent yet, and the error is raised.
            if self.unexpected is not None:
                error = await self.unexpected(Request(scope), exc)
                if not sending:
                    status = error.status_code
                    await error(scope, receive, send)
            raise
        finally:
            seconds = time.perf_counter() - started
            for observe in self.observers:
                observe(scope, status, seconds)
