# Suite `heartbeat`: what the heartbeat thread costs, as a fraction of one
# core, when there is nothing for it to watch and when there is the most.
#
#   idle_cpu    vmown.run(..., hz=1000) with one process doing CPU work (~100
#               us of Python per step) and a checkpoint after each step, for
#               a window of 5 s (2.5 s with --quick), and no callout at all.  By design the heartbeat
#               stops ticking when no callout is in flight, so this should be
#               ~0.
#   busy_cpu    4 processes that each loop on block_us_threaded(5000)
#               (callouts in flight all the time; their disowns and owns move
#               the owner word every ~1 ms, so the heartbeat never goes quiet)
#               plus one CPU-bound process as above (work waits whenever the
#               VM is left unowned, so ticks also lead to activations): the
#               heartbeat's worst steady case.
#   *_ticks_per_s   heartbeat ticks per second over the window (the runtime's
#                   stats), to show whether it ticked.
#   *_bare_ticker_cpu  in the same window, side by side: a C thread that
#                   only wakes 1000 times a second on absolute deadlines
#                   (benchmarks/_cfuncs.py ticker_start) -- what the wake-ups
#                   alone cost on this machine; busy_cpu_over_bare_ticker is
#                   the heartbeat's cost over that floor.
#   *_activations   activations over the window.
#   *_revocations   revocations over the window: lazy callouts whose VM the
#                   heartbeat handed on (native/grants.c, "Lazy callouts")
#   watchdog_*      the same two windows run again with the watchdog on
#                   (slow_step=0.1, slow_callout=0.5: it polls every 50 ms;
#                   vmown/_watchdog.py): *_heartbeat_cpu is the heartbeat's
#                   fraction then, *_thread_cpu the watchdog thread's own (its
#                   CPU-time clock, found by its name), *_cpu their sum, which
#                   the goals bound like the heartbeat's alone.
#
# Method: the heartbeat's thread id comes from vmown_heartbeat_read (its tid
# field) on the runtime's control block (reached through the scheduler's
# per-thread state: the runtime has no public handle on it yet).  Its CPU
# time (user + system) is read at the start and at the end of the window,
# after a warm-up of 0.3 s, from the thread's CPU-time clock (the kernel's
# per-thread clock: the same quantity as utime + stime of
# /proc/self/task/TID/stat, in ns instead of 10 ms ticks, which could not
# resolve the 0.2% goal over seconds).  The fraction is CPU time / wall time
# of the window.  *_cpu_proc_stat is the same fraction from
# /proc/self/task/TID/stat (utime + stime), as a cross-check at its coarse
# granularity.
#
# Goals (from the issue): idle_cpu <= 0.002, busy_cpu <= 0.03; with the
# watchdog on, heartbeat + watchdog within the same bounds.

from __future__ import annotations

import threading
import time
import warnings
from typing import Any

from _cfuncs import load
from _measure import gc_off, heartbeat_tid, require_runtime, thread_cpu_ns, thread_stat_cpu_s

DURATION_QUICK_S, DURATION_FULL_S = 2.5, 5.0
WARMUP_S = 0.3
BLOCKERS = 4
BLOCK_US = 5_000
STEP_NS = 100_000


WATCHDOG = {"slow_step": 0.1, "slow_callout": 0.5}


def _watchdog_tid() -> int:
    for thread in threading.enumerate():
        if thread.name == "vmown-watchdog" and thread.native_id:
            return thread.native_id
    raise RuntimeError("the run has no watchdog thread (vmown-watchdog)")


def _window(vmown: Any, duration_s: float, blockers: int, lib: Any, watchdog: bool = False) -> dict[str, float]:
    checkpoint, spawn = vmown.checkpoint, vmown.spawn
    block = lib.block_us_threaded
    done = [False]
    out: dict[str, float] = {}

    async def cpu_bound() -> None:
        monotonic_ns = time.monotonic_ns
        while not done[0]:
            end = monotonic_ns() + STEP_NS
            while monotonic_ns() < end:
                pass
            await checkpoint()

    async def blocker() -> None:
        while not done[0]:
            block(BLOCK_US)
            await checkpoint()

    async def main() -> None:
        processes = [spawn(cpu_bound)] + [spawn(blocker) for _ in range(blockers)]
        await vmown.sleep(WARMUP_S)
        tid = heartbeat_tid()
        watchdog_tid = _watchdog_tid() if watchdog else 0
        watchdog0 = thread_cpu_ns(watchdog_tid) if watchdog else 0
        stats0 = vmown.stats()
        if lib.ticker_start(1000) != 0:
            raise RuntimeError("cannot start the bare ticker thread")
        cpu0, stat0, wall0 = thread_cpu_ns(tid), thread_stat_cpu_s(tid), time.monotonic_ns()
        await vmown.sleep(duration_s)
        cpu1, stat1, wall1 = thread_cpu_ns(tid), thread_stat_cpu_s(tid), time.monotonic_ns()
        watchdog1 = thread_cpu_ns(watchdog_tid) if watchdog else 0
        out["bare_ticker_cpu"] = lib.ticker_stop()
        stats1 = vmown.stats()
        done[0] = True
        for process in processes:
            await process
        wall_s = (wall1 - wall0) / 1e9
        out["cpu"] = (cpu1 - cpu0) / 1e9 / wall_s
        out["watchdog_cpu"] = (watchdog1 - watchdog0) / 1e9 / wall_s
        out["cpu_proc_stat"] = (stat1 - stat0) / wall_s
        out["ticks_per_s"] = (stats1["ticks"] - stats0["ticks"]) / wall_s
        out["activations"] = stats1["activations"] - stats0["activations"]
        out["revocations"] = stats1["revocations"] - stats0["revocations"]

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vmown.WatchdogWarning) if watchdog else None
        vmown.run(main, hz=1000, **(WATCHDOG if watchdog else {}))
    return out


def run(quick: bool) -> dict[str, float]:
    vmown = require_runtime("run", "spawn", "checkpoint", "sleep", "stats")
    _ffi, lib = load()
    duration_s = DURATION_QUICK_S if quick else DURATION_FULL_S
    with gc_off():
        idle = _window(vmown, duration_s, 0, lib)
        busy = _window(vmown, duration_s, BLOCKERS, lib)
        idle_watched = _window(vmown, duration_s, 0, lib, watchdog=True)
        busy_watched = _window(vmown, duration_s, BLOCKERS, lib, watchdog=True)
    idle_watched_cpu = idle_watched["cpu"] + idle_watched["watchdog_cpu"]
    busy_watched_cpu = busy_watched["cpu"] + busy_watched["watchdog_cpu"]
    return {
        "idle_cpu": idle["cpu"],
        "busy_cpu": busy["cpu"],
        "idle_cpu_proc_stat": idle["cpu_proc_stat"],
        "busy_cpu_proc_stat": busy["cpu_proc_stat"],
        "idle_ticks_per_s": idle["ticks_per_s"],
        "busy_ticks_per_s": busy["ticks_per_s"],
        "idle_activations": idle["activations"],
        "busy_activations": busy["activations"],
        "idle_bare_ticker_cpu": idle["bare_ticker_cpu"],
        "busy_bare_ticker_cpu": busy["bare_ticker_cpu"],
        "busy_cpu_over_bare_ticker": busy["cpu"] / busy["bare_ticker_cpu"],
        "idle_revocations": idle["revocations"],
        "busy_revocations": busy["revocations"],
        "window_s": duration_s,
        "watchdog_idle_heartbeat_cpu": idle_watched["cpu"],
        "watchdog_busy_heartbeat_cpu": busy_watched["cpu"],
        "watchdog_idle_thread_cpu": idle_watched["watchdog_cpu"],
        "watchdog_busy_thread_cpu": busy_watched["watchdog_cpu"],
        "watchdog_idle_cpu": idle_watched_cpu,
        "watchdog_busy_cpu": busy_watched_cpu,
        "goal_idle_cpu_le_0_002": idle["cpu"] <= 0.002,
        "goal_busy_cpu_le_0_03": busy["cpu"] <= 0.03,
        "goal_watchdog_idle_cpu_le_0_002": idle_watched_cpu <= 0.002,
        "goal_watchdog_busy_cpu_le_0_03": busy_watched_cpu <= 0.03,
    }
