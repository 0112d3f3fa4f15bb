"""The C core without Python: native/tests/*.c, plain and under ThreadSanitizer."""

from __future__ import annotations

import pathlib

import pytest

from vmown._build import NATIVE, compile_program

from .support import run_c

STRESS = NATIVE / "tests" / "stress.c"
HEARTBEAT = NATIVE / "tests" / "heartbeat_test.c"
LIVENESS = NATIVE / "tests" / "liveness_test.c"
GRANT = NATIVE / "tests" / "grant_test.c"
LAZY = NATIVE / "tests" / "lazy_test.c"
WORKERS = NATIVE / "tests" / "workers_test.c"
STOPPED_PEER = NATIVE / "tests" / "stopped_peer_test.c"
BROKEN_END = NATIVE / "tests" / "broken_end_test.c"
# Widen also the window of a lazy callout's return (grants.c, "Lazy
# callouts"); without vmown_debug_set_widen_ns it costs one relaxed load.
WIDE = "-DVMOWN_WIDEN_FAST_PATHS"


@pytest.fixture(scope="module")
def programs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, pathlib.Path]:
    out = tmp_path_factory.mktemp("native")
    return {
        "plain": compile_program([STRESS], out / "stress", ["-O2", "-Werror", WIDE]),
        "tsan": compile_program([STRESS], out / "stress_tsan", ["-O1", "-fsanitize=thread", WIDE]),
        "lazy": compile_program([LAZY], out / "lazy", ["-O2", "-Werror"]),
        "lazy_tsan": compile_program([LAZY], out / "lazy_tsan", ["-O1", "-fsanitize=thread"]),
        "heartbeat": compile_program([HEARTBEAT], out / "heartbeat", ["-O2", "-Werror"]),
        "heartbeat_tsan": compile_program([HEARTBEAT], out / "heartbeat_tsan", ["-O1", "-fsanitize=thread"]),
        "liveness": compile_program([LIVENESS], out / "liveness", ["-O2", "-Werror"]),
        "grant": compile_program([GRANT], out / "grant", ["-O2", "-Werror"]),
        "grant_tsan": compile_program([GRANT], out / "grant_tsan", ["-O1", "-fsanitize=thread"]),
        "workers": compile_program([WORKERS], out / "workers", ["-O2", "-Werror"]),
        "workers_tsan": compile_program([WORKERS], out / "workers_tsan", ["-O1", "-fsanitize=thread"]),
        "stopped_peer": compile_program([STOPPED_PEER], out / "stopped_peer", ["-O2", "-Werror"]),
        "stopped_peer_tsan": compile_program([STOPPED_PEER], out / "stopped_peer_tsan", ["-O1", "-fsanitize=thread"]),
        "broken_end": compile_program([BROKEN_END], out / "broken_end", ["-O2", "-Werror"]),
        "broken_end_tsan": compile_program([BROKEN_END], out / "broken_end_tsan", ["-O1", "-fsanitize=thread"]),
    }


def test_stress_8_threads_100k_cycles(programs: dict[str, pathlib.Path]) -> None:
    figures = _lazy_figures(run_c(programs["plain"], 8, 100_000))
    assert figures["counter"] == 800_000 and figures["timeouts"] > 0


def test_stress_with_race_windows_widened(programs: dict[str, pathlib.Path]) -> None:
    # Timed owns leave the queue inside the widened windows of race O3 (a
    # waiter's timeout -> its CAS, a granter's look -> its CAS).
    figures = _lazy_figures(run_c(programs["plain"], 16, 5_000, 20_000))
    assert figures["counter"] == 80_000 and figures["timeouts"] > 0


def test_thread_sanitizer_8_threads_100k_cycles(programs: dict[str, pathlib.Path]) -> None:
    figures = _lazy_figures(run_c(programs["tsan"], 8, 100_000))
    assert figures["counter"] == 800_000 and figures["timeouts"] > 0


def test_thread_sanitizer_with_race_windows_widened(programs: dict[str, pathlib.Path]) -> None:
    run_c(programs["tsan"], 8, 2_000, 20_000)


@pytest.mark.slow
def test_thread_sanitizer_32_threads_widened(programs: dict[str, pathlib.Path]) -> None:
    run_c(programs["tsan"], 32, 10_000, 5_000)


@pytest.mark.slow
def test_stress_long_widened(programs: dict[str, pathlib.Path]) -> None:
    run_c(programs["plain"], 32, 50_000, 5_000)


def _lazy_figures(out: str) -> dict[str, int]:
    line = out.strip().splitlines()[-1]
    return {k: int(v) for k, v in (f.split("=") for f in line.split()[1:])}


def test_stress_lazy_callouts_revoked_by_a_10khz_heartbeat(programs: dict[str, pathlib.Path]) -> None:
    figures = _lazy_figures(run_c(programs["plain"], 8, 20_000, 0, 10_000))
    assert figures["counter"] == 160_000 and figures["failures"] == 0
    assert figures["lazy"] > 0 and figures["revocations"] > 0


def test_stress_lazy_callouts_with_race_windows_widened(programs: dict[str, pathlib.Path]) -> None:
    # Revokers wait 20 us before and after marking the word: callouts come
    # back inside those windows, and revocations are called off.
    figures = _lazy_figures(run_c(programs["plain"], 8, 3_000, 20_000, 10_000))
    assert figures["counter"] == 24_000 and figures["revocations"] > 0 and figures["called_off"] > 0


def test_thread_sanitizer_lazy_callouts(programs: dict[str, pathlib.Path]) -> None:
    figures = _lazy_figures(run_c(programs["tsan"], 8, 5_000, 0, 10_000))
    assert figures["revocations"] > 0
    run_c(programs["tsan"], 8, 1_000, 20_000, 10_000)


@pytest.mark.slow
def test_stress_lazy_callouts_long(programs: dict[str, pathlib.Path]) -> None:
    run_c(programs["plain"], 32, 20_000, 5_000, 10_000)
    run_c(programs["tsan"], 16, 5_000, 5_000, 10_000)


def test_lazy_callouts_revoked_called_off_and_swept(programs: dict[str, pathlib.Path]) -> None:
    out = run_c(programs["lazy"], 10, expect="all passed")
    assert "called off after R1: the callout took the word back: ok" in out


def test_lazy_callouts_under_thread_sanitizer(programs: dict[str, pathlib.Path]) -> None:
    run_c(programs["lazy_tsan"], 3, expect="all passed")


def test_worker_pool_parks_enters_retires_caps_and_joins(programs: dict[str, pathlib.Path]) -> None:
    out = run_c(programs["workers"], 20, expect="all passed")
    assert "cap: 4 of 10, 2 hits: ok" in out


def test_worker_pool_under_thread_sanitizer(programs: dict[str, pathlib.Path]) -> None:
    run_c(programs["workers_tsan"], 5, expect="all passed")


def test_heartbeat_parks_activates_and_sleeps(programs: dict[str, pathlib.Path]) -> None:
    run_c(programs["heartbeat"], 20, expect="all passed")


def test_heartbeat_under_thread_sanitizer(programs: dict[str, pathlib.Path]) -> None:
    run_c(programs["heartbeat_tsan"], 5, expect="all passed")


def test_soft_grant_stolen_claimed_and_bounded(programs: dict[str, pathlib.Path]) -> None:
    out = run_c(programs["grant"], 10, expect="all passed")
    assert "steal: robbed waiter queued again" in out and "claim: the waiter claimed" in out


def test_soft_grant_under_thread_sanitizer(programs: dict[str, pathlib.Path]) -> None:
    run_c(programs["grant_tsan"], 3, expect="all passed")


def test_dead_means_gone_zombie_or_recycled(programs: dict[str, pathlib.Path]) -> None:
    run_c(programs["liveness"], expect="all passed")


@pytest.mark.parametrize("build", ["stopped_peer", "stopped_peer_tsan"])
def test_a_callout_end_waits_out_a_peer_stopped_in_the_lock(programs: dict[str, pathlib.Path], build: str) -> None:
    """Past the lock's stuck time, the end of a callout waits on instead of aborting the process."""
    run_c(programs[build], expect=": ok")


@pytest.mark.parametrize("build", ["broken_end", "broken_end_tsan"])
def test_a_callout_end_on_a_block_broken_meanwhile_returns_not_owning(
    programs: dict[str, pathlib.Path], build: str
) -> None:
    """A peer breaks the block: a callout's end returns not owning (errno kept, the error told); sleepers wake."""
    run_c(programs[build], expect=": ok")
