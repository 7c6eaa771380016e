"""The Starlette application: routes of every contract, one error table per contract.

``create_app(engine)`` is used by tests (fakeredis or a real Redis);
``app`` (module attribute, built lazily by uvicorn's ``--factory``) uses
``REDIS_URL`` or the embedded Redis.
"""
from __future__ import annotations

import gc
import logging
import time
from functools import partial

import redis
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Scope

from engine import Engine
from engine.errors import EngineError, InvalidInput, NotFound, Unavailable

from . import admin, dashboard, devices, metrics, openapi, stacking, taskcenter
from .batch import Batcher
from .hot import HotRoutes
from .http import AccessLog, BodyLimit, JSON, Timed, access_log_enabled, oversized
from .logs import configure_logging  # text or JSON lines (TASKHUB_LOG_FORMAT)

log = logging.getLogger("taskhub.api")

# Path prefix -> the contract whose envelope an error on that path uses.
CONTRACTS = (
    *((prefix, devices.error_response) for prefix in devices.PREFIXES),
    (taskcenter.SUNO_PREFIX, taskcenter.suno_error),
    *((prefix, taskcenter.management_error) for prefix in taskcenter.MANAGEMENT_PREFIXES),
    ("/api/v1/", stacking.error_response),
)


def render_error(scope: Scope, exc: EngineError) -> Response:
    for prefix, render in CONTRACTS:
        if scope["path"].startswith(prefix):
            return render(exc)
    return stacking.error_response(exc)


async def on_engine_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, EngineError)
    return render_error(request.scope, exc)


async def on_http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        return render_error(request.scope, NotFound("no such endpoint"))
    response = render_error(request.scope, InvalidInput(str(exc.detail)))
    response.status_code = exc.status_code
    return response


# Redis away (killed and being restarted, loading its data, socket gone): every
# request answers 503 in its contract's envelope, never a 500 with a traceback.
# redis.BusyLoadingError is a redis.ConnectionError.
REDIS_UNAVAILABLE = (redis.ConnectionError, redis.TimeoutError)
_WARN_EVERY_S = 5.0
_outage = {"warned_at": -_WARN_EVERY_S, "suppressed": 0}


async def on_redis_unavailable(request: Request, exc: Exception) -> Response:
    """503 + ``Retry-After: 1``; one short warning line per 5 s, not one per request. The pooled
    client reconnects by itself once Redis is back, so nothing else is needed to recover."""
    now = time.monotonic()
    if now - _outage["warned_at"] >= _WARN_EVERY_S:
        more = f" ({_outage['suppressed']} more 503s since the last warning)" if _outage["suppressed"] else ""
        log.warning("redis unavailable, answering 503: %s: %s%s", type(exc).__name__, exc, more)
        _outage["warned_at"], _outage["suppressed"] = now, 0
    else:
        _outage["suppressed"] += 1
    response = render_error(request.scope, Unavailable("storage temporarily unavailable; retry shortly"))
    response.headers["Retry-After"] = "1"
    return response


async def on_unexpected(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    response = render_error(request.scope, EngineError("internal error"))
    response.status_code = 500
    return response


class App(Starlette):
    """Starlette, with the engine and the stacking batcher also as plain attributes: the hot
    handlers read both on every request (api/stacking.py), and ``app.state.x`` is a
    Python-level ``__getattr__`` each time (py-spy: 3.6% of a complete request's samples in
    the web app). ``app.state`` holds the same objects for everything else."""

    engine: Engine
    batch: Batcher


def create_app(engine: Engine | None = None, access_log: bool | None = None, hot_routes: bool = True) -> App:
    """The application; ``access_log`` defaults to ``TASKHUB_ACCESS_LOG`` (on). ``hot_routes=False``
    leaves every request to Starlette's router (api/hot.py), for the test that compares the two."""
    if access_log is None:
        access_log = access_log_enabled()
    observers = [*metrics.observers(), *([AccessLog()] if access_log else [])]
    handlers = {EngineError: on_engine_error, HTTPException: on_http_error, Exception: on_unexpected,
                **{cls: on_redis_unavailable for cls in REDIS_UNAVAILABLE}}
    app = App(
        routes=[*stacking.routes, *admin.routes, *devices.routes, *taskcenter.routes,
                *openapi.routes, *metrics.routes, *dashboard.routes],
        middleware=[*([Middleware(Timed, observers=observers)] if observers else []),
                    Middleware(BodyLimit, render=render_error, bulk_prefixes=admin.BULK_PREFIXES)],
        exception_handlers=handlers,
    )
    if hot_routes:  # in front of the whole stack Starlette builds (api/hot.py says why)
        app.middleware_stack = HotRoutes(app.build_middleware_stack(), stacking.routes, handlers, observers,
                                         body_limit=partial(oversized, render=render_error,
                                                            bulk_prefixes=admin.BULK_PREFIXES))
    app.state.engine = app.engine = engine or Engine.from_env()
    app.state.batch = app.batch = Batcher(app.engine.core)
    app.state.device_batch = Batcher(app.state.engine.devices.core)
    app.state.tasks_batch = Batcher(app.state.engine.tasks.core)
    return app


def main_app() -> App:
    """uvicorn factory: ``uvicorn --factory api.app:main_app``."""
    configure_logging()
    app = create_app()
    settle_gc()
    return app


GC_GEN0_THRESHOLD = 10_000


def settle_gc() -> None:
    """Once the app is built: its objects (routes, scripts, clients, metrics) go to the GC's
    permanent generation (``gc.freeze``), so no collection walks them again, and the youngest
    generation is collected every 10,000 allocations instead of 700. A request allocates a few
    hundred short-lived objects that reference counting frees; with the default threshold the
    collector ran every few requests and cost ~7% of a start request's CPU (py-spy --native);
    measured in BENCHMARKS.md, "HTTP single-task endpoints"."""
    gc.freeze()
    gc.set_threshold(GC_GEN0_THRESHOLD, *gc.get_threshold()[1:])


__all__ = ["create_app", "main_app", "JSON"]
