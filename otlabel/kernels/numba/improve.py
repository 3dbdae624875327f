"""Exchanges of relaxed sizes: the best improving path of moves between clusters.

With a size penalty, moving samples along a path of clusters changes the
counts' penalty; :func:`improve` applies the exchanges that gain more than the
reference's rounding level (``gain_floor``), on its arrays (:mod:`otlabel.rounding`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numba import njit

from .entries import matrix_and_column
from .repair_paths import move_path


def improve(exchanges: Any, constraint: Any, n_samples: int) -> int:
    """Run :meth:`otlabel.rounding._Exchanges.improve` in Numba; returns the exchanges.

    The same steps (the compiled Dijkstra, the same moves), on the exchanges'
    state, updated in place; the slot values are the constraint's
    (:meth:`~otlabel.constraints.RelaxedSizes.slot_values`), computed in Numba.
    """
    scores, virtual = matrix_and_column(exchanges.scores)
    slots = constraint.slot_parameters(n_samples)
    floor = exchanges.gain_floor(lambda counts: constraint.slot_values(n_samples, counts))
    n_moves, room = 0, max(64, exchanges.labels.size // max(exchanges.counts.size, 1))
    while True:  # a cluster's member list may fill up: rebuild it with more room
        members, start, count, capacity = _growing_table(exchanges.members, room)
        prices = exchanges.prices.copy()
        penalty, expected, known, lower, upper = slots
        moved, full = _improve(
            scores, virtual, exchanges.move_arg, exchanges.labels, prices, exchanges.counts,
            exchanges.move_cost, members, start, count, capacity,
            penalty, expected, known, lower, upper, floor,
        )  # fmt: skip
        exchanges.prices = prices
        exchanges.members = [members[s : s + c].tolist() for s, c in zip(start, count, strict=True)]
        n_moves += int(moved)
        if not full:
            return n_moves
        room *= 2


def _growing_table(lists: list[list[int]], room: int) -> tuple[np.ndarray, ...]:
    """Member lists in one array, each with ``room`` free slots after its members."""
    count = np.array([len(group) for group in lists], dtype=np.int64)
    capacity = count + room
    start = np.concatenate([[0], np.cumsum(capacity)[:-1]]).astype(np.int64)
    members = np.empty(int(capacity.sum()), dtype=np.int64)
    for k, group in enumerate(lists):
        members[start[k] : start[k] + count[k]] = group
    return members, start, count, capacity


@njit(cache=True)
def _slot_value(k, n, penalty, expected, known, lower, upper):
    """``h_k(n) - h_k(n - 1)`` as :meth:`RelaxedSizes.slot_values` computes it."""
    if not np.isfinite(penalty[k]):  # a fixed-count column: free inside its bounds
        if n <= lower[k]:
            return np.inf
        if n > upper[k]:
            return -np.inf
        return 0.0
    if n < 1:
        return np.inf
    x = np.float64(n + known[k])
    previous = x - 1.0
    value = x * np.log(x / expected[k])
    if previous > 0:
        value -= previous * np.log(previous / expected[k])
    return -penalty[k] * value


@njit(cache=True)
def _improve(
    scores, virtual, move_arg, labels, prices, counts, move_cost, members, start, count,
    capacity, penalty, expected, known, lower, upper, floor,
):  # fmt: skip
    """Exchanges until none gains more than ``floor``; returns ``(exchanges, a member
    list is full)``."""
    n_clusters = prices.size
    distance = np.empty(n_clusters)
    reward = np.empty(n_clusters)
    parent = np.empty(n_clusters, np.int64)
    no_dummies = np.zeros(n_clusters, np.int64)
    n_moves = 0
    while True:
        for k in range(n_clusters):
            distance[k] = prices[k] + _slot_value(
                k, counts[k], penalty, expected, known, lower, upper
            )
            reward[k] = prices[k] + _slot_value(
                k, counts[k] + 1, penalty, expected, known, lower, upper
            )
            if np.isnan(distance[k]):
                distance[k] = np.inf
            if np.isnan(reward[k]):
                reward[k] = -np.inf
        parent[:] = -1
        target, best = exchange_paths(move_cost, prices, distance, reward, parent, True)
        if target < 0 or best <= floor:
            return n_moves, False
        node = target
        while parent[node] >= 0:  # every taker needs a free slot in its member list
            if count[node] >= capacity[node]:
                return n_moves, True
            node = parent[node]
        limit = distance[target]
        for k in range(n_clusters):
            prices[k] = prices[k] - min(distance[k], limit)
        node = target
        while parent[node] >= 0:
            giver = parent[node]
            move_path(
                giver, node, False, 1, scores, virtual, labels, no_dummies, counts,
                move_cost, move_arg, members, start, count,
            )  # fmt: skip
            node = giver
        n_moves += 1


@njit(cache=True)
def exchange_paths(move_cost, prices, distance, reward, parent, prune):
    """Dijkstra from every cluster at once (``distance`` holds each start); returns the
    target of the largest gain ``reward - distance`` reached by a path, and that gain."""
    n_clusters = prices.size
    settled = np.zeros(n_clusters, np.bool_)
    bound = -np.inf
    for k in range(n_clusters):
        bound = max(bound, reward[k])
    best, target = 0.0, -1
    for _ in range(n_clusters):
        node, low = -1, np.inf
        for k in range(n_clusters):  # first index of the smallest, as numpy.argmin
            if not settled[k] and distance[k] < low:
                node, low = k, distance[k]
        if node < 0 or (prune and distance[node] >= bound - best):
            break
        settled[node] = True
        gain = reward[node] - distance[node]
        if parent[node] >= 0 and gain > best:
            best, target = gain, node
        for k in range(n_clusters):
            if settled[k]:
                continue
            edge = (move_cost[node, k] - prices[node]) + prices[k]
            reach = distance[node] + max(edge, 0.0)
            if reach < distance[k]:
                distance[k] = reach
                parent[k] = node
    return target, best
