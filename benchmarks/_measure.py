# What the runtime suites share: the check that the runtime is there, timing
# loops, percentiles, a thread's CPU time and scheduling delay, and the
# runtime's heartbeat thread.
#
# Timing: loops report the MINIMUM over batches of the mean time per
# iteration (as timeit does): on a shared machine noise only ever adds time.
# Latencies are reported as nearest-rank percentiles of all samples, because
# the tail is the point there.
#
# Thread CPU time: Linux gives every thread a CPU-time clock that other
# threads of the process may read, clockid ((~tid) << 3) | 6 (the kernel's
# MAKE_THREAD_CPUCLOCK(tid, CPUCLOCK_SCHED)), in ns.  It is the same quantity
# as utime + stime in /proc/self/task/TID/stat, without the 10 ms granularity
# of clock ticks (which cannot resolve 0.2% of a core over a few seconds).

from __future__ import annotations

import contextlib
import gc
import math
import os
import time
from typing import Any, Callable, Iterator, Sequence

import vmown

def require_runtime(*names: str) -> Any:
    """vmown, if it has the runtime API a suite uses; else raise naming what is missing.

    The runtime is young: a suite that needs a part of it not there yet
    reports {"error": ...} through the harness instead of failing half-way.
    """
    missing = [name for name in names if not hasattr(vmown, name)]
    if missing:
        missing_names = ", ".join(f"vmown.{name}" for name in missing)
        raise RuntimeError(f"the vmown runtime is not available here (missing: {missing_names})")
    return vmown


@contextlib.contextmanager
def gc_off() -> Iterator[None]:
    was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def min_ns_per_iteration(loop: Callable[[int], object], iterations: int, batches: int) -> float:
    """Minimum over `batches` of the mean ns per iteration of loop(iterations)."""
    best = float("inf")
    with gc_off():
        for _ in range(batches):
            start = time.perf_counter_ns()
            loop(iterations)
            best = min(best, (time.perf_counter_ns() - start) / iterations)
    return best


def percentile(samples: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile (pct in (0, 100]) of samples."""
    ordered = sorted(samples)
    if not ordered:
        raise ValueError("no samples")
    rank = min(max(1, math.ceil(pct * len(ordered) / 100)), len(ordered))
    return ordered[rank - 1]


def thread_cpu_ns(tid: int) -> int:
    """CPU time (user + system) the thread `tid` of this process has used, in ns."""
    return time.clock_gettime_ns(((~tid) << 3) | 6)


def thread_stat_cpu_s(tid: int) -> float:
    """utime + stime of /proc/self/task/TID/stat, in s (clock-tick granularity)."""
    with open(f"/proc/self/task/{tid}/stat") as f:
        text = f.read()
    fields = text[text.rindex(")") + 2 :].split()  # comm may contain spaces
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def thread_run_delay_ns(tid: int) -> int:
    """Time the thread `tid` of this process has spent runnable but waiting for a core, in ns.

    The second field of /proc/self/task/TID/schedstat (the kernel's
    sched_info run_delay).
    """
    with open(f"/proc/self/task/{tid}/schedstat") as f:
        return int(f.read().split()[1])


def heartbeat_tid() -> int:
    """The id of the heartbeat thread of the VM the calling thread serves (inside vmown.run)."""
    from vmown._native import ffi, lib

    cb = runtime_cb()
    stats = ffi.new("vmown_heartbeat_stats *")
    lib.vmown_heartbeat_read(cb, stats)
    if not stats.running or stats.tid <= 0:
        raise RuntimeError("the runtime's heartbeat is not running")
    return stats.tid


def runtime_cb() -> Any:
    """The vmown_vm * of the VM the calling thread serves (called inside vmown.run).

    The runtime has no public accessor for it: this reads the scheduler's
    per-thread state (vmown/_scheduler.py, _here.state.cb).
    """
    from vmown import _scheduler

    state = getattr(getattr(_scheduler, "_here", None), "state", None)
    cb = getattr(state, "cb", None)
    if cb is None:
        raise RuntimeError("cannot find the runtime's control block (vmown._scheduler._here.state.cb)")
    return cb
