# Sockets for processes of vmown.run(): the standard socket, non-blocking,
# with async methods that wait for readiness (vmown/_io.py) instead of
# holding a thread.
#
# The shape is trio's (trio.socket): socket(), fromfd(), and a SocketType
# whose blocking methods are coroutines; errors are the standard OSErrors.
# Each operation is tried first and waits only on EAGAIN (Go's netFD does
# the same): a socket with data ready costs one system call and no
# scheduling point.  So that a process that never has to wait cannot keep the
# VM from the others, every _YIELD_EVERY operations in a row that did not wait
# end with a checkpoint.  Name resolution (getaddrinfo) is C that blocks in
# its own way: a threaded callout, not a readiness wait.
#
# Receiving.  A receive on a stream socket that returns fewer bytes than
# asked emptied the socket's buffer; every byte that arrives after it makes
# an edge, which wakes the next wait or sets its flag.  So the next receive
# waits first instead of trying a read that would fail with EAGAIN (one
# system call and one exception per message of a request-reply exchange).
# Not after end of stream (0 bytes: the edge of the hang-up came before)
# nor for datagrams (a short datagram says nothing of the next one).
#
# close() calls notify_closing first when it runs in a process, so that a
# process waiting on the socket gets OSError(EBADF) and the descriptor's
# number can be reused safely (vmown/_io.py, "Edges").

from __future__ import annotations

import os
import socket as _stdlib
import types
from collections.abc import Generator
from typing import Any, Self

from ._callout import callout
from ._cancel import Cancelled
from ._io import _arm_readable, _arm_writable, _wait_readable, _wait_writable, notify_closing
from ._scheduler import _SUSPEND, Process, _process_var, checkpoint

__all__ = ["open_tcp_listener", "open_tcp_stream"]

# Operations in a row that completed without waiting before a checkpoint.
_YIELD_EVERY = 16


def _check_cancel(what: str) -> Process[Any]:
    """The calling process; Cancelled in a cancelled scope, as at every wait."""
    proc = _process_var.get(None)
    if proc is None:
        raise RuntimeError(f"{what} must be called from a process started by vmown.run()")
    if proc._cancel_pending:
        raise Cancelled(f"{proc!r} is in a cancelled scope")
    return proc


class SocketType:
    """A non-blocking socket whose blocking operations are ``async`` methods.

    Made by :func:`vmown.socket.socket`, :func:`vmown.socket.fromfd`,
    :meth:`accept`, :func:`vmown.open_tcp_listener` and
    :func:`vmown.open_tcp_stream`.  The other attributes of the standard
    socket (``setsockopt``, ``getsockname``, ``family``...) are passed through.
    """

    __slots__ = ("_sock", "_fd", "_unyielded", "_stream", "_drained")

    def __init__(self, sock: _stdlib.socket) -> None:
        if not isinstance(sock, _stdlib.socket):
            raise TypeError(f"expected a socket.socket, not {type(sock).__name__}")
        sock.setblocking(False)
        self._sock = sock
        self._fd = sock.fileno()
        self._unyielded = 0  # operations in a row that did not wait
        self._stream = sock.type == _stdlib.SOCK_STREAM
        # A stream socket's last receive came back short, so its buffer was
        # empty then: any byte since has made an edge (see "Receiving").
        self._drained = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)

    def fileno(self) -> int:
        """The socket's descriptor."""
        return self._sock.fileno()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the socket; processes waiting on it get OSError(EBADF)."""
        fd = self._sock.fileno()
        if fd >= 0 and _process_var.get(None) is not None:
            notify_closing(fd)
        self._sock.close()

    async def accept(self) -> tuple[SocketType, Any]:
        """Wait for a connection; return (a new SocketType, the peer's address)."""
        me = _check_cancel("accept()")
        sock = self._sock
        while True:
            try:
                conn, address = sock._accept()  # type: ignore[attr-defined]
                break
            except BlockingIOError:
                self._unyielded = 0
                await _wait_readable(me, self._fd)
        new = SocketType(_stdlib.socket(sock.family, sock.type, sock.proto, fileno=conn))
        self._unyielded += 1
        if self._unyielded >= _YIELD_EVERY:
            self._unyielded = 0
            await checkpoint()
        return new, address

    async def connect(self, address: Any) -> None:
        """Connect to ``address``; raise the OSError the connection failed with."""
        me = _check_cancel("connect()")
        sock = self._sock
        try:
            sock.connect(address)
            return
        except (BlockingIOError, InterruptedError):
            pass
        await _wait_writable(me, self._fd)
        code = sock.getsockopt(_stdlib.SOL_SOCKET, _stdlib.SO_ERROR)
        if code:
            raise OSError(code, f"connect to {address!r}: {os.strerror(code)}")

    # The four transfers: try, wait only on EAGAIN, and count the operations
    # that did not wait (a checkpoint every _YIELD_EVERY of them).  They are
    # on the path of every message, so each is one generator-based coroutine
    # that yields to the scheduler itself (_SUSPEND to wait, None for a
    # checkpoint) instead of awaiting helpers, and is written out in full.

    @types.coroutine
    def recv(self, bufsize: int, flags: int = 0) -> Generator[object, Any, bytes]:
        """Receive up to ``bufsize`` bytes (b"" at end of stream), waiting until some come."""
        me = _process_var.get(None)
        if me is None or me._cancel_pending:
            me = _check_cancel("recv()")  # raises
        if not self._drained:  # see "Receiving"
            try:
                data: bytes = self._sock.recv(bufsize, flags)
            except BlockingIOError:
                pass
            else:
                self._drained = 0 < len(data) < bufsize and self._stream and not flags
                self._unyielded += 1
                if self._unyielded >= _YIELD_EVERY:
                    self._unyielded = 0
                    yield None
                return data
        self._unyielded = 0
        while True:
            if _arm_readable(me, self._fd):
                yield _SUSPEND
            try:
                data = self._sock.recv(bufsize, flags)
            except BlockingIOError:
                continue
            self._drained = 0 < len(data) < bufsize and self._stream and not flags
            return data

    @types.coroutine
    def recv_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> Generator[object, Any, int]:
        """Receive into ``buffer``; return the number of bytes (0 at end of stream)."""
        me = _process_var.get(None)
        if me is None or me._cancel_pending:
            me = _check_cancel("recv_into()")  # raises
        asked = nbytes or memoryview(buffer).nbytes
        if not self._drained:  # see "Receiving"
            try:
                n: int = self._sock.recv_into(buffer, nbytes, flags)
            except BlockingIOError:
                pass
            else:
                self._drained = 0 < n < asked and self._stream and not flags
                self._unyielded += 1
                if self._unyielded >= _YIELD_EVERY:
                    self._unyielded = 0
                    yield None
                return n
        self._unyielded = 0
        while True:
            if _arm_readable(me, self._fd):
                yield _SUSPEND
            try:
                n = self._sock.recv_into(buffer, nbytes, flags)
            except BlockingIOError:
                continue
            self._drained = 0 < n < asked and self._stream and not flags
            return n

    @types.coroutine
    def send(self, data: Any, flags: int = 0) -> Generator[object, Any, int]:
        """Send some of ``data``, waiting until the socket takes at least a byte; return how many."""
        me = _process_var.get(None)
        if me is None or me._cancel_pending:
            me = _check_cancel("send()")  # raises
        try:
            n: int = self._sock.send(data, flags)
        except BlockingIOError:
            self._unyielded = 0
            while True:
                if _arm_writable(me, self._fd):
                    yield _SUSPEND
                try:
                    n = self._sock.send(data, flags)
                except BlockingIOError:
                    continue
                return n
        self._unyielded += 1
        if self._unyielded >= _YIELD_EVERY:
            self._unyielded = 0
            yield None
        return n

    @types.coroutine
    def sendall(self, data: Any, flags: int = 0) -> Generator[object, Any, None]:
        """Send all of ``data``, waiting as often as the socket's buffer is full."""
        me = _process_var.get(None)
        if me is None or me._cancel_pending:
            me = _check_cancel("sendall()")  # raises
        send = self._sock.send
        try:
            sent = send(data, flags)
        except BlockingIOError:
            sent = 0
        if type(data) is not bytes or sent < len(data):
            view = memoryview(data).cast("B")
            while sent < len(view):
                self._unyielded = 0
                if _arm_writable(me, self._fd):
                    yield _SUSPEND
                try:
                    sent += send(view[sent:], flags)
                except BlockingIOError:
                    pass
        self._unyielded += 1
        if self._unyielded >= _YIELD_EVERY:
            self._unyielded = 0
            yield None

    def __repr__(self) -> str:
        return f"<vmown.socket.SocketType {self._sock!r}>"


def socket(
    family: int = _stdlib.AF_INET, type: int = _stdlib.SOCK_STREAM, proto: int = 0, fileno: int | None = None
) -> SocketType:
    """A new socket, as :func:`socket.socket` makes it, non-blocking, with async methods."""
    return SocketType(_stdlib.socket(family, type, proto, fileno))


def fromfd(fd: int, family: int, type: int, proto: int = 0) -> SocketType:
    """A SocketType of a duplicate of ``fd``, as :func:`socket.fromfd`."""
    return SocketType(_stdlib.fromfd(fd, family, type, proto))


def from_stdlib_socket(sock: _stdlib.socket) -> SocketType:
    """Wrap a standard socket (made non-blocking; the SocketType owns it from now on)."""
    return SocketType(sock)


async def getaddrinfo(
    host: str | bytes | None, port: str | int | None, family: int = 0, type: int = 0, proto: int = 0, flags: int = 0
) -> list[Any]:
    """:func:`socket.getaddrinfo` as a threaded callout: other processes run while it resolves."""
    _check_cancel("getaddrinfo()")
    result: list[Any] = callout(_resolve, host, port, family, type, proto, flags)
    return result


def _resolve(host: Any, port: Any, family: int, type: int, proto: int, flags: int) -> list[Any]:
    return _stdlib.getaddrinfo(host, port, family, type, proto, flags)


async def open_tcp_listener(port: int, *, host: str | None = None, backlog: int = 128) -> SocketType:
    """A TCP socket listening on ``port`` (every interface, or ``host``), SO_REUSEADDR set.

    ``port=0`` picks a free port: ``listener.getsockname()[1]``.  Serve it
    with ``conn, address = await listener.accept()``.
    """
    infos = await getaddrinfo(host, port, type=_stdlib.SOCK_STREAM, flags=_stdlib.AI_PASSIVE)
    family, type_, proto, _, address = infos[0]
    sock = _stdlib.socket(family, type_, proto)
    try:
        sock.setsockopt(_stdlib.SOL_SOCKET, _stdlib.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    return SocketType(sock)


async def open_tcp_stream(host: str, port: int) -> SocketType:
    """A TCP connection to ``host``:``port`` (the first address that accepts), TCP_NODELAY set."""
    infos = await getaddrinfo(host, port, type=_stdlib.SOCK_STREAM)
    failure: OSError | None = None
    for family, type_, proto, _, address in infos:
        sock = SocketType(_stdlib.socket(family, type_, proto))
        try:
            await sock.connect(address)
        except OSError as exc:
            sock.close()
            failure = exc
            continue
        except BaseException:
            sock.close()
            raise
        sock.setsockopt(_stdlib.IPPROTO_TCP, _stdlib.TCP_NODELAY, 1)
        return sock
    raise failure or OSError(f"no address for {host!r}")
