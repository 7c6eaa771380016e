"""POST /api/v1/task body validation (engine/device_scripts.py): pure Python, no Redis."""
from __future__ import annotations

import copy
from datetime import datetime, timezone
from zoneinfo import ZoneInfo

import orjson
import pytest

from engine.device_scripts import (
    API_SCRIPTS, MAX_IDENTITIES, MAX_TARGETS, MAX_TASKS, TARGET_SCRIPTS, CreateSpec, MissingScriptName, NoAccount,
    ScriptNotAllowed, format_time, next_occurrence, parse_create,
)
from engine.errors import EngineError, InvalidInput

UTC = ZoneInfo("UTC")
WARSAW = ZoneInfo("Europe/Warsaw")


def ms(*args: int, tz: ZoneInfo = UTC) -> int:
    return int(datetime(*args, tzinfo=tz).timestamp() * 1000)


NOW = ms(2025, 6, 15, 12, 0)  # a Sunday noon UTC

# A minimal valid config per script.
VALID = {
    "post": {"content_type": 0, "captions": "hi"},
    "follow": {"target_user": "alice"},
    "unfollow": {"target_users": ["alice"]},
    "comment": {"comment_content": "nice", "target_user": "alice"},
    "account_warmup": {"duration": 10},
    "login": {},
    "profile": {"nickname": "n"},
    "match_accounts": {},
}


def body(script: str = "post", **over) -> dict:
    b = {"serials": ["S1"], "script_name": script, "script_config": copy.deepcopy(VALID[script])}
    b.update(over)
    return b


def parse(b, now: int = NOW, tz: ZoneInfo = UTC) -> CreateSpec:
    return parse_create(b, now, tz)


def refused(b, cls=InvalidInput, match: str | None = None, business: int | None = None) -> InvalidInput:
    with pytest.raises(cls, match=match) as e:
        parse(b)
    assert type(e.value) is cls  # not a subclass with another business code
    if business is not None:
        assert getattr(type(e.value), "business", 40001) == business
    return e.value


def configs(spec: CreateSpec) -> list[dict]:
    return [orjson.loads(c) for c in spec.configs]


# ---- constants and classes ------------------------------------------------------
def test_constants():
    assert API_SCRIPTS == ("post", "follow", "unfollow", "comment", "account_warmup", "login", "profile",
                           "match_accounts")
    assert TARGET_SCRIPTS == ("follow", "unfollow", "comment")
    assert (MAX_IDENTITIES, MAX_TARGETS, MAX_TASKS) == (1000, 1000, 10_000)


@pytest.mark.parametrize("cls,code", [(MissingScriptName, 40002), (ScriptNotAllowed, 40003), (NoAccount, 40004)])
def test_error_classes(cls, code):
    assert issubclass(cls, InvalidInput) and issubclass(cls, EngineError)
    assert cls.business == code
    err = cls("given by caller")
    assert err.message == "given by caller"
    assert not hasattr(InvalidInput, "business")  # plain InvalidInput is 40001 by the API's table


def test_spec_is_frozen():
    spec = parse(body())
    with pytest.raises(AttributeError):
        spec.script_name = "x"  # type: ignore[misc]


# ---- a valid call per script ----------------------------------------------------
@pytest.mark.parametrize("script", API_SCRIPTS)
def test_every_api_script_accepted_with_minimal_config(script):
    spec = parse(body(script))
    assert spec.script_name == script
    assert spec.serials == ["S1"] and spec.usernames == []
    assert len(spec.configs) == 1 and all(isinstance(c, bytes) for c in spec.configs)
    assert spec.due_ms is None


def test_non_target_config_encoded_whole_with_unknown_keys():
    cfg = {"content_type": 1, "captions": "c", "material_list": ["a.jpg"], "future_key": {"x": [1, 2]},
           "upload_wait_time": 2.5}
    spec = parse(body("post", script_config=cfg))
    assert spec.configs == [orjson.dumps(cfg)]
    assert spec.multi_account is False


# ---- body and precedence --------------------------------------------------------
@pytest.mark.parametrize("b", [None, [], "x", 1, [{"script_name": "post"}]])
def test_body_must_be_object(b):
    refused(b, InvalidInput, "JSON object", 40001)


@pytest.mark.parametrize("name", [None, "", "   ", 5, ["post"], True])
def test_missing_script_name(name):
    b = body()
    b["script_name"] = name
    refused(b, MissingScriptName, "script_name", 40002)


def test_absent_script_name():
    b = body()
    del b["script_name"]
    refused(b, MissingScriptName, "script_name is required", 40002)


@pytest.mark.parametrize("name", ["scrape", "Post", " post", "stacking"])
def test_script_not_allowed(name):
    e = refused(body(script_name=name), ScriptNotAllowed, None, 40003)
    assert repr(name)[1:-1] in e.message and "allowed" in e.message


def test_precedence_missing_name_beats_everything_else():
    refused({"script_name": ""}, MissingScriptName)  # no identities, no config either
    refused({"serials": ["a"], "usernames": ["b"], "script_config": 3}, MissingScriptName)


def test_precedence_not_allowed_beats_input_errors():
    refused({"script_name": "hack", "serials": [], "script_config": "no"}, ScriptNotAllowed)


def test_precedence_body_not_object_first():
    refused(["script_name"], InvalidInput)


def test_precedence_identities_before_config():
    refused({"script_name": "post", "script_config": 1}, InvalidInput, "serials or usernames")


# ---- identities ----------------------------------------------------------------
def test_both_identity_kinds_refused():
    refused(body(usernames=["u"]), InvalidInput, "exactly one of serials or usernames.*both", 40001)


def test_neither_identity_kind_refused():
    b = body()
    del b["serials"]
    refused(b, InvalidInput, "exactly one of serials or usernames", 40001)
    refused(body(serials=None), InvalidInput, "exactly one of serials or usernames")


def test_null_serials_with_usernames_is_usernames_mode():
    spec = parse(body(serials=None, usernames=["bob"]))
    assert spec.usernames == ["bob"] and spec.serials == []


@pytest.mark.parametrize("field", ["serials", "usernames"])
@pytest.mark.parametrize("value,match", [
    ([], "non-empty list"), ("S1", "non-empty list"), ({"a": 1}, "non-empty list"),
    (["ok", 3], r"\[1\] must be a string"), (["ok", "  "], r"\[1\] is empty"), ([""], r"\[0\] is empty"),
    (["x" * 129], "longer than 128"),
])
def test_identity_list_errors(field, value, match):
    b = body()
    del b["serials"]
    b[field] = value
    e = refused(b, InvalidInput, match, 40001)
    assert field in e.message


def test_identity_limits():
    assert parse(body(serials=[f"S{i}" for i in range(MAX_IDENTITIES)])).serials[-1] == f"S{MAX_IDENTITIES - 1}"
    refused(body(serials=[f"S{i}" for i in range(MAX_IDENTITIES + 1)]), InvalidInput, "at most 1000")
    assert parse(body(serials=["x" * 128])).serials == ["x" * 128]


def test_serials_stripped_and_deduplicated_in_order():
    spec = parse(body(serials=[" B ", "A", "B", "C", "A\n"]))
    assert spec.serials == ["B", "A", "C"]


def test_serials_keep_at_sign():
    assert parse(body(serials=["@S1"])).serials == ["@S1"]


def test_usernames_at_stripped_and_deduplicated():
    b = body(usernames=["@bob", "bob", " @@alice ", "carol", "@Bob"])
    del b["serials"]
    spec = parse(b)
    assert spec.usernames == ["bob", "alice", "carol", "Bob"] and spec.serials == []


@pytest.mark.parametrize("name", ["@", "@@@", " @ "])
def test_username_of_only_at_signs_is_invalid(name):
    b = body(usernames=["ok", name])
    del b["serials"]
    refused(b, InvalidInput, r"usernames\[1\] is empty")


# ---- enable_multi_account ------------------------------------------------------------
@pytest.mark.parametrize("value,expected", [(None, False), (False, False), (True, True)])
def test_multi_account_flag(value, expected):
    assert parse(body(enable_multi_account=value)).multi_account is expected


def test_multi_account_default_false():
    assert parse(body()).multi_account is False


@pytest.mark.parametrize("value", [1, 0, "true", [], {}])
def test_multi_account_must_be_bool(value):
    refused(body(enable_multi_account=value), InvalidInput, "enable_multi_account must be a boolean", 40001)


def test_multi_account_type_checked_in_usernames_mode_too():
    b = body(usernames=["u"], enable_multi_account="yes")
    del b["serials"]
    refused(b, InvalidInput, "enable_multi_account")


def test_usernames_mode_never_multi_account():
    for script in ("post", "login"):
        b = body(script, usernames=["u"], enable_multi_account=True)
        del b["serials"]
        assert parse(b).multi_account is False


def test_login_forces_multi_account_in_device_mode():
    assert parse(body("login")).multi_account is True
    assert parse(body("login", enable_multi_account=False)).multi_account is True


def test_match_accounts_forces_multi_account_off():
    assert parse(body("match_accounts", enable_multi_account=True)).multi_account is False


# ---- start_time ------------------------------------------------------------------------
def test_start_time_absent_or_null_is_immediate():
    assert parse(body()).due_ms is None
    assert parse(body(start_time=None)).due_ms is None


def test_start_time_sets_due_in_tz():
    assert parse(body(start_time="13:30")).due_ms == ms(2025, 6, 15, 13, 30)
    assert parse(body(start_time="11:00")).due_ms == ms(2025, 6, 16, 11, 0)
    # 12:00 UTC is 14:00 in Warsaw (CEST): 13:30 local has passed, so tomorrow 11:30 UTC
    assert parse(body(start_time="13:30"), tz=WARSAW).due_ms == ms(2025, 6, 16, 11, 30)


@pytest.mark.parametrize("value", ["9:30", "24:00", "12:60", "1230", "12:3", " 12:30", "12:30 ", "12:30\n",
                                   "12:30:00", "", "ab:cd", "１２:３０", 1230, 12.5, ["12:30"], True])
def test_bad_start_time(value):
    refused(body(start_time=value), InvalidInput, "start_time", 40001)


def test_next_occurrence_later_today():
    assert next_occurrence("12:01", NOW, UTC) == ms(2025, 6, 15, 12, 1)
    assert next_occurrence("23:59", NOW, UTC) == ms(2025, 6, 15, 23, 59)


def test_next_occurrence_exactly_now_is_tomorrow():
    assert next_occurrence("12:00", NOW, UTC) == ms(2025, 6, 16, 12, 0)


def test_next_occurrence_one_ms_before_is_today():
    assert next_occurrence("12:00", NOW - 1, UTC) == NOW


def test_next_occurrence_past_is_tomorrow():
    assert next_occurrence("00:00", NOW, UTC) == ms(2025, 6, 16, 0, 0)
    assert next_occurrence("11:59", NOW, UTC) == ms(2025, 6, 16, 11, 59)


def test_next_occurrence_month_and_year_rollover():
    assert next_occurrence("08:00", ms(2025, 12, 31, 9, 0), UTC) == ms(2026, 1, 1, 8, 0)


def test_next_occurrence_warsaw():
    # 22:30 UTC on 15 June is 00:30 on 16 June in Warsaw: "today" is the 16th there.
    now = ms(2025, 6, 15, 22, 30)
    assert next_occurrence("01:00", now, WARSAW) == ms(2025, 6, 15, 23, 0)
    assert next_occurrence("00:15", now, WARSAW) == ms(2025, 6, 16, 22, 15)
    # winter: CET is UTC+1
    assert next_occurrence("09:00", ms(2025, 1, 10, 7, 0), WARSAW) == ms(2025, 1, 10, 8, 0)


def test_next_occurrence_across_spring_forward():
    # Warsaw jumps 02:00 CET -> 03:00 CEST on 30 March 2025 (01:00 UTC).
    before = ms(2025, 3, 29, 12, 0)
    assert next_occurrence("09:00", before, WARSAW) == ms(2025, 3, 30, 7, 0)  # CEST, UTC+2
    assert next_occurrence("01:30", ms(2025, 3, 29, 23, 0), WARSAW) == ms(2025, 3, 30, 0, 30)  # still CET
    # 02:30 does not exist that day: fold=0 uses the CET offset -> 01:30 UTC, i.e. 03:30 CEST
    assert next_occurrence("02:30", ms(2025, 3, 29, 23, 0), WARSAW) == ms(2025, 3, 30, 1, 30)
    assert format_time(ms(2025, 3, 30, 1, 30), WARSAW) == "2025-03-30 03:30:00"


def test_next_occurrence_across_fall_back():
    # Warsaw goes 03:00 CEST -> 02:00 CET on 26 October 2025 (01:00 UTC); 02:30 happens twice.
    assert next_occurrence("02:30", ms(2025, 10, 25, 22, 0), WARSAW) == ms(2025, 10, 26, 0, 30)  # first one
    assert next_occurrence("09:00", ms(2025, 10, 25, 22, 0), WARSAW) == ms(2025, 10, 26, 8, 0)  # CET, UTC+1
    # after both 02:30s (now 02:45 CET) the next is the day after
    assert next_occurrence("02:30", ms(2025, 10, 26, 1, 45), WARSAW) == ms(2025, 10, 27, 1, 30)


def test_next_occurrence_result_is_int():
    assert type(next_occurrence("13:00", NOW, UTC)) is int


@pytest.mark.parametrize("value", ["25:00", "7:00", None, 700])
def test_next_occurrence_raises_invalid_input(value):
    with pytest.raises(InvalidInput, match="HH:MM"):
        next_occurrence(value, NOW, UTC)  # type: ignore[arg-type]


# ---- format_time --------------------------------------------------------------------
def test_format_time():
    assert format_time(None, UTC) is None
    assert format_time(NOW, UTC) == "2025-06-15 12:00:00"
    assert format_time(NOW, WARSAW) == "2025-06-15 14:00:00"
    assert format_time(ms(2025, 1, 10, 23, 30), WARSAW) == "2025-01-11 00:30:00"
    assert format_time(NOW + 59_999, UTC) == "2025-06-15 12:00:59"  # truncated, not rounded
    assert format_time(0, UTC) == "1970-01-01 00:00:00"


def test_format_time_round_trips_next_occurrence():
    due = next_occurrence("07:05", NOW, WARSAW)
    assert format_time(due, WARSAW) == "2025-06-16 07:05:00"


# ---- script_config -------------------------------------------------------------------
@pytest.mark.parametrize("value", [None, [], "{}", 1, True])
def test_script_config_must_be_object(value):
    refused(body(script_config=value), InvalidInput, "script_config is required and must be a JSON object", 40001)


def test_script_config_absent():
    b = body()
    del b["script_config"]
    refused(b, InvalidInput, "script_config")


@pytest.mark.parametrize("script,key,value,expected", [
    ("post", "content_type", "0", "an integer"),
    ("post", "content_type", True, "an integer"),
    ("post", "content_type", 0.0, "an integer"),
    ("post", "captions", 5, "a string"),
    ("post", "material_list", "a.mp4", "a list of strings"),
    ("post", "material_list", ["a", 1], "a list of strings"),
    ("post", "material_source", 1, "a string"),
    ("post", "material_path", ["p"], "a string"),
    ("post", "upload_wait_time", -1, "a non-negative number"),
    ("post", "upload_wait_time", "5", "a non-negative number"),
    ("post", "upload_wait_time", False, "a non-negative number"),
    ("post", "upload_wait_time", float("nan"), "a non-negative number"),
    ("post", "upload_wait_time", float("inf"), "a non-negative number"),
    ("follow", "target_users", 5, "a string or a list of strings"),
    ("follow", "target_users", ["a", None], "a string or a list of strings"),
    ("follow", "target_user", {"u": 1}, "a string or a list of strings"),
    ("follow", "access_method", 2, "a string"),
    ("follow", "follow_interval", True, "a non-negative number"),
    ("unfollow", "unfollow_interval", "3", "a non-negative number"),
    ("comment", "comment_content", 7, "a string or a list of strings"),
    ("comment", "comment_interval", -0.5, "a non-negative number"),
    ("account_warmup", "duration", "10", "a non-negative number"),
    ("account_warmup", "duration", True, "a non-negative number"),
    ("account_warmup", "keywords", 3, "a string or a list of strings"),
    ("login", "username", 1, "a string"),
    ("login", "password", 1234, "a string"),
    ("profile", "nickname", 1, "a string"),
    ("profile", "bio", ["b"], "a string"),
    ("profile", "avatar", False, "a string"),
])
def test_known_key_wrong_type(script, key, value, expected):
    b = body(script)
    b["script_config"][key] = value
    e = refused(b, InvalidInput, None, 40001)
    assert e.message == f"script_config.{key} must be {expected} for script '{script}'"


@pytest.mark.parametrize("script,key,value", [
    ("post", "upload_wait_time", 0), ("post", "upload_wait_time", 1.5), ("post", "content_type", 1),
    ("follow", "follow_interval", 3), ("account_warmup", "keywords", ["a", "b"]),
    ("account_warmup", "keywords", "a"), ("account_warmup", "duration", 0.5), ("comment", "comment_content", ["a"]),
    ("post", "captions", None),  # null counts as absent
])
def test_known_key_accepted_types(script, key, value):
    b = body(script)
    b["script_config"][key] = value
    assert orjson.loads(parse(b).configs[0])[key] == value


def test_unknown_keys_pass_through_any_type():
    for script in API_SCRIPTS:
        b = body(script)
        b["script_config"]["x_new"] = {"nested": [True, None]}
        assert all(orjson.loads(c)["x_new"] == {"nested": [True, None]} for c in parse(b).configs)


def test_unknown_keys_of_other_scripts_not_checked():
    # comment_content is comment's key; for post it is just an unknown key
    assert orjson.loads(parse(body("post", script_config={"comment_content": 5})).configs[0]) == {"comment_content": 5}


@pytest.mark.parametrize("value", [2, -1, 10])
def test_post_content_type_values(value):
    refused(body("post", script_config={"content_type": value}), InvalidInput, "content_type must be 0")


def test_post_local_folder_needs_material_path():
    msg = "script_config.material_path is required when material_source is 'localFolder'"
    for cfg in ({"material_source": "localFolder"}, {"material_source": "localFolder", "material_path": ""},
                {"material_source": "localFolder", "material_path": "   "},
                {"material_source": "localFolder", "material_path": None}):
        e = refused(body("post", script_config=cfg), InvalidInput, None, 40001)
        assert e.message == msg
    ok = {"material_source": "localFolder", "material_path": "/sdcard/DCIM"}
    assert configs(parse(body("post", script_config=ok))) == [ok]


def test_post_other_material_sources_need_no_path():
    for source in ("materialLibrary", "list", "anything"):
        assert parse(body("post", script_config={"material_source": source})).configs


def test_comment_needs_content():
    for cfg in ({"target_user": "a"}, {"target_user": "a", "comment_content": ""},
                {"target_user": "a", "comment_content": "  "}, {"target_user": "a", "comment_content": []},
                {"target_user": "a", "comment_content": ["", " "]}, {"target_user": "a", "comment_content": None}):
        refused(body("comment", script_config=cfg), InvalidInput,
                "script_config.comment_content is required for script 'comment'", 40001)


def test_comment_content_checked_before_targets():
    refused(body("comment", script_config={}), InvalidInput, "comment_content")


@pytest.mark.parametrize("script", TARGET_SCRIPTS)
def test_target_scripts_need_a_target(script):
    cfg = {"comment_content": "c"} if script == "comment" else {}
    e = refused(body(script, script_config=cfg), InvalidInput, None, 40001)
    assert e.message == f"script_config.target_users or script_config.target_user is required for script '{script}'"
    cfg = {**cfg, "target_users": None, "target_user": None}
    refused(body(script, script_config=cfg), InvalidInput, "target_users or script_config.target_user is required")


# ---- targets and fan-out -------------------------------------------------------------
def targets_of(cfg: dict, script: str = "follow") -> list[str]:
    return [c["target_user"] for c in configs(parse(body(script, script_config=cfg)))]


def test_string_target_splits_on_newlines_commas_and_strips():
    raw = "alice, bob\ncarol\r\n  dave  ,,\n\n, eve"
    assert targets_of({"target_users": raw}) == ["alice", "bob", "carol", "dave", "eve"]


def test_target_user_string_also_splits():
    assert targets_of({"target_user": "a,b\nc"}) == ["a", "b", "c"]


def test_targets_deduplicated_keeping_first_order():
    assert targets_of({"target_users": "b,a,b, a ,c"}) == ["b", "a", "c"]
    assert targets_of({"target_users": ["b", " a", "b", "a ", "c"]}) == ["b", "a", "c"]


def test_list_targets_stripped_blank_dropped_not_split():
    assert targets_of({"target_users": [" x ", "", "  ", "y,z"]}) == ["x", "y,z"]


def test_target_users_wins_over_target_user():
    cfg = {"target_users": ["a", "b"], "target_user": "zzz", "follow_interval": 5}
    out = configs(parse(body("follow", script_config=cfg)))
    assert out == [{"target_user": "a", "follow_interval": 5}, {"target_user": "b", "follow_interval": 5}]


def test_null_target_users_falls_back_to_target_user():
    assert targets_of({"target_users": None, "target_user": "solo"}) == ["solo"]


@pytest.mark.parametrize("value", ["", " , \n ,", [], ["", " "]])
def test_no_targets_after_splitting(value):
    e = refused(body("follow", script_config={"target_users": value, "target_user": "fallback"}), InvalidInput,
                None, 40001)
    assert e.message == "script_config.target_users has no target after splitting on newlines and commas"


def test_no_target_user_after_splitting_names_target_user():
    refused(body("unfollow", script_config={"target_user": ",,"}), InvalidInput, "script_config.target_user has no")


def test_target_limit():
    ok = [f"u{i}" for i in range(MAX_TARGETS)]
    assert len(parse(body("follow", script_config={"target_users": ok})).configs) == MAX_TARGETS
    too_many = ",".join(f"u{i}" for i in range(MAX_TARGETS + 1))
    refused(body("follow", script_config={"target_users": too_many}), InvalidInput,
            "target_users has 1001 targets; at most 1000", 40001)
    # duplicates do not count
    assert len(parse(body("follow", script_config={"target_users": ok + ok})).configs) == MAX_TARGETS


@pytest.mark.parametrize("script", TARGET_SCRIPTS)
def test_each_config_has_one_target_and_the_rest_of_the_config(script):
    cfg = {"target_users": "a\nb", "access_method": "search", "extra": [1], "comment_content": ["hi", "yo"]}
    out = configs(parse(body(script, script_config=cfg)))
    rest = {"access_method": "search", "extra": [1], "comment_content": ["hi", "yo"]}
    assert out == [{**rest, "target_user": "a"}, {**rest, "target_user": "b"}]
    assert all("target_users" not in c for c in out)


def test_target_user_keeps_its_key_position():
    spec = parse(body("follow", script_config={"x": 1, "target_user": "a,b", "y": 2}))
    assert spec.configs == [b'{"x":1,"target_user":"a","y":2}', b'{"x":1,"target_user":"b","y":2}']


def test_non_target_scripts_make_one_config_even_with_target_keys():
    cfg = {"duration": 5, "target_users": "a,b,c"}
    spec = parse(body("account_warmup", script_config=cfg))
    assert configs(spec) == [cfg]


def test_unencodable_config_refused():
    refused(body("post", script_config={"captions": "c", "n": 2 ** 70}), InvalidInput,
            "script_config cannot be encoded")


# ---- task count ---------------------------------------------------------------------
def test_task_count_limit():
    serials = [f"S{i}" for i in range(10)]
    targets = [f"u{i}" for i in range(MAX_TASKS // 10)]
    spec = parse(body("follow", serials=serials, script_config={"target_users": targets}))
    assert len(spec.serials) * len(spec.configs) == MAX_TASKS
    e = refused(body("follow", serials=serials + ["S10"], script_config={"target_users": targets}),
                InvalidInput, None, 40001)
    assert "11000 tasks" in e.message and "at most 10000 (MAX_TASKS)" in e.message


def test_task_count_uses_deduplicated_identities():
    serials = [f"S{i}" for i in range(10)] * 2
    targets = [f"u{i}" for i in range(MAX_TASKS // 10)]
    assert len(parse(body("follow", serials=serials, script_config={"target_users": targets})).configs) == 1000


def test_task_count_in_usernames_mode():
    b = body("comment", usernames=[f"@u{i}" for i in range(11)],
             script_config={"comment_content": "c", "target_users": [f"t{i}" for i in range(1000)]})
    del b["serials"]
    refused(b, InvalidInput, "11000 tasks")


# ---- immutability --------------------------------------------------------------------
@pytest.mark.parametrize("script", API_SCRIPTS)
def test_body_not_mutated(script):
    b = body(script, usernames=["@a", "a"], start_time="23:00", enable_multi_account=True,
             extra_top={"k": [1]})
    del b["serials"]
    b["script_config"].update({"target_users": " x, y ,x", "target_user": "z", "nested": {"l": [1]}})
    before = copy.deepcopy(b)
    parse(b)
    assert b == before
    assert list(b["script_config"]) == list(before["script_config"])


def test_body_not_mutated_on_error():
    b = body("comment", script_config={"target_users": ",", "comment_content": "c"})
    before = copy.deepcopy(b)
    with pytest.raises(InvalidInput):
        parse(b)
    assert b == before


# ---- a full call ---------------------------------------------------------------------
def test_full_device_mode_call():
    spec = parse_create({
        "serials": ["dev1", "dev2", "dev1"], "script_name": "comment", "enable_multi_account": True,
        "start_time": "18:45", "ignored_top_level": 1,
        "script_config": {"comment_content": ["great", "wow"], "target_users": "@a\n@b", "comment_interval": 30},
    }, ms(2025, 6, 15, 10, 0), WARSAW)
    assert spec == CreateSpec(
        script_name="comment",
        configs=[orjson.dumps({"comment_content": ["great", "wow"], "comment_interval": 30, "target_user": t})
                 for t in ("@a", "@b")],
        serials=["dev1", "dev2"], usernames=[], multi_account=True,
        due_ms=ms(2025, 6, 15, 16, 45),
    )
    assert format_time(spec.due_ms, WARSAW) == "2025-06-15 18:45:00"
