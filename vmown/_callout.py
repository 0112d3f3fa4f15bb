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
# and the callout's process finishes its step on its own thread.
#
# begin and end are the core's vmown_callout_begin/end (native/callout.c),
# the very functions that the C wrappers of vmown.threaded_wrappers call:
# the scheduler binds each thread that serves a vmown.run() to the run's
# block and the thread's slot (vmown_bind_thread).  begin disowns only if the
# thread is bound and owns the VM; otherwise it returns 0 and end(0) does
# nothing, so a callout from a thread outside any VM, or from inside another
# callout (a Python function called as a callout calls a threaded C
# function), is a plain call.  Both take one small integer: cffi calls a
# one-argument function without building an argument tuple, and the pair
# costs about twice a plain call.  The slot records the tag: one per threaded
# wrapper, _CALLOUT_TAG for callout().
#
# Exceptions at any point.  CPython runs signal handlers at eval-breaker
# checks (function entry, backward jumps, right after each CALL), and the
# SIGINT handler of vmown.run() raises KeyboardInterrupt in user code and in
# these wrappers.  Where it could land:
#   - before the begin CALL: nothing has changed, the VM is still owned;
#   - right after the begin CALL, before its result is stored: the VM is
#     disowned and the token would be lost.  This is the one window where
#     raising is wrong, and the handler does not raise there: it asks
#     _in_begin_window(frame), which compares the frame's f_lasti with the
#     offsets of that CALL (found once with dis) and defers;
#   - in fn or right after it returned: the finally owns again;
#   - after the end CALL: the VM is owned again.
# end never fails in a way it could report (it aborts, naming the failure,
# as the core does for "cannot fail" OS primitives).
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
# process (ffi.errno reads it).  After fn, that slot holds fn's errno; the end
# call restores it into errno, and vmown_callout_end preserves errno on every
# path, the wait included, so cffi saves the same value back.  The caller
# sees fn's ffi.errno; tests/test_callout.py checks it on the fast path and
# on the path that waits for the VM.
#
# Pinning.  While the VM is disowned other processes run; they must not move
# or free memory that C is using.  CPython never moves objects, and the call
# holds a reference to each argument, so what remains is mutable buffers: a
# bytearray can be resized (realloc) and a buffer can be released.  Holding a
# buffer export (ffi.from_buffer) for the whole call makes any resize raise
# BufferError.  The rules, checked before anything runs:
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
# The common case (numbers and cdata) costs one set lookup per argument in
# callout(), and nothing at all in threaded() for non-pointer parameters.

from __future__ import annotations

import dis
import itertools
import sys
import types
import weakref
from collections.abc import Callable
from typing import Any, TypeVar

import _cffi_backend

from ._native import ffi, lib

__all__ = ["callout", "threaded"]

T = TypeVar("T")

_begin = lib.vmown_callout_begin
_end = lib.vmown_callout_end

_CData = _cffi_backend._CDataBase


def _subclasses(cls: type) -> set[type]:
    found = {cls}
    sub: type
    for sub in type.__subclasses__(cls):
        found |= _subclasses(sub)
    return found


_CDATA_TYPES = frozenset(_subclasses(_CData))
# Arguments of callout() that need no pin: immutable, or cdata.
_AS_IS = frozenset({type(None), bool, int, float, complex, str, bytes}) | _CDATA_TYPES
# Arguments for a pointer parameter that cffi takes as they are.
_POINTER_AS_IS = frozenset({type(None), bytes}) | _CDATA_TYPES

# Tags recorded in the slot while in a callout: small integers (cheap to
# convert), one per threaded wrapper.
_CALLOUT_TAG = 1
_tags = itertools.count(_CALLOUT_TAG + 1)


# ---- pinning ----


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


def _pin(fn: Any, arg: Any, where: str, pins: list[Any]) -> None:
    """Check one argument of callout(); pin it into ``pins`` if it is a buffer."""
    if type(arg) in _AS_IS or isinstance(arg, (_CData, int, float, str, bytes)):
        return
    try:
        pins.append(ffi.from_buffer(arg))
    except TypeError:
        raise _refuse(fn, where, arg, "which cannot be pinned while the VM is disowned") from None


def _pins(fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[Any]:
    """Buffer exports that pin the buffers among the arguments; TypeError for the unpinnable."""
    pins: list[Any] = []
    for index, arg in enumerate(args, 1):
        _pin(fn, arg, f"argument {index}", pins)
    for key, arg in kwargs.items():
        _pin(fn, arg, f"argument {key!r}", pins)
    return pins


def _pin_pointer(fn: Any, arg: Any, ctype: Any, index: int) -> Any:
    """The value to pass for a pointer parameter: ``arg`` itself, or a pinning cdata."""
    if isinstance(arg, _CData):
        return arg
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


# ---- the begin window (see "Exceptions at any point") ----


def _begin_window(code: types.CodeType) -> range:
    """Offsets of the CALL of _begin in ``code`` (with its inline caches)."""
    instructions = list(dis.get_instructions(code))
    loaded = next(i for i, ins in enumerate(instructions) if ins.argval == "_begin")
    call = next(i for i in range(loaded, len(instructions)) if instructions[i].opname == "CALL")
    return range(instructions[call].offset, instructions[call + 1].offset)


# code object of callout() or of a compiled wrapper -> its begin window; the
# entry goes with the wrapper.
_BEGIN_WINDOWS: weakref.WeakKeyDictionary[types.CodeType, range] = weakref.WeakKeyDictionary()


def _in_begin_window(frame: types.FrameType) -> bool:
    """Whether ``frame`` stands right after a callout's begin, its token not yet stored."""
    window = _BEGIN_WINDOWS.get(frame.f_code)
    return window is not None and frame.f_lasti in window


# ---- the callout ----


def callout(fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """Call ``fn(*args, **kwargs)`` with the VM disowned, and own it again after.

    From a process of :func:`vmown.run`, the VM is given up for the duration
    of the call, so other processes keep running if the call blocks (after a
    heartbeat tick, another thread takes the VM).  Exceptions propagate with
    their traceback, and ``ffi.errno`` after the call is the call's own.
    From a thread that serves no VM, or from inside another callout, it is a
    plain call.

    Buffers among the arguments (bytearray, memoryview, array.array, numpy
    arrays) are pinned for the call: resizing one meanwhile raises
    BufferError.  None, numbers, str, bytes and cffi cdata pass as they are;
    anything else (a list, a dict...) is refused with a TypeError naming the
    argument, before ``fn`` runs.  For cffi functions, :func:`threaded` is
    faster and also turns buffers into pointers.
    """
    if kwargs:
        return _callout_with_keywords(fn, args, kwargs)
    for arg in args:
        if type(arg) not in _AS_IS:
            pins = _pins(fn, args, {})  # noqa: F841 - held until the call returns: pinned
            break
    token = _begin(_CALLOUT_TAG)
    try:
        return fn(*args)
    finally:
        _end(token)


def _callout_with_keywords(fn: Callable[..., T], args: tuple[Any, ...], kwargs: dict[str, Any]) -> T:
    pins = _pins(fn, args, kwargs)  # noqa: F841 - held until the call returns
    token = _begin(_CALLOUT_TAG)
    try:
        return fn(*args, **kwargs)
    finally:
        _end(token)


for _function in (callout, _callout_with_keywords):
    _BEGIN_WINDOWS[_function.__code__] = _begin_window(_function.__code__)


# ---- threaded wrappers ----

# One wrapper is compiled per cffi function, with the function's exact
# parameters (no *args tuple) and its pointer parameters checked inline:
# the same technique as collections.namedtuple, for the same reason (speed).
_WRAPPER = """\
def {name}({params}):
{pin_lines}    token = _begin(tag)
    try:
        return fn({params})
    finally:
        _end(token)
"""
_PIN_LINE = """\
    if type(a{i}) not in pointer_as_is:
        a{i} = pin_pointer(fn, a{i}, ctype{i}, {n})
"""


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


def _compile_wrapper(fn: Any, ctype: Any) -> Callable[..., Any]:
    count = len(ctype.args)
    params = ", ".join(f"a{i}" for i in range(count))
    namespace: dict[str, Any] = {
        "__name__": __name__,
        "fn": fn,
        "tag": next(_tags),
        "_begin": _begin,
        "_end": _end,
        "pointer_as_is": _POINTER_AS_IS,
        "pin_pointer": _pin_pointer,
    }
    pin_lines = []
    for i, arg_type in enumerate(ctype.args):
        if arg_type.kind in ("pointer", "array"):
            namespace[f"ctype{i}"] = arg_type
            pin_lines.append(_PIN_LINE.format(i=i, n=i + 1))
    exec(_WRAPPER.format(name="threaded_call", params=params, pin_lines="".join(pin_lines)), namespace)
    wrapper: Callable[..., Any] = namespace["threaded_call"]
    _BEGIN_WINDOWS[wrapper.__code__] = _begin_window(wrapper.__code__)
    return wrapper


def _generic_wrapper(fn: Callable[..., T]) -> Callable[..., T]:
    def threaded_call(*args: Any, **kwargs: Any) -> T:
        return callout(fn, *args, **kwargs)

    return threaded_call


def threaded(fn: Callable[..., T]) -> Callable[..., T]:
    """Wrap ``fn`` so that every call to it is a :func:`callout`.

    Made for cffi functions (``lib.f`` of an out-of-line module, or a function
    of ``ffi.dlopen``): the wrapper takes exactly the C function's parameters
    and costs a few hundred nanoseconds more than a plain call.  Buffers
    passed for pointer parameters are pinned for the call and passed as
    pointers of the parameter's type; a str, list, tuple or other unpinnable
    object for a pointer parameter is refused with a TypeError before the
    call.  Any other callable (and a variadic C function) gets the rules of
    :func:`callout`.
    """
    ctype = _function_ctype(fn)
    if ctype is None or ctype.ellipsis:
        wrapper = _generic_wrapper(fn)
    else:
        wrapper = _compile_wrapper(fn, ctype)
    name = getattr(fn, "__name__", None)
    if isinstance(name, str) and name.isidentifier():
        wrapper.__name__ = wrapper.__qualname__ = name
    wrapper.__doc__ = f"{_name(fn)} as a callout: the VM is disowned while it runs (vmown.threaded)."
    wrapper.__wrapped__ = fn  # type: ignore[attr-defined]
    return wrapper
