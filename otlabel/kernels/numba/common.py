"""What every Numba sweep shares: the row update, the stored row, the rows' terms,
the sub-block column partials, the thread count, and the constants they agree on.

Every sweep (log domain, dense stored kernel, sparse stored kernel, and the
exact float64 sweep on the sparse kernel's entries) computes its row update
with :func:`update_row` (:func:`row_update` on the block's :class:`RowTerms`) and
writes into a :class:`Frame`; the two stored sweeps share :func:`stored_row` (the
row's sum and the absorption of its scaling).

Numba's cache (``cache=True``) keys each compiled function on its own file only:
after an edit here, the sweeps in the other files that inline these functions keep
their cached code until their own files change (touch them, or clear
``__pycache__``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, NamedTuple

import numba
import numpy as np
from numba import njit

from ...solver import STARVED_MARGIN, ColumnPartial, RowUpdate, column_partial

#: Fast-math flags: reductions over a row (vectorised sums and maxima), the element
#: loops of the log sweeps, and the stored sweeps (no ``exp`` in their loops).
REDUCE = {"contract", "reassoc", "nsz", "nnan"}
ELEMENTS = {"contract", "nnan"}
NO_EXP = {"contract", "reassoc", "nsz", "nnan", "arcp"}
#: Rows per parallel sub-block of the log sweep (its partials: K float64 sums and maxima).
SUB_BLOCK_ROWS = 512
#: Rows handed to one ``sweep`` call: the loop's blocks (chunks of the matrix).
CHUNK_BYTES = 1 << 30
#: Rows per parallel task of the stored sweeps and the exact sparse sweep (fixed:
#: results do not depend on the thread count; at most 2^15, a sparse kernel's task
#: rows are int16).
TASK_ROWS = 4096
#: The stabilised scaling kernel absorbs a row or the columns into the stored
#: kernel when their scaling leaves [e^-ABSORB, e^ABSORB].
ABSORB = 20.0
_ABSORB_LOW, _ABSORB_HIGH = math.exp(-ABSORB), math.exp(ABSORB)
#: Stored entries at or below ``e^FLUSH_EXPONENT`` (relative to their row's largest when
#: the kernel is built) are flushed to zero.  Products with the column scalings
#: (``[e^-ABSORB, e^ABSORB]``) and the scaled row factors (``[e^-ABSORB, K]``, see
#: :func:`stored_row`) then stay normal float32 numbers: no subnormal arithmetic,
#: whose slow path costs several times a normal multiply.  A flushed entry is below
#: ``e^-(-FLUSH_EXPONENT - drift)`` of its row's mass while the potential has drifted
#: at most ``drift`` since (:func:`rebuild_drift`).
FLUSH_EXPONENT = -60.0
#: ``e^FLUSH_EXPONENT``: a stored entry at or below it is zero.
FLUSH = math.exp(FLUSH_EXPONENT)


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


def drifted(built_at: np.ndarray, g_scaled: np.ndarray, limit: float) -> bool:
    """Whether ``g / eps`` moved more than ``limit`` (spread) from where a stored
    kernel was built (:func:`rebuild_drift`)."""
    change = g_scaled - built_at  # (K,)
    return bool(change.max() - change.min() > limit)


# --------------------------------------------------------------------------
# The row update: one formula for every sweep
# --------------------------------------------------------------------------


@njit(inline="always", cache=True)
def row_update(row_sum, frame, log_a, a, previous, omega, relaxed, virtual, has_virtual):
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


@njit(fastmath=REDUCE, cache=True)
def float64_sum(values):
    """``sum_j values[j]`` in float64."""
    total = 0.0
    for j in range(values.size):
        total += values[j]
    return total


@njit(inline="always", cache=True)
def update_row(terms, i, row_sum, frame, row_potential):
    """Row ``i``'s :func:`row_update` with its terms from the block's :class:`RowTerms`:
    writes its ``f`` (score units) to ``row_potential[i]``, returns ``(row error, scale)``.
    For the log sweeps, compiled without ``reassoc`` (the stored ones: :func:`stored_row`)."""
    f, error, scale = row_update(
        row_sum,
        frame,
        terms.log_a[i],
        terms.a[i],
        terms.previous[i] / terms.epsilon if terms.relaxed else 0.0,
        terms.omega,
        terms.relaxed,
        terms.virtual[i] if terms.has_virtual else 0.0,  # a placeholder of size 1 otherwise
        terms.has_virtual,
    )
    row_potential[i] = terms.epsilon * f
    return error, scale


@njit(fastmath=NO_EXP, cache=True, inline="always")
def stored_row(
    values, first, last, row_sum, f_ref, i, q_scale, terms, epsilon, omega, row_potential
):
    """Row ``i``'s update on the stored kernel: writes its ``f`` (score units) to
    ``row_potential[i]``, returns ``(q_i C, row error, absorbed)``.

    The row's plan is ``G_ik v_k exp(f_i/eps - f_ref_i)`` for its entries
    ``values[first:last]``, and ``row_sum`` is ``sum_k G_ik v_k``.  If that left
    [e^-ABSORB, e^ABSORB], the row is rescaled in place and its reference moves
    with it.  The row's factor ``q_i`` comes back scaled by ``C = q_scale`` (the
    kernel's ``N K``), which keeps ``G_ik q_i C`` a normal float32 number (``q_i``
    is of order ``a_i``); the kernel divides the column sums by ``C``.  Scalars
    and index ranges only: no array views per row (each would touch a shared
    reference count from every thread).

    ``epsilon`` and ``omega`` are the sweep's own scalars, read from ``terms`` before
    its parallel loop, and the row's terms are read before the absorption: under
    the stored sweeps' ``reassoc``, LLVM orders a sum's or a product's operands by
    where they are defined, and read from the bundle inside the loop they gave ``f``
    (relaxed) other last bits than the arguments they replace.
    """
    log_a, a = terms.log_a[i], terms.a[i]
    previous = terms.previous[i] / epsilon if terms.relaxed else 0.0
    virtual = terms.virtual[i] if terms.has_virtual else 0.0
    absorbed = 0
    if not _ABSORB_LOW <= row_sum <= _ABSORB_HIGH:
        scale = np.float32(1.0 / row_sum)
        tiny, zero = np.float32(FLUSH), np.float32(0.0)
        for e in range(first, last):
            value = values[e] * scale
            values[e] = value if value > tiny else zero  # no subnormals
        f_ref[i] -= math.log(row_sum)
        row_sum, absorbed = 1.0, 1
    f, error, factor = row_update(
        row_sum, f_ref[i], log_a, a, previous, omega, terms.relaxed, virtual, terms.has_virtual
    )
    row_potential[i] = epsilon * f
    return np.float32(factor * q_scale), error, absorbed


# --------------------------------------------------------------------------
# The frames of the sweeps: their rows' terms, their column partials
# --------------------------------------------------------------------------


class RowTerms(NamedTuple):
    """The terms of a block's row updates besides each row's sum and frame: one
    argument of every sweep (:func:`row_terms`, read by :func:`update_row`)."""

    log_a: np.ndarray  # (n,) log of the row masses
    a: np.ndarray  # (n,) the row masses
    previous: np.ndarray  # (n,) previous f, score units (a placeholder of size 1 if unrelaxed)
    epsilon: float
    omega: float
    relaxed: bool
    virtual: np.ndarray  # (n,) the virtual column's log entries (a placeholder of size 1)
    has_virtual: bool


def row_terms(
    log_a: np.ndarray, a: np.ndarray | None, epsilon: float, rows: slice, update: RowUpdate
) -> RowTerms:
    """The :class:`RowTerms` of the rows ``rows`` (the kernels divide the previous f
    by eps as they read it); ``a`` None (a stream's): the masses from ``log_a``."""
    previous, virtual = update.rows(rows), update.virtual_rows(rows)
    log_a_rows = log_a[rows]
    return RowTerms(
        log_a_rows,
        np.exp(log_a_rows) if a is None else a[rows],
        _float64_or_placeholder(previous),
        epsilon,
        float(update.omega),
        previous is not None,
        _float64_or_placeholder(virtual),
        virtual is not None,
    )


def _float64_or_placeholder(values: np.ndarray | None) -> np.ndarray:
    if values is None:
        return np.zeros(1)
    return np.ascontiguousarray(values, dtype=np.float64)


def row_masses(log_a: np.ndarray, scores: Any) -> np.ndarray | None:
    """The row masses ``exp(log_a)`` (N,), kept by a kernel so that a pass takes no
    ``exp`` per row; None for a stream (its masses are taken a block at a time, so
    that a pass over N rows on disk holds no more (N,) vectors than it needs)."""
    return np.exp(log_a) if isinstance(scores, np.ndarray) else None


class Frame(NamedTuple):
    """What a sweep writes: each row's ``f`` (score units) and, per task of rows, its
    column sums, column peaks and statistics; one argument of every sweep."""

    row_potential: np.ndarray  # (n,)
    col_sum: np.ndarray  # (tasks, K)
    col_peak: np.ndarray  # (tasks, K); (0, K) where the sweep keeps none
    stats: np.ndarray  # (tasks, statistics)


def sweep_frame(
    shape: tuple[int, int], task_rows: int, n_stats: int, *, peaks: bool = True
) -> Frame:
    """The :class:`Frame` of a sweep over ``shape`` (n, K) in tasks of ``task_rows``."""
    n_rows, n_cols = shape
    n_tasks = -(-n_rows // task_rows)
    return Frame(
        np.empty(n_rows),
        np.empty((n_tasks, n_cols)),
        np.empty((n_tasks if peaks else 0, n_cols)),
        np.zeros((n_tasks, n_stats)),
    )


def sub_block_partial(
    col_sum: np.ndarray,
    col_peak: np.ndarray,
    block_stats: np.ndarray,
    exp_floor: float,
    exact_log_peaks: Callable[[np.ndarray], np.ndarray] | None = None,
) -> ColumnPartial:
    """Sub-block column partials (blocks, K), each by the starved-column rule, summed
    in a fixed order into one (K,).

    A starved column's peak, read from entries clamped at ``e^exp_floor``, is only a
    bound far below its largest entry: a column shifted by a constant far beyond
    ``epsilon`` would then move its potential by about ``-exp_floor eps`` a pass.
    ``exact_log_peaks(columns)`` gives the log of those columns' largest entries exactly (called
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
        starved = log_peak <= limit  # (blocks, K)
        columns = np.flatnonzero(starved.any(axis=0))
        exact = exact_log_peaks(columns)  # (blocks, starved columns)
        log_peak[:, columns] = np.where(starved[:, columns], exact, log_peak[:, columns])
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


@contextmanager
def threads(count: int | None) -> Iterator[None]:
    """Run the kernels' tasks (:func:`.tasks.run_tasks`) and Numba's parallel loops
    on ``count`` threads (None: all).

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
