# The M:N scheduler: green processes on whichever OS thread owns the VM.
#
# What it is for
# --------------
# vmown.run(main) runs `async def` processes.  A process calls C through
# callouts (vmown.callout and vmown.threaded in _callout.py, or the C
# wrappers of vmown.threaded_wrappers) that cost little more than a plain
# call, and a callout that blocks does not stop the other processes: within
# a tick or two the heartbeat hands the VM to another worker thread, which
# runs them.
#
# Three kinds of object:
#   - Process: a coroutine, its contextvars.Context, and what it waits on.
#   - worker: an OS thread that owns the VM while it runs the scheduler loop;
#     the thread that called run() is one of them.
#   - _Runtime: the VM's state (run queue, timer heap, processes, counters),
#     touched only by the thread that owns the VM.
#
# The design is Cog's CoInterpreterMT and Go's entersyscall/sysmon: the loop
# runs on whichever thread owns the VM; a callout disowns, keeps its stack and
# owns again; the C heartbeat (native/heartbeat.c) activates a parked worker
# when the VM has been unowned for a whole tick with work waiting, or revokes
# the VM from a lazy callout out that long (native/grants.c, "Lazy
# callouts"), which for the loop is an activation like any other.  Nothing
# guesses at disown time how long a call will take: the heartbeat waits for
# evidence (docs/design-log.md, "Rejected approaches").  A step of a process
# is the code between two awaits; it runs on one thread from start to end (a
# blocked callout keeps it on its thread's stack); the next step may run on
# any thread.
#
# The loop (_serve) and the worker's life (_work)
# -----------------------------------------------
#   1. at every scheduling point: if the run halts, stop; if threads wait for
#      the VM (a callout came back), leave the loop and park, which hands the
#      VM to the head waiter in the same step (vmown_park);
#   2. about once per millisecond, let a thread that waits for the GIL in (see
#      "The GIL"); move due timers to the run queue; if nothing is runnable,
#      park until the next timer: no polling, no spinning;
#   3. pop a process, run one step: ctx.run(coro.send, value); handle what it
#      yielded: None = checkpoint, int = sleep until that monotonic ns,
#      _SUSPEND = it registered with a primitive that will wake it, a Process
#      = join it.
# A parked worker comes back (vmown_park's result) activated (it owns the VM:
# serve), unparked (shutdown or halt: leave or own), or timed out (a timer is
# due: own and serve; or idle_timeout passed: a surplus worker exits if
# another one is parked, so one spare always stays).
#
# Servers.  While threads keep coming back from callouts the VM is rarely
# unowned for a whole tick, so the heartbeat also queues parked workers for
# the VM when the run queue stalls (native/heartbeat.c, "Servers").  A
# server given the VM runs at least one step before it looks at the wait
# queue (_serve's `first`): it was brought in for the run queue.
#
# Spares.  The heartbeat can only activate or queue parked workers, so a
# worker that comes back from the idle stack asks for others to be parked or
# on their way (_ensure_spare): one, or min(run queue, _SPARES) while
# processes wait, since a long run queue wants servers, not one at a time.
# The owner only asks; the worker pool (native/workers.c) starts threads in C
# and parks them without any Python, and a worker enters Python
# (vmown_py_worker) only when first given the VM, so its start-up competes
# with nobody for the GIL (docs/design-log.md, "Spares" and "Worker
# pool").  A run that meets max_threads gets a RuntimeWarning, once.
#
# Publishing the work.  The heartbeat reads, while the VM is unowned, how
# many processes are runnable and the next timer's deadline; while it is
# owned, how many steps the owner has taken (to see the run queue stall).
# The owner writes them with plain stores before any release: the step count
# in place at every step, the run queue's length at each spawn, and both
# runnable and next timer through vmown_set_work (_publish) whenever
# "anything runnable" or the next deadline changes, and before parking or
# disowning for itself.  The release store of the owner word (seq_cst) orders
# them before the release; the heartbeat's acquire load of the owner word
# orders its reads after.
#
# The races
# ---------
# Each race of the scheduler is written as a numbered interleaving beside
# the code that handles it, with why the code is right; docs/ARCHITECTURE.md
# indexes them with the core's and the tests that force them:
#   P1  a callout comes back while the heartbeat activates a worker   _serve
#   P2  a worker parks while a thread queues for the VM               _park
#   P3  a surplus worker's idle timeout and an activation             _surplus
#   P4  main finishes on a worker while the run thread is elsewhere   _halt
#   P5  a step wakes a process, then makes a blocking callout         _wake
#   P6  SIGINT lands anywhere in the main thread                      _ki_deferred
#   P7  the pool starts a worker while the VM is owned, or unowned    _join_workers
#   P8  the timer watcher and the heartbeat act on one due timer      _park_timeout
#   P9  deadlock detection and a callout about to come back           _park
#   P10 the heartbeat queues a server while the owner parks or ends   _serve
#   P11 a sleeper falls due while threads wait for the VM             _serve
#   N1-N4 the idle owner waits in epoll (descriptor waits, _io.py)    _idle_in_poll
#
# Descriptors.  While processes wait on descriptors (vmown/_io.py), the loop
# also collects readiness every _CLOCK_EVERY steps and before it goes idle,
# and one idle thread waits in epoll instead of parking (_idle_in_poll).
#
# The GIL.  A callout made through the C wrappers of vmown.threaded_wrappers
# waits for the VM in C, without the GIL, and takes the GIL only once it owns
# the VM, from an owner that has parked (in C, GIL released).  A Python-level
# callout (vmown.callout, vmown.threaded) must take the GIL back before it can
# ask for the VM, and the thread running steps holds it; CPython would let it
# wait for seconds (docs/design-log.md, "The GIL and a returning callout").
# So the loop never drops the GIL to look for waiters (it reads their count
# in place), and about once per millisecond of serving (_GIL_YIELD_NS; the
# clock is read every step while timers wait, else every _CLOCK_EVERY steps),
# if a thread of the run is out of the VM, it blocks briefly with the GIL
# released (_yield_gil), long enough for that thread to take the GIL and
# queue for the VM, which the next scheduling point hands over.
#
# Shutdown (the run thread, owning the VM, once `halt` is set): publish "no
# work", stop the heartbeat and the pool, disown and join the workers (the
# pool unparks the parked ones at every round; those still in a callout come
# back, finish their step, see `halt` and exit; a warning names them if they
# take long), own again, close every process left (coro.close() in its context: its
# finally blocks run), close the Ownership.  run() then returns main's result
# or raises.
#
# Assumptions about the platform: CPython's GIL makes single attribute reads
# and writes atomic (used for `halt` and `fatal`, the only fields written by
# a thread that does not own the VM); time.monotonic_ns() and the core's
# vmown_now_ns() read the same clock (CLOCK_MONOTONIC on Linux).

from __future__ import annotations

import atexit
import contextvars
import heapq
import inspect
import itertools
import math
import os
import signal
import sys
import threading
import time
import traceback
import types
import warnings
import weakref
from collections import deque
from collections.abc import Callable, Coroutine, Generator, Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any, Generic, TypeVar, TypeVarTuple

from ._errors import ForkedRunError, NotOwnerError, VmownError, check, error, vm_error
from ._native import ffi, lib
from . import _callout_ext, _monitor, _watchdog
from ._ownership import Ownership
from ._callout_ext import bind as _guard_bind, owns as _owns
from ._timeout import timeout_ns as _timeout_ns

__all__ = ["Process", "checkpoint", "current_process", "run", "sleep", "spawn", "stats"]

T = TypeVar("T")
Ts = TypeVarTuple("Ts")

DEFAULT_MAX_THREADS = 1000
DEFAULT_IDLE_TIMEOUT_S = 10.0
# Slots beyond max_threads: a retired thread keeps its slot until its
# thread-locals are freed, a moment after it stopped counting as a thread.
_SLOT_MARGIN = 8
# Parked workers kept ready while processes wait (see "Spares").
_SPARES = 8
# Shutdown warns when workers still in a callout keep it waiting this long.
_SHUTDOWN_WARN_S = 5.0
# Joining the workers at shutdown: Ctrl-C is seen at least this often.
_JOIN_SLICE_NS = 50_000_000
# The loop lets a thread waiting for the GIL in at least this often (see "The
# GIL"); without timers it reads the clock only every _CLOCK_EVERY steps.
_GIL_YIELD_NS = 1_000_000
# A due sleeper waits behind at most this many runnable processes (P11).
_TIMER_AHEAD = 4
_CLOCK_EVERY = 8

_now = time.monotonic_ns
_park_c = lib.vmown_park
_own_wait = lib.vmown_own_wait
_disown = lib.vmown_disown
_EINTR = lib.VMOWN_EINTR
_WORK_TAKEN = lib.VMOWN_WORK_TAKEN
_WORK_RUNNABLE = lib.VMOWN_WORK_RUNNABLE
_ETIMEDOUT = lib.VMOWN_ETIMEDOUT
_INTERRUPTIBLE = lib.VMOWN_WAIT_INTERRUPTIBLE

# Process states.  Invariant: a process is in exactly one place that matches
# its state: the run queue (RUNNABLE), the timer heap (SLEEPING), a
# primitive's or a process's waiters (WAITING), a thread's stack (RUNNING),
# or nowhere (DONE).
_RUNNABLE = "runnable"
_RUNNING = "running"
_SLEEPING = "sleeping"
_WAITING = "waiting"
_DONE = "done"

# What a step yields to say "I registered with a waker; do not reschedule me".
# The waker is recorded in the process's _waiting_on and has a _forget(process)
# method that unlinks it (used when the run closes the process; the hook for
# cancellation).
_SUSPEND = object()

_process_var: contextvars.ContextVar[Process[Any]] = contextvars.ContextVar("vmown.process")

# The ownership guard (see _current).  VMOWN_GUARD=0 in the environment at
# import builds the entry points without it: only for measuring what it
# costs (benchmarks/suite_threads.py, guard_overhead).
_GUARD = os.environ.get("VMOWN_GUARD", "1") != "0"

# Debug: the scheduler's own race windows, widened like the core's.
# _debug_set_widen_ns(ns) sets the core's switch (vmown_debug_set_widen_ns,
# native/owner.c) and _widen_ns together; while _widen_ns is not 0 a bound
# thread spins that long with the GIL released between giving the VM up and
# sleeping on `wake` (T6, _serve_bound), so that tests run through the window
# instead of past it.  Off (0), it costs one global load on the way to sleep.
_widen_ns = 0


def _debug_set_widen_ns(ns: int) -> None:
    """Widen the core's and the scheduler's race windows by ``ns`` (0: off); process-wide."""
    global _widen_ns
    _widen_ns = max(0, ns)
    lib.vmown_debug_set_widen_ns(_widen_ns)


def _widen(me: _ThreadState) -> None:
    """Spin ``_widen_ns`` with the GIL released (as the core's vmown__widen spins with a yield)."""
    until = _now() + _widen_ns
    while _now() < until:
        time.sleep(0)


class _ThreadState:
    """A thread that serves a vmown.run(): its slot in the run's control block."""

    __slots__ = ("cb", "slot", "run_thread", "ident", "bound_count", "bound_queue", "wake")

    def __init__(self, cb: Any, slot: int, run_thread: bool) -> None:
        self.cb = cb  # vmown_vm * of the run's control block
        self.slot = slot  # this thread's slot in it
        self.run_thread = run_thread  # the thread that called vmown.run()
        self.ident = threading.get_ident()  # made on the thread it describes
        # Bound processes (see "Bound processes").  Invariant: bound_count
        # is the number of live processes bound to this thread; while it is
        # not 0 the thread serves only them (_serve_bound).  bound_queue:
        # those of them that are runnable (owner only); wake: released by
        # the owner that queues one there, waited on by this thread with
        # the VM given up.
        self.bound_count = 0
        self.bound_queue: deque[Process[Any]] = deque()
        self.wake = threading.Semaphore(0)


class _Here(threading.local):
    state: _ThreadState | None = None


_here = _Here()


class Process(Generic[T]):
    """A green process of :func:`vmown.run`: one coroutine, scheduled on any worker thread.

    Made by :func:`spawn` (and by :func:`run` for ``main``).  ``await process``
    waits for it to finish and returns its result (``Process[T]``: a ``T``),
    or raises its exception with the traceback of where it was raised.  Each process runs in its own
    copy of its spawner's :mod:`contextvars` context, which follows it from
    thread to thread.
    """

    __slots__ = (
        "_rt",
        "_coro",
        "_resume",
        "_value",
        "_ctx_run",
        "_state",
        "_result",
        "_exception",
        "_joiners",
        "_waiting_on",
        "_retrieved",
        "_scope",
        "_parent",
        "_cancel_called",
        "_cancel_pending",
        "_groups",
        "_group",
        "_thread",
        "_timer",
        "_interrupt",
        "_cancelled",
        "_bound",
        "__weakref__",
    )

    # A process is the outermost node of its own chain of cancel scopes
    # (_cancel.py): Process.cancel() cancels it like a scope; it never shields.
    _shield = False

    def __init__(self, rt: _Runtime, coro: Coroutine[Any, Any, T], ctx: contextvars.Context) -> None:
        self._rt = rt
        self._coro = coro
        self._resume: Callable[[Any], Any] | None = coro.send  # what the next step calls
        self._value: Any = None  # ... with this
        self._ctx_run: Callable[..., Any] | None = ctx.run
        self._state = _RUNNABLE
        self._result: Any = None
        self._exception: BaseException | None = None
        self._joiners: list[Process[Any]] | None = None  # made by the first join
        self._waiting_on: object = None  # what it waits on, while WAITING
        self._retrieved = False  # someone awaited it (or will: it had joiners)
        # Cancellation (_cancel.py).  Invariant: _cancel_pending is
        # _cancelled(self) whenever this process is not RUNNING, kept so by
        # every change to a scope of its chain.
        self._scope: Any = self  # innermost cancel scope it is in (itself: none)
        self._parent: Any = None  # the task group's scope it was spawned in
        self._cancel_called = False  # Process.cancel() was called
        self._cancel_pending = False  # a checkpoint or wait must raise Cancelled
        self._groups: list[Any] | None = None  # task groups open in it
        self._group: Any = None  # the task group it is a child of
        self._thread: _ThreadState | None = None  # the thread that ran its last step
        self._timer: list[Any] | None = None  # its sleep's heap entry, while SLEEPING
        self._interrupt: Callable[[], object] | None = None  # while in an interruptible callout
        self._cancelled = False  # it ended with Cancelled (Process.cancel)
        # None: runs on any thread; True: bound to the thread of its first
        # step; a _ThreadState: bound to that thread (owner only).
        self._bound: Any = None

    @property
    def name(self) -> str:
        """The qualified name of the process's coroutine function."""
        return str(getattr(self._coro, "__qualname__", self._coro))

    def done(self) -> bool:
        """Whether the process has finished (returned or raised)."""
        return self._state is _DONE

    def __await__(self) -> Generator[Any, Any, T]:
        if self._state is not _DONE:
            yield self
        self._retrieved = True
        if self._exception is not None:
            raise self._exception
        result: T = self._result
        return result

    def cancel(self) -> None:
        """Cancel the process, as if its whole body were in a cancelled :class:`vmown.CancelScope`.

        Call it from another process of the run.  The process gets
        :class:`vmown.Cancelled` at its next checkpoint or wait (or when the
        callout it is in returns) and again at each one after; if it lets it
        propagate, awaiting it raises :class:`vmown.ProcessCancelled`.
        Cancelling a finished process does nothing.
        """
        _cancel_process(self)

    def cancelled(self) -> bool:
        """Whether the process ended because it was cancelled."""
        return self._cancelled

    def result(self) -> T:
        """The finished process's return value; raises its exception if it raised.

        Raises RuntimeError if the process has not finished (``await`` it
        instead), ProcessCancelled if it was cancelled.
        """
        self._check_done("result")
        self._retrieved = True
        if self._exception is not None:
            raise self._exception
        result: T = self._result
        return result

    def exception(self) -> BaseException | None:
        """The exception the finished process raised, or None if it returned.

        Raises RuntimeError if the process has not finished.
        """
        self._check_done("exception")
        self._retrieved = True
        return self._exception

    def _check_done(self, what: str) -> None:
        if self._state is not _DONE:
            raise RuntimeError(f"{self!r} has not finished: await it before calling {what}()")

    def _forget(self, joiner: Process[Any]) -> None:
        """Stop waking ``joiner`` (it is being closed)."""
        if self._joiners is not None:
            self._joiners.remove(joiner)

    def __repr__(self) -> str:
        return f"<vmown.Process {self.name} {self._state}>"


class _Runtime:
    """The VM of one vmown.run(): everything here belongs to the owner of the VM.

    Exceptions, as marked: `halt` and `fatal` may also be set by the SIGINT
    handler and by a crashing worker (single attribute writes under the GIL,
    only ever from "not halted" to "halted"); `worker_idents` changes as
    workers enter and leave, without the VM (single dict operations under the
    GIL).  The threads themselves are counted by the pool (native/workers.c).
    """

    __slots__ = (
        "ownership", "cb", "waiters_word", "owner_word", "owner_address", "work_words", "run_queue", "timers", "stale_timers", "timer_seq", "processes", "main",
        "halt", "fatal", "running", "unretrieved", "published_runnable", "published_timer_ns",
        "watched_deadline_ns", "run_slot", "max_threads", "idle_timeout_ns", "handle", "worker_idents",
        "pool_shortfalls", "cap_warned", "failures_warned", "steps", "spawned", "parks", "releases", "io",
        "monitor", "run_ident",
        "token", "bound_runnable", "bound_threads",
        "pid", "forked", "give_up", "__weakref__",
    )  # fmt: skip

    def __init__(self, max_threads: int, idle_timeout_s: float, monitor: str | None = None) -> None:
        slots = max_threads + _SLOT_MARGIN
        # With a monitor path the block lives in an arena file that
        # `python -m vmown top PATH` attaches (vmown/_monitor.py).
        self.monitor = _monitor.Publisher(monitor, slots) if monitor else None
        if self.monitor is not None:
            self.ownership = Ownership.create_in(self.monitor.block, slots=slots)
        else:
            self.ownership = Ownership(slots=slots)
        self.cb = self.ownership._cb  # vmown_vm *, valid until ownership.close()
        self.waiters_word = lib.vmown_waiters_word(self.cb)  # read in place by _serve
        self.owner_word = _owner_word(self.waiters_word)  # read in place by the guard
        self.owner_address = int(ffi.cast("uintptr_t", ffi.from_buffer(self.owner_word)))
        # [0] written in place by _serve at every step, [1] by spawn (and by
        # _publish): a memoryview store costs ~20 ns where a cffi pointer
        # store costs ~65 (one aligned 8-byte store either way; the heartbeat
        # only reads the words).
        self.work_words = memoryview(ffi.buffer(lib.vmown_work_words(self.cb), 16)).cast("Q")
        self.run_queue: deque[Process[Any]] = deque()
        # [deadline_ns, seq, target] heap; target: a sleeping Process, a
        # CancelScope's deadline, or None once dropped (lazy deletion).
        self.timers: list[list[Any]] = []
        self.stale_timers = 0  # entries whose target is None
        self.timer_seq = itertools.count()
        self.processes: dict[Process[Any], None] = {}  # alive, in spawn order
        self.main: Process[Any] | None = None
        # Invariant: only ever goes from False to True; read by every thread
        # while it owns the VM or right after vmown_park/vmown_own return (P4).
        self.halt = False  # stop serving; the run thread shuts down
        self.fatal: BaseException | None = None  # raised by run() in place of main's outcome
        # Invariant: counts the steps between ctx.run's call and its return,
        # on every thread; non-zero while a step is blocked in a callout (P9).
        self.running = 0
        self.unretrieved: list[Process[Any]] = []  # failed with nobody awaiting them (yet)
        # What vmown_set_work last published.  Invariant: while a step runs
        # (a callout may release the VM), published_runnable is True if the
        # run queue is not empty and published_timer_ns is the earliest
        # deadline; _park and _release publish before they release (P5).
        self.published_runnable = False
        self.published_timer_ns = 0
        # The deadline a parked worker has as its park timeout (0: none); a
        # worker parks with a timer only if it is earlier than this one (P8).
        self.watched_deadline_ns = 0
        self.run_slot = 0
        self.run_ident = 0  # threading ident of the run thread (the watchdog reads its stack)
        self.max_threads = max_threads
        self.idle_timeout_ns = _timeout_ns(idle_timeout_s, "idle_timeout")  # < 0: workers never retire
        # What the pool's workers get back in vmown_py_worker; dropped when
        # the pool is freed (it makes a cycle with this object).
        self.handle: Any = ffi.new_handle(partial(_run_worker, self))
        self.worker_idents: dict[int, int] = {}  # slot -> thread ident, of workers in Python
        # The pool's cap hits + failures at the last look, and what was reported.
        self.pool_shortfalls = 0
        self.cap_warned = False
        self.failures_warned = 0
        # Counters (owner only).
        self.steps = 0
        self.spawned = 0
        self.parks = 0  # vmown_park calls (the core counts each as a disown)
        self.releases = 0  # other disowns by the scheduler; callouts = disowns - both
        self.io: Any = None  # the descriptor waits (_io._IO), made by the first one
        self.token: Any = None  # the run's RunToken (_token.py), made at the start
        # Bound processes queued on their threads (not in run_queue), and
        # the threads that have had any (woken at a halt).
        self.bound_runnable = 0
        self.bound_threads: dict[_ThreadState, None] = {}
        # Fork (see _after_fork_in_child): the process the run belongs to,
        # and whether this is a child's copy of it.
        self.pid = os.getpid()
        self.forked = False
        # Ctrl-C twice: shutdown stops waiting for workers still in callouts.
        self.give_up = False


def _owner_word(waiters_word: Any) -> memoryview:
    """The block's owner word, for plain loads (the waiters word's block, by the layout's offsets)."""
    if sys.byteorder != "little":  # vmown_waiters_word points at the low half: its offset differs
        raise ImportError("vmown reads the owner word in place only on little-endian machines")
    layout = ffi.new("vmown_layout *")
    lib.vmown_layout_read(layout)
    block = int(ffi.cast("uintptr_t", waiters_word)) - layout.waiters_and_hb_asleep
    return memoryview(ffi.buffer(ffi.cast("char *", block + layout.owner_word), 8)).cast("Q")


# ---- the current process, and the ownership guard ----

# The guard.  Every entry point that changes the run's state (spawn, the
# primitives' set/release/put/get, cancel) first checks that the calling
# thread owns the VM: a process's code runs on a thread that owns it, but a
# Python function run as a callout (vmown.callout(f)), a thread it starts
# with the process's context copied, or a cffi callback in a threaded call
# run in the process's context without the VM, while a worker may own it and
# change the same state.  The check is one load of the owner word in place
# and a compare with the thread's slot, in C (native/pyext/callout_ext.c:
# guard_owns; each serving thread binds its slot there, _bind_here).  A lazy callout (C
# wrappers) keeps the owner word, but runs no Python; a cffi callback inside
# one owns the VM again first (_callback.py).


def _current(what: str) -> Process[Any]:
    """The calling process; NotOwnerError if the calling thread does not own its VM."""
    proc = _process_var.get(None)
    if proc is None:
        raise RuntimeError(
            f"{what} must be called from a process started by vmown.run() "
            "(from another thread: vmown.current_token().run_sync(...))"
        )
    if _GUARD and not _owns():
        raise _not_owner(what)
    return proc


def _not_owner(what: str) -> NotOwnerError:
    return NotOwnerError(
        f"{what} was called from a thread that does not own the VM (a function run as a callout, "
        "a callback from C, or another thread): its state belongs to the thread that owns the VM; "
        "call it through token.run_sync(...) with token = vmown.current_token() taken in a process"
    )


def current_process() -> Process[Any]:
    """The :class:`Process` that calls it (must be called from a process of vmown.run())."""
    proc = _process_var.get(None)
    if proc is None:
        raise RuntimeError("vmown.current_process() must be called from a process started by vmown.run()")
    return proc


def spawn(fn: Callable[[*Ts], Coroutine[Any, Any, T]], *args: *Ts, bound: bool = False) -> Process[T]:
    """Start ``fn(*args)`` (an ``async def`` function) as a new process; return its handle.

    Must be called from a process.  The new process runs in a copy of the
    caller's contextvars context and is runnable at once; ``await`` the
    returned :class:`Process` for its result.

    With ``bound=True`` every step of the process runs on the OS thread of
    its first step (Go's LockOSThread): for objects tied to a thread
    (sqlite3 connections, GUI toolkits, OpenGL contexts, thread-local C
    state).  That thread then serves only its bound processes until they
    end (see "Bound processes" in the scheduler's notes).
    """
    parent = _current("vmown.spawn()")
    proc = _spawn(parent._rt, fn, args, contextvars.copy_context())
    if bound:
        proc._bound = True
    return proc


def _spawn(rt: _Runtime, fn: Callable[..., Any], args: tuple[Any, ...], ctx: contextvars.Context) -> Process[Any]:
    if not callable(fn):
        hint = ""
        if _coroutine_like(fn):
            fn.close()  # it will never run: spare the user a "never awaited" warning
            hint = " (pass the function and its arguments: spawn(fn, *args))"
        raise TypeError(f"expected an async function, not {type(fn).__name__}{hint}")
    coro = fn(*args)
    if type(coro) is not types.CoroutineType and not _coroutine_like(coro):
        raise TypeError(
            f"{_name(fn)}() returned a {type(coro).__name__}, not a coroutine: define it with async def"
        )
    proc = Process(rt, coro, ctx)
    ctx.run(_process_var.set, proc)
    rt.processes[proc] = None
    rt.spawned += 1
    rt.run_queue.append(proc)
    if not rt.published_runnable:
        _publish(rt)
    else:
        rt.work_words[_WORK_RUNNABLE] = len(rt.run_queue)  # how many servers the heartbeat may queue
    return proc


def _coroutine_like(obj: object) -> bool:
    """A coroutine, or a generator made by a @types.coroutine function (vmown.sleep, for one)."""
    if inspect.iscoroutine(obj):
        return True
    return isinstance(obj, types.GeneratorType) and bool(obj.gi_code.co_flags & inspect.CO_ITERABLE_COROUTINE)


def _name(fn: Any) -> str:
    return getattr(fn, "__qualname__", None) or repr(fn)


# ---- traps: what a step yields ----


@types.coroutine
def checkpoint() -> Generator[None, None, None]:
    """Let the other runnable processes run, then continue (a scheduling point)."""
    yield None


@types.coroutine
def sleep(seconds: float) -> Generator[object, None, None]:
    """Suspend the calling process for ``seconds`` (at least); ``sleep(0)`` is a checkpoint.

    A negative duration is a checkpoint too, as in asyncio; ``sleep(math.inf)``
    suspends the process for good (until the run closes it); nan and
    non-numbers raise ValueError, with the message of every ``timeout=``.
    """
    if isinstance(seconds, (int, float)) and not isinstance(seconds, bool) and seconds < 0:
        seconds = 0
    ns = _timeout_ns(seconds, "seconds")
    if ns == 0:
        yield None
    elif ns < 0:
        yield _SUSPEND  # nothing will wake it
    else:
        yield _now() + ns


@types.coroutine
def _suspend() -> Generator[object, Any, Any]:
    """Suspend until a primitive wakes the process; returns what the waker sent."""
    return (yield _SUSPEND)


# P5. A step wakes a process, then makes a blocking callout.
#       P: Event.set() wakes Q     P: callout: disown ... blocks
#     The published words may say "nothing runnable" (P's step started with
#     an empty run queue).  _wake publishes "runnable" before the callout can
#     release the VM, so the heartbeat sees Q waiting and activates a worker;
#     unpublished, Q would wait for P's callout to come back.
def _wake(proc: Process[Any], value: Any = None) -> None:
    """Make a WAITING process runnable; the next step receives ``value``.  Owner only."""
    if proc._state is not _WAITING:
        _broken(f"woke {proc!r}, which is not waiting")
    proc._state = _RUNNABLE
    proc._value = value
    proc._waiting_on = None
    rt = proc._rt
    rt.run_queue.append(proc)
    if not rt.published_runnable:
        _publish(rt)


def _broken(what: str) -> None:
    raise RuntimeError(f"vmown: broken scheduler invariant: {what}")


def _trap(rt: _Runtime, proc: Process[Any], trap: Any) -> None:
    """Handle what a step yielded, other than None (a checkpoint)."""
    proc._value = None
    if proc._cancel_pending and (trap is _SUSPEND or type(trap) is int or type(trap) is Process):
        if _cancellable(proc, trap):
            _throw_cancelled(rt, proc)
        else:
            proc._state = _WAITING
    elif trap is _SUSPEND:
        proc._state = _WAITING
    elif type(trap) is int:
        proc._state = _SLEEPING
        proc._timer = entry = [trap, next(rt.timer_seq), proc]
        heapq.heappush(rt.timers, entry)
    elif type(trap) is Process:
        _join(rt, proc, trap)
    else:
        _throw_later(
            rt,
            proc,
            TypeError(
                f"a vmown process awaited {trap!r}, which vmown does not know: await vmown.sleep, "
                "vmown.checkpoint, a Process, or the primitives of vmown (not asyncio or trio objects)"
            ),
        )


def _join(rt: _Runtime, proc: Process[Any], target: Process[Any]) -> None:
    if target is proc:
        _throw_later(rt, proc, RuntimeError(f"{proc!r} awaits itself"))
    elif target._rt is not rt:
        _throw_later(rt, proc, RuntimeError(f"{target!r} belongs to another vmown.run()"))
    elif target._state is _DONE:
        proc._state = _RUNNABLE
        rt.run_queue.append(proc)
    else:
        proc._state = _WAITING
        proc._waiting_on = target
        target._retrieved = True
        if target._joiners is None:
            target._joiners = [proc]
        else:
            target._joiners.append(proc)


def _throw_later(rt: _Runtime, proc: Process[Any], exc: BaseException) -> None:
    proc._resume = partial(_throw_into, proc)
    proc._value = exc
    proc._state = _RUNNABLE
    rt.run_queue.append(proc)


def _cancellable(proc: Process[Any], trap: Any) -> bool:
    """Whether a step that yielded ``trap`` with a cancellation pending must get Cancelled now.

    A suspension registered with a primitive is taken out of it first; the
    join of a task group (``_uncancellable``) waits on regardless.
    """
    if trap is _SUSPEND:
        waiting_on = proc._waiting_on
        if waiting_on is not None:
            if getattr(waiting_on, "_uncancellable", False):
                return False
            waiting_on._forget(proc)  # type: ignore[attr-defined]
            proc._waiting_on = None
    return True


def _throw_cancelled(rt: _Runtime, proc: Process[Any]) -> None:
    """Make ``proc`` runnable with Cancelled to raise at the await it stopped at."""
    _throw_later(rt, proc, _Cancelled(f"{proc!r} is in a cancelled scope"))
    if not rt.published_runnable:
        _publish(rt)


def _throw_into(proc: Process[Any], exc: BaseException) -> Any:
    proc._resume = proc._coro.send
    return proc._coro.throw(exc)


def _finish(rt: _Runtime, proc: Process[Any], exc: BaseException) -> None:
    """The step ended the process: ``exc`` is StopIteration (returned) or what it raised."""
    if isinstance(exc, StopIteration):
        proc._result = exc.value
    elif isinstance(exc, _Cancelled):
        # Cancelled by Process.cancel(), with its task group, or by a scope
        # whose __exit__ an asynchronous Cancelled pre-empted (_cancel.py,
        # race K9): its awaiters get ProcessCancelled, a plain failure of the
        # awaited process, and the run goes on.
        proc._cancelled = True
        proc._retrieved = True
        failure = _ProcessCancelled(f"<vmown.Process {proc.name}> was cancelled")
        failure.__cause__ = exc
        proc._exception = failure
    else:
        proc._exception = exc
    proc._state = _DONE
    proc._resume = proc._ctx_run = None  # break the cycle process -> context -> process
    del rt.processes[proc]
    if proc._bound is not None and proc._bound is not True:
        proc._bound.bound_count -= 1
    joiners, proc._joiners = proc._joiners, None
    for joiner in joiners or ():
        _wake(joiner)
    if proc._group is not None:
        proc._group._child_done(proc)
    if proc._exception is not None:
        if not isinstance(proc._exception, Exception):  # KeyboardInterrupt, SystemExit...
            _halt(rt, proc._exception)
        elif not proc._retrieved and proc is not rt.main:
            rt.unretrieved.append(proc)
    if proc is rt.main:
        _halt(rt, None)


# P4. The main process finishes on a worker while the run thread is
#       (a) parked: the worker unparks it (vmown_unpark by slot); it owns the
#           VM once the worker has left the loop and disowned;
#       (b) in a callout: it comes back, finishes its step, sees `halt`;
#       (c) queued for the VM: the worker leaves the loop and disowns to it.
#     The worker sets `halt` while owning and every thread reads it while
#     owning, or after vmown_park/vmown_own returned: both orderings go
#     through the owner word or the slot's semaphore.
def _halt(rt: _Runtime, fatal: BaseException | None) -> None:
    """Owner: stop the run (``fatal``, if given, is what run() raises)."""
    if fatal is not None and rt.fatal is None:
        rt.fatal = fatal
    if rt.halt:
        return
    rt.halt = True
    _publish(rt)
    lib.vmown_unpark(rt.cb, rt.run_slot)  # if the run thread is parked; else a no-op
    _wake_poller(rt)  # if a thread waits in epoll (N4)
    for thread in rt.bound_threads:  # threads waiting for their bound processes
        thread.wake.release()


# ---- the loop ----


def _publish(rt: _Runtime) -> None:
    """Tell the heartbeat what work waits if the VM is left unowned.  Owner only."""
    if rt.halt:
        runnable, timer_ns = 0, 0
    else:
        runnable = len(rt.run_queue)
        timer_ns = rt.timers[0][0] if rt.timers else 0
    lib.vmown_set_work(rt.cb, runnable, timer_ns)
    rt.published_runnable = runnable > 0
    rt.published_timer_ns = timer_ns


def _release_timers(rt: _Runtime) -> None:
    """Wake the sleepers that are due and expire the cancel scopes' deadlines that passed.

    A due sleeper waits behind at most _TIMER_AHEAD processes of the run
    queue (in deadline order among sleepers): behind a short queue it keeps
    its FIFO place, but behind a wave of new processes (a burst of spawns
    that each block in a callout) it would wait for all of them
    (docs/design-log.md, "Burst latency").
    """
    timers, now = rt.timers, _now()
    due = []
    while timers and timers[0][0] <= now:
        target = heapq.heappop(timers)[2]
        if target is None:  # dropped: a cancelled sleep, a scope left early
            rt.stale_timers -= 1
        elif type(target) is Process:
            if target._state is not _SLEEPING:
                _broken(f"{target!r} was in the timer heap")
            target._timer = None
            target._state = _RUNNABLE
            due.append(target)
        else:
            target._expire()  # a CancelScope's deadline (_cancel.py, race K3)
    while timers and timers[0][2] is None:  # keep the head live (_drop_timer)
        heapq.heappop(timers)
        rt.stale_timers -= 1
    if due:
        run_queue = rt.run_queue
        if len(run_queue) <= _TIMER_AHEAD:
            run_queue.extend(due)
        else:
            for i, proc in enumerate(due):
                run_queue.insert(_TIMER_AHEAD + i, proc)


def _drop_timer(rt: _Runtime, entry: list[Any]) -> None:
    """Drop a timer entry (lazy deletion); keep the heap's head live and the heap mostly live."""
    entry[2] = None
    rt.stale_timers += 1
    timers = rt.timers
    while timers and timers[0][2] is None:
        heapq.heappop(timers)
        rt.stale_timers -= 1
    if rt.stale_timers > 1024 and rt.stale_timers * 2 > len(timers):
        timers[:] = [entry for entry in timers if entry[2] is not None]
        heapq.heapify(timers)
        rt.stale_timers = 0


# P1. A callout comes back while the heartbeat activates a worker.
#       T: disown (callout)      HB: tick k sees W unowned, tick k+1 sees W
#       T: own: CAS W -> T       HB: activate: CAS W -> worker
#     Both CAS the same word from the same value: exactly one wins.  If T
#     wins, the heartbeat's CAS fails and nothing happens.  If the worker
#     wins, T queues (the own slow path) and the worker, at its next
#     scheduling point here, sees the waiter count non-zero and parks, handing
#     T the VM.  T finishes its step and carries on as a worker; the other
#     one is now the parked spare.
# P10. The heartbeat queues a server while the owner parks or ends.
#       HB: queue S (idle stack -> wait queue)   O: park: idle stack, release
#     Both under the block's lock: if O parks first, its release finds S
#     queued, or the heartbeat finds the VM unowned and grants S at once.  S,
#     owning, runs one step here (`first`), or none if the run queue emptied
#     meanwhile, and parks: a server whose run queue emptied costs one
#     wake-up.  A server granted while a callout is out runs steps on its
#     thread; the callout, back, queues ahead of servers (they queue at the
#     lowest priority) and is handed the VM at the next scheduling point, as
#     in P1.
# P11. A sleeper falls due while threads wait for the VM.
#       T1..Tn: back from callouts, queued     O: finishes a step here
#       timer of S due                         O: waiters > 0: park, hand on
#     In a burst every thread back from its callout finds others queued and
#     hands on at once; nobody would look at the timers until the queue
#     drained.  So the loop goes on while a timer is due (the condition
#     below), and a due sleeper waits behind at most _TIMER_AHEAD runnable
#     processes (_release_timers): O runs one more step, then hands over; a
#     waiter waits one step longer, S does not wait for the whole queue.  Starts in a
#     burst are kept moving by the core (native/idle.c, "Relays", B1-B3;
#     native/grants.c, vmown__callout_hand_over, D1-D2).
def _serve(rt: _Runtime, first: bool = False) -> None:
    """Run steps until the run halts, a thread waits for the VM, or nothing is runnable.

    With ``first``, run one step even if threads wait: the caller was given
    the VM from the idle stack because the run queue stalled.

    The caller owns the VM and still owns it on return.  This is the hot
    path: everything it touches is bound to a local first.  It calls only C
    functions and this module's functions (the SIGINT handler relies on that,
    P6), and it is the boundary between scheduler code and user code.
    """
    cb = rt.cb
    run_queue = rt.run_queue
    popleft = run_queue.popleft
    append = run_queue.append
    timers = rt.timers
    # The waiter count read in place (vmown_waiters_word): a plain load, no
    # cffi call, so the loop never drops and retakes the GIL to look, which
    # would reset CPython's switch timer and starve a callout coming back.
    waiters_word = rt.waiters_word
    work_words = rt.work_words
    now = _now
    here = _here.state
    countdown = _CLOCK_EVERY
    yield_at = now() + _GIL_YIELD_NS
    # A due sleeper runs before a waiting thread is handed the VM (P11).
    while not rt.halt and (first or not waiters_word[0] or (timers and timers[0][0] <= now())):
        first = False
        countdown -= 1
        if timers or not countdown:  # read the clock: each step if timers wait
            if not countdown:
                countdown = _CLOCK_EVERY
                io = rt.io
                if io is not None and io.waiting:  # descriptors, every _CLOCK_EVERY steps
                    _poll_now(rt, io)
            t = now()
            if t >= yield_at:
                _yield_gil(rt)
                yield_at = t + _GIL_YIELD_NS
            if timers and timers[0][0] <= t:
                _release_timers(rt)
        if not run_queue:
            io = rt.io
            if io is None or not io.waiting:
                return
            _poll_now(rt, io)  # before going idle: what came during the last steps
            if not run_queue:
                return
        proc = popleft()
        if proc._bound is not None and proc._bound is not here:
            if _to_bound_thread(rt, proc, here):
                return  # this thread is bound now: _work switches to _serve_bound
            continue
        next_timer_ns = timers[0][0] if timers else 0
        if bool(run_queue) is not rt.published_runnable or next_timer_ns != rt.published_timer_ns:
            _publish(rt)
        if proc._state is not _RUNNABLE:
            _broken(f"{proc!r} was in the run queue")
        proc._state = _RUNNING
        proc._thread = here  # where a canceller finds it while it is in a callout
        rt.running += 1
        work_words[_WORK_TAKEN] = rt.steps = rt.steps + 1  # the heartbeat sees the run queue move
        try:
            trap = proc._ctx_run(proc._resume, proc._value)  # type: ignore[misc]
        except BaseException as exc:  # noqa: BLE001 - the process's outcome
            rt.running -= 1
            _finish(rt, proc, exc)
            continue
        rt.running -= 1
        if trap is None:  # checkpoint
            if proc._cancel_pending:
                _throw_cancelled(rt, proc)
                continue
            proc._state = _RUNNABLE
            proc._value = None
            append(proc)
        else:
            _trap(rt, proc, trap)


def _yield_gil(rt: _Runtime) -> None:
    """If a thread of the run is out of the VM, let it take the GIL (see "The GIL")."""
    io = rt.io
    polling = 1 if io is not None and io.polling else 0  # a worker waiting in epoll needs no GIL
    if _pool_stats(rt).live - _idle_workers(rt) - polling > 0:  # a worker neither parked nor this one
        time.sleep(0)  # a syscall that blocks briefly (timer slack), the GIL released


def _work(rt: _Runtime, me: _ThreadState, given: bool = False) -> None:
    """Serve and park, until the run halts or (a worker) this thread retires.

    The caller owns the VM.  The run thread returns owning it; a worker
    returns not owning it.
    """
    while not rt.halt:
        if me.bound_count:
            _serve_bound(rt, me)
            continue
        _serve(rt, given)
        if rt.halt:
            break
        if me.bound_count:
            continue
        if not _park(rt, me):
            return
        given = True
    if not me.run_thread:
        _release(rt, me)


# Bound processes.  A process spawned with bound=True (main, with
# run(bind_main=True)) runs every step on one thread.  The rule: a thread
# with live bound processes serves only them, so none of them waits for a
# step of another process, which could block in a callout for any time.
#   - Binding: the first thread that pops a bound=True process from the run
#     queue binds it to itself (_to_bound_thread), queues it on its own
#     bound_queue, and leaves _serve; _work runs _serve_bound from then on.
#   - Becoming runnable: a bound process goes to the run queue like any
#     other (_wake, timers, joins); the owner that pops it moves it to its
#     thread's bound_queue and releases the thread's `wake` (T6 below).
#   - Waiting: a bound thread with nothing runnable of its own gives the VM
#     up (to the head waiter, or unowned: the heartbeat activates a worker
#     for the others' work) and sleeps on `wake`, GIL released; woken, it
#     queues for the VM like a returning callout and runs its process at the
#     owner's next scheduling point.
#   - When the last of them ends, the thread serves everybody again.
# T6. A bound process is queued on its thread as the thread goes to sleep.
#       O: bound_queue.append(P); wake.release()
#       B: bound_queue empty -> release the VM -> wake.acquire()
#     O appends while owning the VM, B looks while owning it, so B either
#     sees P before it gives the VM up, or sleeps after O's release, which
#     the semaphore keeps: acquire returns at once.  A release B does not
#     need (it had seen P) only makes it look once more.  The widen switch
#     (_debug_set_widen_ns) holds B between the two (_widen), so a test
#     makes O act there.
def _to_bound_thread(rt: _Runtime, proc: Process[Any], here: _ThreadState) -> bool:
    """Owner: ``proc`` is bound and not to ``here``; True if it was bound to ``here`` just now."""
    rt.bound_runnable += 1
    if proc._bound is True:  # its first step: bind it to this thread
        proc._bound = here
        here.bound_count += 1
        rt.bound_threads[here] = None
        here.bound_queue.append(proc)
        return True
    thread = proc._bound
    thread.bound_queue.append(proc)
    thread.wake.release()  # T6
    return False


def _serve_bound(rt: _Runtime, me: _ThreadState) -> None:
    """Run this thread's bound processes; wait for them with the VM given up.

    The caller owns the VM and owns it on return: when the run halts or the
    thread has no bound process left.
    """
    queue = me.bound_queue
    waiters_word = rt.waiters_word
    while not rt.halt and me.bound_count:
        if rt.timers and rt.timers[0][0] <= _now():
            _release_timers(rt)
        if not queue:
            _release(rt, me)  # T6: looked while owning
            if _widen_ns:
                _widen(me)  # debug: T6's window held open
            me.wake.acquire()
            _own(rt, me)
            continue
        proc = queue.popleft()
        rt.bound_runnable -= 1
        _step(rt, proc, me)
        if waiters_word[0] and not rt.halt:  # a callout came back: let it in, then queue
            _release(rt, me)
            _own(rt, me)


def _step(rt: _Runtime, proc: Process[Any], here: _ThreadState) -> None:
    """Run one step of ``proc`` and handle what it yielded (_serve's body, for bound threads)."""
    if proc._state is not _RUNNABLE:
        _broken(f"{proc!r} was in a bound queue")
    _publish(rt)
    proc._state = _RUNNING
    proc._thread = here
    rt.running += 1
    rt.work_words[_WORK_TAKEN] = rt.steps = rt.steps + 1
    try:
        trap = proc._ctx_run(proc._resume, proc._value)  # type: ignore[misc]
    except BaseException as exc:  # noqa: BLE001 - the process's outcome
        rt.running -= 1
        _finish(rt, proc, exc)
        return
    rt.running -= 1
    if trap is None:  # checkpoint
        if proc._cancel_pending:
            _throw_cancelled(rt, proc)
            return
        proc._state = _RUNNABLE
        proc._value = None
        rt.run_queue.append(proc)
    else:
        _trap(rt, proc, trap)


# P2. A worker parks while a thread queues for the VM.
#       W: park: under the lock, join the idle stack, hand the VM to the head
#       T: own: under the lock, CAS, else enqueue
#     Both take the block's lock, so T is either in the queue when W parks (W
#     hands it the VM) or finds the VM unowned afterwards (T's CAS wins).  A
#     worker is never both unfindable and unowning.
# P9. Deadlock detection and a callout about to come back.
#       W: nothing runnable, no timer: park    P: in a callout, will wake Q
#     W declares a deadlock only if no step is in flight (`running` == 0): a
#     step blocked in a callout counts until it ends, on its own thread with
#     the VM owned, so whatever it will wake is never declared stuck.
#     Nothing outside the VM can wake a process (primitives refuse other
#     threads), so the check is exact -- until a RunToken exists: then a
#     thread may call in at any time, and there is no check (_token.py).
def _park(rt: _Runtime, me: _ThreadState) -> bool:
    """Park until there is work; True once owning the VM, False for a worker that leaves."""
    io = rt.io
    if io is not None and io.waiting:
        if not io.polling:
            return _idle_in_poll(rt, me, io)
    elif (
        not rt.run_queue
        and len(rt.timers) == rt.stale_timers
        and rt.running == 0
        and not rt.token._handed_out
        and rt.bound_runnable == 0
    ):
        _halt(rt, _deadlock(rt))
        return True
    timeout_ns, watched_deadline_ns = _park_timeout(rt, me)
    _publish(rt)
    rt.parks += 1
    rc = _park_c(rt.cb, me.slot, timeout_ns)
    if rc != 1:  # not activated: unparked, timed out or interrupted; not owning
        if rc not in (0, _ETIMEDOUT, _EINTR):
            raise vm_error(rt.cb, rc, "park")
        retire = rc == _ETIMEDOUT and not watched_deadline_ns and _surplus(rt)
        if not me.run_thread and (rt.halt or retire):
            return False
        _own(rt, me)
    if watched_deadline_ns and rt.watched_deadline_ns == watched_deadline_ns:
        rt.watched_deadline_ns = 0
    _ensure_spare(rt)
    return True


# N1. Two threads go idle while processes wait on descriptors.
#       A: nothing to run: polling = True, release, epoll_wait
#       B (took the VM meanwhile, a callout back): nothing to run
#     `polling` is set and cleared by A while it owns the VM, so B reads it
#     set and parks in the core as before (with its timer, P8); A gets every
#     edge.  One thread waits in epoll; the idle stack keeps the spares the
#     heartbeat activates.
# N2. A callout comes back while the idle owner waits in epoll.
#       A: release (VM unowned), epoll_wait    T: callout returns: own
#     A released the VM before it waits, so T's CAS wins at once (the fast
#     path of every callout): nothing has to wake A, and the core's fast
#     paths are untouched.  T serves; when it runs out of work it parks (N1).
# N3. The idle poller collects edges while another thread owns the VM.
#       A: epoll_wait returns edges        T: owns, runs steps
#       A: own: queues behind T            T: next scheduling point: waiters,
#                                             park (hands A the VM, as in P1)
#     A dispatches the edges only once it owns the VM.  Each edge goes to one
#     epoll_wait (edge-triggered), so T's own polls never see these twice.
# N4. The run halts while the poller waits: main ends on another thread
#     (_halt), a worker fails outside a step (_crash), or Ctrl-C lands in the
#     wait (_on_sigint).  Each sets `halt` and then writes the poller's
#     eventfd (_wake_poller); the wait returns, a worker leaves without the
#     VM, the run thread owns it and shuts down.
def _idle_in_poll(rt: _Runtime, me: _ThreadState, io: Any) -> bool:
    """Nothing to run, processes wait on descriptors: release the VM and wait in epoll.

    Returns as _park does: True owning the VM, False for a worker that leaves.
    """
    timeout_ns, watched_deadline_ns = _park_timeout(rt, me)
    if not watched_deadline_ns and rt.timers:
        timeout_ns = max(0, rt.timers[0][0] - _now())  # another thread watches it too: harmless (P8)
    elif not watched_deadline_ns:
        timeout_ns = -1  # the poller does not retire
    io.polling = True
    io.idle_waits += 1
    _release(rt, me)
    events = io.poller.wait(-1 if timeout_ns < 0 else timeout_ns / 1e9)
    if rt.halt and not me.run_thread:
        return False  # N4: halt was set before the eventfd's write
    _own(rt, me)
    io.polling = False
    if watched_deadline_ns and rt.watched_deadline_ns == watched_deadline_ns:
        rt.watched_deadline_ns = 0
    if events:
        _dispatch(rt, io, events)
    return True


def _wake_poller(rt: _Runtime) -> None:
    """Make a thread waiting in epoll return (N4): from any thread, and from the SIGINT handler."""
    io = rt.io
    if io is not None:
        io.poller.wake()


# P8. The timer watcher and the heartbeat both act on a due timer.
#       W (watcher): parked with the earliest deadline as its timeout
#       HB: the timer is due and the VM unowned a whole tick: activate
#     Only one worker watches a deadline (rt.watched_deadline_ns).  It wakes
#     and owns; if the heartbeat activated another worker first, the watcher
#     queues, is handed the VM at a scheduling point, finds nothing and parks
#     again.
def _park_timeout(rt: _Runtime, me: _ThreadState) -> tuple[int, int]:
    """(timeout_ns for vmown_park, the timer deadline this thread watches or 0)."""
    if rt.timers:
        deadline = rt.timers[0][0]
        if rt.watched_deadline_ns == 0 or deadline < rt.watched_deadline_ns:
            rt.watched_deadline_ns = deadline
            return max(0, deadline - _now()), deadline
    return (-1 if me.run_thread else rt.idle_timeout_ns), 0


# P3. A surplus worker's idle timeout and an activation.
#       W: park times out            HB: activate W (under the lock)
#     The core settles it under the lock: if the grant came first, vmown_park
#     returns 1 and W owns the VM; so a worker retires only when it really was
#     not given the VM.  Two workers retiring at once: each decides after it
#     left the idle stack, so at most one of them reads the other as parked;
#     at least one stays.
def _surplus(rt: _Runtime) -> bool:
    """Whether another worker is parked, so that this one may retire (P3)."""
    return _idle_workers(rt) > 0


def _idle_workers(rt: _Runtime) -> int:
    """Workers on the idle stack now (servers queued by the heartbeat are off it)."""
    out = ffi.new("vmown_heartbeat_stats *")
    lib.vmown_heartbeat_read(rt.cb, out)
    return int(out.idle_workers)


def _deadlock(rt: _Runtime) -> RuntimeError:
    waiting = [f"{proc.name} on {proc._waiting_on!r}" for proc in list(rt.processes)[:10]]
    more = f" and {len(rt.processes) - 10} more" if len(rt.processes) > 10 else ""
    return RuntimeError(
        "deadlock: every process waits and nothing can wake any of them "
        f"(no step running, no timer): {', '.join(waiting)}{more}"
    )


def _own(rt: _Runtime, me: _ThreadState) -> None:
    """Take the VM, waiting as long as it takes; signal handlers run meanwhile."""
    rc = _own_wait(rt.cb, me.slot, -1, _INTERRUPTIBLE)
    while rc:
        if rc != _EINTR:
            raise vm_error(rt.cb, rc, "own")
        rc = _own_wait(rt.cb, me.slot, -1, _INTERRUPTIBLE)


def _release(rt: _Runtime, me: _ThreadState) -> None:
    """Disown for the scheduler's own reasons (not a callout)."""
    _publish(rt)
    rt.releases += 1
    check(_disown(rt.cb, me.slot, 0), "disown")


# ---- workers ----


def _ensure_spare(rt: _Runtime) -> None:
    """Owner: make sure enough workers are parked or on their way (see "Spares").

    Called by a thread that has just come back from the idle stack (it used
    up a parked worker).  It only asks: the pool (native/workers.c) counts
    and its spawner thread starts the workers, off the VM, each parked at
    once without running any Python.
    """
    if rt.halt:
        return
    shortfalls = lib.vmown_workers_want(rt.cb, min(len(rt.run_queue), _SPARES) or 1)
    if shortfalls != rt.pool_shortfalls:
        _report_pool(rt, check(shortfalls, "asking for workers"))


def _report_pool(rt: _Runtime, shortfalls: int) -> None:
    """The pool met max_threads or the OS refused a thread: say so, once each."""
    rt.pool_shortfalls = shortfalls
    pool = _pool_stats(rt)
    if pool.cap_hits and not rt.cap_warned:
        rt.cap_warned = True
        _warn_cap(rt)
    if pool.failures > rt.failures_warned:
        rt.failures_warned = pool.failures
        reason = error(pool.last_error, "starting a worker thread") if pool.last_error else "unknown"
        warnings.warn(
            f"vmown: could not start a worker thread ({pool.failures} refused so far): {reason}",
            RuntimeWarning,
            stacklevel=3,
        )


def _pool_stats(rt: _Runtime) -> Any:
    out = ffi.new("vmown_workers_stats *")
    lib.vmown_workers_read(rt.cb, out)
    return out


def _warn_cap(rt: _Runtime) -> None:
    figures = _stats(rt)
    warnings.warn(
        f"vmown: all {rt.max_threads} threads of vmown.run() are in use (max_threads) and no spare "
        "can be started; processes wait until a callout comes back (heartbeat starved "
        f"{figures['starved']} times so far): raise max_threads or block in fewer callouts at once; "
        f"stats: {figures}",
        RuntimeWarning,
        stacklevel=4,
    )


@ffi.def_extern()  # type: ignore[misc]
def vmown_py_worker(handle: Any, slot: int) -> None:
    """A pooled worker (native/workers.c), given the VM for the first time.

    The pool's one entry into Python, for both front ends: ``handle`` holds
    the front end's worker body, a callable of the slot (_run_worker for
    vmown.run, the loop's for vmown.aio.EventLoop).  It runs on the worker's
    own thread, owning the VM, and returns without it; the pool gives the
    slot back and the thread exits.
    """
    ffi.from_handle(handle)(slot)


def _run_worker(rt: _Runtime, slot: int) -> None:
    """vmown.run's worker: serve and park until the run halts or this worker retires."""
    me = _ThreadState(rt.cb, slot, run_thread=False)
    rt.worker_idents[slot] = threading.get_ident()
    _bind_here(rt, me)
    try:
        _ensure_spare(rt)
        _work(rt, me, given=True)
    except BaseException as exc:  # noqa: BLE001 - a scheduler bug: fail loudly, never hang
        _crash(rt, me, exc)
    finally:
        rt.worker_idents.pop(slot, None)
        _bind_here(rt, None)
        _forget_dummy_thread()
    if rt.forked:
        _end_forked_child(rt)


def _forget_dummy_thread() -> None:
    """Unlist the threading.Thread that threading.current_thread() made up for this thread.

    A thread started in C has no threading.Thread; the first current_thread()
    on it (in a process, say) registers a _DummyThread, which threading keeps
    listed in enumerate() after the thread is gone (CPython 3.11 never
    removes one).  The thread is about to exit: remove it, as threading does
    for its own threads when they end.
    """
    active = getattr(threading, "_active", None)
    lock = getattr(threading, "_active_limbo_lock", None)
    if active is None or lock is None:
        return
    with lock:
        if isinstance(active.get(threading.get_ident()), threading._DummyThread):
            del active[threading.get_ident()]


def _crash(rt: _Runtime, me: _ThreadState | None, exc: BaseException) -> None:
    """A worker failed outside any step: halt the run with its exception."""
    if rt.fatal is None:
        rt.fatal = exc
    rt.halt = True
    if me is not None and lib.vmown_owner(rt.cb) == me.slot:
        rt.releases += 1
        _disown(rt.cb, me.slot, 0)
    lib.vmown_unpark(rt.cb, rt.run_slot)
    _wake_poller(rt)  # N4


def _enter(rt: _Runtime, run_thread: bool) -> _ThreadState:
    """Register the calling thread with the run's control block, for Python and C callouts."""
    me = _ThreadState(rt.cb, rt.ownership.slot, run_thread)
    check(lib.vmown_bind_thread(rt.cb, me.slot), "binding a worker thread")
    _bind_here(rt, me)
    return me


def _leave() -> None:
    lib.vmown_bind_thread(ffi.NULL, 0)
    _bind_here(None, None)


def _bind_here(rt: _Runtime | None, me: _ThreadState | None) -> None:
    """Record (or forget) the run this thread serves, for Python and for the guard."""
    _here.state = me
    if rt is None or me is None:
        _guard_bind(0, 0)
    else:
        _guard_bind(rt.owner_address, me.slot)


# ---- run ----


def run(
    main: Callable[[*Ts], Coroutine[Any, Any, T]],
    *args: *Ts,
    hz: int = 1000,
    max_threads: int = DEFAULT_MAX_THREADS,
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT_S,
    monitor: str | os.PathLike[str] | None = None,
    callout_times: bool = False,
    slow_step: float | None = None,
    slow_callout: float | None = None,
    bind_main: bool = False,
) -> T:
    """Run ``main(*args)`` as the first process of a new VM; return its result.

    The calling thread owns the VM and runs the scheduler; a heartbeat of
    ``hz`` ticks per second watches callouts, and hands the VM to a spare
    worker thread when one blocks for a whole tick while other processes
    have work.  At most ``max_threads`` threads (the caller's included) serve
    the VM; a worker parked for ``idle_timeout`` seconds exits, one spare
    stays.  When ``main`` finishes, the processes still alive are closed
    (their ``finally`` blocks run), the threads are joined and the result is
    returned, or main's exception is raised with its traceback.

    Ctrl-C (on the main thread) raises KeyboardInterrupt promptly, also while
    a callout blocks, once the callouts still in flight have come back; a
    second Ctrl-C stops waiting for them (the threads left are named in a
    RuntimeWarning and joined later).  Shutdown itself never raises.

    A child process forked inside the run cannot go on with it: the run
    stops at the child's next scheduling point and raises
    :class:`ForkedRunError` in the child (end the child with ``os._exit``);
    the parent's run is unaffected.

    ``monitor`` (or the environment variable ``VMOWN_MONITOR``) is a path
    for a new arena file holding the run's control block and figures, for
    ``python -m vmown top PATH`` to watch from another process; the file is
    removed when the run ends.  ``callout_times`` times every callout for
    :func:`vmown.callout_stats` (on with ``monitor`` too): two clock reads
    per callout.

    The watchdog (off by default): ``slow_step`` seconds without a
    scheduling point while other work waits gives one
    :class:`vmown.SlowStepWarning` naming the process, function and line it
    is at; a callout out for ``slow_callout`` seconds gives one
    :class:`vmown.SlowCalloutWarning` naming the function, with the Python
    stack that called it.

    With ``bind_main=True`` every step of ``main`` runs on the calling thread
    (a GUI's main thread, say), as ``spawn(..., bound=True)`` does for its
    process; the calling thread then serves only main.
    """
    _check_run_arguments(hz, max_threads, idle_timeout)
    for name, value in (("slow_step", slow_step), ("slow_callout", slow_callout)):
        if value is not None and not (isinstance(value, (int, float)) and value > 0):
            raise ValueError(f"{name} must be a positive number of seconds or None (off), not {value!r}")
    if _here.state is not None:
        raise RuntimeError("vmown.run() cannot run inside vmown.run(); use vmown.spawn() for a new process")
    _join_abandoned()
    if monitor is None:
        monitor = os.environ.get(_monitor.ENV_VAR) or None
    rt = _Runtime(max_threads, idle_timeout, os.fspath(monitor) if monitor is not None else None)
    from ._callout import _set_timing  # here: _callout imports this module

    timing_was = _set_timing(True) if callout_times or rt.monitor is not None else None
    me = _enter(rt, run_thread=True)
    _runs.add(rt)
    try:
        # The handler stays installed until everything is torn down: Ctrl-C
        # during shutdown never raises out of it (_on_sigint).
        watchdog = None
        with _sigint_handler(rt):
            try:
                _own(rt, me)
                rt.run_slot = me.slot
                rt.run_ident = me.ident
                check(lib.vmown_heartbeat_start(rt.cb, hz), "starting the heartbeat")
                if slow_step is not None or slow_callout is not None:
                    watchdog = _watchdog.Watchdog(rt, slow_step, slow_callout)
                    watchdog.start()
                if rt.monitor is not None:
                    rt.monitor.start(partial(_monitor_figures, rt, hz))
                main_ctx = contextvars.copy_context()
                rt.main = _spawn(rt, main, args, main_ctx)
                rt.token = _token._start(rt, main_ctx)
                if bind_main:
                    rt.main._bound = me
                    me.bound_count += 1
                    rt.bound_threads[me] = None
                    rt.run_queue.remove(rt.main)
                    me.bound_queue.append(rt.main)
                    rt.bound_runnable += 1
                check(
                    lib.vmown_workers_start(
                        rt.cb, lib.vmown_py_worker, rt.handle, rt.max_threads - 1, rt.idle_timeout_ns
                    ),
                    "starting the worker pool",
                )
                _ensure_spare(rt)
                _work(rt, me)
            finally:
                if watchdog is not None:
                    watchdog.stop()
                _shutdown(rt, me)
                _leave()
                if timing_was is not None:
                    _set_timing(timing_was)
                if rt.monitor is not None:
                    rt.monitor.stop()
                _close_ownership(rt)
                if rt.monitor is not None:
                    rt.monitor.close(block_freed=rt.ownership._cb is None)
    finally:
        _runs.discard(rt)
    result: T = _outcome(rt)
    return result


def _check_run_arguments(hz: int, max_threads: int, idle_timeout: float) -> None:
    if not isinstance(hz, int) or not 1 <= hz <= 100_000:
        raise ValueError(f"hz must be an int from 1 to 100000, not {hz!r}")
    if not isinstance(max_threads, int) or not 2 <= max_threads <= (1 << 20) - _SLOT_MARGIN:
        raise ValueError(
            f"max_threads must be an int of at least 2 (the caller and a spare), not {max_threads!r}"
        )
    if _timeout_ns(idle_timeout, "idle_timeout") == 0:
        raise ValueError(f"idle_timeout must be a positive number of seconds, not {idle_timeout!r}")


def _outcome(rt: _Runtime) -> Any:
    if rt.forked:
        raise _forked_error(rt)
    if rt.fatal is not None:
        raise rt.fatal
    main = rt.main
    if main is None or main._state is not _DONE:
        _broken("the run ended before its main process")
    if main._exception is not None:  # type: ignore[union-attr]
        raise main._exception  # type: ignore[union-attr]
    return main._result  # type: ignore[union-attr]


def _shutdown(rt: _Runtime, me: _ThreadState) -> None:
    """Run thread: stop the heartbeat and the workers, close what is left.

    Never raises: a failure of one step is reported (RuntimeWarning) and the
    others still run, so that no thread is left behind by an exception; Ctrl-C
    does not raise here either (_on_sigint).  In a forked child it touches
    nothing: the threads it would stop are the parent's.
    """
    rt.halt = True
    if rt.forked:
        return
    for step in (_stop_threads, _close_processes, _close_io, _report_unretrieved):
        try:
            step(rt) if step is not _stop_threads else step(rt, me)
        except Exception as exc:  # noqa: BLE001 - reported; the next steps must still run
            _warn_failed_step(step, exc)


def _close_io(rt: _Runtime) -> None:
    if rt.io is not None:
        rt.io.poller.close()


def _warn_failed_step(step: Callable[..., Any], exc: BaseException) -> None:
    text = "".join(traceback.format_exception(exc))
    warnings.warn(f"vmown.run(): {step.__name__} failed at shutdown:\n{text}", RuntimeWarning, stacklevel=3)


def _stop_threads(rt: _Runtime, me: _ThreadState) -> None:
    """Stop the heartbeat and the pool (each tried even if the other fails), join the workers."""
    if lib.vmown_owner(rt.cb) != me.slot:
        _own(rt, me)
    _publish(rt)
    if rt.token is not None:
        rt.token._finish(me)  # calls from other threads: refused from now on, those in flight let out
    failures = [
        error(rc, what)
        for rc, what in (
            (lib.vmown_heartbeat_stop(rt.cb), "stopping the heartbeat"),
            (lib.vmown_workers_stop(rt.cb), "stopping the worker pool"),
        )
        if rc < 0
    ]
    if _pool_stats(rt).live:
        _wake_poller(rt)
        _release(rt, me)
        _join_workers(rt)
        _own(rt, me)
    if failures:
        raise failures[0]


# P7. The pool starts a worker while the VM is owned, or unowned.
#       S (spawner, C): pthread_create   N (new, C): park_new: under the lock,
#                                          join the idle stack, sleep
#       O (owner): ...                   HB: activate N (under the lock)
#     N never competes for the VM: it is on the idle stack, or not yet
#     findable, like a thread that has not started.  The heartbeat and the
#     owner see it only through the idle stack, under the lock, so an
#     activation finds it parked or not at all.  At shutdown the run thread
#     stops the pool first (no new starts); then the pool unparks every
#     parked worker at each round of joining: a worker that was still
#     starting parks after a round and is woken by the next (it sees the
#     pool's `stop`, or, in Python, `halt`).
def _join_workers(rt: _Runtime) -> None:
    """Wait for every worker to exit; warn about the ones that keep us waiting.

    The pool unparks parked workers at every round of its wait (one that was
    still starting parks after a round and is woken by the next); Ctrl-C is
    seen between rounds of _JOIN_SLICE_NS.  Ctrl-C twice (rt.give_up) stops
    waiting: the workers still in callouts are named in a warning and joined
    later (_join_abandoned).
    """
    warn_at = time.monotonic() + _SHUTDOWN_WARN_S
    while lib.vmown_workers_join(rt.cb, _JOIN_SLICE_NS) > 0:
        if rt.give_up:
            _abandon(rt)
            return
        if warn_at and time.monotonic() > warn_at:
            warn_at = 0
            _warn_slow_workers(rt)


# Runs whose shutdown gave up on workers still in callouts: their threads are
# joined (and the control block freed) at the next vmown.run() or at exit.
_abandoned: list[_Runtime] = []


def _abandon(rt: _Runtime) -> None:
    names = [f"vmown-worker (slot {slot}, thread ident {ident})" for slot, ident in rt.worker_idents.items()]
    live = _pool_stats(rt).live
    names += ["vmown-worker (in C, not in Python)"] * max(0, live - len(names))
    _abandoned.append(rt)
    warnings.warn(
        f"vmown.run(): Ctrl-C at shutdown: not waiting for {live} worker thread(s) still in a callout: "
        f"{', '.join(names)}; they are joined when their callouts return, at the next vmown.run() or "
        "at exit",
        RuntimeWarning,
        stacklevel=4,
    )


def _join_abandoned(timeout_ns: int = 0) -> None:
    """Join the workers of abandoned runs whose callouts came back; free their control blocks."""
    for rt in list(_abandoned):
        if rt.pid != os.getpid():
            _abandoned.remove(rt)  # the parent's threads
        elif lib.vmown_workers_join(rt.cb, timeout_ns) == 0:
            _abandoned.remove(rt)
            _close_ownership(rt)


atexit.register(_join_abandoned, _JOIN_SLICE_NS)


def _warn_slow_workers(rt: _Runtime) -> None:
    frames = _callout_ext.current_frames()  # not sys._current_frames: CPython gh-106883
    stuck = []
    for slot, ident in list(rt.worker_idents.items()):
        frame = frames.get(ident)
        if frame is not None:
            stuck.append(f"worker (slot {slot}):\n{''.join(traceback.format_stack(frame, limit=4))}")
    warnings.warn(
        f"vmown.run() is ending but {len(stuck)} worker(s) are still in a callout; waiting for them "
        "(Ctrl-C gives up waiting for them):\n" + "\n".join(stuck),
        RuntimeWarning,
        stacklevel=3,
    )


def _close_processes(rt: _Runtime) -> None:
    """Close each process still alive: GeneratorExit at its await, its finally blocks run."""
    while rt.processes:
        proc = next(iter(rt.processes))
        del rt.processes[proc]
        if proc._state is _WAITING and proc._waiting_on is not None:
            proc._waiting_on._forget(proc)  # type: ignore[attr-defined]  # nobody may wake it now
        proc._state = _DONE
        ctx_run, proc._ctx_run, proc._resume = proc._ctx_run, None, None
        try:
            ctx_run(proc._coro.close)  # type: ignore[misc]
        except Exception as exc:  # noqa: BLE001 - reported, the others still get closed
            text = "".join(traceback.format_exception(exc))
            warnings.warn(
                f"closing {proc!r} at the end of vmown.run() raised:\n{text}",
                RuntimeWarning,
                stacklevel=3,
            )


def _report_unretrieved(rt: _Runtime) -> None:
    for proc in rt.unretrieved:
        if not proc._retrieved and proc._exception is not None:
            text = "".join(traceback.format_exception(proc._exception))
            warnings.warn(f"{proc!r} raised and nobody awaited it:\n{text}", RuntimeWarning, stacklevel=3)


def _close_ownership(rt: _Runtime) -> None:
    """Free the control block, unless a thread abandoned in a callout still uses it."""
    if rt.forked:
        # The child's private copy of the block, and its copy of the handle:
        # the core forgets the parent's heartbeat and pool there (heartbeat.c,
        # workers.c) instead of joining threads the child does not have.
        rt.ownership._cb = None
        rt.ownership._block.free()
        rt.handle = None
        return
    if _pool_stats(rt).live:
        return  # the block stays mapped, and the pool allocated, for it
    for _ in range(100):
        try:
            rt.ownership.close()
            rt.handle = None  # the pool is freed: nobody can call back with it
            return
        except VmownError:
            time.sleep(0.001)  # a joined thread's slot is freed with its thread-locals
    warnings.warn(
        f"vmown.run() could not close its control block: {rt.ownership!r}", RuntimeWarning, stacklevel=3
    )


# ---- fork ----

# Runs of this process, for the fork hook.
_runs: "weakref.WeakSet[_Runtime]" = weakref.WeakSet()


def _after_fork_in_child() -> None:
    """A child forked inside vmown.run(): stop its copy of the run, touch nothing of the parent's.

    The child is a copy of one thread of the parent: the run's other threads
    (workers, heartbeat, spawner) are not in it, and the control block is
    shared memory that the parent goes on using.  So:
      1. the block is replaced by a private copy at the same address
         (vmown_map_private): whatever the child's copy of the scheduler
         still writes (the step that forked ends, its trap is handled) lands
         in the child's memory, never in the parent's block;
      2. the run halts at the child's next scheduling point, and shutdown
         touches nothing (no join of threads that are not here, no lock of
         the pool copied in whatever state it was);
      3. run() raises ForkedRunError in the child (if the fork happened on a
         worker thread, which has no run() to return to, the child prints
         it and exits with status 1: _end_forked_child).
    """
    for rt in list(_runs):
        if rt.forked or rt.pid == os.getpid():
            continue
        rt.forked = True
        rt.halt = True
        block = rt.ownership._block
        if block.addr != ffi.NULL:
            lib.vmown_map_private(block.addr, block.size)


os.register_at_fork(after_in_child=_after_fork_in_child)


def _forked_error(rt: _Runtime) -> ForkedRunError:
    return ForkedRunError(
        f"vmown.run() cannot go on in a child process forked inside it (pid {os.getpid()}, forked from "
        f"{rt.pid}): the run's other threads did not survive fork.  End the child with os._exit() (or "
        "exec) where it is done; the parent's run is unaffected"
    )


def _end_forked_child(rt: _Runtime) -> None:
    """A forked child's only thread is a pool worker, with no run() to raise from: exit here."""
    text = "".join(traceback.format_exception(_forked_error(rt)))
    try:
        sys.stderr.write(text)
        sys.stderr.flush()
        sys.stdout.flush()
    finally:
        os._exit(1)


# ---- SIGINT ----

# Cancel scopes and task groups update the run's state in their __exit__ and
# __aexit__: KeyboardInterrupt waits for a scheduling point there too.
_PROTECTED_MODULES = frozenset(
    {__name__, "vmown._sync", "vmown._cancel", "vmown._taskgroup", "vmown._io", "vmown._io_epoll"}
)


# P6. SIGINT lands anywhere in the main thread.  CPython runs the handler at
#     eval-breaker checks: function entry, backward jumps, after each CALL.
#     The handler walks the interrupted frames outwards: if scheduler code
#     (this module, _sync) comes first, it only records KeyboardInterrupt and
#     sets `halt`, which the loop sees at the next scheduling point and a
#     parked main thread sees when vmown_park returns VMOWN_EINTR; if user
#     code of a step comes first (a process, or a function called as a
#     callout), it raises there, and the process ends with KeyboardInterrupt,
#     which halts the run.  Callouts themselves are C (_callout.py): no
#     handler runs between their disown and their own.  A second Ctrl-C in
#     scheduler code (the loop, shutdown) never raises: it stops shutdown's
#     wait for workers still in callouts (_join_workers), which names them.
def _ki_deferred(frame: types.FrameType | None) -> bool:
    """Whether KeyboardInterrupt must wait for a scheduling point (P6).

    The first frame, walking outwards, that is scheduler code decides: the
    loop itself (innermost) or any other function of this module or _sync
    defers; the loop with user code inside it does not.
    """
    if frame is None:
        return True
    innermost = True
    while frame is not None:
        if frame.f_code in _BOUNDARY:
            return innermost
        if frame.f_globals.get("__name__") in _PROTECTED_MODULES:
            return True
        frame = frame.f_back
        innermost = False
    return False


def _on_sigint(rt: _Runtime, signum: int, frame: types.FrameType | None) -> None:
    """Raise KeyboardInterrupt where it is safe (user code), else halt the run for it.

    In scheduler code (the loop, shutdown) it never raises: an exception
    there, between two steps of stopping the heartbeat and the pool, left
    their threads running (two Ctrl-C 0.3 ms apart did it).  A second Ctrl-C
    there means "stop waiting for workers still in callouts" (rt.give_up);
    run() raises KeyboardInterrupt once everything is torn down.
    """
    if not rt.halt and not _ki_deferred(frame):
        raise KeyboardInterrupt
    if isinstance(rt.fatal, KeyboardInterrupt) or rt.halt:
        rt.give_up = True
    if rt.fatal is None:
        rt.fatal = KeyboardInterrupt()
    rt.halt = True
    _wake_poller(rt)  # the run thread may wait in epoll, which retries after a handler (N4)


@contextmanager
def _sigint_handler(rt: _Runtime) -> Iterator[None]:
    """On the main thread, with Python's default SIGINT handling: Ctrl-C halts the run."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield
        return

    signal.signal(signal.SIGINT, partial(_on_sigint, rt))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)


# ---- stats ----


def stats() -> dict[str, int]:
    """Figures of the calling process's VM, from the scheduler and the core.

    ``callouts`` (disowns that were callouts), ``activations`` (idle workers
    given the VM by the heartbeat), ``hand_offs`` (releases straight to a
    waiting thread), ``ticks`` and ``starved`` (heartbeat), ``threads`` and
    ``threads_high`` (serving the VM now / at most, the caller of run()
    included), ``idle_workers``, ``processes`` (alive now), ``spawned``,
    ``steps``, ``parks``, ``cap_hits`` (spares not started: max_threads), and
    the ownership counters ``disowns``, ``fast_owns``, ``slow_owns``, ``waits``;
    ``servers`` (parked workers the heartbeat queued for a stalled run
    queue), ``soft_grants``, ``steals`` and ``robberies`` (callout disowns
    that woke a waiter softly, grants taken back before the claim, waiters
    that woke to find theirs taken; native/grants.c, "Soft grants");
    ``lazy_callouts`` (callouts that kept the owner word), ``revocations``
    (lazy callouts the heartbeat took the VM from) and ``called_off``
    (revocations dropped because the callout was back; "Lazy callouts");
    ``relays`` (servers queued ahead by a worker given the VM because a
    callout blocked; native/idle.c, "Relays") and ``hand_overs`` (callouts of
    functions known to block that gave the VM to a parked worker at once;
    native/callout.c, hints).
    Figures per C function are :func:`vmown.callout_stats`.
    """
    return _stats(current_process()._rt)


def _stats(rt: _Runtime) -> dict[str, int]:
    counters = ffi.new("vmown_counters *")
    check(lib.vmown_counters_read(rt.cb, counters), "reading counters")
    heartbeat = ffi.new("vmown_heartbeat_stats *")
    check(lib.vmown_heartbeat_read(rt.cb, heartbeat), "reading the heartbeat")
    pool = _pool_stats(rt)
    return {
        "callouts": counters.disowns - rt.parks - rt.releases,
        "activations": heartbeat.activations,
        "servers": heartbeat.servers,
        "hand_offs": counters.hand_offs,
        "ticks": heartbeat.ticks,
        "starved": heartbeat.starved,
        "threads": 1 + pool.live,
        "threads_high": 1 + pool.high,
        "idle_workers": heartbeat.idle_workers,
        "processes": len(rt.processes),
        "spawned": rt.spawned,
        "steps": rt.steps,
        "parks": rt.parks,
        "cap_hits": pool.cap_hits,
        "disowns": counters.disowns,
        "fast_owns": counters.fast_owns,
        "slow_owns": counters.slow_owns,
        "waits": counters.waits,
        "soft_grants": counters.soft_grants,
        "steals": counters.steals,
        "robberies": counters.robberies,
        "lazy_callouts": counters.lazy_disowns,
        "revocations": heartbeat.revocations,
        "called_off": heartbeat.called_off,
        "relays": heartbeat.relays,
        "hand_overs": heartbeat.hand_overs,
        "io_waits": rt.io.blocked if rt.io is not None else 0,
        "io_polls": rt.io.polls if rt.io is not None else 0,
        "io_idle_waits": rt.io.idle_waits if rt.io is not None else 0,
    }


def _monitor_figures(rt: _Runtime, hz: int) -> dict[str, Any]:
    """What the monitor publishes besides the block (vmown/_monitor.py); any thread may call it."""
    from ._callout import _tag_names, callout_stats

    return {
        "pid": os.getpid(),
        "hz": hz,
        "stats": _stats(rt),
        "callout_names": {str(tag): name for tag, name in list(_tag_names.items())},
        "functions": callout_stats(),
        # slot -> the process whose step runs on that thread (python -m vmown stacks)
        "running": {
            str(proc._thread.slot): proc.name
            for proc in list(rt.processes)
            if proc._state is _RUNNING and proc._thread is not None
        },
    }


from . import _token  # noqa: E402
from ._cancel import (  # noqa: E402
    Cancelled as _Cancelled,
    ProcessCancelled as _ProcessCancelled,
    _cancel_process,
)

from ._io import dispatch as _dispatch, poll_now as _poll_now  # noqa: E402

# Frames of these functions call user code: KeyboardInterrupt raised below
# them lands inside a step (P6).
_BOUNDARY = frozenset({_serve.__code__, _throw_into.__code__})
