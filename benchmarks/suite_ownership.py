# Suite `ownership`: what owning and disowning the VM costs, and how fast a
# hand-off wakes the thread it gives the VM to.  Every figure comes from this
# one run, side by side.
#
# From Python (this process, one thread, gc off, nobody else registered):
#   pair_py_ns    disown() + own() through vmown.Ownership, both fast paths,
#                 the bound methods held in locals as a user's hot loop would.
#   cffi_noop_ns  one cffi call that does almost nothing (vmown_nslots: a
#                 single load) on the same handle: the floor any cffi call
#                 pays (argument conversion, GIL release and re-take), to read
#                 pair_py_ns against: a pair is two such calls plus the
#                 Ownership methods' own Python.
#   Each is the MINIMUM over several batches of the mean time per iteration,
#   as timeit recommends: noise (other tenants, interrupts) only adds time.
#   The loop (itertools.repeat, as timeit) adds a few ns per iteration, and
#   is left in: it is small next to a call and a user's loop pays it too.
#
# From C (benchmarks/c/ownership_bench.c, a separate process that links the
# core directly; its top comment gives the method in full):
#   pair_c_ns                        disown + own in a tight loop, min of batch means
#   handoff_p50_us, handoff_p99_us   owner's stamp before disown -> queued,
#                                    asleep waiter's stamp after own returns
#   sem_wake_p50_us, sem_wake_p99_us the same through a bare POSIX semaphore:
#                                    the floor a hand-off is built on
#
#   latency_samples                  samples per latency kind (p99 = the 1%-th slowest)
#
# Derived: pair_py_over_cffi_noop; handoff_over_sem_wake (ratio of the p50s).
# Goals (from the project's issue), as booleans: goal_pair_c_ns_le_25, and
# goal_handoff_over_sem_wake_le_1_5 (a hand-off within 1.5x a bare wake).
# The Python figures run first, then the C program, so the two never compete
# for the machine's cores.

from __future__ import annotations

import gc
import itertools
import pathlib
import time
from typing import Callable

import vmown
from vmown._native import lib

from _cbuild import build, run_json

C_SOURCE = pathlib.Path(__file__).resolve().parent / "c" / "ownership_bench.c"

# (iterations per batch, batches) for the Python loops; the C program's
# arguments: pairs per batch, batches, samples per kind, extra sleep (ns) of
# the owner once the waiter is asleep.
PY_QUICK, PY_FULL = (100_000, 10), (300_000, 25)
C_QUICK, C_FULL = (1_000_000, 10, 5_000, 50_000), (2_000_000, 25, 20_000, 50_000)


def _min_ns_per_iteration(loop: Callable[[int], None], iterations: int, batches: int) -> float:
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        best = float("inf")
        for _ in range(batches):
            start = time.perf_counter_ns()
            loop(iterations)
            best = min(best, (time.perf_counter_ns() - start) / iterations)
        return best
    finally:
        if gc_was_enabled:
            gc.enable()


def _python_figures(iterations: int, batches: int) -> dict[str, float]:
    vm = vmown.Ownership(slots=4)
    try:
        vm.own()
        own, disown = vm.own, vm.disown

        def pairs(n: int) -> None:
            for _ in itertools.repeat(None, n):
                disown()
                own()

        nslots, cb = lib.vmown_nslots, vm._cb

        def noops(n: int) -> None:
            for _ in itertools.repeat(None, n):
                nslots(cb)

        figures = {
            "pair_py_ns": _min_ns_per_iteration(pairs, iterations, batches),
            "cffi_noop_ns": _min_ns_per_iteration(noops, iterations, batches),
        }
        if vm.stats()["slow_owns"]:
            raise RuntimeError("an uncontended own() left its fast path")
        return figures
    finally:
        vm.close()  # gives the VM back too


def run(quick: bool) -> dict[str, float]:
    exe = build("ownership_bench", [C_SOURCE])  # first: a compile error fails fast
    py = _python_figures(*(PY_QUICK if quick else PY_FULL))
    c = run_json(exe, *(C_QUICK if quick else C_FULL))
    handoff_over_sem_wake = c["handoff_p50_us"] / c["sem_wake_p50_us"]
    return {
        "pair_c_ns": c["pair_c_ns"],
        "pair_py_ns": py["pair_py_ns"],
        "cffi_noop_ns": py["cffi_noop_ns"],
        "pair_py_over_cffi_noop": py["pair_py_ns"] / py["cffi_noop_ns"],
        "handoff_p50_us": c["handoff_p50_us"],
        "handoff_p99_us": c["handoff_p99_us"],
        "sem_wake_p50_us": c["sem_wake_p50_us"],
        "sem_wake_p99_us": c["sem_wake_p99_us"],
        "latency_samples": c["samples"],
        "handoff_over_sem_wake": handoff_over_sem_wake,
        "goal_pair_c_ns_le_25": c["pair_c_ns"] <= 25,
        "goal_handoff_over_sem_wake_le_1_5": handoff_over_sem_wake <= 1.5,
    }
