# Suite `aio`: vmown.aio.EventLoop (an asyncio event loop whose thread owns a
# VM) against asyncio's default loop and uvloop, on asyncio code as its users
# write it.  Three questions: does calling C inline pay off on a loop
# (mixed), does the loop serve sockets as fast as the default one (echo), and
# what does owning a VM add to the loop's own work (call_soon, task steps).
#
# mixed: the workload of suite `mixed` (its plan: the same tasks, calls and
# slow positions, benchmarks/suite_mixed.py make_plan), written in asyncio:
# a task per row of the plan, all gathered, each making its calls in order;
# a call is spin_us(2) or, at 2% of the positions, block_us(20000) (the C
# functions of benchmarks/_cfuncs.py).
#   vmown_loop_s     on EventLoop, every call inline through vmown.threaded
#                    (vmown.threaded(lib.spin_us), vmown.threaded(lib.block_us)):
#                    a callout made from the loop's thread
#   vmown_loop_wrappers_s  the same through the generated wrappers
#                    (spin_us_threaded, block_us_threaded of
#                    vmown.threaded_wrappers), as suite mixed's vmown_s: a
#                    wrapper's callout goes out lazily (the owner word kept,
#                    revoked by the heartbeat if it stays out a tick while
#                    somebody needs the VM; native/grants.c), vmown.threaded's
#                    eagerly (the VM released at once: a thread coming back
#                    from a blocked call takes it with its CAS in the middle of
#                    the owner's short calls)
#   asyncio_thread_s the default loop, every call through asyncio.to_thread
#                    (the default executor: min(32, cores + 4) threads)
#   asyncio_inline_s the default loop, every call a plain call on the loop's
#                    thread: the slow calls slept end to end, run once (as
#                    trio_inline_s of suite mixed: 16 s in the full run,
#                    noise is a small part of it)
#   critical_path_s  the slow calls of the task that has the most of them,
#                    end to end: no contender can finish sooner
#   fifo_bound_s     no loop that starts the tasks in order (asyncio's ready
#                    queue) can finish sooner: a task starts after the spin
#                    calls that the tasks gathered before it make before
#                    their first slow call, which hold the one VM in turn
#                    (suite_mixed.fifo_bound_s; 0.293 s in the full run,
#                    task 126: 6,161 spin calls ahead, then 14 slow calls)
#   asyncio_thread_over_fifo_bound  the ratio to asyncio_thread_s that even
#                    a free interpreter would reach: below 10, the 10 x goal
#                    cannot be met in that run
#   vmown_over_fifo_bound  vmown_loop_s over that bound: what the loop costs
#                    over the plan's own limit
#   spin_call_us     one short call made inline by a task on EventLoop
#                    (SPIN_CALLS of them, nobody else on the loop): 2 us in C
#                    plus the call's and the task loop's own cost
#   model_moves, model_free_moves_s, model_move_us, model_move_us_for_goal
#                    suite_mixed.model_s: the plan run on one VM in a model
#                    whose only costs are spin_call_us per short call and a
#                    fixed cost per *move* (the VM passing to the thread of
#                    the next step: a task's first step, or its return from a
#                    slow call; model_moves of them), the loop's order of
#                    steps (a return first).  model_free_moves_s: with free
#                    moves.  model_move_us: the cost of a move at which the
#                    model takes vmown_loop_s, what a move costs this loop in
#                    this run.  model_move_us_for_goal: the cost at which it
#                    takes asyncio_thread_s / 10, what the 10 x goal asks a
#                    move to cost (0: not even free moves meet it)
# Each is the wall time from before the gather to after it, inside the run
# (the loop's start-up and shutdown not counted), gc off; the MINIMUM over
# the rounds of MIXED_FULL, the contenders taking turns.  Until a blocking callout hands
# the loop to another thread (docs/design-log.md, "asyncio loop"), an inline
# call stalls EventLoop as a plain call stalls the default loop, and
# vmown_loop_s is about asyncio_inline_s.
#
# echo: the asyncio streams echo server of suite `net`
# (benchmarks/net_servers.py: asyncio.start_server, reader.read /
# writer.write + drain) in a process of its own on each loop -- "aio" runs it
# with vmown.aio.run, "asyncio" with asyncio.run, "uvloop" with uvloop.run --
# against suite net's C client (benchmarks/c/net_client.c: one thread, epoll)
# with ECHO_CONNECTIONS connections, each a closed loop of ECHO_BYTES messages
# over loopback.  The three servers start once and stay up (a first client
# run against each warms it up, uncounted); a round is one client run
# against each (warm-up, then the measured seconds), the loops
# taking turns and the order rotating from round to round, so that a burst of
# load on a shared machine hits them alike.  Many short rounds and medians:
# on a loaded machine a round's figure swings by 2x, and a median of paired
# rounds says more than a best of few.  The client leaves with its
# connections open; the asyncio server logs each reset (to a file, not a
# pipe that would fill), and ECHO_SETTLE_S after every run lets it finish
# before the next one is measured.
#   echo_rps_vmown, echo_rps_default, echo_rps_uvloop
#                    requests (echoed messages) per second, the MEDIAN over
#                    the rounds
#   echo_p99_us_*    the median over the rounds of each round's p99 latency
#   echo_cpu_us_*    the median over the rounds of the server's CPU time per
#                    request (user + system, /proc/PID/stat): what a request
#                    costs, which load on the machine changes less than it
#                    changes requests per second
#   echo_vmown_over_default  the median over the rounds of that round's
#                    vmown rps over default rps (the pair measured side by side)
#
# The loop's own work, each figure suffixed _vmown, _default, _uvloop:
#   callsoon_ns      a callback that schedules itself again with
#                    loop.call_soon, N times (LOOP_FULL): ns per callback,
#                    i.e. one call_soon plus the loop iteration that runs it
#                    (the selector polled with a zero timeout, the ready
#                    queue run)
#   task_step_ns     one task doing `await asyncio.sleep(0)` in a loop (its
#                    documented way to yield): ns per step of the task
# Each batch is a fresh loop per contender (asyncio.Runner with the loop
# factory: EventLoop, asyncio's default, uvloop.new_event_loop), measured
# inside the run with gc off; the loops take turns batch by batch.  A figure
# is the MINIMUM over the batches (noise only adds time); a ratio to the
# default loop (callsoon_vmown_over_default, task_step_vmown_over_default) is
# the MEDIAN over the batches of that batch's ratio: the two loops of a batch
# run back to back, so a burst of load on the shared machine hits both, where
# two minimums may come from different moments.
#
# Goals (issue 17), as booleans: goal_asyncio_thread_ge_10x_vmown
# (asyncio_thread_s >= 10 x vmown_loop_s), goal_asyncio_inline_ge_5x_vmown,
# goal_echo_ge_default (echo_vmown_over_default >= 1: the paired rounds'
# median, as the loop-work ratios),
# goal_callsoon_within_1_2x_default and goal_task_step_within_1_2x_default
# (EventLoop's figure at most 1.2 x the default loop's).  Derived:
# asyncio_thread_over_vmown, asyncio_thread_over_vmown_wrappers,
# asyncio_inline_over_vmown,
# callsoon_vmown_over_default, task_step_vmown_over_default.
#
# uvloop is the `bench` extra; without it its figures are left out (said on
# stderr) and the suite runs on.  --quick: 50 tasks x 50 calls (same 2%), two
# echo rounds of 0.4 s, smaller batches.

from __future__ import annotations

import asyncio
import itertools
import json
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, Coroutine, TypeVar

from _cfuncs import load
from _measure import gc_off, require_runtime
from suite_mixed import BLOCK_US, SPIN_US, Plan, fifo_bound_s, make_plan, model_move_us, model_s, steps

# (tasks, calls each, rounds)
MIXED_QUICK, MIXED_FULL = (50, 50, 1), (200, 200, 3)
SPIN_CALLS = 20_000  # short calls timed on the loop for spin_call_us
ECHO_CONNECTIONS = 100  # as suite net
ECHO_BYTES = 1024
# (rounds, warm-up s, measured s)
ECHO_QUICK, ECHO_FULL = (2, 0.1, 0.4), (15, 0.2, 1.0)
ECHO_WARMUP_RUN = (0.1, 0.2)  # a first client run against each server, not counted
ECHO_SETTLE_S = 0.1  # after a client run: the server logs the resets of its connections
# (iterations per figure per batch, batches)
LOOP_QUICK, LOOP_FULL = (20_000, 3), (30_000, 15)

LoopFactory = Callable[[], asyncio.AbstractEventLoop]
T = TypeVar("T")


def _loop_factories() -> dict[str, LoopFactory]:
    """The loops measured: EventLoop, the default loop, uvloop (if installed)."""
    import vmown.aio

    factories: dict[str, LoopFactory] = {"vmown": vmown.aio.EventLoop, "default": asyncio.new_event_loop}
    try:
        import uvloop
    except ImportError as exc:
        print(f"suite aio: uvloop left out: {exc}", file=sys.stderr)
    else:
        factories["uvloop"] = uvloop.new_event_loop
    return factories


def _run_on(factory: LoopFactory, main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main())


# ---- mixed ----


def _mixed_s(factory: LoopFactory, plan: Plan, call: Callable[[bool], Any]) -> float:
    """Wall time of the plan's tasks gathered on factory's loop; call(slow) makes one call.

    call returns None for an inline call, an awaitable for an offloaded one.
    """

    async def task(flags: list[bool]) -> None:
        for slow in flags:
            pending = call(slow)
            if pending is not None:
                await pending

    async def main() -> float:
        start = time.perf_counter()
        await asyncio.gather(*(task(flags) for flags in plan))
        return time.perf_counter() - start

    return _run_on(factory, main)


def _mixed(lib: Any, quick: bool) -> dict[str, float]:
    import vmown
    import vmown.aio

    tasks, calls, rounds = MIXED_QUICK if quick else MIXED_FULL
    plan = make_plan(tasks, calls)
    spin_us, block_us = lib.spin_us, lib.block_us
    spin_threaded, block_threaded = vmown.threaded(spin_us), vmown.threaded(block_us)
    spin_wrapper, block_wrapper = lib.spin_us_threaded, lib.block_us_threaded
    to_thread = asyncio.to_thread

    def threaded_inline(slow: bool) -> None:
        if slow:
            block_threaded(BLOCK_US)
        else:
            spin_threaded(SPIN_US)

    def wrapper_inline(slow: bool) -> None:
        if slow:
            block_wrapper(BLOCK_US)
        else:
            spin_wrapper(SPIN_US)

    def plain_inline(slow: bool) -> None:
        if slow:
            block_us(BLOCK_US)
        else:
            spin_us(SPIN_US)

    def offloaded(slow: bool) -> Any:
        return to_thread(block_us, BLOCK_US) if slow else to_thread(spin_us, SPIN_US)

    contenders: dict[str, Callable[[], float]] = {
        "vmown_loop_s": lambda: _mixed_s(vmown.aio.EventLoop, plan, threaded_inline),
        "vmown_loop_wrappers_s": lambda: _mixed_s(vmown.aio.EventLoop, plan, wrapper_inline),
        "asyncio_thread_s": lambda: _mixed_s(asyncio.new_event_loop, plan, offloaded),
    }
    # One task of short calls alone on the loop: us per call.
    contenders["spin_call_us"] = (
        lambda: _mixed_s(vmown.aio.EventLoop, [[False] * SPIN_CALLS], threaded_inline) * 1e6 / SPIN_CALLS
    )
    best = {name: float("inf") for name in contenders}
    with gc_off():
        for i in range(rounds):
            for name, contender in contenders.items():
                best[name] = min(best[name], contender())
                print(f"suite aio: mixed round {i + 1}/{rounds}: {name} {best[name]:.2f}", file=sys.stderr)
        inline_s = _mixed_s(asyncio.new_event_loop, plan, plain_inline)
    vmown_s, thread_s, spin_us = best["vmown_loop_s"], best["asyncio_thread_s"], best["spin_call_us"]
    bound_s = fifo_bound_s(plan)
    return {
        "vmown_loop_s": vmown_s,
        "vmown_loop_wrappers_s": best["vmown_loop_wrappers_s"],
        "asyncio_thread_s": thread_s,
        "asyncio_inline_s": inline_s,
        "tasks": tasks,
        "calls_each": calls,
        "slow_calls": sum(map(sum, plan)),
        "critical_path_s": max(map(sum, plan)) * BLOCK_US / 1e6,
        "fifo_bound_s": bound_s,
        "asyncio_thread_over_fifo_bound": thread_s / bound_s,
        "vmown_over_fifo_bound": vmown_s / bound_s,
        "spin_call_us": spin_us,
        "model_moves": sum(map(len, steps(plan))),
        "model_free_moves_s": model_s(plan, spin_us, 0.0),
        "model_move_us": model_move_us(plan, spin_us, vmown_s),
        "model_move_us_for_goal": model_move_us(plan, spin_us, thread_s / 10),
        "asyncio_thread_over_vmown": thread_s / vmown_s,
        "asyncio_thread_over_vmown_wrappers": thread_s / best["vmown_loop_wrappers_s"],
        "asyncio_inline_over_vmown": inline_s / vmown_s,
        "goal_asyncio_thread_ge_10x_vmown": thread_s >= 10 * vmown_s,
        "goal_asyncio_inline_ge_5x_vmown": inline_s >= 5 * vmown_s,
    }


# ---- echo ----

# suite aio's names of the loops -> benchmarks/net_servers.py's contenders
ECHO_SERVERS = {"vmown": "aio", "default": "asyncio", "uvloop": "uvloop"}


class _EchoServer:
    """A loop's echo server (benchmarks/net_servers.py) in a process of its own, up for the whole suite.

    Its stderr goes to a temporary file, not a pipe: a client that leaves
    resets its connections, a server may log each reset, and a pipe nobody
    reads would fill and stop the server.
    """

    def __init__(self, name: str) -> None:
        import suite_net

        self.name = name
        self.stderr = tempfile.TemporaryFile("w+")
        self.process = subprocess.Popen(
            [sys.executable, str(suite_net.SERVERS), ECHO_SERVERS[name], str(ECHO_CONNECTIONS + 100)],
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            text=True,
        )
        line = suite_net._read_line(self.process, suite_net.SERVER_START_S)
        if not line.strip().isdigit():
            self.stop()
            raise RuntimeError(f"the echo server on the {name} loop did not start: {line!r} {self.errors()!r}")
        self.port = int(line)

    def errors(self) -> str:
        self.stderr.seek(0)
        return self.stderr.read()[-2000:]

    def stop(self) -> None:
        self.process.kill()
        self.process.wait(timeout=30)
        if self.process.stdout is not None:
            self.process.stdout.close()
        self.stderr.close()


def _client_run(client: pathlib.Path, server: _EchoServer, warmup_s: float, duration_s: float) -> dict[str, Any]:
    """One run of suite net's client against a running server: its figures and the server's CPU per request."""
    import suite_net

    pid = server.process.pid
    cpu_before = suite_net._cpu_s(pid)
    done = subprocess.run(
        [str(client), *map(str, (server.port, ECHO_CONNECTIONS, ECHO_BYTES, warmup_s, duration_s))],
        capture_output=True,
        text=True,
        timeout=warmup_s + duration_s + 60,
    )
    cpu_s = suite_net._cpu_s(pid) - cpu_before
    if done.returncode != 0:
        raise RuntimeError(
            f"net_client against the {server.name} loop: {done.stderr.strip()}; server: {server.errors()!r}"
        )
    result: dict[str, Any] = json.loads(done.stdout)
    result["cpu_us"] = cpu_s / max(1, result["all_requests"]) * 1e6
    return result


def _echo(quick: bool, loops: list[str]) -> dict[str, float]:
    import suite_net

    rounds, warmup_s, duration_s = ECHO_QUICK if quick else ECHO_FULL
    client = suite_net._client()
    servers: dict[str, _EchoServer] = {}
    figures: dict[str, list[dict[str, Any]]] = {name: [] for name in loops}
    ratios: list[float] = []
    try:
        for name in loops:
            servers[name] = _EchoServer(name)
            _client_run(client, servers[name], *ECHO_WARMUP_RUN)  # not counted
            time.sleep(ECHO_SETTLE_S)
        for i in range(rounds):
            order = loops[i % len(loops) :] + loops[: i % len(loops)]  # who goes first rotates
            this_round: dict[str, float] = {}
            for name in order:
                result = _client_run(client, servers[name], warmup_s, duration_s)
                time.sleep(ECHO_SETTLE_S)
                figures[name].append(result)
                this_round[name] = result["rps"]
            ratios.append(this_round["vmown"] / this_round["default"])
            if rounds > 1 and (i + 1) % max(1, rounds // 4) == 0:
                summary = ", ".join(f"{name} {rps:.0f}" for name, rps in this_round.items())
                print(f"suite aio: echo round {i + 1}/{rounds}: rps {summary}", file=sys.stderr)
    finally:
        for server in servers.values():
            server.stop()
    out: dict[str, float] = {}
    for name in loops:
        out[f"echo_rps_{name}"] = round(statistics.median(r["rps"] for r in figures[name]))
    for name in loops:
        out[f"echo_p99_us_{name}"] = statistics.median(r["p99_us"] for r in figures[name])
    for name in loops:
        out[f"echo_cpu_us_{name}"] = round(statistics.median(r["cpu_us"] for r in figures[name]), 1)
    out["echo_rounds"] = rounds
    out["echo_vmown_over_default"] = round(statistics.median(ratios), 3)
    out["goal_echo_ge_default"] = out["echo_vmown_over_default"] >= 1.0
    return out


# ---- the loop's own work ----


def _loop_batch(factory: LoopFactory, iterations: int) -> dict[str, float]:
    out: dict[str, float] = {}

    async def main() -> None:
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        call_soon = loop.call_soon
        left = iterations

        def again() -> None:
            nonlocal left
            left -= 1
            if left:
                call_soon(again)
            else:
                done.set_result(None)

        start = time.perf_counter_ns()
        call_soon(again)
        await done
        out["callsoon_ns"] = (time.perf_counter_ns() - start) / iterations

        sleep = asyncio.sleep
        start = time.perf_counter_ns()
        for _ in itertools.repeat(None, iterations):
            await sleep(0)
        out["task_step_ns"] = (time.perf_counter_ns() - start) / iterations

    _run_on(factory, main)
    return out


LOOP_METRICS = ("callsoon_ns", "task_step_ns")


def _loop_work(quick: bool, factories: dict[str, LoopFactory]) -> dict[str, float]:
    iterations, batches = LOOP_QUICK if quick else LOOP_FULL
    figures: dict[tuple[str, str], list[float]] = {(name, metric): [] for name in factories for metric in LOOP_METRICS}
    for _ in range(batches):
        for name, factory in factories.items():
            with gc_off():
                batch = _loop_batch(factory, iterations)
            for metric in LOOP_METRICS:
                figures[name, metric].append(batch[metric])
    out: dict[str, float] = {}
    for metric in LOOP_METRICS:
        stem = metric.removesuffix("_ns")
        for name in factories:
            out[f"{metric}_{name}"] = min(figures[name, metric])
        ratio = statistics.median(v / d for v, d in zip(figures["vmown", metric], figures["default", metric]))
        out[f"{stem}_vmown_over_default"] = ratio
        out[f"goal_{stem}_within_1_2x_default"] = ratio <= 1.2
    return out


def run(quick: bool) -> dict[str, float]:
    require_runtime("threaded", "bind_threaded")
    import vmown.aio  # noqa: F401  (fail early if the loop is missing)

    _ffi, lib = load()
    factories = _loop_factories()
    result: dict[str, float] = {}
    result.update(_mixed(lib, quick))
    result.update(_echo(quick, list(factories)))
    result.update(_loop_work(quick, factories))
    return result
