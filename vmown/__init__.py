"""vmown: a threaded-FFI VM ownership runtime.

Many OS threads share one VM; only the thread that owns it runs VM code.  A
thread disowns the VM around blocking C code (one atomic store) and owns it
again afterwards (one compare-and-swap); threads that find it owned queue and
sleep on their own OS semaphore until an owner hands it over.

Public names are re-exported here from the private modules; a test checks
that each is exported exactly once.
"""

from __future__ import annotations

from ._arena import Arena
from ._channel import Channel
from ._errors import (
    AlreadyOwnerError,
    ArenaError,
    ArenaFullError,
    BrokenError,
    ChannelBrokenError,
    ChannelClosed,
    ChannelError,
    ControlBlockError,
    NotOwnerError,
    SlotsExhaustedError,
    VmownError,
)
from ._cffi_wrappers import bind_threaded, threaded_wrappers
from ._callout import INTERRUPT_SIGNAL, callout, callout_stats, threaded
from ._callback import callback
from ._native import lib as _lib
from ._ownership import LAYOUT_VERSION as _LAYOUT_VERSION, Ownership
from ._scheduler import Process, checkpoint, current_process, run, sleep, spawn, stats
from ._cancel import (
    CancelScope,
    Cancelled,
    ProcessCancelled,
    TooSlowError,
    current_time,
    fail_after,
    fail_at,
    move_on_after,
    move_on_at,
)
from ._sync import CapacityLimiter, Condition, Event, Lock, Queue, Semaphore, WouldBlock
from ._stacks import allow_inspection
from ._taskgroup import TaskGroup
from ._watchdog import SlowCalloutWarning, SlowStepWarning, WatchdogWarning
from ._token import RunFinishedError, RunToken, current_token
from ._io import notify_closing, wait_readable, wait_writable
from ._socket import open_tcp_listener, open_tcp_stream
from . import socket

__version__ = "0.1.0"

# The compiled core must come from this source tree: a stale build of another
# layout would misread every control block.
if _lib.vmown_layout_version() != _LAYOUT_VERSION:
    raise ImportError(
        f"vmown._native reads control block layout {_lib.vmown_layout_version()}, this package "
        f"expects {_LAYOUT_VERSION}: the extension is stale; reinstall with pip install -e ."
    )

__all__ = [
    "INTERRUPT_SIGNAL",
    "AlreadyOwnerError",
    "Arena",
    "ArenaError",
    "ArenaFullError",
    "BrokenError",
    "CancelScope",
    "Cancelled",
    "CapacityLimiter",
    "Channel",
    "ChannelBrokenError",
    "ChannelClosed",
    "ChannelError",
    "Condition",
    "ControlBlockError",
    "Event",
    "Lock",
    "NotOwnerError",
    "Ownership",
    "Process",
    "ProcessCancelled",
    "Queue",
    "RunFinishedError",
    "RunToken",
    "Semaphore",
    "SlowCalloutWarning",
    "SlowStepWarning",
    "SlotsExhaustedError",
    "TaskGroup",
    "TooSlowError",
    "VmownError",
    "WatchdogWarning",
    "WouldBlock",
    "allow_inspection",
    "bind_threaded",
    "callback",
    "callout",
    "callout_stats",
    "checkpoint",
    "current_process",
    "current_token",
    "current_time",
    "fail_after",
    "fail_at",
    "move_on_after",
    "move_on_at",
    "notify_closing",
    "open_tcp_listener",
    "open_tcp_stream",
    "run",
    "sleep",
    "socket",
    "spawn",
    "stats",
    "threaded",
    "threaded_wrappers",
    "wait_readable",
    "wait_writable",
]
