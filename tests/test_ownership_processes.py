"""vmown._ownership across processes.

Two unrelated processes share one ownership word through an arena file.  And
a peer that dies at any point of the protocol must not wedge the others:
peers are forked children sharing the anonymous control block, each SIGKILLed
at the point under test (the core's debug stop points make a child stop
itself exactly there)."""

from __future__ import annotations

import mmap
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Callable

import pytest

import vmown
from vmown._native import ffi, lib

from .support import wait_until

RECOVERY_S = 10.0  # generous: the design goal is 50 ms per dead owner

# ---- two processes, one by path ----

# Inside the VM: the word at INSIDE must be 0 on entry (nobody else inside);
# COUNTER is incremented non-atomically, so it ends exact only if the
# critical sections never overlapped.
SLOTS = 16
INSIDE = vmown.Ownership.size_for(SLOTS)
COUNTER = INSIDE + 8

PEER = textwrap.dedent(
    """
    import os, sys, vmown
    INSIDE, COUNTER = int(sys.argv[3]), int(sys.argv[3]) + 8
    arena = vmown.Arena.open(sys.argv[1])
    vm = vmown.Ownership.attach(arena.buffer)
    me = os.getpid()
    for _ in range(int(sys.argv[2])):
        vm.own()
        if arena.atomic_exchange(INSIDE, me) != 0:
            sys.exit("two processes inside the VM")
        arena.atomic_store(COUNTER, arena.atomic_load(COUNTER) + 1)
        arena.atomic_store(INSIDE, 0)
        vm.disown()
    print(vm.stats()["hand_offs"])
    """
)


def _cycles(arena: vmown.Arena, vm: vmown.Ownership, n: int) -> None:
    me = os.getpid()
    for _ in range(n):
        vm.own()
        assert arena.atomic_exchange(INSIDE, me) == 0, "two processes inside the VM"
        arena.atomic_store(COUNTER, arena.atomic_load(COUNTER) + 1)
        arena.atomic_store(INSIDE, 0)
        vm.disown()


def test_two_processes_by_path_hand_ownership_back_and_forth(tmp_path) -> None:  # type: ignore[no-untyped-def]
    n = 10_000
    with vmown.Arena.create_temp(1 << 20, directory=tmp_path) as arena:
        vm = vmown.Ownership.create_in(arena.buffer, slots=SLOTS)
        vm.own()  # the peer starts by queueing
        peer = subprocess.Popen(
            [sys.executable, "-c", PEER, arena.path, str(n), str(INSIDE)], stdout=subprocess.PIPE, text=True
        )
        wait_until(lambda: vm.waiters == 1 or peer.poll() is not None, timeout=30, what="the peer to queue")
        vm.disown()
        _cycles(arena, vm, n)
        out, _ = peer.communicate(timeout=120)
        assert peer.returncode == 0, out
        assert arena.atomic_load(COUNTER) == 2 * n
        assert vm.stats()["hand_offs"] > 0 and vm.owner == 0 and vm.waiters == 0
        vm.reap()  # the peer's slot, given back at its exit or freed as dead
        assert vm.slots_in_use == 1
        del vm
        arena.unlink()

# ---- dead peers ----


def _fork(body: Callable[[], None], stop_at: int = 0) -> int:
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            lib.vmown_debug_set_stop(stop_at)
            body()
        except BaseException:
            code = 1
        os._exit(code)
    return pid


def _kill(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)


def _wait_stopped(pid: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WUNTRACED | os.WNOHANG)
        if done and os.WIFSTOPPED(status):
            return
        assert not done, "child ended instead of stopping"
        time.sleep(0.001)
    raise AssertionError("child did not stop at the debug point")


def _recovers(vm: vmown.Ownership) -> None:
    """This thread gets the VM despite the dead peer; the block is consistent."""
    vm.own(timeout=RECOVERY_S)
    assert vm.owner == vm.slot and vm.waiters == 0 and vm.queue() == []
    vm.disown()
    assert vm.stats()["reaped"] >= 1


def test_peer_killed_while_owning() -> None:
    vm = vmown.Ownership(slots=16)
    flag = mmap.mmap(-1, mmap.PAGESIZE)

    def child() -> None:
        vm.own()
        flag[0] = 1
        time.sleep(60)

    pid = _fork(child)
    wait_until(lambda: flag[0] == 1, what="the child to own the VM")
    os.kill(pid, signal.SIGKILL)  # left a zombie until reaped below: dead all the same
    _recovers(vm)
    os.waitpid(pid, 0)


def test_peer_killed_while_waiting() -> None:
    vm = vmown.Ownership(slots=16)
    vm.own()
    pid = _fork(lambda: vm.own())
    wait_until(lambda: vm.waiters == 1, what="the child to queue")
    _kill(pid)
    vm.disown()  # hands the VM to the dead waiter's slot
    _recovers(vm)


def test_peer_killed_right_after_it_was_handed_the_vm() -> None:
    vm = vmown.Ownership(slots=16)
    vm.own()
    pid = _fork(lambda: vm.own(), stop_at=lib.VMOWN_DEBUG_STOP_GRANTED)
    wait_until(lambda: vm.waiters == 1, what="the child to queue")
    vm.disown()
    _wait_stopped(pid)
    assert vm.owner not in (0, vm.slot)  # the stopped child holds it
    _kill(pid)
    _recovers(vm)


def test_peer_killed_inside_the_lock() -> None:
    vm = vmown.Ownership(slots=16)
    vm.own()
    pid = _fork(lambda: vm.own(), stop_at=lib.VMOWN_DEBUG_STOP_IN_LOCK)
    _wait_stopped(pid)  # holding the lock, queue linked but not counted
    _kill(pid)
    vm.disown()  # takes the lock: EOWNERDEAD, the queue is rebuilt
    _recovers(vm)


@pytest.mark.parametrize("then", ["continued", "killed"])
def test_o3_a_waiter_stopped_between_its_timeout_and_its_leave_is_granted_meanwhile(then: str) -> None:
    """O3 (native/owner.c, "Leaving the queue"), forced with a stop point:
    the child waiter's deadline has passed and it stops before its CAS
    WAITING -> LEFT; the parent's disown grants it meanwhile (its CAS
    WAITING -> GRANTED wins).  Continued, the child's CAS fails and it takes
    the grant: own() returns owning, not TimeoutError.  Killed there, it is a
    dead owner: reaped, and the VM goes on."""
    vm = vmown.Ownership(slots=16)
    vm.own()
    flag = mmap.mmap(-1, mmap.PAGESIZE)

    def child() -> None:
        try:
            vm.own(timeout=0.05)
        except TimeoutError:
            flag[0] = 2
            return
        flag[0] = 1 if vm.owned() else 3
        vm.disown()

    pid = _fork(child, stop_at=lib.VMOWN_DEBUG_STOP_LEAVE)
    _wait_stopped(pid)  # past its deadline, still WAITING
    vm.disown()  # hands the VM to the stopped waiter
    assert vm.owner not in (0, vm.slot)
    if then == "killed":
        _kill(pid)
        _recovers(vm)
        return
    os.kill(pid, signal.SIGCONT)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0 and flag[0] == 1, (status, flag[0])
    vm.own(timeout=RECOVERY_S)
    assert vm.waiters == 0 and vm.queue() == []
    vm.disown()


@pytest.mark.parametrize("soft", [False, True], ids=["hard", "soft"])
def test_granter_killed_between_its_store_and_its_post(soft: bool) -> None:
    """Race S8 (native/grants.c): the child hands the VM to the waiting
    parent thread -- by a disown (hard) or a callout's disown (a soft grant)
    -- and dies before its post.  The waiter, GRANTED with no post coming,
    takes the VM after one slice."""
    vm = vmown.Ownership(slots=16)
    flag = mmap.mmap(-1, mmap.PAGESIZE)

    def child() -> None:
        vm.bind_thread()
        vm.own()
        flag[0] = 1
        while vm.waiters == 0:
            time.sleep(0.001)
        if soft:
            lib.vmown_callout_begin(1)  # stops before its post
        else:
            vm.disown()  # stops before its post

    pid = _fork(child, stop_at=lib.VMOWN_DEBUG_STOP_BEFORE_POST)
    wait_until(lambda: flag[0] == 1, what="the child to own the VM")
    got: list[int] = []
    waiter = threading.Thread(target=lambda: (vm.own(timeout=RECOVERY_S), got.append(vm.owner), vm.disown()))
    waiter.start()
    _wait_stopped(pid)  # the word names the waiting thread (or a pending grant to it); no post yet
    word_holder = vm.owner
    _kill(pid)
    waiter.join(timeout=RECOVERY_S + 5)
    assert not waiter.is_alive(), "the granted waiter never took the VM"
    assert word_holder == got[0] and got[0] not in (0,), "the VM was not handed to the waiter"
    assert vm.owner == 0 and vm.waiters == 0 and vm.queue() == []


def _recovers_in_thread(vm: vmown.Ownership) -> threading.Thread:
    """_recovers on a thread of its own (this one is in a callout); queued on return."""
    errors: list[BaseException] = []

    def body() -> None:
        try:
            _recovers(vm)
        except BaseException as exc:  # noqa: BLE001 - re-raised by the test
            errors.append(exc)

    thread = threading.Thread(target=body)
    thread.errors = errors  # type: ignore[attr-defined]
    thread.start()
    wait_until(lambda: vm.waiters == 1 or not thread.is_alive(), what="the recovering thread to queue")
    return thread


def _join(thread: threading.Thread) -> None:
    thread.join(timeout=RECOVERY_S + 5)
    assert not thread.is_alive(), "the recovering thread is stuck"
    if thread.errors:  # type: ignore[attr-defined]
        raise thread.errors[0]  # type: ignore[attr-defined]


@contextmanager
def _child_queued_to_stop_at_its_claim() -> Iterator[tuple[vmown.Ownership, int]]:
    """An owner bound for C callouts, and a forked child queued for the VM
    that will stop (SIGSTOP) when it tries to claim a soft grant."""
    vm = vmown.Ownership(slots=16)
    vm.own()
    vm.bind_thread()
    try:
        pid = _fork(lambda: vm.own(), stop_at=lib.VMOWN_DEBUG_STOP_CLAIM)
        wait_until(lambda: vm.waiters == 1, what="the child to queue")
        yield vm, pid
    finally:
        lib.vmown_bind_thread(ffi.NULL, 0)


def test_peer_killed_holding_a_pending_soft_grant() -> None:
    """A callout's disown gives the queued child a soft grant; the child dies
    before claiming it, and the granter stays out: a waiter reaps the holder."""
    with _child_queued_to_stop_at_its_claim() as (vm, pid):
        token = lib.vmown_callout_begin(7)  # a soft grant to the child
        assert token == vm.slot | lib.VMOWN_CALLOUT_WANTED  # wanted: a thread was queued
        _wait_stopped(pid)
        assert vm.owner not in (0, vm.slot) and vm.stats()["soft_grants"] == 1
        _kill(pid)
        thread = _recovers_in_thread(vm)  # queues behind the dead holder, reaps it
        _join(thread)
        lib.vmown_callout_end(token)  # the grant is gone: own the ordinary way
        assert vm.owned and vm.stats()["steals"] == 0
        vm.disown()


def test_peer_killed_after_it_was_robbed() -> None:
    """The granter steals its soft grant back; the robbed child dies before it
    queues again: soft grants must not keep waiting for it to come back."""
    with _child_queued_to_stop_at_its_claim() as (vm, pid):
        token = lib.vmown_callout_begin(7)
        _wait_stopped(pid)
        lib.vmown_callout_end(token)  # steals it back: the child is robbed
        assert vm.owned and vm.stats()["steals"] == 1
        _kill(pid)
        thread = _recovers_in_thread(vm)
        token = lib.vmown_callout_begin(8)  # the robbed child is still the claimant
        _join(thread)
        lib.vmown_callout_end(token)
        assert vm.owned
        vm.disown()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(") ", 1)[1][0] not in "ZX"
    except OSError:
        return False


def _crash_round(vm: vmown.Ownership, shared: mmap.mmap, rng: random.Random, children: int) -> None:
    """Children cycle own -> critical section -> callout -> critical section
    -> disown (the callout's disown gives a waiter a soft grant, which it
    claims or the child steals back); some are killed at random moments, some
    stop at a debug point and are killed there."""

    def critical(me: int) -> None:
        inside = int.from_bytes(shared[0:4], "little")
        assert inside in (0, me) or not _alive(inside), f"{inside} is inside too"
        shared[0:4] = me.to_bytes(4, "little")
        count = int.from_bytes(shared[4:12], "little")
        shared[4:12] = (count + 1).to_bytes(8, "little")
        shared[0:4] = (0).to_bytes(4, "little")

    def child() -> None:
        me = os.getpid()
        vm.bind_thread()
        for _ in range(10_000):
            vm.own()
            critical(me)
            lib.vmown_callout_end(lib.vmown_callout_begin(1))
            critical(me)
            vm.disown()

    points = [0, 0, lib.VMOWN_DEBUG_STOP_GRANTED, lib.VMOWN_DEBUG_STOP_IN_LOCK, lib.VMOWN_DEBUG_STOP_CLAIM,
              lib.VMOWN_DEBUG_STOP_BEFORE_POST]
    pids = [_fork(child, stop_at=rng.choice(points)) for _ in range(children)]
    for pid in pids:
        time.sleep(rng.uniform(0, 0.02))
        done, status = os.waitpid(pid, os.WUNTRACED | os.WNOHANG)
        if done and os.WIFEXITED(status):
            assert os.WEXITSTATUS(status) == 0
            continue
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


@pytest.mark.parametrize("seed", [1, 2])
def test_random_kills_bounded(seed: int) -> None:
    vm = vmown.Ownership(slots=64)
    shared = mmap.mmap(-1, mmap.PAGESIZE)
    _crash_round(vm, shared, random.Random(seed), children=4)
    _recovers_or_clean(vm)


def _recovers_or_clean(vm: vmown.Ownership) -> None:
    vm.own(timeout=RECOVERY_S)
    vm.reap()
    assert vm.waiters == 0 and vm.queue() == [] and vm.slots_in_use == 1
    vm.disown()


@pytest.mark.slow
def test_random_kills_long() -> None:
    vm = vmown.Ownership(slots=256)
    shared = mmap.mmap(-1, mmap.PAGESIZE)
    rng = random.Random(12345)
    for _ in range(300):
        _crash_round(vm, shared, rng, children=6)
        _recovers_or_clean(vm)
