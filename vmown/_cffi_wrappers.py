# Generated C wrappers: threaded callouts for cffi API-mode users at the cost
# of a plain call.
#
# A cffi call releases the GIL around the C function.  If the wrapper around
# that function disowns the VM before the call and owns it after (all in C,
# native/callout.c), a call that returns while another thread owns the VM
# waits for ownership on its semaphore *without the GIL*, and takes the GIL
# back only once it owns the VM -- when the previous owner has parked and let
# the GIL go.  The Python-level callout (vmown.callout) cannot do that: it
# takes the GIL back first, which costs a switch interval (5 ms) whenever
# another thread runs Python.
#
# Use, in the user's cffi build script:
#
#     DECLS = "int slow_read(int fd, char *buf, size_t n);"
#     ffibuilder.cdef(DECLS)
#     cdef, source = vmown.threaded_wrappers(DECLS)
#     ffibuilder.cdef(cdef)
#     ffibuilder.set_source("_mymod", MY_SOURCE + source, ...)
#
# and at run time, once: vmown.bind_threaded(_mymod.lib); then
# lib.slow_read_threaded(fd, buf, n) is slow_read as a threaded callout.
#
# Cancellation.  A process cancelled while in a wrapped call gets Cancelled
# when the call returns (an asynchronous exception set on the thread by the
# canceller, raised by CPython right after cffi's call: _cancel.py, race
# K4); the wrapper itself needs nothing for that.  To interrupt the call,
# bind_threaded(lib, interrupt={"slow_read": vmown.INTERRUPT_SIGNAL}) names
# the functions: the canceller reads the tag the callout recorded in its
# slot (the original function's address, which _vmown_threaded_tag tells by
# name) and interrupts the thread if the tag is registered (_callout.py,
# "The per-call state word").
#
# Figures.  The core counts each wrapper's callouts by tag (native/callout.c,
# "Figures per tag"): calls, waits for the VM, revocations, and time out
# while a run asks for times.  vmown.callout_stats() names the rows of the
# tags bind_threaded learnt (kind "wrapper"); the wrapper adds nothing for
# them.
#
# The generated code does not include vmown.h: the user's build need not know
# where it is.  It reaches the core through the table of function pointers
# from vmown_callout_api (one copy of the core per process), checked by
# version at bind time.  Until it is bound, a wrapper makes a plain call.
#
# Compiling the user's module is cffi's job, and on Python >= 3.12 (no
# distutils) cffi compiles through setuptools.  vmown declares setuptools as a
# dependency there; threaded_wrappers checks for it up front so a missing one
# is named before the user's build gets as far as cffi's own error.

from __future__ import annotations

import copy
import importlib.util
import sys
from collections.abc import Mapping
from typing import Any

import pycparser
from pycparser import c_ast, c_parser
from pycparser.c_generator import CGenerator

from . import _callout
from ._native import ffi, lib

__all__ = ["bind_threaded", "threaded_wrappers"]

# Type names a declaration may use without declaring them (as cffi allows).
_KNOWN_TYPES = (
    "size_t ssize_t ptrdiff_t intptr_t uintptr_t off_t FILE bool wchar_t "
    "int8_t int16_t int32_t int64_t uint8_t uint16_t uint32_t uint64_t"
).split()

_PRELUDE = """
static uint32_t (*_vmown_begin)(uint64_t);
static void (*_vmown_end)(uint32_t);
int _vmown_threaded_init(uintptr_t table_address) {
    /* Mirrors vmown_callout_table of vmown.h, version 1. */
    const struct { int version; uint32_t (*begin)(uint64_t); void (*end)(uint32_t); } *table =
        (const void *)table_address;
    if (table->version != 1) return -1;
    /* end before begin: a thread that sees begin set sees end set too */
    __atomic_store_n(&_vmown_end, table->end, __ATOMIC_RELEASE);
    __atomic_store_n(&_vmown_begin, table->begin, __ATOMIC_RELEASE);
    return 0;
}
"""


def _require_setuptools() -> None:
    """Fail with what to install if cffi will not be able to compile the wrappers."""
    if sys.version_info >= (3, 12) and importlib.util.find_spec("setuptools") is None:
        raise ModuleNotFoundError(
            "vmown.threaded_wrappers: cffi compiles the wrappers with setuptools on Python >= 3.12, "
            "and it is not installed: pip install setuptools (vmown's own install declares it)",
            name="setuptools",
        )


def _parse(declarations: str, typedefs: tuple[str, ...]) -> list[c_ast.Decl]:
    names = [*_KNOWN_TYPES, *typedefs]
    prelude = "".join(f"typedef int {name};\n" for name in names)
    try:
        tree = pycparser.CParser().parse(prelude + declarations, "<threaded declarations>")
    except c_parser.ParseError as exc:
        raise ValueError(
            f"cannot parse the declarations ({exc}); name the types they use with typedefs=(...)"
        ) from None
    functions = [
        node
        for node in tree.ext
        if isinstance(node, c_ast.Decl) and isinstance(node.type, c_ast.FuncDecl) and node.name not in names
    ]
    if not functions:
        raise ValueError("no function declarations found")
    return functions


def _wrapper(decl: c_ast.Decl, suffix: str, generator: CGenerator) -> tuple[str, str]:
    """(cdef line, C definition) of the wrapper of one function."""
    func: c_ast.FuncDecl = decl.type
    params = list(func.args.params) if func.args else []
    if params and isinstance(params[-1], c_ast.EllipsisParam):
        raise ValueError(f"{decl.name}: variadic functions cannot be wrapped")
    is_void = lambda node: generator.visit(node.type).strip() == "void"  # noqa: E731
    if len(params) == 1 and is_void(params[0]) and not params[0].name:
        params = []
    names = []
    for i, param in enumerate(params):
        param.name = param.name or f"a{i}"
        # give the declarator its (possibly new) name
        node = param.type
        while not isinstance(node, c_ast.TypeDecl):
            node = node.type
        node.declname = param.name
        names.append(param.name)
    original = decl.name
    decl.name = original + suffix
    node = func.type
    while not isinstance(node, c_ast.TypeDecl):
        node = node.type
    node.declname = decl.name
    signature = generator.visit(decl)
    decl.name = original
    node.declname = original
    returns_void = generator.visit(func.type).strip() == "void"
    call = f"{original}({', '.join(names)})"
    body = (
        "    uint32_t (*begin)(uint64_t) = __atomic_load_n(&_vmown_begin, __ATOMIC_ACQUIRE);\n"
        f"    if (!begin) {{ {'' if returns_void else 'return '}{call}; {'return; ' if returns_void else ''}}}\n"
        f"    uint32_t token = begin((uint64_t)(uintptr_t)&{original});\n"
    )
    if returns_void:
        body += f"    {call};\n    _vmown_end(token);\n"
    else:
        result_decl = generator.visit(c_ast.Decl("result", [], [], [], [], _rename(func.type, "result"), None, None))
        body += f"    {result_decl} = {call};\n    _vmown_end(token);\n    return result;\n"
    return f"{signature};", f"{signature} {{\n{body}}}\n"


def _rename(node: Any, name: str) -> Any:
    """A copy of a declarator type whose innermost TypeDecl declares ``name``."""
    node = copy.deepcopy(node)
    inner = node
    while not isinstance(inner, c_ast.TypeDecl):
        inner = inner.type
    inner.declname = name
    return node


def threaded_wrappers(declarations: str, *, suffix: str = "_threaded", typedefs: tuple[str, ...] = ()) -> tuple[str, str]:
    """Generate C wrappers that make each declared function a threaded callout.

    ``declarations`` are C function declarations as written for ``ffi.cdef``.
    Returns ``(cdef, source)``: pass ``cdef`` to ``ffibuilder.cdef`` and
    append ``source`` to the C source given to ``ffibuilder.set_source``.
    Each function ``f`` gets a wrapper ``f`` + ``suffix`` of the same
    signature.  ``typedefs`` names the types the declarations use that are
    defined elsewhere (size_t, intN_t and the like need no naming).  Call
    :func:`bind_threaded` on the compiled module's ``lib`` before use.
    """
    if not suffix.isidentifier():
        raise ValueError(f"suffix must be usable in a C name, not {suffix!r}")
    _require_setuptools()
    generator = CGenerator()
    cdefs = ["int _vmown_threaded_init(uintptr_t table_address);", "uintptr_t _vmown_threaded_tag(const char *name);"]
    sources = ["#include <stdint.h>\n#include <string.h>\n", _PRELUDE]
    tags = []
    for decl in _parse(declarations, tuple(typedefs)):
        cdef, source = _wrapper(decl, suffix, generator)
        cdefs.append(cdef)
        sources.append(source)
        tags.append(f'    if (!strcmp(name, "{decl.name}")) return (uintptr_t)&{decl.name};\n')
    sources.append(
        "/* The tag a wrapper's callouts record: the original's address (bind_threaded's interrupts). */\n"
        "uintptr_t _vmown_threaded_tag(const char *name) {\n" + "".join(tags) + "    return 0;\n}\n"
    )
    return "\n".join(cdefs) + "\n", "\n".join(sources)


def bind_threaded(module_lib: Any, *, interrupt: Mapping[str, Any] | None = None) -> None:
    """Connect a module's generated wrappers to this process's vmown core.

    ``module_lib`` is the ``lib`` of a cffi module built with the output of
    :func:`threaded_wrappers`.  Until this is called its wrappers make plain
    calls.  A process cancelled during a wrapped call gets
    :class:`vmown.Cancelled` when the call returns; ``interrupt`` maps
    function names (the originals, without the suffix) to
    :data:`vmown.INTERRUPT_SIGNAL` or a callable, to make the call return
    early instead (see :func:`vmown.threaded`).
    """
    try:
        init = module_lib._vmown_threaded_init
    except AttributeError:
        raise TypeError(f"{module_lib!r} has no wrappers made by vmown.threaded_wrappers") from None
    tags = {}
    for name, how in (interrupt or {}).items():
        _callout._check_interrupt(how)
        tag_of = getattr(module_lib, "_vmown_threaded_tag", None)
        if tag_of is None:
            raise TypeError("the module's wrappers predate interrupts: regenerate and rebuild it")
        tag = int(ffi.cast("uintptr_t", tag_of(name.encode())))
        if tag == 0:
            raise ValueError(f"{name!r} has no wrapper in {module_lib!r} (name the original function)")
        tags[tag] = how
    tag_of = getattr(module_lib, "_vmown_threaded_tag", None)
    if tag_of is not None:
        # Names for observers (top, stacks, the watchdog, callout_stats):
        # a tag is the original's address.
        for name in dir(module_lib):
            if not name.startswith("_vmown_"):
                tag = int(ffi.cast("uintptr_t", tag_of(name.encode())))
                if tag:
                    _callout._tag_names[tag] = name
                    _callout._wrapper_tags.add(tag)
    if init(int(ffi.cast("uintptr_t", lib.vmown_callout_api()))) != 0:
        raise RuntimeError("the module's wrappers were generated for another callout API version; rebuild it")
    _callout._c_interrupts.update(tags)
