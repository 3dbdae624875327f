"""The Sinkhorn iteration, written once on the array-API namespace.

:func:`solve_head` runs every phase of one head's solve; :func:`solve` runs the
loop to a tolerance; :func:`iterate` is the loop.  The loop knows nothing about
how a block of rows is processed: it asks a :class:`Kernel` (one per backend and
domain, in :mod:`otlabel.kernels`) to sweep each block of rows and reduces what
the kernel returns.  This is the kernel contract of the specification:

    given a block of rows of ``S`` (or of a kernel prepared from it), its
    ``log a``, the current cluster potential ``g`` and ``epsilon``, return the
    block's new row potential ``f``, the block's per-column partial
    ``(log_max, scaled_sum)`` of the column mass of the plan ``(f, g)``, and the
    block's row-marginal error.  With over-relaxation the kernel also gets the
    previous ``f`` and the weight ``omega`` (a :class:`RowUpdate`), and returns
    the relaxed ``f``.

Partials are reduced over blocks in a fixed order (deterministic results), and
over the ranks of a sharded problem by a *reducer* (:mod:`otlabel.distributed`),
so that streaming, sharding and several heads are options of this one loop.
The column update is the problem's column constraint
(:mod:`otlabel.constraints`): fixed or bounded cluster sizes are one parameter.

Notation (all potentials are in score units)::

    Q_ik = exp((S_ik + f_i + g_k) / epsilon)          # the plan, (N, K)
    f_i  = eps log a_i - eps LSE_k((S_ik + g_k) / eps)  # row update: rows exact
    g   <- constraint.update(g, log colmass)            # column update

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

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from ._arrays import device_of, namespace

if TYPE_CHECKING:
    from .initializers import Start
    from .problem import Head, Options

Array = Any

#: A kernel that computes in float32 (a stored float32 kernel, float32 ``exp``)
#: runs until its own error is at most ``tol`` less this margin (a fraction of
#: ``tol``, and twice its :attr:`Kernel.floor`), and at least that floor; then an
#: exact pass checks the iterate, so that one exact pass usually suffices.
INEXACT_MARGIN = 0.1
#: Passes without a new best error after which an inexact kernel has stalled
#: at its precision floor and the float64 finish takes over.
STALL_PASSES = 25


def solve_head(
    head: Head, options: Options, start: Start, *, reducer: Reducer | None = None
) -> SolveOutput:
    """Every phase of one head's solve; returns the last iterate and its record.

    1. **start**: ``start``, the initialiser's potential
       (:func:`otlabel.initializers.start_of`, which the caller runs: the
       initialiser runs this loop on a subsample, so the loop does not import it);
    2. **log / stored**: the backend's first kernel (a stored or scaling-domain
       kernel where it is safe and faster, else the log domain), falling back,
       warm, to the log domain if the iterate leaves the floating-point range;
    3. **finish**: when that kernel computes in float32, an exact kernel
       (float64 arithmetic on the scores themselves) takes the iterate to
       ``tol``; its first pass is the honest error of the iterate.

    The caller's scores, if a kernel was built in their place
    (``overwrite_scores``), are restored on every exit, exceptions included.
    """
    backend = options.backend
    record = Record(options.callback)
    record.phases["start"] = start.passes
    log_a, potential = backend.vectors(head.scores, head.log_a, start.potential)
    virtual = None if head.virtual is None else backend.vectors(head.scores, head.virtual)[0]
    constraint = head.constraint.to(potential)
    run = _Phases(head, options, log_a, constraint, record, reducer, virtual)
    if start.weight > 1.0:  # the subsample's, for the same problem
        run.weight = start.weight
    kernel = backend.first_kernel(head, log_a, options, warm=start.kind != "zero")
    try:
        with quiet(potential):  # a non-finite iterate is detected by the loop itself
            if start.kind == "given" and not kernel.exact:
                checked = run.check(kernel, potential)
                if checked.error <= options.tol:  # a converged warm start: one pass
                    return run.output(checked, kernel.method, start.kind)
                potential = checked.next_potential
            main, kernel = run.main(kernel, potential)
            method = kernel.method
            if kernel.exact and main is not None:
                last = main
            else:
                last, kernel = run.finish(kernel, main)
        output = run.output(last, method, start.kind)
        if virtual is None:  # the labels' first step, from the last kernel if it can
            output.argmax = kernel.argmax(output.potential)
    finally:
        kernel.restore()
    return output


def quiet(like: Array) -> Any:
    """NumPy's warnings off (over- and underflow are detected or intended)."""
    if isinstance(like, np.ndarray):
        return np.errstate(all="ignore")
    return contextlib.nullcontext()


class _Phases:
    """The phases of :func:`solve_head` over one head, sharing its record and budget."""

    def __init__(
        self,
        head: Head,
        options: Options,
        log_a: Array,
        constraint: Any,
        record: Record,
        reducer: Reducer | None,
        virtual: Array | None = None,
    ) -> None:
        self.head, self.options, self.log_a = head, options, log_a
        self.constraint, self.record, self.reducer = constraint, record, reducer
        self.virtual = virtual  # (N,) s0 of partial mass's virtual column, or None
        self.omega = options.overrelaxation if constraint.relaxable else 1.0
        #: with omega "auto", the weight the last phase (or the start) settled on
        self.weight: float | None = None
        self.potential: Array = None  # where the current phase started

    def main(self, kernel: Kernel, potential: Array) -> tuple[Iterate | None, Kernel]:
        """The first kernel to its target; the log domain, warm, if it goes non-finite."""
        options, fallen_back = self.options, False
        while True:
            reserve = 0 if kernel.exact else 1  # one pass left for the exact check
            passes = self.left() - reserve
            if passes <= 0:
                self.potential = potential
                return None, kernel
            target = options.tol
            if not kernel.exact:
                margin = max(INEXACT_MARGIN * options.tol, 2 * kernel.floor)
                target = max(options.tol - margin, kernel.floor)
            patience = None if kernel.exact else STALL_PASSES
            try:
                return self.run(kernel, potential, target, passes, patience), kernel
            except UnstableIteration as unstable:
                if options.method == "scaling":
                    raise FloatingPointError(
                        f"method='scaling': {unstable}; the scores spread too far over "
                        "epsilon for this domain, use method='log' or 'auto'"
                    ) from None
                if fallen_back or kernel.method == "log":  # no domain to fall back to
                    raise _beyond_range(unstable, self.head, options) from None
                fallen_back = True
                kernel.restore()
                potential = unstable.potential
                kernel = options.backend.log_kernel(self.head.scores, self.log_a, options)

    def check(self, kernel: Kernel, potential: Array) -> Iterate:
        """One exact pass at a given start, before a float32 kernel takes over."""
        exact = kernel.finisher(potential)
        if exact is None:
            exact = self.options.backend.log_kernel(
                self.head.scores, self.log_a, self.options, precise=True
            )
        exact.phase = "finish"
        return self.run(exact, potential, self.options.tol, 1, None)

    def finish(self, kernel: Kernel, last: Iterate | None) -> tuple[Iterate, Kernel]:
        """Exact passes from the inexact kernel's last potential until ``tol``."""
        exact = kernel.finisher(None)
        if exact is None:
            kernel.restore()  # the scores again, in place of a kernel built there
            exact = self.options.backend.log_kernel(
                self.head.scores, self.log_a, self.options, precise=True
            )
        exact.phase = "finish"
        potential = self.potential if last is None else last.next_potential  # None: max_iter 1
        return self.run(exact, potential, self.options.tol, max(self.left(), 1), None), exact

    def run(
        self, kernel: Kernel, potential: Array, tol: float, passes: int, patience: int | None
    ) -> Iterate:
        self.potential = potential
        last = solve(
            kernel,
            self.constraint,
            self.options.epsilon,
            potential,
            tol=tol,
            max_iter=passes,
            omega=self.omega,
            weight=self.weight if self.omega == "auto" else None,
            reducer=self.reducer,
            record=self.record,
            patience=patience,
            virtual=self.virtual,
        )
        if self.weight is not None or last.weight > 1.0:  # the next phase goes on at it
            self.weight = last.weight
        return last

    def left(self) -> int:
        return self.options.max_iter - len(self.record.errors)

    def output(self, last: Iterate, method: str, start: str) -> SolveOutput:
        """The last iterate, its potentials in the constraint's normal form."""
        offset = self.constraint.offset(last.potential)  # 0 unless g has a free constant
        potential = last.potential - offset
        unassigned = None
        if self.virtual is not None:  # partial mass: the virtual column's g0 comes last
            potential, unassigned = potential[:-1], float(potential[-1])
        return SolveOutput(
            row_potential=last.row_potential + offset,
            potential=potential,
            unassigned_potential=unassigned,
            n_iter=len(self.record.errors),
            error=last.error,
            converged=last.error <= self.options.tol,
            method=method,
            errors=list(self.record.errors),
            phases=dict(self.record.phases),
            start=start,
        )


def solve(
    kernel: Kernel,
    constraint: Any,
    epsilon: float,
    potential: Array,
    *,
    tol: float,
    max_iter: int,
    omega: float | str = 1.0,
    weight: float | None = None,
    reducer: Reducer | None = None,
    record: Record | None = None,
    patience: int | None = None,
    virtual: Array | None = None,
) -> Iterate:
    """Run :func:`iterate` until the error is at most ``tol``, for at most ``max_iter``
    passes, or (with ``patience``) until that many passes made no new best error.

    Returns the last iterate; ``record`` gets the error and phase of every pass.
    """
    best, since_best = math.inf, 0
    passes = iterate(
        kernel,
        constraint,
        epsilon,
        potential,
        omega=omega,
        weight=weight,
        reducer=reducer,
        virtual=virtual,
    )
    for current in passes:
        if record is not None:
            record.add(current)
        if current.error <= tol or current.n_iter >= max_iter:
            return current
        best, since_best = (current.error, 0) if current.error < best else (best, since_best + 1)
        if patience is not None and since_best >= patience:
            return current
    raise AssertionError("iterate() never ends")  # pragma: no cover


def iterate(
    kernel: Kernel,
    constraint: Any,
    epsilon: float,
    potential: Array,
    *,
    omega: float | str = 1.0,
    weight: float | None = None,
    reducer: Reducer | None = None,
    virtual: Array | None = None,
) -> Iterator[Iterate]:
    """Sinkhorn passes without end, one iterate per pass (each reads the matrix once).

    ``potential`` is the starting cluster potential ``g`` (K,) in score units;
    ``constraint`` the column constraint (:mod:`otlabel.constraints`), on the
    potential's device; ``omega`` the over-relaxation weight: 1 is plain
    Sinkhorn-Knopp, a number in (0, 2) a fixed weight, ``"auto"`` the weight of
    :class:`OverRelaxation` (from ``weight``, an earlier solve's, without a
    warm-up, if given).  Between two iterates the column update is applied.
    ``reducer``: for one shard of a problem sharded over processes, combines the
    shard's column partial and row error with every other shard's (identical on
    every shard, so that every shard takes the same steps).  ``virtual`` (N,):
    the scores ``s0`` of a virtual last column (partial mass), never stored as a
    column of the matrix: ``potential`` then has K + 1 entries, the last one its
    ``g0``, and the row update and the column masses include it.

    Raises :class:`UnstableIteration`, carrying the last finite potential, if
    the iterate stops being finite (only a scaling-domain kernel can).
    """
    g = constraint.normalise(potential)
    n_iter, previous = 0, None
    schedule = OverRelaxation(omega, weight)
    while True:
        weight = schedule.weight
        g_real, virtual_rows = _split(g, virtual, epsilon)
        update = RowUpdate(previous, weight, virtual_rows)
        f, columns, row_error = sweep_all(kernel, kernel.column_state(g_real), update)
        if virtual is not None:
            columns = _with_virtual_column(columns, virtual, f, g[-1], epsilon)
        if reducer is not None:
            columns, row_error = reducer.reduce(columns, row_error, f)
        log_mass = columns.log_mass()
        error = float(row_error + constraint.error(g, log_mass, epsilon))
        if not (math.isfinite(error) and _all_finite(f)):
            raise _unstable(kernel, g, n_iter)
        g_next = constraint.update(g, log_mass, epsilon, weight)
        if not _all_finite(g_next):  # a column's mass underflowed to zero
            raise _unstable(kernel, g, n_iter)
        n_iter += 1
        current = Iterate(n_iter, f, g, error, kernel.phase, g_next, weight)
        yield current
        schedule.observe(error)
        kernel.observe(current)
        g, previous = g_next, f


# --------------------------------------------------------------------------
# The kernel contract
# --------------------------------------------------------------------------


class Kernel:
    """One sweep over a block of rows; see the module docstring.

    Attributes
    ----------
    method : "log" or "scaling"
        The domain it iterates in (reported as ``Result.method``).
    phase : "log", "stored" or "finish"
        What the loop records for each of its passes (``Result.phases``).
    exact : bool
        Whether the error it reports is that of its plan recomputed in float64
        from the scores.  An inexact kernel (float32 arithmetic or storage) is
        followed by exact passes (:func:`solve_head`).
    floor : float
        For an inexact kernel: the error below which its own error stops being
        trustworthy (float32 resolution of the plan's entries).
    """

    method = "log"
    phase = "log"
    exact = True
    floor = 0.0
    log_a: Array  # (N,) the logs of the row masses, one per row it sweeps

    def column_state(self, potential: Array) -> Array:
        """Per-iteration state derived once from the cluster potential ``g``."""
        raise NotImplementedError

    def argmax(self, potential: Array) -> Array | None:
        """``argmax_k (S_ik + g_k)`` (N,) if this kernel knows it exactly without a
        read of the scores (the first index on ties, as NumPy); else None."""
        return None

    def blocks(self) -> Iterator[tuple[slice, Array]]:
        """The row blocks of the (prepared) matrix, in a fixed order."""
        raise NotImplementedError

    def sweep(self, block: Array, rows: slice, state: Array, update: RowUpdate) -> BlockSweep:
        """Process one block of rows."""
        raise NotImplementedError

    def observe(self, current: Iterate) -> None:
        """Hear of each iterate (a kernel may then change how it iterates)."""

    def restore(self) -> None:
        """Give back the caller's scores if a kernel was built in their place."""

    def finisher(self, potential: Array | None) -> Kernel | None:
        """An exact kernel cheaper than the backend's precise log kernel, or None.

        ``potential``: the kernel may prepare itself at it (a given start is
        checked before its first pass); it must leave the scores intact.
        """
        return None


#: Float32 resolution of a plan's entries (their exponents are rounded to
#: float32 before ``exp``): the error an inexact kernel can report reliably.
FLOAT32_ERROR_FLOOR = 2e-6


class Reducer(Protocol):
    """How the shards of a sharded problem combine their partials each pass."""

    def reduce(self, columns: ColumnPartial, row_error: Any, f: Array) -> tuple[ColumnPartial, Any]:
        """Every shard's partials combined (the same on every shard)."""


@dataclass
class ColumnPartial:
    """Column masses of a plan, as ``exp(log_max) * scaled_sum`` per column, (K,)."""

    log_max: Array
    scaled_sum: Array

    def combine(self, other: ColumnPartial) -> ColumnPartial:
        """Add two partials; a fixed order of combination gives fixed results."""
        xp = namespace(self.log_max, other.log_max)
        log_max = xp.maximum(self.log_max, other.log_max)
        scaled_sum = self.scaled_sum * xp.exp(self.log_max - log_max)
        scaled_sum = scaled_sum + other.scaled_sum * xp.exp(other.log_max - log_max)
        return ColumnPartial(log_max, scaled_sum)

    def total(self) -> ColumnPartial:
        """Partials stacked over sub-blocks (B, K), summed in order into one (K,)."""
        xp = namespace(self.log_max)
        top = xp.max(self.log_max, axis=0)  # (K,)
        top = xp.where(xp.isfinite(top), top, xp.zeros_like(top))  # a column empty everywhere
        return ColumnPartial(top, xp.sum(self.scaled_sum * xp.exp(self.log_max - top), axis=0))

    def log_mass(self) -> Array:
        xp = namespace(self.log_max)
        return self.log_max + xp.log(self.scaled_sum)


#: How far (in log units) a column's largest plan entry must stand above what
#: clamping ``exp`` may add (``rows x e^floor x`` the largest row factor) for
#: its sum to be trusted: ``e^-37 < 1e-16``.
STARVED_MARGIN = 37.0


def column_partial(
    col_sum: Array, col_log_peak: Array, *, exp_floor: float, log_rows: Any, log_max_scale: Any
) -> ColumnPartial:
    """A block's column partial, with the one rule for starved columns.

    ``col_sum`` (..., K) are the column sums of the block's plan entries, each
    ``exp`` clamped below at ``e^exp_floor`` (no subnormals); ``col_log_peak`` the
    log of each column's largest entry.  The clamp adds at most
    ``rows e^exp_floor max_i(row factor)`` to a column: where the largest entry
    stands :data:`STARVED_MARGIN` above that, the sum is kept; elsewhere (a
    column nobody in the block favours) the block reports the largest entry, a
    lower bound within a factor of its row count, which keeps the column update
    finite and conservative instead of the ``+inf`` of a sum that underflowed.
    ``log_rows`` and ``log_max_scale`` broadcast against the leading axes.
    """
    xp = namespace(col_sum)
    limit = exp_floor + log_rows + STARVED_MARGIN + log_max_scale
    reliable = col_log_peak > limit
    return ColumnPartial(
        xp.where(reliable, xp.zeros_like(col_log_peak), col_log_peak),
        xp.where(reliable, col_sum, xp.ones_like(col_sum)),
    )


@dataclass
class BlockSweep:
    """What a kernel returns for one block of rows."""

    row_potential: Array  # (n,) new f for the block, score units
    columns: ColumnPartial  # (K,) column mass of the plan (f_new, g)
    row_error: Any  # sum_i |row mass_i - a_i| over the block (a float or a 0-d array)


@dataclass
class RowUpdate:
    """What the row update needs besides the block: over-relaxation of ``f``,
    ``f = (1 - omega) previous + omega fhat``, and the virtual column of partial
    mass, whose entry in row i is ``exp(virtual_i + f_i/eps)``."""

    previous: Array | None  # (N,) f of the previous pass (score units); None: none yet
    omega: float = 1.0
    virtual: Array | None = None  # (N,) (s0 + g0) / eps; None: no virtual column

    def rows(self, rows: slice) -> Array | None:
        """The previous f of a block, or None when the update is not relaxed."""
        if self.previous is None or self.omega == 1.0:
            return None
        return self.previous[rows]

    def virtual_rows(self, rows: slice) -> Array | None:
        """The block's virtual log entries (before ``f``), or None."""
        return None if self.virtual is None else self.virtual[rows]


@dataclass
class Iterate:
    """One pass's iterate: the plan ``(f, g)``, its L1 marginal error, and the
    potential that the column update sets next."""

    n_iter: int
    row_potential: Array  # (N,) f of this pass
    potential: Array  # (K,) g this pass used
    error: float
    phase: str
    next_potential: Array  # (K,) g of the next pass
    weight: float = 1.0  # the over-relaxation weight of the column update from it


@dataclass
class SolveOutput:
    """The iterate ``(f, g)`` of a head's last pass and how it was reached."""

    row_potential: Array  # (N,) f, score units
    potential: Array  # (K,) g, score units (fixed sizes: sum_k b_k g_k = 0)
    n_iter: int
    error: float
    converged: bool
    method: str
    errors: list[float]
    phases: dict[str, int]
    start: str
    unassigned_potential: float | None = None  # g0 of partial mass's virtual column
    argmax: Array | None = None  # (N,) argmax_k (S_ik + g_k), if the last kernel knew it


@dataclass
class Record:
    """The error and phase of every pass of a head, and the progress callback."""

    callback: Callable[[int, float], Any] | None = None
    errors: list[float] = field(default_factory=list)
    phases: dict[str, int] = field(
        default_factory=lambda: {"start": 0, "log": 0, "stored": 0, "finish": 0}
    )

    def add(self, current: Iterate) -> None:
        self.errors.append(current.error)
        self.phases[current.phase] += 1
        if self.callback is not None:
            self.callback(len(self.errors), current.error)


class UnstableIteration(FloatingPointError):
    """The iterate stopped being finite; carries the last finite potential and
    the number of passes that produced finite iterates."""

    def __init__(self, message: str, potential: Array, n_iter: int) -> None:
        super().__init__(message)
        self.potential = potential
        self.n_iter = n_iter


class OverRelaxation:
    """The over-relaxation weight, fixed or chosen from the convergence rate.

    ``"auto"``: the first :attr:`WARMUP` passes are plain Sinkhorn-Knopp; their
    errors give the contraction rate ``r`` per pass, and the weight becomes the
    successive-over-relaxation optimum ``2 / (1 + sqrt(1 - r))``, at most
    :attr:`MAX_WEIGHT` (measured on the benchmark problems: 4 to 5 times fewer
    passes at SeLa's settings, where the optimum is 1.67 to 1.77; a cap of 1.9
    took fewer passes at small epsilons but three times more where bounds force
    the sizes).  ``weight``: the weight an
    earlier solve of the same problem settled on (a subsample's, or the phase
    before, for ``"auto"``), taken from the first pass without a warm-up.

    Switching a weight on causes a transient in which the error rises, then
    falls at the weight's rate, which may take many passes to come back to the
    error before the switch.  The guard therefore asks for progress, not for a
    new best: after :attr:`PATIENCE` passes at a weight, should the error be no
    lower than :attr:`WINDOW` passes before, the weight's excess over 1 halves
    (below 1.05: plain Sinkhorn-Knopp, which always converges).
    """

    WARMUP = 8
    MAX_WEIGHT = 1.8
    PATIENCE = 30
    WINDOW = 15

    def __init__(self, omega: float | str, weight: float | None = None) -> None:
        self.adaptive = omega == "auto"
        self.warmed_up = self.adaptive and weight is not None
        if self.adaptive:
            self.weight = 1.0 if weight is None else float(weight)
        else:
            self.weight = float(omega)
        self.errors: list[float] = []
        self.at_weight = 0  # passes made at the current weight

    def observe(self, error: float) -> None:
        """Record a pass's error; may change :attr:`weight` for the next pass."""
        self.errors.append(error)
        if self.adaptive and not self.warmed_up and len(self.errors) == self.WARMUP:
            self.weight = self._optimal_weight()
            self.warmed_up, self.at_weight = True, 0
        if self.weight > 1.0:
            self._guard(error)

    def _optimal_weight(self) -> float:
        first, last = self.errors[-4], self.errors[-1]
        if not (0 < last < first):
            return 1.0
        rate = (last / first) ** (1 / 3)
        return min(self.MAX_WEIGHT, 2.0 / (1.0 + math.sqrt(1.0 - rate)))

    def _guard(self, error: float) -> None:
        self.at_weight += 1
        if self.at_weight > self.PATIENCE and error >= self.errors[-1 - self.WINDOW]:
            excess = (self.weight - 1.0) / 2
            self.weight = 1.0 + excess if excess >= 0.05 else 1.0
            self.at_weight = 0


def _split(g: Array, virtual: Array | None, epsilon: float) -> tuple[Array, Array | None]:
    """The real clusters' potential, and the virtual column's ``(s0 + g0)/eps`` per row."""
    if virtual is None:
        return g, None
    return g[:-1], (virtual + g[-1]) / epsilon


def _with_virtual_column(
    columns: ColumnPartial, virtual: Array, f: Array, g0: Any, epsilon: float
) -> ColumnPartial:
    """The real columns' partial with the virtual column's appended: ``(K + 1,)``."""
    xp = namespace(f)
    log_entries = (virtual + f + g0) / epsilon  # (N,) log of the virtual column's plan
    top = xp.max(log_entries)
    scaled = xp.sum(xp.exp(log_entries - top))
    return ColumnPartial(
        xp.concat([columns.log_max, xp.reshape(top, (1,))]),
        xp.concat([columns.scaled_sum, xp.reshape(scaled, (1,))]),
    )


def _beyond_range(unstable: UnstableIteration, head: Head, options: Options) -> FloatingPointError:
    """The log domain's own overflow, as an error that names the way out."""
    dtype = getattr(head.scores, "dtype", "the scores' dtype")
    wider = "" if str(dtype).endswith("float64") else "pass float64 scores, "
    return FloatingPointError(
        f"{head.name}: {unstable} at epsilon={options.epsilon:g}: the scores' spread over "
        f"epsilon is beyond the range of {dtype}; {wider}pass a larger epsilon, or "
        "epsilon=0 for the exact labels"
    )


def _unstable(kernel: Kernel, potential: Array, n_done: int) -> UnstableIteration:
    message = f"the {kernel.method} domain left the floating-point range after {n_done} passes"
    return UnstableIteration(message, potential, n_done)


def sweep_all(kernel: Kernel, state: Array, update: RowUpdate) -> tuple[Array, ColumnPartial, Any]:
    """One pass over all row blocks: the new f and the column masses of (f, g).

    A single block's f is returned as the sweep wrote it; blocks' are written into
    one (N,) vector as they come (a stream's pass then holds the previous f and
    this one, not also a list of blocks and their concatenation)."""
    n_rows = kernel.log_a.shape[0]
    f: Array = None
    columns: ColumnPartial | None = None
    row_error: Any = 0.0
    for rows, block in kernel.blocks():
        result = kernel.sweep(block, rows, state, update)
        if f is None and rows.stop - rows.start == n_rows:
            f = result.row_potential
        else:
            if f is None:
                first = result.row_potential
                xp, where = namespace(first), device_of(first)
                f = xp.empty((n_rows,), dtype=first.dtype, device=where)
            f[rows] = result.row_potential
        columns = result.columns if columns is None else columns.combine(result.columns)
        row_error = row_error + result.row_error
        del block, result  # a stream's next block is read without this one held
    assert columns is not None, "a problem has at least one row"
    return f, columns, row_error


def _all_finite(x: Array) -> bool:
    xp = namespace(x)
    return bool(xp.all(xp.isfinite(x)))


# --------------------------------------------------------------------------
# Blocks of rows, and the plan
# --------------------------------------------------------------------------

#: Target size in bytes of one block of rows in the working precision: large
#: enough to amortise the per-block overhead, small enough to stay in L2, so
#: that the two uses of a block (row sums, then column sums) read memory once.
BLOCK_BYTES = 1 << 20


def block_rows(n_cols: int, itemsize: int = 8, block_bytes: int = BLOCK_BYTES) -> int:
    """Rows per block so that one block in the working precision is ~``block_bytes``."""
    return max(1, block_bytes // (n_cols * itemsize))


def row_blocks(matrix: Array, rows_per_block: int) -> Iterator[tuple[slice, Array]]:
    """``(rows, matrix[rows])`` for consecutive blocks of ``rows_per_block`` rows."""
    n_rows = matrix.shape[0]
    for start in range(0, n_rows, rows_per_block):
        rows = slice(start, min(start + rows_per_block, n_rows))
        yield rows, matrix[rows, ...]


def plan_of(
    scores: Array,
    row_potential: Array,
    potential: Array,
    epsilon: float,
    log_a: np.ndarray | None = None,
) -> Array:
    """The plan ``exp((S_ik + f_i + g_k) / eps)`` (N, K), in the scores' dtype.

    Computed as ``exp((S_ik + g_k - m_i) / eps + (f_i + m_i) / eps)`` with ``m_i`` the
    row's best ``S_ik + g_k``, so that no exponent overflows.  Where the scores are
    so large against epsilon that ``f_i``'s float64 rounding moves the exponent by
    more than ``1e-6`` (scores of 1e30 at epsilon 0.04), ``f_i`` cannot carry its
    row's scale: given ``log_a`` (N,) (the sample weights' logs, no virtual
    column), such a row is the plain row update at ``g``, ``a_i softmax((S_i + g) / eps)``.
    """
    xp = namespace(scores, row_potential, potential)
    plan = xp.empty_like(scores)
    for rows, block in row_blocks(scores, block_rows(scores.shape[1])):
        shifted = xp.astype(block, potential.dtype) + potential  # (B, K)
        best = xp.max(shifted, axis=1)  # (B,) finite: a row has an allowed cluster
        exponent = (shifted - best[:, None]) / epsilon  # (B, K), at most 0
        log_scale = (row_potential[rows] + best) / epsilon  # (B,)
        if log_a is not None:
            coarse = xp.abs(best) * 2.0**-52 > 1e-6 * epsilon
            if bool(xp.any(coarse)):
                weights = xp.asarray(log_a[rows], dtype=log_scale.dtype, device=log_scale.device)
                exact = weights - xp.log(xp.sum(xp.exp(exponent), axis=1))
                log_scale = xp.where(coarse, exact, log_scale)
        plan[rows, ...] = xp.astype(xp.exp(exponent + log_scale[:, None]), scores.dtype)
    return plan
