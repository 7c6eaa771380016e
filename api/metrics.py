"""Prometheus ``/metrics``: cluster-wide figures read from Redis, per-process observations.

Two kinds of figures, kept apart on purpose:

- **Cluster-wide** (tasks by contract and status; claims, lapsed leases,
  retries, refunds): the scripts keep them in Redis as they work
  (``engine/telemetry.py``), and ``ClusterCollector`` reads them at scrape
  time, one pipelined round trip. Whichever web worker serves the scrape
  reports the same truth, never multiplied by the number of processes, and it
  includes the work of RQ jobs and the CLI.
- **Per process** (request latency per route, claim batch sizes, Redis round
  trips): histograms. One process: this module's registry, and the lock-free
  ``LoopHistogram`` (an observation is a bisect and two additions).
  Several (``TASKHUB_WEB_WORKERS`` > 1): prometheus_client's histograms, and ``taskhub web`` points
  ``PROMETHEUS_MULTIPROC_DIR`` at an emptied directory before the workers
  start (``prepare_multiprocess``), each worker writes its samples to its own
  files there, and a scrape sums them with ``MultiProcessCollector``, so the
  figures add up whatever worker served what. Only counters and histograms are
  per-process (no live gauges), so a worker's exit needs no
  ``mark_process_dead``: what it counted stays counted.

The request observer (``RouteLatency``, fed by ``api.http.Timed``) does O(1) work per request (one
``perf_counter`` pair, a dict lookup of the cached histogram child, one
observe) and no Redis command; labels are the route's path template, never the
raw path, so their number is bounded. ``TASKHUB_METRICS=0`` leaves it out.
Auth is the admin API's: ``TASKHUB_ADMIN_TOKEN`` as a bearer token, loopback
clients only when it is unset.
"""
from __future__ import annotations

import os
import threading
import time
from bisect import bisect_left
from pathlib import Path
from typing import Any, Iterator, Sequence

import redis
from prometheus_client import (CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, disable_created_metrics,
                               generate_latest)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString
from prometheus_client.multiprocess import MultiProcessCollector
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Scope

from engine.telemetry import CONTRACTS, Telemetry

from .http import require_bearer

REDIS_DOWN = (redis.ConnectionError, redis.TimeoutError)  # as api/app.py's 503 handler

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
UNMATCHED = "unmatched"  # the route label of every path no route matches (bounded cardinality)
METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})

disable_created_metrics()  # no *_created series: Prometheus does not need them, and they double the output
LOCAL = CollectorRegistry()


class LoopHistogram:
    """A labelled histogram for one process's event loop: an observation is a bisect and two additions.

    Why not prometheus_client's ``Histogram`` here: its ``observe`` takes two
    locks and walks the buckets in Python, 13,400 instructions of the 157,100 a
    complete request costs the web process (``bench/app_instructions.py``, with
    and without ``TASKHUB_METRICS=0``), for a request-latency figure every
    request pays. Nothing here takes a lock: the observations come from the
    event loop's one thread (a child observed from several threads takes
    ``locked=True``: the scrape's own round trip, timed on the threadpool). A
    scrape, on a thread, collects a copy of each child's counts, so a family's
    buckets and count always agree; its sum may lack an observation made
    meanwhile.

    Used in a single-process web, where this process's registry is what a
    scrape reads. With several workers (``PROMETHEUS_MULTIPROC_DIR``) each
    observation must reach the shared sample files at once, which is what
    prometheus_client's ``Histogram`` does (``histogram`` picks).
    """

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str], buckets: Sequence[float],
                 registry: CollectorRegistry | None = None) -> None:
        self.name, self.documentation, self.labelnames = name, documentation, tuple(labelnames)
        bounds = tuple(float(b) for b in buckets)
        if bounds != tuple(sorted(set(bounds))):
            raise ValueError(f"{name}: buckets must be in increasing order")
        self.bounds = bounds if bounds[-1] == float("inf") else (*bounds, float("inf"))
        self._names = [floatToGoString(b) for b in self.bounds]
        self._children: dict[tuple[str, ...], _LoopChild] = {}
        if registry is not None:
            registry.register(self)

    def labels(self, *values: Any, locked: bool = False) -> "_LoopChild":
        key = tuple(str(v) for v in values)
        if len(key) != len(self.labelnames):
            raise ValueError(f"{self.name}: {len(self.labelnames)} label values expected, got {len(key)}")
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = (_LockedChild if locked else _LoopChild)(self.bounds)
        return child

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for key, child in list(self._children.items()):
            counts, total = child.snapshot()
            cumulative, running = [], 0
            for name, n in zip(self._names, counts):
                running += n
                cumulative.append((name, running))
            family.add_metric(list(key), cumulative, total)
        yield family


class _LoopChild:
    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * len(bounds)  # per bucket, not cumulative: the first bound >= the amount
        self.sum = 0.0

    def observe(self, amount: float) -> None:
        self.counts[bisect_left(self.bounds, amount)] += 1
        self.sum += amount

    def snapshot(self) -> tuple[list[int], float]:
        return list(self.counts), self.sum


class _LockedChild(_LoopChild):
    __slots__ = ("lock",)

    def __init__(self, bounds: tuple[float, ...]) -> None:
        super().__init__(bounds)
        self.lock = threading.Lock()

    def observe(self, amount: float) -> None:
        with self.lock:
            super().observe(amount)

    def snapshot(self) -> tuple[list[int], float]:
        with self.lock:
            return super().snapshot()


def histogram(name: str, documentation: str, labelnames: Sequence[str], buckets: Sequence[float],
              registry: CollectorRegistry = LOCAL) -> Any:
    """A histogram of this process's registry: ``LoopHistogram``, or with several workers
    prometheus_client's (its values go to the shared sample files)."""
    if os.environ.get(MULTIPROC_ENV):
        return Histogram(name, documentation, labelnames, registry=registry, buckets=buckets)
    return LoopHistogram(name, documentation, labelnames, buckets, registry=registry)


REQUEST_SECONDS = histogram(
    "taskhub_http_request_duration_seconds", "HTTP requests by route template: time to the response's end.",
    ["method", "route", "status"],
    (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0))
CLAIM_BATCH = histogram(
    "taskhub_claim_batch_size", "Tasks handed out per claim call (stacking pull, device agent claim).",
    ["contract"], (0, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000))
REDIS_SECONDS = histogram(
    "taskhub_redis_roundtrip_seconds",
    "Redis round trips: a web worker's batched pipeline (source=batch) or the scrape's read (source=scrape).",
    ["source"], (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0))
_BATCH_RTT = REDIS_SECONDS.labels("batch")
# observed on the scrape's thread (several scrapes may run at once)
_SCRAPE_RTT = (REDIS_SECONDS.labels("scrape", locked=True) if isinstance(REDIS_SECONDS, LoopHistogram)
               else REDIS_SECONDS.labels("scrape"))
_CLAIMS = {contract: CLAIM_BATCH.labels(contract) for contract in ("stacking", "devices")}


def enabled() -> bool:
    """``TASKHUB_METRICS`` (default on): ``0`` leaves the per-request latency histogram out."""
    return os.environ.get("TASKHUB_METRICS", "1").strip().lower() not in ("0", "false", "no", "off")


def observe_claims(contract: str, n: int) -> None:
    """A claim call handed out ``n`` tasks (0 included: empty pulls are a figure too)."""
    _CLAIMS[contract].observe(n)


def observe_batch_roundtrip(seconds: float) -> None:
    _BATCH_RTT.observe(seconds)


def prepare_multiprocess(workers: int, var: Path) -> str | None:
    """Before ``taskhub web`` starts several workers: the directory their samples go to, emptied.

    ``PROMETHEUS_MULTIPROC_DIR`` if set (an operator's choice), else
    ``<TASKHUB_VAR>/metrics``; the old run's ``*.db`` files are removed so its
    counts do not carry over. One worker: nothing (the in-process registry).
    """
    directory = os.environ.get(MULTIPROC_ENV)
    if workers <= 1 and not directory:
        return None
    path = Path(directory) if directory else var / "metrics"
    path.mkdir(parents=True, exist_ok=True)
    for old in path.glob("*.db"):
        old.unlink()
    os.environ[MULTIPROC_ENV] = str(path)
    return str(path)


class ClusterCollector:
    """The Redis-held figures of one engine, read at collect time (one round trip)."""

    def __init__(self, telemetry: Telemetry) -> None:
        self.telemetry = telemetry

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("taskhub_redis_up", "1 when the scrape could read Redis, else 0.")
        started = time.perf_counter()
        try:
            figures = self.telemetry.read()
        except REDIS_DOWN:
            up.add_metric([], 0)
            yield up
            return
        _SCRAPE_RTT.observe(time.perf_counter() - started)
        up.add_metric([], 1)
        yield up
        tasks = GaugeMetricFamily("taskhub_tasks", "Tasks in each status now.", labels=["contract", "status"])
        claimed = CounterMetricFamily("taskhub_claimed_tasks", "Tasks handed out by claims (stacking pulls, "
                                      "device claims, task-center submissions taken).", labels=["contract"])
        lapses = CounterMetricFamily("taskhub_lease_lapses", "Leases a sweep found lapsed and removed.",
                                     labels=["contract", "lease"])
        retries = CounterMetricFamily("taskhub_retries", "Tasks sent back for another attempt.", labels=["contract"])
        refunds = CounterMetricFamily("taskhub_refunds", "Failed task-center tasks refunded (once each).",
                                      labels=["contract"])
        refunded = CounterMetricFamily("taskhub_refunded_quota", "Quota given back by those refunds.",
                                       labels=["contract"])
        for contract in CONTRACTS:
            f = figures[contract]
            for status, n in sorted(f.statuses.items()):
                tasks.add_metric([contract, status], n)
            for name, n in f.totals.items():
                if name == "claimed":
                    claimed.add_metric([contract], n)
                elif name.startswith("lapsed:"):
                    lapses.add_metric([contract, name[7:]], n)
                elif name == "retried":
                    retries.add_metric([contract], n)
                elif name == "refunds":
                    refunds.add_metric([contract], n)
                elif name == "refunded":
                    refunded.add_metric([contract], n)
        yield from (tasks, claimed, lapses, retries, refunds, refunded)


async def scrape(request: Request) -> Response:
    """Prometheus text exposition: cluster figures from Redis plus this process's (or every worker's) histograms.

    Redis away: still 200, with ``taskhub_redis_up 0`` and the per-process
    figures, so a scrape shows the outage instead of failing."""
    eng = request.app.state.engine
    require_bearer(request, eng.core.settings.admin_token, "TASKHUB_ADMIN_TOKEN", "/metrics", "invalid admin token")
    request.state.caller = "operator"
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ClusterCollector(Telemetry(eng)))
    if os.environ.get(MULTIPROC_ENV):
        MultiProcessCollector(registry)
    else:
        registry.register(LOCAL)
    # On a thread: the Redis read and the sample files must not hold up this worker's other requests.
    return Response(await run_in_threadpool(generate_latest, registry), media_type=CONTENT_TYPE_LATEST)


class RouteLatency:
    """Per-route latency histogram: an observer of ``api.http.Timed`` (which times the whole stack)."""

    def __init__(self) -> None:
        self._children: dict[tuple[str, str, int], Any] = {}

    def __call__(self, scope: Scope, status: int, seconds: float) -> None:
        # The router leaves the matched route in the scope; its path is the template.
        # Every part of the key is bounded (a client's made-up method is OTHER), so is the cache.
        route = scope.get("route")
        method = scope["method"]
        key = (method if method in METHODS else "OTHER", route.path if route is not None else UNMATCHED,
               status // 100)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = REQUEST_SECONDS.labels(key[0], key[1], f"{key[2]}xx")
        child.observe(seconds)


routes = [Route("/metrics", scrape, methods=["GET"])]


def observers() -> list[RouteLatency]:
    """What ``create_app`` gives ``api.http.Timed``: the latency histogram unless ``TASKHUB_METRICS=0``."""
    return [RouteLatency()] if enabled() else []
