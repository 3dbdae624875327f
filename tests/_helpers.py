"""Test helpers: the exact LP oracle (``-inf`` scores: forbidden variables) and
marginal errors."""

from __future__ import annotations

import numpy as np
from scipy.optimize import linprog
from scipy.sparse import coo_matrix, vstack


def bounded_lp_optimum(
    scores: np.ndarray, lower: np.ndarray, upper: np.ndarray, *, feasible_only: bool = False
) -> float:
    """max sum_ik S_ik x_ik, rows sum to 1, lower_k <= column sums <= upper_k (HiGHS);
    a ``-inf`` score's variable is removed (held at 0).  ``feasible_only``: NaN when
    no x meets the constraints, instead of failing."""
    n, k = scores.shape
    allowed = np.isfinite(scores).ravel()
    scores = np.where(np.isfinite(scores), scores, 0.0)
    variables = np.arange(n * k)
    ones = np.ones(n * k)
    rows = coo_matrix((ones, (np.repeat(np.arange(n), k), variables)), shape=(n, n * k))
    columns = coo_matrix((ones, (np.tile(np.arange(k), n), variables)), shape=(k, n * k))
    result = linprog(
        -scores.ravel(),
        A_ub=vstack([columns, -columns]),
        b_ub=np.concatenate([upper, -lower]).astype(float),
        A_eq=rows,
        b_eq=np.ones(n),
        bounds=[(0, None if free else 0) for free in allowed],
        method="highs",
    )
    if feasible_only and result.status == 2:
        return float("nan")
    assert result.status == 0, result.message
    return -result.fun


def plan_marginal_errors(plan: np.ndarray, a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    plan = np.asarray(plan, dtype=np.float64)
    return float(np.abs(plan.sum(axis=1) - a).sum()), float(np.abs(plan.sum(axis=0) - b).sum())


def slot_lp_optimum(scores: np.ndarray, slot_values: np.ndarray) -> float:
    """max sum_ik S_ik x_ik + sum_kj c_kj z_kj: rows sum to 1, column k's sum equals
    sum_j z_kj, 0 <= z <= 1 (HiGHS).  With c_kj decreasing in j this is the exact
    optimum of sum_i S_{i,y_i} + sum_k h_k(n_k), h_k(n) = sum_{j <= n} c_kj."""
    n, k = scores.shape
    allowed = np.isfinite(scores).ravel()
    scores = np.where(np.isfinite(scores), scores, 0.0)
    slots = slot_values.shape[1]
    n_x = n * k
    n_var = n_x + k * slots
    rows_x = coo_matrix(
        (np.ones(n_x), (np.repeat(np.arange(n), k), np.arange(n_x))), shape=(n, n_var)
    )
    columns = coo_matrix(
        (
            np.concatenate([np.ones(n_x), -np.ones(k * slots)]),
            (
                np.concatenate([np.tile(np.arange(k), n), np.repeat(np.arange(k), slots)]),
                np.concatenate([np.arange(n_x), n_x + np.arange(k * slots)]),
            ),
        ),
        shape=(k, n_var),
    )
    finite = np.isfinite(slot_values)
    upper = np.where(finite, 1.0, 0.0).ravel()  # a -inf slot is closed
    forced = slot_values == np.inf  # a +inf slot must be used
    lower = np.where(forced, 1.0, 0.0).ravel()
    values = np.where(finite, slot_values, 0.0).ravel()
    bounds = [(0, None if free else 0) for free in allowed]
    bounds += list(zip(lower, np.maximum(upper, lower), strict=True))
    result = linprog(
        -np.concatenate([scores.ravel(), values]),
        A_eq=vstack([rows_x, columns]),
        b_eq=np.concatenate([np.ones(n), np.zeros(k)]),
        bounds=bounds,
        method="highs",
    )
    assert result.status == 0, result.message
    return -result.fun
