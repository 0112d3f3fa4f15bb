# Cancellation and timeouts: cancel scopes, deadlines, Process.cancel().
#
# What it is for
# --------------
# A program that waits must be able to stop waiting: a timeout around any
# wait, a process cancelled by another one, every child of a task group
# cancelled when one of them fails.  The model is trio's: a *cancel scope*
# is a `with` block; cancelling it (by .cancel() or by its deadline) raises
# Cancelled in the processes inside it at every checkpoint and every wait --
# again at each one until they leave the scope -- and the scope catches the
# Cancelled that reaches its end.  A deadline is an attribute of a scope, so
# timeouts compose: the earliest enclosing deadline wins and the scope that
# fired is the one that catches.
#
# Three kinds of node, one chain
# ------------------------------
#   - CancelScope: _cancel_called, _shield, _parent (the node it was entered
#     in), _proc (the process that entered it), _timer (its deadline's entry
#     in the run's timer heap).
#   - Process: the outermost node of its own chain (it never shields);
#     Process.cancel() sets its _cancel_called.  A child of a task group has
#     as _parent the task group's scope, so the chain goes on into the
#     parent's scopes.
#   - the chain of a process: proc._scope (innermost) -> _parent -> ... ->
#     the process -> (task group scope -> ... -> the parent process -> ...).
# A process is cancelled (_cancelled) if walking its chain outwards meets a
# cancelled node before, or at, a shielded one.
#
# Rejected designs
# ----------------
#   - Walking the chain at every checkpoint: ~100 ns on each `await
#     checkpoint()`, which costs ~150 ns in all.  Instead each process keeps
#     _cancel_pending, recomputed whenever its chain changes (a scope entered
#     with a shield, a scope left, a cancel, a shield set), and the loop tests
#     one attribute where a step yields (_scheduler._trap, the checkpoint
#     branch of _serve).
#   - A scan of every process of the run at each cancel: a deadline firing in
#     a run of 10,000 processes would cost milliseconds.  A scope belongs to
#     one process, so what it can reach is that process and the children of
#     the task groups open in it (_refresh walks exactly those).
#   - Removing a deadline from the heap when its scope is left (O(n)), or a
#     heap per scope: entries are dropped lazily (target set to None), the
#     heap's head is kept live, and the heap is rebuilt when more than half
#     of it is dropped (_scheduler._drop_timer).  Entering and leaving a
#     `move_on_after` that does not fire is a push and a pop.
#   - Abandoning a process blocked in a callout: its frame is on that
#     thread's stack and the C code runs on.  The cancel is delivered when
#     the call returns, as an asynchronous exception on that thread
#     (PyThreadState_SetAsyncExc), which CPython raises at the eval-breaker
#     check that follows the call: the callout raises Cancelled, and the code
#     after it does not run.  Opt-in interrupts (_callout.py, INTERRUPT_*)
#     make the call itself return early.
#   - Throwing Cancelled into a process that a primitive has already woken
#     (it holds the lock, it has the item): the value would be lost.  Only a
#     process still WAITING or SLEEPING is interrupted; a RUNNABLE one gets
#     Cancelled at its next checkpoint.
#
# How a cancel travels (all of it by the owner of the VM)
# -------------------------------------------------------
#   1. scope.cancel() / its deadline / Process.cancel(): _cancel_called = True;
#      _refresh(the scope's process).
#   2. _refresh(proc): if _cancelled(proc) and it was not pending, set
#      _cancel_pending and interrupt its wait (_interrupt): a sleeper's timer
#      entry is dropped, a waiter is taken out of its primitive's queue
#      (_forget) -- then it is made runnable with Cancelled to throw; a
#      process in a callout on another thread gets the asynchronous
#      exception (and its interrupt, if it has one).  Then the same for each
#      child of each task group open in proc.
#   3. A process that yields with _cancel_pending set (a checkpoint, a sleep,
#      a wait, a join) gets Cancelled at once instead (_scheduler._trap); a
#      wait that would not block raises it in the primitive (_sync).
#   4. The scope's __exit__ pops it, drops its timer, recomputes the pending
#      flag from the chain and swallows Cancelled if the scope itself was
#      cancelled (cancelled_caught).  An outer scope that is cancelled too
#      raises again at the next checkpoint.
#
# The races, as interleavings, and why the code is right
# ------------------------------------------------------
# K1. A primitive hands over, then the waiter's scope is cancelled, in the
#     same turn of the owner:  Q: lock.release() -> P holds it, RUNNABLE
#                              timer: P's deadline passes -> _refresh(P)
#     _interrupt leaves RUNNABLE processes alone, so P resumes from acquire()
#     holding the lock and raises Cancelled at its next checkpoint, inside
#     its `async with`, which releases.  Nothing is lost or given twice.
#     Test: test_cancel.py::test_k1_handed_over_then_cancelled_keeps_the_lock.
# K2. A waiter is cancelled, then the primitive is released:
#                              timer: P's deadline -> P leaves the lock's queue
#                              Q: lock.release() -> goes to R, the next waiter
#     _interrupt calls the primitive's _forget before making P runnable, so
#     no release can reach P.  Test: test_k2_cancelled_waiter_leaves_the_queue
#     (also with the core's race-widening switch on, while the processes
#     migrate between threads through blocking callouts).
# K3. A sleep and the deadline around it are due in the same pass of
#     _release_timers: entries pop in deadline order (ties: the one pushed
#     first).  The sleep first: P is RUNNABLE, its sleep completed, and the
#     deadline makes Cancelled pending for its next checkpoint.  The
#     deadline first: P's sleep entry is dropped (target None), the pass
#     skips it.  Test: test_k3_sleep_and_deadline_due_together.
# K4. A process in a callout on thread B is cancelled by the owner on A:
#       B: begin (disown) ... in C ...            A: owns: _refresh(P)
#       A: PyThreadState_SetAsyncExc(B, Cancelled)
#       B: back: own (waits for A to release) ... eval breaker: raise
#     B runs no bytecode between its disown and its own, and it cannot own
#     while A does, so the exception cannot land before the call returns
#     (for a C callee) nor after the step's next bytecode.  P stays RUNNING
#     with _cancel_pending set, so a second cancel does not raise twice.
#     Caution: a Python function called through vmown.callout runs bytecode
#     while disowned: the exception is raised inside it.  Test:
#     test_k4_callout_raises_cancelled_on_return (with the race-widening
#     switch: the own after the call is slowed).
# K5. A process cancels a scope of its own (it is RUNNING on this thread):
#     no asynchronous exception (it would land in the canceller's own frame,
#     anywhere); the flag makes its next checkpoint raise.  Test:
#     test_k5_cancel_own_scope_raises_at_next_checkpoint.
# K6. A task group's parent waits in __aexit__ while its scope is cancelled:
#     the join is marked _uncancellable, so _cancellable leaves it waiting;
#     the children are cancelled through the group and the last one to end
#     wakes the parent.  Test: test_taskgroup.py::
#     test_outer_cancel_while_the_parent_waits_at_the_end_of_the_block.
# K7. A scope is left with its deadline still in the heap at its head: the
#     entry is dropped and popped at once, so the heartbeat is not told of a
#     timer that no longer exists (a stale head would cost it one needless
#     activation, nothing else).  Test: test_k7_heap_stays_small.
# K8. An interrupt reaches a thread that has left the call (_callout.py,
#     "The per-call state word"): the wait for the VM retries on EINTR.
#     Test: test_callout.py::test_k8_interrupting_a_thread_that_left_the_call_is_harmless
#     (with the race-widening switch).
# K9. The callee of a callout raises (a socket timeout, say) while the cancel
#     is on its way: the CALL that failed makes no eval-breaker check, so the
#     asynchronous Cancelled lands at the next one -- in the handler that
#     runs next, or at the entry of the cancel scope's __exit__, which then
#     never runs.  The scope stays on the chain; the next scope out finds it
#     there with a Cancelled in flight and leaves it (_unwind), catching the
#     Cancelled if the abandoned scope was cancelled; a process that ends
#     with a Cancelled it did not catch is a cancelled process (_finish), it
#     never halts the run.  Interruptible wrappers take the exception back
#     themselves and raise in place (_callout._interruptible).  Test:
#     test_k9_a_callee_that_raises_while_cancelled.
#
# Assumptions: the owner of the VM is the only thread that touches any of
# this (cancel() refuses other threads); CPython checks asynchronous
# exceptions at the eval breaker right after a call returns (3.11+).

from __future__ import annotations

import ctypes
import heapq
import math
import threading
import time
from types import TracebackType
from typing import Any

from . import _callout
from ._scheduler import (
    _DONE,
    _RUNNING,
    _SLEEPING,
    _WAITING,
    Process,
    _current,
    _drop_timer,
    _now,
    _process_var,
    _publish,
    _Runtime,
    _throw_cancelled,
)

__all__ = [
    "CancelScope",
    "Cancelled",
    "ProcessCancelled",
    "TooSlowError",
    "current_time",
    "fail_after",
    "fail_at",
    "move_on_after",
    "move_on_at",
]


class Cancelled(BaseException):
    """Raised in a process inside a cancelled :class:`CancelScope`, at every checkpoint and wait.

    A BaseException, so that ``except Exception`` does not swallow it: let it
    propagate (``finally`` blocks run) to the scope that was cancelled, which
    catches it.  A callout that was running when its scope was cancelled
    raises it when it returns.
    """


class TooSlowError(Exception):
    """Raised by :func:`fail_after` and :func:`fail_at` when the deadline passes inside the block."""


class ProcessCancelled(Exception):
    """What awaiting a process that was cancelled (:meth:`Process.cancel`) raises.

    The awaiter is not itself cancelled, so it gets an ordinary exception;
    its ``__cause__`` is the Cancelled the process ended with.  A process
    that is itself cancelled gets Cancelled at the await instead.
    """


def current_time() -> float:
    """The clock of deadlines: seconds of the monotonic clock (``time.monotonic()``)."""
    return time.monotonic()


_set_async_exc = ctypes.PYFUNCTYPE(ctypes.c_int, ctypes.c_ulong, ctypes.py_object)(
    ("PyThreadState_SetAsyncExc", ctypes.pythonapi)
)


# ---- the chain ----


def _cancelled(proc: Process[Any]) -> bool:
    """Whether ``proc``'s chain meets a cancelled node before (or at) a shield."""
    node: Any = proc._scope
    while node is not None:
        if node._cancel_called:
            return True
        if node._shield:
            return False
        node = node._parent
    return False


def _refresh(rt: _Runtime, proc: Process[Any]) -> None:
    """Recompute ``proc``'s pending flag, interrupt it if it became cancelled; same for its groups' children."""
    if proc._state is _DONE:
        return
    now_cancelled = _cancelled(proc)
    if now_cancelled and not proc._cancel_pending:
        proc._cancel_pending = True
        _interrupt(rt, proc)
    else:
        proc._cancel_pending = now_cancelled
    for group in proc._groups or ():
        for child in list(group._children):
            _refresh(rt, child)


def _interrupt(rt: _Runtime, proc: Process[Any]) -> None:
    """Stop the wait ``proc`` is in, so that it raises Cancelled (see "How a cancel travels")."""
    state = proc._state
    if state is _SLEEPING:
        entry, proc._timer = proc._timer, None
        if entry is not None:
            _drop_timer(rt, entry)
        _throw_cancelled(rt, proc)
    elif state is _WAITING:
        waiting_on = proc._waiting_on
        if waiting_on is not None:
            if getattr(waiting_on, "_uncancellable", False):
                return  # K6: a task group's join
            waiting_on._forget(proc)  # type: ignore[attr-defined]  # K2
            proc._waiting_on = None
        _throw_cancelled(rt, proc)
    elif state is _RUNNING:
        thread = proc._thread
        if thread is None or thread.ident == threading.get_ident():
            return  # K5: it is the canceller
        # K4: in a callout on another thread, which cannot run Python until
        # this owner lets the VM go.
        _set_async_exc(thread.ident, Cancelled)
        _callout._interrupt_callout(proc, thread)
    # RUNNABLE (K1), or RUNNING here (K5): the next checkpoint raises.


def _cancel_process(proc: Process[Any]) -> None:
    _current("Process.cancel()")
    if proc._state is _DONE or proc._cancel_called:
        return
    proc._cancel_called = True
    _refresh(proc._rt, proc)


# ---- scopes ----

_ACTIVE = 1
_EXITED = 2


class CancelScope:
    """A ``with`` block that can be cancelled, by :meth:`cancel` or by its deadline.

    ``CancelScope(deadline=t, shield=False)``: once cancelled, every
    checkpoint and wait of the processes inside it (this process, and the
    children of task groups opened inside it) raises :class:`Cancelled`,
    again at each one until the block is left; the scope catches the
    Cancelled that reaches its end and sets :attr:`cancelled_caught`.
    ``deadline`` is in :func:`current_time` seconds (``math.inf``: none); it
    can be changed while the scope is active.  ``shield=True`` holds off the
    cancellation of enclosing scopes until the block ends.  A scope is
    entered once, by one process, and scopes are left in the reverse order
    of entering.
    """

    __slots__ = (
        "_deadline_ns", "_relative_ns", "_shield", "_cancel_called", "cancelled_caught",
        "_proc", "_parent", "_timer", "_state",
    )  # fmt: skip

    def __init__(self, *, deadline: float = math.inf, shield: bool = False) -> None:
        self._deadline_ns: int | None = _to_ns(deadline)
        self._relative_ns: int | None = None  # move_on_after: counted from entering
        self._shield = bool(shield)
        self._cancel_called = False
        self.cancelled_caught = False  # the scope caught a Cancelled at its end
        self._proc: Process[Any] | None = None  # the process that entered it
        self._parent: Any = None  # the node it was entered in
        self._timer: list[Any] | None = None  # the deadline's heap entry, while active
        self._state = 0  # 0: new, _ACTIVE, _EXITED

    def __enter__(self) -> CancelScope:
        proc = _process_var.get(None)
        if proc is None:
            raise RuntimeError("a CancelScope must be entered in a process started by vmown.run()")
        if self._state:
            raise RuntimeError("a CancelScope can be entered only once: make a new one")
        self._state = _ACTIVE
        self._proc = proc
        self._parent = proc._scope
        proc._scope = self
        if self._cancel_called:
            proc._cancel_pending = True
        elif self._shield:
            proc._cancel_pending = False
        if self._relative_ns is not None:
            self._deadline_ns = _now() + self._relative_ns
        if self._deadline_ns is not None:
            self._arm(proc._rt)
        return self

    def __exit__(
        self, etype: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool:
        proc = self._proc
        if proc is None or self._state != _ACTIVE:
            raise RuntimeError("this CancelScope is not active")
        inner_caught = False
        if proc._scope is not self:
            inner_caught = self._unwind(proc, exc)
        self._state = _EXITED
        proc._scope = self._parent
        if self._timer is not None:
            _drop_timer(proc._rt, self._timer)
            self._timer = None
        proc._cancel_pending = _cancelled(proc)
        if exc is None or not (self._cancel_called or inner_caught):
            return False
        if isinstance(exc, Cancelled):
            self.cancelled_caught = True
            return True
        if isinstance(exc, BaseExceptionGroup):
            matched, rest = exc.split(Cancelled)
            if matched is not None:
                self.cancelled_caught = True
                if rest is None:
                    return True
                raise rest from exc.__cause__
        return False

    def _unwind(self, proc: Process[Any], exc: BaseException | None) -> bool:
        """K9: leave the inner scopes whose __exit__ an asynchronous Cancelled pre-empted.

        Returns whether one of them was cancelled (its Cancelled is caught
        here, one scope further out than it should have been).  Anything
        else is a scope left out of order: refused.
        """
        abandoned = []
        node = proc._scope
        while type(node) is CancelScope or type(node) is _FailScope:
            if node is self:
                break
            abandoned.append(node)
            node = node._parent
        if node is not self or not isinstance(exc, Cancelled):
            raise RuntimeError(
                f"cancel scopes left out of order in {proc!r}: leave the inner scope (or task group) first"
            )
        for inner in abandoned:
            inner._state = _EXITED
            if inner._timer is not None:
                _drop_timer(proc._rt, inner._timer)
                inner._timer = None
            if inner._cancel_called:
                inner.cancelled_caught = True
        return any(inner._cancel_called for inner in abandoned)

    def _arm(self, rt: _Runtime) -> None:
        """Put the deadline in the run's timer heap (and tell the heartbeat if it is the next)."""
        ns = self._deadline_ns
        assert ns is not None
        if ns <= _now():
            self._cancel(rt)
            return
        self._timer = entry = [ns, next(rt.timer_seq), self]
        heapq.heappush(rt.timers, entry)
        if rt.published_timer_ns == 0 or ns < rt.published_timer_ns:
            _publish(rt)  # a callout that blocks next must not hide this deadline

    def _expire(self) -> None:
        """The deadline passed (_scheduler._release_timers, race K3)."""
        self._timer = None
        if self._proc is not None:
            self._cancel(self._proc._rt)

    def _cancel(self, rt: _Runtime | None) -> None:
        if self._cancel_called:
            return
        self._cancel_called = True
        if self._state == _ACTIVE and rt is not None and self._proc is not None:
            if self._timer is not None:
                _drop_timer(rt, self._timer)
                self._timer = None
            _refresh(rt, self._proc)

    def cancel(self) -> None:
        """Cancel the scope (idempotent); may be called before it is entered, or after it is left."""
        _current("CancelScope.cancel()")
        self._cancel(self._proc._rt if self._proc is not None else None)

    @property
    def cancel_called(self) -> bool:
        """Whether the scope was cancelled, by :meth:`cancel` or by its deadline."""
        return self._cancel_called

    @property
    def deadline(self) -> float:
        """When the scope cancels itself, in :func:`current_time` seconds (``math.inf``: never).

        Settable, also while the scope is active: a deadline already passed
        cancels it at once.
        """
        if self._deadline_ns is None and self._relative_ns is not None:
            return current_time() + self._relative_ns / 1e9
        return math.inf if self._deadline_ns is None else self._deadline_ns / 1e9

    @deadline.setter
    def deadline(self, value: float) -> None:
        ns = _to_ns(value)
        proc = self._proc
        if self._state == _ACTIVE:
            _current("setting CancelScope.deadline")
        self._relative_ns = None
        self._deadline_ns = ns
        if self._state != _ACTIVE or proc is None:
            return
        if self._timer is not None:
            _drop_timer(proc._rt, self._timer)
            self._timer = None
        if ns is not None and not self._cancel_called:
            self._arm(proc._rt)

    @property
    def shield(self) -> bool:
        """Whether the scope holds off the cancellation of the scopes around it.  Settable."""
        return self._shield

    @shield.setter
    def shield(self, value: bool) -> None:
        proc = self._proc
        if self._state == _ACTIVE:
            _current("setting CancelScope.shield")
        self._shield = bool(value)
        if self._state == _ACTIVE and proc is not None:
            _refresh(proc._rt, proc)

    def __repr__(self) -> str:
        state = {0: "new", _ACTIVE: "active", _EXITED: "exited"}[self._state]
        cancelled = " cancelled" if self._cancel_called else ""
        return f"<vmown.CancelScope {state}{cancelled} deadline={self.deadline:.6f}>"


class _FailScope(CancelScope):
    """A CancelScope that turns the Cancelled it caught into TooSlowError (fail_after, fail_at)."""

    __slots__ = ()

    def __exit__(
        self, etype: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool:
        caught = super().__exit__(etype, exc, tb)
        if self.cancelled_caught:
            raise TooSlowError("the deadline of fail_after/fail_at passed") from None
        return caught


def _to_ns(deadline_s: float) -> int | None:
    if deadline_s != deadline_s:  # NaN
        raise ValueError("a deadline cannot be NaN")
    return None if deadline_s == math.inf else int(deadline_s * 1e9)


def _relative(seconds: float) -> int:
    if seconds != seconds or seconds < 0:
        raise ValueError(f"a timeout is a number of seconds >= 0, not {seconds!r}")
    return int(seconds * 1e9) if seconds != math.inf else -1


def move_on_after(seconds: float, *, shield: bool = False) -> CancelScope:
    """A :class:`CancelScope` whose deadline is ``seconds`` after the block is entered.

    If the deadline passes inside the block, the block is left at the next
    checkpoint or wait (or callout return) and execution goes on after it;
    ``scope.cancelled_caught`` says whether that happened.
    """
    scope = CancelScope(shield=shield)
    relative = _relative(seconds)
    if relative >= 0:
        scope._deadline_ns = None
        scope._relative_ns = relative
    return scope


def move_on_at(deadline: float, *, shield: bool = False) -> CancelScope:
    """A :class:`CancelScope` with the absolute ``deadline`` (in :func:`current_time` seconds)."""
    return CancelScope(deadline=deadline, shield=shield)


def fail_after(seconds: float, *, shield: bool = False) -> CancelScope:
    """Like :func:`move_on_after`, but raise :class:`TooSlowError` if the deadline passed inside the block."""
    scope = _FailScope(shield=shield)
    relative = _relative(seconds)
    if relative >= 0:
        scope._deadline_ns = None
        scope._relative_ns = relative
    return scope


def fail_at(deadline: float, *, shield: bool = False) -> CancelScope:
    """Like :func:`move_on_at`, but raise :class:`TooSlowError` if the deadline passed inside the block."""
    return _FailScope(deadline=deadline, shield=shield)
