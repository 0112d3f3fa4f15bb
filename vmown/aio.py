"""vmown.aio: asyncio programs on the VM.

:class:`EventLoop` is an asyncio event loop whose thread owns a VM while the
loop runs, so a coroutine can call a :func:`vmown.threaded` C function
inline (the call disowns the VM and owns it again).  :func:`run` is
``asyncio.run`` on it.  First stage: a callout that blocks still holds up the
loop's thread; handing the loop to another thread meanwhile is designed in
docs/design-log.md ("asyncio loop") but not built.
"""

from __future__ import annotations

from ._aio import EventLoop, run

__all__ = ["EventLoop", "run"]
