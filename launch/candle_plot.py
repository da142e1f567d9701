"""``speedlayer candles SYMBOL --plot FILE``: a candlestick chart with volume of the candles a
query returned (matplotlib, headless; the ``plot`` extra).

Candles are drawn one per slot, oldest left, as a trading chart does: nights, weekends and empty
buckets leave no gap, and the axis labels give each slot's time (UTC). A rising candle (close >=
open) is green, a falling one red; a candle that is not final yet (the forming one) is drawn
hollow with a dashed outline and labelled "forming". The file type follows the extension
(``.png``, ``.svg``, ``.pdf``...).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from speedlayer.errors import SpeedlayerError
from speedlayer.models import Candle

if TYPE_CHECKING:
    from matplotlib.figure import Figure

UP, DOWN = "#26a69a", "#ef5350"
MISSING = (
    "`--plot` needs matplotlib: install the plot extra, "
    "`.venv/bin/pip install -c constraints.txt -e '.[plot]'` (`make setup` has it)"
)


def _time_format(interval_ms: int, span_ms: int) -> str:
    if interval_ms >= 86_400_000:
        return "%Y-%m-%d"
    return "%m-%d %H:%M" if span_ms >= 86_400_000 else "%H:%M"


def plot_candles(
    candles: Sequence[Candle], path: Path, *, title: str | None = None, dpi: int = 100
) -> None:
    """Draw ``candles`` (oldest first, one symbol and interval) with their volume to ``path``."""
    fig = candle_figure(candles, title=title)
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fig.savefig(path, dpi=dpi)
    except (ValueError, OSError) as exc:  # an unknown extension, an unwritable place
        raise SpeedlayerError(f"cannot write {path}: {exc}") from None
    finally:
        plt.close(fig)


def candle_figure(candles: Sequence[Candle], *, title: str | None = None) -> Figure:
    """The chart of ``candles`` (oldest first, one symbol and interval)."""
    if not candles:
        raise SpeedlayerError("no candles to plot")
    try:
        import matplotlib
    except ImportError:
        raise SpeedlayerError(MISSING) from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    first = candles[0]
    xs = list(range(len(candles)))
    up = [c.close >= c.open for c in candles]
    colors = [UP if rising else DOWN for rising in up]
    fig: Figure
    fig, (price_ax, volume_ax) = plt.subplots(
        2,
        1,
        figsize=(max(8.0, min(16.0, 4 + len(candles) * 0.08)), 6.5),
        sharex=True,
        gridspec_kw={"height_ratios": [3, 1]},
    )
    price_ax.vlines(xs, [c.low for c in candles], [c.high for c in candles], colors=colors, lw=0.8)
    bottoms = [min(c.open, c.close) for c in candles]
    # A doji (open == close) still shows as a thin line: a body of at least 1/1000 of the range.
    low, high = min(c.low for c in candles), max(c.high for c in candles)
    least = (high - low) / 1000 or abs(high) / 1e6 or 1e-9
    heights = [max(abs(c.close - c.open), least) for c in candles]
    final = [c.final for c in candles]
    price_ax.bar(
        [x for x, f in zip(xs, final, strict=True) if f],
        [h for h, f in zip(heights, final, strict=True) if f],
        bottom=[b for b, f in zip(bottoms, final, strict=True) if f],
        width=0.7,
        color=[c for c, f in zip(colors, final, strict=True) if f],
        linewidth=0,
    )
    forming = [i for i, f in enumerate(final) if not f]
    for i in forming:
        price_ax.bar(
            i,
            heights[i],
            bottom=bottoms[i],
            width=0.7,
            facecolor="none",
            edgecolor=colors[i],
            linestyle="--",
            linewidth=1.2,
        )
        price_ax.annotate(
            "forming",
            (i, candles[i].high),
            xytext=(0, 6),
            textcoords="offset points",
            ha="center",
            fontsize=8,
        )
    volume_ax.bar(xs, [c.volume for c in candles], width=0.7, color=colors, alpha=0.7)
    for i in forming:
        volume_ax.bar(i, candles[i].volume, width=0.7, facecolor="none", edgecolor="k", ls="--")
    price_ax.set_ylabel("price")
    volume_ax.set_ylabel("volume")
    price_ax.grid(alpha=0.3)
    volume_ax.grid(alpha=0.3)
    price_ax.set_xlim(-1, len(candles) + (1 if forming else 0))
    price_ax.set_ylim(low - (high - low) * 0.03, high + (high - low) * 0.08 or high * 1.01)

    interval_ms = candles[1].timestamp - first.timestamp if len(candles) > 1 else 60_000
    fmt = _time_format(interval_ms, candles[-1].timestamp - first.timestamp)
    times = [datetime.fromtimestamp(c.timestamp / 1000, UTC) for c in candles]

    def label(x: float, _pos: Any) -> str:
        i = round(x)
        return times[i].strftime(fmt) if 0 <= i < len(times) and abs(x - i) < 1e-6 else ""

    volume_ax.xaxis.set_major_formatter(label)
    volume_ax.xaxis.set_major_locator(
        matplotlib.ticker.MaxNLocator(nbins=10, integer=True, min_n_ticks=1)
    )
    volume_ax.set_xlabel(
        f"{times[0]:%Y-%m-%d %H:%M} to {times[-1]:%Y-%m-%d %H:%M} UTC, one slot per candle"
    )
    fig.autofmt_xdate()
    legend = [Patch(color=UP, label="close >= open"), Patch(color=DOWN, label="close < open")]
    if forming:
        legend.append(Patch(facecolor="none", edgecolor="k", ls="--", label="forming (not final)"))
    price_ax.legend(handles=legend, loc="upper left", fontsize=8)
    price_ax.set_title(
        title or f"{first.symbol} {first.interval}: {len(candles):,} candles", fontsize=11
    )
    fig.tight_layout()
    return fig
