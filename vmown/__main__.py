"""python -m vmown demo | top PATH | stale DIR -- the vmown command line.

demo: a few seconds that show what vmown is for.

Many green processes make C calls (libc's getppid, and now and then a
usleep(20 ms) that blocks); a ticker process wants to run every millisecond.
Every call goes through a threaded callout.  Short calls cost about a plain
call; a call that blocks keeps its thread, and within a tick or two the
heartbeat hands the VM to another thread, so the ticker keeps ticking and the
blocked calls overlap.  The same work is then run with trio, calling inline
(the event loop stalls for each blocking call) and with every call through
trio.to_thread.run_sync (nothing stalls, but every call pays a thread hop).
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from typing import Any, Callable

from cffi import FFI

import vmown
from vmown._ownership import _COUNTERS

_ffi = FFI()
_ffi.cdef("int usleep(unsigned int usec); int getppid(void);")
_libc = _ffi.dlopen(None)

BLOCK_US = 20_000


def _plan(processes: int, calls: int, block_fraction: float, seed: int) -> list[list[bool]]:
    """Which calls block: the same for every contender."""
    rng = random.Random(seed)
    return [[rng.random() < block_fraction for _ in range(calls)] for _ in range(processes)]


class _Ticker:
    """Wants to run every millisecond; records how late it was."""

    def __init__(self) -> None:
        self.worst_s = 0.0
        self.ticks = 0
        self.done = False

    def tick(self, due: float) -> None:
        self.worst_s = max(self.worst_s, time.monotonic() - due)
        self.ticks += 1


async def _vmown_main(plan: list[list[bool]]) -> dict[str, Any]:
    usleep, getppid = vmown.threaded(_libc.usleep), vmown.threaded(_libc.getppid)
    ticker = _Ticker()

    async def tick() -> None:
        while not ticker.done:
            due = time.monotonic() + 0.001
            await vmown.sleep(0.001)
            ticker.tick(due)

    async def work(blocks: list[bool]) -> None:
        for block in blocks:
            usleep(BLOCK_US) if block else getppid()
            await vmown.checkpoint()

    ticking = vmown.spawn(tick)
    started = time.monotonic()
    for proc in [vmown.spawn(work, blocks) for blocks in plan]:
        await proc
    wall = time.monotonic() - started
    ticker.done = True
    await ticking
    return {"wall_s": wall, "worst_late_s": ticker.worst_s, "ticks": ticker.ticks, "stats": vmown.stats()}


def _run_vmown(plan: list[list[bool]]) -> dict[str, Any]:
    return vmown.run(_vmown_main, plan)


def _run_trio(plan: list[list[bool]], offload: bool) -> dict[str, Any]:
    import threading

    import trio

    ticker = _Ticker()
    threads: set[int] = set()

    def call(fn: Callable[[int], int] | Callable[[], int], *args: int) -> int:
        threads.add(threading.get_ident())
        return fn(*args)

    async def tick() -> None:
        while not ticker.done:
            due = time.monotonic() + 0.001
            await trio.sleep(0.001)
            ticker.tick(due)

    async def work(blocks: list[bool]) -> None:
        for block in blocks:
            args = (_libc.usleep, BLOCK_US) if block else (_libc.getppid,)
            if offload:
                await trio.to_thread.run_sync(call, *args)
            else:
                call(*args)
                await trio.lowlevel.checkpoint()

    async def main() -> float:
        async with trio.open_nursery() as outer:
            outer.start_soon(tick)
            started = time.monotonic()
            async with trio.open_nursery() as nursery:
                for blocks in plan:
                    nursery.start_soon(work, blocks)
            wall = time.monotonic() - started
            ticker.done = True
        return wall

    wall = trio.run(main)
    return {"wall_s": wall, "worst_late_s": ticker.worst_s, "ticks": ticker.ticks, "threads": len(threads)}


def demo(processes: int = 100, calls: int = 40, block_fraction: float = 0.02, seed: int = 1) -> int:
    plan = _plan(processes, calls, block_fraction, seed)
    blocking = sum(map(sum, plan))
    print(
        f"vmown demo: {processes} processes x {calls} C calls; {blocking} of the "
        f"{processes * calls} calls block for {BLOCK_US // 1000} ms; a ticker wants to run every 1 ms",
        flush=True,
    )
    print(f"  serial time of the blocking calls alone: {blocking * BLOCK_US / 1e6:.2f} s\n", flush=True)
    rows = [("vmown, every call threaded", _run_vmown(plan))]
    rows[0][1]["threads"] = rows[0][1]["stats"]["threads_high"]
    try:
        rows.append(("trio, calls inline", _run_trio(plan, offload=False)))
        rows.append(("trio, every call to_thread", _run_trio(plan, offload=True)))
    except ImportError:
        print("  (install trio, e.g. pip install -e '.[bench]', for the comparison)")
    print(f"  {'':30} {'wall time':>10} {'ticker worst late':>18} {'OS threads':>11}")
    for name, row in rows:
        print(
            f"  {name:30} {row['wall_s']:>8.3f} s {row['worst_late_s'] * 1e3:>15.1f} ms {row['threads']:>11}"
        )
    stats = rows[0][1]["stats"]
    print(
        "\n  vmown: "
        + ", ".join(f"{key}={stats[key]}" for key in ("callouts", "activations", "hand_offs", "ticks"))
        + f"; threads now {stats['threads']}, at most {stats['threads_high']}"
    )
    print(
        "  A blocked call keeps its own thread; after a tick or two (1 kHz) the heartbeat\n"
        "  gives the VM to another thread, so the ticker and the other processes go on."
    )
    return 0


def _describe(vm: vmown.Ownership) -> list[str]:
    """One screen about a shared VM: owner, queue, slots, counters."""
    stats = vm.stats()
    owner = stats["owner"]
    who = lambda slot: "pid {pid} tid {tid}".format(**vm.slot_info(slot))  # noqa: E731
    lines = [
        f"owner: {'nobody' if owner == 0 else f'slot {owner} ({who(owner)})'}"
        f"   epoch {stats['epoch']}   waiters {stats['waiters']}   slots {stats['slots_in_use']}/{vm.slots}",
        "queue: " + (", ".join(f"{slot} ({who(slot)})" for slot in vm.queue()) or "empty"),
        "counters: " + ", ".join(f"{key} {stats[key]}" for key in _COUNTERS),
        f"{'slot':>5} {'state':>8} {'pid':>8} {'tid':>8} {'prio':>5} {'callout':>18}",
    ]
    for slot in range(1, vm.slots + 1):
        info = vm.slot_info(slot)
        if info["state"] != "free":
            lines.append(
                f"{slot:>5} {info['state']:>8} {info['pid']:>8} {info['tid']:>8} {info['priority']:>5} {info['callout']:>#18x}"
            )
    return lines


def top(path: str, interval: float, once: bool) -> int:
    """Watch the VM whose control block starts the data of the arena at ``path``."""
    try:
        arena = vmown.Arena.open(path, mode=0o777)
        vm = vmown.Ownership.attach(arena.buffer)
    except (OSError, vmown.VmownError) as exc:
        print(f"vmown top: {path}: {exc}", file=sys.stderr)
        return 1
    try:
        while True:
            screen = "\n".join([f"vmown top: {path}  ({time.strftime('%H:%M:%S')})", *_describe(vm)])
            print(screen if once else "\x1b[H\x1b[2J" + screen, flush=True)
            if once:
                return 0
            time.sleep(interval)
    except KeyboardInterrupt:
        return 0


def stale(directory: str, remove: bool) -> int:
    """List (and with --remove delete) arena files whose creator and peers are dead."""
    try:
        paths = vmown.Arena.find_stale(directory, remove=remove)
    except OSError as exc:
        print(f"vmown stale: {directory}: {exc}", file=sys.stderr)
        return 1
    for path in paths:
        print(("removed " if remove else "") + str(path))
    return 0


def parser() -> argparse.ArgumentParser:
    """The command line: every subcommand, and help for every option."""
    parser = argparse.ArgumentParser(prog="python -m vmown", description=(__doc__ or "").splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", help="one of:")
    run_demo = commands.add_parser("demo", help="a short run that shows the point")
    run_demo.add_argument("--processes", type=int, default=100,
                          help="green processes making C calls (default: %(default)s)")
    run_demo.add_argument("--calls", type=int, default=40,
                          help="C calls each process makes (default: %(default)s)")
    run_demo.add_argument("--block-fraction", type=float, default=0.02,
                          help=f"fraction of the calls that block for {BLOCK_US // 1000} ms "
                          "(default: %(default)s)")
    run_demo.add_argument("--seed", type=int, default=1,
                          help="seed choosing which calls block, the same for every contender "
                          "(default: %(default)s)")
    watch = commands.add_parser("top", help="watch a VM shared through an arena file")
    watch.add_argument("path", help="arena file whose data starts with an Ownership control block")
    watch.add_argument("--interval", type=float, default=1.0,
                       help="seconds between screens (default: %(default)s)")
    watch.add_argument("--once", action="store_true", help="print one screen and exit")
    clean = commands.add_parser("stale", help="find arena files left by dead processes")
    clean.add_argument("directory", help="directory to search for arena files, e.g. /dev/shm")
    clean.add_argument("--remove", action="store_true", help="delete the stale arena files found")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command == "demo":
        return demo(args.processes, args.calls, args.block_fraction, args.seed)
    if args.command == "top":
        return top(args.path, args.interval, args.once)
    return stale(args.directory, args.remove)


if __name__ == "__main__":
    sys.exit(main())
