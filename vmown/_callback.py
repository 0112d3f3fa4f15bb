# Callbacks from C into the VM: vmown.callback (Cog's callbacks and Go's
# cgocallback are the models).
#
# A cffi callback (@ffi.def_extern, ffi.callback) runs Python on whatever
# thread C calls it from, and nothing tells it about the VM.  Two cases:
#   (a) the thread is in a callout of a run (qsort's comparator, called by a
#       threaded qsort): the callout has disowned the VM, and a worker may
#       own it.  The callback owns it again with the thread's own slot, runs,
#       and gives it back as it returns; the callout then goes on, and owns
#       as usual at its end (race T3 of _token.py).  A lazy callout (the C
#       wrappers of vmown.threaded_wrappers) that still holds the owner word
#       is an owner already: the callback just runs.
#   (b) any other thread (a C library's own thread): the run's token calls
#       in for it -- the thread's slot registered at its first callback and
#       kept while it lives, own, run, disown (_token.py, "Slots").  Which
#       run: the one in progress in this process; with none the callback is
#       a plain call (there is no VM to protect); with several, RuntimeError.
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
from ._scheduler import _here, _owns

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
        if _owns():  # the owner (a lazy callout, or a plain C call made while owning)
            return fn(*args, **kwargs)
        if kwargs:  # cffi passes none; a Python caller may
            return callback(functools.partial(fn, **kwargs))(*args)  # type: ignore[arg-type]
        here = _here.state
        active = _token._active
        if here is not None:  # (a): a thread of a run, in a callout
            for token in active:
                if token._rt.cb == here.cb:
                    return token._call(fn, *args)
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
