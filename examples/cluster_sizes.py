"""The cluster sizes that each constraint gives on the same imbalanced scores.

    python examples/cluster_sizes.py            # writes docs/cluster-sizes.png

Scores: 20 000 samples of 8 classes of sizes 40%, 20%, 15%, 10%, 6%, 4%, 3%, 2%;
a noisy model's log-probabilities (the true class scores 2.5 above the others on
average, every score with unit Gaussian noise).  Labelled with ``epsilon = 0.05``
under fixed sizes, bounded sizes, relaxed sizes at three values of ``tau``, and
partial mass; the bars are each constraint's cluster sizes, clusters matched to
classes by their majority class.
"""

from __future__ import annotations

import sys

import numpy as np

import otlabel

PROPORTIONS = np.array([0.40, 0.20, 0.15, 0.10, 0.06, 0.04, 0.03, 0.02])
N, EPSILON = 20_000, 0.05


def scores_and_classes(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    classes = rng.choice(PROPORTIONS.size, size=N, p=PROPORTIONS)
    logits = rng.normal(size=(N, PROPORTIONS.size))
    logits[np.arange(N), classes] += 2.5
    log_probs = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    return log_probs.astype(np.float32), classes


CONSTRAINTS = {
    "fixed (equal)": {},
    "bounded 5%..25%": {"min_size": 0.05, "max_size": 0.25},
    "relaxed tau=1": {"size_penalty": 1.0},
    "relaxed tau=0.3": {"size_penalty": 0.3},
    "relaxed tau=0.1": {"size_penalty": 0.1},
    "partial mass 0.9": {"mass": 0.9},
}


def sizes_by_class(labels: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """Each class's share of the labels of the clusters whose majority it is."""
    shares = np.zeros(PROPORTIONS.size)
    for cluster in range(PROPORTIONS.size):
        members = classes[labels == cluster]
        if members.size:
            shares[np.bincount(members, minlength=PROPORTIONS.size).argmax()] += members.size
    return shares / labels.size


def main(out: str = "docs/cluster-sizes.png") -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scores, classes = scores_and_classes()
    width = 0.8 / (len(CONSTRAINTS) + 1)
    x = np.arange(PROPORTIONS.size)
    figure, axes = plt.subplots(figsize=(10, 4.5))
    axes.bar(x - 0.4, PROPORTIONS, width, label="true class sizes", color="black")
    for i, (name, kwargs) in enumerate(CONSTRAINTS.items(), start=1):
        res = otlabel.assign(scores, EPSILON, **kwargs)
        shares = sizes_by_class(res.labels, classes)
        axes.bar(x - 0.4 + i * width, shares, width, label=name)
        print(f"{name:18s} sizes {np.round(100 * shares, 1)} gap {res.gap:.1e}")
    axes.set_xticks(x, [f"class {k}\n{100 * p:.0f}%" for k, p in enumerate(PROPORTIONS)])
    axes.set_ylabel("share of the samples")
    axes.set_title(f"Cluster sizes under each constraint ({N} samples, epsilon {EPSILON})")
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(out, dpi=110)
    print(f"written {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
