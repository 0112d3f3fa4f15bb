"""vmown._callback: cffi callbacks on the thread of a threaded call, and on C threads of their own."""

from __future__ import annotations

import pathlib
import subprocess
import threading
from typing import Any

import cffi
import pytest

import vmown
from vmown import _callout_ext, _scheduler
from vmown._callback import _lazy_out

from .support import Ticker

pytestmark = pytest.mark.usefixtures("no_thread_left_behind")

_ffi = cffi.FFI()
_ffi.cdef(
    """
    typedef void (*tick_fn)(int thread, int i);
    int call_from_threads(tick_fn fn, int threads, int count);
    void call_here(tick_fn fn, int count);
    void qsort(void *base, size_t n, size_t size, int (*compar)(const void *, const void *));
    int usleep(unsigned int usec);
    """
)
_libc = _ffi.dlopen(None)
usleep = vmown.threaded(_libc.usleep)


@pytest.fixture(scope="module")
def clib(tmp_path_factory: pytest.TempPathFactory) -> Any:
    source = pathlib.Path(__file__).parent / "c" / "callbacks.c"
    out = tmp_path_factory.mktemp("callbacks") / "libcallbacks.so"
    subprocess.run(["cc", "-O2", "-shared", "-fPIC", "-pthread", "-o", str(out), str(source)], check=True)
    return _ffi.dlopen(str(out))


def _slots_in_use() -> int:
    return int(vmown.current_process()._rt.ownership.slots_in_use)


def test_callbacks_from_four_c_threads_run_in_the_vm_one_at_a_time(clib: Any) -> None:
    """4 pthreads x 10,000 callbacks: each owns the VM, none overlaps another
    or a step of a process, the count is exact, and the threads' slots go
    back when they end.  Each thread's first callback waits (in a callout)
    until all four have registered, so that none ends before the count."""
    state = {"count": 0, "inside": 0, "stepping": False, "overlaps": 0, "not_owner": 0, "steps": 0, "peak": 0}
    registered = [threading.Barrier(4)]  # emptied after the four threads' call

    @vmown.callback
    def tick(thread: int, i: int) -> None:
        if i == 0 and registered:
            vmown.callout(registered[0].wait, 30)
            state["peak"] = max(state["peak"], len(vmown.current_process()._rt.token._slots))
        if state["inside"] or state["stepping"]:
            state["overlaps"] += 1
        state["inside"] += 1
        if not _callout_ext.owns():
            state["not_owner"] += 1
        state["count"] += 1
        state["inside"] -= 1

    c_tick = _ffi.callback("tick_fn", tick)
    call_from_threads = vmown.threaded(clib.call_from_threads)

    async def stepper(done: vmown.Event) -> None:
        while not done.is_set():
            state["stepping"] = True
            sum(range(50))  # a step that takes a moment
            state["stepping"] = False
            state["steps"] += 1
            await vmown.checkpoint()

    async def main() -> tuple[int, int]:
        done = vmown.Event()
        stepping = vmown.spawn(stepper, done)
        assert call_from_threads(c_tick, 4, 10_000) == 0
        registered.clear()
        done.set()
        await stepping
        # The four have ended: each slot went back as its thread's locals
        # went (cffi drops them at the thread's exit), or goes back now, when
        # the next C thread registers and sweeps (T4).
        still = len(vmown.current_process()._rt.token._slots)
        during = _slots_in_use()
        assert call_from_threads(c_tick, 1, 1) == 0
        return still, during - _slots_in_use()

    still, returned = vmown.run(main)
    assert state["count"] == 40_001
    assert state["overlaps"] == 0 and state["not_owner"] == 0
    assert state["peak"] == 4  # the four were registered at once
    assert 0 <= still <= 4
    assert returned == still - 1  # the sweep gave back the ones left; the fifth took one


def test_a_callback_on_the_thread_of_a_threaded_call_owns_the_vm_and_others_run_between(clib: Any) -> None:
    """qsort with a comparator that sleeps 1 ms (a callout of its own): the
    comparator owns the VM on qsort's thread, other processes run meanwhile."""
    seen = {"compares": 0, "owned": 0, "threads": set()}

    @vmown.callback
    def compare(a: Any, b: Any) -> int:
        seen["compares"] += 1
        seen["owned"] += _callout_ext.owns()
        seen["threads"].add(threading.get_ident())
        usleep(1000)  # gives the VM up again for the sleep
        x, y = _ffi.cast("int *", a)[0], _ffi.cast("int *", b)[0]
        return (x > y) - (x < y)

    c_compare = _ffi.callback("int(const void *, const void *)", compare)
    qsort = vmown.threaded(_libc.qsort)

    async def main() -> tuple[list[int], int, int]:
        ticker = Ticker().start()
        await vmown.checkpoint()
        values = _ffi.new("int[]", [9, 3, 7, 1, 8, 2, 6, 4, 5, 0, 19, 13, 17, 11, 18, 12, 16, 14, 15, 10])
        me = threading.get_ident()
        qsort(values, len(values), _ffi.sizeof("int"), c_compare)
        ticks = await ticker.stop()
        assert seen["threads"] == {me}
        return list(values), ticks, seen["compares"]

    values, ticks, compares = vmown.run(main)
    assert values == list(range(20))
    assert seen["owned"] == compares > 0
    assert ticks >= 5  # ~60 comparisons of 1 ms each; a held VM would allow none


def test_a_callout_in_a_callback_from_a_c_thread_gives_the_vm_up(clib: Any) -> None:
    """A C thread's callback sleeps 20 ms in a threaded call, 10 times: the
    VM is given up meanwhile (the ticker ticks), as for a callout of a step."""

    @vmown.callback
    def tick(thread: int, i: int) -> None:
        usleep(20_000)

    c_tick = _ffi.callback("tick_fn", tick)

    async def main() -> int:
        ticker = Ticker().start()
        await vmown.checkpoint()
        assert vmown.threaded(clib.call_from_threads)(c_tick, 1, 10) == 0
        return await ticker.stop()

    assert vmown.run(main) >= 50  # ~200 ms of sleeps; a held VM allows about one tick


def test_a_callback_may_use_the_primitives_and_its_exceptions_are_reported(clib: Any) -> None:
    errors: list[Any] = []

    def onerror(exc_type: Any, exc: BaseException, tb: Any) -> None:
        errors.append(exc_type)

    async def main() -> int:
        queue: vmown.Queue[int] = vmown.Queue()

        @vmown.callback
        def tick(thread: int, i: int) -> None:
            if i == 3:
                raise KeyError(i)
            queue.put_nowait(i)

        c_tick = _ffi.callback("tick_fn", tick, onerror=onerror)
        vmown.threaded(clib.call_from_threads)(c_tick, 1, 5)
        vmown.threaded(clib.call_here)(c_tick, 2)
        return sum([queue.get_nowait() for _ in range(queue.qsize())])

    assert vmown.run(main) == 0 + 1 + 2 + 4 + 0 + 1
    assert errors == [KeyError]


def test_without_a_run_a_callback_is_a_plain_call(clib: Any) -> None:
    count = []
    c_tick = _ffi.callback("tick_fn", vmown.callback(lambda thread, i: count.append(i)))
    clib.call_here(c_tick, 3)
    assert count == [0, 1, 2]


LAZY_DECLARATIONS = """
typedef void (*tick_fn)(int thread, int i);
int call_back_after_us(tick_fn fn, int us, int count);
"""
LAZY_SOURCE = """
#include <time.h>
typedef void (*tick_fn)(int thread, int i);
int call_back_after_us(tick_fn fn, int us, int count) {
    struct timespec ts = {0, us * 1000L};
    for (int i = 0; i < count; i++) {
        nanosleep(&ts, NULL);  /* out long enough for the heartbeat to revoke a lazy callout */
        fn(0, i);
    }
    return count;
}
"""


@pytest.fixture(scope="module")
def wrapped(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A cffi API-mode module whose function is called through a generated (lazy) C wrapper."""
    import importlib.util

    out = tmp_path_factory.mktemp("lazy_callbacks")
    builder = cffi.FFI()
    builder.cdef(LAZY_DECLARATIONS)
    cdef, source = vmown.threaded_wrappers(
        "int call_back_after_us(tick_fn fn, int us, int count);", typedefs=("tick_fn",)
    )
    builder.cdef(cdef)
    builder.set_source("_vmown_lazy_callbacks", LAZY_SOURCE + source)
    library = builder.compile(tmpdir=str(out))
    spec = importlib.util.spec_from_file_location("_vmown_lazy_callbacks", library)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    vmown.bind_threaded(mod.lib)
    return mod


def test_a_callback_inside_a_lazy_c_wrapper_call_owns_the_vm_alone(wrapped: Any) -> None:
    """T5: the generated wrapper goes out lazily (the owner word still names
    its thread); the C function calls back at once (the callout is still
    lazy), then after 3 ms each (the heartbeat revokes the callout meanwhile,
    another process having work).  Every
    callback owns the VM for real (not lazily) and overlaps no step."""
    state = {"count": 0, "stepping": False, "overlaps": 0, "not_owner": 0, "lazy": 0}
    ffi, lib = wrapped.ffi, wrapped.lib

    @vmown.callback
    def tick(thread: int, i: int) -> None:
        if state["stepping"]:
            state["overlaps"] += 1
        here = _scheduler._here.state
        state["lazy"] += bool(here is not None and _lazy_out(here))
        state["not_owner"] += not _callout_ext.owns()
        state["count"] += 1

    c_tick = ffi.callback("tick_fn", tick)

    async def stepper(done: vmown.Event) -> None:
        while not done.is_set():
            state["stepping"] = True
            sum(range(50))
            state["stepping"] = False
            await vmown.checkpoint()

    async def main() -> int:
        done = vmown.Event()
        stepping = vmown.spawn(stepper, done)
        await vmown.checkpoint()
        n = lib.call_back_after_us_threaded(c_tick, 0, 50)  # back at once: still lazy
        n += lib.call_back_after_us_threaded(c_tick, 3000, 20)  # out a tick first: revoked
        done.set()
        await stepping
        return int(n)

    def calls() -> int:
        rows = [r for r in vmown.callout_stats() if r["name"] == "call_back_after_us" and r["kind"] == "wrapper"]
        return sum(row["calls"] for row in rows)

    before = calls()
    assert vmown.run(main) == 70
    assert state["count"] == 70
    assert state["overlaps"] == 0 and state["not_owner"] == 0 and state["lazy"] == 0
    assert calls() - before == 2  # the wrapped calls, each once: a callback's own is not a callout


# ---- cffi's API mode: @ffi.def_extern over vmown.callback ----

EXTERN_DECLARATIONS = """
extern "Python" int ext_compare(const void *a, const void *b);
extern "Python" void ext_tick(int thread, int i);
int sort_ints(int *values, int n);
int tick_from_threads(int threads, int count);
"""
EXTERN_SOURCE = r"""
#include <pthread.h>
#include <stdlib.h>

static int ext_compare(const void *a, const void *b);
static void ext_tick(int thread, int i);

/* qsort with the Python comparator: callbacks on the calling thread. */
int sort_ints(int *values, int n) {
    qsort(values, (size_t)n, sizeof(int), ext_compare);
    return n;
}

struct job { int thread, count; };

static void *run_job(void *arg) {
    struct job *job = arg;
    for (int i = 0; i < job->count; i++) ext_tick(job->thread, i);
    return NULL;
}

/* `threads` pthreads (at most 16) each call ext_tick(thread, i) `count`
 * times; joined before it returns.  0, or -1 if a thread did not start. */
int tick_from_threads(int threads, int count) {
    pthread_t ids[16];
    struct job jobs[16];
    int started = 0;
    if (threads > 16) threads = 16;
    for (; started < threads; started++) {
        jobs[started] = (struct job){started, count};
        if (pthread_create(&ids[started], NULL, run_job, &jobs[started]) != 0) break;
    }
    for (int i = 0; i < started; i++) pthread_join(ids[i], NULL);
    return started == threads ? 0 : -1;
}
"""


@pytest.fixture(scope="module")
def extern(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A cffi API-mode module whose C code calls back through ``extern "Python"``
    functions; sort_ints also has a generated (lazy) C wrapper."""
    import importlib.util

    out = tmp_path_factory.mktemp("extern_callbacks")
    builder = cffi.FFI()
    builder.cdef(EXTERN_DECLARATIONS)
    cdef, source = vmown.threaded_wrappers("int sort_ints(int *values, int n);")
    builder.cdef(cdef)
    builder.set_source("_vmown_extern_callbacks", EXTERN_SOURCE + source,
                       extra_compile_args=["-pthread"], extra_link_args=["-pthread"])
    library = builder.compile(tmpdir=str(out))
    spec = importlib.util.spec_from_file_location("_vmown_extern_callbacks", library)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    vmown.bind_threaded(mod.lib)
    return mod


def test_def_extern_callbacks_own_the_vm_on_the_calling_thread_and_on_c_threads(extern: Any) -> None:
    """@ffi.def_extern over @vmown.callback: (a) qsort's comparator, called
    on the thread of a threaded call (eager, vmown.threaded) and of a lazy C
    wrapper call, owns the VM and sleeps as a callout of its own while a
    ticker runs; (b) 4 pthreads of the C code x 2,000 callbacks each own the
    VM, never during a step of another process; each pthread's callback
    raises once, and cffi's onerror gets all four, on the pthreads."""
    ffi, lib = extern.ffi, extern.lib
    state = {"compares": 0, "ticks": 0, "inside": 0, "stepping": False, "overlaps": 0, "not_owner": 0}
    compare_threads: set[int] = set()
    errors: list[tuple[type[BaseException], int]] = []

    def onerror(exc_type: Any, exc: BaseException, tb: Any) -> None:
        errors.append((exc_type, threading.get_ident()))

    @ffi.def_extern(onerror=onerror)
    @vmown.callback
    def ext_compare(a: Any, b: Any) -> int:
        state["compares"] += 1
        state["not_owner"] += not _callout_ext.owns()
        compare_threads.add(threading.get_ident())
        usleep(200)  # a callout of the callback's own: the VM given up again
        x, y = ffi.cast("int *", a)[0], ffi.cast("int *", b)[0]
        return (x > y) - (x < y)

    @ffi.def_extern(onerror=onerror)
    @vmown.callback
    def ext_tick(thread: int, i: int) -> None:
        if state["inside"] or state["stepping"]:
            state["overlaps"] += 1
        state["inside"] += 1
        state["not_owner"] += not _callout_ext.owns()
        state["ticks"] += 1
        state["inside"] -= 1
        if i == 7:
            raise KeyError(thread)

    sort_ints = vmown.threaded(lib.sort_ints)
    tick_from_threads = vmown.threaded(lib.tick_from_threads)

    async def stepper(done: vmown.Event) -> int:
        steps = 0
        while not done.is_set():
            state["stepping"] = True
            sum(range(50))
            state["stepping"] = False
            steps += 1
            await vmown.sleep(0.0002)
        return steps

    async def main() -> tuple[list[int], list[int], int]:
        done = vmown.Event()
        stepping = vmown.spawn(stepper, done)
        await vmown.checkpoint()
        eager = ffi.new("int[]", [9, 3, 7, 1, 8, 2, 6, 4, 5, 0, 19, 13, 17, 11, 18, 12, 16, 14, 15, 10])
        lazy = ffi.new("int[]", list(eager))
        assert sort_ints(eager, len(eager)) == 20
        assert lib.sort_ints_threaded(lazy, len(lazy)) == 20
        assert compare_threads == {threading.get_ident()}
        assert tick_from_threads(4, 2000) == 0
        done.set()
        return list(eager), list(lazy), await stepping

    eager, lazy, steps = vmown.run(main)
    assert eager == lazy == list(range(20))
    assert state["compares"] > 0 and state["ticks"] == 8000
    assert state["overlaps"] == 0 and state["not_owner"] == 0
    assert steps >= 5  # ran while the comparators slept
    assert [exc for exc, _ in errors] == [KeyError] * 4
    assert len({ident for _, ident in errors}) == 4  # reported on each pthread
    assert threading.get_ident() not in {ident for _, ident in errors}


def test_def_extern_exceptions_without_onerror_are_unraisable_and_return_error(
    extern: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without onerror, cffi hands a callback's exception to sys.unraisablehook
    and returns ``error=`` to C: on the calling thread (a) and on a pthread (b)."""
    ffi, lib = extern.ffi, extern.lib
    reported: list[tuple[type[BaseException], str]] = []
    monkeypatch.setattr("sys.unraisablehook", lambda u: reported.append((u.exc_type, str(u.exc_value))))

    @ffi.def_extern(error=0)
    @vmown.callback
    def ext_compare(a: Any, b: Any) -> int:
        raise ValueError("compare")

    @ffi.def_extern()
    @vmown.callback
    def ext_tick(thread: int, i: int) -> None:
        if i == 1:
            raise KeyError(f"tick {thread}")

    async def main() -> int:
        values = ffi.new("int[]", [2, 1])
        vmown.threaded(lib.sort_ints)(values, 2)
        return int(vmown.threaded(lib.tick_from_threads)(2, 3))

    assert vmown.run(main) == 0
    assert (ValueError, "compare") in reported
    assert sorted(r for r in reported if r[0] is KeyError) == [(KeyError, "'tick 0'"), (KeyError, "'tick 1'")]
    assert len(reported) == 3  # qsort of 2 compares once
