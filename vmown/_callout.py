# Callouts: calls out of the VM into C (or any blocking code), made disowned.
#
# A process that calls blocking C code must not keep the VM while it waits,
# or every other process stops.  A callout gives the VM up around the call:
#
#     token = begin(tag)     disown: one atomic store (a hand-off if a thread
#                            waits); 0 if this thread does not own a VM
#     fn(*args)              the thread runs C on its own stack, GIL released
#     end(token)             own: one CAS if nobody took the VM meanwhile;
#                            else queue FIFO and sleep until handed the VM
#
# If the call is short nobody notices.  If it stays out for a whole heartbeat
# tick while work waits, the heartbeat gives the VM to a parked worker, which
# runs the other processes (see _scheduler.py).  The returning thread then
# queues for the VM, the worker hands it over at its next scheduling point,
# and the callout's process finishes its step on its own thread.  The whole
# path, with the files and functions, is in docs/ARCHITECTURE.md ("One call,
# three paths").
#
# Where it runs.  Both callout() and the wrappers of threaded() are C code
# (native/pyext/callout_ext.c, the module vmown._callout_ext): the check of
# the arguments, begin, the call and end happen in one builtin call, about
# 1.5 plain cffi calls in all; no Python frame wraps the call.  begin and end
# are the core's vmown_callout_begin_eager/try_end/end (native/callout.c),
# reached through the core's table of function pointers (one copy of the core
# per process).  They are the functions the C wrappers of
# vmown.threaded_wrappers call, except that those begin lazily and this path
# never does: it takes the GIL back before end, and a lazy callout would hold
# the VM while it waits for the GIL (docs/design-log.md, "Lazy callouts").
# The scheduler binds each thread that serves a vmown.run() to the run's
# block and the thread's slot (vmown_bind_thread).  begin disowns only if the
# thread is bound and owns the VM; otherwise it returns 0 and end(0) does
# nothing, so a callout from a thread outside any VM, or from inside another
# callout (a Python function called as a callout calls a threaded C
# function), is a plain call.  The slot records the tag: one per threaded wrapper (a count
# from 2), the address of the function object for callout().  The core also
# keys its hints by tag (native/callout.c): a function whose callout was
# revoked makes its next callouts eagerly.
#
# Exceptions at any point.  CPython runs signal handlers (the SIGINT handler
# of vmown.run() raises KeyboardInterrupt in user code) only between
# bytecodes.  Between begin and end no bytecode runs: an exception can come
# only from fn itself, and end runs after it with the exception kept in the
# thread state, so the token is never lost with the VM disowned.  end never
# fails in a way it could report (it aborts, naming the failure, as the core
# does for "cannot fail" OS primitives).
#
# The GIL.  cffi releases the GIL around fn and takes it back when fn
# returns, before end can run: a callout that comes back while another thread
# runs steps waits for the GIL first, then (in C, GIL released) for the VM.
# The scheduler bounds the first wait (_scheduler.py, "The GIL").  The C
# wrappers of vmown.threaded_wrappers skip it: they call end before cffi
# takes the GIL back, which is why they are the way for hot blocking calls.
#
# errno.  cffi saves errno per thread right after each C call and restores it
# right before the next one, in one slot shared by every FFI instance of the
# process (ffi.errno reads it).  After fn, that slot holds fn's errno, and
# nothing of the callout writes it (end is not a cffi call; vmown_callout_end
# also preserves errno itself, for the C wrappers).  The caller sees fn's
# ffi.errno; tests/test_callout.py checks it on the fast path and on the path
# that waits for the VM.
#
# Pinning.  While the VM is disowned other processes run; they must not move
# or free memory that C is using.  CPython never moves objects, and the call
# holds a reference to each argument, so what remains is mutable buffers: a
# bytearray can be resized (realloc) and a buffer can be released.  Holding a
# buffer export for the whole call makes any resize raise BufferError.  The
# rules, checked before anything runs:
#   callout(fn, ...): None, bool, int, float, complex, str and bytes pass as
#     they are (immutable); cffi cdata passes (the caller owns what it points
#     to, and the reference keeps it alive); any other object with the buffer
#     protocol (bytearray, memoryview, array.array, numpy arrays, mmap) is
#     pinned and passed unchanged; anything else (list, dict, set, tuple,
#     arbitrary objects, whose contents other processes may change while fn
#     runs) is refused with a TypeError naming the argument.
#   threaded(cffi_function): only pointer parameters are checked (cffi
#     converts the others and rejects what does not fit).  cdata, None and
#     bytes pass; a buffer is pinned and passed as a pointer of the parameter's
#     type (which cffi alone would refuse); a str, list, tuple or anything else
#     is refused (cffi would copy a list into a temporary array that the C
#     code writes into and the caller never sees; a str needs encoding).
# The common case (numbers and cdata) costs a type test per argument in
# callout(), and nothing at all in threaded() for non-pointer parameters.

from __future__ import annotations

import itertools
import sys
import types
from collections.abc import Callable
from typing import Any, TypeVar

import _cffi_backend

from . import _callout_ext
from ._native import ffi, lib

__all__ = ["callout", "threaded"]

T = TypeVar("T")

_CData = _cffi_backend._CDataBase

# Tags recorded in the slot while in a callout: small integers, one per
# threaded wrapper (1 is callout()'s, in callout_ext.c).
_tags = itertools.count(2)


# ---- messages (the C code calls these to refuse an argument) ----


def _name(fn: Any) -> str:
    """How messages name a callable: ``f()``, or the C type of a nameless function pointer."""
    if isinstance(fn, _CData):  # ffi.dlopen's functions know their type, not their name
        return f"C function {ffi.typeof(fn).cname}"
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None)
    return f"{name}()" if isinstance(name, str) else repr(fn)


def _refuse(fn: Any, where: str, arg: Any, what: str) -> TypeError:
    return TypeError(
        f"{where} of the callout to {_name(fn)} is a {type(arg).__name__}, {what}; "
        "pass None, a number, bytes, cffi cdata, or a buffer (bytearray, memoryview, "
        "array.array, numpy array), which is pinned for the call"
    )


def _pin_pointer(fn: Any, arg: Any, ctype: Any, index: int) -> Any:
    """The value to pass for a pointer parameter: a cdata pinning ``arg``'s buffer, or TypeError."""
    if isinstance(arg, str):
        raise _refuse(fn, f"argument {index}", arg, f"not a pointer for {ctype.cname} (encode it to bytes)")
    if isinstance(arg, (list, tuple, dict, set, int, float)):
        raise _refuse(fn, f"argument {index}", arg, f"not something that can be pinned for {ctype.cname}")
    try:
        return ffi.from_buffer(ctype, arg)
    except TypeError:
        raise _refuse(
            fn, f"argument {index}", arg, f"not something that can be pinned for {ctype.cname}"
        ) from None


_callout_ext.init(int(ffi.cast("uintptr_t", lib.vmown_callout_api())), _CData, _refuse, _pin_pointer)

# ---- the callout ----

callout = _callout_ext.callout


# ---- threaded wrappers ----


def _function_ctype(fn: Any) -> Any:
    """The cffi function type of ``fn``, or None if it is not a cffi function."""
    if isinstance(fn, _CData):
        ctype = ffi.typeof(fn)
        return ctype if ctype.kind == "function" else None
    if not isinstance(fn, types.BuiltinFunctionType):
        return None
    # An out-of-line module (API mode) exports its ffi next to its lib.
    module_ffi = getattr(sys.modules.get(getattr(fn, "__module__", None) or ""), "ffi", None)
    if module_ffi is None:
        return None
    try:
        return module_ffi.typeof(fn)
    except TypeError:
        return None


def threaded(fn: Callable[..., T]) -> Callable[..., T]:
    """Wrap ``fn`` so that every call to it is a :func:`callout`.

    Made for cffi functions (``lib.f`` of an out-of-line module, or a function
    of ``ffi.dlopen``): the wrapper takes exactly the C function's parameters
    and a call through it costs about 1.5 plain calls (it is C, like
    :func:`callout`).  Buffers passed for pointer parameters are pinned for
    the call and passed as pointers of the parameter's type; a str, list,
    tuple or other unpinnable object for a pointer parameter is refused with
    a TypeError before the call.  Any other callable (and a variadic C
    function) gets the rules of :func:`callout`.
    """
    ctype = _function_ctype(fn)
    if ctype is None or ctype.ellipsis:
        ctypes = None  # the rules of callout()
    else:
        ctypes = tuple(arg if arg.kind in ("pointer", "array") else None for arg in ctype.args)
    wrapper = _callout_ext.Threaded(fn, next(_tags), ctypes)
    name = getattr(fn, "__name__", None)
    if isinstance(name, str) and name.isidentifier():
        wrapper.__name__ = wrapper.__qualname__ = name
    wrapper.__doc__ = f"{_name(fn)} as a callout: the VM is disowned while it runs (vmown.threaded)."
    wrapper.__wrapped__ = fn
    return wrapper  # type: ignore[no-any-return]
