"""The optimal dual of exact labels that leaves every sample the widest margin.

Exact labels ``y`` come with an optimal dual ``g`` (K,): every sample's label is
its best cluster at ``g``, ``S_{i,y_i} + g_{y_i} >= S_ik + g_k``.  Such ``g`` form a
polyhedron of difference constraints, ``g_y - g_k >= D_yk`` with ``D_yk = max_{i:
y_i = y} (S_ik - S_iy)`` (K x K, one read of the scores).  The rounding returns
one on its boundary, where some samples are tied: the entropic plan at a tiny
epsilon then splits them, and Sinkhorn moves ``g`` about ``epsilon`` a pass, far
too slowly to untie them.  :func:`central_dual` returns instead the ``g`` whose
smallest margin ``delta`` is largest: ``delta* = -`` the maximum mean weight of a
cycle of ``D`` (Karp's algorithm), and ``g`` the longest paths of ``D + delta``.
Where ``delta* > 0`` (the labels are the unique optimum), every sample prefers
its label by at least ``delta*``, and at an epsilon far below it the plan is the
labels' own.

>>> import numpy as np
>>> scores = np.array([[0.0, -1.0], [0.0, -0.5], [-2.0, 0.0], [-1.0, 0.0]])
>>> g, margin = central_dual(scores, np.array([0, 0, 1, 1]), np.zeros(2))
>>> round(margin, 4), np.round(g - g.mean(), 4).tolist()
(0.75, [0.125, -0.125])
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._arrays import to_numpy

__all__ = ["central_dual", "label_gaps"]

#: Rows read at a time for the K x K gaps.
BLOCK_ROWS = 4096


def central_dual(scores: Any, labels: np.ndarray, dual: np.ndarray) -> tuple[np.ndarray, float]:
    """The optimal dual of ``labels`` with the largest smallest margin, and that margin.

    ``dual`` (K,) is an optimal dual of ``labels`` (returned as it is, with its own
    smallest margin, where no dual has a positive one: tied optima).  ``scores``
    (N, K) of any supported library, read once in blocks of rows; ``-inf`` entries
    (forbidden pairs) constrain nothing.
    """
    gaps = label_gaps(scores, labels, dual.shape[0])  # (K, K)
    cycle_mean = max_mean_cycle(gaps)
    if not cycle_mean < 0:  # a cycle of ties: other optima, no positive margin
        return dual, smallest_margin(gaps, dual)
    spread = _finite_spread(gaps)
    margin = -cycle_mean if np.isfinite(cycle_mean) else max(spread, 1.0)
    # a hair under the largest margin keeps every cycle negative in floating point
    heights = longest_paths(gaps + margin * (1 - 1e-6))
    return -heights, smallest_margin(gaps, -heights)


def label_gaps(scores: Any, labels: np.ndarray, n_clusters: int) -> np.ndarray:
    """``D_yk = max_{i: y_i = y} (S_ik - S_iy)`` (K, K), ``-inf`` off the labels'
    clusters and on the diagonal."""
    gaps = np.full((n_clusters, n_clusters), -np.inf)
    for start in range(0, labels.shape[0], BLOCK_ROWS):
        rows = slice(start, min(start + BLOCK_ROWS, labels.shape[0]))
        block = np.asarray(to_numpy(scores[rows]), dtype=np.float64)  # (B, K)
        own = labels[rows]
        order = np.argsort(own, kind="stable")
        clusters, firsts = np.unique(own[order], return_index=True)
        with np.errstate(invalid="ignore"):
            behind = block[order] - block[order, own[order]][:, None]  # (B, K)
        behind[np.isnan(behind)] = -np.inf
        gaps[clusters] = np.maximum(gaps[clusters], np.maximum.reduceat(behind, firsts, axis=0))
    np.fill_diagonal(gaps, -np.inf)
    return gaps


def max_mean_cycle(weights: np.ndarray) -> float:
    """The largest mean weight of a cycle of the graph ``weights`` (K, K) (``-inf``:
    no edge), by Karp's theorem over walks that start anywhere; ``-inf`` if acyclic."""
    n_nodes = weights.shape[0]
    walks = np.empty((n_nodes + 1, n_nodes))  # walks[m, v]: heaviest m-edge walk to v
    walks[0] = 0.0
    for m in range(1, n_nodes + 1):
        walks[m] = np.max(walks[m - 1][:, None] + weights, axis=0)
    last = walks[n_nodes]
    with np.errstate(invalid="ignore"):
        lengths = (n_nodes - np.arange(n_nodes))[:, None]  # (K, 1)
        means = (last[None, :] - walks[:n_nodes]) / lengths  # (K, K)
    means[~np.isfinite(walks[:n_nodes])] = np.inf  # no such walk: not the minimum
    worst = np.min(means, axis=0)
    worst = worst[np.isfinite(last)]
    return float(np.max(worst)) if worst.size else -np.inf


def longest_paths(weights: np.ndarray) -> np.ndarray:
    """Heaviest path to every node from a source joined to all by 0 (K,); the graph
    ``weights`` (K, K) has no cycle of positive weight."""
    heights = np.zeros(weights.shape[0])
    for _ in range(weights.shape[0]):
        longer = np.maximum(heights, np.max(heights[:, None] + weights, axis=0))
        if np.array_equal(longer, heights):
            break
        heights = longer
    return heights


def smallest_margin(gaps: np.ndarray, dual: np.ndarray) -> float:
    """``min_{y,k} (g_y - g_k - D_yk)`` over the pairs that constrain (``inf`` if none)."""
    with np.errstate(invalid="ignore"):
        slack = dual[:, None] - dual[None, :] - gaps
    slack = slack[np.isfinite(gaps)]
    return float(np.min(slack)) if slack.size else np.inf


def _finite_spread(gaps: np.ndarray) -> float:
    finite = gaps[np.isfinite(gaps)]
    return float(np.max(np.abs(finite))) if finite.size else 0.0
