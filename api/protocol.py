"""uvicorn's HTTP protocols with one socket write per response.

uvicorn writes a response's status line and headers, then its body, as two
``transport.write`` calls, and uvloop sends each at once: two syscalls and two
TCP segments per response, and the first one wakes the client, which then
waits for the second. On the worker-facing endpoints that first write was the
web process's largest single cost (py-spy over ``bench/lifecycle.py``'s HTTP
path; figures in BENCHMARKS.md). Here the connection's transport is wrapped so
that the writes made in one event-loop tick are joined and sent as one, at the
end of the tick: a response goes out whole, in one segment.

Nothing else changes: reads, flow control (uvicorn's ``pause_writing`` comes
from the real transport), ``close`` (which sends what is held first) and
``abort`` (which drops it, as the real one drops its buffer). ``taskhub web``
runs ``HttpToolsOneWrite`` when httptools is importable (uvicorn's own "auto"
choice), else ``H11OneWrite``.
"""
from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol


class OneWriteTransport:
    """A transport whose writes within one loop tick leave as one ``write``."""

    __slots__ = ("_transport", "_loop", "_held")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: list[bytes] | None = None

    def write(self, data: bytes) -> None:
        held = self._held
        if held is None:
            self._held = [data]
            self._loop.call_soon(self._flush)
        else:
            held.append(data)

    def _flush(self) -> None:
        held, self._held = self._held, None
        if held and not self._transport.is_closing():
            self._transport.write(held[0] if len(held) == 1 else b"".join(held))

    def writelines(self, lines: Any) -> None:
        for data in lines:
            self.write(data)

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def abort(self) -> None:
        self._held = None
        self._transport.abort()

    def __getattr__(self, name: str) -> Any:  # everything else is the real transport's
        return getattr(self._transport, name)


class H11OneWrite(H11Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:  # type: ignore[override]
        super().connection_made(OneWriteTransport(transport, self.loop))  # type: ignore[arg-type]


try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # httptools not installed: "auto" would pick h11
    HttpToolsOneWrite: type | None = None
else:
    class HttpToolsOneWrite(HttpToolsProtocol):  # type: ignore[no-redef]
        def connection_made(self, transport: asyncio.BaseTransport) -> None:  # type: ignore[override]
            super().connection_made(OneWriteTransport(transport, self.loop))  # type: ignore[arg-type]


def http_protocol(name: str = "auto") -> str:
    """The import path of the one-write protocol for uvicorn's ``--http`` name (auto, httptools, h11)."""
    if name == "h11" or (name == "auto" and HttpToolsOneWrite is None):
        return "api.protocol:H11OneWrite"
    if name in ("auto", "httptools"):
        return "api.protocol:HttpToolsOneWrite"
    raise ValueError(f"unknown http protocol {name!r}")
