"""Descriptor waits (vmown/_io.py): readiness without threads, cancellation, the idle owner in epoll."""

from __future__ import annotations

import errno
import os
import random
import threading
import time
from typing import Any

import cffi
import pytest

import vmown

_ffi = cffi.FFI()
_ffi.cdef("int usleep(unsigned int usec);")
usleep = vmown.threaded(_ffi.dlopen(None).usleep)

pytestmark = pytest.mark.usefixtures("no_thread_left_behind")


def os_threads() -> int:
    """Threads of this process, counted by the kernel."""
    return len(os.listdir("/proc/self/task"))


def nonblocking_pipe() -> tuple[int, int]:
    r, w = os.pipe()
    os.set_blocking(r, False)
    os.set_blocking(w, False)
    return r, w


def test_a_thousand_processes_wait_on_their_own_pipes_with_few_threads() -> None:
    count = 1000
    pipes = [nonblocking_pipe() for _ in range(count)]
    high = [os_threads()]

    async def reader(i: int) -> bytes:
        r = pipes[i][0]
        while True:
            try:
                return os.read(r, 64)
            except BlockingIOError:
                await vmown.wait_readable(r)

    async def main() -> tuple[list[bytes], dict[str, int]]:
        procs = []
        for i in range(count):
            procs.append(vmown.spawn(reader, i))
            if i % 50 == 0:
                # Short steps: a step that spawns a thousand processes looks
                # like a stalled run queue to the heartbeat, which queues
                # servers (CPU work, not waits).
                high.append(os_threads())
                await vmown.checkpoint()
        await vmown.sleep(0.01)  # every reader waits
        order = list(range(count))
        random.Random(16).shuffle(order)
        for n, i in enumerate(order):
            os.write(pipes[i][1], b"%d" % i)
            if n % 50 == 0:
                high.append(os_threads())
                await vmown.checkpoint()
        results = [await p for p in procs]
        high.append(os_threads())
        return results, vmown.stats()

    try:
        # hz=10: the heartbeat queues servers (threads for CPU work) when
        # fewer than 8 steps run in a tick (here 100 ms) with processes runnable, which a
        # loaded machine makes of any millisecond; this test counts the
        # threads that waits hold, and they hold none.
        results, stats = vmown.run(main, hz=10)
    finally:
        for r, w in pipes:
            os.close(r)
            os.close(w)
    assert results == [b"%d" % i for i in range(count)]
    assert max(high) < 10, (high, stats)
    assert stats["io_waits"] >= count, stats


def test_a_vm_busy_with_cpu_bound_processes_still_serves_a_readable_descriptor() -> None:
    hogs = 20
    r, w = nonblocking_pipe()

    async def hog(stop: list[bool]) -> None:
        while not stop[0]:
            sum(range(200))
            await vmown.checkpoint()

    async def main() -> list[int]:
        stop = [False]
        for _ in range(hogs):
            vmown.spawn(hog, stop)
        gaps = []
        for _ in range(20):
            async def reader() -> int:
                await vmown.wait_readable(r)
                return vmown.stats()["steps"]

            proc = vmown.spawn(reader)
            for _ in range(3 * hogs):
                await vmown.checkpoint()  # the reader waits, the hogs run
            written_at = vmown.stats()["steps"]
            os.write(w, b"x")
            gaps.append(await proc - written_at)
            os.read(r, 1)
        stop[0] = True
        return gaps

    try:
        gaps = vmown.run(main)
    finally:
        os.close(r)
        os.close(w)
    # Polled every 8 steps, then queued behind at most every other process once.
    assert max(gaps) <= 8 + 2 * (hogs + 2), gaps


def test_a_callout_that_returns_while_the_owner_waits_in_epoll_gets_the_vm_at_once() -> None:
    r, w = nonblocking_pipe()

    async def long_timer() -> None:
        await vmown.sleep(60)

    async def never_written() -> None:
        await vmown.wait_readable(r)

    async def blocked() -> float:
        start = time.monotonic()
        usleep(300_000)  # another thread serves main meanwhile, then idles in epoll
        return time.monotonic() - start  # includes owning the VM again (N2)

    async def main() -> tuple[float, int]:
        timer = vmown.spawn(long_timer)
        waiter = vmown.spawn(never_written)
        before = vmown.stats()["io_idle_waits"]
        proc = vmown.spawn(blocked)
        await vmown.sleep(0.05)  # runs on a worker: the run thread is in the callout
        call_s = await proc
        idle_waits = vmown.stats()["io_idle_waits"] - before
        timer.cancel()
        waiter.cancel()
        return call_s, idle_waits

    try:
        call_s, idle_waits = vmown.run(main)
    finally:
        os.close(r)
        os.close(w)
    assert idle_waits >= 1  # a thread did wait in epoll, with the 60 s timer as its timeout
    assert call_s < 10.0, call_s  # not the 60 s of the timer: generous for a loaded machine


def test_wait_writable_and_readable_on_a_socket_pair() -> None:
    import socket

    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)

    async def main() -> bytes:
        await vmown.wait_writable(a)
        a.send(b"ping")
        while True:
            try:
                return b.recv(10)
            except BlockingIOError:
                await vmown.wait_readable(b)

    try:
        assert vmown.run(main) == b"ping"
    finally:
        a.close()
        b.close()


def test_a_wait_is_cancellable_and_leaves_nothing_behind() -> None:
    r, w = nonblocking_pipe()

    async def main() -> tuple[bool, bytes]:
        with vmown.move_on_after(0.02) as scope:
            await vmown.wait_readable(r)
        os.write(w, b"y")
        await vmown.wait_readable(r)  # a second waiter is allowed: the first left
        return scope.cancelled_caught, os.read(r, 1)

    try:
        assert vmown.run(main) == (True, b"y")
    finally:
        os.close(r)
        os.close(w)


def test_a_wait_in_a_cancelled_scope_raises_at_once() -> None:
    r, w = nonblocking_pipe()
    os.write(w, b"z")

    async def main() -> bool:
        with vmown.CancelScope() as scope:
            scope.cancel()
            await vmown.wait_readable(r)
        return scope.cancelled_caught

    try:
        assert vmown.run(main)
    finally:
        os.close(r)
        os.close(w)


def test_notify_closing_wakes_the_waiters_with_ebadf() -> None:
    r, w = nonblocking_pipe()

    async def waiter() -> Any:
        try:
            await vmown.wait_readable(r)
        except OSError as exc:
            return exc.errno

    async def main() -> Any:
        proc = vmown.spawn(waiter)
        await vmown.sleep(0.01)
        vmown.notify_closing(r)
        os.close(r)
        return await proc

    try:
        assert vmown.run(main) == errno.EBADF
    finally:
        os.close(w)


def test_two_readers_of_one_descriptor_are_refused() -> None:
    r, w = nonblocking_pipe()

    async def main() -> str:
        first = vmown.spawn(vmown.wait_readable, r)
        await vmown.sleep(0.01)
        try:
            await vmown.wait_readable(r)
        except RuntimeError as exc:
            message = str(exc)
        os.write(w, b"1")
        await first
        return message

    try:
        assert "already waits" in vmown.run(main)
    finally:
        os.close(r)
        os.close(w)


def test_main_ends_on_a_worker_while_the_run_thread_waits_in_epoll() -> None:
    """N4: _halt writes the poller's eventfd; without it the run thread waits in epoll for ever."""
    r, w = nonblocking_pipe()
    threads: dict[str, int] = {}

    async def never_written() -> None:
        await vmown.wait_readable(r)

    async def blocker() -> None:
        threads["blocker"] = threading.get_ident()
        usleep(200_000)  # the run thread, until after main has gone out

    async def main() -> None:
        vmown.spawn(never_written)
        vmown.spawn(blocker)
        await vmown.sleep(0.02)  # main's next step runs on a worker
        threads["main"] = threading.get_ident()
        usleep(400_000)  # meanwhile the run thread, back, idles in epoll with no timeout

    try:
        vmown.run(main)
    finally:
        os.close(r)
        os.close(w)
    assert threads["main"] != threads["blocker"] == threading.get_ident()


def test_a_regular_file_is_refused_with_the_os_error(tmp_path: Any) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"")

    async def main() -> None:
        with open(path, "rb") as f:
            await vmown.wait_readable(f)

    with pytest.raises(PermissionError):
        vmown.run(main)


def test_ctrl_c_while_the_run_thread_waits_in_epoll() -> None:
    """N4: the SIGINT handler writes the poller's eventfd; epoll's retry after the handler returns at once."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        pytest.skip("needs the main thread")
    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        pytest.skip("needs Python's default SIGINT handling")
    r, w = nonblocking_pipe()
    waiting = threading.Event()

    async def main() -> None:
        waiting.set()
        await vmown.wait_readable(r)  # nothing runnable, no timer: the run thread waits in epoll

    main_ident = threading.main_thread().ident
    assert main_ident is not None

    def interrupt() -> None:
        if waiting.wait(30):
            time.sleep(0.1)
            signal.pthread_kill(main_ident, signal.SIGINT)

    helper = threading.Thread(target=interrupt)
    helper.start()
    start = time.monotonic()
    try:
        with pytest.raises(KeyboardInterrupt):
            vmown.run(main)
    finally:
        helper.join(30)
        os.close(r)
        os.close(w)
    assert time.monotonic() - start < 20  # not stuck in epoll_wait without a timeout
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_closed_socket_is_refused_with_ebadf() -> None:
    import socket

    sock = socket.socket()
    sock.close()

    async def main() -> None:
        await vmown.wait_readable(sock)

    with pytest.raises(OSError) as caught:
        vmown.run(main)
    assert caught.value.errno == errno.EBADF
