"""The ``taskhub`` command line against a real Redis (it connects through REDIS_URL).

Every operator command is run with ``--json`` and its stdout parsed as exactly
one JSON document; each exit code of the table in ``api/cli_support.py`` is
produced by a real situation and checked.
"""
from __future__ import annotations

import json
import uuid

import pytest

from api import cli_support
from api.cli import build_parser, main
from engine import Engine
from engine.connection import connect
from tests.helpers import ids, online_server, request_doc


@pytest.fixture
def env(monkeypatch, real_redis_socket):
    namespace = f"cli{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("REDIS_URL", f"unix://{real_redis_socket}")
    monkeypatch.setenv("TASKHUB_NAMESPACE", namespace)
    monkeypatch.delenv("TASKHUB_PLAN", raising=False)
    return Engine.from_env()


def run(capsys, *argv: str) -> tuple[int, object]:
    """``taskhub ARGV --json``: the exit code and stdout parsed as one JSON document (it must be one)."""
    capsys.readouterr()
    code = main([*argv, "--json"])
    out = capsys.readouterr().out
    return code, json.loads(out)


def test_server_create_show_status_delete_and_not_found(env, capsys):
    code, created = run(capsys, "server", "create", "tool-9", "--services", "stacking,google_stacking")
    assert code == 0 and created["api_key"].startswith("thk_")
    assert env.servers.authenticate(created["api_key"]).name == "tool-9"
    code, listed = run(capsys, "server", "list")
    assert [s["name"] for s in listed] == ["tool-9"] and created["api_key"] not in json.dumps(listed)
    assert run(capsys, "server", "status", created["id"], "maintenance") == (
        0, {"id": created["id"], "status": "maintenance", "previous": "online"})
    code, shown = run(capsys, "server", "get", created["id"])
    assert code == 0 and shown["status"] == "maintenance" and shown["services"] == ["stacking", "google_stacking"]
    assert main(["server", "list"]) == 0
    assert "tool-9" in capsys.readouterr().out  # human table
    assert run(capsys, "server", "delete", created["id"]) == (0, {"id": created["id"], "deleted": True})
    assert run(capsys, "server", "delete", created["id"]) == (
        cli_support.NOT_FOUND, {"error": {"code": "not_found", "message": "server not found", "exit": 3}})
    assert main(["server", "show", created["id"]]) == 3
    assert capsys.readouterr().err.strip() == "error: server not found"


def test_server_create_in_human_form_shows_the_key_once(env, capsys):
    assert main(["server", "create", "tool-h"]) == 0
    out = capsys.readouterr()
    key = out.out.split("api_key ", 1)[1].split()[0]
    assert env.servers.authenticate(key).name == "tool-h" and "cannot be shown again" in out.err


def test_import_a_list_of_requests_each_atomic(env, tmp_path, capsys):
    good = request_doc(folders=2, tasks=3, prefix="CLI-A")
    bad = request_doc(folders=1, tasks=1, prefix="CLI-B")
    bad["folders"][0]["tasks"][0]["domain"] = "example.com"
    path = tmp_path / "requests.json"
    path.write_text(json.dumps([good, bad]))
    code, report = run(capsys, "import", str(path))
    assert code == cli_support.NEGATIVE  # one refused, the other stored
    assert report["created"] == 1 and report["refused"] == 1
    stored, refused = report["requests"]
    assert (stored["folders"], stored["tasks"]) == (2, 6)
    assert refused["index"] == 1 and refused["error"]["exit"] == 2 and "domain" in refused["error"]["message"]
    assert env.stacking.stats() == {"register": 6}
    code, view = run(capsys, "request", "show", stored["request_id"])
    assert code == 0 and view["total_tasks"] == 6 and len(view["folders"]) == 2
    assert run(capsys, "stats") == (0, {"tasks": {"register": 6}, "servers": {"total": 0, "online": 0}})
    assert run(capsys, "folder", "release", "CLI-A0") == (0, {"folder_id": "CLI-A0", "released": False})
    assert run(capsys, "request", "cancel", stored["request_id"]) == (
        0, {"request_id": stored["request_id"], "cancelled": 6})
    assert env.stacking.stats() == {"cancel": 6}
    assert main(["import", str(path)]) == 1  # human form: one line per request, then a summary
    out = capsys.readouterr().out
    assert "request #0 refused: folder_id 'CLI-A0' is already used" in out  # folder ids are never reused
    assert out.endswith("0 requests stored, 2 refused\n")


def test_import_of_one_refused_request_exits_with_its_error(env, tmp_path, capsys):
    doc = request_doc(folders=1, tasks=2, prefix="CLI-C")
    path = tmp_path / "one.json"
    path.write_text(json.dumps(doc))
    code, created = run(capsys, "import", str(path))
    assert code == 0 and created["tasks"] == 2
    code, error = run(capsys, "import", str(path))  # its folder id is taken now
    assert code == cli_support.CONFLICT and error["error"]["code"] == "invalid_state"
    assert "CLI-C0" in error["error"]["message"]
    assert env.stacking.stats() == {"register": 2}  # nothing of the refused copy is left


def test_task_cancel_twice_is_refused_by_state(env, tmp_path, capsys):
    path = tmp_path / "one.json"
    path.write_text(json.dumps(request_doc(folders=1, tasks=1, prefix="CLI-T")))
    assert main(["import", str(path), "--quiet"]) == 0
    caller, _ = online_server(env)
    [tid] = ids(env.stacking.claim(caller, limit=1))
    assert run(capsys, "task", "cancel", tid) == (0, {"task_id": tid, "cancelled": True})
    code, error = run(capsys, "task", "cancel", tid)
    assert code == cli_support.CONFLICT and error["error"]["code"] == "invalid_state"
    assert run(capsys, "task", "cancel", "nope")[0] == cli_support.NOT_FOUND


def test_connect_uses_redis_url_and_never_resends_commands(env, real_redis_socket):
    client = connect()
    kwargs = client.connection_pool.connection_kwargs
    assert kwargs["path"] == real_redis_socket  # REDIS_URL, not the embedded server
    assert kwargs["retry"].get_retries() == 0 and kwargs["socket_timeout"] is None
    assert client.ping()


def test_devices_create_list_show_stop_retry_delete(env, tmp_path, capsys):
    path = tmp_path / "tasks.json"
    path.write_text(json.dumps([
        {"serials": ["p1", "p2"], "script_name": "post", "script_config": {"captions": "hi"}},
        {"serials": ["p1"], "script_name": "follow", "script_config": {"target_users": "amy,bo"}},
    ]))
    code, created = run(capsys, "devices", "create", str(path))
    assert code == 0 and created["created_count"] == 4 and created["refused"] == []
    first, second, *rest = created["task_ids"]
    code, page = run(capsys, "devices", "list", "--serial", "p1")
    assert code == 0 and page["total"] == 3 and {t["source"] for t in page["items"]} == {"ui"}
    assert run(capsys, "devices", "stats") == (0, {"total": 4, "pending": 4, "running": 0, "completed": 0,
                                                   "failed": 0})
    code, task = run(capsys, "devices", "show", str(first))
    assert code == 0 and task["id"] == first and task["status"] == 0
    assert run(capsys, "devices", "stop", str(first)) == (0, {"task_id": first, "status": 3})
    assert env.devices.get(first)["remark"] == "stopped"
    assert run(capsys, "devices", "stop", str(first))[0] == cli_support.CONFLICT  # failed already
    assert run(capsys, "devices", "retry", str(first)) == (0, {"task_id": first, "status": 0})
    assert run(capsys, "devices", "retry", str(first))[0] == cli_support.CONFLICT  # pending: nothing to retry
    assert run(capsys, "devices", "stop", str(second))[0] == 0
    assert run(capsys, "devices", "retry-all") == (0, {"retried": 1})
    assert run(capsys, "devices", "delete", str(first)) == (0, {"deleted": 1})
    code, error = run(capsys, "devices", "delete", str(first))
    assert code == cli_support.NOT_FOUND and error["error"]["code"] == "not_found"
    assert run(capsys, "devices", "show", "abc")[0] == cli_support.USAGE  # not a task id
    ids_file = tmp_path / "ids.json"
    ids_file.write_text(json.dumps([second, *rest, 999999]))
    assert run(capsys, "devices", "delete", "--file", str(ids_file)) == (0, {"deleted": 3, "not_found": [999999]})
    assert env.devices.stats()["total"] == 0
    assert main(["devices", "list", "--script", "follow"]) == 0
    assert "page 1: 0 of 0" in capsys.readouterr().out


def test_devices_create_reports_refused_bodies_of_a_list_and_one_body_exits_with_its_error(env, tmp_path, capsys):
    good = {"serials": ["p1"], "script_name": "post", "script_config": {"captions": "hi"}}
    bad = {"serials": ["p1"], "script_config": {}}
    mixed = tmp_path / "mixed.json"
    mixed.write_text(json.dumps([good, bad]))
    code, report = run(capsys, "devices", "create", str(mixed))
    assert code == cli_support.NEGATIVE and report["created_count"] == 1
    assert [r["index"] for r in report["refused"]] == [1] and "script_name" in report["refused"][0]["error"]["message"]
    one = tmp_path / "bad.json"
    one.write_text(json.dumps(bad))
    assert main(["devices", "create", str(one)]) == cli_support.USAGE
    assert "script_name" in capsys.readouterr().err
    assert env.devices.stats()["total"] == 1


def test_devices_license_and_the_starter_plan_is_forbidden(env, monkeypatch, capsys):
    code, lic = run(capsys, "devices", "license")
    assert code == 0 and lic["plan_name"] == "pro" and lic["api_enabled"] is True
    monkeypatch.setenv("TASKHUB_PLAN", "starter")
    code, error = run(capsys, "devices", "license")
    assert code == cli_support.FORBIDDEN and error["error"]["code"] == "forbidden"


def test_task_center_users_channels_prices_grants_and_the_audit(env, capsys):
    code, created = run(capsys, "user", "create", "ana", "--quota", "100000")
    assert code == 0 and set(created) == {"id", "access_token", "api_key"} and created["api_key"].startswith("sk-")
    code, error = run(capsys, "user", "create", "ana")
    assert code == cli_support.CONFLICT and "already exists" in error["error"]["message"]  # names are unique
    assert main(["user", "create", "root", "--role", "root"]) == 0
    assert "shown once" in capsys.readouterr().out
    code, ana = run(capsys, "user", "show", "ana")
    assert code == 0 and (ana["id"], ana["role"], ana["status"]) == (created["id"], 1, 1)
    assert run(capsys, "user", "role", "ana", "admin")[1]["role"] == 10
    assert run(capsys, "user", "disable", str(created["id"]))[1]["status"] == 2
    assert run(capsys, "user", "enable", "ana")[1]["status"] == 1
    assert run(capsys, "user", "show", "nobody")[0] == cli_support.NOT_FOUND
    code, token = run(capsys, "user", "token", "ana", "--quota", "10")
    assert code == 0 and token["user_id"] == created["id"] and token["quota"] == 10
    assert run(capsys, "price", "set", "suno", "lyrics", "700")[1]["suno:LYRICS"] == 700
    assert run(capsys, "price", "set", "suno", "video", "1")[0] == cli_support.USAGE
    code, added = run(capsys, "channel", "add", "--base-url", "http://127.0.0.1:9", "--weight", "3")
    cid = added["id"]
    assert run(capsys, "channel", "disable", str(cid))[1]["status"] == "disabled"
    assert run(capsys, "channel", "update", str(cid), "--weight", "5") == (
        0, {"id": cid, "platform": "suno", "base_url": "http://127.0.0.1:9", "weight": 5, "status": "disabled",
            "name": "suno"})
    assert run(capsys, "channel", "update", str(cid))[0] == cli_support.USAGE  # nothing to change
    assert run(capsys, "channel", "list")[1] == [{"id": cid, "platform": "suno", "base_url": "http://127.0.0.1:9",
                                                  "weight": 5, "status": "disabled", "name": "suno"}]
    assert run(capsys, "quota", "grant", "ana", "-50000") == (0, {"user_id": created["id"], "quota": 50_000})
    env.tasks.submit(created["api_key"], "suno", "lyrics", {"prompt": "x"})
    ana = next(u for u in run(capsys, "user", "list")[1] if u["username"] == "ana")
    assert (ana["quota"], ana["used_quota"]) == (49_300, 700)
    code, page = run(capsys, "center", "list", "--user", "ana")
    assert code == 0 and page["total"] == 1 and page["items"][0]["action"] == "LYRICS"
    task_id = page["items"][0]["task_id"]
    assert run(capsys, "center", "list", "--user", "root")[1]["total"] == 0
    assert run(capsys, "center", "list", "--status", "SUCCESS")[1]["total"] == 0
    assert run(capsys, "center", "show", task_id)[1]["user_id"] == created["id"]
    assert run(capsys, "center", "show", "task_nope")[0] == cli_support.NOT_FOUND
    assert run(capsys, "center", "list", "--status", "DONE")[0] == cli_support.USAGE
    assert main(["quota", "audit"]) == 0
    assert "all balance" in capsys.readouterr().out
    env.core.r.hincrby(env.tasks.k.user(created["id"]), "used", 1)  # a balance that no longer adds up
    code, report = run(capsys, "quota", "audit")
    assert code == cli_support.NEGATIVE
    assert report["ok"] is False and [u["ok"] for u in report["users"]] == [False, True]
    assert run(capsys, "channel", "delete", str(cid)) == (0, {"id": cid, "deleted": True})
    assert run(capsys, "channel", "delete", str(cid))[0] == cli_support.NOT_FOUND


# ---- exit codes and output discipline -------------------------------------------------------
def test_usage_errors_exit_2_in_json_too(env, capsys):
    assert main(["server", "status", "x", "sleeping"]) == cli_support.USAGE
    err = capsys.readouterr().err
    assert err.startswith("usage: taskhub server status") and "invalid choice: 'sleeping'" in err
    code, error = run(capsys, "server", "frobnicate")
    assert code == cli_support.USAGE and error["error"]["code"] == "usage"
    assert run(capsys, "import", "/nonexistent/requests.json") == (
        2, {"error": {"code": "invalid_input", "exit": 2,
                      "message": "cannot read /nonexistent/requests.json: No such file or directory"}})


def test_json_before_the_command_is_the_same_as_after(env, capsys):
    assert main(["--json", "devices", "stats"]) == 0
    assert json.loads(capsys.readouterr().out)["total"] == 0


def test_redis_unreachable_exits_69(env, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("REDIS_URL", f"unix://{tmp_path}/no-redis-here.sock")
    code, error = run(capsys, "stats")
    assert code == cli_support.UNAVAILABLE == 69 and error["error"]["code"] == "unavailable"
    assert main(["server", "list"]) == 69
    assert capsys.readouterr().err.startswith("error: Redis unavailable: ConnectionError")


def test_an_unexpected_error_exits_70_with_its_traceback_on_stderr(env, monkeypatch, capsys):
    from engine.servers import Servers

    def broken(self, limit: int = 1000) -> list:
        raise RuntimeError("boom")

    monkeypatch.setattr(Servers, "list", broken)
    capsys.readouterr()
    assert main(["server", "list", "--json"]) == cli_support.INTERNAL == 70
    out = capsys.readouterr()
    assert json.loads(out.out) == {"error": {"code": "internal", "message": "internal error: RuntimeError: boom",
                                             "exit": 70}}
    assert "Traceback" in out.err and "RuntimeError: boom" in out.err


def test_every_exit_code_of_the_table_is_documented_once():
    codes = {status for _, status, _ in cli_support.EXIT_CODES} | {0, 1, 70, 130}
    doc = cli_support.__doc__
    assert all(f"\n{c:<6}" in doc for c in codes), codes
    readme = (__import__("pathlib").Path(__file__).resolve().parent.parent / "README.md").read_text()
    table = readme.split("## Command line", 1)[1].split("\n## ", 1)[0]
    assert all(f"| {c} |" in table for c in codes)


def test_every_operator_command_takes_json():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")

    def leaves(p, path):
        nested = [a for a in p._actions if a.__class__.__name__ == "_SubParsersAction"]
        if not nested:
            yield path, p
            return
        for name, child in nested[0].choices.items():
            yield from leaves(child, path + [name])

    found = list(leaves(parser, []))
    assert len(found) > 40
    for path, leaf in found:
        assert any("--json" in a.option_strings for a in leaf._actions), path
    assert set(sub.choices) >= {"server", "import", "request", "task", "folder", "stats", "devices", "user",
                                "channel", "price", "quota", "center"}


# ---- progress bars ------------------------------------------------------------------------
def test_progress_bar_is_off_when_stderr_is_not_a_terminal_and_forced_on_by_the_option(env, tmp_path, capsys):
    path = tmp_path / "big.json"
    path.write_text(json.dumps([request_doc(folders=2, tasks=5, prefix=f"P{i}-") for i in range(3)]))
    capsys.readouterr()
    assert main(["import", str(path), "--json"]) == 0
    out = capsys.readouterr()
    assert out.err == "" and json.loads(out.out)["created"] == 3  # not a terminal: no bar, clean output
    path.write_text(json.dumps([request_doc(folders=1, tasks=4, prefix=f"Q{i}-") for i in range(2)]))
    assert main(["import", str(path), "--json", "--progress"]) == 0
    out = capsys.readouterr()
    assert json.loads(out.out)["created"] == 2  # stdout still one JSON document
    assert "8/8" in out.err and "task" in out.err  # the bar, on stderr
    ids_file = tmp_path / "ids.json"
    ids_file.write_text("[1, 2, 3]")
    assert main(["devices", "delete", "--file", str(ids_file), "--progress"]) == 0
    out = capsys.readouterr()
    assert "3/3" in out.err and "not found: 1, 2, 3" in out.out


def test_audit_and_retry_all_draw_a_bar_that_reaches_the_total(env, capsys):
    for name in ("ann", "bob", "cy"):
        env.tasks.create_user(name, quota=1000)
    env.devices.create({"serials": ["p1", "p2"], "script_name": "post", "script_config": {"captions": "x"}})
    for task in env.devices.list()["items"]:
        env.devices.core.call(env.devices.stop_call(task["id"], "test"))
    capsys.readouterr()
    assert main(["quota", "audit", "--json", "--progress"]) == 0
    out = capsys.readouterr()
    users = json.loads(out.out)["users"]
    assert f"{len(users)}/{len(users)}" in out.err and "user" in out.err and len(users) >= 3
    assert main(["devices", "retry-all", "--json", "--progress"]) == 0
    out = capsys.readouterr()
    assert json.loads(out.out) == {"retried": 2} and "2/2" in out.err
    assert main(["quota", "audit", "--json"]) == 0 and capsys.readouterr().err == ""  # not a terminal: no bar


def test_progress_bar_is_on_by_default_on_a_terminal(env, tmp_path, capsys, monkeypatch):
    path = tmp_path / "tasks.json"
    path.write_text(json.dumps([{"serials": [f"s{i}"], "script_name": "post", "script_config": {}}
                                for i in range(3)]))
    monkeypatch.setattr("sys.stderr.isatty", lambda: True, raising=False)
    capsys.readouterr()
    assert main(["devices", "create", str(path)]) == 0
    assert "3/3" in capsys.readouterr().err
    assert main(["devices", "create", str(path), "--json"]) == 0  # --json: no bar unless asked
    assert capsys.readouterr().err == ""
