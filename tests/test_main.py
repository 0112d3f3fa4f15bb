"""python -m vmown: demo, top, stale."""

from __future__ import annotations

import os
import pathlib
import subprocess
import argparse
import sys

import vmown
from vmown.__main__ import main, parser


def test_top_shows_owner_queue_and_slots_of_a_shared_vm(tmp_path: pathlib.Path, capsys) -> None:  # type: ignore[no-untyped-def]
    with vmown.Arena.create_temp(1 << 20, directory=tmp_path) as arena:
        vm = vmown.Ownership.create_in(arena.buffer, slots=8)
        vm.own()
        assert main(["top", arena.path, "--once"]) == 0
        screen = capsys.readouterr().out
        assert f"owner: slot {vm.slot} (pid {os.getpid()}" in screen
        assert "queue: empty" in screen and "running" in screen
        vm.disown()
        del vm
        arena.unlink()


def test_top_on_a_file_that_is_not_an_arena(tmp_path: pathlib.Path, capsys) -> None:  # type: ignore[no-untyped-def]
    bogus = tmp_path / "bogus"
    bogus.write_bytes(b"x" * 8192)
    os.chmod(bogus, 0o600)
    assert main(["top", str(bogus), "--once"]) == 1
    assert "vmown top:" in capsys.readouterr().err


def test_stale_lists_and_removes_arenas_of_dead_creators(tmp_path: pathlib.Path, capsys) -> None:  # type: ignore[no-untyped-def]
    script = f"import vmown; a = vmown.Arena.create_temp(4096, directory={str(tmp_path)!r}); print(a.path)"
    path = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout.strip()
    assert main(["stale", str(tmp_path)]) == 0
    assert capsys.readouterr().out.split() == [path]
    assert main(["stale", str(tmp_path), "--remove"]) == 0
    assert not os.path.exists(path)


def test_demo_runs_and_shows_the_point() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "vmown", "demo", "--processes", "20", "--calls", "10", "--block-fraction", "0.05"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "vmown, every call threaded" in done.stdout and "ticker worst late" in done.stdout


def _parsers(command: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """The parser and every subcommand's parser under it."""
    found = [command]
    for action in command._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                found += _parsers(sub)
    return found


def test_every_option_and_argument_of_every_subcommand_has_help() -> None:
    commands = _parsers(parser())
    names = {command.prog for command in commands}
    assert names >= {f"python -m vmown {name}" for name in ("demo", "top", "stale")}
    missing = [
        f"{command.prog} {'/'.join(action.option_strings) or action.dest}"
        for command in commands
        for action in command._actions
        if not action.help or action.help == argparse.SUPPRESS
    ]
    assert not missing, f"no help text: {missing}"
