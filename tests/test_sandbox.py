"""The sandbox platform: a fake suno-compatible upstream, driven by a hand-moved clock."""
from __future__ import annotations

import re

import pytest
from starlette.testclient import TestClient

from api.sandbox import create_sandbox_app


class Clock:
    """Seconds, moved by hand."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


def client_for(clock: Clock, **kwargs) -> TestClient:
    kwargs.setdefault("duration_s", 20.0)
    kwargs.setdefault("fail_rate", 0.0)
    kwargs.setdefault("seed", 1)
    return TestClient(create_sandbox_app(clock=clock, **kwargs))


def submit(client: TestClient, prompt: str, action: str = "music", **kwargs) -> str:
    response = client.post(f"/suno/submit/{action}", json={"prompt": prompt}, **kwargs)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["code"] == "success"
    assert body["message"] == ""
    assert re.fullmatch(r"sbx_[0-9a-f]{24}", body["data"])
    return body["data"]


def fetch(client: TestClient, job_id: str) -> dict:
    response = client.get(f"/suno/fetch/{job_id}")
    assert response.status_code == 200, response.text
    assert response.json()["code"] == "success"
    return response.json()["data"]


def percent(item: dict) -> int:
    return int(item["progress"].rstrip("%"))


def test_music_job_walks_through_the_statuses_to_success(clock):
    client = client_for(clock)
    start = clock()
    job_id = submit(client, "a song about the sea")

    item = fetch(client, job_id)
    assert item["task_id"] == job_id
    assert item["action"] == "MUSIC"
    assert (item["status"], item["progress"]) == ("SUBMITTED", "10%")
    assert item["submit_time"] == int(start)
    assert (item["start_time"], item["finish_time"]) == (0, 0)
    assert item["fail_reason"] == ""
    assert item["data"] == {}

    clock.advance(3)  # 0.15 * D
    item = fetch(client, job_id)
    assert (item["status"], item["progress"]) == ("QUEUED", "20%")
    assert item["data"] == {}

    progresses = []
    for elapsed in (5, 8, 12, 16, 19.9):
        clock.now = start + elapsed
        item = fetch(client, job_id)
        assert item["status"] == "IN_PROGRESS"
        assert item["start_time"] == int(start + 5)
        assert item["finish_time"] == 0
        assert item["data"] == {}
        progresses.append(percent(item))
    assert progresses[0] == 30
    assert all(30 <= p <= 99 for p in progresses)
    assert progresses == sorted(progresses) and len(set(progresses)) == len(progresses)

    clock.now = start + 20
    item = fetch(client, job_id)
    assert (item["status"], item["progress"]) == ("SUCCESS", "100%")
    assert item["finish_time"] == int(start + 20)
    assert item["fail_reason"] == ""
    assert item["data"] == {"clips": [{
        "id": job_id,
        "title": "a song about the sea",
        "audio_url": f"http://sandbox.invalid/{job_id}.mp3",
        "duration": 120,
    }]}


def test_title_is_cut_to_forty_chars_or_untitled(clock):
    client = client_for(clock, duration_s=0)
    long_id = submit(client, "x" * 100)
    empty = client.post("/suno/submit/music", json={}).json()["data"]
    assert fetch(client, long_id)["data"]["clips"][0]["title"] == "x" * 40
    assert fetch(client, empty)["data"]["clips"][0]["title"] == "untitled"


def test_gpt_description_prompt_is_used_when_no_prompt(clock):
    client = client_for(clock, duration_s=0)
    job_id = client.post("/suno/submit/music", json={"gpt_description_prompt": "please fail"}).json()["data"]
    item = fetch(client, job_id)
    assert item["status"] == "FAILURE"


def test_the_word_fail_always_fails_but_not_inside_other_words(clock):
    client = client_for(clock, fail_rate=0.0)
    failing = [submit(client, p) for p in ("please FAIL now", "fail", "this should fail.")]
    passing = [submit(client, p) for p in ("a failure song", "it failed", "failing", "nofail")]

    clock.advance(10)
    assert all(fetch(client, i)["status"] == "IN_PROGRESS" for i in failing + passing)

    clock.advance(10)
    for job_id in failing:
        item = fetch(client, job_id)
        assert (item["status"], item["progress"]) == ("FAILURE", "100%")
        assert item["fail_reason"] == "sandbox: the prompt asked to fail"
        assert item["data"] == {}
    for job_id in passing:
        item = fetch(client, job_id)
        assert item["status"] == "SUCCESS"
        assert item["fail_reason"] == ""


def test_fail_rate_one_fails_everything(clock):
    client = client_for(clock, fail_rate=1.0, duration_s=0)
    ids = [submit(client, f"song {n}") for n in range(10)]
    for job_id in ids:
        item = fetch(client, job_id)
        assert item["status"] == "FAILURE"
        assert item["fail_reason"] == "sandbox: simulated failure"
        assert item["data"] == {}


def test_zero_duration_is_terminal_at_once(clock):
    client = client_for(clock, duration_s=0)
    item = fetch(client, submit(client, "now"))
    assert item["status"] == "SUCCESS"


def test_error_rate_one_answers_503_and_creates_nothing(clock):
    client = client_for(clock, error_rate=1.0)
    for _ in range(5):
        response = client.post("/suno/submit/music", json={"prompt": "x"})
        assert response.status_code == 503
        assert response.json() == {
            "code": "unavailable", "message": "sandbox: simulated transient error", "data": None}
    assert client.get("/health").json() == {"ok": True, "jobs": 0}
    response = client.post("/suno/fetch", json={"ids": ["sbx_000000000000000000000000"]})
    assert response.status_code == 200
    assert response.json() == {"code": "success", "message": "", "data": []}


def test_unknown_action_is_400(clock):
    client = client_for(clock)
    response = client.post("/suno/submit/video", json={"prompt": "x"})
    assert response.status_code == 400
    body = response.json()
    assert body["code"] == "invalid_request"
    assert body["message"]
    assert body["data"] is None
    assert client.get("/health").json()["jobs"] == 0


def test_action_is_case_insensitive(clock):
    client = client_for(clock)
    assert fetch(client, submit(client, "x", action="MuSiC"))["action"] == "MUSIC"
    assert fetch(client, submit(client, "x", action="LYRICS"))["action"] == "LYRICS"


@pytest.mark.parametrize("content", [b"[1, 2]", b'"text"', b"not json", b""])
def test_non_object_body_is_400(clock, content):
    client = client_for(clock)
    response = client.post("/suno/submit/music", content=content,
                           headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert response.json()["code"] == "invalid_request"
    assert response.json()["data"] is None
    assert client.get("/health").json()["jobs"] == 0


@pytest.mark.parametrize("body", [{"ids": "abc"}, {"ids": [1, 2]}, {}, [1]])
def test_fetch_with_a_bad_body_is_400(clock, body):
    client = client_for(clock)
    response = client.post("/suno/fetch", json=body)
    assert response.status_code == 400
    assert response.json()["code"] == "invalid_request"
    assert response.json()["data"] is None


def test_fetch_returns_known_ids_in_the_order_asked(clock):
    client = client_for(clock)
    a, b, c = (submit(client, p) for p in ("a", "b", "c"))
    response = client.post("/suno/fetch", json={"ids": [c, "sbx_unknown", a, "nope", b]})
    assert response.status_code == 200
    body = response.json()
    assert body["code"] == "success"
    assert [item["task_id"] for item in body["data"]] == [c, a, b]
    assert client.get("/health").json() == {"ok": True, "jobs": 3}


def test_get_unknown_is_404(clock):
    client = client_for(clock)
    response = client.get("/suno/fetch/sbx_nothere")
    assert response.status_code == 404
    body = response.json()
    assert body["code"] == "task_not_exist"
    assert body["data"] is None


def test_key_requires_the_right_bearer(clock):
    client = client_for(clock, key="s3cret")
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
        response = client.post("/suno/submit/music", json={"prompt": "x"}, headers=headers)
        assert response.status_code == 401
        assert response.json()["code"] == "unauthorized"
        assert response.json()["data"] is None
        assert client.get("/suno/fetch/x", headers=headers).status_code == 401
        assert client.post("/suno/fetch", json={"ids": []}, headers=headers).status_code == 401

    good = {"Authorization": "Bearer s3cret"}
    job_id = submit(client, "x", headers=good)
    assert client.get(f"/suno/fetch/{job_id}", headers=good).status_code == 200
    response = client.post("/suno/fetch", json={"ids": [job_id]}, headers=good)
    assert response.status_code == 200
    assert len(response.json()["data"]) == 1


def test_no_key_accepts_any_authorization(clock):
    client = client_for(clock)
    submit(client, "x")
    submit(client, "x", headers={"Authorization": "Bearer anything"})
    assert client.get("/health").json()["jobs"] == 2


def test_lyrics_success_data(clock):
    client = client_for(clock)
    job_id = submit(client, "rain on the window", action="lyrics")
    assert fetch(client, job_id)["status"] == "SUBMITTED"
    clock.advance(20)
    item = fetch(client, job_id)
    assert item["action"] == "LYRICS"
    assert (item["status"], item["progress"]) == ("SUCCESS", "100%")
    assert item["data"] == {"title": "rain on the window",
                            "text": "sandbox lyrics for: rain on the window"}


def test_seed_makes_ids_repeatable(clock):
    first = [submit(client_for(clock, seed=7), "x") for _ in range(1)]
    second = [submit(client_for(clock, seed=7), "x") for _ in range(1)]
    assert first == second
