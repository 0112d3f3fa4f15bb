# Callbacks from C into the VM: vmown.callback (Cog's callbacks and Go's
# cgocallback are the models).
#
# A cffi callback (@ffi.def_extern, ffi.callback) runs Python on whatever
# thread C calls it from, and nothing tells it about the VM.  Two cases:
#   (a) the thread is in a callout of a run (qsort's comparator, called by a
#       threaded qsort): the callout has disowned the VM, and a worker may
#       own it.  The callback ends the callout's hold on the thread as the
#       callout's own end would (vmown_callout_end with the lazy bit: for a
#       lazy callout of the C wrappers of vmown.threaded_wrappers this makes
#       the slot's lazy seq even, so the heartbeat can no longer revoke the
#       VM from under the callback (T5); for an eager one it is a plain own),
#       runs, and gives the VM up as it returns.  The callout's end then
#       finds the VM not its own and owns it again the slow way, as after a
#       revocation.  A thread that owns the VM outside any callout (C called
#       directly from a step) just runs the callback.
#   (b) any other thread (a C library's own thread): the run's token calls
#       in for it -- the thread's slot registered at its first callback and
#       kept while it lives, own, run, disown (_token.py, "Slots").  Which
#       run: the one in progress in this process; with none the callback is
#       a plain call (there is no VM to protect); with several, RuntimeError.
# The race (docs/ARCHITECTURE.md):
#   T5  a callback during a lazy callout, which the heartbeat may revoke at
#       any tick (native/grants.c, R1-R3).  Run as it is, the callback would
#       be a second owner once the VM is revoked to a worker.  _in_callout
#       first does the callout's return (L1: the lazy seq made even, then the
#       owner word read): the revoker either sees the seq even and calls the
#       revocation off, or has revoked already and the thread queues for the
#       VM like any revoked callout.  Only then does the callback run.
#
# With cffi's API mode, @ffi.def_extern() goes above @vmown.callback: it
# registers the function it is given under that function's __name__, which
# the wrapper keeps (functools.wraps); below it, the raw function would be
# registered and called unprotected.
#
# The callback runs as the owner of the VM: it may use every entry point of
# the run (Event.set, Queue.put_nowait, vmown.spawn), and make callouts that
# give the VM up again.  In case (b) it runs in a copy of main's context.
#
# Exceptions.  What the function raises, or RunFinishedError when the run
# has ended, propagates out of the wrapper to cffi, which reports it
# (onerror=, else sys.unraisablehook) and returns the callback's `error=`
# value to C: reported, never lost, as for any cffi callback.

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

from . import _token
from ._native import ffi, lib
from ._scheduler import _here, _owns, _ThreadState

# The token bit of a lazy callout (native/callout.c, LAZY): slots are < 2^20.
_LAZY = 0x80000000
# The token bit of a callout whose figures the core does not count
# (native/callout.c, UNCOUNTED): the callback's end is not a callout of its
# own, and the callout it interrupts is counted once, at its own end.
_UNCOUNTED = 0x40000000

__all__ = ["callback"]

T = TypeVar("T")
P = ParamSpec("P")


def callback(fn: Callable[P, T]) -> Callable[P, T]:
    """Make ``fn`` safe to call from C, on any thread, while a :func:`vmown.run` is in progress.

    Use it under cffi's decorator, or wrap the function given to
    ``ffi.callback``::

        @ffi.def_extern()
        @vmown.callback
        def on_event(data): ...

        compare = ffi.callback("int(void *, void *)", vmown.callback(py_compare))

    Called back on the thread of a callout in progress, the callback owns the
    VM for its duration and gives it back as it returns; called from a
    foreign C thread, it registers that thread once, owns the VM, runs and
    disowns.  Either way it may use the run's primitives.  Its exceptions go
    to cffi's ``onerror`` (or are reported as unraisable).
    """

    @functools.wraps(fn)
    def call_in_the_vm(*args: P.args, **kwargs: P.kwargs) -> T:
        if kwargs:  # cffi passes none; a Python caller may
            return callback(functools.partial(fn, **kwargs))(*args)  # type: ignore[arg-type]
        here = _here.state
        active = _token._active
        if here is not None:  # (a): a thread of a run
            for token in active:
                if token._rt.cb == here.cb:
                    return _in_callout(token, here, fn, args)
            return fn(*args)  # its run is ending: the thread owns what is left
        if not active:
            return fn(*args, **kwargs)  # no run in progress: nothing to protect
        if len(active) > 1:
            raise RuntimeError(
                f"vmown.callback {getattr(fn, '__qualname__', fn)!r} was called from a C thread while "
                f"{len(active)} vmown.run()s are in progress: it cannot tell which VM to enter"
            )
        token = active[0]
        return token._call(token._ctx.copy().run, fn, *args)

    return call_in_the_vm


def _in_callout(token: _token.RunToken, here: _ThreadState, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
    """(a): own the VM on a thread of the run, in a callout (lazy or eager) or not; run ``fn``."""
    if _owns() and not _lazy_out(here):  # an owner outside any callout
        return fn(*args)
    # T5: the lazy seq made even, then own (waits, GIL released)
    lib.vmown_callout_end(here.slot | _LAZY | _UNCOUNTED)
    try:
        return fn(*args)
    finally:
        _token._leave(token._rt, here.slot)


def _lazy_out(here: _ThreadState) -> bool:
    info = ffi.new("vmown_slot_info *")
    return lib.vmown_slot_read(here.cb, here.slot, info) == 0 and bool(info.lazy_out)
