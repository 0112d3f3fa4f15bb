# Buffers passed to C: one rule for callout(lib.f, ...) and threaded(lib.f).
#
# What it guarantees.  A C function called through vmown never writes into
# memory that Python considers immutable.  cffi alone refuses a read-only
# buffer for a pointer parameter only partly (it passes bytes to any `char
# *`), and a pointer made by ffi.from_buffer() from a read-only exporter is
# writable to C.  So for each pointer parameter of a cffi function:
#   - None and cffi cdata pass as they are (the caller made the pointer);
#   - a buffer (bytes, bytearray, memoryview, array.array, numpy array, mmap)
#     is pinned for the call and passed as a pointer of the parameter's type,
#     if it is writable, or if the parameter is `const` (`const char *`);
#   - a read-only buffer for a non-const pointer is refused with a TypeError
#     naming the parameter, before anything runs;
#   - anything else (str, list, tuple, numbers) is refused too.
# A Python callable is not C: callout(fn, ...) passes it any arguments (the
# GIL protects Python objects); buffers among them are still pinned, so
# another process cannot resize a bytearray under it.
#
# Where `const` comes from.  cffi's C types drop qualifiers (ffi.typeof("const
# char *") is `char *`); only the declarations parsed by a cffi.FFI (ABI mode,
# ffi.dlopen) keep them.  A cdata function does not say which FFI made it,
# so _const_params looks through the declarations of every live cffi.FFI for
# the one whose library (ffi.dlopen's, which caches each function it was
# asked for) holds this very function.  Failing that (a function pointer
# made by ffi.cast, say) it takes a parameter as const only if it is const in
# every declaration of the same C type: the function's own declaration is
# among them, so a parameter is never taken as const when its own is not.  A
# function of an out-of-line module (API mode), whose compiled types carry no
# qualifiers, has no const parameters: read-only buffers are refused for all
# of its pointers (pass ffi.from_buffer(...) yourself to opt out).  Each
# function is looked up once: threaded() at wrap time, callout() at the first
# call (cached per function object, see _c_parameters).

from __future__ import annotations

import gc
import sys
import types
from typing import Any

import _cffi_backend
import cffi

from ._native import ffi

__all__: list[str] = []

_CData = _cffi_backend._CDataBase

# One entry per parameter: None (not a pointer) or (ctype, const).
Parameters = tuple[Any, ...]


def function_ctype(fn: Any) -> Any:
    """The cffi function type of ``fn``, or None if it is not a cffi function."""
    if isinstance(fn, _CData):
        try:
            ctype = ffi.typeof(fn)
        except TypeError:
            return None
        return ctype if ctype.kind == "function" else None
    found = module_ffi(fn)
    if found is None:
        return None
    try:
        return found.typeof(fn)
    except (TypeError, AttributeError):
        return None


def module_ffi(fn: Any) -> Any:
    """The ffi of the out-of-line cffi module (API mode) that ``fn`` is a function of, or None."""
    if not isinstance(fn, types.BuiltinFunctionType):
        return None
    # An out-of-line module exports its ffi next to its lib.
    return getattr(sys.modules.get(getattr(fn, "__module__", None) or ""), "ffi", None)


def c_parameters(fn: Any) -> Parameters | None:
    """The pointer parameters of cffi function ``fn`` (None: not a fixed-arity cffi function)."""
    ctype = function_ctype(fn)
    if ctype is None or ctype.ellipsis:
        return None
    consts = _const_params(fn, ctype) if isinstance(fn, _CData) else None
    return tuple(
        (arg, bool(consts and consts[i])) if arg.kind in ("pointer", "array") else None
        for i, arg in enumerate(ctype.args)
    )


def _const_params(fn: Any, ctype: Any) -> list[bool] | None:
    """For each parameter of ``fn``: whether it is const (see the notes)."""
    exact: list[bool] | None = None
    alike: list[bool] | None = None
    for owner in gc.get_referrers(cffi.FFI):
        if not isinstance(owner, cffi.FFI):
            continue
        parser = getattr(owner, "_parser", None)
        libraries = [vars(library) for library in getattr(owner, "_libraries", ())]
        for name, (model, _quals) in list(getattr(parser, "_declarations", {}).items()):
            if not name.startswith("function ") or getattr(model, "ellipsis", True):
                continue
            try:
                pointer = model.as_function_pointer() if hasattr(model, "as_function_pointer") else model
                with owner._lock:  # cffi builds types under it
                    built = owner._get_cached_btype(pointer)
            except Exception:  # noqa: BLE001 - a declaration cffi cannot build: not ours
                continue
            if built is not ctype:
                continue
            these = [bool(getattr(arg, "quals", 0) & 1) for arg in model.args]
            alike = _both(alike, these)
            short = name[len("function ") :]
            if any(library.get(short) is fn or library.get(short) == fn for library in libraries):
                exact = _both(exact, these)
    return exact if exact is not None else alike


def _both(consts: list[bool] | None, these: list[bool]) -> list[bool]:
    return these if consts is None else [a and b for a, b in zip(consts, these)]


def _message(fn: Any, index: int, arg: Any, what: str) -> TypeError:
    from ._callout import _refuse

    return _refuse(fn, f"argument {index}", arg, what)


def pin_pointer(fn: Any, arg: Any, ctype: Any, index: int, const: bool) -> Any:
    """The value to pass for a pointer parameter: a cdata pinning ``arg``'s buffer, or TypeError."""
    if isinstance(arg, str):
        raise _message(fn, index, arg, f"not a pointer for {ctype.cname} (encode it to bytes)")
    if isinstance(arg, (list, tuple, dict, set, int, float)):
        raise _message(fn, index, arg, f"not something that can be pinned for {ctype.cname}")
    try:
        return ffi.from_buffer(ctype, arg, require_writable=not const)
    except (TypeError, BufferError, ValueError):  # numpy says ValueError
        pass
    try:
        readonly = memoryview(arg).readonly
    except TypeError:
        readonly = False
    if readonly:
        raise TypeError(
            f"argument {index} of the callout to {_name(fn)} is a read-only buffer "
            f"({type(arg).__name__}) for the non-const pointer parameter {ctype.cname}: C may write "
            "through it; pass a writable copy (bytearray(...), array.copy()), or declare the "
            "parameter const if the function does not write"
        )
    raise _message(fn, index, arg, f"not something that can be pinned for {ctype.cname}")


def _name(fn: Any) -> str:
    from ._callout import _name as name

    return name(fn)
