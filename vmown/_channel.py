# Channels between processes: the Python face of native/channel.c.
#
# A Channel is a bounded queue of messages (bytes, or pickled objects) in an
# arena's shared memory: any number of threads and processes that map the
# arena may send and receive.  The creator places it with
# `Channel.create(arena, capacity)`; others use `Channel.open(arena, offset)`
# with the creator's `channel.offset` (passed on a command line, or stored by
# the creator in an arena word everybody knows).  A forked child simply keeps
# using its parent's Channel object (anonymous arenas are shared at fork).
#
# What it guarantees:
# - FIFO: messages leave in the order they were published; so the messages
#   of one sender arrive in the order it sent them, to whichever receivers.
# - Every message goes to exactly one receiver, unless a receiver process
#   dies inside recv (then it is either received by another or gone with the
#   dead one).  A sender that dies inside send publishes nothing (its
#   half-written record is discarded; that send never returned).
# - A dead process never wedges the others: the only thing held across
#   instructions is a side's lock, for the length of a memcpy, and a waiter
#   takes over a lock whose holder's process is gone (pid + start time)
#   within ~10-20 ms.  Waiting for data from a sender that died is like
#   waiting on any quiet channel: use a timeout, or close().
# - close() is for every process: blocked senders and receivers wake up;
#   later sends raise ChannelClosed; receivers first get what is left, then
#   ChannelClosed.  Every send that returned before close() is received.
# - A corrupt or hostile peer (anything written into the channel's pages)
#   gives ChannelBrokenError, TimeoutError, or bytes that are not what was
#   sent, never a crash, an access outside the channel, or a hang past the
#   timeout.  Pickled objects from a peer you do not trust are another
#   matter: unpickling runs code (use send/recv and your own format then).
#
# The per-message path is one C call: send() and recv() are methods of the
# C base type ChannelBase (native/pyext/channel_ext.c, module
# vmown._channel_ext), which make one attempt that never waits, with the GIL
# held -- room in the ring (a message in it): copy, publish, return.  A cffi
# call costs ~45 ns with one argument, ~100 ns with more, and releases and
# re-takes the GIL; a Python method around it adds a frame: that, not the
# ring, was the limit of streaming small messages.  Everything the fast path
# does not do it hands, unchanged, to _send_slow / _recv_slow here: waiting
# (full, empty, a busy lock), every error (so one place, _raise, makes the
# exceptions of both paths), checking unusual arguments, and messages over
# 64 KiB (copied without the GIL).  The extension gets the core's functions
# from vmown._native (bind() below): one copy of the core in the process.
#
# The slow paths are written for what cffi charges: send is one
# three-argument call; recv is one one-argument call on a per-thread "port"
# (where C copies the message, sized max_message or 64 KiB, whichever is
# smaller, grown on demand) plus a slice of an ffi.buffer over it, which
# builds the bytes object directly.  The port lives in a threading.local, so
# threads of one process may share a Channel.  Blocking happens in C with
# the GIL released, as a callout (inside a vmown.run() the VM is given up for
# the wait, see _send below): spin up to 20 us (`spin_ns`), then sleep on a futex.
# Spinning is adaptive: after a few spins in a row that found nothing (a
# busy machine, where the peer cannot run while we spin, or a quiet
# channel) waits sleep at once, probing a spin now and then.  A
# signal ends the sleep so that its handler runs here (Ctrl-C raises), and
# the call resumes if the handler returns; sleeps last 50 ms at most, so a
# signal that came between two sleeps is handled within 50 ms.
#
# Lifetime: the C handle is freed, and the pinned slice of the arena
# released, when the last reference goes (the Channel, or a call still
# running in another thread), so detach() can never pull memory from under a
# blocked call.  The channel's pages belong to the arena for good (arenas do
# not free).

from __future__ import annotations

import pickle
import threading
import time
from typing import Any, Iterator

from . import _channel_ext
from ._callout import threaded
from ._channel_ext import ChannelBase
from ._errors import ChannelClosed, error
from ._native import ffi, lib

__all__ = ["Channel"]

LAYOUT_VERSION = 1  # of the channel header; must match native/vmown_internal.h
DEFAULT_CLOSE_TIMEOUT = 5.0  # seconds: close() waits this long for the send lock

_PORT_BYTES = 1 << 16  # a port's first buffer, unless max_message is smaller
_MIN_CAPACITY = 64
_MAX_CAPACITY = 1 << 40

if not hasattr(lib, "vmown_channel_recv") or lib.vmown_channel_layout_version() != LAYOUT_VERSION:
    raise ImportError(
        f"vmown._native is stale (no channel layout {LAYOUT_VERSION}); reinstall with pip install -e ."
    )

# One copy of the core: the extension calls vmown._native's functions
# through this table (ImportError if the two come from different builds).
_channel_ext.bind(int(ffi.cast("uintptr_t", lib.vmown_channel_api())))

# The waits are callouts: inside a vmown.run() a process that waits for a
# message gives the VM up like any blocking C call, and the other processes
# go on (a heartbeat tick later, on another thread); outside a run, or from
# a thread that serves none, vmown.threaded is a plain call.  Only the slow
# paths wait: the fast path above never does, so it stays one C call.
_send = threaded(lib.vmown_channel_send)
_send_timed = threaded(lib.vmown_channel_send_timed)
_recv = threaded(lib.vmown_channel_recv)
_recv_timed = threaded(lib.vmown_channel_recv_timed)
_EINTR = lib.VMOWN_EINTR
_ETIMEDOUT = lib.VMOWN_ETIMEDOUT
_EINVAL = lib.VMOWN_EINVAL
_TOOBIG = lib.VMOWN_ECHAN_TOOBIG
_SMALLBUF = lib.VMOWN_ECHAN_SMALLBUF
_NULL = ffi.NULL  # a detached Channel's handle: C answers VMOWN_EINVAL, _raise says "detached"

# Byte offsets in a channel (native/vmown_internal.h, struct vmown__channel;
# channel.c asserts some of them): for tools and tests.
_HEADER_OFFSETS = {
    "magic": 0,
    "version": 8,
    "state": 12,
    "header_size": 16,
    "flags": 20,
    "capacity": 24,
    "max_message": 32,
    "creator": 40,
    "send_holder": 64,
    "send_seen": 72,
    "send_count": 80,
    "send_lock_event": 104,
    "tail": 128,
    "recv_holder": 192,
    "recv_seen": 200,
    "recv_count": 208,
    "recv_lock_event": 232,
    "head": 256,
    "data_event": 320,
    "room_event": 384,
    "ring": 448,  # the first record's word (length | position / 8 << 32), then its payload
}

_STATS = (
    "capacity",
    "max_message",
    "used",
    "messages",
    "sent",
    "received",
    "send_sleeps",
    "recv_sleeps",
    "wakes",
    "takeovers",
    "closed",
    "broken",
    "send_holder",
    "recv_holder",
)


def _timeout_ns(timeout: float) -> int:
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout >= 0:
        raise ValueError(f"timeout must be seconds >= 0 or None, not {timeout!r}")
    return int(timeout * 1e9)


def _remaining_ns(deadline: float | None) -> int:
    return -1 if deadline is None else max(0, int((deadline - time.monotonic()) * 1e9))


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive int (bytes), not {value!r}")
    return value


def _round_capacity(capacity: int) -> int:
    capacity = _positive_int(capacity, "capacity")
    if capacity > _MAX_CAPACITY:
        raise ValueError(f"capacity must be at most 2**40 bytes, not {capacity}")
    return max(_MIN_CAPACITY, 1 << (capacity - 1).bit_length())


class _Memory:
    """The channel's pinned memory; freed with the C handle, by its destructor."""

    __slots__ = ("pinned",)

    def __init__(self, pinned: Any) -> None:
        self.pinned = pinned  # ffi.from_buffer of a slice of the arena's buffer

    def free(self, handle: Any) -> None:
        lib.vmown_channel_detach(handle)
        self.pinned = None


class Channel(ChannelBase):
    """A bounded channel of messages between threads and processes, in an arena.

    Make one with :meth:`create`; other processes use :meth:`open` with its
    :attr:`offset` (forked children keep using the same object).
    :meth:`send` / :meth:`recv` move bytes, :meth:`send_obj` /
    :meth:`recv_obj` pickled objects; both wait while the channel is full or
    empty (``timeout=`` seconds, then :class:`TimeoutError`).
    :meth:`close` closes it for every process.  ``for message in channel``
    receives until it is closed and drained.
    """

    __slots__ = ("_h", "_arena", "_offset", "_size", "_capacity", "_max", "_local", "__weakref__")

    def __init__(self) -> None:
        raise TypeError("make a Channel with Channel.create(arena, capacity) or Channel.open(arena, offset)")

    # ---- making channels ----

    @staticmethod
    def size_for(capacity: int) -> int:
        """Bytes of arena a channel of ``capacity`` bytes takes (before rounding to pages)."""
        return lib.vmown_channel_size(_round_capacity(capacity))

    @classmethod
    def create(cls, arena: Any, capacity: int, *, max_message: int | None = None) -> "Channel":
        """Place a new channel with a ring of ``capacity`` bytes in ``arena`` (``arena.alloc``).

        ``capacity`` is rounded up to a power of two (at least 64); each
        message takes its length rounded up to 8, plus 8 bytes.
        ``max_message`` (default: ``capacity - 8``, one message may fill the
        ring) bounds a message's length; longer ones raise ValueError.  Other
        processes open it with ``Channel.open(arena, channel.offset)``.
        """
        capacity = _round_capacity(capacity)
        if max_message is None:
            max_message = min(capacity - 8, (1 << 32) - 1)
        max_message = _positive_int(max_message, "max_message")
        if max_message > capacity - 8 or max_message >= 1 << 32:
            raise ValueError(
                f"max_message {max_message} does not fit a ring of {capacity} bytes (a message takes 8 "
                f"more); make capacity at least max_message + 8, and max_message below 2**32"
            )
        size = lib.vmown_channel_size(capacity)
        offset = arena.alloc(size)
        pinned = ffi.from_buffer(arena.buffer[offset : offset + size], require_writable=True)
        out = ffi.new("vmown_channel **")
        rc = lib.vmown_channel_init(pinned, size, capacity, max_message, out)
        if rc < 0:
            raise error(rc, "creating the channel")
        return cls._wrap(out[0], pinned, arena, offset, size)

    @classmethod
    def open(cls, arena: Any, offset: int) -> "Channel":
        """Use the channel that :meth:`create` placed at ``offset`` of ``arena`` (another process's).

        The header is checked: a wrong offset or a damaged header raises
        :class:`ChannelError`.
        """
        if isinstance(offset, bool) or not isinstance(offset, int):
            raise TypeError(f"offset must be an int, not {type(offset).__name__}")
        size = arena.size
        if not 0 <= offset < size or offset % 64:
            raise ValueError(
                f"offset {offset} is not a channel's offset in this arena ({size} bytes): pass the "
                "offset Channel.create gave (channel.offset)"
            )
        pinned = ffi.from_buffer(arena.buffer[offset:], require_writable=True)
        out = ffi.new("vmown_channel **")
        rc = lib.vmown_channel_attach(pinned, len(pinned), out)
        if rc < 0:
            raise error(rc, f"opening the channel at offset {offset}")
        handle = out[0]
        size = lib.vmown_channel_size(lib.vmown_channel_capacity(handle))
        exact = ffi.from_buffer(arena.buffer[offset : offset + size], require_writable=True)
        return cls._wrap(handle, exact, arena, offset, size)

    @classmethod
    def _wrap(cls, handle: Any, pinned: Any, arena: Any, offset: int, size: int) -> "Channel":
        self = ChannelBase.__new__(cls)
        memory = _Memory(pinned)
        self._h = ffi.gc(handle, memory.free)
        self._arena = arena
        self._offset = offset
        self._size = size
        self._capacity = lib.vmown_channel_capacity(handle)
        self._max = lib.vmown_channel_max_message(handle)
        self._local = threading.local()
        self._bind(int(ffi.cast("uintptr_t", handle)), self._max)  # lent to ChannelBase: see detach()
        return self

    # ---- sending ----

    # send(data, timeout=None): ChannelBase's, in C; it calls this for all
    # that its one attempt without waiting did not do.

    def _send_slow(self, data: Any, timeout: float | None) -> None:
        if data.__class__ is bytes:
            data = ffi.from_buffer(data)  # a pointer made here: read-only is fine for a const source
        else:
            if isinstance(data, str):
                raise TypeError("send() takes bytes-like data, not str; encode it first (or send_obj)")
            try:
                data = ffi.from_buffer(data)
            except TypeError:
                raise TypeError(f"send() takes bytes-like data, not {type(data).__name__}") from None
        length = len(data)
        deadline = None if timeout is None else time.monotonic() + _timeout_ns(timeout) / 1e9
        while True:
            h = self._h
            if deadline is None:
                rc = _send(h, data, length)
            else:
                rc = _send_timed(h, data, length, _remaining_ns(deadline))
            if rc == _EINTR:
                # A signal interrupted the wait: its handler has run (on this
                # loop's backward jump) and returned.  Nothing was sent; try
                # again with what is left of the timeout.
                continue
            if not rc:
                return
            self._raise(rc, "send", length=length)

    def send_obj(
        self, obj: Any, timeout: float | None = None, *, protocol: int = pickle.HIGHEST_PROTOCOL
    ) -> None:
        """Pickle ``obj`` and send it; its pickle must fit :attr:`max_message`."""
        data = pickle.dumps(obj, protocol=protocol)
        if len(data) > self._max:
            raise ValueError(
                f"the pickled {type(obj).__name__} is {len(data)} bytes, more than the channel's "
                f"max_message ({self._max}); make the channel with a larger max_message= or send less"
            )
        self.send(data, timeout)

    # ---- receiving ----

    def _port(self) -> tuple[Any, Any, Any, Any]:
        """This thread's port: (port, view of its buffer, handle, buffer)."""
        h = self._h
        if h is _NULL:
            raise ValueError("this Channel is detached")
        return self._new_port(h, min(self._max, _PORT_BYTES))

    def _new_port(self, h: Any, cap: int) -> tuple[Any, Any, Any, Any]:
        buf = ffi.new("char[]", cap)
        port = ffi.new("vmown_channel_port *", {"ch": h, "buf": buf, "cap": cap})
        rx = (port, ffi.buffer(buf), h, buf)
        self._local.rx = rx
        return rx

    # recv(timeout=None): ChannelBase's, in C, as send.

    def _recv_slow(self, timeout: float | None) -> bytes:
        try:
            rx = self._local.rx
        except AttributeError:
            rx = self._port()
        deadline = None if timeout is None else time.monotonic() + _timeout_ns(timeout) / 1e9
        while True:
            port = rx[0]
            n = _recv(port) if deadline is None else _recv_timed(port, _remaining_ns(deadline))
            if n >= 0:
                return rx[1][:n]
            if n == _SMALLBUF:  # a larger message than this port holds: grow it
                cap = min(self._max, max(int(port.need), 2 * int(port.cap)))
                rx = self._new_port(rx[2], cap)
            elif n != _EINTR:  # EINTR: the handler ran and returned; wait again
                self._raise(n, "recv")

    def recv_into(self, buffer: Any, timeout: float | None = None) -> int:
        """Receive the oldest message into ``buffer`` (writable bytes-like); returns its length.

        A message longer than the buffer raises ValueError and stays in the
        channel.  Otherwise as :meth:`recv`.
        """
        h = self._h
        if h is _NULL:
            raise ValueError("this Channel is detached")
        try:
            target = ffi.from_buffer(buffer, require_writable=True)
        except TypeError:
            raise TypeError(
                f"recv_into() needs a writable bytes-like buffer, not {type(buffer).__name__}"
            ) from None
        port = ffi.new("vmown_channel_port *", {"ch": h, "buf": target, "cap": len(target)})
        deadline = None if timeout is None else time.monotonic() + _timeout_ns(timeout) / 1e9
        while True:
            n = _recv(port) if deadline is None else _recv_timed(port, _remaining_ns(deadline))
            if n >= 0:
                return n
            if n == _SMALLBUF:
                raise ValueError(
                    f"the next message is {port.need} bytes, the buffer only {len(target)}; it stays in "
                    f"the channel (pass a buffer of max_message = {self._max} bytes)"
                )
            if n != _EINTR:
                self._raise(n, "recv_into")

    def recv_obj(self, timeout: float | None = None) -> Any:
        """Receive a message and unpickle it (only from peers you trust: unpickling runs code)."""
        return pickle.loads(self.recv(timeout))

    def __iter__(self) -> Iterator[bytes]:
        """Receive messages until the channel is closed and drained."""
        while True:
            try:
                yield self.recv()
            except ChannelClosed:
                return

    # ---- errors ----

    def _raise(self, rc: int, what: str, *, length: int = 0) -> None:
        if rc == _EINVAL and self._h is _NULL:
            raise ValueError("this Channel is detached")
        if rc == _TOOBIG:
            raise ValueError(
                f"{what}: the message is {length} bytes, more than the channel's max_message "
                f"({self._max}); make the channel with a larger max_message= or send less"
            )
        if rc == _ETIMEDOUT:
            why = "the channel stayed full" if what == "send" else "no message came"
            raise TimeoutError(f"{what}: timed out ({why})")
        if rc == lib.VMOWN_ECHAN_CLOSED:
            raise ChannelClosed(
                f"{what}: the channel is closed" + ("" if what == "send" else " and drained"), rc
            )
        raise error(rc, what)

    # ---- closing ----

    def close(self, *, timeout: float | None = DEFAULT_CLOSE_TIMEOUT) -> None:
        """Close the channel for every process, waking everybody blocked on it.

        Later sends raise :class:`ChannelClosed`; receivers get what is left,
        then ChannelClosed.  Closing again is harmless.  ``timeout`` bounds
        the wait for a sender in the middle of a send (TimeoutError).
        """
        h = self._h
        if h is _NULL:
            raise ValueError("this Channel is detached")
        timeout_ns = -1 if timeout is None else _timeout_ns(timeout)
        while True:
            rc = lib.vmown_channel_close(h, timeout_ns)
            if rc != _EINTR:
                break
        if rc == _ETIMEDOUT:
            raise TimeoutError("close: a live process held the send lock past the timeout")
        if rc < 0:
            raise error(rc, "close")

    def detach(self) -> None:
        """Drop this process's handle; the channel stays open for the others.

        Calls still running in other threads finish first (they hold the
        handle).  Detaching twice is harmless.
        """
        self._bind(0, 0)  # first: ChannelBase must not use the handle once _h lets it go
        self._h = _NULL
        self._local = threading.local()

    def __enter__(self) -> "Channel":
        return self

    def __exit__(self, *exc_info: object) -> None:
        """Close the channel (for everyone: use detach() where other senders go on)."""
        if self._h is not _NULL:
            self.close()

    # ---- observers ----

    @property
    def offset(self) -> int:
        """Where the channel starts in its arena's data area: what :meth:`open` needs."""
        return self._offset

    @property
    def arena(self) -> Any:
        """The arena the channel lives in."""
        return self._arena

    @property
    def capacity(self) -> int:
        """Ring bytes (a power of two)."""
        return self._capacity

    @property
    def max_message(self) -> int:
        """The longest message, in bytes."""
        return self._max

    @property
    def spin_ns(self) -> int:
        """How long a wait may spin before sleeping, in ns (this process; default 20000; 0: never).

        Spinning is adaptive: after a few fruitless spins in a row, waits sleep
        at once and only probe a spin now and then.
        """
        return lib.vmown_channel_spin_ns(self._handle())

    @spin_ns.setter
    def spin_ns(self, ns: int) -> None:
        if isinstance(ns, bool) or not isinstance(ns, int) or ns < 0:
            raise ValueError(f"spin_ns must be an int >= 0 (ns), not {ns!r}")
        lib.vmown_channel_set_spin_ns(self._handle(), ns)

    def _handle(self) -> Any:
        h = self._h
        if h is _NULL:
            raise ValueError("this Channel is detached")
        return h

    def stats(self) -> dict[str, int]:
        """Counters and state, read without a lock (a consistent snapshot only when quiet).

        capacity, max_message; used (ring bytes held), messages (waiting),
        sent, received; send_sleeps / recv_sleeps (waits that slept), wakes
        (futex wake calls), takeovers (locks taken from dead holders);
        closed, broken; send_holder / recv_holder (pid holding a side's lock, 0).
        """
        out = ffi.new("vmown_channel_stats *")
        lib.vmown_channel_stats_read(self._handle(), out)
        return {name: int(getattr(out, name)) for name in _STATS}

    def __len__(self) -> int:
        """Messages waiting now (a snapshot)."""
        return self.stats()["messages"]

    def __bool__(self) -> bool:
        return True  # a Channel is a Channel, empty or not (``if channel:`` must not mean "if non-empty")

    @property
    def closed(self) -> bool:
        """Whether the channel was closed (by any process)."""
        return bool(self.stats()["closed"])

    def __repr__(self) -> str:
        if self._h is _NULL:
            return f"<vmown.Channel detached offset={self._offset}>"
        s = self.stats()
        state = "broken" if s["broken"] else "closed" if s["closed"] else "open"
        return (
            f"<vmown.Channel offset={self._offset} capacity={s['capacity']} max_message={s['max_message']} "
            f"messages={s['messages']} used={s['used']} {state}>"
        )
