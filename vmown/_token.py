# Calls into the VM from other threads: vmown.current_token() and its
# run / run_sync / run_sync_soon (trio's TrioToken and trio.from_thread are
# the model; the mechanism is vmown's own).
#
# What it is for.  The run's state belongs to the thread that owns the VM
# (the guard, _scheduler._current, refuses every other thread).  A thread
# that is not running a step -- a plain threading.Thread, a thread inside a
# callout, a C thread -- gets in by owning the VM itself, for as long as the
# function takes:
#
#     enter     a slot: the thread's own if it serves this run (a callout's
#               thread), else the thread's own slot for this run (see Slots)
#     own       vmown_own_wait: one CAS if the VM is unowned (every worker
#               parked), else FIFO in the queue; the owner hands the VM over
#               at its next scheduling point (_serve sees the waiter count)
#     run fn    in a copy of main's context, with the thread bound to the
#               slot for the guard and for callouts (vmown_bind_thread): fn
#               is an owner like any step, and its callouts give the VM up
#     leave     publish the work fn made (_publish, skipped when the block
#               holds it already), disown, and unpark the run thread if fn
#               made a process runnable (else the heartbeat's activation
#               would take a tick)
#
# No thread of the run is borrowed and nothing is queued for the loop to
# poll: the hot loop is unchanged.  run(afn) spawns afn as a process that way
# and waits on a threading.Event for its outcome; run_sync_soon puts the call
# in a queue.SimpleQueue (its put is reentrant: safe from a signal handler,
# and never blocks) read by one thread per token that runs the calls in FIFO
# order, each batch in one ownership.
#
# Deadlock detection.  Once current_token() gave the token out, a thread may
# call in at any time: the scheduler no longer calls "every process waits" a
# deadlock (_scheduler._park reads the token's _handed_out).
#
# Slots.  A thread of the run (in a callout) calls in with its own slot; any
# other thread registers one at its first call and keeps it while it lives
# (a C thread calling back many times pays the registration once); the slot
# goes back when the thread's Python locals go, or, for a C thread whose
# Python state cffi keeps after it ended, when the next thread registers
# (_sweep_locked: its native id is gone from /proc/self/task), and at the
# run's end for every thread (_finish), before the control block is closed.  Functions run in a
# copy of main's context: the primitives find a process of the run there.
#
# The races (docs/ARCHITECTURE.md, T1-T4):
#   T1  a call enters while the run shuts down.  `finished` and `inflight`
#       change under the token's lock: a call counts itself in flight only
#       while the run is not finished; the run thread, at shutdown (_finish),
#       sets finished, then gives the VM up and waits until nothing is in
#       flight before it closes the control block that those calls wait on.
#       A call that owns the VM after the halt runs nothing and raises
#       RunFinishedError.
#   T2  fn makes a process runnable while every worker is parked.  _publish
#       runs before the disown (the heartbeat sees the work), and the unpark
#       (and the epoll wake-up, for an owner idling in epoll) after it: the run thread, if parked, wakes and owns; if it was not
#       parked, the unpark does nothing and it sees the run queue at its
#       next scheduling point.
#   T3  a thread of the run in a callout calls in.  It owns the VM with its
#       own slot (the callout has disowned it), runs fn, disowns; the
#       callout's own end then owns as usual.  A thread that owns the VM
#       cannot call in (it would wait for itself): refused at once.
#   T4  a C thread ends while its slot is registered.  Its Python state
#       (and so its threading.local) may outlive it, so the slot may never
#       be given back by _ForeignSlot; the next registration, under the
#       lock, gives back every slot whose thread id is gone (_sweep_locked),
#       and _finish the rest: a slot is given back once, by whichever finds
#       it still in _slots under the lock.

from __future__ import annotations

import contextvars
import os
import queue
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar, TypeVarTuple

from . import _scheduler
from ._errors import check, error
from ._native import ffi, lib
from ._callout_ext import bind as _guard_bind
from ._scheduler import (
    _EINTR, _INTERRUPTIBLE, _Runtime, _ThreadState, _disown, _here, _own_wait, _owns, _publish, _spawn,
)  # fmt: skip

__all__ = ["RunFinishedError", "RunToken", "current_token"]

T = TypeVar("T")
Ts = TypeVarTuple("Ts")

_STOP = object()  # tells the run_sync_soon thread to exit
_bind_thread = lib.vmown_bind_thread


class RunFinishedError(RuntimeError):
    """The run the token belongs to has finished (or is shutting down): nothing can run in it."""


class RunToken:
    """A handle on a running :func:`vmown.run`, for calling into it from other threads.

    Get it with :func:`vmown.current_token` inside a process; pass it to any
    thread.  :meth:`run_sync` and :meth:`run` block the calling thread until
    the function ran in the VM; :meth:`run_sync_soon` only queues.
    """

    __slots__ = (
        "_rt", "_ctx", "_lock", "_idle", "_finished", "_inflight", "_soon", "_soon_thread", "_handed_out",
        "_local", "_slots",
    )  # fmt: skip

    def __init__(self, rt: _Runtime, ctx: contextvars.Context) -> None:
        self._rt = rt
        self._ctx = ctx  # main's: functions run in a copy of it
        self._handed_out = False  # current_token() gave it out: no deadlock detection (owner only)
        # Slots of threads that do not serve the run, registered at their
        # first call and kept while they live (_ForeignSlot gives one back at
        # the thread's exit, _finish the rest): under _lock.
        self._local = threading.local()
        self._slots: dict[int, int] = {}  # slot -> the native id of its thread
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)  # notified when _inflight drops to 0
        # Invariant (under _lock): _finished only goes False -> True; while
        # it is True, _inflight only goes down (T1).
        self._finished = False
        self._inflight = 0
        self._soon: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._soon_thread: threading.Thread | None = None

    # ---- the public calls ----

    def run_sync(self, fn: Callable[[*Ts], T], *args: *Ts) -> T:
        """Run ``fn(*args)`` in the VM, from a thread that does not own it; return its result.

        Blocks the calling thread until the VM ran it (at the owner's next
        scheduling point, or at once if the VM is idle); ``fn``'s exception
        is raised here.  ``fn`` may use every entry point of the run
        (``Event.set``, ``vmown.spawn``, ``Queue.put_nowait``...).  Raises
        :class:`vmown.RunFinishedError` once the run has finished, and
        RuntimeError from a thread that owns the VM (call ``fn`` directly).
        """
        return self._call(self._ctx.copy().run, fn, *args)  # type: ignore[no-any-return]

    def run(self, afn: Callable[[*Ts], Coroutine[Any, Any, T]], *args: *Ts) -> T:
        """Run ``await afn(*args)`` as a new process of the run; block until it is done; return its result.

        The rules of :meth:`run_sync`; the process runs among the others
        (cancelled only if the run ends first: then RunFinishedError).
        """
        done = threading.Event()
        outcome: list[Any] = []

        async def process() -> None:
            try:
                outcome.append((True, await afn(*args)))
            except BaseException as exc:  # noqa: BLE001 - handed to the waiting thread
                outcome.append((False, exc))
            finally:
                done.set()

        rt = self._rt
        self._call(_spawn, rt, process, (), self._ctx.copy())
        done.wait()
        if not outcome:  # closed by the run's end before it finished
            raise RunFinishedError(f"the run ended before {_name(afn)} finished")
        ok, value = outcome[0]
        if ok:
            return value  # type: ignore[no-any-return]
        raise value

    def run_sync_soon(self, fn: Callable[[*Ts], object], *args: *Ts) -> None:
        """Queue ``fn(*args)`` to run in the VM soon, and return at once.

        Calls run in the order they were queued, from any thread and from a
        signal handler (the queue's put is reentrant and never blocks).  If
        ``fn`` raises, the run ends with that exception.  Raises
        :class:`vmown.RunFinishedError` once the run has finished.
        """
        if self._finished:
            raise RunFinishedError("the run this token belongs to has finished")
        self._soon.put((fn, args))

    def __repr__(self) -> str:
        return f"<vmown.RunToken {'finished' if self._finished else 'running'}>"

    # ---- getting in (see the notes) ----

    # _call is the whole way in of every foreign callback (_callback.py) and
    # of run_sync: the steps are written out in it, not spread over helpers,
    # because each Python call on it costs as much as a C call of the core.
    def _call(self, body: Callable[..., T], *args: Any) -> T:
        rt = self._rt
        if _owns():
            raise RuntimeError(
                "this thread owns the VM: call the function directly (token.run_sync from the VM's own "
                "thread would wait for itself)"
            )
        lock = self._lock
        with lock:
            if self._finished:
                raise RunFinishedError("the run this token belongs to has finished")
            self._inflight += 1
        try:
            here = _here.state
            if here is not None and here.cb == rt.cb:  # T3: a thread of the run, in a callout
                slot, state = here.slot, None
            else:
                try:
                    slot, state = self._local.entry
                except AttributeError:
                    slot, state = self._foreign_slot()
            cb = rt.cb
            rc = _own_wait(cb, slot, -1, _INTERRUPTIBLE)
            if rc:
                _own_slow(cb, slot, rc)
            try:
                if rt.halt:
                    raise RunFinishedError("the run this token belongs to has finished")
                if state is None:
                    return body(*args)
                # Bound while body runs: for Python, for the guard, and for
                # the callouts body makes (they give the VM up, as a step's do).
                _here.state = state
                _guard_bind(rt.owner_address, slot)
                _bind_thread(cb, slot)
                try:
                    return body(*args)
                finally:
                    _bind_thread(ffi.NULL, 0)
                    _here.state = None
                    _guard_bind(0, 0)
            finally:
                _leave(rt, slot)
        finally:
            with lock:
                self._inflight -= 1
                if not self._inflight and self._finished:  # only _finish waits, once finished
                    self._idle.notify_all()

    def _foreign_slot(self) -> tuple[int, _ThreadState]:
        """This thread's slot in the run's block (registered at its first call), and its state."""
        local = self._local
        rt = self._rt
        with self._lock:  # counted in flight: _finish has not unregistered the slots yet
            self._sweep_locked()
            slot = check(lib.vmown_register(rt.cb), "registering a thread")
            self._slots[slot] = threading.get_native_id()
        local.entry = slot, _ThreadState(rt.cb, slot, run_thread=False)
        local.release = _ForeignSlot(self, slot)  # gives the slot back when the thread's locals go
        return local.entry  # type: ignore[no-any-return]

    def _sweep_locked(self) -> None:
        """Give back the slots of threads that have ended (a C thread's Python locals may outlive it)."""
        for slot, tid in list(self._slots.items()):
            if not os.path.exists(f"/proc/self/task/{tid}"):
                del self._slots[slot]
                lib.vmown_unregister(self._rt.cb, slot)

    # ---- run_sync_soon's thread ----

    def _start_soon_thread(self) -> None:
        thread = threading.Thread(target=self._serve_soon, name="vmown run_sync_soon", daemon=True)
        thread.start()
        self._soon_thread = thread

    def _serve_soon(self) -> None:
        while True:
            batch = [self._soon.get()]
            while not self._soon.empty():
                batch.append(self._soon.get_nowait())
            stop = any(item is _STOP for item in batch)
            calls = [item for item in batch if item is not _STOP]
            if calls:
                try:
                    self._call(self._run_batch, calls)
                except RunFinishedError:
                    return
            if stop:
                return

    def _run_batch(self, calls: list[tuple[Callable[..., object], tuple[Any, ...]]]) -> None:
        """Owner: run queued calls in order; the first that raises ends the run with its exception."""
        for fn, args in calls:
            try:
                self._ctx.copy().run(fn, *args)
            except BaseException as exc:  # noqa: BLE001 - the run ends with it
                _scheduler._halt(self._rt, exc)
                return

    # ---- the run's end (T1) ----

    def _finish(self, me: _ThreadState) -> None:
        """Run thread, owning the VM, at shutdown: refuse new calls, let those in flight out (T1)."""
        rt = self._rt
        with self._lock:
            self._finished = True
            busy = self._inflight > 0 or self._soon_thread is not None
        _active.remove(self)
        if busy:
            self._soon.put(_STOP)
            _scheduler._release(rt, me)  # calls in flight need the VM to get out
            with self._lock:
                while self._inflight:
                    self._idle.wait(0.05)
            if self._soon_thread is not None:
                self._soon_thread.join()
            _scheduler._own(rt, me)
        with self._lock:  # nothing in flight, nothing new: the block may be closed
            for slot in self._slots:
                lib.vmown_unregister(rt.cb, slot)
            self._slots.clear()


class _ForeignSlot:
    """A thread's slot in a run's block; given back when the thread's locals go (at its exit)."""

    __slots__ = ("token", "slot")

    def __init__(self, token: RunToken, slot: int) -> None:
        self.token = token
        self.slot = slot

    def __del__(self) -> None:
        token = self.token
        with token._lock:
            if token._slots.pop(self.slot, None) is not None:  # else _finish or a sweep gave it back
                lib.vmown_unregister(token._rt.cb, self.slot)


# The tokens of the runs in progress in this process (callbacks from C
# threads find their run here, _callback.py).
_active: list[RunToken] = []


def _start(rt: _Runtime, ctx: contextvars.Context) -> RunToken:
    """Run thread, at the run's start: the run's token (not handed out yet)."""
    token = RunToken(rt, ctx)
    _active.append(token)
    return token


def current_token() -> RunToken:
    """The token of the run the calling process belongs to (call it from a process).

    Hand it to other threads: ``token.run_sync(fn, *args)``,
    ``token.run(afn, *args)`` and ``token.run_sync_soon(fn, *args)`` run in
    the VM from there.  Each run has one token; while it exists the run does
    not report deadlocks (a thread may wake a process at any time).
    """
    token: RunToken = _scheduler._current("vmown.current_token()")._rt.token
    if not token._handed_out:
        token._handed_out = True
        token._start_soon_thread()
    return token


def _own_slow(cb: Any, slot: int, rc: int) -> None:
    """vmown_own_wait returned ``rc`` (not 0): wait again after a signal, raise on an error."""
    while rc:
        if rc != _EINTR:
            raise error(rc, "own")
        rc = _own_wait(cb, slot, -1, _INTERRUPTIBLE)


def _leave(rt: _Runtime, slot: int) -> None:
    """Publish the work made, disown, wake the run thread if a process became runnable (T2).

    The publish is skipped when the block holds what it would store already:
    nothing runnable, none published, the same earliest deadline (only
    _publish writes those words, and it updates the run's copy of them).
    """
    run_queue, timers = rt.run_queue, rt.timers
    if run_queue or rt.published_runnable or rt.halt or (timers[0][0] if timers else 0) != rt.published_timer_ns:
        _publish(rt)
    wake = bool(run_queue)
    rt.releases += 1
    check(_disown(rt.cb, slot, 0), "disown")
    if wake:
        lib.vmown_unpark(rt.cb, rt.run_slot)
        _scheduler._wake_poller(rt)  # or the thread idling in epoll (_scheduler, N4)


def _name(fn: Any) -> str:
    return getattr(fn, "__qualname__", None) or repr(fn)

