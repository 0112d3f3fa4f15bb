"""Helpers shared by the tests: bounded waits, threads that must not hang."""

from __future__ import annotations

import threading
import time
from typing import Callable


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    """Poll until ``predicate()`` holds; fail (never hang) after a generous ``timeout``."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.001)


def run_threads(target: Callable[[int], None], count: int, timeout: float = 120.0) -> None:
    """Run ``target(i)`` on ``count`` threads; re-raise the first failure; fail if any hangs."""
    errors: list[BaseException] = []

    def body(i: int) -> None:
        try:
            target(i)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=body, args=(i,), daemon=True) for i in range(count)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    if any(t.is_alive() for t in threads):
        raise AssertionError(f"threads still running after {timeout} s: deadlock?")
    if errors:
        raise errors[0]
