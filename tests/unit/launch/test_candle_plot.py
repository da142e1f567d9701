"""The chart of `speedlayer candles --plot` (launch/candle_plot.py): one slot per candle, volume
below, the forming candle marked."""

from __future__ import annotations

import pytest
from matplotlib.collections import LineCollection
from matplotlib.patches import Rectangle
from matplotlib.text import Annotation

from launch.candle_plot import candle_figure
from speedlayer.errors import SpeedlayerError
from speedlayer.models import Candle


def candle(i: int, o: float, c: float, final: bool = True) -> Candle:
    return Candle(
        "AAPL", "15m", 1_700_000_000_000 + i * 900_000, o, max(o, c) + 1, min(o, c) - 1, c,
        100.0 + i, None, None, 15, final, 1, 2_000_000_000,
    )  # fmt: skip


def test_the_forming_candle_is_marked_and_gaps_leave_no_slot() -> None:
    # a gap of a day between the second and third candle: slots 0, 1, 2, 3 all the same
    rows = [candle(0, 10, 11), candle(1, 11, 10), candle(97, 10, 12), candle(98, 12, 13, False)]
    fig = candle_figure(rows)
    price, volume = fig.axes
    texts = [t.get_text() for t in price.texts]
    assert texts == ["forming"]
    mark = price.texts[0]
    assert isinstance(mark, Annotation) and mark.xy == (3, rows[3].high)
    legend = price.get_legend()
    assert legend is not None
    assert [t.get_text() for t in legend.get_texts()][-1] == "forming (not final)"
    wicks_collection = price.collections[0]
    assert isinstance(wicks_collection, LineCollection)
    wicks = wicks_collection.get_segments()
    assert [(seg[0][0], seg[0][1], seg[1][1]) for seg in wicks] == [
        (i, c.low, c.high) for i, c in enumerate(rows)
    ]
    heights = sorted(round(p.get_height()) for p in volume.patches if isinstance(p, Rectangle))
    assert heights == sorted([100, 101, 197, 198, 198])  # the forming one drawn twice (outline)
    assert price.get_title() == "AAPL 15m: 4 candles"


def test_all_final_has_no_forming_mark_and_no_candles_is_refused() -> None:
    fig = candle_figure([candle(0, 10, 10)])  # a single doji still draws
    assert len(fig.axes[0].texts) == 0
    with pytest.raises(SpeedlayerError, match="no candles"):
        candle_figure([])
