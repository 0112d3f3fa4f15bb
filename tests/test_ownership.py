"""vmown._ownership: the Ownership class over the C core."""

from __future__ import annotations

import mmap
import os
import signal
import threading
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

import vmown
from vmown._native import ffi, lib

from .support import run_threads, wait_until

# ---- basics ----


def test_own_disown_round_trip() -> None:
    vm = vmown.Ownership(slots=8)
    assert vm.owner == 0 and not vm.owned()
    vm.own()
    assert vm.owned() and vm.owner == vm.slot
    epoch = vm.epoch
    token = vm.disown()
    assert vm.owner == 0 and vm.epoch == epoch + 1
    vm.own(token)
    assert vm.owned()
    vm.disown()


def test_context_managers() -> None:
    vm = vmown.Ownership(slots=8)
    with vm:
        assert vm.owned()
        with vm.disowned(callout=42):
            assert not vm.owned()
            assert vm.slot_info(vm.slot)["callout"] == 42
        assert vm.owned()
    assert not vm.owned()


def test_try_own_does_not_wait() -> None:
    vm = vmown.Ownership(slots=8)
    holder_owns, release = threading.Event(), threading.Event()

    def holder() -> None:
        with vm:
            holder_owns.set()
            release.wait(10)

    t = threading.Thread(target=holder)
    t.start()
    assert holder_owns.wait(10)
    assert vm.try_own() is False
    release.set()
    t.join(10)
    assert vm.try_own() is True
    vm.disown()


def test_timeout_leaves_the_queue() -> None:
    vm = vmown.Ownership(slots=8)
    holder_owns, release = threading.Event(), threading.Event()

    def holder() -> None:
        with vm:
            holder_owns.set()
            release.wait(10)

    t = threading.Thread(target=holder)
    t.start()
    assert holder_owns.wait(10)
    with pytest.raises(TimeoutError):
        vm.own(timeout=0.05)
    assert vm.waiters == 0 and vm.queue() == []
    release.set()
    t.join(10)
    vm.own(timeout=10)
    vm.disown()


def test_a_grant_that_lands_as_the_timeout_passes_is_taken(widen) -> None:  # type: ignore[no-untyped-def]
    """O3 (native/owner.c, "Leaving the queue"), forced: the owner grants
    while the waiter is still before its sleep, and posts only after the
    waiter's timeout has passed (the widen switch holds each step 100 ms).
    The waiter's leaving CAS finds it GRANTED, so it takes the post that is
    on its way instead of leaving the queue."""
    vm = vmown.Ownership(slots=8)
    vm.own()
    outcome: list[tuple[str, float]] = []

    def waiter() -> None:
        start = time.monotonic()
        try:
            vm.own(timeout=0.005)
        except TimeoutError:
            outcome.append(("timed out", time.monotonic() - start))
        else:
            outcome.append(("owned", time.monotonic() - start))
            vm.disown()

    widen(100_000_000)
    t = threading.Thread(target=waiter)
    t.start()
    wait_until(lambda: vm.waiters == 1, what="the waiter to queue")
    time.sleep(0.03)  # well inside the waiter's widened window before its sleep
    vm.disown()  # grants at once, posts 100 ms later
    t.join(10)
    widen(0)
    (how, elapsed), = outcome
    assert how == "owned" and elapsed > 0.1, (how, elapsed)
    assert vm.owner == 0 and vm.waiters == 0


def _o3_round(  # type: ignore[no-untyped-def]
    vm: vmown.Ownership, widen, timeout: float, disown_at: float
) -> tuple[str, float, float, float]:
    """One waiter own(timeout=) while this thread owns; this thread disowns
    ``disown_at`` s after the waiter started, with the race windows widened
    400 ms: the waiter's timeout -> its leaving CAS, and a granter's look at
    the head -> its granting CAS (native/owner.c, race O3).  The margins are
    200 ms either way, for loaded machines.  Returns the waiter's outcome and
    time, and when the disown started and how long it took (a granter that
    found the waiter still WAITING is held 400 ms in its window)."""
    outcome: list[tuple[str, float]] = []

    def waiter() -> None:
        start = time.monotonic()
        try:
            vm.own(timeout=timeout)
        except TimeoutError:
            outcome.append(("timed out", time.monotonic() - start))
        else:
            outcome.append(("owned", time.monotonic() - start))
            vm.disown()

    vm.own()
    widen(400_000_000)
    t = threading.Thread(target=waiter)
    start = time.monotonic()
    t.start()
    wait_until(lambda: vm.waiters == 1, what="the waiter to queue")
    time.sleep(max(0.0, start + disown_at - time.monotonic()))
    disown_started = time.monotonic() - start
    vm.disown()
    disown_took = time.monotonic() - start - disown_started
    t.join(10)
    widen(0)
    assert not t.is_alive()
    ((how, elapsed),) = outcome
    return how, elapsed, disown_started, disown_took


def test_o3_a_leave_that_lands_inside_a_grant_wins_and_the_grant_moves_on(widen) -> None:  # type: ignore[no-untyped-def]
    """O3, forced the leave's way: the waiter times out at 0.6 s and leaves
    (its CAS WAITING -> LEFT) at 1.0 s; the owner's disown looks at it
    (WAITING) at 0.8 s and tries its CAS WAITING -> GRANTED at 1.2 s, which
    fails.  The waiter gets TimeoutError without waiting for the lock the
    granter holds; the granter unlinks it and, nobody else waiting, leaves
    the VM unowned.  Nothing is left behind."""
    vm = vmown.Ownership(slots=8)
    how, elapsed, started, took = _o3_round(vm, widen, timeout=0.6, disown_at=0.8)
    # The granter looked while the waiter was WAITING (it was held in its
    # window), after the waiter's timeout and before its CAS.
    assert 0.6 < started < 1.0 and took > 0.3, (started, took)
    assert how == "timed out" and elapsed < 0.6 + 0.4 + 0.5, (how, elapsed)
    assert vm.owner == 0 and vm.waiters == 0 and vm.queue() == []
    vm.own(timeout=10)
    vm.disown()


def test_o3_a_grant_that_lands_inside_a_leave_wins_and_is_taken(widen) -> None:  # type: ignore[no-untyped-def]
    """O3, forced the grant's way: the owner's disown looks at the waiter at
    0.4 s and marks it GRANTED at 0.8 s, between the waiter's timeout (0.6 s)
    and its leaving CAS (1.0 s), which fails: the waiter owns the VM, taking
    the post that comes at 1.2 s."""
    vm = vmown.Ownership(slots=8)
    how, elapsed, started, took = _o3_round(vm, widen, timeout=0.6, disown_at=0.4)
    # The grant's CAS (400 ms after the disown started) came after the
    # waiter's deadline and before its CAS.
    assert 0.2 < started < 0.6 and took > 0.3, (started, took)
    assert how == "owned" and elapsed > 1.0, (how, elapsed)
    assert vm.owner == 0 and vm.waiters == 0 and vm.queue() == []


def test_timed_owns_with_race_windows_widened_lose_nobody(widen) -> None:  # type: ignore[no-untyped-def]
    """Many threads own with tiny timeouts and disown, the windows of O3
    widened: every own either owns or times out, one owner at a time; at the
    end the VM is free and nobody is queued or counted.  queue() reads under
    the lock and unlinks slots that left while the lock was busy, so the
    count is checked after it."""
    vm = vmown.Ownership(slots=32)
    threads, cycles = 12, 200
    inside = [False]
    owned, timed_out = [0] * threads, [0] * threads  # one entry per thread
    timeouts = (0.0, 0.0001, 0.0005, 0.002)

    def body(i: int) -> None:
        for n in range(cycles):
            try:
                vm.own(timeout=timeouts[(i + n) % len(timeouts)])
            except TimeoutError:
                timed_out[i] += 1
                assert not vm.owned()
                continue
            assert not inside[0], "two threads own the VM"
            inside[0] = True
            owned[i] += 1
            if n % 3 == 0:
                time.sleep(0.0005)  # owning without the GIL: the others queue and time out
            inside[0] = False
            vm.disown()

    widen(20_000)
    run_threads(body, threads, timeout=300)
    widen(0)
    assert sum(owned) + sum(timed_out) == threads * cycles
    assert sum(owned) > 0 and sum(timed_out) > 0, (owned, timed_out)
    assert vm.stats()["interrupts"] > 0  # timeouts that left the queue, not only own(timeout=0) refused
    assert vm.owner == 0 and vm.queue() == [] and vm.waiters == 0


def test_stats_add_up() -> None:
    vm = vmown.Ownership(slots=32)

    def body(i: int) -> None:
        for _ in range(500):
            with vm:
                pass

    run_threads(body, 8)
    stats = vm.stats()
    assert stats["fast_owns"] + stats["slow_owns"] == 8 * 500
    assert stats["disowns"] == 8 * 500
    assert stats["waits"] <= stats["slow_owns"]
    assert stats["owner"] == 0 and stats["waiters"] == 0


# ---- misuse: clear errors, nothing corrupted ----


def test_own_twice_is_refused() -> None:
    vm = vmown.Ownership(slots=8)
    vm.own()
    with pytest.raises(vmown.AlreadyOwnerError, match="already owns"):
        vm.own()
    assert vm.owned()
    vm.disown()
    assert vm.owner == 0


def test_disown_without_owning_is_refused() -> None:
    vm = vmown.Ownership(slots=8)
    with pytest.raises(vmown.NotOwnerError, match="call own"):
        vm.disown()
    vm.own()
    vm.disown()
    with pytest.raises(vmown.NotOwnerError):
        vm.disown()
    assert vm.owner == 0 and vm.epoch == 1


def test_disown_by_another_thread_is_refused() -> None:
    vm = vmown.Ownership(slots=8)
    vm.own()
    errors: list[BaseException] = []

    def other() -> None:
        try:
            vm.disown()
        except vmown.NotOwnerError as exc:
            errors.append(exc)

    t = threading.Thread(target=other)
    t.start()
    t.join(10)
    assert len(errors) == 1 and vm.owned()
    vm.disown()


def test_token_of_another_thread_is_refused() -> None:
    vm = vmown.Ownership(slots=8)
    tokens: list[int] = []

    def other() -> None:
        vm.own()
        tokens.append(vm.disown())

    t = threading.Thread(target=other)
    t.start()
    t.join(10)
    vm.slot  # register this thread: it gets another slot
    with pytest.raises(ValueError, match="not issued to this thread"):
        vm.own(tokens[0])
    assert vm.owner == 0


def test_slots_exhausted() -> None:
    vm = vmown.Ownership(slots=2)
    hold, release = threading.Barrier(3), threading.Event()

    def holder() -> None:
        vm.slot
        hold.wait(10)
        release.wait(10)

    threads = [threading.Thread(target=holder) for _ in range(2)]
    for t in threads:
        t.start()
    hold.wait(10)
    with pytest.raises(vmown.SlotsExhaustedError, match="more slots"):
        vm.own()
    release.set()
    for t in threads:
        t.join(10)
    wait_until(lambda: vm.slots_in_use == 0, what="exited threads to give their slots back")
    vm.own()  # a slot came free
    vm.disown()


def test_slots_are_reused_after_threads_exit() -> None:
    vm = vmown.Ownership(slots=4)
    for _ in range(50):
        run_threads(lambda i: vm.__enter__() or vm.__exit__(), 3)
    wait_until(lambda: vm.slots_in_use == 0, what="slots given back")
    assert vm.stats()["disowns"] == 150


def test_bad_slots_argument() -> None:
    with pytest.raises(ValueError, match="slots must be"):
        vmown.Ownership(slots=0)
    with pytest.raises(ValueError, match="slots must be"):
        vmown.Ownership(slots="many")  # type: ignore[arg-type]


def _block_copy(vm: vmown.Ownership) -> mmap.mmap:
    size = lib.vmown_block_size(vm.slots)
    copy = mmap.mmap(-1, size)
    copy[:] = ffi.buffer(vm._block.addr, size)[:]
    return copy


def test_attach_to_a_foreign_block_with_a_bad_header() -> None:
    zeros = mmap.mmap(-1, 1 << 16)
    with pytest.raises(vmown.ControlBlockError, match="bad magic"):
        vmown.Ownership.attach(zeros)

    vm = vmown.Ownership(slots=4)
    good = _block_copy(vm)
    assert vmown.Ownership.attach(good).slots == 4

    wrong_version = _block_copy(vm)
    wrong_version[8] ^= 0xFF
    with pytest.raises(vmown.ControlBlockError, match="layout version"):
        vmown.Ownership.attach(wrong_version)

    wrong_size = _block_copy(vm)
    wrong_size[20:24] = (4000).to_bytes(4, "little")  # nslots: more than the memory holds
    with pytest.raises(vmown.ControlBlockError, match="sizes"):
        vmown.Ownership.attach(wrong_size)

    big = _block_copy(vmown.Ownership(slots=256))  # several pages
    truncated = mmap.mmap(-1, mmap.PAGESIZE)
    truncated[:] = big[: mmap.PAGESIZE]
    with pytest.raises(vmown.ControlBlockError, match="truncated"):
        vmown.Ownership.attach(truncated)

    not_ready = _block_copy(vm)
    not_ready[32] = 1  # state = INITIALIZING
    with pytest.raises(vmown.ControlBlockError, match="still being initialised"):
        vmown.Ownership.attach(not_ready)

    with pytest.raises(TypeError, match="writable buffer"):
        vmown.Ownership.attach(b"\0" * 4096)
    # The original was never touched by any of this.
    vm.own()
    vm.disown()


def _layout() -> dict[str, int]:
    layout = ffi.new("vmown_layout *")
    lib.vmown_layout_read(layout)
    return {name: getattr(layout, name) for name in dir(layout)}


LAYOUT = _layout()
FUZZ_SLOTS = 4
# (offset, length) of the words garbage may land in: the owner word, the
# waiters_and_hb_asleep word (waiter count and the heartbeat-asleep bit), queue head/tail, idle stack, every slot.
FUZZ_TARGETS = [
    (LAYOUT["owner_word"], 8),
    (LAYOUT["waiters_and_hb_asleep"], 8),
    (LAYOUT["queue_head"], 8),
    (LAYOUT["idle_head"], 4),
    (LAYOUT["slots"], (FUZZ_SLOTS + 1) * LAYOUT["slot_size"]),
]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_garbage_in_the_slot_table_and_queue_gives_errors_not_crashes_or_hangs(data) -> None:  # type: ignore[no-untyped-def]
    source = vmown.Ownership(slots=FUZZ_SLOTS)
    source.own()  # some live state to corrupt: a registered, owning slot
    memory = _block_copy(source)
    source.disown()
    for _ in range(data.draw(st.integers(1, 6))):
        start, length = data.draw(st.sampled_from(FUZZ_TARGETS))
        at = start + data.draw(st.integers(0, length - 1))
        garbage = data.draw(st.binary(min_size=1, max_size=8))
        memory[at : at + len(garbage)] = garbage[: len(memory) - at]
    vm = vmown.Ownership.attach(memory)
    expected = (vmown.VmownError, TimeoutError, ValueError)
    operations = [
        lambda: vm.own(timeout=0.05),
        vm.try_own,
        lambda: vm.yield_to_waiters(timeout=0.05),
        vm.disown,
        vm.queue,
        vm.stats,
        vm.reap,
        lambda: [vm.slot_info(i) for i in range(1, FUZZ_SLOTS + 1)],
        lambda: vm.own(timeout=0.05),
        vm.disown,
    ]
    for operation in operations:
        try:
            operation()
        except expected:
            pass


def test_a_lock_word_held_for_ever_gives_an_error_not_a_hang() -> None:
    vm = vmown.Ownership(slots=4)
    memory = _block_copy(vm)
    lock = LAYOUT["lock"]
    memory[lock : lock + 4] = (1).to_bytes(4, "little")  # "held" by pid 1, which lives as long as the machine
    stuck = vmown.Ownership.attach(memory)
    with pytest.raises(vmown.VmownError, match="held for seconds"):
        stuck.own()  # registering the thread needs the lock: 2 s, then this


def test_a_lock_word_no_lock_holds_marks_the_block_broken_at_once() -> None:
    vm = vmown.Ownership(slots=4)
    memory = _block_copy(vm)
    lock = LAYOUT["lock"]
    memory[lock : lock + 4] = (0x7FFFFFFF).to_bytes(4, "little")  # no pid is that large
    with pytest.raises(vmown.BrokenError):
        vmown.Ownership.attach(memory).own()


def test_attached_block_is_shared_with_its_creator() -> None:
    vm = vmown.Ownership(slots=8)
    view = ffi.buffer(vm._block.addr, lib.vmown_block_size(8))
    other = vmown.Ownership.attach(view)
    vm.own()
    assert other.owner == vm.slot
    vm.disown()
    assert other.owner == 0


def test_create_in_caller_memory_and_attach_from_another_handle() -> None:
    memory = mmap.mmap(-1, vmown.Ownership.size_for(8))
    vm = vmown.Ownership.create_in(memory, slots=8)
    other = vmown.Ownership.attach(memory)
    assert other.slots == 8
    vm.own()
    assert other.owner == vm.slot and not other.try_own()
    vm.disown()
    with pytest.raises(ValueError, match="needs .* bytes"):
        vmown.Ownership.create_in(mmap.mmap(-1, mmap.PAGESIZE), slots=1000)
    with pytest.raises(TypeError, match="writable buffer"):
        vmown.Ownership.create_in(bytes(1 << 16))


def test_closed_ownership_says_so() -> None:
    vm = vmown.Ownership(slots=8)
    vm.own()
    vm.disown()
    vm.close()
    with pytest.raises(ValueError, match="closed"):
        vm.own()
    with pytest.raises(ValueError, match="closed"):
        vm.owner
    assert repr(vm) == "<vmown.Ownership closed>"


def test_close_is_refused_while_other_threads_are_registered() -> None:
    vm = vmown.Ownership(slots=8)
    registered, release = threading.Event(), threading.Event()

    def other() -> None:
        vm.slot
        registered.set()
        release.wait(10)

    t = threading.Thread(target=other)
    t.start()
    assert registered.wait(10)
    with pytest.raises(vmown.VmownError, match="still registered"):
        vm.close()
    release.set()
    t.join(10)
    wait_until(lambda: vm.slots_in_use == 0, what="the thread's slot to be given back")
    vm.close()


# ---- FIFO and priority, forced deterministically ----


def _queue_in_order(vm: vmown.Ownership, names: list[str], got: list[str], priority: dict[str, int]) -> list[threading.Thread]:
    """Start one waiter per name, each only after the previous one is asleep in the queue."""
    threads = []
    for k, name in enumerate(names):

        def waiter(name: str = name) -> None:
            vm.set_priority(priority.get(name, 0))
            vm.own()
            got.append(name)
            vm.disown()

        t = threading.Thread(target=waiter)
        t.start()
        threads.append(t)
        wait_until(lambda: vm.waiters == k + 1, what=f"{name} to queue")
    return threads


def test_waiters_get_the_vm_in_arrival_order() -> None:
    vm = vmown.Ownership(slots=16)
    vm.own()
    got: list[str] = []
    names = [f"t{i}" for i in range(8)]
    threads = _queue_in_order(vm, names, got, {})
    order_seen = [vm.slot_info(i)["tid"] for i in vm.queue()]
    assert len(order_seen) == 8
    vm.disown()
    for t in threads:
        t.join(10)
    assert got == names


def test_higher_priority_waiters_go_first_fifo_among_equals() -> None:
    vm = vmown.Ownership(slots=16)
    vm.own()
    got: list[str] = []
    priority = {"low1": 0, "high1": 5, "low2": 0, "high2": 5, "mid": 2}
    threads = _queue_in_order(vm, list(priority), got, priority)
    vm.disown()
    for t in threads:
        t.join(10)
    assert got == ["high1", "high2", "mid", "low1", "low2"]


def test_yield_to_waiters_hands_over_and_gets_the_vm_back() -> None:
    vm = vmown.Ownership(slots=8)
    vm.own()
    assert vm.yield_to_waiters() is False  # nobody waits: nothing happens
    got: list[str] = []
    threads = _queue_in_order(vm, ["a", "b"], got, {})
    assert vm.yield_to_waiters() is True
    # Both queued before us ran first, FIFO; then the VM came back.
    assert vm.owned() and got == ["a", "b"]
    vm.disown()
    for t in threads:
        t.join(10)


# ---- stress: invariants inside the critical section ----


def _stress(vm: vmown.Ownership, threads: int, cycles: int) -> None:
    state = {"inside": False, "counter": 0}

    def body(i: int) -> None:
        try:
            cycle(i)
        except BaseException:
            if vm.owned():  # let the others finish and report
                vm.disown()
            raise

    def cycle(i: int) -> None:
        own, disown = vm.own, vm.disown
        me = vm.slot
        for n in range(cycles):
            if n % 7 != 0 or not vm.try_own():  # no spinning: it would fight the GIL
                own()
            assert not state["inside"], "two threads inside the critical section"
            state["inside"] = True
            assert vm.owner == me
            state["counter"] += 1
            if n % 13 == 0:
                time.sleep(0)  # give up the CPU (and GIL) while owning
            state["inside"] = False
            if n % 11 == 0 and vm.yield_to_waiters():
                assert vm.owner == me
            disown()

    run_threads(body, threads, timeout=300)
    assert state["counter"] == threads * cycles
    assert vm.owner == 0 and vm.waiters == 0


def test_stress_16_threads_10k_cycles() -> None:
    _stress(vmown.Ownership(slots=32), 16, 10_000)


def test_stress_with_race_windows_widened(widen) -> None:  # type: ignore[no-untyped-def]
    widen(20_000)
    _stress(vmown.Ownership(slots=32), 16, 500)


@pytest.mark.slow
def test_stress_long(widen) -> None:  # type: ignore[no-untyped-def]
    _stress(vmown.Ownership(slots=128), 64, 20_000)
    widen(5_000)
    _stress(vmown.Ownership(slots=128), 32, 5_000)


# ---- signals ----


def test_sigint_while_the_main_thread_waits() -> None:
    assert threading.current_thread() is threading.main_thread()
    vm = vmown.Ownership(slots=8)
    holder_owns, release = threading.Event(), threading.Event()

    def holder() -> None:
        with vm:
            holder_owns.set()
            release.wait(30)

    def interrupter() -> None:
        wait_until(lambda: vm.waiters == 1, what="the main thread to queue")
        time.sleep(0.05)  # let it fall asleep on its semaphore
        signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)

    t = threading.Thread(target=holder)
    t.start()
    assert holder_owns.wait(10)
    killer = threading.Thread(target=interrupter)
    killer.start()
    with pytest.raises(KeyboardInterrupt):
        vm.own()
    killer.join(10)
    assert vm.waiters == 0 and vm.queue() == [] and not vm.owned()
    assert vm.stats()["interrupts"] == 1
    assert vm.owner not in (0, vm.slot)  # the holder still owns
    # The other threads carry on.
    release.set()
    t.join(10)
    run_threads(lambda i: vm.__enter__() or vm.__exit__(), 4)
    vm.own(timeout=10)
    vm.disown()


def test_a_signal_whose_handler_returns_keeps_waiting() -> None:
    vm = vmown.Ownership(slots=8)
    seen: list[int] = []
    previous = signal.signal(signal.SIGUSR1, lambda signum, frame: seen.append(signum))
    try:
        holder_owns, release = threading.Event(), threading.Event()

        def holder() -> None:
            with vm:
                holder_owns.set()
                release.wait(30)

        def poker() -> None:
            wait_until(lambda: vm.waiters == 1, what="the main thread to queue")
            signal.pthread_kill(threading.main_thread().ident, signal.SIGUSR1)
            wait_until(lambda: seen and vm.waiters == 1, what="the handler to run and the wait to resume")
            release.set()

        t = threading.Thread(target=holder)
        t.start()
        assert holder_owns.wait(10)
        p = threading.Thread(target=poker)
        p.start()
        vm.own()  # returns once the holder lets go, despite the signal
        assert vm.owned() and seen == [signal.SIGUSR1]
        vm.disown()
        p.join(10)
        t.join(10)
    finally:
        signal.signal(signal.SIGUSR1, previous)


# ---- fork ----


def _wait_child(pid: int, timeout: float = 30.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.005)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    raise AssertionError("child did not finish: deadlock?")


def test_fork_shares_the_block_and_the_child_can_own() -> None:
    vm = vmown.Ownership(slots=8)
    shared = mmap.mmap(-1, mmap.PAGESIZE)  # MAP_SHARED, anonymous
    vm.own()
    pid = os.fork()
    if pid == 0:  # child
        code = 0
        try:
            try:
                vm.disown()  # the parent's thread owns, not this one
                code = 10
            except vmown.NotOwnerError:
                pass
            vm.own(timeout=20)  # waits for the parent to let go
            shared[0] = 1 if vm.owner == vm.slot else 2
            vm.disown()
        except BaseException:
            code = 11
        os._exit(code)
    wait_until(lambda: vm.waiters == 1, what="the child to queue in the shared block")
    assert shared[0] == 0  # the child cannot be inside yet
    vm.disown()  # hands the VM to the child, across processes
    assert _wait_child(pid) == 0
    assert shared[0] == 1
    vm.own(timeout=10)
    vm.disown()


# ---- a model of one thread's protocol ----


class SingleThreadModel(RuleBasedStateMachine):
    """Any sequence of calls by one thread keeps the block and the model in step."""

    def __init__(self) -> None:
        super().__init__()
        self.vm = vmown.Ownership(slots=4)
        self.owns = False
        self.releases = 0

    @rule()
    def own(self) -> None:
        if self.owns:
            with pytest.raises(vmown.AlreadyOwnerError):
                self.vm.own()
        else:
            self.vm.own()
            self.owns = True

    @rule(tag=st.integers(0, 2**64 - 1))
    def disown(self, tag: int) -> None:
        if self.owns:
            self.vm.disown(tag)
            self.owns, self.releases = False, self.releases + 1
        else:
            with pytest.raises(vmown.NotOwnerError):
                self.vm.disown(tag)

    @rule()
    def try_own(self) -> None:
        if self.owns:
            with pytest.raises(vmown.AlreadyOwnerError):
                self.vm.try_own()
        else:
            assert self.vm.try_own()
            self.owns = True

    @rule()
    def yield_to_waiters(self) -> None:
        if self.owns:
            assert self.vm.yield_to_waiters() is False
        else:
            with pytest.raises(vmown.NotOwnerError):
                self.vm.yield_to_waiters()

    @invariant()
    def block_agrees(self) -> None:
        assert self.vm.owned() == self.owns
        assert self.vm.epoch == self.releases
        assert self.vm.waiters == 0 and self.vm.slots_in_use <= 1  # registers on first use


TestSingleThreadModel = SingleThreadModel.TestCase
TestSingleThreadModel.settings = settings(max_examples=50, stateful_step_count=30, deadline=None)
