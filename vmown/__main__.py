"""python -m vmown demo -- a few seconds that show what VM ownership does.

Eight OS threads share one VM.  Each repeatedly owns the VM, runs a "VM step"
(it appends to a shared log and checks that nobody else is inside), then
disowns it around a blocking call (a sleep that releases the GIL, standing in
for blocking C code) and owns it again.  While one thread is out in its call
the others run VM steps; threads that come back while the VM is owned queue
and are handed the VM in arrival order.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time

from . import Ownership


def demo(seconds: float = 2.0, threads: int = 8) -> int:
    vm = Ownership(slots=64)
    log: list[int] = []
    inside = [False]
    stop = time.monotonic() + seconds
    blocked_s = [0.0] * threads

    def worker(i: int) -> None:
        vm.own()
        while time.monotonic() < stop:
            assert not inside[0], "two threads inside the VM"
            inside[0] = True
            log.append(i)  # the VM step
            inside[0] = False
            t0 = time.perf_counter()
            with vm.disowned(callout=i):
                time.sleep(0.001 * (1 + i % 3))  # blocking work, VM free meanwhile
            blocked_s[i] += time.perf_counter() - t0
        vm.disown()

    print(f"vmown demo: {threads} threads share one VM for {seconds:.1f} s", flush=True)
    started = time.perf_counter()
    pool = [threading.Thread(target=worker, args=(i,), name=f"worker-{i}") for i in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    wall = time.perf_counter() - started

    stats = vm.stats()
    print(f"  VM steps run: {len(log)}, by thread: {[log.count(i) for i in range(threads)]}")
    print(
        f"  time spent in blocking calls: {sum(blocked_s):.2f} s over {wall:.2f} s of wall time "
        f"({sum(blocked_s) / wall:.1f} calls in flight on average)"
    )
    print(
        f"  acquisitions: {stats['fast_owns']} fast (one CAS), {stats['slow_owns']} slow; "
        f"{stats['waits']} waits, {stats['hand_offs']} hand-offs to a waiting thread"
    )
    print(f"  ownership epoch: {stats['epoch']} releases; owner now: {stats['owner']}")

    # The price of giving the VM up around a call and taking it back.
    vm.own()
    disown, own = vm.disown, vm.own
    n = 200_000
    t0 = time.perf_counter()
    for _ in range(n):
        disown()
        own()
    pair_ns = (time.perf_counter() - t0) / n * 1e9
    vm.disown()
    print(f"  one disown + own from Python: {pair_ns:.0f} ns (benchmarks/run.py measures it properly)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vmown", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run_demo = commands.add_parser("demo", help="a short run that shows the point")
    run_demo.add_argument("--seconds", type=float, default=2.0)
    run_demo.add_argument("--threads", type=int, default=8)
    args = parser.parse_args(argv)
    if args.command == "demo":
        return demo(args.seconds, args.threads)
    return 2


if __name__ == "__main__":
    sys.exit(main())
