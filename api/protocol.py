"""uvicorn's HTTP protocols with one socket write per response.

uvicorn writes a response's status line and headers, then its body, as two
``transport.write`` calls, and uvloop sends each at once: two syscalls and two
TCP segments per response, and the first one wakes the client, which then
waits for the second. On the worker-facing endpoints that first write was the
web process's largest single cost (py-spy over ``bench/lifecycle.py``'s HTTP
path; figures in BENCHMARKS.md). Here the connection's transport is wrapped so
that the writes made in one event-loop tick are joined and sent as one, at the
end of the tick: a response goes out whole, in one segment.

Nothing else changes: reads go to the protocol as before; at most
``HOLD_LIMIT`` bytes are held, so a large or streamed body meets the real
transport's flow control (uvicorn's ``pause_writing``) as before; and what is
held goes out before anything that ends the connection (``close``, ``abort``,
``write_eof``, and the client's half-close, ``eof_received``, after which the
real transport closes itself). A response leaves one event-loop iteration
later than it did. ``taskhub web`` runs ``HttpToolsOneWrite`` when httptools is
importable (uvicorn's own "auto" choice), else ``H11OneWrite``.
"""
from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol


class OneWriteTransport:
    """A transport whose writes within one loop tick leave as one ``write``.

    What is held is bounded (``HOLD_LIMIT``): past it the writes go out at once, so
    a large or streamed body meets the real transport's flow control (its
    ``pause_writing``) as it did unwrapped. Everything that could end the
    connection or ask about its buffer sends what is held first (``close``,
    ``abort``, ``write_eof``, the protocol's ``eof_received``), so nothing written
    is dropped or reordered.
    """

    __slots__ = ("_transport", "_loop", "_held", "_size")

    HOLD_LIMIT = 64 * 1024

    def __init__(self, transport: asyncio.WriteTransport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: list[bytes] | None = None
        self._size = 0

    def write(self, data: bytes) -> None:
        if not isinstance(data, bytes):  # refused here, to the caller, as the real transport would
            if not isinstance(data, (bytearray, memoryview)):
                raise TypeError(f"data argument must be a bytes-like object, not {type(data).__name__!r}")
            data = bytes(data)  # held past this call: the caller may reuse its buffer
        held = self._held
        if held is None:
            self._held = held = []
            self._loop.call_soon(self.flush)
        held.append(data)
        self._size += len(data)
        if self._size >= self.HOLD_LIMIT:
            self.flush()

    def flush(self) -> None:
        """Send what is held now (the end of the tick does it otherwise)."""
        held, self._held, self._size = self._held, None, 0
        if held and not self._transport.is_closing():
            if len(held) == 1:
                self._transport.write(held[0])
            else:
                self._transport.writelines(held)  # one send; uvloop does not even join them

    def writelines(self, lines: Any) -> None:
        for data in lines:
            self.write(data)

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + self._size

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def abort(self) -> None:
        self.flush()  # unwrapped, these bytes would have been handed to the socket already
        self._transport.abort()

    def __getattr__(self, name: str) -> Any:  # everything else is the real transport's
        return getattr(self._transport, name)


class _OneWrite:
    """Mixin for a uvicorn HTTP protocol: its transport is a OneWriteTransport."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(OneWriteTransport(transport, self.loop))  # type: ignore[misc,arg-type,attr-defined]

    def eof_received(self) -> bool | None:
        # The client half-closed. uvicorn answers None, and the real transport then closes
        # itself, not through the wrapper: what the app wrote this tick must go out first.
        transport = getattr(self, "transport", None)
        if isinstance(transport, OneWriteTransport):
            transport.flush()
        return super().eof_received()  # type: ignore[misc]


class H11OneWrite(_OneWrite, H11Protocol):
    pass


try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # httptools not installed: "auto" would pick h11
    HttpToolsOneWrite: type | None = None
else:
    class HttpToolsOneWrite(_OneWrite, HttpToolsProtocol):  # type: ignore[no-redef]
        pass


def http_protocol(name: str = "auto") -> str:
    """The import path of the one-write protocol for uvicorn's ``--http`` name (auto, httptools, h11)."""
    if name == "h11" or (name == "auto" and HttpToolsOneWrite is None):
        return "api.protocol:H11OneWrite"
    if name in ("auto", "httptools"):
        return "api.protocol:HttpToolsOneWrite"
    raise ValueError(f"unknown http protocol {name!r}")
