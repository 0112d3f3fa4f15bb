"""vmown.aio.EventLoop: asyncio on a loop whose thread owns a VM (issue 17, first stage)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
from pathlib import Path

import cffi
import pytest

import vmown
import vmown.aio

_ffi = cffi.FFI()
_ffi.cdef("int usleep(unsigned int usec); int getpid(void);")
_libc = _ffi.dlopen(None)
usleep = vmown.threaded(_libc.usleep)
getpid = vmown.threaded(_libc.getpid)

ROOT = Path(__file__).resolve().parent.parent


def test_tasks_timers_and_futures_run_on_the_loop() -> None:
    async def child(i: int) -> int:
        await asyncio.sleep(0.001 * (i % 3))
        return i * i

    async def main() -> tuple[list[int], str, bool]:
        loop = asyncio.get_running_loop()
        assert isinstance(loop, vmown.aio.EventLoop)
        fut = loop.create_future()
        loop.call_later(0.005, fut.set_result, "timer")
        results = await asyncio.gather(*(child(i) for i in range(20)))
        threading.Thread(target=loop.call_soon_threadsafe, args=(lambda: None,)).start()
        async with asyncio.timeout(1):
            async with asyncio.TaskGroup() as tg:
                t = tg.create_task(child(4))
        assert t.result() == 16
        return results, await fut, loop.ownership.owned()

    results, timer, owned = vmown.aio.run(main())
    assert results == [i * i for i in range(20)]
    assert timer == "timer"
    assert owned  # the loop's thread owns the VM while the loop runs


def test_runner_with_the_loop_factory_and_the_vm_given_back_between_runs() -> None:
    async def who() -> bool:
        return asyncio.get_running_loop().ownership.owned()

    with asyncio.Runner(loop_factory=vmown.aio.EventLoop) as runner:
        assert runner.run(who())
        loop = runner.get_loop()
        assert not loop.ownership.owned()  # disowned when run_forever returned
        assert runner.run(who())
    assert loop.is_closed()


@pytest.mark.skipif(sys.version_info < (3, 12), reason="asyncio.run(loop_factory=) is 3.12+")
def test_asyncio_run_with_the_loop_factory() -> None:
    async def main() -> str:
        return type(asyncio.get_running_loop()).__name__

    assert asyncio.run(main(), loop_factory=vmown.aio.EventLoop) == "EventLoop"  # type: ignore[call-arg]


def test_an_inline_threaded_call_disowns_and_owns_once_each() -> None:
    async def main() -> dict[str, int]:
        own = asyncio.get_running_loop().ownership
        before = own.stats()
        for _ in range(1000):
            getpid()
        after = own.stats()
        return {k: after[k] - before[k] for k in ("disowns", "fast_owns", "slow_owns", "waits")}

    assert vmown.aio.run(main()) == {"disowns": 1000, "fast_owns": 1000, "slow_owns": 0, "waits": 0}


def test_executor_threads_make_plain_calls() -> None:
    async def main() -> int:
        own = asyncio.get_running_loop().ownership
        before = own.stats()["disowns"]
        await asyncio.to_thread(getpid)  # an unbound thread: a plain call
        return own.stats()["disowns"] - before

    assert vmown.aio.run(main()) == 0


def test_the_loop_refuses_to_run_inside_vmown_run() -> None:
    async def proc() -> None:
        loop = vmown.aio.EventLoop()
        try:
            with pytest.raises(RuntimeError, match="inside vmown.run"):
                loop.run_forever()
        finally:
            loop.close()

    vmown.run(proc)


def _hundred_sleepers(call: str) -> tuple[float, float]:
    """100 tasks each calling usleep(20 ms), plus a 1 ms ticker: (total s, worst ticker gap s)."""

    async def sleeper() -> None:
        if call == "inline":
            usleep(20_000)
        else:
            await asyncio.to_thread(_libc.usleep, 20_000)

    async def main() -> tuple[float, float]:
        stop = False
        worst = 0.0

        async def ticker() -> None:
            nonlocal worst
            last = time.perf_counter()
            while not stop:
                await asyncio.sleep(0.001)
                now = time.perf_counter()
                worst = max(worst, now - last)
                last = now

        tick = asyncio.create_task(ticker())
        await asyncio.sleep(0.005)
        t0 = time.perf_counter()
        await asyncio.gather(*(sleeper() for _ in range(100)))
        total = time.perf_counter() - t0
        stop = True
        await tick
        return total, worst

    return vmown.aio.run(main())


def test_a_hundred_inline_blocking_calls_against_to_thread() -> None:
    """What this shows in the first stage: inline calls run one after another
    on the loop's thread (about 100 x 20 ms, the ticker stalled for each call),
    while to_thread overlaps them.  The hand-over (docs/design-log.md,
    "asyncio loop") is what would bring the inline figure under 100 ms; when
    it lands, this test's inline bounds become `total < 0.1` and a ticker gap
    of a few ms."""
    inline_total, inline_gap = _hundred_sleepers("inline")
    thread_total, thread_gap = _hundred_sleepers("to_thread")
    assert 1.9 <= inline_total < 6.0  # serial: no hand-over yet
    assert 0.018 <= inline_gap  # the ticker waits out at least one whole call
    assert thread_total < inline_total / 2
    print(f"inline {inline_total:.3f} s (ticker gap {inline_gap*1e3:.1f} ms); "
          f"to_thread {thread_total:.3f} s (ticker gap {thread_gap*1e3:.1f} ms)")


@pytest.mark.parametrize("module", ["test_locks", "test_queues"])
def test_cpython_asyncio_suite_fails_no_more_than_the_default_loop(module: str) -> None:
    """CPython's own test.test_asyncio, run against EventLoop and the default loop."""
    pytest.importorskip(f"test.test_asyncio.{module}")
    out = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "asyncio_conformance.py"), "--json", module],
        capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    import json

    (row,) = json.loads(out.stdout)
    assert row["vmown"]["ran"] == row["default"]["ran"] > 0
    assert row["vmown"]["vmown_loops_made"] > 0  # the tests did run on EventLoop
    assert row["new_failures"] == [], row
