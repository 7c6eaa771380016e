"""What every ``taskhub`` command shares: the exit-code table, JSON or human output, progress bars.

Exit codes (one table, ``EXIT_CODES``, from the engine's error classes; the
README's "Command line" section repeats it):

====  =========================================================================
0     done
1     the command ran and reports a negative result: ``quota audit`` found a
      balance that does not add up; ``import`` / ``devices create`` of a list
      in which some items were refused (the others were stored)
2     usage error or invalid input: bad arguments (argparse), an unreadable or
      malformed file, a value the engine refuses (InvalidInput), an invalid
      setting (ConfigError, e.g. ``TASKHUB_FSYNC``)
3     not found (NotFound)
4     refused by the current state; nothing changed (Conflict: a task already
      terminal, a name or folder already used; ServerNotOnline)
5     forbidden (Forbidden: the plan does not include the device API;
      InvalidKey)
69    Redis unreachable (EX_UNAVAILABLE: connection refused or timed out, the
      embedded server cannot be started, Unavailable)
70    internal error (EX_SOFTWARE: anything else; the traceback goes to stderr)
130   interrupted (Ctrl-C)
====  =========================================================================

Output: with ``--json`` (accepted before or after the command) stdout holds
exactly one JSON document, the data the HTTP API would answer, or on failure
``{"error": {"code": ..., "message": ..., "exit": N}}``; human text
otherwise (errors then go to stderr as ``error: ...``). Progress bars go to
stderr, only when stderr is a terminal and ``--json`` is not given, unless
``--progress`` / ``--no-progress`` says otherwise.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Callable, Iterable

import orjson
import redis

from engine.connection import ConfigError, EmbeddedRedisError
from engine.errors import (Conflict, EngineError, Forbidden, InvalidInput, InvalidKey, NotFound, ServerNotOnline,
                           ServiceKeyMismatch, Unavailable)

OK, NEGATIVE, USAGE, NOT_FOUND, CONFLICT, FORBIDDEN, UNAVAILABLE, INTERNAL, INTERRUPTED = 0, 1, 2, 3, 4, 5, 69, 70, 130


class UsageError(Exception):
    """Bad arguments: argparse's own errors, raised instead of printing and exiting."""

    def __init__(self, message: str, usage: str = "") -> None:
        super().__init__(message)
        self.usage = usage


# (class, exit code, error code for classes without their own ``code``); most specific first:
# an error is an instance of its class and of every base.
EXIT_CODES: tuple[tuple[type[BaseException], int, str], ...] = (
    (UsageError, USAGE, "usage"),
    (Unavailable, UNAVAILABLE, "unavailable"),
    (InvalidInput, USAGE, "invalid_input"),
    (NotFound, NOT_FOUND, "not_found"),
    (Conflict, CONFLICT, "invalid_state"),
    (ServerNotOnline, CONFLICT, "server_not_online"),
    (Forbidden, FORBIDDEN, "forbidden"),
    (InvalidKey, FORBIDDEN, "invalid_api_key"),
    (ServiceKeyMismatch, FORBIDDEN, "service_key_mismatch"),
    (redis.ConnectionError, UNAVAILABLE, "unavailable"),  # BusyLoadingError and AuthenticationError too
    (redis.TimeoutError, UNAVAILABLE, "unavailable"),
    (EmbeddedRedisError, UNAVAILABLE, "unavailable"),
    (ConfigError, USAGE, "config"),
)


def classify(exc: BaseException) -> tuple[int, str, str]:
    """``(exit code, error code, message)`` of an error, from ``EXIT_CODES``; else 70 / internal."""
    for cls, status, code in EXIT_CODES:
        if isinstance(exc, cls):
            message = exc.message if isinstance(exc, EngineError) else str(exc)
            if isinstance(exc, (redis.RedisError, EmbeddedRedisError)) and not isinstance(exc, EngineError):
                message = f"Redis unavailable: {type(exc).__name__}: {exc}"
            return status, (exc.code if isinstance(exc, EngineError) else code), message
    return INTERNAL, "internal", f"internal error: {type(exc).__name__}: {exc}"


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is raised (main() reports it, in JSON if asked)."""

    def error(self, message: str) -> Any:
        raise UsageError(message, self.format_usage())


def json_flag() -> argparse.ArgumentParser:
    """``--json`` for a leaf command; SUPPRESS keeps a ``--json`` given before the command."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="print one JSON document on stdout (errors too) instead of text")
    return parent


def progress_flags() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_mutually_exclusive_group()
    group.add_argument("--progress", dest="progress", action="store_true", default=None,
                       help="show a progress bar on stderr even when it is not a terminal")
    group.add_argument("--no-progress", "--quiet", dest="progress", action="store_false",
                       help="no progress bar")
    return parent


JSON_FLAG, PROGRESS_FLAGS = json_flag(), progress_flags()


def emit(args: argparse.Namespace, data: Any, lines: Iterable[str] | None = None) -> None:
    """``data`` as one JSON document (``--json``), else ``lines`` (default: a plain rendering of data)."""
    if getattr(args, "json", False):
        sys.stdout.write(orjson.dumps(data).decode() + "\n")  # orjson: the engine's pre-encoded Fragments
    else:
        for line in (human(orjson.loads(orjson.dumps(data))) if lines is None else lines):
            print(line)
    sys.stdout.flush()


def human(data: Any, indent: str = "") -> list[str]:
    """A plain rendering: ``key  value`` lines, nested values indented, lists one item per line."""
    if isinstance(data, dict):
        width = max((len(str(k)) for k in data), default=0)
        out: list[str] = []
        for k, v in data.items():
            if isinstance(v, (dict, list)) and v:
                out += [f"{indent}{k}:", *human(v, indent + "  ")]
            else:
                out.append(f"{indent}{k:<{width}}  {_scalar(v)}")
        return out
    if isinstance(data, list):
        return [line for item in data for line in (
            [f"{indent}- " + "  ".join(f"{k}={_scalar(v)}" for k, v in item.items())]
            if isinstance(item, dict) else [f"{indent}- {_scalar(item)}"])]
    return [f"{indent}{_scalar(data)}"]


def _scalar(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, (dict, list)):
        return json.dumps(v, ensure_ascii=False)
    return str(v)


def progress(args: argparse.Namespace, total: int | None, unit: str) -> Any:
    """A tqdm bar on stderr: on with ``--progress``, off with ``--no-progress``, else only on a terminal
    and without ``--json``. A disabled bar still counts (``bar.n``), it just draws nothing."""
    from tqdm import tqdm

    wanted = getattr(args, "progress", None)
    on = wanted if wanted is not None else (not getattr(args, "json", False) and sys.stderr.isatty())
    return tqdm(total=total, unit=unit, file=sys.stderr, disable=not on, dynamic_ncols=True)


def follow(bar: Any) -> Callable[[int, int], None]:
    """An engine ``progress(done, total)`` callback that moves ``bar`` (totals the engine learns as it goes)."""
    def advance(done: int, total: int) -> None:
        if bar.total != total:
            bar.total = total
        bar.update(done - bar.n)

    return advance


def write_above(bar: Any, line: str) -> None:
    """A human line on stdout that does not break the bar drawn on stderr."""
    bar.write(line, file=sys.stdout)


def read_json_file(path: str) -> Any:
    """A JSON file (``-``: stdin); an unreadable or malformed one is invalid input (exit 2)."""
    try:
        if path == "-":
            raw = sys.stdin.buffer.read()
        else:
            with open(path, "rb") as fh:
                raw = fh.read()
        return orjson.loads(raw)
    except OSError as exc:
        raise InvalidInput(f"cannot read {path}: {exc.strerror or exc}") from None
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"{path} is not valid JSON: {exc}") from None


def item_error(index: int, exc: EngineError) -> dict:
    """How one refused item of a list is reported (``import``, ``devices create``)."""
    status, code, message = classify(exc)
    return {"index": index, "error": {"code": code, "message": message, "exit": status}}
