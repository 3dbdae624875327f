"""Size-constrained k-means: :class:`KMeans`, exact at every assignment step.

Lloyd's algorithm alternates an assignment step and a centre update.  Here the
assignment step is otlabel's problem on the scores ``S_ik = 2 x_i.c_k -
||c_k||^2`` (``-||x_i - c_k||^2`` up to the row constant ``||x_i||^2``, which
changes no label): the labels that minimise ``sum_i ||x_i - c_{y_i}||^2`` under
the cluster-size constraint, exact, with a certificate and an optimal dual, each
step started from the previous step's dual (late steps: one read of the scores and
the repair of the few samples left to move).  scikit-learn (the ``sklearn`` extra) gives the
estimator conventions, the k-means++ seeding and the input validation.
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np

try:
    from sklearn.base import BaseEstimator, ClusterMixin, TransformerMixin
    from sklearn.cluster import kmeans_plusplus
    from sklearn.exceptions import ConvergenceWarning as FewClustersWarning
    from sklearn.utils import check_random_state
    from sklearn.utils.validation import check_array, check_is_fitted, validate_data
    from threadpoolctl import threadpool_limits
except ImportError as missing:  # pragma: no cover - the extra is installed by `make test`
    raise ImportError(
        "otlabel.KMeans needs scikit-learn (1.6 or later): pip install 'otlabel[sklearn]'"
    ) from missing

from ._arrays import library_of, to_numpy
from ._kmeans_data import BLOCK_ROWS, DenseSamples, Samples, StreamedSamples, samples_of
from .api import assign, sinkhorn
from .constraints import BoundedSizes, count_bounds
from .kernels import resolve_backend
from .prediction import predict
from .result import ConvergenceWarning
from .rounding import balanced_labels, dual_level

__all__ = ["EXPECTED_FAILED_CHECKS", "KMeans"]

#: The entropic regularisation of each assignment step, as a share of the spread
#: (standard deviation) of the first step's scores.  The labels are exact
#: whatever it is (the rounding repairs the Sinkhorn labels and certifies them);
#: it sets how the work splits between Sinkhorn passes (more when smaller) and
#: repair paths (more when larger).  One exact step from k-means++ centres, this
#: machine: a share of 0.1 took 0.03-0.28 s where 0.01 took 0.13-1.53 s (standard
#: normal points, 23 000 x 50 to 200 000 x 150, K = 10 to 100, equal sizes; blobs
#: 0.19-0.23 s against 0.27-0.37 s); 0.3 made the repair of blobs slower.
EPSILON_SHARE = 0.1
#: The marginal error at which each step's Sinkhorn solve stops, and its most
#: passes: the exact rounding that follows repairs what is left, so a loose
#: tolerance is enough, and a solve that crawls (a cluster that must take samples
#: from across a gap of thousands of epsilon) is cut short without a warning.
SOLVE_TOL = 1e-3
SOLVE_MAX_ITER = 100
#: A step starts from the previous step's optimal dual, without a Sinkhorn solve,
#: when the argmax labels there leave at most this share of the samples to move
#: (the exact repair moves one in tens of microseconds; a Sinkhorn pass reads the
#: whole matrix).
NEAR_SHARE = 0.01
#: A memmap is seeded by k-means++ on this many rows drawn at random (k-means++
#: reads X once per centre: on a file larger than memory, from disk).
SEED_ROWS = 100_000
#: BLAS threads of the score products during a fit: one, as in scikit-learn's
#: KMeans, since the solve's compiled kernels run their own threads right after
#: each product (and BLAS threads that spin waiting for work would share the cores
#: with them: measured on 2 cores, 23 000 x 50 into 10 clusters, 3 to 6 times slower).
BLAS_THREADS = 1
#: Score-matrix entries (N K) below which a fit runs the compiled kernels on one
#: thread: each pass of a step then takes about a millisecond or less, and handing
#: its tasks to other threads costs more, most of all on busy cores (measured on 2
#: cores shared with other jobs, 23 000 x 50 into 10 clusters: 45-50 ms per
#: iteration on two threads, 13-16 on one).
SERIAL_ENTRIES = 1 << 22
#: ``n_init="auto"``: runs per fit by initialisation, as in scikit-learn.
AUTO_RUNS = {"k-means++": 1, "random": 10}

#: scikit-learn estimator checks that cannot hold for a size-constrained
#: estimator, with the reason; pass as ``check_estimator(KMeans(),
#: expected_failed_checks=EXPECTED_FAILED_CHECKS)``.
EXPECTED_FAILED_CHECKS = {
    "check_sample_weight_equivalence_on_dense_data": (
        "cluster sizes count samples, whatever their weights: a sample of weight 2 "
        "is one sample, not two, so it is not the same fit as the sample repeated"
    ),
    "check_sample_weight_equivalence_on_sparse_data": (
        "cluster sizes count samples, whatever their weights: a sample of weight 2 "
        "is one sample, not two, so it is not the same fit as the sample repeated"
    ),
}


class KMeans(ClusterMixin, TransformerMixin, BaseEstimator):
    r"""k-means whose clusters have given sizes (equal, or between bounds), with every
    assignment step solved exactly.

    Minimises the inertia :math:`\sum_i w_i \|x_i - c_{y_i}\|^2` over labels ``y``
    and centres ``c`` under a constraint on the cluster sizes
    :math:`n_k = \#\{i : y_i = k\}`: by default equal sizes (every
    :math:`n_k` is :math:`\lfloor N/K \rfloor` or :math:`\lceil N/K \rceil`), or
    ``min_size <= n_k <= max_size``.  Lloyd's algorithm: each assignment step
    finds the labels that minimise the inertia under the constraint (the LP
    optimum, certified by ``gap_``: :func:`otlabel.assign` with exact labels on
    the scores :math:`S_{ik} = 2 x_i \cdot c_k - \|c_k\|^2`, started from the
    previous step's optimal dual); each centre update takes the weighted means.
    Neither step raises the inertia, so the fit stops at a fixed point (labels
    unchanged), when the centres move less than ``tol``, or at ``max_iter``.
    ``min_size=0, max_size=1.0`` is plain k-means (scikit-learn's, from the same
    centres).

    Parameters
    ----------
    n_clusters : int, default 8
        K, the number of clusters.
    init : {"k-means++", "random"}, callable or array (K, d), default "k-means++"
        The initial centres: scikit-learn's k-means++ seeding
        (:func:`sklearn.cluster.kmeans_plusplus`), K samples drawn at random
        (with probability proportional to their weight), ``init(X, n_clusters,
        random_state)``'s, or given.  A memmap is seeded from :data:`SEED_ROWS`
        rows drawn at random, so with ``random_state`` alone it does not start
        where the same samples in memory do (pass the centres to make it).
    n_init : "auto" or int, default "auto"
        Runs from different initial centres; the fit keeps the run of least
        inertia.  "auto": 1 for k-means++ or given centres, 10 for "random" or a
        callable.
    max_iter : int, default 300
        Most Lloyd iterations of a run.
    tol : float, default 1e-4
        Stop when the summed squared shift of the centres is at most ``tol``
        times the mean variance of the features (scikit-learn's rule); 0 stops
        only at a fixed point or ``max_iter``.
    random_state : int, RandomState or None
        Seeds the initial centres.
    min_size, max_size : int, float, array (K,) or None
        Bounds on every cluster's size: an int is a count of samples, a float a
        fraction of N (``floor(N min_size)``, ``ceil(N max_size)``), an array one
        per cluster (integers: counts; floats: fractions).  A missing bound is 0
        (lower) or N (upper); with neither (and no ``cluster_weights`` or
        ``size_penalty``), sizes are equal.
    size_penalty : float, array (K,) or None
        Relaxed sizes instead of bounds: a penalty ``tau > 0`` (in the units of
        squared distances) on ``sum_k n_k log(n_k / (N b_k))``, pulling the sizes
        toward ``cluster_weights`` ``b`` (uniform if None), as in
        :func:`otlabel.assign`.
    cluster_weights : array (K,) or None
        Fixed proportions ``b`` of the clusters (sizes ``floor``/``ceil`` of
        ``N b_k``), or the prior of ``size_penalty``.  Not with ``min_size`` or
        ``max_size``.
    callback : callable or None
        ``callback(run, n_iter, shift)`` after every Lloyd iteration: the run
        (0-based), its iterations so far, and the summed squared shift of the
        centres (progress reports; it changes nothing).

    Attributes
    ----------
    cluster_centers_ : array (K, d)
        The centres, in X's dtype and library (a tensor for a tensor).
    labels_ : array (N,) int64
        The training samples' labels (the last assignment step's).
    inertia_ : float
        :math:`\sum_i w_i \|x_i - c_{y_i}\|^2` of the fit, accumulated in float64.
    n_iter_ : int
        Lloyd iterations of the kept run.
    n_features_in_ : int
        d, the number of features.
    counts_ : array (K,) int64
        The clusters' sizes.
    potential_ : array (K,) float64
        The last assignment step's optimal dual ``g`` (in the units of squared
        distances): every training sample's label maximises
        :math:`-\|x - c_k\|^2 + g_k` (complementary slackness), so
        :meth:`predict`, which labels samples by that argmax, gives ``labels_``
        on them wherever the maximum is unique.
    gap_ : float
        The last assignment step's certificate: its labels' inertia is within
        ``N gap_`` of the least under the constraint (0 up to rounding).

    Notes
    -----
    Sizes count samples, whatever their weights; ``sample_weight`` weighs the
    inertia (each sample's row of scores) and the centres.  Memory: X, one
    (N, K) score matrix in X's dtype (none for a memmap, whose scores are
    computed block by block as the solve reads them) and O(N + K d); float32 X
    is read as float32, its sums and inertia accumulated in float64.  With
    ``min_size`` 0, a cluster left empty takes the sample farthest from its
    centre, as scikit-learn does.

    References
    ----------
    P. S. Bradley, K. P. Bennett, A. Demiriz, "Constrained k-means clustering",
    Microsoft Research MSR-TR-2000-65, 2000.

    Examples
    --------
    >>> import numpy as np
    >>> import otlabel
    >>> X = np.random.default_rng(0).normal(size=(1000, 8))
    >>> km = otlabel.KMeans(n_clusters=4, random_state=0).fit(X)
    >>> km.counts_.tolist()  # equal sizes
    [250, 250, 250, 250]
    >>> km.gap_ < 1e-9
    True
    >>> bounded = otlabel.KMeans(4, min_size=200, max_size=0.3, random_state=0).fit(X)
    >>> bool(bounded.counts_.min() >= 200 and bounded.counts_.max() <= 300)
    True
    >>> bounded.predict_exact(X[:40]).tolist().count(0) >= 8  # 20% of the batch
    True
    """

    def __init__(
        self,
        n_clusters: int = 8,
        *,
        init: Any = "k-means++",
        n_init: str | int = "auto",
        max_iter: int = 300,
        tol: float = 1e-4,
        random_state: Any = None,
        min_size: Any = None,
        max_size: Any = None,
        size_penalty: Any = None,
        cluster_weights: Any = None,
        callback: Callable[[int, int, float], Any] | None = None,
    ) -> None:
        self.n_clusters = n_clusters
        self.init = init
        self.n_init = n_init
        self.max_iter = max_iter
        self.tol = tol
        self.random_state = random_state
        self.min_size = min_size
        self.max_size = max_size
        self.size_penalty = size_penalty
        self.cluster_weights = cluster_weights
        self.callback = callback

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True
        if tags.transformer_tags is not None:
            tags.transformer_tags.preserves_dtype = ["float64", "float32"]
        return tags

    def fit(self, X: Any, y: Any = None, sample_weight: Any = None) -> KMeans:
        """Fit the centres and labels of ``X`` (N, d).

        Parameters
        ----------
        X : array (N, d), CSR matrix, memmap or Torch tensor
            The samples, float32 or float64 (kept; other types become float64).
            A memmap is read block by block, its scores never held whole.
        y : ignored
        sample_weight : array (N,) or None
            Non-negative weights of the samples in the inertia and the centres
            (None: 1 each).

        Returns
        -------
        KMeans
            self, fitted.
        """
        self._check_parameters()
        samples = self._samples(X, sample_weight, reset=True)
        mean = samples.mean()  # (d,), None for sparse samples
        variance = samples.mean_variance(mean)  # mean over features
        _measure_from_mean(samples, mean, variance)
        _check_range(samples)
        n_samples = samples.n_samples
        if self.n_clusters > n_samples:
            plural = "" if n_samples == 1 else "s"
            raise ValueError(
                f"n_clusters: {self.n_clusters} clusters for {n_samples} sample{plural}; "
                f"lower n_clusters to at most {n_samples} or pass more samples"
            )
        sizes = size_constraint(self, n_samples)
        tol = self.tol * variance
        with (
            threadpool_limits(limits=BLAS_THREADS, user_api="blas"),
            kernel_threads(samples, self.n_clusters),
        ):
            best = self._best_run(samples, sizes, tol)
        self._keep(best, samples, sizes)
        _warn_if_rounded(samples, best)
        held = int(np.count_nonzero(to_numpy(self.counts_)))
        if held < self.n_clusters:  # sizes of 0 allowed, as scikit-learn warns
            warnings.warn(
                f"Number of distinct clusters ({held}) found smaller than n_clusters "
                f"({self.n_clusters}): {self.n_clusters - held} ended empty (possibly "
                "duplicate points in X); give min_size >= 1 to keep every cluster",
                FewClustersWarning,
                stacklevel=2,
            )
        return self

    def predict(self, X: Any, sample_weight: Any = None) -> Any:
        r"""Labels of new samples from the fitted centres and potential:
        :math:`\mathrm{argmax}_k (-w \|x - c_k\|^2 + g_k)`, ``w`` the sample's
        weight (1 by default).

        On the training samples, with the fit's ``sample_weight``, it gives
        ``labels_`` wherever the maximum is unique (``potential_`` is the last
        step's optimal dual, and the step weighs each sample's distances by its
        weight); on samples like them the sizes follow the fit's.  A batch's labels
        do not depend on the rest of the batch.  For labels that meet the size
        constraint on the batch itself, see :meth:`predict_exact`.

        Parameters
        ----------
        X : array (n, d), CSR matrix, memmap or Torch tensor
        sample_weight : array (n,) or None
            The samples' weights, as in :meth:`fit` (None: 1 each).

        Returns
        -------
        array (n,) int64
            In X's library.
        """
        check_is_fitted(self)
        samples = self._samples(X, sample_weight, reset=False)
        scores = samples.scores(self._centres)
        return predict(scores, self.potential_)

    def predict_exact(self, X: Any, *, min_size: Any = None, max_size: Any = None) -> Any:
        """Labels of a new batch that meet the size constraint on the batch, exactly.

        The assignment step of the fit on the batch, with the fitted centres: the
        labels that minimise the batch's inertia with its cluster sizes within
        the bounds (what k-means-constrained's ``predict`` gives).  By default
        the fit's constraint, each bound the same share of the batch as of the
        training samples (equal sizes stay equal); ``min_size`` and
        ``max_size`` replace the bounds (an int: a count of the batch's samples,
        a float: a fraction of it, an array: one per cluster).

        Parameters
        ----------
        X : array (n, d), CSR matrix, memmap or Torch tensor
        min_size, max_size : int, float, array (K,) or None

        Returns
        -------
        array (n,) int64
            In X's library.

        Raises
        ------
        ValueError
            When no labelling of the batch meets the bounds (e.g. ``K *
            min_size > n``), naming the bound and the fix.
        """
        check_is_fitted(self)
        samples = self._samples(X, None, reset=False)
        sizes = self._sizes
        if min_size is not None or max_size is not None:
            sizes = bounded_sizes(min_size, max_size, self.n_clusters, samples.n_samples)
        elif samples.n_samples < self.n_clusters:
            sizes = sizes.as_bounds(samples.n_samples, self.n_clusters)
        step = AssignmentStep(samples, sizes, self._epsilon, self.potential_)
        with (
            threadpool_limits(limits=BLAS_THREADS, user_api="blas"),
            kernel_threads(samples, self.n_clusters),
        ):
            return step(self._centres).labels

    def transform(self, X: Any) -> Any:
        """Euclidean distances of the samples to the centres.

        Returns
        -------
        array (n, K)
            In X's dtype and library.
        """
        check_is_fitted(self)
        samples = self._samples(X, None, reset=False)
        return samples.distances_to(self._centres)

    def score(self, X: Any, y: Any = None, sample_weight: Any = None) -> float:
        """Minus the weighted inertia of ``X`` with its :meth:`predict` labels (given
        the same ``sample_weight``)."""
        check_is_fitted(self)
        samples = self._samples(X, sample_weight, reset=False)
        labels = predict(samples.scores(self._centres), self.potential_)
        return -samples.inertia(self._centres, labels)

    # ------------------------------------------------------------------
    # validation and fitted attributes
    # ------------------------------------------------------------------

    def _check_parameters(self) -> None:
        _check_count(self.n_clusters, "n_clusters")
        _check_count(self.max_iter, "max_iter")
        if self.n_init != "auto":
            _check_count(self.n_init, "n_init")
        tol = self.tol
        if isinstance(tol, bool) or not isinstance(tol, numbers.Real) or not 0 <= tol < math.inf:
            raise ValueError(f"tol: expected a finite number >= 0, got {tol!r}")
        if isinstance(self.init, str) and self.init not in AUTO_RUNS:
            raise ValueError(
                f"init: expected 'k-means++', 'random' or an array of centres "
                f"(n_clusters, n_features), got {self.init!r}"
            )

    def _best_run(self, samples: Samples, sizes: Sizes, tol: float) -> Run:
        """The run of least inertia among :meth:`_n_runs` from different initial centres."""
        random_state = check_random_state(self.random_state)
        best: Run | None = None
        for index in range(self._n_runs()):
            centres = self._initial_centres(samples, random_state)
            report = None if self.callback is None else partial(self.callback, index)
            run = lloyd(samples, centres, sizes, self.max_iter, tol, report)
            if best is None or run.inertia < best.inertia:
                best = run
        assert best is not None  # at least one run
        return best

    def _n_runs(self) -> int:
        if callable(self.init):
            return 10 if self.n_init == "auto" else int(self.n_init)
        if not isinstance(self.init, str):
            if self.n_init not in ("auto", 1):
                warnings.warn(
                    f"n_init={self.n_init} with initial centres given in init: one run is "
                    "made (every run would start from the same centres)",
                    RuntimeWarning,
                    stacklevel=3,
                )
            return 1
        return AUTO_RUNS[self.init] if self.n_init == "auto" else int(self.n_init)

    def _samples(self, X: Any, sample_weight: Any, *, reset: bool) -> Samples:
        """X validated (dtype, shape, finite values, feature count) as a reader."""
        mapped = isinstance(X, np.memmap)
        if mapped and not reset and X.ndim == 2:  # before a copy of the wrong features
            self._check_features(int(X.shape[1]), reset)
        streamed = mapped and _streamable(X)
        if library_of(X) == "torch":
            data = _checked_tensor(X)
            self._check_features(int(data.shape[1]), reset)
        else:
            data = validate_data(
                self,
                X,
                accept_sparse="csr",
                dtype=[np.float64, np.float32],
                order="C",
                reset=reset,
            )
        weights = _sample_weights(sample_weight, data)
        samples = samples_of(data, weights, streamed=streamed)
        if not reset:  # new samples, measured from the fit's origin
            samples.centre_at(self._origin)
        return samples

    def _check_features(self, n_features: int, reset: bool) -> None:
        if reset:
            self.n_features_in_ = n_features
        elif n_features != self.n_features_in_:
            raise ValueError(
                f"X: has {n_features} features, but KMeans was fitted on "
                f"{self.n_features_in_}; pass samples with {self.n_features_in_} features"
            )

    def _initial_centres(self, samples: Samples, random_state: Any) -> np.ndarray:
        """(K, d) float64 centres to start a run from."""
        if callable(self.init):
            chosen = self.init(samples.host(), self.n_clusters, random_state=random_state)
            return _given_centres(chosen, self.n_clusters, samples.n_features, "init(X)")
        if not isinstance(self.init, str):
            return _given_centres(self.init, self.n_clusters, samples.n_features)
        rows, weights = _seeding_rows(samples, random_state)
        if self.init == "k-means++":
            centres, _ = kmeans_plusplus(
                rows, self.n_clusters, sample_weight=weights, random_state=random_state
            )
        else:
            chosen = random_state.choice(
                rows.shape[0], self.n_clusters, replace=False, p=weights / weights.sum()
            )
            centres = rows[chosen]
        dense = centres.toarray() if hasattr(centres, "toarray") else centres
        return np.asarray(dense, dtype=np.float64)

    def _keep(self, run: Run, samples: Samples, sizes: Sizes) -> None:
        step = run.step
        self._centres = run.centres
        self._origin = samples.origin64
        self._sizes = sizes
        self._epsilon = run.epsilon
        self.cluster_centers_ = samples.like_data(run.centres.astype(samples.host_dtype))
        self.labels_ = step.labels
        self.counts_ = step.counts
        self.potential_ = step.potential
        self.gap_ = float(step.gap)
        self.inertia_ = run.inertia
        self.n_iter_ = run.n_iter


def _streamable(X: np.memmap) -> bool:
    """Whether a memmap is read block by block as it is (C order, float32 or float64);
    else it is read into memory whole, with a warning that says how to avoid it."""
    if X.flags.c_contiguous and X.dtype in (np.float32, np.float64):
        return True
    layout = "C-ordered" if X.flags.c_contiguous else "not C-ordered"
    copy_bytes = X.size * (X.dtype.itemsize if X.dtype == np.float32 else 8)
    warnings.warn(
        f"X: a memmap of dtype {X.dtype}, {layout}, is copied into memory whole "
        f"({copy_bytes / 1e9:.2g} GB) and fitted there; to fit it block by block, save it "
        "C-ordered as float32 or float64 (np.save(path, np.ascontiguousarray(X, "
        "dtype=np.float32)))",
        RuntimeWarning,
        stacklevel=4,
    )
    return False


def _check_count(value: Any, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name}: expected an integer >= 1, got {value!r}")


def _check_range(samples: Samples) -> None:
    """Raise if a weighted score ``w_i (2 (x_i - o).(c - o) - ||c - o||^2)`` could
    overflow X's dtype: a centre lies in the samples' hull, so ``|score| <= 4 w_max
    max_i ||x_i - o||^2``."""
    largest = 4.0 * samples.largest_squared_norm()
    weight = 1.0 if samples.weights is None else float(to_numpy(samples.weights).max())
    limit = float(np.finfo(samples.host_dtype).max) / 16  # room for the sums' rounding
    if samples.weights is not None:
        _check_weight_range(to_numpy(samples.weights), samples.host_dtype)
    if largest > limit:
        raise ValueError(
            f"X: squared distances up to {largest:.3g} overflow {samples.host_dtype} "
            f"(at most {limit:.3g}); pass float64 samples, or scale X down"
        )
    if largest * weight > limit:
        raise ValueError(
            f"sample_weight: weights up to {weight:.3g} times squared distances up to "
            f"{largest:.3g} overflow {samples.host_dtype}; scale the weights down (only "
            "their ratios matter)"
        )


def _warn_if_rounded(samples: Samples, run: Run) -> None:
    """Warn when X's precision blurs the distances that decide the labels: the scores'
    rounding, about ``4 eps (mean ||x - o||^2 + max ||c - o||^2)``, against the mean
    squared distance of a sample to its centre (float32 groups far apart: the labels
    are exact for the rounded scores, not for the true distances)."""
    labels = to_numpy(run.step.labels)
    weights = np.ones(labels.size) if samples.weights is None else to_numpy(samples.weights)
    origin = 0.0 if samples.origin64 is None else samples.origin64
    spread = ((run.centres - origin) ** 2).sum(axis=1)  # (K,) ||c_k - o||^2
    total = float(weights.sum())
    within = run.inertia / total
    mean_norm = within + float(np.bincount(labels, weights, spread.size) @ spread) / total
    rounding = 4 * float(np.finfo(samples.host_dtype).eps) * (mean_norm + float(spread.max()))
    if within > 0 and rounding > ROUNDING_SHARE * within:
        warnings.warn(
            f"X: {samples.host_dtype} rounds the squared distances by about {rounding:.2g}, "
            f"{rounding / within:.2g} of the mean squared distance to a centre "
            f"({within:.2g}): the clusters are small for how far apart they lie, and the "
            "labels exact for the rounded distances only; pass float64 X",
            RuntimeWarning,
            stacklevel=3,
        )


#: The share of the mean squared distance to a centre from which the rounding of the
#: distances is warned about.
ROUNDING_SHARE = 1e-3


def _measure_from_mean(samples: Samples, mean: np.ndarray | None, variance: float) -> None:
    """Measure the scores from the samples' mean where it lies far from 0 for their
    spread (:meth:`Samples.centre_at`): ``||mean||^2`` over :data:`OFFSET_SHARE` times
    the mean squared distance to it.  Nearer, the rounding gains little and each
    score block would cost a centred copy of its rows."""
    if mean is None:
        return
    spread = variance * samples.n_features  # mean ||x - mean||^2
    if float(mean @ mean) > OFFSET_SHARE * spread:
        samples.centre_at(mean)


#: See :func:`_measure_from_mean`.
OFFSET_SHARE = 1.0


def _check_weight_range(weights: np.ndarray, dtype: np.dtype) -> None:
    """Raise if the weights' sum overflows float64, or a positive weight vanishes in
    X's dtype (the scores are weighted in it): only their ratios matter."""
    with np.errstate(over="ignore"):
        total = float(np.sum(weights))
    if not np.isfinite(total):
        raise ValueError(
            "sample_weight: the weights sum to more than float64 holds; scale them down "
            "(only their ratios matter)"
        )
    positive = weights[weights > 0]
    tiny = float(np.finfo(dtype).tiny)
    if positive.min() < tiny:
        raise ValueError(
            f"sample_weight: weights as small as {positive.min():.3g} vanish in {dtype} "
            f"(X's dtype: below {tiny:.3g}); scale them up (only their ratios matter), "
            "or give such samples 0"
        )


def _checked_tensor(X: Any) -> Any:
    """A Torch X: 2-D, float32 or float64 (half precision read as float32), finite."""
    import torch

    if X.ndim != 2:
        raise ValueError(f"X: expected a 2-D tensor (n_samples, n_features), got {X.ndim}-D")
    if X.is_complex():
        raise ValueError(f"X: complex samples ({X.dtype}) have no k-means; pass real ones")
    if X.dtype in (torch.float16, torch.bfloat16):
        X = X.float()
    elif X.dtype not in (torch.float32, torch.float64):
        X = X.double()
    if X.shape[0] == 0 or X.shape[1] == 0:
        raise ValueError(f"X: needs at least one sample and one feature, got {tuple(X.shape)}")
    if not bool(torch.isfinite(X).all()):
        raise ValueError("X: contains NaN or infinity; remove or impute those samples")
    return X.contiguous()


def _sample_weights(sample_weight: Any, data: Any) -> Any:
    """(N,) float64 weights in data's library, or None for unit weights."""
    if sample_weight is None:
        return None
    n_samples = int(data.shape[0])
    weights = np.asarray(to_numpy(sample_weight) if library_of(sample_weight) else sample_weight)
    if weights.dtype.kind not in "biuf":  # not strings, complex numbers or objects
        raise ValueError(f"sample_weight: expected real numbers, got an array of {weights.dtype}")
    if weights.ndim == 0:
        weights = np.full(n_samples, float(weights))
    if weights.shape != (n_samples,):
        raise ValueError(
            f"sample_weight: expected shape ({n_samples},), one weight per sample of X, "
            f"got {weights.shape}"
        )
    weights = weights.astype(np.float64)
    if not np.all(np.isfinite(weights)) or np.any(weights < 0):
        raise ValueError(
            "sample_weight: expected finite weights >= 0; drop the samples of weight NaN or "
            "inf, and give negative ones 0"
        )
    if not np.any(weights > 0):
        raise ValueError("sample_weight: every weight is zero; give some samples a weight > 0")
    if library_of(data) == "torch":
        import torch

        return torch.as_tensor(weights, device=data.device)
    return weights


def _given_centres(init: Any, n_clusters: int, n_features: int, name: str = "init") -> np.ndarray:
    centres = check_array(to_numpy(init), dtype=np.float64, input_name=name)
    if centres.shape != (n_clusters, n_features):
        raise ValueError(
            f"{name}: expected initial centres of shape (n_clusters, n_features) = "
            f"({n_clusters}, {n_features}), got {centres.shape}"
        )
    return centres.copy()


def _seeding_rows(samples: Samples, random_state: Any) -> tuple[Any, np.ndarray]:
    """The rows the seeding draws from (all, or :data:`SEED_ROWS` of a memmap) and
    their weights, on the host."""
    rows = samples.host()
    weights = to_numpy(samples.weights) if samples.weights is not None else None
    if samples.streamed and samples.n_samples > SEED_ROWS:
        chosen = np.sort(random_state.choice(samples.n_samples, SEED_ROWS, replace=False))
        rows = np.asarray(rows[chosen])
        weights = None if weights is None else weights[chosen]
    if weights is None:
        weights = np.ones(rows.shape[0])
    return rows, weights


# ---------------------------------------------------------------------------
# the size constraint
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Sizes:
    """A fit's size constraint as :func:`otlabel.assign`'s arguments: bounds as
    fractions of N (each an exact count once multiplied by N), or fixed or relaxed
    proportions."""

    min_size: np.ndarray | None = None  # (K,) lower counts / N
    max_size: np.ndarray | None = None  # (K,) upper counts / N
    cluster_weights: Any = None
    size_penalty: Any = None

    def arguments(self) -> dict[str, Any]:
        return {
            "min_size": self.min_size,
            "max_size": self.max_size,
            "cluster_weights": self.cluster_weights,
            "size_penalty": self.size_penalty,
        }

    def as_bounds(self, n_samples: int, n_clusters: int) -> Sizes:
        """Fixed proportions as the count bounds they give N samples (the exact step
        of fixed sizes needs K <= N; a batch of fewer samples has bounds 0..1)."""
        bounds = self.count_bounds(n_samples, n_clusters)
        if bounds is None or self.min_size is not None:
            return self
        lower, upper = bounds
        return Sizes(min_size=lower / n_samples, max_size=upper / n_samples)

    def count_bounds(self, n_samples: int, n_clusters: int) -> tuple[np.ndarray, np.ndarray] | None:
        """(K,) least and largest counts for N samples, as ``assign`` takes them (``floor``
        and ``ceil`` of N times the fractions); None for relaxed sizes."""
        if self.size_penalty is not None:
            return None
        if self.min_size is None and self.max_size is None:
            weights = self.cluster_weights
            weights = np.ones(n_clusters) if weights is None else to_numpy(weights)
            return count_bounds(n_samples, weights)
        lower, upper = (np.asarray(bound, np.float64) for bound in (self.min_size, self.max_size))
        return BoundedSizes(lower, upper).count_bounds(n_samples)


def size_constraint(estimator: KMeans, n_samples: int) -> Sizes:
    """The constraint of ``estimator``'s size parameters for N samples."""
    bounded = estimator.min_size is not None or estimator.max_size is not None
    if not bounded:
        return Sizes(cluster_weights=estimator.cluster_weights, size_penalty=estimator.size_penalty)
    for name in ("cluster_weights", "size_penalty"):
        if getattr(estimator, name) is not None:
            raise ValueError(
                f"{name}: bounds (min_size, max_size) and {name} are two different size "
                "constraints; give one of them"
            )
    return bounded_sizes(estimator.min_size, estimator.max_size, estimator.n_clusters, n_samples)


def bounded_sizes(min_size: Any, max_size: Any, n_clusters: int, n_samples: int) -> Sizes:
    """Count bounds of ``min_size``/``max_size`` for N samples, checked feasible."""
    lower = size_counts(min_size, "min_size", n_clusters, n_samples, np.floor, 0)
    upper = size_counts(max_size, "max_size", n_clusters, n_samples, np.ceil, n_samples)
    if np.any(lower > upper):
        k = int(np.flatnonzero(lower > upper)[0])
        raise ValueError(
            f"min_size: cluster {k} needs at least {lower[k]} samples but max_size allows "
            f"{upper[k]}; give every cluster min_size <= max_size"
        )
    if np.any(upper == 0):
        raise ValueError("max_size: every cluster must hold at least 1 sample; raise it")
    if lower.sum() > n_samples:
        raise ValueError(
            f"min_size: {n_clusters} clusters need at least {lower.sum()} samples together, "
            f"and X has {n_samples}; lower min_size (or n_clusters)"
        )
    if upper.sum() < n_samples:
        raise ValueError(
            f"max_size: {n_clusters} clusters hold at most {upper.sum()} samples together, "
            f"and X has {n_samples}; raise max_size (or n_clusters)"
        )
    return Sizes(min_size=lower / n_samples, max_size=upper / n_samples)


def size_counts(
    value: Any, name: str, n_clusters: int, n_samples: int, rounding: Any, default: int
) -> np.ndarray:
    """(K,) int64 counts of a size bound: an int is a count, a float a fraction of N
    (rounded by ``rounding``, an integer within 1e-9 taken as such)."""
    if value is None:
        return np.full(n_clusters, default, dtype=np.int64)
    array = np.asarray(to_numpy(value) if library_of(value) else value)
    if array.dtype == np.bool_ or not np.issubdtype(array.dtype, np.number):
        raise TypeError(
            f"{name}: expected a count (int), a fraction of N (float) or a ({n_clusters},) "
            f"array of them, got {type(value).__name__}"
        )
    if array.ndim == 0:
        array = np.full(n_clusters, array.item(), dtype=array.dtype)
    if array.shape != (n_clusters,):
        raise ValueError(
            f"{name}: expected one number or one per cluster, shape ({n_clusters},), "
            f"got {array.shape}"
        )
    if np.issubdtype(array.dtype, np.integer):
        counts = array.astype(np.int64)
        if np.any(counts < 0) or np.any(counts > n_samples):
            raise ValueError(
                f"{name}: a count of samples is 0..{n_samples} (X's N), got "
                f"{int(counts[(counts < 0) | (counts > n_samples)][0])}; for a fraction "
                "of N pass a float"
            )
        return counts
    fractions = array.astype(np.float64)
    if not np.all(np.isfinite(fractions)) or np.any(fractions < 0) or np.any(fractions > 1):
        raise ValueError(
            f"{name}: a float is a fraction of the N samples, in [0, 1]; got "
            f"{value!r} (for a count of samples, pass an int)"
        )
    exact = n_samples * fractions
    nearest = np.round(exact)
    integral = np.abs(exact - nearest) <= 1e-9 * np.maximum(1.0, exact)
    return np.where(integral, nearest, rounding(exact)).astype(np.int64)


# ---------------------------------------------------------------------------
# Lloyd's loop
# ---------------------------------------------------------------------------


@dataclass
class StepLabels:
    """An assignment step's exact labels, their counts, optimal dual and certificate."""

    labels: Any  # (N,) int64, in the scores' library
    counts: Any  # (K,) int64
    potential: Any  # (K,) float64: the exact labels' optimal dual g (squared-distance units)
    gap: float  # certified (optimum - achieved) / N


class AssignmentStep:
    """The exact assignment step, each call warm-started from the previous one's
    optimal dual.

    A call reads the argmax labels at the previous step's dual (one pass over the
    scores).  When they are near the bounds (at most :data:`NEAR_SHARE` of the
    samples to move), the exact labels come from that dual directly.  Otherwise
    (the first call, a large move of the centres, relaxed sizes) a Sinkhorn solve
    at :attr:`epsilon` (set by the first call's scores) brings the potential close
    first.  Under count bounds, a NumPy array's or memmap's exact labels are then
    those of the samples of least margin solved exactly, the others kept at their
    argmax and proved optimal (:func:`margin_labels`); a CSR matrix's come from the
    repair of the samples left to move (:func:`otlabel.rounding.balanced_labels`),
    a tensor's (and relaxed sizes') from :func:`otlabel.assign` at ``epsilon=0``
    with one pass.  Either way the labels are the exact optimum and
    :attr:`potential` their optimal dual.
    """

    def __init__(
        self,
        samples: Samples,
        sizes: Sizes,
        epsilon: float | None = None,
        potential: Any = None,
    ) -> None:
        self.samples = samples
        self.sizes = sizes
        self.epsilon = epsilon
        self.potential: Any = potential

    def __call__(self, centres: np.ndarray) -> StepLabels:
        bounds = self.sizes.count_bounds(self.samples.n_samples, centres.shape[0])
        if isinstance(self.samples, DenseSamples) and bounds is not None:
            return self._by_margins(centres, bounds)
        start, argmax = self.potential, None
        if start is None or bounds is None:  # relaxed sizes: no argmax labels judged
            scores = self.samples.scores(centres)
        else:
            scores, argmax = self.samples.scores_and_argmax(centres, to_numpy(start))
            argmax = argmax if self._near(argmax, bounds) else None
        if argmax is None:
            start = self._closer(scores, centres, start)
        step = self._exact(scores, start, argmax, bounds)
        self.potential = step.potential
        return step

    def _near(self, labels: np.ndarray, bounds: tuple[np.ndarray, np.ndarray]) -> bool:
        """Whether the argmax ``labels`` leave at most :data:`NEAR_SHARE` of the
        samples to move under the count ``bounds``."""
        return _to_move(labels, bounds) <= NEAR_SHARE * self.samples.n_samples

    def _by_margins(self, centres: np.ndarray, bounds: tuple[np.ndarray, np.ndarray]) -> StepLabels:
        """The exact step of a NumPy array or memmap: the argmax labels and margins at
        the previous dual (or, when far, at a Sinkhorn potential), then the exact
        labels of the samples of least margin (:func:`margin_labels`)."""
        samples, start = self.samples, self.potential
        assert isinstance(samples, DenseSamples)
        found = None
        if start is not None:
            found = samples.labels_and_margins(centres, to_numpy(start))
            if not self._near(found[1], bounds):
                found = None  # not held through the solve: 16 bytes a sample
        if found is None:
            start = self._closer(samples.scores(centres), centres, start)
            found = samples.labels_and_margins(centres, to_numpy(start))
        first_rows = MARGIN_ROWS if samples.streamed else IN_MEMORY_MARGIN_ROWS
        step = margin_labels(*found, to_numpy(start), bounds, first_rows)
        self.potential = step.potential
        return step

    def _closer(self, scores: Any, centres: np.ndarray, start: Any) -> Any:
        """The potential of a Sinkhorn solve from ``start`` at :attr:`epsilon` (a
        stream without a start: from a solve on :data:`START_ROWS` of its rows)."""
        if self.epsilon is None:
            self.epsilon = epsilon_for(self.samples.score_sample(centres))
        samples, epsilon = self.samples, self.epsilon
        large = samples.n_samples > START_ROWS
        if start is None and large and isinstance(samples, StreamedSamples):
            rows = np.linspace(0, samples.n_samples - 1, START_ROWS).astype(np.int64)
            start = self._solve(samples.rows_scores(centres, rows), epsilon, None)
        return self._solve(scores, epsilon, start)

    def _solve(self, scores: Any, epsilon: float, start: Any) -> Any:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            solved = sinkhorn(
                scores, epsilon, **self.sizes.arguments(), init=start, tol=SOLVE_TOL,
                max_iter=SOLVE_MAX_ITER, method="log",
            )  # fmt: skip
        return solved.potential

    def _exact(
        self,
        scores: Any,
        start: Any,
        argmax: np.ndarray | None,
        bounds: tuple[np.ndarray, np.ndarray] | None,
    ) -> StepLabels:
        """The exact labels from ``start`` and their dual: the argmax labels
        ``argmax`` at ``start`` (in-memory scores, count ``bounds``) when
        :func:`_argmax_optimum` proves them, else repaired from them; otherwise by
        ``assign`` at ``epsilon=0`` (one Sinkhorn pass from ``start``, then the
        exact labels)."""
        if argmax is not None and isinstance(scores, np.ndarray):
            assert bounds is not None  # argmax labels are only judged under count bounds
            optimum = _argmax_optimum(argmax, to_numpy(start), bounds)
            if optimum is not None:
                return optimum
            passes, rows_per_block = _rounding_passes(scores)
            exact = balanced_labels(
                scores, to_numpy(start), bounds, rows_per_block=rows_per_block, passes=passes,
                argmax=argmax,
            )  # fmt: skip
            counts = np.bincount(exact.labels, minlength=bounds[0].size)
            assert exact.potential is not None  # balanced labels carry their dual
            return StepLabels(exact.labels, counts, exact.potential, float(exact.gap))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            result = assign(
                scores, 0, **self.sizes.arguments(), init=start, tol=SOLVE_TOL, max_iter=1,
                method="log",
            )  # fmt: skip
        return StepLabels(result.labels, result.counts, result.potential, float(result.gap))


#: A stream's first step starts from a solve on this many of its rows, evenly spread
#: (the solve's own start on a stream would copy a tenth of its rows or more).
START_ROWS = 100_000
#: The samples of least margin that :func:`margin_labels` first solves for: at least
#: this many in a memmap (each try reads it again), in memory (a try gathers its
#: rows) ...
MARGIN_ROWS = 1 << 16
IN_MEMORY_MARGIN_ROWS = 1 << 10
#: ... and this many per sample to move at the start ...
MARGIN_ROWS_PER_MOVE = 4
#: ... and at each retry at least this many times more, and at least those whose
#: margin is below :data:`SPREAD_SAFETY` times the spread of the failed try's dual
#: move (which the next try's moves about as far: 0.074 after 0.079 at 3 000 000 x
#: 64, K = 100), so that the rows held are not 4 times more than needed.
MARGIN_GROWTH = 2
SPREAD_SAFETY = 1.5
#: The certificate of :func:`margin_labels` proves the labels optimal when it is at
#: most this share of the largest score (rounding).
GAP_TOLERANCE = 1e-12


def margin_labels(
    rows_of: Callable[[np.ndarray], np.ndarray],
    labels: np.ndarray,
    margins: np.ndarray,
    potential: np.ndarray,
    bounds: tuple[np.ndarray, np.ndarray],
    first_rows: int = MARGIN_ROWS,
) -> StepLabels:
    """The exact labels under count bounds without reading the whole score matrix
    again: the samples of least margin solved exactly, the others kept at their
    argmax, and proved optimal.

    ``rows_of(rows)``: the scores (m, K) of the samples ``rows`` (m,) (increasing);
    ``labels`` and ``margins`` (N,): the argmax labels at ``potential`` and by how
    much each beats its second best; the exact labels are written into ``labels``
    (returned as the step's).  The samples whose margin is below a threshold
    ``tau`` (at least ``first_rows`` of them, and :data:`MARGIN_ROWS_PER_MOVE` per
    sample to move) are solved exactly (their rows in memory, the bounds less the
    counts of the others: :func:`otlabel.rounding.balanced_labels`), giving a dual
    ``g'``.  A sample of margin at least ``tau`` stays at a best cluster under
    ``g'`` when ``tau`` is at least the spread ``max_k (g'_k - g_k) - min_k (g'_k -
    g_k)``; then every sample is at a best cluster, and the certificate (the
    price term of the counts, at the best level of the dual) proves the labels
    optimal.  Otherwise more samples are solved (:data:`MARGIN_GROWTH` times more,
    or those of margin below :data:`SPREAD_SAFETY` times the spread found), up to
    all of them.
    """
    n_samples, (lower, upper) = labels.size, bounds
    optimum = _argmax_optimum(labels, potential, bounds)
    if optimum is not None:
        return optimum
    to_move = _to_move(labels, bounds)
    wanted = max(first_rows, MARGIN_ROWS_PER_MOVE * to_move)
    solved = np.zeros(0, np.int64)  # rows whose labels a failed try wrote
    while True:
        active, tau = _least_margins(margins, wanted, solved)
        fixed = np.bincount(labels, minlength=lower.size) - np.bincount(
            labels[active], minlength=lower.size
        )
        short = int(np.maximum(lower - fixed, 0).sum())
        if active.size < n_samples and (np.any(fixed > upper) or short > active.size):
            wanted *= MARGIN_GROWTH  # the active rows cannot meet the bounds left
            continue
        step, certified = _solved_rows(rows_of(active), potential, labels, active, fixed, bounds)
        spread = float(np.ptp(np.asarray(step.potential) - potential))
        if active.size == n_samples or (spread <= tau and certified):
            return step
        # The next active rows hold these, so their labels are all written again;
        # the others' are still the argmax labels.
        solved = active
        needed = int(np.count_nonzero(margins < SPREAD_SAFETY * spread))
        wanted = max(MARGIN_GROWTH * wanted, needed)


def _least_margins(
    margins: np.ndarray, wanted: int, solved: np.ndarray
) -> tuple[np.ndarray, float]:
    """The ``wanted`` samples of least margin (of those tied at the last margin
    taken, some) and the ``solved`` ones, as increasing indices, and the least
    margin of the others (inf: none left)."""
    if wanted >= margins.size:
        return np.arange(margins.size), np.inf
    least = np.argpartition(margins, wanted)[:wanted].copy()  # not the N indices
    active = np.union1d(least, solved)
    others = np.ones(margins.size, bool)
    others[active] = False
    return active, float(np.min(margins, where=others, initial=np.inf))


def _solved_rows(
    rows: np.ndarray,
    potential: np.ndarray,
    labels: np.ndarray,
    active: np.ndarray,
    fixed: np.ndarray,
    bounds: tuple[np.ndarray, np.ndarray],
) -> tuple[StepLabels, bool]:
    """The exact labels of the ``active`` samples (their scores ``rows`` (m, K)) under
    the bounds less the ``fixed`` counts, written into ``labels`` (the others kept:
    no copy of N labels); the dual at its best level for all the counts, and the
    certificate of the active rows and the counts (the samples kept are at a best cluster:
    :func:`margin_labels` checks it), and whether it is at rounding level
    (:data:`GAP_TOLERANCE` of the largest score)."""
    lower, upper = bounds
    passes, rows_per_block = _rounding_passes(rows)
    exact = balanced_labels(
        rows, potential, (np.maximum(lower - fixed, 0), upper - fixed),
        rows_per_block=rows_per_block, passes=passes,
    )  # fmt: skip
    assert exact.potential is not None  # balanced labels carry their dual
    labels[active] = exact.labels
    counts = np.bincount(labels, minlength=lower.size)
    dual, price_term = _level_dual(counts, np.asarray(exact.potential), bounds)
    row_terms = 0.0
    for start in range(0, active.size, BLOCK_ROWS):  # float64 a block at a time
        shifted = rows[start : start + BLOCK_ROWS].astype(np.float64) + dual
        own = exact.labels[start : start + BLOCK_ROWS]
        row_terms += float(np.sum(shifted.max(axis=1) - shifted[np.arange(own.size), own]))
    gap = max(0.0, (row_terms + price_term) / labels.size)
    scale = max(abs(float(rows.max())), abs(float(rows.min()))) if rows.size else 0.0
    return StepLabels(labels, counts, dual, gap), gap <= GAP_TOLERANCE * (1.0 + scale)


def _argmax_optimum(
    labels: np.ndarray, potential: np.ndarray, bounds: tuple[np.ndarray, np.ndarray]
) -> StepLabels | None:
    """The argmax ``labels`` at ``potential`` as the step's, when they meet the count
    ``bounds`` and the dual prices no cluster away from the bound it holds it to
    (every sample at a best cluster, no price paid: the optimum); else None."""
    if _to_move(labels, bounds) > 0:
        return None
    counts = np.bincount(labels, minlength=bounds[0].size)
    dual, price_term = _level_dual(counts, potential, bounds)
    return StepLabels(labels, counts, dual, 0.0) if price_term == 0 else None


def _level_dual(
    counts: np.ndarray, potential: np.ndarray, bounds: tuple[np.ndarray, np.ndarray]
) -> tuple[np.ndarray, float]:
    """The dual ``potential`` (K,) shifted to its best level for the ``counts`` (the
    same argmax labels), and its price term ``sum_k (n_k - b_k) g_k``, ``b_k`` the
    lower bound where ``g_k > 0`` and the upper one elsewhere: every term is at
    least 0, and the sum exactly 0 when each cluster that the dual prices is at
    the bound it prices it to."""
    lower, upper = bounds
    prices = -potential
    dual = dual_level(counts, prices, lower, upper) - prices
    return dual, float(np.sum((counts - np.where(dual > 0, lower, upper)) * dual))


def _to_move(labels: np.ndarray, bounds: tuple[np.ndarray, np.ndarray]) -> int:
    """The samples that the argmax ``labels`` put beyond the count bounds: over the
    upper ones and short of the lower ones."""
    lower, upper = bounds
    counts = np.bincount(labels, minlength=lower.size)
    return int(np.maximum(counts - upper, 0).sum() + np.maximum(lower - counts, 0).sum())


def kernel_threads(samples: Samples, n_clusters: int) -> Any:
    """The threads of the compiled kernels during a fit: one below
    :data:`SERIAL_ENTRIES` score entries, else all (a context)."""
    small = samples.n_samples * n_clusters < SERIAL_ENTRIES
    return resolve_backend("auto", [samples.data]).context(1 if small else None)


def _rounding_passes(scores: np.ndarray) -> tuple[Any, int]:
    """Who reads an in-memory score matrix for the exact labels, in blocks of how many
    rows: the backend ``assign`` would pick."""
    return resolve_backend("auto", [scores]).rounding_passes(scores)


def epsilon_for(scores: np.ndarray) -> float:
    """:data:`EPSILON_SHARE` of the scores' standard deviation (1 if they are all equal)."""
    unit = float(np.abs(scores).max(initial=0.0))  # squares of 1e300 would overflow
    spread = unit * float(np.std(scores / unit, dtype=np.float64)) if unit > 0 else 0.0
    return EPSILON_SHARE * spread if spread > 0 else 1.0


@dataclass
class Run:
    """One run of Lloyd's loop: its centres, last assignment step, inertia, iterations."""

    centres: np.ndarray  # (K, d) float64
    step: StepLabels
    inertia: float
    n_iter: int
    epsilon: float


def lloyd(
    samples: Samples,
    centres: np.ndarray,
    sizes: Sizes,
    max_iter: int,
    tol: float,
    report: Callable[[int, float], Any] | None = None,
) -> Run:
    """Assignment steps and centre updates until the labels repeat, the centres move
    at most ``tol`` (summed squared shift), or ``max_iter``; the labels are then
    those of the final centres (one more step unless they repeated).  ``report(n_iter,
    shift)`` after every iteration."""
    solve = AssignmentStep(samples, sizes)
    previous = None
    repeated = False
    n_iter = 0
    for n_iter in range(1, max_iter + 1):
        step = solve(centres)
        updated = centre_update(samples, step.labels, centres)
        shift = float(((updated - centres) ** 2).sum())
        centres = updated
        if report is not None:
            report(n_iter, shift)
        if previous is not None and samples.labels_equal(step.labels, previous):
            repeated = True
            break
        if shift <= tol:
            break
        previous = step.labels
    if not repeated:
        step = solve(centres)
    epsilon = float(solve.epsilon or 1.0)
    return Run(centres, step, samples.inertia(centres, step.labels), n_iter, epsilon)


def centre_update(samples: Samples, labels: Any, centres: np.ndarray) -> np.ndarray:
    """The weighted means of the clusters (K, d) float64; an empty cluster takes the
    sample farthest from its centre (scikit-learn's rule), a cluster of weight 0
    that finds none keeps its centre."""
    n_clusters = centres.shape[0]
    sums, totals = samples.centre_sums(labels, n_clusters)
    empty = np.flatnonzero(totals <= 0)
    if empty.size:
        relocate(samples, labels, centres, sums, totals, empty)
    updated = centres.copy()
    held = totals > 0
    updated[held] = sums[held] / totals[held, None]
    return updated


def relocate(
    samples: Samples,
    labels: Any,
    centres: np.ndarray,
    sums: np.ndarray,
    totals: np.ndarray,
    empty: np.ndarray,
) -> None:
    """Give each empty cluster (in order) one of the samples farthest from their
    centres (farthest first), taken out of its own cluster's sums (in place)."""
    distances = samples.distances(centres, labels)  # (N,)
    farthest = np.argsort(-distances, kind="stable")[: empty.size]
    host_labels = to_numpy(labels)
    weights = np.ones(samples.n_samples) if samples.weights is None else to_numpy(samples.weights)
    for cluster, sample in zip(empty, farthest, strict=False):
        row = samples.row(int(sample))  # (d,) float64
        weight = weights[sample]
        source = host_labels[sample]
        sums[source] -= weight * row
        totals[source] -= weight
        sums[cluster] = weight * row
        totals[cluster] = weight
