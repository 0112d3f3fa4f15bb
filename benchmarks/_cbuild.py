# Build C benchmark programs that link the vmown core directly, and run them.
#
# Compiling goes through vmown._build.compile_program, the one place that
# knows the core's source list and flags (the C tests use it too), so a new
# native/*.c reaches the benchmarks without a change here.  Executables are
# cached in benchmarks/.build/ (gitignored) under a name that carries a hash
# of the flags, and rebuilt when any of the program's sources, any file in
# native/, vmown/_build.py or this file is newer than the executable.  gcc
# writes to a temporary name that is renamed into place, so an interrupted
# build never leaves a truncated executable that looks up to date.
#
# A program reports by printing one JSON object on stdout.  A non-zero exit
# or unparsable output raises RuntimeError carrying what the program said
# (its stderr), which the harness records as the suite's error.

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import subprocess
from typing import Any, Sequence

from vmown import _build as core_build

HERE = pathlib.Path(__file__).resolve().parent
BUILD = HERE / ".build"
# compile_program adds -std=c11 -g -Wall -Wextra -pthread; build() adds -Werror,
# as the C tests do, so that a warning cannot go unseen in a cached build.
FLAGS = ("-O2",)


def build(name: str, sources: Sequence[pathlib.Path], flags: Sequence[str] = FLAGS) -> pathlib.Path:
    """The executable `name` built from `sources` plus the core; compiled only if stale."""
    digest = hashlib.sha256("\0".join(flags).encode()).hexdigest()[:8]
    exe = BUILD / f"{name}-{digest}"
    inputs = [*sources, *core_build.NATIVE.glob("*.[ch]"), pathlib.Path(core_build.__file__)]
    inputs.append(pathlib.Path(__file__))
    if exe.exists() and exe.stat().st_mtime >= max(p.stat().st_mtime for p in inputs):
        return exe
    BUILD.mkdir(exist_ok=True)
    partial = exe.with_name(f"{exe.name}.{os.getpid()}.tmp")
    try:
        core_build.compile_program(sources, partial, [*flags, "-Werror"])
        os.replace(partial, exe)
    finally:
        partial.unlink(missing_ok=True)
    return exe


def run_json(exe: pathlib.Path, *args: object, timeout_s: float = 300) -> dict[str, Any]:
    """Run a benchmark program and return the JSON object it printed."""
    done = subprocess.run([str(exe), *map(str, args)], capture_output=True, text=True, timeout=timeout_s)
    if done.returncode != 0:
        raise RuntimeError(f"{exe.name} exited with {done.returncode}: {done.stderr.strip()}")
    try:
        return json.loads(done.stdout)
    except ValueError:
        raise RuntimeError(f"{exe.name} printed no JSON object: {done.stdout!r} {done.stderr!r}") from None
