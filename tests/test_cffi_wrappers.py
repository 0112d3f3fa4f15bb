"""vmown._cffi_wrappers: C wrappers generated for a user's cffi module."""

from __future__ import annotations

import errno
import importlib.util
import os
import pathlib
import sys
import threading
import time
from types import ModuleType
from typing import Any

import pytest
from cffi import FFI

import vmown
from vmown import _callout, _native, _scheduler

from .support import run_threads, wait_until

DECLARATIONS = """
int block_ms(int ms);
int block_us(int us);
int stay_ms(int ms);
int fail_with(int code);
int fail_after_ms(int ms, int code);
void nothing(void);
double twice(double);
"""

SOURCE = """
#include <errno.h>
#include <time.h>
int block_ms(int ms) {
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
    return ms;
}
int block_us(int us) {
    struct timespec ts = {0, us * 1000L};
    nanosleep(&ts, NULL);
    return us;
}
int stay_ms(int ms) { return block_ms(ms); }
int fail_with(int code) { errno = code; return -1; }
int fail_after_ms(int ms, int code) { block_ms(ms); errno = code; return -1; }
void nothing(void) {}
double twice(double x) { return 2 * x; }
"""


@pytest.fixture(scope="module")
def module(tmp_path_factory: pytest.TempPathFactory) -> ModuleType:
    """A real cffi extension, built with generated wrappers."""
    out = tmp_path_factory.mktemp("wrapped")
    builder = FFI()
    builder.cdef(DECLARATIONS)
    cdef, source = vmown.threaded_wrappers(DECLARATIONS)
    builder.cdef(cdef)
    builder.set_source("_vmown_wrapped_test", SOURCE + source)
    library = builder.compile(tmpdir=str(out))
    spec = importlib.util.spec_from_file_location("_vmown_wrapped_test", library)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_unbound_wrappers_make_plain_calls(module: ModuleType) -> None:
    lib = module.lib
    assert lib.block_ms_threaded(1) == 1
    assert lib.twice_threaded(1.5) == 3.0
    lib.nothing_threaded()


def test_wrapped_call_disowns_while_it_runs(module: ModuleType) -> None:
    lib = module.lib
    vmown.bind_threaded(lib)
    vm = vmown.Ownership(slots=8)
    vm.own()
    vm.bind_thread()
    seen: list[int] = []

    def other(i: int) -> None:
        wait_until(lambda: vm.owner == 0, what="the wrapped call to disown")
        with vm:
            seen.append(vm.slot)

    t = threading.Thread(target=run_threads, args=(other, 1))
    t.start()
    assert lib.block_ms_threaded(300) == 300  # the other thread owns meanwhile
    t.join(30)
    assert len(seen) == 1 and seen[0] != vm.slot
    assert vm.owned()  # the wrapper owned it again on return
    vm.disown()
    vm.close()


def test_wrapped_calls_in_a_run_go_out_lazily(module: ModuleType) -> None:
    """In vmown.run (a heartbeat runs), a wrapped call with nobody queued
    keeps the owner word (native/grants.c, "Lazy callouts"); with lazy
    callouts turned off it releases it."""
    lib = module.lib
    vmown.bind_threaded(lib)

    async def main() -> list[tuple[int, int]]:
        cb = _scheduler._here.state.cb  # type: ignore[union-attr]
        grown = []
        for lazy in (1, 0):
            assert _native.lib.vmown_heartbeat_set_lazy(cb, lazy) == lazy
            before = vmown.stats()
            for _ in range(100):
                assert lib.twice_threaded(1.5) == 3.0
            after = vmown.stats()
            grown.append((after["callouts"] - before["callouts"], after["lazy_callouts"] - before["lazy_callouts"]))
        _native.lib.vmown_heartbeat_set_lazy(cb, 1)
        return grown

    assert vmown.run(main) == [(100, 100), (100, 0)]


def test_a_lazy_wrapped_call_that_blocks_is_revoked(module: ModuleType) -> None:
    """The call keeps the owner word; the heartbeat revokes it after a tick,
    so the ticker goes on while it blocks."""
    lib = module.lib
    vmown.bind_threaded(lib)

    async def ticker(stop: vmown.Event, ticks: list[float]) -> None:
        while not stop.is_set():
            await vmown.sleep(0.001)
            ticks.append(time.monotonic())

    async def main() -> tuple[int, int, int]:
        stop, ticks = vmown.Event(), []
        process = vmown.spawn(ticker, stop, ticks)
        await vmown.sleep(0.01)
        before, ticked = vmown.stats(), len(ticks)
        lib.fail_after_ms_threaded(100, 0)  # blocks 100 ms; its first call here: lazy
        during = len(ticks) - ticked
        after = vmown.stats()
        stop.set()
        await process
        return during, after["lazy_callouts"] - before["lazy_callouts"], after["revocations"] - before["revocations"]

    during, lazy, revoked = vmown.run(main)
    assert lazy == 1 and revoked == 1
    assert during >= 10, f"the ticker ticked {during} times while the call blocked 100 ms"


def test_returning_call_waits_for_the_vm_without_the_gil(module: ModuleType) -> None:
    """The other thread takes the VM during the call and keeps it, running
    Python, until it sees the returned call queued: possible only if that call
    waits for ownership with the GIL released (else: deadlock, caught by the
    bounded waits)."""
    lib = module.lib
    vmown.bind_threaded(lib)
    vm = vmown.Ownership(slots=8)
    vm.own()
    vm.bind_thread()
    done = threading.Event()

    def other() -> None:
        wait_until(lambda: vm.owner == 0, what="the wrapped call to disown")
        vm.own()
        wait_until(lambda: vm.waiters == 1, timeout=30, what="the returned call to queue")
        x = 0
        for i in range(100_000):  # Python, with the GIL, while it waits
            x += i
        done.set()
        vm.disown()

    t = threading.Thread(target=other)
    t.start()
    assert lib.block_ms_threaded(50) == 50
    assert done.is_set() and vm.owned()
    t.join(30)
    vm.disown()
    assert vm.stats()["waits"] >= 1
    vm.close()


def test_processes_start_while_another_keeps_the_vm_busy_with_short_calls(module: ModuleType) -> None:
    """A process that never awaits and makes only 0.2 ms calls keeps the VM
    busy: it is never unowned for a whole tick, so nothing is activated.  The
    run queue must not wait for it to end: the heartbeat queues parked
    workers ("servers") when the run queue has not moved for a tick, and the
    calls' disowns hand them the VM.  Each other process runs longer than one
    call (0.3 ms of Python), so each start needs a hand-over of its own.  The
    busy process stops once all have started, or after 30 s."""
    lib = module.lib
    vmown.bind_threaded(lib)
    count = 20
    started: set[int] = set()

    async def starter(i: int) -> None:
        started.add(i)
        until = time.perf_counter() + 0.0003
        while time.perf_counter() < until:
            pass

    async def busy() -> int:
        calls = 0
        give_up = time.monotonic() + 30
        while len(started) < count and time.monotonic() < give_up:
            lib.block_us_threaded(200)
            calls += 1
        return calls

    async def main() -> tuple[int, dict[str, int]]:
        proc = vmown.spawn(busy)
        for i in range(count):
            vmown.spawn(starter, i)
        calls = await proc
        return calls, vmown.stats()

    calls, stats = vmown.run(main)
    assert len(started) == count, (calls, stats)
    # The starts came through servers.  How soon varies too much to bound
    # here (650 to 15,000 calls in runs of this test; without servers the
    # others start only through the rare activation a late tick allows,
    # ~17,000 calls): each server runs one step and hands the VM back.
    assert stats["servers"] >= 1, (calls, stats)


def test_errno_survives_the_wait_for_ownership(module: ModuleType) -> None:
    """The call fails with EBADF while another thread takes the VM; the
    wrapper then waits for it (futex calls in this thread) and must hand the
    caller the call's errno, not theirs."""
    lib, ffi = module.lib, module.ffi
    vmown.bind_threaded(lib)
    vm = vmown.Ownership(slots=8)
    vm.own()
    vm.bind_thread()

    def holder() -> None:
        wait_until(lambda: vm.owner == 0, what="the call to disown")
        with vm:
            wait_until(lambda: vm.waiters == 1, timeout=30, what="the call to return and queue")
            time.sleep(0.01)

    t = threading.Thread(target=holder)
    t.start()
    ffi.errno = 0
    assert lib.fail_after_ms_threaded(100, errno.EBADF) == -1
    assert ffi.errno == errno.EBADF
    assert vm.owned() and vm.stats()["waits"] >= 1
    t.join(30)
    assert lib.fail_with_threaded(errno.ENOENT) == -1 and ffi.errno == errno.ENOENT  # fast path too
    vm.disown()
    vm.close()


_NO_CALLS = {"calls": 0, "handed_over": 0, "revocations": 0, "total_out_s": 0.0, "longest_out_s": 0.0}


def _wrapper_row(name: str) -> dict[str, Any]:
    """vmown.callout_stats()'s row of a generated wrapper (zeros if none yet)."""
    rows = [row for row in vmown.callout_stats() if row["name"] == name and row["kind"] == "wrapper"]
    assert len(rows) <= 1, rows
    return rows[0] if rows else dict(_NO_CALLS)


def _grown(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    return {key: after[key] - before[key] for key in _NO_CALLS}


def test_callout_stats_show_a_blocking_wrapped_call_revoked_while_a_process_waits(module: ModuleType) -> None:
    """stay_ms is called only here: its first call goes out lazily, the
    ticker needs the VM, the heartbeat revokes it, and the call comes back
    to a VM taken and waits.  Its row (kind "wrapper", named by the C
    function) counts the calls, the revocation and the wait; the times are
    at least the calls' own lengths (lower bounds, and a sanity ceiling)."""
    lib = module.lib
    vmown.bind_threaded(lib)
    before = _wrapper_row("stay_ms")

    async def ticker(stop: vmown.Event) -> None:
        while not stop.is_set():
            await vmown.sleep(0.001)

    async def main() -> None:
        stop = vmown.Event()
        process = vmown.spawn(ticker, stop)
        await vmown.sleep(0.01)
        for _ in range(3):
            assert lib.stay_ms_threaded(50) == 50
        stop.set()
        await process

    assert lib.stay_ms_threaded(1) == 1  # outside a run: a plain call, not counted
    vmown.run(main, callout_times=True)
    grown = _grown(before, _wrapper_row("stay_ms"))
    assert grown["calls"] == 3, grown
    assert grown["revocations"] >= 1 and grown["handed_over"] >= grown["revocations"], grown
    assert 0.12 <= grown["total_out_s"] < 60, grown
    assert 0.04 <= _wrapper_row("stay_ms")["longest_out_s"] < 30, grown


def test_callout_stats_count_wrapped_calls_untimed_unless_asked(module: ModuleType) -> None:
    lib = module.lib
    vmown.bind_threaded(lib)
    before = _wrapper_row("twice")

    async def main() -> None:
        for _ in range(100):
            lib.twice_threaded(1.5)

    vmown.run(main)
    grown = _grown(before, _wrapper_row("twice"))
    assert grown["calls"] == 100 and grown["total_out_s"] == 0, grown


def test_top_shows_the_rows_of_wrapped_calls(module: ModuleType, tmp_path: pathlib.Path, capsys) -> None:  # type: ignore[no-untyped-def]
    """The monitor publishes callout_stats(), wrapper rows included, and
    python -m vmown top shows them with their kind."""
    from vmown.__main__ import main as vmown_main

    lib = module.lib
    vmown.bind_threaded(lib)
    path = tmp_path / "wrapped.vmown"

    async def main() -> list[str]:
        for _ in range(10):
            lib.block_us_threaded(10)
        deadline = time.monotonic() + 30
        while True:
            await vmown.sleep(0.2)  # the monitor publishes every 0.5 s
            capsys.readouterr()
            assert vmown_main(["top", str(path), "--once"]) == 0
            lines = [line.split() for line in capsys.readouterr().out.splitlines()]
            rows = [line for line in lines if line[:2] == ["block_us", "wrapper"]]
            # A snapshot published while the calls ran shows fewer of them
            # (they are slow once block_us is known to block: each hands
            # the VM over): wait for one taken after them.
            if (rows and int(rows[0][2]) >= 10) or time.monotonic() > deadline:
                return rows[0] if rows else lines

    row = vmown.run(main, monitor=path)
    assert row[:2] == ["block_us", "wrapper"] and int(row[2]) >= 10, row


def test_bad_declarations_are_refused() -> None:
    with pytest.raises(ValueError, match="typedefs"):
        vmown.threaded_wrappers("int f(my_type x);")
    with pytest.raises(ValueError, match="variadic"):
        vmown.threaded_wrappers("int f(int x, ...);")
    with pytest.raises(ValueError, match="no function"):
        vmown.threaded_wrappers("typedef int foo;")
    with pytest.raises(ValueError, match="suffix"):
        vmown.threaded_wrappers("int f(int);", suffix="-x")
    with pytest.raises(TypeError, match="no wrappers"):
        vmown.bind_threaded(object())


def test_missing_setuptools_is_named_on_pythons_that_compile_with_it(monkeypatch: pytest.MonkeyPatch) -> None:
    real_find_spec = importlib.util.find_spec

    def find_spec(name: str, *args: object) -> object:
        return None if name == "setuptools" else real_find_spec(name, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    if sys.version_info >= (3, 12):
        with pytest.raises(ModuleNotFoundError, match="pip install setuptools"):
            vmown.threaded_wrappers("int f(int);")
    else:  # distutils compiles
        assert "f_threaded" in vmown.threaded_wrappers("int f(int);")[0]


# ---- cancellation and interrupts ----

INTERRUPTIBLE = """
long read_fd(int fd, char *buf, long n);
int block_ms(int ms);
"""

INTERRUPTIBLE_SOURCE = """
#include <time.h>
#include <unistd.h>
long read_fd(int fd, char *buf, long n) { return (long)read(fd, buf, (size_t)n); }
int block_ms(int ms) {
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
    return ms;
}
"""


@pytest.fixture(scope="module")
def interruptible(tmp_path_factory: pytest.TempPathFactory) -> ModuleType:
    out = tmp_path_factory.mktemp("interruptible")
    builder = FFI()
    builder.cdef(INTERRUPTIBLE)
    cdef, source = vmown.threaded_wrappers(INTERRUPTIBLE)
    builder.cdef(cdef)
    builder.set_source("_vmown_interruptible_test", INTERRUPTIBLE_SOURCE + source)
    library = builder.compile(tmpdir=str(out))
    spec = importlib.util.spec_from_file_location("_vmown_interruptible_test", library)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    vmown.bind_threaded(mod.lib, interrupt={"read_fd": vmown.INTERRUPT_SIGNAL})
    return mod


def test_a_wrapped_call_raises_cancelled_on_return(interruptible: ModuleType) -> None:
    lib = interruptible.lib
    after: list[str] = []

    async def main() -> tuple[bool, float]:
        start = time.monotonic()
        with vmown.move_on_after(0.05) as scope:
            lib.block_ms_threaded(300)  # not interruptible: runs to its end
            after.append("the line after the call ran")
        return scope.cancelled_caught, time.monotonic() - start

    caught, elapsed_s = vmown.run(main)
    assert caught and after == []
    assert 0.3 <= elapsed_s < 2.3


def test_a_wrapped_read_named_at_bind_time_is_interrupted(interruptible: ModuleType) -> None:
    lib, ffi = interruptible.lib, interruptible.ffi
    r, w = os.pipe()
    fallback = threading.Timer(5.0, os.write, (w, b"x"))
    fallback.daemon = True
    fallback.start()
    results: list[int] = []

    async def main() -> tuple[bool, float, int]:
        buf = ffi.new("char[16]")
        start = time.monotonic()
        with vmown.move_on_after(0.05) as scope:
            results.append(lib.read_fd_threaded(r, buf, 16))
        return scope.cancelled_caught, time.monotonic() - start, ffi.errno

    try:
        caught, elapsed_s, err = vmown.run(main)
    finally:
        fallback.cancel()
        fallback.join()
        os.close(r)
        os.close(w)
    assert caught and results == []
    assert err == errno.EINTR
    assert 0.05 <= elapsed_s < 2.0  # at the deadline, not when data arrives (5 s)


def test_bind_threaded_refuses_unknown_interrupt_names(interruptible: ModuleType) -> None:
    with pytest.raises(ValueError, match="has no wrapper"):
        vmown.bind_threaded(interruptible.lib, interrupt={"read_fd_threaded": vmown.INTERRUPT_SIGNAL})
    with pytest.raises(TypeError, match="INTERRUPT_SIGNAL or a callable"):
        vmown.bind_threaded(interruptible.lib, interrupt={"read_fd": "signal"})


def test_a_long_wrapped_call_is_named_by_the_watchdog(interruptible: ModuleType) -> None:
    """bind_threaded names each wrapper's tag (its original's address) for
    observers: the watchdog's warning names the C function."""
    import warnings

    lib = interruptible.lib
    tag = int(_native.ffi.cast("uintptr_t", lib._vmown_threaded_tag(b"block_ms")))
    assert _callout._tag_names[tag] == "block_ms"

    async def main() -> None:
        lib.block_ms_threaded(1200)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        vmown.run(main, slow_callout=0.4)
    slow = [w for w in caught if w.category is vmown.SlowCalloutWarning]
    assert len(slow) == 1, [str(w.message) for w in caught]
    assert slow[0].message.function == "block_ms"  # type: ignore[union-attr]
