"""Clustering metrics for self-labelling: agreement with ground truth, stability, collapse.

All functions take integer label vectors (NumPy arrays, lists, or CPU tensors)
and compute from one contingency table.  NMI, adjusted NMI and ARI follow
scikit-learn's definitions (arithmetic-mean normalisation) and agree with it to
rounding; they are written here so that the adapter needs only NumPy and SciPy.

>>> from otlabel.sela import metrics
>>> truth, found = [0, 0, 1, 1, 2, 2], [1, 1, 0, 0, 2, 2]
>>> metrics.nmi(truth, found), metrics.ari(truth, found), metrics.hungarian_accuracy(truth, found)
(1.0, 1.0, 1.0)
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.special import gammaln

__all__ = [
    "CollapseAlarm",
    "adjusted_nmi",
    "ari",
    "cluster_sizes",
    "cluster_to_class",
    "contingency",
    "hungarian_accuracy",
    "nmi",
    "sela_cost",
]


def nmi(labels_true: Any, labels_pred: Any) -> float:
    """Normalised mutual information, ``MI / mean(H(true), H(pred))``.

    1 for identical partitions (up to renaming), 0 for independent ones.  As
    :func:`sklearn.metrics.normalized_mutual_info_score` with
    ``average_method="arithmetic"``.  Also the stability measure of SeLa:
    ``nmi(previous_labels, labels)`` between two label updates.
    """
    table = contingency(labels_true, labels_pred)
    if _is_trivial(table):
        return 1.0
    mutual = _mutual_information(table)
    if mutual == 0.0:
        return 0.0
    return float(mutual / _mean_entropy(table))


def adjusted_nmi(labels_true: Any, labels_pred: Any) -> float:
    """Adjusted mutual information: NMI corrected for chance (0 in expectation).

    As :func:`sklearn.metrics.adjusted_mutual_info_score` (arithmetic mean).  The
    expected mutual information costs O(R·C·n_max) for R true classes, C
    clusters and largest class or cluster size n_max.
    """
    table = contingency(labels_true, labels_pred)
    if _is_trivial(table) or _is_renaming(table):
        return 1.0
    mutual = _mutual_information(table)
    expected = _expected_mutual_information(table)
    denominator = _mean_entropy(table) - expected
    tiny = np.finfo(np.float64).eps
    denominator = min(denominator, -tiny) if denominator < 0 else max(denominator, tiny)
    return float((mutual - expected) / denominator)


def ari(labels_true: Any, labels_pred: Any) -> float:
    """Adjusted Rand index over pairs of samples, as :func:`sklearn.metrics.adjusted_rand_score`."""
    table = contingency(labels_true, labels_pred).astype(np.float64)
    n = table.sum()
    together_both = float((table * (table - 1)).sum())  # ordered pairs, as sklearn
    together_true = float((table.sum(axis=1) ** 2).sum() - n)
    together_pred = float((table.sum(axis=0) ** 2).sum() - n)
    # pair confusion: tp, fp, fn, tn over ordered pairs
    tp = together_both
    fp = together_pred - tp
    fn = together_true - tp
    tn = n * n - n - tp - fp - fn
    if fp == 0 and fn == 0:
        return 1.0
    return float(2.0 * (tp * tn - fn * fp) / ((tp + fn) * (fn + tn) + (tp + fp) * (fp + tn)))


def hungarian_accuracy(labels_true: Any, labels_pred: Any) -> float:
    """Accuracy under the best one-to-one matching of clusters to classes.

    The matching maximises the number of matched samples (Hungarian algorithm);
    with more clusters than classes, unmatched clusters count as errors.
    """
    table = contingency(labels_true, labels_pred)
    rows, cols = linear_sum_assignment(table, maximize=True)
    return float(table[rows, cols].sum() / table.sum())


def cluster_to_class(labels_true: Any, labels_pred: Any) -> dict[int, int]:
    """The Hungarian matching of :func:`hungarian_accuracy` as ``{cluster: class}``.

    Fitted on one set of samples, it scores clusters of others (held-out data)
    without refitting; clusters left unmatched are absent.

    >>> cluster_to_class([0, 0, 1, 1, 2], [5, 5, 3, 3, 4])
    {3: 1, 4: 2, 5: 0}
    """
    true = _as_labels(labels_true, "labels_true")
    pred = _as_labels(labels_pred, "labels_pred")
    table = contingency(true, pred)
    rows, cols = linear_sum_assignment(table, maximize=True)
    classes, clusters = np.unique(true), np.unique(pred)
    pairs = sorted(zip(cols, rows, strict=True))
    return {int(clusters[c]): int(classes[r]) for c, r in pairs}


def cluster_sizes(labels: Any, n_clusters: int | None = None) -> np.ndarray:
    """Samples per cluster, ``(n_clusters,)``; ``n_clusters`` defaults to ``max + 1``."""
    labels = _as_labels(labels, "labels")
    return np.bincount(labels, minlength=n_clusters or 0)


def sela_cost(log_probabilities: Any, labels: Any) -> float:
    """SeLa's objective: ``-mean_i log p(y_i | x_i)`` for log-probabilities ``(N, K)``.

    ``otlabel.assign(log_probabilities).cost`` is minus this for its labels.
    """
    log_p = np.asarray(log_probabilities, dtype=np.float64)
    labels = _as_labels(labels, "labels")
    if log_p.ndim != 2 or log_p.shape[0] != labels.shape[0]:
        raise ValueError(
            f"log_probabilities must be (N, K) with N = len(labels) = {labels.shape[0]}; "
            f"got shape {log_p.shape}"
        )
    return float(-log_p[np.arange(labels.shape[0]), labels].mean())


class CollapseAlarm:
    """Raises a flag when the training loss stays near ``ln K`` (a collapsed model).

    A classifier that predicts the uniform distribution has cross-entropy
    ``ln K`` against any labels; a loss that stays within ``margin · ln K`` of it
    for ``patience`` consecutive checks means the network has learnt nothing
    from its labels (or the labels carry no signal).

    >>> alarm = CollapseAlarm(n_clusters=10, patience=2)
    >>> [alarm.update(loss) for loss in (2.30, 2.29, 1.2)]
    [False, True, False]
    """

    def __init__(self, n_clusters: int, patience: int = 3, margin: float = 0.05) -> None:
        if n_clusters < 2:
            raise ValueError(f"n_clusters must be at least 2; got {n_clusters}")
        if patience < 1:
            raise ValueError(f"patience must be at least 1; got {patience}")
        if not 0 < margin < 1:
            raise ValueError(f"margin must lie in (0, 1); got {margin}")
        self.threshold = (1.0 - margin) * math.log(n_clusters)
        self.patience = patience
        self.streak = 0

    def update(self, loss: float) -> bool:
        """Record one loss value; True while the loss has stayed near ``ln K`` long enough."""
        self.streak = self.streak + 1 if loss >= self.threshold else 0
        return self.streak >= self.patience


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------


def contingency(labels_true: Any, labels_pred: Any) -> np.ndarray:
    """Counts of samples per (true class, predicted cluster), ``(R, C)`` int64.

    Rows and columns are the distinct values present, in sorted order.
    """
    true = _as_labels(labels_true, "labels_true")
    pred = _as_labels(labels_pred, "labels_pred")
    if true.shape != pred.shape:
        raise ValueError(
            f"labels_true and labels_pred must have the same length; got {true.shape[0]} "
            f"and {pred.shape[0]}"
        )
    if true.shape[0] == 0:
        raise ValueError("labels_true and labels_pred are empty; give at least one sample")
    classes, true_index = np.unique(true, return_inverse=True)
    clusters, pred_index = np.unique(pred, return_inverse=True)
    flat = true_index * clusters.shape[0] + pred_index
    counts = np.bincount(flat, minlength=classes.shape[0] * clusters.shape[0])
    return counts.reshape(classes.shape[0], clusters.shape[0])


def _as_labels(labels: Any, name: str) -> np.ndarray:
    if hasattr(labels, "detach"):  # a torch tensor
        labels = labels.detach().cpu().numpy()
    array = np.asarray(labels)
    if array.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional; got shape {array.shape}")
    if array.size and not np.issubdtype(array.dtype, np.integer):
        raise TypeError(f"{name} must hold integers; got dtype {array.dtype}")
    return array.astype(np.int64, copy=False)


def _is_trivial(table: np.ndarray) -> bool:
    """One class and one cluster: the partitions agree (sklearn's convention)."""
    return table.shape[0] == table.shape[1] == 1


def _is_renaming(table: np.ndarray) -> bool:
    """The partitions are equal up to the names of their parts (AMI is 1 by definition)."""
    nonzero = table > 0
    return bool((nonzero.sum(axis=0) == 1).all() and (nonzero.sum(axis=1) == 1).all())


def _entropy(counts: np.ndarray) -> float:
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def _mean_entropy(table: np.ndarray) -> float:
    return 0.5 * (_entropy(table.sum(axis=1)) + _entropy(table.sum(axis=0)))


def _mutual_information(table: np.ndarray) -> float:
    n = table.sum()
    rows, cols = np.nonzero(table)
    joint = table[rows, cols].astype(np.float64)
    row_mass = table.sum(axis=1)[rows].astype(np.float64)
    col_mass = table.sum(axis=0)[cols].astype(np.float64)
    terms = joint / n * (np.log(joint * n) - np.log(row_mass * col_mass))
    return max(float(terms.sum()), 0.0)


def _expected_mutual_information(table: np.ndarray) -> float:
    """E[MI] under the hypergeometric model of random partitions with these margins."""
    n = int(table.sum())
    a = table.sum(axis=1).astype(np.float64)[:, None, None]  # (R, 1, 1)
    b = table.sum(axis=0).astype(np.float64)[None, :, None]  # (1, C, 1)
    nij = np.arange(1, int(min(a.max(), b.max())) + 1, dtype=np.float64)[None, None, :]
    feasible = (nij >= np.maximum(1.0, a + b - n)) & (nij <= np.minimum(a, b))  # (R, C, M)
    log_term = np.log(n * nij) - np.log(a) - np.log(b)
    with np.errstate(invalid="ignore"):
        log_probability = (
            gammaln(a + 1)
            + gammaln(b + 1)
            + gammaln(n - a + 1)
            + gammaln(n - b + 1)
            - gammaln(n + 1)
            - gammaln(nij + 1)
            - gammaln(a - nij + 1)
            - gammaln(b - nij + 1)
            - gammaln(n - a - b + nij + 1)
        )
    terms = np.where(
        feasible, nij / n * log_term * np.exp(np.where(feasible, log_probability, 0)), 0
    )
    return float(terms.sum())
