"""The stored kernel: the log domain until the duals settle, then a stored, stabilised
scaling kernel, dense or sparse (:class:`NumbaKernel`)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from ..._system import available_memory
from ...solver import FLOAT32_ERROR_FLOOR, BlockSweep, ColumnPartial, Kernel, RowUpdate
from .common import (
    ABSORB,
    TASK_ROWS,
    drifted,
    rebuild_drift,
    row_masses,
    row_terms,
    sweep_frame,
)
from .dense import build_dense, dense_sweep, scale_columns
from .log import NumbaLogKernel
from .sparse import SparseKernel, build_sparse, scale_sparse_columns, sparse_sweep
from .sparse_log import SparseLogKernel
from .tasks import run_tasks

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
        self.q_scale = float(scores.shape[0] * scores.shape[1])  # see stored_row
        self.a = row_masses(log_a, scores)  # (N,) or None: a stream's by block

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
        if self.stored is not None and drifted(self.g_built, potential / self.epsilon, self.drift):
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
        stored = self.stored
        assert stored is not None
        if isinstance(stored, SparseKernel):
            entries = (stored.indptr, stored.indices, stored.values, factor)
            run_tasks(self.n_threads, scale_sparse_columns, stored.shape[0], *entries)
        else:
            run_tasks(self.n_threads, scale_columns, stored.shape[0], stored, factor)

    def blocks(self) -> Iterator[tuple[slice, Any]]:
        if self.stored is None:
            return self.log_kernel.blocks()
        return iter([(slice(0, self.stored.shape[0]), self.stored)])

    def sweep(self, block: Any, rows: slice, state: np.ndarray, update: RowUpdate) -> BlockSweep:
        if self.stored is None:
            return self.log_kernel.sweep(block, rows, state, update)
        frame = sweep_frame(block.shape, TASK_ROWS, 2, peaks=False)
        terms = row_terms(self.log_a, self.a, self.epsilon, rows, update)
        kernel = (state, self.f_ref, self.q_scale)  # v, the rows' references, C
        n_tasks = frame.col_sum.shape[0]
        if isinstance(block, SparseKernel):
            entries = (block.indptr, block.indices, block.values, block.task_rows)
            run_tasks(self.n_threads, sparse_sweep, n_tasks, *entries, *kernel, terms, frame)
        else:
            run_tasks(self.n_threads, dense_sweep, n_tasks, block, *kernel, terms, frame)
        row_potential, col_sum, _, task_stats = frame
        col_mass = col_sum.sum(axis=0) * state / self.q_scale  # (K,) column mass of the plan
        columns = ColumnPartial(np.zeros(block.shape[1]), col_mass)
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
        sparse = build_sparse(self.scores, g_ref, f_ref, self.epsilon, self.n_threads)
        if sparse is not None:
            self.stored = sparse
        elif sparse_only:
            return
        elif isinstance(self.scores, np.ndarray) and (
            self.scores.nbytes < 0.8 * available_memory()
        ):
            target = np.empty(self.scores.shape, dtype=self.scores.dtype)  # C order
            build = (self.scores, g_ref.astype(np.float32), 1.0 / self.epsilon, target, f_ref)
            run_tasks(self.n_threads, build_dense, target.shape[0], *build)
            self.stored = target
        else:
            self.can_store = False  # no room, or a stream: the log domain it stays
            return
        self.g_ref, self.f_ref, self.g_built = g_ref, f_ref, g_ref
