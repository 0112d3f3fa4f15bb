# Suite `burst`: many processes block at the same moment; how late does a
# 1 ms ticker get, and how long does the burst take?
#
# Workload, per contender and N: one ticker process that sleeps to absolute
# deadlines 1 ms apart, and, once the ticker has run for TICKER_WARMUP_MS, N
# processes spawned in one go, each making one blocking call of 20 ms:
#
#   vmown_*     vmown.run, the call libc usleep(20000) through
#               vmown.threaded(libc.usleep) (cffi ABI mode, as a new user
#               would write it: the Python-level threaded wrapper)
#   callout_*   vmown.run, the call vmown.callout(time.sleep, 0.02)
#   trio_*      trio.run, the call await trio.to_thread.run_sync(usleep, 20000)
#   asyncio_*   asyncio.run, the call await asyncio.to_thread(usleep, 20000)
#
#   *_late_ms_N   the ticker's worst lateness (wake-up time minus deadline)
#                 over the ticks due from the spawn until the burst is over
#                 (all N calls joined) plus TICKER_TAIL_MS.  A tick that was
#                 late starts the grid again from its wake-up (as the
#                 heartbeat does), so one stall is counted once, not again
#                 for every tick it swallowed.
#   *_wall_ms_N   from the spawn of the first blocking process to the join of
#                 the last one (vmown and trio; asyncio's default executor
#                 runs min(32, cores + 4) calls at once, trio's limiter 40:
#                 their walls are mostly their limits).
#
# Each contender keeps its defaults (vmown.run(hz=1000), trio's and
# asyncio's thread limits).  The contenders take turns, one whole run each
# per round, so that load on the shared machine falls on all of them alike; a
# figure is the MEDIAN over the rounds (ROUNDS, QUICK_ROUNDS with --quick), and
# each run measures the FIRST burst of a fresh runtime (no worker parked in
# advance but the spare that vmown.run keeps, no thread in trio's cache):
# the case of a server hit by a burst after a quiet spell.  trio keeps idle
# threads for 10 s, process-wide, so from the second round on its calls find
# warm threads: its best case.  gc off.
#
# Goals (from the issue): vmown_late_ms_100 <= trio_late_ms_100,
# callout_late_ms_100 <= trio_late_ms_100, vmown_late_ms_10 <= 2 x
# trio_late_ms_10, vmown_late_ms_1 <= 1.5 (one tick at 1 kHz and a half),
# vmown_wall_ms_100 <= trio_wall_ms_100.  --quick runs N = 1, 10, 100; a full
# run adds N = 1000.  Also reported, from the vmown runs of the median round
# of N = 100: the heartbeat's activations and the hand-offs.

from __future__ import annotations

import asyncio
import statistics
import time
from typing import Any, Callable

import cffi

from _measure import gc_off, require_runtime

BLOCK_US = 20_000
TICK_NS = 1_000_000
TICKER_WARMUP_MS = 20
TICKER_TAIL_MS = 5
QUICK_NS, FULL_NS = (1, 10, 100), (1, 10, 100, 1000)
QUICK_ROUNDS, ROUNDS = 5, 7


def libc_usleep() -> Any:
    ffi = cffi.FFI()
    ffi.cdef("int usleep(unsigned int usec);")
    return ffi.dlopen(None).usleep


class _Ticker:
    """The ticker's bookkeeping, shared by every contender."""

    def __init__(self) -> None:
        self.burst_start_ns = 0
        self.burst_end_ns = 0
        self.worst_ns = 0
        self.stop = False

    def record(self, deadline_ns: int, woke_ns: int) -> int:
        """Note a wake-up; return the next deadline."""
        late = woke_ns - deadline_ns
        if self.burst_start_ns and deadline_ns >= self.burst_start_ns and (
            not self.burst_end_ns or deadline_ns <= self.burst_end_ns + TICKER_TAIL_MS * 1_000_000
        ):
            self.worst_ns = max(self.worst_ns, late)
        if self.burst_end_ns and deadline_ns > self.burst_end_ns + TICKER_TAIL_MS * 1_000_000:
            self.stop = True
        nxt = deadline_ns + TICK_NS
        return nxt if nxt > woke_ns else woke_ns + TICK_NS


def vmown_burst(vmown: Any, call: Callable[[], Any], n: int) -> tuple[float, float, dict[str, int]]:
    """(worst lateness ms, wall ms, vmown.stats() after the burst)."""
    t = _Ticker()
    stats: dict[str, int] = {}
    now = time.monotonic_ns

    async def ticker() -> None:
        deadline = now() + TICK_NS
        while not t.stop:
            await vmown.sleep(max(0, deadline - now()) / 1e9)
            deadline = t.record(deadline, now())

    async def blocker() -> None:
        call()

    async def main() -> None:
        tick = vmown.spawn(ticker)
        await vmown.sleep(TICKER_WARMUP_MS / 1e3)
        t.burst_start_ns = now()
        processes = [vmown.spawn(blocker) for _ in range(n)]
        for p in processes:
            await p
        t.burst_end_ns = now()
        await tick
        stats.update(vmown.stats())

    vmown.run(main)
    return t.worst_ns / 1e6, (t.burst_end_ns - t.burst_start_ns) / 1e6, stats


def trio_burst(usleep: Any, n: int) -> tuple[float, float]:
    import trio

    t = _Ticker()
    now = time.monotonic_ns  # trio's clock is time.perf_counter based; sleep relative to ours

    async def ticker() -> None:
        deadline = now() + TICK_NS
        while not t.stop:
            await trio.sleep(max(0, deadline - now()) / 1e9)
            deadline = t.record(deadline, now())

    async def blocker() -> None:
        await trio.to_thread.run_sync(usleep, BLOCK_US)

    async def main() -> None:
        async with trio.open_nursery() as outer:
            outer.start_soon(ticker)
            await trio.sleep(TICKER_WARMUP_MS / 1e3)
            t.burst_start_ns = now()
            async with trio.open_nursery() as nursery:
                for _ in range(n):
                    nursery.start_soon(blocker)
            t.burst_end_ns = now()

    trio.run(main)
    return t.worst_ns / 1e6, (t.burst_end_ns - t.burst_start_ns) / 1e6


def asyncio_burst(usleep: Any, n: int) -> tuple[float, float]:
    t = _Ticker()
    now = time.monotonic_ns

    async def ticker() -> None:
        deadline = now() + TICK_NS
        while not t.stop:
            await asyncio.sleep(max(0, deadline - now()) / 1e9)
            deadline = t.record(deadline, now())

    async def main() -> None:
        tick = asyncio.create_task(ticker())
        await asyncio.sleep(TICKER_WARMUP_MS / 1e3)
        t.burst_start_ns = now()
        await asyncio.gather(*(asyncio.to_thread(usleep, BLOCK_US) for _ in range(n)))
        t.burst_end_ns = now()
        await tick

    asyncio.run(main())
    return t.worst_ns / 1e6, (t.burst_end_ns - t.burst_start_ns) / 1e6


def measure(ns: tuple[int, ...], rounds: int) -> dict[str, float]:
    vmown = require_runtime("run", "spawn", "sleep", "threaded", "callout", "stats")
    usleep = libc_usleep()
    threaded_usleep = vmown.threaded(usleep)
    callout = vmown.callout
    sleep = time.sleep
    out: dict[str, float] = {}
    for n in ns:
        samples: dict[str, list[float]] = {}
        vm_stats: list[tuple[float, dict[str, int]]] = []

        def add(name: str, value: float) -> None:
            samples.setdefault(name, []).append(value)

        with gc_off():
            for _ in range(rounds):
                late, wall, st = vmown_burst(vmown, lambda: threaded_usleep(BLOCK_US), n)
                add(f"vmown_late_ms_{n}", late)
                add(f"vmown_wall_ms_{n}", wall)
                vm_stats.append((late, st))
                late, wall, _ = vmown_burst(vmown, lambda: callout(sleep, BLOCK_US / 1e6), n)
                add(f"callout_late_ms_{n}", late)
                late, wall = trio_burst(usleep, n)
                add(f"trio_late_ms_{n}", late)
                add(f"trio_wall_ms_{n}", wall)
                late, _ = asyncio_burst(usleep, n)
                add(f"asyncio_late_ms_{n}", late)
        for name, values in samples.items():
            out[name] = statistics.median(values)
        vm_stats.sort(key=lambda item: item[0])
        median_stats = vm_stats[len(vm_stats) // 2][1]
        out[f"vmown_activations_{n}"] = median_stats["activations"]
        out[f"vmown_hand_offs_{n}"] = median_stats["hand_offs"]
    return out


def run(quick: bool) -> dict[str, float]:
    out = measure(QUICK_NS if quick else FULL_NS, QUICK_ROUNDS if quick else ROUNDS)
    for n in QUICK_NS + (() if quick else (1000,)):
        trio_late = out[f"trio_late_ms_{n}"]
        out[f"vmown_over_trio_late_{n}"] = out[f"vmown_late_ms_{n}"] / trio_late if trio_late else float(0)
        out[f"callout_over_trio_late_{n}"] = out[f"callout_late_ms_{n}"] / trio_late if trio_late else float(0)
    out["goal_vmown_late_100_le_trio"] = out["vmown_late_ms_100"] <= out["trio_late_ms_100"]
    out["goal_callout_late_100_le_trio"] = out["callout_late_ms_100"] <= out["trio_late_ms_100"]
    out["goal_vmown_late_10_le_2x_trio"] = out["vmown_late_ms_10"] <= 2 * out["trio_late_ms_10"]
    out["goal_vmown_late_1_le_1_5_ms"] = out["vmown_late_ms_1"] <= 1.5
    out["goal_vmown_wall_100_le_trio"] = out["vmown_wall_ms_100"] <= out["trio_wall_ms_100"]
    return out


if __name__ == "__main__":
    import sys

    quick = "--quick" in sys.argv
    for key, value in run(quick).items():
        print(f"{key:36} {value}")
