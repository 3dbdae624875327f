"""Numba passes of balanced rounding: argmax, move costs and the certificate.

The three reads of the matrix that :mod:`otlabel.rounding` makes, parallel
over rows (or over clusters) of a block, with the same arithmetic as the NumPy
passes (float64 per element; maxima and minima are exact, so labels and move
costs are identical bit for bit; the certificate's row terms are summed per row
and then in a fixed order).  The shortest-path repair on the K clusters stays in
NumPy: it touches few samples.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numba import njit, prange

from ..rounding import NumpyPasses

__all__ = ["NumbaPasses", "balance"]


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
    def gather(scores: Any, index: np.ndarray) -> np.ndarray:
        """Rows ``index`` as float64 (m, K) (a stream's repair runs in NumPy)."""
        return NumpyPasses.gather(scores, index)

    @staticmethod
    def balance(transfers: Any) -> int:
        """The shortest-path repair in Numba (arrays only; see :func:`balance`)."""
        return balance(transfers)

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


def balance(transfers: Any) -> int:
    """Run :meth:`otlabel.rounding._Transfers.balance` in Numba; returns the units moved.

    The same successive shortest paths, step for step (the same tie-breaking:
    first index of a minimum, member lists kept in order, the same bulk dummy
    moves), on the transfers' state, which is updated in place.
    ``transfers.scores`` must be an array.
    """
    members, start, count = _member_table(transfers.members, transfers.upper, transfers.dummies)
    prices = transfers.prices.copy()
    n_moves = _balance(
        np.ascontiguousarray(transfers.scores),
        transfers.labels,
        prices,
        transfers.upper.astype(np.int64),
        transfers.spare.astype(np.int64),
        transfers.dummies,
        transfers.occupancy,
        transfers.move_cost,
        members,
        start,
        count,
    )
    transfers.prices = prices
    transfers.members = [members[s : s + c].tolist() for s, c in zip(start, count, strict=True)]
    return int(n_moves)


def _member_table(
    lists: list[list[int]], upper: np.ndarray, dummies: np.ndarray
) -> tuple[np.ndarray, ...]:
    """Member lists in one array, each with room for its largest possible size.

    A cluster's occupancy (members plus dummies) only grows at the end of a
    path, to at most ``upper``; its members never exceed its occupancy, so
    ``max(count + dummies, upper)`` slots suffice.
    """
    count = np.array([len(group) for group in lists], dtype=np.int64)
    capacity = np.maximum(count + dummies, upper).astype(np.int64)
    start = np.concatenate([[0], np.cumsum(capacity)[:-1]]).astype(np.int64)
    members = np.empty(int(capacity.sum()), dtype=np.int64)
    for k, group in enumerate(lists):
        members[start[k] : start[k] + count[k]] = group
    return members, start, count


@njit(cache=True)
def _balance(
    scores,
    labels,
    prices,
    upper,
    spare,
    dummies,
    occupancy,
    move_cost,
    members,
    start,
    count,
):
    n_clusters = upper.size
    distance = np.empty(n_clusters)
    parent = np.empty(n_clusters, np.int64)
    by_dummy = np.empty(n_clusters, np.bool_)
    settled = np.empty(n_clusters, np.bool_)
    n_moves = 0
    while True:
        source = -1
        for k in range(n_clusters):
            if occupancy[k] > upper[k]:
                source = k
                break
        if source < 0:
            return n_moves
        end = _shortest_path(
            source, prices, upper, spare, dummies, occupancy, move_cost,
            distance, parent, by_dummy, settled,
        )  # fmt: skip
        amount = _capacity(source, end, parent, by_dummy, upper, spare, dummies, occupancy)
        node = end
        while node != source:  # the path's edges, last first
            giver = parent[node]
            _move(
                giver, node, by_dummy[node], amount, scores, labels, dummies, occupancy,
                move_cost, members, start, count,
            )  # fmt: skip
            node = giver
        n_moves += amount


@njit(cache=True)
def _capacity(source, end, parent, by_dummy, upper, spare, dummies, occupancy):
    """Units along the path: 1 with a sample edge, else as many dummies as fit."""
    amount = min(occupancy[source] - upper[source], upper[end] - occupancy[end])
    amount = min(amount, spare[end] - dummies[end])
    node = end
    while node != source:
        if not by_dummy[node]:
            return 1
        amount = min(amount, dummies[parent[node]])
        node = parent[node]
    return max(amount, 1)


@njit(cache=True)
def _shortest_path(
    source, prices, upper, spare, dummies, occupancy, move_cost,
    distance, parent, by_dummy, settled,
):  # fmt: skip
    """Dijkstra from ``source`` to the nearest cluster with room; updates prices."""
    n_clusters = upper.size
    distance[:] = np.inf
    distance[source] = 0.0
    parent[:] = -1
    by_dummy[:] = False
    settled[:] = False
    while True:
        node, best = 0, np.inf
        for k in range(n_clusters):  # first index of the smallest, as numpy.argmin
            value = np.inf if settled[k] else distance[k]
            if value < best:
                node, best = k, value
        if occupancy[node] < upper[node]:
            break
        settled[node] = True
        for k in range(n_clusters):
            edge = (move_cost[node, k] - prices[node]) + prices[k]
            dummy_edge = np.inf
            if dummies[node] > 0 and dummies[k] < spare[k]:
                dummy_edge = prices[k] - prices[node]
            reach = distance[node] + max(min(edge, dummy_edge), 0.0)
            if reach < distance[k] and not settled[k]:
                distance[k] = reach
                parent[k] = node
                by_dummy[k] = dummy_edge < edge
    limit = distance[node]
    for k in range(n_clusters):
        prices[k] = prices[k] - min(distance[k], limit)
    return node


@njit(cache=True)
def _move(
    giver, taker, dummy, amount, scores, labels, dummies, occupancy, move_cost,
    members, start, count,
):  # fmt: skip
    """Move ``amount`` dummies, or the member of ``giver`` that loses least, to ``taker``."""
    occupancy[giver] -= amount
    occupancy[taker] += amount
    if dummy:
        dummies[giver] -= amount
        dummies[taker] += amount
        return
    first, size = start[giver], count[giver]
    pick, least = 0, np.inf
    for j in range(size):
        i = members[first + j]
        loss = np.float64(scores[i, giver]) - np.float64(scores[i, taker])
        if loss < least:
            pick, least = j, loss
    sample = members[first + pick]
    for j in range(pick, size - 1):  # remove, keeping the order
        members[first + j] = members[first + j + 1]
    count[giver] = size - 1
    members[start[taker] + count[taker]] = sample
    count[taker] += 1
    labels[sample] = taker
    n_clusters = move_cost.shape[1]
    for k in range(n_clusters):
        move_cost[giver, k] = np.inf
    for j in range(size - 1):
        i = members[first + j]
        own = np.float64(scores[i, giver])
        for k in range(n_clusters):
            loss = own - np.float64(scores[i, k])
            if loss < move_cost[giver, k]:
                move_cost[giver, k] = loss
    own = np.float64(scores[sample, taker])
    for k in range(n_clusters):
        move_cost[taker, k] = min(move_cost[taker, k], own - np.float64(scores[sample, k]))
