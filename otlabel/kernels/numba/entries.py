"""The rounding's view of the matrix: a block and its virtual column, entries with amounts.

The unassigned samples' score (partial mass) is a virtual column past the last
cluster; the repair's entries are samples, or classes of identical rows that
stand for an amount of samples (:mod:`.row_classes`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numba import njit


def matrix_and_column(scores: Any) -> tuple[np.ndarray, np.ndarray]:
    """The in-memory matrix, and the appended virtual column (empty when none): a
    :class:`otlabel.rounding.WithColumn` (or one of its blocks) is read in place."""
    column = getattr(scores, "column", None)
    if column is None:
        return np.ascontiguousarray(scores), np.zeros(0)
    return np.ascontiguousarray(scores.scores), np.ascontiguousarray(column, dtype=np.float64)


@njit(inline="always", cache=True)
def entry_row(rows, e):
    """The matrix row of entry ``e``: itself when entries are samples (``rows`` empty)."""
    return e if rows.size == 0 else rows[e]


@njit(inline="always", cache=True)
def entry_amount(amount, e):
    """The samples entry ``e`` stands for: 1 when entries are samples (``amount`` empty)."""
    return 1 if amount.size == 0 else amount[e]


@njit(inline="always", cache=True)
def entry_score(scores, virtual, i, k):
    """``S_ik`` in float64, the virtual column's score when ``k`` is past the last."""
    if k == scores.shape[1]:
        return virtual[i]
    return np.float64(scores[i, k])
