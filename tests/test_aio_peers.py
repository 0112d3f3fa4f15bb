"""vmown.aio.EventLoop under the libraries people run on asyncio: anyio and aiohttp (issue 17)."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
from typing import Any

import cffi
import pytest

import vmown
import vmown.aio

_ffi = cffi.FFI()
_ffi.cdef("int usleep(unsigned int usec); int getpid(void);")
_libc = _ffi.dlopen(None)
usleep = vmown.threaded(_libc.usleep)
getpid = vmown.threaded(_libc.getpid)


# ---- anyio ----


def test_anyio_runs_its_own_api_on_the_loop() -> None:
    """anyio.run with EventLoop as the asyncio backend's loop factory: a task
    group, anyio.sleep, a cancel scope, anyio.to_thread.run_sync (and
    anyio.from_thread back onto the loop), and a vmown.threaded call in a
    task, made as a callout from the loop's thread."""
    anyio = pytest.importorskip("anyio")  # in the test extra: skipped only outside it

    async def main() -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        assert isinstance(loop, vmown.aio.EventLoop)
        own = loop.ownership
        loop_thread = threading.get_ident()
        out: dict[str, Any] = {"loop": loop}

        async def sleeper(i: int) -> None:
            await anyio.sleep(0.001 * i)
            out[f"slept{i}"] = True

        async def on_the_loop() -> int:
            return threading.get_ident()

        def in_a_thread() -> tuple[int, int, int]:
            # the worker is not bound to the VM: its threaded call is a plain call
            return threading.get_ident(), getpid(), anyio.from_thread.run(on_the_loop)

        async def offloaded() -> None:
            out["thread"] = await anyio.to_thread.run_sync(in_a_thread)

        async def c_call() -> None:
            before = own.stats()["disowns"]
            out["pid"] = getpid()
            out["callouts"] = own.stats()["disowns"] - before
            out["owned_after_call"] = own.owned()

        async with anyio.create_task_group() as tg:
            for i in range(5):
                tg.start_soon(sleeper, i)
            tg.start_soon(offloaded)
            tg.start_soon(c_call)
        with anyio.move_on_after(0.01) as scope:
            await anyio.sleep(10)
        out["cancelled"] = scope.cancelled_caught
        out["loop_thread"] = loop_thread
        return out

    out = anyio.run(main, backend="asyncio", backend_options={"loop_factory": vmown.aio.EventLoop})
    assert isinstance(out["loop"], vmown.aio.EventLoop)
    assert all(out[f"slept{i}"] for i in range(5))
    worker, worker_pid, back_on_the_loop = out["thread"]
    assert worker != out["loop_thread"]
    assert worker_pid == os.getpid()
    assert back_on_the_loop == out["loop_thread"]
    assert out["pid"] == os.getpid()
    assert out["callouts"] == 1  # the call in the task disowned (and owned again) once
    assert out["owned_after_call"]
    assert out["cancelled"]
    assert out["loop"].is_closed()


# ---- aiohttp ----

SLOW_US = 300_000  # the slow handler's blocking C call
QUICK_REQUESTS = 20
CLIENT_TIMEOUT_S = 60.0  # per request and for the whole client: generous, a loaded machine is slow


async def _slow_handler_body() -> None:
    """What the slow handler does between starting and answering: a blocking C call, inline."""
    usleep(SLOW_US)


def _client(port: int, slow_started: threading.Event) -> list[str]:
    """On a default asyncio loop of its own: the slow request, then (once the
    server is inside the slow handler) QUICK_REQUESTS quick ones, all at once;
    returns the names of the requests in the order their responses completed."""
    import aiohttp

    async def main() -> list[str]:
        order: list[str] = []
        timeout = aiohttp.ClientTimeout(total=CLIENT_TIMEOUT_S)
        base = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession(timeout=timeout) as session:

            async def get(path: str, name: str) -> None:
                async with session.get(base + path) as response:
                    assert response.status == 200, (name, response.status)
                    assert await response.text() == path.strip("/").split("/")[0]
                order.append(name)

            slow = asyncio.create_task(get("/slow", "slow"))
            started = await asyncio.to_thread(slow_started.wait, CLIENT_TIMEOUT_S)
            assert started, "the server never entered the slow handler"
            await asyncio.gather(*(get(f"/quick/{i}", f"quick{i}") for i in range(QUICK_REQUESTS)))
            await slow
        return order

    return asyncio.run(main())


def test_aiohttp_server_keeps_serving_while_a_handler_is_in_a_blocking_c_call() -> None:
    """An aiohttp server on EventLoop: one handler makes a blocking C call
    (usleep, 300 ms) through vmown.threaded; while it is out, 20 quick
    requests from a client on another thread must all be answered -- the
    loop is handed to another thread for the call's duration, not stalled.
    Only ordering is asserted, never wall-clock times.

    This needs the hand-over of a blocking callout's loop (docs/design-log.md,
    "asyncio loop"); without it the loop's thread sleeps in usleep and every
    quick request waits behind the slow one."""
    web = pytest.importorskip("aiohttp.web")  # in the test extra: skipped only outside it
    slow_started = threading.Event()
    loops: list[asyncio.AbstractEventLoop] = []

    async def slow(request: Any) -> Any:
        loops.append(asyncio.get_running_loop())
        slow_started.set()
        await _slow_handler_body()
        return web.Response(text="slow")

    async def quick(request: Any) -> Any:
        return web.Response(text="quick")

    async def main() -> list[str]:
        app = web.Application()
        app.router.add_get("/slow", slow)
        app.router.add_get("/quick/{i}", quick)
        runner = web.AppRunner(app)
        await runner.setup()
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            site = web.SockSite(runner, sock)
            await site.start()
            try:
                port = sock.getsockname()[1]
                return await asyncio.wait_for(
                    asyncio.to_thread(_client, port, slow_started), CLIENT_TIMEOUT_S + 30
                )
            finally:
                await runner.cleanup()

    order = vmown.aio.run(main())
    assert len(loops) == 1 and isinstance(loops[0], vmown.aio.EventLoop)
    assert sorted(order) == sorted(["slow", *(f"quick{i}" for i in range(QUICK_REQUESTS))])
    assert order[-1] == "slow", f"quick requests waited for the blocking call: {order}"
