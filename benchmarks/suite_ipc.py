# Suite `ipc`: moving small messages between two processes, vmown.Channel
# against what Python programs use today.  Every figure comes from this one
# run, side by side, one transport at a time (so no two compete for the
# machine's two cores).
#
# Round trip (p50 of all samples, in us): the parent sends a 16-byte message,
# a forked child echoes it back, the parent times send -> reply received with
# perf_counter_ns; WARMUP round trips first, untimed.
#   channel_rtt_us          two vmown.Channel in an anonymous arena (default
#                           settings: waits spin up to 20 us before sleeping,
#                           and stop spinning while spins keep failing, as
#                           they do when the two processes share a core)
#   pipe_rtt_us             two os.pipe(), os.write / os.read
#   socketpair_rtt_us       a socket.socketpair() (AF_UNIX, stream), send / recv
#   mp_queue_rtt_us         two multiprocessing.Queue (fork context), put / get
#   faster_fifo_rtt_us      two faster_fifo.Queue (PyPI faster-fifo), put / get
#   posix_ipc_sem_rtt_us    two posix_ipc.Semaphore, release / acquire: no
#                           payload, the bare wake-up the kernel gives
#   ownership_pingpong_us   the VM handed back and forth: the parent makes an
#                           Ownership with Ownership.create_in(arena.buffer),
#                           the child attaches with Ownership.attach; each side
#                           loops: wait until the other is queued in own(),
#                           disown() (which hands it the VM and posts its
#                           semaphore), own() (asleep until handed back).  The
#                           figure is the p50 of one parent iteration (two
#                           hand-overs) divided by two: time per hand-over.
#   channel_rtt_p99_us, pipe_rtt_p99_us   the tails, for context.
#   channel_nospin_rtt_us   channel_rtt_us with spin_ns = 0 on both sides:
#                           every wait sleeps on the futex at once, so this is
#                           the cost of the sleeping path (a wake-up per hop)
# A peer package that is missing is reported on stderr and its figure left
# out; the rest of the suite still runs.
#
# One-way streaming (messages per second, the best of ROUNDS rounds: on a
# shared machine noise only ever slows a round down): the parent sends N
# 64-byte messages as fast as it can, the child receives them one by one and
# then acknowledges; the time runs from the first send to the
# acknowledgement, so the ring's drain is included.
#   channel_msgs_per_s      Channel.send / Channel.recv, ring of STREAM_CAPACITY
#   pipe_msgs_per_s         os.write(fd, 64 bytes) / os.read(fd, 64): a pipe
#                           never splits a write of <= PIPE_BUF bytes, and
#                           only whole 64-byte writes are in it, so each read
#                           returns one whole message
#
# From C (benchmarks/c/channel_bench.c, a separate process pair linking the
# core directly, run after the Python figures): c_channel_msgs_per_s and
# c_channel_rtt_us, the same two measurements without Python and cffi: what
# the channel itself costs, to read the Python figures against (there the
# per-call cost of cffi -- argument conversion, releasing and re-taking the
# GIL -- is most of the time).
#
# Derived: pipe_rtt_over_channel_rtt, channel_over_pipe_msgs.  Goals (from
# the project's issue), as booleans: goal_channel_rtt_le_pipe_rtt_over_3 and
# goal_channel_msgs_ge_2x_pipe.

from __future__ import annotations

import gc
import multiprocessing
import os
import pathlib
import signal
import socket
import sys
import time
import traceback
from typing import Any, Callable

import vmown
from vmown._channel import Channel
from vmown._native import lib

from _cbuild import build, run_json
from _measure import percentile

SMALL = b"x" * 16
MESSAGE = b"m" * 64
WARMUP = 500
STREAM_CAPACITY = 1 << 20
# (round trips per transport, streamed messages per round, rounds)
QUICK, FULL = (5_000, 200_000, 3), (20_000, 1_000_000, 5)
C_SOURCE = pathlib.Path(__file__).resolve().parent / "c" / "channel_bench.c"

Child = Callable[[], None]


# ---- processes ----


def _fork(body: Child) -> int:
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            body()
            code = 0
        except BaseException:  # noqa: BLE001 - reported on stderr, exit code says it
            traceback.print_exc()
        finally:
            os._exit(code)
    return pid


def _reap(pid: int, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            if os.waitstatus_to_exitcode(status) != 0:
                raise RuntimeError("a benchmark child failed (its traceback is on stderr)")
            return
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise RuntimeError(f"a benchmark child was still running after {timeout_s} s")
        time.sleep(0.001)


def _round_trips(child: Child, ping: Callable[[], None], samples: int) -> list[float]:
    """Fork the echoing child, time `samples` pings (after WARMUP), in us."""
    pid = _fork(child)
    try:
        for _ in range(WARMUP):
            ping()
        clock = time.perf_counter_ns
        out = []
        gc.disable()
        try:
            for _ in range(samples):
                start = clock()
                ping()
                out.append((clock() - start) / 1000)
        finally:
            gc.enable()
    except BaseException:
        os.kill(pid, signal.SIGKILL)
        raise
    _reap(pid)
    return out


# ---- round trips ----


def _channel_rtt(samples: int, spin_ns: int | None = None) -> list[float]:
    with vmown.Arena.anonymous(1 << 20) as arena:
        there = Channel.create(arena, 1 << 16)
        back = Channel.create(arena, 1 << 16)
        if spin_ns is not None:
            there.spin_ns = back.spin_ns = spin_ns  # handles are per process: the child inherits these
        total = WARMUP + samples

        def child() -> None:
            recv, send = there.recv, back.send
            for _ in range(total):
                send(recv())

        def ping() -> None:
            there.send(SMALL)
            back.recv()

        return _round_trips(child, ping, samples)


def _pipe_rtt(samples: int) -> list[float]:
    there_r, there_w = os.pipe()
    back_r, back_w = os.pipe()
    total = WARMUP + samples
    try:

        def child() -> None:
            read, write = os.read, os.write
            for _ in range(total):
                write(back_w, read(there_r, 16))

        def ping() -> None:
            os.write(there_w, SMALL)
            os.read(back_r, 16)

        return _round_trips(child, ping, samples)
    finally:
        for fd in (there_r, there_w, back_r, back_w):
            os.close(fd)


def _socketpair_rtt(samples: int) -> list[float]:
    mine, theirs = socket.socketpair()
    total = WARMUP + samples
    try:

        def child() -> None:
            recv, send = theirs.recv, theirs.send
            for _ in range(total):
                send(recv(16))

        def ping() -> None:
            mine.send(SMALL)
            mine.recv(16)

        return _round_trips(child, ping, samples)
    finally:
        mine.close()
        theirs.close()


def _mp_queue_rtt(samples: int) -> list[float]:
    context = multiprocessing.get_context("fork")
    there, back = context.Queue(), context.Queue()
    total = WARMUP + samples

    def child() -> None:
        for _ in range(total):
            back.put(there.get())
        back.close()
        back.join_thread()  # flush the feeder thread before os._exit

    def ping() -> None:
        there.put(SMALL)
        back.get()

    try:
        return _round_trips(child, ping, samples)
    finally:
        for queue in (there, back):
            queue.close()
            queue.join_thread()


def _faster_fifo_rtt(samples: int) -> list[float]:
    import faster_fifo

    there, back = faster_fifo.Queue(1 << 16), faster_fifo.Queue(1 << 16)
    total = WARMUP + samples

    def child() -> None:
        for _ in range(total):
            back.put(there.get(timeout=60), timeout=60)

    def ping() -> None:
        there.put(SMALL, timeout=60)
        back.get(timeout=60)

    try:
        return _round_trips(child, ping, samples)
    finally:
        there.close()
        back.close()


def _posix_ipc_sem_rtt(samples: int) -> list[float]:
    import posix_ipc

    prefix = f"/vmown-bench-{os.getpid()}"
    there = posix_ipc.Semaphore(f"{prefix}-a", posix_ipc.O_CREX, initial_value=0)
    back = posix_ipc.Semaphore(f"{prefix}-b", posix_ipc.O_CREX, initial_value=0)
    total = WARMUP + samples
    try:

        def child() -> None:
            for _ in range(total):
                there.acquire(60)
                back.release()

        def ping() -> None:
            there.release()
            back.acquire(60)

        return _round_trips(child, ping, samples)
    finally:
        for semaphore in (there, back):
            semaphore.unlink()
            semaphore.close()


def _await_waiter(vm: Any) -> None:
    """Spin until the other process is queued for the VM (bounded)."""
    waiters = lib.vmown_waiters
    cb = vm._cb
    if waiters(cb):
        return
    deadline = time.monotonic() + 30
    while not waiters(cb):
        if time.monotonic() > deadline:
            raise RuntimeError("the other process never queued for the VM")


def _ownership_pingpong(samples: int) -> list[float]:
    """Per hand-over, in us (one parent iteration is two hand-overs).

    Each side disowns only once the other is queued in own(), so every
    disown is a hand-over (else a side could release and re-own the VM
    before the other had queued: no hand-over, and no ping-pong).
    """
    arena = vmown.Arena.anonymous(vmown.Ownership.size_for(8))
    vm = vmown.Ownership.create_in(arena.buffer, slots=8)
    vm.own()
    total = WARMUP + samples

    def child() -> None:
        theirs = vmown.Ownership.attach(arena.buffer)
        for _ in range(total):
            theirs.own()  # asleep until the parent hands the VM over
            _await_waiter(theirs)  # the parent has queued in its own()
            theirs.disown()  # hands the VM to it

    pid = _fork(child)
    try:
        disown, own, clock = vm.disown, vm.own, time.perf_counter_ns
        out = []
        gc.disable()
        try:
            for i in range(total):
                start = clock()
                _await_waiter(vm)
                disown()
                own()
                if i >= WARMUP:
                    out.append((clock() - start) / 2000)
        finally:
            gc.enable()
    except BaseException:
        os.kill(pid, signal.SIGKILL)
        raise
    _reap(pid)
    if vm.stats()["hand_offs"] < 2 * total:
        raise RuntimeError("the ping-pong did not hand the VM over at every disown")
    vm.close()
    arena.close()
    return out


# ---- one-way streaming ----


def _channel_stream(count: int) -> float:
    with vmown.Arena.anonymous(2 << 20) as arena:
        data = Channel.create(arena, STREAM_CAPACITY, max_message=1024)
        control = Channel.create(arena, 4096)

        def child() -> None:
            control.send(b"ready")
            recv = data.recv
            for _ in range(count):
                recv()
            control.send(b"done")

        pid = _fork(child)
        try:
            control.recv(timeout=60)
            send = data.send
            gc.disable()
            try:
                start = time.perf_counter()
                for _ in range(count):
                    send(MESSAGE)
                control.recv(timeout=120)
                elapsed = time.perf_counter() - start
            finally:
                gc.enable()
        except BaseException:
            os.kill(pid, signal.SIGKILL)
            raise
        _reap(pid)
        return count / elapsed


def _pipe_stream(count: int) -> float:
    data_r, data_w = os.pipe()
    control_r, control_w = os.pipe()

    def child() -> None:
        os.write(control_w, b"r")
        read, fd = os.read, data_r
        for _ in range(count):
            if len(read(fd, 64)) != 64:
                raise RuntimeError("a pipe read returned part of a message")
        os.write(control_w, b"d")

    pid = _fork(child)
    try:
        os.read(control_r, 1)
        write, fd = os.write, data_w
        gc.disable()
        try:
            start = time.perf_counter()
            for _ in range(count):
                write(fd, MESSAGE)
            os.read(control_r, 1)
            elapsed = time.perf_counter() - start
        finally:
            gc.enable()
    except BaseException:
        os.kill(pid, signal.SIGKILL)
        raise
    finally:
        for fd in (data_r, data_w, control_r, control_w):
            os.close(fd)
    _reap(pid)
    return count / elapsed


# ---- the suite ----

_ROUND_TRIPS = {
    "channel_rtt_us": _channel_rtt,
    "pipe_rtt_us": _pipe_rtt,
    "socketpair_rtt_us": _socketpair_rtt,
    "mp_queue_rtt_us": _mp_queue_rtt,
    "faster_fifo_rtt_us": _faster_fifo_rtt,
    "posix_ipc_sem_rtt_us": _posix_ipc_sem_rtt,
    "ownership_pingpong_us": _ownership_pingpong,
}
_OPTIONAL = {"faster_fifo_rtt_us": "faster-fifo", "posix_ipc_sem_rtt_us": "posix_ipc"}


def run(quick: bool) -> dict[str, Any]:
    exe = build("channel_bench", [C_SOURCE])  # first: a compile error fails fast
    samples, count, rounds = QUICK if quick else FULL
    figures: dict[str, Any] = {}
    tails: dict[str, float] = {}
    for name, measure in _ROUND_TRIPS.items():
        try:
            out = measure(samples)
        except ImportError as exc:
            if name not in _OPTIONAL:
                raise
            print(f"ipc: {name} left out: {_OPTIONAL[name]} is not installed ({exc})", file=sys.stderr)
            continue
        figures[name] = percentile(out, 50)
        tails[name] = percentile(out, 99)
    figures["channel_rtt_p99_us"] = tails["channel_rtt_us"]
    figures["pipe_rtt_p99_us"] = tails["pipe_rtt_us"]
    figures["channel_nospin_rtt_us"] = percentile(_channel_rtt(samples, spin_ns=0), 50)
    figures["rtt_samples"] = samples
    # Streaming: the two transports alternate round by round, so that a
    # noisy stretch of the machine hits both alike.
    channel_rates, pipe_rates = [], []
    for _ in range(rounds):
        channel_rates.append(_channel_stream(count))
        pipe_rates.append(_pipe_stream(count))
    figures["channel_msgs_per_s"] = max(channel_rates)
    figures["pipe_msgs_per_s"] = max(pipe_rates)
    figures["stream_messages"] = count
    c = run_json(exe, count, rounds, samples)
    figures["c_channel_msgs_per_s"] = c["c_msgs_per_s"]
    figures["c_channel_rtt_us"] = c["c_rtt_p50_us"]
    rtt_ratio = figures["pipe_rtt_us"] / figures["channel_rtt_us"]
    msgs_ratio = figures["channel_msgs_per_s"] / figures["pipe_msgs_per_s"]
    figures["pipe_rtt_over_channel_rtt"] = rtt_ratio
    figures["channel_over_pipe_msgs"] = msgs_ratio
    figures["goal_channel_rtt_le_pipe_rtt_over_3"] = rtt_ratio >= 3
    figures["goal_channel_msgs_ge_2x_pipe"] = msgs_ratio >= 2
    return figures
