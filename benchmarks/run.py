#!/usr/bin/env python3
# The benchmark harness:  python benchmarks/run.py [SUITE ...] [--quick] [--json FILE]
#
# Runs the named suites (all of them by default), in this one process, one
# after the other so that no two compete for the machine.  The result is one
# JSON object,
#     {"machine": {...}, "SUITE": {"METRIC": number, ...}, ...}
# printed on stdout and, with --json FILE, written to FILE and as a Markdown
# table to FILE's stem + .md (to paste into the README); with --report DIR,
# written to DIR with the Markdown tables and PNG plots (benchmarks/report.py,
# the `plot` extra).  Progress (a line per suite, and every PROGRESS_S while
# a suite runs) and a compact table go to stderr.  "machine" says where and how the
# figures were taken, because they mean nothing without it.
#
# A suite is a module benchmarks/suite_NAME.py with `run(quick: bool) ->
# dict[str, float]`: metric name (with its unit: _ns, _us, _s, or a ratio)
# to a number; booleans are goals met or missed.  Its top comment says what
# each metric measures and why the method is sound.  --quick asks it to stay
# under ~20 s.  Adding a suite is one line in SUITES below.
#
# A suite that fails (a peer package missing, a C program that does not
# build, a check that trips) gets {"error": "..."} in the result, its
# traceback goes to stderr, the other suites still run, and the exit status
# is 1.  Suites are imported only when run, so a missing dependency of one
# suite cannot break another.

from __future__ import annotations

import argparse
import datetime
import importlib
import importlib.metadata
import json
import math
import os
import pathlib
import platform
import subprocess
import sys
import threading
import time
import traceback
from typing import Any

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # suite modules and their helpers live here

SUITES = {
    "ownership": "suite_ownership",
    "callout": "suite_callout",
    "detect": "suite_detect",
    "return": "suite_return",
    "mixed": "suite_mixed",
    "sched": "suite_sched",
    "heartbeat": "suite_heartbeat",
    "ipc": "suite_ipc",
    "burst": "suite_burst",
    "threads": "suite_threads",
    "net": "suite_net",
    "aio": "suite_aio",
}

PROGRESS_S = 15.0  # a long suite says it is still running this often


def machine(quick: bool) -> dict[str, Any]:
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "kernel": f"{platform.system()} {platform.release()}",
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "cffi": _package_version("cffi"),
        "gcc": _command_output(["gcc", "-dumpfullversion"]),
        "commit": _command_output(["git", "-C", str(HERE), "describe", "--always", "--dirty"]),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "quick": quick,
    }


def _cpu_model() -> str:
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _package_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _command_output(command: list[str]) -> str:
    try:
        return subprocess.run(command, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def run_suite(name: str, quick: bool) -> dict[str, Any]:
    try:
        figures = importlib.import_module(SUITES[name]).run(quick)
        bad = [k for k, v in figures.items() if not isinstance(v, (int, float)) or not math.isfinite(v)]
        if bad:
            raise TypeError(f"suite {name} returned non-numbers for {bad}")
        return figures
    except Exception as exc:  # recorded; the run goes on
        traceback.print_exc()
        return {"error": f"{type(exc).__name__}: {exc}"}


def _format(value: float) -> str:
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, int):
        return str(value)
    return f"{value:.0f}" if abs(value) >= 100 else f"{value:.1f}" if abs(value) >= 10 else f"{value:.2f}"


def _machine_line(m: dict[str, Any]) -> str:
    return (
        f"{m['cpu']}, {m['cores']} cores, {m['kernel']}, {m['python']}, cffi {m['cffi']}, gcc {m['gcc']}, "
        f"commit {m['commit']}, {m['date']}{' (--quick)' if m['quick'] else ''}"
    )


def text_table(results: dict[str, Any]) -> str:
    lines = [_machine_line(results["machine"])]
    for suite, figures in results.items():
        if suite == "machine":
            continue
        lines.append(suite)
        if "error" in figures:
            lines.append(f"  FAILED: {figures['error']}")
            continue
        width = max(map(len, figures))
        lines += [f"  {metric:<{width}}  {_format(value):>10}" for metric, value in figures.items()]
    return "\n".join(lines)


def markdown(results: dict[str, Any]) -> str:
    lines = ["# Benchmarks", "", _machine_line(results["machine"])]
    for suite, figures in results.items():
        if suite == "machine":
            continue
        lines += ["", f"## {suite}", ""]
        if "error" in figures:
            lines.append(f"Failed: `{figures['error']}`")
            continue
        lines += ["| metric | value |", "|---|---:|"]
        lines += [f"| `{metric}` | {_format(value)} |" for metric, value in figures.items()]
    return "\n".join(lines) + "\n"


class _Progress:
    """Prints "still running" lines to stderr every PROGRESS_S while a suite runs."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.start = time.monotonic()
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._tell, name="bench-progress", daemon=True)

    def _tell(self) -> None:
        while not self.done.wait(PROGRESS_S):
            elapsed_s = time.monotonic() - self.start
            print(f"{self.label} still running, {elapsed_s:.0f} s", file=sys.stderr, flush=True)

    def __enter__(self) -> "_Progress":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.thread.join()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run vmown's benchmark suites.")
    parser.add_argument("suites", nargs="*", metavar="SUITE", help=f"default: all of {', '.join(SUITES)}")
    parser.add_argument("--quick", action="store_true", help="keep each suite under ~20 s")
    parser.add_argument("--json", type=pathlib.Path, metavar="FILE", help="also write to FILE and FILE.md")
    parser.add_argument(
        "--report",
        type=pathlib.Path,
        metavar="DIR",
        help="also write DIR/results.json, DIR/README.md (tables and plots) and DIR/*.png (needs matplotlib)",
    )
    args = parser.parse_args(argv)
    unknown = [name for name in args.suites if name not in SUITES]
    if unknown:
        parser.error(f"unknown suite(s) {', '.join(unknown)}; known: {', '.join(SUITES)}")
    if args.json and args.json.suffix == ".md":
        parser.error("--json FILE must not end in .md: the Markdown table goes there")
    names = list(dict.fromkeys(args.suites)) or list(SUITES)
    if args.report:
        import report  # fail now, not after the suites ran, if matplotlib is missing

        report._pyplot()

    results: dict[str, Any] = {"machine": machine(args.quick)}
    for i, name in enumerate(names, 1):
        print(f"[{i}/{len(names)}] {name} ...", file=sys.stderr, flush=True)
        start = time.monotonic()
        with _Progress(f"[{i}/{len(names)}] {name}"):
            results[name] = run_suite(name, args.quick)
        outcome = "FAILED" if "error" in results[name] else "done"
        elapsed_s = time.monotonic() - start
        print(f"[{i}/{len(names)}] {name} {outcome} in {elapsed_s:.1f} s", file=sys.stderr, flush=True)

    text = json.dumps(results, indent=2)
    print(text)
    print(text_table(results), file=sys.stderr)
    if args.json:
        args.json.write_text(text + "\n")
        args.json.with_suffix(".md").write_text(markdown(results))
    if args.report:
        pngs = report.write(results, args.report, markdown)
        print(f"report: {args.report / 'README.md'}, {len(pngs)} plots", file=sys.stderr)
    return 1 if any("error" in results[name] for name in names) else 0


if __name__ == "__main__":
    sys.exit(main())
