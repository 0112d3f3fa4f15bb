# Timeouts: one reading of a `timeout=` argument for the whole package.
#
# Every call that waits takes `timeout` in seconds: None or math.inf waits for
# ever; 0 does not wait (or waits as little as the call can); any other finite
# number >= 0 is a bound.  nan, negative numbers, bools and non-numbers are
# refused here (ValueError), with the same message everywhere, before
# anything is done.
#
# The core takes nanoseconds as an int64, < 0 meaning "no deadline".  A bound
# too large for that (about 292 years) is no bound anyone can wait out: it
# is taken as "for ever" rather than wrapped or overflowed (1e10 s used to
# raise OverflowError).

from __future__ import annotations

import math
from typing import Any

__all__: list[str] = []

# Above this many ns (~146 years) a timeout is treated as for ever: a
# deadline of now + timeout must still fit an int64 of CLOCK_MONOTONIC ns.
_FOREVER_NS = 1 << 62


def timeout_message(value: Any, name: str = "timeout") -> str:
    return f"{name} must be a number of seconds >= 0, math.inf or None (no limit), not {value!r}"


def timeout_ns(timeout: Any, name: str = "timeout") -> int:
    """``timeout`` (seconds, None or inf: no limit) in ns for the core: < 0 means none."""
    if timeout is None:
        return -1
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout >= 0:
        raise ValueError(timeout_message(timeout, name))  # a bool, not a number, negative, or nan
    if timeout == math.inf:
        return -1
    ns = int(timeout * 1_000_000_000) if isinstance(timeout, float) else timeout * 1_000_000_000
    return -1 if ns > _FOREVER_NS else ns


def timeout_s(timeout: Any, name: str = "timeout") -> float | None:
    """``timeout`` checked as :func:`timeout_ns` does; None when there is no limit."""
    ns = timeout_ns(timeout, name)
    return None if ns < 0 else ns / 1e9
