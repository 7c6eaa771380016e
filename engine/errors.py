"""Typed engine errors, and the one table that maps script refusal codes to them.

Scripts answer ``{code, detail}``; ``raise_for`` turns a refusal into an
exception. Each API contract maps these classes to its own envelope and HTTP
status in one exception-handler table (``api/``), never inside route bodies.
"""
from __future__ import annotations

from typing import Callable


class EngineError(Exception):
    """Base class. ``code`` is the machine code shown to clients where a contract has one."""

    code = "error"

    def __init__(self, message: str, detail: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail


class InvalidInput(EngineError):
    code = "invalid_input"


class NotFound(EngineError):
    code = "not_found"


class Conflict(EngineError):
    """The current state does not allow the operation; nothing was changed."""

    code = "invalid_state"


class NotTaskOwner(Conflict):
    code = "not_task_owner"


class InvalidKey(EngineError):
    code = "invalid_api_key"


class ServiceKeyMismatch(EngineError):
    code = "service_key_mismatch"


class ServerNotOnline(EngineError):
    code = "server_not_online"


class Unavailable(EngineError):
    """Redis cannot be reached (restarting, loading, gone): nothing was done; retry shortly."""

    code = "unavailable"


Refusals = dict[str, Callable[[list[str]], EngineError]]


class Forbidden(EngineError):
    """The caller's plan or rights do not allow the operation; nothing was changed."""

    code = "forbidden"


def raise_for(reply: list, what: str = "task", refusals: Refusals | None = None) -> list:
    """Return ``reply`` if it is ``ok``; otherwise raise the matching error.

    ``refusals`` is a contract's own table (code -> error built from the
    reply's details as text); it is consulted first, so a contract may also
    word a shared code its own way.
    """
    code = _text(reply[0]) if reply else "not_found"
    if code == "ok":
        return reply
    detail = _text(reply[1]) if len(reply) > 1 else ""
    if refusals and code in refusals:
        raise refusals[code]([_text(v) for v in reply[1:]])
    if code == "not_found":
        raise NotFound(f"{what} not found")
    if code == "bad_state":
        raise Conflict(f"{what} is in status '{detail}', which does not allow this", detail)
    if code == "not_task_owner":
        raise NotTaskOwner("task is not reserved by this server", detail)
    if code == "link_post_required":
        raise InvalidInput("link_post is required to complete phase 1", detail)
    if code == "folder_in_use":
        raise Conflict(f"folder_id '{detail}' is already used by another request", detail)
    if code == "invalid_key":
        raise InvalidKey("invalid api key")
    if code == "service_key_mismatch":
        raise ServiceKeyMismatch("api key does not belong to a server with service stacking or google_stacking")
    if code == "server_not_online":
        seconds = _text(reply[2]) if len(reply) > 2 else "?"
        if detail == "maintenance":
            raise ServerNotOnline("server is in maintenance: an operator must set it online"
                                  " (POST /api/v1/worker/health still records metrics)", detail)
        if detail == "stale":
            raise ServerNotOnline(f"server sent no heartbeat in the last {seconds} s;"
                                  " call POST /api/v1/worker/health first", detail)
        raise ServerNotOnline(f"server is {detail}; call POST /api/v1/worker/health first", detail)
    if code == "exists":
        raise Conflict(f"{what} '{detail}' already exists", detail)
    raise EngineError(f"unexpected script reply {code!r}", detail)


def _text(value: bytes | str | int) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
