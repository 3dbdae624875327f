"""The Sinkhorn iteration, written once on the array-API namespace.

The loop (:func:`solve`) knows nothing about how a block of rows is processed:
it asks a *kernel* to sweep each block of rows and reduces what the kernel
returns.  This is the kernel contract of the specification:

    given a block of rows of ``S`` (or of a kernel prepared from it), its
    ``log a``, the current cluster potential ``g`` and ``epsilon``, return the
    block's new row potential ``f``, the block's per-column partial
    ``(log_max, scaled_sum)`` of the column mass of the plan ``(f, g)``, and the
    block's row-marginal error.  With over-relaxation the kernel also gets the
    previous ``f`` and the weight ``omega``, and returns the relaxed ``f``.

Partials are reduced over blocks in a fixed order (deterministic results), so
that streaming, sharding and several heads are options of this one loop, and
fused kernels (Numba, GPU) plug in by implementing :class:`Kernel`.

Notation (all potentials are in score units)::

    Q_ik = exp((S_ik + f_i + g_k) / epsilon)          # the plan, (N, K)
    f_i  = eps log a_i - eps LSE_k((S_ik + g_k) / eps)  # row update: rows exact
    g_k <- g_k + eps (log b_k - log colmass_k)          # column update

One pass over the rows computes ``f`` and the column masses of ``(f, g)``; the
column error of that iterate comes for free.  The iterate that is returned is
always the pair ``(f, g)`` of the last pass, with its own error.

Over-relaxation (Thibault, Chizat, Dossal & Papadakis, "Overrelaxed
Sinkhorn-Knopp algorithm") replaces each update by ``(1 - omega) old + omega
new`` for both potentials; with ``omega > 1`` neither marginal is exact, and the
error counts both sides: the row side is ``sum_i a_i |exp((f_i - fhat_i)/eps) - 1|``
for the exact row update ``fhat``, known within the same pass.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from array_api_compat import array_namespace

Array = Any

#: Target size in bytes of one block of rows in the working precision: large
#: enough to amortise the per-block overhead, small enough to stay in L2, so
#: that the two uses of a block (row sums, then column sums) read memory once.
BLOCK_BYTES = 1 << 20

#: Arguments of ``exp`` are clamped here, the log of the smallest normal number
#: of each precision (rounded up): no subnormal results, whose slow path costs
#: several times a normal ``exp`` on x86.
_EXP_FLOOR = {"float32": -87.0, "float64": -708.0}

#: Largest score spread (max_k S_ik - min_k S_ik) / epsilon for which the
#: scaling domain is safe, by storage precision of the kernel exp((S - m)/eps):
#: its smallest entry must stay a normal number, and the scalings u, v (kept in
#: float64, potentials normalised every iteration) then stay within exp(+-2T).
SCALING_SAFE_SPREAD = {"float32": 80.0, "float64": 300.0}


class UnstableIteration(FloatingPointError):
    """The iterate stopped being finite; carries the last finite potential and
    the number of passes that produced finite iterates."""

    def __init__(self, message: str, potential: Array, n_iter: int) -> None:
        super().__init__(message)
        self.potential = potential
        self.n_iter = n_iter


@dataclass
class ColumnPartial:
    """Column masses of a plan, as ``exp(log_max) * scaled_sum`` per column, (K,)."""

    log_max: Array
    scaled_sum: Array

    def combine(self, other: ColumnPartial) -> ColumnPartial:
        """Add two partials; a fixed order of combination gives fixed results."""
        xp = array_namespace(self.log_max, other.log_max)
        log_max = xp.maximum(self.log_max, other.log_max)
        scaled_sum = self.scaled_sum * xp.exp(self.log_max - log_max)
        scaled_sum = scaled_sum + other.scaled_sum * xp.exp(other.log_max - log_max)
        return ColumnPartial(log_max, scaled_sum)

    def log_mass(self) -> Array:
        xp = array_namespace(self.log_max)
        return self.log_max + xp.log(self.scaled_sum)


@dataclass
class BlockSweep:
    """What a kernel returns for one block of rows."""

    row_potential: Array  # (n,) new f for the block, score units
    columns: ColumnPartial  # (K,) column mass of the plan (f_new, g)
    row_error: Any  # sum_i |row mass_i - a_i| over the block (a float or a 0-d array)


@dataclass
class Relaxation:
    """Over-relaxation of the row update: ``f = (1 - omega) previous + omega fhat``."""

    previous: Array | None  # (N,) f of the previous pass (score units); None: none yet
    omega: float = 1.0

    def rows(self, rows: slice) -> Array | None:
        """The previous f of a block, or None when the update is not relaxed."""
        if self.previous is None or self.omega == 1.0:
            return None
        return self.previous[rows]


def relax_rows(
    exact: Array, previous: Array | None, omega: float, log_a: Array, epsilon: float
) -> tuple[Array, Array | None, Any]:
    """Relax a block's exact row update ``fhat`` (n,).

    Returns the relaxed ``f``, ``(f - fhat)/eps`` (None when not relaxed: the
    rows are exact) and the block's row error ``sum_i a_i |exp((f - fhat)/eps) - 1|``.
    """
    if previous is None:
        return exact, None, 0.0
    xp = array_namespace(exact)
    relaxed = (1.0 - omega) * previous + omega * exact
    shift = (relaxed - exact) / epsilon
    row_error = xp.sum(xp.exp(log_a) * xp.abs(xp.expm1(shift)))  # 0-d: no host sync here
    return relaxed, shift, row_error


class Kernel(Protocol):
    """One sweep over a block of rows; see the module docstring."""

    method: str

    def column_state(self, potential: Array) -> Array:
        """Per-iteration state derived once from the cluster potential ``g``."""

    def blocks(self) -> Iterator[tuple[slice, Array]]:
        """The row blocks of the (prepared) matrix, in a fixed order."""

    def sweep(self, block: Array, rows: slice, state: Array, relax: Relaxation) -> BlockSweep:
        """Process one block of rows."""


@dataclass
class SolveOutput:
    """The iterate ``(f, g)`` of the last pass and how it was reached."""

    row_potential: Array  # (N,) f, score units
    potential: Array  # (K,) g, score units, sum_k b_k g_k = 0
    n_iter: int
    error: float
    converged: bool
    method: str


@dataclass
class Iterate:
    """One pass's iterate: the plan ``(f, g)`` and its L1 marginal error."""

    n_iter: int
    row_potential: Array  # (N,) f of this pass
    potential: Array  # (K,) g this pass used
    error: float


def iterate(
    kernel: Kernel,
    log_b: Array,
    epsilon: float,
    potential: Array,
    *,
    omega: float | str = 1.0,
) -> Iterator[Iterate]:
    """Sinkhorn passes without end, one iterate per pass (each reads the matrix once).

    ``potential`` is the starting cluster potential ``g`` (K,) in score units;
    ``omega`` the over-relaxation weight: 1 is plain Sinkhorn-Knopp, a number in
    (0, 2) a fixed weight, ``"auto"`` the weight of :class:`OverRelaxation`.
    Between two iterates the column update is applied.  A kernel with a
    ``reduce(columns, row_error, f)`` method holds one shard of the rows: the
    loop hands it the shard's column partial and row error, and it returns those
    of the whole problem (identical on every shard, so that every shard takes
    the same steps).  Raises
    :class:`UnstableIteration`, carrying the last finite potential, if the
    iterate stops being finite (only the scaling domain can).
    """
    xp = array_namespace(log_b)
    b = xp.exp(log_b)
    g = _normalise(potential, b)
    n_iter, previous = 0, None
    schedule = OverRelaxation(omega)
    while True:
        omega_now = schedule.weight
        relax = Relaxation(previous, omega_now)
        f, columns, row_error = _sweep(kernel, kernel.column_state(g), relax)
        if hasattr(kernel, "reduce"):  # a shard of a larger problem (otlabel.distributed)
            columns, row_error = kernel.reduce(columns, row_error, f)
        log_col_mass = columns.log_mass()
        error = float(row_error + xp.sum(xp.abs(xp.exp(log_col_mass) - b)))
        if not (math.isfinite(error) and _all_finite(f)):
            raise _unstable(kernel, g, n_iter)
        n_iter += 1
        current = Iterate(n_iter, f, g, error)
        yield current
        schedule.observe(error)
        if hasattr(kernel, "observe"):  # kernels that adapt to the iterate (numba_)
            kernel.observe(current)
        g_next = _normalise(g + omega_now * epsilon * (log_b - log_col_mass), b)
        if not _all_finite(g_next):  # a column's mass underflowed to zero
            raise _unstable(kernel, g, n_iter)
        g, previous = g_next, f


class OverRelaxation:
    """The over-relaxation weight, fixed or chosen from the convergence rate.

    ``"auto"``: the first :attr:`WARMUP` passes are plain Sinkhorn-Knopp; their
    errors give the contraction rate ``r`` per pass, and the weight becomes the
    successive-over-relaxation optimum ``2 / (1 + sqrt(1 - r))``, at most
    :attr:`MAX_WEIGHT` (measured on the benchmark problems: 4 to 5 times fewer
    passes at SeLa's settings, and 1.9 diverges).  Switching it on causes a
    transient of a few passes in which the error rises; should the error then
    make no new best for :attr:`PATIENCE` passes, the weight falls back to 1
    for good: plain Sinkhorn-Knopp, which always converges.
    """

    WARMUP = 8
    MAX_WEIGHT = 1.8
    PATIENCE = 30

    def __init__(self, omega: float | str) -> None:
        self.adaptive = omega == "auto"
        self.weight = 1.0 if self.adaptive else float(omega)
        self.errors: list[float] = []
        self.best, self.stalled = math.inf, 0

    def observe(self, error: float) -> None:
        """Record a pass's error; may change :attr:`weight` for the next pass."""
        self.errors.append(error)
        if self.adaptive and len(self.errors) == self.WARMUP:
            self.weight = self._optimal_weight()
        if self.weight > 1.0:
            self._guard(error)

    def _optimal_weight(self) -> float:
        first, last = self.errors[-4], self.errors[-1]
        if not (0 < last < first):
            return 1.0
        rate = (last / first) ** (1 / 3)
        return min(self.MAX_WEIGHT, 2.0 / (1.0 + math.sqrt(1.0 - rate)))

    def _guard(self, error: float) -> None:
        if error < self.best:
            self.best, self.stalled = error, 0
        else:
            self.stalled += 1
        if self.stalled >= self.PATIENCE:
            self.weight = 1.0


def solve(
    kernel: Kernel,
    log_b: Array,
    epsilon: float,
    potential: Array,
    *,
    tol: float,
    max_iter: int,
    omega: float | str = 1.0,
) -> SolveOutput:
    """Run :func:`iterate` until the L1 marginal error is at most ``tol`` (or ``max_iter``)."""
    for current in iterate(kernel, log_b, epsilon, potential, omega=omega):
        if current.error <= tol or current.n_iter == max_iter:
            break
    xp = array_namespace(log_b)
    g, f = current.potential, current.row_potential
    shift = xp.sum(xp.exp(log_b) * g)  # zero up to rounding; keeps (f, g) one plan
    converged = current.error <= tol
    return SolveOutput(
        f + shift, g - shift, current.n_iter, current.error, converged, kernel.method
    )


def _unstable(kernel: Kernel, potential: Array, n_done: int) -> UnstableIteration:
    message = f"the {kernel.method} domain left the floating-point range after {n_done} passes"
    return UnstableIteration(message, potential, n_done)


def _sweep(kernel: Kernel, state: Array, relax: Relaxation) -> tuple[Array, ColumnPartial, float]:
    """One pass over all row blocks: the new f and the column masses of (f, g)."""
    f_blocks = []
    columns: ColumnPartial | None = None
    row_error = 0.0
    for rows, block in kernel.blocks():
        result = kernel.sweep(block, rows, state, relax)
        f_blocks.append(result.row_potential)
        columns = result.columns if columns is None else columns.combine(result.columns)
        row_error += result.row_error
    assert columns is not None, "a problem has at least one row"
    xp = array_namespace(f_blocks[0])
    return xp.concat(f_blocks), columns, row_error


def _normalise(potential: Array, b: Array) -> Array:
    xp = array_namespace(potential)
    return potential - xp.sum(b * potential)


def _all_finite(x: Array) -> bool:
    xp = array_namespace(x)
    return bool(xp.all(xp.isfinite(x)))


def block_rows(n_cols: int, itemsize: int = 8, block_bytes: int = BLOCK_BYTES) -> int:
    """Rows per block so that one block in the working precision is ~``block_bytes``."""
    return max(1, block_bytes // (n_cols * itemsize))


# --------------------------------------------------------------------------
# Kernels on the array-API namespace (the reference implementation)
# --------------------------------------------------------------------------


class LogKernel:
    """Log-domain sweep: always finite for finite scores.

    Per block: the row log-sum-exp with one ``exp`` per element, evaluated in
    the scores' storage precision (float32 ``exp`` is several times faster and
    as accurate as float32 scores are) on arguments clamped at the last normal
    exponent (no slow subnormals); row sums, column sums and potentials are
    float64.  The column masses reuse those exponentials, scaled by the new row
    factors, in one matrix-vector product.  Each column also gets its exact
    largest log plan entry in the block: where that is so close to the clamp
    that the sum could be off, the block reports the largest term instead, a
    lower bound within a factor n.  Such a block adds under 1e-16 of the mass
    of any column that is not starved, so this changes nothing there; for a
    column starved in every block, the update is finite and conservative (it
    overshoots by at most ``eps log N``) instead of the ``+inf`` of a plain sum.
    """

    method = "log"

    def __init__(
        self,
        scores: Array,
        log_a: Array,
        epsilon: float,
        work_dtype: Any,
        *,
        block_bytes: int = BLOCK_BYTES,
    ) -> None:
        self.xp = xp = array_namespace(log_a)  # scores may be a stream of blocks
        self.scores = scores  # (N, K)
        self.log_a = log_a  # (N,) float64, as every potential
        self.epsilon = epsilon
        self.work_dtype = work_dtype  # of the (n, K) temporaries
        self.exp_dtype = xp.float32 if scores.dtype == xp.float32 else work_dtype
        self.exp_floor = _EXP_FLOOR["float32" if self.exp_dtype == xp.float32 else "float64"]
        itemsize = 4 if work_dtype == xp.float32 else 8
        self.rows_per_block = block_rows(scores.shape[1], itemsize, block_bytes)

    def column_state(self, potential: Array) -> Array:
        return self.xp.astype(potential / self.epsilon, self.work_dtype)  # (K,) g / eps

    def blocks(self) -> Iterator[tuple[slice, Array]]:
        return _row_blocks(self.scores, self.rows_per_block)

    def sweep(self, block: Array, rows: slice, state: Array, relax: Relaxation) -> BlockSweep:
        xp, work = self.xp, self.work_dtype
        x = xp.astype(block, work, copy=False) / self.epsilon + state  # (n, K) (S + g)/eps
        row_max = xp.max(x, axis=1, keepdims=True)  # (n, 1)
        x = x - row_max  # <= 0
        e = xp.exp(xp.astype(xp.maximum(x, self.exp_floor), self.exp_dtype))  # (n, K)
        log_a = self.log_a[rows]
        row_sum = xp.astype(xp.sum(e, axis=1, dtype=work), log_a.dtype)  # (n,)
        log_row_scale = log_a - xp.log(row_sum)  # (n,) float64
        # log P = (S + f + g)/eps = x + log_row_scale, so f/eps = log_row_scale - row_max.
        exact = self.epsilon * (log_row_scale - xp.astype(row_max[:, 0], log_a.dtype))  # (n,)
        row_potential, shift, row_error = relax_rows(
            exact, relax.rows(rows), relax.omega, log_a, self.epsilon
        )
        if shift is not None:
            log_row_scale = log_row_scale + shift
        row_scale = xp.astype(log_row_scale, work)  # (n,)
        col_sum = xp.exp(row_scale) @ xp.astype(e, work, copy=False)  # (K,) frame 0
        col_log_max = xp.max(x + row_scale[:, None], axis=0)  # (K,) largest log P
        col_sum = xp.astype(col_sum, log_a.dtype)
        col_log_max = xp.astype(col_log_max, log_a.dtype)
        # What the clamp may have added to a column is below n e^floor max_i P-scale;
        # keep the sum where that is under 1e-16 of the column's largest term.
        limit = self.exp_floor + math.log(x.shape[0]) + 37.0 + xp.max(log_row_scale)  # 0-d
        reliable = col_log_max > limit
        columns = ColumnPartial(
            xp.where(reliable, xp.zeros_like(col_log_max), col_log_max),
            xp.where(reliable, col_sum, xp.ones_like(col_sum)),
        )
        return BlockSweep(row_potential, columns, row_error)


class ScalingKernel:
    """Scaling-domain sweep on ``G = exp((S - m)/eps)``, built once.

    Per block of rows: ``s = G v``, ``u = a / s``, ``w = G^T u``; the block is
    still in cache for the second product, so the matrix is read once per
    iteration.  Only safe when the spread of each row of ``S / eps`` is
    moderate (:data:`SCALING_SAFE_SPREAD`); :func:`scaling_is_safe` decides.
    """

    method = "scaling"

    def __init__(
        self,
        scores: Array,
        log_a: Array,
        epsilon: float,
        work_dtype: Any,
        row_max: Array,
        *,
        overwrite: bool = False,
        block_bytes: int = BLOCK_BYTES,
    ) -> None:
        self.xp = array_namespace(scores, log_a)
        self.epsilon = epsilon
        self.work_dtype = work_dtype
        self.row_max = row_max  # (N,) m
        self.a = self.xp.exp(log_a)  # (N,)
        self.rows_per_block = block_rows(scores.shape[1], 8, block_bytes)
        self.kernel = self._build(scores, overwrite)  # (N, K) G, storage dtype

    def _build(self, scores: Array, overwrite: bool) -> Array:
        xp = self.xp
        target = scores if overwrite else xp.empty_like(scores)
        for rows, block in _row_blocks(scores, self.rows_per_block):
            shifted = xp.astype(block, self.work_dtype) - self.row_max[rows][:, None]
            target[rows, ...] = xp.astype(xp.exp(shifted / self.epsilon), scores.dtype)
        return target

    def restore_scores(self) -> Array:
        """Rebuild ``S = m + eps log G`` in place of the kernel; returns it."""
        xp = self.xp
        for rows, block in _row_blocks(self.kernel, self.rows_per_block):
            log_kernel = xp.log(xp.astype(block, self.work_dtype))
            restored = self.row_max[rows][:, None] + self.epsilon * log_kernel
            self.kernel[rows, ...] = xp.astype(restored, self.kernel.dtype)
        return self.kernel

    def column_state(self, potential: Array) -> Array:
        return self.xp.exp(potential / self.epsilon)  # (K,) v

    def blocks(self) -> Iterator[tuple[slice, Array]]:
        return _row_blocks(self.kernel, self.rows_per_block)

    def sweep(self, block: Array, rows: slice, state: Array, relax: Relaxation) -> BlockSweep:
        xp = self.xp
        kernel = xp.astype(block, self.work_dtype)  # (n, K)
        u = self.a[rows] / (kernel @ state)  # (n,) exact row scaling
        exact = self.epsilon * xp.log(u) - self.row_max[rows]
        row_potential, shift, row_error = relax_rows(
            exact, relax.rows(rows), relax.omega, xp.log(self.a[rows]), self.epsilon
        )
        if shift is not None:
            u = u * xp.exp(shift)
        col_mass = (u @ kernel) * state  # (K,) column mass of (u, v)
        zero = xp.zeros_like(col_mass)
        return BlockSweep(row_potential, ColumnPartial(zero, col_mass), row_error)


def row_extremes(
    scores: Array, work_dtype: Any, *, block_bytes: int = BLOCK_BYTES
) -> tuple[Array, Array]:
    """Each row's maximum and minimum, (N,) each, in one read of the matrix.

    NaN or infinite scores show up as non-finite extremes, so this pass also
    validates the input.
    """
    xp = array_namespace(scores)
    maxima, minima = [], []
    for _, block in _row_blocks(scores, block_rows(scores.shape[1], 8, block_bytes)):
        block = xp.astype(block, work_dtype)
        maxima.append(xp.max(block, axis=1))
        minima.append(xp.min(block, axis=1))
    return xp.concat(maxima), xp.concat(minima)


def scaling_is_safe(row_max: Array, row_min: Array, epsilon: float, storage_dtype: Any) -> bool:
    """Whether every row's spread ``(max_k S_ik - min_k S_ik) / eps`` is within
    :data:`SCALING_SAFE_SPREAD` for the kernel's storage precision."""
    xp = array_namespace(row_max)
    if storage_dtype not in (xp.float32, xp.float64):
        return False  # half precision cannot hold exp(-spread/eps) for any useful spread
    limit = SCALING_SAFE_SPREAD["float32" if storage_dtype == xp.float32 else "float64"]
    return float(xp.max(row_max - row_min)) / epsilon <= limit


def plan_of(scores: Array, row_potential: Array, potential: Array, epsilon: float) -> Array:
    """The plan ``exp((S_ik + f_i + g_k) / eps)`` (N, K), in the scores' dtype."""
    xp = array_namespace(scores, row_potential, potential)
    plan = xp.empty_like(scores)
    for rows, block in _row_blocks(scores, block_rows(scores.shape[1])):
        exponent = xp.astype(block, potential.dtype) + row_potential[rows][:, None] + potential
        plan[rows, ...] = xp.astype(xp.exp(exponent / epsilon), scores.dtype)
    return plan


def _row_blocks(matrix: Array, rows_per_block: int) -> Iterator[tuple[slice, Array]]:
    n_rows = matrix.shape[0]
    for start in range(0, n_rows, rows_per_block):
        rows = slice(start, min(start + rows_per_block, n_rows))
        yield rows, matrix[rows, ...]
