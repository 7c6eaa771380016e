"""The ``taskhub`` command line against a real Redis (it connects through REDIS_URL)."""
from __future__ import annotations

import json
import uuid

import pytest

from api.cli import main
from engine import Engine
from engine.connection import connect
from tests.helpers import request_doc


@pytest.fixture
def env(monkeypatch, real_redis_socket):
    namespace = f"cli{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("REDIS_URL", f"unix://{real_redis_socket}")
    monkeypatch.setenv("TASKHUB_NAMESPACE", namespace)
    return Engine.from_env()


def test_server_create_prints_the_key_once_and_list_hides_it(env, capsys):
    assert main(["server", "create", "tool-9", "--services", "stacking,google_stacking"]) == 0
    created = json.loads(capsys.readouterr().out)
    assert created["api_key"].startswith("thk_")
    assert env.servers.authenticate(created["api_key"]).name == "tool-9"
    assert main(["server", "list"]) == 0
    listed = capsys.readouterr().out
    assert "tool-9" in listed and created["api_key"] not in listed
    assert main(["server", "status", created["id"], "maintenance"]) == 0
    assert env.servers.get(created["id"])["status"] == "maintenance"
    assert main(["server", "delete", created["id"]]) == 0
    assert main(["server", "delete", created["id"]]) == 2  # not found the second time


def test_import_a_list_of_requests_each_atomic(env, tmp_path, capsys):
    good = request_doc(folders=2, tasks=3, prefix="CLI-A")
    bad = request_doc(folders=1, tasks=1, prefix="CLI-B")
    bad["folders"][0]["tasks"][0]["domain"] = "example.com"
    path = tmp_path / "requests.json"
    path.write_text(json.dumps([good, bad]))
    assert main(["import", str(path), "--quiet"]) == 1  # one refused
    out = capsys.readouterr().out
    assert "2 folders, 6 tasks" in out and "refused" in out and "domain" in out
    assert env.stacking.stats() == {"register": 6}
    rid = out.split("request ", 1)[1].split(":", 1)[0]
    assert main(["request", "show", rid]) == 0
    assert json.loads(capsys.readouterr().out)["total_tasks"] == 6
    assert main(["stats"]) == 0
    assert json.loads(capsys.readouterr().out)["tasks"] == {"register": 6}
    assert main(["folder", "release", "CLI-A0"]) == 0
    assert main(["request", "cancel", rid]) == 0
    assert "cancelled 6 tasks" in capsys.readouterr().out
    assert env.stacking.stats() == {"cancel": 6}


def test_connect_uses_redis_url_and_never_resends_commands(env, real_redis_socket):
    client = connect()
    kwargs = client.connection_pool.connection_kwargs
    assert kwargs["path"] == real_redis_socket  # REDIS_URL, not the embedded server
    assert kwargs["retry"].get_retries() == 0 and kwargs["socket_timeout"] is None
    assert client.ping()


def test_devices_create_list_stats_with_json_output(env, tmp_path, capsys):
    path = tmp_path / "tasks.json"
    path.write_text(json.dumps([
        {"serials": ["p1", "p2"], "script_name": "post", "script_config": {"captions": "hi"}},
        {"serials": ["p1"], "script_name": "follow", "script_config": {"target_users": "amy,bo"}},
    ]))
    capsys.readouterr()
    assert main(["devices", "create", str(path), "--json"]) == 0
    created = json.loads(capsys.readouterr().out)
    assert created["created_count"] == 4 and len(created["task_ids"]) == 4
    assert main(["devices", "list", "--serial", "p1", "--json"]) == 0
    page = json.loads(capsys.readouterr().out)
    assert page["total"] == 3 and {t["source"] for t in page["items"]} == {"ui"}
    assert main(["devices", "stats", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"total": 4, "pending": 4, "running": 0, "completed": 0,
                                                   "failed": 0}
    assert main(["devices", "list", "--script", "follow"]) == 0
    text = capsys.readouterr().out
    assert "follow" in text and "page 1: 2 of 2" in text
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"serials": ["p1"], "script_config": {}}))
    assert main(["devices", "create", str(bad)]) == 2
    assert "script_name" in capsys.readouterr().err


def test_task_center_users_channels_prices_grants_and_the_audit(env, capsys):
    assert main(["user", "create", "ana", "--quota", "100000", "--json"]) == 0
    created = json.loads(capsys.readouterr().out)
    assert set(created) == {"id", "access_token", "api_key"} and created["api_key"].startswith("sk-")
    assert main(["user", "create", "ana", "--json"]) == 2  # names are unique
    capsys.readouterr()
    assert main(["user", "create", "root", "--role", "root"]) == 0
    assert "shown once" in capsys.readouterr().out
    assert main(["price", "set", "suno", "lyrics", "700", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["suno:LYRICS"] == 700
    assert main(["channel", "add", "--base-url", "http://127.0.0.1:9", "--weight", "3", "--json"]) == 0
    cid = json.loads(capsys.readouterr().out)["id"]
    assert main(["channel", "disable", str(cid)]) == 0
    capsys.readouterr()
    assert main(["channel", "list", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == [{"id": cid, "platform": "suno", "base_url": "http://127.0.0.1:9",
                                                    "weight": 3, "status": "disabled", "name": "suno"}]
    assert main(["quota", "grant", "ana", "-50000", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"user_id": created["id"], "quota": 50_000}
    env.tasks.submit(created["api_key"], "suno", "lyrics", {"prompt": "x"})
    assert main(["user", "list", "--json"]) == 0
    ana = next(u for u in json.loads(capsys.readouterr().out) if u["username"] == "ana")
    assert (ana["quota"], ana["used_quota"]) == (49_300, 700)
    assert main(["quota", "audit"]) == 0
    assert "all balance" in capsys.readouterr().out
    env.core.r.hincrby(env.tasks.k.user(created["id"]), "used", 1)  # a balance that no longer adds up
    assert main(["quota", "audit", "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is False and [u["ok"] for u in report["users"]] == [False, True]
