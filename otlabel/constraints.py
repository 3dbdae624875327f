"""Column constraints: what the cluster masses ``m = Q^T 1`` must satisfy.

Every constraint is one column update of the one Sinkhorn loop
(:mod:`otlabel.solver`), its error term, and what its hard labels optimise
(:mod:`otlabel.rounding`).  The loop hands the update the current cluster
potential ``g`` and the log column masses ``log m`` of the iterate ``(f, g)``;
``W_k = m_k exp(-g_k / eps)`` is what the mass would be at ``g = 0``.  Each
update is the exact minimisation of the dual over ``g`` (docs/theory.md, section
"Column constraints"), written once as :meth:`exact_update`:

=========  ==============================  ==========================================
kind       column term                     exact update
=========  ==============================  ==========================================
fixed      ``m = b``                       ``g = eps log(b / W)``
bounded    ``lo <= m <= hi``               ``g = eps log(clip(W, lo, hi) / W)``
relaxed    ``- tau KL(m || b)``            ``g = tau/(tau + eps) eps log(b / W)``
=========  ==============================  ==========================================

The error of an iterate on the column side is ``sum_k |m_k - m+_k|``, with
``m+ = W exp(g+ / eps)`` the mass that the exact update ``g+`` would set (fixed:
``b``; bounded: ``clip(W, lo, hi)``; relaxed: ``b^(tau/(tau+eps))
W^(eps/(tau+eps))``): zero exactly at the optimum.  One formula for every kind
(:meth:`ColumnConstraint.error`).

Two pieces of structure enter as data, not as new kinds:

- **known labels**: the known samples' mass ``c_k`` counts toward cluster k;
  the loop iterates over the other rows only, and the constraint is on
  ``m + c`` (fixed: target ``b - c``; bounded: ``clip(W, max(lo - c, 0), hi - c)``;
  relaxed: the root of ``W e^(g/eps) + c = b e^(-g/tau)``, a few Newton steps);
- **partial mass**: one more column, the virtual "unassigned" cluster, with its
  fixed mass ``1 - rho`` (a relaxed constraint gives that column ``tau = inf``).

A new kind of constraint is one class here: its exact update, its count
bounds or slot values for hard labels, and whether over-relaxation is proven
for it (docs/architecture.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from . import _validation as check
from ._arrays import device_of, from_host, namespace, to_numpy

Array = Any

#: ``N x`` within this (relative) of an integer counts as that integer, so that
#: uniform weights with N divisible by K give equal counts exactly.
INTEGRAL_TOLERANCE = 1e-9
#: The mass a closed column is held at: one whose known samples already fill it (fixed
#: target or upper bound 0 for the iterated rows).  ``log 0`` would make its potential
#: ``-inf``; at this mass it stays finite, and the mass it keeps (counted in the error)
#: is far below any tolerance, while its entries stay inside float32's range.
CLOSED_MASS = 1e-20
#: Newton steps for the relaxed update with known labels (quadratic convergence
#: from an upper bound of a convex increasing function: far more than needed).
NEWTON_STEPS = 30


class ColumnConstraint:
    """What every column constraint provides; see the module docstring."""

    #: Whether over-relaxation of both potentials is proven to converge.
    relaxable = False
    #: Whether exact hard labels are count bounds (else concave slot values).
    counts_bounded = True
    #: (K,) known samples per cluster (None: no known labels).
    known_counts: np.ndarray | None = None

    def to(self, like: Array) -> ColumnConstraint:
        """The same constraint with its vectors in the library and on the device of ``like``."""
        raise NotImplementedError

    def exact_update(self, g: Array, log_mass: Array, epsilon: float) -> Array:
        """The potential that minimises the dual over ``g`` (block-coordinate step)."""
        raise NotImplementedError

    def update(self, g: Array, log_mass: Array, epsilon: float, omega: float = 1.0) -> Array:
        """The column update: ``g + omega (exact - g)``, in normal form."""
        exact = self.reachable_update(g, log_mass, epsilon)
        return self.normalise(exact if omega == 1.0 else g + omega * (exact - g))

    def reachable_update(self, g: Array, log_mass: Array, epsilon: float) -> Array:
        """:meth:`exact_update`, except that a closed column (no mass left for it) that
        no sample may join (every score ``-inf``: its mass is exactly 0, whatever ``g``)
        keeps its potential: any finite one is optimal, and an infinite one would make
        ``-inf + inf`` of its scores.  An open column whose mass underflowed still
        gets an infinite update, which the loop reports as unstable."""
        xp = namespace(log_mass)
        kept = (log_mass == -math.inf) & self.closed()
        return xp.where(kept, g, self.exact_update(g, log_mass, epsilon))

    def closed(self) -> Any:
        """(K,) bool: the columns that must take no mass (False: none)."""
        return False

    def reaching(self, unreachable: np.ndarray) -> ColumnConstraint:
        """The constraint told which columns no sample may join ((K,) bool): itself,
        unless it must know them to keep their potential (relaxed sizes)."""
        return self

    def error(self, g: Array, log_mass: Array, epsilon: float) -> Array:
        """``sum_k |m_k - m+_k|``, ``m+ = m exp((g+ - g)/eps)`` the mass the update would set."""
        xp = namespace(log_mass)
        step = (self.reachable_update(g, log_mass, epsilon) - g) / epsilon
        return xp.sum(xp.exp(log_mass) * xp.abs(xp.expm1(step)))

    def normalise(self, g: Array) -> Array:
        """``g`` itself: only fixed sizes leave the potential a free constant."""
        return g

    def offset(self, g: Array) -> Any:
        """The constant that :meth:`normalise` takes off ``g`` (0 here)."""
        return 0.0

    def mass_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """The iterated rows' mass per column, lower and upper (host arrays; ``inf``:
        unbounded): what a plan must meet (:mod:`otlabel.feasibility`)."""
        raise NotImplementedError

    def count_bounds(self, n_samples: int) -> tuple[np.ndarray, np.ndarray]:
        """Bounds on the iterated samples' counts per column (``n_samples`` of them)."""
        raise NotImplementedError


@dataclass(frozen=True)
class FixedSizes(ColumnConstraint):
    """Cluster masses fixed at ``b`` (K,): SeLa's equipartition (targets of the iterated
    rows: ``b - c`` with known labels)."""

    target: Array  # (K,) b - c: the iterated rows' masses
    known_counts: np.ndarray | None = None  # (K,) known samples per cluster
    given: np.ndarray | None = None  # (K,) b, fractions of all samples (None: the target)

    kind = "fixed"
    relaxable = True

    def to(self, like: Array) -> FixedSizes:
        return replace(self, target=_moved(self.target, like))

    def exact_update(self, g: Array, log_mass: Array, epsilon: float) -> Array:
        xp = namespace(log_mass)
        return g + epsilon * (xp.log(_open(self.target)) - log_mass)

    def error(self, g: Array, log_mass: Array, epsilon: float) -> Array:
        xp = namespace(log_mass)
        return xp.sum(xp.abs(xp.exp(log_mass) - self.target))

    def normalise(self, g: Array) -> Array:
        """The representative of ``g`` (defined up to a constant) with ``sum b g = 0``."""
        return g - self.offset(g)

    def offset(self, g: Array) -> Any:
        """``sum_k b_k g_k`` (``b`` normalised), the constant :meth:`normalise` takes off."""
        xp = namespace(g)
        return xp.sum(self.target * g) / xp.sum(self.target)

    def closed(self) -> Any:
        return self.target <= CLOSED_MASS

    def mass_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """The iterated rows' mass per column, lower and upper (K,): ``b - c`` both."""
        target = to_numpy(self.target)
        return target, target

    def count_bounds(self, n_samples: int) -> tuple[np.ndarray, np.ndarray]:
        """Counts of the iterated samples: ``floor(N b_k)..ceil(N b_k)`` less the known
        ones (N: all samples)."""
        weights = to_numpy(self.target) if self.given is None else self.given
        known = _known(self.known_counts, weights.size)
        lower, upper = _integer_bounds(n_samples + int(known.sum()), weights, weights)
        return np.maximum(lower - known, 0), upper - known


@dataclass(frozen=True)
class BoundedSizes(ColumnConstraint):
    """Cluster masses within ``[lo_k, hi_k]`` (fractions of all the mass; of the iterated
    rows: ``[max(lo - c, 0), hi - c]`` with known labels).

    Potentials have no free constant here: ``g_k = 0`` means the cluster's mass
    is inside its box and nothing pushes it.
    """

    lower: Array  # (K,) lo, 0 <= lo <= hi
    upper: Array  # (K,) hi > 0
    known_counts: np.ndarray | None = None
    #: The bounds as given (before the known mass was taken off), for count bounds.
    given: tuple[np.ndarray, np.ndarray] | None = None
    #: ``"upper"`` (``"lower"``) when the upper (lower) bounds sum to the whole mass and
    #: so force every mass onto them: the clipped update is then block-coordinate ascent
    #: on a degenerate dual and crawls (330 passes fixed, none in 5 000 bounded); the
    #: fixed update on those bounds is exact, its constant taken so that every ``g``
    #: has the bounded sign (``<= 0`` pushing down, ``>= 0`` up).
    forced: str | None = None

    kind = "bounded"
    #: Not proven, measured (docs/cluster-sizes.md): over-relaxed passes converge, 3 to
    #: 8 times fewer; the automatic weight falls back to plain passes if they stall.
    relaxable = True

    def to(self, like: Array) -> BoundedSizes:
        return replace(self, lower=_moved(self.lower, like), upper=_moved(self.upper, like))

    def exact_update(self, g: Array, log_mass: Array, epsilon: float) -> Array:
        """``eps log(clip(W, lo, hi) / W)``; zero while the mass is inside the box."""
        if self.forced is None:
            return epsilon * self._log_clip_ratio(log_mass - g / epsilon)
        xp = namespace(log_mass)
        target = self.upper if self.forced == "upper" else self.lower
        reachable = log_mass > -math.inf  # (a column no sample may join keeps its g)
        fixed = xp.where(reachable, g + epsilon * (xp.log(_open(target)) - log_mass), g)
        if self.forced == "upper":
            return xp.where(reachable, fixed - xp.max(xp.where(reachable, fixed, -math.inf)), g)
        return xp.where(reachable, fixed - xp.min(xp.where(reachable, fixed, math.inf)), g)

    def closed(self) -> Any:
        return self.upper <= CLOSED_MASS

    def mass_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """The iterated rows' mass per column: ``[lo - c, hi - c]`` (K,) each."""
        return to_numpy(self.lower), to_numpy(self.upper)

    def count_bounds(self, n_samples: int) -> tuple[np.ndarray, np.ndarray]:
        """``floor(N lo_k)..ceil(N hi_k)`` less the known samples (N: all samples)."""
        lower, upper = self.given or (to_numpy(self.lower), to_numpy(self.upper))
        if self.forced is not None:  # the forcing bounds are the sizes: floor..ceil of them
            lower = upper = upper if self.forced == "upper" else lower
        known = _known(self.known_counts, lower.size)
        lower_count, upper_count = _integer_bounds(n_samples + int(known.sum()), lower, upper)
        return np.maximum(lower_count - known, 0), upper_count - known

    def _log_clip_ratio(self, log_w: Array) -> Array:
        """``log(clip(W, lo, hi) / W)``, exactly 0 inside the box (also for ``W = 0``, lo = 0)."""
        xp = namespace(log_w)
        with np.errstate(divide="ignore"):
            log_lo = xp.log(self.lower)  # -inf where lo = 0
        log_hi = xp.log(_open(self.upper))
        zero = xp.zeros_like(log_w)
        raised = xp.where(log_w < log_lo, log_lo - log_w, zero)
        return xp.where(log_w > log_hi, log_hi - log_w, raised)


@dataclass(frozen=True)
class RelaxedSizes(ColumnConstraint):
    """Cluster masses pulled toward ``b`` by ``- tau KL(m || b)`` (generalised KL).

    ``tau`` per column (``inf``: that column's mass is fixed, as the virtual
    column of partial mass is).  At the optimum ``g_k = -tau log(m_k / b_k)``,
    with ``m`` including the known samples' mass ``c``.  Hard labels maximise
    ``sum_i S_{i, y_i} - tau sum_k n_k log(n_k / (N b_k))``.
    """

    target: Array  # (K,) b, fractions of all the mass
    penalty: Array  # (K,) tau > 0, inf allowed
    known: Array | None = None  # (K,) c, mass of the known samples
    known_counts: np.ndarray | None = None
    #: (K,) bool: the clusters no sample may join (every score ``-inf``): their mass is
    #: 0 whatever ``g``, and the update keeps their potential (the optimum,
    #: ``-tau log(0 / b)``, is infinite and would make ``-inf + inf`` of their scores)
    unreachable: Array | None = None

    kind = "relaxed"
    counts_bounded = False
    relaxable = True  # measured, as for bounded sizes

    def to(self, like: Array) -> RelaxedSizes:
        known = None if self.known is None else _moved(self.known, like)
        unreachable = None if self.unreachable is None else _moved(self.unreachable, like)
        return replace(
            self,
            target=_moved(self.target, like),
            penalty=_moved(self.penalty, like),
            known=known,
            unreachable=unreachable,
        )

    def closed(self) -> Any:
        """The clusters no sample may join (:attr:`unreachable`)."""
        return False if self.unreachable is None else self.unreachable

    def reaching(self, unreachable: np.ndarray) -> RelaxedSizes:
        return replace(self, unreachable=unreachable if unreachable.any() else None)

    def exact_update(self, g: Array, log_mass: Array, epsilon: float) -> Array:
        """``tau/(tau+eps) eps log(b/W)``; with known mass, Newton on
        ``log(W e^(g/eps) + c) = log b - g/tau``."""
        xp = namespace(log_mass)
        log_w = log_mass - g / epsilon
        share = 1.0 / (1.0 + epsilon / self.penalty)  # tau / (tau + eps), 1 for tau = inf
        free = share * epsilon * (xp.log(self.target) - log_w)
        if self.known is None:
            return free
        return self._with_known(free, log_w, epsilon)

    def _with_known(self, start: Array, log_w: Array, epsilon: float) -> Array:
        """Newton from ``start`` (the root without known mass: an upper bound of the
        root of a convex increasing function, so the steps descend onto it)."""
        xp = namespace(log_w)
        log_b, known, tau = xp.log(self.target), self.known, self.penalty
        y = start
        for _ in range(NEWTON_STEPS):
            held = xp.exp(log_w + y / epsilon)  # (K,) W e^(y/eps)
            value = xp.log(held + known) - log_b + y / tau
            slope = held / (epsilon * (held + known)) + 1.0 / tau
            y = y - value / slope
        return y

    def slot_values(self, n_free: int, counts: np.ndarray) -> np.ndarray:
        """``h_k(n_k) - h_k(n_k - 1)`` (K,): the value of a cluster's ``n_k``-th iterated
        sample, ``h_k(n) = -tau_k n log(n / (N b_k))`` on counts with the known ones;
        ``+inf`` for ``n_k <= 0`` and, for ``tau = inf`` columns, inside their bounds 0,
        ``+inf`` below and ``-inf`` above."""
        target, penalty = to_numpy(self.target), to_numpy(self.penalty)
        known = _known(self.known_counts, target.size)
        total = n_free + int(known.sum())
        n = counts + known
        values = np.full(target.size, np.inf)
        finite = np.isfinite(penalty) & (counts >= 1)
        expected = total * target
        n_f, e_f = n[finite].astype(np.float64), expected[finite]
        values[finite] = -penalty[finite] * (_xlogx(n_f, e_f) - _xlogx(n_f - 1, e_f))
        fixed = ~np.isfinite(penalty)
        lower, upper = self.count_bounds(n_free)
        inside = np.where(counts <= lower, np.inf, np.where(counts > upper, -np.inf, 0.0))
        values[fixed] = inside[fixed]
        return values

    def slot_parameters(self, n_free: int) -> tuple[np.ndarray, ...]:
        """What :meth:`slot_values` needs, as arrays: ``tau`` (inf: fixed count), the
        expected counts ``N b``, the known counts, and the fixed columns' bounds."""
        target, penalty = to_numpy(self.target), to_numpy(self.penalty)
        known = _known(self.known_counts, target.size)
        lower, upper = self.count_bounds(n_free)
        expected = (n_free + int(known.sum())) * target
        return penalty.astype(np.float64), expected, known.astype(np.int64), lower, upper

    def mass_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """The iterated rows' mass per column: free (``[0, inf]``) where ``tau`` is
        finite, ``b - c`` where it is infinite (a fixed mass)."""
        target, penalty = to_numpy(self.target), to_numpy(self.penalty)
        known = np.zeros_like(target) if self.known is None else to_numpy(self.known)
        fixed = ~np.isfinite(penalty)
        lower = np.where(fixed, np.maximum(target - known, 0.0), 0.0)
        return lower, np.where(fixed, lower, np.inf)

    def count_bounds(self, n_samples: int) -> tuple[np.ndarray, np.ndarray]:
        """Bounds that make a start feasible: ``[0, N]`` for relaxed columns, and for
        ``tau = inf`` columns (fixed mass) ``floor(N b_k)..ceil(N b_k)`` less the known."""
        target, penalty = to_numpy(self.target), to_numpy(self.penalty)
        known = _known(self.known_counts, target.size)
        lower = np.zeros(target.size, dtype=np.int64)
        upper = np.full(target.size, n_samples, dtype=np.int64)
        fixed = ~np.isfinite(penalty)
        if fixed.any():
            low, high = _integer_bounds(n_samples + int(known.sum()), target, target)
            lower[fixed] = np.maximum(low - known, 0)[fixed]
            upper[fixed] = (high - known)[fixed]
        return lower, upper


def _xlogx(n: np.ndarray, expected: np.ndarray) -> np.ndarray:
    """``n log(n / expected)`` with ``0 log 0 = 0``."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(n > 0, n * np.log(n / expected), 0.0)


def _known(counts: np.ndarray | None, size: int) -> np.ndarray:
    return np.zeros(size, dtype=np.int64) if counts is None else counts


def _moved(values: Array, like: Array) -> Array:
    return from_host(to_numpy(values), namespace(like), device_of(like))


def _integer_bounds(
    n_samples: int, lower: np.ndarray, upper: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """``floor(N lower)`` and ``ceil(N upper)``, an integer within tolerance taken as such."""
    return _rounded(n_samples * lower, np.floor), _rounded(n_samples * upper, np.ceil)


def _rounded(target: np.ndarray, rounding: Any) -> np.ndarray:
    nearest = np.round(target)
    integral = np.abs(target - nearest) <= INTEGRAL_TOLERANCE * np.maximum(1.0, target)
    return np.where(integral, nearest, rounding(target)).astype(np.int64)


def count_bounds(n_samples: int, cluster_weights: Any) -> tuple[np.ndarray, np.ndarray]:
    """Per-cluster count bounds ``floor(N b_k)`` and ``ceil(N b_k)`` of balanced labels.

    ``N b_k`` within 1e-9 (relative) of an integer counts as that integer, so
    that uniform weights with N divisible by K give equal counts exactly.

    Examples
    --------
    >>> import numpy as np
    >>> lower, upper = count_bounds(10, np.full(4, 0.25))
    >>> lower.tolist(), upper.tolist()
    ([2, 2, 2, 2], [3, 3, 3, 3])

    Weights are normalised as :func:`otlabel.assign` normalises them:

    >>> count_bounds(10, np.ones(4))[1].tolist()
    [3, 3, 3, 3]
    """
    n_checked = int(check.positive_int(n_samples, "n_samples") or 0)  # never None here
    given = check.as_host(cluster_weights)
    if given.ndim != 1 or given.size == 0:
        raise ValueError(
            f"cluster_weights: expected a 1-D array of K >= 1 weights, got shape {given.shape}"
        )
    weights = check.weights(given, given.size, "cluster_weights")  # normalised
    return _integer_bounds(n_checked, weights, weights)


def _open(target: Array) -> Array:
    """``target`` with a closed column's 0 raised to :data:`CLOSED_MASS`."""
    xp = namespace(target)
    return xp.where(target > CLOSED_MASS, target, xp.full_like(target, CLOSED_MASS))
