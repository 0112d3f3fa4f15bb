# Waiting for descriptors: readiness without a thread per wait.
#
# What it is for
# --------------
# A process that waits for a socket or a pipe must not hold an OS thread for
# as long as it waits (a blocking callout would: 10,000 idle connections,
# 10,000 threads).  `await wait_readable(fd)` registers the process with the
# descriptor's watch and suspends it like any other wait; the run's poller
# (vmown/_io_epoll.py, the one file with OS calls) reports the descriptor's
# edges, and whoever owns the VM makes the waiter runnable.  Threaded
# callouts stay the tool for C code that blocks in its own way.
#
# Who polls (Go's netpoll in findrunnable, trio's epoll IO manager):
#   - the owner, at scheduling points: every _CLOCK_EVERY steps of _serve and
#     when the run queue empties, a wait with timeout 0 (poll_now), so a VM
#     that never idles still serves its descriptors;
#   - the idle owner: instead of parking in the core's futex, the thread that
#     has nothing to run releases the VM and waits in epoll until a
#     descriptor is ready or the next timer is due (_scheduler._idle_in_poll).
#     It released the VM first, so a thread that comes back from a callout
#     meanwhile takes it with its own CAS at once: nothing has to wake the
#     poller for that.  The eventfd (Poller.wake) is for what does not come
#     back through the VM: the run halts, Ctrl-C, shutdown, and a token call
#     from another thread that makes a process runnable (_token.py).
# No extra thread, no polling loop: at most one thread of a run waits in
# epoll (`polling`); the other idle ones park in the core as before, where
# the heartbeat can find them.
#
# State.  The watches and the counters are VM state: only the owner of the
# VM touches them.  The one exception is the poller itself: the idle thread
# calls Poller.wait without owning the VM, collects the edges into its own
# list, and dispatches them only once it owns the VM again.
#
# Edges (edge-triggered epoll, see _io_epoll.py).  A watch keeps, per
# direction, the process waiting or else a flag "an edge came with nobody
# waiting"; a wait that finds its flag set consumes it and returns at once.
# The flag may be stale (the bytes were read since): a wait may then return
# with the descriptor not ready, the caller's next operation fails with
# EAGAIN and it waits again.  vmown.socket does exactly that; raw users of
# wait_readable must too (as with Go's netpoller).
#
# The races (docs/ARCHITECTURE.md indexes them):
#   N1  two threads go idle: one waits in epoll, the other parks      _idle_in_poll
#   N2  a callout comes back while the idle owner waits in epoll      _idle_in_poll
#   N3  the idle poller collects edges while another thread owns      _idle_in_poll
#   N4  the run halts (main ends elsewhere, Ctrl-C) during the wait   _wake_poller
#   N5  a waiter is cancelled after its edge was collected            dispatch
#   N6  notify_closing while the idle poller holds edges of the fd    dispatch

from __future__ import annotations

import errno
import types
from collections.abc import Generator
from typing import Any

from ._cancel import Cancelled
from ._io_epoll import READABLE, WRITABLE, Poller
from ._scheduler import _SUSPEND, Process, _current, _publish, _Runtime, _throw_later, _wake

__all__ = ["notify_closing", "wait_readable", "wait_writable"]


class _Watch:
    """One watched descriptor: its waiters, or the edges that came with nobody waiting.

    Invariant: ``reader`` (``writer``) is the process whose _waiting_on is
    this watch, waiting for the descriptor to be readable (writable), or
    None; a direction never has a waiter and a set flag at once after a
    dispatch.
    """

    __slots__ = ("fd", "reader", "writer", "readable", "writable")

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.reader: Process[Any] | None = None
        self.writer: Process[Any] | None = None
        self.readable = False  # an edge came while nobody waited to read
        self.writable = False

    def _forget(self, proc: Process[Any]) -> None:
        """Stop waking ``proc`` (cancelled, or the run closes it)."""
        if self.reader is proc:
            self.reader = None
        elif self.writer is proc:
            self.writer = None
        else:
            return
        proc._rt.io.waiting -= 1

    def __repr__(self) -> str:
        return f"<vmown descriptor {self.fd} watch>"


class _IO:
    """The descriptor waits of one run (rt.io, made by the first wait)."""

    __slots__ = ("poller", "watches", "waiting", "polling", "polls", "idle_waits", "blocked")

    def __init__(self) -> None:
        self.poller = Poller()
        self.watches: dict[int, _Watch] = {}
        # Invariant: the number of watches' reader and writer fields that are
        # not None.  The idle owner waits in epoll only while it is non-zero.
        self.waiting = 0
        # Invariant: True while one thread waits in epoll (set and cleared
        # by that thread while it owns the VM): the others park (N1).
        self.polling = False
        self.polls = 0  # waits at scheduling points (timeout 0)
        self.idle_waits = 0  # waits of an idle owner
        self.blocked = 0  # process waits that suspended


def _fileno(fd: Any) -> int:
    if isinstance(fd, int):
        if fd < 0:
            raise ValueError(f"a descriptor is a non-negative int, not {fd}")
        return fd
    fileno = getattr(fd, "fileno", None)
    if fileno is None:
        raise TypeError(f"expected a file descriptor or an object with fileno(), not {type(fd).__name__}")
    number = int(fileno())
    if number < 0:
        raise OSError(errno.EBADF, f"{fd!r} is closed")
    return number


def _watch(rt: _Runtime, fd: int) -> _Watch:
    io = rt.io
    if io is None:
        io = rt.io = _IO()
    watch = io.watches.get(fd)
    if watch is None:
        try:
            io.poller.watch(fd)
        except FileExistsError:
            pass  # watched before and never unwatched: its edges still come
        watch = io.watches[fd] = _Watch(fd)
    return watch  # type: ignore[no-any-return]


async def wait_readable(fd: Any) -> None:
    """Wait until ``fd`` (a descriptor, or an object with ``fileno()``) is readable.

    Holds no thread while it waits.  Like every wait, raises
    :class:`vmown.Cancelled` in a cancelled scope.  It may return when data
    that arrived earlier has been read since: do the operation on a
    non-blocking descriptor and wait again on EAGAIN.  Call
    :func:`notify_closing` before closing a descriptor that was waited on.
    One process at a time may wait for each direction of a descriptor.
    """
    me = _current("vmown.wait_readable()")
    if me._cancel_pending:
        raise Cancelled(f"{me!r} is in a cancelled scope")
    await _wait_readable(me, _fileno(fd))


async def wait_writable(fd: Any) -> None:
    """Wait until ``fd`` is writable; the rules of :func:`wait_readable`."""
    me = _current("vmown.wait_writable()")
    if me._cancel_pending:
        raise Cancelled(f"{me!r} is in a cancelled scope")
    await _wait_writable(me, _fileno(fd))


@types.coroutine
def _wait_readable(me: Process[Any], fd: int) -> Generator[object, Any, None]:
    """wait_readable for a checked caller and descriptor."""
    if _arm_readable(me, fd):
        yield _SUSPEND


@types.coroutine
def _wait_writable(me: Process[Any], fd: int) -> Generator[object, Any, None]:
    """wait_writable for a checked caller and descriptor."""
    if _arm_writable(me, fd):
        yield _SUSPEND


def _arm_readable(me: Process[Any], fd: int) -> bool:
    """Consume a readable edge (False), or register ``me`` as the reader: True, it must yield _SUSPEND.

    The body of a wait, without its generator: vmown.socket's transfers call
    it and yield themselves.
    """
    io, watch = _watch_for(me, fd)
    if watch.readable:
        watch.readable = False
        return False
    if watch.reader is not None:
        raise RuntimeError(f"{watch.reader!r} already waits for descriptor {fd} to be readable")
    watch.reader = me
    return _blocked_on(me, io, watch)


def _watch_for(me: Process[Any], fd: int) -> tuple[Any, Any]:
    """The run's descriptor state and fd's watch, made if need be."""
    io = me._rt.io
    watch = io.watches.get(fd) if io is not None else None
    if watch is None:
        watch = _watch(me._rt, fd)
        io = me._rt.io
    return io, watch


def _blocked_on(me: Process[Any], io: Any, watch: Any) -> bool:
    """``me`` now waits on ``watch``: counted, True (it suspends)."""
    me._waiting_on = watch
    io.waiting += 1
    io.blocked += 1
    return True


def _arm_writable(me: Process[Any], fd: int) -> bool:
    """_arm_readable for writing."""
    io, watch = _watch_for(me, fd)
    if watch.writable:
        watch.writable = False
        return False
    if watch.writer is not None:
        raise RuntimeError(f"{watch.writer!r} already waits for descriptor {fd} to be writable")
    watch.writer = me
    return _blocked_on(me, io, watch)


def notify_closing(fd: Any) -> None:
    """Say that ``fd`` is about to be closed: its waiters get OSError(EBADF), it is no longer watched.

    Call it before closing a descriptor that processes wait on (or have
    waited on): the kernel drops a closed descriptor from the poller, but a
    new descriptor that reuses the number would otherwise never be reported.
    """
    me = _current("vmown.notify_closing()")
    rt = me._rt
    fd = _fileno(fd)
    io = rt.io
    if io is None:
        return
    watch = io.watches.pop(fd, None)
    if watch is None:
        return
    io.poller.unwatch(fd)
    for proc in (watch.reader, watch.writer):
        if proc is not None:
            io.waiting -= 1
            proc._waiting_on = None
            _throw_later(rt, proc, OSError(errno.EBADF, f"descriptor {fd} was closed while a process waited on it"))
    watch.reader = watch.writer = None
    if rt.run_queue and not rt.published_runnable:
        _publish(rt)


# N5. A waiter is cancelled after its edge was collected, before dispatch.
#       I (idle poller): collects (fd, IN)   O: cancels P, the reader: _forget
#       I: owns, dispatches: no reader
#     The edge sets the flag instead: P's next wait (or the next process's)
#     returns at once and tries the operation; nothing is lost, at worst one
#     wake-up is spurious.
# N6. notify_closing while the idle poller holds edges of the descriptor.
#       I: collects (fd, IN)   O: notify_closing(fd), close; maybe a new
#                                 descriptor with the same number is watched
#       I: owns, dispatches
#     An unknown fd is skipped; a new watch of the same number gets a flag
#     that may be spurious (see "Edges").
def dispatch(rt: _Runtime, io: _IO, events: list[tuple[int, int]]) -> None:
    """Make the waiters of the reported descriptors runnable; remember edges nobody waited for.  Owner only."""
    watches = io.watches
    for fd, mask in events:
        watch = watches.get(fd)
        if watch is None:
            if fd == io.poller.wake_fd:
                io.poller.drain()
            continue  # N6
        if mask & READABLE:
            proc = watch.reader
            if proc is None:
                watch.readable = True  # N5
            else:
                watch.reader = None
                io.waiting -= 1
                _wake(proc)
        if mask & WRITABLE:
            proc = watch.writer
            if proc is None:
                watch.writable = True
            else:
                watch.writer = None
                io.waiting -= 1
                _wake(proc)


def poll_now(rt: _Runtime, io: _IO) -> None:
    """At a scheduling point: collect the edges that came, without waiting.  Owner only."""
    io.polls += 1
    events = io.poller.wait(0)
    if events:
        dispatch(rt, io, events)
