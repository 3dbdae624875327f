"""The Numba backend: the one-pass sweep of :mod:`otlabel.solver`, fused and parallel.

Same contract as the reference kernels (a block of rows in; its new ``f``, its
column partial and its row error out), with the work inside a block split over
fixed sub-blocks (tasks) of rows run in parallel.  Each task writes its own
column partials; they are reduced afterwards in a fixed order, so the result
does not depend on the number of threads or on scheduling (no races, same bits
every run).  Each row of the scores is read from memory once per iteration.

Every sweep (log domain, dense stored kernel, sparse stored kernel, and the
exact float64 sweep on the sparse kernel's entries) computes its row update
with :func:`_row_update`; the two stored sweeps share :func:`_stored_row` (the
row's sum and the absorption of its scaling).

Precision: float32 scores are processed in float32 (``exp`` argument and
values) unless a kernel is ``precise`` (float64 throughout: the exact finish);
float64 scores in float64; row sums, column sums and potentials are float64.
``exp`` is :func:`otlabel.kernels._fastmath.exp_neg` (vectorised, clamped at
the last normal exponent: no subnormals).  Reductions over a row are compiled
with ``reassoc`` (vectorised sums and maxima in float64 accumulators: the order
of a handful of partial sums changes, nothing else); the element loops only
with ``contract`` (fused multiply-add) and ``nnan`` for the column maxima
(inputs are validated finite).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numba
import numpy as np
from numba import njit, prange

from .._system import available_memory
from ..solver import (
    FLOAT32_ERROR_FLOOR,
    STARVED_MARGIN,
    BlockSweep,
    ColumnPartial,
    Kernel,
    RowUpdate,
    column_partial,
    row_blocks,
    sweep_all,
)
from ..streaming import ChunkedScores
from ._fastmath import exp_neg, shifted_max
from .reference import EXP_FLOOR, ReferenceBackend
from .rounding_numba import NumbaPasses

_REDUCE = {"contract", "reassoc", "nsz", "nnan"}
_ELEMENTS = {"contract", "nnan"}
#: Rows per parallel sub-block of the log sweep (its partials: K float64 sums and maxima).
SUB_BLOCK_ROWS = 512
#: Rows handed to one ``sweep`` call: the loop's blocks (chunks of the matrix).
CHUNK_BYTES = 1 << 30
#: Bytes of float32 scores per block when a sparse kernel is built (at least
#: BUILD_MIN_ROWS rows); its staging slots hold K entries per row of a block
#: (2.5 times the block's bytes with int16 indices and float32 scores).
BUILD_BYTES = 1 << 22
BUILD_MIN_ROWS = 64


class NumbaBackend(ReferenceBackend):
    """Fused parallel kernels for NumPy input; the reference for what is not fused."""

    name = "numba"
    subsample_start = True

    def context(self, n_threads: int | None) -> Any:
        return threads(n_threads)

    def array_extremes(self, scores: Any) -> tuple[np.ndarray, np.ndarray]:
        return row_extremes(scores)

    def validate(self, scores: Any, name: str) -> tuple[Any, Any]:
        """Finite scores, checked by a vectorised sum per row (3 to 4 times faster than
        the extremes, which only the scaling domain needs: :meth:`extremes_of`)."""
        if not isinstance(scores, np.ndarray):
            return super().validate(scores, name)
        bad = np.empty(scores.shape[0], dtype=np.bool_)
        for rows, block in row_blocks(
            scores, max(1, CHUNK_BYTES // (scores.shape[1] * scores.itemsize))
        ):
            _nonfinite_rows(np.ascontiguousarray(block), bad[rows])
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise ValueError(
                f"{name}: contains NaN or infinite values (first in row {row}); "
                "scores must be finite"
            )
        return None, None

    def subsample_rows(self, scores: Any, stride: int) -> Any:
        """The rows copied in parallel: at 1 281 167 x 3 000 (stride 21, 732 MB) 1.1-1.9 s
        against 2.1-3.1 s for NumPy's copy into memory this process had not touched yet
        (the cost is the first touch; 0.07 against 0.13 s into reused memory)."""
        if not (isinstance(scores, np.ndarray) and scores.flags.c_contiguous):
            return super().subsample_rows(scores, stride)
        rows = np.empty((-(-scores.shape[0] // stride), scores.shape[1]), dtype=scores.dtype)
        _strided_rows(scores, stride, rows)
        return rows

    def rounding_passes(self, scores: Any) -> tuple[Any, int]:
        row_bytes = scores.shape[1] * scores.dtype.itemsize
        return NumbaPasses(), max(SUB_BLOCK_ROWS, CHUNK_BYTES // row_bytes)

    def log_kernel(
        self, scores: Any, log_a: np.ndarray, options: Any, *, precise: bool = False
    ) -> Kernel:
        return NumbaLogKernel(scores, log_a, options.epsilon, options.n_threads, precise=precise)

    def first_kernel(self, head: Any, log_a: np.ndarray, options: Any, *, warm: bool) -> Kernel:
        """float32 arrays (``method="auto"``): the log domain, then a stored kernel
        (:class:`NumbaKernel`); otherwise as the reference backend chooses."""
        scores = head.scores
        if options.method == "auto" and (_float32_array(scores) or _float32_stream(scores)):
            return NumbaKernel(
                scores,
                log_a,
                options.epsilon,
                options.n_threads,
                store_at_start=warm,
                tol=options.tol,
            )
        return super().first_kernel(head, log_a, options, warm=warm)

    def subsample_kernel(self, rows: Any, log_a: np.ndarray, options: Any, tol: float) -> Kernel:
        """float32 rows (``method="auto"``): a :class:`NumbaKernel` that stores its sparse
        kernel at :data:`SUBSAMPLE_SWITCH_ERROR`; the rows are the subsample's own
        copy, but its kernel stays sparse (built again as often as the potential
        moves, each build a fraction of a log-domain pass)."""
        if not (options.method == "auto" and _float32_array(rows)):
            return self.log_kernel(rows, log_a, options)
        return NumbaKernel(
            rows,
            log_a,
            options.epsilon,
            options.n_threads,
            tol=tol,
            switch_error=SUBSAMPLE_SWITCH_ERROR,
            sparse_only=True,
        )

    def wants_subsample(self, head: Any, options: Any) -> bool:
        """A stream, or a float32 array that a stored kernel will take over."""
        scores = head.scores
        return isinstance(scores, ChunkedScores) or (
            options.method == "auto" and _float32_array(scores)
        )


def _float32_array(scores: Any) -> bool:
    return isinstance(scores, np.ndarray) and scores.dtype == np.float32


def _float32_stream(scores: Any) -> bool:
    """A stream of NumPy float32 blocks: its stored kernel is built in one read of it."""
    return (
        isinstance(scores, ChunkedScores)
        and scores.library == "numpy"
        and np.dtype(scores.dtype) == np.float32
    )


# --------------------------------------------------------------------------
# The row update: one formula for every sweep
# --------------------------------------------------------------------------


@njit(inline="always", cache=True)
def _row_update(row_sum, frame, log_a, a, previous, omega, relaxed, virtual, has_virtual):
    """Row update in units of eps: returns ``(f/eps, row error, scale)``.

    The row's plan entries are ``e_k exp(f/eps - frame)`` for its kernel entries
    ``e`` with ``sum_k e_k = row_sum`` (with partial mass, and
    ``exp(virtual + f/eps)`` for the virtual column); the exact update
    ``fhat/eps = log a - log row_sum + frame`` gives the row its mass, over-relaxed
    to ``(1 - omega) previous + omega fhat``.  ``scale = exp(f/eps - frame)`` turns
    the row's kernel entries into plan entries: ``a (1 + expm1(f/eps - fhat/eps)) /
    row_sum``, so a row costs one ``log`` (and one ``expm1`` when relaxed), no ``exp``.
    """
    if has_virtual:  # in logs: the virtual entry may dwarf the row
        log_sum = _logaddexp(math.log(row_sum), virtual + frame)
        exact = log_a - log_sum + frame
        new = (1.0 - omega) * previous + omega * exact if relaxed else exact
        error = a * abs(math.expm1(new - exact)) if relaxed else 0.0
        return new, error, math.exp(new - frame)
    exact = log_a - math.log(row_sum) + frame
    if not relaxed:
        return exact, 0.0, a / row_sum
    new = (1.0 - omega) * previous + omega * exact
    change = math.expm1(new - exact)
    return new, a * abs(change), a * (1.0 + change) / row_sum


@njit(inline="always", cache=True)
def _logaddexp(x, y):
    """``log(e^x + e^y)`` in float64."""
    high, low = max(x, y), min(x, y)
    return high + math.log1p(math.exp(low - high))


@njit(fastmath=_REDUCE, cache=True)
def _total(values):
    """``sum_j values[j]`` in float64."""
    total = 0.0
    for j in range(values.size):
        total += values[j]
    return total


# --------------------------------------------------------------------------
# The log domain
# --------------------------------------------------------------------------


@njit(parallel=True, fastmath=_ELEMENTS, cache=True)
def _log_sweep(
    scores,
    log_a,
    a,
    g_scaled,
    inv_eps,
    previous,
    epsilon,
    omega,
    relaxed,
    virtual,
    has_virtual,
    row_potential,
    col_sum,
    col_peak,
    block_stats,
):
    """One log-domain pass over ``scores`` (n, K), parallel over sub-blocks.

    Arithmetic in the precision of ``g_scaled`` and ``inv_eps`` (float32 or
    float64, whatever the scores').  Writes ``f`` per row (score units), and per sub-block
    ``b``: ``col_sum[b]`` (float64 sums of the plan entries), ``col_peak[b]``
    (their maxima), ``block_stats[b] = (row error, max log row scale, rows)``.
    """
    n_rows, n_cols = scores.shape
    for b in prange(col_sum.shape[0]):
        values = np.empty(n_cols, dtype=g_scaled.dtype)
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
            f, error, scale = _row_update(
                _total(values),
                -row_max,
                log_a[i],
                a[i],
                previous[i] / epsilon if relaxed else 0.0,
                omega,
                relaxed,
                virtual[i] if has_virtual else 0.0,  # a placeholder of size 1 otherwise
                has_virtual,
            )
            row_potential[i] = epsilon * f
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
    """Log-domain kernel, fused and parallel; always finite for finite scores.

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
        self.a = np.exp(log_a)  # (N,) the row masses themselves: no exp per row per pass
        self.n_threads = n_threads
        self.storage = np.float32 if scores.dtype == np.float32 else np.float64
        self.dtype = np.float64 if precise else self.storage  # of the arithmetic
        self.exact = self.dtype == np.float64
        self.floor = 0.0 if self.exact else FLOAT32_ERROR_FLOOR
        self.exp_floor = EXP_FLOOR["float32" if self.dtype == np.float32 else "float64"]
        row_bytes = scores.shape[1] * scores.dtype.itemsize
        self.rows_per_chunk = max(SUB_BLOCK_ROWS, CHUNK_BYTES // row_bytes)

    def column_state(self, potential: np.ndarray) -> np.ndarray:
        return (potential / self.epsilon).astype(self.dtype)  # (K,) g / eps

    def blocks(self) -> Iterator[tuple[slice, np.ndarray]]:
        return row_blocks(self.scores, self.rows_per_chunk)

    def sweep(
        self, block: np.ndarray, rows: slice, state: np.ndarray, update: RowUpdate
    ) -> BlockSweep:
        n_rows, n_cols = block.shape
        n_blocks = -(-n_rows // SUB_BLOCK_ROWS)
        previous = update.rows(rows)
        row_potential = np.empty(n_rows)  # f, score units
        col_sum = np.empty((n_blocks, n_cols))
        col_peak = np.empty((n_blocks, n_cols))
        block_stats = np.empty((n_blocks, 3))
        block = np.ascontiguousarray(block, dtype=self.storage)
        with threads(self.n_threads):
            _log_sweep(
                block,
                self.log_a[rows],
                self.a[rows],
                state,
                self.dtype(1.0 / self.epsilon),
                _previous_rows(previous),
                self.epsilon,
                float(update.omega),
                previous is not None,
                *_virtual_args(update, rows),
                row_potential,
                col_sum,
                col_peak,
                block_stats,
            )

        def exact_log_peaks() -> np.ndarray:  # (sub-blocks, K), for starved columns
            peaks = np.empty_like(col_peak)
            with threads(self.n_threads):
                _log_column_peaks(block, row_potential, state, 1.0 / self.epsilon, peaks)
            return peaks

        columns = sub_block_partial(col_sum, col_peak, block_stats, self.exp_floor, exact_log_peaks)
        return BlockSweep(row_potential, columns, float(np.sum(block_stats[:, 0])))


def _virtual_args(update: RowUpdate, rows: slice) -> tuple[np.ndarray, bool]:
    """The virtual column's log entries of the rows (a placeholder when there is none)."""
    virtual = update.virtual_rows(rows)
    if virtual is None:
        return np.zeros(1), False
    return np.ascontiguousarray(virtual, dtype=np.float64), True


def _previous_rows(previous: np.ndarray | None) -> np.ndarray:
    """The rows' previous f in score units (the kernels divide by eps as they read
    it), or a placeholder of size 1 when the update is not relaxed."""
    if previous is None:
        return np.zeros(1)
    return np.ascontiguousarray(previous, dtype=np.float64)


def sub_block_partial(
    col_sum: np.ndarray,
    col_peak: np.ndarray,
    block_stats: np.ndarray,
    exp_floor: float,
    exact_log_peaks: Callable[[], np.ndarray] | None = None,
) -> ColumnPartial:
    """Sub-block column partials (blocks, K), each by the starved-column rule, summed
    in a fixed order into one (K,).

    A starved column's peak, read from entries clamped at ``e^exp_floor``, is only a
    bound far below its largest entry: a column shifted by a constant far beyond
    ``epsilon`` would then move its potential by about ``-exp_floor eps`` a pass.
    ``exact_log_peaks`` gives the log of each column's largest entry exactly (computed
    only when a column is starved), so that the column update lands within
    ``log rows`` of its mass in one pass, as the log domain's does."""
    # column_partial's limit, summed in its order; log is monotone, so the smallest
    # peak of each block passing the test means every peak passes it: one log per block
    limit = exp_floor + np.log(block_stats[:, 2:3]) + STARVED_MARGIN + block_stats[:, 1:2]
    with np.errstate(divide="ignore"):
        if (np.log(col_peak.min(axis=1, keepdims=True)) > limit).all():  # none starved
            return ColumnPartial(np.zeros(col_sum.shape[1]), col_sum.sum(axis=0))
        log_peak = np.log(col_peak)  # (blocks, K)
    if exact_log_peaks is not None:
        log_peak = np.where(log_peak > limit, log_peak, exact_log_peaks())
    partial = column_partial(
        col_sum,
        log_peak,
        exp_floor=exp_floor,
        log_rows=np.log(block_stats[:, 2:3]),
        log_max_scale=block_stats[:, 1:2],
    )
    if not np.any(partial.log_max):  # no starved column: a plain sum
        return ColumnPartial(np.zeros(col_sum.shape[1]), np.sum(col_sum, axis=0))
    return partial.total()


@njit(parallel=True, cache=True)
def _log_column_peaks(scores, row_potential, g_scaled, inv_eps, peaks):
    """``peaks[b, j] = max_{i in sub-block b} (S_ij + f_i) / eps + g_j / eps`` in float64:
    the log of each column's largest plan entry, however far below ``exp``'s range."""
    n_rows, n_cols = scores.shape
    for b in prange(peaks.shape[0]):
        out = peaks[b]
        out[:] = -np.inf
        for i in range(b * SUB_BLOCK_ROWS, min(n_rows, (b + 1) * SUB_BLOCK_ROWS)):
            row, f_scaled = scores[i], row_potential[i] * inv_eps
            for j in range(n_cols):
                out[j] = max(out[j], np.float64(row[j]) * inv_eps + f_scaled)
        for j in range(n_cols):
            out[j] += np.float64(g_scaled[j])


@njit(parallel=True, cache=True)
def _row_extremes(scores, maxima, minima):
    """Each row's maximum and minimum in float64; NaN or inf shows as non-finite."""
    for i in prange(scores.shape[0]):
        row = scores[i]
        high, low = _max_min(row)
        bad = not math.isfinite(_zero_probe(row))
        maxima[i] = np.nan if bad else np.float64(high)
        minima[i] = np.nan if bad else np.float64(low)


@njit(parallel=True, cache=True)
def _strided_rows(scores, stride, rows):
    """``rows[r] = scores[r * stride]``, parallel over rows (2-D indices: no view per row)."""
    for r in prange(rows.shape[0]):
        source = r * stride
        for j in range(rows.shape[1]):
            rows[r, j] = scores[source, j]


@njit(parallel=True, cache=True)
def _nonfinite_rows(scores, bad):
    """``bad[i]``: row i holds a NaN or an infinite score."""
    for i in prange(scores.shape[0]):
        bad[i] = not math.isfinite(_zero_probe(scores[i]))


@njit(fastmath=True, cache=True)
def _max_min(row):
    """The row's largest and smallest entries (vectorised; finiteness checked apart)."""
    high = low = row[0]
    for j in range(row.size):
        high = max(high, row[j])
        low = min(low, row[j])
    return high, low


@njit(fastmath={"reassoc"}, cache=True)
def _zero_probe(row):
    """``sum_j (x_j - x_j)``: 0 for finite entries, NaN as soon as one is NaN or
    infinite (only ``reassoc``, so that the compiler may not assume them finite)."""
    probe = row[0] - row[0]
    for j in range(row.size):
        probe += row[j] - row[j]
    return np.float64(probe)


def row_extremes(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Parallel row maxima and minima (one read), float64."""
    maxima, minima = np.empty(scores.shape[0]), np.empty(scores.shape[0])
    for rows, block in row_blocks(
        scores, max(1, CHUNK_BYTES // (scores.shape[1] * scores.itemsize))
    ):
        _row_extremes(np.ascontiguousarray(block), maxima[rows], minima[rows])
    return maxima, minima


# --------------------------------------------------------------------------
# The stored kernel: dense or sparse, float32
# --------------------------------------------------------------------------

#: The stabilised scaling kernel absorbs a row or the columns into the stored
#: kernel when their scaling leaves [e^-ABSORB, e^ABSORB].
ABSORB = 20.0
_ABSORB_LOW, _ABSORB_HIGH = math.exp(-ABSORB), math.exp(ABSORB)
#: Rows per parallel task of the stored sweeps (fixed: results do not depend on
#: the thread count; at most 2^15, a sparse kernel's task rows are int16); float32
#: column partials are flushed to float64 every FLUSH_ROWS rows.
TASK_ROWS = 4096
FLUSH_ROWS = 64
#: Rows of the dense stored kernel whose dots read them side by side (divides
#: FLUSH_ROWS; :func:`_group_dots` and :func:`_group_columns` are written for four):
#: four streams from memory keep more reads in flight than one row at a time.  Rows
#: shorter than GROUP_COLS go one by one: there the row updates, which run while
#: no read is in flight, weigh more (a pass on 1 000 000 x 400 took 146 ms one
#: row at a time and 173 ms by groups; 500 columns: 193 and 187 ms, within the
#: noise; 1 000: 257 and 219 ms; medians of 8, interleaved, Intel Xeon host).
ROW_GROUP = 4
GROUP_COLS = 512
_NO_EXP = {"contract", "reassoc", "nsz", "nnan", "arcp"}
#: The stored kernel is kept sparse (its entries above the flush, CSR) when at
#: most this fraction of the N x K entries survive the flush.
SPARSE_DENSITY = 0.1
#: Stored entries at or below ``e^FLUSH_EXPONENT`` (relative to their row's largest when
#: the kernel is built) are flushed to zero.  Products with the column scalings
#: (``[e^-ABSORB, e^ABSORB]``) and the scaled row factors (``[e^-ABSORB, K]``, see
#: :func:`_stored_row`) then stay normal float32 numbers: no subnormal arithmetic,
#: whose slow path costs several times a normal multiply.  A flushed entry is below
#: ``e^-(-FLUSH_EXPONENT - drift)`` of its row's mass while the potential has drifted
#: at most ``drift`` since (:func:`rebuild_drift`).
FLUSH_EXPONENT = -60.0
_FLUSH = math.exp(FLUSH_EXPONENT)


def rebuild_drift(n_cols: int, tol: float) -> float:
    """How far ``g / eps`` may move (spread of the change, ``max_k - min_k``) from
    where a stored kernel was built before it is built again from the scores.

    A flushed entry was below ``e^FLUSH_EXPONENT`` of its row's largest; after a
    drift ``D`` it is below ``e^(FLUSH_EXPONENT + D)``, and a row's K entries
    below ``K e^(FLUSH_EXPONENT + D)`` of its mass.  ``D`` is chosen so that this
    is ``tol / 10``: the mass the kept entries miss moves the error reported by
    at most a tenth of ``tol`` (40 at K = 3000 and tol = 1e-4), and kept within
    [20, 40] (the argmax from the kept entries needs less than 59)."""
    drift = -FLUSH_EXPONENT - math.log(10.0 * n_cols / tol)
    return min(max(drift, 20.0), 40.0)


def _drifted(built_at: np.ndarray, g_scaled: np.ndarray, limit: float) -> bool:
    """Whether ``g / eps`` moved more than ``limit`` (spread) from where a stored
    kernel was built (:func:`rebuild_drift`)."""
    change = g_scaled - built_at  # (K,)
    return bool(change.max() - change.min() > limit)


@njit(fastmath=_NO_EXP, cache=True, inline="always")
def _row_dot(values, first, n_cols, v):
    """``sum_j values[first + j] v[j]`` over a dense row, summed in float64.

    ``first`` is unsigned (``np.uint64``): with a signed offset every index gets a
    negative-index test, and the loop ran unvectorised at 5 GB/s instead of 38 GB/s
    (100 000 x 3 000, 2 threads, read probe 32-48 GB/s).  With ``reassoc`` the
    compiler splits the sum over vector lanes.
    """
    total = 0.0
    for j in range(n_cols):
        total += np.float64(values[first + np.uint64(j)]) * v[j]
    return total


@njit(fastmath=_NO_EXP, cache=True, inline="always")
def _group_dots(values, first, width, n_cols, v, dots):
    """:func:`_row_dot` of the ROW_GROUP rows from ``first`` (row stride ``width``) into
    ``dots``, read side by side: four streams from memory instead of one."""
    second = first + width
    third = second + width
    fourth = third + width
    total_0 = total_1 = total_2 = total_3 = 0.0
    for j in range(n_cols):
        column, v_j = np.uint64(j), v[j]
        total_0 += np.float64(values[first + column]) * v_j
        total_1 += np.float64(values[second + column]) * v_j
        total_2 += np.float64(values[third + column]) * v_j
        total_3 += np.float64(values[fourth + column]) * v_j
    dots[0], dots[1], dots[2], dots[3] = total_0, total_1, total_2, total_3


@njit(fastmath=_NO_EXP, cache=True, inline="always")
def _row_columns(partial, values, first, n_cols, factor):
    """``partial[j] += values[first + j] factor``: one row's share of the column sums."""
    for j in range(n_cols):
        partial[j] += values[first + np.uint64(j)] * factor


@njit(fastmath=_NO_EXP, cache=True, inline="always")
def _group_columns(partial, values, first, width, n_cols, factors):
    """``partial[j] += sum_r values[row r, j] factors[r]`` over the ROW_GROUP rows from
    ``first``, which the dots have just brought into the core's cache."""
    second = first + width
    third = second + width
    fourth = third + width
    q_0, q_1, q_2, q_3 = factors[0], factors[1], factors[2], factors[3]
    for j in range(n_cols):
        column = np.uint64(j)
        partial[j] += (values[first + column] * q_0 + values[second + column] * q_1) + (
            values[third + column] * q_2 + values[fourth + column] * q_3
        )


@njit(fastmath=_NO_EXP, cache=True, inline="always")
def _stored_row(
    values, first, last, row_sum, f_ref, i, log_a, a, previous, omega, relaxed, virtual,
    has_virtual, q_scale,
):  # fmt: skip
    """Row ``i``'s update on the stored kernel: ``(q_i C, f_i / eps, row error, absorbed)``.

    The row's plan is ``G_ik v_k exp(f_i/eps - f_ref_i)`` for its entries
    ``values[first:last]``, and ``row_sum`` is ``sum_k G_ik v_k``.  If that left
    [e^-ABSORB, e^ABSORB], the row is rescaled in place and its reference moves
    with it.  The row's factor ``q_i`` comes back scaled by ``C = q_scale`` (the
    kernel's ``N K``), which keeps ``G_ik q_i C`` a normal float32 number (``q_i``
    is of order ``a_i``); the kernel divides the column sums by ``C``.  Scalars
    and index ranges only: no array views per row (each would touch a shared
    reference count from every thread).
    """
    absorbed = 0
    if not _ABSORB_LOW <= row_sum <= _ABSORB_HIGH:
        scale = np.float32(1.0 / row_sum)
        tiny, zero = np.float32(_FLUSH), np.float32(0.0)
        for e in range(first, last):
            value = values[e] * scale
            values[e] = value if value > tiny else zero  # no subnormals
        f_ref[i] -= math.log(row_sum)
        row_sum, absorbed = 1.0, 1
    f, error, factor = _row_update(
        row_sum, f_ref[i], log_a, a, previous, omega, relaxed, virtual, has_virtual
    )
    return np.float32(factor * q_scale), f, error, absorbed


@njit(parallel=True, fastmath=_NO_EXP, cache=True)
def _dense_sweep(
    kernel,
    v,
    log_a,
    a,
    f_ref,
    previous,
    epsilon,
    omega,
    relaxed,
    virtual,
    has_virtual,
    row_potential,
    col_sum,
    task_stats,
    q_scale,
):
    """One pass on the dense stored kernel ``G`` (n, K) float32, parallel over tasks.

    Writes ``f`` (score units); per task its column sums of ``G_ik q_i`` and
    ``(row error, rows absorbed)``.  Rows of GROUP_COLS or more go in groups of
    ROW_GROUP (the task's last rows one by one): the group's dots read its rows
    from memory side by side, then its column accumulation reads them from the
    core's cache.  One row at a time, each thread kept one read in flight; on a
    2-core Intel Xeon host a pass on 200 000 x 3 000 took 420 ms one row at a time
    and 281 ms by groups, on 40 000 x 20 000 293 and 191 ms (medians, interleaved,
    the same outputs).  Offsets are unsigned (see :func:`_row_dot`);
    the float32 column partials are flushed to float64 every FLUSH_ROWS rows.
    """
    n_rows, n_cols = kernel.shape
    flat = kernel.reshape(kernel.size)  # rows as index ranges: no view per row
    width = np.uint64(n_cols)
    for t in prange(col_sum.shape[0]):
        sums = col_sum[t]
        sums[:] = 0.0
        partial = np.zeros(n_cols, dtype=np.float32)  # (K,)
        dots, factors = np.empty(ROW_GROUP), np.empty(ROW_GROUP, dtype=np.float32)
        row_error, absorbed = 0.0, 0
        first, last = t * TASK_ROWS, min(n_rows, (t + 1) * TASK_ROWS)
        row = first
        while row < last:
            start = np.uint64(row) * width
            grouped = n_cols >= GROUP_COLS and row + ROW_GROUP <= last
            if grouped:
                _group_dots(flat, start, width, n_cols, v, dots)
            else:
                dots[0] = _row_dot(flat, start, n_cols, v)
            n_group = ROW_GROUP if grouped else 1
            for k in range(n_group):
                i, row_first = row + k, start + np.uint64(k) * width
                factors[k], f, error, was_absorbed = _stored_row(
                    flat, row_first, row_first + width, dots[k],
                    f_ref, i, log_a[i], a[i], previous[i] / epsilon if relaxed else 0.0,
                    omega, relaxed,
                    virtual[i] if has_virtual else 0.0, has_virtual, q_scale,
                )  # fmt: skip
                row_potential[i] = epsilon * f
                row_error += error
                absorbed += was_absorbed
            if grouped:
                _group_columns(partial, flat, start, width, n_cols, factors)
            else:
                _row_columns(partial, flat, start, n_cols, factors[0])
            row += n_group
            if (row - first) % FLUSH_ROWS == 0 or row == last:
                for j in range(n_cols):
                    sums[j] += partial[j]
                    partial[j] = 0.0
        task_stats[t, 0] = row_error
        task_stats[t, 1] = absorbed


@njit(parallel=True, fastmath=_NO_EXP, cache=True)
def _sparse_sweep(
    indptr,
    indices,
    values,
    task_rows,
    v,
    log_a,
    a,
    f_ref,
    previous,
    epsilon,
    omega,
    relaxed,
    virtual,
    has_virtual,
    row_potential,
    col_sum,
    task_stats,
    q_scale,
):
    """:func:`_dense_sweep` on the kept entries only: the same row update, the same tasks.

    A task's entries are contiguous: its rows' dots are taken in one loop over them
    (each adds into its row's slot, ``task_rows``), then the row updates, then the
    column sums in one more loop.  A loop per row, of a few entries, missed its
    exit branch on about every row: 31.3 -> 23.4 ms per pass on the 1 281 167 x
    3 000 ImageNet sela kernel (3.5 entries per row).  Unsigned entry offsets and
    column indices: signed ones get a negative-index test per access."""
    n_rows = indptr.size - 1
    for t in prange(col_sum.shape[0]):
        sums = col_sum[t]
        sums[:] = 0.0
        first_row, last_row = t * TASK_ROWS, min(n_rows, (t + 1) * TASK_ROWS)
        first_entry, last_entry = np.uint64(indptr[first_row]), np.uint64(indptr[last_row])
        row_sums = np.zeros(TASK_ROWS)  # (TASK_ROWS,) sum_k G_ik v_k of the task's rows
        factors = np.empty(TASK_ROWS, dtype=np.float32)  # q_i C of the task's rows
        for e in range(first_entry, last_entry):
            row_sums[task_rows[e]] += np.float64(values[e]) * v[np.uint64(indices[e])]
        row_error, absorbed = 0.0, 0
        for i in range(first_row, last_row):
            first, last = np.uint64(indptr[i]), np.uint64(indptr[i + 1])  # no sign tests
            q, f, error, was_absorbed = _stored_row(
                values, first, last, row_sums[i - first_row], f_ref, i, log_a[i], a[i],
                previous[i] / epsilon if relaxed else 0.0, omega, relaxed,
                virtual[i] if has_virtual else 0.0, has_virtual, q_scale,
            )  # fmt: skip
            row_potential[i] = epsilon * f
            factors[i - first_row] = q
            row_error += error
            absorbed += was_absorbed
        for e in range(first_entry, last_entry):
            sums[np.uint64(indices[e])] += values[e] * factors[task_rows[e]]
        task_stats[t, 0] = row_error
        task_stats[t, 1] = absorbed


@njit(parallel=True, fastmath={"contract"}, cache=True)
def _build_dense(scores, g_ref, inv_eps, kernel, f_ref):
    """``G_ik = exp(S_ik / eps + g_ref_k - m_i)`` in float32, ``m_i`` the row's maximum.

    Writes ``f_ref_i = -m_i`` (references in units of eps): every row of ``G``
    peaks at exactly 1.  Entries at the clamp of ``exp`` are flushed to zero
    (they add no mass).  ``scores`` and ``kernel`` may be the same array.
    """
    n_rows, n_cols = scores.shape
    g32 = g_ref.astype(np.float32)
    scale = np.float32(inv_eps)
    tiny, zero = np.float32(_FLUSH), np.float32(0.0)
    for i in prange(n_rows):
        row, out = scores[i], kernel[i]
        row_max = shifted_max(row, scale, g32)
        f_ref[i] = -row_max
        for j in range(n_cols):
            value = exp_neg(row[j] * scale + g32[j] - row_max)
            out[j] = value if value > tiny else zero


@njit(parallel=True, fastmath=_NO_EXP, cache=True)
def _scale_columns(kernel, factor):
    """``G_ik *= factor_k``, flushing what falls below the smallest normal float32."""
    tiny, zero = np.float32(_FLUSH), np.float32(0.0)
    for i in prange(kernel.shape[0]):
        row = kernel[i]
        for j in range(kernel.shape[1]):
            value = row[j] * factor[j]
            row[j] = value if value > tiny else zero


@dataclass
class SparseKernel:
    """The stored kernel's entries above the flush threshold, row by row (CSR),
    with the scores they came from (for the exact finish)."""

    indptr: np.ndarray  # (N + 1,) int64
    indices: np.ndarray  # (nnz,) int16 or int32 column of each entry
    values: np.ndarray  # (nnz,) float32 G_ik
    scores: np.ndarray  # (nnz,) S_ik of each entry, in the scores' dtype
    shape: tuple[int, int]
    built_at: np.ndarray  # (K,) g / eps where the entries were chosen
    task_rows: np.ndarray  # (nnz,) int16 each entry's row within its pass task (i % TASK_ROWS)


#: Rows per parallel task of :func:`_collect_kept`: each task picks the run length of a
#: row from the number of entries its previous row kept.
COLLECT_ROWS = 16


@njit(parallel=True, fastmath={"contract"}, cache=True)
def _collect_kept(scores, g_ref, inv_eps, f_ref, counts, indices, values, kept_scores):
    """The kept entries of ``G`` (as :func:`_build_dense` makes it: those whose
    exponent is above FLUSH_EXPONENT, the same float32 values) in one read of each
    row: row ``i``'s go to the start of its own slot ``[i K, (i + 1) K)`` of the
    staging arrays, their number to ``counts[i]``, ``-m_i`` to ``f_ref[i]``."""
    n_rows, n_cols = scores.shape
    g32 = g_ref.astype(np.float32)
    scale, floor = np.float32(inv_eps), np.float32(FLUSH_EXPONENT)
    for t in prange(-(-n_rows // COLLECT_ROWS)):
        previous_kept = 0
        for i in range(t * COLLECT_ROWS, min(n_rows, (t + 1) * COLLECT_ROWS)):
            row = scores[i]
            row_max = shifted_max(row, scale, g32)
            f_ref[i] = -row_max
            first = i * n_cols
            # two calls, each with a constant run length: inlined, the run test then has
            # a constant trip count and is vectorised (one call with the length chosen
            # at run time built the kernel 1.3-2.5x slower)
            if previous_kept * LONG_RUN < n_cols:  # few kept: most runs are empty
                last = _fill_row(row, g32, scale, floor, row_max, first, indices, values,
                                 kept_scores, LONG_RUN)  # fmt: skip
            else:
                last = _fill_row(row, g32, scale, floor, row_max, first, indices, values,
                                 kept_scores, SHORT_RUN)  # fmt: skip
            previous_kept = last - first
            counts[i] = previous_kept


#: Columns that :func:`_fill_row` tests at once (vectorised) before it looks at each:
#: short runs where a row keeps many entries, long ones where it keeps few (most long
#: runs then keep nothing and are skipped whole).
SHORT_RUN, LONG_RUN = 32, 128
#: A run that keeps some entry is tested again in parts of this many columns (one
#: vector compare each), and only the parts that keep some are looked at one by one.
PART_RUN = 16


@njit(parallel=True, cache=True)
def _gather_kept(indptr, n_cols, first_row, stage_indices, stage_values, stage_scores, indices,
                 values, kept_scores, task_rows):  # fmt: skip
    """Each row's kept entries from its staging slot (:func:`_collect_kept`) to its
    place ``indptr[i]:indptr[i + 1]`` in the kernel's arrays, with the row's place in
    its pass task (``(first_row + i) % TASK_ROWS``) in ``task_rows``."""
    for i in prange(indptr.size - 1):
        first, count = indptr[i], indptr[i + 1] - indptr[i]
        slot = i * n_cols
        task_row = np.int16((first_row + i) % TASK_ROWS)
        for e in range(count):
            indices[first + e] = stage_indices[slot + e]
            values[first + e] = stage_values[slot + e]
            kept_scores[first + e] = stage_scores[slot + e]
            task_rows[first + e] = task_row


@njit(fastmath={"contract"}, cache=True, inline="always")
def _fill_row(row, g32, scale, floor, row_max, position, indices, values, kept_scores, run_length):
    """One row's kept entries from ``position`` on, tested ``run_length`` columns at a
    time; returns the position after the last."""
    n_cols = row.size
    n_runs = n_cols // run_length
    tiny, zero = np.float32(_FLUSH), np.float32(0.0)
    for run in range(n_runs + 1):
        first = run * run_length
        last = min(first + run_length, n_cols)
        if run < n_runs and not _any_kept(row, g32, scale, floor, row_max, first, run_length):
            continue
        for part in range(first, last, PART_RUN):  # a run that keeps some: parts of it
            part_last = min(part + PART_RUN, last)
            if part_last - part == PART_RUN and not _any_kept(
                row, g32, scale, floor, row_max, part, PART_RUN
            ):
                continue
            for j in range(part, part_last):
                exponent = row[j] * scale + g32[j] - row_max
                if exponent <= floor:
                    continue
                value = exp_neg(exponent)
                indices[position] = j
                values[position] = value if value > tiny else zero
                kept_scores[position] = row[j]
                position += 1
    return position


@njit(fastmath={"contract"}, cache=True, inline="always")
def _any_kept(row, g32, scale, floor, row_max, first, length):
    """Whether an entry of ``row[first:first + length]`` is kept (``length`` a constant
    where inlined: a fixed trip count, vectorised)."""
    hit = False
    for j in range(first, first + length):
        hit |= row[j] * scale + g32[j] - row_max > floor
    return hit


@njit(parallel=True, fastmath=_NO_EXP, cache=True)
def _scale_sparse_columns(indptr, indices, values, factor):
    """:func:`_scale_columns` on the kept entries."""
    tiny, zero = np.float32(_FLUSH), np.float32(0.0)
    for i in prange(indptr.size - 1):
        for e in range(indptr[i], indptr[i + 1]):
            value = values[e] * factor[indices[e]]
            values[e] = value if value > tiny else zero


def _index_dtype(n_cols: int) -> np.dtype:
    return np.dtype(np.int16 if n_cols <= np.iinfo(np.int16).max else np.int32)


#: The error at which :class:`NumbaKernel` builds its stored kernel (unless it is
#: told to build it at once, or at another error).
SWITCH_ERROR = 1e-2
SUBSAMPLE_SWITCH_ERROR = 1.0


class NumbaKernel(Kernel):
    """Log domain until the duals settle, then a stored, stabilised scaling kernel.

    The exact log-domain sweep pays one ``exp`` per element; the stored kernel
    ``G = exp((S + f + g)/eps)`` (float32, relative to the current ``g`` and to
    each row's maximum, so that every row of ``G`` peaks at 1) needs two
    multiply-adds per element.  It is built once the iterate's error is at most
    :data:`SWITCH_ERROR`: entries it flushes to zero are then below ``e^-60`` of
    their row's plan, and stay negligible while the duals settle: ``G`` is built
    again from the scores once ``g`` has moved, since it was built, by more than
    ``drift`` (in units of eps, :func:`rebuild_drift`), so the flushed mass stays
    below a tenth of ``tol`` (a row or the columns are absorbed into ``G`` whenever
    their scaling leaves ``[e^-20, e^20]``).  When at most
    :data:`SPARSE_DENSITY` of its entries survive the flush (at SeLa's epsilon
    most do not), ``G`` is kept sparse, its kept entries row by row with their
    scores, and the scores are not touched: a pass then reads those entries
    only.  Otherwise ``G`` is dense, in new memory if there is room (else the
    log domain it stays).  It is never built in place of the scores, even with
    ``overwrite_scores=True``: the flushed entries' scores could not be given
    back.  With ``store_at_start`` (a start potential close enough
    that no cluster is starved, e.g. a subsample's) it is built at once; a
    cluster starved anyway (no entry kept, so no mass) makes the iterate
    non-finite, and the solve falls back, warm, to the log domain.

    ``switch_error``: the error at which ``G`` is built (:data:`SWITCH_ERROR`; the
    subsample start's kernel builds it sooner); ``sparse_only``: never a dense ``G``
    (the log domain instead, for good, where a sparse one would hold too many).

    Float32 throughout, so inexact: the solve finishes with exact passes,
    :meth:`finisher` (float64 on the sparse kernel's entries) or the backend's
    precise log kernel on the scores.
    """

    exact = False
    floor = FLOAT32_ERROR_FLOOR

    def __init__(
        self,
        scores: np.ndarray,
        log_a: np.ndarray,
        epsilon: float,
        n_threads: int | None,
        *,
        store_at_start: bool = False,
        tol: float = 1e-4,
        switch_error: float = SWITCH_ERROR,
        sparse_only: bool = False,
    ) -> None:
        self.log_kernel = NumbaLogKernel(scores, log_a, epsilon, n_threads)
        self.switch_error = switch_error  # the error at which G is built (observe)
        self.sparse_only = sparse_only  # never a dense G: the log domain instead
        self.drift = rebuild_drift(scores.shape[1], tol)  # see rebuild_drift
        self.store_at_start = store_at_start  # the start potential is already close
        self.scores, self.log_a, self.epsilon = scores, log_a, epsilon
        self.n_threads = n_threads
        self.stored: np.ndarray | SparseKernel | None = None  # G, dense or sparse
        self.f_ref = self.g_ref = np.zeros(0)  # references, in units of epsilon
        self.g_built = np.zeros(0)  # g / eps where G was built (its flushed set)
        self.can_store = True
        self.q_scale = float(scores.shape[0] * scores.shape[1])  # see _stored_row
        self.a = np.exp(log_a)

    @property
    def method(self) -> str:  # type: ignore[override]
        return "log" if self.stored is None else "scaling"

    @property
    def phase(self) -> str:  # type: ignore[override]
        return "log" if self.stored is None else "stored"

    def column_state(self, potential: np.ndarray) -> np.ndarray:
        if self.stored is None and self.store_at_start and self.can_store:
            self.store_at_start = False  # tried once; else once the iterate is close
            self._store(potential, sparse_only=self.sparse_only)
        if self.stored is not None and _drifted(self.g_built, potential / self.epsilon, self.drift):
            self._rebuild(potential)
        if self.stored is None:
            return self.log_kernel.column_state(potential)
        log_v = potential / self.epsilon - self.g_ref  # (K,)
        if np.abs(log_v).max() > ABSORB:  # absorb the column scaling into G
            self._scale_columns(np.exp(log_v).astype(np.float32))
            self.g_ref = potential / self.epsilon
            log_v = np.zeros_like(log_v)
        return np.exp(log_v).astype(np.float32)  # v

    def _rebuild(self, potential: np.ndarray) -> None:
        """``G`` again from the scores at ``potential`` (far from where it was built)."""
        self.stored = None  # freed before the new one is built
        self._try_store(potential)

    def _try_store(self, g: np.ndarray, *, sparse_only: bool = False) -> None:
        """:meth:`_store`; where no kernel could be stored, the log domain for good."""
        self._store(g, sparse_only=sparse_only or self.sparse_only)
        self.can_store = self.stored is not None

    def _scale_columns(self, factor: np.ndarray) -> None:
        with threads(self.n_threads):
            if isinstance(self.stored, SparseKernel):
                stored = self.stored
                _scale_sparse_columns(stored.indptr, stored.indices, stored.values, factor)
            else:
                _scale_columns(self.stored, factor)

    def blocks(self) -> Iterator[tuple[slice, Any]]:
        if self.stored is None:
            return self.log_kernel.blocks()
        return iter([(slice(0, self.stored.shape[0]), self.stored)])

    def sweep(self, block: Any, rows: slice, state: np.ndarray, update: RowUpdate) -> BlockSweep:
        if self.stored is None:
            return self.log_kernel.sweep(block, rows, state, update)
        n_rows, n_cols = block.shape
        n_tasks = -(-n_rows // TASK_ROWS)
        previous = update.rows(rows)
        row_potential = np.empty(n_rows)  # f, score units
        col_sum = np.empty((n_tasks, n_cols))
        task_stats = np.zeros((n_tasks, 2))
        row_args = (
            state,
            self.log_a[rows],
            self.a[rows],
            self.f_ref,
            _previous_rows(previous),
            self.epsilon,
            float(update.omega),
            previous is not None,
            *_virtual_args(update, rows),
            row_potential,
            col_sum,
            task_stats,
            self.q_scale,
        )
        with threads(self.n_threads):
            if isinstance(block, SparseKernel):
                _sparse_sweep(block.indptr, block.indices, block.values, block.task_rows, *row_args)
            else:
                _dense_sweep(block, *row_args)
        col_mass = col_sum.sum(axis=0) * state / self.q_scale  # (K,) column mass of the plan
        columns = ColumnPartial(np.zeros(n_cols), col_mass)
        return BlockSweep(row_potential, columns, float(task_stats[:, 0].sum()))

    def observe(self, current: Any) -> None:
        """Build the stored kernel once the iterate is close enough."""
        if self.stored is None and self.can_store and current.error <= self.switch_error:
            self._try_store(current.next_potential[: self.scores.shape[1]])  # real clusters

    def finisher(self, potential: np.ndarray | None) -> Kernel | None:
        """The exact float64 sweep on the sparse kernel's entries (None: dense or none).

        With ``potential``, a kernel not yet stored is built there if it is sparse
        (a dense one is left for later: it may replace the scores).
        """
        if self.stored is None and potential is not None and self.can_store:
            self._store(potential[: self.scores.shape[1]], sparse_only=True)  # real clusters
        if not isinstance(self.stored, SparseKernel):
            return None
        return SparseLogKernel(
            self.stored,
            self.scores,
            self.log_a,
            self.epsilon,
            self.n_threads,
            self._sparse_again,
            self.drift,
        )

    def _sparse_again(self, potential: np.ndarray) -> SparseKernel | None:
        """The sparse kernel rebuilt at ``potential`` (None if it is not sparse there)."""
        self.stored = None
        self._store(potential, sparse_only=True)
        return self.stored if isinstance(self.stored, SparseKernel) else None

    def _store(self, g: np.ndarray, *, sparse_only: bool = False) -> None:
        """Build ``G`` at the potential ``g``: sparse when few entries survive the
        flush (at most :data:`SPARSE_DENSITY`), else dense (not with ``sparse_only``,
        nor from a stream), in new memory if there is room; else stay in the log
        domain."""
        g_ref, f_ref = g / self.epsilon, np.empty(self.scores.shape[0])
        sparse = self._sparse(g_ref, f_ref)
        if sparse is not None:
            self.stored = sparse
        elif sparse_only:
            return
        elif isinstance(self.scores, np.ndarray) and (
            self.scores.nbytes < 0.8 * available_memory()
        ):
            target = np.empty(self.scores.shape, dtype=self.scores.dtype)  # C order
            with threads(self.n_threads):
                _build_dense(self.scores, g_ref, 1.0 / self.epsilon, target, f_ref)
            self.stored = target
        else:
            self.can_store = False  # no room, or a stream: the log domain it stays
            return
        self.g_ref, self.f_ref, self.g_built = g_ref, f_ref, g_ref

    def _sparse(self, g_ref: np.ndarray, f_ref: np.ndarray) -> SparseKernel | None:
        """The sparse kernel at ``g_ref`` (units of eps) from one read of the scores
        (array or stream): each row's kept entries are collected in one read of it
        (into a staging slot of K entries per row of the block), then gathered in
        row order.  The entries go into arrays sized for the most that a
        sparse kernel may hold; the pages past the last entry are never touched, so
        they cost no memory.  None once more than :data:`SPARSE_DENSITY` of the
        entries are kept, or more than would fit in memory (the read stops there)."""
        n_rows, n_cols = self.scores.shape
        index_dtype, score_dtype = _index_dtype(n_cols), np.dtype(self.scores.dtype)
        entry_bytes = index_dtype.itemsize + 4 + score_dtype.itemsize + 2  # + task row
        capacity = int(
            min(SPARSE_DENSITY * n_rows * n_cols, 0.8 * available_memory() // entry_bytes)
        )
        indices = np.empty(capacity, dtype=index_dtype)
        values = np.empty(capacity, dtype=np.float32)
        kept_scores = np.empty(capacity, dtype=score_dtype)
        task_rows = np.empty(capacity, dtype=np.int16)
        indptr = np.zeros(n_rows + 1, dtype=np.int64)
        inv_eps, n_kept = 1.0 / self.epsilon, 0
        block_rows = min(n_rows, max(BUILD_MIN_ROWS, BUILD_BYTES // (4 * n_cols)))
        stage = (  # one slot of K entries per row of a block; only its start is touched
            np.empty(block_rows * n_cols, dtype=index_dtype),
            np.empty(block_rows * n_cols, dtype=np.float32),
            np.empty(block_rows * n_cols, dtype=score_dtype),
        )
        for rows, block in row_blocks(self.scores, block_rows):
            block = np.ascontiguousarray(block)  # a stream's block, or a view: no copy
            pointers = indptr[rows.start : rows.stop + 1]  # (rows + 1,), from 0
            with threads(self.n_threads):
                _collect_kept(block, g_ref, inv_eps, f_ref[rows], pointers[1:], *stage)
            pointers[0] = 0  # block positions first
            np.cumsum(pointers[1:], out=pointers[1:])
            block_kept = int(pointers[-1])
            if n_kept + block_kept > capacity:
                return None  # too dense for a sparse kernel
            entries = slice(n_kept, n_kept + block_kept)
            with threads(self.n_threads):
                _gather_kept(
                    pointers, n_cols, rows.start, *stage, indices[entries], values[entries],
                    kept_scores[entries], task_rows[entries],
                )  # fmt: skip
            pointers += n_kept  # global positions
            n_kept += block_kept
        shape = (int(n_rows), int(n_cols))
        kept = slice(0, n_kept)
        return SparseKernel(
            indptr, indices[kept], values[kept], kept_scores[kept], shape, g_ref, task_rows[kept]
        )


# --------------------------------------------------------------------------
# The exact finish on the sparse kernel's entries
# --------------------------------------------------------------------------


@njit(parallel=True, fastmath=_ELEMENTS, cache=True)
def _sparse_log_sweep(
    indptr,
    indices,
    kept_scores,
    log_a,
    a,
    g_scaled,
    inv_eps,
    previous,
    epsilon,
    omega,
    relaxed,
    virtual,
    has_virtual,
    row_potential,
    col_sum,
    col_peak,
    task_stats,
):
    """The log-domain sweep in float64 on the kept entries' scores, parallel over tasks."""
    n_rows, n_cols = indptr.size - 1, g_scaled.size
    for t in prange(col_sum.shape[0]):
        sums, peaks = col_sum[t], col_peak[t]
        sums[:] = 0.0
        peaks[:] = 0.0
        values = np.empty(n_cols)
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
            f, error, scale = _row_update(
                total,
                -row_max,
                log_a[i],
                a[i],
                previous[i] / epsilon if relaxed else 0.0,
                omega,
                relaxed,
                virtual[i] if has_virtual else 0.0,  # a placeholder of size 1 otherwise
                has_virtual,
            )
            row_potential[i] = epsilon * f
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


@njit(parallel=True, cache=True)
def _sparse_argmax(indptr, indices, kept_scores, potential, labels):
    """``argmax_k (S_ik + g_k)`` over each row's kept entries (in column order: the
    first index on ties), in float64 as the dense passes of the rounding."""
    for i in prange(labels.size):
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
        self.a = np.exp(log_a)

    def column_state(self, potential: np.ndarray) -> np.ndarray:
        if self.dense is None and _drifted(
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
        n_rows, n_cols = block.shape
        n_tasks = -(-n_rows // TASK_ROWS)
        previous = update.rows(rows)
        row_potential = np.empty(n_rows)  # f, score units
        col_sum = np.empty((n_tasks, n_cols))
        col_peak = np.empty((n_tasks, n_cols))
        task_stats = np.empty((n_tasks, 3))
        with threads(self.n_threads):
            _sparse_log_sweep(
                block.indptr,
                block.indices,
                block.scores,
                self.log_a[rows],
                self.a[rows],
                state,
                1.0 / self.epsilon,
                _previous_rows(previous),
                self.epsilon,
                float(update.omega),
                previous is not None,
                *_virtual_args(update, rows),
                row_potential,
                col_sum,
                col_peak,
                task_stats,
            )
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
        with threads(self.n_threads):
            _sparse_argmax(
                block.indptr, block.indices, block.scores, np.asarray(potential, np.float64), labels
            )
        return labels

    def _go_dense(self) -> Kernel:
        """Every entry of the scores from now on, in float64: the exact log kernel."""
        self.dense = NumbaLogKernel(
            self.scores, self.log_a, self.epsilon, self.n_threads, precise=True
        )
        return self.dense


@contextmanager
def threads(count: int | None) -> Iterator[None]:
    """Run Numba's parallel loops on ``count`` threads (None: all).

    Numba's thread count is a per-thread setting: this changes it for the
    calling thread only, and restores it.
    """
    if count is None:
        yield
        return
    before = numba.get_num_threads()
    numba.set_num_threads(min(count, getattr(numba.config, "NUMBA_NUM_THREADS", count)))
    try:
        yield
    finally:
        numba.set_num_threads(before)
