"""Numba passes of balanced rounding: argmax, move costs and the certificate.

The three reads of the matrix that :mod:`otlabel.rounding` makes, parallel
over rows (or over clusters) of a block, with the same arithmetic as the NumPy
passes (float64 per element; maxima and minima are exact, so labels and move
costs are identical bit for bit; the certificate's row terms are summed per row
and then in a fixed order).  The shortest-path repair of exact labels on an
in-memory matrix (:func:`repair`, for the NumPy passes too) and the exchanges of
relaxed sizes (:func:`improve`) run here as well, on the reference's arrays.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numba import njit, prange

from .._labels import cluster_order, place_dummies
from ._fastmath import order_key, shifted_max

__all__ = ["NumbaPasses", "improve", "repair", "row_classes"]


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
        return np.asarray(scores[index], np.float64)  # as NumpyPasses.gather

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


#: The argmax start leaves more excess than this share of the samples: look for
#: identical rows (one hashing pass, a sort, one exact comparison) ...
MERGE_EXCESS = 0.05
#: ... and repair them as one entry each when that leaves at most this share of
#: the rows distinct.  (Identical rows one entry per sample: every unit of them
#: ties, and paths through clusters of them grow long.)
MERGE_SHARE = 0.99


def repair(
    scores: Any,
    labels: np.ndarray,
    prices: np.ndarray,
    bounds: tuple[np.ndarray, np.ndarray],
    rows_per_block: int,
    passes: Any,
    merge: bool | None = None,
) -> tuple[np.ndarray, np.ndarray, int, int]:
    """:meth:`otlabel.rounding._Transfers.balance` in Numba, on an in-memory matrix.

    The same successive shortest paths, on *entries*: a row of the matrix and
    the number of samples (an amount) that it stands for in one cluster.  One
    entry per sample (amount 1) is the per-sample repair of the reference, step
    for step; when the argmax start leaves a large excess (``merge`` None: above
    :data:`MERGE_EXCESS` of the samples; True: always; False: never), identical
    rows become one entry, their count its amount, and a path splits an entry
    when it moves part of it.  Either way a path carries at once as many units
    as its ends, its dummy edges and the entries of least loss on each of its
    sample edges allow (see :func:`_capacity`), so that tied scores cost a few
    paths per cluster, not one per sample.

    ``labels`` (N,): the argmax start, replaced by the labels; ``prices`` (K,):
    the start's prices ``-g``.  Returns the final prices, the move costs ``C``
    (exact: the certificate's), the units moved and the paths they took.
    """
    lower, upper = (np.asarray(bound, dtype=np.int64) for bound in bounds)
    n_samples, n_clusters = labels.size, upper.size
    matrix, virtual = matrix_and_column(scores)
    counts = np.bincount(labels, minlength=n_clusters)
    classes = None
    excess = int(np.maximum(counts - upper, 0).sum())
    if merge or (merge is None and excess > MERGE_EXCESS * n_samples):
        classes = row_classes(matrix, virtual)
        if merge is None and classes[0].size > MERGE_SHARE * n_samples:
            classes = None  # few identical rows: one entry per sample
    move_cost = np.full((n_clusters, n_clusters), np.inf)
    # the first entry (in member order) of each least loss, -1 where not known
    first_of = np.full((n_clusters, n_clusters), -1, dtype=np.int64)
    if classes is None:  # entries are samples: no rows nor amounts stored
        rows, amount = np.zeros(0, np.int64), np.zeros(0, np.int64)
        entry_cluster = labels
        with_args = getattr(passes, "move_costs_with_args", None)
        for first_row in range(0, n_samples, rows_per_block):  # C as the reference reads it
            block = scores[first_row : first_row + rows_per_block]
            own = labels[first_row : first_row + rows_per_block]
            if with_args is not None:
                with_args(block, own, move_cost, first_of, first_row)
            else:
                passes.move_costs(block, own, move_cost)
        class_of = class_start = class_samples = np.zeros(0, np.int64)
    else:
        rows, amount, class_of = classes
        entry_cluster = labels[rows]
        order = cluster_order(entry_cluster)
        clusters, firsts = np.unique(entry_cluster[order], return_index=True)
        _cluster_min_loss_args(
            matrix, virtual, rows[order], np.append(firsts, order.size), clusters,
            move_cost, first_of, 0,
        )  # fmt: skip
        first_of = np.where(first_of >= 0, class_of[np.maximum(first_of, 0)], -1)
        class_start = np.concatenate([[0], np.cumsum(amount)]).astype(np.int64)
        class_samples = np.empty(n_samples, np.int64)
        _class_samples(class_of, class_start, class_samples)
    spare = upper - lower
    n_dummies = int(upper.sum()) - n_samples
    dummies = place_dummies(prices, spare, upper - counts, n_dummies).astype(np.int64)
    occupancy = (counts + dummies).astype(np.int64)
    members, start, count = _entry_table(entry_cluster, counts, dummies, upper)
    prices = prices.astype(np.float64)  # a copy
    tie = np.full((n_clusters, n_clusters), -1, dtype=np.int64)  # -1: not counted yet
    n_stale = np.zeros(n_clusters, dtype=np.int64)  # each row's minima to recompute
    n_entries = np.array([rows.size], dtype=np.int64)
    if classes is not None:  # room for the entries that paths split off
        rows = np.concatenate([rows, np.empty(n_clusters + 1, np.int64)])
        amount = np.concatenate([amount, np.empty(n_clusters + 1, np.int64)])
    n_moves, n_paths = 0, 0
    while True:  # merged entries split: grow the entry arrays when they may run out
        moved, paths, full = _repair(
            matrix, virtual, rows, amount, n_entries, prices, upper, spare, dummies,
            occupancy, move_cost, tie, first_of, n_stale, members, start, count,
        )  # fmt: skip
        n_moves, n_paths = n_moves + int(moved), n_paths + int(paths)
        if not full:
            break
        rows = np.concatenate([rows, np.empty(rows.size, np.int64)])
        amount = np.concatenate([amount, np.empty(amount.size, np.int64)])
    _expand(labels, members, start, count, rows, amount, class_of, class_start, class_samples)
    return prices, move_cost, n_moves, n_paths


def row_classes(matrix: np.ndarray, virtual: np.ndarray) -> tuple[np.ndarray, ...]:
    """The classes of identical rows (bit for bit, with the virtual column if any).

    One parallel pass hashes every row, a sort of the hashes groups equal ones,
    and one parallel pass compares each row with the first of its group exactly
    (a row that differs, a hash collision, is a class of its own).  Returns the
    first sample of each class, in row order (U,), its size (U,), and each
    sample's class (N,).
    """
    n_samples = matrix.shape[0]
    bits = matrix.view(np.dtype(f"u{matrix.dtype.itemsize}"))
    extra = virtual.view(np.uint64) if virtual.size else np.zeros(0, np.uint64)
    hashes = np.empty(n_samples, np.uint64)
    _row_hashes(bits, extra, hashes)
    first = np.empty(n_samples, np.int64)
    _first_of_runs(hashes, np.argsort(hashes), first)
    _verify_classes(bits, extra, first)
    reps = np.flatnonzero(first == np.arange(n_samples))
    index = np.empty(n_samples, np.int64)
    index[reps] = np.arange(reps.size)
    class_of = index[first]
    sizes = np.bincount(class_of, minlength=reps.size).astype(np.int64)
    return reps.astype(np.int64), sizes, class_of


def _entry_table(
    entry_cluster: np.ndarray, counts: np.ndarray, dummies: np.ndarray, upper: np.ndarray
) -> tuple[np.ndarray, ...]:
    """Each cluster's entries (in entry order) in one array, with room for its largest
    possible size.

    A cluster's occupancy (units plus dummies) only grows at the end of a path,
    to at most ``upper``; it holds at most as many entries as units, so
    ``max(units + dummies, upper)`` slots suffice.
    """
    order = cluster_order(entry_cluster)
    n_clusters = upper.size
    sizes = np.bincount(entry_cluster, minlength=n_clusters).astype(np.int64)
    capacity = np.maximum(counts + dummies, upper).astype(np.int64)
    start = np.concatenate([[0], np.cumsum(capacity)[:-1]]).astype(np.int64)
    members = np.empty(int(capacity.sum()), dtype=np.int64)
    firsts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    sorted_clusters = entry_cluster[order]
    positions = start[sorted_clusters] + np.arange(order.size) - firsts[sorted_clusters]
    members[positions] = order
    return members, start, sizes


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


@njit(cache=True)
def _repair(
    scores, virtual, rows, amount, n_entries, prices, upper, spare, dummies, occupancy,
    move_cost, tie, first_of, n_stale, members, start, count,
):  # fmt: skip
    """Shortest paths until no cluster is over-full; returns ``(units moved, paths,
    the entry arrays may run out)`` (checked before a path, so that a call resumes
    exactly).

    A giver's least loss towards a cluster whose last unit of it has left is
    marked stale (``tie`` :data:`STALE`, ``n_stale`` per row): a lower bound,
    recomputed (all of the row's at once) before the row is read, when Dijkstra
    settles the giver or a path runs over it, and at the end for the certificate.
    So the values read are the exact ones, as the reference computes them at
    every move.
    """
    n_clusters = upper.size
    distance = np.empty(n_clusters)
    parent = np.empty(n_clusters, np.int64)
    by_dummy = np.empty(n_clusters, np.bool_)
    unsettled = np.empty(n_clusters)
    full = np.where(occupancy >= upper, np.inf, 0.0)  # kept up to date
    moved = np.empty(max(rows.size, count.sum()), np.int64)  # the entries one edge moves
    dropped = np.zeros(n_clusters, np.int64)  # the units of least loss they took
    dropped_at = np.empty(n_clusters, np.int64)
    columns = np.empty(n_clusters, np.int64)  # a row's stale minima
    n_moves, n_paths = 0, 0
    while True:
        source = -1
        for k in range(n_clusters):
            if occupancy[k] > upper[k]:
                source = k
                break
        if source < 0:
            for k in range(n_clusters):  # exact move costs for the certificate
                _refresh(
                    k, scores, virtual, rows, amount, members, start, count, move_cost, tie,
                    first_of, n_stale, columns,
                )  # fmt: skip
            return n_moves, n_paths, False
        if _may_run_out(rows, n_entries, n_clusters):
            return n_moves, n_paths, True
        _start_search(source, distance, parent, by_dummy, unsettled)
        limit = -1.0  # the distance of the last path's end (none yet)
        while True:  # paths of one Dijkstra
            end = _nearest_room(
                prices, upper, spare, dummies, occupancy, move_cost, distance, parent,
                by_dummy, unsettled, full, scores, virtual, rows, amount, members, start,
                count, tie, first_of, n_stale, columns,
            )  # fmt: skip
            if end < 0:
                if limit < 0:
                    raise RuntimeError("exact labels: no cluster with room (infeasible bounds)")
                break
            if limit >= 0 and not _tight_sample_path(
                source, end, parent, by_dummy, distance, prices, move_cost, scores, virtual,
                rows, amount, members, start, count, tie, first_of, n_stale, columns,
            ):  # fmt: skip
                break
            node, tied, samples_only = end, False, True
            while node != source:  # every sample edge's units of least loss, counted
                giver = parent[node]
                samples_only &= not by_dummy[node]
                if not by_dummy[node] and tie[giver, node] < 0:
                    tie[giver, node], hit = _count_ties(
                        scores, virtual, giver, node, move_cost[giver, node], rows, amount,
                        members, start[giver], count[giver],
                    )  # fmt: skip
                    first_of[giver, node] = members[start[giver] + hit]
                tied |= not by_dummy[node] and tie[giver, node] > 1
                node = giver
            units = _capacity(
                source, end, parent, by_dummy, upper, spare, dummies, occupancy, tie
            )  # fmt: skip
            node = end
            while node != source:  # the path's edges, last first
                giver = parent[node]
                occupancy[giver] -= units
                occupancy[node] += units
                if by_dummy[node]:
                    dummies[giver] -= units
                    dummies[node] += units
                else:
                    _move_entries(
                        giver, node, units, scores, virtual, rows, amount, n_entries,
                        move_cost, tie, first_of, n_stale, members, start, count, moved,
                        dropped, dropped_at,
                    )  # fmt: skip
                node = giver
            n_moves += units
            n_paths += 1
            limit = distance[end]
            for k in (source, end):
                full[k] = np.inf if occupancy[k] >= upper[k] else 0.0
            # a path of sample edges, one of them with tied units: the same Dijkstra
            # goes on to the next cluster with room while its paths stay tight (see
            # the module docstring of otlabel.rounding); untied scores: a new one
            if not (tied and samples_only) or occupancy[source] <= upper[source]:
                break
            if occupancy[end] < upper[end] or _may_run_out(rows, n_entries, n_clusters):
                break
            _refresh(
                end, scores, virtual, rows, amount, members, start, count, move_cost, tie,
                first_of, n_stale, columns,
            )  # fmt: skip
            _settle(end, prices, spare, dummies, move_cost, distance, parent, by_dummy, unsettled)
        for k in range(n_clusters):
            prices[k] = prices[k] - min(distance[k], limit)


@njit(cache=True)
def _may_run_out(rows, n_entries, n_clusters):
    """Whether merged entries (``rows`` not empty) may run out of room on the next
    path, which splits at most one entry per edge."""
    return rows.size > 0 and n_entries[0] + n_clusters > rows.size


@njit(cache=True)
def _capacity(source, end, parent, by_dummy, upper, spare, dummies, occupancy, tie):
    """Units that can follow the path at once: the source's excess and the end's
    room; on a dummy edge, the giver's dummies and, unless the taker passes
    dummies on, its room for more; on a sample edge, the giver's units of least
    loss (``tie``).  One per path on untied scores, as many dummies as fit on a
    path of dummy edges only."""
    units = min(occupancy[source] - upper[source], upper[end] - occupancy[end])
    node, passes_dummies = end, False  # the end passes nothing on
    while node != source:
        giver = parent[node]
        if by_dummy[node]:
            units = min(units, dummies[giver])
            if not passes_dummies:
                units = min(units, spare[node] - dummies[node])
        else:
            units = min(units, tie[giver, node])
        passes_dummies = by_dummy[node]
        node = giver
    return max(units, 1)


@njit(cache=True)
def _count_ties(scores, virtual, giver, taker, least, rows, amount, members, first, size):
    """The giver's units whose loss ``S_ig - S_it`` is ``least`` (its minimum), and the
    position of the first of them in its list."""
    total, hit = 0, size
    for j in range(size):
        e = members[first + j]
        i = _row(rows, e)
        if _score(scores, virtual, i, giver) - _score(scores, virtual, i, taker) == least:
            total += _amount(amount, e)
            hit = min(hit, j)
    return total, hit


@njit(cache=True)
def _move_entries(
    giver, taker, units, scores, virtual, rows, amount, n_entries, move_cost, tie, first_of,
    n_stale, members, start, count, moved, dropped, dropped_at,
):  # fmt: skip
    """Move ``units`` of the giver's entries of least loss towards ``taker`` (the first
    ones in member order; the last one split if it holds more), keeping the order
    of both lists, then bring both clusters' minima, their counts and their first
    entries up to date (a giver's minimum whose last unit left: stale)."""
    least = move_cost[giver, taker]
    first, size = start[giver], count[giver]
    read = 0  # the list up to ``read`` is done, ``kept`` entries of it stay
    if first_of[giver, taker] >= 0:  # the first of least loss is known: no scores read
        while read < size and members[first + read] != first_of[giver, taker]:
            read += 1
        read = 0 if read == size else read
    need, n_moved, kept = units, 0, read
    while need > 0:
        hit = read  # the next entry of least loss: a plain search (its loads overlap)
        while hit < size:
            i = _row(rows, members[first + hit])
            if _score(scores, virtual, i, giver) - _score(scores, virtual, i, taker) == least:
                break
            hit += 1
        if hit == size:  # cannot happen: the units of least loss were counted
            break
        for j in range(read, hit):  # the entries in between stay, in order
            members[first + kept] = members[first + j]
            kept += 1
        e = members[first + hit]
        read = hit + 1
        if _amount(amount, e) <= need:  # the whole entry moves
            need -= _amount(amount, e)
            moved[n_moved] = e
            n_moved += 1
            continue
        split = n_entries[0]  # part of it moves, as a new entry
        n_entries[0] += 1
        rows[split], amount[split] = _row(rows, e), need
        amount[e] -= need  # (merged entries only)
        moved[n_moved] = split
        n_moved += 1
        need = 0
        members[first + kept] = e
        kept += 1
    if kept < read:  # entries left: the rest moves up
        for j in range(read, size):
            members[first + kept] = members[first + j]
            kept += 1
    else:
        kept = size
    count[giver] = kept
    n_dropped = 0  # the columns of ``dropped`` in use, listed in ``dropped_at``
    dense = units > 1 and n_stale[taker] == 0  # tied units: most columns change
    # the two clusters' rows (plain 1-D loops over them vectorise)
    least_t, tie_t, first_t = move_cost[taker], tie[taker], first_of[taker]
    least_g, tie_g, first_g = move_cost[giver], tie[giver], first_of[giver]
    n_real = scores.shape[1]
    for m in range(n_moved):
        e = moved[m]
        members[start[taker] + count[taker]] = e
        count[taker] += 1
        i, a = _row(rows, e), _amount(amount, e)
        row = scores[i]
        own, was = _score(scores, virtual, i, taker), _score(scores, virtual, i, giver)
        if dense:  # every column updated: selects, plain stores, two loops (vectorised)
            for k in range(n_real):
                _take_dense(k, own - np.float64(row[k]), taker, e, a, least_t, tie_t, first_t)
            for k in range(n_real):
                _drop_dense(k, was - np.float64(row[k]), giver, e, a, least_g, tie_g, first_g,
                            dropped)  # fmt: skip
            if virtual.size > 0:
                _take_dense(n_real, own - virtual[i], taker, e, a, least_t, tie_t, first_t)
                _drop_dense(n_real, was - virtual[i], giver, e, a, least_g, tie_g, first_g,
                            dropped)  # fmt: skip
            continue
        # the taker's least losses: first those this entry attains too (rare on
        # untied scores, outside the taker's own column), then the new ones (this
        # entry alone); then the giver's that it takes away.  A stale bound that
        # the entry reaches is exact again (``fixed``)
        fixed = 0
        if _ties_any(scores, virtual, i, own, least_t, taker):
            for k in range(least_t.size):
                if own - _score(scores, virtual, i, k) == least_t[k] and k != taker:
                    fixed += _one_more(tie_t, first_t, k, e, a)
        for k in range(n_real):
            loss = own - np.float64(row[k])
            if loss < least_t[k]:
                fixed += tie_t[k] <= STALE
                least_t[k], tie_t[k], first_t[k] = loss, a, e
        if virtual.size > 0 and own - virtual[i] < least_t[n_real]:
            fixed += tie_t[n_real] <= STALE
            least_t[n_real], tie_t[n_real], first_t[n_real] = own - virtual[i], a, e
        for k in range(least_g.size):
            if was - _score(scores, virtual, i, k) == least_g[k]:
                n_dropped = _drop(k, giver, e, a, tie_g, first_g, dropped, dropped_at, n_dropped)
        n_stale[taker] -= fixed
    if dense:  # the columns dropped, listed
        for k in range(least_g.size):
            if dropped[k] > 0:
                dropped_at[n_dropped] = k
                n_dropped += 1
    if kept == 0:  # the giver's own column: 0 while it holds anything
        move_cost[giver, giver] = np.inf
    for d in range(n_dropped):  # the giver's minima the moved units attained
        k = dropped_at[d]
        if tie[giver, k] > dropped[k]:
            tie[giver, k] -= dropped[k]  # others attain it still
        else:  # the last of them left, or not counted yet: a lower bound now
            tie[giver, k] = STALE if tie[giver, k] == dropped[k] else STALE_UNCOUNTED
            first_of[giver, k] = -1
            n_stale[giver] += 1
        dropped[k] = 0


#: ``tie`` of a least loss whose last unit has left: a lower bound, to recompute...
STALE = -2
#: ... and of one that a unit left before its units were counted (others may attain it).
STALE_UNCOUNTED = -3


@njit(inline="always", cache=True)
def _take_dense(k, loss, taker, e, a, least_t, tie_t, first_t):
    """An arriving entry ``e`` (``a`` units) of loss ``loss`` towards ``k``, into the
    taker's row (no stale bound in it): a new least loss (this entry alone), or one
    more unit of it; selects and plain stores, bitwise tests (no branches)."""
    least, units = least_t[k], tie_t[k]
    lower = loss < least
    more = (loss == least) & (units >= 0) & (k != taker)
    least_t[k] = loss if lower else least
    tie_t[k] = a if lower else (units + a if more else units)
    first_t[k] = e if lower else first_t[k]


@njit(inline="always", cache=True)
def _drop_dense(k, loss, giver, e, a, least_g, tie_g, first_g, dropped):
    """A leaving entry ``e`` (``a`` units) of loss ``loss`` towards ``k``: its units in
    ``dropped`` where it attains the giver's least loss (outside its own column and
    stale minima); selects and plain stores, bitwise tests (no branches)."""
    leaves = (loss == least_g[k]) & (k != giver) & (tie_g[k] > STALE)
    dropped[k] += a if leaves else 0
    first = first_g[k]
    first_g[k] = -1 if leaves & (first == e) else first


@njit(inline="always", cache=True)
def _one_more(tie_t, first_t, k, e, a):
    """An arriving entry ``e`` (``a`` units) that attains the taker's least loss towards
    ``k`` (its row's units and first entries): ``a`` more units of it; a stale bound
    that it reaches is exact again, its units known (``e``'s alone: no other entry
    attains it) or not.  Returns 1 then."""
    if tie_t[k] >= 0:
        tie_t[k] += a
    elif tie_t[k] == STALE:
        tie_t[k], first_t[k] = a, e
        return 1
    elif tie_t[k] == STALE_UNCOUNTED:
        tie_t[k], first_t[k] = -1, -1
        return 1
    return 0


@njit(cache=True)
def _ties_any(scores, virtual, i, own, least, taker):
    """Whether ``own - S_ik`` equals ``least[k]`` for some ``k`` other than ``taker``
    (a reduction, vectorised)."""
    n_real, found = scores.shape[1], False
    for k in range(n_real):
        found |= (own - np.float64(scores[i, k]) == least[k]) and k != taker
    if virtual.size > 0:
        found |= (own - virtual[i] == least[n_real]) and n_real != taker
    return found


@njit(inline="always", cache=True)
def _drop(k, giver, e, a, tie_g, first_g, dropped, dropped_at, n_dropped):
    """A leaving entry of the giver's least loss towards ``k`` (its row's units and
    first entries): its units (outside the giver's own column and stale minima) in
    ``dropped``; returns the columns listed."""
    if k == giver or tie_g[k] <= STALE:
        return n_dropped
    if dropped[k] == 0:
        dropped_at[n_dropped] = k
        n_dropped += 1
    dropped[k] += a
    if first_g[k] == e:
        first_g[k] = -1
    return n_dropped


@njit(cache=True)
def _refresh(
    giver, scores, virtual, rows, amount, members, start, count, move_cost, tie, first_of,
    n_stale, columns,
):  # fmt: skip
    """Recompute the giver's stale minima (if any), all in one read of its entries."""
    if n_stale[giver] == 0:
        return
    n_columns = 0
    for k in range(tie.shape[1]):
        if tie[giver, k] <= STALE:
            columns[n_columns] = k
            n_columns += 1
    _recompute_minima(
        scores, virtual, giver, columns, n_columns, rows, amount, members, start[giver],
        count[giver], move_cost, tie, first_of,
    )  # fmt: skip
    n_stale[giver] = 0


#: Entries x columns above which a giver's whole row of minima is recomputed in
#: parallel (over blocks of columns).
PARALLEL_MINIMA = 1 << 18
#: Contiguous columns per block (a task when parallel) of a whole row's recomputation.
MINIMA_BLOCK = 256


@njit(cache=True)
def _recompute_minima(
    scores, virtual, giver, columns, n_columns, rows, amount, members, first, size,
    move_cost, tie, first_of,
):  # fmt: skip
    """``C[g, k]``, the units that attain it and the first entry that does, over the
    giver's entries, for the ``columns`` given.

    Column by column (the minimum in registers), as untied scores need it (a moved
    sample attained about K / size of its cluster's minima); for most of the
    columns (tied scores), the whole row at once (every value exact): the entries'
    rows read in order, by blocks of :data:`MINIMA_BLOCK` contiguous columns, in
    parallel over blocks when there is much to read (a collapsed start's large
    clusters).
    """
    n_clusters, n_real = move_cost.shape[1], scores.shape[1]
    if 2 * n_columns > n_clusters:  # most of them: the whole row
        n_blocks = (n_real + MINIMA_BLOCK - 1) // MINIMA_BLOCK
        if n_clusters * size >= PARALLEL_MINIMA:
            _recompute_blocks_parallel(
                scores, virtual, giver, n_blocks, rows, amount, members, first, size,
                move_cost, tie, first_of,
            )  # fmt: skip
        else:
            for block in range(n_blocks):
                _recompute_block(
                    scores, virtual, giver, block, rows, amount, members, first, size,
                    move_cost, tie, first_of,
                )  # fmt: skip
        if n_clusters == n_real:
            return
        columns[0], n_columns = n_real, 1  # partial mass's virtual column, below
    for c in range(n_columns):
        k = columns[c]
        least, units, arg = np.inf, 0, -1
        for j in range(size):
            e = members[first + j]
            i = _row(rows, e)
            loss = _score(scores, virtual, i, giver) - _score(scores, virtual, i, k)
            if loss < least:
                least, units, arg = loss, _amount(amount, e), e
            elif loss == least:
                units += _amount(amount, e)
        move_cost[giver, k], tie[giver, k], first_of[giver, k] = least, units, arg


@njit(parallel=True, cache=True)
def _recompute_blocks_parallel(
    scores, virtual, giver, n_blocks, rows, amount, members, first, size, move_cost, tie,
    first_of,
):  # fmt: skip
    """:func:`_recompute_block` for every block of columns, one task each."""
    for block in prange(n_blocks):
        _recompute_block(
            scores, virtual, giver, block, rows, amount, members, first, size, move_cost,
            tie, first_of,
        )  # fmt: skip


@njit(cache=True)
def _recompute_block(
    scores, virtual, giver, block, rows, amount, members, first, size, move_cost, tie,
    first_of,
):  # fmt: skip
    """The giver's minima towards the (real) columns of ``block``, their units and
    first entries: each entry's row read once, selects and plain stores (vectorised)."""
    low = block * MINIMA_BLOCK
    high = min(scores.shape[1], low + MINIMA_BLOCK)
    least = np.full(high - low, np.inf)
    units = np.zeros(high - low, np.int64)
    args = np.full(high - low, -1, np.int64)
    for j in range(size):
        e = members[first + j]
        i, a = _row(rows, e), _amount(amount, e)
        row = scores[i, low:high]
        own = _score(scores, virtual, i, giver)
        for c in range(high - low):
            loss = own - np.float64(row[c])
            lower, same = loss < least[c], loss == least[c]
            least[c] = loss if lower else least[c]
            units[c] = a if lower else (units[c] + a if same else units[c])
            args[c] = e if lower else args[c]
    move_cost[giver, low:high] = least
    tie[giver, low:high] = units
    first_of[giver, low:high] = args


@njit(cache=True)
def _expand(labels, members, start, count, rows, amount, class_of, class_start, class_samples):
    """Every sample's label from the clusters' entries: an entry's sample, or the next
    ``amount`` samples of its class of identical rows (in row order)."""
    cursor = class_start[: max(class_start.size - 1, 0)].copy()
    for k in range(count.size):
        for j in range(count[k]):
            e = members[start[k] + j]
            if class_of.size == 0:
                labels[_row(rows, e)] = k
                continue
            u = class_of[_row(rows, e)]
            for _ in range(_amount(amount, e)):
                labels[class_samples[cursor[u]]] = k
                cursor[u] += 1


@njit(cache=True)
def _class_samples(class_of, class_start, class_samples):
    """The samples of each class together, in row order (a counting sort)."""
    cursor = class_start[:-1].copy()
    for i in range(class_of.size):
        u = class_of[i]
        class_samples[cursor[u]] = i
        cursor[u] += 1


_HASH_SEED = np.uint64(0x9E3779B97F4A7C15)
_HASH_PRIME = np.uint64(0x100000001B3)
_HASH_MIX1 = np.uint64(0xFF51AFD7ED558CCD)
_HASH_MIX2 = np.uint64(0xC4CEB9FE1A85EC53)
_ROTATE = np.uint64(23)
_ROTATE_BACK = np.uint64(41)
_SHIFT = np.uint64(33)


@njit(inline="always", cache=True)
def _hash_step(h, word):
    """One word into a running hash: rotate (high bits reach the low ones), xor,
    multiply."""
    return (((h << _ROTATE) | (h >> _ROTATE_BACK)) ^ np.uint64(word)) * _HASH_PRIME


@njit(inline="always", cache=True)
def _hash_finish(h):
    """Murmur3's 64-bit finaliser."""
    h ^= h >> _SHIFT
    h *= _HASH_MIX1
    h ^= h >> _SHIFT
    h *= _HASH_MIX2
    return h ^ (h >> _SHIFT)


@njit(parallel=True, cache=True)
def _row_hashes(bits, extra, hashes):
    """A 64-bit hash of each row's bits (and of its ``extra`` word, if any): four
    independent chains over the row, for instruction-level parallelism."""
    n_words = bits.shape[1]
    for i in prange(bits.shape[0]):
        row = bits[i]
        h0, h1 = _HASH_SEED, _HASH_SEED ^ _HASH_MIX1
        h2, h3 = _HASH_SEED ^ _HASH_MIX2, _HASH_SEED ^ _HASH_PRIME
        k = 0
        while k + 4 <= n_words:
            h0 = _hash_step(h0, row[k])
            h1 = _hash_step(h1, row[k + 1])
            h2 = _hash_step(h2, row[k + 2])
            h3 = _hash_step(h3, row[k + 3])
            k += 4
        while k < n_words:
            h0 = _hash_step(h0, row[k])
            k += 1
        if extra.size > 0:
            h1 = _hash_step(h1, extra[i])
        h = _hash_step(_hash_step(_hash_step(h0, h1), h2), h3)
        hashes[i] = _hash_finish(h ^ np.uint64(n_words))


@njit(cache=True)
def _first_of_runs(hashes, order, first):
    """``first[i]``: the smallest sample with the hash of sample ``i`` (``order`` sorts
    the hashes)."""
    n = order.size
    j = 0
    while j < n:
        value, smallest, m = hashes[order[j]], order[j], j
        while m < n and hashes[order[m]] == value:
            smallest = min(smallest, order[m])
            m += 1
        for r in range(j, m):
            first[order[r]] = smallest
        j = m


@njit(parallel=True, cache=True)
def _verify_classes(bits, extra, first):
    """A row that is not bit for bit its class's first row becomes a class of its own."""
    n_words = bits.shape[1]
    for i in prange(bits.shape[0]):
        r = first[i]
        if r == i:
            continue
        same = extra.size == 0 or extra[i] == extra[r]
        for k in range(n_words):
            if bits[i, k] != bits[r, k]:
                same = False
                break
        if not same:
            first[i] = i


@njit(cache=True)
def _start_search(source, distance, parent, by_dummy, unsettled):
    """A Dijkstra from ``source``: only it reached, at distance 0."""
    distance[:] = np.inf
    distance[source] = 0.0
    unsettled[:] = np.inf
    unsettled[source] = 0.0
    parent[:] = -1
    by_dummy[:] = False


@njit(cache=True)
def _nearest_room(
    prices, upper, spare, dummies, occupancy, move_cost, distance, parent, by_dummy,
    unsettled, full, scores, virtual, rows, amount, members, start, count, tie, first_of,
    n_stale, columns,
):  # fmt: skip
    """Dijkstra on, from where it stands, to the nearest cluster with room (-1: none).

    Of the clusters nearest, one with room ends the path (the first; else the
    first of all): on tied scores many clusters are at the same distance, and
    settling the full ones first would cost O(K^2) per path.  ``unsettled`` holds
    the distances of the clusters not yet settled (inf for the others), so that
    the next node is a plain first minimum; ``full`` is inf for a cluster without
    room, else 0.  A cluster's stale minima are recomputed before it is settled.
    """
    while True:
        node = _first_nearest(unsettled, full)
        if unsettled[node] == np.inf:
            return -1
        if occupancy[node] < upper[node]:
            return node
        _refresh(
            node, scores, virtual, rows, amount, members, start, count, move_cost, tie,
            first_of, n_stale, columns,
        )  # fmt: skip
        _settle(node, prices, spare, dummies, move_cost, distance, parent, by_dummy, unsettled)


@njit(cache=True)
def _first_nearest(unsettled, full):
    """The first cluster with room among the nearest unsettled ones, else the first of
    them (as numpy.argmin).  ``full`` is inf for a cluster without room, else 0.

    Two passes: both smallest :func:`order_key` values, of all and of those with
    room (vectorised), then the first index that reaches the one chosen."""
    smallest = order_key(unsettled[0])
    with_room = order_key(unsettled[0] + full[0])
    for k in range(unsettled.size):
        key, room_key = order_key(unsettled[k]), order_key(unsettled[k] + full[k])
        smallest = key if key < smallest else smallest
        with_room = room_key if room_key < with_room else with_room
    if with_room == smallest:
        for k in range(unsettled.size):
            if order_key(unsettled[k] + full[k]) == smallest:
                return k
    for k in range(unsettled.size):
        if order_key(unsettled[k]) == smallest:
            return k
    return 0


@njit(cache=True)
def _settle(node, prices, spare, dummies, move_cost, distance, parent, by_dummy, unsettled):
    """Settle ``node``: relax its edges, sample and dummy.

    The relaxation is branch-free (selects, vectorised): a settled cluster is
    never improved, as its distance is at most the settling node's and edges are
    clipped at 0.  Same steps as the branchy form (4.98 -> 3.78 s for the 3 073
    paths of an ImageNet-size repair, identical labels and prices).
    """
    unsettled[node] = np.inf
    reached, price = distance[node], prices[node]
    has_dummies = dummies[node] > 0
    for k in range(prices.size):
        edge = (move_cost[node, k] - price) + prices[k]
        dummy_edge = prices[k] - price if has_dummies and dummies[k] < spare[k] else np.inf
        shorter = dummy_edge if dummy_edge < edge else edge
        reach = reached + (0.0 if shorter < 0.0 else shorter)
        better = reach < distance[k]
        distance[k] = reach if better else distance[k]
        unsettled[k] = reach if better else unsettled[k]
        parent[k] = node if better else parent[k]
        by_dummy[k] = (dummy_edge < edge) if better else by_dummy[k]


@njit(cache=True)
def _tight_sample_path(
    source, end, parent, by_dummy, distance, prices, move_cost, scores, virtual, rows,
    amount, members, start, count, tie, first_of, n_stale, columns,
):  # fmt: skip
    """Whether the path to ``end`` has sample edges only, each still as cheap as when
    it was relaxed (a giver's least loss only grows, when its last unit of least
    loss has left)."""
    node = end
    while node != source:
        giver = parent[node]
        if by_dummy[node]:
            return False
        _refresh(
            giver, scores, virtual, rows, amount, members, start, count, move_cost, tie,
            first_of, n_stale, columns,
        )  # fmt: skip
        edge = (move_cost[giver, node] - prices[giver]) + prices[node]
        if distance[giver] + (0.0 if edge < 0.0 else edge) != distance[node]:
            return False
        node = giver
    return True


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
def _row(rows, e):
    """The matrix row of entry ``e``: itself when entries are samples (``rows`` empty)."""
    return e if rows.size == 0 else rows[e]


@njit(inline="always", cache=True)
def _amount(amount, e):
    """The samples entry ``e`` stands for: 1 when entries are samples (``amount`` empty)."""
    return 1 if amount.size == 0 else amount[e]


@njit(inline="always", cache=True)
def _score(scores, virtual, i, k):
    """``S_ik`` in float64, the virtual column's score when ``k`` is past the last."""
    if k == scores.shape[1]:
        return virtual[i]
    return np.float64(scores[i, k])
