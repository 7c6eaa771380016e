"""api.protocol: uvicorn's HTTP protocols with one socket write per response.

The transport wrapper is tested on a real event loop against a recording
transport; the protocols under a real uvicorn server on loopback, where every
response is checked byte for byte and the real transport's writes are counted.
"""
from __future__ import annotations

import asyncio
import http.client
import socket

import pytest
from starlette.applications import Starlette
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

import api.protocol as protocol
from api.protocol import OneWriteTransport, http_protocol
from tests.helpers import serving


class Recording:
    """The parts of an asyncio transport the wrapper uses, recording what reaches the socket."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = self.aborted = False

    def write(self, data: bytes) -> None:
        assert not self.closed, "written after close"
        self.writes.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closed or self.aborted

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True

    def get_extra_info(self, name: str, default: object = None) -> object:
        return {"peername": ("127.0.0.1", 1)}.get(name, default)


async def _tick() -> None:
    await asyncio.sleep(0)


def test_writes_of_one_tick_leave_as_one_write_at_its_end():
    async def run() -> list[list[bytes]]:
        real = Recording()
        t = OneWriteTransport(real, asyncio.get_running_loop())
        t.write(b"HTTP/1.1 200 OK\r\n\r\n")
        t.write(b"body")
        seen = [list(real.writes)]  # nothing yet: held until the tick ends
        await _tick()
        seen.append(list(real.writes))
        t.write(b"next")  # a later tick: its own write
        await _tick()
        seen.append(list(real.writes))
        return seen

    before, after_tick, later = asyncio.run(run())
    assert before == []
    assert after_tick == [b"HTTP/1.1 200 OK\r\n\r\nbody"]
    assert later == [b"HTTP/1.1 200 OK\r\n\r\nbody", b"next"]


def test_close_sends_what_is_held_first_and_abort_drops_it():
    async def run() -> tuple[Recording, Recording]:
        loop = asyncio.get_running_loop()
        closed, aborted = Recording(), Recording()
        a, b = OneWriteTransport(closed, loop), OneWriteTransport(aborted, loop)
        a.write(b"last words")
        a.close()
        b.write(b"never sent")
        b.abort()
        await _tick()  # the scheduled flushes find nothing held
        return closed, aborted

    closed, aborted = asyncio.run(run())
    assert closed.writes == [b"last words"] and closed.closed
    assert aborted.writes == [] and aborted.aborted


def test_nothing_is_written_to_a_transport_that_is_closing():
    async def run() -> Recording:
        real = Recording()
        t = OneWriteTransport(real, asyncio.get_running_loop())
        t.write(b"late")
        real.closed = True  # e.g. the peer went away within the tick
        await _tick()
        return real

    assert asyncio.run(run()).writes == []


def test_everything_else_is_the_real_transports():
    real = Recording()
    t = OneWriteTransport(real, asyncio.new_event_loop())
    assert t.get_extra_info("peername") == ("127.0.0.1", 1)
    assert t.is_closing() is False
    with pytest.raises(AttributeError):
        t.no_such_method  # noqa: B018


def test_the_protocol_names():
    assert http_protocol("h11") == "api.protocol:H11OneWrite"
    assert http_protocol("httptools") == "api.protocol:HttpToolsOneWrite"
    assert http_protocol() in ("api.protocol:HttpToolsOneWrite", "api.protocol:H11OneWrite")
    with pytest.raises(ValueError, match="unknown http protocol"):
        http_protocol("h3")


BIG = b"x" * (3 * 1024 * 1024)  # past any socket buffer: the real transport pauses writing


def _app() -> Starlette:
    async def small(request):
        return JSONResponse({"success": True, "echo": request.query_params.get("n", "")})

    async def echo(request):
        return Response(await request.body(), media_type="application/octet-stream")

    async def big(request):
        return Response(BIG, media_type="application/octet-stream")

    async def stream(request):
        async def parts():
            for i in range(3):
                yield f"part{i};".encode()
                await asyncio.sleep(0.01)
        return StreamingResponse(parts(), media_type="text/plain")

    async def empty(request):
        return Response(status_code=204)

    return Starlette(routes=[Route("/small", small), Route("/echo", echo, methods=["POST"]), Route("/big", big),
                             Route("/stream", stream), Route("/empty", empty)])


@pytest.fixture
def counted_writes(monkeypatch):
    """Every write that reaches a real socket, as the server's protocol makes them."""
    writes: list[bytes] = []

    class Counting(OneWriteTransport):
        __slots__ = ()

        def _flush(self) -> None:
            held = self._held
            if held and not self._transport.is_closing():
                writes.append(b"".join(held))
            super()._flush()

    monkeypatch.setattr(protocol, "OneWriteTransport", Counting)
    return writes


@pytest.mark.parametrize("impl", ["h11", "httptools"])
def test_a_real_server_answers_every_kind_of_response_correctly(impl, counted_writes):
    if impl == "httptools":
        pytest.importorskip("httptools")
    with serving(_app(), http=http_protocol(impl)) as url:
        port = int(url.rsplit(":", 1)[1])
        c = _client(port)
        for n in range(3):  # keep-alive: the same connection, one request after another
            c.request("GET", f"/small?n={n}")
            r = c.getresponse()
            assert (r.status, r.read()) == (200, b'{"success":true,"echo":"%d"}' % n)
        body = bytes(range(256)) * 100
        c.request("POST", "/echo", body=body)
        r = c.getresponse()
        assert (r.status, r.read()) == (200, body)
        c.request("GET", "/big")
        r = c.getresponse()
        assert r.status == 200 and r.read() == BIG
        c.request("GET", "/stream")
        r = c.getresponse()
        assert (r.status, r.read()) == (200, b"part0;part1;part2;")
        c.request("GET", "/empty")
        r = c.getresponse()
        assert (r.status, r.read()) == (204, b"")
        c.close()
    small = [w for w in counted_writes if w.startswith(b"HTTP/1.1 200") and b'"success":true' in w]
    assert len(small) == 3, "each small response is one write: status line, headers and body together"
    assert all(w.endswith(b'"}') for w in small)


def _client(port: int) -> http.client.HTTPConnection:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    c.connect()
    c.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return c
