"""Task bodies: stored once as a JSON fragment; phase 2 derives the plain-text about from it."""
from __future__ import annotations

import orjson
import pytest

from engine.stacking import BODY_FIELDS, encode_body, html_to_text, phase2_body, render_task
from tests.helpers import link, online_server, request_doc


@pytest.mark.parametrize("markup,text", [
    ("<p>Hello <b>world</b></p>", "Hello world"),
    ("<p>a</p><p>b</p>", "a\nb"),
    ("one<br>two<br/>three", "one\ntwo\nthree"),
    ("<ul><li>x</li><li>y</li></ul>", "x\ny"),
    ("Fish &amp; chips &lt;3 &#8364;5", "Fish & chips <3 €5"),
    ("&amp;lt;", "&lt;"),  # entities decoded once
    ('<a href="https://x.example/?a=1&b=2" title="a > b">link</a> text', "link text"),
    ("<!-- hidden --><p>shown</p>", "shown"),
    ("<!DOCTYPE html><P CLASS=x>Upper</P>", "Upper"),
    ("  spaced \t  out  ", "spaced out"),
    ("2 < 3 and 5 > 4", "2 < 3 and 5 > 4"),
    ("Nội dung <i>bài viết</i>", "Nội dung bài viết"),
    ("", ""),
])
def test_html_to_text(markup, text):
    assert html_to_text(markup) == text


def test_phase2_body_replaces_only_the_about_value():
    tricky = {"domain": "docs.google.com", "website": "https://w.example",
              "title": 'T ,"about":"fake","phone":"x"', "about": "<p>real <b>one</b></p>",
              "phone": '1 ,"phone":"2"', "address": "", "location": "", "image_url": ""}
    body = orjson.dumps(tricky)[1:-1]
    got = orjson.loads(b"{" + phase2_body(body) + b"}")
    assert got == {**tricky, "about": "real one"}


def test_phase2_task_reads_plain_text_about_phase1_html(engine):
    caller, _ = online_server(engine)
    doc = request_doc(tasks=2, mode="chain", about="<p>Hi &amp; <b>bye</b></p>")
    doc["folders"][0]["tasks"][0]["title"] = 'has "quotes" and ,"about":"'
    engine.stacking.create_request(doc)
    tasks = [orjson.loads(t) for t in engine.stacking.claim(caller.id, 2)]
    assert {t["about"] for t in tasks} == {"<p>Hi &amp; <b>bye</b></p>"}
    for t in tasks:
        engine.stacking.start(caller.id, t["id"])
        engine.stacking.complete(caller.id, t["id"], link(t["id"]))
    phase2 = [orjson.loads(t) for t in engine.stacking.claim(caller.id, 2, "connect")]
    assert {t["about"] for t in phase2} == {"Hi & bye"}
    assert {t["title"] for t in phase2} == {'has "quotes" and ,"about":"', "Title 0-1"}
    assert orjson.loads(engine.stacking.get_task(phase2[0]["id"]))["about"] == "Hi & bye"


def test_a_body_is_stored_once_per_task(engine):
    engine.stacking.create_request(request_doc(folders=2, tasks=5))
    assert sum(c.r.hlen(c.keys.bodies) for c in engine.stacking.shards) == 10


TRICKY = {"domain": "docs.google.com", "website": "https://w.example", "title": 'T ,"about":"x"\u0000 \x01',
          "about": "<p>real <b>one</b> \u00e9\U0001F600</p>", "phone": "", "address": "a\\b\n",
          "location": "", "image_url": "https://i.example/x.jpg"}


def test_a_stored_body_keeps_values_not_keys():
    stored = encode_body([TRICKY[f] for f in BODY_FIELDS])
    assert b'"domain"' not in stored and b'"about"' not in stored
    assert len(stored) < len(orjson.dumps(TRICKY)) - sum(len(f) + 3 for f in BODY_FIELDS) + len(BODY_FIELDS)
    ids = (b"t-1", b'"r-1"', b"register")
    phase1 = orjson.loads(render_task(*ids, stored, b'"f-1"', b'""', None))
    assert phase1 == {"id": "t-1", "request_id": "r-1", "status": "register", **TRICKY, "folder_id": "f-1",
                      "link_post": ""}
    assert list(phase1) == ["id", "request_id", "status", *BODY_FIELDS, "folder_id", "link_post"]  # the seed's order
    phase2 = orjson.loads(render_task(*ids, stored, b'"f-1"', b'"https://l.example"', b'["https://c.example"]'))
    assert phase2 == {**phase1, **TRICKY, "about": "real one \u00e9\U0001F600", "link_post": "https://l.example",
                      "connect_links": ["https://c.example"]}
    keyed = orjson.dumps(TRICKY)[1:-1]  # the same task stored before encode_body renders the same
    assert render_task(*ids, keyed, b'"f-1"', b'""', None) == render_task(*ids, stored, b'"f-1"', b'""', None)
    assert (render_task(*ids, keyed, b'"f-1"', b'""', b"[]")
            == render_task(*ids, stored, b'"f-1"', b'""', b"[]"))


def test_a_body_stored_before_the_encoding_still_renders(engine):
    """A server's bodies written by an earlier version (JSON fragments with keys) read as before."""
    caller, _ = online_server(engine)
    engine.stacking.create_request(request_doc(tasks=2, mode="chain", about="<p>Hi &amp; bye</p>"))
    shard_of = {t.decode(): c for c in engine.stacking.shards for t in c.r.hkeys(c.keys.bodies)}
    ids = list(shard_of)
    assert len(ids) == 2
    new = {t: orjson.loads(engine.stacking.get_task(t)) for t in ids}
    for t, core in shard_of.items():  # rewrite each body the way earlier versions stored it
        old = orjson.dumps({f: new[t][f] for f in BODY_FIELDS})[1:-1]
        core.r.hset(core.keys.bodies, t, old)
    assert {t: orjson.loads(engine.stacking.get_task(t)) for t in ids} == new
    pulled = [orjson.loads(t) for t in engine.stacking.claim(caller.id, 2)]
    assert {t["id"]: t for t in pulled} == {t: {**new[t], "status": "register"} for t in ids}
    for t in ids:
        engine.stacking.start(caller.id, t)
        engine.stacking.complete(caller.id, t, link(t))
    phase2 = [orjson.loads(t) for t in engine.stacking.claim(caller.id, 2, "connect")]
    assert {t["about"] for t in phase2} == {"Hi & bye"}
    assert {t["title"] for t in phase2} == {new[t]["title"] for t in ids}
