"""The sparse stored kernel: the entries above the flush (CSR), their build in one
read of the scores, their column absorption and their pass (float32)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numba import njit

from ..._system import available_memory
from ...solver import row_blocks
from .._fastmath import exp_neg, shifted_max
from .common import FLUSH, FLUSH_EXPONENT, NO_EXP, TASK_ROWS, stored_row
from .tasks import run_tasks, task_kernel

#: The stored kernel is kept sparse (its entries above the flush, CSR) when at
#: most this fraction of the N x K entries survive the flush.
SPARSE_DENSITY = 0.1
#: Bytes of float32 scores per block when a sparse kernel is built (at least
#: BUILD_MIN_ROWS rows); its staging slots hold K entries per row of a block
#: (2.5 times the block's bytes with int16 indices and float32 scores).
BUILD_BYTES = 1 << 22
BUILD_MIN_ROWS = 64


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


@task_kernel(fastmath=NO_EXP)
def sparse_sweep(
    indptr, indices, values, task_rows, v, f_ref, q_scale, terms, frame, first_task, last_task
):  # fmt: skip
    """:func:`dense_sweep` on the kept entries only: the same row update, the same tasks.

    A task's entries are contiguous: its rows' dots are taken in one loop over them
    (each adds into its row's slot, ``task_rows``), then the row updates, then the
    column sums in one more loop.  A loop per row, of a few entries, missed its
    exit branch on about every row: 31.3 -> 23.4 ms per pass on the 1 281 167 x
    3 000 ImageNet sela kernel (3.5 entries per row).  Unsigned entry offsets and
    column indices: signed ones get a negative-index test per access."""
    row_potential, col_sum, _, task_stats = frame
    epsilon, omega = terms.epsilon, terms.omega  # see stored_row
    n_rows = indptr.size - 1
    row_sums = np.empty(TASK_ROWS)  # (TASK_ROWS,) sum_k G_ik v_k of the task's rows
    factors = np.empty(TASK_ROWS, dtype=np.float32)  # q_i C of the task's rows
    for t in range(first_task, last_task):
        sums = col_sum[t]
        sums[:] = 0.0
        row_sums[:] = 0.0
        first_row, last_row = t * TASK_ROWS, min(n_rows, (t + 1) * TASK_ROWS)
        first_entry, last_entry = np.uint64(indptr[first_row]), np.uint64(indptr[last_row])
        for e in range(first_entry, last_entry):
            row_sums[task_rows[e]] += np.float64(values[e]) * v[np.uint64(indices[e])]
        row_error, absorbed = 0.0, 0
        for i in range(first_row, last_row):
            first, last = np.uint64(indptr[i]), np.uint64(indptr[i + 1])  # no sign tests
            q, error, was_absorbed = stored_row(
                values, first, last, row_sums[i - first_row], f_ref, i, q_scale,
                terms, epsilon, omega, row_potential,
            )  # fmt: skip
            factors[i - first_row] = q
            row_error += error
            absorbed += was_absorbed
        for e in range(first_entry, last_entry):
            sums[np.uint64(indices[e])] += values[e] * factors[task_rows[e]]
        task_stats[t, 0] = row_error
        task_stats[t, 1] = absorbed


@task_kernel(fastmath=NO_EXP)
def scale_sparse_columns(indptr, indices, values, factor, first_row, last_row):
    """The dense kernel's :func:`scale_columns` on the kept entries of the rows
    ``first_row .. last_row - 1``."""
    tiny, zero = np.float32(FLUSH), np.float32(0.0)
    for i in range(first_row, last_row):
        for e in range(indptr[i], indptr[i + 1]):
            value = values[e] * factor[indices[e]]
            values[e] = value if value > tiny else zero


# --------------------------------------------------------------------------
# The build: the kept entries in one read of the scores
# --------------------------------------------------------------------------

#: Rows per task of :func:`_collect_kept`: each task picks the run length of a row
#: from the number of entries its previous row kept.
COLLECT_ROWS = 16


@task_kernel(fastmath={"contract"})
def _collect_kept(
    scores, g32, inv_eps, f_ref, counts, indices, values, kept_scores, first_task, last_task
):  # fmt: skip
    """The kept entries of ``G`` (as :func:`build_dense` makes it: those whose
    exponent is above FLUSH_EXPONENT, the same float32 values) in one read of each
    row of the tasks ``first_task .. last_task - 1`` (:data:`COLLECT_ROWS` rows
    each): row ``i``'s go to the start of its own slot ``[i K, (i + 1) K)`` of the
    staging arrays, their number to ``counts[i]``, ``-m_i`` to ``f_ref[i]``.
    ``g32``: the reference ``g / eps`` in float32."""
    n_rows, n_cols = scores.shape
    scale, floor = np.float32(inv_eps), np.float32(FLUSH_EXPONENT)
    for t in range(first_task, last_task):
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


@task_kernel()
def _gather_kept(indptr, n_cols, first_row, stage_indices, stage_values, stage_scores, indices,
                 values, kept_scores, task_rows, first, last):  # fmt: skip
    """The kept entries of the block's rows ``first .. last - 1``, each from its staging
    slot (:func:`_collect_kept`) to its place ``indptr[i]:indptr[i + 1]`` in the
    kernel's arrays, with the row's place in its pass task (``(first_row + i) %
    TASK_ROWS``) in ``task_rows``."""
    for i in range(first, last):
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
    tiny, zero = np.float32(FLUSH), np.float32(0.0)
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


def _index_dtype(n_cols: int) -> np.dtype:
    return np.dtype(np.int16 if n_cols <= np.iinfo(np.int16).max else np.int32)


def build_sparse(
    scores: Any, g_ref: np.ndarray, f_ref: np.ndarray, epsilon: float, n_threads: int | None
) -> SparseKernel | None:
    """The sparse kernel at ``g_ref`` (units of eps) from one read of the scores
    (array or stream), its rows' ``-m_i`` into ``f_ref``: each row's kept entries are
    collected in one read of it (into a staging slot of K entries per row of the
    block), then gathered in row order.  The entries go into arrays sized for the
    most that a sparse kernel may hold; the pages past the last entry are never
    touched, so they cost no memory.  None once more than :data:`SPARSE_DENSITY` of
    the entries are kept, or more than would fit in memory (the read stops there)."""
    n_rows, n_cols = scores.shape
    index_dtype, score_dtype = _index_dtype(n_cols), np.dtype(scores.dtype)
    entry_bytes = index_dtype.itemsize + 4 + score_dtype.itemsize + 2  # + task row
    capacity = int(min(SPARSE_DENSITY * n_rows * n_cols, 0.8 * available_memory() // entry_bytes))
    indices = np.empty(capacity, dtype=index_dtype)
    values = np.empty(capacity, dtype=np.float32)
    kept_scores = np.empty(capacity, dtype=score_dtype)
    task_rows = np.empty(capacity, dtype=np.int16)
    indptr = np.zeros(n_rows + 1, dtype=np.int64)
    inv_eps, n_kept, g32 = 1.0 / epsilon, 0, g_ref.astype(np.float32)
    block_rows = min(n_rows, max(BUILD_MIN_ROWS, BUILD_BYTES // (4 * n_cols)))
    stage = (  # one slot of K entries per row of a block; only its start is touched
        np.empty(block_rows * n_cols, dtype=index_dtype),
        np.empty(block_rows * n_cols, dtype=np.float32),
        np.empty(block_rows * n_cols, dtype=score_dtype),
    )
    for rows, block in row_blocks(scores, block_rows):
        block = np.ascontiguousarray(block)  # a stream's block, or a view: no copy
        pointers = indptr[rows.start : rows.stop + 1]  # (rows + 1,), from 0
        n_tasks = -(-block.shape[0] // COLLECT_ROWS)
        collect = (block, g32, inv_eps, f_ref[rows], pointers[1:], *stage)
        run_tasks(n_threads, _collect_kept, n_tasks, *collect)
        pointers[0] = 0  # block positions first
        np.cumsum(pointers[1:], out=pointers[1:])
        block_kept = int(pointers[-1])
        if n_kept + block_kept > capacity:
            return None  # too dense for a sparse kernel
        entries = slice(n_kept, n_kept + block_kept)
        gather = (
            pointers, n_cols, rows.start, *stage, indices[entries], values[entries],
            kept_scores[entries], task_rows[entries],
        )  # fmt: skip
        run_tasks(n_threads, _gather_kept, block.shape[0], *gather)
        pointers += n_kept  # global positions
        n_kept += block_kept
    shape = (int(n_rows), int(n_cols))
    kept = slice(0, n_kept)
    return SparseKernel(
        indptr, indices[kept], values[kept], kept_scores[kept], shape, g_ref, task_rows[kept]
    )
