"""Load a contract's Lua scripts once and run them by SHA.

Layout: ``engine/lua/<contract>/<verb>-<N>.lua``, one operation per file (after
BullMQ's ``src/commands``), where N is the number of KEYS. A line
``-- @include name`` pastes ``engine/lua/<contract>/includes/name.lua`` or,
when the contract has none of that name, the shared
``engine/lua/includes/name.lua`` (events, status and counters, leases,
retries: the machinery every contract uses, written once). Each include is
pasted once per script, however many includes ask for it. ``ScriptSet.run``
checks the key count against the file name, so changing a script's keys forces
a rename.

A script as loaded keeps only the top-level ``local function``s it refers to
(``drop_unused``): Lua 5.1 builds every one of them anew on every call, with
its upvalues, and collects them afterwards, which was most of the ~60,000-70,000
Redis instructions a call cost before its first item (callgrind). An include
serves many scripts; each script pays only for the helpers it uses.

redis-py's ``Script`` does EVALSHA and reloads on NOSCRIPT (for example after a
Redis restart or ``SCRIPT FLUSH``), which is exactly the behaviour we want.
"""
from __future__ import annotations

import re
from collections import Counter
from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

import redis
from redis.commands.core import Script

LUA_DIR = Path(__file__).parent / "lua"
SHARED_INCLUDES = LUA_DIR / "includes"
_INCLUDE = re.compile(r"^-- @include (\w+)\s*$", re.MULTILINE)
_NAME = re.compile(r"^(?P<verb>[a-z_]+)-(?P<nkeys>\d+)\.lua$")


@lru_cache(maxsize=None)
def render(path: Path) -> str:
    """The script as loaded: its includes pasted in, without the helpers it never refers to.
    Rendered once per process (every ``ScriptSet`` of every engine loads the same files)."""
    return drop_unused(paste_includes(path))


def paste_includes(path: Path, seen: set[str] | None = None) -> str:
    """The script's source with its includes pasted in (each include once per script)."""
    seen = set() if seen is None else seen
    contract_includes = path.parent / "includes" if path.parent.name != "includes" else path.parent

    def paste(match: re.Match[str]) -> str:
        name = match.group(1)
        if name in seen:
            return ""
        seen.add(name)
        own = contract_includes / f"{name}.lua"
        return paste_includes(own if own.exists() else SHARED_INCLUDES / f"{name}.lua", seen)

    return _INCLUDE.sub(paste, path.read_text())


_FUNCTION = re.compile(r"^local function (\w+)\(")
_WORD = re.compile(r"\w+")


def code_lines(source: str) -> list[str]:
    """``source``'s lines with every whole-line comment blanked (a line whose first
    non-blank characters are ``--``, and a ``--[[ ... ]]`` block that starts a line), so
    that the lines keep their numbers. A comment after code on a line stays: it can only
    make a name look used, never unused."""
    out: list[str] = []
    in_block = False
    for line in source.split("\n"):
        stripped = line.lstrip()
        if in_block:
            in_block = "]]" not in line
            out.append("")
        elif stripped.startswith("--[["):
            in_block = "]]" not in stripped[4:]
            out.append("")
        elif stripped.startswith("--"):
            out.append("")
        else:
            out.append(line)
    return out


def drop_unused(source: str) -> str:
    """``source`` without the top-level ``local function`` blocks whose name appears nowhere
    else in it, repeated until none is left (a helper used only by a dropped helper goes too).

    A block is its ``local function name(`` line at column 0 through the first line that is
    exactly ``end``. A name that appears anywhere else in the code keeps its block; a name
    that only a whole-line comment mentions does not (``code_lines``): the includes' comments
    name their helpers freely, and 216 helpers across the shipped scripts had been kept for
    a mention alone, 12 of them in the stacking claim. If a block cannot be delimited that
    way (a one-line function, another column-0 ``local`` before its ``end``), the source is
    returned unchanged: nothing is dropped on a guess."""
    lines = source.split("\n")
    code = code_lines(source)
    blocks: list[tuple[str, int, int]] = []  # name, first line, last line
    i = 0
    while i < len(code):  # blocks are found in the code: a commented-out one is no block
        m = _FUNCTION.match(code[i])
        if m is None:
            i += 1
            continue
        if code[i].rstrip().endswith(" end"):
            return source
        j = i + 1
        while j < len(code) and code[j] != "end":
            if code[j].startswith("local "):
                return source
            j += 1
        if j == len(code):
            return source
        blocks.append((m.group(1), i, j))
        i = j + 1
    # How often each name appears in the code, and in each block: dropping a block
    # takes its own words out of the count, so one tokenizing pass serves every round.
    uses = Counter(_WORD.findall("\n".join(code)))
    words = {a: Counter(_WORD.findall("\n".join(code[a:b + 1]))) for _, a, b in blocks}
    dropped: set[int] = set()
    live = list(blocks)
    while True:
        unused = [(name, a, b) for name, a, b in live if uses[name] == 1]
        if not unused:
            return "\n".join(line for n, line in enumerate(lines) if n not in dropped)
        for _, a, b in unused:
            dropped.update(range(a, b + 1))
            uses.subtract(words[a])
        live = [block for block in live if block[1] not in dropped]


class ScriptSet:
    """One contract's scripts, registered on one client; ``run(verb, keys, args)`` executes one."""

    def __init__(self, client: redis.Redis, contract: str) -> None:
        self.client = client
        self.contract = contract
        self._scripts: dict[str, tuple[int, Script]] = {}
        folder = LUA_DIR / contract
        if not folder.is_dir():
            raise ValueError(f"no scripts for contract {contract!r} (expected {folder})")
        for path in sorted(folder.glob("*.lua")):
            m = _NAME.match(path.name)
            if not m:
                raise ValueError(f"script file name must be <verb>-<nkeys>.lua: {path.name}")
            self._scripts[m["verb"]] = (int(m["nkeys"]), client.register_script(render(path)))

    def run(self, verb: str, keys: Sequence[str], args: Sequence[Any], client: Any = None) -> Any:
        nkeys, script = self._scripts[verb]
        if len(keys) != nkeys:
            raise ValueError(f"{verb} takes {nkeys} keys, got {len(keys)}")
        return script(keys=keys, args=args, client=client or self.client)

    def sha(self, verb: str, nkeys: int) -> str:
        """The SHA1 of script ``verb``, checking its key count (for pipelines queued by hand)."""
        n, script = self._scripts[verb]
        if nkeys != n:
            raise ValueError(f"{verb} takes {n} keys, got {nkeys}")
        return script.sha

    def load_all(self) -> None:
        """SCRIPT LOAD every script (after NOSCRIPT: the server lost its script cache).

        On a cluster each SCRIPT LOAD goes to every primary (redis-py's routing for it);
        a cluster pipeline cannot carry it."""
        from redis.cluster import RedisCluster

        if isinstance(self.client, RedisCluster):
            for _, script in self._scripts.values():
                self.client.script_load(script.script)
            return
        pipe = self.client.pipeline(transaction=False)
        for _, script in self._scripts.values():
            pipe.script_load(script.script)
        pipe.execute()

    def verbs(self) -> list[str]:
        return sorted(self._scripts)
