# Suite `detect`: how soon the runtime notices a callout that blocks, and
# that it never mistakes a short call for a blocked one.  All inside
# vmown.run(..., hz=1000); the C functions are those of benchmarks/_cfuncs.py.
#
#   detect_p50_ms, detect_p99_ms
#       Process A spawns process B (runnable from then on, but A keeps the VM:
#       a spawn is not a scheduling point), stamps t0 = time.monotonic_ns()
#       and calls block_us(20000) through vmown.callout.  B's first statement
#       stamps t1.  One sample is t1 - t0: the VM stays idle that long while
#       work waits -- the heartbeat's detection (1-2 ticks by design) plus the
#       activation of a parked worker and its taking the GIL.  A then joins B,
#       and the next sample starts; the 20 ms call outlasts any plausible
#       detection, so every sample is one detection.  t0 is taken in Python
#       just before vmown.callout, so the few hundred ns of the call's entry
#       are counted in, which errs on the pessimistic side.
#   detect_bin_<LO>us
#       The samples as a histogram, for the report's plot (benchmarks/
#       report.py): how many fell in [LO, next LO) us.  The edges are a
#       ladder of ratio sqrt(2) from 10 us (10, 14, 20, 28, 40, 57, 80, 113,
#       ... 20480): detections range from tens of us (a hand-over at the
#       disown) to a few ticks.  Only the bins from the first non-empty one
#       to the last are kept, so a plot knows every edge; the first holds the
#       samples below 10 us too, and the last ladder bin everything above.
#   activation_rate_short, activation_rate_long
#       Process B loops on `await vmown.checkpoint()`: runnable all along.
#       Process A makes N calls of block_us(500) (then N of block_us(3000))
#       through vmown.callout, with a checkpoint after each (so B runs between
#       calls, as it would in a program).  Around each call A reads
#       vmown.stats() and times the call: a call "caused an activation" if
#       the heartbeat handed the VM on across it -- an activation of a parked
#       worker (the VM left unowned by an eager callout) or a revocation (a
#       lazy callout kept the owner word: native/grants.c, "Lazy
#       callouts"); their sum grew.  By the design's hysteresis
#       (the VM must stay unowned for one whole tick) a call shorter than a
#       tick never causes an activation and one longer than two ticks always
#       causes exactly one: the goals are 0 and 1.
#       activation_rate_short counts the 0.5 ms calls that did last less than
#       a tick (1 ms); on this shared machine a nanosleep of 0.5 ms now and
#       then oversleeps by milliseconds, and an activation then is the design
#       working, not a false positive.  Those calls are excluded, and shown:
#         short_calls_over_1ms        fraction of the 0.5 ms calls excluded
#         activation_rate_short_all   the rate over all the 0.5 ms calls,
#                                     the excluded ones included
#       activation_rate_long: fraction of the 3 ms calls (nanosleep never
#       returns early) that caused exactly one activation;
#       long_calls_activating_twice: those that caused more than one.
#       long_calls_served_by_a_queued_server: those during which B ran with
#       no activation: a parked worker the heartbeat had queued as a server
#       (heartbeat.c) took the VM at the callout's disown, a soft grant.
#       They count as handled, the fastest way there is.
#       long_calls_missed: those that caused none, and long_missed_max_ticks
#       the most heartbeat ticks counted across one of them (the runtime's
#       tick count, read around the call): a miss across fewer than 2 ticks
#       means the heartbeat thread itself did not run in time.
#       long_missed_min_hb_run_delay_ms: the least time, over the missed
#       calls, that the heartbeat thread spent runnable but waiting for a core
#       from just before the call until its next tick after it (run_delay of
#       /proc/self/task/TID/schedstat, which the kernel updates when a wait
#       ends): above a millisecond, the machine kept the heartbeat from
#       ticking in time (other tenants on the 2 cores), not the hysteresis.
#       Such calls (long_calls_heartbeat_starved: missed, with a run delay of
#       a tick or more) are left out of activation_rate_long, as the
#       stretched short calls are left out of the short rate;
#       activation_rate_long_all is the rate over every 3 ms call.
# Goals (from the issue), at 1 kHz: detect_p50_ms <= 1.8, detect_p99_ms <=
# 2.5, activation_rate_short == 0, activation_rate_long == 1.

from __future__ import annotations

import bisect
import time
from typing import Any

from _cfuncs import load
from _measure import gc_off, heartbeat_tid, percentile, require_runtime, thread_run_delay_ns

# detection samples; (calls of 0.5 ms, calls of 3 ms)
DETECT_QUICK, DETECT_FULL = 150, 400
RATES_QUICK, RATES_FULL = (600, 200), (2_000, 600)
SHORT_US, LONG_US, BLOCK_US = 500, 3_000, 20_000
TICK_NS = 1_000_000  # at hz=1000
EDGES_US = [round(10 * 2 ** (k / 2)) for k in range(23)]  # detect_bin_<LO>us: 10 us .. 20.48 ms
SERVED = 1_000  # a call's count when a queued server, not the heartbeat, took the VM


def _detection_ms(vmown: Any, lib: Any, samples: int) -> list[float]:
    block_us, callout, spawn = lib.block_us, vmown.callout, vmown.spawn
    latencies: list[float] = []
    first_run = [0]

    async def b() -> None:
        first_run[0] = time.monotonic_ns()

    async def main() -> None:
        for _ in range(samples):
            first_run[0] = 0
            process = spawn(b)
            t0 = time.monotonic_ns()
            callout(block_us, BLOCK_US)
            await process
            if first_run[0] == 0:
                raise RuntimeError("process B never ran")
            latencies.append((first_run[0] - t0) / 1e6)

    vmown.run(main, hz=1000)
    return latencies


Calls = dict[int, list[tuple[int, int, int, int]]]


def histogram(latencies_ms: list[float]) -> dict[str, int]:
    """detect_bin_<LO>us -> samples in [LO, next LO) us, from the first non-empty bin to the last."""
    counts = [0] * len(EDGES_US)
    for ms in latencies_ms:
        counts[max(bisect.bisect_right(EDGES_US, ms * 1000) - 1, 0)] += 1
    used = [i for i, n in enumerate(counts) if n]
    if not used:
        return {}
    return {f"detect_bin_{EDGES_US[i]}us": counts[i] for i in range(used[0], used[-1] + 1)}


def _taken(stats: dict[str, int]) -> int:
    """Times the heartbeat handed the VM on: activations and revocations."""
    return stats["activations"] + stats["revocations"]


def _activation_rates(vmown: Any, lib: Any, short_calls: int, long_calls: int) -> Calls:
    block_us, callout, checkpoint, spawn, stats = (
        lib.block_us, vmown.callout, vmown.checkpoint, vmown.spawn, vmown.stats
    )
    # us -> [(activations, duration_ns, ticks, heartbeat's run delay in ns (missed long calls only))]
    calls: Calls = {}

    async def main() -> None:
        done, ran = [False], [0]

        async def b() -> None:
            while not done[0]:
                ran[0] += 1
                await checkpoint()

        process = spawn(b)
        await checkpoint()  # B is running and runnable from here on
        tid = heartbeat_tid()
        for us, n in ((SHORT_US, short_calls), (LONG_US, long_calls)):
            samples = calls[us] = []
            for _ in range(n):
                before, delay_before_ns, delay_ns = stats(), thread_run_delay_ns(tid), 0
                ran_before = ran[0]
                start = time.monotonic_ns()
                callout(block_us, us)
                duration_ns = time.monotonic_ns() - start
                after = stats()
                activations = _taken(after) - _taken(before)
                if activations == 0 and ran[0] != ran_before:
                    # B ran during the call without the heartbeat handing the
                    # VM on: a server it had queued before took it (a soft
                    # grant at the disown).  Served; counted apart.
                    activations = SERVED
                if activations == 0 and us == LONG_US:
                    # The kernel adds a wait for a core to run_delay only
                    # when the wait ends: let the heartbeat tick once more.
                    ticks = after["ticks"]
                    while stats()["ticks"] == ticks and time.monotonic_ns() - start < 50_000_000:
                        await checkpoint()
                    delay_ns = thread_run_delay_ns(tid) - delay_before_ns
                samples.append((activations, duration_ns, after["ticks"] - before["ticks"], delay_ns))
                await checkpoint()
        done[0] = True
        await process

    vmown.run(main, hz=1000)
    return calls


def run(quick: bool) -> dict[str, float]:
    vmown = require_runtime("run", "spawn", "checkpoint", "callout", "stats")
    _ffi, lib = load()
    with gc_off():
        latencies = _detection_ms(vmown, lib, DETECT_QUICK if quick else DETECT_FULL)
        calls = _activation_rates(vmown, lib, *(RATES_QUICK if quick else RATES_FULL))
    p50, p99 = percentile(latencies, 50), percentile(latencies, 99)
    short, long = calls[SHORT_US], calls[LONG_US]
    # A short call served by a queued server (not the heartbeat) is no false
    # detection: only activations and revocations count against the goal.
    really_short = [activations % SERVED for activations, duration_ns, _, _ in short if duration_ns < TICK_NS]
    rate_short = sum(map(bool, really_short)) / len(really_short)
    once = sum(activations in (1, SERVED) for activations, _, _, _ in long)
    missed = [(ticks, delay_ns) for activations, _, ticks, delay_ns in long if activations == 0]
    # A heartbeat kept off the cores for a whole tick cannot act in time:
    # excluded, as the short calls the machine stretched are (and shown).
    starved = sum(delay_ns >= TICK_NS for _, delay_ns in missed)
    rate_long = once / (len(long) - starved)
    return {
        "detect_p50_ms": p50,
        "detect_p99_ms": p99,
        "detect_max_ms": max(latencies),
        "detect_samples": len(latencies),
        "activation_rate_short": rate_short,
        "activation_rate_short_all": sum(bool(a % SERVED) for a, _, _, _ in short) / len(short),
        "short_calls_over_1ms": 1 - len(really_short) / len(short),
        "activation_rate_long": rate_long,
        "activation_rate_long_all": once / len(long),
        "long_calls_missed": len(missed),
        "long_calls_heartbeat_starved": starved,
        "long_missed_max_ticks": max((ticks for ticks, _ in missed), default=0),
        "long_missed_min_hb_run_delay_ms": min((delay_ns / 1e6 for _, delay_ns in missed), default=0),
        "long_calls_activating_twice": sum(1 < a < SERVED for a, _, _, _ in long),
        "long_calls_served_by_a_queued_server": sum(a == SERVED for a, _, _, _ in long),
        "goal_detect_p50_le_1_8_ms": p50 <= 1.8,
        "goal_detect_p99_le_2_5_ms": p99 <= 2.5,
        "goal_activation_rate_short_eq_0": rate_short == 0,
        "goal_activation_rate_long_eq_1": rate_long == 1,
        **histogram(latencies),
    }
