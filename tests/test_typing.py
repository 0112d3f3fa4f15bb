"""Typing: py.typed ships, and mypy --strict accepts a program using the whole public API."""

from __future__ import annotations

import pathlib
import subprocess
import sys

import pytest

import vmown

HERE = pathlib.Path(__file__).resolve().parent
TOUR = HERE / "typing" / "api_tour.py"

WRONG = """
import vmown

async def square(x: int) -> int:
    return x * x

async def main() -> None:
    vmown.spawn(square, "seven")
    text: str = await vmown.spawn(square, 7)
    async with vmown.TaskGroup() as tg:
        tg.spawn(square)

vmown.run(main, 1)
"""


def _mypy(path: pathlib.Path, cache: pathlib.Path) -> subprocess.CompletedProcess[str]:
    pytest.importorskip("mypy")
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--follow-imports=silent", "--cache-dir", str(cache), str(path)],
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_py_typed_ships() -> None:
    assert (pathlib.Path(vmown.__file__).parent / "py.typed").is_file()


def test_mypy_strict_accepts_the_api_tour(tmp_path: pathlib.Path) -> None:
    done = _mypy(TOUR, tmp_path / "cache")
    assert done.returncode == 0, done.stdout + done.stderr


def test_mypy_strict_sees_the_types_of_spawn_and_run(tmp_path: pathlib.Path) -> None:
    """The check above can fail: arguments and results that do not match fn's are errors."""
    wrong = tmp_path / "wrong.py"
    wrong.write_text(WRONG)
    done = _mypy(wrong, tmp_path / "cache")
    assert done.returncode == 1
    assert done.stdout.count("[arg-type]") == 4, done.stdout


def test_the_api_tour_runs() -> None:
    done = subprocess.run([sys.executable, str(TOUR)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "'square': 49" in done.stdout
