"""The names observers show come from the C core's own lists: counters
(vmown_counters, Ownership.stats(), python -m vmown top) and slot states."""

from __future__ import annotations

import pathlib
import threading
import time

import vmown
from vmown._native import ffi, lib
from vmown._ownership import _COUNTERS, _SLOT_STATES
from vmown.__main__ import main


def test_counter_names_of_c_stats_and_top_agree(tmp_path: pathlib.Path, capsys) -> None:  # type: ignore[no-untyped-def]
    fields = [name for name, _ in ffi.typeof("vmown_counters").fields]
    assert list(_COUNTERS) == fields
    assert "lazy_disowns" in fields
    assert lib.vmown_counter_name(lib.vmown_counter_count()) == ffi.NULL
    with vmown.Arena.create_temp(1 << 20, directory=tmp_path) as arena:
        vm = vmown.Ownership.create_in(arena.buffer, slots=4)
        stats = vm.stats()
        assert set(fields) <= set(stats)
        assert main(["top", arena.path, "--once"]) == 0
        counters_line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("counters: "))
        shown = [item.split()[0] for item in counters_line[len("counters: ") :].split(", ")]
        assert shown == fields
        del vm
        arena.unlink()


def test_top_names_every_slot_state(tmp_path: pathlib.Path, capsys) -> None:  # type: ignore[no-untyped-def]
    states = [name for name in dir(lib) if name.startswith("VMOWN_SLOT_")]
    assert sorted(_SLOT_STATES) == sorted(getattr(lib, name) for name in states)
    assert all(_SLOT_STATES[getattr(lib, name)] == name[len("VMOWN_SLOT_") :].lower() for name in states)
    with vmown.Arena.create_temp(1 << 20, directory=tmp_path) as arena:
        vm = vmown.Ownership.create_in(arena.buffer, slots=4)
        parked = {}

        def worker() -> None:
            parked["slot"] = vm.slot
            parked["rc"] = lib.vmown_park_new(vm._handle(), vm.slot, 10 * 10**9)

        thread = threading.Thread(target=worker)
        thread.start()
        deadline = time.monotonic() + 10
        while "slot" not in parked or vm.slot_info(parked["slot"])["state"] != "parked":
            assert time.monotonic() < deadline, "the worker did not park"
            time.sleep(0.001)
        assert main(["top", arena.path, "--once"]) == 0
        screen = capsys.readouterr().out
        assert any(line.split()[:2] == [str(parked["slot"]), "parked"] for line in screen.splitlines())
        assert "corrupt" not in screen
        assert lib.vmown_unpark(vm._handle(), parked["slot"]) == parked["slot"]
        thread.join()
        assert parked["rc"] == 0
        del vm
        arena.unlink()
