"""vmown._taskgroup: the block waits for its children, failures cancel the rest and come out grouped."""

from __future__ import annotations

import time
import warnings
from typing import Any

import cffi
import pytest

import vmown

_ffi = cffi.FFI()
_ffi.cdef("int usleep(unsigned int usec);")
usleep = vmown.threaded(_ffi.dlopen(None).usleep)

pytestmark = pytest.mark.usefixtures("no_thread_left_behind")

SLACK_S = 2.0


async def fail_after_s(seconds: float) -> None:
    await vmown.sleep(seconds)
    raise ValueError(f"failed after {seconds} s")


async def sleep_long(log: list[str]) -> None:
    try:
        await vmown.sleep(10)
    finally:
        log.append("finally")


def test_a_failing_child_cancels_its_sibling_and_the_error_comes_out_grouped() -> None:
    async def main() -> tuple[list[str], list[str], float]:
        log: list[str] = []
        caught: list[str] = []
        start = time.monotonic()
        try:
            async with vmown.TaskGroup() as tg:
                tg.spawn(fail_after_s, 0.01)
                tg.spawn(sleep_long, log)
        except* ValueError as group:
            caught = [str(exc) for exc in group.exceptions]
        return log, caught, time.monotonic() - start

    log, caught, elapsed_s = vmown.run(main)
    assert log == ["finally"]
    assert caught == ["failed after 0.01 s"]
    assert elapsed_s < SLACK_S  # well before the sibling's 10 s


def test_the_block_waits_for_every_child_and_children_may_spawn_siblings() -> None:
    async def child(i: int, out: list[int], tg: vmown.TaskGroup) -> int:
        await vmown.sleep(0.001 * (5 - i))
        if i == 0:
            tg.spawn(child, 9, out, tg)
        out.append(i)
        return i

    async def main() -> tuple[list[int], list[int]]:
        out: list[int] = []
        async with vmown.TaskGroup() as tg:
            procs = [tg.spawn(child, i, out, tg) for i in range(5)]
        assert all(proc.done() for proc in procs)
        return sorted(out), [proc.result() for proc in procs]

    assert vmown.run(main) == ([0, 1, 2, 3, 4, 9], [0, 1, 2, 3, 4])


def test_cancelling_the_enclosing_scope_cancels_the_children() -> None:
    async def main() -> tuple[bool, list[str], float]:
        log: list[str] = []
        start = time.monotonic()
        with vmown.move_on_after(0.02) as scope:
            async with vmown.TaskGroup() as tg:
                tg.spawn(sleep_long, log)
                tg.spawn(sleep_long, log)
                await vmown.sleep(10)  # the body is cancelled too
        return scope.cancelled_caught, log, time.monotonic() - start

    caught, log, elapsed_s = vmown.run(main)
    assert caught and log == ["finally", "finally"]
    assert elapsed_s < SLACK_S


def test_outer_cancel_while_the_parent_waits_at_the_end_of_the_block() -> None:
    """K6: the join at the end waits uncancellably; the children end, then the block."""

    async def main() -> tuple[bool, list[str]]:
        log: list[str] = []
        with vmown.move_on_after(0.02) as scope:
            async with vmown.TaskGroup() as tg:
                tg.spawn(sleep_long, log)
            raise AssertionError("the end of a cancelled block is a checkpoint")
        return scope.cancelled_caught, log

    assert vmown.run(main) == (True, ["finally"])


def test_cancel_scope_of_the_group_and_the_body_failing() -> None:
    async def main() -> list[Any]:
        log: list[str] = []
        async with vmown.TaskGroup() as tg:
            tg.spawn(sleep_long, log)
            tg.cancel_scope.cancel()
        assert tg.cancel_scope.cancelled_caught is False  # the body did not raise
        out: list[Any] = [log]
        try:
            async with vmown.TaskGroup() as tg:
                tg.spawn(sleep_long, log)
                raise KeyError("body")
        except* KeyError as group:
            out.append(len(group.exceptions))
        out.append(log)
        with pytest.raises(RuntimeError, match="inside its `async with` block"):
            tg.spawn(sleep_long, log)
        return out

    assert vmown.run(main) == [["finally", "finally"], 1, ["finally", "finally"]]


def test_several_failures_all_come_out_and_callouts_in_children_are_cancelled() -> None:
    """Two children fail in the same round of the run queue (one event wakes
    both): both errors come out, and the child in a callout is cancelled."""

    async def blocked(after: list[str]) -> None:
        usleep(200_000)
        after.append("the line after the callout ran")

    async def fail_when_set(go: vmown.Event) -> None:
        await go.wait()
        raise ValueError("failed after 0.01 s")

    async def set_after_s(go: vmown.Event, seconds: float) -> None:
        await vmown.sleep(seconds)
        go.set()

    async def main() -> tuple[list[str], list[str]]:
        after: list[str] = []
        errors: list[str] = []
        go = vmown.Event()
        try:
            async with vmown.TaskGroup() as tg:
                tg.spawn(blocked, after)
                tg.spawn(fail_when_set, go)
                tg.spawn(fail_when_set, go)
                tg.spawn(set_after_s, go, 0.01)
        except* ValueError as group:
            errors = sorted(str(exc) for exc in group.exceptions)
        return errors, after

    errors, after = vmown.run(main)
    assert errors == ["failed after 0.01 s"] * 2
    assert after == []


def test_a_cancelled_child_process_reports_cancelled() -> None:
    async def main() -> tuple[bool, bool]:
        log: list[str] = []
        async with vmown.TaskGroup() as tg:
            victim = tg.spawn(sleep_long, log)
            await vmown.sleep(0.005)
            victim.cancel()
        return victim.cancelled(), isinstance(victim.exception(), vmown.ProcessCancelled)

    assert vmown.run(main) == (True, True)


def test_the_run_ends_while_a_group_is_open_and_closes_it_quietly() -> None:
    async def holder(ready: vmown.Event, log: list[str]) -> None:
        async with vmown.TaskGroup() as tg:
            tg.spawn(sleep_long, log)
            ready.set()
            await vmown.sleep(10)

    async def main() -> list[str]:
        ready, log = vmown.Event(), []
        vmown.spawn(holder, ready, log)
        await ready.wait()
        return log

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert vmown.run(main) == ["finally"]  # the child was closed too, its finally ran
