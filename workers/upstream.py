"""HTTP client of suno-compatible platforms (a channel's ``base_url``), for the submit and poll jobs.

``httpx`` with explicit timeouts (``TASKHUB_UPSTREAM_TIMEOUT``) and a pooled,
thread-safe client. Errors are sorted the way the spec wants them handled:

- ``Transient``: connection errors, timeouts, 429, and 5xx except 504/524
  (the submit job retries on another channel; the poll job tries next pass);
- ``Permanent``: any other refusal (4xx, 504/524, an answer without
  ``code: success``). 504 and 524 mean a gateway gave up waiting, so the
  platform may have accepted the job: resubmitting could run it twice.

Nothing here decides a task's fate; the engine's scripts do.
"""
from __future__ import annotations

from typing import Any

import httpx
import orjson

from engine.taskcenter import Channel


class UpstreamError(Exception):
    pass


class Transient(UpstreamError):
    pass


class Permanent(UpstreamError):
    pass


def _classify(response: httpx.Response) -> UpstreamError:
    try:
        message = str(orjson.loads(response.content).get("message") or "")
    except (orjson.JSONDecodeError, AttributeError):
        message = response.text[:200]
    text = f"upstream answered HTTP {response.status_code}" + (f": {message}" if message else "")
    code = response.status_code
    if code == 429 or (500 <= code < 600 and code not in (504, 524)):
        return Transient(text)
    return Permanent(text)


class PlatformClient:
    def __init__(self, timeout: float = 30.0, client: httpx.Client | None = None) -> None:
        self.http = client or httpx.Client(timeout=httpx.Timeout(timeout, connect=min(timeout, 5.0)),
                                           limits=httpx.Limits(max_connections=64))

    def close(self) -> None:
        self.http.close()

    def _post(self, channel: Channel, path: str, body: bytes) -> Any:
        headers = {"content-type": "application/json"}
        if channel.key:
            headers["authorization"] = f"Bearer {channel.key}"
        try:
            response = self.http.post(channel.base_url + path, content=body, headers=headers)
        except httpx.TimeoutException as exc:
            raise Transient(f"upstream timed out: {type(exc).__name__}") from None
        except httpx.TransportError as exc:
            raise Transient(f"upstream unreachable: {type(exc).__name__}: {exc}") from None
        if response.status_code != 200:
            raise _classify(response)
        try:
            doc = orjson.loads(response.content)
        except orjson.JSONDecodeError:
            raise Permanent("upstream answered something that is not JSON") from None
        if not isinstance(doc, dict) or doc.get("code") != "success":
            message = doc.get("message") if isinstance(doc, dict) else ""
            raise Permanent(f"upstream refused: {message or str(doc)[:200]}")
        return doc.get("data")

    def submit(self, channel: Channel, action: str, body: bytes) -> str:
        """The platform's id of the new job."""
        data = self._post(channel, f"/suno/submit/{action.lower()}", body)
        if not isinstance(data, str) or not data:
            raise Permanent("upstream accepted the job but returned no task id")
        return data

    def fetch(self, channel: Channel, upstream_ids: list[str]) -> dict[str, dict]:
        """Upstream id -> the platform's item, for the ids it knows."""
        data = self._post(channel, "/suno/fetch", orjson.dumps({"ids": upstream_ids}))
        if not isinstance(data, list):
            raise Transient("upstream fetch returned no list")
        return {str(item.get("task_id")): item for item in data if isinstance(item, dict)}
