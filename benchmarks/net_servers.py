#!/usr/bin/env python3
# The echo servers of suite `net`, one per contender, each as its users would
# write it:  python net_servers.py {vmown,trio,asyncio,uvloop,aio} [BACKLOG [IDLE_TIMEOUT_S]]
# (IDLE_TIMEOUT_S: vmown.run's idle_timeout, for the idle-connections count).
#
# Each listens on 127.0.0.1, an ephemeral port, prints the port on a line of
# its own, then echoes every connection (read up to 64 KiB, write it all
# back) until killed.
#   vmown    vmown.open_tcp_listener, a process per connection, recv / sendall
#   trio     trio.serve_tcp, SocketStream.receive_some / send_all
#   asyncio  asyncio.start_server (streams), reader.read / writer.write +
#            drain, the default event loop
#   uvloop   the same asyncio code on uvloop's loop
#   aio      the same asyncio code on vmown.aio.EventLoop (suite aio)

from __future__ import annotations

import sys

CHUNK = 65536


def serve_vmown(backlog: int, idle_timeout_s: float = 10.0) -> None:
    import vmown

    async def handler(conn: vmown.socket.SocketType) -> None:
        with conn:
            while True:
                data = await conn.recv(CHUNK)
                if not data:
                    return
                await conn.sendall(data)

    async def main() -> None:
        listener = await vmown.open_tcp_listener(0, host="127.0.0.1", backlog=backlog)
        print(listener.getsockname()[1], flush=True)
        while True:
            conn, _ = await listener.accept()
            conn.setsockopt(vmown.socket.IPPROTO_TCP, vmown.socket.TCP_NODELAY, 1)
            vmown.spawn(handler, conn)

    vmown.run(main, idle_timeout=idle_timeout_s)


def serve_trio(backlog: int) -> None:
    import trio

    async def handler(stream: trio.SocketStream) -> None:
        async with stream:
            while True:
                data = await stream.receive_some(CHUNK)
                if not data:
                    return
                await stream.send_all(data)

    async def main() -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1", backlog=backlog)
        print(listeners[0].socket.getsockname()[1], flush=True)
        await trio.serve_listeners(handler, listeners)

    trio.run(main)


async def _asyncio_main(backlog: int) -> None:
    import asyncio

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                data = await reader.read(CHUNK)
                if not data:
                    return
                writer.write(data)
                await writer.drain()
        finally:
            writer.close()

    server = await asyncio.start_server(handler, "127.0.0.1", 0, backlog=backlog)
    print(server.sockets[0].getsockname()[1], flush=True)
    async with server:
        await server.serve_forever()


def serve_asyncio(backlog: int) -> None:
    import asyncio

    asyncio.run(_asyncio_main(backlog))


def serve_uvloop(backlog: int) -> None:
    import uvloop

    uvloop.run(_asyncio_main(backlog))


def serve_aio(backlog: int) -> None:
    import vmown.aio

    vmown.aio.run(_asyncio_main(backlog))


if __name__ == "__main__":
    contender = sys.argv[1]
    backlog = int(sys.argv[2]) if len(sys.argv) > 2 else 1024
    if len(sys.argv) > 3:
        serve_vmown(backlog, float(sys.argv[3]))
    else:
        servers = {
            "vmown": serve_vmown,
            "trio": serve_trio,
            "asyncio": serve_asyncio,
            "uvloop": serve_uvloop,
            "aio": serve_aio,
        }
        servers[contender](backlog)
