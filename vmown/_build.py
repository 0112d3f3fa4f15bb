"""cffi build script: compiles native/ into the extension module vmown._native.

Out-of-line API mode.  The cdef is the block of native/vmown.h between its
``cdef-begin`` and ``cdef-end`` markers, so the public C header is the one
description of the C API.  setup.py names ``vmown/_build.py:ffibuilder``.
"""

from __future__ import annotations

import pathlib

from cffi import FFI

ROOT = pathlib.Path(__file__).resolve().parent.parent
NATIVE = ROOT / "native"
# One .c per subsystem; os_linux.c holds every OS call.
SOURCES = ["ownership.c", "os_linux.c"]
CFLAGS = ["-std=c11", "-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"]


def cdef_text() -> str:
    """The cffi-parseable part of the public header."""
    text = (NATIVE / "vmown.h").read_text()
    start = text.index("/* cdef-begin */") + len("/* cdef-begin */")
    return text[start : text.index("/* cdef-end */")]


ffibuilder = FFI()
ffibuilder.cdef(cdef_text())
ffibuilder.set_source(
    "vmown._native",
    '#include "vmown.h"\n',
    # Relative paths: setuptools runs this from the project root, and
    # absolute ones would end up in the sdist's SOURCES.txt.
    sources=[f"native/{name}" for name in SOURCES],
    include_dirs=["native"],
    extra_compile_args=CFLAGS,
    libraries=["pthread"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
