"""Evaluation of learned features: weighted k-nearest neighbours and a linear probe.

Both take features of a labelled training split and a test split.  The kNN
classifier is the one SeLa evaluates with on CIFAR (k = 10, temperature 0.1,
cosine similarity, votes weighted by ``exp(similarity / temperature)``); the
linear probe is a multinomial logistic regression on standardised features.

>>> import numpy as np
>>> features = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
>>> knn_accuracy(features, [0, 0, 1, 1], features, [0, 0, 1, 1], k=2)
1.0
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["knn_accuracy", "knn_predict", "linear_probe_accuracy"]


def knn_accuracy(
    train_features: Any,
    train_labels: Any,
    test_features: Any,
    test_labels: Any,
    *,
    k: int = 10,
    temperature: float = 0.1,
) -> float:
    """Accuracy of :func:`knn_predict` on the test split."""
    predicted = knn_predict(
        train_features, train_labels, test_features, k=k, temperature=temperature
    )
    return float((predicted == _array(test_labels)).mean())


def knn_predict(
    train_features: Any,
    train_labels: Any,
    test_features: Any,
    *,
    k: int = 10,
    temperature: float = 0.1,
    batch_size: int = 4096,
) -> np.ndarray:
    """Weighted kNN: each of the k most cosine-similar training samples votes
    ``exp(similarity / temperature)`` for its class; the class with most votes wins.
    """
    train = _normalised(_array(train_features))
    test = _normalised(_array(test_features))
    labels = _array(train_labels).astype(np.int64)
    if train.shape[0] != labels.shape[0]:
        raise ValueError(
            f"train_features has {train.shape[0]} rows but train_labels {labels.shape[0]}"
        )
    if not 1 <= k <= train.shape[0]:
        raise ValueError(f"k must lie in [1, {train.shape[0]}]; got {k}")
    if temperature <= 0:
        raise ValueError(f"temperature must be positive; got {temperature}")
    n_classes = int(labels.max()) + 1
    predicted = np.empty(test.shape[0], np.int64)
    for start in range(0, test.shape[0], batch_size):
        similarity = test[start : start + batch_size] @ train.T  # (B, N_train)
        nearest = np.argpartition(-similarity, k - 1, axis=1)[:, :k]  # (B, k)
        weight = np.exp(np.take_along_axis(similarity, nearest, axis=1) / temperature)
        votes = np.zeros((similarity.shape[0], n_classes))
        np.add.at(votes, (np.arange(similarity.shape[0])[:, None], labels[nearest]), weight)
        predicted[start : start + batch_size] = votes.argmax(axis=1)
    return predicted


def linear_probe_accuracy(
    train_features: Any,
    train_labels: Any,
    test_features: Any,
    test_labels: Any,
    *,
    regularisation: float = 1.0,
    max_iter: int = 2000,
) -> float:
    """Test accuracy of a multinomial logistic regression on standardised features.

    ``regularisation`` is scikit-learn's ``C`` (inverse L2 strength).  Needs
    scikit-learn (``pip install 'otlabel[sela]'``).
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(_array(train_features))
    probe = LogisticRegression(C=regularisation, max_iter=max_iter)
    probe.fit(scaler.transform(_array(train_features)), _array(train_labels))
    predicted = probe.predict(scaler.transform(_array(test_features)))
    return float((predicted == _array(test_labels)).mean())


def _array(values: Any) -> np.ndarray:
    if hasattr(values, "detach"):  # a torch tensor
        values = values.detach().cpu().numpy()
    return np.asarray(values)


def _normalised(features: np.ndarray) -> np.ndarray:
    features = features.astype(np.float64).reshape(features.shape[0], -1)
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    return features / np.maximum(norms, 1e-12)
