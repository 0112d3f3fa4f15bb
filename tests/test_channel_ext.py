"""vmown._channel_ext: Channel.send / recv in C -- the one-attempt fast path, the hand-over to the
Python slow path (waits, errors, arguments), and one copy of the core in the process."""

from __future__ import annotations

import array
import math
import os
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from vmown import _channel_ext
from vmown._arena import Arena
from vmown._channel import Channel
from vmown._channel_ext import ChannelBase
from vmown._errors import ChannelBrokenError, ChannelClosed
from vmown._native import ffi, lib

from .support import fork, reap


@pytest.fixture
def arena() -> Iterator[Arena]:
    with Arena.anonymous(4 << 20) as arena:
        yield arena


@pytest.fixture
def slow_calls(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Count the calls of the Python slow paths (the C methods look them up on the type)."""
    calls = {"send": 0, "recv": 0}
    send_slow, recv_slow = Channel._send_slow, Channel._recv_slow

    def counting_send(self: Channel, data: Any, timeout: float | None) -> None:
        calls["send"] += 1
        return send_slow(self, data, timeout)

    def counting_recv(self: Channel, timeout: float | None) -> bytes:
        calls["recv"] += 1
        return recv_slow(self, timeout)

    monkeypatch.setattr(Channel, "_send_slow", counting_send)
    monkeypatch.setattr(Channel, "_recv_slow", counting_recv)
    return calls


def fill(channel: Channel, message: bytes) -> int:
    """Send ``message`` until the ring is full; returns how many went in."""
    sent = 0
    while True:
        try:
            channel.send(message, timeout=0)
        except TimeoutError:
            return sent
        sent += 1


# ---- the fast path ----


def test_send_and_recv_are_the_c_methods() -> None:
    assert Channel.send is ChannelBase.__dict__["send"]
    assert Channel.recv is ChannelBase.__dict__["recv"]
    assert type(Channel.send).__name__ == "method_descriptor"
    assert "timeout" in Channel.send.__doc__ and "timeout" in Channel.recv.__doc__


def test_room_and_messages_take_the_fast_path(arena: Arena, slow_calls: dict[str, int]) -> None:
    channel = Channel.create(arena, 4096, max_message=1024)
    sent = [
        b"bytes",
        b"",
        bytearray(b"bytearray"),
        memoryview(b"xxmemoryviewxx")[2:-2],
        array.array("i", [1, 2, 3]),
        b"m" * 1024,
    ]
    for data in sent:
        channel.send(data)
    channel.send(b"with a timeout", timeout=5)
    channel.send(b"with a float timeout", 0.5)
    channel.send(data=b"by keyword", timeout=None)
    assert slow_calls == {"send": 0, "recv": 0}
    got = [channel.recv() for _ in sent]
    assert got == [bytes(data) for data in sent]
    assert all(type(message) is bytes for message in got)
    assert channel.recv(timeout=0) == b"with a timeout"
    assert channel.recv(5) == b"with a float timeout"
    assert channel.recv(timeout=None) == b"by keyword"
    assert slow_calls == {"send": 0, "recv": 0}
    stats = channel.stats()
    assert (stats["sent"], stats["received"], stats["messages"]) == (9, 9, 0)


def test_a_full_ring_and_an_empty_one_take_the_slow_path(arena: Arena, slow_calls: dict[str, int]) -> None:
    channel = Channel.create(arena, 256, max_message=56)  # four records of 64 bytes
    assert fill(channel, b"f" * 56) == 4
    assert slow_calls["send"] == 1  # the fifth: full, so the slow path said TimeoutError
    with pytest.raises(TimeoutError, match="full"):
        channel.send(b"x", timeout=0.01)
    assert slow_calls["send"] == 2
    # A sender blocked in the slow path proceeds when a (fast) recv makes room.
    done = threading.Event()

    def blocked_sender() -> None:
        channel.send(b"after the wait")
        done.set()

    thread = threading.Thread(target=blocked_sender)
    thread.start()
    time.sleep(0.05)
    assert not done.is_set()
    assert channel.recv() == b"f" * 56
    thread.join(30)
    assert done.is_set() and slow_calls["send"] == 3
    assert [channel.recv() for _ in range(4)] == [b"f" * 56] * 3 + [b"after the wait"]
    assert slow_calls["recv"] == 0
    with pytest.raises(TimeoutError, match="no message"):
        channel.recv(timeout=0)  # empty: the slow path says so
    assert slow_calls["recv"] == 1
    # A receiver blocked in the slow path gets what a (fast) send publishes.
    timer = threading.Timer(0.05, channel.send, args=(b"late",))
    timer.start()
    assert channel.recv(timeout=30) == b"late"
    timer.join()
    assert slow_calls == {"send": 3, "recv": 2}


def test_messages_over_64_kib_are_copied_by_the_slow_path(arena: Arena, slow_calls: dict[str, int]) -> None:
    channel = Channel.create(arena, 1 << 20)
    small, big = os.urandom(1 << 16), os.urandom((1 << 16) + 1)
    channel.send(small)
    assert slow_calls["send"] == 0
    channel.send(big)
    assert slow_calls["send"] == 1
    assert channel.recv() == small
    assert slow_calls["recv"] == 0
    assert channel.recv() == big  # longer than the fast path's buffer: the slow path's port grows
    assert slow_calls["recv"] == 1
    channel.send(b"small again")
    assert channel.recv() == b"small again" and slow_calls == {"send": 1, "recv": 1}


def test_fifo_across_both_paths_and_processes(arena: Arena) -> None:
    # A small ring: the child's sends keep alternating between the fast path
    # (room) and the slow one (full, asleep), the parent's receives likewise.
    channel = Channel.create(arena, 512, max_message=32)
    count = 20_000

    def child() -> None:
        for seq in range(count):
            channel.send(b"%d" % seq)

    pid = fork(child)
    for seq in range(count):
        assert channel.recv(timeout=60) == b"%d" % seq
    reap(pid)
    stats = channel.stats()
    assert stats["sent"] == stats["received"] == count


def test_threads_share_the_fast_receive_buffer(arena: Arena) -> None:
    channel = Channel.create(arena, 1024, max_message=64)
    per_thread, threads = 5000, 4
    got: list[list[bytes]] = [[] for _ in range(threads)]

    def receiver(i: int) -> None:
        for _ in range(per_thread):
            got[i].append(channel.recv(timeout=60))

    workers = [threading.Thread(target=receiver, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    sent = [b"message %06d" % seq + b"." * (seq % 40) for seq in range(per_thread * threads)]
    for message in sent:
        channel.send(message)
    for w in workers:
        w.join(60)
    assert not any(w.is_alive() for w in workers)
    assert sorted(m for part in got for m in part) == sent
    for part in got:
        assert part == sorted(part)  # FIFO as each receiver saw it


# ---- errors: the same exceptions from either path ----


def test_bad_data_raises_type_error(arena: Arena) -> None:
    channel = Channel.create(arena, 4096)
    with pytest.raises(TypeError, match="encode"):
        channel.send("text")
    for data in (12, None, object(), [1, 2]):
        with pytest.raises(TypeError, match="bytes-like"):
            channel.send(data)
    with pytest.raises(BufferError):  # as before the fast path: ffi.from_buffer's refusal
        channel.send(memoryview(b"abcdef")[::2])
    assert len(channel) == 0


def test_too_long_closed_detached_and_broken(arena: Arena, slow_calls: dict[str, int]) -> None:
    channel = Channel.create(arena, 4096, max_message=100)
    with pytest.raises(ValueError, match="101 bytes, more than the channel's max_message"):
        channel.send(b"x" * 101)
    with pytest.raises(ValueError, match="101 bytes, more than the channel's max_message"):
        channel.send(bytearray(101))
    channel.send(b"last")
    channel.close()
    with pytest.raises(ChannelClosed, match="closed"):
        channel.send(b"late")
    assert channel.recv() == b"last"
    with pytest.raises(ChannelClosed, match="drained"):
        channel.recv()
    other = Channel.open(arena, Channel.create(arena, 4096).offset)
    other.send(b"kept")
    other.detach()
    with pytest.raises(ValueError, match="detached"):
        other.send(b"x")
    with pytest.raises(ValueError, match="detached"):
        other.recv()
    broken = Channel.create(arena, 4096, max_message=100)
    broken.send(b"hello")
    ring = broken.offset + 448
    arena.buffer[ring : ring + 4] = (1000).to_bytes(4, "little")  # a length beyond max_message
    with pytest.raises(ChannelBrokenError):
        broken.recv()
    with pytest.raises(ChannelBrokenError):
        broken.send(b"x")
    assert slow_calls["send"] >= 5 and slow_calls["recv"] >= 3  # every error went through them


def test_arguments_are_checked_as_before(arena: Arena) -> None:
    channel = Channel.create(arena, 4096)
    channel.send(b"waiting")
    for bad in (-1, -0.5, True, math.nan, "1", [1]):
        with pytest.raises(ValueError, match="timeout must be a number of seconds >= 0"):
            channel.send(b"x", timeout=bad)
        with pytest.raises(ValueError, match="timeout must be a number of seconds >= 0"):
            channel.recv(timeout=bad)  # a message is there, and still refused
    assert channel.recv(timeout=0) == b"waiting" and len(channel) == 0
    channel.send(b"forever", timeout=math.inf)  # no limit, as None
    assert channel.recv(timeout=math.inf) == b"forever"
    with pytest.raises(TypeError, match="missing required argument 'data'"):
        channel.send()
    with pytest.raises(TypeError, match="missing required argument 'data'"):
        channel.send(timeout=1)
    with pytest.raises(TypeError, match="at most 2 arguments"):
        channel.send(b"x", 1, 2)
    with pytest.raises(TypeError, match="unexpected keyword argument 'wait'"):
        channel.send(b"x", wait=1)
    with pytest.raises(TypeError, match="multiple values for argument 'data'"):
        channel.send(b"x", data=b"y")
    with pytest.raises(TypeError, match="at most 1 argument"):
        channel.recv(1, 2)
    with pytest.raises(TypeError, match="unexpected keyword argument 'wait'"):
        channel.recv(wait=1)
    assert len(channel) == 0


# ---- one copy of the core ----


def test_the_fast_path_runs_the_one_core_of_vmown_native(arena: Arena) -> None:
    # A debug stop set through vmown._native stops a fast-path send: the
    # extension calls that module's code, not a copy of its own.
    channel = Channel.create(arena, 4096)
    channel.send(b"before")

    def child() -> None:
        lib.vmown_channel_debug_set_stop(lib.VMOWN_CHANNEL_STOP_IN_SEND)
        channel.send(b"never published")  # room: the fast path

    pid = fork(child)
    deadline = time.monotonic() + 30
    while True:
        done, status = os.waitpid(pid, os.WNOHANG | os.WUNTRACED)
        if done:
            assert os.WIFSTOPPED(status), f"the child ended instead of stopping: {status}"
            break
        assert time.monotonic() < deadline, "the fast-path send never reached the core's stop point"
        time.sleep(0.002)
    assert channel.stats()["send_holder"] == pid
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    channel.send(b"after", timeout=30)  # the slow path takes the dead sender's lock over
    assert channel.stats()["takeovers"] == 1
    assert [channel.recv(), channel.recv()] == [b"before", b"after"]


def test_bind_refuses_a_table_of_another_version() -> None:
    table = ffi.new("vmown_channel_table *", {"version": lib.VMOWN_CHANNEL_API_VERSION + 1})
    with pytest.raises(ImportError, match="different builds"):
        _channel_ext.bind(int(ffi.cast("uintptr_t", table)))
    with pytest.raises(ImportError):
        _channel_ext.bind(0)
    with Arena.anonymous(1 << 16) as arena:  # the real table is still the one in use
        channel = Channel.create(arena, 4096)
        channel.send(b"still bound")
        assert channel.recv() == b"still bound"
