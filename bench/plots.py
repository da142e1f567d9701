"""The benchmarks' pictures, drawn from ``bench/results.json`` alone (matplotlib, headless), so a
plot never disagrees with its table. ``make bench`` writes them next to ``docs/benchmarks.md``:

* ``bench-peers.png``: the project against each peer (bars/s, requests/s, candles/s), one panel
  per benchmark, the project's bar first and the ratio project / peer written on each peer's bar;
* ``bench-latency.png``: the latency distribution (CDF) of every full-market burst and of the
  WebSocket fan-out, p50 and p99 marked. Runs whose results hold percentiles only (no
  ``latency_ms`` quantile list) show those percentiles as points;
* ``soak.png``: the soak's resident memory, open files, asyncio tasks and clients over time.

    .venv/bin/python -m bench.plots                                  # bench/results.json -> docs/
    .venv/bin/python -m bench.plots --results /tmp/r.json --out-dir /tmp/docs
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

PEERS_PNG = "bench-peers.png"
LATENCY_PNG = "bench-latency.png"
SOAK_PNG = "soak.png"
DPI = 100
OURS, PEER = "#1f77b4", "#b0b0b0"


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _si(value: float) -> str:
    for factor, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:.3g}{suffix}"
    return f"{value:.3g}"


# -- the project against its peers -------------------------------------------------------------

# A panel: (title, unit, [(label, value, ratio of the project to it or None for the project)]).
Panel = tuple[str, str, list[tuple[str, float, float | None]]]


def peer_panels(runs: dict[str, Any]) -> list[Panel]:
    """What the summary table compares, as bars: higher is better in every panel."""
    panels: list[Panel] = []
    if "resampler" in runs:
        for case, c in runs["resampler"]["figures"]["cases"].items():
            bars: list[tuple[str, float, float | None]] = [
                ("speedlayer columnar", float(c["batch"]["bars_per_s"]), None)
            ]
            bars += [
                (name, float(p["bars_per_s"]), c["batch_ratio"][name])
                for name, p in c["peers"].items()
            ]
            panels.append((f"resampler batch, {case.replace('_', ' ')}", "bars/s", bars))
    if "history" in runs:
        h = runs["history"]["figures"]
        panels.append(
            (
                f"history replay into SQLite ({h['candles']:,} final candles)",
                "candles/s",
                [
                    ("speedlayer replay", h["candles"] / h["replay"]["seconds"], None),
                    ("sqlite3 executemany alone", h["candles"] / h["bound"]["seconds"], h["ratio"]),
                ],
            )
        )
    if "rest" in runs:
        r = runs["rest"]["figures"]
        panels.append(
            (
                "REST /candles (15m, limit 100), saturated",
                "requests/s",
                [
                    ("GET /candles", r["candles"]["saturated"]["requests_per_s"], None),
                    ("GET /noop", r["noop"]["saturated"]["requests_per_s"], r["ratio"]),
                ],
            )
        )
    if "store_writes" in runs:
        s = runs["store_writes"]["figures"]
        panels.append(
            (
                "store writes (SQLite, batches)",
                "candles/s",
                [
                    ("speedlayer store", s["store_candles_per_s"], None),
                    ("sqlite3 executemany", s["sqlite3_candles_per_s"], s["ratio"]),
                ],
            )
        )
    if "flink" in runs:
        same = runs["flink"]["figures"]["same_bars"]
        bars = [("embedded resampler", float(same["embedded"]["bars_per_s"]), None)]
        bars += [
            # The embedded resampler is the reference here: the job's share of its rate.
            (f"Flink {r['environment']}, p={r['parallelism']}", r["bars_per_s"], r["ratio"])
            for r in same["flink"]
        ]
        panels.append((f"Flink SQL job, {same['bars']:,} bars", "bars/s", bars))
    return panels


def peers_figure(runs: dict[str, Any]) -> Figure | None:
    panels = peer_panels(runs)
    if not panels:
        return None
    plt = _pyplot()
    heights = [len(bars) for _, _, bars in panels]
    fig: Figure
    fig, axes = plt.subplots(
        len(panels),
        1,
        figsize=(9, 0.55 * sum(heights) + 0.9 * len(panels) + 0.6),
        gridspec_kw={"height_ratios": heights},
        squeeze=False,
    )
    for ax, (title, unit, bars) in zip(axes[:, 0], panels, strict=True):
        _peer_panel(ax, title, unit, bars)
    fig.suptitle(
        "speedlayer (blue) against its peers; on each peer: speedlayer's rate / the peer's",
        fontsize=10,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.985))
    return fig


def _peer_panel(
    ax: Axes, title: str, unit: str, bars: list[tuple[str, float, float | None]]
) -> None:
    labels = [label for label, _, _ in bars]
    values = [value for _, value, _ in bars]
    y = list(range(len(bars)))[::-1]
    colors = [OURS if ratio is None else PEER for _, _, ratio in bars]
    ax.barh(y, values, color=colors, height=0.7)
    ax.set_yticks(y, labels, fontsize=9)
    ax.set_title(title, fontsize=10, loc="left")
    ax.set_xlabel(unit, fontsize=9)
    ax.set_xlim(0, max(values) * 1.18)
    ax.xaxis.set_major_formatter(lambda x, _pos: _si(x))
    ax.grid(axis="x", alpha=0.3)
    for yi, (_, value, ratio) in zip(y, bars, strict=True):
        text = _si(value) if ratio is None else f"{_si(value)}   {ratio:.2f}x"
        ax.text(value, yi, f" {text}", va="center", ha="left", fontsize=9)


# -- latency distributions ---------------------------------------------------------------------


def latency_figure(runs: dict[str, Any]) -> Figure | None:
    if "live" not in runs:
        return None
    live = runs["live"]["figures"]
    burst, fan = live.get("burst"), live.get("fanout", {}).get("fanout")
    if not burst and not fan:
        return None
    plt = _pyplot()
    fig: Figure
    fig, axes = plt.subplots(1, 2 if fan else 1, figsize=(12 if fan else 7, 4.6), squeeze=False)
    if burst:
        ax = axes[0, 0]
        for i, row in enumerate(burst["per_burst"]):
            label = f"run {row.get('run', 1)}, burst of {row['bars']:,} bars"
            _cdf(ax, row, f"C{i % 10}", label)
        _marks(ax, burst["latency_p50_ms_median"], burst["latency_p99_ms_worst"], "worst p99")
        ax.set_title(
            f"full-market burst ({live['symbols']:,} symbols): bar -> subscriber", fontsize=10
        )
    if fan:
        ax = axes[0, 1]
        _cdf(ax, fan, "C4", f"{fan['clients']:,} clients (the worst run)")
        _marks(ax, fan["latency_p50_ms"], fan["latency_p99_ms"], "p99")
        ax.set_title(f"WebSocket fan-out, {fan['clients']:,} clients: hub -> client", fontsize=10)
    for ax in axes[0]:
        ax.set_xlabel("latency (ms)")
        ax.set_ylabel("share of bars / messages at or below")
        ax.set_ylim(0, 1.02)
        ax.set_xlim(left=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig


def _cdf(ax: Axes, row: dict[str, Any], color: str, label: str) -> None:
    """The distribution from the 0th..100th percentiles, or the three percentiles a results file
    of an older run holds."""
    quantiles = row.get("latency_ms")
    if quantiles:
        steps = len(quantiles) - 1
        ax.plot(quantiles, [i / steps for i in range(steps + 1)], color=color, lw=1.4, label=label)
        return
    points = [
        (row.get("latency_p50_ms"), 0.5),
        (row.get("latency_p99_ms"), 0.99),
        (row.get("latency_max_ms"), 1.0),
    ]
    known = [(x, y) for x, y in points if x is not None]
    ax.plot(
        [x for x, _ in known],
        [y for _, y in known],
        color=color,
        marker="o",
        ls="none",
        label=f"{label}: p50, p99, max only",
    )


def _marks(ax: Axes, p50: float | None, p99: float | None, p99_label: str) -> None:
    for value, label, style in ((p50, "p50", "--"), (p99, p99_label, "-.")):
        if value is None:
            continue
        ax.axvline(value, color="k", lw=0.8, ls=style)
        ax.annotate(
            f"{label} {value:g} ms",
            (value, 0.3),
            xytext=(-3, 0),
            textcoords="offset points",
            rotation=90,
            ha="right",
            va="bottom",
            fontsize=8,
        )


# -- the soak ----------------------------------------------------------------------------------


def soak_figure(figures: dict[str, Any]) -> Figure | None:
    """RSS (and the bars the resampler holds), open files, asyncio tasks and connected clients
    over time, with the bursts (dotted) and the clients' end (dashed)."""
    s = figures.get("samples")
    if not s:
        return None
    plt = _pyplot()
    scale, unit = (60.0, "minutes") if figures["seconds"] >= 600 else (1.0, "seconds")
    x = [t / scale for t in s["t_s"]]
    fig: Figure
    fig, axes = plt.subplots(4, 1, figsize=(10, 11), sharex=True)
    rss_ax = axes[0]
    (rss_line,) = rss_ax.plot(x, s["rss_mib"], color="C0", label="RSS")
    rss_ax.set_ylabel("resident memory (MiB)")
    rss_ax.set_ylim(bottom=0)
    held_ax = rss_ax.twinx()
    (held_line,) = held_ax.plot(
        x, [b / 1000 for b in s["held_bars"]], color="0.6", lw=1, ls="--", label="bars held"
    )
    held_ax.set_ylabel("bars the resampler holds (k)")
    held_ax.set_ylim(bottom=0)
    rss_ax.legend(handles=[rss_line, held_line], loc="upper left")
    axes[1].plot(x, s["fds"], color="C1")
    axes[1].set_ylabel("open files")
    axes[2].plot(x, s["tasks"], color="C2")
    axes[2].set_ylabel("asyncio tasks")
    axes[3].plot(x, s["ws_clients"], color="C4", label="WebSocket")
    axes[3].plot(x, s["sse_clients"], color="C5", label="SSE")
    axes[3].set_ylabel("connected clients")
    axes[3].legend(loc="upper left")
    axes[3].set_xlabel(f"{unit} since the clients started")
    for ax in axes:
        for at in figures["burst_at_s"]:
            ax.axvline(at / scale, color="C3", lw=0.8, ls=":")
        ax.axvline(figures["seconds"] / scale, color="k", lw=0.8, ls="--")
        ax.grid(alpha=0.3)
    fig.suptitle(
        f"Soak: {figures['symbols']:,} symbols (a simulated minute every "
        f"{figures['sim_minute_s']:g} s), {figures['clients']:,} WebSocket clients with churn "
        f"(all reconnecting every {figures['burst_every_s']:g} s, dotted),\n"
        f"{figures['sse_clients']} SSE, REST {figures['rest_rate']:g} req/s; "
        f"heap trimmed every {figures['memory_trim_s']:g} s; "
        f"sampled every {figures['sample_s']:g} s; clients stop at the dashed line",
        fontsize=10,
    )
    fig.tight_layout()
    return fig


def save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    _pyplot().close(fig)
    return path


def plot_soak(figures: dict[str, Any], path: Path) -> None:
    fig = soak_figure(figures)
    if fig is not None:
        save(fig, path)


# -- all of them -------------------------------------------------------------------------------

PLOTS: dict[str, Callable[[dict[str, Any]], Figure | None]] = {
    PEERS_PNG: peers_figure,
    LATENCY_PNG: latency_figure,
    SOAK_PNG: lambda runs: soak_figure(runs["soak"]["figures"]) if "soak" in runs else None,
}


def available(runs: dict[str, Any]) -> set[str]:
    """The file names of the plots ``runs`` has figures for (what ``write`` draws)."""
    names = set()
    if peer_panels(runs):
        names.add(PEERS_PNG)
    live = runs.get("live", {}).get("figures", {})
    if live.get("burst") or live.get("fanout", {}).get("fanout"):
        names.add(LATENCY_PNG)
    if runs.get("soak", {}).get("figures", {}).get("samples"):
        names.add(SOAK_PNG)
    return names


def write(results: dict[str, Any], out_dir: Path) -> list[Path]:
    """Draw every plot the results have figures for into ``out_dir``; the paths written."""
    written = []
    runs = results["runs"]
    for name, draw in PLOTS.items():
        if name not in available(runs):
            continue
        fig = draw(runs)
        if fig is not None:
            written.append(save(fig, out_dir / name))
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=Path, default=Path("bench/results.json"))
    parser.add_argument("--out-dir", type=Path, default=Path("docs"))
    args = parser.parse_args()
    if not args.results.exists():
        parser.error(f"no results at {args.results}: run `make bench` first")
    try:
        results = json.loads(args.results.read_text())
        runs = results["runs"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        parser.error(f"{args.results} is not a benchmark results file: {exc}")
    for path in write({"runs": runs}, args.out_dir):
        print(path)


if __name__ == "__main__":
    main()
