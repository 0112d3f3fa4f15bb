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
# When begin says the VM is wanted during the call (the function is known to
# block, or a thread is queued), threaded() of a cffi function calls it
# through its blocking entry (below), which owns the VM again before the GIL
# is taken.
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
# takes the GIL back.  So does a threaded() wrapper of a cffi function when
# the call is known to block or a thread waits for the VM: it calls fn
# through its blocking entry (below, and native/pyext/callout_ext.c).
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
# buffer export for the whole call makes any resize raise BufferError.  And C
# must not write into memory Python holds immutable (bytes, a read-only numpy
# array).  The rules (vmown/_buffers.py), checked before anything runs, are
# the same for callout(lib.f, ...) and threaded(lib.f)(...): for a cffi
# function, None and cdata pass, a buffer for a pointer parameter is pinned
# and passed as a pointer of the parameter's type, read-only buffers only for
# a const pointer, and anything else for a pointer is refused with a
# TypeError naming the argument.  A Python callable takes any arguments (the
# GIL protects Python objects); buffers among them are pinned.  The common
# case (numbers and cdata) costs a type test per argument in callout(), and
# nothing at all in threaded() for non-pointer parameters.
#
# Cancellation.  A process in a callout cannot be abandoned (its frame is on
# the thread's stack): a cancel reaching it sets an asynchronous exception
# on the thread, raised when the call returns (_cancel.py, race K4).  To make
# the call itself return early, a function opts in: threaded(fn,
# interrupt=INTERRUPT_SIGNAL) sends SIGURG to the callout's thread; the
# signal has a no-op handler installed without SA_RESTART, so a blocked
# system call fails with EINTR (Ruby's unblocking functions, "ubf").
# interrupt=callable runs the callable on the canceller's thread instead
# (sqlite3's Connection.interrupt, closing a descriptor).  The generated C
# wrappers opt in at bind time (bind_threaded(lib, interrupt={...})), keyed
# by the tag their callouts record in the slot (the C function's address).
#
# The per-call state word.  The interrupt is sent only while the callout is
# in progress: proc._interrupt is set just before the call and cleared just
# after (a Python wrapper) or the slot's tag names the function (C wrappers),
# and both are read by the owner of the VM, while the callout's thread cannot
# get back to Python without the VM.  It may still have left the system
# call and be waiting to own the VM: the signal then lands in that wait,
# which retries on EINTR (vmown_own without VMOWN_WAIT_INTERRUPTIBLE), so an
# interrupt of a thread that has left the call is harmless (race K8).
# vmown.callout itself takes no interrupt: it is one C builtin, and a Python
# layer to read the keyword would triple its cost; wrap the function with
# threaded(fn, interrupt=...) instead.

from __future__ import annotations

import ctypes
import itertools
import signal
import threading
import warnings
import weakref
from collections.abc import Callable
from typing import Any, Final, NamedTuple, ParamSpec, TypeVar

import _cffi_backend

from . import _buffers, _callout_ext, _errors
from ._native import ffi, lib
from ._scheduler import Process, _process_var, _ThreadState

__all__ = ["INTERRUPT_SIGNAL", "callout", "callout_stats", "threaded"]

T = TypeVar("T")
P = ParamSpec("P")

_CData = _cffi_backend._CDataBase

# Tags recorded in the slot while in a callout: small integers, one per
# threaded wrapper (1 is callout()'s, in callout_ext.c).
_tags = itertools.count(2)
# Tag -> the function's name, for observers (python -m vmown top, stacks):
# every threaded wrapper's, the functions of modules given to bind_threaded.
_tag_names: dict[int, str] = {1: "callout"}
# Every live threaded wrapper, for callout_stats().
_wrappers: "weakref.WeakKeyDictionary[Any, str]" = weakref.WeakKeyDictionary()
# Tags of the generated C wrappers of modules given to bind_threaded (their
# originals' addresses): callout_stats() shows their rows as kind "wrapper".
_wrapper_tags: set[int] = set()


# ---- messages (the C code calls these to refuse an argument) ----


def _name(fn: Any) -> str:
    """How messages name a callable: ``f()``, or the C type of a nameless function pointer."""
    if isinstance(fn, _CData):  # ffi.dlopen's functions know their type, not their name
        return f"C function {ffi.typeof(fn).cname}"
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None)
    return f"{name}()" if isinstance(name, str) else repr(fn)


class _DlInfo(ctypes.Structure):
    _fields_ = [("fname", ctypes.c_char_p), ("fbase", ctypes.c_void_p),
                ("sname", ctypes.c_char_p), ("saddr", ctypes.c_void_p)]  # fmt: skip


def _dladdr_symbol(address: int) -> tuple[str, int] | None:
    """(name, start address) of the dynamic symbol that holds a C address (dladdr), or None."""
    info = _DlInfo()
    try:
        dladdr = ctypes.CDLL(None).dladdr
        dladdr.argtypes = [ctypes.c_void_p, ctypes.POINTER(_DlInfo)]
        if dladdr(address, ctypes.byref(info)) and info.sname:
            return info.sname.decode(errors="replace"), info.saddr or 0
    except (OSError, AttributeError):
        pass
    return None


def _symbol_name(fn: Any) -> str:
    """The name of a C function as the dynamic linker knows it (dladdr), else how messages name it.

    cffi's ABI-mode functions (ffi.dlopen) do not know their names; a wrapper
    records this once, when it is made, for observers to show.
    """
    if isinstance(fn, _CData) and ffi.typeof(fn).kind == "function":
        found = _dladdr_symbol(int(ffi.cast("uintptr_t", fn)))
        if found is not None:
            return found[0]
    qualname, module = getattr(fn, "__qualname__", None), getattr(fn, "__module__", None)
    if isinstance(qualname, str):
        return f"{module}.{qualname}" if isinstance(module, str) and module != "builtins" else qualname
    return _name(fn)


def _address_name(address: int) -> str:
    """The symbol that starts at a C address (dladdr), else the address in hex."""
    found = _dladdr_symbol(address) if address >= 1 << 16 else None
    return found[0] if found is not None and found[1] == address else hex(address)


def _refuse(fn: Any, where: str, arg: Any, what: str) -> TypeError:
    return TypeError(
        f"{where} of the callout to {_name(fn)} is a {type(arg).__name__}, {what}; "
        "pass None, a number, bytes, cffi cdata, or a buffer (bytearray, memoryview, "
        "array.array, numpy array), which is pinned for the call"
    )


_callout_ext.init(
    int(ffi.cast("uintptr_t", lib.vmown_callout_api())),
    _CData,
    _buffers.pin_pointer,
    _buffers.c_parameters,
    _errors.error,
)


def _set_timing(on: bool) -> bool:
    """Time every callout from now on (or not): those of callout() and threaded()
    wrappers (_callout_ext) and those the core counts (generated C wrappers);
    returns whether they were timed."""
    was = _callout_ext.set_timing(on)
    lib.vmown_callout_timing(int(on))
    return bool(was)

# ---- the callout ----

callout = _callout_ext.callout


# ---- threaded wrappers ----


# ---- interrupts ----


class _InterruptSignal:
    __slots__ = ()

    def __repr__(self) -> str:
        return "vmown.INTERRUPT_SIGNAL"


INTERRUPT_SIGNAL: Final = _InterruptSignal()
INTERRUPT_SIGNAL.__class__.__doc__ = """Interrupt a cancelled callout with a signal.

Pass as ``interrupt=`` to :func:`vmown.threaded` or :func:`vmown.bind_threaded`:
when the calling process is cancelled during the call, SIGURG is sent to
the callout's thread (a no-op handler, no SA_RESTART), so the blocked system
call fails with EINTR and the call returns; the callout then raises
Cancelled.  The handler is installed on the main thread when the first such
wrapper is made.
"""

# The signal INTERRUPT_SIGNAL sends: ignored by default, used by nothing else
# here (Go uses it for goroutine preemption for the same reason).
_SIGNAL = signal.SIGURG
_signal_installed = False
# Tag (the C function's address) -> interrupt, for the generated C wrappers.
_c_interrupts: dict[int, Any] = {}

# PyThreadState_SetAsyncExc(ident, NULL): take back a pending asynchronous exception.
_clear_async_exc = ctypes.PYFUNCTYPE(ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p)(
    ("PyThreadState_SetAsyncExc", ctypes.pythonapi)
)


def _no_op(signum: int, frame: object) -> None:
    """The handler of INTERRUPT_SIGNAL: its only job is to make the system call fail with EINTR."""


def _check_interrupt(interrupt: Any) -> None:
    if interrupt is INTERRUPT_SIGNAL:
        _install_signal()
    elif not callable(interrupt):
        raise TypeError(f"interrupt must be vmown.INTERRUPT_SIGNAL or a callable, not {interrupt!r}")


def _install_signal() -> None:
    """Give SIGURG a no-op handler without SA_RESTART (once, on the main thread)."""
    global _signal_installed
    if _signal_installed:
        return
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError(
            "interrupt=vmown.INTERRUPT_SIGNAL installs a signal handler, which only the main thread "
            "can do: make the first interruptible wrapper on the main thread (at import, say)"
        )
    if signal.getsignal(_SIGNAL) in (signal.SIG_DFL, signal.SIG_IGN, None):
        signal.signal(_SIGNAL, _no_op)
    signal.siginterrupt(_SIGNAL, True)  # no SA_RESTART: the call fails with EINTR
    _signal_installed = True


def _send(interrupt: Any, ident: int) -> None:
    if interrupt is INTERRUPT_SIGNAL:
        signal.pthread_kill(ident, _SIGNAL)
    else:
        interrupt()


def _interrupt_callout(proc: Process[Any], thread: _ThreadState) -> None:
    """Owner: ``proc`` is in a callout on ``thread`` and was cancelled: interrupt the call if it opted in."""
    interrupt = proc._interrupt
    if interrupt is None and _c_interrupts:
        info = ffi.new("vmown_slot_info *")
        if lib.vmown_slot_read(thread.cb, thread.slot, info) == 0:
            interrupt = _c_interrupts.get(int(info.callout))
    if interrupt is None:
        return
    try:
        _send(interrupt, thread.ident)
    except Exception as exc:  # noqa: BLE001 - the canceller may be the loop: report, go on
        warnings.warn(f"interrupting the callout of {proc!r} failed: {exc!r}", RuntimeWarning, stacklevel=2)


def _interruptible(call: Callable[P, T], interrupt: Any) -> Callable[P, T]:
    """``call`` (a threaded wrapper) with ``interrupt`` armed for the duration of each call."""

    def interruptible(*args: P.args, **kwargs: P.kwargs) -> T:
        proc = _process_var.get(None)
        if proc is None:
            return call(*args, **kwargs)
        if proc._cancel_pending:  # cancelled already: do not start the call
            raise _cancelled()(f"{proc!r} is in a cancelled scope")
        proc._interrupt = interrupt  # the per-call state word
        try:
            return call(*args, **kwargs)
        finally:
            proc._interrupt = None
            if proc._cancel_pending:
                # The asynchronous Cancelled, if not yet raised (the call
                # failed, with EINTR say), would land at this thread's next
                # eval-breaker check, wherever that is: take it back and
                # raise here, with what the call raised as the context.
                _clear_async_exc(threading.get_ident(), None)
                raise _cancelled()(f"{proc!r} was cancelled during a callout")

    return interruptible


def _cancelled() -> type[BaseException]:
    from ._cancel import Cancelled

    return Cancelled


def threaded(
    fn: Callable[P, T], *, interrupt: Callable[[], object] | _InterruptSignal | None = None
) -> Callable[P, T]:
    """Wrap ``fn`` so that every call to it is a :func:`callout`.

    Made for cffi functions (``lib.f`` of an out-of-line module, or a function
    of ``ffi.dlopen``): the wrapper takes exactly the C function's parameters
    and a call through it costs about 1.5 plain calls (it is C, like
    :func:`callout`).  Buffers passed for pointer parameters are pinned for
    the call and passed as pointers of the parameter's type; a read-only
    buffer (bytes, a read-only numpy array or mmap) only for a ``const``
    pointer; a str, list, tuple or other object for a pointer parameter is
    refused with a TypeError before the call.  Any other callable (and a
    variadic C function) gets the rules of :func:`callout`: any arguments.

    A process cancelled during the call gets :class:`vmown.Cancelled` when
    it returns.  ``interrupt`` makes the call return early instead:
    :data:`vmown.INTERRUPT_SIGNAL` interrupts the thread's blocked system
    call (it fails with EINTR), a callable is run from the canceller's
    thread (``conn.interrupt`` of sqlite3, closing a descriptor).  An
    interruptible wrapper is a Python function around the C one (~0.3 us
    more per call), and a call that starts in a cancelled scope raises
    Cancelled without being made.
    """
    if interrupt is not None:
        _check_interrupt(interrupt)
        inner = threaded(fn)
        wrapper = _interruptible(inner, interrupt)
        for attr in ("__name__", "__qualname__", "__doc__"):
            if hasattr(inner, attr):
                setattr(wrapper, attr, getattr(inner, attr))
        wrapper.__wrapped__ = fn  # type: ignore[attr-defined]
        return wrapper
    params = _buffers.c_parameters(fn)  # None: the rules of callout() for a Python callable
    tag = next(_tags)
    entry, keep = _blocking_entry(fn) if params is not None else (None, None)
    wrapper = _callout_ext.Threaded(fn, tag, params, entry, keep)
    name = getattr(fn, "__name__", None)
    _tag_names[tag] = _symbol_name(fn)
    _wrappers[wrapper] = _tag_names[tag]
    if isinstance(name, str) and name.isidentifier():
        wrapper.__name__ = wrapper.__qualname__ = name
    wrapper.__doc__ = f"{_name(fn)} as a callout: the VM is disowned while it runs (vmown.threaded)."
    wrapper.__wrapped__ = fn
    return wrapper  # type: ignore[no-any-return]


# ---- the blocking entry ----
#
# A Threaded wrapper of a cffi function calls a function known to block
# through a second way in, which owns the VM again before cffi takes the GIL
# back (native/pyext/callout_ext.c, "The blocking entry"): a libffi closure
# with the function's signature, seen by cffi as a function pointer of the
# function's own C type, so cffi converts the arguments and the result
# exactly as for the direct call.  libffi needs each type as it is passed:
# one letter per type, the result first.  Structs and unions passed by
# value, long double and complex have no letter: such a function has no
# entry and always comes back the direct way.

_INTEGER_LETTERS: Final = {(1, True): "b", (1, False): "B", (2, True): "h", (2, False): "H",
                           (4, True): "i", (4, False): "I", (8, True): "q", (8, False): "Q"}  # fmt: skip
_DEFAULT_ABI: Final = ffi.typeof("void(*)(void)").abi


def _type_letter(ctype: Any) -> str | None:
    """libffi's type letter for a cffi parameter or result type, or None."""
    if ctype.kind in ("pointer", "array", "function"):
        return "p"
    if ctype.kind == "void":
        return "v"
    if ctype.kind not in ("primitive", "enum"):
        return None  # struct, union: by value
    if ctype.cname == "float":
        return "f"
    if ctype.cname == "double":
        return "d"
    try:
        signed = int(ffi.cast(ctype, -1)) < 0
    except TypeError:  # char, wchar_t, long double, complex: not an integer
        return "B" if ctype.cname == "char" else None
    return _INTEGER_LETTERS.get((ffi.sizeof(ctype), signed))


def _blocking_entry(fn: Any) -> tuple[Any, Any]:
    """(entry, keep) for a Threaded wrapper of cffi function ``fn``, or (None, None).

    entry is a cffi function pointer of fn's C type that calls fn through a
    closure whose handler owns the VM again before returning; keep owns the
    closure and must live as long as entry.
    """
    ctype = _buffers.function_ctype(fn)
    if ctype is None or ctype.ellipsis or ctype.abi != _DEFAULT_ABI:
        return None, None
    letters = [_type_letter(ctype.result), *(_type_letter(arg) for arg in ctype.args)]
    if None in letters:
        return None, None
    if isinstance(fn, _cffi_backend._CDataBase):
        pointer = fn
    else:  # lib.f of an out-of-line module: its address from the module's ffi
        module_ffi = _buffers.module_ffi(fn)
        if module_ffi is None:
            return None, None
        pointer = module_ffi.addressof(fn.__self__, fn.__name__)
    keep, code = _callout_ext.make_entry(int(ffi.cast("uintptr_t", pointer)), "".join(letters))  # type: ignore[arg-type]
    return ffi.cast(ffi.typeof(pointer), code), keep


# ---- per-function figures ----


def callout_stats() -> list[dict[str, Any]]:
    """Figures per function called out of the VM: which C call blocks the program.

    One row per function (``name``) and way it was called out: through a
    :func:`threaded` wrapper (``kind`` "threaded"), as a :func:`callout`
    target ("callout"), through a C wrapper generated by
    :func:`vmown.threaded_wrappers` and bound with :func:`vmown.bind_threaded`
    ("wrapper", named by the original C function), or by other C code that
    calls ``vmown_callout_begin`` itself ("c", named by the symbol at its
    tag, or the tag in hex).  Counted since this process started, over every
    run: ``calls`` (callouts made from a VM; a call from outside a run is a
    plain call and not counted), ``handed_over`` (calls that came back to
    find the VM taken by another thread, and waited for it, revoked ones
    included), ``revocations`` (generated wrappers only: calls that went out
    lazily and stayed out while the VM was needed, so the heartbeat took the
    VM from them; the other kinds always go out eagerly and show 0),
    ``total_out_s`` and ``longest_out_s`` (time out of the VM, the wait to
    own it again included).  Times are taken only while a run asks for
    them (``vmown.run(..., callout_times=True)``, or ``monitor=``): two
    clock reads per callout.  Rows are sorted by time out, then calls.
    """
    rows: dict[tuple[str, str], list[int]] = {}

    def add(name: str, kind: str, figures: tuple[int, ...]) -> None:
        row = rows.setdefault((name, kind), [0, 0, 0, 0, 0])
        calls, handed_over, out_ns, longest_ns = figures[:4]
        row[0] += calls
        row[1] += handed_over
        row[2] += out_ns
        row[3] = max(row[3], longest_ns)
        row[4] += figures[4] if len(figures) > 4 else 0

    for wrapper, name in list(_wrappers.items()):
        figures = wrapper._figures()
        if figures[0]:
            add(name, "threaded", figures)
    for fn, figures in _callout_ext.target_figures():
        add("(others)" if fn is None else _symbol_name(fn), "callout", figures)
    for c_row in _core_rows():
        tag = c_row.tag
        if tag == 0:
            name, kind = "(others)", "c"
        elif tag in _wrapper_tags:
            name, kind = _tag_names.get(tag) or _address_name(tag), "wrapper"
        else:
            name, kind = _address_name(tag), "c"
        add(name, kind, (c_row.calls, c_row.handed_over, c_row.out_ns, c_row.longest_ns, c_row.revocations))
    table = [
        {
            "name": name,
            "kind": kind,
            "calls": calls,
            "handed_over": handed_over,
            "revocations": revocations,
            "total_out_s": out_ns / 1e9,
            "longest_out_s": longest_ns / 1e9,
        }
        for (name, kind), (calls, handed_over, out_ns, longest_ns, revocations) in rows.items()
    ]
    table.sort(key=lambda row: (-row["total_out_s"], -row["calls"], row["name"]))
    return table


class _CoreRow(NamedTuple):
    """One row of the core's per-function figures (vmown_callout_stat)."""

    tag: int
    calls: int
    handed_over: int
    revocations: int
    out_ns: int
    longest_ns: int


def _core_rows() -> list[_CoreRow]:
    """The core's figures per tag (native/callout.c): the callouts of vmown_callout_begin."""
    size = 64
    while True:
        out = ffi.new("vmown_callout_stat[]", size)
        n = lib.vmown_callout_stats_read(out, size)
        if n <= size:
            # Copied out while `out` lives: a struct taken from a cdata array
            # does not keep the array's memory alive.
            return [
                _CoreRow(r.tag, r.calls, r.handed_over, r.revocations, r.out_ns, r.longest_ns)
                for r in (out[i] for i in range(n))
            ]
        size = n + 16
