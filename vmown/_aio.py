# vmown.aio: an asyncio event loop that owns a VM (issue 17, first stage).
#
# What is built.  EventLoop is asyncio's SelectorEventLoop (on Unix,
# _UnixSelectorEventLoop: signal handlers, subprocesses and Unix sockets come
# with it) plus a control block of its own.  The thread that runs the loop
# registers with the block, binds itself to it for C-level callouts
# (vmown_bind_thread) and owns the VM for as long as run_forever() runs; it
# disowns and unbinds when run_forever() returns (run_until_complete and
# asyncio.Runner go through run_forever).  A coroutine on the loop can then
# call a vmown.threaded(...) function inline: the callout disowns (one store),
# calls with the GIL released, and owns again (one CAS), as in a step of
# vmown.run (docs/ARCHITECTURE.md, "One call, three paths", fast path).  Other
# Python threads (run_in_executor, to_thread) are not bound: their callouts
# are plain calls.
#
# What is not built: the hand-over.  A callout that blocks keeps the loop's
# thread, and the loop stalls for as long as the call takes, exactly as a
# plain blocking call would; nothing else runs the loop meanwhile.  No
# heartbeat or worker pool is started (with no thread able to take the loop
# over, activating one would only cost a wake-up).  The design for handing
# the loop to another thread, what asyncio keeps per thread, and the rejected
# designs are in docs/design-log.md, "asyncio loop".  In short: the thread
# that comes back to a VM owned by a worker must find the loop's per-thread
# state (the running loop, a threading.local set by
# asyncio.events._set_running_loop; the current task, kept per loop by the
# C accelerator's _enter_task/_leave_task on 3.11-3.13, per thread on 3.14)
# moved to the worker and back, at the points where ownership moves: the
# worker enters at the top of _run_once, never inside a handle.
#
# The selector's wait keeps the VM: with no other thread that could take the
# VM meanwhile, releasing it around epoll_wait would be two atomic
# operations for nothing.  Once the hand-over exists, the wait releases the
# VM first, as the idle owner of vmown.run does (vmown/_scheduler.py:
# _idle_in_poll, race N2).

from __future__ import annotations

import asyncio
import sys
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from ._errors import VmownError, check
from ._native import ffi, lib
from ._ownership import Ownership
from . import _scheduler

T = TypeVar("T")

# The loop's thread and the threads of vmown.threaded callouts made from it
# need one slot each at most at a time; a few more for threads that register
# meanwhile (a retired thread keeps its slot until its thread-locals go).
_SLOTS = 16

_Base: type[asyncio.AbstractEventLoop] = asyncio.SelectorEventLoop


class EventLoop(_Base):  # type: ignore[misc, valid-type]
    """An asyncio event loop whose thread owns a VM while the loop runs.

    Use it as a loop factory: ``asyncio.run(main(), loop_factory=vmown.aio.EventLoop)``
    (3.12+), ``asyncio.Runner(loop_factory=vmown.aio.EventLoop)`` (3.11), or
    :func:`vmown.aio.run`.  While the loop runs, a coroutine may call a
    :func:`vmown.threaded` function inline: the call disowns the VM and owns
    it again when it returns.  A call that blocks still holds up the loop's
    thread (the hand-over of the loop to another thread is not built yet).
    """

    def __init__(self, selector: Any = None) -> None:
        super().__init__(selector)
        self._vmown = Ownership(slots=_SLOTS)

    def run_forever(self) -> None:
        if self._vmown._cb is None:
            raise RuntimeError("Event loop is closed")
        if _scheduler._here.state is not None:
            raise RuntimeError("vmown.aio.EventLoop cannot run inside vmown.run()")
        if self.is_running() or asyncio.events._get_running_loop() is not None:
            return super().run_forever()  # asyncio raises its own RuntimeError
        own = self._vmown
        slot = own.slot
        check(lib.vmown_bind_thread(own._cb, slot), "binding the loop's thread")
        try:
            own.own()
            try:
                super().run_forever()
            finally:
                own.disown()
        finally:
            lib.vmown_bind_thread(ffi.NULL, 0)

    def close(self) -> None:
        if self.is_running():
            raise RuntimeError("Cannot close a running event loop")
        super().close()
        own = getattr(self, "_vmown", None)
        if own is not None and own._cb is not None:
            try:
                own.close()
            except VmownError:
                pass  # the thread that ran the loop is still registered: its slot goes with it

    @property
    def ownership(self) -> Ownership:
        """The loop's control block (for stats and observers)."""
        return self._vmown


def run(main: Coroutine[Any, Any, T], *, debug: bool | None = None) -> T:
    """``asyncio.run(main)`` on a :class:`EventLoop`; returns main's result."""
    with asyncio.Runner(debug=debug, loop_factory=EventLoop) as runner:
        return runner.run(main)


if sys.version_info < (3, 11):  # pragma: no cover - the package requires 3.11
    raise ImportError("vmown.aio needs Python 3.11 or later (asyncio.Runner)")
