"""Numba passes of balanced rounding: argmax, move costs and the certificate.

The three reads of the matrix that :mod:`otlabel.rounding` makes, parallel
over rows (or over clusters) of a block, with the same arithmetic as the NumPy
passes (float64 per element; maxima and minima are exact, so labels and move
costs are identical bit for bit; the certificate's row terms are summed per row
and then in a fixed order).  The shortest-path repair on the K clusters stays in
NumPy: it touches few samples.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

__all__ = ["NumbaPasses"]


class NumbaPasses:
    """The passes over one block of rows, as :class:`otlabel.rounding.NumpyPasses`."""

    name = "numba"

    @staticmethod
    def argmax(block: np.ndarray, potential: np.ndarray) -> np.ndarray:
        labels = np.empty(block.shape[0], np.int64)
        _argmax_rows(np.ascontiguousarray(block), np.ascontiguousarray(potential), labels)
        return labels

    @staticmethod
    def move_costs(block: np.ndarray, own: np.ndarray, move_cost: np.ndarray) -> None:
        order = np.argsort(own, kind="stable")
        clusters, first = np.unique(own[order], return_index=True)
        bounds = np.append(first, own.size)
        _cluster_min_loss(np.ascontiguousarray(block), order, bounds, clusters, move_cost)

    @staticmethod
    def row_gap(block: np.ndarray, labels: np.ndarray, prices: np.ndarray) -> float:
        terms = np.empty(block.shape[0])
        _row_gap_terms(np.ascontiguousarray(block), labels, prices, terms)
        return float(np.sum(terms))


@njit(parallel=True, cache=True)
def _argmax_rows(block, potential, labels):
    """``argmax_k (S_ik + g_k)`` in float64, the first index on ties (as NumPy)."""
    for i in prange(block.shape[0]):
        best = np.float64(block[i, 0]) + potential[0]
        arg = 0
        for k in range(1, block.shape[1]):
            value = np.float64(block[i, k]) + potential[k]
            if value > best:
                best, arg = value, k
        labels[i] = arg


@njit(parallel=True, cache=True)
def _cluster_min_loss(block, order, bounds, clusters, move_cost):
    """``C[k, l] = min(C[k, l], min_{i in k} S_ik - S_il)``; one cluster per task, no races."""
    for s in prange(clusters.size):
        k = clusters[s]
        for j in range(bounds[s], bounds[s + 1]):
            i = order[j]
            own = np.float64(block[i, k])
            for other in range(block.shape[1]):
                loss = own - np.float64(block[i, other])
                if loss < move_cost[k, other]:
                    move_cost[k, other] = loss


@njit(parallel=True, cache=True)
def _row_gap_terms(block, labels, prices, terms):
    """``max_k (S_ik - p_k) - (S_iy - p_y)`` per row (>= 0)."""
    for i in prange(block.shape[0]):
        best = np.float64(block[i, 0]) - prices[0]
        for k in range(1, block.shape[1]):
            best = max(best, np.float64(block[i, k]) - prices[k])
        y = labels[i]
        terms[i] = best - (np.float64(block[i, y]) - prices[y])
