"""The Numba backend object: which kernel runs what, and its row-wise helpers
(validation, extremes, the subsample's rows) on NumPy arrays."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numba import njit

from ..._validation import check_allowed_rows
from ...solver import Kernel, row_blocks
from ...streaming import ChunkedScores
from ..reference import ReferenceBackend
from .common import CHUNK_BYTES, SUB_BLOCK_ROWS, threads
from .log import STREAM_CHUNK_BYTES, NumbaLogKernel
from .rounding import NumbaPasses, passes_pay
from .stored import SUBSAMPLE_SWITCH_ERROR, NumbaKernel
from .tasks import run_tasks, task_kernel


class NumbaBackend(ReferenceBackend):
    """Fused parallel kernels for NumPy input; the reference for what is not fused."""

    name = "numba"
    subsample_start = True

    def context(self, n_threads: int | None) -> Any:
        return threads(n_threads)

    def array_extremes(self, scores: Any) -> tuple[np.ndarray, np.ndarray]:
        return row_extremes(scores)

    def validate(self, scores: Any, name: str) -> tuple[Any, Any, bool]:
        """Scores finite or ``-inf``, checked by a vectorised sum per row (3 to 4 times
        faster than the extremes, which only the scaling domain needs:
        :meth:`extremes_of`); rows holding ``-inf`` are read again, exactly.  A stream
        of NumPy blocks is checked a block at a time and keeps one byte per row, not
        its (N,) float64 extremes."""
        if not (isinstance(scores, np.ndarray) or _numpy_stream(scores)):
            return super().validate(scores, name)
        status = np.empty(scores.shape[0], dtype=np.int8)  # (N,) what each row holds
        chunk = CHUNK_BYTES if isinstance(scores, np.ndarray) else STREAM_CHUNK_BYTES
        for rows, block in row_blocks(
            scores, max(1, chunk // (scores.shape[1] * scores.dtype.itemsize))
        ):
            block = np.ascontiguousarray(block)
            run_tasks(None, _row_status, block.shape[0], block, status[rows])
        if (status == ROW_BAD).any():
            row = int(np.flatnonzero(status == ROW_BAD)[0])
            raise ValueError(
                f"{name}: contains NaN or +inf (first in row {row}); scores must be "
                "finite, or -inf for a forbidden sample-cluster pair"
            )
        check_allowed_rows(status == ROW_NONE_ALLOWED, name)
        return None, None, bool((status == ROW_FORBIDDEN).any())

    def subsample_rows(self, scores: Any, stride: int) -> Any:
        """The rows copied in parallel: at 1 281 167 x 3 000 (stride 21, 732 MB) 1.1-1.9 s
        against 2.1-3.1 s for NumPy's copy into memory this process had not touched yet
        (the cost is the first touch; 0.07 against 0.13 s into reused memory)."""
        if not (isinstance(scores, np.ndarray) and scores.flags.c_contiguous):
            return super().subsample_rows(scores, stride)
        rows = np.empty((-(-scores.shape[0] // stride), scores.shape[1]), dtype=scores.dtype)
        run_tasks(None, _strided_rows, rows.shape[0], scores, stride, rows)
        return rows

    def rounding_passes(self, scores: Any) -> tuple[Any, int]:
        """:class:`NumbaPasses` where they pay (:func:`.rounding.passes_pay`), else NumPy's."""
        if not passes_pay(scores):
            return super().rounding_passes(scores)
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
    return _numpy_stream(scores) and np.dtype(scores.dtype) == np.float32


def _numpy_stream(scores: Any) -> bool:
    """A :class:`~otlabel.ChunkedScores` whose blocks are NumPy arrays."""
    return isinstance(scores, ChunkedScores) and scores.library == "numpy"


# --------------------------------------------------------------------------
# Row-wise helpers: validation, extremes, the subsample's rows
# --------------------------------------------------------------------------


@task_kernel()
def _row_extremes(scores, maxima, minima, first, last):
    """Each row's maximum and minimum in float64 (rows ``first .. last - 1``): NaN for
    both where an entry is NaN or ``+inf``; ``-inf`` entries (forbidden pairs) count as
    they are."""
    for i in range(first, last):
        row = scores[i]
        if math.isfinite(_zero_probe(row)):
            high, low = _max_min(row)
            maxima[i], minima[i] = np.float64(high), np.float64(low)
        else:
            maxima[i], minima[i] = _exact_extremes(row)


@task_kernel()
def _strided_rows(scores, stride, rows, first, last):
    """``rows[r] = scores[r * stride]`` for ``r`` in ``first .. last - 1`` (2-D indices:
    no view per row)."""
    for r in range(first, last):
        source = r * stride
        for j in range(rows.shape[1]):
            rows[r, j] = scores[source, j]


#: :func:`_row_status`'s codes: every entry finite; a ``-inf`` among finite entries; NaN
#: or ``+inf``; ``-inf`` throughout.
ROW_FINITE, ROW_FORBIDDEN, ROW_BAD, ROW_NONE_ALLOWED = 0, 1, 2, 3


@task_kernel()
def _row_status(scores, status, first, last):
    """``status[i]``: what row i holds (:data:`ROW_FINITE` ... :data:`ROW_NONE_ALLOWED`),
    for the rows ``first .. last - 1``."""
    for i in range(first, last):
        row = scores[i]
        if math.isfinite(_zero_probe(row)):
            status[i] = ROW_FINITE
            continue
        high = _exact_extremes(row)[0]
        if math.isnan(high):
            status[i] = ROW_BAD
        elif high == -np.inf:
            status[i] = ROW_NONE_ALLOWED
        else:
            status[i] = ROW_FORBIDDEN


@njit(cache=True)
def _exact_extremes(row):
    """A row's maximum and minimum in float64 without fast-math (it holds a non-finite
    entry): NaN for both if an entry is NaN or ``+inf``."""
    high, low = -np.inf, np.inf
    for j in range(row.size):
        value = np.float64(row[j])
        if math.isnan(value) or value == np.inf:
            return np.nan, np.nan
        high, low = max(high, value), min(low, value)
    return high, low


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
        block = np.ascontiguousarray(block)
        run_tasks(None, _row_extremes, block.shape[0], block, maxima[rows], minima[rows])
    return maxima, minima
