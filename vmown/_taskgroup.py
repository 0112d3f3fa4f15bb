# Task groups: structured concurrency for the processes of one vmown.run().
#
# `async with vmown.TaskGroup() as tg: tg.spawn(fn, *args)` is trio's nursery
# (asyncio's TaskGroup): the block does not end before every child has, so a
# child never outlives the code that started it, and its failure has a place
# to go.  The rules:
#   - the block's end waits for every child, uncancellably (the join is
#     marked _uncancellable, _cancel.py race K6): cancelling the block
#     cancels the children, and the block ends when they have;
#   - the group is a CancelScope entered by the parent; each child's chain
#     of scopes goes on into it (child._parent), so cancelling any scope
#     around the block -- or the group itself, when a child fails --
#     cancels every child (_cancel._refresh walks proc._groups);
#   - a child that raises (anything but the Cancelled of its group) cancels
#     the group; once all have ended, the failures (and the body's, if it
#     raised) come out of the block as one ExceptionGroup, so `except*`
#     sorts them.  A child's failure is never silent: it is in the group
#     whether or not anybody awaits the child's Process; the Cancelled of
#     cancelled children is not (it is how they stopped, not a failure).
#
# Rejected: joining the children one by one in spawn order (a failure of a
# later child would not cancel the others until the earlier ones ended), and
# a callback list on every process (a slot per process for what only group
# children need): _finish calls the group of a child directly (proc._group).

from __future__ import annotations

import contextvars
from types import TracebackType
from typing import Any, Callable, Coroutine, TypeVar, TypeVarTuple

from ._cancel import Cancelled, CancelScope, _cancelled
from ._scheduler import _WAITING, Process, _current, _spawn, _suspend, _wake

__all__ = ["TaskGroup"]

T = TypeVar("T")
Ts = TypeVarTuple("Ts")


class TaskGroup:
    """A block whose end waits for every process spawned into it (trio's nursery).

    ``async with vmown.TaskGroup() as tg: tg.spawn(fn, *args)``.  If a child
    raises, the others and the block's body are cancelled and, once all have
    ended, the errors come out of the block as an :class:`ExceptionGroup`
    (catch them with ``except*``).  Cancelling a scope around the block
    cancels the children.  :attr:`cancel_scope` cancels the whole group.
    """

    __slots__ = ("_scope", "_proc", "_children", "_errors", "_joining", "_closed")

    # The join at the end of the block waits for the children even when the
    # parent is cancelled (_cancel.py, race K6).
    _uncancellable = True

    def __init__(self) -> None:
        self._scope = CancelScope()
        self._proc: Process[Any] | None = None  # the process whose block this is
        self._children: dict[Process[Any], None] = {}  # alive, in spawn order
        self._errors: list[BaseException] = []
        self._joining = False  # the parent waits in __aexit__
        self._closed = False

    @property
    def cancel_scope(self) -> CancelScope:
        """The group's :class:`CancelScope`: ``tg.cancel_scope.cancel()`` cancels the body and every child."""
        return self._scope

    async def __aenter__(self) -> TaskGroup:
        proc = _current("TaskGroup")
        if self._proc is not None:
            raise RuntimeError("a TaskGroup can be entered only once: make a new one")
        self._proc = proc
        self._scope.__enter__()
        if proc._groups is None:
            proc._groups = []
        proc._groups.append(self)
        return self

    def spawn(self, fn: Callable[[*Ts], Coroutine[Any, Any, T]], *args: *Ts) -> Process[T]:
        """Start ``fn(*args)`` as a child of the group; return its :class:`Process`.

        May be called from any process of the run while the block is open
        (the children included).
        """
        spawner = _current("TaskGroup.spawn()")
        if self._proc is None or self._closed:
            raise RuntimeError("spawn into a TaskGroup inside its `async with` block, not before or after")
        child = _spawn(spawner._rt, fn, args, contextvars.copy_context())
        child._parent = self._scope
        child._group = self
        child._retrieved = True  # its failure goes to the group
        if _cancelled(child):
            child._cancel_pending = True
        self._children[child] = None
        return child

    def _child_done(self, child: Process[Any]) -> None:
        """A child ended (_scheduler._finish): keep its failure, cancel the group for it."""
        del self._children[child]
        exc = child._exception
        if exc is not None and not child._cancelled:
            self._errors.append(exc)
            self._scope._cancel(child._rt)
        if self._joining and not self._children:
            self._joining = False
            proc = self._proc
            if proc is not None and proc._state is _WAITING:
                _wake(proc)

    def _forget(self, proc: Process[Any]) -> None:
        """The parent is being closed (the run ends): nobody waits any more."""
        self._joining = False

    async def __aexit__(
        self, etype: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool:
        proc = self._proc
        assert proc is not None
        if isinstance(exc, GeneratorExit):  # the run is closing its processes: nobody to wait for
            self._closed = True
            if proc._groups is not None:
                proc._groups.remove(self)
            self._scope.__exit__(etype, exc, tb)
            return False
        if exc is not None and not isinstance(exc, Cancelled):
            self._errors.append(exc)
            self._scope._cancel(proc._rt)
        while self._children:
            self._joining = True
            proc._waiting_on = self
            await _suspend()
        self._closed = True
        groups = proc._groups
        if groups is not None:
            groups.remove(self)
        swallowed = self._scope.__exit__(etype, exc, tb)
        if self._errors:
            errors, self._errors = self._errors, []
            raise BaseExceptionGroup("errors in a vmown.TaskGroup", errors)
        if exc is None and proc._cancel_pending:
            # The end of the block is a checkpoint: a cancelled scope around
            # it (which cancelled the children) is left from here.
            raise Cancelled(f"{proc!r} is in a cancelled scope")
        return swallowed

    def __repr__(self) -> str:
        return f"<vmown.TaskGroup children={len(self._children)} cancelled={self._scope.cancel_called}>"
