# The Python face of the ownership core (native/block.c, owner.c, grants.c).
#
# An Ownership is one VM ownership word, its wait queue and its slot table, in
# a control block.  By default the block lives in an anonymous MAP_SHARED
# mapping made here, so a forked child shares it with its parent; `attach`
# uses a block that lives in memory the caller provides (another process's
# arena, a file mapping).
#
# Threads register lazily: the first call a thread makes claims a slot, kept
# in a threading.local; the slot is given back when the thread exits (the
# local's value is finalised then).  Slots are per process: after fork the
# child's threads start unregistered and without ownership, even the thread
# that forked while owning (the parent's slot still owns; the child must
# own() like any other thread).
#
# Waits for ownership happen in C with the GIL released.  A wait on the main
# thread returns to Python when a signal arrives, so its handler runs (Ctrl-C
# raises KeyboardInterrupt at once); the slot has left the queue by then, and
# a caller that keeps waiting queues again at the tail.
#
# Lifetime: the mapping is unmapped only when nothing can use it any more.  A
# _Block owns the mapping; every registration holds the _Block, so a thread
# that is still registered (or blocked in C) keeps the memory alive, whatever
# order the garbage collector finalises the rest in.

from __future__ import annotations

import os
import threading
import weakref
from typing import Any, Iterator

from contextlib import contextmanager

from ._arena import Arena, _place
from ._errors import NotOwnerError, VmownError, check, error, vm_error
from ._native import ffi, lib
from ._timeout import timeout_ns as _timeout_ns

__all__ = ["Ownership"]

DEFAULT_SLOTS = 1024
LAYOUT_VERSION = 6  # of the control block; must match native/vmown_internal.h

_own_wait = lib.vmown_own_wait
_disown = lib.vmown_disown
_thread_own = lib.vmown_thread_own
_thread_disown = lib.vmown_thread_disown
_try_own = lib.vmown_try_own
_own_resume = lib.vmown_own_resume
_now_ns = lib.vmown_now_ns
_EINTR = lib.VMOWN_EINTR
_EAGAIN = lib.VMOWN_EAGAIN
_INTERRUPTIBLE = lib.VMOWN_WAIT_INTERRUPTIBLE
# Waits return to Python at every slice (still queued) so that a signal whose
# handler ran between two sleeps is acted on within a slice, not never.
_SLICED = lib.VMOWN_WAIT_INTERRUPTIBLE | lib.VMOWN_WAIT_SLICES

# Both lists come from the C core (block.c), which makes them from the
# definitions it uses itself.
_COUNTERS = tuple(ffi.string(lib.vmown_counter_name(i)).decode() for i in range(lib.vmown_counter_count()))
_SLOT_STATES = {i: ffi.string(lib.vmown_slot_state_name(i)).decode() for i in range(lib.vmown_slot_state_count())}


def _slots(slots: Any) -> int:
    if isinstance(slots, bool) or not isinstance(slots, int) or not 1 <= slots <= 1 << 20:
        raise ValueError(f"slots must be an int from 1 to {1 << 20}, not {slots!r}")
    return slots


class _Block:
    """The control block's memory and the C handle on it; unmaps when freed."""

    __slots__ = ("cb", "addr", "size", "keep", "__weakref__")

    def __init__(self, cb: Any, addr: Any, size: int, keep: Any) -> None:
        self.cb = cb  # vmown_vm *
        self.addr = addr  # void *, ours to unmap, or NULL
        self.size = size
        self.keep = keep  # what keeps caller-provided memory alive

    def free(self) -> None:
        if self.cb != ffi.NULL:
            # In a forked child the handle may name the parent's heartbeat
            # and worker pool: the core forgets them there (heartbeat.c,
            # workers.c) instead of joining threads the child does not have.
            lib.vmown_vm_detach(self.cb)
            self.cb = ffi.NULL
        if self.addr != ffi.NULL:
            lib.vmown_unmap(self.addr, self.size)
            self.addr = ffi.NULL
        self.keep = None

    __del__ = free


class _Registration:
    """A thread's slot; gives it back when the thread's locals are freed."""

    __slots__ = ("block", "slot", "pid", "thread")

    def __init__(self, block: _Block, slot: int) -> None:
        self.block = block
        self.slot = slot
        self.pid = os.getpid()
        # (block, slot) for the one-argument calls of the hot paths
        self.thread = ffi.new("vmown_thread *", {"vm": block.cb, "slot": slot})

    def __del__(self) -> None:
        # Only in the process that registered: a forked child drops the
        # parent's thread-locals, but the slot is still the parent's.
        if self.pid == os.getpid() and self.block.cb != ffi.NULL:
            lib.vmown_unregister(self.block.cb, self.slot)


_live: "weakref.WeakSet[Ownership]" = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for ownership in list(_live):
        ownership._local = threading.local()


os.register_at_fork(after_in_child=_after_fork_in_child)


class Ownership:
    """One VM ownership word shared by threads, and by processes through shared memory.

    Only the thread that owns the VM may touch what the VM protects.  A thread
    takes the VM with :meth:`own` (or ``with ownership:``), gives it up around
    blocking work with :meth:`disown` (or ``with ownership.disowned():``), and
    gets it back with :meth:`own`.  Threads that find the VM owned wait in FIFO
    order (higher :meth:`set_priority` first), each on its own OS semaphore.

    ``Ownership(slots=N)`` makes a new control block for up to ``N`` threads in
    an anonymous shared mapping (shared with forked children).
    ``Ownership.attach(buffer)`` uses a block that already lives in ``buffer``.
    """

    __slots__ = ("_block", "_cb", "_local", "_offset", "__weakref__")

    def __init__(self, slots: int = DEFAULT_SLOTS) -> None:
        slots = _slots(slots)
        size = lib.vmown_block_size(slots)
        addr = ffi.new("void **")
        check(lib.vmown_map_anonymous(size, addr), "mapping the control block")
        out = ffi.new("vmown_vm **")
        rc = lib.vmown_vm_init(addr[0], size, slots, out)
        if rc < 0:
            lib.vmown_unmap(addr[0], size)
            raise error(rc, "initialising the control block")
        self._setup(_Block(out[0], addr[0], size, None))

    @classmethod
    def create_in(cls, buffer: Any, *, slots: int = DEFAULT_SLOTS) -> "Ownership":
        """Make a new control block in an arena, or at the start of ``buffer``.

        Given a :class:`vmown.Arena`, the block takes pages of it from its
        allocator (``ownership.offset`` says where, for :meth:`attach` in
        other processes).  Given a buffer, it must be writable, page-aligned
        and at least :meth:`size_for` ``(slots)`` bytes; whatever it held is
        overwritten.  A buffer inside an arena (``arena.buffer``, or a slice
        of it) has its pages reserved in the arena's allocator, so a later
        ``alloc()`` or ``Channel.create`` never lands on the block; pages
        handed out already are refused (:class:`ArenaError`), unless this
        process got them from ``arena.alloc()`` for the block.  Other
        processes that map the same memory use it with :meth:`attach`.
        """
        slots = _slots(slots)
        size = lib.vmown_block_size(slots)
        offset = None
        if isinstance(buffer, Arena):
            offset = buffer._place(size, "the control block")
            buffer = buffer.buffer[offset : offset + size]
            pinned = cls._pin(buffer)
        else:
            pinned = cls._pin(buffer)
            if len(pinned) < size:
                raise ValueError(f"a block of {slots} slots needs {size} bytes, the buffer has {len(pinned)}")
            _place(cls._address(pinned), size, "the control block")
        out = ffi.new("vmown_vm **")
        check(lib.vmown_vm_init(pinned, len(pinned), slots, out), "initialising the control block")
        self = cls.__new__(cls)
        self._setup(_Block(out[0], ffi.NULL, len(pinned), pinned))
        self._offset = offset
        return self

    @staticmethod
    def size_for(slots: int) -> int:
        """Bytes (whole pages) that a control block of ``slots`` slots takes."""
        return lib.vmown_block_size(_slots(slots))

    @staticmethod
    def _address(pinned: Any) -> int:
        return int(ffi.cast("uintptr_t", pinned))

    @classmethod
    def _pin(cls, buffer: Any) -> Any:
        try:
            pinned = ffi.from_buffer(buffer, require_writable=True)
        except (TypeError, BufferError) as exc:
            raise TypeError(
                f"buffer must be a writable buffer (an arena's buffer, an mmap), not {type(buffer).__name__}"
            ) from exc
        page = lib.vmown_page_size()
        if cls._address(pinned) % page:
            raise ValueError(
                f"buffer must start at a page boundary (page size {page} bytes; it starts at "
                f"{cls._address(pinned):#x}): use an arena's buffer, an mmap, or a slice of them at a "
                "multiple of the page size"
            )
        return pinned

    @classmethod
    def attach(cls, buffer: Any) -> "Ownership":
        """Use the control block that lives at the start of ``buffer``.

        ``buffer`` is any writable, page-aligned buffer (an mmap, an arena's
        memoryview) holding a block made by another :class:`Ownership`.  The
        header is checked; a bad one raises :class:`ControlBlockError`.
        """
        pinned = cls._pin(buffer)
        out = ffi.new("vmown_vm **")
        check(lib.vmown_vm_attach(pinned, len(pinned), out), "attaching the control block")
        self = cls.__new__(cls)
        self._setup(_Block(out[0], ffi.NULL, len(pinned), pinned))
        return self

    def _setup(self, block: _Block) -> None:
        self._block = block
        self._cb = block.cb
        self._local = threading.local()
        self._offset: int | None = None
        _live.add(self)

    # ---- the calling thread's slot ----

    def _slot(self, timeout_ns: int = -1) -> int:
        try:
            return self._local.slot
        except AttributeError:
            pass
        slot = check(lib.vmown_register_timed(self._handle(), timeout_ns), "registering a thread")
        registration = _Registration(self._block, slot)
        self._local.registration = registration
        self._local.thread = registration.thread
        self._local.slot = slot
        return slot

    def _handle(self) -> Any:
        # Hot paths skip this: a registered thread implies an open block, as
        # close() refuses while other threads are registered.
        if self._cb is None:
            raise ValueError("this Ownership is closed")
        return self._cb

    @property
    def offset(self) -> int | None:
        """Where ``Ownership.create_in(arena)`` placed the block in the arena's data area, else None.

        Other processes use it with ``Ownership.attach(arena.buffer[offset:])``.
        """
        return self._offset

    @property
    def slot(self) -> int:
        """The calling thread's slot index (registers the thread on first use)."""
        return self._slot()

    # ---- the protocol ----

    def own(self, token: int | None = None, *, timeout: float | None = None) -> None:
        """Take the VM, waiting in the queue while another thread owns it.

        ``token`` is what :meth:`disown` returned (it is checked to belong to
        this thread).  With ``timeout`` (seconds) a wait that lasts longer
        raises :class:`TimeoutError`, leaving the queue.  Raises
        :class:`AlreadyOwnerError` if this thread owns the VM already.
        """
        timeout_ns = _timeout_ns(timeout)
        deadline_ns = -1 if timeout_ns < 0 else _now_ns() + timeout_ns
        try:
            thread = self._local.thread
        except AttributeError:
            self._slot(timeout_ns)  # registering takes the block's lock: within the timeout too
            thread = self._local.thread
            if deadline_ns >= 0:
                timeout_ns = max(0, deadline_ns - _now_ns())
        slot = self._local.slot
        if token is not None and token != slot:
            raise ValueError(f"token {token!r} was not issued to this thread (its slot is {slot})")
        # The whole wait, the first call included, is inside the try: CPython
        # runs signal handlers right after a call returns, before its result
        # is stored, so a Ctrl-C can land while this slot is still queued.
        try:
            rc = _thread_own(thread) if timeout_ns < 0 else _own_wait(self._cb, slot, timeout_ns, _SLICED)
            while rc == _EAGAIN or rc == _EINTR:
                # Pending signal handlers run at this loop's backward jump.
                if rc == _EAGAIN:  # a slice passed; still queued
                    rc = _own_resume(self._cb, slot, deadline_ns, _SLICED)
                else:  # left the queue for a signal whose handler returned: queue again
                    left = -1 if deadline_ns < 0 else max(0, deadline_ns - _now_ns())
                    rc = _own_wait(self._cb, slot, left, _SLICED)
        except BaseException:
            self._abandon(slot)
            raise
        if rc:
            raise vm_error(self._cb, rc, "own")

    def _abandon(self, slot: int) -> None:
        """own() is leaving with an exception: be out of the queue, not owning.

        If the VM was handed over meanwhile (or the core had just granted it
        when the exception landed), pass it on.  The one case this gets wrong:
        own() called while already owning (an error) with a Ctrl-C landing in
        that very call gives the VM up.
        """
        cb = self._cb
        if lib.vmown_own_cancel(cb, slot) == 1 or lib.vmown_owner(cb) == slot:
            lib.vmown_disown(cb, slot, 0)

    def try_own(self) -> bool:
        """Take the VM if nobody owns it; never waits.  Returns whether it did."""
        rc = _try_own(self._cb, self._slot())
        if rc < 0:
            raise vm_error(self._cb, rc, "try_own")
        return rc == 1

    def disown(self, callout: int = 0) -> int:
        """Give up the VM (to the head waiter, if any) and return a token for :meth:`own`.

        ``callout`` is an integer tag recorded in this thread's slot for
        observers (what it is doing while disowned).
        """
        try:
            local = self._local
            rc = _disown(self._cb, local.slot, callout) if callout else _thread_disown(local.thread)
        except AttributeError:
            raise error(lib.VMOWN_ENOTOWNER, "disown") from None
        if rc:
            raise vm_error(self._cb, rc, "disown")
        return local.slot

    def yield_to_waiters(self, *, timeout: float | None = None) -> bool:
        """Owner only: hand the VM to the head waiter and wait to get it back.

        Returns False at once if nobody waits.  If the wait for the VM's return
        is interrupted (a signal whose handler raises, or ``timeout``) the
        exception propagates and this thread no longer owns the VM.
        """
        slot = self._slot()
        rc = lib.vmown_yield(self._cb, slot, _timeout_ns(timeout), _INTERRUPTIBLE)
        if rc == _EINTR:
            self.own(timeout=timeout)  # runs the handler; queues again if it returns
            return True
        if rc < 0:
            raise vm_error(self._cb, rc, "yield_to_waiters")
        return rc == 1

    def bind_thread(self) -> None:
        """Make this block the calling thread's for C-level callouts.

        Wrappers generated by :func:`vmown.threaded_wrappers` disown and own
        the block the calling thread is bound to; an unbound thread makes
        plain calls.  A thread is bound to one block at a time.
        """
        check(lib.vmown_bind_thread(self._handle(), self._slot()), "bind_thread")

    def set_priority(self, priority: int) -> None:
        """Queue priority of the calling thread: higher waits are served first."""
        check(lib.vmown_set_priority(self._handle(), self._slot(), priority), "set_priority")

    def __enter__(self) -> "Ownership":
        self.own()
        return self

    def __exit__(self, *exc_info: object) -> None:
        # After a failed own() (interrupted, timed out) there is nothing to give back.
        if self.owned():
            self.disown()

    @contextmanager
    def disowned(self, callout: int = 0) -> Iterator[None]:
        """``with ownership.disowned(): blocking_call()`` -- disown, run, own again."""
        token = self.disown(callout)
        try:
            yield
        finally:
            self.own(token)

    def reap(self) -> int:
        """Free the slots of peer processes that died; returns how many.

        A process that dies owning the VM (or handed it, or waiting for it)
        is found by the threads waiting for ownership within 50 ms, without
        calling this; it is for tidying up, e.g. before reading ``stats()``.
        A pid recycled by a newer process does not pass for the dead one.
        """
        return check(lib.vmown_reap(self._handle()), "reap")

    # ---- observers (lock-free reads; any thread) ----

    def owned(self) -> bool:
        """Whether the calling thread owns the VM."""
        slot = getattr(self._local, "slot", 0)
        return slot != 0 and lib.vmown_owner(self._cb) == slot

    @property
    def owner(self) -> int:
        """Slot index of the owner (or of the holder of a pending grant or revocation): 0 unowned."""
        return lib.vmown_owner(self._handle())

    @property
    def epoch(self) -> int:
        """Ownership epoch: counts releases, modulo 2**32."""
        return lib.vmown_epoch(self._handle())

    @property
    def waiters(self) -> int:
        """How many threads are queued for ownership.

        Read without the block's lock.  A thread that gave up waiting (a
        timeout, a signal) while the lock was busy is counted until the next
        holder of the lock unlinks it (:meth:`queue` does)."""
        return lib.vmown_waiters(self._handle())

    @property
    def slots(self) -> int:
        """How many slots the control block has."""
        return lib.vmown_nslots(self._handle())

    @property
    def slots_in_use(self) -> int:
        """How many slots are registered, by threads of every process."""
        return lib.vmown_slots_in_use(self._handle())

    def queue(self) -> list[int]:
        """Slot indices of the waiting threads, head first.

        Read under the block's lock, unlinking on the way the threads that
        gave up waiting and are still linked."""
        n = self.slots
        out = ffi.new("uint32_t[]", n)
        count = check(lib.vmown_queue_read(self._handle(), out, n), "queue")
        return list(out[0:count])

    def slot_info(self, slot: int) -> dict[str, int | str]:
        """What a slot's entry says: state, pid, tid, priority, callout..."""
        info = ffi.new("vmown_slot_info *")
        check(lib.vmown_slot_read(self._handle(), slot, info), "slot_info")
        return {
            "state": _SLOT_STATES.get(info.state, f"corrupt({info.state})"),
            "pid": info.pid,
            "tid": info.tid,
            "priority": info.priority,
            "start_time": info.start_time,
            "callout": info.callout,
            "callout_tick": info.callout_tick,
            "generation": info.generation,
            "lazy_out": bool(info.lazy_out),
        }

    def stats(self) -> dict[str, int]:
        """Counters summed over every thread that ever used the block."""
        counters = ffi.new("vmown_counters *")
        check(lib.vmown_counters_read(self._handle(), counters), "stats")
        result = {name: getattr(counters, name) for name in _COUNTERS}
        result.update(owner=self.owner, epoch=self.epoch, waiters=self.waiters, slots_in_use=self.slots_in_use)
        return result

    # ---- lifetime ----

    def close(self) -> None:
        """Give back this thread's slot and free the block's memory.

        Refused while another thread of this process is still registered; the
        memory then stays mapped until they are done.
        """
        if self._cb is None:
            return
        mine = getattr(self._local, "slot", 0)
        pid = os.getpid()
        busy = [
            i
            for i in range(1, self.slots + 1)
            if i != mine and (info := self.slot_info(i))["state"] != "free" and info["pid"] == pid
        ]
        if busy:
            raise VmownError(f"cannot close: slots {busy} are still registered by threads of this process")
        if mine:
            check(lib.vmown_unregister(self._cb, mine), "close")
            del self._local.registration, self._local.slot, self._local.thread
        self._cb = None
        self._block.free()

    def __repr__(self) -> str:
        if self._cb is None:
            return "<vmown.Ownership closed>"
        return f"<vmown.Ownership owner={self.owner} waiters={self.waiters} slots={self.slots_in_use}/{self.slots}>"

