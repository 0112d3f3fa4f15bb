"""Burst latency: many processes enter a blocking call at once; a 1 ms ticker stays on time.

The bound is relative: the ticker's worst lateness under vmown (N processes,
each one threaded libc usleep(20 ms)) against the same ticker under trio with
trio.to_thread.run_sync, measured side by side in this test, so that load on
the machine falls on both.  A loaded machine makes single measurements noisy:
the test takes the best ratio of a few attempts rather than a tight bound
(benchmarks/suite_burst.py has the figures and the goals).
"""

from __future__ import annotations

import time
from typing import Any, Awaitable, Callable

import cffi
import pytest

import vmown

_ffi = cffi.FFI()
_ffi.cdef("int usleep(unsigned int usec); int getpid(void);")
_usleep = _ffi.dlopen(None).usleep
usleep = vmown.threaded(_usleep)

N = 100
BLOCK_US = 20_000
TICK_NS = 1_000_000
WARMUP_S = 0.02
TAIL_NS = 5_000_000
ATTEMPTS = 5
RATIO, MARGIN_MS = 3.0, 3.0



class Ticker:
    """A 1 ms ticker's worst lateness over the ticks due during a burst."""

    def __init__(self) -> None:
        self.start = self.end = self.worst = 0
        self.stop = False

    async def run(self, sleep: Callable[[float], Awaitable[Any]]) -> None:
        now = time.monotonic_ns
        deadline = now() + TICK_NS
        while not self.stop:
            await sleep(max(0, deadline - now()) / 1e9)
            woke = now()
            if self.start and deadline >= self.start:
                if self.end and deadline > self.end + TAIL_NS:
                    self.stop = True
                else:
                    self.worst = max(self.worst, woke - deadline)
            deadline += TICK_NS
            if deadline <= woke:  # late: start the grid again, one stall counted once
                deadline = woke + TICK_NS


def vmown_late_ms(n: int = N) -> tuple[float, dict[str, int]]:
    t = Ticker()
    stats: dict[str, int] = {}

    async def blocker() -> None:
        usleep(BLOCK_US)

    async def main() -> None:
        tick = vmown.spawn(t.run, vmown.sleep)
        await vmown.sleep(WARMUP_S)
        t.start = time.monotonic_ns()
        for p in [vmown.spawn(blocker) for _ in range(n)]:
            await p
        t.end = time.monotonic_ns()
        await tick
        stats.update(vmown.stats())

    vmown.run(main)
    return t.worst / 1e6, stats


def trio_late_ms(n: int = N) -> float:
    trio = pytest.importorskip("trio")  # in the test extra (the peer compared): skipped only outside it
    t = Ticker()

    async def blocker() -> None:
        await trio.to_thread.run_sync(_usleep, BLOCK_US)

    async def main() -> None:
        async with trio.open_nursery() as outer:
            outer.start_soon(t.run, trio.sleep)
            await trio.sleep(WARMUP_S)
            t.start = time.monotonic_ns()
            async with trio.open_nursery() as nursery:
                for _ in range(n):
                    nursery.start_soon(blocker)
            t.end = time.monotonic_ns()

    trio.run(main)
    return t.worst / 1e6


def test_ticker_lateness_in_a_burst_of_100_is_bounded_relative_to_trio() -> None:
    trio_late_ms()  # trio keeps its threads for 10 s: compare with its warm cache, its best case
    attempts = []
    for _ in range(ATTEMPTS):
        mine, stats = vmown_late_ms()
        # trio's best of two: a spike of its own must not excuse ours
        theirs = min(trio_late_ms(), trio_late_ms())
        attempts.append((mine, theirs, stats))
        if mine <= RATIO * theirs + MARGIN_MS:
            return
    best = min(attempts, key=lambda a: a[0] / max(a[1], 0.1))
    pytest.fail(
        f"ticker lateness with {N} processes blocking at once: vmown {best[0]:.2f} ms against trio "
        f"{best[1]:.2f} ms (best of {ATTEMPTS}; bound {RATIO} x trio + {MARGIN_MS} ms); "
        f"all attempts (vmown, trio) ms: {[(round(a[0], 2), round(a[1], 2)) for a in attempts]}; "
        f"stats of the best: {best[2]}"
    )


def test_one_blocking_call_costs_the_ticker_at_most_a_few_ticks() -> None:
    """N = 1: one call that blocks is handed off within about a tick."""
    best = min(vmown_late_ms(1)[0] for _ in range(3))
    assert best <= 5.0, f"ticker {best:.2f} ms late with one blocking call"


def test_a_due_sleeper_runs_before_processes_spawned_ahead_of_it() -> None:
    """A due sleeper waits behind at most 4 runnable processes, not behind the whole run queue."""
    order: list[str] = []

    async def sleeper() -> None:
        await vmown.sleep(0.001)
        order.append("sleeper")

    async def newcomer(i: int) -> None:
        order.append(f"new{i}")

    async def main() -> None:
        s = vmown.spawn(sleeper)
        await vmown.checkpoint()  # the sleeper is in the timer heap now
        end = time.monotonic() + 0.003
        while time.monotonic() < end:  # its deadline passes while this step runs
            pass
        new = [vmown.spawn(newcomer, i) for i in range(30)]
        await s
        for p in new:
            await p

    vmown.run(main)
    assert order.index("sleeper") <= 4, order


def test_a_due_sleeper_keeps_its_place_behind_a_short_run_queue() -> None:
    """Processes runnable before a short sleep has passed still run first (FIFO)."""
    order: list[str] = []

    async def sleeper() -> None:
        await vmown.sleep(0.001)
        order.append("sleeper")

    async def newcomer(i: int) -> None:
        order.append(f"new{i}")

    async def main() -> None:
        s = vmown.spawn(sleeper)
        await vmown.checkpoint()
        end = time.monotonic() + 0.003
        while time.monotonic() < end:
            pass
        new = [vmown.spawn(newcomer, i) for i in range(3)]
        await s
        for p in new:
            await p

    vmown.run(main)
    assert order == ["new0", "new1", "new2", "sleeper"], order


def test_a_short_function_never_hands_the_vm_over() -> None:
    """Hints: only a function that stayed out over a tick hands over at its disown."""
    getpid = vmown.threaded(_ffi.dlopen(None).getpid)

    async def caller() -> None:
        for _ in range(500):
            getpid()
            await vmown.checkpoint()

    async def main() -> dict[str, int]:
        for p in [vmown.spawn(caller) for _ in range(4)]:
            await p
        return vmown.stats()

    stats = vmown.run(main)
    # A call stretched past two ticks by a loaded machine counts as blocking
    # for a few calls; never for a sizeable share of them.
    assert stats["hand_overs"] <= 0.02 * stats["callouts"], stats


def test_bursts_with_widened_windows_lose_no_process(widen: Callable[[int], None]) -> None:
    """Relays (idle.c B1, B2) and hand-overs (grants.c D1, D2), run through stretched windows."""
    widen(100_000)
    for _ in range(2):  # the second burst finds usleep hinted: hand-overs at the disown
        late, stats = vmown_late_ms(40)
        acquisitions = stats["fast_owns"] + stats["slow_owns"] + stats["activations"] + stats["hand_overs"]
        # The heartbeat counts an activation just after its post: under load
        # the worker may have run, and main read the counters, before that.
        assert 0 <= stats["disowns"] + 1 - acquisitions <= 1, stats
    assert stats["callouts"] >= 40
