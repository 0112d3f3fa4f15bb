"""A program that uses the whole public API of vmown, checked with mypy --strict (tests/test_typing.py).

It is also a runnable tour: python tests/typing/api_tour.py.  The
assert_type lines fail the check if a type is lost on the way (Process[T],
spawn and TaskGroup.spawn following fn, threaded keeping fn's signature).
"""

from __future__ import annotations

import math
import sqlite3
import zlib
from typing import Any, assert_type

import vmown


async def square(x: int) -> int:
    await vmown.sleep(0)
    return x * x


async def greet(name: str, times: int) -> str:
    await vmown.checkpoint()
    return name * times


async def fails() -> None:
    raise ValueError("expected")


def compress(data: bytes) -> bytes:
    return zlib.compress(data)


threaded_compress = vmown.threaded(compress)
interruptible_compress = vmown.threaded(compress, interrupt=vmown.INTERRUPT_SIGNAL)


def the_native_layer(channel: vmown.Channel, arena: vmown.Arena, ownership: vmown.Ownership) -> str:
    """The layers under the runtime, named by type."""
    errors: tuple[type[Exception], ...] = (
        vmown.VmownError,
        vmown.AlreadyOwnerError,
        vmown.NotOwnerError,
        vmown.SlotsExhaustedError,
        vmown.ControlBlockError,
        vmown.BrokenError,
        vmown.ArenaError,
        vmown.ArenaFullError,
        vmown.ChannelError,
        vmown.ChannelBrokenError,
        vmown.ChannelClosed,
    )
    cdef, source = vmown.threaded_wrappers("int f(int x);")
    bind = vmown.bind_threaded
    return f"{channel!r} {arena!r} {ownership!r} {len(errors)} {len(cdef + source)} {bind.__name__}"


async def main() -> dict[str, object]:
    out: dict[str, object] = {}
    me = vmown.current_process()
    assert_type(me, vmown.Process[Any])

    p = vmown.spawn(square, 7)
    assert_type(p, vmown.Process[int])
    value = await p
    assert_type(value, int)
    assert_type(p.result(), int)
    out["square"] = value
    out["exception"] = p.exception()
    out["cancelled"] = p.cancelled()
    out["done"] = p.done()
    out["name"] = p.name

    with vmown.move_on_after(0.01) as scope:
        await vmown.sleep(math.inf)
    assert_type(scope, vmown.CancelScope)
    out["moved_on"] = scope.cancelled_caught
    with vmown.move_on_at(vmown.current_time() + 0.01):
        await vmown.sleep(1)
    try:
        with vmown.fail_after(0.01):
            await vmown.sleep(1)
    except vmown.TooSlowError:
        out["too_slow"] = True
    with vmown.fail_at(vmown.current_time() + 10):
        pass
    with vmown.CancelScope(deadline=math.inf, shield=True) as shielded:
        shielded.deadline = vmown.current_time() + 10
        out["deadline"] = shielded.deadline > 0 and shielded.shield and not shielded.cancel_called
    with vmown.CancelScope() as cancelled:
        cancelled.cancel()
        try:
            await vmown.checkpoint()
        except vmown.Cancelled:
            out["cancelled_at_checkpoint"] = True
            raise

    victim = vmown.spawn(vmown.sleep, 10)
    await vmown.checkpoint()
    victim.cancel()
    try:
        await victim
    except vmown.ProcessCancelled:
        out["victim"] = victim.cancelled()

    try:
        async with vmown.TaskGroup() as tg:
            child = tg.spawn(greet, "ab", 2)
            assert_type(child, vmown.Process[str])
            tg.spawn(fails)
            out["tg_scope"] = tg.cancel_scope.cancel_called
    except* ValueError as group:
        out["group"] = len(group.exceptions)

    lock, semaphore, event = vmown.Lock(), vmown.Semaphore(2), vmown.Event()
    condition = vmown.Condition(lock)
    limiter = vmown.CapacityLimiter(2)
    queue: vmown.Queue[int] = vmown.Queue()
    async with lock:
        out["locked"] = lock.locked()
    async with semaphore:
        out["units"] = semaphore.value
    event.set()
    await event.wait()
    async with condition:
        condition.notify_all()
    async with limiter:
        packed = threaded_compress(b"x" * 1000)
        assert_type(packed, bytes)
        out["packed"] = len(interruptible_compress(b"y" * 1000)) + len(packed)
    await queue.put(1)
    queue.put_nowait(2)
    item = await queue.get()
    assert_type(item, int)
    try:
        while True:
            queue.get_nowait()
    except vmown.WouldBlock:
        out["drained"] = queue.empty()
    out["callout"] = vmown.callout(sqlite3.complete_statement, "select 1;")
    out["stats"] = vmown.stats()["steps"] > 0
    return out


if __name__ == "__main__":
    result = vmown.run(main, hz=1000, max_threads=16, idle_timeout=1.0)
    assert_type(result, dict[str, object])
    print(result)
    print(the_native_layer.__name__)
