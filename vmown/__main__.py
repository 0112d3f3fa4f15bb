"""python -m vmown demo | top PATH | stacks PID | stale DIR -- the vmown command line.

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
import json
import random
import subprocess
import sys
import time
from typing import Any, Callable

from cffi import FFI

import vmown
from vmown._monitor import rates, read_figures
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


def snapshot(vm: vmown.Ownership, figures: dict[str, Any] | None) -> dict[str, Any]:
    """What top shows, as data: the block's owner, queue, slots and counters, and a run's figures."""
    stats = vm.stats()
    names = (figures or {}).get("callout_names", {})
    slots = []
    for slot in range(1, vm.slots + 1):
        info = vm.slot_info(slot)
        if info["state"] == "free":
            continue
        callout = info["callout"]
        slots.append(
            {
                "slot": slot,
                **info,
                "callout_name": names.get(str(callout), f"{callout:#x}") if callout else "",
                "owner": slot == stats["owner"],
            }
        )
    return {
        "owner": stats["owner"],
        "epoch": stats["epoch"],
        "waiters": stats["waiters"],
        "slots_in_use": stats["slots_in_use"],
        "slot_count": vm.slots,
        "queue": vm.queue(),
        "counters": {key: stats[key] for key in _COUNTERS},
        "slots": slots,
        "run": figures,
        "time_s": time.time(),
    }


def _describe(snap: dict[str, Any], rates: dict[str, float]) -> list[str]:
    """One screen about a shared VM: owner, queue, counters, a run's figures and rates, slots."""
    by_slot = {s["slot"]: s for s in snap["slots"]}
    who = lambda slot: "pid {pid} tid {tid}".format(**by_slot[slot]) if slot in by_slot else "?"  # noqa: E731
    owner = snap["owner"]
    lines = [
        f"owner: {'nobody' if owner == 0 else f'slot {owner} ({who(owner)})'}"
        f"   epoch {snap['epoch']}   waiters {snap['waiters']}   slots {snap['slots_in_use']}/{snap['slot_count']}",
        "queue: " + (", ".join(f"{slot} ({who(slot)})" for slot in snap["queue"]) or "empty"),
        "counters: "
        + ", ".join(
            f"{key} {value}" + (f" ({rates[key]:.0f}/s)" if key in rates else "")
            for key, value in snap["counters"].items()
        ),
    ]
    run = snap["run"]
    if run:
        run_rates = run.get("rates", {})
        state = "ended" if run.get("ended") else "running"
        lines.append(f"run: pid {run.get('pid')} {state}, heartbeat {run.get('hz')} Hz")
        lines.append(
            "stats: "
            + ", ".join(
                f"{key} {value}" + (f" ({run_rates[key]:.0f}/s)" if run_rates.get(key) else "")
                for key, value in run.get("stats", {}).items()
            )
        )
        functions = run.get("functions") or []
        if functions:
            lines.append(
                f"{'function':>24} {'kind':>8} {'calls':>9} {'handed over':>11} {'revoked':>8} {'out s':>9} "
                f"{'longest ms':>10}"
            )
            for row in functions[:15]:
                lines.append(
                    f"{row['name'][:24]:>24} {row.get('kind', '')[:8]:>8} {row['calls']:>9} {row['handed_over']:>11} "
                    f"{row['revocations']:>8} {row['total_out_s']:>9.3f} {row['longest_out_s'] * 1e3:>10.1f}"
                )
    lines.append(f"{'slot':>5} {'state':>8} {'pid':>8} {'tid':>8} {'prio':>5} {'role':>6} {'callout':>18}")
    for s in snap["slots"]:
        role = "owner" if s["owner"] else ""
        lines.append(
            f"{s['slot']:>5} {s['state']:>8} {s['pid']:>8} {s['tid']:>8} {s['priority']:>5} {role:>6} "
            f"{s['callout_name']:>18}"
        )
    return lines


def top(path: str, interval: float, once: bool, as_json: bool = False) -> int:
    """Watch the VM whose control block starts the data of the arena at ``path``.

    The arena of a run started with ``vmown.run(main, monitor=PATH)`` also
    holds the run's figures (vmown/_monitor.py): they are shown with their
    rates; for other arenas the rates of the counters are taken between two
    screens.  ``--json`` prints one JSON object per screen, one per line.
    """
    try:
        arena = vmown.Arena.open(path, mode=0o777)
        vm = vmown.Ownership.attach(arena.buffer)
    except (OSError, vmown.VmownError) as exc:
        print(f"vmown top: {path}: {exc}", file=sys.stderr)
        return 1
    before: tuple[float, dict[str, int]] | None = None
    try:
        while True:
            snap = snapshot(vm, read_figures(arena, vm.slots))
            now = time.monotonic()
            counter_rates = rates(before[1], snap["counters"], now - before[0]) if before else {}
            before = (now, snap["counters"])
            if as_json:
                print(json.dumps({"path": path, **snap, "counter_rates": counter_rates}), flush=True)
            else:
                screen = "\n".join(
                    [f"vmown top: {path}  ({time.strftime('%H:%M:%S')})", *_describe(snap, counter_rates)]
                )
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


def stacks(pid: int, monitor: str | None, as_json: bool) -> int:
    """Every thread of process ``pid``: py-spy's frames joined with the VM's tables (vmown/_stacks.py)."""
    from vmown import _stacks

    try:
        report = _stacks.inspect(pid, monitor)
    except (OSError, RuntimeError, subprocess.SubprocessError, ValueError) as exc:
        print(f"vmown stacks: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(report) if as_json else _stacks.format_text(report))
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
    watch = commands.add_parser("top", help="watch a run started with monitor=PATH, or a VM in an arena file")
    watch.add_argument("path", help="vmown.run(monitor=PATH)'s file, or an arena whose data starts with a control block")
    watch.add_argument("--interval", type=float, default=1.0,
                       help="seconds between screens (default: %(default)s)")
    watch.add_argument("--once", action="store_true", help="print one screen and exit")
    watch.add_argument("--json", action="store_true", help="print each screen as one line of JSON")
    dump = commands.add_parser("stacks", help="every thread of a running program: frames and VM roles (py-spy)")
    dump.add_argument("pid", type=int, help="the process to inspect")
    dump.add_argument("--monitor", help="its monitor arena (default: found in /proc/PID/maps)")
    dump.add_argument("--json", action="store_true", help="print one JSON object")
    clean = commands.add_parser("stale", help="find arena files left by dead processes")
    clean.add_argument("directory", help="directory to search for arena files, e.g. /dev/shm")
    clean.add_argument("--remove", action="store_true", help="delete the stale arena files found")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command == "demo":
        return demo(args.processes, args.calls, args.block_fraction, args.seed)
    if args.command == "top":
        return top(args.path, args.interval, args.once, args.json)
    if args.command == "stacks":
        return stacks(args.pid, args.monitor, args.json)
    return stale(args.directory, args.remove)


if __name__ == "__main__":
    sys.exit(main())
