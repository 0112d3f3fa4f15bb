"""The Lua 5.4 module on libvmown (lua/): a second interpreter on the core.

libvmown is installed to a temporary prefix and the module built against it
with pkg-config (lua/Makefile), then lua/ticker.lua runs: a 1 ms ticker
coroutine next to 20 coroutines that each make five 30 ms blocking usleep
calls through vmown.threaded, and a callback into Lua from a foreign thread.

Marked `lua`.  Without Lua's headers (Debian's liblua5.4-dev) and interpreter
(lua5.4) the tests skip, except with VMOWN_REQUIRE_LUA=1: .ci/run installs
them and runs `pytest -m lua` so.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess

import pytest

from vmown._build import ROOT

from .support import install_libvmown, make, pkg_config

LUA = ROOT / "lua"

pytestmark = pytest.mark.lua


def lua_available() -> bool:
    if not (shutil.which("lua5.4") and shutil.which("pkg-config") and shutil.which("make")):
        return False
    return subprocess.run(["pkg-config", "--exists", "lua5.4"]).returncode == 0


@pytest.fixture(scope="module")
def module_dir(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    if not lua_available():
        reason = "Lua 5.4 headers or interpreter missing (apt-get install liblua5.4-dev lua5.4)"
        if os.environ.get("VMOWN_REQUIRE_LUA") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    out = tmp_path_factory.mktemp("lua")
    prefix = install_libvmown(out)
    env = {**os.environ, "PKG_CONFIG_PATH": str(prefix / "lib" / "pkgconfig")}
    make(f"OUT={out / 'module' / 'vmown.so'}", directory=LUA, env=env)
    assert pkg_config(prefix, "--variable=libdir") == [str(prefix / "lib")]
    return out / "module"


def run_lua(module_dir: pathlib.Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "LUA_CPATH": f"{module_dir}/?.so"}
    return subprocess.run(["lua5.4", *args], capture_output=True, text=True, timeout=timeout, env=env)


def figures(output: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in output.split() if "=" in line)


def test_blocking_calls_overlap_the_ticker_keeps_time_and_a_foreign_thread_calls_back(
    module_dir: pathlib.Path,
) -> None:
    done = run_lua(module_dir, str(LUA / "ticker.lua"))
    assert done.returncode == 0, done.stdout + done.stderr
    f = figures(done.stdout)
    serial_s = float(f["serial_s"])
    assert serial_s == 3.0
    # Generous bounds (2 shared cores): the calls overlap, the run is far
    # under the serial sum; the ticker runs all along, within a few ticks.
    assert float(f["run_s"]) < serial_s / 2, done.stdout
    assert int(f["os_threads_ran_calls"]) > 1, done.stdout
    assert int(f["ticks"]) >= 20, done.stdout
    assert float(f["ticker_worst_late_ms"]) < 50, done.stdout
    # The callback ran on a thread that made no call, owning the VM.
    assert f["callback_owned"] == "true" and f["callback_foreign_thread"] == "true", done.stdout
    assert f["callback_result"] == "42"


def test_an_error_in_a_coroutine_ends_the_run_with_it(module_dir: pathlib.Path) -> None:
    # The run ends while a call is out (first run), or while a foreign
    # thread is on its way (second): both are waited for before the block
    # goes, and a third run works.
    script = (
        'local vmown = require "vmown"\n'
        "local usleep = vmown.threaded(vmown.c.usleep)\n"
        "local function call() usleep(20000) end\n"
        "local function foreign() vmown.call_from_foreign_thread(function() end) end\n"
        'local function boom() error("boom") end\n'
        "for _, order in ipairs({{call, boom, foreign}, {foreign, boom, call}}) do\n"
        "  print(pcall(vmown.run, function()\n"
        "    for _, f in ipairs(order) do vmown.spawn(f) end\n"
        "    vmown.sleep(0.1)\n"
        "  end))\n"
        "end\n"
        "print(pcall(vmown.run, function() vmown.spawn(call) end))\n"
        "print(pcall(vmown.spawn, print))\n"
    )
    done = run_lua(module_dir, "-e", script)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 4, done.stdout
    assert all(line.startswith("false") and "boom" in line for line in lines[:2]), done.stdout
    assert lines[2].startswith("true"), done.stdout
    assert lines[3].startswith("false") and "only inside vmown.run()" in lines[3], done.stdout
