"""The access log: one line per request with the caller and never a key; TASKHUB_ACCESS_LOG=0 turns it off."""
from __future__ import annotations

from starlette.testclient import TestClient

from api.app import create_app
from tests.helpers import online_server

HEALTH = "/api/v1/worker/health"


def test_one_line_per_request_names_the_server_never_the_key(engine, capfd, monkeypatch):
    monkeypatch.delenv("TASKHUB_ACCESS_LOG", raising=False)
    caller, key = online_server(engine)
    client = TestClient(create_app(engine))
    capfd.readouterr()
    assert client.post(HEALTH, headers={"X-API-Key": key}).status_code == 200
    assert client.get("/api/v1/stacking/links", headers={"X-API-Key": "thk_wrong"}).status_code == 401
    lines = [line for line in capfd.readouterr().err.splitlines() if " access " in line]
    assert len(lines) == 2
    assert f" access POST {HEALTH} 200 " in lines[0] and lines[0].endswith(f"server:{caller.id}")
    assert " access GET /api/v1/stacking/links 401 " in lines[1] and lines[1].endswith(" -")
    assert key not in "".join(lines) and "thk_wrong" not in "".join(lines)


def test_access_log_can_be_switched_off(engine, capfd, monkeypatch):
    monkeypatch.setenv("TASKHUB_ACCESS_LOG", "0")
    _, key = online_server(engine)
    client = TestClient(create_app(engine))
    capfd.readouterr()
    assert client.post(HEALTH, headers={"X-API-Key": key}).status_code == 200
    assert " access " not in capfd.readouterr().err


def test_lines_of_one_tick_go_out_together_in_whole_lines_of_at_most_pipe_buf():
    import asyncio

    from api.http import PIPE_BUF, AccessLog

    writes: list[bytes] = []
    log = AccessLog(write=writes.append, fmt="text")
    scope = {"method": "POST", "path": "/api/v1/stacking/links/" + "t" * 36 + "/start", "state": {"caller": "server:s"}}

    async def tick() -> int:
        for _ in range(100):  # a hundred requests ending in the same tick
            log(scope, 200, 0.001)
        held = len(writes)
        await asyncio.sleep(0)  # the tick ends
        return held

    held = asyncio.run(tick())
    lines = b"".join(writes).splitlines()
    assert len(lines) == 100 and all(b" access POST " in line for line in lines)
    assert 1 < len(writes) < 10 and held == len(writes) - 1  # full writes at once, the rest at the tick's end
    assert all(len(w) <= PIPE_BUF and w.endswith(b"\n") for w in writes)
    before = len(writes)
    log(scope, 200, 0.001)  # no event loop: written at once
    assert len(writes) == before + 1 and writes[-1].count(b"\n") == 1
