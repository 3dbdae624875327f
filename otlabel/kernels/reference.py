"""The reference backend: the kernel contract on the array-API namespace.

:class:`ReferenceBackend` serves NumPy input (``backend="numpy"``) and CuPy
arrays (``backend="cupy"``), and every other backend inherits what it does not
fuse: the log-domain kernel :class:`LogKernel`, the scaling-domain kernel
:class:`ScalingKernel`, the choice between them, row extremes, and the passes
of hard labels.  Both kernels compute the row update with :func:`update_rows`
and report starved columns by :func:`otlabel.solver.column_partial`.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any

import numpy as np

from .._arrays import device_of, from_host, is_half, namespace
from .._validation import check_score_rows
from ..rounding import HostPasses, NumpyPasses
from ..solver import (
    BLOCK_BYTES,
    FLOAT32_ERROR_FLOOR,
    BlockSweep,
    ColumnPartial,
    Kernel,
    RowUpdate,
    block_rows,
    column_partial,
    row_blocks,
)
from ..streaming import ChunkedScores

Array = Any

#: Arguments of ``exp`` are clamped here, the log of the smallest normal number
#: of each precision (rounded up): no subnormal results, whose slow path costs
#: several times a normal ``exp`` on x86.
EXP_FLOOR = {"float32": -87.0, "float64": -708.0}

#: Largest score spread (max_k S_ik - min_k S_ik) / epsilon for which the
#: scaling domain is safe, by storage precision of the kernel exp((S - m)/eps):
#: its smallest entry must stay a normal number, and the scalings u, v (kept in
#: float64, potentials normalised every iteration) then stay within exp(+-2T).
SCALING_SAFE_SPREAD = {"float32": 80.0, "float64": 300.0}

#: Rows of a stream read at once by the validation pass.
STREAM_EXTREMES_BLOCKS = 64


class ReferenceBackend:
    """The array-API implementation of every backend operation (NumPy input)."""

    name = "numpy"
    #: Where a cold start on a large problem solves a subsample first (see
    #: :mod:`otlabel.initializers`): where a stored kernel follows.
    subsample_start = False
    block_bytes = BLOCK_BYTES
    log_kernel_type: type[LogKernel]  # set below, once LogKernel is defined

    def context(self, n_threads: int | None) -> Any:
        """Settings for the duration of a call (threads); none here."""
        return contextlib.nullcontext()

    def vectors(self, scores: Any, *host: np.ndarray) -> tuple[Any, ...]:
        """Host vectors where this backend keeps its potentials (the scores' device)."""
        if isinstance(scores, ChunkedScores):
            xp, where = scores.namespace(), scores.device
        else:
            xp, where = namespace(scores), device_of(scores)
        return tuple(from_host(vector, xp, where) for vector in host)

    def work_dtype(self, scores: Any) -> Any:
        """The precision of the (n, K) temporaries: float64 (the NumPy backend)."""
        return np.float64

    def subsample_rows(self, scores: Any, stride: int) -> Any:
        """Rows ``0, stride, 2 stride, ...`` of ``scores``; an array's in one contiguous
        copy (the subsample's passes read it many times)."""
        rows = scores[::stride]
        return np.ascontiguousarray(rows) if isinstance(rows, np.ndarray) else rows

    # -- reads of the whole matrix -----------------------------------------

    def validate(self, scores: Any, name: str) -> tuple[Array, Array, bool]:
        """One read of the matrix that raises, naming the rows, if a score is NaN or
        ``+inf`` or a row is ``-inf`` throughout; returns the row extremes it found
        (None where a backend's check does not compute them: :meth:`extremes_of` does
        when needed) and whether a score is ``-inf`` (a forbidden pair)."""
        row_max, row_min = self.row_extremes(scores)
        forbidden = check_score_rows(row_max, row_min, name)
        return row_max, row_min, forbidden

    def extremes_of(self, head: Any) -> tuple[Array, Array]:
        """The head's row maxima and minima, read once if validation did not keep them."""
        if head.row_max is None:
            head.row_max, head.row_min = self.row_extremes(head.scores)
        return head.row_max, head.row_min

    def row_extremes(self, scores: Any) -> tuple[Array, Array]:
        """Row maxima and minima (N,) in one read, which also finds NaN and inf."""
        if not isinstance(scores, ChunkedScores):
            return self.array_extremes(scores)
        rows = block_rows(scores.shape[1], scores.dtype.itemsize) * STREAM_EXTREMES_BLOCKS
        parts = [self.array_extremes(block) for _, block in row_blocks(scores, rows)]
        xp = scores.namespace()
        return xp.concat([p[0] for p in parts]), xp.concat([p[1] for p in parts])

    def block_bytes_of(self, scores: Any) -> int:
        """Bytes of one block of rows in the working precision, for these scores."""
        return self.block_bytes

    def row_logsumexp(self, scores: Any) -> Array:
        """``LSE_k S_ik`` (N,) in float64, one read: the unassigned score of partial mass."""
        xp = scores.namespace() if isinstance(scores, ChunkedScores) else namespace(scores)
        rows = block_rows(scores.shape[1], 8, self.block_bytes_of(scores))
        parts = []
        for _, block in row_blocks(scores, rows):
            x = xp.astype(block, xp.float64)  # (n, K)
            top = xp.max(x, axis=1)
            parts.append(top + xp.log(xp.sum(xp.exp(x - top[:, None]), axis=1)))
        return xp.concat(parts)

    def array_extremes(self, scores: Array) -> tuple[Array, Array]:
        block_bytes = self.block_bytes_of(scores)
        return row_extremes(scores, self.work_dtype(scores), block_bytes=block_bytes)

    def rounding_passes(self, scores: Any) -> tuple[Any, int]:
        """Who reads the matrix for hard labels, and in blocks of how many rows."""
        return NumpyPasses(), block_rows(scores.shape[1], 8, self.block_bytes_of(scores))

    # -- kernels ------------------------------------------------------------

    def first_kernel(self, head: Any, log_a: Array, options: Any, *, warm: bool) -> Kernel:
        """The kernel a solve starts with: the scaling domain where it is provably safe
        (``method="auto"``) or asked for, else the log domain."""
        method = options.method
        if method == "auto":
            method = "scaling" if self.scaling_is_safe(head, options) else "log"
        if method == "scaling":
            return self.scaling_kernel(head, log_a, options)
        return self.log_kernel(head.scores, log_a, options)

    def scaling_is_safe(self, head: Any, options: Any) -> bool:
        scores = head.scores
        if isinstance(scores, ChunkedScores) or is_half(scores):
            return False
        row_max, row_min = self.extremes_of(head)
        return scaling_is_safe(row_max, row_min, options.epsilon, scores.dtype)

    def scaling_kernel(self, head: Any, log_a: Array, options: Any) -> Kernel:
        """The scaling-domain kernel; built in place of the scores only where that can be
        undone (:func:`reversible`), else in new memory.  Not over the copy of the free
        rows that known labels make: given back to rounding, it would no longer be what
        the caller holds, and the finish and the labels read it."""
        row_max, row_min = self.extremes_of(head)
        overwrite = (
            options.overwrite_scores
            and head.known is None
            and _writeable(head.scores)
            and reversible(row_max, row_min, options.epsilon, head.scores.dtype)
        )
        return ScalingKernel(
            head.scores,
            log_a,
            options.epsilon,
            row_max,
            overwrite=overwrite,
            block_bytes=self.block_bytes_of(head.scores),
        )

    def log_kernel(
        self, scores: Any, log_a: Array, options: Any, *, precise: bool = False
    ) -> Kernel:
        """The log-domain kernel; ``precise``: float64 arithmetic whatever the scores' dtype."""
        return self.log_kernel_type(
            scores,
            log_a,
            options.epsilon,
            self.work_dtype(scores),
            precise=precise,
            block_bytes=self.block_bytes_of(scores),
        )

    def wants_subsample(self, head: Any, options: Any) -> bool:
        return self.subsample_start

    def subsample_kernel(self, rows: Any, log_a: Array, options: Any, tol: float) -> Kernel:
        """The kernel of the subsample's solve to ``tol`` (:mod:`otlabel.initializers`):
        the log domain; a backend may store a faster kernel once it is safe."""
        return self.log_kernel(rows, log_a, options)


class CupyBackend(ReferenceBackend):
    """CuPy arrays: the reference kernels on the GPU, larger blocks, host rounding passes."""

    name = "cupy"
    block_bytes = 512 << 20

    def work_dtype(self, scores: Any) -> Any:
        xp = namespace(scores)
        return xp.float64 if scores.dtype == xp.float64 else xp.float32

    def rounding_passes(self, scores: Any) -> tuple[Any, int]:
        return HostPasses(), block_rows(scores.shape[1], 8, self.block_bytes_of(scores))


NumpyBackend = ReferenceBackend


def update_rows(
    log_row_sum: Array,
    frame: Array,
    log_a: Array,
    previous: Array | None,
    omega: float,
    epsilon: float,
    virtual: Array | None = None,
) -> tuple[Array, Array, Any]:
    """The row update of a block, (n,) each: every reference kernel's one formula.

    The plan's entries in row i are ``e_ik exp(f_i/eps - frame_i)`` for the
    block's kernel entries ``e`` (log domain: ``e = exp((S + g)/eps - max_k)``,
    ``frame = -max_k``; scaling domain: ``e = G_ik v_k``, ``frame = -m_i/eps``), and
    ``log_row_sum = log sum_k e_ik``.  The exact update
    ``fhat/eps = log a - log_row_sum + frame`` gives every row its mass;
    over-relaxation moves to ``(1 - omega) previous + omega fhat``.  The
    virtual column of partial mass adds ``exp(virtual_i + f_i/eps)`` to row i: its
    ``exp(virtual + frame)`` joins the row sum.

    Returns ``f`` (score units), ``log_scale = f/eps - frame`` (the log factor
    that turns the block's entries into plan entries), and the row error
    ``sum_i a_i |exp((f_i - fhat_i)/eps) - 1|`` (0 when not relaxed).
    """
    if virtual is not None:
        xp = namespace(log_row_sum)
        log_row_sum = xp.logaddexp(log_row_sum, virtual + frame)
    exact_scale = log_a - log_row_sum  # fhat / eps - frame, kept apart from the frame:
    exact = exact_scale + frame  # fhat / eps (``frame`` may be 1e31, and drown the weights)
    if previous is None:
        return epsilon * exact, exact_scale, 0.0
    xp = namespace(exact)
    log_scale = (1.0 - omega) * (previous / epsilon - frame) + omega * exact_scale
    row_error = xp.sum(xp.exp(log_a) * xp.abs(xp.expm1(log_scale - exact_scale)))  # 0-d
    return epsilon * (log_scale + frame), log_scale, row_error


class LogKernel(Kernel):
    """Log-domain sweep: always finite for finite scores.

    Per block: the row log-sum-exp with one ``exp`` per element, evaluated in
    the scores' storage precision (float32 ``exp`` is several times faster and
    as accurate as float32 scores are; ``precise=True``: float64) on arguments
    clamped at the last normal exponent (no slow subnormals); row sums, column
    sums and potentials are float64.  The column masses reuse those
    exponentials, scaled by the new row factors, in one matrix-vector product.
    Starved columns follow :func:`otlabel.solver.column_partial`.
    """

    def __init__(
        self,
        scores: Array,
        log_a: Array,
        epsilon: float,
        work_dtype: Any,
        *,
        precise: bool = False,
        block_bytes: int = BLOCK_BYTES,
    ) -> None:
        self.xp = xp = namespace(log_a)  # scores may be a stream of blocks
        self.scores = scores  # (N, K)
        self.log_a = log_a  # (N,) float64, as every potential
        self.epsilon = epsilon
        self.work_dtype = xp.float64 if precise else work_dtype  # of the (n, K) temporaries
        float32_scores = scores.dtype == xp.float32 or is_half(scores)
        self.exp_dtype = xp.float32 if float32_scores and not precise else self.work_dtype
        self.exact = self.exp_dtype == xp.float64 and self.work_dtype == xp.float64
        self.floor = 0.0 if self.exact else FLOAT32_ERROR_FLOOR
        self.exp_floor = EXP_FLOOR["float32" if self.exp_dtype == xp.float32 else "float64"]
        itemsize = 4 if self.work_dtype == xp.float32 else 8
        self.rows_per_block = block_rows(scores.shape[1], itemsize, block_bytes)

    def column_state(self, potential: Array) -> Array:
        return self.xp.astype(potential / self.epsilon, self.work_dtype)  # (K,) g / eps

    def blocks(self) -> Iterator[tuple[slice, Array]]:
        return row_blocks(self.scores, self.rows_per_block)

    def sweep(self, block: Array, rows: slice, state: Array, update: RowUpdate) -> BlockSweep:
        xp, work, log_a = self.xp, self.work_dtype, self.log_a[rows]
        x = xp.astype(block, work) / self.epsilon + state  # (n, K) (S + g) / eps
        row_max = xp.max(x, axis=1)  # (n,)
        x = x - row_max[:, None]  # <= 0
        e = xp.exp(xp.astype(xp.maximum(x, self.exp_floor), self.exp_dtype))  # (n, K) in (0, 1]
        log_row_sum = xp.log(xp.astype(xp.sum(e, axis=1, dtype=work), log_a.dtype))  # (n,)
        frame = -xp.astype(row_max, log_a.dtype)
        f, log_scale, row_error = update_rows(
            log_row_sum,
            frame,
            log_a,
            update.rows(rows),
            update.omega,
            self.epsilon,
            update.virtual_rows(rows),
        )
        row_scale = xp.astype(log_scale, work)  # (n,)
        col_sum = self.column_sums(xp.exp(row_scale), xp.astype(e, work, copy=False))  # (K,)
        col_log_peak = xp.max(x + row_scale[:, None], axis=0)  # (K,) largest log P
        columns = column_partial(
            xp.astype(col_sum, log_a.dtype),
            xp.astype(col_log_peak, log_a.dtype),
            exp_floor=self.exp_floor,
            log_rows=math.log(x.shape[0]),
            log_max_scale=xp.max(log_scale),
        )
        return BlockSweep(f, columns, row_error)

    @staticmethod
    def column_sums(row_scale: Array, e: Array) -> Array:
        """``sum_i row_scale_i e_ik`` (K,): one matrix-vector product."""
        return row_scale @ e


class ScalingKernel(Kernel):
    """Scaling-domain sweep on ``G = exp((S - m)/eps)``, built once.

    Per block of rows: ``s = G v``, ``u = a / s``, ``w = G^T u``; the block is
    still in cache for the second product, so the matrix is read once per
    iteration.  Only safe when the spread of each row of ``S / eps`` is
    moderate (:data:`SCALING_SAFE_SPREAD`); :func:`scaling_is_safe` decides.
    With ``overwrite``, ``G`` is built in place of the scores, and
    :meth:`restore` rebuilds ``S = m + eps log G`` in the rows built so far.
    """

    method = "scaling"
    phase = "stored"

    def __init__(
        self,
        scores: Array,
        log_a: Array,
        epsilon: float,
        row_max: Array,
        *,
        overwrite: bool = False,
        block_bytes: int = BLOCK_BYTES,
    ) -> None:
        self.xp = xp = namespace(scores, log_a)
        self.epsilon = epsilon
        self.row_max = row_max  # (N,) m, float64
        self.log_a = log_a  # (N,)
        self.rows_per_block = block_rows(scores.shape[1], 8, block_bytes)
        self.exact = scores.dtype == xp.float64
        self.floor = 0.0 if self.exact else FLOAT32_ERROR_FLOOR
        self.overwrite = overwrite
        self.built_rows = 0  # rows of G written in place of the scores
        self.kernel = scores if overwrite else xp.empty_like(scores)  # (N, K) G
        self._build(scores)

    def _build(self, scores: Array) -> None:
        xp = self.xp
        for rows, block in row_blocks(scores, self.rows_per_block):
            shifted = xp.astype(block, xp.float64) - self.row_max[rows][:, None]
            self.kernel[rows, ...] = xp.astype(xp.exp(shifted / self.epsilon), scores.dtype)
            self.built_rows = rows.stop

    def restore(self) -> None:
        """Rebuild ``S = m + eps log G`` in place of the rows built (once)."""
        if not self.overwrite:
            return
        xp, built = self.xp, self.built_rows
        self.overwrite = False
        for rows, block in row_blocks(self.kernel[:built, ...], self.rows_per_block):
            restored = self.row_max[rows][:, None] + self.epsilon * xp.log(
                xp.astype(block, xp.float64)
            )
            self.kernel[rows, ...] = xp.astype(restored, self.kernel.dtype)

    def column_state(self, potential: Array) -> Array:
        return self.xp.exp(potential / self.epsilon)  # (K,) v

    def blocks(self) -> Iterator[tuple[slice, Array]]:
        return row_blocks(self.kernel, self.rows_per_block)

    def sweep(self, block: Array, rows: slice, state: Array, update: RowUpdate) -> BlockSweep:
        xp = self.xp
        kernel = xp.astype(block, xp.float64)  # (n, K)
        log_row_sum = xp.log(kernel @ state)  # (n,) log s
        frame = -self.row_max[rows] / self.epsilon
        f, log_scale, row_error = update_rows(
            log_row_sum,
            frame,
            self.log_a[rows],
            update.rows(rows),
            update.omega,
            self.epsilon,
            update.virtual_rows(rows),
        )
        col_mass = (xp.exp(log_scale) @ kernel) * state  # (K,) column mass of (u, v)
        return BlockSweep(f, ColumnPartial(xp.zeros_like(col_mass), col_mass), row_error)


ReferenceBackend.log_kernel_type = LogKernel


def row_extremes(
    scores: Array, work_dtype: Any, *, block_bytes: int = BLOCK_BYTES
) -> tuple[Array, Array]:
    """Each row's maximum and minimum, (N,) each, in one read of the matrix.

    NaN shows up in both, ``+inf`` in the maximum, ``-inf`` (a forbidden pair) in the
    minimum, so this pass also validates the input.
    """
    xp = namespace(scores)
    maxima, minima = [], []
    for _, block in row_blocks(scores, block_rows(scores.shape[1], 8, block_bytes)):
        block = xp.astype(block, work_dtype)
        maxima.append(xp.astype(xp.max(block, axis=1), xp.float64))
        minima.append(xp.astype(xp.min(block, axis=1), xp.float64))
    return xp.concat(maxima), xp.concat(minima)


def scaling_is_safe(row_max: Array, row_min: Array, epsilon: float, storage_dtype: Any) -> bool:
    """Whether every row's spread ``(max_k S_ik - min_k S_ik) / eps`` is within
    :data:`SCALING_SAFE_SPREAD` for the kernel's storage precision."""
    xp = namespace(row_max)
    if storage_dtype not in (xp.float32, xp.float64):
        return False  # half precision cannot hold exp(-spread/eps) for any useful spread
    limit = SCALING_SAFE_SPREAD["float32" if storage_dtype == xp.float32 else "float64"]
    return float(xp.max(row_max - row_min)) / epsilon <= limit


def reversible(row_max: Array, row_min: Array, epsilon: float, storage_dtype: Any) -> bool:
    """Whether ``G = exp((S - m)/eps)``, stored in ``storage_dtype``, gives the scores back
    as ``m + eps log G`` to that precision's rounding: every entry of ``G`` a normal
    number (no entry flushed to zero or to a subnormal, whose log is lost)."""
    xp = namespace(row_max)
    if storage_dtype not in (xp.float32, xp.float64):
        return False
    smallest_normal = float(np.finfo("float32" if storage_dtype == xp.float32 else "float64").tiny)
    return float(xp.max(row_max - row_min)) / epsilon < -math.log(smallest_normal) - 1.0


def _writeable(scores: Any) -> bool:
    """Whether the solver may build its kernel in place of ``scores``."""
    if isinstance(scores, np.ndarray):
        return bool(scores.flags.writeable)
    return True  # Torch and CuPy arrays are writeable
