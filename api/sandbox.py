"""A local, suno-compatible fake upstream platform, for demos and tests with no internet.

``create_sandbox_app()`` returns a small Starlette app that speaks the same
envelope as the real platform (``{"code", "message", "data"}``):

* ``POST /suno/submit/{music|lyrics}`` creates a job and answers its id;
* ``POST /suno/fetch`` (body ``{"ids": [...]}``) and ``GET /suno/fetch/{id}``
  report jobs;
* ``GET /health`` answers ``{"ok": true, "jobs": <count>}``.

Jobs live in memory and walk through the statuses SUBMITTED, QUEUED,
IN_PROGRESS and then SUCCESS or FAILURE over ``duration_s`` seconds of the
given clock. A job fails with probability ``fail_rate``, and always fails when
its prompt contains the word ``fail``. With probability ``error_rate`` a submit
is answered 503 and creates nothing, so callers can test their retries. When
``key`` is set, every request must carry ``Authorization: Bearer <key>``.
"""
from __future__ import annotations

import random
import re
import time
from dataclasses import dataclass
from typing import Any, Callable

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

_FAIL_WORD = re.compile(r"\bfail\b", re.IGNORECASE)
_ACTIONS = ("MUSIC", "LYRICS")


@dataclass
class _Job:
    id: str
    action: str
    submit_time: float
    prompt: str
    fails: bool
    fail_reason: str


def _envelope(status: int, code: str, message: str = "", data: Any = None) -> JSONResponse:
    return JSONResponse({"code": code, "message": message, "data": data}, status_code=status)


def _item(job: _Job, now: float, duration_s: float) -> dict[str, Any]:
    """The platform's view of ``job`` at time ``now``."""
    elapsed = now - job.submit_time
    d = duration_s
    start_time = 0
    finish_time = 0
    fail_reason = ""
    data: dict[str, Any] = {}
    if elapsed >= d:
        progress = "100%"
        start_time = int(job.submit_time + 0.25 * d)
        finish_time = int(job.submit_time + d)
        if job.fails:
            status = "FAILURE"
            fail_reason = job.fail_reason
        else:
            status = "SUCCESS"
            title = job.prompt[:40] or "untitled"
            if job.action == "MUSIC":
                data = {"clips": [{
                    "id": job.id,
                    "title": title,
                    "audio_url": f"http://sandbox.invalid/{job.id}.mp3",
                    "duration": 120,
                }]}
            else:
                data = {"title": title, "text": f"sandbox lyrics for: {job.prompt}"}
    elif elapsed < 0.1 * d:
        status, progress = "SUBMITTED", "10%"
    elif elapsed < 0.25 * d:
        status, progress = "QUEUED", "20%"
    else:
        status = "IN_PROGRESS"
        fraction = (elapsed - 0.25 * d) / (0.75 * d)
        percent = min(99, max(30, int(30 + fraction * 69)))
        progress = f"{percent}%"
        start_time = int(job.submit_time + 0.25 * d)
    return {
        "task_id": job.id,
        "action": job.action,
        "status": status,
        "progress": progress,
        "fail_reason": fail_reason,
        "submit_time": int(job.submit_time),
        "start_time": start_time,
        "finish_time": finish_time,
        "data": data,
    }


def create_sandbox_app(duration_s: float = 20.0, fail_rate: float = 0.1, error_rate: float = 0.0,
                       key: str = "", seed: int | None = None,
                       clock: Callable[[], float] = time.time) -> Starlette:
    """Build the fake platform; its jobs are kept in ``app.state.jobs``."""
    rng = random.Random(seed)
    jobs: dict[str, _Job] = {}

    def unauthorized(request: Request) -> JSONResponse | None:
        if key and request.headers.get("authorization", "") != f"Bearer {key}":
            return _envelope(401, "unauthorized", "sandbox: missing or wrong bearer key")
        return None

    async def json_body(request: Request) -> Any:
        try:
            return await request.json()
        except ValueError:
            return None

    async def submit(request: Request) -> JSONResponse:
        if (denied := unauthorized(request)) is not None:
            return denied
        action = request.path_params["action"].upper()
        if action not in _ACTIONS:
            return _envelope(400, "invalid_request", f"sandbox: unknown action {action.lower()!r}")
        body = await json_body(request)
        if not isinstance(body, dict):
            return _envelope(400, "invalid_request", "sandbox: the body must be a JSON object")
        if rng.random() < error_rate:
            return _envelope(503, "unavailable", "sandbox: simulated transient error")
        prompt = body.get("prompt") or body.get("gpt_description_prompt") or ""
        if not isinstance(prompt, str):
            prompt = str(prompt)
        job_id = "sbx_" + "%024x" % rng.getrandbits(96)
        if _FAIL_WORD.search(prompt):
            fails, reason = True, "sandbox: the prompt asked to fail"
        elif rng.random() < fail_rate:
            fails, reason = True, "sandbox: simulated failure"
        else:
            fails, reason = False, ""
        jobs[job_id] = _Job(job_id, action, clock(), prompt, fails, reason)
        return _envelope(200, "success", "", job_id)

    async def fetch_many(request: Request) -> JSONResponse:
        if (denied := unauthorized(request)) is not None:
            return denied
        body = await json_body(request)
        ids = body.get("ids") if isinstance(body, dict) else None
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            return _envelope(400, "invalid_request", "sandbox: the body must be {\"ids\": [strings]}")
        now = clock()
        items = [_item(jobs[i], now, duration_s) for i in ids if i in jobs]
        return _envelope(200, "success", "", items)

    async def fetch_one(request: Request) -> JSONResponse:
        if (denied := unauthorized(request)) is not None:
            return denied
        job = jobs.get(request.path_params["id"])
        if job is None:
            return _envelope(404, "task_not_exist", "sandbox: no such task")
        return _envelope(200, "success", "", _item(job, clock(), duration_s))

    async def health(request: Request) -> JSONResponse:
        if (denied := unauthorized(request)) is not None:
            return denied
        return JSONResponse({"ok": True, "jobs": len(jobs)})

    app = Starlette(routes=[
        Route("/suno/submit/{action}", submit, methods=["POST"]),
        Route("/suno/fetch", fetch_many, methods=["POST"]),
        Route("/suno/fetch/{id}", fetch_one, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
    ])
    app.state.jobs = jobs
    return app
