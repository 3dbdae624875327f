"""The samples of a k-means fit and the reads its loop makes of them.

:class:`otlabel.KMeans` alternates an assignment step (otlabel's solve on the
scores ``S_ik = 2 x_i.c_k - ||c_k||^2``) and a centre update (weighted means).
Each kind of input reads its samples its own way, behind one interface
(:class:`Samples`):

==============  ======================================  ===============================
kind            scores                                  centre sums, distances
==============  ======================================  ===============================
NumPy array     one (N, K) matrix in X's dtype, filled  compiled loops (Numba), float64
                chunk by chunk by BLAS
NumPy memmap    a :class:`~otlabel.ChunkedScores`:      compiled loops over the mapping
                each block computed when read
CSR matrix      one (N, K) matrix, sparse products      a sparse one-hot product
Torch tensor    one (N, K) tensor on X's device         ``index_add_`` on the device
==============  ======================================  ===============================

Centres are (K, d) float64 NumPy arrays on the host (small); what is N long
(labels, weights) stays in X's library.  Sums and distances accumulate in
float64 whatever X's dtype.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any

import numpy as np
import scipy.sparse as sparse
from numba import njit, prange

from ._arrays import library_of, namespace, to_numpy
from .kernels.numba.rounding import margins_on_this_thread
from .kernels.numba.tasks import run_tasks
from .prediction import predict
from .streaming import ChunkedScores

#: Rows per block of a memmap's score products and of the float64 reads (a block
#: of a 150-feature float32 X is 10 MB, of its 50-cluster scores 3 MB).
BLOCK_ROWS = 16384
#: Bytes of X per chunk of the in-memory score product: BLAS multiplies a chunk
#: in cache (at 23 000 x 50 float64, K = 10, two threads: 0.49 ms a product in
#: chunks of 1 024 rows, 0.80 ms in blocks of 16 384).
CHUNK_BYTES = 1 << 19
#: Rows whose scores set the scale of the entropic regularisation.
SCALE_ROWS = 4096
#: Row ranges of the compiled centre sums, each summed on its own then added in
#: order: the sums do not depend on how many threads run them.
SUM_PARTS = 8


def samples_of(data: Any, weights: Any, *, streamed: bool = False) -> Samples:
    """The :class:`Samples` reader for validated ``data`` (N, d) and ``weights`` (N,);
    ``streamed``: a NumPy array whose scores are never held whole (a memmap's)."""
    if library_of(data) == "torch":
        return TorchSamples(data, weights)
    if sparse.issparse(data):
        return SparseSamples(data, weights)
    if streamed:
        return StreamedSamples(data, weights)
    return DenseSamples(data, weights)


class Samples:
    """What the k-means loop reads from its samples ``X`` (N, d) and weights ``w`` (N,).

    ``w = None`` means every sample weighs 1.  Weights scale the scores' rows
    (``w_i S_ik``: the exact labels then maximise ``-sum_i w_i ||x_i - c_yi||^2``)
    and the centre sums; the sizes count samples.
    """

    data: Any
    weights: Any  # (N,) float64 in data's library, or None
    #: Whether the scores are computed block by block as the solve reads them.
    streamed = False

    def __init__(self, data: Any, weights: Any) -> None:
        self.data = data
        self.weights = weights
        self.n_samples, self.n_features = (int(n) for n in data.shape)
        self.origin: Any = None  # (d,) in X's dtype and library: see :meth:`centre_at`
        self.origin64: np.ndarray | None = None  # the same, float64 on the host

    def centre_at(self, origin: np.ndarray | None) -> None:
        """Measure the scores and norms from ``origin`` (d,) float64 (None: from 0).

        The labels do not change (``2 (x - o).(c - o) - ||c - o||^2`` is ``2 x.c -
        ||c||^2`` less a constant per sample), but their rounding does: float32
        samples far from 0 (coordinates of 40.7 spread by 0.05) lose the distances
        between them in ``2 x.c`` and ``||c||^2``, which are then huge and nearly
        equal; from their mean they keep them.  Ignored for sparse samples (read as
        scikit-learn reads them, from 0)."""
        if origin is None or not np.any(origin) or not self.centred:
            self.origin = self.origin64 = None
            return
        cast = np.asarray(origin, dtype=np.float64).astype(self.host_dtype)
        self.origin64 = cast.astype(np.float64)  # the same point for X and the centres
        self.origin = self.like_data(cast)

    #: Whether :meth:`centre_at` applies (False for sparse samples).
    centred = True

    def mean(self) -> np.ndarray | None:
        """The samples' mean (d,) float64 (None where they are not centred)."""
        raise NotImplementedError

    def _from_origin(self, start: int, stop: int) -> Any:
        """Rows ``start:stop`` of X less the origin, in X's dtype (a view without one)."""
        rows = self.data[start:stop]
        return rows if self.origin is None else rows - self.origin

    def _score_operands(self, centres: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``2 (C - o)^T`` (d, K) and ``||c_k - o||^2`` (K,) on the host in X's dtype,
        from the centres (K, d) float64 as cast, ``o`` the origin."""
        if self.origin64 is not None:
            centres = centres - self.origin64
        cast = centres.astype(self.host_dtype)
        norms = np.einsum("kd,kd->k", cast, cast, dtype=np.float64)
        return np.ascontiguousarray(2 * cast.T), norms.astype(self.host_dtype)

    @property
    def dtype(self) -> Any:
        """X's dtype (NumPy's, or Torch's for a tensor)."""
        return self.data.dtype

    @property
    def host_dtype(self) -> np.dtype:
        """X's dtype as NumPy's (the dtype of the fitted centres)."""
        return np.dtype(self.data.dtype)

    def scores(self, centres: np.ndarray) -> Any:
        """``w_i (2 x_i.c_k - ||c_k||^2)`` (N, K) in X's dtype, or a stream of them."""
        raise NotImplementedError

    def scores_and_argmax(self, centres: np.ndarray, potential: np.ndarray) -> tuple[Any, Any]:
        """The scores (:meth:`scores`) and their argmax labels at ``potential`` (K,)
        float64, ``argmax_k (S_ik + g_k)`` (N,) int64 on the host (the first on
        ties)."""
        scores = self.scores(centres)
        return scores, to_numpy(predict(scores, potential))

    def score_sample(self, centres: np.ndarray) -> np.ndarray:
        """The scores of the first :data:`SCALE_ROWS` rows, on the host."""
        return to_numpy(self.block_scores(centres, 0, min(self.n_samples, SCALE_ROWS)))

    def block_scores(self, centres: np.ndarray, start: int, stop: int) -> Any:
        raise NotImplementedError

    def centre_sums(self, labels: Any, n_clusters: int) -> tuple[np.ndarray, np.ndarray]:
        """``sum_{i: y_i = k} w_i x_i`` (K, d) and ``sum_{i: y_i = k} w_i`` (K,), float64."""
        raise NotImplementedError

    def distances(self, centres: np.ndarray, labels: Any) -> np.ndarray:
        """``||x_i - c_{y_i}||^2`` (N,) float64 on the host, the centres cast to X's dtype."""
        raise NotImplementedError

    def squared_norms(self, start: int, stop: int) -> Any:
        """``||x_i||^2`` of rows ``start:stop``, float64, in X's library."""
        raise NotImplementedError

    def largest_squared_norm(self) -> float:
        """``max_i ||x_i - o||^2`` in float64, one read of X."""
        largest = 0.0
        for start in range(0, self.n_samples, BLOCK_ROWS):
            norms = self.squared_norms(start, min(start + BLOCK_ROWS, self.n_samples))
            largest = max(largest, float(norms.max()))
        return largest

    def row(self, index: int) -> np.ndarray:
        """Sample ``index`` (d,) as float64 on the host."""
        return to_numpy(self.data[index]).astype(np.float64)

    def distances_to(self, centres: np.ndarray) -> Any:
        """``||x_i - c_k||`` (N, K) in X's dtype and library (unweighted)."""
        pieces = []
        for start in range(0, self.n_samples, BLOCK_ROWS):
            stop = min(start + BLOCK_ROWS, self.n_samples)
            scores = self.block_scores(centres, start, stop)
            xp = namespace(scores)
            squared = self.squared_norms(start, stop)[:, None] - xp.astype(scores, xp.float64)
            pieces.append(
                xp.astype(xp.sqrt(xp.where(squared > 0, squared, 0 * squared)), self.dtype)
            )
        return pieces[0] if len(pieces) == 1 else namespace(pieces[0]).concat(pieces, axis=0)

    def mean_variance(self, mean: np.ndarray | None = None) -> float:
        """The mean over features of the samples' variance (scikit-learn's ``tol`` unit);
        ``mean``: the samples' mean, if known (:meth:`mean`)."""
        raise NotImplementedError

    def host(self) -> Any:
        """X as a NumPy array or CSR matrix (for the seeding)."""
        return self.data

    def like_data(self, array: np.ndarray) -> Any:
        """A host array in X's library (and on its device)."""
        return array

    def labels_equal(self, first: Any, second: Any) -> bool:
        return bool(np.array_equal(to_numpy(first), to_numpy(second)))

    def inertia(self, centres: np.ndarray, labels: Any) -> float:
        """``sum_i w_i ||x_i - c_{y_i}||^2`` in float64, the centres cast to X's dtype."""
        distances = self.distances(centres, labels)
        if self.weights is None:
            return float(distances.sum())
        return float(distances @ to_numpy(self.weights))


class DenseSamples(Samples):
    """A NumPy array in memory: the scores in one (N, K) matrix, reused every step."""

    def __init__(self, data: np.ndarray, weights: np.ndarray | None) -> None:
        super().__init__(data, weights)
        self.buffer: np.ndarray | None = None  # (N, K) scores, allocated on first use
        self.scored: np.ndarray | None = None  # (K, d) the centres the buffer holds

    def centre_at(self, origin: np.ndarray | None) -> None:
        super().centre_at(origin)
        self.scored = None  # the buffer's scores were measured from the old origin

    def scores(self, centres: np.ndarray) -> Any:
        return self._product(centres, None)

    def labels_and_margins(
        self, centres: np.ndarray, potential: np.ndarray
    ) -> tuple[Callable[[np.ndarray], np.ndarray], np.ndarray, np.ndarray]:
        """The scores' rows (a function of sample indices (m,) giving their scores (m,
        K)), and ``argmax_k (S_ik + g_k)`` (N,) int64 and by how much it beats the
        second best (N,) float64 (inf for one cluster): one pass, each chunk of the
        product read while in cache."""
        labels, margins = np.empty(self.n_samples, np.int64), np.empty(self.n_samples)
        potential = np.ascontiguousarray(potential, np.float64)

        def read(block: np.ndarray, start: int, stop: int) -> None:
            margins_on_this_thread(block, potential, labels[start:stop], margins[start:stop])

        scores = self._product(centres, read)
        return scores.__getitem__, labels, margins

    def _product(
        self, centres: np.ndarray, read: Callable[[np.ndarray, int, int], None] | None
    ) -> np.ndarray:
        """The scores (N, K) in one buffer, reused every step, filled by BLAS a chunk
        of :data:`CHUNK_BYTES` of X at a time on every core (runs of chunks handed
        out as the compiled kernels' tasks are: :func:`.kernels.numba.tasks.run_tasks`;
        each chunk's product
        runs single-threaded: BLAS's own threads spin between products and take the
        cores from the compiled kernels that follow); ``read(chunk, start, stop)``
        reads each chunk (rows ``start:stop``) while it is in cache.  The scores of
        the centres last computed are kept: asked for again (a far step's solve,
        then its margins), they are read, not computed."""
        shape = (self.n_samples, centres.shape[0])
        if self.buffer is None or self.buffer.shape != shape:
            self.buffer, self.scored = np.empty(shape, self.dtype), None
        held = self.scored is not None and np.array_equal(self.scored, centres)
        if held and read is None:
            return self.buffer
        product, norms = self._score_operands(centres)
        buffer, n_samples = self.buffer, self.n_samples
        chunk = max(1, CHUNK_BYTES // max(1, self.n_features * buffer.itemsize))

        def fill(first_chunk: int, last_chunk: int) -> None:
            for start in range(first_chunk * chunk, min(last_chunk * chunk, n_samples), chunk):
                stop = min(start + chunk, n_samples)
                if not held:
                    self._fill(buffer[start:stop], start, stop, product, norms)
                if read is not None:  # a kernel on this thread, not one that hands out tasks
                    read(buffer[start:stop], start, stop)

        self.scored = None  # while the buffer is written
        run_tasks(os.cpu_count() or 1, fill, -(-n_samples // chunk))
        self.scored = np.array(centres)
        return buffer

    def block_scores(self, centres: np.ndarray, start: int, stop: int) -> np.ndarray:
        product, norms = self._score_operands(centres)
        block = np.empty((stop - start, centres.shape[0]), self.dtype)
        self._fill(block, start, stop, product, norms)
        return block

    def _fill(
        self, out: np.ndarray, start: int, stop: int, product: np.ndarray, norms: np.ndarray
    ) -> None:
        np.matmul(self._from_origin(start, stop), product, out=out)
        out -= norms
        if self.weights is not None:
            out *= self.weights[start:stop, None].astype(self.dtype)

    def centre_sums(self, labels: Any, n_clusters: int) -> tuple[np.ndarray, np.ndarray]:
        weights = _unit_weights(self.weights, self.n_samples)
        return _weighted_sums(np.asarray(self.data), labels, weights, n_clusters, SUM_PARTS)

    def distances(self, centres: np.ndarray, labels: Any) -> np.ndarray:
        return _label_distances(np.asarray(self.data), centres.astype(self.dtype), labels)

    def squared_norms(self, start: int, stop: int) -> np.ndarray:
        block = self._from_origin(start, stop)
        return np.einsum("nd,nd->n", block, block, dtype=np.float64)

    def mean(self) -> np.ndarray:
        totals = np.zeros(self.n_features)
        for start in range(0, self.n_samples, BLOCK_ROWS):
            totals += self.data[start : start + BLOCK_ROWS].sum(axis=0, dtype=np.float64)
        return totals / self.n_samples

    def mean_variance(self, mean: np.ndarray | None = None) -> float:
        mean = self.mean() if mean is None else mean
        spread = np.zeros(self.n_features)
        for start in range(0, self.n_samples, BLOCK_ROWS):
            block = self.data[start : start + BLOCK_ROWS].astype(np.float64) - mean
            spread += np.einsum("nd,nd->d", block, block)
        return float((spread / self.n_samples).mean())


class StreamedSamples(DenseSamples):
    """A NumPy memmap: the scores never held whole, each block computed when the
    solve reads it (:class:`~otlabel.ChunkedScores`), from the mapped rows."""

    streamed = True

    def scores(self, centres: np.ndarray) -> Any:
        product, norms = self._score_operands(centres)
        n_clusters = centres.shape[0]

        def rows(start: int, stop: int) -> np.ndarray:
            block = np.empty((stop - start, n_clusters), self.dtype)
            self._fill(block, start, stop, product, norms)
            return block

        return ChunkedScores(rows, n_samples=self.n_samples, n_clusters=n_clusters)

    def host(self) -> Any:
        return np.asarray(self.data)

    def labels_and_margins(
        self, centres: np.ndarray, potential: np.ndarray
    ) -> tuple[Callable[[np.ndarray], np.ndarray], np.ndarray, np.ndarray]:
        """As :meth:`DenseSamples.labels_and_margins`, block by block
        (:meth:`block_scores`); the rows' scores computed again when asked for
        (:meth:`rows_scores`)."""
        labels = np.empty(self.n_samples, np.int64)
        margins = np.empty(self.n_samples)
        potential = np.ascontiguousarray(potential, np.float64)
        for start in range(0, self.n_samples, BLOCK_ROWS):
            stop = min(start + BLOCK_ROWS, self.n_samples)
            block = self.block_scores(centres, start, stop)
            margins_on_this_thread(block, potential, labels[start:stop], margins[start:stop])
        return functools.partial(self.rows_scores, centres), labels, margins

    def rows_scores(self, centres: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """The scores of ``rows`` (m,) (increasing) (m, K) in X's dtype, from the same
        blocks as :meth:`block_scores` reads (the same values, bit for bit)."""
        out = np.empty((rows.size, centres.shape[0]), self.dtype)
        edges = np.searchsorted(rows, np.arange(0, self.n_samples + BLOCK_ROWS, BLOCK_ROWS))
        for block, start in enumerate(range(0, self.n_samples, BLOCK_ROWS)):
            first, last = edges[block], edges[block + 1]
            if first < last:
                stop = min(start + BLOCK_ROWS, self.n_samples)
                out[first:last] = self.block_scores(centres, start, stop)[rows[first:last] - start]
        return out


class SparseSamples(Samples):
    """A SciPy CSR matrix: sparse products for the scores and the centre sums."""

    centred = False

    def mean(self) -> None:
        return None

    def scores(self, centres: np.ndarray) -> np.ndarray:
        return self.block_scores(centres, 0, self.n_samples)

    def block_scores(self, centres: np.ndarray, start: int, stop: int) -> np.ndarray:
        product, norms = self._score_operands(centres)
        block = np.asarray(self.data[start:stop] @ product) - norms
        if self.weights is not None:
            block *= self.weights[start:stop, None].astype(self.dtype)
        return block

    def centre_sums(self, labels: Any, n_clusters: int) -> tuple[np.ndarray, np.ndarray]:
        weights = _unit_weights(self.weights, self.n_samples)
        rows = np.arange(self.n_samples)
        one_hot = sparse.csr_matrix(
            (weights, (labels, rows)), shape=(n_clusters, self.n_samples)
        )  # (K, N) float64
        sums = np.asarray((one_hot @ self.data.astype(np.float64)).todense())
        return sums, np.bincount(labels, weights=weights, minlength=n_clusters)

    def distances(self, centres: np.ndarray, labels: Any) -> np.ndarray:
        cast = centres.astype(self.dtype).astype(np.float64)
        data = self.data.astype(np.float64)
        cross = np.asarray(data.multiply(cast[labels]).sum(axis=1)).ravel()
        norms = self.squared_norms(0, self.n_samples)
        return np.maximum(norms - 2 * cross + np.einsum("nd,nd->n", cast, cast)[labels], 0.0)

    def squared_norms(self, start: int, stop: int) -> np.ndarray:
        block = self.data[start:stop].astype(np.float64)
        return np.asarray(block.multiply(block).sum(axis=1)).ravel()

    def row(self, index: int) -> np.ndarray:
        return self.data[index].toarray().ravel().astype(np.float64)

    def mean_variance(self, mean: np.ndarray | None = None) -> float:
        data = self.data.astype(np.float64)
        mean = np.asarray(data.mean(axis=0)).ravel()
        squares = np.asarray(data.multiply(data).mean(axis=0)).ravel()
        return float((squares - mean**2).mean())


class TorchSamples(Samples):
    """A Torch tensor (CPU or CUDA): every read on its device, in float64 where it sums."""

    def __init__(self, data: Any, weights: Any) -> None:
        super().__init__(data, weights)
        self.buffer: Any = None

    @property
    def host_dtype(self) -> np.dtype:
        return to_numpy(self.data[:0]).dtype

    def _operands(self, centres: np.ndarray) -> tuple[Any, Any]:
        product, norms = self._score_operands(centres)
        return self.like_data(product), self.like_data(norms)

    def scores(self, centres: np.ndarray) -> Any:
        import torch

        shape = (self.n_samples, centres.shape[0])
        if self.buffer is None or tuple(self.buffer.shape) != shape:
            self.buffer = torch.empty(shape, dtype=self.dtype, device=self.data.device)
        product, norms = self._operands(centres)
        rows = self.n_samples if self.origin is None else BLOCK_ROWS  # a centred copy's
        for start in range(0, self.n_samples, rows):
            stop = min(start + rows, self.n_samples)
            out = self.buffer[start:stop]
            torch.addmm(norms, self._from_origin(start, stop), product, beta=-1, out=out)
        if self.weights is not None:
            self.buffer *= self.weights[:, None].to(self.dtype)
        return self.buffer

    def block_scores(self, centres: np.ndarray, start: int, stop: int) -> Any:
        import torch

        product, norms = self._operands(centres)
        block = torch.addmm(norms, self._from_origin(start, stop), product, beta=-1)
        if self.weights is not None:
            block *= self.weights[start:stop, None].to(self.dtype)
        return block

    def centre_sums(self, labels: Any, n_clusters: int) -> tuple[np.ndarray, np.ndarray]:
        import torch

        device = self.data.device
        sums = torch.zeros((n_clusters, self.n_features), dtype=torch.float64, device=device)
        totals = torch.zeros(n_clusters, dtype=torch.float64, device=device)
        for start in range(0, self.n_samples, BLOCK_ROWS):
            stop = min(start + BLOCK_ROWS, self.n_samples)
            block = self.data[start:stop].to(torch.float64)
            weights = self._block_weights(start, stop)
            sums.index_add_(0, labels[start:stop], block * weights[:, None])
            totals.index_add_(0, labels[start:stop], weights)
        return to_numpy(sums), to_numpy(totals)

    def _block_weights(self, start: int, stop: int) -> Any:
        import torch

        if self.weights is None:
            return torch.ones(stop - start, dtype=torch.float64, device=self.data.device)
        return self.weights[start:stop]

    def distances(self, centres: np.ndarray, labels: Any) -> np.ndarray:
        import torch

        cast = self.like_data(centres.astype(self.host_dtype)).to(torch.float64)
        pieces = []
        for start in range(0, self.n_samples, BLOCK_ROWS):
            stop = min(start + BLOCK_ROWS, self.n_samples)
            difference = self.data[start:stop].to(torch.float64) - cast[labels[start:stop]]
            pieces.append((difference * difference).sum(dim=1))
        return to_numpy(torch.cat(pieces))

    def squared_norms(self, start: int, stop: int) -> Any:
        import torch

        block = self._from_origin(start, stop).to(torch.float64)
        return (block * block).sum(dim=1)

    def mean(self) -> np.ndarray:
        import torch

        return to_numpy(torch.mean(self.data, dim=0, dtype=torch.float64))

    def mean_variance(self, mean: np.ndarray | None = None) -> float:
        import torch

        return float(torch.var(self.data.to(torch.float64), dim=0, correction=0).mean())

    def host(self) -> np.ndarray:
        return to_numpy(self.data)

    def like_data(self, array: np.ndarray) -> Any:
        import torch

        return torch.as_tensor(np.ascontiguousarray(array), device=self.data.device)

    def labels_equal(self, first: Any, second: Any) -> bool:
        import torch

        return bool(torch.equal(first, second))


def _unit_weights(weights: np.ndarray | None, n_samples: int) -> np.ndarray:
    return np.ones(n_samples) if weights is None else weights


@njit(parallel=True, cache=True)
def _weighted_sums(data, labels, weights, n_clusters, n_parts):
    """``sum_{i: y_i = k} w_i x_i`` (K, d) and ``sum w_i`` (K,), float64, over
    ``n_parts`` row ranges (:data:`SUM_PARTS`)."""
    n_samples, n_features = data.shape
    sums = np.zeros((n_parts, n_clusters, n_features))
    totals = np.zeros((n_parts, n_clusters))
    size = (n_samples + n_parts - 1) // n_parts
    for part in prange(n_parts):
        for i in range(part * size, min(n_samples, (part + 1) * size)):
            k, weight = labels[i], weights[i]
            totals[part, k] += weight
            for j in range(n_features):
                sums[part, k, j] += weight * data[i, j]
    return sums.sum(axis=0), totals.sum(axis=0)


@njit(parallel=True, cache=True)
def _label_distances(data, centres, labels):
    """``||x_i - c_{y_i}||^2`` (N,) in float64."""
    n_samples, n_features = data.shape
    out = np.empty(n_samples)
    for i in prange(n_samples):
        k = labels[i]
        total = 0.0
        for j in range(n_features):
            difference = np.float64(data[i, j]) - np.float64(centres[k, j])
            total += difference * difference
        out[i] = total
    return out
