"""api/hot.py: the worker endpoints skip Starlette's router, and answer exactly as the router would."""
from __future__ import annotations

import pytest
from starlette.routing import Router
from starlette.testclient import TestClient

from api.app import create_app
from api.http import MAX_BODY
from tests.helpers import ids, online_server, request_doc

LINKS = "/api/v1/stacking/links"


@pytest.fixture
def world(engine):
    """One online server holding a claimed task and a running one; a second server's key."""
    engine.stacking.create_request(request_doc(folders=2, tasks=2))
    caller, key = online_server(engine, "w1")
    _, other = online_server(engine, "w2")
    claimed, running = ids(engine.stacking.claim(caller, 2, "register"))
    engine.stacking.start(caller, running)
    return {"key": key, "other": other, "claimed": claimed, "running": running}


def requests(w: dict) -> list[tuple[str, str, dict, bytes | None]]:
    """Requests that change nothing (reads and refusals) on every hot route, plus paths next to them."""
    k, o = {"X-API-Key": w["key"]}, {"X-API-Key": w["other"]}
    c, r = w["claimed"], w["running"]
    return [
        ("GET", f"{LINKS}/{c}", k, None), ("GET", f"{LINKS}/{c}", {}, None), ("GET", f"{LINKS}/nope", k, None),
        ("HEAD", f"{LINKS}/{c}", k, None),
        ("POST", f"{LINKS}/{c}/start", o, None), ("POST", f"{LINKS}/nope/start", k, None),
        ("POST", f"{LINKS}/{r}/start", k, None), ("POST", f"{LINKS}/{c}/start", {"X-API-Key": "thk_x"}, None),
        ("POST", f"{LINKS}/{r}/complete", k, b"{"), ("POST", f"{LINKS}/{r}/complete", k, b"[1]"),
        ("POST", f"{LINKS}/{r}/complete", k, b"{}"), ("POST", f"{LINKS}/{c}/complete", k, b"{}"),
        ("POST", f"{LINKS}/{r}/complete", k, b" " * (MAX_BODY + 1)),
        ("POST", f"{LINKS}/{r}/complete", {}, b" " * (MAX_BODY + 1)),
        ("POST", f"{LINKS}/{r}/fail", k, None), ("POST", f"{LINKS}/{r}/fail", o, b'{"error_message":"x"}'),
        ("GET", f"{LINKS}/{c}/start", k, None), ("PUT", f"{LINKS}/{c}", k, None), ("POST", f"{LINKS}//start", k, None),
        ("POST", f"{LINKS}/{c}/start/", k, None), ("POST", f"{LINKS}/{c}/x/start", k, None),
        ("GET", f"{LINKS}?limit=abc", k, None), ("GET", f"{LINKS}?limit=0", {}, None),
        ("GET", "/api/v1/stacking/folders/F0/connect-status", k, None),
        ("GET", "/api/v1/stacking/folders/F0/connect-status", {}, None),
        ("GET", "/api/v1/stacking/folders//connect-status", k, None),
        ("POST", "/api/v1/worker/health", {}, None), ("POST", "/api/v1/worker/health", k, b'{"cpu_usage":"x"}'),
        ("GET", "/api/v1/worker/health", k, None),
    ]


def answer(client: TestClient, method: str, path: str, headers: dict, body: bytes | None) -> tuple:
    res = client.request(method, path, headers=headers, content=body)
    kept = {name: value for name, value in res.headers.items() if name in ("content-type", "content-length", "allow",
                                                                            "location", "retry-after")}
    return res.status_code, kept, res.content


def test_hot_answers_equal_the_routers(engine, world, redis_client):
    hot = TestClient(create_app(engine), follow_redirects=False)
    plain = TestClient(create_app(engine, hot_routes=False), follow_redirects=False)
    before = sorted(redis_client.keys(f"{engine.core.settings.namespace}*"))
    for method, path, headers, body in requests(world):
        assert answer(hot, method, path, headers, body) == answer(plain, method, path, headers, body), (method, path)
    # Every one of them was a read or a refusal: the keys are the ones there were (events aside).
    assert sorted(redis_client.keys(f"{engine.core.settings.namespace}*")) == before


def test_an_unexpected_error_on_a_hot_route_is_the_routers_500_logged_and_raised(engine, world, monkeypatch,
                                                                               caplog):
    def boom(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(engine.stacking, "start_call", boom)
    path, k = f"{LINKS}/{world['claimed']}/start", {"X-API-Key": world["key"]}
    hot = TestClient(create_app(engine), raise_server_exceptions=False)
    plain = TestClient(create_app(engine, hot_routes=False), raise_server_exceptions=False)
    caplog.clear()
    got = answer(hot, "POST", path, k, None)
    assert got == answer(plain, "POST", path, k, None)
    assert got[0] == 500 and got[2] == b'{"success":false,"message":"internal error"}'
    assert sum("unhandled error on POST" in r.getMessage() for r in caplog.records) == 2  # once per app
    with pytest.raises(RuntimeError, match="boom"):  # and the server sees it, as behind ServerErrorMiddleware
        TestClient(create_app(engine)).post(path, headers=k)


def test_hot_routes_bypass_the_router(engine, world, monkeypatch):
    routed: list[str] = []
    original = Router.app

    async def spy(self, scope, receive, send):
        routed.append(scope["path"])
        await original(self, scope, receive, send)

    monkeypatch.setattr(Router, "app", spy)
    client = TestClient(create_app(engine))
    k = {"X-API-Key": world["key"]}
    assert client.post(f"{LINKS}/{world['claimed']}/start", headers=k).json() == {"success": True}
    assert client.post(f"{LINKS}/{world['running']}/complete", headers=k, json={"link_post": "https://x.y/1"}
                       ).json() == {"success": True}
    assert client.get(f"{LINKS}/{world['claimed']}", headers=k).status_code == 200
    assert client.post("/api/v1/worker/health", headers=k).status_code == 200
    assert client.get(f"{LINKS}?limit=1", headers=k).status_code == 200
    assert routed == []
    # Everything else still goes through the router: other contracts, HEAD, a wrong method.
    assert client.get("/openapi.json").status_code == 200
    assert client.head(f"{LINKS}/{world['claimed']}", headers=k).status_code == 200
    assert client.get(f"{LINKS}/{world['claimed']}/start", headers=k).status_code == 405
    assert routed == ["/openapi.json", f"{LINKS}/{world['claimed']}", f"{LINKS}/{world['claimed']}/start"]


def test_a_hot_request_is_timed_logged_and_labelled_by_its_template(engine, world, capfd, monkeypatch):
    from api import metrics

    monkeypatch.delenv("TASKHUB_ACCESS_LOG", raising=False)
    client = TestClient(create_app(engine))
    template = f"{LINKS}/{{task_id}}/start"

    def count() -> float:
        return sum(s.value for m in metrics.REQUEST_SECONDS.collect() for s in m.samples
                   if s.name.endswith("_count") and s.labels["route"] == template)

    capfd.readouterr()
    n0 = count()
    assert client.post(f"{LINKS}/{world['claimed']}/start", headers={"X-API-Key": world["key"]}).status_code == 200
    assert count() == n0 + 1
    lines = [x for x in capfd.readouterr().err.splitlines() if " access " in x]
    assert len(lines) == 1 and f" access POST {LINKS}/{world['claimed']}/start 200 " in lines[0]
    sid = engine.servers.authenticate(world["key"]).id
    assert lines[0].endswith(f" server:{sid}") and world["key"] not in lines[0]


def test_the_served_app_settles_the_gc_once_built():
    import gc

    from api.app import GC_GEN0_THRESHOLD, settle_gc

    before = gc.get_threshold()
    try:
        settle_gc()
        assert gc.get_threshold() == (GC_GEN0_THRESHOLD, *before[1:])
        assert gc.get_freeze_count() > 1000  # the objects that exist now are out of the collector's way
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


def test_a_hot_refusal_and_a_hot_500_are_logged_with_the_status_sent(engine, world, capfd, monkeypatch):
    monkeypatch.delenv("TASKHUB_ACCESS_LOG", raising=False)
    k = {"X-API-Key": world["key"]}
    client = TestClient(create_app(engine), raise_server_exceptions=False)
    capfd.readouterr()
    big = client.post(f"{LINKS}/{world['running']}/complete", headers=k, content=b" " * (MAX_BODY + 1))
    assert big.status_code == 413

    def boom(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(engine.stacking, "start_call", boom)
    assert client.post(f"{LINKS}/{world['claimed']}/start", headers=k).status_code == 500
    lines = [x for x in capfd.readouterr().err.splitlines() if " access " in x]
    assert [line.split()[3:5] for line in lines] == [[f"{LINKS}/{world['running']}/complete", "413"],
                                                     [f"{LINKS}/{world['claimed']}/start", "500"]]


def test_a_hot_413_is_counted_unmatched_as_behind_the_router(engine, world):
    from api import metrics

    def unmatched_4xx() -> float:
        return sum(s.value for m in metrics.REQUEST_SECONDS.collect() for s in m.samples
                   if s.name.endswith("_count") and s.labels["route"] == metrics.UNMATCHED
                   and s.labels["status"] == "4xx" and s.labels["method"] == "POST")

    path, big = f"{LINKS}/{world['running']}/complete", b" " * (MAX_BODY + 1)
    for app in (create_app(engine), create_app(engine, hot_routes=False)):
        n0 = unmatched_4xx()
        assert TestClient(app).post(path, headers={"X-API-Key": world["key"]}, content=big).status_code == 413
        assert unmatched_4xx() == n0 + 1


def test_a_fixed_answer_renders_as_json_and_keeps_its_headers_to_itself():
    from api.http import JSON, Fixed

    Answer = Fixed.of(b'{"success":true}')
    first, second, plain = Answer(), Answer(), JSON(b'{"success":true}')
    assert (first.status_code, first.body, first.raw_headers) == (plain.status_code, plain.body, plain.raw_headers)
    first.headers["x-extra"] = "1"  # what a middleware may do to the response it passes on
    assert second.raw_headers == plain.raw_headers and Answer().raw_headers == plain.raw_headers
