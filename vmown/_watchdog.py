# The watchdog: vmown.run(main, slow_step=S, slow_callout=C).
#
# Two things make a run slow without failing it: a step that computes (or
# calls blocking code that is not a callout) for a long time, so no other
# process runs; and a callout that stays out, so the process that made it
# waits.  The heartbeat already copes with the second (another thread takes
# the VM); the watchdog names both, once each, with a warning of its own
# category (SlowStepWarning, SlowCalloutWarning; both WatchdogWarning),
# attributed to the user's file and line so the warnings filters work on it.
#
# How it looks.  A thread of its own ("vmown-watchdog") wakes every
# POLL_FRACTION of the smaller threshold (bounded by POLL_MIN_S and
# POLL_MAX_S) and reads, without owning the VM:
#   - slow step: the run's step count (rt.steps, one int the owner bumps at
#     every step), the owner slot (the owner word), and whether work waits
#     (a runnable process, a due timer).  The same step still running on the
#     same owner for S seconds while work waits: one warning, with the stack
#     of the owner's thread taken now (sys._current_frames, through
#     _callout_ext.current_frames: CPython gh-106883), while the step
#     is still inside the slow code -- not after it ended.  The process is
#     the one whose state is running on the owner's slot.
#   - slow callout: the callout tag and start tick of each serving thread's
#     slot.  The same (slot, tag, start tick) seen for C seconds: one warning
#     naming the function (the tag's name: the threaded wrapper's function,
#     a generated wrapper's C function by its address, callout()'s target)
#     and how long it has been out, with the Python stack that made it.
# A step in a callout is not a slow step (the VM was given up, or is given
# up lazily and revoked by the heartbeat); a step blocked outside any
# callout is exactly what slow_step is for.
#
# Identity of a callout.  The start tick moves at 1 kHz while the heartbeat
# ticks; two calls of the same function from the same slot in the same tick
# look alike, but both are then shorter than a poll interval, so neither is
# seen twice.  While the heartbeat sleeps (nothing to watch) the tick stops:
# a loop of calls of one function could then look like one long call; the
# innermost Python frame and its instruction must also be unchanged (a loop
# moves between calls), which leaves a loop whose body is the call alone
# and whose other calls are all short: tolerated (the warning then says how
# long the function has kept the thread out, which is still true).
#
# Cost: nothing unless asked.  When on, a wake-up reads a few words per
# serving thread through cffi (~1 us); the frames are taken only when a
# callout is out.  Measured by benchmarks/suite_heartbeat.py
# (watchdog_*_cpu).

from __future__ import annotations

import linecache
import os
import threading
import time
import traceback
import warnings
from types import FrameType
from typing import Any

from . import _callout_ext

__all__ = ["SlowCalloutWarning", "SlowStepWarning", "WatchdogWarning"]

POLL_FRACTION = 0.5  # of the smaller threshold: a warning comes 1-1.5 thresholds in
POLL_MIN_S = 0.01
POLL_MAX_S = 0.25
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
# Slot states (vmown_slot_state_name) of a thread that runs: RUNNING, and a
# slot that left the wait queue or the idle stack by itself.
_RUNS = frozenset({"running", "left", "left_idle"})


class WatchdogWarning(RuntimeWarning):
    """A run was slow somewhere: the base of vmown's watchdog warnings."""


class SlowStepWarning(WatchdogWarning):
    """A process kept the VM past ``slow_step`` seconds while other work waited.

    Attributes: ``process`` (its name), ``function``, ``filename``,
    ``lineno`` (where it was when detected), ``elapsed_s``, ``stack`` (the
    owner's Python stack then, formatted).
    """


class SlowCalloutWarning(WatchdogWarning):
    """A callout stayed out past ``slow_callout`` seconds.

    Attributes: ``function`` (the C function or callout target), ``elapsed_s``
    (how long it had been out when detected), ``process``, ``filename``,
    ``lineno``, ``stack`` (the Python stack that made it, formatted).
    """


def _user_frame(frame: FrameType | None) -> FrameType | None:
    """The innermost frame that is not vmown's own code."""
    while frame is not None and os.path.dirname(os.path.abspath(frame.f_code.co_filename)) == _PACKAGE_DIR:
        frame = frame.f_back
    return frame


class Watchdog:
    """Watches one run (vmown/_scheduler.py _Runtime) from a thread of its own."""

    def __init__(self, rt: Any, slow_step_s: float | None, slow_callout_s: float | None) -> None:
        self.rt = rt
        self.slow_step_s = slow_step_s
        self.slow_callout_s = slow_callout_s
        smallest = min(s for s in (slow_step_s, slow_callout_s) if s is not None)
        self.poll_s = min(max(smallest * POLL_FRACTION, POLL_MIN_S), POLL_MAX_S)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="vmown-watchdog", daemon=True)
        # slow step: (steps, owner slot) first seen at, and the last warned
        self._step: tuple[int, int] | None = None
        self._step_since = 0.0
        self._step_warned: tuple[int, int] | None = None
        # slow callouts: slot -> ((tag, tick, frame id, lasti), first seen at, warned)
        self._callouts: dict[int, tuple[tuple[int, int, int, int], float, bool]] = {}

    @property
    def tid(self) -> int | None:
        return self._thread.native_id

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        while not self._stop.wait(self.poll_s):
            if self.rt.halt:
                continue
            try:
                now = time.monotonic()
                if self.slow_step_s is not None:
                    self._look_at_step(now)
                if self.slow_callout_s is not None:
                    self._look_at_callouts(now)
            except Exception:  # noqa: BLE001 - a watchdog must never break the run it watches
                pass

    # ---- slow steps ----

    def _look_at_step(self, now: float) -> None:
        from ._native import lib
        from ._scheduler import _RUNNING, _now

        rt = self.rt
        owner = lib.vmown_owner(rt.cb)
        key = (rt.steps, owner)
        if key != self._step:
            self._step, self._step_since = key, now
            return
        if owner == 0 or key == self._step_warned or now - self._step_since < self.slow_step_s:
            return
        if rt.ownership.slot_info(owner)["lazy_out"]:
            return  # a lazy callout keeps the owner word: a callout, not a step
        waiting = bool(rt.run_queue) or bool(rt.timers and rt.timers[0][0] <= _now())
        if not waiting:
            return
        proc = next(
            (p for p in list(rt.processes)
             if p._state is _RUNNING and getattr(p._thread, "slot", 0) == owner),
            None,
        )  # fmt: skip
        if proc is None:
            return  # scheduler code between steps
        frame = _callout_ext.current_frames().get(proc._thread.ident)
        if frame is None or rt.steps != key[0]:
            return  # the step ended as we looked
        self._step_warned = key
        elapsed_s = now - self._step_since + self.poll_s / 2
        self._warn(
            SlowStepWarning,
            f"process {proc.name} kept the VM for over {self.slow_step_s:g} s "
            f"(about {elapsed_s:.2f} s so far) without reaching a scheduling point while other work waited",
            frame,
            process=proc.name,
            elapsed_s=elapsed_s,
        )

    # ---- slow callouts ----

    def _serving_threads(self) -> dict[int, int]:
        """slot -> thread ident, of every thread that serves the run now."""
        rt = self.rt
        threads = dict(rt.worker_idents)
        if rt.run_slot:
            threads[rt.run_slot] = rt.run_ident
        return threads

    def _look_at_callouts(self, now: float) -> None:
        from ._scheduler import _RUNNING

        from ._native import lib

        rt = self.rt
        threads = self._serving_threads()
        owner = lib.vmown_owner(rt.cb)
        frames: dict[int, FrameType] | None = None
        seen = set()
        for slot, ident in threads.items():
            info = rt.ownership.slot_info(slot)
            tag = info["callout"]
            # A slot keeps its last callout's tag until its next disown: the
            # callout is out only while the slot runs without owning the VM,
            # or owns it with a lazy callout out.  A slot that left the queue
            # or the idle stack runs too ("left", "left_idle").
            if not tag or info["state"] not in _RUNS or (slot == owner and not info["lazy_out"]):
                continue
            if frames is None:
                frames = _callout_ext.current_frames()  # not sys._current_frames: CPython gh-106883
            frame = frames.get(ident)
            key = (tag, info["callout_tick"], id(frame), frame.f_lasti if frame is not None else -1)
            seen.add(slot)
            known = self._callouts.get(slot)
            if known is None or known[0] != key:
                self._callouts[slot] = (key, now, False)
                continue
            _, since, warned = known
            elapsed_s = now - since + self.poll_s / 2
            if warned or now - since < self.slow_callout_s:
                continue
            self._callouts[slot] = (key, since, True)
            function = _tag_name(tag)
            proc = next((p for p in list(rt.processes)
                         if p._state is _RUNNING and getattr(p._thread, "slot", 0) == slot), None)  # fmt: skip
            self._warn(
                SlowCalloutWarning,
                f"a callout to {function} has been out for {elapsed_s:.2f} s "
                f"(slow_callout={self.slow_callout_s:g})"
                + (f" in process {proc.name}" if proc is not None else ""),
                frame,
                function=function,
                process=proc.name if proc is not None else None,
                elapsed_s=elapsed_s,
            )
        for slot in list(self._callouts):
            if slot not in seen:
                del self._callouts[slot]

    # ---- both ----

    def _warn(
        self, category: type[WatchdogWarning], text: str, frame: FrameType | None, **attrs: Any
    ) -> None:
        user = _user_frame(frame)
        stack = "".join(traceback.format_stack(frame)) if frame is not None else ""
        where = user or frame
        filename = where.f_code.co_filename if where is not None else "<unknown>"
        lineno = where.f_lineno if where is not None else 0
        function = where.f_code.co_qualname if where is not None else "?"
        if category is SlowStepWarning:
            attrs["function"] = function
        line = linecache.getline(filename, lineno).strip()
        message = category(
            f"{text}; at {filename}:{lineno} in {function}" + (f": {line}" if line else "") + "\n" + stack
        )
        for name, value in {**attrs, "filename": filename, "lineno": lineno, "stack": stack}.items():
            setattr(message, name, value)
        module = where.f_globals.get("__name__", "") if where is not None else ""
        warnings.warn_explicit(message, category, filename, lineno, module=module)


def _tag_name(tag: int) -> str:
    """The name of the function a callout tag stands for (vmown/_callout.py, "tags")."""
    from . import _callout
    from ._native import ffi

    name = _callout._tag_names.get(tag)
    if name is not None:
        return name
    for fn, _ in _callout_ext.target_figures():
        if fn is not None and id(fn) == tag:
            return _callout._symbol_name(fn)
    # A generated wrapper's tag is its C function's address.
    symbol = _callout._symbol_name(ffi.cast("void(*)(void)", tag))
    return symbol if not symbol.startswith("C function") else f"the C function at {tag:#x}"
