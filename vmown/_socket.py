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
# close() calls notify_closing first when it runs in a process, so that a
# process waiting on the socket gets OSError(EBADF) and the descriptor's
# number can be reused safely (vmown/_io.py, "Edges").

from __future__ import annotations

import socket as _stdlib
from typing import Any, Self

from ._callout import callout
from ._cancel import Cancelled
from ._io import notify_closing, wait_readable, wait_writable
from ._scheduler import _process_var, checkpoint

__all__ = ["open_tcp_listener", "open_tcp_stream"]

# Operations in a row that completed without waiting before a checkpoint.
_YIELD_EVERY = 16


def _check_cancel(what: str) -> None:
    proc = _process_var.get(None)
    if proc is None:
        raise RuntimeError(f"{what} must be called from a process started by vmown.run()")
    if proc._cancel_pending:
        raise Cancelled(f"{proc!r} is in a cancelled scope")


class SocketType:
    """A non-blocking socket whose blocking operations are ``async`` methods.

    Made by :func:`vmown.socket.socket`, :func:`vmown.socket.fromfd`,
    :meth:`accept`, :func:`vmown.open_tcp_listener` and
    :func:`vmown.open_tcp_stream`.  The other attributes of the standard
    socket (``setsockopt``, ``getsockname``, ``family``...) are passed through.
    """

    __slots__ = ("_sock", "_fd", "_unyielded")

    def __init__(self, sock: _stdlib.socket) -> None:
        if not isinstance(sock, _stdlib.socket):
            raise TypeError(f"expected a socket.socket, not {type(sock).__name__}")
        sock.setblocking(False)
        self._sock = sock
        self._fd = sock.fileno()
        self._unyielded = 0  # operations in a row that did not wait

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

    async def _done(self) -> None:
        """An operation completed without waiting: a checkpoint every _YIELD_EVERY of them."""
        self._unyielded += 1
        if self._unyielded >= _YIELD_EVERY:
            self._unyielded = 0
            await checkpoint()

    async def accept(self) -> tuple[SocketType, Any]:
        """Wait for a connection; return (a new SocketType, the peer's address)."""
        _check_cancel("accept()")
        sock = self._sock
        while True:
            try:
                conn, address = sock._accept()  # type: ignore[attr-defined]
                break
            except BlockingIOError:
                self._unyielded = 0
                await wait_readable(self._fd)
        new = _stdlib.socket(sock.family, sock.type, sock.proto, fileno=conn)
        await self._done()
        return SocketType(new), address

    async def connect(self, address: Any) -> None:
        """Connect to ``address``; raise the OSError the connection failed with."""
        _check_cancel("connect()")
        sock = self._sock
        try:
            sock.connect(address)
            return
        except (BlockingIOError, InterruptedError):
            pass
        await wait_writable(self._fd)
        error = sock.getsockopt(_stdlib.SOL_SOCKET, _stdlib.SO_ERROR)
        if error:
            raise OSError(error, f"connect to {address!r}: {_stdlib_strerror(error)}")

    async def recv(self, bufsize: int, flags: int = 0) -> bytes:
        """Receive up to ``bufsize`` bytes (b"" at end of stream), waiting until some come."""
        _check_cancel("recv()")
        recv = self._sock.recv
        try:
            data = recv(bufsize, flags)
        except BlockingIOError:
            while True:
                self._unyielded = 0
                await wait_readable(self._fd)
                try:
                    return recv(bufsize, flags)
                except BlockingIOError:
                    pass
        await self._done()
        return data

    async def recv_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> int:
        """Receive into ``buffer``; return the number of bytes (0 at end of stream)."""
        _check_cancel("recv_into()")
        recv_into = self._sock.recv_into
        try:
            n = recv_into(buffer, nbytes, flags)
        except BlockingIOError:
            while True:
                self._unyielded = 0
                await wait_readable(self._fd)
                try:
                    return recv_into(buffer, nbytes, flags)
                except BlockingIOError:
                    pass
        await self._done()
        return n

    async def send(self, data: Any, flags: int = 0) -> int:
        """Send some of ``data``, waiting until the socket takes at least a byte; return how many."""
        _check_cancel("send()")
        send = self._sock.send
        try:
            n = send(data, flags)
        except BlockingIOError:
            while True:
                self._unyielded = 0
                await wait_writable(self._fd)
                try:
                    return send(data, flags)
                except BlockingIOError:
                    pass
        await self._done()
        return n

    async def sendall(self, data: Any, flags: int = 0) -> None:
        """Send all of ``data``, waiting as often as the socket's buffer is full."""
        _check_cancel("sendall()")
        send = self._sock.send
        view = memoryview(data).cast("B")
        total = len(view)
        sent = 0
        while True:
            try:
                sent += send(view[sent:] if sent else view, flags)
            except BlockingIOError:
                self._unyielded = 0
                await wait_writable(self._fd)
                continue
            if sent >= total:
                break
        await self._done()

    def __repr__(self) -> str:
        return f"<vmown.socket.SocketType {self._sock!r}>"


def _stdlib_strerror(code: int) -> str:
    import os

    return os.strerror(code)


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
