"""vmown._callout: callouts and threaded wrappers, pinning, errno, exceptions."""

from __future__ import annotations

import array
import errno
import os
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from typing import Any

import cffi
import pytest
from vmown._native import ffi, lib

import vmown
from vmown import _callout, _scheduler

_ffi = cffi.FFI()
_ffi.cdef(
    """
    int usleep(unsigned int usec);
    long read(int fd, void *buf, size_t n);
    long write(int fd, const void *buf, size_t n);
    int close(int fd);
    int getpid(void);
    size_t strlen(const char *s);
    int printf(const char *format, ...);
    """
)
libc = _ffi.dlopen(None)


pytestmark = pytest.mark.usefixtures("no_thread_left_behind")


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    r, w = os.pipe()
    try:
        yield r, w
    finally:
        for fd in (r, w):
            try:
                os.close(fd)
            except OSError:
                pass


def run(main: Any, *args: Any, **kwargs: Any) -> Any:
    return vmown.run(main, *args, **kwargs)


# ---- outside any VM: plain calls ----


def test_outside_a_vm_a_callout_is_a_plain_call() -> None:
    assert vmown.callout(lambda a, b=0: a + b, 1, b=2) == 3
    assert vmown.threaded(libc.getpid)() == os.getpid()
    assert vmown.threaded(lib.vmown_layout_version)() == lib.vmown_layout_version()


def test_errno_survives_a_plain_callout() -> None:
    _ffi.errno = 0
    assert vmown.threaded(libc.close)(-1) == -1
    assert _ffi.errno == errno.EBADF


# ---- inside a run ----


def test_callouts_are_counted_and_really_disown() -> None:
    """Eagerly, always (threaded() of a cffi function or of a Python
    callable, and callout()): this path takes the GIL back before it owns
    the VM again, and a lazy callout would hold the VM meanwhile
    (native/pyext/callout_ext.c).  The VM is unowned while the call runs."""
    close = vmown.threaded(libc.close)
    seen: list[tuple[int, bool]] = []

    def observe() -> None:
        state = _scheduler._here.state
        info = ffi.new("vmown_slot_info *")
        lib.vmown_slot_read(state.cb, state.slot, info)  # type: ignore[union-attr]
        seen.append((lib.vmown_owner(state.cb), bool(info.lazy_out)))  # type: ignore[union-attr]

    observe_threaded = vmown.threaded(observe)

    async def main() -> dict[str, int]:
        before = vmown.stats()
        for _ in range(100):
            close(-1)
        vmown.callout(observe)
        observe_threaded()
        after = vmown.stats()
        return {key: after[key] - before[key] for key in ("callouts", "disowns", "lazy_callouts")}

    grown = run(main)
    assert grown["callouts"] == 102 and grown["disowns"] >= 102  # the scheduler disowns too
    assert grown["lazy_callouts"] == 0
    assert seen == [(0, False), (0, False)]  # the VM was unowned while observe() ran


def test_errno_is_the_calls_own_on_the_fast_path() -> None:
    close, getpid = vmown.threaded(libc.close), vmown.threaded(libc.getpid)

    async def main() -> tuple[int, int, int]:
        _ffi.errno = 0
        close(-1)
        after_close = _ffi.errno
        _ffi.errno = 1234
        getpid()  # sets no errno: the value stays what the caller had
        after_getpid = _ffi.errno
        vmown.callout(libc.close, -1)
        return after_close, after_getpid, _ffi.errno

    assert run(main) == (errno.EBADF, 1234, errno.EBADF)


def test_errno_survives_waiting_for_the_vm() -> None:
    """The callout comes back while another process holds the VM: its own
    waits in the core (the slow path), and errno is still the call's."""
    b_runs = threading.Event()

    def close_then_wait_for_b() -> int:
        result = libc.close(-1)
        assert b_runs.wait(10), "process b never ran while the callout was out"
        return result

    async def b() -> None:
        b_runs.set()
        time.sleep(0.05)  # holds the VM: the callout's own must wait

    async def main() -> tuple[int, int, int]:
        waits = vmown.stats()["waits"]
        vmown.spawn(b)
        _ffi.errno = 0
        result = vmown.callout(close_then_wait_for_b)
        return result, _ffi.errno, vmown.stats()["waits"] - waits

    result, error_number, waits = run(main)
    assert result == -1 and error_number == errno.EBADF
    assert waits >= 1  # the own did wait


def test_exceptions_of_callouts_propagate_with_their_traceback() -> None:
    def deep() -> None:
        raise ValueError("from inside the callout")

    def fn() -> None:
        deep()

    async def main() -> tuple[list[str], int]:
        try:
            vmown.callout(fn)
        except ValueError as exc:
            names = [frame.name for frame in traceback.extract_tb(exc.__traceback__)]
        else:
            raise AssertionError("no exception")
        vmown.threaded(libc.close)(-1)  # the VM is owned again: callouts still work
        return names, vmown.stats()["callouts"]

    names, callouts = run(main)
    assert names[-2:] == ["fn", "deep"] and "main" in names
    assert callouts == 2


def test_a_callout_inside_a_callout_is_a_plain_call() -> None:
    close = vmown.threaded(libc.close)

    def outer() -> int:
        return close(-1) + close(-1)

    async def main() -> tuple[int, int]:
        before = vmown.stats()["callouts"]
        result = vmown.callout(outer)
        return result, vmown.stats()["callouts"] - before

    assert run(main) == (-2, 1)


# ---- pinning ----


def test_a_buffer_held_by_a_blocked_callout_cannot_be_resized(pipe: tuple[int, int]) -> None:
    r, w = pipe
    read = vmown.threaded(libc.read)
    buf = bytearray(8)
    in_read = threading.Event()

    async def reader() -> int:
        in_read.set()
        return read(r, buf, len(buf))  # blocks until the writer writes

    async def main() -> tuple[str, int, bytes, int]:
        proc = vmown.spawn(reader)
        while not in_read.is_set():
            await vmown.sleep(0.001)
        await vmown.sleep(0.01)  # the reader is in read() now, or about to be
        try:
            buf.extend(b"!")
            outcome = "resized"
        except BufferError:
            outcome = "BufferError"
        os.write(w, b"pinned")
        count = await proc
        buf.extend(b"!")  # released: resizes now
        return outcome, count, bytes(buf), len(buf)

    outcome, count, data, size = run(main)
    assert outcome == "BufferError"
    assert count == 6 and data.startswith(b"pinned") and size == 9


def test_callout_pins_buffers_and_passes_them_unchanged() -> None:
    buf = bytearray(b"abc")
    seen: list[Any] = []

    def fn(value: bytearray, view: memoryview, arr: array.array) -> None:  # type: ignore[type-arg]
        seen.append(value is buf)
        try:
            value.extend(b"d")
        except BufferError:
            seen.append("pinned")

    async def main() -> None:
        vmown.callout(fn, buf, memoryview(bytearray(2)), array.array("i", [1, 2]))

    run(main)
    assert seen == [True, "pinned"]
    buf.extend(b"d")
    assert buf == b"abcd"


def test_threaded_passes_buffers_as_pointers(pipe: tuple[int, int]) -> None:
    r, w = pipe
    write, read = vmown.threaded(libc.write), vmown.threaded(libc.read)

    async def main() -> bytes:
        write(w, bytearray(b"ab"), 2)
        write(w, memoryview(b"cd"), 2)
        write(w, array.array("b", b"ef"), 2)
        write(w, b"gh", 2)
        out = bytearray(8)
        assert read(r, out, 8) == 8
        return bytes(out)

    assert run(main) == b"abcdefgh"


def test_unpinnable_arguments_are_refused_before_the_call(pipe: tuple[int, int]) -> None:
    r, w = pipe
    write, strlen = vmown.threaded(libc.write), vmown.threaded(libc.strlen)

    async def main() -> tuple[list[str], int]:
        before = vmown.stats()["callouts"]
        messages = []
        for attempt in (
            lambda: write(w, [1, 2], 2),
            lambda: write(w, (1, 2), 2),
            lambda: strlen("text"),
            lambda: write(w, 5, 2),
            lambda: vmown.callout(libc.write, w, [1, 2], 2),
        ):
            with pytest.raises(TypeError) as info:
                attempt()
            messages.append(str(info.value))
        return messages, vmown.stats()["callouts"] - before

    messages, callouts = run(main)
    assert callouts == 0
    assert "argument 2 of the callout to C function long(*)(int, void *, size_t)" in messages[0]
    assert "list" in messages[0]
    assert "tuple" in messages[1]
    assert "str" in messages[2] and "encode" in messages[2]
    assert "int" in messages[3]
    assert "argument 2" in messages[4] and "list" in messages[4]
    os.close(w)
    assert os.read(r, 16) == b""  # nothing was written


def test_a_python_callable_takes_any_arguments() -> None:
    """The GIL protects Python objects: only C functions need pinning."""
    seen: list[Any] = []

    def fn(*args: Any, **kwargs: Any) -> int:
        seen.append((args, kwargs))
        return len(args)

    async def main() -> tuple[int, int]:
        n = vmown.callout(fn, 1, [1, 2], object(), key={"a": 1})
        proc = vmown.callout(subprocess.run, ["true"], check=True)
        return n, proc.returncode

    assert run(main) == (3, 0)
    assert seen[0][0][1] == [1, 2] and seen[0][1] == {"key": {"a": 1}}


# ---- read-only buffers: refused for non-const pointers, one rule for both paths ----

_ro = cffi.FFI()
_ro.cdef(
    """
    void *memset(void *s, int c, size_t n);
    size_t strlen(const char *s);
    """
)
_ro_lib = _ro.dlopen(None)


def _read_only_buffers() -> list[Any]:
    buffers: list[Any] = [b"hello world", memoryview(b"hello world")]
    try:
        import numpy
    except ImportError:
        return buffers
    array_ = numpy.frombuffer(bytearray(b"hello world\0"), dtype=numpy.uint8)[:11].copy()
    array_.flags.writeable = False
    buffers.append(array_)
    return buffers


def test_read_only_buffers_are_refused_for_non_const_pointers() -> None:
    memset = vmown.threaded(_ro_lib.memset)

    async def main() -> list[str]:
        messages = []
        for buffer in _read_only_buffers():
            before = bytes(buffer)
            for attempt in (lambda: memset(buffer, ord("X"), 5), lambda: vmown.callout(_ro_lib.memset, buffer, ord("X"), 5)):
                with pytest.raises(TypeError) as info:
                    attempt()
                messages.append(str(info.value))
            assert bytes(buffer) == before
        return messages

    for message in run(main):
        assert "read-only" in message and "non-const" in message
    assert b"hello world" == bytes([104, 101, 108, 108, 111, 32, 119, 111, 114, 108, 100])
    # Outside a VM the same rules hold.
    with pytest.raises(TypeError, match="read-only"):
        memset(b"hello world", ord("X"), 5)


def test_read_only_buffers_are_accepted_for_const_pointers() -> None:
    strlen = vmown.threaded(_ro_lib.strlen)

    async def main() -> list[int]:
        out = []
        for buffer in (b"hello\0", memoryview(b"hello\0"), bytearray(b"hello\0")):
            out.append(strlen(buffer))
            out.append(vmown.callout(_ro_lib.strlen, buffer))
        return out

    assert run(main) == [5] * 6


def test_writable_buffers_are_written_through_either_path() -> None:
    memset = vmown.threaded(_ro_lib.memset)
    buf = bytearray(b"hello world")

    async def main() -> None:
        memset(buf, ord("X"), 2)
        vmown.callout(_ro_lib.memset, memoryview(buf)[2:], ord("Y"), 2)

    run(main)
    assert buf == bytearray(b"XXYYo world")


def test_threaded_takes_exactly_the_c_parameters() -> None:
    close = vmown.threaded(libc.close)
    with pytest.raises(TypeError):
        close()  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        close(1, 2)  # type: ignore[call-arg]
    assert close.__wrapped__ is libc.close  # type: ignore[attr-defined]
    assert "callout" in (close.__doc__ or "")
    named = vmown.threaded(lib.vmown_layout_version)
    assert named.__name__ == "vmown_layout_version"
    with pytest.raises(TypeError):
        named(1)  # type: ignore[call-arg]


def test_threaded_of_other_callables_follows_the_callout_rules() -> None:
    add = vmown.threaded(lambda a, b: a + b)
    printf = vmown.threaded(libc.printf)  # variadic: the generic wrapper

    async def main() -> tuple[list[int], int]:
        printf(b"")
        return add([1], [2]), add(2, 3)

    assert run(main) == ([1, 2], 5)


def test_numpy_arrays_are_pinned_when_numpy_is_installed(pipe: tuple[int, int]) -> None:
    # numpy is in the `test` extra, so CI runs this; it skips only where
    # numpy is not installed.
    numpy = pytest.importorskip("numpy")
    r, w = pipe
    read = vmown.threaded(libc.read)
    os.write(w, bytes(range(8)))

    async def main() -> list[int]:
        out = numpy.zeros(8, dtype=numpy.uint8)
        read(r, out, 8)
        return out.tolist()

    assert run(main) == list(range(8))


# ---- exceptions between disown and own ----


def test_an_exception_inside_the_call_leaves_the_vm_owned_again() -> None:
    """KeyboardInterrupt (what the SIGINT handler raises in user code) from
    inside the called function propagates, and the thread owns the VM again:
    the process goes on running steps."""

    def interrupted() -> None:
        raise KeyboardInterrupt

    async def main() -> list[tuple[int, int]]:
        state = _scheduler._here.state
        assert state is not None
        seen = []
        for call in (lambda: vmown.callout(interrupted), vmown.threaded(interrupted)):
            with pytest.raises(KeyboardInterrupt):
                call()
            seen.append((lib.vmown_owner(state.cb), state.slot))
        await vmown.checkpoint()
        return seen

    for owner, slot in run(main):
        assert owner == slot


def test_many_buffers_and_keyword_buffers_are_all_pinned() -> None:
    """More buffers than the C code keeps on its stack (8), and buffers passed
    by keyword: every one is pinned while the call runs, released after."""
    bufs = [bytearray(b"x") for _ in range(12)]
    outcomes: list[str] = []

    def fn(*args: bytearray, last: bytearray) -> None:
        for buf in (*args, last):
            try:
                buf.extend(b"!")
                outcomes.append("resized")
            except BufferError:
                outcomes.append("pinned")

    async def main() -> None:
        vmown.callout(fn, *bufs[:-1], last=bufs[-1])

    run(main)
    assert outcomes == ["pinned"] * 12
    for buf in bufs:
        buf.extend(b"!")


def test_callout_without_a_function_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="function to call"):
        vmown.callout()  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="not callable"):
        vmown.callout(42)  # type: ignore[arg-type]


# ---- cancellation and interrupts ----


def _pipe_reader_fallback(write_fd: int, after_s: float) -> threading.Timer:
    """If the interrupt fails, data arrives after ``after_s`` and the test fails instead of hanging."""
    timer = threading.Timer(after_s, os.write, (write_fd, b"x"))
    timer.daemon = True
    timer.start()
    return timer


def test_interrupt_signal_stops_a_read_on_an_empty_pipe() -> None:
    read = vmown.threaded(libc.read, interrupt=vmown.INTERRUPT_SIGNAL)
    r, w = os.pipe()
    fallback = _pipe_reader_fallback(w, 5.0)
    after: list[str] = []

    async def main() -> tuple[bool, float, int]:
        buf = bytearray(16)
        start = time.monotonic()
        with vmown.move_on_after(0.05) as scope:
            read(r, buf, 16)
            after.append("the line after the read ran")
        return scope.cancelled_caught, time.monotonic() - start, _ffi.errno

    try:
        caught, elapsed_s, err = vmown.run(main)
    finally:
        fallback.cancel()
        fallback.join()
        os.close(r)
        os.close(w)
    assert caught and after == []
    assert err == errno.EINTR
    assert 0.05 <= elapsed_s < 2.0  # at the deadline, not when data arrives (5 s)


def test_interrupt_callable_stops_a_long_sqlite_query() -> None:
    sqlite3 = pytest.importorskip("sqlite3")
    conn = sqlite3.connect(":memory:", check_same_thread=False)
    fallback = threading.Timer(20.0, conn.interrupt)
    fallback.daemon = True
    query = (
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c LIMIT 2000000000) "
        "SELECT count(*) FROM c"
    )
    execute = vmown.threaded(conn.execute, interrupt=conn.interrupt)
    seen: list[BaseException | None] = []

    async def main() -> tuple[bool, float]:
        start = time.monotonic()
        with vmown.move_on_after(0.05) as scope:
            try:
                execute(query)
            except BaseException as exc:
                seen.append(exc.__context__)
                raise
        return scope.cancelled_caught, time.monotonic() - start

    fallback.start()
    try:
        caught, elapsed_s = vmown.run(main)
    finally:
        fallback.cancel()
        fallback.join()
        conn.close()
    assert caught
    assert isinstance(seen[0], sqlite3.OperationalError)  # "interrupted"
    assert elapsed_s < 10.0


def test_an_interruptible_call_in_a_cancelled_scope_is_not_made() -> None:
    calls: list[int] = []
    probe = vmown.threaded(lambda: calls.append(1), interrupt=lambda: None)

    async def main() -> bool:
        with vmown.CancelScope() as scope:
            scope.cancel()
            probe()
        return scope.cancelled_caught

    assert vmown.run(main) and calls == []
    probe()  # outside a run: a plain call
    assert calls == [1]
    with pytest.raises(TypeError, match="INTERRUPT_SIGNAL or a callable"):
        vmown.threaded(libc.read, interrupt=42)


def test_k8_interrupting_a_thread_that_left_the_call_is_harmless(widen: Any) -> None:
    """SIGURG at threads while they come back from short interruptible calls
    (the own path widened): every call completes, nothing raises."""
    widen(20_000)
    sleep_us = vmown.threaded(libc.usleep, interrupt=vmown.INTERRUPT_SIGNAL)
    idents: set[int] = set()
    done = threading.Event()

    def pester() -> None:
        while not done.is_set():
            for ident in list(idents):
                try:
                    _callout._send(vmown.INTERRUPT_SIGNAL, ident)
                except ProcessLookupError:
                    pass
            time.sleep(0.0002)

    async def worker(n: int) -> int:
        for _ in range(n):
            idents.add(threading.get_ident())
            sleep_us(300)
            await vmown.checkpoint()
        return n

    async def main() -> int:
        thread = threading.Thread(target=pester)
        thread.start()
        try:
            procs = [vmown.spawn(worker, 100) for _ in range(4)]
            return sum([await proc for proc in procs])
        finally:
            done.set()  # while every thread it may signal is still alive
            vmown.callout(thread.join)

    assert vmown.run(main) == 400


# ---- per-function figures ----


def _row(name: str, kind: str) -> dict[str, Any]:
    rows = [row for row in vmown.callout_stats() if row["name"] == name and row["kind"] == kind]
    assert len(rows) == 1, vmown.callout_stats()
    return rows[0]


def test_callout_stats_count_calls_hand_overs_and_time_out_per_function() -> None:
    """A wrapped call that comes back to a VM another process holds counts as
    handed over; times are at least the calls' own lengths."""
    b_runs = threading.Event()

    def wait_for_b() -> None:
        assert b_runs.wait(10), "process b never ran while the callout was out"

    wait_for_b.__qualname__ = "wait_for_b_per_function_test"
    waits = vmown.threaded(wait_for_b)
    sleeps = vmown.threaded(libc.usleep)

    async def b() -> None:
        b_runs.set()
        time.sleep(0.05)  # holds the VM: the callout's own must wait

    def target_of_callout() -> None:
        time.sleep(0.01)

    async def main() -> None:
        vmown.spawn(b)
        waits()
        for _ in range(3):
            sleeps(2000)
        vmown.callout(target_of_callout)

    sleeps(1)  # outside a run: a plain call, not counted
    run(main, callout_times=True)
    waited = _row(f"{__name__}.wait_for_b_per_function_test", "threaded")
    assert waited["calls"] == 1 and waited["handed_over"] == 1 and waited["revocations"] == 0
    assert waited["longest_out_s"] >= 0.04  # b's sleep, waited for (lower bound only)
    slept = [row for row in vmown.callout_stats() if row["name"] == "usleep" and row["kind"] == "threaded"]
    assert slept and slept[0]["calls"] >= 3 and slept[0]["longest_out_s"] >= 0.002
    target = _row(f"{__name__}.{target_of_callout.__qualname__}", "callout")
    assert target["calls"] == 1 and target["total_out_s"] >= 0.01


def test_callout_stats_take_no_time_unless_asked() -> None:
    def untimed() -> None:
        time.sleep(0.005)

    untimed.__qualname__ = "untimed_per_function_test"
    wrapper = vmown.threaded(untimed)

    async def main() -> None:
        wrapper()

    run(main)
    row = _row(f"{__name__}.untimed_per_function_test", "threaded")
    assert row["calls"] == 1 and row["total_out_s"] == 0 and row["longest_out_s"] == 0


def test_callout_of_an_api_mode_function_pins_buffers_like_threaded() -> None:
    """An out-of-line (API mode) cffi function through callout() gets the
    rules of threaded(): a writable buffer is passed as a pointer; bytes (read
    only, and API mode keeps no const) are refused."""
    ownership = vmown.Ownership(slots=4)
    try:
        out = bytearray(64)
        assert vmown.callout(lib.vmown_queue_read, ownership._cb, out, 16) == 0
        assert vmown.threaded(lib.vmown_queue_read)(ownership._cb, out, 16) == 0
        with pytest.raises(TypeError, match="read-only"):
            vmown.callout(lib.vmown_queue_read, ownership._cb, bytes(64), 16)
        with pytest.raises(TypeError, match="list"):
            vmown.callout(lib.vmown_queue_read, ownership._cb, [0] * 16, 16)
    finally:
        ownership.close()


# ---- the blocking entry (native/pyext/callout_ext.c) ----

_efi = cffi.FFI()
_efi.cdef(
    """
    typedef struct { int quot; int rem; } div_t;
    size_t strlen(const char *s);
    int abs(int j);
    long labs(long j);
    int toupper(int c);
    char *getenv(const char *name);
    void srand(unsigned int seed);
    div_t div(int numerator, int denominator);
    int printf(const char *format, ...);
    long recv(int fd, void *buf, size_t n, int flags);
    """
)
_elibc = _efi.dlopen(None)
_mfi = cffi.FFI()
_mfi.cdef("double sqrt(double x); float sqrtf(float x); long double sqrtl(long double x);")
_libm = _mfi.dlopen("libm.so.6")


def test_a_blocking_entry_converts_as_the_function_itself() -> None:
    """The entry is a function pointer of the function's own C type: cffi
    converts the arguments and the result as for the direct call.  Outside a
    callout it is a plain call."""
    os.environ["VMOWN_ENTRY_TEST"] = "found"
    cases: list[tuple[Any, tuple[Any, ...]]] = [
        (_elibc.strlen, (b"seven c",)),
        (_elibc.abs, (-42,)),
        (_elibc.labs, (-(2**40),)),
        (_elibc.toupper, (ord("q"),)),
        (_elibc.srand, (7,)),
        (_libm.sqrt, (2.0,)),
        (_libm.sqrtf, (2.0,)),
        (lib.vmown_block_size, (64,)),  # an out-of-line (API mode) function
    ]
    for fn, args in cases:
        assert vmown.threaded(fn)._has_entry(), fn
        entry, _keep = _callout._blocking_entry(fn)
        assert entry(*args) == fn(*args), fn
    entry, _keep = _callout._blocking_entry(_elibc.getenv)
    assert _efi.string(entry(b"VMOWN_ENTRY_TEST")) == b"found"
    with pytest.raises(OverflowError):
        entry_abs, _keep = _callout._blocking_entry(_elibc.abs)
        entry_abs(2**40)


def test_functions_libffi_cannot_call_by_letter_have_no_entry_and_still_work() -> None:
    """A struct passed by value, long double, a variadic function: no entry;
    the wrapper calls the function the direct way."""
    for fn in (_elibc.div, _libm.sqrtl, _elibc.printf):
        assert _callout._blocking_entry(fn) == (None, None)
    assert not vmown.threaded(_elibc.div)._has_entry()
    assert not vmown.threaded(_libm.sqrtl)._has_entry()
    assert vmown.threaded(_elibc.div)(7, 2).quot == 3
    assert float(vmown.threaded(_libm.sqrtl)(4.0)) == 2.0
    assert not vmown.threaded(lambda: None)._has_entry()


def test_a_call_known_to_block_owns_the_vm_again_through_the_entry() -> None:
    """A recv that waits 20 ms for nothing (SO_RCVTIMEO) while another process
    wants the VM: the first stays out over two heartbeat ticks, which marks
    the function as blocking; the next ones come back through the blocking
    entry, which owns the VM before cffi takes the GIL back.  Results and
    errno are the call's own; an argument cffi refuses before the call
    leaves the VM owned as before."""
    import socket
    import struct

    a, b = socket.socketpair()
    try:
        a.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", 0, 20_000))
        recv = vmown.threaded(_elibc.recv)
        buf = bytearray(16)
        done = False

        async def busy() -> int:
            steps = 0
            while not done:
                steps += 1
                await vmown.checkpoint()
            return steps

        async def main() -> tuple[list[tuple[int, int]], int, int, int]:
            nonlocal done
            other = vmown.spawn(busy)
            results = []
            for _ in range(6):
                _efi.errno = 0
                results.append((recv(a.fileno(), buf, len(buf), 0), _efi.errno))
            entered = recv._entered()
            with pytest.raises(OverflowError):
                recv(2**40, buf, len(buf), 0)
            refused_entered = recv._entered() - entered
            results.append((recv(a.fileno(), buf, len(buf), 0), _efi.errno))
            done = True
            return results, entered, refused_entered, await other

        results, entered, refused_entered, steps = run(main)
        assert results == [(-1, errno.EAGAIN)] * 7
        assert entered >= 1  # the calls after the first revocation came back through the entry
        assert refused_entered == 0  # the refused call never reached the entry's handler
        assert steps > 0
    finally:
        a.close()
        b.close()
