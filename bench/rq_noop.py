"""The RQ job of bench/lifecycle.py: does nothing (it measures RQ's own cost per job)."""


def noop() -> None:
    return None
