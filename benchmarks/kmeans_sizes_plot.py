"""The cluster sizes of plain k-means against size-constrained k-means, as a plot.

    python benchmarks/kmeans_sizes_plot.py      # writes docs/kmeans-sizes.png

20 000 points in 16 dimensions drawn around 8 centres with very unequal shares (1
to 8 parts), 8 clusters, all fitted from the same k-means++ centres:
scikit-learn's KMeans (no constraint), ``otlabel.KMeans`` with equal sizes, and
``otlabel.KMeans`` with every size between 1 500 and 3 500.  The bars are each
fit's cluster sizes, largest first.
"""

from __future__ import annotations

import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from sklearn.cluster import KMeans as SklearnKMeans
from sklearn.cluster import kmeans_plusplus

import otlabel

N_SAMPLES, N_FEATURES, N_CLUSTERS = 20_000, 16, 8
LOW, HIGH = 1_500, 3_500


def points(rng: np.random.Generator) -> np.ndarray:
    """Points around 8 centres drawn with shares 1 to 8 (of 36)."""
    centres = rng.normal(scale=3.0, size=(N_CLUSTERS, N_FEATURES))
    shares = np.arange(1, N_CLUSTERS + 1) / np.arange(1, N_CLUSTERS + 1).sum()
    which = rng.choice(N_CLUSTERS, size=N_SAMPLES, p=shares)
    return centres[which] + rng.normal(size=(N_SAMPLES, N_FEATURES))


def sizes() -> dict[str, np.ndarray]:
    """Each fit's cluster sizes, largest first."""
    X = points(np.random.default_rng(0))
    start, _ = kmeans_plusplus(X, N_CLUSTERS, random_state=0)
    fits = {
        "scikit-learn KMeans": SklearnKMeans(N_CLUSTERS, init=start, n_init=1).fit(X),
        "otlabel.KMeans, equal sizes": otlabel.KMeans(N_CLUSTERS, init=start).fit(X),
        f"otlabel.KMeans, {LOW:,}..{HIGH:,}": otlabel.KMeans(
            N_CLUSTERS, init=start, min_size=LOW, max_size=HIGH
        ).fit(X),
    }
    return {
        name: np.sort(np.bincount(model.labels_, minlength=N_CLUSTERS))[::-1]
        for name, model in fits.items()
    }


def main(out: str = "docs/kmeans-sizes.png") -> int:
    found = sizes()
    fig, ax = plt.subplots(figsize=(7.0, 3.2))
    width = 0.27
    slots = np.arange(N_CLUSTERS)
    for offset, (name, counts) in enumerate(found.items()):
        ax.bar(slots + (offset - 1) * width, counts, width, label=name)
        print(f"{name}: {counts.tolist()}")
    ax.axhline(N_SAMPLES / N_CLUSTERS, color="black", lw=0.8, ls=":", label="N / K")
    for bound in (LOW, HIGH):
        ax.axhline(bound, color="grey", lw=0.8, ls="--")
    ax.set_xticks(slots, [str(k + 1) for k in slots])
    ax.set_xlabel("cluster (largest first)")
    ax.set_ylabel("samples")
    ax.set_title(f"{N_SAMPLES:,} points around 8 centres of unequal weight, K = {N_CLUSTERS}")
    ax.legend(fontsize=8, frameon=False)
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
