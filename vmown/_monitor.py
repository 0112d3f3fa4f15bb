# A live view of a run: vmown.run(main, monitor=PATH) and python -m vmown top PATH.
#
# A run started with monitor=PATH (or with VMOWN_MONITOR=PATH in the
# environment) puts its control block in an arena file at PATH instead of an
# anonymous mapping, and a publisher thread writes the run's figures after it
# twice a second.  Any process that may open the file (mode 0600: the same
# user) attaches the block read-only in spirit (it never registers a slot)
# and reads both:
#
#     arena data:  [ control block: Ownership.size_for(slots) bytes ]
#                  [ figures: magic u64 | seq u64 | length u64 | JSON ... ]
#
# The control block is the live truth (owner word, queue, slots and their
# callout tags, counters), read with the core's own readers.  The figures
# are what only the run's Python side knows: vmown.stats(), their rates per
# second over the last interval, the callout tags' names, and the per-function
# table.  They are a seqlock: the publisher makes seq odd, writes length and
# JSON, makes seq even (each an atomic store of the arena); a reader copies
# length and JSON between two loads of an even, equal seq, and retries
# otherwise.  A torn read is therefore never parsed; a reader that keeps
# losing (a publisher writing without pause) gives up after READ_TRIES and
# shows the block alone.
#
# Cost: one thread that sleeps PUBLISH_INTERVAL_S between snapshots; a
# snapshot (stats, JSON, a copy of a few KB) takes the GIL for tens of
# microseconds.  It never owns the VM and touches no scheduler structure but
# to read it (under the GIL, like any Python thread).
#
# Lifetime.  The run removes the file when it ends (a watcher that has it
# open keeps its mapping and sees the last snapshot, marked "ended").  A run
# killed outright leaves it: python -m vmown stale DIR lists it, and a new run
# refuses the path with a message saying so.  If the run cannot free its
# control block (a thread abandoned in a callout still uses it), the arena
# stays mapped with it.

from __future__ import annotations

import json
import os
import threading
import time
from typing import Any, Callable

from ._arena import Arena
from ._ownership import Ownership

__all__: list[str] = []  # nothing public: vmown.run(monitor=) and python -m vmown top are the interface

MAGIC = int.from_bytes(b"vmownmon", "little")
HEADER_BYTES = 24  # magic, seq, length: u64 each
FIGURES_BYTES = 256 * 1024  # the JSON's room; a snapshot that does not fit is cut to the block alone
PUBLISH_INTERVAL_S = 0.5
READ_TRIES = 100
ENV_VAR = "VMOWN_MONITOR"

# Figures of vmown.stats() that are levels, not counts: no rate for them.
GAUGES = frozenset({"threads", "threads_high", "idle_workers", "processes", "owner", "epoch", "waiters",
                    "slots_in_use"})  # fmt: skip


def figures_offset(slots: int) -> int:
    """Where the figures start in the data of a monitor arena for a block of ``slots`` slots."""
    return Ownership.size_for(slots)


def rates(before: dict[str, Any], after: dict[str, Any], interval_s: float) -> dict[str, float]:
    """Per-second rates of the counts (not the GAUGES) that both snapshots have."""
    if interval_s <= 0:
        return {}
    return {
        key: (after[key] - before[key]) / interval_s
        for key in after
        if key not in GAUGES
        and isinstance(after[key], int)
        and not isinstance(after[key], bool)
        and isinstance(before.get(key), int)
    }


class Publisher:
    """The run's side: the arena file, the block's room in it, and the thread that writes figures."""

    def __init__(self, path: str | os.PathLike[str], slots: int) -> None:
        self.path = os.fspath(path)
        self.offset = figures_offset(slots)
        try:
            self.arena = Arena.create(self.path, self.offset + FIGURES_BYTES)
        except FileExistsError:
            raise FileExistsError(
                f"vmown.run(monitor={self.path!r}): the file exists (another run's, or one left by a run "
                "that was killed: python -m vmown stale DIR --remove deletes those); pass another path"
            ) from None
        self.block = self.arena.buffer[: self.offset]
        self.arena.atomic_store(self.offset, MAGIC)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._collect: Callable[[], dict[str, Any]] | None = None
        self._last: tuple[float, dict[str, Any]] | None = None

    def start(self, collect: Callable[[], dict[str, Any]], interval_s: float = PUBLISH_INTERVAL_S) -> None:
        """Publish collect() now and every interval_s from a thread of its own."""
        self._collect = collect
        self.publish()
        self._thread = threading.Thread(
            target=self._loop, args=(interval_s,), name="vmown-monitor", daemon=True
        )
        self._thread.start()

    def _loop(self, interval_s: float) -> None:
        while not self._stop.wait(interval_s):
            try:
                self.publish()
            except Exception:  # noqa: BLE001 - the view must never break the run; the next try may work
                pass

    def publish(self, ended: bool = False) -> None:
        assert self._collect is not None
        figures = self._collect()
        now = time.monotonic()
        stats = figures.get("stats", {})
        if self._last is not None:
            figures["rates"] = rates(self._last[1], stats, now - self._last[0])
            figures["rates_interval_s"] = now - self._last[0]
        self._last = (now, stats)
        figures["ended"] = ended
        figures["published_s"] = time.time()
        text = json.dumps(figures).encode()
        if len(text) > FIGURES_BYTES - HEADER_BYTES:
            text = json.dumps({"error": f"figures of {len(text)} bytes do not fit", "ended": ended}).encode()
        seq = self.arena.atomic_load(self.offset + 8)
        self.arena.atomic_store(self.offset + 8, seq | 1)  # odd: being written
        start = self.offset + HEADER_BYTES
        self.arena.buffer[start : start + len(text)] = text
        self.arena.atomic_store(self.offset + 16, len(text))
        self.arena.atomic_store(self.offset + 8, (seq | 1) + 1)

    def stop(self) -> None:
        """Stop the thread and publish a last snapshot, marked ended."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._collect is not None:
            try:
                self.publish(ended=True)
            except Exception:  # noqa: BLE001 - the run's outcome matters more than its last view
                pass

    def close(self, block_freed: bool) -> None:
        """Remove the file; unmap the arena if the control block in it was freed."""
        try:
            self.arena.unlink()
        except OSError:
            pass
        del self.block
        if block_freed:
            self.arena.close()


def read_figures(arena: Arena, slots: int) -> dict[str, Any] | None:
    """The last figures a run published in ``arena`` (None: not a monitor arena, or no snapshot)."""
    offset = figures_offset(slots)
    if arena.size < offset + HEADER_BYTES or arena.atomic_load(offset) != MAGIC:
        return None
    view = arena.buffer
    for _ in range(READ_TRIES):
        seq = arena.atomic_load(offset + 8)
        if seq & 1 or seq == 0:
            time.sleep(0.001)
            continue
        length = arena.atomic_load(offset + 16)
        if not 0 < length <= FIGURES_BYTES - HEADER_BYTES:
            return None
        text = bytes(view[offset + HEADER_BYTES : offset + HEADER_BYTES + length])
        if arena.atomic_load(offset + 8) == seq:
            try:
                figures = json.loads(text)
            except ValueError:
                return None  # a peer wrote garbage: show the block alone
            return figures if isinstance(figures, dict) else None
    return None
