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

from ..rounding import NumpyPasses, cluster_order
from ._fastmath import first_argmin, shifted_max

__all__ = ["NumbaPasses", "balance", "improve"]


class NumbaPasses:
    """The passes over one block of rows, as :class:`otlabel.rounding.NumpyPasses`."""

    name = "numba"

    @staticmethod
    def argmax(block: Any, potential: np.ndarray) -> np.ndarray:
        labels = np.empty(block.shape[0], np.int64)
        _argmax_rows(*matrix_and_column(block), np.ascontiguousarray(potential), labels)
        return labels

    @staticmethod
    def move_costs(block: Any, own: np.ndarray, move_cost: np.ndarray) -> None:
        """:meth:`move_costs_with_args`, the samples that attain the minima dropped."""
        move_arg = np.empty(move_cost.shape, dtype=np.int64)
        NumbaPasses.move_costs_with_args(block, own, move_cost, move_arg, 0)

    @staticmethod
    def move_costs_with_args(
        block: Any, own: np.ndarray, move_cost: np.ndarray, move_arg: np.ndarray, first: int
    ) -> None:
        """:meth:`move_costs`, and in ``move_arg`` a sample (row ``first + i``) that
        attains each minimum."""
        order = cluster_order(own)
        clusters, starts = np.unique(own[order], return_index=True)
        bounds = np.append(starts, own.size)
        block, virtual = matrix_and_column(block)
        _cluster_min_loss_args(block, virtual, order, bounds, clusters, move_cost, move_arg, first)

    @staticmethod
    def gather(scores: Any, index: np.ndarray) -> np.ndarray:
        """Rows ``index`` as float64 (m, K) (a stream's repair runs in NumPy)."""
        return NumpyPasses.gather(scores, index)

    @staticmethod
    def balance(transfers: Any) -> int:
        """The shortest-path repair in Numba (arrays only; see :func:`balance`)."""
        return balance(transfers)

    @staticmethod
    def improve(exchanges: Any, constraint: Any, n_samples: int) -> int:
        """The exchanges of relaxed labels in Numba (arrays only; see :func:`improve`)."""
        return improve(exchanges, constraint, n_samples)

    @staticmethod
    def exchange_paths(
        move_cost: np.ndarray,
        prices: np.ndarray,
        distance: np.ndarray,
        reward: np.ndarray,
        prune: bool,
    ) -> tuple[np.ndarray, np.ndarray, int, float]:
        """The multi-source Dijkstra of :class:`otlabel.rounding._Exchanges`, compiled:
        the same steps (first index of a minimum) on the same arrays."""
        distance = distance.copy()
        parent = np.full(prices.size, -1, dtype=np.int64)
        target, best = _exchange_paths(move_cost, prices, distance, reward, parent, prune)
        return distance, parent, int(target), float(best)

    @staticmethod
    def row_gap(block: Any, labels: np.ndarray, prices: np.ndarray) -> float:
        terms = np.empty(block.shape[0])
        _row_gap_terms(*matrix_and_column(block), labels, prices, terms)
        return float(np.sum(terms))


@njit(cache=True)
def _exchange_paths(move_cost, prices, distance, reward, parent, prune):
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


@njit(parallel=True, cache=True)
def _argmax_rows(block, virtual, potential, labels):
    """``argmax_k (S_ik + g_k)`` in float64, the first index on ties (as NumPy); with a
    ``virtual`` column (not empty), over the K + 1 columns.  Two vectorised scans of
    the row (in cache): its maximum, then the first index that reaches it."""
    n_cols = block.shape[1]
    for i in prange(block.shape[0]):
        row = block[i]
        best = _shifted_row_max(row, potential)
        arg = n_cols
        for k in range(n_cols):
            if np.float64(row[k]) + potential[k] == best:
                arg = k
                break
        if virtual.size > 0 and virtual[i] + potential[n_cols] > best:
            arg = n_cols
        labels[i] = arg


@njit(cache=True)
def _shifted_row_max(row, potential):
    """``max_k (S_ik + g_k)`` in float64 (finite input: the validation saw to it)."""
    return shifted_max(row, 1.0, potential)


#: Rows of one cluster that :func:`_cluster_min_loss_args` takes at once: the
#: cluster's row of minima is read and written once per group (200 000 x 3 000,
#: ad hoc: 216-229 -> 125-140 ms, the same minima and samples).
MOVE_GROUP = 4


@njit(parallel=True, cache=True)
def _cluster_min_loss_args(block, virtual, order, bounds, clusters, move_cost, move_arg, first):
    """``C[k, l] = min(C[k, l], min_{i in k} S_ik - S_il)``, one cluster per task (no
    races), and in ``move_arg[k, l]`` the sample (row ``first + i``) of each new minimum
    (the first in ``order`` of equal ones)."""
    for s in prange(clusters.size):
        k = clusters[s]
        costs, args = move_cost[k], move_arg[k]
        j, end = bounds[s], bounds[s + 1]
        while j < end:
            # four rows at once (the last repeated past the cluster's end: the same
            # minima, the same samples); scalars, not slices: no view per group
            i0, i1 = order[j], order[min(j + 1, end - 1)]
            i2, i3 = order[min(j + 2, end - 1)], order[min(j + 3, end - 1)]
            _min_loss_of_four(block, virtual, k, i0, i1, i2, i3, costs, args, first)
            j += MOVE_GROUP


@njit(cache=True, inline="always")
def _min_loss_of_four(block, virtual, k, i0, i1, i2, i3, costs, args, first):
    """``costs[l] = min(costs[l], S_ik - S_il)`` over the rows ``i0 .. i3`` in turn,
    and ``args[l]`` the sample of each new minimum: branch-free selects, which
    vectorise; the cluster's ``costs`` and ``args`` are read and written once."""
    r0, r1, r2, r3 = block[i0], block[i1], block[i2], block[i3]
    own0, own1 = _score(block, virtual, i0, k), _score(block, virtual, i1, k)
    own2, own3 = _score(block, virtual, i2, k), _score(block, virtual, i3, k)
    sample0, sample1, sample2, sample3 = first + i0, first + i1, first + i2, first + i3
    n_real = block.shape[1]
    for other in range(n_real):
        best, arg = costs[other], args[other]
        loss = own0 - np.float64(r0[other])
        best, arg = (loss, sample0) if loss < best else (best, arg)
        loss = own1 - np.float64(r1[other])
        best, arg = (loss, sample1) if loss < best else (best, arg)
        loss = own2 - np.float64(r2[other])
        best, arg = (loss, sample2) if loss < best else (best, arg)
        loss = own3 - np.float64(r3[other])
        best, arg = (loss, sample3) if loss < best else (best, arg)
        costs[other], args[other] = best, arg
    if virtual.size > 0:  # partial mass's virtual column, last
        for own, i in ((own0, i0), (own1, i1), (own2, i2), (own3, i3)):
            loss = own - virtual[i]
            if loss < costs[n_real]:
                costs[n_real], args[n_real] = loss, first + i


@njit(parallel=True, cache=True)
def _row_gap_terms(block, virtual, labels, prices, terms):
    """``max_k (S_ik - p_k) - (S_iy - p_y)`` per row (>= 0)."""
    n_cols = block.shape[1] + (virtual.size > 0)
    for i in prange(block.shape[0]):
        best = _score(block, virtual, i, 0) - prices[0]
        for k in range(1, n_cols):
            best = max(best, _score(block, virtual, i, k) - prices[k])
        y = labels[i]
        terms[i] = best - (_score(block, virtual, i, y) - prices[y])


def balance(transfers: Any) -> int:
    """Run :meth:`otlabel.rounding._Transfers.balance` in Numba; returns the units moved.

    The same successive shortest paths, step for step (the same tie-breaking:
    first index of a minimum, member lists kept in order, the same bulk dummy
    moves), on the transfers' state, which is updated in place.
    ``transfers.scores`` must be an array.
    """
    members, start, count = _member_table(transfers.members, transfers.upper, transfers.dummies)
    prices = transfers.prices.copy()
    scores, virtual = matrix_and_column(transfers.scores)
    n_moves = _balance(
        scores,
        virtual,
        transfers.move_arg,
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


def matrix_and_column(scores: Any) -> tuple[np.ndarray, np.ndarray]:
    """The in-memory matrix, and the appended virtual column (empty when none): a
    :class:`otlabel.rounding.WithColumn` (or one of its blocks) is read in place."""
    column = getattr(scores, "column", None)
    if column is None:
        return np.ascontiguousarray(scores), np.zeros(0)
    return np.ascontiguousarray(scores.scores), np.ascontiguousarray(column, dtype=np.float64)


def improve(exchanges: Any, constraint: Any, n_samples: int) -> int:
    """Run :meth:`otlabel.rounding._Exchanges.improve` in Numba; returns the exchanges.

    The same steps (the compiled Dijkstra, the same moves), on the exchanges'
    state, updated in place; the slot values are the constraint's
    (:meth:`~otlabel.constraints.RelaxedSizes.slot_values`), computed in Numba.
    """
    scores, virtual = matrix_and_column(exchanges.scores)
    slots = constraint.slot_parameters(n_samples)
    n_moves, room = 0, max(64, exchanges.labels.size // max(exchanges.counts.size, 1))
    while True:  # a cluster's member list may fill up: rebuild it with more room
        members, start, count, capacity = _growing_table(exchanges.members, room)
        prices = exchanges.prices.copy()
        penalty, expected, known, lower, upper = slots
        moved, full = _improve(
            scores, virtual, exchanges.move_arg, exchanges.labels, prices, exchanges.counts,
            exchanges.move_cost, members, start, count, capacity,
            penalty, expected, known, lower, upper, GAIN_TOLERANCE,
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


#: The exchange tolerance of :mod:`otlabel.rounding` (relative to the prices).
GAIN_TOLERANCE = 1e-12


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
    capacity, penalty, expected, known, lower, upper, tolerance,
):  # fmt: skip
    """Exchanges until none gains; returns ``(exchanges, a member list is full)``."""
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
        target, best = _exchange_paths(move_cost, prices, distance, reward, parent, True)
        largest = 0.0
        for k in range(n_clusters):
            largest = max(largest, abs(prices[k]))
        if target < 0 or best <= tolerance * (1.0 + largest):
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
            _move(
                giver, node, False, 1, scores, virtual, labels, no_dummies, counts,
                move_cost, move_arg, members, start, count,
            )  # fmt: skip
            node = giver
        n_moves += 1


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
    virtual,
    move_arg,
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
    unsettled = np.empty(n_clusters)
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
            distance, parent, by_dummy, unsettled,
        )  # fmt: skip
        amount = _capacity(source, end, parent, by_dummy, upper, spare, dummies, occupancy)
        node = end
        while node != source:  # the path's edges, last first
            giver = parent[node]
            _move(
                giver, node, by_dummy[node], amount, scores, virtual, labels, dummies,
                occupancy, move_cost, move_arg, members, start, count,
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
    distance, parent, by_dummy, unsettled,
):  # fmt: skip
    """Dijkstra from ``source`` to the nearest cluster with room; updates prices.

    ``unsettled`` holds the distances of the clusters not yet settled (inf for the
    others), so that the next node is a plain first minimum.  The relaxation is
    branch-free (selects, vectorised): a settled cluster is never improved, as its
    distance is at most the settling node's and edges are clipped at 0.  Same
    steps as the branchy form (4.98 -> 3.78 s for the 3 073 paths of an ImageNet-size
    repair, identical labels and prices).
    """
    n_clusters = upper.size
    distance[:] = np.inf
    distance[source] = 0.0
    unsettled[:] = np.inf
    unsettled[source] = 0.0
    parent[:] = -1
    by_dummy[:] = False
    while True:
        node = first_argmin(unsettled)  # as numpy.argmin: the first smallest
        if occupancy[node] < upper[node]:
            break
        unsettled[node] = np.inf
        reached, price = distance[node], prices[node]
        has_dummies = dummies[node] > 0
        for k in range(n_clusters):
            edge = (move_cost[node, k] - price) + prices[k]
            dummy_edge = prices[k] - price if has_dummies and dummies[k] < spare[k] else np.inf
            shorter = dummy_edge if dummy_edge < edge else edge
            reach = reached + (0.0 if shorter < 0.0 else shorter)
            better = reach < distance[k]
            distance[k] = reach if better else distance[k]
            unsettled[k] = reach if better else unsettled[k]
            parent[k] = node if better else parent[k]
            by_dummy[k] = (dummy_edge < edge) if better else by_dummy[k]
    limit = distance[node]
    for k in range(n_clusters):
        prices[k] = prices[k] - min(distance[k], limit)
    return node


@njit(cache=True)
def _move(
    giver, taker, dummy, amount, scores, virtual, labels, dummies, occupancy, move_cost,
    move_arg, members, start, count,
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
        loss = _score(scores, virtual, i, giver) - _score(scores, virtual, i, taker)
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
    for k in range(n_clusters):  # the minima the moved sample attained: over the others
        if move_arg[giver, k] != sample:
            continue
        move_cost[giver, k], move_arg[giver, k] = np.inf, -1
        for j in range(size - 1):
            i = members[first + j]
            loss = _score(scores, virtual, i, giver) - _score(scores, virtual, i, k)
            if loss < move_cost[giver, k]:
                move_cost[giver, k], move_arg[giver, k] = loss, i
    own = _score(scores, virtual, sample, taker)
    for k in range(n_clusters):
        loss = own - _score(scores, virtual, sample, k)
        if loss < move_cost[taker, k]:
            move_cost[taker, k], move_arg[taker, k] = loss, sample


@njit(inline="always", cache=True)
def _score(scores, virtual, i, k):
    """``S_ik`` in float64, the virtual column's score when ``k`` is past the last."""
    if k == scores.shape[1]:
        return virtual[i]
    return np.float64(scores[i, k])
