"""The shortest-path repair of exact labels on an in-memory matrix.

From the argmax start, units move from over-full clusters to those with room
along shortest paths of least losses (Dijkstra on the clusters, reduced by the
prices), until every count is within its bounds; the prices are then a dual
that certifies the labels.  Identical rows are one entry with an amount
(:mod:`.row_classes`); the least losses per cluster pair are kept by
:mod:`.repair_losses`, the searches are :mod:`.repair_paths`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numba import njit

from ..._labels import cluster_order, place_dummies
from .cache import COMPILE_ENTRIES, at_hand
from .entries import matrix_and_column
from .repair_candidates import candidate_depth, candidate_lists, fill_candidates
from .repair_losses import least_units, move_entries, refresh_losses
from .repair_paths import nearest_room, settle, start_search, tight_sample_path
from .rounding import cluster_min_loss_args
from .row_classes import entry_table, expand_labels, fill_class_samples, row_classes
from .tasks import run_tasks

#: The argmax start leaves more excess than this share of the samples: look for
#: identical rows (one hashing pass, a sort, one exact comparison) ...
MERGE_EXCESS = 0.05


#: ... and repair them as one entry each when that leaves at most this share of
#: the rows distinct.  (Identical rows one entry per sample: every unit of them
#: ties, and paths through clusters of them grow long.)
MERGE_SHARE = 0.99

#: Entries of the matrix from which the candidate lists are filled on every thread
#: (below, handing the clusters to the pool costs more than it saves).
PARALLEL_FILL = 1 << 21

#: Units of excess at the argmax start from which the compiled repair is worth
#: compiling in a process whose cache lacks it, whatever the size of the matrix:
#: the Python repair takes about a path per unit, each a few milliseconds, and
#: compiling the repair tens of seconds (docs/benchmarks.md).
COMPILE_EXCESS = 5_000


def pays(scores: Any, labels: np.ndarray, upper: np.ndarray) -> bool:
    """Whether :func:`repair` should repair the argmax ``labels`` (N,) under the upper
    bounds ``upper`` (K,) rather than the Python repair (the same optimum): its
    machine code for these scores is at hand (this process, or Numba's cache), the
    matrix holds at least :data:`.cache.COMPILE_ENTRIES` entries, or the start leaves
    at least :data:`COMPILE_EXCESS` units of excess."""
    counts = np.bincount(labels, minlength=upper.size)
    excess = int(np.maximum(counts - upper, 0).sum())
    if excess >= COMPILE_EXCESS or scores.shape[0] * scores.shape[1] >= COMPILE_ENTRIES:
        return True
    matrix = getattr(scores, "scores", scores)  # without partial mass's column
    if not matrix.flags.c_contiguous:  # the repair reads a C-order copy
        matrix = np.empty((0, 0), matrix.dtype)
    ints, floats = np.zeros(1, np.int64), np.zeros(1)
    table, int_table = np.zeros((1, 1)), np.zeros((1, 1), np.int64)
    candidates = candidate_lists(1, 1)
    return at_hand(  # _repair's arguments, by type (the virtual column is float64)
        _repair, matrix, floats, ints, ints, ints, floats, ints, ints, ints, ints, table,
        int_table, int_table, ints, ints, ints, ints, candidates,
    ) and at_hand(fill_candidates, matrix, floats, ints, ints, ints, candidates, table,
                  int_table, 0, 1)  # fmt: skip


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
    spare = upper - lower
    n_dummies = int(upper.sum()) - n_samples
    dummies = place_dummies(prices, spare, upper - counts, n_dummies).astype(np.int64)
    occupancy = (counts + dummies).astype(np.int64)
    if classes is None:  # entries are samples: no rows nor amounts stored
        rows, amount = np.zeros(0, np.int64), np.zeros(0, np.int64)
        members, start, count = entry_table(labels, counts, dummies, upper)
        short = int(np.maximum(lower - counts, 0).sum())
        no_path = excess + short == 0
        depth = 0 if no_path else candidate_depth(n_clusters, excess, n_samples)
        candidates = candidate_lists(n_clusters, depth)
        if depth:  # C, its first samples and the candidate lists in one read
            threads = None if matrix.size >= PARALLEL_FILL else 1
            run_tasks(
                threads, fill_candidates, n_clusters, matrix, virtual, members, start, count,
                candidates, move_cost, first_of,
            )  # fmt: skip
        else:
            _sample_move_costs(scores, labels, move_cost, first_of, rows_per_block, passes)
        class_of = class_start = class_samples = np.zeros(0, np.int64)
    else:
        rows, amount, class_of = classes
        entry_cluster = labels[rows]
        candidates = candidate_lists(n_clusters, 0)
        order = cluster_order(entry_cluster)
        clusters, firsts = np.unique(entry_cluster[order], return_index=True)
        run_tasks(
            None, cluster_min_loss_args, clusters.size, matrix, virtual, rows[order],
            np.append(firsts, order.size), clusters, move_cost, first_of, 0,
        )  # fmt: skip
        first_of = np.where(first_of >= 0, class_of[np.maximum(first_of, 0)], -1)
        class_start = np.concatenate([[0], np.cumsum(amount)]).astype(np.int64)
        class_samples = np.empty(n_samples, np.int64)
        fill_class_samples(class_of, class_start, class_samples)
        members, start, count = entry_table(entry_cluster, counts, dummies, upper)
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
            occupancy, move_cost, tie, first_of, n_stale, members, start, count, candidates,
        )  # fmt: skip
        n_moves, n_paths = n_moves + int(moved), n_paths + int(paths)
        if not full:
            break
        rows = np.concatenate([rows, np.empty(rows.size, np.int64)])
        amount = np.concatenate([amount, np.empty(amount.size, np.int64)])
    expand_labels(labels, members, start, count, rows, amount, class_of, class_start, class_samples)
    return prices, move_cost, n_moves, n_paths


@njit(cache=True)
def _repair(
    scores, virtual, rows, amount, n_entries, prices, upper, spare, dummies, occupancy,
    move_cost, tie, first_of, n_stale, members, start, count, candidates,
):  # fmt: skip
    """Shortest paths until no cluster is over-full; returns ``(units moved, paths,
    the entry arrays may run out)`` (checked before a path, so that a call resumes
    exactly).

    A giver's least loss towards a cluster whose last unit of it has left is
    marked stale (``tie`` :data:`.repair_losses.STALE`, ``n_stale`` per row): a lower bound,
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
                refresh_losses(
                    k, scores, virtual, rows, amount, members, start, count, move_cost, tie,
                    first_of, n_stale, columns, candidates,
                )  # fmt: skip
            return n_moves, n_paths, False
        if _may_run_out(rows, n_entries, n_clusters):
            return n_moves, n_paths, True
        start_search(source, distance, parent, by_dummy, unsettled)
        limit = -1.0  # the distance of the last path's end (none yet)
        while True:  # paths of one Dijkstra
            end = nearest_room(
                prices, upper, spare, dummies, occupancy, move_cost, distance, parent,
                by_dummy, unsettled, full, scores, virtual, rows, amount, members, start,
                count, tie, first_of, n_stale, columns, candidates,
            )  # fmt: skip
            if end < 0:
                if limit < 0:
                    raise RuntimeError("exact labels: no cluster with room (infeasible bounds)")
                break
            if limit >= 0 and not tight_sample_path(
                source, end, parent, by_dummy, distance, prices, move_cost, scores, virtual,
                rows, amount, members, start, count, tie, first_of, n_stale, columns,
                candidates,
            ):  # fmt: skip
                break
            node, tied, samples_only = end, False, True
            while node != source:  # every sample edge's units of least loss, counted
                giver = parent[node]
                samples_only &= not by_dummy[node]
                if not by_dummy[node] and tie[giver, node] < 0:
                    tie[giver, node], first_of[giver, node] = least_units(
                        scores, virtual, giver, node, move_cost[giver, node], rows, amount,
                        members, start[giver], count[giver], candidates,
                    )  # fmt: skip
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
                    move_entries(
                        giver, node, units, scores, virtual, rows, amount, n_entries,
                        move_cost, tie, first_of, n_stale, members, start, count, moved,
                        dropped, dropped_at, candidates,
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
            refresh_losses(
                end, scores, virtual, rows, amount, members, start, count, move_cost, tie,
                first_of, n_stale, columns, candidates,
            )  # fmt: skip
            settle(end, prices, spare, dummies, move_cost, distance, parent, by_dummy, unsettled)
        for k in range(n_clusters):
            prices[k] = prices[k] - min(distance[k], limit)


def _sample_move_costs(
    scores: Any,
    labels: np.ndarray,
    move_cost: np.ndarray,
    first_of: np.ndarray,
    rows_per_block: int,
    passes: Any,
) -> None:
    """``C`` and the first sample of each least loss, as the reference reads them
    (block by block, by the passes), where there are no candidate lists."""
    with_args = getattr(passes, "move_costs_with_args", None)
    for first_row in range(0, labels.size, rows_per_block):
        block = scores[first_row : first_row + rows_per_block]
        own = labels[first_row : first_row + rows_per_block]
        if with_args is not None:
            with_args(block, own, move_cost, first_of, first_row)
        else:
            passes.move_costs(block, own, move_cost)


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
