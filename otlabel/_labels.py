"""Small tools of exact labels that the Python repair (:mod:`otlabel.rounding`) and the
compiled one (:mod:`otlabel.kernels.numba.repair`) both use; below both, so that
neither imports the other."""

from __future__ import annotations

import numpy as np

__all__ = ["cluster_order", "place_dummies"]


def cluster_order(labels: np.ndarray) -> np.ndarray:
    """The rows in cluster order, in row order within a cluster (a stable argsort).

    Labels below 2^16 are sorted as 16-bit integers, which NumPy radix-sorts
    (1 281 167 labels: 23 against 195 ms as int64)."""
    if labels.size and int(labels.min()) >= 0 and int(labels.max()) <= np.iinfo(np.uint16).max:
        return np.argsort(labels.astype(np.uint16), kind="stable")
    return np.argsort(labels, kind="stable")


def place_dummies(
    prices: np.ndarray, spare: np.ndarray, room: np.ndarray, n_dummies: int
) -> np.ndarray:
    """Where the dummies start: (K,) counts, at most ``spare_k`` each, summing to ``n_dummies``.

    They fill the cheapest clusters first, so that every dummy sits where it is
    at its best (no dummy move has a negative reduced cost); among clusters of
    the threshold price, where they may go anywhere, first into free room
    (``room_k = upper_k - n_k``), so that fewer clusters start over-full.
    """
    dummies = np.zeros(spare.size, dtype=np.int64)
    left = n_dummies
    order = np.argsort(prices, kind="stable")
    for price in np.unique(prices[order]):
        if left == 0:
            break
        group = order[prices[order] == price]
        if spare[group].sum() <= left:
            dummies[group] = spare[group]
            left -= int(spare[group].sum())
            continue
        for capacity in (np.minimum(spare, np.maximum(room, 0)), spare):
            for k in group:
                take = min(left, int(capacity[k] - dummies[k]))
                if take > 0:
                    dummies[k] += take
                    left -= take
    return dummies
