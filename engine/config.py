"""Settings, read once from ``TASKHUB_*`` environment variables.

Every knob has a default so a fresh checkout runs with no configuration; the
README lists them all. Durations are given in seconds in the environment and
kept in milliseconds here, because every Lua script works in milliseconds.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Callable

Clock = Callable[[], int]


def wall_clock_ms() -> int:
    """Milliseconds since the epoch; scripts never read Redis TIME (engine.md §4)."""
    return int(time.time() * 1000)


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    return int(raw) if raw not in (None, "") else default


def _env_seconds_ms(name: str, default_s: float) -> int:
    raw = os.environ.get(name)
    return int(float(raw) * 1000) if raw not in (None, "") else int(default_s * 1000)


def _shards(contract: str) -> int:
    """``TASKHUB_SHARDS_<CONTRACT>``, else ``TASKHUB_SHARDS``, else 1; 1..256."""
    name = f"TASKHUB_SHARDS_{contract}"
    raw = (os.environ.get(name) or "").strip() or (os.environ.get("TASKHUB_SHARDS") or "").strip() or "1"
    if not raw.isdigit() or not 1 <= int(raw) <= 256:
        raise ValueError(f"{name} (or TASKHUB_SHARDS) must be a whole number from 1 to 256, not {raw!r}")
    return int(raw)


@dataclass
class Settings:
    """Engine configuration; tests build one directly with small numbers."""

    namespace: str = "taskhub"
    claim_ttl_ms: int = 300_000
    run_ttl_ms: int = 1_800_000
    server_offline_after_ms: int = 300_000
    reassign_after_ms: int = 3_600_000
    retry_base_ms: int = 30_000
    retry_cap_ms: int = 3_600_000
    sweep_batch: int = 100
    events_maxlen: int = 100_000
    max_request_tasks: int = 100_000
    import_stale_ms: int = 600_000
    admin_token: str = ""
    device_token: str = ""
    plan: str = "pro"
    tz: str = "UTC"
    max_retry_count: int = 3
    auto_retry: bool = False
    submit_retries: int = 3
    submit_lease_ms: int = 120_000
    submit_retry_base_ms: int = 2_000
    submit_retry_cap_ms: int = 60_000
    poll_interval_ms: int = 15_000
    task_timeout_ms: int = 1440 * 60_000
    upstream_timeout_s: float = 30.0
    # hash-tag shards per contract (engine/shards.py); 1 = the single tag {<contract>}
    shards_stacking: int = 1
    shards_devices: int = 1
    shards_tasks: int = 1
    clock: Clock = field(default=wall_clock_ms)

    @classmethod
    def from_env(cls) -> "Settings":
        return cls(
            namespace=os.environ.get("TASKHUB_NAMESPACE", "taskhub"),
            claim_ttl_ms=_env_seconds_ms("TASKHUB_CLAIM_TTL", 300),
            run_ttl_ms=_env_seconds_ms("TASKHUB_RUN_TTL", 1800),
            server_offline_after_ms=_env_seconds_ms("TASKHUB_SERVER_OFFLINE_AFTER", 300),
            reassign_after_ms=_env_seconds_ms("TASKHUB_REASSIGN_AFTER", 3600),
            retry_base_ms=_env_seconds_ms("TASKHUB_RETRY_BASE", 30),
            retry_cap_ms=_env_seconds_ms("TASKHUB_RETRY_CAP", 3600),
            sweep_batch=_env_int("TASKHUB_SWEEP_BATCH", 100),
            events_maxlen=_env_int("TASKHUB_EVENTS_MAXLEN", 100_000),
            max_request_tasks=_env_int("TASKHUB_MAX_REQUEST_TASKS", 100_000),
            import_stale_ms=_env_seconds_ms("TASKHUB_IMPORT_STALE", 600),
            admin_token=os.environ.get("TASKHUB_ADMIN_TOKEN", ""),
            device_token=os.environ.get("TASKHUB_DEVICE_TOKEN", ""),
            plan=os.environ.get("TASKHUB_PLAN", "pro").strip().lower() or "pro",
            tz=os.environ.get("TASKHUB_TZ", "UTC") or "UTC",
            max_retry_count=_env_int("TASKHUB_MAX_RETRY_COUNT", 3),
            auto_retry=os.environ.get("TASKHUB_AUTO_RETRY", "0").strip().lower() in ("1", "true", "yes", "on"),
            submit_retries=_env_int("TASKHUB_SUBMIT_RETRIES", 3),
            submit_lease_ms=_env_seconds_ms("TASKHUB_SUBMIT_LEASE", 120),
            submit_retry_base_ms=_env_seconds_ms("TASKHUB_SUBMIT_RETRY_BASE", 2),
            submit_retry_cap_ms=_env_seconds_ms("TASKHUB_SUBMIT_RETRY_CAP", 60),
            poll_interval_ms=_env_seconds_ms("TASKHUB_POLL_INTERVAL", 15),
            task_timeout_ms=_env_int("TASKHUB_TASK_TIMEOUT_MINUTES", 1440) * 60_000,
            upstream_timeout_s=float(os.environ.get("TASKHUB_UPSTREAM_TIMEOUT") or 30),
            shards_stacking=_shards("STACKING"),
            shards_devices=_shards("DEVICES"),
            shards_tasks=_shards("TASKS"),
        )
