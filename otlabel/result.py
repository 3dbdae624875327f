"""The one result type that every path of :func:`otlabel.assign` returns."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

Array = Any


class ConvergenceWarning(UserWarning):
    """Sinkhorn stopped at ``max_iter`` before reaching ``tol``; see ``res.converged``."""


@dataclass(frozen=True, repr=False)
class Result:
    """What :func:`otlabel.assign` and :func:`otlabel.sinkhorn` return.

    For one score matrix ``(N, K)`` the per-head fields are scalars and the
    arrays have the shapes below.  For H heads (a stack ``(H, N, K)`` or a list),
    every field gains a leading head axis: ``labels (H, N)``, ``counts`` and
    ``potential (H, K)`` (lists for a list of heads with different K),
    ``n_iter``, ``error``, ``converged``, ``cost``, ``gap`` NumPy arrays ``(H,)``,
    ``method`` a tuple of H names.

    Arrays (``labels``, ``counts``, ``potential``, ``row_potential``, ``plan``)
    come back in the library of the input scores.

    Attributes
    ----------
    labels : (N,) int64 array or None
        Hard labels; None with ``rounding=None``.
    counts : (K,) int64 array or None
        Number of samples per cluster in ``labels``.
    potential : (K,) float64 array
        Cluster potential ``g`` in score units, normalised so that
        ``sum_k b_k g_k = 0``; ``argmax_k (S_ik + g_k)`` are the argmax labels, and
        ``init=potential`` warm-starts a later solve.
    row_potential : (N,) float64 array
        Sample potential ``f``: the plan is ``exp((S_ik + f_i + g_k) / epsilon)``.
    n_iter : int
        Sinkhorn passes over the matrix (each reads it once).
    error : float
        L1 marginal violation of the returned plan, rows and columns together.
    converged : bool
        Whether ``error <= tol``.
    backend : str
        Backend that ran the iteration, e.g. ``"numpy"``.
    method : str
        ``"scaling"`` or ``"log"``: the domain of the iterate returned.
    epsilon : float
        The regularisation the problem was solved at.
    cost : float or None
        ``mean_i S_{i, y_i}`` of the hard labels (SeLa's objective is ``-cost``).
    gap : float or None
        Certified bound on ``(optimum - achieved) / N`` of the balanced labels'
        summed score (score units); None unless ``rounding="balanced"``.
    plan : (N, K) array or None
        The transport plan (rows sum to ``a_i``, total mass 1), only with
        ``return_plan=True``.
    """

    labels: Array | None
    counts: Array | None
    potential: Array
    row_potential: Array
    n_iter: Any
    error: Any
    converged: Any
    backend: str
    method: Any
    epsilon: float
    cost: Any
    gap: Any
    plan: Array | None = None

    def __repr__(self) -> str:
        fields = [
            f"n_iter={self.n_iter!r}",
            f"error={_short(self.error)}",
            f"converged={self.converged!r}",
            f"method={self.method!r}",
            f"backend={self.backend!r}",
        ]
        if self.counts is not None:
            fields.append(f"cost={_short(self.cost)}")
            fields.append(f"cluster sizes {_size_range(self.counts)}")
        if self.gap is not None:
            fields.append(f"gap={_short(self.gap)}")
        return f"Result({', '.join(fields)})"


def warn_not_converged(head: int | None, n_iter: int, error: float, tol: float) -> None:
    where = "" if head is None else f" (head {head})"
    warnings.warn(
        f"Sinkhorn stopped after max_iter={n_iter} passes{where} with marginal error "
        f"{error:.3g} > tol={tol:.3g}; raise max_iter, raise epsilon, or warm-start "
        "with init=<previous result>.potential",
        ConvergenceWarning,
        stacklevel=4,  # warn_not_converged <- _assign_head <- assign <- caller
    )


def _short(value: Any) -> str:
    if isinstance(value, np.ndarray):
        return np.array2string(value, precision=3, separator=", ")
    return f"{value:.3g}" if isinstance(value, float) else repr(value)


def _size_range(counts: Any) -> str:
    heads = counts if isinstance(counts, list) else [counts]
    sizes = [np.asarray(c) for c in heads]
    return f"{min(int(c.min()) for c in sizes)}..{max(int(c.max()) for c in sizes)}"
