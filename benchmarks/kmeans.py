"""otlabel.KMeans beside scikit-learn's KMeans and k-means-constrained, from the same centres.

    python benchmarks/kmeans.py                 # the three cases
    python benchmarks/kmeans.py --case bounded  # 23 000 x 50, K = 10, sizes 1 150..4 600
    python benchmarks/kmeans.py --case medium   # 100 000 x 64 float32, K = 100, equal sizes
    python benchmarks/kmeans.py --case equal    # 1 000 000 x 150 float32, K = 50, 20 iterations

Each case draws unstructured points (standard normal), seeds K centres by
k-means++ once, and fits every library from those centres, one run each:
scikit-learn unconstrained, k-means-constrained (when installed: the bench extra)
with the same bounds, otlabel.KMeans with them.  Printed per library: fit time,
iterations, time per iteration, inertia, smallest and largest cluster; then the
figures each target compares.  In the medium case k-means-constrained runs
:data:`FEW_ITERATIONS` iterations only (a min-cost-flow graph of N x K = 10 000 000
arcs a step), for its time per iteration; it is left out of the equal case
(``--kmc-equal`` tries it).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.cluster import KMeans as SklearnKMeans
from sklearn.cluster import kmeans_plusplus

import otlabel


@dataclass
class Fit:
    """What one library's fit gave."""

    name: str
    seconds: float
    n_iter: int
    inertia: float
    counts: np.ndarray

    def line(self) -> str:
        per_iteration = 1000 * self.seconds / max(self.n_iter, 1)
        return (
            f"{self.name:<22} {self.seconds:9.2f} s {self.n_iter:6d} it "
            f"{per_iteration:9.1f} ms/it  inertia {self.inertia:.9e}  "
            f"sizes {int(self.counts.min())}..{int(self.counts.max())}"
        )


def timed(name: str, fit: Any, X: np.ndarray) -> Fit:
    started = time.perf_counter()
    model = fit(X)
    seconds = time.perf_counter() - started
    counts = np.bincount(np.asarray(model.labels_), minlength=model.cluster_centers_.shape[0])
    return Fit(name, seconds, int(model.n_iter_), float(model.inertia_), counts)


def inertia_of(X: np.ndarray, centres: np.ndarray, labels: np.ndarray) -> float:
    """``sum_i ||x_i - c_{y_i}||^2`` in float64 (the same formula for every library)."""
    total = 0.0
    for start in range(0, X.shape[0], 65536):
        block = X[start : start + 65536].astype(np.float64)
        difference = block - centres[labels[start : start + 65536]].astype(np.float64)
        total += float(np.einsum("nd,nd->", difference, difference))
    return total


def bounded_case(args: argparse.Namespace) -> None:
    n_samples, n_features, n_clusters, low, high = 23_000, 50, 10, 1_150, 4_600
    X = np.random.default_rng(0).standard_normal((n_samples, n_features))
    centres, _ = kmeans_plusplus(X, n_clusters, random_state=0)
    shape = f"{n_samples} x {n_features} float64"
    print(f"\n## bounded: {shape}, K = {n_clusters}, sizes {low}..{high}")
    otlabel.KMeans(n_clusters, init=centres, max_iter=2).fit(X[:2000])  # compile first
    fits = [
        timed("scikit-learn (no bounds)", SklearnKMeans(n_clusters, init=centres, n_init=1).fit, X),
        timed(
            "otlabel.KMeans",
            otlabel.KMeans(n_clusters, init=centres, min_size=low, max_size=high).fit,
            X,
        ),
    ]
    theirs = constrained_fit(X, centres, low, high)
    if theirs is not None:
        fits.append(theirs)
    for fit in fits:
        print(fit.line())
    ours, plain = fits[1], fits[0]
    print(
        f"target: Lloyd iteration <= 3x scikit-learn's: "
        f"{(ours.seconds / ours.n_iter) / (plain.seconds / plain.n_iter):.2f}x"
    )
    if theirs is not None:
        speedup = theirs.seconds / ours.seconds
        print(f"target: >= 30x faster than k-means-constrained: {speedup:.1f}x")
        print(
            "whole fits (unstructured points: near-ties at k-means-constrained's resolution "
            f"part the trajectories): inertia {abs(ours.inertia / theirs.inertia - 1):.2e} "
            f"relative difference, iterations {ours.n_iter} and {theirs.n_iter}"
        )
        trajectory_check(X, centres, low, high)


def trajectory_check(X: np.ndarray, centres: np.ndarray, low: int, high: int) -> None:
    """Both exact at every step, so from the same centres the same fit: compared over
    :data:`TRAJECTORY_ITERATIONS` iterations on X scaled by 10 (squared distances x 100,
    so that k-means-constrained's cost resolution of 1e-3 decides no label)."""
    scaled = 10 * X
    ours = otlabel.KMeans(
        centres.shape[0],
        init=10 * centres,
        min_size=low,
        max_size=high,
        max_iter=TRAJECTORY_ITERATIONS,
        tol=0.0,
    ).fit(scaled)
    theirs = constrained_fit(scaled, 10 * centres, low, high, TRAJECTORY_ITERATIONS)
    if theirs is None:
        return
    first_step_check(scaled, 10 * centres, low, high)
    same = float(np.mean(np.bincount(ours.labels_, minlength=centres.shape[0]) == theirs.counts))
    print(
        f"target: same inertia as k-means-constrained (1e-6 relative) over "
        f"{TRAJECTORY_ITERATIONS} iterations from the same centres, X x 10: "
        f"{abs(ours.inertia_ / theirs.inertia - 1):.2e} relative difference "
        f"(cluster sizes equal: {same:.0%})"
    )


def first_step_check(X: np.ndarray, centres: np.ndarray, low: int, high: int) -> None:
    """One assignment step from the same centres: the summed squared distance of
    otlabel's exact labels and of k-means-constrained's min-cost-flow labels."""
    from k_means_constrained.k_means_constrained_ import _labels_constrained

    model = otlabel.KMeans(centres.shape[0], init=centres, max_iter=1).fit(X[: 4 * len(centres)])
    model._centres = centres  # the step from exactly these centres, not a fitted update
    ours = np.asarray(model.predict_exact(X, min_size=low, max_size=high))
    theirs = np.asarray(_labels_constrained(X, centres, low, high, np.zeros(len(X)))[0])
    cost_ours, cost_theirs = inertia_of(X, centres, ours), inertia_of(X, centres, theirs)
    print(
        f"first assignment step from the same centres: otlabel {cost_ours:.9e}, "
        f"k-means-constrained {cost_theirs:.9e} ({cost_theirs / cost_ours - 1:+.2e} relative), "
        f"{int(np.count_nonzero(ours != theirs))} labels differ"
    )


#: Iterations of the trajectory comparison.
TRAJECTORY_ITERATIONS = 10


def constrained_fit(
    X: np.ndarray, centres: np.ndarray, low: int, high: int, max_iter: int = 300
) -> Fit | None:
    try:
        from k_means_constrained import KMeansConstrained
    except ImportError:
        print("k-means-constrained is not installed (pip install 'otlabel[bench]'): left out")
        return None
    model = KMeansConstrained(
        centres.shape[0],
        size_min=low,
        size_max=high,
        init=centres,
        n_init=1,
        max_iter=max_iter,
        tol=0.0 if max_iter < 300 else 1e-4,
        n_jobs=1,
    )
    started = time.perf_counter()
    model.fit(X)
    seconds = time.perf_counter() - started
    labels = np.asarray(model.labels_)
    inertia = inertia_of(X, model.cluster_centers_, labels)  # its own is a min-cost-flow cost
    counts = np.bincount(labels, minlength=centres.shape[0])
    return Fit("k-means-constrained", seconds, int(model.n_iter_), inertia, counts)


#: Iterations of k-means-constrained in the medium case (its time per iteration).
FEW_ITERATIONS = 3


def medium_case(args: argparse.Namespace) -> None:
    n_samples, n_features, n_clusters = 100_000, 64, 100
    X = np.random.default_rng(2).standard_normal((n_samples, n_features), dtype=np.float32)
    centres, _ = kmeans_plusplus(X, n_clusters, random_state=0)
    print(
        f"\n## medium: {n_samples} x {n_features} float32, K = {n_clusters}, equal sizes "
        f"({n_samples // n_clusters} each)"
    )
    otlabel.KMeans(n_clusters, init=centres, max_iter=2).fit(X[:20_000])  # compile first
    plain = timed(
        "scikit-learn (no bounds)", SklearnKMeans(n_clusters, init=centres, n_init=1).fit, X
    )
    ours = timed("otlabel.KMeans", otlabel.KMeans(n_clusters, init=centres).fit, X)
    print(plain.line())
    print(ours.line())
    per_iteration = (ours.seconds / ours.n_iter) / (plain.seconds / plain.n_iter)
    print(f"Lloyd iteration against scikit-learn's: {per_iteration:.2f}x")
    size = n_samples // n_clusters
    theirs = constrained_fit(X.astype(np.float64), centres, size, size, FEW_ITERATIONS)
    if theirs is not None:
        print(theirs.line() + f"  ({FEW_ITERATIONS} iterations only: per iteration)")
        ratio = (theirs.seconds / theirs.n_iter) / (ours.seconds / ours.n_iter)
        print(f"k-means-constrained's iteration against otlabel's: {ratio:.1f}x")


def equal_case(args: argparse.Namespace) -> None:
    n_samples, n_features, n_clusters, n_iter = 1_000_000, 150, 50, 20
    X = np.random.default_rng(1).standard_normal((n_samples, n_features), dtype=np.float32)
    centres, _ = kmeans_plusplus(X[:100_000], n_clusters, random_state=0)
    print(
        f"\n## equal: {n_samples} x {n_features} float32, K = {n_clusters}, equal sizes, "
        f"{n_iter} iterations (tol = 0)"
    )
    otlabel.KMeans(n_clusters, init=centres, max_iter=2).fit(X[:20_000])  # compile first
    options = {"init": centres, "max_iter": n_iter, "tol": 0.0}
    plain = timed("scikit-learn (no bounds)", SklearnKMeans(n_clusters, n_init=1, **options).fit, X)
    ours = timed("otlabel.KMeans", otlabel.KMeans(n_clusters, **options).fit, X)
    print(plain.line())
    print(ours.line())
    if args.kmc_equal:
        low = n_samples // n_clusters
        theirs = constrained_fit(X.astype(np.float64), centres, low, low)
        if theirs is not None:
            print(theirs.line())
    print(f"target: at most 3x scikit-learn's: {ours.seconds / plain.seconds:.2f}x")
    print(f"target: under 60 s: {ours.seconds:.1f} s")


def _cpu() -> str:
    """The processor's model name (Linux), else what the platform module says."""
    try:
        with open("/proc/cpuinfo") as lines:
            for line in lines:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--case", choices=("bounded", "medium", "equal", "all"), default="all")
    parser.add_argument("--kmc-equal", action="store_true", help="k-means-constrained too")
    args = parser.parse_args()
    print(
        f"# otlabel.KMeans benchmark, {datetime.date.today()}, {_cpu()} "
        f"{os.cpu_count()} cores, Python {platform.python_version()}"
    )
    otlabel.compile()  # every kernel in Numba's cache first: no fit compiles or waits
    print(f"load average before: {_load()}")
    if args.case in ("bounded", "all"):
        bounded_case(args)
    if args.case in ("medium", "all"):
        medium_case(args)
    if args.case in ("equal", "all"):
        equal_case(args)
    print(f"load average after: {_load()}")


def _load() -> str:
    """The 1, 5 and 15 minute load averages (other jobs on the machine slow every fit)."""
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


if __name__ == "__main__":
    main()
