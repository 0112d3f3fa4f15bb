"""README.md: every ```python and ```sh block runs as written.

The rules the README's blocks follow:
- The first block is the set-up: its `# demo` and `# tests` commands are
  checked word for word (CI runs the second) and not run here.
- A python block is a program.  One whose first line is `# NAME.py: ...` is
  saved as NAME.py; a block whose name another block mentions is a second
  program that the other one starts, and is not run on its own.  Every other
  block runs twice in a fresh directory with this interpreter: the second run
  proves the first cleaned up (e.g. its /dev/shm files).
- A sh block holds comments and `python -m vmown ...` lines, run with this
  interpreter while each /dev/shm arena they name exists, as it would while
  the tour's engine.py runs.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pathlib
import re
import shlex
import subprocess
import sys
import tempfile
from typing import Iterator

import pytest

import vmown

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"
SETUP = {
    "# demo": "python3 -m venv .venv && .venv/bin/pip install -q -e '.[test]' && "
    ".venv/bin/python -m vmown demo",
    "# tests": "python3 -m venv .venv && .venv/bin/pip install -q -e '.[test]' && .venv/bin/python -m pytest",
}
SHM_PATH = re.compile(r"/dev/shm/[\w.-]+")


def _blocks() -> list[tuple[str, str]]:
    """(language, text) of each ```python and ```sh block, in order."""
    return re.findall(r"^```(python|sh)\n(.*?)^```$", README.read_text(), flags=re.S | re.M)


def _name(text: str) -> str | None:
    match = re.match(r"# (\w+\.py):", text)
    return match.group(1) if match else None


def _programs() -> list[tuple[str, str]]:
    """(file name, text) of every python block."""
    blocks = [text for language, text in _blocks() if language == "python"]
    return [(_name(text) or f"block_{i}.py", text) for i, text in enumerate(blocks)]


def _started_by_another(name: str, programs: list[tuple[str, str]]) -> bool:
    return any(name in text for other, text in programs if other != name)


@contextlib.contextmanager
def _shm_names_held() -> Iterator[None]:
    """Blocks use fixed names like /dev/shm/engine.arena: one checkout's tests at a time."""
    with open(os.path.join(tempfile.gettempdir(), "vmown-readme-tests.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _check_left_nothing(text: str, what: str) -> None:
    left = [path for path in sorted(set(SHM_PATH.findall(text))) if os.path.lexists(path)]
    for path in left:
        os.unlink(path)
    assert not left, f"{what} left {left} behind"


def test_the_first_block_is_the_set_up_with_its_demo_and_test_commands() -> None:
    language, text = _blocks()[0]
    lines = text.splitlines()
    assert language == "sh"
    assert lines == [line for header, command in SETUP.items() for line in (header, command)]


def test_tours_that_need_a_second_program_show_it() -> None:
    programs = _programs()
    assert len(programs) >= 4
    second = [name for name, _ in programs if _started_by_another(name, programs)]
    assert second == ["peer.py"]


def _run_on_their_own() -> list[str]:
    programs = _programs()
    return [name for name, _ in programs if not _started_by_another(name, programs)]


def _sh_blocks() -> list[int]:
    """Indexes of the sh blocks after the set-up."""
    return [i for i, (language, _) in enumerate(_blocks()) if language == "sh" and i > 0]


@pytest.mark.parametrize("name", _run_on_their_own())
def test_python_block_runs_twice_as_written(name: str, tmp_path: pathlib.Path) -> None:
    programs = _programs()
    for program, text in programs:
        (tmp_path / program).write_text(text)
    text = dict(programs)[name]
    with _shm_names_held():
        for run in ("first", "second"):
            done = subprocess.run(
                [sys.executable, name], cwd=tmp_path, capture_output=True, text=True, timeout=120
            )
            _check_left_nothing(text, f"the {run} run of {name}")
            assert done.returncode == 0, f"{name}, {run} run:\n{done.stdout}\n{done.stderr}"


@pytest.mark.parametrize("index", _sh_blocks())
def test_sh_block_runs_as_written(index: int, tmp_path: pathlib.Path) -> None:
    text = _blocks()[index][1]
    commands = [line for line in text.splitlines() if line.strip() and not line.startswith("#")]
    assert commands and all(line.startswith("python -m vmown ") for line in commands), text
    with _shm_names_held(), contextlib.ExitStack() as cleanup:
        for path in sorted(set(SHM_PATH.findall(text))):
            arena = cleanup.enter_context(vmown.Arena.create(path, 1 << 20))
            cleanup.callback(arena.unlink)
            vm = vmown.Ownership.create_in(arena.buffer, slots=8)
            cleanup.callback(vm.close)
        for line in commands:
            argv = shlex.split(line, comments=True)
            done = subprocess.run(
                [sys.executable, *argv[1:]], cwd=tmp_path, capture_output=True, text=True, timeout=60
            )
            assert done.returncode == 0, f"{line}:\n{done.stdout}\n{done.stderr}"
    _check_left_nothing(text, f"README block {index}")
