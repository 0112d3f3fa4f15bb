# Readiness from the OS, Linux: epoll and an eventfd.  Every OS call of the
# descriptor waits (vmown/_io.py) is in this one file; a port to kqueue or
# another poller is a module of the same shape:
#
#   Poller()              a poller with its wake-up descriptor registered
#   Poller.watch(fd)      start reporting fd's readiness (once per descriptor)
#   Poller.unwatch(fd)    stop; a closed fd is not an error
#   Poller.wait(timeout_s) -> [(fd, mask), ...]   timeout_s < 0: no timeout
#   Poller.wake()         make a wait in progress (or the next one) return
#   Poller.drain()        reset the wake-up (its fd came out of wait)
#   Poller.wake_fd, READABLE, WRITABLE (masks), close()
#
# Edge-triggered, as Go's netpoller: a descriptor is registered once, for
# both directions, and each edge is reported to one wait only.  So the owner
# polling at a scheduling point and an idle thread waiting never both see one
# edge, and nothing has to be re-armed for each wait (trio's level-triggered
# manager does one epoll_ctl per wait).  The price: an edge that comes with
# nobody waiting must be remembered (vmown/_io.py keeps a ready flag per
# direction), and a descriptor closed without unwatch is dropped by the
# kernel but not by us (hence vmown.notify_closing).
#
# Assumptions: select.epoll.poll releases the GIL while it waits, and retries
# after EINTR once the signal handlers have run (PEP 475): a handler that
# must end the wait calls wake().  Writing an eventfd is async-signal-safe.

from __future__ import annotations

import os
import select

# No __all__: nothing here is public (the package re-exports every __all__).

# The directions a reported mask wakes.  Errors and hang-ups wake both: the
# next operation reports them.
READABLE = select.EPOLLIN | select.EPOLLPRI | select.EPOLLERR | select.EPOLLHUP | select.EPOLLRDHUP
WRITABLE = select.EPOLLOUT | select.EPOLLERR | select.EPOLLHUP
_WATCH = select.EPOLLIN | select.EPOLLOUT | select.EPOLLRDHUP | select.EPOLLET
_MAX_EVENTS = 1024


class Poller:
    """An epoll instance with an eventfd for wake-ups; watch and wait for descriptors."""

    __slots__ = ("_epoll", "wake_fd", "_poll")

    def __init__(self) -> None:
        self._epoll = select.epoll()
        self.wake_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        # Level-triggered: a wake-up stays visible until drained.
        self._epoll.register(self.wake_fd, select.EPOLLIN)
        self._poll = self._epoll.poll

    def watch(self, fd: int) -> None:
        """Report ``fd``'s edges from now on; OSError as epoll_ctl raises it (EPERM: a regular file)."""
        self._epoll.register(fd, _WATCH)

    def unwatch(self, fd: int) -> None:
        try:
            self._epoll.unregister(fd)
        except (OSError, ValueError):
            pass  # closed already: the kernel dropped it

    def wait(self, timeout_s: float) -> list[tuple[int, int]]:
        """Edges since the last wait; block up to ``timeout_s`` (< 0: until one comes, 0: not at all)."""
        return self._poll(timeout_s, _MAX_EVENTS)

    def wake(self) -> None:
        try:
            os.eventfd_write(self.wake_fd, 1)
        except (BlockingIOError, OSError):
            pass  # the counter is full (woken already) or closed (the run ended)

    def drain(self) -> None:
        try:
            os.eventfd_read(self.wake_fd)
        except (BlockingIOError, OSError):
            pass

    def close(self) -> None:
        self._epoll.close()
        os.close(self.wake_fd)
