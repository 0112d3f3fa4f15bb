"""vmown.socket (vmown/_socket.py): non-blocking sockets with async methods, no thread per connection."""

from __future__ import annotations

import errno
import os
import socket as stdlib_socket

import pytest

import vmown
from vmown import socket as vsocket

pytestmark = pytest.mark.usefixtures("no_thread_left_behind")


def os_threads() -> int:
    return len(os.listdir("/proc/self/task"))


def test_an_echo_server_and_fifty_clients_in_one_run_byte_exact_without_a_thread_per_connection() -> None:
    clients, messages = 50, 1000
    high = [os_threads()]
    stats: dict[str, int] = {}

    async def handler(conn: vsocket.SocketType) -> None:
        with conn:
            while True:
                data = await conn.recv(65536)
                if not data:
                    return
                await conn.sendall(data)

    async def server(listener: vsocket.SocketType) -> None:
        while True:
            conn, _ = await listener.accept()
            vmown.spawn(handler, conn)

    async def client(i: int, port: int) -> int:
        sock = await vmown.open_tcp_stream("127.0.0.1", port)
        buffer = bytearray(4096)
        echoed = 0
        with sock:
            for k in range(messages):
                message = b"%d:%d:" % (i, k) + bytes([k % 256]) * (k % 300)
                await sock.sendall(message)
                got = b""
                while len(got) < len(message):
                    n = await sock.recv_into(buffer)
                    assert n, "the server closed the connection"
                    got += buffer[:n]
                assert got == message, (i, k)
                echoed += 1
                if k % 250 == 0:
                    high.append(os_threads())
        return echoed

    async def main() -> list[int]:
        listener = await vmown.open_tcp_listener(0, host="127.0.0.1")
        port = listener.getsockname()[1]
        serving = vmown.spawn(server, listener)
        procs = [vmown.spawn(client, i, port) for i in range(clients)]
        counts = [await p for p in procs]
        serving.cancel()
        listener.close()
        stats.update(vmown.stats())
        return counts

    # hz=10: see tests/test_io.py (the heartbeat's servers are threads for
    # CPU work; this test counts the threads that connections hold).  The 50
    # getaddrinfo callouts of open_tcp_stream may each be activated past on
    # a loaded machine, and each activation asks for spares: a thread per
    # connection would be 50 or more, the bound is half that.
    assert vmown.run(main, hz=10) == [messages] * clients
    assert max(high) < clients // 2, (high, stats)


def test_connect_to_a_closed_port_raises_connection_refused() -> None:
    probe = stdlib_socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()  # nobody listens there now

    async def main() -> None:
        await vmown.open_tcp_stream("127.0.0.1", port)

    with pytest.raises(ConnectionRefusedError):
        vmown.run(main)


def test_recv_is_cancellable_and_close_wakes_a_waiter_with_ebadf() -> None:
    a, b = stdlib_socket.socketpair()

    async def main() -> tuple[bool, int | None]:
        sa, sb = vsocket.from_stdlib_socket(a), vsocket.from_stdlib_socket(b)
        with vmown.move_on_after(0.02) as scope:
            await sa.recv(10)

        async def reader() -> int | None:
            try:
                await sa.recv(10)
            except OSError as exc:
                return exc.errno
            return None

        proc = vmown.spawn(reader)
        await vmown.sleep(0.01)
        sa.close()
        sb.close()
        return scope.cancelled_caught, await proc

    assert vmown.run(main) == (True, errno.EBADF)


def test_socket_and_fromfd_make_async_sockets_and_getaddrinfo_is_a_callout() -> None:
    async def main() -> tuple[bytes, int, bool]:
        listener = vsocket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        infos = await vsocket.getaddrinfo("127.0.0.1", listener.getsockname()[1], type=vsocket.SOCK_STREAM)
        before = vmown.stats()["callouts"]
        infos = await vsocket.getaddrinfo("localhost", 80)
        callouts = vmown.stats()["callouts"] - before
        out = vsocket.socket()
        connecting = vmown.spawn(out.connect, listener.getsockname())
        conn, _ = await listener.accept()
        await connecting
        dup = vsocket.fromfd(conn.fileno(), vsocket.AF_INET, vsocket.SOCK_STREAM)
        conn.close()
        await out.send(b"abc")
        data = await dup.recv(3)
        for s in (dup, out, listener):
            s.close()
        return data, callouts, bool(infos)

    assert vmown.run(main) == (b"abc", 1, True)
