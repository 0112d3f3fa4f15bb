"""vmown._cancel: cancel scopes, deadlines, Process.cancel, and the races K1..K9 of its essay."""

from __future__ import annotations

import math
import time
from typing import Any, Callable

import cffi
import pytest

import vmown
from vmown import _scheduler

_ffi = cffi.FFI()
_ffi.cdef("int usleep(unsigned int usec);")
usleep = vmown.threaded(_ffi.dlopen(None).usleep)

pytestmark = pytest.mark.usefixtures("no_thread_left_behind")

# Generous: the machine is shared; a timeout that does not fire takes 10 s.
SLACK_S = 2.0


# ---- scopes and deadlines ----


def test_move_on_after_leaves_a_long_sleep_at_its_deadline() -> None:
    async def main() -> tuple[bool, float, bool]:
        start = vmown.current_time()
        with vmown.move_on_after(0.05) as scope:
            await vmown.sleep(10)
        return scope.cancelled_caught, vmown.current_time() - start, scope.cancel_called

    caught, elapsed_s, called = vmown.run(main)
    assert caught and called
    assert 0.05 <= elapsed_s < 0.05 + SLACK_S


def test_a_deadline_counts_from_entering_the_block() -> None:
    async def main() -> float:
        scope = vmown.move_on_after(0.05)
        await vmown.sleep(0.1)  # longer than the timeout, before entering
        start = vmown.current_time()
        with scope:
            assert scope.deadline >= start + 0.05 - 0.001
            await vmown.sleep(10)
        assert scope.cancelled_caught
        return vmown.current_time() - start

    assert 0.05 <= vmown.run(main) < 0.05 + SLACK_S


def test_fail_after_and_fail_at_raise_too_slow_error() -> None:
    async def main() -> list[str]:
        out = []
        try:
            with vmown.fail_after(0.01):
                await vmown.sleep(10)
        except vmown.TooSlowError:
            out.append("after")
        try:
            with vmown.fail_at(vmown.current_time() + 0.01):
                await vmown.sleep(10)
        except vmown.TooSlowError:
            out.append("at")
        with vmown.fail_after(5):  # does not fire: nothing raised
            await vmown.sleep(0.001)
        return out

    assert vmown.run(main) == ["after", "at"]


def test_nested_scopes_the_outer_deadline_fires_first_and_the_inner_does_not_catch() -> None:
    async def main() -> tuple[bool, bool, float]:
        start = vmown.current_time()
        with vmown.move_on_after(0.03) as outer:
            with vmown.move_on_after(5) as inner:
                await vmown.sleep(10)
            raise AssertionError("the inner scope caught the outer cancellation")
        return outer.cancelled_caught, inner.cancelled_caught, vmown.current_time() - start

    outer, inner, elapsed_s = vmown.run(main)
    assert outer and not inner
    assert elapsed_s < SLACK_S


def test_shield_holds_off_an_outer_cancel_until_the_shielded_block_ends() -> None:
    async def main() -> list[str]:
        out = []
        with vmown.move_on_after(0.01) as outer:
            with vmown.CancelScope(shield=True) as shielded:
                await vmown.sleep(0.05)  # past the outer deadline
                out.append("shielded sleep finished")
            assert not shielded.cancelled_caught
            out.append("left the shield")
            await vmown.checkpoint()
            out.append("not reached")
        assert outer.cancelled_caught
        return out

    assert vmown.run(main) == ["shielded sleep finished", "left the shield"]


def test_cancelled_again_at_every_checkpoint_until_the_scope_is_left_finally_included() -> None:
    async def main() -> list[str]:
        out = []
        with vmown.CancelScope() as scope:
            scope.cancel()
            for _ in range(3):
                try:
                    await vmown.checkpoint()
                except vmown.Cancelled:
                    out.append("cancelled")
            try:
                await vmown.sleep(1)
            finally:
                try:
                    await vmown.sleep(0)
                except vmown.Cancelled:
                    out.append("in finally")
                    raise
        assert scope.cancelled_caught
        return out

    assert vmown.run(main) == ["cancelled"] * 3 + ["in finally"]


def test_cancel_before_entering_and_deadline_changes() -> None:
    async def main() -> list[Any]:
        out: list[Any] = []
        scope = vmown.CancelScope()
        scope.cancel()
        with scope:
            await vmown.sleep(10)
        out.append(scope.cancelled_caught)
        with vmown.CancelScope() as scope:
            assert scope.deadline == math.inf
            scope.deadline = vmown.current_time() + 0.01  # set while active
            await vmown.sleep(10)
        out.append(scope.cancelled_caught)
        with vmown.move_on_after(0.01) as scope:
            scope.deadline = math.inf  # taken back
            await vmown.sleep(0.03)
        out.append(scope.cancelled_caught)
        with vmown.CancelScope() as scope:
            scope.deadline = vmown.current_time() - 1  # already passed
            await vmown.checkpoint()
        out.append(scope.cancelled_caught)
        return out

    assert vmown.run(main) == [True, True, False, True]


def test_scope_misuse_is_refused() -> None:
    with pytest.raises(RuntimeError, match="process started by vmown.run"):
        with vmown.CancelScope():
            pass

    async def main() -> None:
        scope = vmown.CancelScope()
        with scope:
            pass
        with pytest.raises(RuntimeError, match="entered only once"):
            with scope:
                pass
        outer = vmown.CancelScope()
        inner = vmown.CancelScope()
        outer.__enter__()
        inner.__enter__()
        with pytest.raises(RuntimeError, match="out of order"):
            outer.__exit__(None, None, None)
        inner.__exit__(None, None, None)
        outer.__exit__(None, None, None)
        with pytest.raises(ValueError):
            vmown.move_on_after(-1)

    vmown.run(main)


def test_timeouts_on_every_primitive() -> None:
    async def main() -> list[bool]:
        lock, semaphore, event = vmown.Lock(), vmown.Semaphore(0), vmown.Event()
        queue: vmown.Queue[int] = vmown.Queue(1)
        await queue.put(1)
        full: vmown.Queue[int] = queue
        empty: vmown.Queue[int] = vmown.Queue(1)
        await lock.acquire()

        async def other_holder() -> None:
            await lock.acquire()  # waits: main holds it

        waits = [
            lambda: vmown.spawn(other_holder),  # awaiting a process stuck on the lock
            semaphore.acquire,
            event.wait,
            lambda: full.put(2),
            empty.get,
        ]
        caught = []
        for make in waits:
            with vmown.move_on_after(0.01) as scope:
                awaitable = make()
                await awaitable
            caught.append(scope.cancelled_caught)
        return caught

    assert vmown.run(main) == [True] * 5


# ---- Process.cancel ----


def test_process_cancel_and_what_awaiting_it_raises() -> None:
    async def victim(log: list[str]) -> None:
        try:
            await vmown.sleep(10)
        finally:
            log.append("finally")

    async def main() -> list[Any]:
        log: list[str] = []
        proc = vmown.spawn(victim, log)
        await vmown.sleep(0.01)
        proc.cancel()
        proc.cancel()  # idempotent
        with pytest.raises(vmown.ProcessCancelled) as info:
            await proc
        assert isinstance(info.value.__cause__, vmown.Cancelled)
        assert proc.cancelled() and proc.done()
        assert isinstance(proc.exception(), vmown.ProcessCancelled)

        # an awaiter that is itself cancelled gets Cancelled, not ProcessCancelled
        sleeper = vmown.spawn(vmown.sleep, 10)
        with vmown.move_on_after(0.01) as scope:
            await sleeper
        sleeper.cancel()
        return [log, scope.cancelled_caught, vmown.current_process() is not proc]

    assert vmown.run(main) == [["finally"], True, True]


def test_result_exception_cancelled() -> None:
    async def fails() -> None:
        raise ValueError("boom")

    async def returns() -> int:
        return 7

    async def main() -> None:
        ok, bad = vmown.spawn(returns), vmown.spawn(fails)
        with pytest.raises(RuntimeError, match="has not finished"):
            ok.result()
        await vmown.sleep(0.001)
        assert ok.result() == 7 and ok.exception() is None and not ok.cancelled()
        assert isinstance(bad.exception(), ValueError)
        with pytest.raises(ValueError):
            bad.result()

    vmown.run(main)


# ---- the races of the essay ----


def test_k1_handed_over_then_cancelled_keeps_the_lock() -> None:
    async def waiter(lock: vmown.Lock, scope_box: list[vmown.CancelScope], log: list[str]) -> None:
        with vmown.CancelScope() as scope:
            scope_box.append(scope)
            async with lock:
                log.append("acquired")
                await vmown.checkpoint()  # K1: raises here, inside the block
                log.append("not reached")
        log.append(f"caught={scope.cancelled_caught} locked={lock.locked()}")

    async def main() -> list[str]:
        lock, box, log = vmown.Lock(), [], []
        await lock.acquire()
        proc = vmown.spawn(waiter, lock, box, log)
        await vmown.checkpoint()  # it waits for the lock
        lock.release()  # handed over: it is runnable, holding the lock
        box[0].cancel()  # same turn of the owner
        await proc
        return log

    assert vmown.run(main) == ["acquired", "caught=True locked=False"]


def _waiter_leaves_the_queue(blocking: Callable[[int], None]) -> None:
    """K2 for Lock, Semaphore, CapacityLimiter, Condition and both ends of a Queue: the cancelled waiter
    is skipped, the next waiter gets what is released, exactly once."""

    async def take(
        kind: str, prim: Any, i: int, log: list[tuple[str, int]], timeout: float, queued: list[int]
    ) -> None:
        blocking(i)
        with vmown.move_on_after(timeout):
            # `queued` is appended in the same step that starts the wait: once
            # another task sees it, this one is in the primitive's queue.
            if kind == "get":
                queued.append(i)
                log.append((kind, await prim.get()))
                return
            if kind == "put":
                queued.append(i)
                await prim.put(i)
            elif kind == "condition":
                async with prim:
                    queued.append(i)
                    await prim.wait()
            else:
                queued.append(i)
                await prim.acquire()
            log.append((kind, i))

    async def until_queued(queued: list[int], i: int) -> None:
        # The survivor's blocking call may keep it away for a while on a
        # loaded machine: a notify sent before it waits would reach nobody.
        for _ in range(10_000):
            if i in queued:
                return
            await vmown.sleep(0.001)
        raise AssertionError(f"waiter {i} never queued")

    async def main() -> list[Any]:
        results = []
        for kind in ("lock", "semaphore", "get", "put", "limiter", "condition"):
            if kind == "lock":
                prim: Any = vmown.Lock()
                await prim.acquire()
            elif kind == "limiter":
                prim = vmown.CapacityLimiter(1)
                await prim.acquire()
            elif kind == "condition":
                prim = vmown.Condition()
            elif kind == "semaphore":
                prim = vmown.Semaphore(0)
            elif kind == "get":
                prim = vmown.Queue(1)
            else:
                prim = vmown.Queue(1)
                await prim.put(-1)
            log: list[tuple[str, int]] = []
            queued: list[int] = []
            doomed = vmown.spawn(take, kind, prim, 0, log, 0.01, queued)
            await vmown.sleep(0.003)
            survivor = vmown.spawn(take, kind, prim, 1, log, 10, queued)
            await doomed  # timed out: it left the queue
            assert 0 in queued  # it timed out in the queue, not in its blocking call
            await until_queued(queued, 1)
            if kind in ("lock", "semaphore", "limiter"):
                prim.release()
            elif kind == "condition":
                async with prim:
                    prim.notify()  # one: it must reach the survivor
            elif kind == "get":
                await prim.put(42)
            else:
                assert await prim.get() == -1
            await survivor
            if kind == "put":
                log.append(("queued", await prim.get()))
            results.append((kind, log))
        return results

    assert vmown.run(main) == [
        ("lock", [("lock", 1)]),
        ("semaphore", [("semaphore", 1)]),
        ("get", [("get", 42)]),
        ("put", [("put", 1), ("queued", 1)]),
        ("limiter", [("limiter", 1)]),
        ("condition", [("condition", 1)]),
    ]


def test_k2_cancelled_waiter_leaves_the_queue() -> None:
    _waiter_leaves_the_queue(lambda i: None)


def test_k2_cancelled_waiter_leaves_the_queue_widened(widen: Callable[[int], None]) -> None:
    widen(20_000)
    _waiter_leaves_the_queue(lambda i: usleep(1500))  # migrate through blocked callouts


def test_k2_many_waiters_some_cancelled_none_lost_or_run_twice(widen: Callable[[int], None]) -> None:
    widen(10_000)

    async def worker(i: int, lock: vmown.Lock, held: list[int], timed_out: list[int]) -> None:
        usleep(200 if i % 4 else 1200)
        with vmown.move_on_after(0.002 if i % 3 == 0 else 30) as scope:
            async with lock:
                held.append(i)
                await vmown.sleep(0.0005)
        if scope.cancelled_caught:
            timed_out.append(i)

    async def main() -> tuple[list[int], list[int]]:
        lock, held, timed_out = vmown.Lock(), [], []
        procs = [vmown.spawn(worker, i, lock, held, timed_out) for i in range(60)]
        for proc in procs:
            await proc
        assert not lock.locked()
        return held, timed_out

    held, timed_out = vmown.run(main)
    assert len(held) == len(set(held))  # nobody got the lock twice
    assert sorted(held + [i for i in timed_out if i not in held]) == list(range(60))
    assert all(i % 3 == 0 for i in timed_out)


def test_k3_sleep_and_deadline_due_together() -> None:
    async def main() -> list[bool]:
        out = []
        for _ in range(20):
            deadline = vmown.current_time() + 0.002
            with vmown.move_on_at(deadline) as scope:
                await vmown.sleep(deadline - vmown.current_time())
                await vmown.checkpoint()  # if the sleep won: Cancelled here
            out.append(scope.cancelled_caught)
        return out

    assert vmown.run(main) == [True] * 20


def _callout_raises_on_return() -> tuple[bool, list[str], float, int]:
    async def ticker(ticks: list[int]) -> None:
        while True:
            await vmown.sleep(0.002)
            ticks.append(1)

    async def main() -> tuple[bool, list[str], float, int]:
        ticks: list[int] = []
        proc = vmown.spawn(ticker, ticks)
        after: list[str] = []
        start = time.monotonic()
        with vmown.move_on_after(0.05) as scope:
            usleep(300_000)
            after.append("the line after the callout ran")
        elapsed_s = time.monotonic() - start
        proc.cancel()
        return scope.cancelled_caught, after, elapsed_s, len(ticks)

    return vmown.run(main)


def test_k4_callout_raises_cancelled_on_return() -> None:
    caught, after, elapsed_s, ticks = _callout_raises_on_return()
    assert caught and after == []
    assert 0.3 <= elapsed_s < 0.3 + SLACK_S  # the call is not abandoned: it returns
    assert ticks > 5  # the others ran meanwhile (the deadline fired on another thread)


def test_k4_callout_raises_cancelled_on_return_widened(widen: Callable[[int], None]) -> None:
    widen(20_000)
    caught, after, _, _ = _callout_raises_on_return()
    assert caught and after == []


def test_k5_cancel_own_scope_raises_at_next_checkpoint() -> None:
    async def main() -> list[str]:
        out = []
        with vmown.CancelScope() as scope:
            scope.cancel()
            out.append("still running")
            usleep(100)  # a callout is not a checkpoint: nothing raised
            out.append("after the callout")
            await vmown.checkpoint()
            out.append("not reached")
        return out

    assert vmown.run(main) == ["still running", "after the callout"]


def test_k7_heap_stays_small() -> None:
    async def main() -> int:
        for _ in range(5000):
            with vmown.move_on_after(10):
                pass
        return len(_scheduler._current("test")._rt.timers)

    assert vmown.run(main) <= 2


def test_k9_a_callee_that_raises_while_cancelled() -> None:
    """The asynchronous Cancelled lands after the callee's exception, at the
    next eval-breaker check (a handler, or a scope's __exit__ it pre-empts):
    the scopes are left in order, and the run goes on."""
    import socket

    async def blocked_recv(sock: socket.socket) -> list[Any]:
        out: list[Any] = []
        with vmown.move_on_after(10) as outer:
            with vmown.move_on_after(0.02) as inner:
                vmown.callout(sock.recv, 1)  # a timeout after 0.2 s, raised from C
        out.append(inner.cancelled_caught or outer.cancelled_caught)
        out.append(_scheduler._current("test")._scope is _scheduler._current("test"))
        return out

    async def bare(sock: socket.socket) -> None:
        with vmown.move_on_after(0.02):
            vmown.callout(sock.recv, 1)

    async def main() -> list[Any]:
        a, b = socket.socketpair()
        a.settimeout(0.2)
        try:
            out = await vmown.spawn(blocked_recv, a)
            proc = vmown.spawn(bare, a)
            try:
                await proc
                out.append("returned")
            except vmown.ProcessCancelled:
                out.append("cancelled")
            except TimeoutError:
                out.append("timeout")
            return out
        finally:
            a.close()
            b.close()

    out = vmown.run(main)
    assert out[:2] == [True, True]
    assert out[2] in ("returned", "cancelled")  # not the callee's TimeoutError, not a halted run


def test_a_channel_wait_made_in_a_run_is_cancelled_within_its_wait_slice() -> None:
    """Channel.recv waits in C slices of at most 50 ms, with Python between
    them: made as a callout, the cancel lands at the end of the slice."""
    from vmown._arena import Arena
    from vmown._channel import Channel

    async def main() -> tuple[bool, float]:
        with Arena.anonymous(1 << 20) as arena:
            channel = Channel.create(arena, 4096)
            start = time.monotonic()
            with vmown.move_on_after(0.02) as scope:
                vmown.callout(channel.recv)  # nothing is ever sent
            return scope.cancelled_caught, time.monotonic() - start

    caught, elapsed_s = vmown.run(main)
    assert caught
    assert elapsed_s < SLACK_S
