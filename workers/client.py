"""The worker client: a Python client of the stacking worker API and of the device agent API.

Tool servers and device agents use it instead of hand-rolling HTTP (README,
"Writing a worker in Python")::

    client = StackingClient("http://127.0.0.1:8000", api_key)
    StackingWorker(client, handle, server_name="tool-1").run()  # until SIGTERM/SIGINT

One transport (httpx, keep-alive) serves two clients, ``StackingClient``
(stacking.md: ``X-API-Key``, ``{"success", "message", "code"?}``) and
``DeviceAgentClient`` (device-tasks.md: bearer token, ``{"code", "message",
"data"}``). A refusal raises a typed ``ClientError`` (``AuthError`` 401/403,
``InvalidRequest`` 400/413, ``NotFound`` 404, ``Conflict`` 409) carrying the
envelope's message and code; nothing is retried after a refusal.

Retries. Connection errors, timeouts and 429/502/503/504 are retried with
capped exponential backoff and jitter (``Retry-After`` honoured as a minimum)
for up to ``retry_for`` seconds (then ``Unavailable``). Whether a retry is
safe was decided per call from what the engine does with a repeated call:

- ``heartbeat``, ``get``, ``connect_status``: read or idempotent; always retried.
- ``pull`` / device ``claim``: a claim whose answer was lost leaves its tasks
  reserved for us. Stacking: the reservation lapses after ``TASKHUB_CLAIM_TTL``
  and the tasks are handed out again (not counted as a retry), so a retry loses
  no work, at worst it delays those tasks. Devices: the lost tasks are running
  on our serials and the next heartbeat lists them in ``data.running``, where
  an agent adopts them (``workers/agent.py``). Both are retried.
- ``start``, ``complete``, ``fail`` are not idempotent in this engine: repeated,
  they answer 409 (the task is no longer in the state they need). They are
  still retried: a refused connection or a 429 means nothing ran, and
  taskhub's 503 means Redis was unreachable. But after an attempt that may
  have been processed (anything but a refused connection or a 429: a timeout
  once connected, a reset, a 5xx, where Redis may have run the script and died
  before replying), a 409 on the retry is read as "done by the earlier attempt,
  or no longer ours": ``complete``/``fail`` then return ``False`` instead of raising (there
  is nothing left to do either way; the engine never completes a task twice),
  and ``start`` looks at the task: ``registering``/``connecting`` counts as
  started (should it be another server's, our complete is refused with 409
  ``not_task_owner``, so nothing is done twice).

Reads (``pull``, ``heartbeat``, ``claim``...) give up their backoff at once,
raising ``Cancelled``, when ``cancel`` is set (the runner sets it on SIGTERM);
writes keep retrying, so a result in hand is not dropped at shutdown.
"""
from __future__ import annotations

import email.utils
import logging
import random
import signal
import threading
import time
from typing import Any, Callable
from urllib.parse import quote

import httpx

log = logging.getLogger("taskhub.client")

RETRY_STATUS = frozenset({429, 502, 503, 504})
# Statuses that prove nothing ran: the request was refused before any work.
NOTHING_RAN = frozenset({429})
# Transport errors raised before the request left this process.
NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
# What StackingWorker passes from a handler's result to complete(); anything else fails the task.
RESULT_FIELDS = frozenset({"link_post", "note"})


class ClientError(Exception):
    """A refusal (or giving up): HTTP ``status`` (0 = no answer), the envelope's ``message`` and ``code``."""

    def __init__(self, status: int, message: str, code: Any = None, body: Any = None,
                 maybe_ran: bool = False) -> None:
        super().__init__(f"HTTP {status}: {message}" + (f" ({code})" if code not in (None, 0) else ""))
        self.status, self.message, self.code, self.body = status, message, code, body
        self.maybe_ran = maybe_ran  # an earlier attempt of this call may have been processed


class InvalidRequest(ClientError):
    """400/413: bad input; nothing was changed."""


class AuthError(ClientError):
    """401/403: unknown key, wrong service, server not online, plan."""


class NotFound(ClientError):
    """404: no such task."""


class Conflict(ClientError):
    """409: the task's state (or its owner) does not allow the call; nothing was changed."""


class Unavailable(ClientError):
    """Still failing after ``retry_for`` seconds of retries."""


class Cancelled(Exception):
    """A read's retries were abandoned because the client's ``cancel`` event was set."""


ERRORS: dict[int, type[ClientError]] = {400: InvalidRequest, 413: InvalidRequest, 401: AuthError,
                                        403: AuthError, 404: NotFound, 409: Conflict}


def _retry_after(resp: httpx.Response) -> float:
    """Seconds from a ``Retry-After`` header (delta or HTTP date); 0 when absent or unreadable."""
    value = resp.headers.get("retry-after", "").strip()
    if not value:
        return 0.0
    try:
        return max(0.0, float(value))
    except ValueError:
        try:
            return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError):
            return 0.0


class Transport:
    """HTTP with backoff; ``request`` returns the first answer that is not worth retrying."""

    def __init__(self, base_url: str, headers: dict[str, str], *, timeout: float = 10.0,
                 retry_for: float | None = 300.0, backoff_base: float = 0.5, backoff_cap: float = 30.0,
                 http: httpx.Client | None = None, rng: random.Random | None = None) -> None:
        self.http = http or httpx.Client(base_url=base_url, timeout=timeout)
        self.headers = headers
        self.retry_for, self.base, self.cap = retry_for, backoff_base, backoff_cap
        self.rng = rng or random.Random()
        self.cancel = threading.Event()
        self.retries = 0  # retries made so far (for logs and tests)

    def delay(self, attempt: int, retry_after: float = 0.0) -> float:
        """Equal jitter: half of ``min(cap, base * 2^attempt)`` fixed, half random; never below Retry-After."""
        ceiling = min(self.cap, self.base * 2 ** attempt)
        return max(retry_after, ceiling / 2 + self.rng.uniform(0, ceiling / 2))

    def request(self, method: str, path: str, *, json: Any = None, params: dict | None = None,
                read: bool = False) -> tuple[httpx.Response, bool]:
        """(answer, maybe_ran_before): the second is True when an earlier attempt may have been processed."""
        deadline = None if self.retry_for is None else time.monotonic() + self.retry_for
        maybe_ran, attempt = False, 0
        while True:
            try:
                resp = self.http.request(method, path, json=json, params=params, headers=self.headers)
            except httpx.TransportError as exc:
                maybe_ran = maybe_ran or not isinstance(exc, NOT_SENT)
                failure, wait = f"{type(exc).__name__}: {exc}", self.delay(attempt)
                status = 0
            else:
                if resp.status_code not in RETRY_STATUS:
                    return resp, maybe_ran
                maybe_ran = maybe_ran or resp.status_code not in NOTHING_RAN
                failure, wait = f"HTTP {resp.status_code}", self.delay(attempt, _retry_after(resp))
                status = resp.status_code
            if deadline is not None and time.monotonic() + wait > deadline:
                raise Unavailable(status, f"{method} {path} still failing after {self.retry_for:g} s: {failure}")
            log.warning("%s %s: %s; retrying in %.2f s", method, path, failure, wait)
            self.retries += 1
            attempt += 1
            if read:
                if self.cancel.wait(wait):
                    raise Cancelled(f"{method} {path}")
            else:
                time.sleep(wait)

    def close(self) -> None:
        self.http.close()


def _raise(resp: httpx.Response, body: Any, maybe_ran: bool = False) -> None:
    body = body if isinstance(body, dict) else {}
    cls = ERRORS.get(resp.status_code, ClientError)
    raise cls(resp.status_code, str(body.get("message") or resp.reason_phrase), body.get("code"), body, maybe_ran)


def _json(resp: httpx.Response) -> Any:
    try:
        return resp.json()
    except ValueError:
        return None


class StackingClient:
    """The stacking worker API (stacking.md) for one server's API key."""

    def __init__(self, base_url: str, api_key: str, **transport: Any) -> None:
        self.t = Transport(base_url, {"X-API-Key": api_key}, **transport)

    @property
    def cancel(self) -> threading.Event:
        return self.t.cancel

    def _call(self, method: str, path: str, *, read: bool = False, **kw: Any) -> tuple[dict, bool]:
        resp, maybe_ran = self.t.request(method, path, read=read, **kw)
        body = _json(resp)
        if resp.status_code != 200 or not isinstance(body, dict) or body.get("success") is not True:
            _raise(resp, body, maybe_ran)
        return body, maybe_ran

    def heartbeat(self, **metrics: Any) -> dict:
        """``POST /api/v1/worker/health`` (``server_name``, ``active_tasks``, ...): also extends our run leases."""
        return self._call("POST", "/api/v1/worker/health", json=metrics, read=True)[0]["data"]

    def pull(self, limit: int = 5, status: str | None = None) -> list[dict]:
        """Claim up to ``limit`` tasks (``status`` ``register``/``connect``, or both phases, phase 2 first)."""
        params = {"limit": limit, **({"status": status} if status else {})}
        return self._call("GET", "/api/v1/stacking/links", params=params, read=True)[0]["data"]

    def get(self, task_id: str) -> dict:
        return self._call("GET", f"/api/v1/stacking/links/{quote(task_id, safe='')}", read=True)[0]["data"]

    def connect_status(self, folder_id: str) -> dict:
        path = f"/api/v1/stacking/folders/{quote(folder_id, safe='')}/connect-status"
        body = self._call("GET", path, read=True)[0]
        return {k: v for k, v in body.items() if k != "success"}

    def start(self, task_id: str) -> bool:
        try:
            self._call("POST", f"/api/v1/stacking/links/{quote(task_id, safe='')}/start")
        except Conflict as exc:
            if not exc.maybe_ran or self.get(task_id)["status"] not in ("registering", "connecting"):
                raise
            log.info("start %s: answered 409 after a lost reply; the earlier attempt started it", task_id)
        return True

    def complete(self, task_id: str, link_post: str | None = None, note: str | None = None) -> bool:
        """True: completed by this call. False: a retry after a lost reply found it settled already."""
        body = {k: v for k, v in (("link_post", link_post), ("note", note)) if v is not None}
        return self._settle(f"/api/v1/stacking/links/{quote(task_id, safe='')}/complete", body)

    def fail(self, task_id: str, error_message: str, note: str | None = None) -> bool:
        """True: failed by this call (the retry manager takes over). False: as for ``complete``."""
        body = {"error_message": error_message[:1000], **({"note": note} if note is not None else {})}
        return self._settle(f"/api/v1/stacking/links/{quote(task_id, safe='')}/fail", body)

    def _settle(self, path: str, body: dict) -> bool:
        resp, maybe_ran = self.t.request("POST", path, json=body)
        data = _json(resp)
        if resp.status_code == 409 and maybe_ran:
            log.info("%s: answered 409 after a lost reply: settled already (%s)", path, (data or {}).get("message"))
            return False
        if resp.status_code != 200 or not isinstance(data, dict) or data.get("success") is not True:
            _raise(resp, data, maybe_ran)
        return True

    def close(self) -> None:
        self.t.close()


class DeviceAgentClient:
    """The agent side of the device API (device-tasks.md): heartbeat, claim, complete, fail."""

    def __init__(self, base_url: str, token: str = "", **transport: Any) -> None:
        self.t = Transport(base_url, {"Authorization": f"Bearer {token}"} if token else {}, **transport)

    @property
    def cancel(self) -> threading.Event:
        return self.t.cancel

    def _call(self, path: str, body: dict, read: bool = False) -> tuple[Any, bool]:
        resp, maybe_ran = self.t.request("POST", path, json=body, read=read)
        data = _json(resp)
        if resp.status_code != 200 or not isinstance(data, dict) or data.get("code") != 0:
            _raise(resp, data, maybe_ran)
        return data.get("data"), maybe_ran

    def heartbeat(self, serials: list[str], accounts: dict[str, list[str]] | None = None) -> dict:
        """Registers the devices (and their accounts); ``stop``: our task ids to abort; ``running``:
        serial -> task id of what the server believes runs on our devices."""
        body = {"serials": serials, **({"accounts": accounts} if accounts is not None else {})}
        return self._call("/api/v1/agent/heartbeat", body, read=True)[0]

    def claim(self, serials: list[str], agent: str | None = None, limit: int | None = None) -> list[dict]:
        body: dict[str, Any] = {"serials": serials}
        if agent is not None:
            body["agent"] = agent
        if limit is not None:
            body["limit"] = limit
        return self._call("/api/v1/agent/claim", body, read=True)[0]["tasks"]

    def complete(self, task_id: int, remark: str = "", agent: str | None = None) -> bool:
        """True: completed by this call; False: a retry after a lost reply found it finished already."""
        return self._finish(task_id, "complete", remark, agent)

    def fail(self, task_id: int, remark: str = "", agent: str | None = None) -> bool:
        return self._finish(task_id, "fail", remark, agent)

    def _finish(self, task_id: int, verb: str, remark: str, agent: str | None) -> bool:
        body = {"remark": remark, **({"agent": agent} if agent is not None else {})}
        try:
            self._call(f"/api/v1/agent/task/{task_id}/{verb}", body)
        except Conflict as exc:
            if not exc.maybe_ran:
                raise
            log.info("%s task %s: answered 409 after a lost reply: finished already", verb, task_id)
            return False
        return True

    def close(self) -> None:
        self.t.close()


Handler = Callable[[dict], "dict | None"]


class StackingWorker:
    """The worker loop: heartbeat (a background thread), pull, start, ``handler(task)``, complete or fail.

    ``handler`` gets the task as pulled (``task["status"]`` is ``register`` or
    ``connect``) and returns the complete body (``{"link_post": ...}``, needed
    in phase 1; ``{"note": ...}``), or raises to fail the task with the
    exception's text. At most ``concurrency`` tasks are held at once, each run
    in its own thread; a pull asks only for free slots, and every pulled task
    is started at once, so tasks are not left pulled-but-unstarted.

    Shutdown (SIGTERM/SIGINT, or ``stop()``): no more pulls; handlers in
    flight get ``grace`` seconds to finish and are completed or failed as
    usual, while heartbeats go on extending their leases. A task still running
    after that is failed with "worker shutting down" (the retry manager gives
    it back at once after its backoff, rather than after ``TASKHUB_RUN_TTL``
    as a silent lease would). A task pulled in the same instant as the signal
    is not started: the stacking API has no release, and failing it would cost
    a retry, so its reservation is left to lapse (``TASKHUB_CLAIM_TTL``), after
    which it is handed out again, not counted as a retry: no work is lost.
    """

    SHUTDOWN = "worker shutting down before the task finished"

    def __init__(self, client: StackingClient, handler: Handler, *, concurrency: int = 1,
                 status: str | None = None, server_name: str | None = None, heartbeat_interval: float = 30.0,
                 grace: float = 60.0, idle_sleep: float = 1.0) -> None:
        self.client, self.handler = client, handler
        self.concurrency, self.status, self.server_name = concurrency, status, server_name
        self.heartbeat_interval, self.grace, self.idle_sleep = heartbeat_interval, grace, idle_sleep
        self.stopping = threading.Event()
        self.counts = {"completed": 0, "failed": 0, "settled_elsewhere": 0, "refused": 0,
                       "abandoned": 0, "left_to_lapse": 0}
        self._running: dict[str, threading.Thread] = {}
        self._abandoned: set[str] = set()
        self._lock = threading.Lock()
        self._slot_free = threading.Event()
        self._beats_done = threading.Event()

    def stop(self, *_: Any) -> None:
        """Stop pulling and begin the shutdown (safe from a signal handler)."""
        self.stopping.set()
        self.client.cancel.set()
        self._slot_free.set()

    def run(self) -> dict:
        """Work until stopped; returns the counts. Installs SIGTERM/SIGINT handlers when on the main thread."""
        previous = {}
        if threading.current_thread() is threading.main_thread():
            previous = {sig: signal.signal(sig, self.stop) for sig in (signal.SIGTERM, signal.SIGINT)}
        beats = threading.Thread(target=self._beat_loop, name="taskhub-heartbeat", daemon=True)
        try:
            self._beat()  # a new or silent server is not online until its first heartbeat
            beats.start()
            while not self.stopping.is_set():
                self._pull_and_start()
        finally:  # stopped, or a refusal no retry can cure (401, 403 service_key_mismatch): drain either way
            self.stop()
            self._drain()
            self._beats_done.set()
            if beats.is_alive():
                beats.join(timeout=self.client.t.http.timeout.read or 10)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        log.info("worker stopped: %s", self.counts)
        return self.counts

    def _pull_and_start(self) -> None:
        with self._lock:
            free = self.concurrency - len(self._running)
            self._slot_free.clear()
        if free <= 0:
            self._slot_free.wait(self.idle_sleep)
            return
        try:
            tasks = self.client.pull(free, self.status)
        except Cancelled:
            return
        except AuthError as exc:
            if exc.code != "server_not_online":
                raise
            log.warning("%s; sending a heartbeat", exc.message)
            self._beat()
            self.stopping.wait(self.idle_sleep)
            return
        except Unavailable as exc:
            log.warning("%s", exc)
            return
        if not tasks:
            self.stopping.wait(self.idle_sleep)
        for task in tasks:
            if self.stopping.is_set():
                self.counts["left_to_lapse"] += 1
                continue
            try:
                self.client.start(task["id"])
            except (ClientError, Cancelled) as exc:  # e.g. 409: lapsed and handed out again, or cancelled
                log.info("task %s not started: %s", task["id"], exc)
                continue
            thread = threading.Thread(target=self._work, args=(task,), name=f"task-{task['id']}", daemon=True)
            with self._lock:
                self._running[task["id"]] = thread
            thread.start()

    def _work(self, task: dict) -> None:
        tid = task["id"]
        try:
            try:
                result = self.handler(task) or {}
                if not isinstance(result, dict) or set(result) - RESULT_FIELDS:
                    raise TypeError(f"the handler returned {result!r}: expected a dict of {sorted(RESULT_FIELDS)}")
            except Exception as exc:  # noqa: BLE001 - any handler failure fails the task
                reason = f"{type(exc).__name__}: {exc}"
                log.warning("task %s failed: %s", tid, reason)
                outcome, settled = "failed", lambda: self.client.fail(tid, reason)
            else:
                outcome, settled = "completed", lambda: self.client.complete(tid, **result)
            if tid in self._abandoned:
                return
            try:
                self._count(outcome if settled() else "settled_elsewhere")
            except InvalidRequest as exc:
                if outcome != "completed":
                    raise
                # The server refused the result (phase 1 without link_post, say). Failing the task
                # hands it to the retry manager; left started, heartbeats would hold it forever.
                log.warning("task %s: complete refused (%s); failing it", tid, exc)
                self._count("failed" if self.client.fail(tid, f"complete refused: {exc}") else "settled_elsewhere")
        except (ClientError, Cancelled) as exc:
            log.warning("task %s: not settled: %s", tid, exc)
            self._count("refused")
        finally:
            with self._lock:
                self._running.pop(tid, None)
            self._slot_free.set()

    def _drain(self) -> None:
        deadline = time.monotonic() + self.grace
        while True:
            with self._lock:
                threads = list(self._running.items())
            if not threads or time.monotonic() >= deadline:
                break
            threads[0][1].join(timeout=max(0.0, deadline - time.monotonic()))
        for tid, _ in threads:
            self._abandoned.add(tid)
            try:
                self.client.fail(tid, self.SHUTDOWN)
                self._count("abandoned")
            except ClientError as exc:  # finished in the meantime
                log.info("task %s: %s", tid, exc)

    def _count(self, what: str) -> None:
        with self._lock:
            self.counts[what] += 1

    def _beat(self) -> None:
        try:
            with self._lock:
                active = len(self._running)
            self.client.heartbeat(**({"server_name": self.server_name} if self.server_name else {}),
                                  active_tasks=active)
        except (ClientError, Cancelled) as exc:
            log.warning("heartbeat: %s", exc)

    def _beat_loop(self) -> None:
        while not self._beats_done.wait(self.heartbeat_interval):
            self._beat()
