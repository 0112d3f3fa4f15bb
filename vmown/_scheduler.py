# The M:N scheduler: green processes on whichever OS thread owns the VM.
#
# What it is for
# --------------
# vmown.run(main) runs `async def` processes; a process calls C through
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
# Rejected approaches
# -------------------
#   - A thread per blocking call (asyncio.to_thread, trio.to_thread): 50-200
#     us and two thread switches per call, so only calls known in advance to
#     block get threaded.  Here every call can be: the thread that makes it is
#     the one that blocks, and nothing happens unless it stays out a whole tick.
#   - One scheduler thread plus a pool that returns results through a queue:
#     the same hop on every call, and the caller's stack is not where the
#     result arrives.
#   - The owner polling for "has my callout come back": a busy loop, and the
#     owner is the one thread that is blocked.
#   - Deciding to hand off at disown time (a guess about how long the call
#     will take): Go and Cog both wait for evidence instead, the heartbeat's
#     "unowned for a whole tick while work waits".
# Chosen (Cog's CoInterpreterMT, Go's entersyscall/sysmon): the loop runs on
# whichever thread owns the VM; a callout disowns, keeps its stack and owns
# again; the C heartbeat activates a parked worker when the VM has been
# unowned for a whole tick with work waiting (native/heartbeat.c).  A callout
# made with nobody queued keeps the owner word instead (a lazy callout,
# native/ownership.c): the heartbeat then revokes the VM after the same tick
# and hands it to a queued thread or a parked worker, which for the loop here
# is an activation like any other.  A step of
# a process is the code between two awaits; it runs on one thread from start
# to end (a blocked callout keeps it on its thread's stack); the next step
# may run on any thread.
#
# The loop (_serve) and the worker's life (_work)
# -----------------------------------------------
#   1. at every scheduling point: if the run halts, stop; if threads wait for
#      the VM (a callout came back), leave the loop and park, which hands the
#      VM to the head waiter in the same step (vmown_park);
#   2. once per millisecond, let a thread that waits for the GIL in (see "The
#      GIL"); move due timers to the run queue; if nothing is runnable, park
#      until the next timer (Cog's "relinquish processor"): no polling, no
#      spinning;
#   3. pop a process, run one step: ctx.run(coro.send, value); handle what it
#      yielded: None = checkpoint, int = sleep until that monotonic ns,
#      _SUSPEND = it registered with a primitive that will wake it, a Process
#      = join it.
# A parked worker comes back (vmown_park's result) activated (it owns the VM:
# serve), unparked (shutdown or halt: leave or own), or timed out (a timer is
# due: own and serve; or idle_timeout passed: a surplus worker exits if
# another one is parked, so one spare always stays).
#
# Servers.  An activation needs the VM unowned for a whole tick, which it
# rarely is while threads come back from callouts; so processes that wait in
# the run queue would start only as others end.  The heartbeat therefore
# watches the run queue too (native/heartbeat.c): at each tick where fewer
# than SERVERS (8) processes were taken off it while some wait and the VM is
# owned -- its steps are long, or it is out in a callout -- and right after
# an activation, it tops up the parked workers it keeps in the wait queue
# (servers) to min(run queue, SERVERS), behind every thread that waits on
# its own.  A server gets the VM from the next disown: a callout that blocks
# gives it a soft grant that it claims within its wake-up, a stream of short
# callouts hands it over within ~1 ms (native/ownership.c, "Soft grants").
# Topping up each tick, not once per stall, matters when every process is
# one long step: each step that blocks uses up a server to start the next
# process (suite `mixed`, 200 x 200 calls, measured in one sitting: half the
# processes started by 0.09 s with once-per-stall queueing of 4, by 0.06 s
# with top-ups of 8).  Given the VM from the idle stack, a worker runs at
# least one step before it looks at the queue (_serve's `first`): it was
# brought in for the run queue, and handing the VM straight on to the next
# waiter would waste the trip.  The owner writes the words the heartbeat
# reads in place, without a call: work[0] = steps at every step, work[1] =
# the run queue's length at each spawn (and in _publish).
#
# Spares.  The heartbeat can only activate (or queue) parked workers, so a
# worker that comes back from the idle stack (it used one up) makes sure that
# others are parked or on their way (_ensure_spare): one, or min(run queue,
# _SPARES) while processes wait, since a long run queue wants servers, not
# one at a time (measured, suite `mixed` probed at 200 x 200 calls: with 1
# spare, starts p50 0.15 s and 0.45 s in all; with 8, 0.07-0.09 s and
# 0.37-0.40 s; 16 or 32 no better).  The heartbeat asks too, for as many as
# it queues as servers.  The owner only asks: the worker pool
# (native/workers.c) counts, its spawner thread starts the threads in C,
# and each new worker parks at once (vmown_park_new) without running any
# Python.  It enters Python (vmown_py_worker) only when first given the VM:
# then it is the one thread that may run VM code, and its start-up competes
# with nobody for the GIL.  Workers started as threading.Threads ran their
# start-up under the GIL, which the owner holds between its callouts: in
# suite `mixed` (200 processes blocking within their first steps, ~150
# threads started) the last process first ran at 0.08-0.13 s; with the pool,
# at 0.05-0.09 s, and the whole run took ~0.33 s instead of ~0.355 s
# (probed in one sitting, medians of 3-6 runs).  The number of threads thus
# follows the number of callouts blocked at once, up to max_threads; a run
# that meets the cap gets a RuntimeWarning (from the owner that asked) with
# the heartbeat's `starved` count.
#
# Publishing the work.  The heartbeat reads two words while the VM is
# unowned: runnable (non-zero: a process waits) and next_timer_ns.  The owner
# writes them with plain stores (vmown_set_work) before any release: at the
# start of each step if they changed, when a step wakes a process while the
# words say "nothing runnable", and before parking or disowning for itself.
# The release store of the owner word (seq_cst) orders them before the
# release; the heartbeat's acquire load of the owner word orders its reads of
# them after.
#
# The races, as interleavings, and why the code is right
# -------------------------------------------------------
# 1. A callout comes back while the heartbeat activates a worker.
#      T: disown (callout)      HB: tick k sees W unowned, tick k+1 sees W
#      T: own: CAS W -> T       HB: activate: CAS W -> worker
#    Both CAS the same word from the same value: exactly one wins.  If T wins
#    the heartbeat's CAS fails and nothing happens; if the worker wins, T
#    queues (the own slow path) and the worker, at its next scheduling point,
#    sees waiters > 0 and parks, handing T the VM.  T finishes its step and
#    carries on as a worker; the other one is now the parked spare.
# 2. A worker parks while a thread queues for the VM.
#      W: park: under the lock, join the idle stack, hand the VM to the head
#      T: own: under the lock, CAS, else enqueue
#    Both take the block's lock, so T is either in the queue when W parks
#    (W hands it the VM) or finds the VM unowned afterwards (T's CAS wins).
#    A worker is never both unfindable and unowning.
# 3. A surplus worker's idle timeout and an activation.
#      W: park times out            HB: activate W (under the lock)
#    The core settles it under the lock: if the grant came first, vmown_park
#    returns 1 and W owns the VM; so a worker only retires when it really
#    was not given the VM.  Two workers retiring at once: each decides after
#    it left the idle stack, so at most one of them reads the other as
#    parked; at least one stays.
# 4. The main process finishes on a worker while the run thread is
#      (a) parked: the worker unparks it (vmown_unpark by slot); it owns the VM
#          once the worker has left the loop and disowned;
#      (b) in a callout: it comes back, finishes its step, sees `halt`;
#      (c) queued for the VM: the worker leaves the loop and disowns to it.
#    The worker sets `halt` while owning and every thread reads it while
#    owning, or after vmown_park/vmown_own returned: both orderings go
#    through the owner word or the slot's semaphore.
# 5. A step wakes a process, then makes a blocking callout.
#      P: Event.set() wakes Q    P: callout: disown ... blocks
#    _wake publishes "runnable" when the words said zero, before the callout
#    can release the VM, so the heartbeat sees Q waiting and activates.
# 6. SIGINT lands anywhere in the main thread.  CPython runs the handler at
#    eval-breaker checks: function entry, backward jumps, after each CALL.
#    The handler walks the interrupted frames outwards: if scheduler code
#    (this module, _sync) comes first, it only records KeyboardInterrupt and
#    sets `halt`, which the loop sees at the next scheduling point and a
#    parked main thread sees when vmown_park returns VMOWN_EINTR; if user
#    code of a step comes first (a process, or a function called as a
#    callout), it raises there, and the process ends with KeyboardInterrupt,
#    which halts the run.  Callouts themselves are C (_callout.py): no
#    handler runs between their disown and their own.  A second Ctrl-C while
#    the first is pending raises at once: the escape from a program that
#    does not come back (see shutdown).
# 7. The pool starts a worker while the VM is owned, or unowned.
#      S (spawner, C): pthread_create   N (new, C): park_new: under the lock,
#                                         join the idle stack, sleep
#      O (owner): ...                   HB: activate N (under the lock)
#    N never competes for the VM: it is on the idle stack, or not yet
#    findable, like a thread that has not started.  The heartbeat and the
#    owner see it only through the idle stack, under the lock, so an
#    activation finds it parked or not at all.  At shutdown the run thread
#    stops the pool first (no new starts), then the pool unparks every parked
#    worker again at each round of joining: a worker that was still starting
#    parks after a round and is woken by the next (it sees the pool's `stop`,
#    or, in Python, `halt`).
# 8. The timer watcher and the heartbeat both act on a due timer.  The one
#    worker parked with the earliest deadline as its timeout wakes and owns;
#    if the heartbeat activated another worker first, the watcher queues, is
#    handed the VM at a scheduling point, finds nothing and parks again.
# 9. Deadlock detection and a callout about to come back.  A thread about to
#    park with nothing runnable and no timer declares a deadlock only if no
#    step is in flight (`running` == 0): a step blocked in a callout counts
#    until it ends, on its own thread, with the VM owned, so whatever it will
#    wake is never declared stuck.  Nothing outside the VM can wake a process
#    (primitives refuse other threads), so the check is exact.
# 10. The heartbeat queues a server while the owner parks or ends.
#      HB: queue W (idle stack -> wait queue)   O: park: idle stack, release
#    Both under the block's lock: if O parks first, its release finds W
#    queued or the heartbeat finds the VM unowned and grants W at once; W,
#    owning, runs one step (or none, if the run queue emptied meanwhile) and
#    parks.  A server whose run queue emptied costs one wake-up, nothing else.
#    A server granted while a callout is out runs steps on its thread; the
#    callout, back, queues ahead of other servers (priority) and is handed
#    the VM at the server's next scheduling point, as in race 1.
# 11. A sleeper falls due while threads wait for the VM (a burst: every
#     thread back from its callout finds others queued).  The owner at its
#     scheduling point runs the due sleeper first (due timers go to the front
#     of the run queue), then hands over; a waiter waits one step longer, a
#     sleeper does not wait for the whole queue.  A worker given the VM
#     because a callout blocked queues servers ahead (native/idle.c,
#     "Relays", B1-B2); a callout of a function known to block hands the VM
#     to a parked worker at its disown (native/grants.c, H1-H2).
#
# The GIL.  A callout made through the C wrappers of vmown.threaded_wrappers
# waits for the VM in C, without the GIL, and takes the GIL only once it owns
# the VM, from an owner that has parked (in C, GIL released).  A Python-level
# callout (vmown.callout, vmown.threaded) must take the GIL back before it can
# ask for the VM, and the GIL is held by the thread running steps.  CPython
# asks a holder to drop the GIL only when a waiter's 5 ms timed wait passes
# with no switch at all; but the loop drops and retakes the GIL at every cffi
# call (the waiters() check of each step), which counts as a switch, while
# the woken waiter comes too late to win: measured, a returning callout
# waited up to 0.3-3 s behind CPU-bound processes, in some runs.  So about
# once per millisecond of serving (the clock is read every step while timers
# wait, else every _CLOCK_EVERY steps), if a thread of the run is out of the
# VM, the loop blocks in a syscall with the GIL released (time.sleep(0):
# ~80 us of timer slack), long enough for the waiter to take the GIL and
# queue for the VM, which the next scheduling point hands over.  Measured
# (benchmarks suite `return`, a noisy machine): p99 0.2-2 ms instead of up
# to seconds; the price, paid only while callouts are out, is up to ~8% of
# the loop's time.
#
# Shutdown (the run thread, owning the VM, once `halt` is set): publish "no
# work", stop the heartbeat, unpark every parked worker, disown and join the
# workers (those still in a callout come back, finish their step, see `halt`
# and exit; a warning names them if they take long), own again, close every
# process left (coro.close() in its context: its finally blocks run), close
# the Ownership.  run() then returns main's result or raises.
#
# What comes next, and where it fits
# ----------------------------------
#   - Processes bound to one OS thread: a Process field naming a slot; the
#     loop, when it pops a bound process on another thread, gives the VM to
#     that slot (a directed hand-off: one more core call, like vmown_unpark
#     but granting the VM) and parks; the bound thread never retires.
#   - C calling back into the VM from a foreign thread: the thread registers
#     a slot and own()s; it queues like a returning callout, so step 1 of the
#     loop already hands it the VM promptly; it runs the callback as a step
#     of a temporary process and disowns.
#   - Priorities: one deque per priority in place of run_queue (the loop pops
#     the highest non-empty); threads already queue by priority in the core
#     (vmown_set_priority).
#   - Cancellation and timeouts: every suspension records where the process
#     waits (_waiting_on: a primitive or a joined process, each with a
#     _forget(process) that unlinks it, already used when the run closes its
#     processes); a canceller unlinks it and makes it runnable with an
#     exception to throw, the path that _throw_into already takes for bad
#     awaits.  Sleepers get a generation number in their timer entry for lazy
#     deletion from the heap.
#   - Per-function hints: threaded(fn, hint=...) where "never hand off" skips
#     disown/own (a plain call for functions known to be short) and "hand off
#     at once" asks the core to activate a parked worker at disown instead of
#     waiting a tick.
#   - Warnings with a stack sample when a callout or an owner holds on too
#     long: each slot records its callout's tag and tick (vmown_slot_read); a
#     watchdog compares them with the heartbeat's tick count and samples the
#     thread's stack with sys._current_frames(), as _warn_slow_workers does
#     at shutdown.
#
# Assumptions about the platform: CPython's GIL makes single attribute reads
# and writes atomic (used for `halt` and `fatal`, the only fields written by
# a thread that does not own the VM); time.monotonic_ns() and the core's
# vmown_now_ns() read the same clock (CLOCK_MONOTONIC on Linux).

from __future__ import annotations

import contextvars
import heapq
import inspect
import itertools
import math
import signal
import sys
import threading
import time
import traceback
import types
import warnings
from collections import deque
from collections.abc import Callable, Coroutine, Generator, Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any, TypeVar

from ._errors import VmownError, check, error
from ._native import ffi, lib
from ._ownership import Ownership

__all__ = ["Process", "checkpoint", "run", "sleep", "spawn", "stats"]

T = TypeVar("T")

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

_process_var: contextvars.ContextVar[Process] = contextvars.ContextVar("vmown.process")


class _ThreadState:
    """A thread that serves a vmown.run(): its slot in the run's control block."""

    __slots__ = ("cb", "slot", "run_thread")

    def __init__(self, cb: Any, slot: int, run_thread: bool) -> None:
        self.cb = cb  # vmown_vm * of the run's control block
        self.slot = slot  # this thread's slot in it
        self.run_thread = run_thread  # the thread that called vmown.run()


class _Here(threading.local):
    state: _ThreadState | None = None


_here = _Here()


class Process:
    """A green process of :func:`vmown.run`: one coroutine, scheduled on any worker thread.

    Made by :func:`spawn` (and by :func:`run` for ``main``).  ``await process``
    waits for it to finish and returns its result, or raises its exception
    with the traceback of where it was raised.  Each process runs in its own
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
    )

    def __init__(self, rt: _Runtime, coro: Coroutine[Any, Any, Any], ctx: contextvars.Context) -> None:
        self._rt = rt
        self._coro = coro
        self._resume: Callable[[Any], Any] | None = coro.send  # what the next step calls
        self._value: Any = None  # ... with this
        self._ctx_run: Callable[..., Any] | None = ctx.run
        self._state = _RUNNABLE
        self._result: Any = None
        self._exception: BaseException | None = None
        self._joiners: list[Process] | None = None  # made by the first join
        self._waiting_on: object = None  # what it waits on, while WAITING
        self._retrieved = False  # someone awaited it (or will: it had joiners)

    @property
    def name(self) -> str:
        """The qualified name of the process's coroutine function."""
        return str(getattr(self._coro, "__qualname__", self._coro))

    def done(self) -> bool:
        """Whether the process has finished (returned or raised)."""
        return self._state is _DONE

    def __await__(self) -> Generator[Any, Any, Any]:
        if self._state is not _DONE:
            yield self
        self._retrieved = True
        if self._exception is not None:
            raise self._exception
        return self._result

    def _forget(self, joiner: Process) -> None:
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
        "ownership", "cb", "waiters_word", "work_words", "run_queue", "timers", "timer_seq", "processes", "main",
        "halt", "fatal", "running", "unretrieved", "pub_run", "pub_timer_ns", "watch_ns", "run_slot", "max_threads",
        "idle_timeout_ns", "handle", "worker_idents", "pool_shortfalls", "cap_warned", "failures_warned",
        "steps", "spawned", "parks", "releases",
    )  # fmt: skip

    def __init__(self, max_threads: int, idle_timeout_s: float) -> None:
        self.ownership = Ownership(slots=max_threads + _SLOT_MARGIN)
        self.cb = self.ownership._cb  # vmown_vm *, valid until ownership.close()
        self.waiters_word = lib.vmown_waiters_word(self.cb)  # read in place by _serve
        # [0] written in place by _serve at every step, [1] by spawn (and by
        # _publish): a memoryview store costs ~20 ns where a cffi pointer
        # store costs ~65 (one aligned 8-byte store either way; the heartbeat
        # only reads the words).
        self.work_words = memoryview(ffi.buffer(lib.vmown_work_words(self.cb), 16)).cast("Q")
        self.run_queue: deque[Process] = deque()
        self.timers: list[tuple[int, int, Process]] = []  # (deadline_ns, seq, process) heap
        self.timer_seq = itertools.count()
        self.processes: dict[Process, None] = {}  # alive, in spawn order
        self.main: Process | None = None
        self.halt = False  # stop serving; the run thread shuts down
        self.fatal: BaseException | None = None  # raised by run() in place of main's outcome
        self.running = 0  # steps started and not finished, on any thread
        self.unretrieved: list[Process] = []  # failed with nobody awaiting them (yet)
        # What vmown_set_work last published.
        self.pub_run = False
        self.pub_timer_ns = 0
        # The deadline a parked worker will wake up for (0: none).
        self.watch_ns = 0
        self.run_slot = 0
        self.max_threads = max_threads
        self.idle_timeout_ns = int(idle_timeout_s * 1e9)
        # What the pool's workers get back in vmown_py_worker; dropped when
        # the pool is freed (it makes a cycle with this object).
        self.handle: Any = ffi.new_handle(self)
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


# ---- the current process ----


def _current(what: str) -> Process:
    proc = _process_var.get(None)
    if proc is None:
        raise RuntimeError(f"{what} must be called from a process started by vmown.run()")
    return proc


def spawn(fn: Callable[..., Coroutine[Any, Any, T]], *args: Any) -> Process:
    """Start ``fn(*args)`` (an ``async def`` function) as a new process; return its handle.

    Must be called from a process.  The new process runs in a copy of the
    caller's contextvars context and is runnable at once; ``await`` the
    returned :class:`Process` for its result.
    """
    parent = _current("vmown.spawn()")
    return _spawn(parent._rt, fn, args, contextvars.copy_context())


def _spawn(rt: _Runtime, fn: Callable[..., Any], args: tuple[Any, ...], ctx: contextvars.Context) -> Process:
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
    if not rt.pub_run:
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
    """Suspend the calling process for ``seconds`` (at least); ``sleep(0)`` is a checkpoint."""
    if seconds <= 0:
        yield None
    elif seconds == math.inf:
        yield _SUSPEND  # nothing will wake it
    else:
        yield _now() + int(seconds * 1e9)


@types.coroutine
def _suspend() -> Generator[object, Any, Any]:
    """Suspend until a primitive wakes the process; returns what the waker sent."""
    return (yield _SUSPEND)


def _wake(proc: Process, value: Any = None) -> None:
    """Make a WAITING process runnable; the next step receives ``value``.  Owner only."""
    if proc._state is not _WAITING:
        _broken(f"woke {proc!r}, which is not waiting")
    proc._state = _RUNNABLE
    proc._value = value
    proc._waiting_on = None
    rt = proc._rt
    rt.run_queue.append(proc)
    if not rt.pub_run:
        _publish(rt)


def _broken(what: str) -> None:
    raise RuntimeError(f"vmown: broken scheduler invariant: {what}")


def _trap(rt: _Runtime, proc: Process, trap: Any) -> None:
    """Handle what a step yielded, other than None (a checkpoint)."""
    proc._value = None
    if trap is _SUSPEND:
        proc._state = _WAITING
    elif type(trap) is int:
        proc._state = _SLEEPING
        heapq.heappush(rt.timers, (trap, next(rt.timer_seq), proc))
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


def _join(rt: _Runtime, proc: Process, target: Process) -> None:
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


def _throw_later(rt: _Runtime, proc: Process, exc: BaseException) -> None:
    proc._resume = partial(_throw_into, proc)
    proc._value = exc
    proc._state = _RUNNABLE
    rt.run_queue.append(proc)


def _throw_into(proc: Process, exc: BaseException) -> Any:
    proc._resume = proc._coro.send
    return proc._coro.throw(exc)


def _finish(rt: _Runtime, proc: Process, exc: BaseException) -> None:
    """The step ended the process: ``exc`` is StopIteration (returned) or what it raised."""
    if isinstance(exc, StopIteration):
        proc._result = exc.value
    else:
        proc._exception = exc
    proc._state = _DONE
    proc._resume = proc._ctx_run = None  # break the cycle process -> context -> process
    del rt.processes[proc]
    joiners, proc._joiners = proc._joiners, None
    for joiner in joiners or ():
        _wake(joiner)
    if proc._exception is not None:
        if not isinstance(proc._exception, Exception):  # KeyboardInterrupt, SystemExit...
            _halt(rt, proc._exception)
        elif not proc._retrieved and proc is not rt.main:
            rt.unretrieved.append(proc)
    if proc is rt.main:
        _halt(rt, None)


def _halt(rt: _Runtime, fatal: BaseException | None) -> None:
    """Owner: stop the run (``fatal``, if given, is what run() raises)."""
    if fatal is not None and rt.fatal is None:
        rt.fatal = fatal
    if rt.halt:
        return
    rt.halt = True
    _publish(rt)
    lib.vmown_unpark(rt.cb, rt.run_slot)  # if the run thread is parked; else a no-op


# ---- the loop ----


def _publish(rt: _Runtime) -> None:
    """Tell the heartbeat what work waits if the VM is left unowned.  Owner only."""
    if rt.halt:
        runnable, timer_ns = 0, 0
    else:
        runnable = len(rt.run_queue)
        timer_ns = rt.timers[0][0] if rt.timers else 0
    lib.vmown_set_work(rt.cb, runnable, timer_ns)
    rt.pub_run = runnable > 0
    rt.pub_timer_ns = timer_ns


def _release_timers(rt: _Runtime) -> None:
    """Due sleepers go to the FRONT of the run queue, in deadline order.

    A sleeper has waited already; behind a wave of new processes (a burst of
    spawns that each block in a callout) it would wait for all of them
    (docs/design-log.md, "Burst latency").
    """
    timers, now = rt.timers, _now()
    due = []
    while timers and timers[0][0] <= now:
        proc = heapq.heappop(timers)[2]
        if proc._state is not _SLEEPING:
            _broken(f"{proc!r} was in the timer heap")
        proc._state = _RUNNABLE
        due.append(proc)
    due.reverse()
    rt.run_queue.extendleft(due)


def _serve(rt: _Runtime, first: bool = False) -> None:
    """Run steps until the run halts, a thread waits for the VM, or nothing is runnable.

    With ``first``, run one step even if threads wait: the caller was given
    the VM from the idle stack because the run queue stalled.

    The caller owns the VM and still owns it on return.  This is the hot
    path: everything it touches is bound to a local first.  It calls only C
    functions and this module's functions (the SIGINT handler relies on that,
    race 6), and it is the boundary between scheduler code and user code.
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
    countdown = _CLOCK_EVERY
    yield_at = now() + _GIL_YIELD_NS
    # A due sleeper runs before a waiting thread is handed the VM: in a burst
    # every thread back from its callout finds others queued and hands on at
    # once, and nobody would look at the timers until the queue drained.
    while not rt.halt and (first or not waiters_word[0] or (timers and timers[0][0] <= now())):
        first = False
        countdown -= 1
        if timers or not countdown:  # read the clock: each step if timers wait
            countdown = _CLOCK_EVERY
            t = now()
            if t >= yield_at:
                _yield_gil(rt)
                yield_at = t + _GIL_YIELD_NS
            if timers and timers[0][0] <= t:
                _release_timers(rt)
        if not run_queue:
            return
        proc = popleft()
        if bool(run_queue) is not rt.pub_run or (timers[0][0] if timers else 0) != rt.pub_timer_ns:
            _publish(rt)
        if proc._state is not _RUNNABLE:
            _broken(f"{proc!r} was in the run queue")
        proc._state = _RUNNING
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
            proc._state = _RUNNABLE
            proc._value = None
            append(proc)
        else:
            _trap(rt, proc, trap)


def _yield_gil(rt: _Runtime) -> None:
    """If a thread of the run is out of the VM, let it take the GIL (see "The GIL")."""
    if _pool_stats(rt).live - _idle_workers(rt) > 0:  # a worker neither parked nor this one
        time.sleep(0)  # a syscall that blocks briefly (timer slack), the GIL released


def _work(rt: _Runtime, me: _ThreadState, given: bool = False) -> None:
    """Serve and park, until the run halts or (a worker) this thread retires.

    The caller owns the VM.  The run thread returns owning it; a worker
    returns not owning it.
    """
    while not rt.halt:
        _serve(rt, given)
        if rt.halt:
            break
        if not _park(rt, me):
            return
        given = True
    if not me.run_thread:
        _release(rt, me)


def _park(rt: _Runtime, me: _ThreadState) -> bool:
    """Park until there is work; True once owning the VM, False for a worker that leaves."""
    if not rt.run_queue and not rt.timers and rt.running == 0:
        _halt(rt, _deadlock(rt))
        return True
    timeout_ns, watch_ns = _park_timeout(rt, me)
    _publish(rt)
    rt.parks += 1
    rc = _park_c(rt.cb, me.slot, timeout_ns)
    if rc != 1:  # not activated: unparked, timed out or interrupted; not owning
        if rc not in (0, _ETIMEDOUT, _EINTR):
            raise error(rc, "park")
        retire = rc == _ETIMEDOUT and not watch_ns and _surplus(rt)
        if not me.run_thread and (rt.halt or retire):
            return False
        _own(rt, me)
    if watch_ns and rt.watch_ns == watch_ns:
        rt.watch_ns = 0
    _ensure_spare(rt)
    return True


def _park_timeout(rt: _Runtime, me: _ThreadState) -> tuple[int, int]:
    """(timeout_ns for vmown_park, the timer deadline this thread watches or 0)."""
    if rt.timers:
        deadline = rt.timers[0][0]
        if rt.watch_ns == 0 or deadline < rt.watch_ns:
            rt.watch_ns = deadline
            return max(0, deadline - _now()), deadline
    return (-1 if me.run_thread else rt.idle_timeout_ns), 0


def _surplus(rt: _Runtime) -> bool:
    """Whether another worker is parked, so that this one may retire (race 3)."""
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
            raise error(rc, "own")
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

    It runs on the worker's own thread, owning the VM: serve and park until
    the run halts or this worker retires, then return without the VM; the
    pool gives the slot back and the thread exits.
    """
    rt: _Runtime = ffi.from_handle(handle)
    me = _ThreadState(rt.cb, slot, run_thread=False)
    _here.state = me
    rt.worker_idents[slot] = threading.get_ident()
    try:
        _ensure_spare(rt)
        _work(rt, me, given=True)
    except BaseException as exc:  # noqa: BLE001 - a scheduler bug: fail loudly, never hang
        _crash(rt, me, exc)
    finally:
        del rt.worker_idents[slot]
        _here.state = None
        _forget_dummy_thread()


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


def _enter(rt: _Runtime, run_thread: bool) -> _ThreadState:
    """Register the calling thread with the run's control block, for Python and C callouts."""
    me = _ThreadState(rt.cb, rt.ownership.slot, run_thread)
    check(lib.vmown_bind_thread(rt.cb, me.slot), "binding a worker thread")
    _here.state = me
    return me


def _leave() -> None:
    lib.vmown_bind_thread(ffi.NULL, 0)
    _here.state = None


# ---- run ----


def run(
    main: Callable[..., Coroutine[Any, Any, T]],
    *args: Any,
    hz: int = 1000,
    max_threads: int = DEFAULT_MAX_THREADS,
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT_S,
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
    a callout blocks, once the callouts still in flight have come back.
    """
    _check_run_arguments(hz, max_threads, idle_timeout)
    if _here.state is not None:
        raise RuntimeError("vmown.run() cannot run inside vmown.run(); use vmown.spawn() for a new process")
    rt = _Runtime(max_threads, idle_timeout)
    me = _enter(rt, run_thread=True)
    try:
        _own(rt, me)
        rt.run_slot = me.slot
        with _sigint_handler(rt):
            try:
                check(lib.vmown_heartbeat_start(rt.cb, hz), "starting the heartbeat")
                rt.main = _spawn(rt, main, args, contextvars.copy_context())
                check(
                    lib.vmown_workers_start(
                        rt.cb, lib.vmown_py_worker, rt.handle, rt.max_threads - 1, rt.idle_timeout_ns
                    ),
                    "starting the worker pool",
                )
                _ensure_spare(rt)
                _work(rt, me)
            finally:
                _shutdown(rt, me)
    finally:
        _leave()
        _close_ownership(rt)
    result: T = _outcome(rt)
    return result


def _check_run_arguments(hz: int, max_threads: int, idle_timeout: float) -> None:
    if not isinstance(hz, int) or not 1 <= hz <= 100_000:
        raise ValueError(f"hz must be an int from 1 to 100000, not {hz!r}")
    if not isinstance(max_threads, int) or not 2 <= max_threads <= (1 << 20) - _SLOT_MARGIN:
        raise ValueError(
            f"max_threads must be an int of at least 2 (the caller and a spare), not {max_threads!r}"
        )
    if not idle_timeout > 0:
        raise ValueError(f"idle_timeout must be a positive number of seconds, not {idle_timeout!r}")


def _outcome(rt: _Runtime) -> Any:
    if rt.fatal is not None:
        raise rt.fatal
    main = rt.main
    if main is None or main._state is not _DONE:
        _broken("the run ended before its main process")
    if main._exception is not None:  # type: ignore[union-attr]
        raise main._exception  # type: ignore[union-attr]
    return main._result  # type: ignore[union-attr]


def _shutdown(rt: _Runtime, me: _ThreadState) -> None:
    """Run thread: stop the heartbeat and the workers, close what is left."""
    rt.halt = True
    if lib.vmown_owner(rt.cb) != me.slot:
        _own(rt, me)
    _publish(rt)
    check(lib.vmown_heartbeat_stop(rt.cb), "stopping the heartbeat")
    check(lib.vmown_workers_stop(rt.cb), "stopping the worker pool")
    if _pool_stats(rt).live:
        _release(rt, me)
        _join_workers(rt)
        _own(rt, me)
    _close_processes(rt)
    _report_unretrieved(rt)


def _join_workers(rt: _Runtime) -> None:
    """Wait for every worker to exit; warn about the ones that keep us waiting.

    The pool unparks parked workers at every round of its wait (one that was
    still starting parks after a round and is woken by the next); Ctrl-C is
    seen between rounds of _JOIN_SLICE_NS.
    """
    warn_at = time.monotonic() + _SHUTDOWN_WARN_S
    while lib.vmown_workers_join(rt.cb, _JOIN_SLICE_NS) > 0:
        if warn_at and time.monotonic() > warn_at:
            warn_at = 0
            _warn_slow_workers(rt)


def _warn_slow_workers(rt: _Runtime) -> None:
    frames = sys._current_frames()
    stuck = []
    for slot, ident in list(rt.worker_idents.items()):
        frame = frames.get(ident)
        if frame is not None:
            stuck.append(f"worker (slot {slot}):\n{''.join(traceback.format_stack(frame, limit=4))}")
    warnings.warn(
        f"vmown.run() is ending but {len(stuck)} worker(s) are still in a callout; waiting for them "
        "(Ctrl-C twice gives up on them):\n" + "\n".join(stuck),
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


# ---- SIGINT ----

_PROTECTED_MODULES = frozenset({__name__, "vmown._sync"})


def _ki_deferred(frame: types.FrameType | None) -> bool:
    """Whether KeyboardInterrupt must wait for a scheduling point (race 6).

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
    """Raise KeyboardInterrupt where it is safe (user code), else halt the run for it."""
    again = isinstance(rt.fatal, KeyboardInterrupt)  # Ctrl-C twice: give up waiting
    if again or not _ki_deferred(frame):
        raise KeyboardInterrupt
    if rt.fatal is None:
        rt.fatal = KeyboardInterrupt()
    rt.halt = True


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
    """
    return _stats(_current("vmown.stats()")._rt)


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
    }


# Frames of these functions call user code: KeyboardInterrupt raised below
# them lands inside a step (race 6).
_BOUNDARY = frozenset({_serve.__code__, _throw_into.__code__})
