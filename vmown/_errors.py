# The one place where a C result code becomes a Python exception.
#
# C functions of the core return 0 (or a non-negative result) on success, and
# a negative code on failure: -errno for a failed OS call, or one of the
# VMOWN_E* codes of native/vmown.h.  `check` turns the latter into the
# exceptions below, each with a message that says what to do.

from __future__ import annotations

import os
from typing import Any

from ._native import lib

__all__ = [
    "AlreadyOwnerError",
    "ArenaError",
    "ArenaFullError",
    "BrokenError",
    "ChannelBrokenError",
    "ChannelClosed",
    "ChannelError",
    "ControlBlockError",
    "ForkedRunError",
    "NotOwnerError",
    "SlotsExhaustedError",
    "VmownError",
]


class VmownError(Exception):
    """Base class of the errors vmown raises; ``code`` is the C result code."""

    def __init__(self, message: str, code: int = 0) -> None:
        super().__init__(message)
        self.code = code


class NotOwnerError(VmownError):
    """The calling thread does not own the VM but the operation needs it to."""


class AlreadyOwnerError(VmownError):
    """The calling thread already owns the VM (ownership does not nest)."""


class SlotsExhaustedError(VmownError):
    """Every slot of the control block is taken by a registered thread."""


class ControlBlockError(VmownError):
    """Memory that should hold a control block does not (bad header)."""


class BrokenError(VmownError):
    """The control block was found corrupt and is marked broken for good."""


class ForkedRunError(VmownError):
    """Raised by :func:`vmown.run` in a child process forked inside the run.

    The child holds a copy of the run whose other threads (workers, the
    heartbeat) did not survive fork, so it cannot go on: at the child's next
    scheduling point the run stops and raises this, in the child only; the
    parent's run is unaffected.  End such a child with ``os._exit()`` (or
    ``exec``), as with any threaded program.
    """


class ArenaError(VmownError):
    """An arena file or header is unusable, or an arena operation was refused."""


class ArenaFullError(ArenaError):
    """``Arena.alloc`` found too few free bytes in the data area."""


class ChannelError(VmownError):
    """Memory that should hold a channel does not (bad header, wrong offset)."""


class ChannelBrokenError(ChannelError):
    """The channel held an impossible value (corrupted by a peer?) and is marked broken for good."""


class ChannelClosed(VmownError):
    """The channel is closed: ``send`` is refused; ``recv`` found it closed and drained."""


_MESSAGES: dict[int, tuple[type[BaseException], str]] = {
    lib.VMOWN_ENOTOWNER: (
        NotOwnerError,
        "this thread does not own the VM; call own() first (after fork, the "
        "child's threads start without ownership)",
    ),
    lib.VMOWN_EALREADY: (AlreadyOwnerError, "this thread already owns the VM; ownership does not nest"),
    lib.VMOWN_ENOSLOTS: (
        SlotsExhaustedError,
        "every slot of the control block is in use; make it with more slots "
        "(Ownership(slots=N)) or let idle threads finish",
    ),
    lib.VMOWN_EBADSLOT: (VmownError, "this thread's slot is not registered with the control block"),
    lib.VMOWN_EBADMAGIC: (ControlBlockError, "the memory does not hold a vmown control block (bad magic)"),
    lib.VMOWN_EVERSION: (
        ControlBlockError,
        "the control block was made by another layout version of vmown; use the same version on both sides",
    ),
    lib.VMOWN_ESIZES: (
        ControlBlockError,
        "the control block's header sizes disagree with this build or with the memory given (truncated?)",
    ),
    lib.VMOWN_ENOTREADY: (
        ControlBlockError,
        "the control block is still being initialised by its creator; try again shortly",
    ),
    lib.VMOWN_EBROKEN: (
        BrokenError,
        "the control block is marked broken (corrupt shared state); make a new one",
    ),
    lib.VMOWN_ETIMEDOUT: (TimeoutError, "timed out waiting for ownership"),
    lib.VMOWN_EBUSY: (VmownError, "the slot is busy (it owns, waits, or is in use)"),
    lib.VMOWN_EINVAL: (ValueError, "invalid argument"),
    lib.VMOWN_ESTUCK: (
        VmownError,
        "the control block's lock has been held for seconds: a peer process is stopped (SIGSTOP, "
        "a debugger) or the block is corrupt",
    ),
    lib.VMOWN_EARENA_BADMAGIC: (
        ArenaError,
        "the file is not a vmown arena (bad magic; or made on a machine of another word size or byte order)",
    ),
    lib.VMOWN_EARENA_VERSION: (
        ArenaError,
        "the arena was made by another layout version of vmown; use the same version on both sides",
    ),
    lib.VMOWN_EARENA_SIZES: (
        ArenaError,
        "the arena header's sizes disagree with this build (page size, header size) or are impossible",
    ),
    lib.VMOWN_EARENA_NOTREADY: (
        ArenaError,
        "the arena never became ready: its creator did not finish writing the header within the "
        "timeout (it may have died); pass a longer timeout=, or remove the file if it is stale",
    ),
    lib.VMOWN_EARENA_TRUNCATED: (
        ArenaError,
        "the arena file is shorter than its header says (truncated, or not an arena); it was not mapped",
    ),
    lib.VMOWN_EARENA_SYMLINK: (
        ArenaError,
        "the path is a symbolic link; arenas are opened without following links: pass the real path",
    ),
    lib.VMOWN_EARENA_NOTREGULAR: (ArenaError, "the path is not a regular file, so it cannot hold an arena"),
    lib.VMOWN_EARENA_OWNER: (
        ArenaError,
        "the arena file belongs to another user; only the owner's arenas are opened",
    ),
    lib.VMOWN_EARENA_MODE: (
        ArenaError,
        "the arena file grants permissions that were not expected; chmod it to 0600, or pass "
        "mode= with the shared bits you expect (e.g. mode=0o660)",
    ),
    lib.VMOWN_EARENA_FULL: (
        ArenaFullError,
        "the arena's data area has too few free bytes; grow() it or create it larger",
    ),
    lib.VMOWN_EARENA_BUSY: (
        ArenaError,
        "a live process still maps more of the arena than the new size; it must close its arena first",
    ),
    lib.VMOWN_EARENA_ALLOCATED: (
        ArenaError,
        "cannot shrink below the bytes already handed out by alloc()",
    ),
    lib.VMOWN_EARENA_ADDRINUSE: (
        ArenaError,
        "the fixed address range is already in use (nothing there was touched); pick another address "
        "or pass address=None",
    ),
    lib.VMOWN_EARENA_ADDRESS: (
        ArenaError,
        "the kernel did not map the arena at the fixed address (no MAP_FIXED_NOREPLACE before Linux "
        "4.17); pass address=None",
    ),
    lib.VMOWN_EARENA_MAXSIZE: (
        ArenaError,
        "the size exceeds the address range this handle reserved; open or create it with a larger max_size=",
    ),
    lib.VMOWN_EARENA_NOHUGE: (
        ArenaError,
        "huge pages are not available; reserve some (sysctl vm.nr_hugepages=N) or pass huge_pages=False",
    ),
    lib.VMOWN_EARENA_RANGE: (IndexError, "offset + width is beyond the arena's data area"),
    lib.VMOWN_EARENA_ALIGN: (ValueError, "offset is not a multiple of the width"),
    lib.VMOWN_EARENA_LOCKED: (
        ArenaError,
        "another live process held the arena's header lock for longer than the timeout",
    ),
    lib.VMOWN_EARENA_PEERS: (
        ArenaError,
        "too many processes map the arena (its table of peers is full); close some first",
    ),
    lib.VMOWN_EARENA_CORRUPT: (
        ArenaError,
        "the arena header holds an impossible value (corrupted by a peer?); make a new arena",
    ),
    lib.VMOWN_EARENA_OVERLAP: (
        ArenaError,
        "the pages were handed out already (to alloc(), a Channel or a control block); place it "
        "where nothing else is: Ownership.create_in(arena), or at the offset arena.alloc() returns",
    ),
    lib.VMOWN_EARENA_CUT: (
        ArenaError,
        "the arena's file was truncated under the live mapping (by another process: vmown never "
        "does); its pages are gone and touching them would raise SIGBUS: close this arena",
    ),
    lib.VMOWN_ECHAN_BADMAGIC: (
        ChannelError,
        "no channel at this offset (bad magic; or made on a machine of another word size or byte "
        "order); pass the offset Channel.create gave (channel.offset)",
    ),
    lib.VMOWN_ECHAN_VERSION: (
        ChannelError,
        "the channel was made by another layout version of vmown; use the same version in every process",
    ),
    lib.VMOWN_ECHAN_SIZES: (
        ChannelError,
        "the channel's header holds impossible sizes, or more than the memory after the offset "
        "(wrong offset?)",
    ),
    lib.VMOWN_ECHAN_NOTREADY: (
        ChannelError,
        "no channel here yet (still being created, or never made at this offset); open it after "
        "Channel.create returned",
    ),
    lib.VMOWN_ECHAN_CLOSED: (ChannelClosed, "the channel is closed"),
    lib.VMOWN_ECHAN_CORRUPT: (
        ChannelBrokenError,
        "the channel held an impossible value (corrupted by a peer?) and is now marked broken for "
        "every process; make a new channel",
    ),
    lib.VMOWN_ECHAN_TOOBIG: (
        ValueError,
        "the message is longer than the channel's max_message; make the channel with a larger "
        "max_message= or send less",
    ),
    lib.VMOWN_ECHAN_SMALLBUF: (
        ValueError,
        "the next message does not fit in the buffer (it stays in the channel); pass a buffer of "
        "channel.max_message bytes",
    ),
}


def error(code: int, context: str = "") -> BaseException:
    """The exception for a negative C result ``code``."""
    prefix = f"{context}: " if context else ""
    if code in _MESSAGES:
        cls, message = _MESSAGES[code]
        if issubclass(cls, VmownError):
            return cls(prefix + message, code)
        return cls(prefix + message)
    errno = -code
    return OSError(errno, prefix + os.strerror(errno))


def vm_error(cb: Any, code: int, context: str = "") -> BaseException:
    """The exception for a negative ``code`` from an operation on the block ``cb`` (a ``vmown_vm *``).

    On a block marked broken, BrokenError whatever the code: the operation
    may have failed on the state the breakage left (a thread whose callout
    could not own the VM again, say), and the breakage is what to report.
    """
    return error(lib.VMOWN_EBROKEN if lib.vmown_broken(cb) else code, context)


def check(code: int, context: str = "") -> int:
    """Return ``code`` if it is not negative, else raise its exception."""
    if code < 0:
        raise error(code, context)
    return code
