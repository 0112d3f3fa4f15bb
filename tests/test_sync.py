"""vmown._sync: Event, Lock, Semaphore, Queue between processes that migrate."""

from __future__ import annotations

import threading
import warnings
from collections.abc import Iterator
from typing import Any

import cffi
import pytest

import vmown

_ffi = cffi.FFI()
_ffi.cdef("int usleep(unsigned int usec);")
usleep = vmown.threaded(_ffi.dlopen(None).usleep)


pytestmark = pytest.mark.usefixtures("no_thread_left_behind")


def blocking_callout(i: int) -> None:
    """Blocks past a heartbeat tick (every third call): the process's next
    step may run on another thread."""
    usleep(1500 if i % 3 == 0 else 50)


# ---- Event ----


def test_event_wakes_every_waiter_in_arrival_order() -> None:
    woke: list[int] = []

    async def waiter(i: int, event: vmown.Event) -> None:
        blocking_callout(i)
        await event.wait()
        woke.append(i)

    async def main() -> tuple[bool, bool, str]:
        event = vmown.Event()
        procs = []
        for i in range(6):
            procs.append(vmown.spawn(waiter, i, event))
            await vmown.sleep(0.003)  # each one waits before the next starts
        before = event.is_set()
        event.set()
        event.set()  # setting again changes nothing
        for proc in procs:
            await proc
        await event.wait()  # set: returns at once
        return before, event.is_set(), repr(event)

    assert vmown.run(main) == (False, True, "<vmown.Event set waiters=0>")
    assert woke == list(range(6))


def test_primitives_refuse_threads_outside_the_vm() -> None:
    with pytest.raises(RuntimeError, match="from a process"):
        vmown.Event().set()
    with pytest.raises(RuntimeError, match="from a process"):
        vmown.Semaphore().release()


# ---- Lock ----


def test_lock_excludes_and_serves_in_arrival_order() -> None:
    lock = vmown.Lock()
    holders: list[int] = []
    inside = [0]

    async def contender(i: int) -> None:
        blocking_callout(i)
        async with lock:
            inside[0] += 1
            assert inside[0] == 1, "two processes hold the lock"
            holders.append(i)
            blocking_callout(i)  # holds it across a callout, maybe a migration
            await vmown.sleep(0.001)
            inside[0] -= 1

    async def main() -> list[int]:
        await lock.acquire()
        procs = []
        for i in range(8):
            procs.append(vmown.spawn(contender, i))
            await vmown.sleep(0.005)  # each queues for the lock before the next
        arrival = list(range(8))
        lock.release()
        for proc in procs:
            await proc
        assert not lock.locked()
        return arrival

    arrival = vmown.run(main)
    assert holders == arrival


def test_a_releasing_process_queues_behind_the_waiters() -> None:
    lock = vmown.Lock()
    order: list[str] = []

    async def greedy() -> None:
        for _ in range(3):
            async with lock:
                order.append("greedy")
                await vmown.sleep(0.005)  # polite queues meanwhile (the first time)

    async def polite() -> None:
        async with lock:
            order.append("polite")

    async def main() -> None:
        g = vmown.spawn(greedy)
        await vmown.checkpoint()  # greedy holds the lock
        p = vmown.spawn(polite)
        await g
        await p

    vmown.run(main)
    assert order == ["greedy", "polite", "greedy", "greedy"]


def test_lock_misuse_is_refused() -> None:
    async def main() -> list[str]:
        lock = vmown.Lock()
        messages = []
        with pytest.raises(RuntimeError, match="not held") as info:
            lock.release()
        messages.append(str(info.value))
        await lock.acquire()
        with pytest.raises(RuntimeError, match="does not nest"):
            await lock.acquire()

        async def stranger() -> None:
            lock.release()

        with pytest.raises(RuntimeError, match="does not hold") as info:
            await vmown.spawn(stranger)
        messages.append(str(info.value))
        assert lock.locked()  # still ours
        lock.release()
        return messages

    messages = vmown.run(main)
    assert "stranger" in messages[1] and "held by" in messages[1]


# ---- Semaphore ----


def test_semaphore_bounds_the_processes_inside() -> None:
    semaphore = vmown.Semaphore(3)
    inside, most = [0], [0]

    async def user(i: int) -> None:
        async with semaphore:
            inside[0] += 1
            most[0] = max(most[0], inside[0])
            blocking_callout(i)
            await vmown.sleep(0.001)
            inside[0] -= 1

    async def main() -> int:
        procs = [vmown.spawn(user, i) for i in range(20)]
        for proc in procs:
            await proc
        return semaphore.value

    assert vmown.run(main) == 3
    assert most[0] == 3


def test_semaphore_hands_units_over_in_arrival_order() -> None:
    got: list[int] = []

    async def taker(i: int, semaphore: vmown.Semaphore) -> None:
        await semaphore.acquire()
        got.append(i)

    async def main() -> int:
        semaphore = vmown.Semaphore(0)
        procs = []
        for i in range(5):
            procs.append(vmown.spawn(taker, i, semaphore))
            await vmown.checkpoint()
        for _ in range(5):
            semaphore.release()
        for proc in procs:
            await proc
        semaphore.release()
        return semaphore.value

    assert vmown.run(main) == 1
    assert got == list(range(5))
    with pytest.raises(ValueError, match="non-negative"):
        vmown.Semaphore(-1)


# ---- Queue ----


def test_queue_carries_items_in_order_and_never_exceeds_its_capacity() -> None:
    queue: vmown.Queue[Any] = vmown.Queue(4)
    most = [0]

    async def producer(base: int) -> None:
        for i in range(50):
            await queue.put((base, i))
            most[0] = max(most[0], queue.qsize())
            blocking_callout(i)

    async def consumer(count: int) -> list[Any]:
        items = []
        for i in range(count):
            items.append(await queue.get())
            blocking_callout(i + 1)
        return items

    async def main() -> list[Any]:
        producers = [vmown.spawn(producer, base) for base in (100, 200, 300)]
        consumers = [vmown.spawn(consumer, 75) for _ in range(2)]
        for proc in producers:
            await proc
        return [await proc for proc in consumers]

    received = vmown.run(main)
    assert most[0] <= 4
    everything = received[0] + received[1]
    assert sorted(everything) == sorted((base, i) for base in (100, 200, 300) for i in range(50))
    for items in received:  # each producer's items arrive in the order it put them
        for base in (100, 200, 300):
            mine = [i for b, i in items if b == base]
            assert mine == sorted(mine)


def test_queue_put_waits_while_full_and_get_while_empty() -> None:
    async def main() -> list[Any]:
        queue: vmown.Queue[str] = vmown.Queue(1)
        log: list[Any] = []

        async def putter() -> None:
            await queue.put("a")
            log.append("put a")
            await queue.put("b")  # waits: full
            log.append("put b")

        proc = vmown.spawn(putter)
        await vmown.sleep(0.005)
        log.append(("full", queue.full(), queue.qsize()))
        log.append(await queue.get())
        await proc
        log.append(await queue.get())
        log.append(("empty", queue.empty()))

        async def getter() -> str:
            return await queue.get()  # waits: empty

        waiting = vmown.spawn(getter)
        await vmown.sleep(0.005)
        log.append(repr(queue))
        await queue.put("c")  # handed straight to the getter
        log.append(await waiting)
        return log

    assert vmown.run(main) == [
        "put a",
        ("full", True, 1),
        "a",
        "put b",
        "b",
        ("empty", True),
        "<vmown.Queue 0/1 getters=1 putters=0>",
        "c",
    ]
    with pytest.raises(ValueError, match="maxsize"):
        vmown.Queue(-1)
    assert vmown.Queue(3).maxsize == 3


def test_processes_waiting_on_primitives_are_closed_cleanly_at_the_end() -> None:
    """The run closes its processes in spawn order; a waiter closed first must
    not be woken by the finally block of one closed after it."""
    closed: list[str] = []

    async def waiter(name: str, wait: Any) -> None:
        try:
            await vmown.sleep(0.002)  # let the holder take the lock first
            await wait()
        finally:
            closed.append(name)

    async def holder(lock: vmown.Lock, semaphore: vmown.Semaphore, event: vmown.Event) -> None:
        async with lock:
            try:
                await vmown.sleep(3600)
            finally:
                semaphore.release()  # would wake the closed "semaphore" waiter
                event.set()  # would wake the closed "event" waiter
                closed.append("holder")
        # leaving `async with` released the lock: it would wake the "lock" waiter

    async def main() -> None:
        lock, semaphore, event, queue = vmown.Lock(), vmown.Semaphore(0), vmown.Event(), vmown.Queue[int](1)
        await queue.put(0)
        vmown.spawn(waiter, "lock", lock.acquire)
        vmown.spawn(waiter, "semaphore", semaphore.acquire)
        vmown.spawn(waiter, "event", event.wait)
        vmown.spawn(waiter, "putter", lambda: queue.put(1))
        vmown.spawn(holder, lock, semaphore, event)
        await vmown.sleep(0.02)

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a failure while closing would warn
        vmown.run(main)
    assert closed == ["lock", "semaphore", "event", "putter", "holder"]


@pytest.mark.slow
def test_queue_and_lock_under_load() -> None:
    queue: vmown.Queue[int] = vmown.Queue(8)
    lock = vmown.Lock()
    total = [0]

    async def producer(base: int) -> None:
        for i in range(500):
            await queue.put(base + i)
            blocking_callout(i)

    async def consumer() -> int:
        count = 0
        while True:
            item = await queue.get()
            if item < 0:
                return count
            async with lock:
                before = total[0]
                blocking_callout(item)
                total[0] = before + item  # a lost update would show in the sum
            count += 1

    async def main() -> int:
        producers = [vmown.spawn(producer, base) for base in range(0, 20_000, 1000)]
        consumers = [vmown.spawn(consumer) for _ in range(10)]
        for proc in producers:
            await proc
        for _ in consumers:
            await queue.put(-1)
        return sum([await proc for proc in consumers])

    assert vmown.run(main) == 20 * 500
    assert total[0] == sum(base + i for base in range(0, 20_000, 1000) for i in range(500))


# ---- unbounded Queue, put_nowait/get_nowait, Condition, CapacityLimiter ----


def test_unbounded_queue_and_the_nowait_calls() -> None:
    async def getter(queue: vmown.Queue[int]) -> int:
        return await queue.get()

    async def main() -> list[Any]:
        out: list[Any] = []
        queue: vmown.Queue[int] = vmown.Queue()
        for i in range(1000):
            queue.put_nowait(i)
        out.append((queue.maxsize, queue.qsize(), queue.full()))
        out.append([queue.get_nowait() for _ in range(1000)] == list(range(1000)))
        with pytest.raises(vmown.WouldBlock):
            queue.get_nowait()
        proc = vmown.spawn(getter, queue)
        await vmown.checkpoint()  # it waits in get()
        queue.put_nowait(7)  # handed straight to it
        out.append(await proc)
        small: vmown.Queue[int] = vmown.Queue(1)
        small.put_nowait(1)
        with pytest.raises(vmown.WouldBlock):
            small.put_nowait(2)
        out.append(repr(queue))
        return out

    assert vmown.run(main) == [(0, 1000, False), True, 7, "<vmown.Queue 0/inf getters=0 putters=0>"]


def test_condition_wait_notify_and_cancelled_wait_takes_the_lock_back() -> None:
    async def consumer(cond: vmown.Condition, items: list[int], got: list[int]) -> None:
        async with cond:
            while not items:
                await cond.wait()
            got.append(items.pop(0))

    async def main() -> list[Any]:
        cond = vmown.Condition()
        items: list[int] = []
        got: list[int] = []
        procs = [vmown.spawn(consumer, cond, items, got) for _ in range(3)]
        await vmown.sleep(0.001)
        async with cond:
            items.extend([1, 2])
            cond.notify(2)
        await vmown.sleep(0.001)
        async with cond:
            items.append(3)
            cond.notify_all()
        for proc in procs:
            await proc
        with pytest.raises(RuntimeError, match="needs the condition's lock"):
            cond.notify()
        async with cond:
            with vmown.move_on_after(0.01) as scope:
                await cond.wait()
            held_after_cancel = cond.locked() and cond.lock._holder is vmown.current_process()
        return [sorted(got), scope.cancelled_caught, held_after_cancel, cond.locked()]

    assert vmown.run(main) == [[1, 2, 3], True, True, False]


def test_capacity_limiter_bounds_the_holders_and_serves_in_order() -> None:
    async def user(i: int, limiter: vmown.CapacityLimiter, inside: list[int], peak: list[int], order: list[int]) -> None:
        async with limiter:
            order.append(i)
            inside.append(i)
            peak[0] = max(peak[0], len(inside))
            blocking_callout(i)
            await vmown.sleep(0.001)
            inside.remove(i)

    async def main() -> list[Any]:
        limiter = vmown.CapacityLimiter(2)
        inside: list[int] = []
        peak, order = [0], []
        procs = [vmown.spawn(user, i, limiter, inside, peak, order) for i in range(10)]
        for proc in procs:
            await proc
        out: list[Any] = [peak[0], order == list(range(10)), limiter.borrowed_tokens, limiter.available_tokens]
        async with limiter:
            with pytest.raises(RuntimeError, match="already holds"):
                await limiter.acquire()
        with pytest.raises(RuntimeError, match="does not hold"):
            limiter.release()
        limiter.total_tokens = 3
        out.append(repr(limiter))
        return out

    assert vmown.run(main) == [2, True, 0, 2, "<vmown.CapacityLimiter 0/3 borrowed waiters=0>"]
    with pytest.raises(ValueError):
        vmown.CapacityLimiter(0)
