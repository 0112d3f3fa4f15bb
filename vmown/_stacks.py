# python -m vmown stacks PID: every thread of a running vmown program, with
# its Python and native frames (py-spy) and what it is doing for the VM.
#
# Two sources, joined by the kernel's thread id:
#   - py-spy (`py-spy dump --json --native --pid PID`, the `debug` extra):
#     the frames of every thread that has a Python thread state, native
#     frames interleaved.  py-spy pauses the program while it reads it.
#   - the run's control block, from the monitor arena of a run started with
#     vmown.run(main, monitor=PATH) or VMOWN_MONITOR=PATH (vmown/_monitor.py;
#     found in /proc/PID/maps, or given with --monitor): each slot's thread
#     id, state and callout tag; the owner word; the figures' names of the
#     tags and the process each thread was running at the last snapshot.
# A thread's role: "owner", "in a callout to NAME for ~T s", "parked" (an
# idle worker), "queued for the VM", "granted" (woken with the VM, on its
# way), or, for a thread with no slot, its name (vmown-heartbeat,
# vmown-spawner, vmown-monitor...).  Worker threads that never entered
# Python have no frames for py-spy and are listed from /proc/PID/task under
# their names.
#
# One instant.  py-spy stops the program while it reads the stacks (it
# cannot read a program stopped with SIGSTOP); the block is sampled while
# py-spy runs and the table of the longest stretch in which the owner word
# did not move is kept (_table_while): in a busy run, py-spy's stop.  A
# role may still come from just before or after it.
#
# ptrace.  py-spy reads the program's memory with ptrace's permissions.  Where
# Yama restricts ptrace to descendants (kernel.yama.ptrace_scope = 1, the
# default of several distributions), `stacks` run from another terminal is
# refused; the program may allow it by calling vmown.allow_inspection()
# (prctl(PR_SET_PTRACER, PR_SET_PTRACER_ANY): any process of the same user
# may then attach), or py-spy is run with sudo.

from __future__ import annotations

import ctypes
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any

from ._arena import Arena
from ._ownership import Ownership
from ._monitor import read_figures

__all__ = ["allow_inspection"]

PR_SET_PTRACER = 0x59616D61
PR_SET_PTRACER_ANY = -1
PY_SPY_TIMEOUT_S = 60.0


def allow_inspection() -> bool:
    """Let any process of this user attach to this one (py-spy, python -m vmown stacks, gdb).

    Needed only where Yama restricts ptrace to a process's ancestors
    (/proc/sys/kernel/yama/ptrace_scope = 1): prctl(PR_SET_PTRACER,
    PR_SET_PTRACER_ANY).  Returns whether the call succeeded; without Yama
    it fails harmlessly (nothing restricts ptrace there).
    """
    libc = ctypes.CDLL(None, use_errno=True)
    return libc.prctl(PR_SET_PTRACER, ctypes.c_ulong(PR_SET_PTRACER_ANY & 0xFFFFFFFFFFFFFFFF), 0, 0, 0) == 0


def _py_spy() -> str:
    found = shutil.which("py-spy") or shutil.which("py-spy", path=os.path.dirname(sys.executable))
    if not found:
        raise FileNotFoundError("py-spy is not installed: pip install 'vmown[debug]' (or pip install py-spy)")
    return found


def _start_py_spy(pid: int, native: bool = True) -> subprocess.Popen[bytes]:
    # Its output goes to files, not pipes: a dump of many threads fills a
    # pipe, and py-spy would wait on it (the program still stopped) while
    # _table_while waits for py-spy.
    out, err = tempfile.TemporaryFile(), tempfile.TemporaryFile()
    command = [_py_spy(), "dump", "--json", *(["--native"] if native else []), "--pid", str(pid)]
    spy = subprocess.Popen(command, stdout=out, stderr=err)
    _outputs[spy.pid] = (out, err)
    return spy


_UNWIND_ATTEMPTS = 3  # dumps tried when py-spy cannot unwind a native stack

_outputs: dict[int, tuple[Any, Any]] = {}  # py-spy's pid -> its stdout and stderr files


def _py_spy_threads(spy: subprocess.Popen[bytes]) -> list[dict[str, Any]]:
    """py-spy's threads, with native frames, once it has finished."""
    try:
        spy.wait(timeout=PY_SPY_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        spy.kill()
        spy.wait()
        raise RuntimeError(f"py-spy dump took over {PY_SPY_TIMEOUT_S:g} s") from None
    out, err = (_read_all(f) for f in _outputs.pop(spy.pid))
    if spy.returncode != 0:
        hint = (
            " (ptrace refused: run as the same user, call vmown.allow_inspection() in the program, or use sudo)"
            if "ermission" in err
            else ""
        )
        raise RuntimeError(f"py-spy dump failed{hint}: {err.strip()[:500]}")
    threads = json.loads(out)
    if not isinstance(threads, list):
        raise RuntimeError("py-spy dump --json gave no list of threads")
    return threads


def _read_all(f: Any) -> str:
    f.seek(0)
    text = f.read().decode(errors="replace")
    f.close()
    return str(text)


def find_monitor(pid: int) -> str | None:
    """The monitor arena file that process ``pid`` maps, if any (its /proc/PID/maps)."""
    try:
        with open(f"/proc/{pid}/maps") as maps:
            paths = {line.split(None, 5)[5].strip() for line in maps if len(line.split(None, 5)) == 6}
    except OSError:
        return None
    for path in sorted(paths):
        if not path.startswith("/") or path.endswith(" (deleted)") or ".so" in os.path.basename(path):
            continue
        try:
            arena = Arena.open(path, mode=0o777, timeout=0.1)
        except (OSError, Exception):  # noqa: BLE001 - most mapped files are not arenas
            continue
        try:
            vm = Ownership.attach(arena.buffer)
            figures = read_figures(arena, vm.slots)
            if figures and figures.get("pid") == pid:
                return path
        except Exception:  # noqa: BLE001 - an arena but not a monitor's
            pass
        finally:
            vm = None  # type: ignore[assignment]
            arena.close()
    return None


def _task_names(pid: int) -> dict[int, str]:
    names = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return names
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/comm") as comm:
                names[int(tid)] = comm.read().strip()
        except OSError:
            continue
    return names


def _read_table(vm: Ownership) -> dict[str, Any]:
    slots = {}
    for slot in range(1, vm.slots + 1):
        info = vm.slot_info(slot)
        if info["state"] != "free":
            slots[int(info["tid"])] = {"slot": slot, **info}
    return {"owner": vm.owner, "slots": slots}


def _table_while(path: str, spy: subprocess.Popen[bytes]) -> dict[str, Any]:
    """The block as it stood while py-spy held the program stopped, and the run's figures.

    py-spy stops every thread while it reads their stacks; the block cannot
    change then.  So the block is sampled for as long as py-spy runs, and the
    table kept is the one of the longest stretch in which the owner word
    (owner and epoch: every disown moves the epoch) and the waiter count did
    not move.  In a busy run that stretch is py-spy's stop; in a quiet one any
    stretch shows the same state.
    """
    arena = Arena.open(path, mode=0o777)
    try:
        vm = Ownership.attach(arena.buffer)
        figures = read_figures(arena, vm.slots) or {}
        best: tuple[float, dict[str, Any]] | None = None
        key, table, since = None, None, 0.0
        deadline = time.monotonic() + PY_SPY_TIMEOUT_S
        while True:
            running = spy.poll() is None and time.monotonic() < deadline
            now = time.monotonic()
            new_key = (vm.epoch, vm.owner, vm.waiters)
            if new_key != key or not running:
                if table is not None and (best is None or now - since > best[0]):
                    best = (now - since, table)
                if not running:
                    break
                key, table, since = new_key, _read_table(vm), now
            time.sleep(0.0002)
        assert best is not None
        del vm
    finally:
        arena.close()
    return {**best[1], "figures": figures}


def _role(slot: dict[str, Any] | None, owner: int, figures: dict[str, Any], name: str) -> str:
    if slot is None:
        if name == "vmown-worker":  # a pool thread holds a slot from its start to its exit but for both ends
            return "worker starting or leaving (no slot)"
        return name or "not a VM thread"
    state, tag = slot["state"], slot["callout"]
    if state in ("parked", "waiting", "granted"):
        return {"parked": "parked", "waiting": "queued for the VM", "granted": "granted the VM"}[state]
    if slot["slot"] == owner and not slot["lazy_out"]:
        return "owner"  # the tag is its last callout's: a slot keeps it until the next disown
    if tag:
        function = figures.get("callout_names", {}).get(str(tag))
        if function is None:
            from ._watchdog import _tag_name

            function = _tag_name(tag)
        stats, hz = figures.get("stats", {}), figures.get("hz") or 0
        out = ""
        if hz and "ticks" in stats and stats["ticks"] > slot["callout_tick"]:  # else: since the last snapshot
            since_snapshot_s = max(0.0, time.time() - figures.get("published_s", 0))
            out_s = (stats["ticks"] - slot["callout_tick"]) / hz + since_snapshot_s
            out = f" for ~{out_s:.1f} s"
        return f"in a callout to {function}{out}"
    if slot["slot"] == owner:
        return "owner"
    # "left" / "left_idle": it gave up waiting or parking and runs; its slot is
    # still linked where it left until the core unlinks it.
    return "running, not owning the VM" if state in ("running", "left", "left_idle") else state


def inspect(pid: int, monitor: str | None = None) -> dict[str, Any]:
    """Every thread of ``pid``: name, role, slot, the process it serves, frames."""
    path = monitor or find_monitor(pid)
    for attempt in range(_UNWIND_ATTEMPTS + 1):
        spy = _start_py_spy(pid, native=attempt < _UNWIND_ATTEMPTS)
        try:
            table = _table_while(path, spy) if path else {"owner": 0, "slots": {}, "figures": {}}
        finally:
            try:
                dump = _py_spy_threads(spy)
            except RuntimeError as exc:
                # Unwinding the native stack of a thread sometimes fails
                # (libunwind's UNW_E* errors: a thread caught in a frame
                # without unwind information); the next dump may catch the
                # threads elsewhere, and the last one does without native
                # frames.
                if "UNW_E" not in str(exc) or attempt == _UNWIND_ATTEMPTS:
                    raise
                continue
        break
    names = _task_names(pid)
    serving = {int(k): v for k, v in table["figures"].get("running", {}).items()}
    threads = []
    seen = set()
    for thread in dump:
        tid = int(thread.get("os_thread_id") or 0)
        seen.add(tid)
        slot = table["slots"].get(tid)
        name = thread.get("thread_name") or names.get(tid, "")
        threads.append(
            {
                "tid": tid,
                "name": name,
                "role": _role(slot, table["owner"], table["figures"], name),
                "slot": slot["slot"] if slot else None,
                # the last snapshot's: it says nothing of a thread parked since
                "process": serving.get(slot["slot"]) if slot and slot["state"] != "parked" else None,
                "owns_gil": bool(thread.get("owns_gil")),
                "frames": [
                    {
                        "name": f.get("name"),
                        "file": f.get("filename"),
                        "line": f.get("line"),
                        "native": bool(f.get("module")),  # py-spy names a module for native frames only
                    }
                    for f in thread.get("frames", [])
                ],
            }
        )
    for tid, name in sorted(names.items()):
        if tid in seen or not name.startswith("vmown-"):
            continue
        slot = table["slots"].get(tid)
        threads.append(
            {
                "tid": tid,
                "name": name,
                "role": _role(slot, table["owner"], table["figures"], name),
                "slot": slot["slot"] if slot else None,
                "process": None,
                "owns_gil": False,
                "frames": [],
            }
        )
    return {
        "pid": pid,
        "monitor": path,
        "owner_slot": table["owner"],
        "native_frames": attempt < _UNWIND_ATTEMPTS,  # False: py-spy could not unwind them
        "threads": threads,
    }


def format_text(report: dict[str, Any]) -> str:
    lines = [
        f"process {report['pid']}"
        + (f", VM tables from {report['monitor']}" if report["monitor"] else
           ", no VM tables (start the run with monitor=PATH or VMOWN_MONITOR=PATH)")  # fmt: skip
        + ("" if report.get("native_frames", True) else " (no native frames: py-spy could not unwind them)")
    ]
    for t in report["threads"]:
        head = f"\nthread {t['tid']} ({t['name'] or '?'}): {t['role']}"
        if t["slot"]:
            head += f", slot {t['slot']}"
        if t["process"]:
            head += f", serving process {t['process']}"
        lines.append(head + (", holds the GIL" if t["owns_gil"] else ""))
        if not t["frames"]:
            lines.append("    (no Python thread state: a C thread)")
        for f in t["frames"]:
            where = f"{f['file']}:{f['line']}" if not f["native"] else os.path.basename(str(f["file"]))
            lines.append(f"    {f['name']}  ({where})")
    return "\n".join(lines)
