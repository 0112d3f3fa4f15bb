"""benchmarks/report.py and run.py --report: the tables, the plots, valid PNGs."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import pytest

pytest.importorskip("matplotlib")  # in the test extra (the plots): skipped only outside it

BENCHMARKS = pathlib.Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import report  # noqa: E402
from run import markdown  # noqa: E402


def _assert_valid_png(path: pathlib.Path) -> None:
    import matplotlib.image

    assert path.read_bytes()[:8] == report.PNG_SIGNATURE, path
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 50 and image.shape[1] > 50, (path, image.shape)


def _machine() -> dict:
    return {
        "cpu": "test",
        "cores": 2,
        "kernel": "Linux",
        "python": "CPython",
        "cffi": "x",
        "gcc": "x",
        "commit": "x",
        "date": "x",
        "quick": True,
    }


def test_n_indexed_metrics_of_any_suite_become_series() -> None:
    figures = {
        "vmown_late_ms_1": 1.2,
        "vmown_late_ms_10": 1.5,
        "vmown_late_ms_100": 3.0,
        "trio_late_ms_1": 1.1,
        "trio_late_ms_100": 9.0,
        "asyncio_late_ms_100": 5.0,  # one N only: no line
        "vmown_wall_ms_10": 21.0,
        "vmown_wall_ms_100": 40.0,
        "goal_vmown_late_ms_1": True,
        "samples": 100,
    }
    series = report.n_series(figures)
    assert series == {
        "late_ms": {"vmown": [(1, 1.2), (10, 1.5), (100, 3.0)], "trio": [(1, 1.1), (100, 9.0)]},
        "wall_ms": {"vmown": [(10, 21.0), (100, 40.0)]},
    }


def test_a_report_from_results_has_every_plot_its_figures_allow(tmp_path: pathlib.Path) -> None:
    results = {
        "machine": _machine(),
        "callout": {"direct_ns": 60.0, "callout_ns": 90.0, "trio_to_thread_ns": 99000.0},
        "detect": {"detect_p50_ms": 1.1, "detect_p99_ms": 1.3, "detect_max_ms": 2.0},
        "sched": {"yield_ns": 500.0, "trio_yield_ns": 9000.0, "spawn_join_10k_s": 0.05},
        "heartbeat": {"idle_cpu": 0.0001},  # one bar only: no plot
        "burst": {"vmown_late_ms_1": 1.0, "vmown_late_ms_10": 1.4, "trio_late_ms_1": 1.2, "trio_late_ms_10": 2.0},
        "ipc": {"error": "RuntimeError: no peer"},
    }
    pngs = report.write(results, tmp_path, markdown)
    names = sorted(p.name for p in pngs)
    assert names == ["burst_late_ms_vs_n.png", "callout_cost.png", "detect_time.png", "sched_peers.png"]
    for png in pngs:
        _assert_valid_png(png)
    text = (tmp_path / "README.md").read_text()
    burst = text.index("## burst")
    assert text.index("![burst_late_ms_vs_n](burst_late_ms_vs_n.png)") > burst
    assert "| `vmown_late_ms_10` | 1.40 |" in text
    assert "Failed: `RuntimeError: no peer`" in text
    assert json.loads((tmp_path / "results.json").read_text()) == results


def test_detection_samples_are_binned_and_drawn_as_a_histogram(tmp_path: pathlib.Path) -> None:
    import suite_detect

    bins = suite_detect.histogram([0.005, 0.011, 0.015, 0.016, 0.041, 0.95, 1.0, 30.0])
    assert bins == {
        "detect_bin_10us": 1 + 1,  # the first bin holds what is below it too
        "detect_bin_14us": 2,
        "detect_bin_20us": 0,  # empty bins between used ones are kept: the plot knows every edge
        "detect_bin_28us": 0,
        "detect_bin_40us": 1,
        **{f"detect_bin_{lo}us": 0 for lo in (57, 80, 113, 160, 226, 320, 453, 640)},
        "detect_bin_905us": 2,
        **{f"detect_bin_{lo}us": 0 for lo in (1280, 1810, 2560, 3620, 5120, 7241, 10240, 14482)},
        "detect_bin_20480us": 1,  # the last bin holds what is above it
    }
    assert report.n_series(bins) == {}  # bins are not an N series
    assert report.histogram_bins(bins, "detect_bin_")[:3] == [(10, 2), (14, 2), (20, 0)]
    results = {"machine": _machine(), "detect": {"detect_p50_ms": 0.041, "detect_p99_ms": 30.0, **bins}}
    pngs = report.write(results, tmp_path, markdown)
    assert [p.name for p in pngs] == ["detect_time.png"]
    _assert_valid_png(pngs[0])


def test_run_report_on_quick_writes_valid_pngs(tmp_path: pathlib.Path) -> None:
    out = tmp_path / "report"
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / "run.py"), "ownership", "detect", "--quick", "--report", str(out)],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr
    assert "[1/2] ownership ..." in proc.stderr
    text = (out / "README.md").read_text()
    pngs = sorted(out.glob("*.png"))
    assert {p.name for p in pngs} == {"ownership_handoff.png", "detect_time.png"}
    for png in pngs:
        _assert_valid_png(png)
        assert f"({png.name})" in text
    assert set(json.loads((out / "results.json").read_text())) == {"machine", "ownership", "detect"}
