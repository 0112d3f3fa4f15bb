"""Helpers shared by the tests: bounded waits, threads that must not hang, C test programs."""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import threading
import time
import traceback
from typing import Any, Callable


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    """Poll until ``predicate()`` holds; fail (never hang) after a generous ``timeout``."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.001)


def run_threads(target: Callable[[int], None], count: int, timeout: float = 120.0) -> None:
    """Run ``target(i)`` on ``count`` threads; re-raise the first failure; fail if any hangs."""
    errors: list[BaseException] = []

    def body(i: int) -> None:
        try:
            target(i)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=body, args=(i,), daemon=True) for i in range(count)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    if any(t.is_alive() for t in threads):
        raise AssertionError(f"threads still running after {timeout} s: deadlock?")
    if errors:
        raise errors[0]


def fork(body: Callable[[], None]) -> int:
    """Run ``body`` in a forked child that always leaves by os._exit (1 on failure)."""
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


def reap(pid: int, timeout: float = 60.0) -> None:
    """Wait (bounded) for a child and check that it succeeded."""
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            assert os.waitstatus_to_exitcode(status) == 0, "child failed (see its stderr)"
            return
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise AssertionError(f"child {pid} still running after {timeout} s")
        time.sleep(0.005)


def run_c(program: pathlib.Path, *args: int, timeout: float = 300, expect: str = "failures=0") -> str:
    """Run a C test program (plain or ThreadSanitizer build); fail on a non-zero
    exit, any ThreadSanitizer report, or output without ``expect``."""
    done = subprocess.run(
        [str(program), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={"TSAN_OPTIONS": "halt_on_error=1 exitcode=66"},
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "ThreadSanitizer" not in output, output
    assert expect in output, output
    return output


def make(*args: str, directory: pathlib.Path | None = None, env: dict[str, str] | None = None) -> str:
    """Run make quietly in the project root (or ``directory``); fail with its output."""
    root = pathlib.Path(__file__).resolve().parent.parent
    done = subprocess.run(["make", "-s", "-C", str(directory or root), *args], capture_output=True, text=True,
                          env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def install_libvmown(out: pathlib.Path, *variables: str) -> pathlib.Path:
    """Build libvmown with the Makefile in out/build and install it to out/prefix."""
    prefix = out / "prefix"
    make("-j2", f"BUILDDIR={out / 'build'}", f"PREFIX={prefix}", *variables, "install")
    return prefix


def pkg_config(prefix: pathlib.Path, *args: str, package: str = "vmown") -> list[str]:
    """pkg-config's answer for a libvmown installed under ``prefix``."""
    env = {**os.environ, "PKG_CONFIG_PATH": str(prefix / "lib" / "pkgconfig")}
    done = subprocess.run(["pkg-config", *args, package], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


class Ticker:
    """A vmown process that sleeps 1 ms at a time and counts its wake-ups until stopped.

    While a run ticks, nothing holds its VM: a test starts one, does what
    must not hold the VM (a blocking callout, a callback, a wait), and
    looks at ``ticks``.  Inside a vmown run only.
    """

    def __init__(self) -> None:
        self.ticks = 0
        self._stopping = False
        self._process: Any = None

    async def _tick(self) -> None:
        import vmown

        while not self._stopping:
            await vmown.sleep(0.001)
            self.ticks += 1

    def start(self) -> "Ticker":
        import vmown

        self._process = vmown.spawn(self._tick)
        return self

    async def stop(self) -> int:
        """Stop it, wait for its process to end; the ticks counted."""
        self._stopping = True
        await self._process
        return self.ticks
