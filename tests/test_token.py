"""vmown._token: current_token() and run / run_sync / run_sync_soon from other threads."""

from __future__ import annotations

import os
import signal
import threading
from typing import Any

import pytest

import vmown

pytestmark = pytest.mark.usefixtures("no_thread_left_behind")


def _in_thread(fn: Any) -> threading.Thread:
    thread = threading.Thread(target=fn)
    vmown.callout(thread.start)
    return thread


def test_run_sync_from_a_plain_thread_returns_and_raises() -> None:
    async def main() -> list[Any]:
        token = vmown.current_token()
        event = vmown.Event()
        out: list[Any] = []

        def other() -> None:
            out.append(token.run_sync(lambda a, b: a + b, 40, 2))
            try:
                token.run_sync(lambda: 1 / 0)
            except ZeroDivisionError as exc:
                out.append(type(exc))
            token.run_sync(event.set)

        thread = _in_thread(other)
        await event.wait()
        vmown.callout(thread.join)
        return out

    assert vmown.run(main) == [42, ZeroDivisionError]


def test_a_callout_is_refused_where_run_sync_from_the_same_place_works() -> None:
    async def main() -> bool:
        token, event = vmown.current_token(), vmown.Event()
        with pytest.raises(vmown.NotOwnerError):
            vmown.callout(lambda: event.set())
        assert not event.is_set()
        vmown.callout(lambda: token.run_sync(event.set))  # T3: the callout's own thread calls in
        await event.wait()
        return event.is_set()

    assert vmown.run(main)


def test_run_spawns_a_process_and_waits_for_its_outcome() -> None:
    async def double(x: int) -> int:
        await vmown.sleep(0.001)
        return 2 * x

    async def fail() -> None:
        await vmown.checkpoint()
        raise KeyError("k")

    async def main() -> list[Any]:
        token = vmown.current_token()
        out: list[Any] = []

        def other() -> None:
            out.append(token.run(double, 21))
            with pytest.raises(KeyError):
                token.run(fail)
            out.append("raised")

        vmown.callout(_in_thread(other).join)
        return out

    assert vmown.run(main) == [42, "raised"]


def test_run_sync_soon_keeps_fifo_order_and_works_from_a_signal_handler() -> None:
    async def main() -> list[int]:
        token, queue = vmown.current_token(), vmown.Queue[int]()
        for i in range(100):
            token.run_sync_soon(queue.put_nowait, i)
        got = [await queue.get() for _ in range(100)]
        assert got == list(range(100))
        handled = vmown.Event()
        old = signal.signal(signal.SIGUSR1, lambda signum, frame: token.run_sync_soon(handled.set))
        try:
            os.kill(os.getpid(), signal.SIGUSR1)  # the handler runs here, on the owning thread
            with vmown.fail_after(10):
                await handled.wait()
        finally:
            signal.signal(signal.SIGUSR1, old)
        return got[:3]

    # signal.signal works only on the main thread: main is bound to it
    assert vmown.run(main, bind_main=True) == [0, 1, 2]


def test_a_failing_run_sync_soon_call_ends_the_run_with_its_exception() -> None:
    async def main() -> None:
        vmown.current_token().run_sync_soon(lambda: 1 / 0)
        await vmown.sleep(10)

    with pytest.raises(ZeroDivisionError):
        vmown.run(main)


def test_the_thread_that_owns_the_vm_is_refused() -> None:
    async def main() -> str:
        token = vmown.current_token()
        with pytest.raises(RuntimeError, match="owns the VM"):
            token.run_sync(lambda: None)
        return "refused"

    assert vmown.run(main) == "refused"


def test_after_the_run_every_call_raises_run_finished_error() -> None:
    async def main() -> vmown.RunToken:
        return vmown.current_token()

    token = vmown.run(main)
    for call in (
        lambda: token.run_sync(lambda: None),
        lambda: token.run(vmown.checkpoint),
        lambda: token.run_sync_soon(lambda: None),
    ):
        with pytest.raises(vmown.RunFinishedError):
            call()


def test_calls_that_race_the_run_s_end_get_in_or_get_run_finished_error() -> None:
    """T1: threads call in again and again while main returns; the run waits
    for those in flight, and every call either ran or raised RunFinishedError."""
    outcomes: list[str] = []
    threads: list[threading.Thread] = []

    async def main() -> None:
        token = vmown.current_token()
        started = threading.Barrier(5)

        def hammer() -> None:
            started.wait()
            while True:
                try:
                    token.run_sync(lambda: None)
                except vmown.RunFinishedError:
                    outcomes.append("finished")
                    return

        for _ in range(4):
            threads.append(_in_thread(hammer))
        vmown.callout(started.wait)
        await vmown.sleep(0.02)

    vmown.run(main)
    for thread in threads:
        thread.join(timeout=30)
    assert outcomes == ["finished"] * 4


def test_a_token_turns_deadlock_detection_off() -> None:
    """A process waits on an event only another thread can set: no deadlock."""

    async def main() -> str:
        token, event = vmown.current_token(), vmown.Event()

        def later() -> None:
            threading.Event().wait(0.05)
            token.run_sync(event.set)

        thread = threading.Thread(target=later)
        vmown.callout(thread.start)
        await event.wait()
        vmown.callout(thread.join)
        return "woken"

    assert vmown.run(main) == "woken"
