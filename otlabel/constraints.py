"""Column constraints: what the cluster masses ``m = Q^T 1`` must satisfy.

Every constraint is one column update of the one Sinkhorn loop
(:mod:`otlabel.solver`), its error term, and the count bounds of its hard labels
(:mod:`otlabel.rounding`).  The loop hands the update the current cluster
potential ``g`` and the log column masses ``log m`` of the iterate ``(f, g)``;
``W_k = m_k exp(-g_k / eps)`` is what the mass would be at ``g = 0``.  Each
update is the exact minimisation of the dual over ``g`` (SPEC §6):

=========  =============================  ===========================================
kind       column term                    update
=========  =============================  ===========================================
fixed      ``m = b``                      ``g = eps log(b / W)``
bounded    ``lo <= m <= hi``              ``g = eps log(clip(W, lo, hi) / W)``
=========  =============================  ===========================================

The error of an iterate on the column side is ``sum_k |m_k - m+_k|``, with
``m+`` the mass that the update would set (fixed: ``b``; bounded:
``clip(W, lo, hi)``): zero exactly at the optimum.

A new kind of constraint is one class here: its update, its error, its
count bounds, and whether over-relaxation is proven for it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from array_api_compat import array_namespace

from ._arrays import device_of, from_host, to_numpy

Array = Any

#: ``N x`` within this (relative) of an integer counts as that integer, so that
#: uniform weights with N divisible by K give equal counts exactly.
INTEGRAL_TOLERANCE = 1e-9


@dataclass(frozen=True)
class FixedSizes:
    """Cluster masses fixed at ``b`` (K,), normalised to sum 1: SeLa's equipartition."""

    target: np.ndarray  # (K,) b

    kind = "fixed"
    #: Over-relaxation of both potentials converges (Thibault et al.).
    relaxable = True

    def to(self, like: Array) -> FixedSizes:
        """The same constraint with its vectors in the library and on the device of ``like``."""
        return FixedSizes(_moved(self.target, like))

    def update(self, g: Array, log_mass: Array, epsilon: float, omega: float = 1.0) -> Array:
        """``g + omega eps (log b - log m)``, normalised to ``sum_k b_k g_k = 0``."""
        xp = array_namespace(log_mass)
        return self.normalise(g + omega * epsilon * (xp.log(self.target) - log_mass))

    def error(self, g: Array, log_mass: Array, epsilon: float) -> Array:
        xp = array_namespace(log_mass)
        return xp.sum(xp.abs(xp.exp(log_mass) - self.target))

    def normalise(self, g: Array) -> Array:
        """The representative of ``g`` (defined up to a constant) with ``sum b g = 0``."""
        return g - self.offset(g)

    def offset(self, g: Array) -> Any:
        """The constant that :meth:`normalise` takes off ``g``: ``sum_k b_k g_k``."""
        xp = array_namespace(g)
        return xp.sum(self.target * g)

    def count_bounds(self, n_samples: int) -> tuple[np.ndarray, np.ndarray]:
        """``floor(N b_k) <= n_k <= ceil(N b_k)``."""
        target = to_numpy(self.target)
        return _integer_bounds(n_samples, target, target)


@dataclass(frozen=True)
class BoundedSizes:
    """Cluster masses within ``[lo_k, hi_k]`` (fractions of all the mass).

    Potentials have no free constant here: ``g_k = 0`` means the cluster's mass
    is inside its box and nothing pushes it.
    """

    lower: np.ndarray  # (K,) lo, 0 <= lo <= hi
    upper: np.ndarray  # (K,) hi > 0

    kind = "bounded"
    #: Not proven for the clipped update: plain passes (SPEC §6).
    relaxable = False

    def to(self, like: Array) -> BoundedSizes:
        """The same constraint with its vectors in the library and on the device of ``like``."""
        return BoundedSizes(_moved(self.lower, like), _moved(self.upper, like))

    def update(self, g: Array, log_mass: Array, epsilon: float, omega: float = 1.0) -> Array:
        """``eps log(clip(W, lo, hi) / W)``; zero while the mass is inside the box."""
        log_w = log_mass - g / epsilon  # (K,) log W
        return epsilon * self._log_clip_ratio(log_w)

    def error(self, g: Array, log_mass: Array, epsilon: float) -> Array:
        xp = array_namespace(log_mass)
        log_w = log_mass - g / epsilon
        clipped = xp.exp(log_w + self._log_clip_ratio(log_w))  # clip(W, lo, hi)
        return xp.sum(xp.abs(xp.exp(log_mass) - clipped))

    def normalise(self, g: Array) -> Array:
        """``g`` itself: bounded potentials have no free constant."""
        return g

    def offset(self, g: Array) -> Any:
        return 0.0

    def count_bounds(self, n_samples: int) -> tuple[np.ndarray, np.ndarray]:
        """``floor(N lo_k) <= n_k <= ceil(N hi_k)``."""
        return _integer_bounds(n_samples, to_numpy(self.lower), to_numpy(self.upper))

    def _log_clip_ratio(self, log_w: Array) -> Array:
        """``log(clip(W, lo, hi) / W)``, exactly 0 inside the box (also for ``W = 0``, lo = 0)."""
        xp = array_namespace(log_w)
        with np.errstate(divide="ignore"):
            log_lo = xp.log(self.lower)  # -inf where lo = 0
        log_hi = xp.log(self.upper)
        zero = xp.zeros_like(log_w)
        raised = xp.where(log_w < log_lo, log_lo - log_w, zero)
        return xp.where(log_w > log_hi, log_hi - log_w, raised)


ColumnConstraint = FixedSizes | BoundedSizes


def _moved(values: Array, like: Array) -> Array:
    return from_host(to_numpy(values), array_namespace(like), device_of(like))


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
    """
    weights = np.asarray(cluster_weights, dtype=np.float64)
    return FixedSizes(weights).count_bounds(n_samples)
