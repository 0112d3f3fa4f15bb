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


@pytest.fixture(scope="module")
def programs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, pathlib.Path]:
    out = tmp_path_factory.mktemp("native")
    return {
        "plain": compile_program([STRESS], out / "stress", ["-O2", "-Werror"]),
        "tsan": compile_program([STRESS], out / "stress_tsan", ["-O1", "-fsanitize=thread"]),
        "heartbeat": compile_program([HEARTBEAT], out / "heartbeat", ["-O2", "-Werror"]),
        "heartbeat_tsan": compile_program([HEARTBEAT], out / "heartbeat_tsan", ["-O1", "-fsanitize=thread"]),
        "liveness": compile_program([LIVENESS], out / "liveness", ["-O2", "-Werror"]),
        "grant": compile_program([GRANT], out / "grant", ["-O2", "-Werror"]),
        "grant_tsan": compile_program([GRANT], out / "grant_tsan", ["-O1", "-fsanitize=thread"]),
    }


def test_stress_8_threads_100k_cycles(programs: dict[str, pathlib.Path]) -> None:
    out = run_c(programs["plain"], 8, 100_000)
    assert "counter=800000" in out


def test_stress_with_race_windows_widened(programs: dict[str, pathlib.Path]) -> None:
    out = run_c(programs["plain"], 16, 5_000, 20_000)
    assert "counter=80000" in out


def test_thread_sanitizer_8_threads_100k_cycles(programs: dict[str, pathlib.Path]) -> None:
    out = run_c(programs["tsan"], 8, 100_000)
    assert "counter=800000" in out


def test_thread_sanitizer_with_race_windows_widened(programs: dict[str, pathlib.Path]) -> None:
    run_c(programs["tsan"], 8, 2_000, 20_000)


@pytest.mark.slow
def test_thread_sanitizer_32_threads_widened(programs: dict[str, pathlib.Path]) -> None:
    run_c(programs["tsan"], 32, 10_000, 5_000)


@pytest.mark.slow
def test_stress_long_widened(programs: dict[str, pathlib.Path]) -> None:
    run_c(programs["plain"], 32, 50_000, 5_000)


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
