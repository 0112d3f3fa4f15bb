"""benchmarks/suite_mixed.py's plan arithmetic: the FIFO bound and the one-VM model of suite aio."""

from __future__ import annotations

import pathlib
import sys

import pytest

BENCHMARKS = pathlib.Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

from suite_mixed import BLOCK_US, SPIN_US, fifo_bound_s, make_plan, model_move_us, model_s, steps  # noqa: E402


def test_steps_split_each_task_at_its_slow_calls() -> None:
    assert steps([[False, True, False, False, True], [False, False], [True]]) == [[1, 2, 0], [2], [0, 0]]


@pytest.mark.parametrize("returns_first", [True, False])
def test_a_small_plan_runs_as_worked_by_hand(returns_first: bool) -> None:
    # Task A: a slow call, then a spin; task B: a spin, then a slow call.
    # Spin 10 us, move 5 us.  A's first step: a move (t=5), out until
    # 20,005.  B's: a move and a spin (t=20), out until 20,020.  At 20,005
    # A's second step: 15 us, to 20,020; then B's second: a move, 20,025.
    # Both orders run it alike: no first step is left when A comes back.
    plan = [[True, False], [False, True]]
    assert model_s(plan, 10.0, 5.0, returns_first) == pytest.approx((BLOCK_US + 25) / 1e6)


def test_returns_first_and_asyncio_order_differ_where_a_first_step_waits() -> None:
    # Spin 1 us, free moves.  A's first step goes out at once (until
    # 20,000); B's first step spins to 25,000, and A is back meanwhile.  At
    # 25,000 A's last step (1,000 spins) and C's first step (out at once)
    # are both ready.  Returns first: A runs to 26,000, C is out until
    # 46,000, then its last step.  asyncio's order: C goes out at 25,000 and
    # is back at 45,000, after A's step.
    plan = [[True] + [False] * 1000, [False] * 25_000, [True]]
    assert model_s(plan, 1.0, 0.0, returns_first=True) == pytest.approx(46_000 / 1e6)
    assert model_s(plan, 1.0, 0.0, returns_first=False) == pytest.approx(45_000 / 1e6)


def test_with_free_calls_and_moves_the_model_is_the_critical_path() -> None:
    plan = make_plan(60, 60)
    critical = max(map(sum, plan)) * BLOCK_US / 1e6
    assert model_s(plan, 0.0, 0.0) == pytest.approx(critical)
    assert model_s(plan, 0.0, 0.0, returns_first=False) == pytest.approx(critical)


def test_in_asyncio_order_the_model_never_beats_the_fifo_bound() -> None:
    plan = make_plan(200, 200)
    spin = float(SPIN_US)
    assert model_s(plan, spin, 0.0, returns_first=False) >= fifo_bound_s(plan) - 1e-9


def test_the_model_grows_with_the_move_and_model_move_us_inverts_it() -> None:
    plan = make_plan(100, 100)
    walls = [model_s(plan, 2.4, move) for move in (0.0, 20.0, 60.0, 120.0)]
    assert walls == sorted(walls) and walls[-1] > walls[0]
    wall = model_s(plan, 2.4, 75.0)
    move = model_move_us(plan, 2.4, wall)
    assert model_s(plan, 2.4, move) == pytest.approx(wall, rel=1e-4)
    # Faster than free moves allow: 0.
    assert model_move_us(plan, 2.4, walls[0] / 2) == 0.0
