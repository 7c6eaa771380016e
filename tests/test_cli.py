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
