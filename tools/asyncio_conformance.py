"""Run CPython's own test.test_asyncio modules against vmown.aio.EventLoop.

    python tools/asyncio_conformance.py [--json] [MODULE ...]

Each module (a name under test.test_asyncio, e.g. test_locks) runs twice in
a child interpreter: once with the default loop, once with EventLoop put in
the default loop's place, the way uvloop runs these tests against its own
loop: the default policy's loop factory is EventLoop (it survives the tests'
``set_event_loop_policy(None)``, which makes a fresh default policy), and
``asyncio.SelectorEventLoop`` names EventLoop (test_events makes its loops
with it).  The report counts tests run, failed, errored and skipped per
loop, and lists the tests that fail on EventLoop but pass on the default
loop ("new failures").  Without MODULE it runs DEFAULT_MODULES (the whole
list of the issue; a few minutes).  Exit status 1 if any new failure.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import unittest

DEFAULT_MODULES = [
    "test_events", "test_tasks", "test_futures", "test_locks", "test_queues", "test_timeouts",
    "test_taskgroups", "test_sock_lowlevel", "test_server", "test_streams", "test_subprocess",
    "test_base_events",
]  # fmt: skip


_made = 0  # EventLoops made in the child: proof that the tests ran on it


def _install_vmown_loop() -> None:
    import asyncio

    import vmown.aio

    made = vmown.aio.EventLoop.__init__

    def counting_init(self: object, *args: object, **kwargs: object) -> None:
        global _made
        _made += 1
        made(self, *args, **kwargs)

    vmown.aio.EventLoop.__init__ = counting_init  # type: ignore[method-assign]
    policy = type(asyncio.get_event_loop_policy())
    policy._loop_factory = vmown.aio.EventLoop  # type: ignore[attr-defined]
    asyncio.SelectorEventLoop = vmown.aio.EventLoop  # type: ignore[misc]
    try:
        import asyncio.unix_events as unix_events

        unix_events.SelectorEventLoop = vmown.aio.EventLoop  # type: ignore[misc, assignment]
        unix_events.DefaultEventLoopPolicy._loop_factory = vmown.aio.EventLoop  # type: ignore[attr-defined]
    except ImportError:  # pragma: no cover - not Unix
        pass


def _child(loop: str, module: str) -> None:
    if loop == "vmown":
        _install_vmown_loop()
    suite = unittest.defaultTestLoader.loadTestsFromName(f"test.test_asyncio.{module}")
    result = unittest.TextTestRunner(stream=sys.stderr, verbosity=0).run(suite)
    print(json.dumps({
        "ran": result.testsRun,
        "failures": sorted(t.id() for t, _ in result.failures),
        "errors": sorted(t.id() for t, _ in result.errors),
        "skipped": len(result.skipped),
        "unexpected_successes": len(result.unexpectedSuccesses),
        "vmown_loops_made": _made,
    }))  # fmt: skip


def _run(loop: str, module: str, timeout: float) -> dict[str, object]:
    try:
        out = subprocess.run(
            [sys.executable, __file__, "--child", loop, module], capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        return {"ran": 0, "failures": [], "errors": [f"{module}: timed out after {timeout} s"], "skipped": 0}
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    if not lines:
        return {"ran": 0, "failures": [], "errors": [f"{module}: child failed: {out.stderr[-2000:]}"], "skipped": 0}
    return json.loads(lines[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("modules", nargs="*", default=DEFAULT_MODULES)
    parser.add_argument("--json", action="store_true", help="print one JSON list of per-module rows")
    parser.add_argument("--child", nargs=2, metavar=("LOOP", "MODULE"), help=argparse.SUPPRESS)
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per module and loop")
    args = parser.parse_args()
    if args.child:
        _child(*args.child)
        return 0
    rows = []
    for module in args.modules:
        default = _run("default", module, args.timeout)
        ours = _run("vmown", module, args.timeout)
        bad_default = set(default["failures"]) | set(default["errors"])  # type: ignore[arg-type]
        bad_ours = set(ours["failures"]) | set(ours["errors"])  # type: ignore[arg-type]
        row = {
            "module": module,
            "default": default,
            "vmown": ours,
            "new_failures": sorted(bad_ours - bad_default),
        }
        rows.append(row)
        if not args.json:
            def counts(r: dict[str, object]) -> str:
                bad = len(r["failures"]) + len(r["errors"])  # type: ignore[arg-type]
                return f"ran {r['ran']:4} failed {bad:3} skipped {r['skipped']:3} EventLoops {r.get('vmown_loops_made', 0)}"

            print(f"{module:20} default: {counts(default)} | vmown: {counts(ours)} | new failures {len(row['new_failures'])}")
            for name in row["new_failures"]:
                print(f"    {name}")
            sys.stdout.flush()
    if args.json:
        print(json.dumps(rows))
    return 1 if any(row["new_failures"] for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
