# The benchmark report:  python benchmarks/run.py [SUITE ...] --report DIR
#
# Turns one result object of the harness (benchmarks/run.py: {"machine": ...,
# "SUITE": {"METRIC": number}}) into a directory a reader can open:
#
#   DIR/results.json   the figures, as --json writes them
#   DIR/README.md      the Markdown tables, each suite followed by its plots
#   DIR/*.png          the plots
#
# It also renders a result file written earlier:
#     python benchmarks/report.py RESULTS.json DIR
#
# The suites return scalars only (percentiles, not samples), so every plot is
# drawn from named metrics.  Three kinds:
#
#   fixed plots   one per question the README asks (cost per call against the
#                 peers, detection time, IPC round trips, scheduler figures
#                 against trio and asyncio, heartbeat CPU against its goals).
#                 Each takes the metrics of its list that the run has and is
#                 skipped when it has fewer than two: --quick and a missing
#                 peer package drop metrics, never the report.
#   histograms    a suite that reports its samples as bin counts
#                 (PREFIX<LO>us: the samples in [LO, next LO) us, every bin
#                 from the first non-empty one to the last, so the edges are
#                 known; the last is drawn as wide, in ratio, as the one
#                 before) gets a real histogram in place of its fixed plot,
#                 its percentiles drawn as lines across it: the `detect`
#                 suite's detect_bin_<LO>us give detect_time.png.  Results
#                 without bins keep the percentile bars.
#   N series      any suite's metrics named PREFIX_MEASURE_N (a trailing
#                 integer N, at least two values of N for the same name) are
#                 drawn as MEASURE against N, one line per PREFIX: e.g. the
#                 `burst` suite's vmown_late_ms_100 and trio_late_ms_100 give
#                 the plot "burst: late_ms against N".  A new suite that names
#                 its metrics that way gets its plot without a line here.
#
# matplotlib is the `plot` extra (pip install -e '.[plot]'); it is imported
# only when a report is asked for, with the Agg backend (no display).

from __future__ import annotations

import json
import pathlib
import re
import sys
from collections import defaultdict
from typing import Any, Callable

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# (suite, file stem, title, x label, log scale, [(metric, label), ...])
_BARS: list[tuple[str, str, str, str, bool, list[tuple[str, str]]]] = [
    (
        "callout",
        "callout_cost",
        "Cost of one call of a no-op C function (log scale)",
        "ns per call",
        True,
        [
            ("direct_ns", "direct (cffi)"),
            ("wrapped_ns", "vmown generated wrapper"),
            ("callout_ns", "vmown.callout"),
            ("threaded_ns", "vmown.threaded"),
            ("executor_ns", "ThreadPoolExecutor"),
            ("asyncio_to_thread_ns", "asyncio.to_thread"),
            ("anyio_to_thread_ns", "anyio.to_thread"),
            ("trio_to_thread_ns", "trio.to_thread"),
        ],
    ),
    (
        "ownership",
        "ownership_handoff",
        "Ownership: hand-off against a bare semaphore wake",
        "us",
        False,
        [
            ("handoff_p50_us", "hand-off p50"),
            ("sem_wake_p50_us", "semaphore wake p50"),
            ("handoff_p99_us", "hand-off p99"),
            ("sem_wake_p99_us", "semaphore wake p99"),
        ],
    ),
    (
        "detect",
        "detect_time",
        "Time for the heartbeat to hand on a blocked VM",
        "ms",
        False,
        [("detect_p50_ms", "p50"), ("detect_p99_ms", "p99"), ("detect_max_ms", "max")],
    ),
    (
        "return",
        "return_time",
        "Time for a callout to get the VM back from a busy owner",
        "ms",
        False,
        [
            ("return_p50_ms", "vmown.threaded p50"),
            ("return_p99_ms", "vmown.threaded p99"),
            ("wrapped_return_p50_ms", "generated wrapper p50"),
            ("wrapped_return_p99_ms", "generated wrapper p99"),
        ],
    ),
    (
        "mixed",
        "mixed_wall",
        "Mixed workload: wall time (log scale)",
        "s",
        True,
        [
            ("oracle_s", "oracle (critical path)"),
            ("vmown_s", "vmown"),
            ("vmown_callout_s", "vmown.callout"),
            ("threads_s", "plain threads"),
            ("asyncio_thread_s", "asyncio + to_thread"),
            ("trio_thread_s", "trio + to_thread"),
            ("trio_inline_s", "trio, calls inline"),
        ],
    ),
    (
        "ipc",
        "ipc_rtt",
        "IPC round trip between two processes (log scale)",
        "us",
        True,
        [
            ("c_channel_rtt_us", "vmown channel (C)"),
            ("channel_rtt_us", "vmown channel"),
            ("channel_rtt_p99_us", "vmown channel p99"),
            ("channel_nospin_rtt_us", "vmown channel, no spin"),
            ("ownership_pingpong_us", "ownership ping-pong"),
            ("posix_ipc_sem_rtt_us", "posix_ipc semaphores"),
            ("pipe_rtt_us", "pipe"),
            ("pipe_rtt_p99_us", "pipe p99"),
            ("socketpair_rtt_us", "socketpair"),
            ("faster_fifo_rtt_us", "faster_fifo"),
            ("mp_queue_rtt_us", "multiprocessing.Queue"),
        ],
    ),
    (
        "heartbeat",
        "heartbeat_cpu",
        "Heartbeat CPU (fraction of one core; goals 0.002 idle, 0.03 busy)",
        "fraction of a core",
        False,
        [
            ("idle_cpu", "idle"),
            ("idle_bare_ticker_cpu", "idle, bare 1 kHz ticker"),
            ("watchdog_idle_cpu", "idle, + watchdog (0.1 s)"),
            ("busy_cpu", "busy"),
            ("busy_bare_ticker_cpu", "busy, bare 1 kHz ticker"),
            ("watchdog_busy_cpu", "busy, + watchdog (0.1 s)"),
        ],
    ),
]

# (suite, file stem, title, y label, [(label, {contender: metric})])
_GROUPS: list[tuple[str, str, str, str, list[tuple[str, dict[str, str]]]]] = [
    (
        "sched",
        "sched_peers",
        "Scheduler operations against trio and asyncio (log scale)",
        "ns per operation (spawn + join: per process)",
        [
            ("yield", {"vmown": "yield_ns", "trio": "trio_yield_ns", "asyncio": "asyncio_yield_ns"}),
            (
                "spawn + join",
                {
                    "vmown": "spawn_join_10k_s",
                    "trio": "trio_spawn_join_10k_s",
                    "asyncio": "asyncio_spawn_join_10k_s",
                },
            ),
            (
                "queue message",
                {"vmown": "queue_msg_ns", "trio": "trio_queue_msg_ns", "asyncio": "asyncio_queue_msg_ns"},
            ),
        ],
    ),
]

# (suite, file stem of the fixed plot it replaces, title, bin metric prefix,
#  [(percentile metric in ms, label), ...])
_HISTOGRAMS: list[tuple[str, str, str, str, list[tuple[str, str]]]] = [
    (
        "detect",
        "detect_time",
        "Time for the heartbeat to hand on a blocked VM",
        "detect_bin_",
        [("detect_p50_ms", "p50"), ("detect_p99_ms", "p99")],
    ),
]

_N_METRIC = re.compile(r"^(?P<prefix>[a-z0-9]+)_(?P<measure>[a-z0-9_]+?)_(?P<n>\d+)$")


def _numbers(figures: dict[str, Any]) -> dict[str, float]:
    return {
        k: float(v) for k, v in figures.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
    }


def n_series(figures: dict[str, Any]) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """measure -> prefix -> [(N, value), ...] sorted by N, for the N-indexed metrics of one suite.

    A (prefix, measure) pair counts only with two or more values of N, so a
    lone figure such as `window_100` is not mistaken for a series; goals
    (`goal_...`) are not series.
    """
    found: dict[str, dict[str, list[tuple[int, float]]]] = defaultdict(lambda: defaultdict(list))
    for key, value in _numbers(figures).items():
        match = _N_METRIC.match(key)
        if not match or match["prefix"] == "goal":
            continue
        found[match["measure"]][match["prefix"]].append((int(match["n"]), value))
    series: dict[str, dict[str, list[tuple[int, float]]]] = {}
    for measure, lines in found.items():
        kept = {prefix: sorted(points) for prefix, points in lines.items() if len(points) >= 2}
        if kept:
            series[measure] = kept
    return series


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError as exc:
        raise SystemExit(
            "the report draws its plots with matplotlib: pip install -e '.[plot]' (or pip install matplotlib)"
        ) from exc
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt: Any, fig: Any, path: pathlib.Path) -> pathlib.Path:
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def _bar_plot(plt: Any, out: pathlib.Path, figures: dict[str, float], spec: tuple) -> pathlib.Path | None:
    _, stem, title, unit, log, metrics = spec
    have = [(label, figures[m]) for m, label in metrics if m in figures and (figures[m] > 0 or not log)]
    if len(have) < 2:
        return None
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(have) + 1.4))
    labels, values = zip(*have)
    ax.barh(range(len(values)), values, color="#4c72b0")
    ax.set_yticks(range(len(values)), labels)
    ax.invert_yaxis()
    if log:
        ax.set_xscale("log")
    ax.set_xlabel(unit)
    ax.set_title(title, fontsize=10)
    for i, v in enumerate(values):
        ax.annotate(f" {v:.3g}", (v, i), va="center", fontsize=8)
    return _save(plt, fig, out / f"{stem}.png")


def histogram_bins(figures: dict[str, Any], prefix: str) -> list[tuple[int, int]]:
    """[(LO in us, count), ...] sorted by LO, from the metrics PREFIX<LO>us of one suite."""
    bin_metric = re.compile(rf"^{re.escape(prefix)}(\d+)us$")
    found = [(int(m[1]), int(v)) for k, v in _numbers(figures).items() if (m := bin_metric.match(k))]
    return sorted(found)


def _histogram_plot(plt: Any, out: pathlib.Path, figures: dict[str, float], spec: tuple) -> pathlib.Path | None:
    _, stem, title, prefix, lines = spec
    bins = histogram_bins(figures, prefix)
    if sum(count for _, count in bins) < 2:
        return None
    edges_ms = [lo / 1000 for lo, _ in bins]
    ratio = edges_ms[-1] / edges_ms[-2] if len(bins) > 1 and edges_ms[-2] > 0 else 2**0.5
    edges_ms.append(edges_ms[-1] * ratio if edges_ms[-1] > 0 else 1.0)
    counts = [count for _, count in bins]
    fig, ax = plt.subplots(figsize=(7, 3.6))
    ax.hist(edges_ms[:-1], bins=edges_ms, weights=counts, color="#4c72b0", edgecolor="white")
    log = edges_ms[0] > 0 and edges_ms[-1] / edges_ms[0] >= 10
    if log:
        ax.set_xscale("log")
    for (metric, label), color in zip(lines, ("#dd8452", "#c44e52", "#8172b3")):
        if metric in figures:
            ax.axvline(figures[metric], color=color, linestyle="--", label=f"{label} {figures[metric]:.2f} ms")
    ax.set_xlabel("ms" + (" (log scale)" if log else ""))
    ax.set_ylabel("samples")
    ax.set_title(f"{title}: {sum(counts)} samples", fontsize=10)
    if any(metric in figures for metric, _ in lines):
        ax.legend(fontsize=8)
    return _save(plt, fig, out / f"{stem}.png")


def _group_plot(plt: Any, out: pathlib.Path, figures: dict[str, float], spec: tuple) -> pathlib.Path | None:
    _, stem, title, ylabel, groups = spec
    contenders = list(dict.fromkeys(c for _, metrics in groups for c in metrics))
    rows = []
    for label, metrics in groups:
        values = {}
        for contender, metric in metrics.items():
            if metric in figures and figures[metric] > 0:
                value = figures[metric]
                values[contender] = value * 1e9 / 1e4 if metric.endswith("_10k_s") else value
        if values:
            rows.append((label, values))
    if sum(len(v) for _, v in rows) < 2:
        return None
    fig, ax = plt.subplots(figsize=(7, 3.6))
    width = 0.8 / len(contenders)
    for j, contender in enumerate(contenders):
        xs = [i + j * width for i, (_, v) in enumerate(rows) if contender in v]
        ys = [v[contender] for _, v in rows if contender in v]
        if xs:
            ax.bar(xs, ys, width, label=contender)
    ax.set_xticks([i + width * (len(contenders) - 1) / 2 for i in range(len(rows))], [r[0] for r in rows])
    ax.set_yscale("log")
    ax.set_ylabel(ylabel, fontsize=8)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    return _save(plt, fig, out / f"{stem}.png")


def _n_plot(
    plt: Any, out: pathlib.Path, suite: str, measure: str, lines: dict[str, list[tuple[int, float]]]
) -> pathlib.Path:
    fig, ax = plt.subplots(figsize=(7, 3.8))
    for prefix, points in sorted(lines.items()):
        ns, values = zip(*points)
        ax.plot(ns, values, marker="o", label=prefix)
    ns_all = sorted({n for points in lines.values() for n, _ in points})
    if ns_all[0] > 0 and ns_all[-1] / ns_all[0] >= 10:
        ax.set_xscale("log")
    values_all = [v for points in lines.values() for _, v in points]
    if min(values_all) > 0 and max(values_all) / min(values_all) >= 20:
        ax.set_yscale("log")
    ax.set_xlabel("N")
    ax.set_ylabel(measure)
    ax.set_title(f"{suite}: {measure} against N", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(True, alpha=0.3)
    return _save(plt, fig, out / f"{suite}_{measure}_vs_n.png")


def plots(results: dict[str, Any], out: pathlib.Path) -> dict[str, list[pathlib.Path]]:
    """Draw every plot the results allow into `out`; suite -> the PNGs drawn for it."""
    plt = _pyplot()
    drawn: dict[str, list[pathlib.Path]] = defaultdict(list)
    draw: list[tuple[str, Callable[[], pathlib.Path | None]]] = []
    histograms = {
        (h[0], h[1]): h
        for h in _HISTOGRAMS
        if isinstance(results.get(h[0]), dict) and sum(n for _, n in histogram_bins(results[h[0]], h[3])) >= 2
    }
    for spec in _BARS:
        if (spec[0], spec[1]) in histograms:
            hspec = histograms[spec[0], spec[1]]
            draw.append((spec[0], lambda s=hspec: _histogram_plot(plt, out, _numbers(results[s[0]]), s)))
        elif isinstance(results.get(spec[0]), dict):
            draw.append((spec[0], lambda s=spec: _bar_plot(plt, out, _numbers(results[s[0]]), s)))
    for gspec in _GROUPS:
        if isinstance(results.get(gspec[0]), dict):
            draw.append((gspec[0], lambda s=gspec: _group_plot(plt, out, _numbers(results[s[0]]), s)))
    for suite, figures in results.items():
        if suite == "machine" or not isinstance(figures, dict):
            continue
        for measure, lines in n_series(figures).items():
            draw.append((suite, lambda s=suite, m=measure, ls=lines: _n_plot(plt, out, s, m, ls)))
    for suite, make in draw:
        path = make()
        if path is not None:
            drawn[suite].append(path)
    return drawn


def write(
    results: dict[str, Any], out: pathlib.Path, markdown: Callable[[dict[str, Any]], str]
) -> list[pathlib.Path]:
    """Write results.json, README.md and the plots into `out`; return the PNGs written."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    drawn = plots(results, out)
    text = markdown(results)
    # Each suite's plots go after its table: before the next "## " heading.
    sections = re.split(r"(?m)^(?=## )", text)
    body = []
    for section in sections:
        match = re.match(r"## (\S+)", section)
        body.append(section.rstrip("\n") + "\n")
        if match and drawn.get(match[1]):
            body.append("\n" + "".join(f"![{p.stem}]({p.name})\n" for p in drawn[match[1]]))
        body.append("\n")
    (out / "README.md").write_text("".join(body).rstrip("\n") + "\n")
    return [p for paths in drawn.values() for p in paths]


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python benchmarks/report.py RESULTS.json DIR", file=sys.stderr)
        return 2
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
    from run import markdown

    results = json.loads(pathlib.Path(args[0]).read_text())
    for path in write(results, pathlib.Path(args[1]), markdown):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
