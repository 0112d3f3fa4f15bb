"""Hostile peers, fork, bad arguments: errors, never an abort or a hang.

One test (or more) per numbered case of the hardening issue; their names say
which ("case1_" ... "case9_").  Cases that could kill or hang the test
process (a corrupt semaphore, fork, SIGBUS, Ctrl-C) run in a child process,
whose exit status and output are checked.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap

import pytest

import vmown
from vmown import Arena, ArenaError, Channel, Ownership

# Generous bound on a child process's run: exceeded only by a hang.
CHILD_TIMEOUT_S = 120


def run_child(script: str, timeout: float = CHILD_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
    """Run ``script`` in a new Python process; fail if it hangs or dies by a signal."""
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode >= 0, f"killed by signal {-done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done


# ---- case 3 and 7: timeouts ----

TIMEOUT_MESSAGE = "timeout must be a number of seconds >= 0, math.inf or None"
BAD_TIMEOUTS = (math.nan, -1, -0.001, -math.inf, True, "1")


@pytest.fixture
def arena() -> Arena:
    with Arena.anonymous(1 << 20) as arena:
        yield arena


def _waits(arena: Arena) -> dict[str, object]:
    vm = Ownership(slots=4)
    channel = Channel.create(arena, 4096)
    return {
        "own": lambda t: vm.own(timeout=t),
        "yield_to_waiters": lambda t: vm.yield_to_waiters(timeout=t),
        "send": lambda t: channel.send(b"x", t),
        "recv": lambda t: channel.recv(t),
        "recv_into": lambda t: channel.recv_into(bytearray(8), t),
        "close": lambda t: channel.close(timeout=t),
        "Arena.anonymous": lambda t: Arena.anonymous(4096, timeout=t),
        "sleep": lambda t: vmown.run(_sleep_main, t, max_threads=2),
    }


async def _sleep_main(seconds: float) -> None:
    await vmown.sleep(seconds)


@pytest.mark.parametrize("bad", BAD_TIMEOUTS, ids=repr)
def test_case7_nan_negative_and_non_numbers_give_the_same_value_error_everywhere(arena: Arena, bad) -> None:
    for name, wait in _waits(arena).items():
        if name == "sleep" and not isinstance(bad, (bool, str)) and bad < 0:
            continue  # a negative sleep is a checkpoint, as in asyncio (the test below)
        expected = TIMEOUT_MESSAGE.replace("timeout", "seconds") if name == "sleep" else TIMEOUT_MESSAGE
        with pytest.raises(ValueError, match=expected.replace("(", r"\(").replace(")", r"\)")):
            wait(bad)


def test_case7_a_negative_sleep_is_a_checkpoint_and_nan_is_refused() -> None:
    async def main() -> str:
        await vmown.sleep(-1)
        await vmown.sleep(-0.5)
        with pytest.raises(ValueError, match="seconds must be a number of seconds >= 0"):
            await vmown.sleep(math.nan)
        return "ok"

    assert vmown.run(main) == "ok"


def test_case7_infinite_and_huge_timeouts_wait_for_ever_instead_of_overflowing(arena: Arena) -> None:
    vm = Ownership(slots=4)
    for timeout in (math.inf, 1e10, 10**30):
        vm.own(timeout=timeout)
        assert vm.yield_to_waiters(timeout=timeout) is False  # nobody waits
        vm.disown()
    channel = Channel.create(arena, 4096)
    channel.send(b"a", math.inf)
    channel.send(b"b", 1e10)
    assert channel.recv(math.inf) == b"a" and channel.recv(1e10) == b"b"
    Arena.anonymous(4096, timeout=math.inf).close()
    Arena.anonymous(4096, timeout=1e10).close()


# ---- case 4: create_in reserves its pages ----


def test_case4_create_in_reserves_the_blocks_pages_so_a_channel_goes_elsewhere(arena: Arena) -> None:
    vm = Ownership.create_in(arena.buffer, slots=8)
    size = Ownership.size_for(8)
    assert arena.allocated == size
    channel = Channel.create(arena, 4096)
    assert channel.offset >= size  # not on top of the control block
    channel.send(b"hello")
    vm.own()  # the block is intact: no BrokenError
    vm.disown()
    assert channel.recv() == b"hello"


def test_case4_create_in_an_arena_takes_pages_from_its_allocator(arena: Arena) -> None:
    first = Ownership.create_in(arena, slots=4)
    second = Ownership.create_in(arena, slots=4)
    assert first.offset == 0 and second.offset == Ownership.size_for(4)
    peer = Ownership.attach(arena.buffer[second.offset :])
    second.own()
    assert peer.owner == second.slot
    second.disown()


def test_case4_overlapping_placements_are_refused(arena: Arena) -> None:
    Ownership.create_in(arena.buffer, slots=4)
    with pytest.raises(ArenaError, match="overlaps"):
        Ownership.create_in(arena.buffer, slots=4)  # the same pages again
    channel = Channel.create(arena, 64)
    with pytest.raises(ArenaError, match="overlaps"):
        Ownership.create_in(arena.buffer[channel.offset :], slots=4)
    given = arena.alloc(Ownership.size_for(4))
    with pytest.raises(ArenaError, match="handed out already"):  # alloc()'d by another process, say
        Ownership.create_in(arena.buffer[given - arena.page_size :], slots=4)
    Ownership.create_in(arena.buffer[given:], slots=4)  # this process's alloc(), for the block: fine
    with pytest.raises(ArenaError, match="overlaps"):
        Ownership.create_in(arena.buffer[given:], slots=4)


def test_case4_create_in_plain_memory_still_works() -> None:
    import mmap

    memory = mmap.mmap(-1, Ownership.size_for(2))
    vm = Ownership.create_in(memory, slots=2)
    vm.own()
    vm.disown()
    vm.close()


# ---- case 5, 6, 7: bad arguments get clear errors naming them ----


def test_case5_a_path_with_a_nul_byte_is_refused(tmp_path) -> None:
    path = str(tmp_path / "safe.arena") + "\0ignored"
    for make in (lambda: Arena.create(path, 4096), lambda: Arena.open(path), lambda: Arena.create(path.encode(), 4096)):
        with pytest.raises(ValueError, match="path must not contain a NUL byte"):
            make()
    with pytest.raises(ValueError, match="directory must not contain a NUL byte"):
        Arena.create_temp(4096, directory=str(tmp_path) + "\0x")
    assert os.listdir(tmp_path) == []  # nothing made under the cut name


@pytest.mark.parametrize("address", [2**64, 2**64 + 2**20, 2**70, -4096, -(2**64)])
def test_case6_an_address_outside_the_address_space_is_refused(address: int) -> None:
    with pytest.raises(ValueError, match="address must be inside the address space"):
        Arena.anonymous(4096, address=address)


def test_case7_a_buffer_not_page_aligned_is_refused_naming_it(arena: Arena) -> None:
    for make in (Ownership.create_in, Ownership.attach):
        with pytest.raises(ValueError, match="buffer must start at a page boundary"):
            make(arena.buffer[64:])


def test_case7_wrong_types_name_the_argument(arena: Arena) -> None:
    with pytest.raises(TypeError, match="arena must be a vmown.Arena, not NoneType"):
        Channel.create(None, 64)
    with pytest.raises(TypeError, match="arena must be a vmown.Arena, not str"):
        Channel.open("arena", 0)
    for slots in (True, False, 1.0, "4"):
        with pytest.raises(ValueError, match="slots must be an int"):
            Ownership(slots=slots)
        with pytest.raises(ValueError, match="slots must be an int"):
            Ownership.create_in(arena, slots=slots)
    with pytest.raises(TypeError, match="buffer must be a writable buffer"):
        Ownership.create_in(b"read-only" * 1000)
    with pytest.raises(TypeError, match="path must be a str, bytes or os.PathLike"):
        Arena.create(None, 4096)


@pytest.mark.parametrize("mode", [0o4600, 0o2600, 0o1600, 0o10600, -1])
def test_case7_a_mode_with_setuid_or_extra_bits_is_refused(tmp_path, mode: int) -> None:
    with pytest.raises(ValueError, match="mode must be permission bits"):
        Arena.create(tmp_path / "a.arena", 4096, mode=mode)
    with pytest.raises(ValueError, match="mode must be permission bits"):
        Arena.open(tmp_path / "a.arena", mode=mode)


@pytest.mark.parametrize("bits", [0o4000, 0o2000, 0o1000])
def test_case7_a_file_with_setuid_setgid_or_sticky_bits_is_not_opened(tmp_path, bits: int) -> None:
    path = tmp_path / "a.arena"
    Arena.create(path, 4096).close()
    os.chmod(path, 0o600 | bits)
    with pytest.raises(ArenaError, match="grants permissions that were not expected"):
        Arena.open(path, mode=0o600)


# ---- case 9: a file truncated under a live mapping ----


def test_case9_truncated_file_gives_clear_errors_not_sigbus(tmp_path) -> None:
    done = run_child(
        f"""
        import os
        from vmown import Arena, ArenaError
        arena = Arena.create({str(tmp_path / "t.arena")!r}, 1 << 16)
        arena.atomic_store(8, 42)
        os.truncate(arena.path, 0)  # what a hostile peer can do
        print(repr(arena))
        for name, op in [("size", lambda: arena.size), ("buffer", lambda: arena.buffer),
                         ("atomic_load", lambda: arena.atomic_load(8)), ("alloc", lambda: arena.alloc(4096)),
                         ("grow", lambda: arena.grow(1 << 17)), ("refresh", arena.refresh),
                         ("allocated", lambda: arena.allocated)]:
            try:
                op()
            except ArenaError as exc:
                assert "truncated under the live mapping" in str(exc), exc
                print(name, "ok")
            else:
                raise AssertionError(name + " did not raise")
        arena.close()
        arena.unlink()
        print("closed")
        """
    )
    assert done.returncode == 0, done.stderr
    assert "unusable" in done.stdout and done.stdout.count(" ok") == 7 and "closed" in done.stdout


# ---- case 2: fork inside vmown.run ----

FORK_SCRIPT = """
import os, sys, threading, time, vmown

async def blocker():
    vmown.callout(time.sleep, 0.002)  # keeps workers busy: the forker may be a worker

async def forker(how):
    await vmown.sleep(0.001)
    pid = os.fork()
    if pid == 0:
        if how == "raise":
            raise KeyError("raised in the child")
        return "child"
    return pid

async def main(how, forkers):
    for _ in range(8):
        vmown.spawn(blocker)
    procs = [vmown.spawn(forker, how) for _ in range(forkers)]
    pids = [await p for p in procs]
    statuses = []
    for pid in pids:
        deadline = time.monotonic() + 60
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                statuses.append(os.waitstatus_to_exitcode(status))
                break
            assert time.monotonic() < deadline, "a forked child hangs"
            await vmown.sleep(0.005)
    return statuses

parent = os.getpid()
for how in ("return", "raise"):
    try:
        statuses = vmown.run(main, how, FORKERS)
    except vmown.ForkedRunError as exc:
        assert os.getpid() != parent
        print("child", os.getpid(), "ForkedRunError", flush=True)
        os._exit(3)  # a distinct status, so that the parent sees how the child ended
    assert os.getpid() == parent, "a child came back from run() without an error"
    # a child whose fork happened on a worker thread exits with 1 (printed its error)
    assert statuses and all(s in (1, 3) for s in statuses), statuses
    print("parent", how, statuses, flush=True)
print("parent done", flush=True)
"""


@pytest.mark.parametrize("forkers", [1, 4])
def test_case2_a_child_forked_inside_run_that_returns_or_raises_exits(forkers: int) -> None:
    done = run_child(FORK_SCRIPT.replace("FORKERS", str(forkers)))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "parent done" in done.stdout, done.stdout + done.stderr
    assert "AlreadyOwnerError" not in done.stderr and "BrokenError" not in done.stderr, done.stderr
    assert "vmown.run() cannot go on in a child process forked inside it" in done.stdout + done.stderr or (
        "ForkedRunError" in done.stdout
    )


# ---- case 8: Ctrl-C twice ----

CTRL_C_SCRIPT = """
import os, signal, sys, threading, time, warnings, vmown

def vmown_threads():
    names = []
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/comm") as comm:
                name = comm.read().strip()
        except FileNotFoundError:
            continue
        if name.startswith("vmown-"):
            names.append(name)
    return names

async def busy():
    while True:
        vmown.callout(time.sleep, 0.0005)
        await vmown.checkpoint()

async def main():
    for _ in range(6):
        vmown.spawn(busy)
    await vmown.sleep(60)

def ctrl_c_twice(delay_s, gap_s):
    time.sleep(delay_s)
    os.kill(os.getpid(), signal.SIGINT)
    until = time.perf_counter() + gap_s
    while time.perf_counter() < until:
        pass
    os.kill(os.getpid(), signal.SIGINT)

for i, gap_s in enumerate([0, 0.00005, 0.0001, 0.0002, 0.0003] * 2):
    helper = threading.Thread(target=ctrl_c_twice, args=(0.02 + 0.013 * i, gap_s))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        helper.start()
        try:
            vmown.run(main)
        except KeyboardInterrupt:
            pass
        helper.join()
    named = " ".join(str(w.message) for w in caught)
    deadline = time.monotonic() + 10
    while (left := vmown_threads()) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not left or "vmown-worker" in named, (gap_s, left, named)
    assert threading.enumerate() == [threading.main_thread()], threading.enumerate()
    print("ok", gap_s, len(caught), flush=True)
print("done", flush=True)
"""


def test_case8_ctrl_c_twice_leaves_no_thread_and_raises_nothing_but_keyboard_interrupt() -> None:
    done = run_child(CTRL_C_SCRIPT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "done" in done.stdout and done.stdout.count("ok ") == 10, done.stdout + done.stderr
    assert "Traceback" not in done.stderr, done.stderr
