"""The documentation names only what exists: docs/ARCHITECTURE.md and the README's layout.

A reference ``path:name`` must name a file of the tree that defines ``name``
(a Python def or class, a C function definition or macro); ``path:"text"``
must name a file that contains ``text`` (a section of a C test program); a
bare ``path`` must exist.  The README's layout section must name only files
that exist, and every source file of native/ must be named there.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ARCHITECTURE = ROOT / "docs" / "ARCHITECTURE.md"
README = ROOT / "README.md"

_TOP = r"(?:native|vmown|tests|benchmarks|docs)"
_REF = re.compile(rf"`({_TOP}/[\w./-]+):(\w+)`")
_TEXT_REF = re.compile(rf'`({_TOP}/[\w./-]+):"([^"`]+)"`')
_PATH = re.compile(rf"`({_TOP}/[\w./-]*)`")


def _defines(path: Path, name: str) -> bool:
    text = path.read_text()
    if path.suffix == ".py":
        pattern = rf"^\s*(?:async\s+)?(?:def|class)\s+{name}\b|^{name}\s*[:=]"
    else:
        # A definition starts at column 0 and its first line does not end a
        # declaration; a macro counts too.
        pattern = rf"^[A-Za-z_][^;\n]*\b{name}\s*\((?:[^;\n]*$|[^\n]*\{{)|^#\s*define\s+{name}\b"
    return re.search(pattern, text, re.MULTILINE) is not None


def dangling(text: str, root: Path = ROOT) -> list[str]:
    """The references of ``text`` that name nothing in the tree under ``root``."""
    problems = []
    for path, name in _REF.findall(text):
        file = root / path
        if not file.is_file():
            problems.append(f"{path}:{name}: no such file")
        elif not _defines(file, name):
            problems.append(f"{path}:{name}: {name} is not defined there")
    for path, quoted in _TEXT_REF.findall(text):
        file = root / path
        if not file.is_file():
            problems.append(f'{path}:"{quoted}": no such file')
        elif quoted not in file.read_text():
            problems.append(f'{path}:"{quoted}": not in that file')
    for path in _PATH.findall(text):
        if not (root / path).exists():
            problems.append(f"{path}: no such file or directory")
    return problems


def _layout(readme: str) -> str:
    section = readme.split("\n## Layout\n", 1)[1].split("\n## ", 1)[0]
    return section.split("```", 2)[1]


def test_architecture_names_only_what_exists() -> None:
    text = ARCHITECTURE.read_text()
    assert len(_REF.findall(text)) > 50, "the page lost its references"
    assert dangling(text) == []


def _indexed(text: str) -> set[str]:
    """The races of the index: first cells such as ``S1`` or ``R1-R3``."""
    races = set()
    for first in re.findall(r"^\| ([A-Z]+\d+(?:-[A-Z]+\d+)?) \|", text, re.MULTILINE):
        low, _, high = first.partition("-")
        letters = low.rstrip("0123456789")
        for n in range(int(low[len(letters) :]), int((high or low)[len(letters) :]) + 1):
            races.add(f"{letters}{n}")
    return races


def test_architecture_indexes_every_race_of_the_scheduler() -> None:
    code = (ROOT / "vmown" / "_scheduler.py").read_text()
    numbered = set(re.findall(r"^\s*# (P\d+)\.", code, re.MULTILINE))
    assert len(numbered) >= 5, "_scheduler.py lost its numbered races"
    assert sorted(numbered - _indexed(ARCHITECTURE.read_text())) == []


def test_architecture_indexes_every_race_of_the_threads() -> None:
    paths = [ROOT / "vmown" / name for name in ("_token.py", "_callback.py", "_scheduler.py")]
    code = "".join(path.read_text() for path in paths if path.exists())
    numbered = set(re.findall(r"^#\s+(T\d+)[.\s]", code, re.MULTILINE))
    assert {"T1", "T2", "T3", "T4", "T5", "T6"} <= numbered, "the threads' notes lost their numbered races"
    assert sorted(numbered - _indexed(ARCHITECTURE.read_text())) == []


def test_architecture_indexes_every_race_of_cancellation() -> None:
    code = (ROOT / "vmown" / "_cancel.py").read_text()
    numbered = set(re.findall(r"^# (K\d+)\.", code, re.MULTILINE))
    assert len(numbered) >= 5, "_cancel.py lost its numbered races"
    assert sorted(numbered - _indexed(ARCHITECTURE.read_text())) == []


def test_architecture_indexes_every_numbered_race_of_the_core() -> None:
    native = "".join(p.read_text() for p in sorted((ROOT / "native").glob("*.c")))
    numbered = set(re.findall(r"^ \*\s+([SRL]\d)[.:] ", native, re.MULTILINE))
    numbered |= set(re.findall(r"\b(L\d): ", native))
    assert {"S1", "S8", "R1", "R3", "L1", "L2"} <= numbered, "the core's notes lost their numbered races"
    assert sorted(numbered - _indexed(ARCHITECTURE.read_text())) == []


def test_readme_layout_names_only_what_exists() -> None:
    layout = _layout(README.read_text())
    files = {p.name for p in ROOT.rglob("*") if p.is_file() and not {".venv", ".git"} & set(p.parts)}
    named = set(re.findall(r"\b[\w-]+\.(?:c|h|py|md)\b", layout))
    assert named, "the layout names no file"
    assert sorted(named - files) == []
    for directory in re.findall(r"^([\w.]+/(?:[\w]+/)?)", layout, re.MULTILINE):
        assert (ROOT / directory).is_dir(), f"{directory} is in the layout but not in the tree"


def test_readme_layout_names_every_c_file() -> None:
    named = set(re.findall(r"\b[\w-]+\.[ch]\b", _layout(README.read_text())))
    sources = {p.name for p in (ROOT / "native").glob("*.[ch]")} | {
        p.name for p in (ROOT / "native" / "pyext").glob("*.c")
    }
    assert sorted(sources - named) == []


def test_readme_points_at_the_architecture() -> None:
    assert "docs/ARCHITECTURE.md" in README.read_text()


@pytest.mark.parametrize(
    "text, problem",
    [
        ("`vmown/_scheduler.py:_no_such_function`", "is not defined there"),
        ("`native/no_such_file.c:main`", "no such file"),
        ('`native/tests/lazy_test.c:"no such section"`', "not in that file"),
        ("`tests/no_such_test.py`", "no such file or directory"),
    ],
)
def test_the_check_finds_what_is_missing(text: str, problem: str) -> None:
    (found,) = dangling(text)
    assert problem in found


def test_the_check_accepts_what_exists() -> None:
    text = (
        "`vmown/_scheduler.py:_serve` `vmown/_scheduler.py:Process` `tests/test_docs.py:dangling` "
        '`native/callout.c:vmown_callout_begin` `native/tests/lazy_test.c:"called off after R1"` `native/`'
    )
    assert dangling(text) == []


def test_architecture_indexes_every_race_of_the_descriptor_waits() -> None:
    code = "".join((ROOT / "vmown" / name).read_text() for name in ("_io.py", "_scheduler.py"))
    numbered = set(re.findall(r"^\s*# (N\d+)\.", code, re.MULTILINE))
    assert len(numbered) >= 6, "_io.py and _scheduler.py lost their numbered races"
    assert sorted(numbered - _indexed(ARCHITECTURE.read_text())) == []


def test_architecture_indexes_every_race_of_the_asyncio_loop() -> None:
    code = (ROOT / "vmown" / "_aio.py").read_text()
    numbered = set(re.findall(r"^# (E\d+)\.", code, re.MULTILINE))
    assert len(numbered) >= 5, "_aio.py lost its numbered races"
    assert sorted(numbered - _indexed(ARCHITECTURE.read_text())) == []
