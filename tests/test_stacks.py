"""python -m vmown stacks PID: py-spy's frames joined with the VM's tables."""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys
import time

import pytest

import vmown
from vmown import _stacks


def _py_spy_available() -> bool:
    try:
        _stacks._py_spy()
    except FileNotFoundError:
        return False
    return True


needs_py_spy = pytest.mark.skipif(not _py_spy_available(), reason="py-spy is not installed (the debug extra)")


def _stacks_json(pid: int) -> dict:
    proc = subprocess.run(
        [sys.executable, "-m", "vmown", "stacks", str(pid), "--json"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@needs_py_spy
def test_stacks_of_a_running_demo_show_owner_callouts_and_parked_workers(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "demo.vmown"
    env = {**os.environ, "VMOWN_MONITOR": str(path)}
    child = subprocess.Popen(
        [sys.executable, "-m", "vmown", "demo", "--calls", "40000", "--block-fraction", "0.05"],
        env=env,
        stdout=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while not path.exists():
            assert time.monotonic() < deadline, "the demo's monitor file did not appear"
            time.sleep(0.01)
        time.sleep(0.6)  # a snapshot of the figures with names
        roles: set[str] = set()
        # The two reads are not one instant, and the owner spends most of its
        # time out in getppid: look until each role was seen.
        for _ in range(80):
            report = _stacks_json(child.pid)
            assert report["pid"] == child.pid and report["monitor"] == str(path)
            roles |= {t["role"].split(" for ")[0] for t in report["threads"]}
            if {"owner", "parked"} <= roles and roles & {"in a callout to usleep", "in a callout to getppid"}:
                break
        else:
            pytest.fail(f"roles seen: {sorted(roles)}")
    finally:
        child.kill()
        child.wait(timeout=60)
    callout = next(t for t in report["threads"] if t["role"].startswith("in a callout to"))
    assert callout["slot"] and callout["frames"]
    main = next(t for t in report["threads"] if t["name"] == "MainThread")
    assert any(f["name"] == "_work" for f in main["frames"]) or main["role"] == "parked"
    workers = [t for t in report["threads"] if t["name"] == "vmown-worker"]
    # A worker has a slot from just after its thread starts to just before it
    # exits; caught at either end, it says so.
    assert any(t["slot"] for t in workers)
    assert all(t["slot"] or t["role"] == "worker starting or leaving (no slot)" for t in workers)
    assert any(t["name"] == "vmown-heartbeat" for t in report["threads"])


@needs_py_spy
def test_stacks_without_vm_tables_still_list_the_threads() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        time.sleep(0.5)
        proc = subprocess.run(
            [sys.executable, "-m", "vmown", "stacks", str(child.pid)], capture_output=True, text=True, timeout=120
        )
    finally:
        child.kill()
        child.wait()
    assert proc.returncode == 0, proc.stderr
    assert "no VM tables (start the run with monitor=PATH" in proc.stdout
    assert "<module>  (<string>:1)" in proc.stdout


def test_stacks_of_a_process_that_is_gone_fails_cleanly() -> None:
    if not _py_spy_available():
        pytest.skip("py-spy is not installed")
    proc = subprocess.run(
        [sys.executable, "-m", "vmown", "stacks", "999999999"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 1 and proc.stderr.startswith("vmown stacks: ")


def test_allow_inspection_returns_whether_prctl_took() -> None:
    assert vmown.allow_inspection() in (True, False)
