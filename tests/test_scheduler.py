"""vmown._scheduler: run, processes, the loop, workers and the heartbeat, Ctrl-C."""

from __future__ import annotations

import contextvars
import importlib.util
import os
import pathlib
import signal
import threading
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import cffi
import pytest

import vmown
from vmown import _scheduler
from vmown._native import ffi, lib

_ffi = cffi.FFI()
_ffi.cdef(
    """
    int usleep(unsigned int usec);
    long read(int fd, void *buf, size_t n);
    """
)
libc = _ffi.dlopen(None)
usleep = vmown.threaded(libc.usleep)
read = vmown.threaded(libc.read)

var: contextvars.ContextVar[object] = contextvars.ContextVar("var")


pytestmark = pytest.mark.usefixtures("no_thread_left_behind")


def names_in(exc: BaseException) -> list[str]:
    return [frame.name for frame in traceback.extract_tb(exc.__traceback__)]


# ---- run and processes ----


def test_run_returns_mains_result() -> None:
    async def main(a: int, b: int) -> int:
        await vmown.checkpoint()
        return a * b

    assert vmown.run(main, 6, 7) == 42


def test_run_raises_mains_exception_with_its_traceback() -> None:
    async def failing() -> None:
        await vmown.sleep(0.001)
        raise ValueError("boom")

    async def main() -> None:
        await failing()

    with pytest.raises(ValueError, match="boom") as info:
        vmown.run(main)
    assert names_in(info.value)[-2:] == ["main", "failing"]


def test_spawned_processes_return_results_and_raise_exceptions() -> None:
    async def child(i: int) -> int:
        await vmown.sleep(0.001 * (i % 3))
        if i == 3:
            raise KeyError(i)
        return i * i

    async def main() -> tuple[list[int], list[str], bool, str]:
        procs = [vmown.spawn(child, i) for i in range(5)]
        results = []
        for proc in procs:
            try:
                results.append(await proc)
            except KeyError as exc:
                names = names_in(exc)
        return results, names, procs[0].done(), repr(procs[0])

    results, names, done, text = vmown.run(main)
    assert results == [0, 1, 4, 16]
    assert names[-1] == "child" and "main" in names
    assert (
        done
        and text
        == "<vmown.Process test_spawned_processes_return_results_and_raise_exceptions.<locals>.child done>"
    )


def test_checkpoint_lets_the_others_run() -> None:
    order: list[str] = []

    async def worker(name: str) -> None:
        for _ in range(3):
            order.append(name)
            await vmown.checkpoint()

    async def main() -> None:
        a, b = vmown.spawn(worker, "a"), vmown.spawn(worker, "b")
        await a
        await b

    vmown.run(main)
    assert order == ["a", "b"] * 3


def test_sleepers_wake_in_deadline_order() -> None:
    woke: list[int] = []

    async def sleeper(ms: int) -> None:
        await vmown.sleep(ms / 1000)
        woke.append(ms)

    async def main() -> None:
        procs = [vmown.spawn(sleeper, ms) for ms in (30, 10, 0, 20)]
        for proc in procs:
            await proc

    vmown.run(main)
    assert woke == [0, 10, 20, 30]


def test_processes_left_at_the_end_are_closed() -> None:
    cleaned: list[str] = []

    async def forever(name: str) -> None:
        try:
            await vmown.sleep(3600)
        finally:
            cleaned.append(name)

    async def main() -> str:
        vmown.spawn(forever, "sleeping")
        await vmown.checkpoint()
        vmown.spawn(forever, "never started")
        return "done"

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "coroutine was never awaited" either
        assert vmown.run(main) == "done"
    assert cleaned == ["sleeping"]  # the other never started: no finally to run


def test_an_exception_nobody_awaits_is_reported() -> None:
    async def failing() -> None:
        raise OSError("lost")

    async def main() -> None:
        vmown.spawn(failing)
        await vmown.sleep(0.005)

    with pytest.warns(RuntimeWarning, match="nobody awaited it") as record:
        vmown.run(main)
    assert "OSError: lost" in str(record[0].message)


def test_keyboard_interrupt_in_any_process_ends_the_run() -> None:
    async def interrupted() -> None:
        raise KeyboardInterrupt

    async def main() -> None:
        vmown.spawn(interrupted)
        await vmown.sleep(30)

    start = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        vmown.run(main)
    assert time.monotonic() - start < 15


def test_awaiting_something_foreign_raises_in_the_process() -> None:
    class Foreign:
        def __await__(self) -> Any:
            yield "not a vmown trap"

    async def main() -> tuple[str, str]:
        with pytest.raises(TypeError, match="vmown does not know") as foreign:
            await Foreign()
        me = vmown.spawn(vmown.sleep, 0)
        await me
        return str(foreign.value), "still running"

    message, after = vmown.run(main)
    assert "'not a vmown trap'" in message and after == "still running"


def test_a_deadlock_is_reported_not_hung() -> None:
    async def main() -> None:
        await vmown.Event().wait()

    with pytest.raises(RuntimeError, match="deadlock"):
        vmown.run(main)


def test_misuse_gets_clear_errors() -> None:
    async def main() -> None:
        with pytest.raises(RuntimeError, match="inside vmown.run"):
            vmown.run(main)
        with pytest.raises(TypeError, match="async def"):
            vmown.spawn(lambda: 1)  # type: ignore[arg-type, return-value]
        with pytest.raises(TypeError, match="spawn\\(fn, \\*args\\)"):
            vmown.spawn(main())  # type: ignore[arg-type]

    vmown.run(main)
    with pytest.raises(RuntimeError, match="from a process"):
        vmown.spawn(main)
    with pytest.raises(RuntimeError, match="from a process"):
        vmown.stats()
    with pytest.raises(ValueError, match="hz"):
        vmown.run(main, hz=0)
    with pytest.raises(ValueError, match="max_threads"):
        vmown.run(main, max_threads=1)
    with pytest.raises(ValueError, match="idle_timeout"):
        vmown.run(main, idle_timeout=0)


def test_run_works_on_any_thread() -> None:
    async def main() -> str:
        await vmown.sleep(0.001)
        return threading.current_thread().name

    results: list[str] = []
    thread = threading.Thread(target=lambda: results.append(vmown.run(main)), name="not-main")
    thread.start()
    thread.join(30)
    assert results and results[0] != "MainThread"


def test_shutdown_waits_for_callouts_still_out_and_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_scheduler, "_SHUTDOWN_WARN_S", 0.05)
    finished: list[bool] = []

    async def straggler() -> None:
        # A callout on the thread that called run() delays the shutdown itself;
        # the point is the ones on workers.
        usleep(10_000 if threading.current_thread() is threading.main_thread() else 300_000)
        finished.append(True)

    async def main() -> None:
        vmown.spawn(straggler)
        vmown.spawn(straggler)
        await vmown.sleep(0.05)  # both are in their callouts

    with pytest.warns(RuntimeWarning, match="still in a callout"):
        vmown.run(main)
    assert finished == [True, True]  # their steps ended before run() returned


# ---- contextvars ----


def test_each_process_has_its_own_copy_of_the_context() -> None:
    async def child() -> object:
        seen = var.get()
        var.set("child")
        await vmown.checkpoint()
        return seen, var.get()

    async def main() -> tuple[object, object]:
        var.set("parent")
        result = await vmown.spawn(child)
        return result, var.get()

    assert vmown.run(main) == (("parent", "child"), "parent")


def test_a_contextvar_survives_migration_to_another_thread() -> None:
    """The thread that runs a process's step blocks in a callout; the next
    step of the process runs on another thread, with its context intact."""

    async def blocker() -> None:
        usleep(100_000)

    async def mover(tag: int) -> tuple[bool, object]:
        var.set(tag)
        first = threading.get_ident()
        for _ in range(30):
            vmown.spawn(blocker)  # runs next, on this thread, and blocks it
            await vmown.sleep(0.005)
            if var.get() != tag:
                return False, var.get()
            if threading.get_ident() != first:
                return True, var.get()
        return False, var.get()

    async def main() -> tuple[list[tuple[bool, object]], object]:
        var.set("main")
        procs = [vmown.spawn(mover, tag) for tag in range(3)]
        return [await proc for proc in procs], var.get()

    moved, main_value = vmown.run(main)
    assert moved == [(True, 0), (True, 1), (True, 2)]
    assert main_value == "main"


# ---- callouts that block, the heartbeat, workers ----


def test_a_blocking_callout_does_not_stop_a_ticker() -> None:
    async def ticker(stop: vmown.Event) -> tuple[float, int]:
        worst, ticks = 0.0, 0
        while not stop.is_set():
            start = time.monotonic()
            await vmown.sleep(0.001)
            worst = max(worst, time.monotonic() - start - 0.001)
            ticks += 1
        return worst, ticks

    async def main() -> tuple[float, float, int]:
        stop = vmown.Event()
        proc = vmown.spawn(ticker, stop)
        await vmown.sleep(0.02)
        blocked = []
        for _ in range(4):
            start = time.monotonic()
            usleep(50_000)
            blocked.append(time.monotonic() - start)
        stop.set()
        worst, ticks = await proc
        return min(blocked), worst, ticks

    blocked, worst, ticks = vmown.run(main)
    assert blocked >= 0.05
    assert worst < blocked / 2, f"the ticker was {worst * 1e3:.1f} ms late while a callout blocked"
    assert ticks >= 20  # it ticked during the 200 ms of blocking, not only between the calls


def test_short_calls_cause_no_activation_long_calls_do() -> None:
    """The heartbeat acts on a call out for a whole tick: it activates a
    worker (the VM released by an eager callout) or revokes the VM from a
    lazy one (native/grants.c, "Lazy callouts"); both count here."""

    def taken(hand_overs: bool = False) -> int:
        stats = vmown.stats()
        return stats["activations"] + stats["revocations"] + (stats["hand_overs"] if hand_overs else 0)

    async def spinner(stop: vmown.Event) -> None:
        while not stop.is_set():
            await vmown.checkpoint()

    async def main() -> tuple[int, int, int]:
        stop = vmown.Event()
        vmown.spawn(spinner, stop)
        await vmown.sleep(0.01)
        before = taken()
        stretched = 0
        for _ in range(2000):
            start = time.monotonic_ns()
            usleep(200)  # 0.2 ms: shorter than a tick
            stretched += time.monotonic_ns() - start >= 1_000_000
        short = taken() - before
        # A long call may also hand the VM over at its disown: a short call
        # stretched past two ticks by the machine, or the first long call,
        # makes the function known to block (native/callout.c's hints).
        before = taken(hand_overs=True)
        for _ in range(20):
            usleep(5000)  # 5 ms: several ticks, with the spinner runnable
        long = taken(hand_overs=True) - before
        stop.set()
        return short, stretched, long

    short, stretched, long = vmown.run(main)
    # A broken hysteresis would activate on about every tick of the 0.5 s of
    # short calls (hundreds).  A loaded machine stretches some calls past a
    # tick, and those may activate.
    assert short <= 5 + 2 * stretched, (
        f"{short} activations for 2000 calls of 0.2 ms ({stretched} took > 1 ms)"
    )
    assert long >= 1, "20 calls of 5 ms with a process runnable caused no activation or hand-over"


def test_a_callout_comes_back_promptly_while_processes_hog_the_cpu() -> None:
    """The processes are always runnable, so the VM comes back only through
    the hand-off at a scheduling point; and the thread coming back needs the
    GIL first, which the thread running the steps holds (see "The GIL")."""

    async def hog(stop: vmown.Event) -> None:
        while not stop.is_set():
            end = time.monotonic_ns() + 100_000
            while time.monotonic_ns() < end:
                pass
            await vmown.checkpoint()

    async def main() -> list[float]:
        stop = vmown.Event()
        hogs = [vmown.spawn(hog, stop) for _ in range(2)]
        await vmown.checkpoint()
        overruns = []
        for _ in range(150):
            start = time.monotonic()
            usleep(5000)
            overruns.append(time.monotonic() - start - 0.005)
        stop.set()
        for proc in hogs:
            await proc
        return sorted(overruns)

    overruns = vmown.run(main)
    # Starved of the GIL (no yield in the loop), the worst of these reached
    # 0.3-3 s in some runs; without the hand-off it would never come back.
    assert overruns[-1] < 0.1, f"a 5 ms callout came back {overruns[-1] * 1e3:.0f} ms late"


def test_the_c_wrappers_of_threaded_wrappers_work_on_every_worker(tmp_path: pathlib.Path) -> None:
    """Every thread that serves the run is bound to its block, so a generated
    C wrapper disowns (here: a ticker keeps ticking while it blocks), on
    whichever thread the process runs."""
    declarations = "int block_ms(int ms);"
    builder = cffi.FFI()
    builder.cdef(declarations)
    cdef, source = vmown.threaded_wrappers(declarations)
    builder.cdef(cdef)
    builder.set_source(
        "_vmown_scheduler_wrapped",
        "#include <time.h>\n"
        "int block_ms(int ms) { struct timespec ts = {0, ms * 1000000L}; nanosleep(&ts, 0); return ms; }\n"
        + source,
    )
    spec = importlib.util.spec_from_file_location(
        "_vmown_scheduler_wrapped", builder.compile(tmpdir=str(tmp_path))
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    vmown.bind_threaded(module.lib)
    block_ms = module.lib.block_ms_threaded

    async def ticker(stop: vmown.Event) -> int:
        ticks = 0
        while not stop.is_set():
            await vmown.sleep(0.001)
            ticks += 1
        return ticks

    async def blocker() -> None:
        block_ms(50)  # on whichever thread runs this process

    async def main() -> tuple[int, int]:
        stop = vmown.Event()
        proc = vmown.spawn(ticker, stop)
        before = vmown.stats()["callouts"]
        for _ in range(3):
            block_ms(50)
            await vmown.spawn(blocker)
        callouts = vmown.stats()["callouts"] - before
        stop.set()
        return await proc, callouts

    ticks, callouts = vmown.run(main)
    assert callouts == 6
    assert ticks >= 30  # it ticked through 300 ms of blocking


# ---- races of the scheduler, forced (vmown/_scheduler.py, P1-P10) ----


def test_a_process_woken_before_a_blocking_callout_runs_during_it() -> None:
    """P5: a step wakes a process while the published words say "nothing
    runnable", then blocks in a callout.  _wake publishes before the callout
    releases the VM, so the heartbeat activates a worker for the woken
    process; unpublished, it would wait for the callout to come back."""

    async def waiter(event: vmown.Event, ran_at: list[float]) -> None:
        await event.wait()
        ran_at.append(time.monotonic())

    async def main() -> tuple[float, float, float]:
        event, ran_at = vmown.Event(), []
        proc = vmown.spawn(waiter, event, ran_at)
        await vmown.checkpoint()  # the waiter waits; this step starts with nothing else runnable
        event.set()
        out = time.monotonic()
        usleep(200_000)
        back = time.monotonic()
        await proc
        return out, ran_at[0], back

    out, ran, back = vmown.run(main)
    assert out < ran < back, "the woken process did not run while the callout was out"


def test_a_step_blocked_in_a_callout_is_not_a_deadlock() -> None:
    """P9: a worker runs out of work while every process waits, with no timer,
    but a step is blocked in a callout that will wake them: it parks instead
    of declaring a deadlock."""

    async def setter(event: vmown.Event, back: list[float]) -> None:
        usleep(100_000)
        back.append(time.monotonic())
        event.set()

    async def quick(done: list[float]) -> None:
        await vmown.checkpoint()
        done.append(time.monotonic())

    async def main() -> tuple[float, float]:
        event, back, done = vmown.Event(), [], []
        procs = [vmown.spawn(setter, event, back), vmown.spawn(quick, done)]
        await event.wait()  # the setter blocks on this thread; a worker runs quick, then has nothing
        for proc in procs:
            await proc
        return done[0], back[0]

    done, back = vmown.run(main)
    assert done < back, "quick did not finish on a worker while the setter's callout was out"


def test_main_ends_on_a_worker_while_the_run_thread_is_in_a_callout() -> None:
    """P4 (b): main finishes on a worker; the run thread, blocked in a callout
    meanwhile, comes back, finishes its step and sees the run halted."""
    run_thread = threading.get_ident()

    async def blocker(back: list[float]) -> None:
        usleep(100_000)
        back.append(time.monotonic())

    async def main() -> tuple[int, float, list[float]]:
        back: list[float] = []
        vmown.spawn(blocker, back)
        await vmown.checkpoint()  # the blocker's step blocks the run thread; main goes on on a worker
        return threading.get_ident(), time.monotonic(), back

    ident, ended, back = vmown.run(main)
    assert ident != run_thread
    assert back and ended < back[0], "main did not end while the run thread was in its callout"


def test_main_ends_on_a_worker_while_the_run_thread_is_queued() -> None:
    """P4 (c): main finishes on a worker while the run thread, back from its
    callout, is queued for the VM; the worker leaves the loop and disowns to
    it.  Main holds the VM (no await) until the run thread's slow own is
    counted."""
    run_thread = threading.get_ident()

    async def blocker() -> None:
        usleep(20_000)  # on the run thread: main moves to a worker

    async def main() -> tuple[int, bool]:
        vmown.spawn(blocker)
        await vmown.checkpoint()
        slow_owns = vmown.stats()["slow_owns"]
        deadline = time.monotonic() + 10
        while vmown.stats()["slow_owns"] == slow_owns and time.monotonic() < deadline:
            pass  # owning the VM: the run thread, back, must queue
        return threading.get_ident(), vmown.stats()["slow_owns"] > slow_owns

    ident, queued = vmown.run(main)
    assert ident != run_thread and queued


def test_main_ends_on_a_worker_while_the_run_thread_is_parked() -> None:
    """P4 (a): main finishes on a worker while the run thread is parked with
    nothing to do; the worker unparks it.  Which parked thread wakes for
    main's timer is the timer's watcher unless the heartbeat is quicker (P8),
    so the interleaving is tried until it happens."""
    run_thread = threading.get_ident()

    async def blocker(back: list[float]) -> None:
        usleep(20_000)  # on the run thread: main moves to a worker
        back.append(time.monotonic())

    async def main() -> tuple[int, float, float]:
        back: list[float] = []
        vmown.spawn(blocker, back)
        await vmown.checkpoint()
        await vmown.sleep(0.08)  # the run thread comes back and parks meanwhile
        return threading.get_ident(), time.monotonic(), back[0]

    for _ in range(5):
        ident, ended, back = vmown.run(main)
        assert back < ended
        if ident != run_thread:
            return
    raise AssertionError("main never ended on a worker while the run thread was parked")


def test_a_park_that_times_out_as_it_is_activated_owns_the_vm(widen: Callable[[int], None]) -> None:
    """P3, forced: the heartbeat activates a parked worker and, held by the
    widen switch, posts it 200 ms later; the worker's 50 ms park timeout
    passes in between.  The core settles it under the lock: vmown_park_new
    returns 1 with the VM, never a timeout with the VM given to the worker,
    so a worker retires only when it really was not given the VM."""
    vm = vmown.Ownership(slots=8)
    cb = vm._cb
    vm.own()
    assert lib.vmown_heartbeat_start(cb, 1000) == 0
    stats = ffi.new("vmown_heartbeat_stats *")

    def idle_workers() -> int:
        lib.vmown_heartbeat_read(cb, stats)
        return int(stats.idle_workers)

    try:
        for _ in range(3):  # a heartbeat late by the whole 50 ms misses the window: again
            outcome: list[tuple[int, bool, float]] = []

            def worker() -> None:
                slot = vm.slot
                start = time.monotonic()
                rc = lib.vmown_park_new(cb, slot, 50_000_000)
                outcome.append((rc, lib.vmown_owner(cb) == slot, time.monotonic() - start))
                if rc == 1:
                    vm.disown()

            t = threading.Thread(target=worker)
            t.start()
            deadline = time.monotonic() + 10
            while idle_workers() != 1 and time.monotonic() < deadline:
                time.sleep(0.001)
            widen(200_000_000)
            vm.disown()
            lib.vmown_set_work(cb, 1, 0)  # after the release: an owned VM with work would queue a server
            t.join(10)
            widen(0)
            lib.vmown_set_work(cb, 0, 0)
            (rc, owning, elapsed), = outcome
            assert rc in (1, lib.VMOWN_ETIMEDOUT) and owning == (rc == 1), outcome
            vm.own()
            if rc == 1:
                assert elapsed > 0.05, outcome  # the timeout passed before the post
                return
        raise AssertionError("the heartbeat never activated the worker within its 50 ms park")
    finally:
        widen(0)
        lib.vmown_heartbeat_stop(cb)
        vm.disown()


def test_a_thousand_processes_making_blocking_callouts() -> None:
    async def worker(i: int) -> int:
        for _ in range(2):
            usleep(1000)
            await vmown.checkpoint()
        return i

    async def main() -> tuple[list[int], dict[str, int]]:
        procs = [vmown.spawn(worker, i) for i in range(1000)]
        results = [await proc for proc in procs]
        return results, vmown.stats()

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the cap may be met
        results, stats = vmown.run(main, max_threads=32)
    assert results == list(range(1000))
    assert stats["threads_high"] <= 32 and stats["threads"] <= stats["threads_high"]
    assert stats["callouts"] == 2000
    assert stats["spawned"] == 1001 and stats["processes"] == 1
    assert stats["steps"] >= 3000 + 1  # three steps per worker, main's first
    # Every acquisition of the VM is an own, an activation or a hand-over (a
    # callout of a function known to block, native/callout.c); every one but
    # main's current one was given back by a disown (a park included).
    acquisitions = stats["fast_owns"] + stats["slow_owns"] + stats["activations"] + stats["hand_overs"]
    assert acquisitions == stats["disowns"] + 1
    assert stats["activations"] <= stats["ticks"]


async def _blockers(count: int, usec: int) -> None:
    """Spawn `count` processes that each block `usec` in a callout; await them all."""

    async def blocker() -> None:
        usleep(usec)

    procs = [vmown.spawn(blocker) for _ in range(count)]
    for proc in procs:
        await proc


def test_meeting_the_thread_cap_warns_and_still_finishes() -> None:
    async def main() -> dict[str, int]:
        await _blockers(40, 20_000)
        return vmown.stats()

    with pytest.warns(RuntimeWarning, match="max_threads") as record:
        stats = vmown.run(main, max_threads=4)
    assert stats["threads_high"] <= 4 and stats["cap_hits"] >= 1
    assert "starved" in str(record[0].message)


def test_workers_are_started_off_the_vm(monkeypatch: pytest.MonkeyPatch) -> None:
    # The worker pool starts workers in C and each parks without ever owning
    # the VM, so the scheduler never lets go of the VM to start a thread: its
    # only releases are parks (and the callouts of processes).
    releases: list[str] = []
    release = _scheduler._release

    def recording_release(rt: Any, me: Any) -> None:
        if not rt.halt:
            releases.append(threading.current_thread().name)
        release(rt, me)

    monkeypatch.setattr(_scheduler, "_release", recording_release)

    async def main() -> dict[str, int]:
        await _blockers(20, 30_000)
        return vmown.stats()

    stats = vmown.run(main)
    assert stats["threads_high"] >= 10, stats  # workers were started, and used
    assert stats["callouts"] == 20
    assert releases == []


def test_idle_workers_retire_and_one_spare_stays() -> None:
    async def main() -> tuple[int, int]:
        await _blockers(6, 30_000)
        high = vmown.stats()["threads_high"]  # "threads" may already be shrinking
        await vmown.sleep(0.5)  # ten idle timeouts
        return high, vmown.stats()["threads"]

    high, after = vmown.run(main, idle_timeout=0.05)
    assert high >= 4
    assert 2 <= after <= 3  # the thread running main, a spare (and maybe one starting)


# ---- Ctrl-C ----


def _sigint_main_thread_once(
    ready: threading.Event, then: Callable[[], None] = lambda: None
) -> threading.Thread:
    main_ident = threading.main_thread().ident
    assert main_ident is not None

    def helper() -> None:
        if ready.wait(30):
            time.sleep(0.05)
            signal.pthread_kill(main_ident, signal.SIGINT)
            then()

    thread = threading.Thread(target=helper)
    thread.start()
    return thread


@pytest.fixture
def on_main_thread_with_default_sigint() -> None:
    # These tests signal the process: they need the main thread and Python's
    # own SIGINT handler, which is how pytest runs them (CI included).  Under
    # a runner that moves tests to threads or installs its own handler they
    # cannot mean anything, so they say so instead of failing.
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("needs the main thread")
    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        pytest.skip("SIGINT is handled by someone else here")


def test_ctrl_c_while_every_process_sleeps(on_main_thread_with_default_sigint: None) -> None:
    ready = threading.Event()

    async def main() -> None:
        ready.set()
        await vmown.sleep(30)

    before = set(threading.enumerate())
    helper = _sigint_main_thread_once(ready)
    start = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        vmown.run(main)
    elapsed = time.monotonic() - start
    helper.join(10)
    assert elapsed < 15, f"KeyboardInterrupt took {elapsed:.1f} s against a 30 s sleep"
    assert set(threading.enumerate()) == before  # no worker left behind
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_ctrl_c_while_the_main_thread_is_in_a_blocked_callout(
    on_main_thread_with_default_sigint: None,
) -> None:
    """Processes block in callouts until the main thread is one of the
    blocked threads (in a 30 s usleep); SIGINT interrupts that call.  The
    other callouts are reads on a pipe, released after the signal."""
    r, w = os.pipe()
    main_blocked = threading.Event()

    async def blocker() -> None:
        if threading.current_thread() is threading.main_thread():
            main_blocked.set()
            usleep(30_000_000)
        else:
            read(r, bytearray(1), 1)

    async def main() -> None:
        for _ in range(200):
            vmown.spawn(blocker)
            await vmown.sleep(0.005)
            if main_blocked.is_set():
                break
        else:
            raise AssertionError("the main thread never ran a blocking callout")
        await vmown.sleep(60)

    before = set(threading.enumerate())
    helper = _sigint_main_thread_once(main_blocked, then=lambda: os.close(w))
    start = time.monotonic()
    try:
        with pytest.raises(KeyboardInterrupt):
            vmown.run(main)
    finally:
        helper.join(10)
        os.close(r)
    elapsed = time.monotonic() - start
    assert elapsed < 15, f"KeyboardInterrupt took {elapsed:.1f} s against a 30 s callout"
    assert set(threading.enumerate()) == before  # no worker left behind


# ---- invariants, with the core's race windows widened ----


def _check_invariants(processes: int, rounds: int) -> None:
    """Each step claims the VM code region on entry and gives it back before
    each await and callout: two steps running at once would find it taken."""
    inside: list[int | None] = [None]
    steps = [0] * processes

    def enter() -> None:
        assert inside[0] is None, "two steps run at once"
        inside[0] = threading.get_ident()

    def leave() -> None:
        assert inside[0] == threading.get_ident(), "a step migrated mid-step"
        inside[0] = None

    async def proc(i: int) -> int:
        var.set(i)
        enter()
        for r in range(rounds):
            steps[i] += 1
            kind = (i + r) % 4
            leave()
            if kind == 0:
                usleep(1500)  # blocks past a tick: activations
            elif kind == 1:
                await vmown.checkpoint()
            elif kind == 2:
                await vmown.sleep(0.0005)
            else:
                usleep(50)  # short: back before any activation
            enter()
            assert var.get() == i
        leave()
        return i

    async def main() -> list[int]:
        procs = [vmown.spawn(proc, i) for i in range(processes)]
        return [await p for p in procs]

    assert vmown.run(main) == list(range(processes))
    assert steps == [rounds] * processes


def test_invariants() -> None:
    _check_invariants(processes=20, rounds=40)


def test_invariants_with_race_windows_widened(widen: Callable[[int], None]) -> None:
    widen(20_000)
    _check_invariants(processes=12, rounds=20)


@pytest.mark.slow
def test_invariants_long(widen: Callable[[int], None]) -> None:
    _check_invariants(processes=500, rounds=300)
    widen(5_000)
    _check_invariants(processes=100, rounds=300)


def test_the_heartbeat_thread_is_named_and_known_from_the_start() -> None:
    # The heartbeat's thread id is published before vmown_heartbeat_start
    # returns (for /proc, py-spy and the benchmarks' run-delay figures).
    async def main() -> tuple[int, dict[str, str]]:
        cb = _scheduler._here.state.cb  # type: ignore[union-attr]
        stats = ffi.new("vmown_heartbeat_stats *")
        lib.vmown_heartbeat_read(cb, stats)
        names = {}
        for tid in os.listdir("/proc/self/task"):
            with open(f"/proc/self/task/{tid}/comm") as comm:
                names[tid] = comm.read().strip()
        return stats.tid, names

    tid, names = vmown.run(main)
    assert tid > 0 and names[str(tid)] == "vmown-heartbeat"


# ---- the ownership guard ----


def test_entry_points_refuse_a_thread_that_does_not_own_the_vm() -> None:
    """A function run as a callout runs in the process's context but without
    the VM: every entry point that changes the run's state refuses it, and
    nothing changes."""

    async def nothing() -> None:
        return None

    async def main() -> list[str]:
        event, lock, queue = vmown.Event(), vmown.Lock(), vmown.Queue[int]()
        sem = vmown.Semaphore(1)
        await lock.acquire()
        await sem.acquire()
        refused = []
        for name, call in (
            ("Event.set", event.set),
            ("spawn", lambda: vmown.spawn(nothing)),
            ("Queue.put_nowait", lambda: queue.put_nowait(1)),
            ("Lock.release", lock.release),
            ("Semaphore.release", sem.release),
            ("Process.cancel", vmown.current_process().cancel),
        ):
            with pytest.raises(vmown.NotOwnerError) as info:
                vmown.callout(call)
            assert "current_token" in str(info.value)
            refused.append(name)
        # A thread started with the process's context copied: the same.
        errors: list[BaseException] = []

        def other() -> None:
            try:
                event.set()
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)

        ctx = contextvars.copy_context()
        thread = threading.Thread(target=ctx.run, args=(other,))
        vmown.callout(thread.start)
        vmown.callout(thread.join)
        assert len(errors) == 1 and isinstance(errors[0], vmown.NotOwnerError)
        assert not event.is_set() and queue.empty() and lock.locked() and sem.value == 0
        lock.release()
        event.set()
        return refused

    assert len(vmown.run(main)) == 6


# ---- bound processes ----


async def _blocker(calls: int) -> None:
    for _ in range(calls):
        usleep(2000)  # a blocking callout: the heartbeat activates workers
        await vmown.checkpoint()


def test_a_bound_process_keeps_its_thread_while_others_block_in_callouts() -> None:
    async def bound() -> set[int]:
        ids = set()
        for i in range(1000):
            ids.add(threading.get_native_id())
            if i % 50 == 0:
                usleep(1000)
            await vmown.checkpoint()
        return ids

    async def main() -> tuple[set[int], int]:
        others = [vmown.spawn(_blocker, 40) for _ in range(4)]
        ids = await vmown.spawn(bound, bound=True)
        for other in others:
            await other
        return ids, vmown.stats()["threads_high"]

    ids, threads_high = vmown.run(main)
    assert len(ids) == 1
    assert threads_high >= 2  # workers ran the others meanwhile


@pytest.mark.timeout(60)  # a lost wake-up leaves the bound thread asleep for good
def test_t6_a_bound_process_queued_while_its_thread_goes_to_sleep_is_not_lost(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """T6 forced: main is bound to the run thread (bind_main).  Each round it
    takes an item, lets the feeder go and waits on the empty queue, so its
    thread gives the VM up and, with the window widened to 3 ms, spins before
    it sleeps on `wake`.  The feeder's worker, in a callout, is let go and
    stays out 0.3 ms more; back, it owns the VM, puts the next item (main
    becomes runnable) and checkpoints: it pops main, appends it to the run
    thread's bound queue and releases `wake`, inside the window.  Main gets
    all 200 items on its own thread: no wake-up is lost.  The test counts the
    windows in which main was queued (the interleaving)."""
    rounds = 200
    queued_in_window: list[bool] = []
    widen = _scheduler._widen

    def watched(me: _scheduler._ThreadState) -> None:
        widen(me)
        queued_in_window.append(bool(me.bound_queue))

    monkeypatch.setattr(_scheduler, "_widen", watched)
    monkeypatch.setattr(_scheduler, "_widen_ns", 3_000_000)
    go = threading.Semaphore(1)

    def wait_for_main() -> None:  # a callout: the VM given up meanwhile
        assert go.acquire(timeout=30)
        time.sleep(0.0003)  # still out when main's thread finds its queue empty

    async def feeder(queue: vmown.Queue[int]) -> set[int]:
        ids = set()
        for i in range(rounds):
            vmown.callout(wait_for_main)
            ids.add(threading.get_native_id())
            queue.put_nowait(i)  # main runnable: in the run queue
            await vmown.checkpoint()  # this worker pops main: its bound queue, `wake` released
        return ids

    async def main() -> tuple[list[int], set[int], set[int]]:
        queue: vmown.Queue[int] = vmown.Queue()
        feeding = vmown.spawn(feeder, queue)
        got, mine = [], set()
        for _ in range(rounds):
            got.append(await queue.get())
            mine.add(threading.get_native_id())
            go.release()
        return got, mine, await feeding

    got, mine, theirs = vmown.run(main, bind_main=True)
    assert got == list(range(rounds))
    assert mine == {threading.get_native_id()} and mine.isdisjoint(theirs)
    forced = sum(queued_in_window)
    assert forced >= rounds // 2, (forced, len(queued_in_window))  # 197-200 of 200 when measured


def test_sqlite3_objects_stay_usable_in_bound_processes() -> None:
    import sqlite3

    async def use_a_connection(n: int) -> int:
        conn = sqlite3.connect(":memory:")
        conn.execute("create table t (x)")
        usleep(1000)
        await vmown.sleep(0.001)
        conn.execute("insert into t values (?)", (n,))
        await vmown.checkpoint()
        (total,) = conn.execute("select sum(x) from t").fetchone()
        conn.close()
        return int(total)

    async def main() -> list[int]:
        others = [vmown.spawn(_blocker, 10) for _ in range(2)]
        processes = [vmown.spawn(use_a_connection, n, bound=True) for n in range(20)]
        results = [await process for process in processes]
        for other in others:
            await other
        return results

    assert vmown.run(main) == list(range(20))


def test_bind_main_keeps_main_on_the_run_thread() -> None:
    async def main() -> set[int]:
        others = [vmown.spawn(_blocker, 20) for _ in range(3)]
        ids = set()
        for i in range(300):
            ids.add(threading.get_native_id())
            usleep(200)
            await (vmown.sleep(0.0005) if i % 3 == 0 else vmown.checkpoint())
        for other in others:
            await other
        return ids

    assert vmown.run(main, bind_main=True) == {threading.get_native_id()}


def test_a_thread_whose_bound_processes_ended_serves_everybody_again() -> None:
    async def short() -> int:
        await vmown.checkpoint()
        return threading.get_native_id()

    async def main() -> int:
        first = await vmown.spawn(short, bound=True)
        rest = [vmown.spawn(short) for _ in range(50)]
        for process in rest:
            await process
        return first

    assert isinstance(vmown.run(main), int)
