"""Hypothesis strategies shared by the fuzz tests: JSON as an outside party may send it."""

from __future__ import annotations

import json

from hypothesis import strategies as st

JSON_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),  # beyond 64 bits too
    st.floats(allow_nan=False, allow_infinity=False),  # JSON has no NaN or inf
    st.text(max_size=12),
)


def json_values(max_leaves: int = 12) -> st.SearchStrategy[object]:
    """Any JSON value: scalars, and lists and objects of them, nested."""
    return st.recursive(
        JSON_SCALARS,
        lambda inner: (
            st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
        ),
        max_leaves=max_leaves,
    )


def dumps(document: object) -> bytes:
    """JSON with integers of any size (orjson writes 64 bits only)."""
    return json.dumps(document).encode()
