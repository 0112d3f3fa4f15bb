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
#               thread), else one registered for the call
#     own       vmown_own_wait: one CAS if the VM is unowned (every worker
#               parked), else FIFO in the queue; the owner hands the VM over
#               at its next scheduling point (_serve sees the waiter count)
#     run fn    in a copy of the context current_token() was called in, with
#               the guard bound to the slot: fn is an owner like any step
#     leave     publish the work fn made (_publish), disown, and unpark the
#               run thread if fn made a process runnable (else the
#               heartbeat's activation would take a tick)
#
# No thread of the run is borrowed and nothing is queued for the loop to
# poll: the hot loop is unchanged.  run(afn) spawns afn as a process that way
# and waits on a threading.Event for its outcome; run_sync_soon puts the call
# in a queue.SimpleQueue (its put is reentrant: safe from a signal handler,
# and never blocks) read by one thread per token that runs the calls in FIFO
# order, each batch in one ownership.
#
# Deadlock detection.  Once a token exists, a thread may call in at any time:
# the scheduler no longer calls "every process waits" a deadlock
# (_scheduler._park reads rt.token).
#
# The races (docs/ARCHITECTURE.md, T1-T3):
#   T1  a call enters while the run shuts down.  `finished` and `inflight`
#       change under the token's lock: a call counts itself in flight only
#       while the run is not finished; the run thread, at shutdown (_finish),
#       sets finished, then gives the VM up and waits until nothing is in
#       flight before it closes the control block that those calls wait on.
#       A call that owns the VM after the halt runs nothing and raises
#       RunFinishedError.
#   T2  fn makes a process runnable while every worker is parked.  _publish
#       runs before the disown (the heartbeat sees the work), and the unpark
#       after it: the run thread, if parked, wakes and owns; if it was not
#       parked, the unpark does nothing and it sees the run queue at its
#       next scheduling point.
#   T3  a thread of the run in a callout calls in.  It owns the VM with its
#       own slot (the callout has disowned it), runs fn, disowns; the
#       callout's own end then owns as usual.  A thread that owns the VM
#       cannot call in (it would wait for itself): refused at once.

from __future__ import annotations

import contextvars
import queue
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar, TypeVarTuple

from . import _scheduler
from ._errors import check, error
from ._native import lib
from ._scheduler import _Runtime, _ThreadState, _bind_here, _here, _owns, _publish, _spawn

__all__ = ["RunFinishedError", "RunToken", "current_token"]

T = TypeVar("T")
Ts = TypeVarTuple("Ts")

_STOP = object()  # tells the run_sync_soon thread to exit


class RunFinishedError(RuntimeError):
    """The run the token belongs to has finished (or is shutting down): nothing can run in it."""


class RunToken:
    """A handle on a running :func:`vmown.run`, for calling into it from other threads.

    Get it with :func:`vmown.current_token` inside a process; pass it to any
    thread.  :meth:`run_sync` and :meth:`run` block the calling thread until
    the function ran in the VM; :meth:`run_sync_soon` only queues.
    """

    __slots__ = ("_rt", "_ctx", "_lock", "_idle", "_finished", "_inflight", "_soon", "_soon_thread")

    def __init__(self, rt: _Runtime, ctx: contextvars.Context) -> None:
        self._rt = rt
        self._ctx = ctx  # functions run in a copy of it
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
        return self._call(lambda: self._ctx.copy().run(fn, *args))  # type: ignore[no-any-return]

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
        self._call(lambda: _spawn(rt, process, (), self._ctx.copy()))
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

    def _call(self, body: Callable[[], T]) -> T:
        rt = self._rt
        if _owns():
            raise RuntimeError(
                "this thread owns the VM: call the function directly (token.run_sync from the VM's own "
                "thread would wait for itself)"
            )
        with self._lock:
            if self._finished:
                raise RunFinishedError("the run this token belongs to has finished")
            self._inflight += 1
        try:
            here = _here.state
            mine = here is not None and here.cb == rt.cb  # T3: a thread of the run, in a callout
            slot = here.slot if mine else check(lib.vmown_register(rt.cb), "registering a thread")  # type: ignore[union-attr]
            try:
                _own(rt.cb, slot)
                try:
                    if rt.halt:
                        raise RunFinishedError("the run this token belongs to has finished")
                    if not mine:
                        _bind_here(rt, _ThreadState(rt.cb, slot, run_thread=False))
                    try:
                        return body()
                    finally:
                        if not mine:
                            _bind_here(None, None)
                finally:
                    _leave(rt, slot)
            finally:
                if not mine:
                    lib.vmown_unregister(rt.cb, slot)
        finally:
            with self._lock:
                self._inflight -= 1
                if not self._inflight:
                    self._idle.notify_all()

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
                    self._call(lambda: self._run_batch(calls))
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
        """Run thread, owning the VM, at shutdown: refuse new calls, let those in flight out."""
        rt = self._rt
        with self._lock:
            self._finished = True
        self._soon.put(_STOP)
        _scheduler._release(rt, me)  # calls in flight need the VM to get out
        with self._lock:
            while self._inflight:
                self._idle.wait(0.05)
        if self._soon_thread is not None:
            self._soon_thread.join()
        _scheduler._own(rt, me)


def current_token() -> RunToken:
    """The token of the run the calling process belongs to (call it from a process).

    Hand it to other threads: ``token.run_sync(fn, *args)``,
    ``token.run(afn, *args)`` and ``token.run_sync_soon(fn, *args)`` run in
    the VM from there.  Each run has one token; while it exists the run does
    not report deadlocks (a thread may wake a process at any time).
    """
    proc = _scheduler._current("vmown.current_token()")
    rt = proc._rt
    if rt.token is None:
        token = RunToken(rt, contextvars.copy_context())
        token._start_soon_thread()
        rt.token = token
    return rt.token  # type: ignore[no-any-return]


def _own(cb: Any, slot: int) -> None:
    rc = lib.vmown_own_wait(cb, slot, -1, lib.VMOWN_WAIT_INTERRUPTIBLE)
    while rc:
        if rc != lib.VMOWN_EINTR:
            raise error(rc, "own")
        rc = lib.vmown_own_wait(cb, slot, -1, lib.VMOWN_WAIT_INTERRUPTIBLE)


def _leave(rt: _Runtime, slot: int) -> None:
    """Publish the work made, disown, wake the run thread if a process became runnable (T2)."""
    _publish(rt)
    wake = bool(rt.run_queue)
    rt.releases += 1
    check(lib.vmown_disown(rt.cb, slot, 0), "disown")
    if wake:
        lib.vmown_unpark(rt.cb, rt.run_slot)


def _name(fn: Any) -> str:
    return getattr(fn, "__qualname__", None) or repr(fn)

