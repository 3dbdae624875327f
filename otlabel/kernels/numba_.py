"""Numba kernels: the one-pass sweep of :mod:`otlabel.solver`, fused and parallel.

Same contract as the reference kernels (a block of rows in; its new ``f``, its
column partial and its row error out), with the work inside a block split over
fixed sub-blocks of rows run in parallel.  Each sub-block writes its own column
partials; they are reduced afterwards in a fixed order, so the result does not
depend on the number of threads or on scheduling (no races, same bits every
run).  Each row of the scores is read from memory once per iteration: a max
pass, an ``exp`` pass into a row buffer, and an accumulation pass all run on the
row while it is in L1.

Precision: float32 scores are processed in float32 (``exp`` argument and
values, as accurate as the scores themselves) and float64 scores in float64;
row sums, column sums and potentials are float64.  ``exp`` is
:func:`otlabel.kernels._fastmath.exp_neg` (vectorised, clamped at the last
normal exponent: no subnormals).  Reductions over a row are compiled with
``reassoc`` (vectorised sums and maxima in float64 accumulators: the order of a
handful of partial sums changes, nothing else); the element loops only with
``contract`` (fused multiply-add) and ``nnan`` for the column maxima (inputs are
validated finite).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numba
import numpy as np
from numba import njit, prange

from ..solver import BlockSweep, ColumnPartial, Relaxation, _row_blocks
from ._fastmath import exp_neg

_REDUCE = {"contract", "reassoc", "nsz", "nnan"}
_ELEMENTS = {"contract", "nnan"}
#: Rows per parallel sub-block (its partials: K float64 sums and maxima).
SUB_BLOCK_ROWS = 512
#: Rows handed to one ``sweep`` call: the loop's blocks (chunks of the matrix).
CHUNK_BYTES = 1 << 30


@njit(fastmath=_REDUCE, cache=True)
def _shifted_max(row, inv_eps, shift):
    """``max_j row[j] inv_eps + shift[j]`` in the precision of ``row``."""
    best = row[0] * inv_eps + shift[0]  # not -inf: that would make it float64
    for j in range(1, row.size):
        best = max(best, row[j] * inv_eps + shift[j])
    return best


@njit(fastmath=_REDUCE, cache=True)
def _total(values):
    """``sum_j values[j]`` in float64."""
    total = 0.0
    for j in range(values.size):
        total += values[j]
    return total


@njit(parallel=True, fastmath=_ELEMENTS, cache=True)
def _log_sweep(
    scores,
    log_a,
    g_scaled,
    inv_eps,
    previous,
    omega,
    relaxed,
    f_scaled,
    col_sum,
    col_peak,
    block_stats,
):
    """One log-domain pass over ``scores`` (n, K), parallel over sub-blocks.

    Writes ``f/eps`` per row, and per sub-block ``b``: ``col_sum[b]`` (float64
    sums of the plan entries), ``col_peak[b]`` (their maxima), and
    ``block_stats[b] = (row error, max row scale, rows)``.
    """
    n_rows, n_cols = scores.shape
    rows_per_block = SUB_BLOCK_ROWS
    for b in prange(col_sum.shape[0]):
        values = np.empty(n_cols, dtype=scores.dtype)
        sums, peaks = col_sum[b], col_peak[b]
        sums[:] = 0.0
        peaks[:] = 0.0
        row_error, max_scale = 0.0, 0.0
        first, last = b * rows_per_block, min(n_rows, (b + 1) * rows_per_block)
        for i in range(first, last):
            row = scores[i]
            row_max = _shifted_max(row, inv_eps, g_scaled)
            for j in range(n_cols):
                values[j] = exp_neg(row[j] * inv_eps + g_scaled[j] - row_max)
            log_scale = log_a[i] - math.log(_total(values))  # exact row update
            exact = log_scale - row_max  # fhat / eps
            if relaxed:
                new = (1.0 - omega) * previous[i] + omega * exact
                log_scale += new - exact
                row_error += math.exp(log_a[i]) * abs(math.expm1(new - exact))
                f_scaled[i] = new
            else:
                f_scaled[i] = exact
            scale = math.exp(log_scale)
            max_scale = max(max_scale, scale)
            for j in range(n_cols):
                entry = values[j] * scale
                sums[j] += entry
                peaks[j] = max(peaks[j], entry)
        block_stats[b, 0] = row_error
        block_stats[b, 1] = max_scale
        block_stats[b, 2] = last - first


class NumbaLogKernel:
    """Log-domain kernel, fused and parallel; always finite for finite scores."""

    method = "log"

    def __init__(
        self, scores: np.ndarray, log_a: np.ndarray, epsilon: float, n_threads: int | None
    ) -> None:
        self.scores, self.log_a, self.epsilon = scores, log_a, epsilon
        self.n_threads = n_threads
        self.dtype = np.float32 if scores.dtype == np.float32 else np.float64
        self.floor = -87.0 if self.dtype == np.float32 else -708.0
        self.rows_per_chunk = max(SUB_BLOCK_ROWS, CHUNK_BYTES // scores.strides[0])

    def column_state(self, potential: np.ndarray) -> np.ndarray:
        return (potential / self.epsilon).astype(self.dtype)  # (K,) g / eps

    def blocks(self) -> Iterator[tuple[slice, np.ndarray]]:
        return _row_blocks(self.scores, self.rows_per_chunk)

    def sweep(
        self, block: np.ndarray, rows: slice, state: np.ndarray, relax: Relaxation
    ) -> BlockSweep:
        n_rows, n_cols = block.shape
        n_blocks = -(-n_rows // SUB_BLOCK_ROWS)
        previous = relax.rows(rows)
        f_scaled = np.empty(n_rows)
        col_sum = np.empty((n_blocks, n_cols))
        col_peak = np.empty((n_blocks, n_cols))
        block_stats = np.empty((n_blocks, 3))
        with threads(self.n_threads):
            _log_sweep(
                np.ascontiguousarray(block, dtype=self.dtype),
                self.log_a[rows],
                state,
                self.dtype(1.0 / self.epsilon),
                np.zeros(1) if previous is None else previous / self.epsilon,
                float(relax.omega),
                previous is not None,
                f_scaled,
                col_sum,
                col_peak,
                block_stats,
            )
        columns = reduce_sub_blocks(col_sum, col_peak, block_stats, self.floor)
        return BlockSweep(self.epsilon * f_scaled, columns, float(np.sum(block_stats[:, 0])))


def reduce_sub_blocks(
    col_sum: np.ndarray, col_peak: np.ndarray, block_stats: np.ndarray, floor: float
) -> ColumnPartial:
    """Sum sub-block column partials in a fixed order into one partial.

    A sub-block's column sum is kept where its largest entry stands well above
    what clamping ``exp`` at ``floor`` may add (as in the reference log kernel);
    elsewhere the sub-block reports that largest entry, a lower bound within a
    factor of its row count.
    """
    rows, max_scale = block_stats[:, 2:3], block_stats[:, 1:2]
    with np.errstate(divide="ignore"):
        log_peak = np.log(col_peak)  # (blocks, K)
    limit = floor + np.log(rows) + np.log(np.maximum(max_scale, 1e-300)) + 37.0
    reliable = log_peak > limit
    if reliable.all():
        return ColumnPartial(np.zeros(col_sum.shape[1]), np.sum(col_sum, axis=0))
    log_max = np.where(reliable, 0.0, log_peak)
    scaled = np.where(reliable, col_sum, 1.0)
    top = np.max(log_max, axis=0)  # (K,)
    return ColumnPartial(top, np.sum(scaled * np.exp(log_max - top), axis=0))


@contextmanager
def threads(count: int | None) -> Iterator[None]:
    """Run Numba's parallel loops on ``count`` threads (None: all)."""
    if count is None:
        yield
        return
    before = numba.get_num_threads()
    numba.set_num_threads(min(count, getattr(numba.config, "NUMBA_NUM_THREADS", count)))
    try:
        yield
    finally:
        numba.set_num_threads(before)


def available() -> bool:
    return True


def kernel_for(
    method: str, scores: Any, log_a: np.ndarray, epsilon: float, n_threads: int | None
) -> Any:
    """The Numba kernel for ``method`` ("log" for now)."""
    return NumbaLogKernel(scores, log_a, epsilon, n_threads)
