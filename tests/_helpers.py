"""Test helpers: the exact LP oracle and marginal errors."""

from __future__ import annotations

import numpy as np
from scipy.optimize import linprog
from scipy.sparse import coo_matrix, vstack


def bounded_lp_optimum(scores: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> float:
    """max sum_ik S_ik x_ik, rows sum to 1, lower_k <= column sums <= upper_k (HiGHS)."""
    n, k = scores.shape
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
        bounds=(0, None),
        method="highs",
    )
    assert result.status == 0, result.message
    return -result.fun


def plan_marginal_errors(plan: np.ndarray, a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    plan = np.asarray(plan, dtype=np.float64)
    return float(np.abs(plan.sum(axis=1) - a).sum()), float(np.abs(plan.sum(axis=0) - b).sum())
