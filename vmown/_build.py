"""cffi build script: compiles native/ into the extension module vmown._native.

Out-of-line API mode.  The cdef is the block of native/vmown.h between its
``cdef-begin`` and ``cdef-end`` markers, so the public C header is the one
description of the C API.  setup.py names ``vmown/_build.py:ffibuilder``.
"""

from __future__ import annotations

import pathlib
import subprocess
from typing import Sequence

from cffi import FFI

ROOT = pathlib.Path(__file__).resolve().parent.parent
NATIVE = ROOT / "native"
# One .c per subsystem, lowest layer first (tests/test_layers.py); os_linux.c
# holds every OS call.  The Makefile builds libvmown from this same list.
SOURCES = [
    "os_linux.c", "version.c", "arena.c", "channel.c",
    "block.c", "owner.c", "grants.c", "idle.c", "repair.c",
    "callout.c", "workers.c", "heartbeat.c", "lifecycle.c",
]
CFLAGS = ["-std=c11", "-O2", "-Wall", "-Wextra", "-Wno-unused-parameter", "-fvisibility=hidden"]


def cdef_text() -> str:
    """The cffi-parseable part of the public header, without the VMOWN_EXTERN
    markers (a macro cffi does not know)."""
    text = (NATIVE / "vmown.h").read_text()
    start = text.index("/* cdef-begin */") + len("/* cdef-begin */")
    return text[start : text.index("/* cdef-end */")].replace("VMOWN_EXTERN ", "")


ffibuilder = FFI()
ffibuilder.cdef(cdef_text())
# The entry of pooled workers (native/workers.c) into vmown.run's scheduler:
# the first time a worker started in C is given the VM (vmown/_scheduler.py).
ffibuilder.cdef('extern "Python" void vmown_py_worker(void *, uint32_t);')
# The resume hook of vmown.aio's loop threads (vmown_bind_resume; vmown/_aio.py).
ffibuilder.cdef('extern "Python" void vmown_py_resume(void *, uint32_t);')
ffibuilder.set_source(
    "vmown._native",
    '#include "vmown.h"\n',
    # Relative paths: setuptools runs this from the project root, and
    # absolute ones would end up in the sdist's SOURCES.txt.
    sources=[f"native/{name}" for name in SOURCES],
    include_dirs=["native"],
    extra_compile_args=CFLAGS,
    # The extension exports no C symbol (the other extensions reach the core
    # through tables), so the public functions stay hidden here and its own
    # calls to them bind directly; libvmown.so exports them (the Makefile).
    define_macros=[("VMOWN_EXTERN", "")],
    libraries=["pthread"],
)


def compile_program(
    sources: Sequence[str | pathlib.Path],
    output: str | pathlib.Path,
    flags: Sequence[str] = ("-O2",),
) -> pathlib.Path:
    """Compile C programs that link the core directly (tests, benchmarks).

    ``sources`` are the program's own files; the core's sources and header
    directory are added.  Raises RuntimeError with the compiler's output.
    """
    output = pathlib.Path(output)
    core = [NATIVE / name for name in SOURCES]
    command = ["gcc", "-std=c11", "-g", "-Wall", "-Wextra", *flags, f"-I{NATIVE}", *map(str, sources)]
    command += [*map(str, core), "-o", str(output), "-pthread"]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"compiling {output.name} failed:\n{' '.join(command)}\n{done.stderr}")
    return output


if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
