"""The C files form layers without a cycle: a file calls only its own layer
and the layers below it.

Each native/*.c is compiled on its own (gcc -c) and its object read with nm:
a symbol a file uses and a file of a higher layer defines fails the test.
LAYERS is the one statement of the order; vmown/_build.py lists the sources
in it.
"""

from __future__ import annotations

import pathlib
import subprocess

import pytest

from vmown._build import NATIVE, SOURCES

# Lowest first.  lifecycle.c is the one file of the core allowed to call up:
# it stops what the layers above set up.
LAYERS: list[tuple[str, ...]] = [
    ("os_linux.c", "version.c"),
    ("arena.c", "channel.c"),
    ("block.c", "owner.c", "grants.c", "idle.c", "repair.c"),
    ("callout.c",),
    ("workers.c",),
    ("heartbeat.c",),
    ("lifecycle.c",),
]
LAYER_OF = {name: level for level, files in enumerate(LAYERS) for name in files}


def nm(obj: pathlib.Path, *flags: str) -> set[str]:
    done = subprocess.run(["nm", *flags, str(obj)], capture_output=True, text=True, check=True)
    return {line.split()[-1] for line in done.stdout.splitlines() if line.strip()}


@pytest.fixture(scope="module")
def objects(tmp_path_factory: pytest.TempPathFactory) -> dict[str, pathlib.Path]:
    out = tmp_path_factory.mktemp("layers")
    objs = {}
    for name in LAYER_OF:
        obj = out / (name[:-2] + ".o")
        command = ["gcc", "-std=c11", "-O2", f"-I{NATIVE}", "-c", str(NATIVE / name), "-o", str(obj)]
        done = subprocess.run(command, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        objs[name] = obj
    return objs


def test_every_c_file_has_a_layer_and_the_build_lists_them_in_order() -> None:
    assert sorted(p.name for p in NATIVE.glob("*.c")) == sorted(LAYER_OF)
    assert list(SOURCES) == [name for files in LAYERS for name in files]


def test_no_file_calls_a_higher_layer(objects: dict[str, pathlib.Path]) -> None:
    defined_in = {}
    for name, obj in objects.items():
        for symbol in nm(obj, "--defined-only", "--extern-only"):
            defined_in[symbol] = name
    upward = [
        f"{name} uses {symbol} of {defined_in[symbol]}"
        for name, obj in objects.items()
        for symbol in sorted(nm(obj, "--undefined-only"))
        if symbol in defined_in and LAYER_OF[defined_in[symbol]] > LAYER_OF[name]
    ]
    assert upward == []


# What a port to another OS rewrites: only os_linux.c may call these.
OS_PREFIXES = ("pthread_", "sem_", "syscall", "membarrier", "clock_", "mmap", "munmap", "prctl")


def test_only_os_linux_calls_the_os(objects: dict[str, pathlib.Path]) -> None:
    calls = [
        f"{name} calls {symbol}"
        for name, obj in objects.items()
        if name != "os_linux.c"
        for symbol in sorted(nm(obj, "--undefined-only"))
        if symbol.startswith(OS_PREFIXES)
    ]
    assert calls == []
