"""vmown._channel: channels between processes -- fork and path sharing, order, capacity, close,
many senders and receivers, dead peers, corrupt memory, and the C core under ThreadSanitizer."""

from __future__ import annotations

import array
import os
import pathlib
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vmown._arena import Arena
from vmown._build import NATIVE, compile_program
from vmown._channel import _HEADER_OFFSETS, Channel
from vmown._errors import ChannelBrokenError, ChannelClosed, ChannelError, VmownError
from vmown._native import lib

from .support import Ticker, fork, reap, run_c, run_threads

CHANNEL_TEST = NATIVE / "tests" / "channel_test.c"

# ---- helpers ----


def wait_stopped(pid: int, timeout: float = 30.0) -> None:
    """Wait (bounded) until a child stopped itself with SIGSTOP."""
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG | os.WUNTRACED)
        if done:
            assert os.WIFSTOPPED(status), f"child ended instead of stopping: {status}"
            return
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise AssertionError(f"child {pid} did not stop within {timeout} s")
        time.sleep(0.002)


def kill(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)


@pytest.fixture
def arena() -> Iterator[Arena]:
    with Arena.anonymous(1 << 20) as arena:
        yield arena


@pytest.fixture
def debug_stop() -> Iterator[Callable[[int], None]]:
    """Set a channel debug stop point in a child; always off again in this process."""
    try:
        yield lib.vmown_channel_debug_set_stop
    finally:
        lib.vmown_channel_debug_set_stop(lib.VMOWN_CHANNEL_STOP_NONE)


# ---- parent and children ----


def test_fork_child_exchanges_bytes_and_pickled_objects(arena: Arena) -> None:
    to_child = Channel.create(arena, 4096, max_message=1024)
    to_parent = Channel.create(arena, 1 << 16)
    nested = {
        "name": "vmown",
        "values": [1, 2.5, None, (3, "four")],
        "nested": {"set": {1, 2}, "bytes": b"\0\xff"},
    }

    def child() -> None:
        for _ in range(100):
            to_parent.send(to_child.recv().upper())
        obj = to_child.recv_obj()
        obj["seen_by"] = os.getpid()
        to_parent.send_obj(obj)
        to_parent.send_obj([obj, list(range(5000))])

    pid = fork(child)
    for i in range(100):
        to_child.send(f"message {i}".encode())
        assert to_parent.recv(timeout=30) == f"MESSAGE {i}".encode()
    to_child.send_obj(nested)
    echoed = to_parent.recv_obj(timeout=30)
    assert echoed.pop("seen_by") == pid and echoed == nested
    big = to_parent.recv_obj(timeout=30)
    assert big[1] == list(range(5000)) and big[0]["values"] == nested["values"]
    reap(pid)
    assert len(to_child) == 0 and len(to_parent) == 0


def test_a_second_process_opens_the_channel_by_path(tmp_path: pathlib.Path) -> None:
    with Arena.create(tmp_path / "commands.arena", 1 << 20) as arena:
        commands = Channel.create(arena, 1 << 16)
        replies = Channel.create(arena, 1 << 16)
        code = textwrap.dedent(
            """
            import sys
            from vmown._arena import Arena
            from vmown._channel import _HEADER_OFFSETS, Channel
            arena = Arena.open(sys.argv[1])
            commands = Channel.open(arena, int(sys.argv[2]))
            replies = Channel.open(arena, int(sys.argv[3]))
            for command in commands:                  # until closed and drained
                if command.startswith(b"add "):
                    a, b = map(int, command[4:].split())
                    replies.send(str(a + b).encode())
                elif command == b"buffer":
                    replies.send(bytes(range(256)) * 64)
                elif command == b"object":
                    replies.send_obj({"pid": __import__("os").getpid(), "list": [1, [2, [3]]]})
            replies.send(b"bye")
            """
        )
        child = subprocess.Popen(
            [sys.executable, "-c", code, str(arena.path), str(commands.offset), str(replies.offset)]
        )
        try:
            for a in range(50):
                commands.send(f"add {a} {a * a}".encode())
                assert replies.recv(timeout=60) == str(a + a * a).encode()
            commands.send(b"buffer")
            assert replies.recv(timeout=60) == bytes(range(256)) * 64
            commands.send(b"object")
            obj = replies.recv_obj(timeout=60)
            assert obj == {"pid": child.pid, "list": [1, [2, [3]]]}
            commands.close()
            assert replies.recv(timeout=60) == b"bye"
            assert child.wait(timeout=60) == 0
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
            arena.unlink()


def test_open_refuses_what_is_not_a_channel(arena: Arena) -> None:
    channel = Channel.create(arena, 4096)
    with pytest.raises(ValueError, match="offset"):
        Channel.open(arena, channel.offset + 8)
    with pytest.raises(ValueError, match="offset"):
        Channel.open(arena, arena.size)
    other = arena.alloc(4096)
    with pytest.raises(ChannelError, match="no channel here yet"):
        Channel.open(arena, other)  # zeroed pages
    arena.buffer[other : other + 8] = b"garbage!"
    with pytest.raises(ChannelError, match="bad magic"):
        Channel.open(arena, other)
    reopened = Channel.open(arena, channel.offset)
    assert (reopened.capacity, reopened.max_message) == (channel.capacity, channel.max_message)


def test_create_checks_its_arguments(arena: Arena) -> None:
    channel = Channel.create(arena, 1000)
    assert channel.capacity == 1024 and channel.max_message == 1016
    assert Channel.create(arena, 1).capacity == 64
    with pytest.raises(ValueError, match="max_message"):
        Channel.create(arena, 1024, max_message=1024)
    with pytest.raises(ValueError, match="capacity"):
        Channel.create(arena, 0)
    with pytest.raises(ValueError, match="capacity"):
        Channel.create(arena, 1 << 41)
    with pytest.raises(TypeError):
        Channel()


# ---- order, capacity, timeouts ----


def test_fifo_per_sender_across_processes(arena: Arena) -> None:
    channel = Channel.create(arena, 1024, max_message=64)
    senders, count = 3, 2000

    def sender(sid: int) -> Callable[[], None]:
        return lambda: [channel.send(b"%d %d" % (sid, seq)) for seq in range(count)]

    pids = [fork(sender(sid)) for sid in range(senders)]
    last = [-1] * senders
    for _ in range(senders * count):
        sid, seq = map(int, channel.recv(timeout=60).split())
        assert seq == last[sid] + 1, f"sender {sid}: {seq} after {last[sid]}"
        last[sid] = seq
    for pid in pids:
        reap(pid)
    assert last == [count - 1] * senders
    with pytest.raises(TimeoutError):
        channel.recv(timeout=0)


def test_send_blocks_when_full_and_times_out(arena: Arena) -> None:
    channel = Channel.create(arena, 64, max_message=24)  # two records of 32 bytes
    channel.send(b"a" * 24)
    channel.send(b"b" * 24)
    with pytest.raises(TimeoutError, match="full"):
        channel.send(b"c", timeout=0)
    start = time.monotonic()
    with pytest.raises(TimeoutError):
        channel.send(b"c", timeout=0.05)
    assert time.monotonic() - start >= 0.04
    assert channel.recv() == b"a" * 24
    channel.send(b"c", timeout=0)  # room again
    # A blocked sender proceeds when a receiver makes room.
    done = threading.Event()

    def blocked_sender() -> None:
        channel.send(b"d" * 24, timeout=30)
        done.set()

    thread = threading.Thread(target=blocked_sender)
    thread.start()
    time.sleep(0.05)
    assert not done.is_set()
    assert channel.recv() == b"b" * 24
    thread.join(30)
    assert done.is_set()
    assert [channel.recv(), channel.recv()] == [b"c", b"d" * 24]


def test_recv_times_out(arena: Arena) -> None:
    channel = Channel.create(arena, 4096)
    with pytest.raises(TimeoutError, match="no message"):
        channel.recv(timeout=0)
    start = time.monotonic()
    with pytest.raises(TimeoutError):
        channel.recv(timeout=0.05)
    assert time.monotonic() - start >= 0.04
    with pytest.raises(ValueError, match="timeout"):
        channel.recv(timeout=-1)


def test_max_message_violations(arena: Arena) -> None:
    channel = Channel.create(arena, 4096, max_message=100)
    channel.send(b"x" * 100)
    with pytest.raises(ValueError, match="101 bytes, more than the channel's max_message"):
        channel.send(b"x" * 101)
    with pytest.raises(ValueError, match="max_message"):
        channel.send(bytearray(200), timeout=1)
    with pytest.raises(ValueError, match="pickled list"):
        channel.send_obj(list(range(1000)))
    assert channel.recv() == b"x" * 100 and len(channel) == 0
    channel.send(b"y" * 50)
    small = bytearray(10)
    with pytest.raises(ValueError, match="50 bytes, the buffer only 10"):
        channel.recv_into(small)
    big = bytearray(100)
    assert channel.recv_into(big) == 50 and bytes(big[:50]) == b"y" * 50


def test_send_takes_bytes_like_and_refuses_str(arena: Arena) -> None:
    channel = Channel.create(arena, 4096)
    channel.send(bytearray(b"bytearray"))
    channel.send(memoryview(b"xxmemoryviewxx")[2:-2])
    channel.send(array.array("i", [1, 2]))
    channel.send(b"")
    assert channel.recv() == b"bytearray"
    assert channel.recv() == b"memoryview"
    assert channel.recv() == array.array("i", [1, 2]).tobytes()
    assert channel.recv() == b""
    with pytest.raises(TypeError, match="encode"):
        channel.send("text")
    with pytest.raises(TypeError, match="bytes-like"):
        channel.send(12)


def test_large_messages_grow_the_receiving_port(arena: Arena) -> None:
    with Arena.anonymous(4 << 20) as big_arena:
        channel = Channel.create(big_arena, 1 << 21)
        for size in (10, 100_000, 1_500_000, 70_000):
            payload = os.urandom(size)
            channel.send(payload)
            assert channel.recv() == payload


def test_stats_len_and_detach(arena: Arena) -> None:
    channel = Channel.create(arena, 4096, max_message=100)
    for i in range(3):
        channel.send(b"m%d" % i)
    stats = channel.stats()
    assert (stats["messages"], stats["sent"], stats["received"], stats["used"]) == (3, 3, 0, 48)
    assert len(channel) == 3 and not channel.closed and "messages=3" in repr(channel)
    other = Channel.open(arena, channel.offset)
    assert other.recv() == b"m0"
    other.detach()
    other.detach()
    with pytest.raises(ValueError, match="detached"):
        other.recv()
    with pytest.raises(ValueError, match="detached"):
        other.send(b"x")
    assert channel.recv() == b"m1" and len(channel) == 1  # still open for everyone else
    channel.spin_ns = 0
    assert channel.spin_ns == 0


def test_threads_of_one_process_share_a_channel(arena: Arena) -> None:
    channel = Channel.create(arena, 512, max_message=32)
    got: list[list[bytes]] = [[] for _ in range(3)]

    def body(i: int) -> None:
        if i < 3:
            for seq in range(1000):
                channel.send(b"%d %d" % (i, seq), timeout=60)
        else:
            while True:
                try:
                    got[i - 3].append(channel.recv(timeout=60))
                except ChannelClosed:
                    return

    receivers = threading.Thread(target=run_threads, args=(lambda i: body(i + 3), 3))
    receivers.start()
    run_threads(body, 3)
    channel.close()
    receivers.join(60)
    assert not receivers.is_alive()
    everything = sorted(m for part in got for m in part)
    assert everything == sorted(b"%d %d" % (i, seq) for i in range(3) for seq in range(1000))
    for part in got:  # each receiver saw each sender's messages in order
        for sid in range(3):
            seqs = [int(m.split()[1]) for m in part if m.startswith(b"%d " % sid)]
            assert seqs == sorted(seqs)


# ---- close ----


def test_close_drains_then_ends(arena: Arena) -> None:
    channel = Channel.create(arena, 4096)
    for i in range(3):
        channel.send(b"%d" % i)
    with channel:
        pass  # closes
    assert channel.closed
    with pytest.raises(ChannelClosed, match="closed"):
        channel.send(b"late")
    assert list(channel) == [b"0", b"1", b"2"]
    with pytest.raises(ChannelClosed, match="drained"):
        channel.recv(timeout=0)
    channel.close()  # twice: harmless


def test_close_wakes_a_blocked_receiver_and_a_blocked_sender(arena: Arena) -> None:
    inbox = Channel.create(arena, 4096)
    full = Channel.create(arena, 64, max_message=56)
    full.send(b"f" * 56)
    outcome: dict[str, BaseException | None] = {}

    def wait(name: str, call: Callable[[], object]) -> None:
        try:
            call()
            outcome[name] = None
        except BaseException as exc:  # noqa: BLE001 - checked below
            outcome[name] = exc

    threads = [
        threading.Thread(target=wait, args=("recv", inbox.recv)),
        threading.Thread(target=wait, args=("send", lambda: full.send(b"x"))),
    ]
    for t in threads:
        t.start()
    time.sleep(0.1)  # let them block (asleep, past their spin)
    assert not outcome
    inbox.close()
    full.close()
    for t in threads:
        t.join(30)
    assert isinstance(outcome["recv"], ChannelClosed)
    assert isinstance(outcome["send"], ChannelClosed)
    assert full.recv() == b"f" * 56  # what was in it is still received


def test_close_wakes_a_receiver_in_another_process(arena: Arena) -> None:
    channel = Channel.create(arena, 4096)
    ready = Channel.create(arena, 4096)

    def child() -> None:
        ready.send(b"ready")
        try:
            channel.recv()
        except ChannelClosed:
            return
        raise AssertionError("recv returned on a closed, empty channel")

    pid = fork(child)
    assert ready.recv(timeout=30) == b"ready"
    time.sleep(0.05)
    channel.close()
    reap(pid)


def test_a_signal_interrupts_a_blocked_recv(arena: Arena) -> None:
    # The signals come 0.1 s into the wait: a multiple of the 50 ms slice, so
    # they often land between two sleeps, where no futex call is there to be
    # interrupted (the slice's VMOWN_EINTR return is what delivers them).
    channel = Channel.create(arena, 4096)
    main = threading.main_thread().ident

    class Interrupted(Exception):
        pass

    def interrupt(signum: int, frame: object) -> None:
        raise Interrupted

    def signal_main_thread_later() -> threading.Timer:
        timer = threading.Timer(0.1, signal.pthread_kill, args=(main, signal.SIGUSR1))
        timer.start()
        return timer

    old = signal.signal(signal.SIGUSR1, interrupt)
    try:
        timer = signal_main_thread_later()
        with pytest.raises(Interrupted):
            channel.recv()  # asleep in C: the signal ends the wait, the handler raises
        timer.join()
        # A handler that returns: the wait goes on and gets the message.
        signal.signal(signal.SIGUSR1, lambda *args: None)
        timer = signal_main_thread_later()
        sender = threading.Timer(0.3, channel.send, args=(b"after the signal",))
        sender.start()
        assert channel.recv(timeout=30) == b"after the signal"
        timer.join()
        sender.join()
    finally:
        signal.signal(signal.SIGUSR1, old)


# ---- many senders and receivers ----


def _many_to_many(arena: Arena, senders: int, receivers: int, count: int, capacity: int) -> None:
    channel = Channel.create(arena, capacity, max_message=64)
    results = Channel.create(arena, 1 << 16)

    def sender(sid: int) -> Callable[[], None]:
        def body() -> None:
            for seq in range(count):
                channel.send(b"%d %d" % (sid, seq))

        return body

    def receiver() -> None:
        last = [-1] * senders
        got = 0
        for message in channel:
            sid, seq = map(int, message.split())
            assert seq > last[sid], "a sender's messages out of order"
            last[sid] = seq
            got += 1
        results.send_obj((os.getpid(), got, sum(1 for x in last if x >= 0)))

    receiver_pids = [fork(receiver) for _ in range(receivers)]
    sender_pids = [fork(sender(sid)) for sid in range(senders)]
    for pid in sender_pids:
        reap(pid, timeout=300)
    channel.close()
    totals = [results.recv_obj(timeout=120) for _ in range(receivers)]
    for pid in receiver_pids:
        reap(pid)
    stats = channel.stats()
    assert sum(got for _, got, _ in totals) == senders * count == stats["received"] == stats["sent"]
    assert stats["messages"] == 0 and stats["used"] == 0


def test_several_senders_and_receivers_across_processes(arena: Arena) -> None:
    """Exact counts: no loss, no duplicates (FIFO per sender is checked in each receiver)."""
    _many_to_many(arena, senders=3, receivers=3, count=3000, capacity=1024)


@pytest.mark.slow
def test_several_senders_and_receivers_long(arena: Arena) -> None:
    _many_to_many(arena, senders=6, receivers=4, count=100_000, capacity=512)


# ---- dead peers ----


def test_a_sender_killed_mid_send_does_not_wedge_the_others(
    arena: Arena, debug_stop: Callable[[int], None]
) -> None:
    channel = Channel.create(arena, 4096)
    channel.send(b"before")

    def child() -> None:
        debug_stop(lib.VMOWN_CHANNEL_STOP_IN_SEND)
        channel.send(b"half-written, never published")

    pid = fork(child)
    wait_stopped(pid)  # stopped holding the send lock, its record half written
    assert channel.stats()["send_holder"] == pid
    kill(pid)
    start = time.monotonic()
    channel.send(b"after", timeout=30)  # takes the dead sender's lock over
    assert time.monotonic() - start < 10
    assert channel.stats()["takeovers"] == 1
    assert [channel.recv(timeout=0), channel.recv(timeout=0)] == [b"before", b"after"]
    with pytest.raises(TimeoutError):
        channel.recv(timeout=0)  # the dead sender's message was discarded


def test_a_receiver_killed_mid_recv_leaves_the_message_to_the_others(
    arena: Arena, debug_stop: Callable[[int], None]
) -> None:
    channel = Channel.create(arena, 4096)
    channel.send(b"first")
    channel.send(b"second")

    def child() -> None:
        debug_stop(lib.VMOWN_CHANNEL_STOP_IN_RECV)
        channel.recv()

    pid = fork(child)
    wait_stopped(pid)  # copied "first" out, holding the recv lock, not consumed
    assert channel.stats()["recv_holder"] == pid
    kill(pid)
    assert channel.recv(timeout=30) == b"first"  # redelivered
    assert channel.recv(timeout=0) == b"second"
    assert channel.stats()["takeovers"] == 1


def test_peers_killed_while_blocked_do_not_wedge_the_survivor(arena: Arena) -> None:
    inbox = Channel.create(arena, 4096)
    full = Channel.create(arena, 64, max_message=56)
    full.send(b"f" * 56)
    ready = Channel.create(arena, 4096)

    def blocked_receiver() -> None:
        ready.send(b"r")
        inbox.recv()

    def blocked_sender() -> None:
        ready.send(b"s")
        full.send(b"never")

    pids = [fork(blocked_receiver), fork(blocked_sender)]
    assert sorted([ready.recv(timeout=30), ready.recv(timeout=30)]) == [b"r", b"s"]
    time.sleep(0.1)  # both asleep in the kernel
    for pid in pids:
        kill(pid)
    inbox.send(b"to the survivor")
    assert inbox.recv(timeout=30) == b"to the survivor"
    assert full.recv(timeout=30) == b"f" * 56
    full.send(b"room again", timeout=30)
    assert full.recv(timeout=30) == b"room again"


# ---- corrupt memory ----


@pytest.fixture(scope="module")
def fuzz_arena() -> Iterator[Arena]:
    with Arena.anonymous(1 << 16) as arena:
        yield arena


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    edits=st.lists(st.tuples(st.integers(0, 640 - 1), st.binary(min_size=1, max_size=16)), max_size=6),
    words=st.lists(
        st.tuples(st.sampled_from(sorted(_HEADER_OFFSETS)), st.integers(0, 2**64 - 1)), max_size=4
    ),
)
def test_fuzzed_channel_memory_gives_data_or_a_clear_error(
    fuzz_arena: Arena, edits: list[tuple[int, bytes]], words: list[tuple[str, int]]
) -> None:
    # A fresh channel with some messages in it (wrapped around the ring), then
    # damage to its header and ring: every call must return valid data or a
    # clear error, quickly.  `words` overwrite named fields: the header, the
    # sides (lock holder, seen, count, lock futex), tail, head, the futexes.
    offset = 0
    channel = Channel.create(_FixedArena(fuzz_arena), 128, max_message=40)
    for i in range(5):
        channel.send(b"%d" % i * 7)
        channel.recv()
    channel.send(b"abc")
    channel.send(b"x" * 40)
    view = fuzz_arena.buffer
    for at, chunk in edits:
        view[offset + at : offset + at + len(chunk)] = chunk
    for field, value in words:
        at = _HEADER_OFFSETS[field]
        view[offset + at : offset + at + 8] = value.to_bytes(8, "little")
    del view
    allowed = (VmownError, TimeoutError, ValueError)
    start = time.monotonic()
    try:
        other = Channel.open(fuzz_arena, offset)
    except VmownError:
        other = None
    for handle in filter(None, (channel, other)):
        for _ in range(3):
            try:
                data = handle.recv(timeout=0.002)
                assert isinstance(data, bytes) and len(data) <= handle.max_message
            except allowed:
                pass
            try:
                handle.send(b"new", timeout=0.002)
            except allowed:
                pass
        handle.stats()
        len(handle)
        try:
            handle.close(timeout=0.002)
        except allowed:
            pass
    assert time.monotonic() - start < 10


class _FixedArena:
    """An arena whose alloc() always hands out offset 0 (to reuse one page per example)."""

    def __init__(self, arena: Arena) -> None:
        self._arena = arena

    def alloc(self, nbytes: int) -> int:
        return 0

    @property
    def buffer(self) -> memoryview:
        return self._arena.buffer

    @property
    def size(self) -> int:
        return self._arena.size


def test_a_corrupt_record_marks_the_channel_broken_for_everyone(arena: Arena) -> None:
    channel = Channel.create(arena, 4096, max_message=100)
    other = Channel.open(arena, channel.offset)
    channel.send(b"hello")
    ring = channel.offset + _HEADER_OFFSETS["ring"]
    arena.buffer[ring : ring + 4] = (1000).to_bytes(4, "little")  # length beyond max_message
    with pytest.raises(ChannelBrokenError, match="corrupted"):
        channel.recv(timeout=1)
    with pytest.raises(ChannelBrokenError):
        other.send(b"x", timeout=1)
    assert channel.stats()["broken"] == 1


# ---- the C core under ThreadSanitizer ----


@pytest.fixture(scope="module")
def programs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, pathlib.Path]:
    out = tmp_path_factory.mktemp("channel")
    return {
        "plain": compile_program([CHANNEL_TEST], out / "channel_test", ["-O2", "-Werror"]),
        "tsan": compile_program([CHANNEL_TEST], out / "channel_test_tsan", ["-O1", "-fsanitize=thread"]),
    }


def test_c_stress_4_producers_4_consumers(programs: dict[str, pathlib.Path]) -> None:
    assert "received=80000 " in run_c(programs["plain"], 4, 4, 20_000, 1024, 2000)


def test_c_stress_without_spinning_on_a_tiny_ring(programs: dict[str, pathlib.Path]) -> None:
    assert "received=40000 " in run_c(programs["plain"], 8, 2, 5_000, 256, 0)


def test_c_core_under_thread_sanitizer(programs: dict[str, pathlib.Path]) -> None:
    out = run_c(programs["tsan"], 3, 3, 5_000, 512, 2000)
    assert "received=15000 " in out
    done, made = map(int, re.search(r"tries=(\d+)/(\d+)", out).groups())
    assert 0 < done <= made  # the one-attempt calls (vmown._channel_ext's) ran, and moved messages


@pytest.mark.slow
def test_c_core_under_thread_sanitizer_long(programs: dict[str, pathlib.Path]) -> None:
    run_c(programs["tsan"], 8, 8, 20_000, 256, 0)
    run_c(programs["tsan"], 2, 2, 200_000, 4096, 20_000)


# ---- waits inside a vmown.run() ----


def test_a_recv_inside_a_run_gives_the_vm_up_like_a_callout(arena: Arena) -> None:
    """A process waits 100 ms in Channel.recv while a 1 ms ticker runs: the
    ticker keeps ticking (without the callout it stopped for the whole wait)."""
    import vmown

    channel = Channel.create(arena, 4096)

    async def main() -> tuple[int, int, bytes]:
        ticker = Ticker().start()
        await vmown.sleep(0.005)
        with pytest.raises(TimeoutError):
            channel.recv(timeout=0.1)
        during = ticker.ticks
        sender = threading.Timer(0.05, channel.send, (b"late",))
        vmown.callout(sender.start)
        message = channel.recv(timeout=10)
        vmown.callout(sender.join)
        return during, await ticker.stop(), message

    during, ticks, message = vmown.run(main)
    assert message == b"late"
    # 100 ms of 1 ms ticks; a loaded machine may make far fewer, but a VM
    # held for the wait makes one at most.
    assert during >= 10, during
