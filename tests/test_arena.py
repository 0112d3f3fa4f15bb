"""vmown._arena: shared-memory arenas -- fork and path sharing, bad files, atomics, growth."""

from __future__ import annotations

import mmap
import os
import pickle
import stat
import struct
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from vmown._native import ffi

from vmown._arena import _HEADER_OFFSETS, Arena
from vmown._errors import ArenaError, ArenaFullError, VmownError

from .support import fork, reap

PAGE = mmap.PAGESIZE
HEADER_BYTES = _HEADER_OFFSETS["peers"] + 128 * 16

# ---- helpers ----


def run_python(code: str, timeout: float = 60.0) -> str:
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def arena_file(directory: Path, size: int = 4 * PAGE) -> Path:
    """A closed, valid arena file."""
    with Arena.create(directory / "a.arena", size, max_size=16 * PAGE) as arena:
        return Path(arena.path or "")


def poke(path: Path, field: str, fmt: str, value: int) -> None:
    with open(path, "r+b") as f:
        f.seek(_HEADER_OFFSETS[field])
        f.write(struct.pack(fmt, value))


def start_time(pid: int) -> int:
    text = Path(f"/proc/{pid}/stat").read_text()
    return int(text[text.rindex(")") + 2 :].split()[19])


# ---- parent and forked child through an anonymous arena ----


def test_fork_child_adds_1000_to_an_int() -> None:
    arena = Arena.anonymous(PAGE)
    struct.pack_into("q", arena.buffer, 0, 234)

    def child() -> None:
        (n,) = struct.unpack_from("q", arena.buffer, 0)
        struct.pack_into("q", arena.buffer, 0, n + 1000)

    reap(fork(child))
    assert struct.unpack_from("q", arena.buffer, 0) == (1234,)


def test_fork_child_adds_100_to_each_of_ten_bytes() -> None:
    arena = Arena.anonymous(PAGE)
    arena.buffer[0:10] = bytes(range(10))

    def child() -> None:
        view = arena.buffer
        for i in range(10):
            view[i] += 100

    reap(fork(child))
    assert bytes(arena.buffer[0:10]) == bytes(range(100, 110))


def test_fork_child_sends_a_pickled_object() -> None:
    sent = {"name": "vmown", "nested": [1, 2.5, ("a", b"b"), {"deep": [None, True, list(range(50))]}]}
    arena = Arena.anonymous(4 * PAGE)

    def child() -> None:
        data = pickle.dumps(sent)
        arena.buffer[8 : 8 + len(data)] = data
        arena.atomic_store(0, len(data))  # the length last: it publishes the bytes

    reap(fork(child))
    length = arena.atomic_load(0)
    assert 0 < length < 4 * PAGE - 8
    assert pickle.loads(arena.buffer[8 : 8 + length]) == sent


# ---- a second process opening the arena by path ----


def test_second_process_sees_writes_and_growth(tmp_path: Path) -> None:
    arena = Arena.create_temp(PAGE, directory=tmp_path)
    arena.buffer[0:11] = b"from parent"
    arena.atomic_store(64, 42)
    out = run_python(
        f"""
        from vmown._arena import Arena
        arena = Arena.open({arena.path!r})
        assert bytes(arena.buffer[0:11]) == b"from parent"
        assert arena.atomic_load(64) == 42
        arena.grow({4 * PAGE})
        arena.buffer[{3 * PAGE}:{3 * PAGE + 10}] = b"from child"
        arena.atomic_store({3 * PAGE + 64}, 99)
        arena.atomic_store(64, 43)
        print("ok", arena.size)
        """
    )
    assert out.split() == ["ok", str(4 * PAGE)]
    # An atomic beyond what this process mapped follows the growth on its own.
    assert arena.atomic_load(3 * PAGE + 64) == 99
    assert arena.size == 4 * PAGE
    assert bytes(arena.buffer[3 * PAGE : 3 * PAGE + 10]) == b"from child"
    assert arena.atomic_load(64) == 43
    assert os.stat(arena.path or "").st_size == PAGE + 4 * PAGE
    arena.unlink()


def test_growth_by_the_parent_is_seen_by_a_forked_child(tmp_path: Path) -> None:
    arena = Arena.create(tmp_path / "g.arena", PAGE, max_size=8 * PAGE)
    read, write = os.pipe()

    def child() -> None:
        os.close(write)
        assert os.read(read, 1) == b"g"
        assert arena.size == 8 * PAGE
        assert arena.atomic_load(7 * PAGE) == 7

    pid = fork(child)
    os.close(read)
    try:
        arena.grow(8 * PAGE)
        arena.atomic_store(7 * PAGE, 7)
        os.write(write, b"g")
    finally:
        os.close(write)  # the child's read ends either way
        reap(pid)


# ---- bad files ----


def test_open_refuses_a_symlink(tmp_path: Path) -> None:
    link = tmp_path / "link"
    link.symlink_to(arena_file(tmp_path))
    with pytest.raises(ArenaError, match="symbolic link"):
        Arena.open(link)


def test_open_refuses_a_file_of_another_user(tmp_path: Path) -> None:
    path = arena_file(tmp_path)
    os.chown(path, 65534, -1)
    with pytest.raises(ArenaError, match="another user"):
        Arena.open(path)


def test_open_refuses_shared_mode_unless_expected(tmp_path: Path) -> None:
    path = arena_file(tmp_path)
    os.chmod(path, 0o666)
    with pytest.raises(ArenaError, match="mode=0o660"):
        Arena.open(path)
    with pytest.raises(ArenaError, match="permissions"):
        Arena.open(path, mode=0o660)
    with Arena.open(path, mode=0o666) as arena:
        assert arena.size == 4 * PAGE


def test_create_sets_exactly_the_mode_asked(tmp_path: Path) -> None:
    old_umask = os.umask(0o077)
    try:
        shared = Arena.create(tmp_path / "shared", PAGE, mode=0o640)
        private = Arena.create(tmp_path / "private", PAGE)
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(os.stat(tmp_path / "shared").st_mode) == 0o640
    assert stat.S_IMODE(os.stat(tmp_path / "private").st_mode) == 0o600
    assert os.stat(tmp_path / "private").st_uid == os.geteuid()
    shared.close(), private.close()


def test_create_refuses_an_existing_path(tmp_path: Path) -> None:
    existing = tmp_path / "existing"
    existing.write_bytes(b"keep me")
    with pytest.raises(FileExistsError, match="unlink it first"):
        Arena.create(existing, PAGE)
    assert existing.read_bytes() == b"keep me"
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "nowhere")
    with pytest.raises(FileExistsError):
        Arena.create(dangling, PAGE)  # O_EXCL|O_NOFOLLOW: never created through a link
    assert not (tmp_path / "nowhere").exists()


def test_open_refuses_what_is_not_a_regular_file(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo, 0o600)
    for path in (tmp_path, fifo):
        with pytest.raises(ArenaError, match="not a regular file"):
            Arena.open(path, timeout=0)


@pytest.mark.parametrize(
    "field, fmt, value, match",
    [
        ("magic", "Q", 0x0123456789ABCDEF, "not a vmown arena"),
        ("magic", ">Q", struct.unpack("<Q", struct.pack(">Q", 1))[0], "not a vmown arena"),
        ("version", "I", 99, "another layout version"),
        ("header_size", "I", 12, "sizes disagree"),
        ("npeers", "I", 3, "sizes disagree"),
        ("page_size", "Q", 2 * PAGE, "sizes disagree"),
        ("size", "Q", PAGE + 1, "sizes disagree"),
        ("size", "Q", 0, "sizes disagree"),
        ("allocated", "Q", 8 * PAGE, "sizes disagree"),
        ("state", "I", 7, "impossible value"),
    ],
)
def test_open_refuses_a_bad_header(tmp_path: Path, field: str, fmt: str, value: int, match: str) -> None:
    path = arena_file(tmp_path)
    poke(path, field, fmt, value)
    with pytest.raises(ArenaError, match=match):
        Arena.open(path, timeout=0)


def test_a_header_that_never_becomes_ready_is_waited_for_boundedly(tmp_path: Path) -> None:
    path = arena_file(tmp_path)
    poke(path, "state", "I", 1)  # INITIALIZING: the creator died half-way
    started = time.monotonic()
    with pytest.raises(ArenaError, match="never became ready"):
        Arena.open(path, timeout=0.2)
    assert time.monotonic() - started < 30
    zeros = tmp_path / "zeros"  # created, sized, but no header written yet
    zeros.write_bytes(bytes(2 * PAGE))
    os.chmod(zeros, 0o600)
    with pytest.raises(ArenaError, match="never became ready"):
        Arena.open(zeros, timeout=0.05)


def test_a_header_completed_during_the_wait_is_accepted(tmp_path: Path) -> None:
    path = arena_file(tmp_path)
    poke(path, "state", "I", 1)

    def child() -> None:
        time.sleep(0.2)
        poke(path, "state", "I", 2)

    pid = fork(child)
    with Arena.open(path, timeout=20) as arena:
        assert arena.size == 4 * PAGE
    reap(pid)


def test_short_and_truncated_files_give_errors_not_sigbus(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    short = tmp_path / "short"
    short.write_bytes(arena_file(tmp_path).read_bytes()[:100])
    garbage = tmp_path / "garbage"
    garbage.write_bytes(b"#!/bin/sh\necho not an arena\n")
    for path in (empty, short, garbage):
        os.chmod(path, 0o600)
    for path in (empty, short):
        with pytest.raises(ArenaError, match="shorter"):
            Arena.open(path, timeout=0.05)
    with pytest.raises(ArenaError, match="not a vmown arena"):
        Arena.open(garbage, timeout=5)  # known garbage: no waiting
    (tmp_path / "sub").mkdir()
    truncated = arena_file(tmp_path / "sub")
    os.truncate(truncated, PAGE + 2 * PAGE)  # the header says 4 data pages
    with pytest.raises(ArenaError, match="shorter than its header"):
        Arena.open(truncated, timeout=0)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A valid arena file (a path: a short repr in hypothesis's reports)."""
    directory = tmp_path_factory.mktemp("pristine")
    with Arena.create(directory / "p", 2 * PAGE) as arena:
        arena.buffer[0:4] = b"data"
        arena.alloc(1)
    return directory / "p"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    edits=st.lists(
        st.tuples(st.integers(0, HEADER_BYTES - 1), st.binary(min_size=1, max_size=16)), max_size=6
    ),
    words=st.lists(
        st.tuples(st.sampled_from(sorted(_HEADER_OFFSETS)), st.integers(0, 2**64 - 1)), max_size=3
    ),
    length=st.one_of(
        st.none(), st.sampled_from([0, 100, PAGE, 2 * PAGE, 3 * PAGE - 1, 4 * PAGE]), st.integers(0, 6 * PAGE)
    ),
)
def test_fuzzed_headers_open_cleanly_or_fail_clearly(
    tmp_path: Path,
    pristine: Path,
    edits: list[tuple[int, bytes]],
    words: list[tuple[str, int]],
    length: int | None,
) -> None:
    data = bytearray(pristine.read_bytes())
    for offset, chunk in edits:
        data[offset : offset + len(chunk)] = chunk
    for field, value in words:
        struct.pack_into("Q", data, _HEADER_OFFSETS[field], value)
    path = tmp_path / "fuzzed"
    path.write_bytes(bytes(data))
    os.chmod(path, 0o600)
    if length is not None:
        os.truncate(path, length)
    try:
        arena = Arena.open(path, timeout=0.01)
    except VmownError:
        return  # a clear error: fine
    with arena:  # a valid arena: it must also behave
        assert arena.size >= PAGE and os.stat(path).st_size >= PAGE + arena.size
        view = arena.buffer
        view[0], view[-1] = view[-1], view[0]  # the first and last data bytes exist
        del view
        arena.atomic_fetch_add(0, 1)
        try:
            arena.alloc(1)
        except VmownError:
            pass


# ---- fixed addresses ----


def test_fixed_address_refuses_an_occupied_range_and_leaves_it_intact(tmp_path: Path) -> None:
    occupant = mmap.mmap(-1, 4 * PAGE)
    pattern = bytes(range(256)) * (4 * PAGE // 256)
    occupant[:] = pattern
    pinned = ffi.from_buffer(occupant)
    address = int(ffi.cast("uintptr_t", pinned))
    del pinned
    with pytest.raises(ArenaError, match="already in use"):
        Arena.anonymous(PAGE, address=address + PAGE)  # its header page would be the occupant's first
    with pytest.raises(ArenaError, match="already in use"):
        Arena.create(tmp_path / "fixed", PAGE, max_size=PAGE, address=address + 2 * PAGE)
    assert not (tmp_path / "fixed").exists()  # the failed create left nothing behind
    assert occupant[:] == pattern
    occupant[0] = 7  # still mapped, still writable
    occupant.close()


def test_fixed_address_is_honoured() -> None:
    probe = Arena.anonymous(4 * PAGE)
    address = probe.address
    probe.close()  # no views: unmapped at once
    arena = Arena.anonymous(4 * PAGE, address=address)
    assert arena.address == address
    arena.atomic_store(0, 5)
    arena.close()


def test_fixed_address_must_be_page_aligned() -> None:
    with pytest.raises(ValueError, match="multiple of the page size"):
        Arena.anonymous(PAGE, address=0x7F0000000000 + 8)


# ---- atomics ----


@pytest.mark.parametrize("width", [4, 8])
def test_atomic_operations(width: int) -> None:
    arena = Arena.anonymous(PAGE)
    top = (1 << (8 * width)) - 1
    arena.atomic_store(8, 5, width=width)
    assert arena.atomic_load(8, width=width) == 5
    assert arena.atomic_exchange(8, 6, width=width) == 5
    assert arena.atomic_cas(8, 5, 9, width=width) == (False, 6)
    assert arena.atomic_cas(8, 6, 9, width=width) == (True, 6)
    assert arena.atomic_fetch_add(8, -10, width=width) == 9
    assert arena.atomic_load(8, width=width) == top  # wrapped: -1
    assert arena.atomic_fetch_add(8, 1, width=width) == top
    assert arena.atomic_load(8, width=width) == 0
    assert arena.atomic_test_and_set(16, width=width) is False
    assert arena.atomic_test_and_set(16, width=width) is True
    arena.atomic_store(PAGE - width, top, width=width)  # the last word
    assert arena.buffer[PAGE - width :] == b"\xff" * width


def test_atomic_bounds_and_alignment_errors() -> None:
    arena = Arena.anonymous(PAGE)
    with pytest.raises(IndexError, match="beyond the arena's 4096 data bytes|beyond the arena"):
        arena.atomic_load(PAGE)
    with pytest.raises(IndexError):
        arena.atomic_load(-8)
    with pytest.raises(ValueError, match="multiple of the width 8"):
        arena.atomic_load(PAGE - 4)
    with pytest.raises(ValueError, match="multiple of the width 4"):
        arena.atomic_store(2, 1, width=4)
    with pytest.raises(ValueError, match="width must be 4 or 8"):
        arena.atomic_load(0, width=2)
    with pytest.raises(ValueError, match="does not fit in 4 bytes"):
        arena.atomic_store(0, 1 << 32, width=4)
    with pytest.raises(TypeError):
        arena.atomic_load(1.5)  # type: ignore[arg-type]
    arena.close()
    with pytest.raises(ValueError, match="closed"):
        arena.atomic_load(0)


def test_multi_process_fetch_add_counter_is_exact() -> None:
    arena = Arena.anonymous(PAGE)
    children, rounds = 3, 3000

    def work() -> None:
        for _ in range(rounds):
            arena.atomic_fetch_add(0, 1)
            arena.atomic_fetch_add(64, 1, width=4)

    pids = [fork(work) for _ in range(children)]
    work()
    for pid in pids:
        reap(pid)
    assert arena.atomic_load(0) == (children + 1) * rounds
    assert arena.atomic_load(64, width=4) == (children + 1) * rounds


# ---- growth, shrinking, allocation ----


def test_grow_and_shrink_in_place(tmp_path: Path) -> None:
    arena = Arena.create(tmp_path / "r", 2 * PAGE, max_size=8 * PAGE)
    address = arena.address
    arena.buffer[0:5] = b"stays"
    arena.grow(5 * PAGE + 1)  # rounded up to pages
    assert arena.size == 6 * PAGE and arena.address == address
    assert os.stat(tmp_path / "r").st_size == PAGE + 6 * PAGE
    arena.buffer[6 * PAGE - 1] = 1
    with pytest.raises(ArenaError, match="max_size"):
        arena.grow(9 * PAGE)
    with pytest.raises(ValueError, match="use shrink"):
        arena.grow(PAGE)
    arena.shrink(PAGE)
    assert arena.size == PAGE and os.stat(tmp_path / "r").st_size == 2 * PAGE
    assert bytes(arena.buffer[0:5]) == b"stays"
    with pytest.raises(IndexError):
        arena.atomic_load(PAGE)
    arena.grow(6 * PAGE)
    assert arena.buffer[6 * PAGE - 1] == 0  # regrown pages are zero


def test_anonymous_arena_grows_within_max_size_and_regrows_zeroed() -> None:
    arena = Arena.anonymous(PAGE, max_size=4 * PAGE)
    with pytest.raises(IndexError):
        arena.atomic_load(PAGE)
    arena.grow(4 * PAGE)
    arena.buffer[3 * PAGE] = 9
    arena.shrink(2 * PAGE)
    arena.grow(4 * PAGE)
    assert arena.buffer[3 * PAGE] == 0
    with pytest.raises(ArenaError, match="max_size"):
        Arena.anonymous(PAGE).grow(2 * PAGE)


def test_shrink_refused_while_a_view_covers_the_tail() -> None:
    arena = Arena.anonymous(4 * PAGE)
    view = arena.buffer[3 * PAGE :]
    with pytest.raises(BufferError, match="release them first"):
        arena.shrink(PAGE)
    view.release()
    arena.shrink(PAGE)
    assert arena.size == PAGE


@pytest.mark.parametrize("kind", ["file", "anonymous"])
def test_shrink_refused_while_a_child_maps_more(tmp_path: Path, kind: str) -> None:
    arena = Arena.create(tmp_path / "s", 8 * PAGE) if kind == "file" else Arena.anonymous(8 * PAGE)
    to_child, from_parent = os.pipe()
    from_child, to_parent = os.pipe()

    def child() -> None:
        os.close(from_parent), os.close(from_child)
        os.write(to_parent, b"r")  # mapped (it inherited 8 pages) and registered at fork
        os.read(to_child, 1)  # then leaves without closing: its entry goes stale

    pid = fork(child)
    os.close(to_child), os.close(to_parent)
    try:
        assert os.read(from_child, 1) == b"r"
        with pytest.raises(ArenaError, match="live process still maps more"):
            arena.shrink(2 * PAGE)
        assert arena.size == 8 * PAGE
    finally:
        os.close(from_parent)  # the child's read ends either way
        os.close(from_child)
        reap(pid)
    arena.shrink(2 * PAGE)  # the dead child's entry is ignored
    assert arena.size == 2 * PAGE
    if kind == "file":
        assert os.stat(tmp_path / "s").st_size == 3 * PAGE


def test_alloc_hands_out_pages_seen_by_every_process() -> None:
    arena = Arena.anonymous(4 * PAGE)
    assert arena.alloc(1) == 0
    assert arena.alloc(PAGE + 1) == PAGE

    def child() -> None:
        assert arena.alloc(PAGE) == 3 * PAGE

    reap(fork(child))
    assert arena.allocated == 4 * PAGE
    with pytest.raises(ArenaFullError, match="grow"):
        arena.alloc(1)
    with pytest.raises(ArenaError, match="handed out by alloc"):
        arena.shrink(PAGE)
    with pytest.raises(ValueError):
        arena.alloc(0)


# ---- the header lock ----


def test_a_lock_held_by_a_live_process_times_out_and_a_dead_holder_is_taken_over(tmp_path: Path) -> None:
    path = arena_file(tmp_path)
    arena = Arena.open(path, timeout=0.2)
    me = (start_time(os.getpid()) & 0xFFFFFFFF) << 32 | os.getpid()
    poke(path, "lock", "Q", me)  # as if another thread of this process held it for ever
    started = time.monotonic()
    with pytest.raises(ArenaError, match="header lock"):
        arena.grow(8 * PAGE)
    assert time.monotonic() - started < 30
    pid = fork(lambda: None)
    reap(pid)
    poke(path, "lock", "Q", pid)  # a holder that died inside an update
    arena.grow(8 * PAGE)
    assert arena.size == 8 * PAGE
    arena.close()


# ---- lifetime, cleanup ----


def test_a_view_outlives_close() -> None:
    arena = Arena.anonymous(PAGE)
    view = arena.buffer
    with arena:
        pass
    assert arena.closed
    view[0] = 42  # still mapped: the view holds the mapping
    assert view[0] == 42
    with pytest.raises(ValueError, match="closed"):
        _ = arena.size


def test_creator_is_recorded() -> None:
    arena = Arena.anonymous(PAGE)
    assert arena.creator == (os.getpid(), start_time(os.getpid()))


def test_create_temp_and_unlink(tmp_path: Path) -> None:
    arena = Arena.create_temp(PAGE, directory=tmp_path, prefix="t-", suffix=".x")
    path = Path(arena.path or "")
    assert path.parent == tmp_path and path.name.startswith("t-") and path.name.endswith(".x")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    arena.unlink()
    assert not path.exists()
    with pytest.raises(FileNotFoundError):
        arena.unlink()
    default = Arena.create_temp(PAGE)
    expected = "/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir()
    assert os.path.dirname(default.path or "") == expected
    default.close()
    default.unlink()
    with pytest.raises(ValueError, match="anonymous"):
        Arena.anonymous(PAGE).unlink()


def test_unlink_refuses_a_replaced_file(tmp_path: Path) -> None:
    arena = Arena.create(tmp_path / "u", PAGE)
    os.rename(tmp_path / "u", tmp_path / "moved")
    (tmp_path / "u").write_bytes(b"someone else's")
    with pytest.raises(ArenaError, match="no longer names"):
        arena.unlink()
    assert (tmp_path / "u").read_bytes() == b"someone else's"


def test_find_stale_lists_arenas_of_dead_creators(tmp_path: Path) -> None:
    mine = Arena.create(tmp_path / "live.arena", PAGE)
    (tmp_path / "other.txt").write_bytes(b"not an arena")
    run_python(
        f"""
        from vmown._arena import Arena
        Arena.create({str(tmp_path / "dead.arena")!r}, 4096).close()
        Arena.create({str(tmp_path / "kept.arena")!r}, 4096).close()
        """
    )
    kept = Arena.open(tmp_path / "kept.arena")  # its creator is dead, but a live peer maps it
    assert Arena.find_stale(tmp_path) == [str(tmp_path / "dead.arena")]
    assert (tmp_path / "dead.arena").exists()
    assert Arena.find_stale(tmp_path, remove=True) == [str(tmp_path / "dead.arena")]
    assert not (tmp_path / "dead.arena").exists()
    kept.close()
    assert Arena.find_stale(tmp_path) == [str(tmp_path / "kept.arena")]
    assert (tmp_path / "other.txt").exists() and (tmp_path / "live.arena").exists()
    mine.close()


# ---- options ----


def test_populate(tmp_path: Path) -> None:
    with Arena.anonymous(4 * PAGE, populate=True, max_size=8 * PAGE) as arena:
        arena.grow(8 * PAGE)
        assert arena.atomic_load(7 * PAGE) == 0
    with Arena.create(tmp_path / "p", 4 * PAGE, populate=True) as arena:
        assert arena.atomic_load(3 * PAGE) == 0


def test_huge_pages_work_or_fail_clearly() -> None:
    try:
        arena = Arena.anonymous(1, huge_pages=True)
    except ArenaError as exc:
        assert "huge pages" in str(exc) and "nr_hugepages" in str(exc)
        return
    with arena:
        assert arena.page_size > PAGE and arena.size == arena.page_size
        arena.atomic_store(0, 1)


def test_bad_arguments_name_the_fix(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="size must be a positive int"):
        Arena.anonymous(0)
    with pytest.raises(ValueError, match="mode must be"):
        Arena.create(tmp_path / "m", PAGE, mode=0o4777)
    with pytest.raises(ValueError, match="timeout"):
        Arena.open(tmp_path / "m", timeout=-1)
    with pytest.raises(TypeError, match="Arena.create"):
        Arena()
