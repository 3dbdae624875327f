"""The log domain: one pass over the scores, one ``exp`` per entry, always finite."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np

from ...solver import FLOAT32_ERROR_FLOOR, BlockSweep, Kernel, RowUpdate, row_blocks
from .._fastmath import exp_neg, shifted_max
from ..reference import EXP_FLOOR
from .common import (
    CHUNK_BYTES,
    ELEMENTS,
    SUB_BLOCK_ROWS,
    float64_sum,
    row_masses,
    row_terms,
    sub_block_partial,
    sweep_frame,
    update_row,
)
from .tasks import run_tasks, task_kernel

#: The bytes of one block of a stream's rows (a view of an array's needs none:
#: :data:`.common.CHUNK_BYTES`): each is computed or read into memory, so that a
#: stream's pass holds this much, not a gigabyte.
STREAM_CHUNK_BYTES = 1 << 26


@task_kernel(fastmath=ELEMENTS)
def _log_sweep(scores, g_scaled, inv_eps, terms, frame, first_block, last_block):
    """One log-domain pass over the sub-blocks ``first_block .. last_block - 1`` of
    ``scores`` (n, K) (tasks of :func:`.common.run_tasks`).

    Arithmetic in the precision of ``g_scaled`` and ``inv_eps`` (float32 or
    float64, whatever the scores').  Writes ``f`` per row (score units), and per sub-block
    ``b``: ``col_sum[b]`` (float64 sums of the plan entries), ``col_peak[b]``
    (their maxima), ``block_stats[b] = (row error, max log row scale, rows)``.
    """
    row_potential, col_sum, col_peak, block_stats = frame
    n_rows, n_cols = scores.shape
    values = np.empty(n_cols, dtype=g_scaled.dtype)
    for b in range(first_block, last_block):
        sums, peaks = col_sum[b], col_peak[b]
        sums[:] = 0.0
        peaks[:] = 0.0
        row_error, max_scale = 0.0, 0.0
        first, last = b * SUB_BLOCK_ROWS, min(n_rows, (b + 1) * SUB_BLOCK_ROWS)
        for i in range(first, last):
            row = scores[i]
            row_max = shifted_max(row, inv_eps, g_scaled)
            for j in range(n_cols):
                values[j] = exp_neg(row[j] * inv_eps + g_scaled[j] - row_max)
            error, scale = update_row(terms, i, float64_sum(values), -row_max, row_potential)
            row_error += error
            max_scale = max(max_scale, scale)
            for j in range(n_cols):
                entry = values[j] * scale
                sums[j] += entry
                peaks[j] = max(peaks[j], entry)
        block_stats[b, 0] = row_error
        block_stats[b, 1] = math.log(max_scale) if max_scale > 0 else -np.inf
        block_stats[b, 2] = last - first


class NumbaLogKernel(Kernel):
    """Log-domain kernel, fused, its sub-blocks on threads; always finite for finite scores.

    ``precise``: float64 arithmetic on float32 scores (read as they are, no
    float64 copy): the exact kernel of the finish phase.
    """

    def __init__(
        self,
        scores: Any,
        log_a: np.ndarray,
        epsilon: float,
        n_threads: int | None,
        *,
        precise: bool = False,
    ) -> None:
        self.scores, self.log_a, self.epsilon = scores, log_a, epsilon  # array or ChunkedScores
        self.a = row_masses(log_a, scores)  # (N,) or None: a stream's by block
        self.n_threads = n_threads
        self.storage = np.float32 if scores.dtype == np.float32 else np.float64
        self.dtype = np.float64 if precise else self.storage  # of the arithmetic
        self.exact = self.dtype == np.float64
        self.floor = 0.0 if self.exact else FLOAT32_ERROR_FLOOR
        self.exp_floor = EXP_FLOOR["float32" if self.dtype == np.float32 else "float64"]
        row_bytes = scores.shape[1] * scores.dtype.itemsize
        chunk = CHUNK_BYTES if isinstance(scores, np.ndarray) else STREAM_CHUNK_BYTES
        self.rows_per_chunk = max(SUB_BLOCK_ROWS, chunk // row_bytes)

    def column_state(self, potential: np.ndarray) -> np.ndarray:
        return (potential / self.epsilon).astype(self.dtype)  # (K,) g / eps

    def blocks(self) -> Iterator[tuple[slice, np.ndarray]]:
        return row_blocks(self.scores, self.rows_per_chunk)

    def sweep(
        self, block: np.ndarray, rows: slice, state: np.ndarray, update: RowUpdate
    ) -> BlockSweep:
        frame = sweep_frame(block.shape, SUB_BLOCK_ROWS, 3)
        terms = row_terms(self.log_a, self.a, self.epsilon, rows, update)
        block = np.ascontiguousarray(block, dtype=self.storage)
        inv_eps = self.dtype(1.0 / self.epsilon)
        n_blocks = frame.col_sum.shape[0]
        run_tasks(self.n_threads, _log_sweep, n_blocks, block, state, inv_eps, terms, frame)
        row_potential, col_sum, col_peak, block_stats = frame

        def exact_log_peaks(columns: np.ndarray) -> np.ndarray:  # (sub-blocks, columns)
            peaks = np.empty((n_blocks, columns.size))
            inputs = (block, row_potential, state, 1.0 / self.epsilon, columns, peaks)
            run_tasks(self.n_threads, _log_column_peaks, n_blocks, *inputs)
            return peaks

        columns = sub_block_partial(col_sum, col_peak, block_stats, self.exp_floor, exact_log_peaks)
        return BlockSweep(row_potential, columns, float(np.sum(block_stats[:, 0])))


@task_kernel()
def _log_column_peaks(scores, row_potential, g_scaled, inv_eps, columns, peaks, first, last):
    """``peaks[b, c] = max_{i in sub-block b} (S_ij + f_i) / eps + g_j / eps`` in float64
    for each ``j = columns[c]`` and the sub-blocks ``first .. last - 1``: the log of
    those columns' largest plan entries, however far below ``exp``'s range (only the
    starved columns are read)."""
    n_rows = scores.shape[0]
    for b in range(first, last):
        out = peaks[b]
        out[:] = -np.inf
        for i in range(b * SUB_BLOCK_ROWS, min(n_rows, (b + 1) * SUB_BLOCK_ROWS)):
            row, f_scaled = scores[i], row_potential[i] * inv_eps
            for c in range(columns.size):
                out[c] = max(out[c], np.float64(row[columns[c]]) * inv_eps + f_scaled)
        for c in range(columns.size):
            out[c] += np.float64(g_scaled[columns[c]])
