"""The exact finish: float64 log-domain passes on the sparse stored kernel's entries,
from their scores, and the labels they give."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from ...solver import BlockSweep, Kernel, RowUpdate, sweep_all
from .._fastmath import exp_neg
from ..reference import EXP_FLOOR
from .common import (
    ELEMENTS,
    FLUSH_EXPONENT,
    TASK_ROWS,
    drifted,
    row_masses,
    row_terms,
    sub_block_partial,
    sweep_frame,
    update_row,
)
from .log import NumbaLogKernel
from .sparse import SparseKernel
from .tasks import run_tasks, task_kernel


@task_kernel(fastmath=ELEMENTS)
def _sparse_log_sweep(
    indptr, indices, kept_scores, g_scaled, inv_eps, terms, frame, first_task, last_task
):  # fmt: skip
    """The log-domain sweep in float64 on the kept entries' scores of the tasks
    ``first_task .. last_task - 1`` (:data:`.common.TASK_ROWS` rows each)."""
    row_potential, col_sum, col_peak, task_stats = frame
    n_rows, n_cols = indptr.size - 1, g_scaled.size
    values = np.empty(n_cols)
    for t in range(first_task, last_task):
        sums, peaks = col_sum[t], col_peak[t]
        sums[:] = 0.0
        peaks[:] = 0.0
        row_error, max_scale = 0.0, 0.0
        first_row, last_row = t * TASK_ROWS, min(n_rows, (t + 1) * TASK_ROWS)
        for i in range(first_row, last_row):
            first, last = indptr[i], indptr[i + 1]
            row_max = -np.inf
            for e in range(first, last):
                x = kept_scores[e] * inv_eps + g_scaled[indices[e]]
                values[e - first] = x
                row_max = max(row_max, x)
            total = 0.0
            for e in range(last - first):
                values[e] = exp_neg(values[e] - row_max)
                total += values[e]
            error, scale = update_row(terms, i, total, -row_max, row_potential)
            row_error += error
            max_scale = max(max_scale, scale)
            for e in range(first, last):
                entry = values[e - first] * scale
                k = indices[e]
                sums[k] += entry
                peaks[k] = max(peaks[k], entry)
        task_stats[t, 0] = row_error
        task_stats[t, 1] = math.log(max_scale) if max_scale > 0 else -np.inf
        task_stats[t, 2] = last_row - first_row


@task_kernel()
def _sparse_argmax(indptr, indices, kept_scores, potential, labels, first, last):
    """``argmax_k (S_ik + g_k)`` over the kept entries of each row ``first .. last - 1``
    (in column order: the first index on ties), in float64 as the dense passes of the
    rounding."""
    for i in range(first, last):
        best, arg = -np.inf, -1
        for e in range(indptr[i], indptr[i + 1]):
            value = np.float64(kept_scores[e]) + potential[indices[e]]
            if value > best:
                best, arg = value, indices[e]
        labels[i] = arg


class SparseLogKernel(Kernel):
    """Exact log-domain passes on the sparse stored kernel's entries, from their scores.

    Float64 arithmetic on the very scores of the kept entries, so its error is
    the plan's error recomputed from the scores, except for the entries the
    stored kernel dropped: each was below ``e^-60`` of its row's largest at the
    potential the kernel was built at, and the entries are chosen again once the
    potential drifts so far that the dropped mass could reach a tenth of ``tol``
    (``drift``, :func:`rebuild_drift`).  A column none of whose entries
    was kept has no mass to update from: the passes then go on, exact, over
    every entry of the scores.  Costs one ``exp`` per kept entry: a few percent
    of a dense log pass.
    """

    method = "log"

    def __init__(
        self,
        stored: SparseKernel,
        scores: Any,
        log_a: np.ndarray,
        epsilon: float,
        n_threads: int | None,
        rebuild: Callable[[np.ndarray], SparseKernel | None],
        drift: float,
    ) -> None:
        self.stored, self.log_a, self.epsilon, self.n_threads = stored, log_a, epsilon, n_threads
        self.drift = drift  # rebuild_drift
        self.scores = scores  # (N, K), intact: a sparse kernel never replaces them
        self.rebuild = rebuild  # the entries chosen again at a potential (None: not sparse)
        self.dense: Kernel | None = None  # the precise log kernel, once entries won't do
        self.a = row_masses(log_a, scores)  # (N,) or None: a stream's by block

    def column_state(self, potential: np.ndarray) -> np.ndarray:
        if self.dense is None and drifted(
            self.stored.built_at, potential / self.epsilon, self.drift
        ):
            rebuilt = self.rebuild(potential)
            if rebuilt is None:  # too dense now, or no room: every entry
                self._go_dense()
            else:
                self.stored = rebuilt
        if self.dense is not None:
            return self.dense.column_state(potential)
        return potential / self.epsilon  # (K,) g / eps, float64

    def blocks(self) -> Iterator[tuple[slice, Any]]:
        if self.dense is not None:
            return self.dense.blocks()
        return iter([(slice(0, self.stored.shape[0]), self.stored)])

    def sweep(self, block: Any, rows: slice, state: np.ndarray, update: RowUpdate) -> BlockSweep:
        if self.dense is not None:
            return self.dense.sweep(block, rows, state, update)
        frame = sweep_frame(block.shape, TASK_ROWS, 3)
        terms = row_terms(self.log_a, self.a, self.epsilon, rows, update)
        entries = (block.indptr, block.indices, block.scores)
        sweep = (*entries, state, 1.0 / self.epsilon, terms, frame)
        run_tasks(self.n_threads, _sparse_log_sweep, frame.col_sum.shape[0], *sweep)
        row_potential, col_sum, col_peak, task_stats = frame
        if not np.all(np.max(col_peak, axis=0) > 0):  # a column without a kept entry
            dense = self._go_dense()
            f, columns, row_error = sweep_all(dense, state, update)  # state: g / eps, float64
            return BlockSweep(f, columns, row_error)
        columns = sub_block_partial(col_sum, col_peak, task_stats, EXP_FLOOR["float64"])
        return BlockSweep(row_potential, columns, float(np.sum(task_stats[:, 0])))

    def argmax(self, potential: np.ndarray) -> np.ndarray | None:
        """``argmax_k (S_ik + g_k)`` from the kept entries alone, exact while ``g`` is
        within ``-FLUSH_EXPONENT - 1`` (in units of eps, spread of the change) of where
        they were chosen: a dropped entry was ``60 eps`` below its row's best then,
        so it cannot have caught up.  Float64 sums of the very scores, in column
        order: the same labels, ties included, as a read of every entry."""
        change = np.asarray(potential, dtype=np.float64) / self.epsilon - self.stored.built_at
        if self.dense is not None or np.max(change) - np.min(change) >= -FLUSH_EXPONENT - 1:
            return None
        block = self.stored
        labels = np.empty(block.shape[0], dtype=np.int64)
        potential = np.asarray(potential, np.float64)
        entries = (block.indptr, block.indices, block.scores, potential, labels)
        run_tasks(self.n_threads, _sparse_argmax, labels.size, *entries)
        return labels

    def _go_dense(self) -> Kernel:
        """Every entry of the scores from now on, in float64: the exact log kernel."""
        self.dense = NumbaLogKernel(
            self.scores, self.log_a, self.epsilon, self.n_threads, precise=True
        )
        return self.dense
