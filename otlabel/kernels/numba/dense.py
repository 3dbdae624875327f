"""The dense stored kernel: its build, its column absorption and its pass (float32)."""

from __future__ import annotations

import numpy as np
from numba import njit

from .._fastmath import exp_neg, shifted_max
from .common import FLUSH, NO_EXP, TASK_ROWS, stored_row
from .tasks import task_kernel

#: The dense pass flushes its float32 column partials to float64 every FLUSH_ROWS rows.
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


@njit(fastmath=NO_EXP, cache=True, inline="always")
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


@njit(fastmath=NO_EXP, cache=True, inline="always")
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


@njit(fastmath=NO_EXP, cache=True, inline="always")
def _row_columns(partial, values, first, n_cols, factor):
    """``partial[j] += values[first + j] factor``: one row's share of the column sums."""
    for j in range(n_cols):
        partial[j] += values[first + np.uint64(j)] * factor


@njit(fastmath=NO_EXP, cache=True, inline="always")
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


@task_kernel(fastmath=NO_EXP)
def dense_sweep(kernel, v, f_ref, q_scale, terms, frame, first_task, last_task):
    """One pass on the dense stored kernel ``G`` (n, K) float32 over the tasks
    ``first_task .. last_task - 1`` (:data:`.common.TASK_ROWS` rows each).

    Writes ``f`` (score units) and, in ``frame``, per task its column sums of ``G_ik q_i`` and
    ``(row error, rows absorbed)``.  Rows of GROUP_COLS or more go in groups of
    ROW_GROUP (the task's last rows one by one): the group's dots read its rows
    from memory side by side, then its column accumulation reads them from the
    core's cache.  One row at a time, each thread kept one read in flight; on a
    2-core Intel Xeon host a pass on 200 000 x 3 000 took 420 ms one row at a time
    and 281 ms by groups, on 40 000 x 20 000 293 and 191 ms (medians, interleaved,
    the same outputs).  Offsets are unsigned (see :func:`_row_dot`);
    the float32 column partials are flushed to float64 every FLUSH_ROWS rows.
    """
    row_potential, col_sum, _, task_stats = frame
    epsilon, omega = terms.epsilon, terms.omega  # see stored_row
    n_rows, n_cols = kernel.shape
    flat = kernel.reshape(kernel.size)  # rows as index ranges: no view per row
    width = np.uint64(n_cols)
    partial = np.zeros(n_cols, dtype=np.float32)  # (K,), zero after each flush
    dots, factors = np.empty(ROW_GROUP), np.empty(ROW_GROUP, dtype=np.float32)
    for t in range(first_task, last_task):
        sums = col_sum[t]
        sums[:] = 0.0
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
                factors[k], error, was_absorbed = stored_row(
                    flat, row_first, row_first + width, dots[k], f_ref, i, q_scale,
                    terms, epsilon, omega, row_potential,
                )  # fmt: skip
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


@task_kernel(fastmath={"contract"})
def build_dense(scores, g32, inv_eps, kernel, f_ref, first_row, last_row):
    """``G_ik = exp(S_ik / eps + g_ref_k - m_i)`` in float32 for the rows ``first_row ..
    last_row - 1``, ``m_i`` the row's maximum, ``g32`` the reference ``g_ref`` in float32.

    Writes ``f_ref_i = -m_i`` (references in units of eps): every row of ``G``
    peaks at exactly 1.  Entries at the clamp of ``exp`` are flushed to zero
    (they add no mass).  ``scores`` and ``kernel`` may be the same array.
    """
    n_cols = scores.shape[1]
    scale = np.float32(inv_eps)
    tiny, zero = np.float32(FLUSH), np.float32(0.0)
    for i in range(first_row, last_row):
        row, out = scores[i], kernel[i]
        row_max = shifted_max(row, scale, g32)
        f_ref[i] = -row_max
        for j in range(n_cols):
            value = exp_neg(row[j] * scale + g32[j] - row_max)
            out[j] = value if value > tiny else zero


@task_kernel(fastmath=NO_EXP)
def scale_columns(kernel, factor, first_row, last_row):
    """``G_ik *= factor_k`` for the rows ``first_row .. last_row - 1``, flushing what
    falls below the smallest normal float32."""
    tiny, zero = np.float32(FLUSH), np.float32(0.0)
    for i in range(first_row, last_row):
        row = kernel[i]
        for j in range(kernel.shape[1]):
            value = row[j] * factor[j]
            row[j] = value if value > tiny else zero
