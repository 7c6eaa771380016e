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

On a plain Redis the batch goes out on the process's ``PipelinedConnection``
(api/pipelined.py): written, not waited for, so the event loop serves other
requests while Redis runs the scripts, and the next tick's batch can be on the
wire before this one's replies are back. Where that connection is not used
(fakeredis, TLS, a cluster) the batch is redis-py's blocking pipeline.
"""
from __future__ import annotations

import asyncio
import time
from typing import Any

from redis.exceptions import NoScriptError

from engine.calls import Call, Plan, finish_all, run_batch, unloaded
from engine.core import Core

from .metrics import observe_batch_roundtrip
from .pipelined import PipelinedConnection


class Batcher:
    def __init__(self, core: Core, pipelined: bool = True) -> None:
        self.core = core
        self.conn = PipelinedConnection.for_client(core.r) if pipelined else None
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
        if self.conn is not None:
            self._submit(batch, retried=False)
            return
        try:
            started = time.perf_counter()
            results = run_batch(self.core.r, self.core.scripts, [call for call, _ in batch])
            observe_batch_roundtrip(time.perf_counter() - started)
        except Exception as exc:  # noqa: BLE001 - e.g. Redis unreachable: every caller gets it
            _fail(batch, exc)
            return
        _settle(batch, results)

    def _submit(self, batch: list[tuple[Call, asyncio.Future]], retried: bool) -> None:
        """Send ``batch`` on the pipelined connection; its futures are settled when the replies are in."""
        calls = [call for call, _ in batch]
        plan = Plan(calls)
        try:
            commands = plan.wire(self.core.scripts)
        except Exception as exc:  # noqa: BLE001 - not sent at all (e.g. a script name the set lacks)
            _fail(batch, exc)
            return
        started = time.perf_counter()

        def done(flat: list | BaseException) -> None:
            observe_batch_roundtrip(time.perf_counter() - started)
            if isinstance(flat, BaseException):
                _fail(batch, flat)
                return
            replies = plan.replies(flat)
            # NOSCRIPT refuses a whole command: look at the batch's few commands before its calls
            retry = unloaded(replies) if not retried and any(isinstance(f, NoScriptError) for f in flat) else []
            if retry:  # NOSCRIPT: Redis lost its scripts (restarted); load them and send those calls again, once
                try:
                    self.core.scripts.load_all()
                except Exception as exc:  # noqa: BLE001
                    _fail([batch[i] for i in retry], exc)
                else:
                    self._submit([batch[i] for i in retry], retried=True)
                keep = set(retry)
                batch_rest = [b for i, b in enumerate(batch) if i not in keep]
                replies_rest = [r for i, r in enumerate(replies) if i not in keep]
                _settle(batch_rest, finish_all([c for c, _ in batch_rest], replies_rest))
                return
            _settle(batch, finish_all(calls, replies))

        self.conn.submit(commands, done)


def _fail(batch: list[tuple[Call, asyncio.Future]], exc: BaseException) -> None:
    for _, future in batch:
        if not future.done():
            future.set_exception(exc)


def _settle(batch: list[tuple[Call, asyncio.Future]], results: list[tuple[bool, Any]]) -> None:
    for (_, future), (ok, result) in zip(batch, results):
        if future.done():  # the client went away meanwhile
            continue
        if ok:
            future.set_result(result)
        else:
            future.set_exception(result)
