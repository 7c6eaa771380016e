"""Script loading: headers, key counts, and survival of a flushed script cache (NOSCRIPT)."""
import re

import pytest

from engine.scripts import LUA_DIR, ScriptSet, code_lines, drop_unused, paste_includes, render
from tests.helpers import ids, link, online_server, request_doc


CONTRACT_SCRIPTS = sorted(LUA_DIR.glob("*/*-*.lua"))


def test_every_contract_has_scripts_and_no_script_sits_outside_a_contract_folder():
    assert {p.parent.name for p in CONTRACT_SCRIPTS} == {"stacking", "devices", "tasks"}
    assert not list(LUA_DIR.glob("*.lua"))
    assert not list(LUA_DIR.glob("includes/*-*.lua"))


def test_every_script_declares_its_keys_and_argv():
    assert CONTRACT_SCRIPTS
    for path in CONTRACT_SCRIPTS:
        nkeys = int(re.search(r"-(\d+)\.lua$", path.name).group(1))
        header = path.read_text().split("]]", 1)[0]
        for i in range(1, nkeys + 1):
            assert f"KEYS[{i}]" in header, f"{path.name} does not document KEYS[{i}]"
        assert f"KEYS[{nkeys + 1}]" not in header
        assert "ARGV[1]" in header and "Returns" in header, path.name


def test_includes_are_pasted_once():
    source = render(LUA_DIR / "stacking" / "claim-5.lua")
    assert "@include" not in source
    assert source.count("local function load_task(") == 1
    # shared includes, reached through several contract includes, appear once too
    assert source.count("local function emit(") == 1
    assert source.count("local function change_status(") == 1
    assert source.count("local function sweep_lapsed(") == 1


HELPERS = """local K = ARGV[1]
local function leaf(x)
  return x .. K
end
local function only_for_unused(x)
  return leaf(x)
end
local function unused()
  return only_for_unused(1)
end
-- mentioned_in_a_comment() is only talked about here
--[[ and here: mentioned_in_a_comment(), and
local function commented_out()
  return 3
end
]]
local function mentioned_in_a_comment()
  return 2
end
local function after_code()
  return 4
end
local function used(x)
  return leaf(x)  -- after_code: a comment after code counts
end
return used('a')
"""


def test_helpers_a_script_never_calls_are_dropped_with_the_helpers_only_they_call():
    out = drop_unused(HELPERS)
    assert "local function unused(" not in out
    assert "local function only_for_unused(" not in out  # its one caller was dropped
    assert "local function used(" in out and "local function leaf(" in out  # leaf is still called by used
    assert "local function mentioned_in_a_comment(" not in out  # whole-line comments do not keep a helper
    assert "local function after_code(" in out  # a comment after code does: kept on the safe side
    assert "-- mentioned_in_a_comment() is only talked about here" in out  # comments themselves stay
    assert "local function commented_out()" in out  # inside a block comment: not a block, left as it was
    assert out.endswith("return used('a')\n")
    assert "\nend\nend" not in out  # whole blocks go, header through its column-0 end


def test_a_block_that_cannot_be_delimited_drops_nothing():
    one_liner = "local function f(x) return x end  -- a comment\nlocal function g()\n  return 1\nend\nreturn 0\n"
    assert drop_unused(one_liner) == one_liner
    unterminated = "local function f()\n  return 1\nreturn f()\n"
    assert drop_unused(unterminated) == unterminated


def test_shipped_scripts_keep_every_helper_they_call():
    # Each helper a rendered script still names is defined in it; the suite runs every script.
    for path in LUA_DIR.glob("*/*.lua"):
        if path.parent.name == "includes":
            continue
        source = render(path)
        code = "\n".join(code_lines(source))
        defined = set(re.findall(r"^local function (\w+)\(", code, re.MULTILINE))
        for name in re.findall(r"^local function (\w+)\(", paste_includes(path), re.MULTILINE):
            if re.search(rf"\b{name}\b", code.replace(f"local function {name}(", "")):
                assert name in defined, f"{path.name} uses {name} but it was dropped"


def test_shared_includes_name_no_contract():
    for path in (LUA_DIR / "includes").glob("*.lua"):
        text = path.read_text().lower()
        for contract in ("stacking", "device", "folder", "serial", "server", "quota", "refund", "channel", "platform"):
            assert contract not in text, f"{path.name} mentions {contract!r}"


def test_unknown_contract_has_no_scripts(engine):
    with pytest.raises(ValueError, match="no scripts"):
        ScriptSet(engine.core.r, "nope")


def test_wrong_key_count_is_refused(engine):
    with pytest.raises(ValueError):
        engine.core.scripts.run("start", ["only-one"], [])


def test_scripts_reload_after_the_script_cache_is_flushed(engine):
    caller, _ = online_server(engine)
    engine.stacking.create_request(request_doc(tasks=2))
    engine.core.r.script_flush()
    [tid, _] = ids(engine.stacking.claim(caller.id, 2))
    engine.core.r.script_flush()
    engine.stacking.start(caller.id, tid)
    engine.core.r.script_flush()
    engine.stacking.complete(caller.id, tid, link(1))
    assert engine.stacking.task_state(tid)["status"] == "profiled"
    assert ScriptSet(engine.core.r, "stacking").verbs() == engine.core.scripts.verbs()


def test_the_event_stream_is_trimmed_by_each_call_that_writes_to_it_and_only_once(engine):
    """includes/events.lua: the first event of a call trims the stream to about the cap, the
    call's other events are appended untrimmed, so it holds at most the cap, one call's events
    and the node of slack that `~` allows (stream-node-max-entries: 100)."""
    cap, node = 10, 100
    engine.core.settings.events_maxlen = cap
    caller, _ = online_server(engine)
    engine.stacking.create_request(request_doc(tasks=300))  # one call: 300 events
    tids = ids(engine.stacking.claim(caller.id, 20))
    core = engine.stacking.shard_of_task(tids[0])
    after_import = core.r.xlen(core.keys.events)
    assert 300 <= after_import <= cap + node + 300  # trimmed by its first event only
    for tid in tids:  # one event per call
        engine.stacking.start(caller.id, tid)
        assert core.r.xlen(core.keys.events) <= cap + node + 1
    assert core.r.xlen(core.keys.events) < after_import


def test_a_sliced_command_sends_a_long_list_whole_and_in_order(redis_client, tmp_path):
    """includes/slices.lua: 9,000 list values and 5,000 (score, member) pairs, each more than
    Redis' Lua 5.1 unpacks at once (its C stack limit is 8,000: ``unpack`` of the whole list
    fails with "too many results to unpack"), arrive complete and in order; an empty list
    sends nothing."""
    path = tmp_path / "sliced-3.lua"
    path.write_text("-- @include slices\n"
                    "local n, pairs_n = tonumber(ARGV[1]), tonumber(ARGV[2])\n"
                    "local values, scored = {}, {}\n"
                    "for i = 1, n do values[i] = 'v' .. i end\n"
                    "for i = 1, pairs_n do scored[2 * i - 1] = i; scored[2 * i] = 'm' .. i end\n"
                    "call_sliced(redis.call, 'RPUSH', KEYS[1], values)\n"
                    "call_sliced(redis.call, 'ZADD', KEYS[2], scored)\n"
                    "call_sliced(redis.call, 'RPUSH', KEYS[3], {})\n"
                    "return redis.call('EXISTS', KEYS[3])\n")
    keys = ["{sliced}:list", "{sliced}:zset", "{sliced}:none"]
    assert redis_client.eval(render(path), 3, *keys, 9000, 5000) == 0
    assert redis_client.lrange(keys[0], 0, -1) == [f"v{i}".encode() for i in range(1, 9001)]
    assert redis_client.zrange(keys[1], 0, -1, withscores=True) == [(f"m{i}".encode(), float(i))
                                                                   for i in range(1, 5001)]
    redis_client.delete(*keys)
