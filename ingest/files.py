"""Read 1-minute bars from files, in file order (arrival order matters for last-write-wins).

Formats, detected from the content:

* CSV with a header naming at least ``symbol,t,o,h,l,c,v`` (optional ``vw,n``; other columns are
  ignored; an empty ``vw``/``n`` cell means absent) — the format of ``realbars/*/bars_1m.csv``.
* JSON lines of Polygon WebSocket events: one ``AM``/``XA``/``CA`` event object or one frame (a JSON
  array of events) per line. Status events are skipped; other event types are rejected.
* Polygon REST aggregate responses (``{"ticker": ..., "results": [{t,o,h,l,c,v,vw,n}, ...]}``),
  one per file or one per line.

Every record yields either a ``Bar`` or a ``Rejected`` with a reason; a bad record never stops
the read. Polygon events and REST results are decoded as the live client decodes them
(``ingest.polygon.protocol``).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Iterator
from pathlib import Path

import orjson

from ingest.polygon.protocol import Record, Rejected, from_event, from_rest_result
from speedlayer.errors import ReplayFormatError
from speedlayer.models import (
    MAX_PRICE,
    MAX_TRADES,
    MAX_VOLUME,
    MINUTE_MS,
    SYMBOL_RE,
    T_MAX_MS,
    Bar,
    validate_bar,
)
from speedlayer.symbols import canonical_symbol

__all__ = ["REQUIRED_CSV_COLUMNS", "Record", "Rejected", "read_bars"]

REQUIRED_CSV_COLUMNS = ("symbol", "t", "o", "h", "l", "c", "v")


def read_bars(path: str | Path) -> Iterator[Record]:
    path = Path(path)
    try:
        handle = path.open("r", encoding="utf-8", newline="")
    except OSError as exc:
        raise ReplayFormatError(f"cannot read {path}: {exc.strerror}") from exc
    with handle:
        head = handle.read(4096)
        first = head.lstrip()[:1]
        handle.seek(0)
        if first in ("{", "["):
            yield from _read_json(handle, str(path))
        elif first:
            yield from _read_csv(handle, str(path))


def _read_csv(handle: io.TextIOBase, name: str) -> Iterator[Record]:
    reader = csv.reader(handle)
    header = [column.strip().lower() for column in next(reader, [])]
    missing = [column for column in REQUIRED_CSV_COLUMNS if column not in header]
    if missing:
        raise ReplayFormatError(
            f"{name}: not a bar CSV: header lacks {', '.join(missing)} "
            f"(expected symbol,t,o,h,l,c,v[,vw,n])"
        )
    idx = [header.index(column) for column in REQUIRED_CSV_COLUMNS]
    i_vw = header.index("vw") if "vw" in header else None
    i_n = header.index("n") if "n" in header else None
    width = max([*idx, i_vw or 0, i_n or 0]) + 1
    i_s, i_t, i_o, i_h, i_l, i_c, i_v = idx
    symbol_ok = SYMBOL_RE.match
    canonical = canonical_symbol  # as validate_bar stores it
    for row in reader:
        if len(row) < width:
            if not row:
                continue
            yield Rejected("malformed_row", f"{name}:{reader.line_num}")
            continue
        s, vw, n = (
            row[i_s],
            row[i_vw] if i_vw is not None else "",
            row[i_n] if i_n is not None else "",
        )
        # The common case, checked inline: the conversions and bounds of ``validate_bar``, which
        # the rest (anything unusual or invalid) goes through for its reason. ``int`` of a
        # string equals ``validate_bar``'s conversion wherever these bounds hold (below 2**53).
        try:
            t, o, h, lo, c, v = (
                int(row[i_t]), float(row[i_o]), float(row[i_h]), float(row[i_l]),
                float(row[i_c]), float(row[i_v]),
            )  # fmt: skip
            fvw = float(vw) if vw else None
            tn = int(n) if n else None
        except ValueError:
            pass
        else:
            if (
                0 < lo <= o <= h <= MAX_PRICE
                and lo <= c <= h
                and 0 <= v <= MAX_VOLUME
                and (fvw is None or 0 <= fvw <= MAX_PRICE)
                and (tn is None or 0 <= tn <= MAX_TRADES)
                and t % MINUTE_MS == 0
                and 0 <= t < T_MAX_MS
                and symbol_ok(s) is not None
            ):
                yield Bar(canonical(s), t, o, h, lo, c, v, fvw, tn)
                continue
        result = validate_bar(
            s, row[i_t], row[i_o], row[i_h], row[i_l], row[i_c], row[i_v],
            vw if i_vw is not None else None, n if i_n is not None else None,
        )  # fmt: skip
        yield result if isinstance(result, Bar) else Rejected(result, f"{name}:{reader.line_num}")


def _read_json(handle: io.TextIOBase, name: str) -> Iterator[Record]:
    text = handle.read()
    try:
        documents: Iterable[tuple[int, object]] = [(0, orjson.loads(text))]
    except orjson.JSONDecodeError:
        documents = _json_lines(text)
    for line, document in documents:
        yield from _from_document(document, f"{name}:{line}" if line else name)


def _json_lines(text: str) -> Iterator[tuple[int, object]]:
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield number, orjson.loads(line)
        except orjson.JSONDecodeError:
            yield number, _MALFORMED


_MALFORMED = object()


def _from_document(document: object, where: str) -> Iterator[Record]:
    if document is _MALFORMED:
        yield Rejected("malformed_json", where)
    elif isinstance(document, list):
        for event in document:
            yield from _from_document(event, where)
    elif isinstance(document, dict):
        if "results" in document or "resultsCount" in document:
            yield from _from_rest(document, where)
        elif "ev" in document:
            record = from_event(document, where)
            if record is not None:
                yield record
        else:
            yield Rejected("unknown_record", where)
    else:
        yield Rejected("unknown_record", where)


def _from_rest(document: dict[str, object], where: str) -> Iterator[Record]:
    ticker = document.get("ticker")
    results = document.get("results") or []
    if not isinstance(results, list):
        yield Rejected("malformed_rest_response", where)
        return
    for item in results:
        if not isinstance(item, dict):
            yield Rejected("unknown_record", where)
            continue
        yield from_rest_result(ticker, item, where)
