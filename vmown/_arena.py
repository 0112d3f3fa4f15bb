# Shared-memory arenas: the Python face of native/arena.c.
#
# An Arena is one page-aligned shared mapping: a header page, the data area
# (`arena.buffer`, `arena.size` bytes), and a PROT_NONE guard page after it.
# It is anonymous (`Arena.anonymous`: MAP_SHARED|MAP_ANONYMOUS, shared with
# children forked after it was made) or a file (`create`, `create_temp`,
# `open`: shared with any process that opens the same path).  The protocol
# notes are at the top of native/arena.c; in short:
#
# - The whole address range (`max_size`) is reserved up front, so growing
#   never moves the mapping: views and addresses stay valid.  The header holds
#   the current size; another process sees growth at `open`, at `refresh()`,
#   and whenever `size`, `buffer` or an atomic beyond the mapped end is used.
# - Each process records in the header how much it maps (pid, start time,
#   mapped size); `shrink` is refused while a live peer maps more.  Entries of
#   dead processes are ignored.  Forked children get their own entry at fork.
# - `alloc` hands out whole pages, recorded in the header (every process sees
#   the same allocations); nothing is ever freed except by making a new arena.
# - Nothing is left behind by accident, and nothing is cleaned up behind your
#   back either: there is no resource tracker; a file stays until `unlink()`;
#   `Arena.find_stale(directory)` lists (and with remove=True deletes) arena
#   files whose creator and every peer are dead.
#
# Lifetime in this process: `close()` drops the arena; the memory is unmapped
# as soon as no memoryview of `buffer` (or slice of one) is alive and no call
# is running on it, so a view can never point at unmapped memory.  `shrink`
# refuses (BufferError) while a live view covers the bytes it would remove.
#
# What a peer with write access to the file can and cannot do to us.  Every
# header value it writes is read once, checked against this build, the file's
# fstat length and this process's own reservation before it sizes a mapping
# or bounds an access, and every wait is bounded: so it cannot make vmown map
# or touch memory outside the arena, or hang it (a lock held for ever, a
# header that never becomes ready, fake live peers: each ends in a timeout or
# a clear ArenaError).  It CAN: write anything into the data (treat data
# from an untrusted peer as untrusted input); deny service (hold the lock,
# block shrinking); and truncate the file under a live mapping, after which
# touching the lost pages raises SIGBUS and kills this process.  vmown's own
# shrink never does that (it is refused while a peer maps more), but a plain
# `ftruncate` by someone else is not prevented: give arena files mode 0600 in
# a directory only trusted processes can write, or use an anonymous arena.
# Every Arena method checks the file's length first (one fstat) and raises
# ArenaError instead of touching lost pages.  No SIGBUS handler is installed:
# most accesses are made by Python code through `buffer` (CPython's memcpy,
# numpy, struct), and a fault there cannot be turned into an exception --
# unwinding out of the interpreter's C code in the middle of an operation
# would leave its state (reference counts, locks) half updated; and a
# process-wide SIGBUS handler would fight faulthandler and the program's own.

from __future__ import annotations

import errno
import os
import secrets
import tempfile
import threading
import weakref
from typing import Any

from ._errors import ArenaError, check, error
from ._native import ffi, lib
from ._timeout import timeout_ns as _timeout_ns

__all__ = ["Arena"]

LAYOUT_VERSION = 1  # of the arena header; must match native/vmown_internal.h
DEFAULT_TIMEOUT = 5.0  # seconds: waits for a header being written, for the header lock

if not hasattr(lib, "vmown_arena_open") or lib.vmown_arena_layout_version() != LAYOUT_VERSION:
    raise ImportError(
        f"vmown._native is stale (no arena layout {LAYOUT_VERSION}); reinstall with pip install -e ."
    )

# Byte offsets of the header fields (native/vmown_internal.h, struct
# vmown__arena_header; arena.c asserts some of them): for tools and tests.
_HEADER_OFFSETS = {
    "magic": 0,
    "version": 8,
    "state": 12,
    "header_size": 16,
    "npeers": 20,
    "page_size": 24,
    "size": 32,
    "allocated": 40,
    "lock": 48,
    "creator": 56,
    "creator_start_time": 64,
    "flags": 72,
    "peers": 80,  # 128 entries of (who: u64, mapped_size: u64)
}
_STATES = {1: "initializing", 2: "ready"}

_MASK = {4: (1 << 32) - 1, 8: (1 << 64) - 1}
_ADDRESS_SPACE = 1 << (8 * ffi.sizeof("void *"))
_atomic = lib.vmown_arena_atomic
_RANGE = lib.VMOWN_EARENA_RANGE
_EEXIST = -errno.EEXIST


def _byte_count(value: Any, name: str, *, optional: bool = False) -> int:
    if optional and value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive int (bytes), not {value!r}")
    return value


def _path(path: Any, name: str = "path") -> str:
    """``path`` as a str, refused (ValueError) if the OS would read it as another name."""
    try:
        path = os.fspath(path)
    except TypeError:
        raise TypeError(f"{name} must be a str, bytes or os.PathLike, not {type(path).__name__}") from None
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    if "\0" in path:
        # C would stop at the NUL: a file of another name than arena.path.
        raise ValueError(f"{name} must not contain a NUL byte, not {path!r}")
    if not path:
        raise ValueError(f"{name} must not be empty")
    return path


def _address(address: int | None, flags: int = 0) -> Any:
    if address is None:
        return ffi.NULL
    page = lib.vmown_arena_page_size(flags) or 1
    if isinstance(address, int) and not isinstance(address, bool) and not 0 <= address < _ADDRESS_SPACE:
        raise ValueError(
            f"address must be inside the address space (0 to 2**{8 * ffi.sizeof('void *')}), not {address!r}"
        )
    if isinstance(address, bool) or not isinstance(address, int) or address <= page or address % page:
        raise ValueError(
            f"address must be a multiple of the page size ({page}) above it, where the data area "
            f"starts (the header page sits just below), or None; not {address!r}"
        )
    return ffi.cast("void *", address)


def _mode(mode: int) -> int:
    if isinstance(mode, bool) or not isinstance(mode, int) or not 0 <= mode <= 0o777:
        raise ValueError(
            f"mode must be permission bits from 0o000 to 0o777 (no setuid, setgid or sticky bit), not "
            f"{mode!r}" + (f" ({mode:#o})" if isinstance(mode, int) and not isinstance(mode, bool) else "")
        )
    return mode


def _flags(populate: bool, huge_pages: bool = False) -> int:
    return (lib.VMOWN_ARENA_POPULATE if populate else 0) | (lib.VMOWN_ARENA_HUGE if huge_pages else 0)


def _default_directory() -> str:
    return "/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir()


class _Mapping:
    """The C handle; unmapped when neither an Arena, a view, nor a call holds it."""

    __slots__ = ("handle", "allocs", "placed", "__weakref__")

    def __init__(self, handle: Any) -> None:
        self.handle = handle  # vmown_arena *
        # What this process did with the data area, for Ownership.create_in
        # and Channel.create: {offset: bytes} handed out to it by alloc(),
        # and [(offset, end)] of the control blocks and channels placed.
        self.allocs: dict[int, int] = {}
        self.placed: list[tuple[int, int]] = []

    def contains(self, address: int, nbytes: int) -> bool:
        if self.handle == ffi.NULL:
            return False
        start = int(ffi.cast("uintptr_t", lib.vmown_arena_data(self.handle)))
        return start <= address and address + nbytes <= start + lib.vmown_arena_mapped(self.handle)

    def place(self, address: int, nbytes: int, what: str) -> None:
        """Make the pages of [address, address + nbytes) ``what``'s alone.

        Pages nobody was given are reserved in the arena's allocator (every
        process sees them taken); pages this process got from alloc() are the
        caller's to use once; anything else is refused (ArenaError).
        """
        offset = address - int(ffi.cast("uintptr_t", lib.vmown_arena_data(self.handle)))
        end = offset + nbytes
        for lo, hi in self.placed:
            if lo < end and offset < hi:
                raise error(
                    lib.VMOWN_EARENA_OVERLAP,
                    f"{what} at offset {offset} overlaps a control block or channel at offset {lo}",
                )
        rc = lib.vmown_arena_reserve(self.handle, offset, nbytes)
        if rc == lib.VMOWN_EARENA_OVERLAP:
            given = self.allocs.get(offset)
            if given is None or given < nbytes:
                raise error(rc, f"{what} at offset {offset} ({nbytes} bytes)")
        elif rc < 0:
            raise error(rc, f"{what} at offset {offset} ({nbytes} bytes)")
        self.placed.append((offset, end))

    def view_gone(self, pointer: Any) -> None:
        """Destructor of a view's pointer: holding this bound method is what
        keeps the mapping alive while the view lives."""

    def free(self) -> None:
        if self.handle != ffi.NULL:
            lib.vmown_arena_close(self.handle)
            self.handle = ffi.NULL

    __del__ = free


_live: "weakref.WeakSet[_Mapping]" = weakref.WeakSet()


def _place(address: int, nbytes: int, what: str) -> bool:
    """If [address, address + nbytes) lies in an arena of this process, place it there (see
    _Mapping.place) and return True; False for memory of no arena."""
    for mapping in list(_live):
        if mapping.contains(address, nbytes):
            mapping.place(address, nbytes, what)
            return True
    return False


def _after_fork_in_child() -> None:
    # The child maps what the parent did; it needs its own peer entry before
    # any shrink can overlook it.  Failures are retried by the next call.
    for mapping in list(_live):
        if mapping.handle != ffi.NULL:
            lib.vmown_arena_adopt(mapping.handle)


os.register_at_fork(after_in_child=_after_fork_in_child)


class Arena:
    """A page-aligned shared mapping, by file or anonymous, with atomics on its words.

    Make one with :meth:`create`, :meth:`create_temp`, :meth:`open` or
    :meth:`anonymous`.  ``arena.buffer`` is a writable memoryview of the data
    area (``arena.size`` bytes, a multiple of the page size); offsets given to
    :meth:`alloc` and the ``atomic_*`` methods are offsets into it.  Use it as
    a context manager to close it; a file is removed only by :meth:`unlink`.

    Truncation: another process that can write the file can also truncate it
    under the live mapping.  The pages past the new end are gone, and touching
    them raises SIGBUS, which kills the process.  Every method here checks the
    file's length first and raises :class:`ArenaError` ("truncated under the
    live mapping") instead; ``repr()`` says "unusable"; ``close()`` still
    works.  What no check can cover: your own reads and writes through
    ``buffer`` (or a channel or control block placed in the arena), and a
    truncation between the check and the access.  Give arena files mode 0600
    in a directory only trusted processes can write, or use an anonymous
    arena, if that matters (README, "Hardening").
    """

    __slots__ = ("_mapping", "_path", "_file_id", "_page", "_max", "_views", "_lock", "__weakref__")

    def __init__(self) -> None:
        raise TypeError("make an Arena with Arena.create, create_temp, open or anonymous")

    @classmethod
    def _wrap(cls, handle: Any, path: str | None) -> "Arena":
        self = object.__new__(cls)
        mapping = _Mapping(handle)
        _live.add(mapping)
        self._mapping: _Mapping | None = mapping
        self._path = path
        self._views: list[tuple[int, weakref.ref[Any]]] = []
        self._lock = threading.RLock()
        self._file_id: tuple[int, int] | None = None
        info = self._info()
        self._page: int = info.page_size
        self._max: int = info.max_size
        if path is not None:
            st = os.fstat(lib.vmown_arena_fd(handle))
            self._file_id = (st.st_dev, st.st_ino)
        return self

    # ---- making arenas ----

    @classmethod
    def create(
        cls,
        path: str | os.PathLike[str],
        size: int,
        *,
        max_size: int | None = None,
        mode: int = 0o600,
        address: int | None = None,
        populate: bool = False,
        timeout: float | None = DEFAULT_TIMEOUT,
    ) -> "Arena":
        """Create a new arena file at ``path`` with ``size`` data bytes (rounded up to pages).

        The file is made with O_CREAT|O_EXCL|O_NOFOLLOW|O_CLOEXEC and exactly
        the permissions ``mode`` (0600 by default); an existing path raises
        FileExistsError.  ``max_size`` is how far the arena may grow without
        moving (address range only; default 1 GiB); ``address`` places the
        data area at a fixed address (the header page goes just below it, and
        the whole reserved range must be free: an occupied one raises
        :class:`ArenaError` and is left untouched);
        ``populate`` prefaults the pages; ``timeout`` bounds waits for the
        header lock.
        """
        path = _path(path)
        out = ffi.new("vmown_arena **")
        rc = lib.vmown_arena_create(
            os.fsencode(path),
            _byte_count(size, "size"),
            _byte_count(max_size, "max_size", optional=True),
            _mode(mode),
            _address(address),
            _flags(populate),
            _timeout_ns(timeout),
            out,
        )
        if rc == _EEXIST:
            raise FileExistsError(
                errno.EEXIST,
                "an arena cannot be created over an existing file; Arena.open it, or unlink it first",
                path,
            )
        check(rc, f"creating arena {path!r}")
        return cls._wrap(out[0], path)

    @classmethod
    def create_temp(
        cls,
        size: int,
        *,
        directory: str | os.PathLike[str] | None = None,
        prefix: str = "vmown-",
        suffix: str = ".arena",
        max_size: int | None = None,
        mode: int = 0o600,
        address: int | None = None,
        populate: bool = False,
        timeout: float | None = DEFAULT_TIMEOUT,
    ) -> "Arena":
        """Create an arena file under a fresh random name, as ``tempfile.mkstemp`` does.

        ``directory`` defaults to /dev/shm when it exists (memory, not disk),
        else the temporary directory.  The name is ``arena.path``; remove the
        file with :meth:`unlink` when done.  Other options are :meth:`create`'s.
        """
        directory = _path(directory, "directory") if directory is not None else _default_directory()
        for _ in range(100):
            path = os.path.join(directory, f"{prefix}{secrets.token_hex(8)}{suffix}")
            try:
                return cls.create(
                    path,
                    size,
                    max_size=max_size,
                    mode=mode,
                    address=address,
                    populate=populate,
                    timeout=timeout,
                )
            except FileExistsError:
                continue
        raise FileExistsError(errno.EEXIST, "no unused temporary arena name found", directory)

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        mode: int = 0o600,
        max_size: int | None = None,
        address: int | None = None,
        populate: bool = False,
        timeout: float | None = DEFAULT_TIMEOUT,
    ) -> "Arena":
        """Open the arena file at ``path`` made by another process (or this one).

        Refused with :class:`ArenaError`: a symlink, anything but a regular
        file, a file of another user, a file with permission bits outside
        ``mode`` (pass e.g. ``mode=0o660`` when you expect a shared mode), a
        header that is not an arena of this layout, or a file shorter than its
        header says.  A header still being written is waited for up to
        ``timeout`` seconds.  ``max_size``, ``address``, ``populate``: as
        :meth:`create`.
        """
        path = _path(path)
        out = ffi.new("vmown_arena **")
        rc = lib.vmown_arena_open(
            os.fsencode(path),
            _byte_count(max_size, "max_size", optional=True),
            _mode(mode),
            _address(address),
            _flags(populate),
            _timeout_ns(timeout),
            out,
        )
        check(rc, f"opening arena {path!r}")
        return cls._wrap(out[0], path)

    @classmethod
    def anonymous(
        cls,
        size: int,
        *,
        max_size: int | None = None,
        address: int | None = None,
        populate: bool = False,
        huge_pages: bool = False,
        timeout: float | None = DEFAULT_TIMEOUT,
    ) -> "Arena":
        """An arena in anonymous shared memory, shared with children forked after this.

        ``max_size`` (default ``size``) is how far it can grow.  With
        ``huge_pages`` it uses MAP_HUGETLB: sizes round to the huge page size,
        the header and guard take one huge page each, and the whole range is
        reserved from the huge page pool at once, so a shortage is an
        :class:`ArenaError` here rather than a crash later.  ``address``,
        ``populate``, ``timeout``: as :meth:`create`.
        """
        out = ffi.new("vmown_arena **")
        rc = lib.vmown_arena_create(
            ffi.NULL,
            _byte_count(size, "size"),
            _byte_count(max_size, "max_size", optional=True),
            0o600,
            _address(address, _flags(populate, huge_pages)),
            _flags(populate, huge_pages),
            _timeout_ns(timeout),
            out,
        )
        check(rc, "creating anonymous arena")
        return cls._wrap(out[0], None)

    # ---- the mapping ----

    # Every C call goes through a local reference to the _Mapping: it keeps
    # the memory mapped for the call even if another thread closes the arena.

    def _open(self) -> _Mapping:
        mapping = self._mapping
        if mapping is None:
            raise ValueError("this Arena is closed")
        return mapping

    def _info(self) -> Any:
        mapping = self._open()
        info = ffi.new("vmown_arena_info *")
        check(lib.vmown_arena_info_read(mapping.handle, info), "reading the arena header")
        return info

    def _sync(self) -> None:
        """Map what the header says if another process grew the arena (cheap if not)."""
        mapping = self._open()
        check(lib.vmown_arena_check(mapping.handle), "using the arena")
        mapped = lib.vmown_arena_mapped(mapping.handle)
        if lib.vmown_arena_size(mapping.handle) > mapped and mapped < self._max:
            rc = lib.vmown_arena_refresh(mapping.handle)
            if rc < 0 and rc != lib.VMOWN_EARENA_MAXSIZE:  # what fits is mapped; refresh() says more
                raise error(rc, "following the arena's growth")

    def refresh(self) -> int:
        """Map the size the header holds now (another process may have grown it); returns it.

        Raises :class:`ArenaError` if it exceeds this process's ``max_size``
        (what fits is mapped).
        """
        with self._lock:
            mapping = self._open()
            check(lib.vmown_arena_refresh(mapping.handle), "refresh")
            return lib.vmown_arena_mapped(mapping.handle)

    @property
    def size(self) -> int:
        """Data bytes (a multiple of the page size), following growth by other processes."""
        mapping = self._open()
        self._sync()
        return lib.vmown_arena_mapped(mapping.handle)

    @property
    def max_size(self) -> int:
        """Data bytes this process reserved: how far the arena can grow here without moving."""
        return self._max

    @property
    def page_size(self) -> int:
        """The arena's page size in bytes (the huge page size for a huge-page arena)."""
        return self._page

    @property
    def path(self) -> str | None:
        """The arena's file, or None for an anonymous arena."""
        return self._path

    @property
    def address(self) -> int:
        """Address of the data area in this process."""
        mapping = self._open()
        return int(ffi.cast("uintptr_t", lib.vmown_arena_data(mapping.handle)))

    @property
    def allocated(self) -> int:
        """Data bytes handed out by :meth:`alloc`, by every process."""
        return self._info().allocated

    @property
    def creator(self) -> tuple[int, int]:
        """(pid, start time in clock ticks since boot) of the process that created the arena."""
        info = self._info()
        return info.creator_pid, info.creator_start_time

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._mapping is None

    @property
    def buffer(self) -> memoryview:
        """A writable memoryview of the data area (``size`` bytes).

        The memory stays mapped while the view (or a slice of it) lives, even
        after :meth:`close`.  Take a new view after the arena grew to see the
        new bytes.
        """
        with self._lock:
            self._sync()
            mapping = self._open()
            size = lib.vmown_arena_mapped(mapping.handle)
            pointer = ffi.gc(ffi.cast("char *", lib.vmown_arena_data(mapping.handle)), mapping.view_gone)
            raw = ffi.buffer(pointer, size)
            self._views = [(n, ref) for n, ref in self._views if ref() is not None]
            self._views.append((size, weakref.ref(raw)))
            return memoryview(raw)

    # ---- resizing and allocation ----

    def grow(self, new_size: int) -> None:
        """Grow the data area to ``new_size`` bytes (rounded up to pages), in place.

        Every process sees the new size.  Raises :class:`ArenaError` beyond
        ``max_size``; ValueError if ``new_size`` is smaller than now.
        """
        new_size = _byte_count(new_size, "new_size")
        with self._lock:
            current = self.size
            if new_size < current:
                raise ValueError(
                    f"grow({new_size}) is smaller than the arena ({current} bytes); use shrink()"
                )
            mapping = self._open()
            check(lib.vmown_arena_grow(mapping.handle, new_size), f"grow({new_size})")

    def shrink(self, new_size: int) -> None:
        """Shrink the data area to ``new_size`` bytes (rounded up to pages).

        Refused with :class:`ArenaError` while another live process maps more,
        or below :attr:`allocated`; with BufferError while a memoryview of
        :attr:`buffer` in this process covers the bytes removed.
        """
        new_size = _byte_count(new_size, "new_size")
        rounded = -(-new_size // self._page) * self._page
        with self._lock:
            current = self.size
            if rounded > current:
                raise ValueError(f"shrink({new_size}) is larger than the arena ({current} bytes); use grow()")
            covering = [n for n, ref in self._views if n > rounded and ref() is not None]
            if covering:
                raise BufferError(
                    f"cannot shrink to {rounded} bytes: {len(covering)} live view(s) of arena.buffer cover "
                    "the bytes removed; release them first (view.release() or del)"
                )
            mapping = self._open()
            check(lib.vmown_arena_shrink(mapping.handle, new_size), f"shrink({new_size})")

    def alloc(self, nbytes: int) -> int:
        """Hand out ``nbytes`` (rounded up to whole pages) of the data area; returns their offset.

        Allocations are recorded in the header, so every process sees them and
        no two callers get the same pages.  Raises :class:`ArenaFullError` when
        too few bytes are free (grow() first).
        """
        nbytes = _byte_count(nbytes, "nbytes")
        offset = ffi.new("uint64_t *")
        mapping = self._open()
        check(lib.vmown_arena_alloc(mapping.handle, nbytes, offset), f"alloc({nbytes})")
        mapping.allocs[offset[0]] = -(-nbytes // self._page) * self._page
        return offset[0]

    def _place(self, nbytes: int, what: str) -> int:
        """alloc(nbytes) for a control block or channel: the pages are ``what``'s alone."""
        offset = self.alloc(nbytes)
        mapping = self._open()
        mapping.placed.append((offset, offset + nbytes))
        return offset

    # ---- atomics on data words ----

    def _atomic(self, op: int, offset: int, width: int, value: int = 0, desired: int = 0) -> tuple[int, int]:
        mapping = self._mapping  # held for the call: close() cannot unmap under it
        if mapping is None:
            raise ValueError("this Arena is closed")
        if width != 4 and width != 8:
            raise ValueError(f"width must be 4 or 8 (bytes), not {width!r}")
        if isinstance(offset, bool) or not isinstance(offset, int):
            raise TypeError(f"offset must be an int, not {type(offset).__name__}")
        if offset < 0 or offset > _MASK[8]:
            raise IndexError(f"offset {offset} is outside the arena's data area")
        if offset % width:
            raise ValueError(
                f"offset {offset} is not a multiple of the width {width}; atomic words must be aligned"
            )
        old = ffi.new("uint64_t *")
        rc = _atomic(mapping.handle, op, offset, width, value, desired, old)
        if rc == _RANGE:
            self._sync()  # another process may have grown it
            rc = _atomic(mapping.handle, op, offset, width, value, desired, old)
            if rc == _RANGE:
                size = lib.vmown_arena_mapped(mapping.handle)
                raise IndexError(
                    f"offset {offset} + width {width} is beyond the arena's {size} data bytes; grow() it"
                )
        check(rc, "atomic operation")
        return rc, old[0]

    @staticmethod
    def _value(value: int, width: int, name: str = "value") -> int:
        bits = 8 * width
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be an int, not {type(value).__name__}")
        if not -(1 << (bits - 1)) <= value < 1 << bits:
            raise ValueError(f"{name} {value} does not fit in {width} bytes")
        return value & _MASK[width]

    def atomic_load(self, offset: int, *, width: int = 8) -> int:
        """The word at ``offset`` (4 or 8 bytes, aligned), as an unsigned int."""
        return self._atomic(lib.VMOWN_ARENA_LOAD, offset, width)[1]

    def atomic_store(self, offset: int, value: int, *, width: int = 8) -> None:
        """Store ``value`` (negative values as two's complement) into the word at ``offset``."""
        self._atomic(lib.VMOWN_ARENA_STORE, offset, width, self._value(value, width))

    def atomic_exchange(self, offset: int, value: int, *, width: int = 8) -> int:
        """Store ``value`` and return the word's previous value."""
        return self._atomic(lib.VMOWN_ARENA_EXCHANGE, offset, width, self._value(value, width))[1]

    def atomic_cas(self, offset: int, expected: int, desired: int, *, width: int = 8) -> tuple[bool, int]:
        """Compare-and-swap: if the word equals ``expected``, store ``desired``.

        Returns ``(swapped, previous value)``.
        """
        rc, old = self._atomic(
            lib.VMOWN_ARENA_CAS,
            offset,
            width,
            self._value(expected, width, "expected"),
            self._value(desired, width, "desired"),
        )
        return rc == 1, old

    def atomic_fetch_add(self, offset: int, delta: int, *, width: int = 8) -> int:
        """Add ``delta`` (may be negative; wraps around) and return the previous value."""
        return self._atomic(lib.VMOWN_ARENA_FETCH_ADD, offset, width, self._value(delta, width, "delta"))[1]

    def atomic_test_and_set(self, offset: int, *, width: int = 8) -> bool:
        """Store 1 and return whether the word was already non-zero (a spin-lock's acquire)."""
        return self._atomic(lib.VMOWN_ARENA_TEST_AND_SET, offset, width)[1] != 0

    # ---- lifetime ----

    def close(self) -> None:
        """Drop the arena in this process; the file (if any) stays until :meth:`unlink`.

        The memory is unmapped at once unless views of :attr:`buffer` are
        still alive, then when the last one goes.  Closing twice is harmless.
        """
        with self._lock:
            self._mapping = None  # the last reference, unless views or calls hold it

    def unlink(self) -> None:
        """Remove the arena's file (processes that have it open keep their mapping).

        Refused if the path now names another file than the one this arena
        opened.  Works after :meth:`close` too.
        """
        if self._path is None:
            raise ValueError("an anonymous arena has no file to unlink")
        st = os.stat(self._path, follow_symlinks=False)
        if (st.st_dev, st.st_ino) != self._file_id:
            raise ArenaError(
                f"{self._path!r} no longer names this arena's file (replaced?); it was not removed"
            )
        os.unlink(self._path)

    @staticmethod
    def find_stale(directory: str | os.PathLike[str], *, remove: bool = False) -> list[str]:
        """Arena files in ``directory`` whose creator and every peer are dead.

        Only regular files of the calling user with a vmown arena header count
        (read with pread, never mapped).  With ``remove=True`` they are
        deleted too.  Returns their paths, sorted.
        """
        stale = []
        euid = os.geteuid()
        info = ffi.new("vmown_arena_info *")
        with os.scandir(directory) as entries:
            for entry in entries:
                try:
                    if (
                        not entry.is_file(follow_symlinks=False)
                        or entry.stat(follow_symlinks=False).st_uid != euid
                    ):
                        continue
                except OSError:
                    continue
                if lib.vmown_arena_probe(os.fsencode(entry.path), info) < 0:
                    continue
                if info.creator_alive or info.live_peers:
                    continue
                stale.append(entry.path)
                if remove:
                    try:
                        os.unlink(entry.path)
                    except FileNotFoundError:
                        pass
        return sorted(stale)

    def __enter__(self) -> "Arena":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        if self._mapping is None:
            return f"<vmown.Arena closed path={self._path!r}>"
        where = repr(self._path) if self._path is not None else "anonymous"
        try:
            info = self._info()
        except ArenaError as exc:  # a file truncated under the mapping
            return f"<vmown.Arena {where} unusable: {exc}>"
        return (
            f"<vmown.Arena {where} size={info.mapped} max_size={info.max_size} allocated={info.allocated} "
            f"peers={info.live_peers} state={_STATES.get(info.state, info.state)}>"
        )
