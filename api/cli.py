"""``taskhub``: the operator's command line, and the entry points the Procfile runs.

Process commands: ``redis`` (the embedded Redis, foreground), ``web``,
``worker``, ``scheduler``, ``sandbox`` (a local suno-compatible platform) and
``agent --simulate N`` (a simulated device agent over HTTP). On them
``--json`` means JSON log lines, as ``TASKHUB_LOG_FORMAT=json`` (set for the
process and its children; ``api/logs.py``).

Operator commands talk to the engine directly on the same Redis
(``REDIS_URL`` or the embedded one) and call the engine method the matching
HTTP endpoint calls, so a rule never differs between the two:

- stacking (``api/cli_stacking.py``): ``stats``, ``server
  create|list|show|status|delete``, ``import FILE``, ``request show|cancel``,
  ``task cancel``, ``folder release``;
- device tasks (``api/cli_devices.py``): ``devices create|list|show|stats|
  delete|stop|retry|retry-all|license``;
- task center (``api/cli_center.py``): ``user create|list|show|enable|disable|
  role|token``, ``channel add|list|update|enable|disable|delete``, ``price
  list|set``, ``quota grant|audit``, ``center list|show``.

Every operator command takes ``--json`` (one JSON document on stdout, errors
included) and exits with a code from one table (``api/cli_support.py``):
0 done, 1 negative result, 2 usage or invalid input, 3 not found, 4 refused
by state, 5 forbidden, 69 Redis unreachable, 70 internal error, 130
interrupted. Long operations (``import``, ``devices create``, ``devices
delete``) draw a progress bar on stderr when it is a terminal.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import time
import traceback
from typing import Any, Callable, Iterable

from . import cli_center, cli_devices, cli_stacking
from .cli_support import INTERRUPTED, INTERNAL, JSON_FLAG, Parser, UsageError, classify

PROCESS_COMMANDS = ("redis", "web", "worker", "scheduler", "sandbox", "agent")


def _engine() -> Any:
    from engine import Engine

    return Engine.from_env()


def _bind(cmd: Callable[[argparse.Namespace, Callable[[], Any]], int]) -> Callable[[argparse.Namespace], int]:
    """An operator command with its engine factory (the commands take it so that they stay importable)."""
    return lambda args: cmd(args, _engine)


def _say(message: str, error: bool = False, logger: str = "taskhub.redis") -> None:
    """A line of a process command that does not log through ``logging`` (``taskhub redis``): the
    same text as ever, or one JSON log line in JSON mode."""
    from .logs import json_line, log_format

    line = json_line("ERROR" if error else "INFO", logger, message) if log_format() == "json" else message
    print(line, file=sys.stderr if error else sys.stdout, flush=True)


# ---- processes ---------------------------------------------------------------
# The Procfile's `redis` line restarts a server that dies, but not forever: a server
# that keeps dying (corrupt AOF, full disk, OOM) is a fault for an operator, and
# exiting 1 makes honcho stop the system instead of looping.
RESTART_LIMIT = 5
RESTART_WINDOW_S = 60.0


def _sync_fsync(sock: Any, policy: str) -> None:
    """Give a server this process adopted (started by another process) the configured appendfsync."""
    import redis

    client = redis.Redis(unix_socket_path=str(sock))
    try:
        current = client.config_get("appendfsync").get("appendfsync")
        if current != policy:
            client.config_set("appendfsync", policy)
            _say(f"embedded redis: appendfsync {current} -> {policy} (TASKHUB_FSYNC)")
    finally:
        client.close()


def cmd_redis(args: argparse.Namespace) -> int:
    """Run (or adopt) the embedded Redis, restart it when it dies, save and stop it when signalled.

    A death, or a start that fails because the new server exits at once, is
    restarted within bounds (RESTART_LIMIT within RESTART_WINDOW_S), each with
    a logged reason. A live server that never answers is not restarted (that
    would mean two servers): the error ends this process. While this watches,
    the other processes keep running: the web answers 503 and the workers wait
    until the server is back.
    """
    if os.environ.get("REDIS_URL"):
        _say("REDIS_URL is set: no embedded Redis to run; idling so the Procfile stays up")
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
        return 0
    from collections import deque

    from engine.connection import (ServerExited, StartInterrupted, embedded_pid, ensure_embedded, exit_description,
                                   fsync_policy, is_embedded_server, process_malloc, server_malloc, stop_embedded,
                                   var_dir)

    if args.stop:
        pid = stop_embedded()
        _say(f"embedded redis (pid {pid}) stopped (data saved)" if pid else "no embedded redis was running")
        return 0
    policy = fsync_policy()
    server_malloc()  # a bad TASKHUB_REDIS_MALLOC is refused before anything starts
    stop = {"now": False}

    def on_signal(signum: int, frame: Any) -> None:
        stop["now"] = True  # never raise here: a start in progress must record its pid first

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    restarts: deque[float] = deque()
    pid: int | None = None
    failure: str | None = None  # why no server runs although one was running or being started
    started = False
    try:
        while not stop["now"]:
            if pid is not None and is_embedded_server(pid):
                time.sleep(0.2)
                continue
            if pid is not None:
                failure = f"embedded redis (pid {pid}) died ({exit_description(pid)})"
            if failure is not None:
                now = time.monotonic()
                while restarts and now - restarts[0] > RESTART_WINDOW_S:
                    restarts.popleft()
                if len(restarts) >= RESTART_LIMIT:
                    _say(f"{failure} after {RESTART_LIMIT} restarts within {RESTART_WINDOW_S:g} s; giving up, "
                         f"see {var_dir() / 'redis.log'}", error=True)
                    return 1
                restarts.append(now)
                _say(f"{failure}; restarting it (restart {len(restarts)} of at most {RESTART_LIMIT} within "
                     f"{RESTART_WINDOW_S:g} s)")
            try:
                sock = ensure_embedded(cancel=lambda: stop["now"])
            except ServerExited as exc:
                pid, failure = None, f"embedded redis did not start ({exc})"
                time.sleep(0.5)
                continue
            pid = embedded_pid()
            failure = None if pid else "embedded redis exited right after it started"
            if pid:
                _sync_fsync(sock, policy)
                _say(f"embedded redis {'restarted ' if started else ''}(pid {pid}) on unix://{sock}, "
                     f"data in {var_dir()}, appendfsync {policy}, malloc {process_malloc(pid)}")
                started = True
    except StartInterrupted:
        pass
    stopped = stop_embedded()
    _say(f"embedded redis (pid {stopped}) stopped (data saved)" if stopped else "embedded redis was not running")
    return 0


def cmd_web(args: argparse.Namespace) -> int:
    import uvicorn

    from api.metrics import prepare_multiprocess
    from engine.connection import var_dir

    from .logs import uvicorn_log_config
    from .protocol import http_protocol
    prepare_multiprocess(args.workers, var_dir())  # several workers: /metrics sums their samples
    _advise_on_tuning()
    config = uvicorn_log_config()  # None: uvicorn's own text format
    uvicorn.run("api.app:main_app", factory=True, host=args.host, port=args.port, workers=args.workers,
                http=http_protocol(), access_log=False, log_level="info", **({"log_config": config} if config else {}))
    return 0


def _advise_on_tuning() -> None:
    """A Redis of your own (REDIS_URL, not a cluster) whose hash limits waste memory: say so once."""
    import os

    from engine.connection import CLUSTER_SCHEMES, connect, tuning_advice

    url = os.environ.get("REDIS_URL", "")
    if not url or url.startswith(CLUSTER_SCHEMES):
        return
    try:
        client = connect(url)
    except Exception:  # noqa: BLE001 - a bad URL: the web process reports it when it starts
        return
    try:
        advice = tuning_advice(client)
    except Exception:  # noqa: BLE001 - Redis away: the web process rides that out and answers 503
        return
    finally:
        client.close()
    if advice:
        from .logs import json_line, log_format

        print(json_line("WARNING", "taskhub.web", advice) if log_format() == "json" else f"warning: {advice}",
              file=sys.stderr, flush=True)


def cmd_worker(args: argparse.Namespace) -> int:
    """RQ worker; keeps running while Redis is away (workers/runner.py)."""
    from engine.connection import connect_rq
    from workers.jobs import QUEUE
    from workers.runner import run_worker

    from .logs import configure_logging

    configure_logging()  # and, in JSON mode, a root handler that RQ's loggers use instead of their own
    # RQ logs several lines per job; ours logs one (workers.jobs), so RQ's go to WARNING.
    return run_worker(connect_rq(), QUEUE)


def cmd_scheduler(args: argparse.Namespace) -> int:
    """RQ's CronScheduler; keeps running while Redis is away (workers/runner.py)."""
    from engine.connection import connect_rq
    from workers.runner import run_scheduler
    from workers.scheduler import build

    from .logs import configure_logging

    configure_logging()
    return run_scheduler(connect_rq(), build)


def cmd_agent(args: argparse.Namespace) -> int:
    """A simulated agent: N phones that run what they claim (workers/agent.py)."""
    from workers import agent

    from .logs import configure_logging

    configure_logging()
    return agent.main(args.url, args.token, args.simulate, interval=args.interval, min_s=args.min_seconds,
                      max_s=args.max_seconds, fail_rate=args.fail_rate, prefix=args.prefix, agent=args.name)


def cmd_sandbox(args: argparse.Namespace) -> int:
    """The local suno-compatible platform; registers itself as the suno channel when there is none."""
    import uvicorn

    from api.sandbox import create_sandbox_app

    from .logs import configure_logging, uvicorn_log_config

    configure_logging()
    url = f"http://{args.host}:{args.port}"
    if not args.no_register:
        cid = _engine().tasks.add_channel("suno", url, args.key, 1, True, "sandbox", only_if_none=True)
        what = f"registered as suno channel {cid}" if cid else "suno already has a channel; not registering"
        _say(f"sandbox: {what} ({url})", logger="taskhub.sandbox")
    app = create_sandbox_app(duration_s=args.duration, fail_rate=args.fail_rate, error_rate=args.error_rate,
                             key=args.key)
    config = uvicorn_log_config()
    uvicorn.run(app, host=args.host, port=args.port, access_log=False, log_level="warning",
                **({"log_config": config} if config else {}))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="taskhub", description=__doc__.split("\n")[0],
               epilog="exit codes: 0 done, 1 negative result, 2 usage or invalid input, 3 not found, "
                      "4 refused by state, 5 forbidden, 69 Redis unreachable, 70 internal error")
    p.add_argument("--json", action="store_true", default=False,
                   help="operator commands: one JSON document on stdout; process commands: JSON log lines")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    j = [JSON_FLAG]
    red = sub.add_parser("redis", parents=j,
                         help="run the embedded Redis in the foreground (saved and stopped on exit)")
    red.add_argument("--stop", action="store_true", help="save and stop a running embedded Redis, then exit")
    red.set_defaults(func=cmd_redis)
    web = sub.add_parser("web", parents=j, help="serve the HTTP API")
    web.add_argument("--host", default=os.environ.get("TASKHUB_HOST", "127.0.0.1"))
    web.add_argument("--port", type=int, default=int(os.environ.get("TASKHUB_PORT", "8000")))
    web.add_argument("--workers", type=int, default=int(os.environ.get("TASKHUB_WEB_WORKERS", "1")))
    web.set_defaults(func=cmd_web)
    sub.add_parser("worker", parents=j, help="run an RQ worker on taskhub's queue").set_defaults(func=cmd_worker)
    sub.add_parser("scheduler", parents=j, help="enqueue the periodic jobs").set_defaults(func=cmd_scheduler)

    cli_stacking.register(sub, _bind)
    cli_devices.register(sub, _bind)
    cli_center.register(sub, _bind)

    agent = sub.add_parser("agent", parents=j, help="run a simulated device agent against the device API")
    agent.add_argument("--simulate", type=int, required=True, metavar="N", help="number of simulated devices")
    agent.add_argument("--url", default=os.environ.get(
        "TASKHUB_AGENT_URL", f"http://127.0.0.1:{os.environ.get('TASKHUB_PORT', '8000')}"))
    agent.add_argument("--token", default=os.environ.get("TASKHUB_DEVICE_TOKEN", ""))
    agent.add_argument("--prefix", default="sim", help="serials are <prefix>-001 ... (default sim)")
    agent.add_argument("--name", default="simulator", help="agent name recorded on claims")
    agent.add_argument("--interval", type=float, default=2.0, help="seconds between heartbeat+claim rounds")
    agent.add_argument("--min-seconds", type=float, default=2.0)
    agent.add_argument("--max-seconds", type=float, default=10.0)
    agent.add_argument("--fail-rate", type=float, default=0.1)
    agent.set_defaults(func=cmd_agent)

    sandbox = sub.add_parser("sandbox", parents=j, help="run a local suno-compatible platform (demo channel)")
    sandbox.add_argument("--host", default="127.0.0.1")
    sandbox.add_argument("--port", type=int, default=int(os.environ.get("TASKHUB_SANDBOX_PORT", "8100")))
    sandbox.add_argument("--duration", type=float, default=float(os.environ.get("TASKHUB_SANDBOX_DURATION", "20")),
                         help="seconds a job takes (default 20)")
    sandbox.add_argument("--fail-rate", type=float,
                         default=float(os.environ.get("TASKHUB_SANDBOX_FAIL_RATE", "0.1")))
    sandbox.add_argument("--error-rate", type=float,
                         default=float(os.environ.get("TASKHUB_SANDBOX_ERROR_RATE", "0")),
                         help="share of submits answered 503 (to see retries)")
    sandbox.add_argument("--key", default=os.environ.get("TASKHUB_SANDBOX_KEY", ""))
    sandbox.add_argument("--no-register", action="store_true", help="do not register as the suno channel")
    sandbox.set_defaults(func=cmd_sandbox)
    return p


def _report(exc: BaseException, as_json: bool, process: bool, usage: str = "") -> int:
    """Print an error the way the command's output goes; return its exit code (``EXIT_CODES``)."""
    from .logs import json_line

    status, code, message = classify(exc)
    if status == INTERNAL:
        traceback.print_exception(exc, file=sys.stderr)
    if as_json and process:  # a process command's output is its log: one JSON line on stderr
        print(json_line("ERROR", "taskhub.cli", message, code=code, exit=status), file=sys.stderr, flush=True)
    elif as_json:
        import json

        print(json.dumps({"error": {"code": code, "message": message, "exit": status}}, ensure_ascii=False),
              flush=True)
    else:
        print(f"{usage}taskhub: error: {message}" if usage else f"error: {message}", file=sys.stderr, flush=True)
    return status


def main(argv: Iterable[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser().parse_args(argv)
    except UsageError as exc:
        return _report(exc, "--json" in argv, False, usage=exc.usage)
    process = args.command in PROCESS_COMMANDS
    if process and args.json:
        os.environ["TASKHUB_LOG_FORMAT"] = "json"  # this process and the ones it starts (uvicorn workers)
    as_json = args.json or (process and os.environ.get("TASKHUB_LOG_FORMAT", "").strip().lower() == "json")
    try:
        return args.func(args) or 0
    except KeyboardInterrupt:
        return INTERRUPTED
    except Exception as exc:  # noqa: BLE001 - every error becomes its exit code (cli_support.EXIT_CODES)
        return _report(exc, as_json, process)


if __name__ == "__main__":
    sys.exit(main())
