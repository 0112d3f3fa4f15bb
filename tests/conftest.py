from __future__ import annotations

from typing import Callable, Iterator

import pytest

from vmown._native import lib


@pytest.fixture
def widen() -> Iterator[Callable[[int], None]]:
    """Widen the core's race windows for the test; always switched off after."""
    try:
        yield lib.vmown_debug_set_widen_ns
    finally:
        lib.vmown_debug_set_widen_ns(0)
