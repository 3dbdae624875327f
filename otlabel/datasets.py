"""Built-in score matrices for demos, benchmarks and tests (no downloads)."""

from __future__ import annotations

import numpy as np

KINDS = ("sela", "head", "gaussian")


def make_scores(
    n_samples: int,
    n_clusters: int,
    *,
    kind: str = "sela",
    n_features: int = 64,
    seed: int = 0,
    dtype: type = np.float32,
) -> np.ndarray:
    """A realistic score matrix ``(n_samples, n_clusters)``.

    Parameters
    ----------
    n_samples, n_clusters : int
        Shape of the matrix.
    kind : {"sela", "head", "gaussian"}
        ``"sela"``: log-softmax of a linear head over features drawn from a
        mixture of ``n_clusters`` Gaussians, with the spread of a trained
        network's log-probabilities (log-probabilities from about -30 to 0;
        some clusters are nobody's favourite).  ``"head"``: a random linear
        head over random features (logits), the spec's benchmark scores.
        ``"gaussian"``: i.i.d. standard normal scores, a structureless worst
        case with many near-ties.
    n_features : int
        Feature dimension for ``"sela"`` and ``"head"``.
    seed : int
        Seed of the random generator.
    dtype : numpy floating type
        Storage type of the result.

    Returns
    -------
    scores : ndarray of shape (n_samples, n_clusters)

    Examples
    --------
    >>> scores = make_scores(1000, 10, seed=0)
    >>> scores.shape, scores.dtype.name
    ((1000, 10), 'float32')
    >>> bool((scores <= 0).all())  # log-probabilities
    True
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    rng = np.random.default_rng(seed)
    if kind == "gaussian":
        return rng.standard_normal((n_samples, n_clusters), dtype=np.float32).astype(dtype)
    weights = rng.standard_normal((n_clusters, n_features)) / np.sqrt(n_features)
    if kind == "head":
        features = rng.standard_normal((n_samples, n_features))
        return _in_blocks(features, weights, 4.0, log_softmax=False, dtype=dtype)
    # Features from a mixture whose centres the head partly recognises: most
    # samples have a clear favourite, some are ambiguous, a few clusters are rare.
    n_modes = max(2, n_clusters // 2)
    centres = rng.standard_normal((n_modes, n_features))
    mode_weights = rng.dirichlet(np.full(n_modes, 2.0))
    modes = rng.choice(n_modes, size=n_samples, p=mode_weights)
    features = centres[modes] + 0.8 * rng.standard_normal((n_samples, n_features))
    return _in_blocks(features, weights, 6.0, log_softmax=True, dtype=dtype)


def _in_blocks(
    features: np.ndarray, weights: np.ndarray, scale: float, *, log_softmax: bool, dtype: type
) -> np.ndarray:
    """``scale * features @ weights.T`` (optionally log-softmaxed), a block of rows at a time."""
    n_samples, n_clusters = features.shape[0], weights.shape[0]
    scores: np.ndarray = np.empty((n_samples, n_clusters), dtype=dtype)
    rows = max(1, (1 << 22) // n_clusters)
    for start in range(0, n_samples, rows):
        logits = scale * features[start : start + rows] @ weights.T
        if log_softmax:
            logits -= logits.max(axis=1, keepdims=True)
            logits -= np.log(np.exp(logits).sum(axis=1, keepdims=True))
        scores[start : start + rows] = logits
    return scores
