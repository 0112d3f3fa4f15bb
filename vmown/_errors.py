# The one place where a C result code becomes a Python exception.
#
# C functions of the core return 0 (or a non-negative result) on success, and
# a negative code on failure: -errno for a failed OS call, or one of the
# VMOWN_E* codes of native/vmown.h.  `check` turns the latter into the
# exceptions below, each with a message that says what to do.

from __future__ import annotations

import os

from ._native import lib

__all__ = [
    "AlreadyOwnerError",
    "BrokenError",
    "ControlBlockError",
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


def check(code: int, context: str = "") -> int:
    """Return ``code`` if it is not negative, else raise its exception."""
    if code < 0:
        raise error(code, context)
    return code
