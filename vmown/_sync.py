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
# made runnable (_cancel.py, race K2), so nothing is handed to it later.  Every method must be called from a process of vmown.run(): a
# thread outside the VM that touched them would race with the owner.  A
# primitive serves the processes of one run at a time.

from __future__ import annotations

import sys
from collections import deque
from typing import Any, Generic, Self, TypeVar

from ._cancel import Cancelled, CancelScope
from ._scheduler import Process, _current, _suspend, _wake

__all__ = ["CapacityLimiter", "Condition", "Event", "Lock", "Queue", "Semaphore", "WouldBlock"]

T = TypeVar("T")


class WouldBlock(Exception):
    """Raised by :meth:`Queue.put_nowait` and :meth:`Queue.get_nowait` when the call would have to wait."""


def _cancel_point(me: Process[Any]) -> None:
    """A wait that need not block still raises Cancelled in a cancelled scope."""
    if me._cancel_pending:
        raise Cancelled(f"{me!r} is in a cancelled scope")


async def _wait_in(waiters: deque[Any], entry: Any, me: Process[Any], primitive: object) -> Any:
    """Queue ``entry`` (``me`` or a tuple starting with it) and sleep until woken."""
    waiters.append(entry)
    me._waiting_on = primitive
    return await _suspend()


class Event:
    """A flag that processes can wait for; once set, it stays set."""

    __slots__ = ("_flag", "_waiters")

    def __init__(self) -> None:
        self._flag = False
        self._waiters: deque[Process[Any]] = deque()

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

    def _forget(self, proc: Process[Any]) -> None:
        self._waiters.remove(proc)

    def __repr__(self) -> str:
        return f"<vmown.Event {'set' if self._flag else 'unset'} waiters={len(self._waiters)}>"


class _Acquirable:
    """What Lock and Semaphore share: their waiting processes, ``async with``."""

    __slots__ = ("_waiters",)
    _waiters: deque[Process[Any]]

    async def acquire(self) -> None:
        raise NotImplementedError

    def release(self) -> None:
        raise NotImplementedError

    def _forget(self, proc: Process[Any]) -> None:
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
        self._holder: Process[Any] | None = None
        self._waiters: deque[Process[Any]] = deque()

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
        self._waiters: deque[Process[Any]] = deque()

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
    """A FIFO queue between processes: unbounded, or of at most ``maxsize`` items.

    ``Queue()`` (or ``maxsize=0``) never fills.  :meth:`put` waits while the
    queue is full, :meth:`get` while it is empty; both serve waiting
    processes in arrival order.  :meth:`put_nowait` and :meth:`get_nowait`
    raise :class:`WouldBlock` instead of waiting.
    """

    __slots__ = ("_maxsize", "_limit", "_items", "_getters", "_putters")

    def __init__(self, maxsize: int = 0) -> None:
        if not isinstance(maxsize, int) or maxsize < 0:
            raise ValueError(f"maxsize must be an int >= 0 (0: unbounded), not {maxsize!r}")
        self._maxsize = maxsize
        self._limit = maxsize or sys.maxsize  # Invariant: len(_items) <= _limit
        self._items: deque[T] = deque()
        self._getters: deque[Process[Any]] = deque()
        self._putters: deque[tuple[Process[Any], T]] = deque()

    @property
    def maxsize(self) -> int:
        """How many items the queue holds at most (0: unbounded)."""
        return self._maxsize

    def qsize(self) -> int:
        """How many items are in the queue now."""
        return len(self._items)

    def empty(self) -> bool:
        """Whether the queue holds no item."""
        return not self._items

    def full(self) -> bool:
        """Whether the queue holds ``maxsize`` items (never, if unbounded)."""
        return len(self._items) >= self._limit

    async def put(self, item: T) -> None:
        """Add ``item`` at the tail, waiting while the queue is full."""
        me = _current("Queue.put()")
        _cancel_point(me)
        if self._getters:  # they wait: the queue is empty, hand it over
            _wake(self._getters.popleft(), item)
        elif len(self._items) < self._limit:
            self._items.append(item)
        else:
            await _wait_in(self._putters, (me, item), me, self)  # get() moved the item in

    def put_nowait(self, item: T) -> None:
        """Add ``item`` at the tail if there is room now; else raise :class:`WouldBlock`."""
        _current("Queue.put_nowait()")
        if self._getters:
            _wake(self._getters.popleft(), item)
        elif len(self._items) < self._limit:
            self._items.append(item)
        else:
            raise WouldBlock(f"the queue is full ({self._maxsize} items)")

    def get_nowait(self) -> T:
        """Remove and return the item at the head if there is one; else raise :class:`WouldBlock`."""
        _current("Queue.get_nowait()")
        if not self._items:
            raise WouldBlock("the queue is empty")
        item = self._items.popleft()
        if self._putters:
            putter, pending = self._putters.popleft()
            self._items.append(pending)
            _wake(putter)
        return item

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

    def _forget(self, proc: Process[Any]) -> None:
        if proc in self._getters:
            self._getters.remove(proc)
        else:
            self._putters = deque(entry for entry in self._putters if entry[0] is not proc)

    def __repr__(self) -> str:
        return (
            f"<vmown.Queue {len(self._items)}/{self._maxsize or 'inf'} "
            f"getters={len(self._getters)} putters={len(self._putters)}>"
        )


class Condition:
    """A condition variable: processes wait, holding ``lock``, until another one notifies them.

    ``Condition(lock=None)`` makes its own :class:`Lock`.  Hold the lock
    (``async with cond:``) around :meth:`wait`, :meth:`notify` and
    :meth:`notify_all`.  :meth:`wait` releases the lock, sleeps until
    notified, and takes the lock back before it returns -- also when it is
    cancelled (the re-acquire is shielded), so the ``async with`` block is
    always left holding the lock it releases.
    """

    __slots__ = ("_lock", "_waiters")

    def __init__(self, lock: Lock | None = None) -> None:
        self._lock = Lock() if lock is None else lock
        self._waiters: deque[Process[Any]] = deque()

    @property
    def lock(self) -> Lock:
        """The lock the condition is used with."""
        return self._lock

    def locked(self) -> bool:
        """Whether some process holds the lock."""
        return self._lock.locked()

    async def acquire(self) -> None:
        """Take the lock."""
        await self._lock.acquire()

    def release(self) -> None:
        """Release the lock."""
        self._lock.release()

    async def __aenter__(self) -> Self:
        await self._lock.acquire()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._lock.release()

    def _check_holder(self, what: str) -> Process[Any]:
        me = _current(what)
        if self._lock._holder is not me:
            raise RuntimeError(f"{what} needs the condition's lock: call it inside `async with condition:`")
        return me

    async def wait(self) -> None:
        """Release the lock, wait for :meth:`notify`, take the lock back (in arrival order)."""
        me = self._check_holder("Condition.wait()")
        _cancel_point(me)
        self._lock.release()
        try:
            await _wait_in(self._waiters, me, me, self)
        finally:
            with CancelScope(shield=True):
                await self._lock.acquire()

    def notify(self, n: int = 1) -> None:
        """Wake up to ``n`` waiting processes, the longest-waiting first."""
        self._check_holder("Condition.notify()")
        for _ in range(min(n, len(self._waiters))):
            _wake(self._waiters.popleft())

    def notify_all(self) -> None:
        """Wake every waiting process."""
        self.notify(len(self._waiters))

    def _forget(self, proc: Process[Any]) -> None:
        self._waiters.remove(proc)

    def __repr__(self) -> str:
        return f"<vmown.Condition {self._lock!r} waiters={len(self._waiters)}>"


class CapacityLimiter:
    """At most ``total_tokens`` processes at a time inside ``async with limiter:``.

    The way to bound CPU-bound callouts: 30 processes each calling
    ``zlib.compress`` through vmown.callout hold 30 threads and the GIL in
    turn, and a 1 ms ticker waits behind them; with the callouts inside
    ``async with vmown.CapacityLimiter(2):`` (about the number of cores)
    only two run at once and the others wait here, in the VM, where the
    ticker runs between them.  Each process holds at most one token; tokens
    go to waiting processes in arrival order.  :attr:`total_tokens` can be
    raised or lowered while in use.
    """

    __slots__ = ("_total", "_borrowers", "_waiters")

    def __init__(self, total_tokens: int) -> None:
        self._check_total(total_tokens)
        self._total = total_tokens
        self._borrowers: set[Process[Any]] = set()
        self._waiters: deque[Process[Any]] = deque()

    @staticmethod
    def _check_total(total_tokens: int) -> None:
        if not isinstance(total_tokens, int) or total_tokens < 1:
            raise ValueError(f"total_tokens must be an int >= 1, not {total_tokens!r}")

    @property
    def total_tokens(self) -> int:
        """How many processes may hold a token at once.  Settable; raising it serves waiters at once."""
        return self._total

    @total_tokens.setter
    def total_tokens(self, value: int) -> None:
        self._check_total(value)
        self._total = value
        self._hand_out()

    @property
    def borrowed_tokens(self) -> int:
        """Tokens held now."""
        return len(self._borrowers)

    @property
    def available_tokens(self) -> int:
        """Tokens free now."""
        return max(0, self._total - len(self._borrowers))

    async def acquire(self) -> None:
        """Take a token, waiting behind the processes that asked first."""
        me = _current("CapacityLimiter.acquire()")
        _cancel_point(me)
        if me in self._borrowers:
            raise RuntimeError(f"{me!r} already holds a token of this limiter")
        if len(self._borrowers) < self._total and not self._waiters:
            self._borrowers.add(me)
            return
        await _wait_in(self._waiters, me, me, self)  # _hand_out made us a borrower

    def release(self) -> None:
        """Give the token back: to the first waiting process, or to the pool."""
        me = _current("CapacityLimiter.release()")
        if me not in self._borrowers:
            raise RuntimeError(f"{me!r} released a CapacityLimiter token it does not hold")
        self._borrowers.remove(me)
        self._hand_out()

    def _hand_out(self) -> None:
        while self._waiters and len(self._borrowers) < self._total:
            proc = self._waiters.popleft()
            self._borrowers.add(proc)
            _wake(proc)

    def _forget(self, proc: Process[Any]) -> None:
        self._waiters.remove(proc)

    async def __aenter__(self) -> Self:
        await self.acquire()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.release()

    def __repr__(self) -> str:
        return (
            f"<vmown.CapacityLimiter {len(self._borrowers)}/{self._total} borrowed "
            f"waiters={len(self._waiters)}>"
        )
