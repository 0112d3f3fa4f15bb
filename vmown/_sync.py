# Synchronisation between the processes of one vmown.run().
#
# These primitives are VM state: only the owner of the VM touches them, so
# they need no lock of their own, whichever thread a process runs on at the
# moment.  A process that must wait registers itself with the primitive and
# yields _SUSPEND; the process that makes progress possible wakes it with
# _wake(), which also hands it what it waited for.  Handing over directly
# (the lock, a semaphore unit, a queue item) instead of waking the waiter to
# try again is what makes them fair: first come, first served, and a process
# that releases and at once acquires again queues behind the waiters.
#
# A waiting process is in exactly one waiters deque of one primitive, which
# its _waiting_on names; _forget(process) takes it out (the run closes it).
#
# Calls that do not have to wait return without a scheduling point (like
# asyncio's), but raise Cancelled if the caller is in a cancelled scope, as a
# wait would.  A cancelled waiter leaves the primitive's queue before it is
# made runnable (_cancel.py, race C2), so nothing is handed to it later.  Every method must be called from a process of vmown.run(): a
# thread outside the VM that touched them would race with the owner.  A
# primitive serves the processes of one run at a time.

from __future__ import annotations

from collections import deque
from typing import Any, Generic, Self, TypeVar

from ._cancel import Cancelled
from ._scheduler import Process, _current, _suspend, _wake

__all__ = ["Event", "Lock", "Queue", "Semaphore"]

T = TypeVar("T")


def _cancel_point(me: Process) -> None:
    """A wait that need not block still raises Cancelled in a cancelled scope."""
    if me._cancel_pending:
        raise Cancelled(f"{me!r} is in a cancelled scope")


async def _wait_in(waiters: deque[Any], entry: Any, me: Process, primitive: object) -> Any:
    """Queue ``entry`` (``me`` or a tuple starting with it) and sleep until woken."""
    waiters.append(entry)
    me._waiting_on = primitive
    return await _suspend()


class Event:
    """A flag that processes can wait for; once set, it stays set."""

    __slots__ = ("_flag", "_waiters")

    def __init__(self) -> None:
        self._flag = False
        self._waiters: deque[Process] = deque()

    def is_set(self) -> bool:
        """Whether :meth:`set` has been called."""
        return self._flag

    def set(self) -> None:
        """Set the flag and wake every waiting process, in the order they came."""
        _current("Event.set()")
        if self._flag:
            return
        self._flag = True
        waiters, self._waiters = self._waiters, deque()
        for proc in waiters:
            _wake(proc)

    async def wait(self) -> None:
        """Return once the flag is set (at once if it is)."""
        me = _current("Event.wait()")
        _cancel_point(me)
        if not self._flag:
            await _wait_in(self._waiters, me, me, self)

    def _forget(self, proc: Process) -> None:
        self._waiters.remove(proc)

    def __repr__(self) -> str:
        return f"<vmown.Event {'set' if self._flag else 'unset'} waiters={len(self._waiters)}>"


class _Acquirable:
    """What Lock and Semaphore share: their waiting processes, ``async with``."""

    __slots__ = ("_waiters",)
    _waiters: deque[Process]

    async def acquire(self) -> None:
        raise NotImplementedError

    def release(self) -> None:
        raise NotImplementedError

    def _forget(self, proc: Process) -> None:
        self._waiters.remove(proc)

    async def __aenter__(self) -> Self:
        await self.acquire()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.release()


class Lock(_Acquirable):
    """A mutual-exclusion lock held by one process at a time, granted in arrival order.

    Only the process that holds it may release it.  ``async with lock:``
    acquires and releases.
    """

    __slots__ = ("_holder",)

    def __init__(self) -> None:
        self._holder: Process | None = None
        self._waiters: deque[Process] = deque()

    def locked(self) -> bool:
        """Whether some process holds the lock."""
        return self._holder is not None

    async def acquire(self) -> None:
        """Take the lock, waiting behind the processes that asked first."""
        me = _current("Lock.acquire()")
        _cancel_point(me)
        if self._holder is None:
            self._holder = me
            return
        if self._holder is me:
            raise RuntimeError(f"{me!r} already holds this lock (it does not nest)")
        await _wait_in(self._waiters, me, me, self)  # release() made us the holder

    def release(self) -> None:
        """Give the lock to the first waiting process, or free it."""
        me = _current("Lock.release()")
        if self._holder is not me:
            held = f"held by {self._holder!r}" if self._holder is not None else "not held"
            raise RuntimeError(f"{me!r} released a lock it does not hold ({held})")
        if self._waiters:
            self._holder = self._waiters.popleft()
            _wake(self._holder)
        else:
            self._holder = None

    def __repr__(self) -> str:
        return f"<vmown.Lock holder={self._holder!r} waiters={len(self._waiters)}>"


class Semaphore(_Acquirable):
    """A counter of units: :meth:`acquire` takes one, waiting if none is left; :meth:`release` gives one.

    Units are handed to waiting processes in arrival order.  ``async with
    semaphore:`` acquires and releases.
    """

    __slots__ = ("_value",)

    def __init__(self, value: int = 1) -> None:
        if not isinstance(value, int) or value < 0:
            raise ValueError(f"a Semaphore starts with a non-negative int of units, not {value!r}")
        self._value = value
        self._waiters: deque[Process] = deque()

    @property
    def value(self) -> int:
        """Units available now."""
        return self._value

    async def acquire(self) -> None:
        """Take a unit, waiting behind the processes that asked first."""
        me = _current("Semaphore.acquire()")
        _cancel_point(me)
        if self._value > 0:
            self._value -= 1
            return
        await _wait_in(self._waiters, me, me, self)  # release() handed us its unit

    def release(self) -> None:
        """Give a unit to the first waiting process, or back to the counter."""
        _current("Semaphore.release()")
        if self._waiters:
            _wake(self._waiters.popleft())
        else:
            self._value += 1

    def __repr__(self) -> str:
        return f"<vmown.Semaphore value={self._value} waiters={len(self._waiters)}>"


class Queue(Generic[T]):
    """A FIFO queue of at most ``maxsize`` items between processes.

    :meth:`put` waits while the queue is full, :meth:`get` while it is empty;
    both serve waiting processes in arrival order.
    """

    __slots__ = ("_maxsize", "_items", "_getters", "_putters")

    def __init__(self, maxsize: int) -> None:
        if not isinstance(maxsize, int) or maxsize < 1:
            raise ValueError(f"a Queue holds at least one item: maxsize must be an int >= 1, not {maxsize!r}")
        self._maxsize = maxsize
        self._items: deque[T] = deque()
        self._getters: deque[Process] = deque()
        self._putters: deque[tuple[Process, T]] = deque()

    @property
    def maxsize(self) -> int:
        """How many items the queue holds at most."""
        return self._maxsize

    def qsize(self) -> int:
        """How many items are in the queue now."""
        return len(self._items)

    def empty(self) -> bool:
        """Whether the queue holds no item."""
        return not self._items

    def full(self) -> bool:
        """Whether the queue holds ``maxsize`` items."""
        return len(self._items) >= self._maxsize

    async def put(self, item: T) -> None:
        """Add ``item`` at the tail, waiting while the queue is full."""
        me = _current("Queue.put()")
        _cancel_point(me)
        if self._getters:  # they wait: the queue is empty, hand it over
            _wake(self._getters.popleft(), item)
        elif len(self._items) < self._maxsize:
            self._items.append(item)
        else:
            await _wait_in(self._putters, (me, item), me, self)  # get() moved the item in

    async def get(self) -> T:
        """Remove and return the item at the head, waiting while the queue is empty."""
        me = _current("Queue.get()")
        _cancel_point(me)
        if not self._items:
            item: T = await _wait_in(self._getters, me, me, self)  # put() handed it over
            return item
        item = self._items.popleft()
        if self._putters:  # they wait: the queue was full; take the first one's item in
            putter, pending = self._putters.popleft()
            self._items.append(pending)
            _wake(putter)
        return item

    def _forget(self, proc: Process) -> None:
        if proc in self._getters:
            self._getters.remove(proc)
        else:
            self._putters = deque(entry for entry in self._putters if entry[0] is not proc)

    def __repr__(self) -> str:
        return (
            f"<vmown.Queue {len(self._items)}/{self._maxsize} "
            f"getters={len(self._getters)} putters={len(self._putters)}>"
        )
