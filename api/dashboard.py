"""The operator's dashboard at ``/dashboard`` (issue 10): one server-rendered page, live by polling.

What it shows and what it may cost is ``engine/overview.py`` (bounded reads,
capped lists); this module authenticates, renders and forwards the operator
actions that the admin and device APIs already have. Decisions:

- **Auth is the admin API's** (``TASKHUB_ADMIN_TOKEN``). With no token set,
  loopback clients only, exactly as ``/api/v1/admin``. With a token set, a
  browser cannot send ``Authorization: Bearer`` on a navigation, so
  ``/dashboard/login`` takes the token in a form and sets the cookie
  ``taskhub_dashboard`` = HMAC-SHA256(token, "taskhub-dashboard") (the token
  itself never sits in the browser), ``HttpOnly``, ``SameSite=Strict``,
  ``Secure`` over https. Every dashboard endpoint accepts the bearer header or
  that cookie, compared in constant time; changing the token logs every
  browser out. A page request without either is sent to the login page; a
  JSON request gets 401 in the admin API's envelope.
- **Actions cannot be forged cross-site**: they are POSTs that need the
  header ``X-Requested-With: taskhub-dashboard``. A cross-site form cannot set
  a header, and a cross-site ``fetch`` with one needs a CORS preflight this
  server never grants; the SameSite=Strict cookie is not sent cross-site
  either. Without the header: 403, nothing done.
- **Actions** (each behind a confirmation in the page): cancel a stacking
  request and release a folder (``engine.stacking``, as ``api/admin.py``),
  stop and retry a device task (``engine.devices``, as ``api/devices.py``,
  actor ``dashboard``). Their refusals are the engine's, in the admin API's
  envelope (``{"success": false, "message"}``), shown in the page as is.
- **Live refresh**: every ``POLL_MS`` the page fetches ``/dashboard/sections``,
  the same template as the first paint rendered from a fresh snapshot, and
  swaps it in: one template, no second renderer in JavaScript. The snapshot
  itself is ``/dashboard/data`` (JSON, for scripts and tests). The chart is
  inline SVG drawn by that template; no CDN, no chart library, the page's
  only script is ``static/dashboard.js`` (~70 lines).
"""
from __future__ import annotations

import hashlib
import hmac
import time
from pathlib import Path
from urllib.parse import parse_qs, quote

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from engine.errors import Forbidden
from engine.overview import Overview

from .http import JSON, PayloadTooLarge, Unauthorized, read_body, require_bearer

HERE = Path(__file__).parent
templates = Jinja2Templates(directory=str(HERE / "templates"))
# Ids in action URLs: one path segment each, whatever they hold.
templates.env.filters["segment"] = lambda v: quote(str(v), safe="")
COOKIE = "taskhub_dashboard"
ACTION_HEADER = ("x-requested-with", "taskhub-dashboard")
POLL_MS = 2000
# Every open tab polls every POLL_MS; they share one snapshot (about 20 ms of Python with full
# event streams, measured in review) for this long. Actions drop it, so their result shows at once.
SNAPSHOT_TTL_S = 1.0
MAX_LOGIN_BODY = 4096


def session_value(token: str) -> str:
    """The cookie's value for ``token``: an HMAC, so the browser never holds the token itself."""
    return hmac.new(token.encode(), b"taskhub-dashboard", hashlib.sha256).hexdigest()


def _token(request: Request) -> str:
    return request.app.state.engine.core.settings.admin_token


def _session_cookie(request: Request, token: str) -> bool:
    return hmac.compare_digest(request.cookies.get(COOKIE, "").encode(), session_value(token).encode())


def _authorized(request: Request) -> bool:
    """The admin API's rule (``require_bearer``) plus the session cookie; False = log in first.
    Raises Forbidden for a remote client when no token is set."""
    try:
        require_bearer(request, _token(request), "TASKHUB_ADMIN_TOKEN", "the dashboard", "",
                       also=_session_cookie)
    except Unauthorized:
        return False
    return True


def _operator(request: Request):
    if not _authorized(request):
        raise Unauthorized("invalid admin token: log in at /dashboard/login")
    request.state.caller = "dashboard"
    return request.app.state.engine


async def _snapshot(request: Request) -> dict:
    state = request.app.state
    cached = getattr(state, "dashboard_snapshot", None)
    if cached is not None and time.monotonic() - cached[0] < SNAPSHOT_TTL_S:
        return cached[1]
    data = await run_in_threadpool(Overview(state.engine).snapshot)
    state.dashboard_snapshot = (time.monotonic(), data)
    return data


async def page(request: Request) -> Response:
    if not _authorized(request):
        return RedirectResponse("/dashboard/login", status_code=303)
    request.state.caller = "dashboard"
    data = await _snapshot(request)
    return templates.TemplateResponse(request, "dashboard.html", {"d": data, "poll_ms": POLL_MS})


async def sections(request: Request) -> Response:
    """The page's body alone: what the live refresh swaps in."""
    _operator(request)
    data = await _snapshot(request)
    return templates.TemplateResponse(request, "sections.html", {"d": data},
                                      headers={"Cache-Control": "no-store"})


async def data(request: Request) -> JSON:
    _operator(request)
    return JSON({"success": True, "data": await _snapshot(request)})


async def login_form(request: Request) -> Response:
    if not _token(request):
        return RedirectResponse("/dashboard", status_code=303)
    return templates.TemplateResponse(request, "login.html", {"error": None})


async def login(request: Request) -> Response:
    """Form POST ``token=...``: right token -> session cookie and back to the dashboard."""
    token = _token(request)
    if not token:
        return RedirectResponse("/dashboard", status_code=303)
    try:  # refused whole past the limit: a cut form could only ever be a wrong token
        body = await read_body(request, MAX_LOGIN_BODY)
    except PayloadTooLarge:
        return templates.TemplateResponse(request, "login.html",
                                          {"error": f"the form is over {MAX_LOGIN_BODY} bytes"}, status_code=413)
    given = (parse_qs(body.decode(errors="replace")).get("token") or [""])[0]
    if not hmac.compare_digest(given.encode(), token.encode()):
        return templates.TemplateResponse(request, "login.html", {"error": "wrong token"}, status_code=401)
    response = RedirectResponse("/dashboard", status_code=303)
    response.set_cookie(COOKIE, session_value(token), httponly=True, samesite="strict",
                        secure=request.url.scheme == "https", path="/dashboard")
    return response


async def logout(request: Request) -> Response:
    # A plain form POST (no header check): another site can at most log the operator out.
    response = RedirectResponse("/dashboard/login", status_code=303)
    response.delete_cookie(COOKIE, path="/dashboard")
    return response


def _action(request: Request):
    """An action's checks: authenticated, and sent by the page's own script (module docstring)."""
    eng = _operator(request)
    name, value = ACTION_HEADER
    if request.headers.get(name) != value:
        raise Forbidden(f"dashboard actions need the header X-Requested-With: {value}")
    request.app.state.dashboard_snapshot = None  # the next refresh shows what the action did
    return eng


async def cancel_request(request: Request) -> JSON:
    eng = _action(request)
    n = await run_in_threadpool(eng.stacking.cancel_request, request.path_params["request_id"], "dashboard")
    return JSON({"success": True, "data": {"cancelled": n}})


async def release_folder(request: Request) -> JSON:
    released = await run_in_threadpool(_action(request).stacking.release_folder, request.path_params["folder_id"])
    return JSON({"success": True, "data": {"released": released}})


async def stop_device_task(request: Request) -> JSON:
    result = await run_in_threadpool(_action(request).devices.stop, request.path_params["task_id"], actor="dashboard")
    return JSON({"success": True, "data": result})


async def retry_device_task(request: Request) -> JSON:
    result = await run_in_threadpool(_action(request).devices.retry, request.path_params["task_id"],
                                     actor="dashboard")
    return JSON({"success": True, "data": result})


routes = [
    Route("/dashboard", page, methods=["GET"]),
    Route("/dashboard/data", data, methods=["GET"]),
    Route("/dashboard/sections", sections, methods=["GET"]),
    Route("/dashboard/login", login_form, methods=["GET"]),
    Route("/dashboard/login", login, methods=["POST"]),
    Route("/dashboard/logout", logout, methods=["POST"]),
    Route("/dashboard/actions/requests/{request_id}/cancel", cancel_request, methods=["POST"]),
    Route("/dashboard/actions/folders/{folder_id}/release", release_folder, methods=["POST"]),
    Route("/dashboard/actions/device-tasks/{task_id}/stop", stop_device_task, methods=["POST"]),
    Route("/dashboard/actions/device-tasks/{task_id}/retry", retry_device_task, methods=["POST"]),
    Mount("/dashboard/static", StaticFiles(directory=str(HERE / "static")), name="dashboard-static"),
]
