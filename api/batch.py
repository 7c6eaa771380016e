"""One pipeline per event-loop tick: the engine calls of concurrent requests, coalesced.

A handler awaits ``Batcher.run(call)`` instead of running its engine call at
once. The first call of a tick schedules a flush with ``call_soon``; requests
whose bytes arrived in the same tick queue their calls before it runs; the
flush sends them all as one non-transactional pipeline and wakes each handler
with its own result or error. Under load this pays Redis' round trip and the
socket syscalls once per batch instead of once per request, and the event loop
is blocked once per batch rather than once per request (measured in
BENCHMARKS.md, "HTTP single-task endpoints"). With one request at a time it is
a batch of one: the same single round trip as a direct call.

Semantics are those of the direct call: each call's script is atomic on its
own, calls of one batch are independent requests, and nothing is resent but a
script Redis refused with NOSCRIPT (``engine.calls.run_batch``). A Redis
connection error fails every call of the batch (the contract's 503).
"""
from __future__ import annotations

import asyncio
import time
from typing import Any

from engine.calls import Call, run_batch
from engine.core import Core

from .metrics import observe_batch_roundtrip


class Batcher:
    def __init__(self, core: Core) -> None:
        self.core = core
        self._pending: list[tuple[Call, asyncio.Future]] = []
        self._scheduled = False

    async def run(self, call: Call) -> Any:
        loop = asyncio.get_running_loop()
        future: asyncio.Future = loop.create_future()
        self._pending.append((call, future))
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)
        return await future

    def _flush(self) -> None:
        batch, self._pending, self._scheduled = self._pending, [], False
        try:
            started = time.perf_counter()
            results = run_batch(self.core.r, self.core.scripts, [call for call, _ in batch])
            observe_batch_roundtrip(time.perf_counter() - started)
        except Exception as exc:  # noqa: BLE001 - e.g. Redis unreachable: every caller gets it
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for (_, future), (ok, result) in zip(batch, results):
            if future.done():  # the client went away meanwhile
                continue
            if ok:
                future.set_result(result)
            else:
                future.set_exception(result)
