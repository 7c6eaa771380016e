"""The cluster-wide figures ``/metrics`` exposes: tasks by status, and what happened, per contract.

Two hashes per contract hold them, both moved by the scripts themselves, so
they are exact whichever process (web worker, RQ job, CLI) did the work:

- ``stats``: status -> number of tasks in it now (the shared ``change_status``);
- ``totals``: monotonic counters (``lua/includes/totals.lua``): ``claimed``
  (leases granted by a claim: stacking pulls, device claims, task-center
  submissions taken by the submit job), ``lapsed:claim`` / ``lapsed:run``
  (leases a sweep removed), ``retried`` (tasks sent back for another attempt),
  and the task center's ``refunds`` / ``refunded`` (refunded failures / quota).

``Telemetry.read()`` reads all six hashes in one pipelined round trip, so a
scrape costs Redis six HGETALLs of a few fields each, whatever the data size,
and is correct whatever process serves it. Reads only: no script.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .devices import STATUS_NAMES
from .service import Engine
from .shards import add_counts

CONTRACTS = ("stacking", "devices", "tasks")
# The totals each contract can move (device tasks have no claim lease: a claim
# starts them; task-center submissions have no run lease), reported from 0.
TOTALS = {
    "stacking": ("claimed", "lapsed:claim", "lapsed:run", "retried"),
    "devices": ("claimed", "lapsed:run", "retried"),
    "tasks": ("claimed", "lapsed:claim", "retried", "refunds", "refunded"),
}


@dataclass
class ContractFigures:
    statuses: dict[str, int] = field(default_factory=dict)
    totals: dict[str, int] = field(default_factory=dict)



class Telemetry:
    """Reads of one ``Engine``'s counters for the metrics endpoint."""

    def __init__(self, engine: Engine) -> None:
        self.r = engine.core.r
        self.shards = {"stacking": engine.stacking_shards, "devices": engine.device_shards, "tasks": engine.task_shards}

    def read(self) -> dict[str, ContractFigures]:
        """Every contract's status counts and totals, in one round trip.

        Device statuses are stored as digits and reported by name (``pending`` ...),
        as the device API does. A status once reached keeps its field at 0
        (HINCRBY never deletes it), so its series does not vanish; every total
        of ``TOTALS`` is reported, 0 until it first moves.
        """
        p = self.r.pipeline(transaction=False)
        for contract in CONTRACTS:
            for core in self.shards[contract]:  # every shard's counters, added up
                p.hgetall(core.keys.stats)
                p.hgetall(core.keys.totals)
        replies = iter(p.execute())
        out: dict[str, ContractFigures] = {}
        for contract in CONTRACTS:
            pairs = [(next(replies), next(replies)) for _ in self.shards[contract]]
            statuses = add_counts(st for st, _ in pairs)
            totals = {name: 0 for name in TOTALS[contract]} | add_counts(t for _, t in pairs)
            if contract == "devices":
                statuses = {STATUS_NAMES.get(k, k): v for k, v in statuses.items()}
            out[contract] = ContractFigures(statuses, totals)
        return out


__all__ = ["CONTRACTS", "ContractFigures", "Telemetry", "TOTALS"]
