"""The dashboard in a real browser: Debian's chromium, headless, driven by Playwright.

The real app runs under uvicorn (in a thread) on the test session's real
redis-server, with an admin token, seeded with work of all three contracts.
The test logs in through the form as a person would, reads what the page
shows, changes state behind the page's back and waits for the page to show it
without a reload, then uses the actions (accepting and dismissing their
confirmations) and checks Redis through the engine. It takes a screenshot of
the seeded page; with ``TASKHUB_SCREENSHOT=docs/dashboard.png`` it writes the
README's picture there (otherwise to a temporary directory, so a test run leaves
the checkout clean). Skipped only when no chromium is installed
(`.ci/run` installs Debian's `chromium`, so CI runs it).
"""
from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

import orjson
import pytest
import redis

from api.app import create_app
from engine import Engine, Settings
from tests.helpers import link, online_server, request_doc, serving

CHROMIUM = next((p for p in ("/usr/bin/chromium", shutil.which("chromium")) if p and Path(p).exists()), None)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium installed (Debian: apt-get install chromium)"
                                                          "; .ci/run installs it so CI runs this test")
TOKEN = "dashboard-test-token"
WAIT_MS = 8000  # live refresh polls every 2 s


@pytest.fixture
def live(real_redis_socket):
    """(engine, base url) of the real app serving on a free loopback port."""
    client = redis.Redis(unix_socket_path=real_redis_socket)
    engine = Engine(client, Settings(namespace=f"t{uuid.uuid4().hex[:12]}", plan="pro", admin_token=TOKEN))
    with serving(create_app(engine, access_log=False)) as url:
        yield engine, url
    client.close()


def seed(engine: Engine) -> dict:
    """Work in every contract: a worker mid-request, busy phones, task-center jobs on a channel and a refund."""
    caller, _key = online_server(engine, "worker-alpha")
    doc = request_doc(folders=2, tasks=3, prefix="folder-")
    doc["id"] = "req-demo"
    engine.stacking.create_request(doc)
    pulled = [orjson.loads(t)["id"] for t in engine.stacking.claim(caller, 3)]
    for tid in pulled:
        engine.stacking.start(caller, tid)
    engine.stacking.complete(caller, pulled[0], link(1))
    engine.stacking.fail(caller, pulled[1], "captcha")

    engine.devices.create({"serials": ["PHONE-01", "PHONE-02"], "script_name": "post",
                           "script_config": {"captions": "hi"}})
    engine.devices.heartbeat({"serials": ["PHONE-01", "PHONE-02"]})
    running = {t["serial"]: t["id"] for t in engine.devices.claim({"serials": ["PHONE-01", "PHONE-02"]})["tasks"]}

    tc = engine.tasks
    channel = tc.add_channel("suno", "https://suno.example")
    user = tc.create_user("alice", 1_000_000)
    first = tc.submit(user["api_key"], "suno", "music", {"prompt": "a"})["id"]
    second = tc.submit(user["api_key"], "suno", "music", {"prompt": "b"})["id"]
    tc.submit(user["api_key"], "suno", "lyrics", {"prompt": "c"})
    subs = {s.id: s for s in tc.claim_submissions(2)}
    tc.submit_failed(first, None, "refused upstream", permanent=True)
    tc.submitted(second, channel, "up-2")
    return {"caller": caller, "pulled": pulled, "running": running, "channel": channel, "refunded": first,
            "claimed": sorted(subs)}


def test_dashboard_in_chromium(live, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    engine, base = live
    seeded = seed(engine)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                                     args=["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 1360, "height": 1000})
            dialogs: list[str] = []
            answer = {"accept": True}

            def on_dialog(dialog) -> None:
                dialogs.append(dialog.message)
                dialog.accept() if answer["accept"] else dialog.dismiss()

            page.on("dialog", on_dialog)

            # Not logged in: the login page; a wrong token stays there; the right one opens the dashboard.
            page.goto(f"{base}/dashboard")
            expect(page).to_have_url(f"{base}/dashboard/login")
            page.fill("#token", "wrong")
            page.click("button[type=submit]")
            expect(page.get_by_role("alert")).to_have_text("wrong token")
            page.fill("#token", TOKEN)
            page.click("button[type=submit]")
            expect(page).to_have_url(f"{base}/dashboard")

            # What a person sees.
            server_row = page.locator("#servers tr.server")
            expect(server_row).to_contain_text("worker-alpha")
            expect(server_row).to_contain_text("online")
            folder0 = page.locator('#requests tr.folder[data-id="folder-0"]')
            expect(folder0.locator(".p1")).to_have_text("1/3")
            expect(folder0.locator(".barrier")).to_have_text("waiting for phase 1 (2 left)")
            expect(page.locator('#requests tr.folder[data-id="folder-1"] td').nth(1)).to_have_text("unbound")
            expect(folder0.locator("td").nth(1)).to_have_text("worker-alpha")
            expect(page.locator("#failures")).to_contain_text("registering → profile_failed by worker-alpha")
            phone1 = page.locator('#devices tr.serial[data-serial="PHONE-01"]')
            expect(phone1.locator(".running")).to_have_text(f"#{seeded['running']['PHONE-01']} post")
            channel_row = page.locator(f'#backlog tr.channel[data-channel="{seeded["channel"]}"]')
            expect(channel_row.locator(".total")).to_have_text("1")
            expect(page.locator('#backlog tr.channel[data-channel="0"] .total')).to_have_text("1")
            expect(page.locator("#failures")).to_contain_text(
                f"tasks task {seeded['refunded']}: NOT_START → FAILURE")
            expect(page.locator("#failures")).to_contain_text("registering → profile_failed")
            expect(page.locator("#refunds li.refund")).to_contain_text(
                f"user 1: +50000 quota for task {seeded['refunded']}")
            bars = page.locator("#chart rect.bar")
            assert bars.count() >= 3  # one per contract in the current minute
            heights = [float(bars.nth(i).get_attribute("height")) for i in range(bars.count())]
            assert all(h > 0 for h in heights)
            shot = Path(os.environ.get("TASKHUB_SCREENSHOT") or tmp_path / "dashboard.png")
            shot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(shot), full_page=True)
            assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000

            # Live refresh: work done behind the page's back shows without a reload.
            caller, pulled = seeded["caller"], seeded["pulled"]
            engine.stacking.complete(caller, pulled[2], link(3))
            engine.devices.complete(seeded["running"]["PHONE-01"])
            engine.devices.create({"serials": ["PHONE-01"], "script_name": "post", "script_config": {"captions": "2"}})
            expect(folder0.locator(".p1")).to_have_text("2/3", timeout=WAIT_MS)
            expect(phone1.locator(".running")).to_have_text("-", timeout=WAIT_MS)
            expect(phone1.locator("td").nth(1)).to_have_text("1")

            # Stop PHONE-02's running task: dismissed first (nothing happens), then accepted.
            phone2_task = seeded["running"]["PHONE-02"]
            stop = page.locator('#devices tr.serial[data-serial="PHONE-02"] button.action')
            answer["accept"] = False
            stop.click()
            assert dialogs[-1] == f"Stop device task #{phone2_task} on PHONE-02?"
            page.wait_for_timeout(300)
            assert engine.devices.get(phone2_task)["status"] == 1
            answer["accept"] = True
            stop.click()
            expect(page.locator("#flash")).to_contain_text("stop: done", timeout=WAIT_MS)
            assert engine.devices.get(phone2_task)["status"] == 3
            expect(page.locator('#devices tr.serial[data-serial="PHONE-02"]')).to_have_count(0, timeout=WAIT_MS)

            # Retry it from its failure line: pending again.
            page.locator("#failures li.failure", has_text=f"devices task {phone2_task}:").first.locator(
                "button.action").click()
            expect(page.locator("#flash")).to_contain_text("retry: done", timeout=WAIT_MS)
            assert engine.devices.get(phone2_task)["status"] == 0

            # Release folder-0 from worker-alpha.
            page.locator('#requests tr.folder[data-id="folder-0"] button.action').click()
            expect(page.locator("#flash")).to_contain_text('"released":true', timeout=WAIT_MS)
            assert engine.stacking.request("req-demo")["folders"][0]["server_id"] is None
            expect(folder0.locator("td").nth(1)).to_have_text("unbound", timeout=WAIT_MS)

            # A refusal is shown as the API words it: cancel of an unknown request.
            cancel = page.locator('#requests .request[data-id="req-demo"] h3 button.action')
            cancel.evaluate("b => b.dataset.url = '/dashboard/actions/requests/no-such-request/cancel'")
            cancel.click()
            expect(page.locator("#flash.error")).to_have_text("cancel request refused (404): request not found")

            # Cancel the request: every unfinished task cancelled, in Redis and on the page.
            page.reload()
            page.locator('#requests .request[data-id="req-demo"] h3 button.action').click()
            expect(page.locator("#flash")).to_contain_text("cancel request: done", timeout=WAIT_MS)
            request = engine.stacking.request("req-demo")
            assert request["open_tasks"] == 0 and request["by_status"].get("cancel", 0) >= 3
            expect(page.locator('#requests .request[data-id="req-demo"] .status')).to_have_text(
                request["status"], timeout=WAIT_MS)
        finally:
            browser.close()
