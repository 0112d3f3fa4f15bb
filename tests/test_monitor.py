"""vmown.run(main, monitor=PATH) and python -m vmown top PATH from another process."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import textwrap
import time

import pytest

import vmown
from vmown._monitor import FIGURES_BYTES, HEADER_BYTES, Publisher, rates, read_figures

# A run that keeps making C calls, some of them blocking, until STOP exists.
_CHILD = textwrap.dedent(
    """
    import os, sys, cffi, vmown
    ffi = cffi.FFI(); ffi.cdef("int usleep(unsigned int usec); int getppid(void);")
    libc = ffi.dlopen(None)
    usleep, getppid = vmown.threaded(libc.usleep), vmown.threaded(libc.getppid)
    stop = sys.argv[2]

    async def work(block_us):
        while not os.path.exists(stop):
            usleep(block_us)
            getppid()
            await vmown.checkpoint()

    async def main():
        procs = [vmown.spawn(work, us) for us in (3000, 3000, 100, 0)]
        for proc in procs:
            await proc

    vmown.run(main, monitor=sys.argv[1])
    """
)


def _wait_for(path: pathlib.Path, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.01)


def _top_json(path: pathlib.Path) -> dict:
    proc = subprocess.run(
        [sys.executable, "-m", "vmown", "top", str(path), "--once", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_top_once_json_watches_a_run_started_with_monitor(tmp_path: pathlib.Path) -> None:
    path, stop = tmp_path / "run.vmown", tmp_path / "stop"
    child = subprocess.Popen([sys.executable, "-c", _CHILD, str(path), str(stop)])
    try:
        _wait_for(path)
        first = _top_json(path)
        deadline = time.monotonic() + 60
        while True:
            time.sleep(0.6)  # past one publishing interval
            second = _top_json(path)
            if second["run"] and first["run"] and second["run"]["stats"]["steps"] > first["run"]["stats"]["steps"]:
                break
            assert time.monotonic() < deadline, "the run's figures did not grow"
    finally:
        stop.touch()
        assert child.wait(timeout=60) == 0
    assert not path.exists()  # the run removed its file
    for snap in (first, second):
        owners = [s for s in snap["slots"] if s["owner"]]
        assert len(owners) <= 1
        assert all(s["pid"] == child.pid for s in snap["slots"])
        states = {"running", "waiting", "granted", "parked", "left", "left_idle"}
        assert {s["state"] for s in snap["slots"]} <= states
        assert snap["run"]["pid"] == child.pid and snap["run"]["hz"] == 1000
    assert second["counters"]["disowns"] > first["counters"]["disowns"]
    assert "usleep" in second["run"]["callout_names"].values()
    assert second["run"]["rates"]["steps"] > 0
    usleep = next(row for row in second["run"]["functions"] if row["name"] == "usleep")
    assert usleep["calls"] > 0 and usleep["total_out_s"] > 0  # monitor= times the callouts


def test_top_screen_names_the_run_and_the_slot_states(tmp_path: pathlib.Path) -> None:
    path, stop = tmp_path / "run.vmown", tmp_path / "stop"
    child = subprocess.Popen([sys.executable, "-c", _CHILD, str(path), str(stop)])
    try:
        _wait_for(path)
        time.sleep(0.3)
        proc = subprocess.run(
            [sys.executable, "-m", "vmown", "top", str(path), "--once"], capture_output=True, text=True, timeout=60
        )
    finally:
        stop.touch()
        assert child.wait(timeout=60) == 0
    assert proc.returncode == 0, proc.stderr
    assert f"run: pid {child.pid} running, heartbeat 1000 Hz" in proc.stdout
    assert "corrupt" not in proc.stdout
    assert "stats: callouts " in proc.stdout


def test_a_path_that_exists_is_refused_with_the_fix(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "taken"
    path.write_bytes(b"")

    async def main() -> None:
        pass

    with pytest.raises(FileExistsError, match="python -m vmown stale"):
        vmown.run(main, monitor=path)
    assert path.read_bytes() == b""


def test_the_monitor_environment_variable_starts_the_monitor(tmp_path: pathlib.Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "env.vmown"
    monkeypatch.setenv("VMOWN_MONITOR", str(path))
    seen = {}

    async def main() -> None:
        arena = vmown.Arena.open(path)
        vm = vmown.Ownership.attach(arena.buffer)
        seen["figures"] = read_figures(arena, vm.slots)
        seen["owner_pid"] = vm.slot_info(vm.owner)["pid"]
        del vm
        arena.close()

    vmown.run(main)
    assert seen["figures"]["pid"] == os.getpid() and seen["owner_pid"] == os.getpid()
    assert not path.exists()


def test_a_reader_never_parses_a_snapshot_being_written(tmp_path: pathlib.Path) -> None:
    publisher = Publisher(tmp_path / "seq.vmown", slots=4)
    publisher._collect = lambda: {"stats": {"steps": 1}}
    publisher.publish()
    assert read_figures(publisher.arena, 4)["stats"] == {"steps": 1}
    offset = publisher.offset
    seq = publisher.arena.atomic_load(offset + 8)
    publisher.arena.atomic_store(offset + 8, seq | 1)  # a writer stopped half-way
    assert read_figures(publisher.arena, 4) is None
    publisher.arena.atomic_store(offset + 8, seq + 2)
    publisher.arena.atomic_store(offset + 16, FIGURES_BYTES)  # a length past the room
    assert read_figures(publisher.arena, 4) is None
    publisher.arena.atomic_store(offset + 16, 3)
    publisher.arena.buffer[offset + HEADER_BYTES : offset + HEADER_BYTES + 3] = b"{{{"
    assert read_figures(publisher.arena, 4) is None
    publisher.close(block_freed=True)


def test_rates_are_per_second_and_skip_levels() -> None:
    assert rates({"steps": 10, "threads": 3}, {"steps": 30, "threads": 5}, 2.0) == {"steps": 10.0}
    assert rates({"steps": 1}, {"steps": 2}, 0) == {}
