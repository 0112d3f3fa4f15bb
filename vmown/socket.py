"""vmown.socket: sockets for the processes of :func:`vmown.run`, in the shape of ``trio.socket``.

``socket()`` and ``fromfd()`` make a :class:`SocketType`: a standard socket,
non-blocking, whose ``accept``, ``connect``, ``recv``, ``recv_into``,
``send`` and ``sendall`` are coroutines that wait for readiness and hold no
thread while they wait; ``getaddrinfo`` is a threaded callout.  Errors are
the standard :class:`OSError` subclasses.  The constants of :mod:`socket`
(``AF_INET``, ``SOCK_STREAM``...) are here too.
"""

from __future__ import annotations

from socket import *  # noqa: F403 - the constants, as trio.socket has them

from ._socket import SocketType, from_stdlib_socket, fromfd, getaddrinfo, socket

__all__ = ["SocketType", "from_stdlib_socket", "fromfd", "getaddrinfo", "socket"]
