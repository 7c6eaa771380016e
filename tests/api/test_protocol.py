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
from uvicorn.importer import import_from_string

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

    def writelines(self, lines) -> None:  # one send of several buffers, as uvloop does it
        self.write(b"".join(lines))

    def write_eof(self) -> None:
        self.writes.append(b"<EOF>")

    def get_write_buffer_size(self) -> int:
        return 7

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

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


def test_close_abort_and_write_eof_send_what_is_held_first():
    async def run() -> tuple[Recording, Recording, Recording]:
        loop = asyncio.get_running_loop()
        closed, aborted, ended = Recording(), Recording(), Recording()
        a, b, c = (OneWriteTransport(t, loop) for t in (closed, aborted, ended))
        a.write(b"last words")
        a.close()
        b.write(b"sent, then aborted")  # unwrapped, the socket would have had these bytes already
        b.abort()
        c.write(b"before eof")
        c.write_eof()
        await _tick()  # the scheduled flushes find nothing held
        return closed, aborted, ended

    closed, aborted, ended = asyncio.run(run())
    assert closed.writes == [b"last words"] and closed.closed
    assert aborted.writes == [b"sent, then aborted"] and aborted.aborted
    assert ended.writes == [b"before eof", b"<EOF>"]


def test_what_is_held_is_bounded_and_counted_in_the_buffer_size():
    """Past HOLD_LIMIT the writes go out at once, so a streamed body meets the real
    transport's flow control; the buffer size a caller sees includes what is held."""
    async def run() -> list:
        real = Recording()
        t = OneWriteTransport(real, asyncio.get_running_loop())
        t.write(b"a" * 10)
        seen = [t.get_write_buffer_size(), list(real.writes)]
        t.write(b"b" * OneWriteTransport.HOLD_LIMIT)  # over the bound: both go now, in order
        seen += [list(real.writes), t.get_write_buffer_size()]
        await _tick()
        seen.append(len(real.writes))
        return seen

    size_held, before, after, size_after, count = asyncio.run(run())
    assert (size_held, before) == (7 + 10, [])
    assert after == [b"a" * 10 + b"b" * OneWriteTransport.HOLD_LIMIT] and size_after == 7
    assert count == 1, "nothing was left for the end of the tick"


def test_a_write_of_the_wrong_type_is_refused_to_the_caller_and_buffers_are_copied():
    async def run() -> Recording:
        real = Recording()
        t = OneWriteTransport(real, asyncio.get_running_loop())
        with pytest.raises(TypeError, match="bytes-like"):
            t.write("text")  # type: ignore[arg-type]
        buf = bytearray(b"abc")
        t.write(buf)
        buf[:] = b"xyz"  # the caller reuses its buffer before the tick ends
        await _tick()
        return real

    assert asyncio.run(run()).writes == [b"abc"]


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
    loop = asyncio.new_event_loop()
    try:
        t = OneWriteTransport(Recording(), loop)
        assert t.get_extra_info("peername") == ("127.0.0.1", 1)
        assert t.is_closing() is False
        with pytest.raises(AttributeError):
            t.no_such_method  # noqa: B018
    finally:
        loop.close()


def test_the_protocol_names():
    assert http_protocol("h11") == "api.protocol:H11OneWrite"
    assert http_protocol("httptools") == "api.protocol:HttpToolsOneWrite"
    assert http_protocol() in ("api.protocol:HttpToolsOneWrite", "api.protocol:H11OneWrite")
    assert http_protocol() == http_protocol("httptools" if protocol.HttpToolsOneWrite else "h11")
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

        def flush(self) -> None:
            held = self._held
            if held and not self._transport.is_closing():
                writes.append(b"".join(held))
            super().flush()

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


class HoldingLoop:
    """The running loop, except that ``call_soon`` callbacks wait until ``run_held``:
    the end of the tick, under the test's control."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.held: list = []

    def call_soon(self, callback, *args):
        self.held.append((callback, args))

    def run_held(self) -> None:
        held, self.held = self.held, []
        for callback, args in held:
            callback(*args)

    def __getattr__(self, name: str):
        return getattr(self.loop, name)


@pytest.mark.parametrize("impl", ["h11", "httptools"])
def test_a_client_that_half_closes_still_gets_the_response_written_in_that_tick(impl):
    """The client sends its request and a FIN. The app's response is written (held for the
    end of the tick) when the FIN is read: uvicorn's eof_received answers None, after which
    the real transport closes itself, not through the wrapper. The protocol sends what is
    held first."""
    if impl == "httptools":
        pytest.importorskip("httptools")
    from uvicorn.config import Config
    from uvicorn.server import ServerState

    cls = import_from_string(http_protocol(impl))

    async def run() -> tuple[list[bytes], list[bytes]]:
        loop = HoldingLoop(asyncio.get_running_loop())
        config = Config(_app(), lifespan="off", log_level="warning")
        config.load()
        proto = cls(config=config, server_state=ServerState(), app_state={}, _loop=loop)
        real = Recording()
        proto.connection_made(real)
        proto.data_received(b"GET /small?n=7 HTTP/1.1\r\nhost: t\r\n\r\n")
        for _ in range(20):  # the app's task runs and writes the response (held)
            await asyncio.sleep(0)
        written_before_eof = list(real.writes)
        proto.eof_received()
        after_eof = list(real.writes)
        loop.run_held()
        proto.connection_lost(None)
        return written_before_eof, after_eof

    before, after = asyncio.run(run())
    assert before == [], "the response was held for the end of the tick"
    assert len(after) == 1 and after[0].startswith(b"HTTP/1.1 200") and after[0].endswith(b'{"success":true,"echo":"7"}')


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_head_expect_100_and_pipelined_requests_through_a_real_server(loop):
    if loop == "uvloop":
        pytest.importorskip("uvloop")
    with serving(_app(), loop=loop) as url:
        port = int(url.rsplit(":", 1)[1])
        c = _client(port)
        c.request("HEAD", "/small")
        r = c.getresponse()
        assert (r.status, r.read(), r.getheader("content-length")) == (200, b"", "26")
        c.close()
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            body = b"x" * 1000
            sock.sendall(b"POST /echo HTTP/1.1\r\nhost: t\r\ncontent-length: 1000\r\nexpect: 100-continue\r\n\r\n")
            assert _read_until(sock, b"\r\n\r\n").startswith(b"HTTP/1.1 100 Continue")
            sock.sendall(body)
            head = _read_until(sock, b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200") and _read_exactly(sock, 1000) == body
            # two requests in one segment: two whole responses, in order
            sock.sendall(b"GET /small?n=1 HTTP/1.1\r\nhost: t\r\n\r\nGET /small?n=2 HTTP/1.1\r\nhost: t\r\n\r\n")
            got = b""
            while got.count(b'"success":true') < 2:
                chunk = sock.recv(65536)
                assert chunk, f"connection closed after {got!r}"
                got += chunk
            assert got.index(b'"echo":"1"') < got.index(b'"echo":"2"')


def _read_until(sock: socket.socket, marker: bytes) -> bytes:
    got = b""
    while marker not in got:
        chunk = sock.recv(1)
        assert chunk, f"connection closed after {got!r}"
        got += chunk
    return got


def _read_exactly(sock: socket.socket, n: int) -> bytes:
    got = b""
    while len(got) < n:
        chunk = sock.recv(n - len(got))
        assert chunk
        got += chunk
    return got
