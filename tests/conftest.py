from __future__ import annotations

import os
import threading
import time
from typing import Callable, Iterator

import pytest

from vmown._scheduler import _debug_set_widen_ns


@pytest.fixture
def widen() -> Iterator[Callable[[int], None]]:
    """Widen the core's and the scheduler's race windows for the test; always switched off after."""
    try:
        yield _debug_set_widen_ns
    finally:
        _debug_set_widen_ns(0)


@pytest.fixture
def no_thread_left_behind() -> Iterator[None]:
    """Fail a test after which a thread outlived it: a threading.Thread, or
    an OS thread of vmown's (the worker pool and the heartbeat are C threads,
    named vmown-*)."""
    before = set(threading.enumerate())
    yield
    assert set(threading.enumerate()) <= before, "a thread outlived vmown.run()"
    deadline = time.monotonic() + 5
    while (left := _vmown_os_threads()) and time.monotonic() < deadline:
        time.sleep(0.01)  # a thread joined from Python may still be leaving the kernel's list
    assert not left, f"OS threads outlived vmown.run(): {left}"


def _vmown_os_threads() -> list[str]:
    names = []
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/comm") as comm:
                name = comm.read().strip()
        except (FileNotFoundError, ProcessLookupError):  # gone before the open, or between it and the read
            continue
        if name.startswith("vmown-"):
            names.append(f"{name} ({tid})")
    return names
