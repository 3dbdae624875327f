"""Numba passes of balanced rounding: argmax, move costs and the certificate.

The three reads of the matrix that :mod:`otlabel.rounding` makes, on threads
over rows (or over clusters) of a block (:func:`.common.run_tasks`), with the
same arithmetic as the NumPy passes (float64 per element; maxima and minima are
exact, so labels and move costs are identical bit for bit; the certificate's row
terms are summed per row and then in a fixed order).  The shortest-path repair of exact labels on an
in-memory matrix is :mod:`.repair` (for the NumPy passes too); the exchanges of
relaxed sizes are :mod:`.improve`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numba import njit

from ..._labels import cluster_order
from .._fastmath import shifted_max
from .cache import COMPILE_ENTRIES, at_hand
from .entries import entry_score, matrix_and_column
from .improve import exchange_paths, improve
from .tasks import run_tasks, task_kernel


def passes_pay(scores: Any) -> bool:
    """Whether :class:`NumbaPasses` should read ``scores`` (N, K) (a matrix, or a stream
    of its blocks) rather than NumPy's passes (the same labels and move costs): their
    kernels are at hand for its type (this process, or Numba's cache), or it holds at
    least :data:`.cache.COMPILE_ENTRIES` entries."""
    if scores.shape[0] * scores.shape[1] >= COMPILE_ENTRIES:
        return True
    matrix = getattr(scores, "scores", scores)  # without partial mass's column
    if not (isinstance(matrix, np.ndarray) and matrix.flags.c_contiguous):
        matrix = np.empty((0, 0), np.dtype(matrix.dtype))  # a C-order block's type
    ints, floats = np.zeros(1, np.int64), np.zeros(1)
    table, int_table = np.zeros((1, 1)), np.zeros((1, 1), np.int64)
    return at_hand(_argmax_rows, matrix, floats, floats, ints, 0, 0) and at_hand(
        cluster_min_loss_args, matrix, floats, ints, ints, ints, table, int_table, 0, 0, 0
    )


class NumbaPasses:
    """The passes over one block of rows, as :class:`otlabel.rounding.NumpyPasses`."""

    name = "numba"

    @staticmethod
    def argmax(block: Any, potential: np.ndarray) -> np.ndarray:
        labels = np.empty(block.shape[0], np.int64)
        inputs = (*matrix_and_column(block), np.ascontiguousarray(potential), labels)
        run_tasks(None, _argmax_rows, labels.size, *inputs)
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
        inputs = (block, virtual, order, bounds, clusters, move_cost, move_arg, first)
        run_tasks(None, cluster_min_loss_args, clusters.size, *inputs)

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
        target, best = exchange_paths(move_cost, prices, distance, reward, parent, prune)
        return distance, parent, int(target), float(best)

    @staticmethod
    def row_gap(block: Any, labels: np.ndarray, prices: np.ndarray) -> float:
        terms = np.empty(block.shape[0])
        inputs = (*matrix_and_column(block), labels, prices, terms)
        run_tasks(None, _row_gap_terms, terms.size, *inputs)
        return float(np.sum(terms))


def margins_on_this_thread(
    block: np.ndarray, potential: np.ndarray, labels: np.ndarray, margins: np.ndarray
) -> None:
    """``argmax_k (S_ik + g_k)`` (as :meth:`NumbaPasses.argmax`, the first on ties) of
    a C-order ``block`` (n, K) into ``labels`` (n,) int64, and by how much each
    row's best beats its second best into ``margins`` (n,) float64 (0 on a tie,
    inf for one column), on the calling thread (the GIL released): for callers
    that already run one block per thread.  Finite scores.

    >>> block = np.array([[0.0, 1.0, 3.0], [2.0, 2.0, 0.5]])
    >>> labels, margins = np.empty(2, np.int64), np.empty(2)
    >>> margins_on_this_thread(block, np.zeros(3), labels, margins)
    >>> labels.tolist(), margins.tolist()
    ([2, 0], [2.0, 0.0])
    """
    _margin_rows(block, potential, labels, margins, 0, labels.size)


@task_kernel()
def _margin_rows(block, potential, labels, margins, first, last):
    """Each row ``first .. last - 1``'s best and second best: up to
    :data:`MARGIN_SCAN_COLUMNS` columns one scan (the second best a running
    maximum of the values below the best, without a branch), else vectorised scans
    for the best, its first index, then the best of the columns on either side."""
    n_cols = block.shape[1]
    for i in range(first, last):
        row = block[i]
        if n_cols <= MARGIN_SCAN_COLUMNS:
            best, second, arg = np.float64(row[0]) + potential[0], -np.inf, 0
            for k in range(1, n_cols):
                value = np.float64(row[k]) + potential[k]
                below = value if value < best else best
                second = below if below > second else second
                if value > best:
                    best, arg = value, k
        else:
            best = _shifted_row_max(row, potential)
            arg = _first_reaching(row, potential, best)
            second = -np.inf
            if arg > 0:
                second = _shifted_row_max(row[:arg], potential[:arg])
            if arg < n_cols - 1:
                right = _shifted_row_max(row[arg + 1 :], potential[arg + 1 :])
                second = right if right > second else second
        labels[i] = arg
        margins[i] = best - second


#: Columns up to which :func:`_margin_rows` scans a row once (2 000 000 entries,
#: this machine: 1.5-2.0 ms at 2 to 300 columns, the vectorised scans 2.1 at 100,
#: 1.4-1.6 at 300, 1.3-1.4 at 1 000 against 1.9-2.0).
MARGIN_SCAN_COLUMNS = 256


@task_kernel()
def _argmax_rows(block, virtual, potential, labels, first, last):
    """``argmax_k (S_ik + g_k)`` in float64 for the rows ``first .. last - 1``, the first
    index on ties (as NumPy); with a ``virtual`` column (not empty), over the K + 1
    columns.  Two vectorised scans of the row (in cache): its maximum, then the first
    index that reaches it; below :data:`SCAN_COLUMNS` columns, one scan of running
    maxima."""
    n_cols = block.shape[1]
    for i in range(first, last):
        row = block[i]
        if n_cols <= SCAN_COLUMNS:
            best, arg = _running_max(row, potential)
        else:
            best = _shifted_row_max(row, potential)
            arg = _first_reaching(row, potential, best)
        if virtual.size > 0 and virtual[i] + potential[n_cols] > best:
            arg = n_cols
        labels[i] = arg


#: Columns up to which :func:`_argmax_rows` scans a row once for its running maximum
#: (2 000 000 entries, this machine: 1.2 against 6.1 ms at 10 columns, 1.3 against
#: 2.0 at 50, even at 100).
SCAN_COLUMNS = 64


@njit(inline="always", cache=True)
def _running_max(row, potential):
    """``max_k (S_ik + g_k)`` in float64 and its first index (finite input)."""
    best, arg = np.float64(row[0]) + potential[0], 0
    for k in range(1, row.size):
        value = np.float64(row[k]) + potential[k]
        if value > best:
            best, arg = value, k
    return best, arg


@njit(inline="always", cache=True)
def _first_reaching(row, potential, best):
    """The first ``k`` where ``S_ik + g_k`` is ``best`` (the row's maximum)."""
    for k in range(row.size):
        if np.float64(row[k]) + potential[k] == best:
            return k
    return row.size


@njit(cache=True)
def _shifted_row_max(row, potential):
    """``max_k (S_ik + g_k)`` in float64 (finite input: the validation saw to it)."""
    return shifted_max(row, 1.0, potential)


#: Rows of one cluster that :func:`cluster_min_loss_args` takes at once: the
#: cluster's row of minima is read and written once per group (200 000 x 3 000,
#: ad hoc: 216-229 -> 125-140 ms, the same minima and samples).
MOVE_GROUP = 4


@task_kernel()
def cluster_min_loss_args(
    block, virtual, order, bounds, clusters, move_cost, move_arg, first, first_task, last_task
):  # fmt: skip
    """``C[k, l] = min(C[k, l], min_{i in k} S_ik - S_il)``, one cluster per task (no
    races: the tasks ``first_task .. last_task - 1`` of ``clusters``), and in
    ``move_arg[k, l]`` the sample (row ``first + i``) of each new minimum (the first in
    ``order`` of equal ones)."""
    for s in range(first_task, last_task):
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
    own0, own1 = entry_score(block, virtual, i0, k), entry_score(block, virtual, i1, k)
    own2, own3 = entry_score(block, virtual, i2, k), entry_score(block, virtual, i3, k)
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


@task_kernel()
def _row_gap_terms(block, virtual, labels, prices, terms, first, last):
    """``max_k (S_ik - p_k) - (S_iy - p_y)`` for the rows ``first .. last - 1`` (>= 0)."""
    n_cols = block.shape[1] + (virtual.size > 0)
    for i in range(first, last):
        best = entry_score(block, virtual, i, 0) - prices[0]
        for k in range(1, n_cols):
            best = max(best, entry_score(block, virtual, i, k) - prices[k])
        y = labels[i]
        terms[i] = best - (entry_score(block, virtual, i, y) - prices[y])
