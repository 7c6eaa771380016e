"""Device tasks: validate the body of ``POST /api/v1/task`` and prepare it for the engine.

Pure Python, no Redis: every refusal that can be decided from the body alone is
raised here, before a script runs, so the Lua side only resolves accounts and
devices and never sees malformed input. The result, ``CreateSpec``, is what
the create script needs: the identities, one encoded config per target, the
effective multi-account flag and the due time.

Order of checks (the first failing one decides the business code):

1. body is not a JSON object -> ``InvalidInput`` (40001);
2. ``script_name`` missing, null, not a string or blank -> ``MissingScriptName`` (40002);
3. ``script_name`` not in ``API_SCRIPTS`` (exact match) -> ``ScriptNotAllowed`` (40003);
4. everything else -> ``InvalidInput`` (40001), in this order: ``serials`` /
   ``usernames``, ``enable_multi_account``, ``start_time``, ``script_config``
   (an object), its known keys' types, its required keys, targets, task count.

Decisions:

- A top-level key that is null counts as absent (``serials: null`` with
  ``usernames`` set is usernames mode). Unknown top-level keys are ignored.
- Identities: the list length is checked before de-duplication (at most
  ``MAX_IDENTITIES`` entries); each entry is stripped, at most 128 characters.
  Usernames also lose every leading ``@``; "@bob" and "bob" are one username.
- ``enable_multi_account`` is type-checked in both modes but only counts in
  device mode; ``login`` forces it on, ``match_accounts`` off.
- ``start_time`` "HH:MM" -> the next occurrence strictly after now in ``tz``
  (today if ahead, else tomorrow). The wall time is resolved with ``fold=0``:
  an ambiguous time (clocks go back) is its first occurrence; a time that does
  not exist (clocks go forward) uses the offset in force before the jump, so
  "02:30" on Europe/Warsaw's spring-forward day is 03:30 CEST.
- ``script_config`` schemas (known keys and accepted types; a bool is never a
  number; a null value counts as absent; unknown keys pass through untouched):

  ==============  ===========================================================
  post            content_type int 0 (video) | 1 (image); captions str;
                  material_list list[str]; material_source str; material_path
                  str (required, non-blank, when material_source is
                  "localFolder"); upload_wait_time number >= 0
  follow          target_users, target_user: str | list[str] (one required);
                  access_method str; follow_interval number >= 0
  unfollow        as follow, with unfollow_interval
  comment         comment_content str | list[str], required, not blank;
                  target_users / target_user as follow (one required);
                  access_method str; comment_interval number >= 0
  account_warmup  duration number >= 0; keywords str | list[str]
  login           username str; password str (both optional: without them
                  the agent logs in the accounts it already knows)
  profile         nickname, bio, avatar str
  match_accounts  nothing required
  ==============  ===========================================================

- Targets (follow, unfollow, comment): ``target_users`` wins over
  ``target_user`` when not null, even if it yields no target (an error). A
  string splits on newlines and commas; list items are taken whole. Pieces are
  stripped, blanks dropped, duplicates dropped keeping order. Each task's
  config is the original without ``target_users`` and with ``target_user`` set
  to its one target.
- ``len(identities) * len(configs)`` is bounded by ``MAX_TASKS`` here; the
  engine re-checks its own bound after account fan-out.
- The caller's body is never mutated: configs are rebuilt as new dicts.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from typing import Any, Callable
from zoneinfo import ZoneInfo

import orjson

from .errors import InvalidInput

API_SCRIPTS: tuple[str, ...] = ("post", "follow", "unfollow", "comment", "account_warmup", "login", "profile",
                                "match_accounts")
TARGET_SCRIPTS = ("follow", "unfollow", "comment")
MAX_IDENTITIES = 1000
MAX_TARGETS = 1000
MAX_TASKS = 10_000
MAX_NAME = 128

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_HHMM = re.compile(r"([01][0-9]|2[0-3]):([0-5][0-9])")
_SPLIT = re.compile(r"[\r\n,]")


class MissingScriptName(InvalidInput):
    business = 40002


class ScriptNotAllowed(InvalidInput):
    business = 40003


class NoAccount(InvalidInput):
    """Raised by the engine when the create script finds no account; defined here for the API's table."""

    business = 40004


@dataclass(frozen=True)
class CreateSpec:
    script_name: str
    configs: list[bytes]
    serials: list[str]
    usernames: list[str]
    multi_account: bool
    due_ms: int | None


# ---- config schemas -------------------------------------------------------
def _is_str_list(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(x, str) for x in v)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0


# kind -> (accepts the value, how the error message names the expected type)
_KINDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "str": (lambda v: isinstance(v, str), "a string"),
    "int": (lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer"),
    "number": (_is_number, "a non-negative number"),
    "str_list": (_is_str_list, "a list of strings"),
    "text": (lambda v: isinstance(v, str) or _is_str_list(v), "a string or a list of strings"),
}
_TARGETS = {"target_users": "text", "target_user": "text", "access_method": "str"}
SCHEMAS: dict[str, dict[str, str]] = {
    "post": {"content_type": "int", "captions": "str", "material_list": "str_list", "material_source": "str",
             "material_path": "str", "upload_wait_time": "number"},
    "follow": {**_TARGETS, "follow_interval": "number"},
    "unfollow": {**_TARGETS, "unfollow_interval": "number"},
    "comment": {**_TARGETS, "comment_content": "text", "comment_interval": "number"},
    "account_warmup": {"duration": "number", "keywords": "text"},
    "login": {"username": "str", "password": "str"},
    "profile": {"nickname": "str", "bio": "str", "avatar": "str"},
    "match_accounts": {},
}


def _check_config(script: str, config: dict) -> None:
    for key, kind in SCHEMAS[script].items():
        value = config.get(key)
        accepts, expected = _KINDS[kind]
        if value is not None and not accepts(value):
            raise InvalidInput(f"script_config.{key} must be {expected} for script '{script}'")
    if script == "post":
        if config.get("content_type") not in (None, 0, 1):
            raise InvalidInput("script_config.content_type must be 0 (video) or 1 (image)")
        if config.get("material_source") == "localFolder" and not (config.get("material_path") or "").strip():
            raise InvalidInput("script_config.material_path is required when material_source is 'localFolder'")
    if script == "comment":
        content = config.get("comment_content")
        pieces = [content] if isinstance(content, str) else content or []
        if not any(p.strip() for p in pieces):
            raise InvalidInput("script_config.comment_content is required for script 'comment'")


def _targets(script: str, config: dict) -> list[str]:
    key = "target_users" if config.get("target_users") is not None else "target_user"
    value = config.get(key)
    if value is None:
        raise InvalidInput(f"script_config.target_users or script_config.target_user is required for script"
                           f" '{script}'")
    pieces = _SPLIT.split(value) if isinstance(value, str) else value
    targets = list(dict.fromkeys(p.strip() for p in pieces if p.strip()))
    if not targets:
        raise InvalidInput(f"script_config.{key} has no target after splitting on newlines and commas")
    if len(targets) > MAX_TARGETS:
        raise InvalidInput(f"script_config.{key} has {len(targets)} targets; at most {MAX_TARGETS}")
    return targets


def _encode(config: dict) -> bytes:
    try:
        return orjson.dumps(config)
    except orjson.JSONEncodeError as e:
        raise InvalidInput(f"script_config cannot be encoded as JSON: {e}") from None


# ---- identities ------------------------------------------------------------
def identities(field: str, value: Any) -> list[str]:
    """A non-empty list of serials or usernames (a leading '@' dropped from usernames), stripped,
    de-duplicated in order; InvalidInput naming the field otherwise. Also used for the agent side."""
    if not isinstance(value, list) or not value:
        raise InvalidInput(f"{field} must be a non-empty list of strings")
    if len(value) > MAX_IDENTITIES:
        raise InvalidInput(f"{field} has {len(value)} entries; at most {MAX_IDENTITIES}")
    out: list[str] = []
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise InvalidInput(f"{field}[{i}] must be a string")
        name = item.strip()
        if field == "usernames":
            name = name.lstrip("@")
        if not name:
            raise InvalidInput(f"{field}[{i}] is empty")
        if len(name) > MAX_NAME:
            raise InvalidInput(f"{field}[{i}] is longer than {MAX_NAME} characters")
        out.append(name)
    return list(dict.fromkeys(out))


# ---- time --------------------------------------------------------------------
def _ms(dt: datetime) -> int:
    return (dt - _EPOCH) // timedelta(milliseconds=1)


def next_occurrence(hhmm: str, now_ms: int, tz: ZoneInfo) -> int:
    """Epoch ms of the next ``HH:MM`` in ``tz`` strictly after ``now_ms`` (fold=0, see the module docstring)."""
    m = _HHMM.fullmatch(hhmm) if isinstance(hhmm, str) else None
    if m is None:
        raise InvalidInput(f"start_time must be \"HH:MM\" (00:00 to 23:59), got {hhmm!r}")
    wall = time(int(m.group(1)), int(m.group(2)))
    today: date = (_EPOCH + timedelta(milliseconds=now_ms)).astimezone(tz).date()
    for day in (today, today + timedelta(days=1)):
        due = _ms(datetime.combine(day, wall, tzinfo=tz))
        if due > now_ms:
            return due
    raise AssertionError("unreachable: tomorrow's occurrence is always ahead")  # pragma: no cover


def format_time(ms: int | None, tz: ZoneInfo) -> str | None:
    """``"YYYY-MM-DD HH:MM:SS"`` in ``tz`` (the task record's shape), or None."""
    if ms is None:
        return None
    return (_EPOCH + timedelta(milliseconds=int(ms))).astimezone(tz).strftime("%Y-%m-%d %H:%M:%S")


# ---- the body -------------------------------------------------------------------
def parse_create(body: Any, now_ms: int, tz: ZoneInfo, max_tasks: int = MAX_TASKS) -> CreateSpec:
    """Validate a ``POST /api/v1/task`` body; raise the error of the first failing check (docstring order)."""
    if not isinstance(body, dict):
        raise InvalidInput("the request body must be a JSON object")
    script = body.get("script_name")
    if not isinstance(script, str) or not script.strip():
        raise MissingScriptName("script_name is required (a non-empty string)")
    if script not in API_SCRIPTS:
        raise ScriptNotAllowed(f"script_name '{script}' is not allowed through the API; allowed: "
                               + ", ".join(API_SCRIPTS))

    has_serials, has_users = body.get("serials") is not None, body.get("usernames") is not None
    if has_serials == has_users:
        raise InvalidInput("exactly one of serials or usernames is required"
                           + (" (both were given)" if has_serials else ""))
    serials = identities("serials", body["serials"]) if has_serials else []
    usernames = identities("usernames", body["usernames"]) if has_users else []

    multi = body.get("enable_multi_account")
    if multi is None:
        multi = False
    elif not isinstance(multi, bool):
        raise InvalidInput("enable_multi_account must be a boolean")
    if script == "login":
        multi = True
    if script == "match_accounts" or has_users:
        multi = False

    start = body.get("start_time")
    due_ms = None if start is None else next_occurrence(start, now_ms, tz)

    config = body.get("script_config")
    if not isinstance(config, dict):
        raise InvalidInput("script_config is required and must be a JSON object")
    _check_config(script, config)

    if script in TARGET_SCRIPTS:
        base = {k: v for k, v in config.items() if k != "target_users"}
        configs = [_encode({**base, "target_user": t}) for t in _targets(script, config)]
    else:
        configs = [_encode(config)]

    tasks = len(serials or usernames) * len(configs)
    if tasks > max_tasks:
        raise InvalidInput(f"this call would create {tasks} tasks ({len(serials or usernames)} identities x"
                           f" {len(configs)} targets); at most {max_tasks}"
                           f"{' (MAX_TASKS)' if max_tasks == MAX_TASKS else ''} per call")
    return CreateSpec(script, configs, serials, usernames, multi, due_ms)
