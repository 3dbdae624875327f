"""The benchmark runner behind ``otlabel bench``.

One command measures, in one run on the same inputs, otlabel's installed
backends and the solvers users would otherwise pick (POT's ``sinkhorn`` and
``sinkhorn_log``, a SeLa-style NumPy loop, a SwAV-style Torch loop), against
this machine's read bandwidth.  Each row (one size, one solver) runs in its own
process, so that peak memory and failures belong to that row alone.

Every solver is driven through the same two operations: ``setup`` (what happens
once per problem: building a kernel) and ``step`` (one Sinkhorn iteration,
returning the L1 marginal error of the iterate it produced, the measure of
``otlabel.assign``).  Time per iteration is the median of timed steps; time to
tolerance runs setup and steps until that error reaches ``tol``, within a time
budget.  A solver whose iterate stops being finite, or that would not fit in
memory, is reported as such and not timed.

Effective bandwidth is the bytes of the N x K matrix per iteration over the time
per iteration; the fraction of the machine's bandwidth is its ratio to a read
probe (:func:`read_bandwidth`) timed alternately with the solver's steps, the
median of the paired ratios.  Fractions are reported only for matrices of at
least ``MIN_FRACTION_BYTES``: smaller ones sit partly in the host's cache.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__
from ._system import available_memory, rss_anon
from .datasets import make_scores
from .problem import DEFAULT_TOL, build_problem
from .solver import iterate

DEFAULT_SIZES = [(50_000, 1_000), (200_000, 3_000), (640_000, 3_000)]
IMAGENET = (1_281_167, 3_000)
TINY_SIZES = [(2_000, 50)]
#: Bandwidth fractions are reported only for matrices at least this large.
MIN_FRACTION_BYTES = 2 * 10**9
#: The read probe reads at least this many bytes per measurement.
PROBE_BYTES = 4 * 10**9
EPSILON = 0.04  # SeLa's lambda = 25
SEED = 0
#: Rows of the warm-up call made before otlabel's timed solve (see _OtlabelRun).
WARMUP_ROWS = 4_096


# ---------------------------------------------------------------------------
# Solvers: setup once, then one iteration per step
# ---------------------------------------------------------------------------


class Unsolvable(Exception):
    """The solver cannot solve this input (overflow, NaN, memory); not timed."""


@dataclass
class Solver:
    """A solver as the benchmark drives it."""

    name: str
    description: str
    reads_per_iteration: int  # N x K matrix reads per iteration
    bytes_per_element: Callable[[np.dtype], int]  # working memory per matrix element
    available: Callable[[], bool]
    make: Callable[[Any, float], Any]  # -> object with step() and labels()
    streams: bool = False  # reads the scores from a .npy on disk (make gets its path)
    constraint: bool = False  # a cluster-size constraint row (opt-in: --constraints)


class _OtlabelRun:
    """otlabel as users call it.

    Time to tolerance: one ``otlabel.sinkhorn`` call (every part of its path:
    validation, warm start, kernel building), its passes capped by the budget.
    Time per iteration: the path's steady-state pass alone (for the Numba
    backend, the stored kernel's), one per step.
    """

    lag = 0  # step() returns the error of the iterate it produced

    def __init__(
        self,
        scores: Any,
        epsilon: float,
        backend: str,
        constraint: dict[str, Any] | None = None,
        rounds: bool = False,
    ) -> None:
        self.scores, self.epsilon, self.backend = scores, epsilon, backend
        self.constraint = dict(constraint or {})
        self.rounds = rounds or self.rounds
        n_columns = scores.shape[1] + (self.constraint.get("mass", 1.0) < 1.0)
        self.potential = np.zeros(n_columns)  # with partial mass, g0 last
        self.method: str | None = None
        self.passes: Iterator[Any] | None = None
        self._labels: np.ndarray | None = None
        self._problem: Any = None
        self.probe_seconds = 0.0  # two passes timed to size max_iter to the budget

    rounds = False  # True: the timed solve is assign() with balanced labels

    def solve(self, tol: float, budget: float) -> tuple[int, float]:
        probe_started = time.perf_counter()
        per_pass = self._one_pass_seconds()
        max_iter = max(1, int(budget / max(per_pass, 1e-9)))
        self._warm_up(tol, max_iter)
        self._before_solve()
        self.probe_seconds = time.perf_counter() - probe_started
        result = self._call(self.scores, tol, max_iter)
        self.potential, self.method = np.asarray(result.potential), result.method
        if result.unassigned_potential is not None:
            self.potential = np.append(self.potential, result.unassigned_potential)
        self._labels = None if result.labels is None else np.asarray(result.labels)
        return int(result.n_iter), float(result.error)

    def _call(self, scores: Any, tol: float, max_iter: int) -> Any:
        """The call users make: ``assign`` (with labels) or ``sinkhorn``, this row's options."""
        import warnings

        from .api import assign, sinkhorn

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a budget-capped solve is reported as such
            return (assign if self.rounds else sinkhorn)(
                scores,
                self.epsilon,
                tol=tol,
                backend=self.backend,
                max_iter=max_iter,
                **self.constraint,
            )

    def _before_solve(self) -> None:
        """Called between the timing probe and the timed solve."""

    def _warm_up(self, tol: float, max_iter: int) -> None:
        """The same call on the first :data:`WARMUP_ROWS` rows, or K if more (balanced
        labels need K <= N), with the timed solve's pass budget (a copy; arrays in
        memory, without known labels, whose counts need not fit fewer rows): it loads
        Numba's compiled cache for the functions of the path, a one-time cost per
        process that would otherwise land in the timed solve (0.6 s at 2 000 x 50,
        where a call then takes 26 ms)."""
        if isinstance(self.scores, np.ndarray) and "known_labels" not in self.constraint:
            self._call(
                np.array(self.scores[: max(WARMUP_ROWS, self.scores.shape[1])]), tol, max_iter
            )

    def _one_pass_seconds(self) -> float:
        """The second of two passes (the first carries one-time set-up)."""
        passes = self._passes(warm=False)
        next(passes)
        started = time.perf_counter()
        next(passes)
        return time.perf_counter() - started

    def _passes(self, *, warm: bool) -> Iterator[Any]:
        """Passes of the backend's first kernel (``warm``: as after a close start: the
        Numba backend's stored kernel at once), from :attr:`potential`."""
        if self._problem is None:
            self._problem = build_problem(
                self.scores, self.epsilon, backend=self.backend, rounding=None, **self.constraint
            )
        head, options = self._problem.heads[0], self._problem.options
        log_a, potential = options.backend.vectors(head.scores, head.log_a, self.potential)
        virtual = None
        if head.virtual is not None:
            (virtual,) = options.backend.vectors(head.scores, head.virtual)
        kernel = self._kernel(head, log_a, options, warm)
        self.kernel = kernel
        constraint = head.constraint.to(potential)
        return iterate(kernel, constraint, self.epsilon, potential, virtual=virtual)

    @staticmethod
    def _kernel(head: Any, log_a: Any, options: Any, warm: bool) -> Any:
        return options.backend.first_kernel(head, log_a, options, warm=warm)

    def step(self) -> float:
        if self.passes is None:  # steady state: from the solved potential
            self.passes = self._passes(warm=True)
        return float(next(self.passes).error)

    def stored_kernel(self) -> tuple[float, int] | None:
        """The bytes and entries a steady-state pass reads, when it reads a stored
        kernel of its own (not the scores)."""
        kernel = getattr(self, "kernel", None)
        stored = getattr(kernel, "stored", None)
        if stored is None or not hasattr(stored, "indptr"):
            return None
        read = stored.indptr.nbytes + stored.indices.nbytes + stored.values.nbytes
        return float(read), int(stored.values.size)

    def labels(self) -> np.ndarray:
        if self._labels is not None:
            return self._labels
        from .rounding import hard_labels

        if self._problem is None:
            self._passes(warm=False)
        head, options = self._problem.heads[0], self._problem.options
        n_clusters = head.scores.shape[1]
        potential = np.asarray(self.potential)
        rounded = hard_labels(
            head.scores,
            potential[:n_clusters],
            head.constraint,
            "balanced",
            options.backend,
            virtual=head.virtual,
            unassigned=float(potential[-1]) if head.virtual is not None else None,
        )
        assert rounded.labels is not None
        return rounded.labels


class _StreamRun(_OtlabelRun):
    """otlabel on a :class:`~otlabel.ChunkedScores` over a ``.npy`` on disk (memmap).

    To tolerance: the public call, balanced labels included, the matrix never
    in anonymous memory.  ``cold`` evicts the file's pages from the page cache
    first (``posix_fadvise(DONTNEED)``), so the first pass reads the disk.
    Time per iteration: one log-domain pass over the stream.
    """

    def __init__(self, path: Path, epsilon: float, cold: bool) -> None:
        from .kernels import installed
        from .streaming import ChunkedScores

        self.path, self.cold = path, cold
        if cold:
            evict_page_cache(path)
        self.stream = ChunkedScores(path)
        super().__init__(self.stream, epsilon, "numba" if installed("numba") else "numpy")

    rounds = True

    def _before_solve(self) -> None:
        """Cold: the timing probe read the file into the page cache; evict it again."""
        if self.cold:
            evict_page_cache(self.path)

    @staticmethod
    def _kernel(head: Any, log_a: Any, options: Any, warm: bool) -> Any:
        return options.backend.log_kernel(head.scores, log_a, options)

    def kept_note(self, stride: int = 64) -> str:
        """The share of entries a sparse kernel keeps at the solved potential, counted
        on every ``stride``-th row of the file (the solve's own kernel is not kept)."""
        matrix = np.load(self.path, mmap_mode="r")
        potential = self.potential[: matrix.shape[1]]  # real clusters
        kept, counted = 0.0, 0
        for first in range(0, matrix.shape[0], 4096 * stride):  # 4 096 rows at a time
            rows = np.asarray(matrix[first : first + 4096 * stride : stride], dtype=np.float64)
            kept += kept_fraction(rows, potential, self.epsilon) * rows.size
            counted += rows.size
        share = kept / counted
        return (
            f"the sparse kernel keeps {100 * share:.2f}% of the entries at the solved "
            f"potential (counted on every {stride}th row, after the timings)"
        )


def kept_fraction(scores: np.ndarray, potential: np.ndarray, epsilon: float) -> float:
    """The share of entries whose exponent ``(S_ik + g_k) / eps`` lies within
    ``-FLUSH_EXPONENT`` of its row's largest: those a sparse kernel built at the
    potential ``g`` keeps (the rule of the Numba backend's build)."""
    from .kernels.numba import FLUSH_EXPONENT

    exponent = (scores + potential) / epsilon  # (n, K)
    kept = exponent > exponent.max(axis=1, keepdims=True) + FLUSH_EXPONENT
    return float(kept.mean())


def evict_page_cache(path: Path) -> None:
    """Drop a file's clean pages from the page cache (no root needed)."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
        os.posix_fadvise(descriptor, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(descriptor)


def scores_file(n: int, k: int, kind: str) -> Path:
    """The benchmark matrix saved as ``.npy`` in the temporary folder (written once)."""
    import tempfile

    path = Path(tempfile.gettempdir()) / f"otlabel-bench-{kind}-{n}x{k}-seed{SEED}.npy"
    if not path.exists():
        partial = path.with_suffix(".partial.npy")
        np.save(partial, make_scores(n, k, kind=kind, seed=SEED))
        partial.replace(path)
    return path


class _SelaRun:
    """SeLa's ``sinkhornknopp`` loop in N x K orientation, in its own precision.

    ``P = exp(lambda (S - max_k S))`` per row, then alternately the cluster
    scaling ``r_k = (1/K) / sum_i P_ik c_i`` and the sample scaling
    ``c_i = (1/N) / sum_k P_ik r_k``: two reads of P per iteration.
    """

    def __init__(self, scores: np.ndarray, epsilon: float, dtype: Any) -> None:
        self.started = time.perf_counter()
        n, k = scores.shape
        self.kernel: np.ndarray = np.empty(scores.shape, dtype=dtype)  # P
        rows = max(1, (1 << 22) // k)
        for start in range(0, n, rows):
            block: np.ndarray = scores[start : start + rows].astype(dtype)
            block -= block.max(axis=1, keepdims=True)
            self.kernel[start : start + rows] = np.exp(block * dtype(1 / epsilon))
        self.dtype = dtype
        self.c: np.ndarray = np.full(n, 1 / n, dtype=dtype)
        self.r: np.ndarray = np.full(k, 1 / k, dtype=dtype)
        self.steps = 0
        self.own_stop: str | None = None  # where SeLa's own stop rule first fired

    lag = 1  # step() returns the error of the previous iterate (no extra read)

    def step(self) -> float:
        n, k = self.kernel.shape
        col = self.c @ self.kernel  # (K,) sum_i P_ik c_i
        # The previous iterate (c, r) has exact rows and column masses r * col.
        error = float(np.sum(np.abs((self.r * col).astype(np.float64) - 1 / k)))
        self.r = (1 / k) / col
        c_new = (1 / n) / (self.kernel @ self.r)
        self._own_stop_rule(c_new, error)
        self.c = c_new
        if not (math.isfinite(error) and np.all(np.isfinite(self.c))):
            raise Unsolvable(f"{np.dtype(self.dtype).name} scaling over/underflowed (NaN)")
        return error

    def _own_stop_rule(self, c_new: np.ndarray, error: float) -> None:
        """SeLa's ``optimize_S_sk`` stops once ``sum |c / c_new - 1| < 0.1``, tested on
        every tenth iteration; recorded (iterations, seconds, L1 error) where it first does."""
        if self.own_stop is None and self.steps % 10 == 0:
            change = float(np.nansum(np.abs(self.c / c_new - 1)))
            if change < 0.1:
                seconds = time.perf_counter() - self.started
                self.own_stop = (
                    f"SeLa's own stop rule (sum |c/c_new - 1| < 0.1, tested every 10th "
                    f"iteration) fires after {self.steps + 1} iterations, {seconds:.3g} s, "
                    f"at L1 error {error:.1e} (the previous iterate's)"
                )
        self.steps += 1

    def labels(self) -> np.ndarray:
        return np.argmax(self.kernel * self.r, axis=1)


class _SwavRun:
    """SwAV's ``distributed_sinkhorn`` on one process, in N x K orientation.

    ``Q = exp(S / eps)``, normalised to mass 1; each iteration scales every
    cluster's total to 1/K, then every sample's to 1/N (in place, on Q).
    """

    def __init__(self, scores: np.ndarray, epsilon: float) -> None:
        import torch

        self.torch = torch
        self.q = torch.exp(torch.from_numpy(scores) / epsilon)  # (N, K)
        self.q /= torch.sum(self.q)
        if not bool(torch.isfinite(self.q).all()):
            raise Unsolvable("exp(S / eps) overflowed (inf/NaN)")

    lag = 1  # step() returns the error of the previous iterate (no extra read)

    def step(self) -> float:
        torch = self.torch
        n, k = self.q.shape
        col_mass = torch.sum(self.q, dim=0, keepdim=True)  # rows are exact
        error = float(torch.sum(torch.abs(col_mass.double() - 1 / k)))
        self.q /= col_mass
        self.q /= k
        self.q /= torch.sum(self.q, dim=1, keepdim=True)
        self.q /= n
        if not math.isfinite(error) or not bool(torch.isfinite(self.q[0]).all()):
            raise Unsolvable("Q became NaN (a cluster's total underflowed to 0)")
        return error

    def labels(self) -> np.ndarray:
        return self.torch.argmax(self.q, dim=1).numpy()


class _PotRun:
    """POT's ``ot.sinkhorn``, a black box: run for a fixed number of iterations.

    It runs once for as many iterations as otlabel needed on the same input
    (``stopThr=0``), and the error its plan reached is reported.  Time per
    iteration is the difference of two calls (``numItermax = m`` and ``2m``),
    which removes its set-up.
    """

    def __init__(self, scores: np.ndarray, epsilon: float, method: str) -> None:
        import ot

        self.ot, self.scores, self.epsilon, self.method = ot, scores, epsilon, method
        n, k = scores.shape
        self.a = np.full(n, 1 / n, dtype=scores.dtype)
        self.b = np.full(k, 1 / k, dtype=scores.dtype)
        self.cost = -scores
        self.plan: Any = None

    def run(self, n_iter: int) -> np.ndarray:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return self.ot.sinkhorn(
                self.a,
                self.b,
                self.cost,
                self.epsilon,
                method=self.method,
                numItermax=n_iter,
                stopThr=0.0,
            )

    def error(self) -> float:
        plan = np.asarray(self.plan, dtype=np.float64)
        n, k = plan.shape
        error = float(
            np.abs(plan.sum(axis=1) - 1 / n).sum() + np.abs(plan.sum(axis=0) - 1 / k).sum()
        )
        if not math.isfinite(error):
            raise Unsolvable("the plan is NaN (exp(-M/reg) under- or overflowed)")
        return error

    def labels(self) -> np.ndarray:
        return np.argmax(self.plan, axis=1)


def _installed(module: str) -> Callable[[], bool]:
    def check() -> bool:
        import importlib.util

        return importlib.util.find_spec(module) is not None

    return check


#: The cluster-size rows (``otlabel bench --constraints``): each solved with its exact
#: labels, to compare with the fixed-size row on the same input.
CONSTRAINT_ROWS: dict[str, tuple[str, dict[str, Any]]] = {
    "fixed": ("fixed sizes (equal)", {}),
    "bounded": ("bounded sizes 0.5/K..2/K", {"min_size": 0.5, "max_size": 2.0}),
    "relaxed": ("relaxed sizes, tau = 0.5", {"size_penalty": 0.5}),
    "partial": ("partial mass 0.9", {"mass": 0.9}),
    "known": ("5% known labels (the scores' argmax)", {"known_labels": 0.05}),
}


def _constraint_run(constraint: dict[str, Any]) -> Callable[[Any, float], Any]:
    """How a cluster-size row makes its run: assign with the constraint and labels."""

    def make(scores: Any, epsilon: float) -> _OtlabelRun:
        arguments = _constraint_arguments(constraint, scores)
        return _OtlabelRun(scores, epsilon, "numba", arguments, rounds=True)

    return make


def _constraint_arguments(constraint: dict[str, Any], scores: Any) -> dict[str, Any]:
    """The row's arguments for these scores: bounds per cluster (fractions of 1/K), and
    known labels drawn from the scores' argmax (a fixed 1-in-20 sample)."""
    n, k = scores.shape
    arguments = dict(constraint)
    for bound in ("min_size", "max_size"):
        if bound in arguments:
            arguments[bound] = arguments[bound] / k
    if "known_labels" in arguments:
        known = np.full(n, -1)
        rows = np.arange(0, n, round(1 / arguments["known_labels"]))
        known[rows] = np.argmax(scores[rows], axis=1)
        arguments["known_labels"] = known
    return arguments


SOLVERS: dict[str, Solver] = {
    "otlabel-numpy": Solver(
        "otlabel-numpy",
        "otlabel, NumPy backend (auto domain)",
        1,
        lambda dtype: dtype.itemsize,
        lambda: True,
        lambda scores, eps: _OtlabelRun(scores, eps, "numpy"),
    ),
    "otlabel-numba": Solver(
        "otlabel-numba",
        "otlabel, Numba backend (auto: log domain, then stored kernel)",
        1,
        lambda dtype: dtype.itemsize,
        _installed("numba"),
        lambda scores, eps: _OtlabelRun(scores, eps, "numba"),
    ),
    **{
        f"otlabel-{name}": Solver(
            f"otlabel-{name}",
            f"otlabel.assign, Numba backend, {what}; time to tolerance with its exact labels",
            1,
            lambda dtype: dtype.itemsize,
            _installed("numba"),
            _constraint_run(constraint),
            constraint=True,
        )
        for name, (what, constraint) in CONSTRAINT_ROWS.items()
    },
    "otlabel-stream": Solver(
        "otlabel-stream",
        "otlabel, ChunkedScores over a .npy on disk (memmap), warm page cache",
        1,
        lambda dtype: 0,
        lambda: True,
        lambda path, eps: _StreamRun(path, eps, cold=False),
        streams=True,
    ),
    "otlabel-stream-cold": Solver(
        "otlabel-stream-cold",
        "otlabel, ChunkedScores over a .npy on disk, page cache evicted before the solve",
        1,
        lambda dtype: 0,
        lambda: True,
        lambda path, eps: _StreamRun(path, eps, cold=True),
        streams=True,
    ),
    "pot-sinkhorn": Solver(
        "pot-sinkhorn",
        "POT ot.sinkhorn(method='sinkhorn')",
        2,
        lambda dtype: 3 * dtype.itemsize,
        _installed("ot"),
        lambda scores, eps: _PotRun(scores, eps, "sinkhorn"),
    ),
    "pot-sinkhorn-log": Solver(
        "pot-sinkhorn-log",
        "POT ot.sinkhorn(method='sinkhorn_log')",
        2,
        lambda dtype: 5 * dtype.itemsize,
        _installed("ot"),
        lambda scores, eps: _PotRun(scores, eps, "sinkhorn_log"),
    ),
    "sela-float64": Solver(
        "sela-float64",
        "SeLa-style NumPy loop, float64 (as SeLa runs)",
        2,
        lambda dtype: 8,
        lambda: True,
        lambda scores, eps: _SelaRun(scores, eps, np.float64),
    ),
    "sela-float32": Solver(
        "sela-float32",
        "SeLa-style NumPy loop, float32",
        2,
        lambda dtype: 4,
        lambda: True,
        lambda scores, eps: _SelaRun(scores, eps, np.float32),
    ),
    "swav-torch": Solver(
        "swav-torch",
        "SwAV-style Torch loop (to tolerance; SwAV runs 3 iterations)",
        2,
        lambda dtype: 4,
        _installed("torch"),
        lambda scores, eps: _SwavRun(scores, eps),
    ),
}


#: What ``otlabel bench`` runs by default: every solver on in-memory scores.
DEFAULT_SOLVERS = [
    name for name, solver in SOLVERS.items() if not solver.streams and not solver.constraint
]


# ---------------------------------------------------------------------------
# Measurements inside one row's process
# ---------------------------------------------------------------------------


def read_bandwidth(buffer: np.ndarray, repeats: int = 1) -> float:
    """Sustained read bandwidth in GB/s: a parallel sum over ``buffer`` on all cores.

    With Numba, a ``prange`` loop over parts of READ_PART elements, each part read
    as READ_STREAMS ranges side by side (float64 accumulators); without it, one
    NumPy ``sum`` per thread on its share (NumPy releases the GIL inside the
    reduction).  Best of ``repeats`` reads.  One range per thread reads slower
    than the machine allows: on a 2-core Intel Xeon host, 13.1 GB/s against
    19.1 GB/s with four ranges per part (medians of 8 reads of 2.4 GB of float32,
    in turn).
    """
    flat = buffer.reshape(-1)
    summing = _parallel_sum()
    summing(flat[: 2 * READ_PART])  # load the compiled code, start the threads
    best = math.inf
    for _ in range(repeats):
        started = time.perf_counter()
        summing(flat)
        best = min(best, time.perf_counter() - started)
    return flat.nbytes / best / 1e9


#: Elements per task of the read probe, and the ranges of a part read side by side
#: (the loop in :func:`_parallel_sum` is written for four).
READ_PART, READ_STREAMS = 1 << 22, 4


def _parallel_sum() -> Callable[[np.ndarray], float]:
    """The probe's sum of a 1-D array (float64); each call makes a new dispatcher,
    whose machine code comes from Numba's cache after the first compilation."""
    try:
        import numba
    except ImportError:
        return _threaded_numpy_sum

    @numba.njit(parallel=True, fastmath=True, cache=True)
    def summed(x: np.ndarray) -> float:  # pragma: no cover - compiled
        n_parts, stream = x.size // READ_PART, READ_PART // READ_STREAMS
        part_sums = np.zeros(n_parts)
        for p in numba.prange(n_parts):
            first = np.uint64(p) * np.uint64(READ_PART)  # unsigned: no index tests
            second = first + np.uint64(stream)
            third = second + np.uint64(stream)
            fourth = third + np.uint64(stream)
            total_0 = total_1 = total_2 = total_3 = 0.0
            for j in range(stream):
                offset = np.uint64(j)
                total_0 += x[first + offset]
                total_1 += x[second + offset]
                total_2 += x[third + offset]
                total_3 += x[fourth + offset]
            part_sums[p] = (total_0 + total_1) + (total_2 + total_3)
        tail = 0.0
        for i in range(n_parts * READ_PART, x.size):
            tail += x[i]
        return part_sums.sum() + tail

    return summed


def _threaded_numpy_sum(flat: np.ndarray) -> float:
    n_threads = os.cpu_count() or 1
    parts = np.array_split(flat, n_threads)
    totals = [0.0] * n_threads

    def work(i: int) -> None:
        totals[i] = float(np.sum(parts[i], dtype=np.float64))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(n_threads)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(totals)


class PeakAnonymousMemory:
    """Samples this process's RssAnon (Linux /proc) every few ms; ``peak`` in bytes."""

    def __init__(self, interval: float = 0.005) -> None:
        self.interval, self.peak = interval, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self) -> PeakAnonymousMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_anon())

    def _watch(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_anon())
            self._stop.wait(self.interval)


@dataclass
class RowResult:
    """One row of the table: one solver on one problem."""

    solver: str
    n: int
    k: int
    status: str = "ok"  # or why the solver could not solve the input
    ms_per_iter: float | None = None
    n_iter: int | None = None
    seconds_to_tol: float | None = None
    reached_tol: bool | None = None
    error: float | None = None
    gb_per_s: float | None = None
    bandwidth_fraction: float | None = None
    probe_gb_per_s: float | None = None
    peak_rss_anon_gb: float | None = None
    cluster_min: int | None = None
    cluster_max: int | None = None
    method: str | None = None
    pass_bytes: float | None = None  # bytes a steady-state pass reads (a sparse kernel's own)
    kept_entries: int | None = None  # entries a sparse pass visits
    vs_dense_read: float | None = None  # pass time / one dense read of the scores (paired)
    notes: list[str] = field(default_factory=list)


def run_row(
    solver_name: str,
    n: int,
    k: int,
    *,
    tol: float,
    budget: float,
    repeats: int,
    kind: str,
    fixed_iterations: int | None = None,
    epsilon: float = EPSILON,
) -> RowResult:
    """Measure one solver on one problem (in the current process).

    ``fixed_iterations``: for solvers that cannot be stepped (POT), how many
    iterations to run (otlabel's count on the same input).
    """
    solver = SOLVERS[solver_name]
    result = RowResult(solver_name, n, k)
    path = scores_file(n, k, kind) if solver.streams else None
    scores = make_scores(n, k, kind=kind, seed=SEED) if path is None else _mapped(path)
    extra = n * k * solver.bytes_per_element(scores.dtype)
    if extra > 0.9 * available_memory():
        result.status = f"out of memory (needs ~{(extra + scores.nbytes) / 1e9:.1f} GB)"
        return result
    try:
        with PeakAnonymousMemory() as memory:
            started = time.perf_counter()
            run = solver.make(scores if path is None else path, epsilon)
            if isinstance(run, _StreamRun):
                n_iter, error = run.solve(tol, budget)
                result.notes.append("time to tolerance includes balanced rounding on the stream")
            elif isinstance(run, _OtlabelRun):
                n_iter, error = run.solve(tol, budget)
            elif isinstance(run, _PotRun):
                n_iter = _pot_iterations(run, fixed_iterations or 100, budget)
                run.plan = run.run(n_iter)
                error = run.error()
                result.notes.append(
                    f"POT runs a fixed count: otlabel's iterations on the same input, "
                    f"or as many as fit the {budget:g} s budget"
                )
            else:
                error, steps = math.inf, 0
                while error > tol and time.perf_counter() - started < budget:
                    with np.errstate(all="ignore"):  # failures are detected and reported
                        error = run.step()
                    steps += 1
                n_iter = steps - run.lag if error <= tol else steps
            seconds = time.perf_counter() - started
            if getattr(run, "probe_seconds", 0.0) > 0:
                seconds -= run.probe_seconds
                result.notes.append(
                    f"s to tol leaves out {run.probe_seconds:.2g} s: the two passes timed "
                    "first to fit max_iter to the budget and, for arrays in memory, a warm-up "
                    f"call on the first {WARMUP_ROWS} rows (or K); they load Numba's compiled "
                    "cache on a fresh process (a one-time cost per process)"
                )
            if isinstance(run, _SelaRun):
                result.notes.append(
                    run.own_stop
                    or f"SeLa's own stop rule (sum |c/c_new - 1| < 0.1) had not fired after "
                    f"{run.steps} iterations"
                )
            labels = run.labels()
        counts = np.bincount(labels[labels >= 0], minlength=k)  # -1: unassigned
        result.method = getattr(run, "method", None)
        result.n_iter, result.error, result.reached_tol = n_iter, error, error <= tol
        result.seconds_to_tol = seconds
        result.peak_rss_anon_gb = memory.peak / 1e9
        result.cluster_min, result.cluster_max = int(counts.min()), int(counts.max())
        _time_steps(run, scores, result, repeats)
        if isinstance(run, _StreamRun):  # after the timings and the memory watch
            result.notes.append(run.kept_note())
    except Unsolvable as reason:
        result.status = f"cannot solve: {reason}"
    except MemoryError:
        result.status = "out of memory"
    return result


def _mapped(path: Path) -> np.ndarray:
    """The saved matrix, memory-mapped (file pages, not anonymous memory)."""
    return np.load(path, mmap_mode="r")


def _pot_iterations(run: _PotRun, wanted: int, budget: float) -> int:
    """``wanted`` iterations, or as many as a short timed run says fit the budget."""
    started = time.perf_counter()
    run.run(2)
    per_iteration = (time.perf_counter() - started) / 2
    return max(1, min(wanted, int(budget / max(per_iteration, 1e-9))))


def _time_steps(run: Any, scores: np.ndarray, result: RowResult, repeats: int) -> None:
    """Median time per iteration, each step paired with a bandwidth probe."""
    large = scores.nbytes >= MIN_FRACTION_BYTES
    in_memory = not isinstance(scores, np.memmap)
    probe = scores if scores.nbytes >= PROBE_BYTES and in_memory else None
    times, ratios, probes, versus_read = [], [], [], []
    for _ in range(repeats):
        seconds = _one_step_seconds(run)
        times.append(seconds)
        if probe is not None or in_memory:  # one dense read of the scores themselves
            versus_read.append(seconds * read_bandwidth(scores) * 1e9 / scores.nbytes)
        if large:
            buffer = probe if probe is not None else _probe_buffer()
            bandwidth = read_bandwidth(buffer)
            probes.append(bandwidth)
            ratios.append(scores.nbytes / seconds / 1e9 / bandwidth)
        if isinstance(run, _PotRun) and seconds > 1.0:  # one slow black-box timing is enough
            result.notes.append("POT's time per iteration from one timed run (over 1 s each)")
            break
    result.ms_per_iter = 1e3 * statistics.median(times)
    result.gb_per_s = scores.nbytes / statistics.median(times) / 1e9
    if versus_read:
        result.vs_dense_read = statistics.median(versus_read)
    stored = getattr(run, "stored_kernel", lambda: None)()
    if stored is not None:  # what the pass reads: the stored kernel's own bytes
        result.pass_bytes, result.kept_entries = stored
        result.gb_per_s = result.pass_bytes / statistics.median(times) / 1e9
        large = False  # its few MB may sit in cache: no bandwidth fraction, see vs_dense_read
    if large:
        result.bandwidth_fraction = statistics.median(ratios)
        result.probe_gb_per_s = statistics.median(probes)


def _one_step_seconds(run: Any) -> float:
    if isinstance(run, _PotRun):  # a black box: difference of two runs
        m = 5
        started = time.perf_counter()
        run.run(m)
        first = time.perf_counter() - started
        started = time.perf_counter()
        run.run(2 * m)
        return max(time.perf_counter() - started - first, 0.0) / m
    started = time.perf_counter()
    with np.errstate(all="ignore"):
        run.step()
    return time.perf_counter() - started


_PROBE: list[np.ndarray] = []


def _probe_buffer() -> np.ndarray:
    if not _PROBE:
        _PROBE.append(np.ones(PROBE_BYTES // 4, dtype=np.float32))
    return _PROBE[0]


# ---------------------------------------------------------------------------
# The runner: one process per row, table, JSON, plot
# ---------------------------------------------------------------------------


@dataclass
class BenchConfig:
    sizes: list[tuple[int, int]]
    solvers: list[str]
    tol: float = DEFAULT_TOL
    budget: float = 300.0
    repeats: int = 5
    kind: str = "head"
    out: Path = Path("bench-results")
    epsilon: float = EPSILON


def rows(config: BenchConfig) -> Iterator[tuple[str, int, int]]:
    for n, k in config.sizes:
        for name in config.solvers:
            yield name, n, k


def run(config: BenchConfig, progress: bool = True) -> list[RowResult]:
    """Run every row in its own process; write Markdown, JSON and a plot."""
    all_rows = list(rows(config))
    bar = _progress(len(all_rows), progress)
    results: list[RowResult] = []
    for name, n, k in all_rows:
        bar.set_description(f"{name} {n}x{k}")
        reference = [
            r.n_iter for r in results if r.solver.startswith("otlabel") and (r.n, r.k) == (n, k)
        ]
        fixed = next((count for count in reference if count), None)
        results.append(_run_in_child(name, n, k, config, fixed))
        bar.update()
    bar.close()
    write_outputs(results, config)
    return results


def _run_in_child(
    name: str, n: int, k: int, config: BenchConfig, fixed_iterations: int | None
) -> RowResult:
    if not SOLVERS[name].available():
        return RowResult(name, n, k, status="not installed")
    spec = json.dumps(
        {
            "solver": name,
            "n": n,
            "k": k,
            "tol": config.tol,
            "budget": config.budget,
            "repeats": config.repeats,
            "kind": config.kind,
            "epsilon": config.epsilon,
            "fixed_iterations": fixed_iterations,
        }
    )
    command = [sys.executable, "-m", "otlabel.bench", "--row", spec]
    child = subprocess.run(command, capture_output=True, text=True)
    if child.returncode != 0:
        reason = "killed (out of memory?)" if child.returncode < 0 else child.stderr.strip()[-300:]
        return RowResult(name, n, k, status=f"failed: {reason}")
    return RowResult(**json.loads(child.stdout.strip().splitlines()[-1]))


def _progress(total: int, enabled: bool) -> Any:
    try:
        from tqdm import tqdm

        return tqdm(total=total, disable=not enabled, unit="row")
    except ImportError:

        class _Quiet:
            def set_description(self, text: str) -> None:
                if enabled:
                    print(text, file=sys.stderr, flush=True)

            def update(self) -> None: ...

            def close(self) -> None: ...

        return _Quiet()


def write_outputs(results: list[RowResult], config: BenchConfig) -> None:
    config.out.mkdir(parents=True, exist_ok=True)
    header = machine_header(config)
    (config.out / "bench.json").write_text(
        json.dumps({"machine": header, "rows": [asdict(r) for r in results]}, indent=1)
    )
    (config.out / "bench.md").write_text(markdown_table(results, header))
    plot(results, config.out / "bench.png")


def machine_header(config: BenchConfig) -> dict[str, Any]:
    return {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "cpu": _cpu_name(),
        "cores": os.cpu_count(),
        "memory_gb": round(_total_memory() / 1e9, 1),
        "otlabel": __version__,
        "numpy": np.__version__,
        "epsilon": config.epsilon,
        "tol": config.tol,
        "kind": config.kind,
        "command": _command_line(),
    }


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def _total_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return 0


def _command_line() -> str:
    """``otlabel bench ...`` as typed (from the ``otlabel`` command or ``python -m``)."""
    arguments = sys.argv[1:]
    if arguments[:1] == ["bench"]:  # otlabel bench ...: the subcommand is argv[1]
        arguments = arguments[1:]
    return " ".join(["otlabel bench", *arguments])


def markdown_table(results: list[RowResult], header: dict[str, Any]) -> str:
    lines = [
        f"Machine: {header['cpu']}, {header['cores']} cores, {header['memory_gb']} GB; "
        f"{header['date']}; otlabel {header['otlabel']}, NumPy {header['numpy']}.",
        f"Scores: '{header['kind']}' (float32), epsilon {header['epsilon']}, "
        f"tol {header['tol']:g} (L1 marginal error). Command: `{header['command']}`.",
        "",
        "| N x K | solver | ms/iter | iters | s to tol | pass reads | GB/s | of bandwidth | "
        "pass / dense read | ns per entry | peak RssAnon GB | error | cluster sizes | "
        "vs fastest peer |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    notes = sorted({f"{r.solver}: {note}" for r in results for note in r.notes})
    for result in results:
        lines.append(_markdown_row(result, _fastest_peer(results, result)))
    lines += ["", *(f"- {note}" for note in notes)] if notes else []
    return "\n".join(lines) + "\n"


def _fastest_peer(results: list[RowResult], row: RowResult) -> float | None:
    peers = [
        r.ms_per_iter
        for r in results
        if (r.n, r.k) == (row.n, row.k)
        and not r.solver.startswith("otlabel")
        and r.status == "ok"
        and r.ms_per_iter
    ]
    return min(peers) if peers else None


def _markdown_row(r: RowResult, fastest_peer: float | None) -> str:
    size = f"{r.n:,} x {r.k:,}".replace(",", " ")
    if r.status != "ok" or r.ms_per_iter is None:
        return f"| {size} | {r.solver} | {r.status} |" + "  |" * 11
    to_tol = f"{r.seconds_to_tol:.3g}" + ("" if r.reached_tol else " (not reached)")
    fraction = "" if r.bandwidth_fraction is None else f"{100 * r.bandwidth_fraction:.0f}%"
    ratio = "" if fastest_peer is None else f"{fastest_peer / r.ms_per_iter:.2f}x"
    name = r.solver + (f" ({r.method})" if r.method else "")
    reads = "the scores" if r.pass_bytes is None else f"{r.pass_bytes / 1e6:.3g} MB"
    versus = "" if r.vs_dense_read is None else f"{r.vs_dense_read:.2f}"
    entries = r.kept_entries or r.n * r.k
    per_entry = f"{1e6 * r.ms_per_iter / entries:.2f}"
    return (
        f"| {size} | {name} | {r.ms_per_iter:.3g} | {r.n_iter} | {to_tol} | {reads} | "
        f"{r.gb_per_s:.3g} | {fraction} | {versus} | {per_entry} | "
        f"{r.peak_rss_anon_gb:.2f} | {r.error:.1e} | {r.cluster_min}..{r.cluster_max} | "
        f"{ratio} |"
    )


def plot(results: list[RowResult], path: Path) -> None:
    """Time per iteration against N*K per solver, with the bandwidth limit drawn."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    figure, axes = plt.subplots(figsize=(7, 4.5))
    for name in sorted({r.solver for r in results}):
        points = sorted(
            (r.n * r.k, r.ms_per_iter)
            for r in results
            if r.solver == name and r.status == "ok" and r.ms_per_iter
        )
        if points:
            axes.plot(*zip(*points, strict=True), marker="o", label=name)
    probes = [r.probe_gb_per_s for r in results if r.probe_gb_per_s]
    if probes:
        bandwidth = statistics.median(probes)
        sizes = np.array(sorted({r.n * r.k for r in results}), dtype=float)
        axes.plot(
            sizes, sizes * 4 / bandwidth / 1e6, "k--", label=f"one read at {bandwidth:.0f} GB/s"
        )
    axes.set(xscale="log", yscale="log", xlabel="N x K", ylabel="ms per iteration")
    axes.legend(fontsize=8)
    axes.grid(True, which="both", alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """``otlabel bench``: see ``otlabel bench --help``."""
    parser = add_arguments(argparse.ArgumentParser(prog="otlabel bench"))
    args = parser.parse_args(argv)
    return run_from_args(args)


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.description = (
        "Time otlabel's backends and peer solvers on the same inputs, against this "
        "machine's read bandwidth. Writes bench.md, bench.json and bench.png."
    )
    parser.add_argument("--sizes", nargs="+", metavar="NxK", help="problem sizes, e.g. 50000x1000")
    parser.add_argument("--imagenet", action="store_true", help="add 1281167x3000 (15.4 GB)")
    parser.add_argument("--tiny", action="store_true", help="one tiny size (proves it runs)")
    parser.add_argument("--solvers", nargs="+", choices=list(SOLVERS), default=DEFAULT_SOLVERS)
    parser.add_argument(
        "--stream",
        action="store_true",
        help="add otlabel-stream rows: the matrix from a .npy on disk, warm and cold page cache",
    )
    parser.add_argument(
        "--constraints",
        action="store_true",
        help="add the cluster-size rows (fixed, bounded, relaxed, partial, known), each "
        "timed with its exact labels",
    )
    parser.add_argument("--tol", type=float, default=DEFAULT_TOL)
    parser.add_argument(
        "--epsilon",
        type=_positive,
        default=EPSILON,
        help=f"entropic regularisation of every row (default {EPSILON}, SeLa's lambda = 25)",
    )
    parser.add_argument("--budget", type=float, default=300.0, help="seconds per row to tolerance")
    parser.add_argument("--repeats", type=int, default=5, help="timed iterations per row")
    parser.add_argument("--kind", default="head", help="score generator of make_scores")
    parser.add_argument("--out", type=Path, default=Path("bench-results"))
    parser.add_argument("--row", help=argparse.SUPPRESS)  # internal: run one row
    return parser


def run_from_args(args: argparse.Namespace) -> int:
    if args.row:
        spec = json.loads(args.row)
        row = run_row(
            spec["solver"],
            spec["n"],
            spec["k"],
            tol=spec["tol"],
            budget=spec["budget"],
            repeats=spec["repeats"],
            kind=spec["kind"],
            fixed_iterations=spec["fixed_iterations"],
            epsilon=spec["epsilon"],
        )
        print(json.dumps(asdict(row)))
        return 0
    sizes = TINY_SIZES if args.tiny else [_size(text) for text in args.sizes or []] or DEFAULT_SIZES
    if args.imagenet:
        sizes = [*sizes, IMAGENET]
    solvers = list(args.solvers)
    if args.stream:
        solvers += [name for name in SOLVERS if SOLVERS[name].streams and name not in solvers]
    if args.constraints:
        solvers += [name for name in SOLVERS if SOLVERS[name].constraint and name not in solvers]
    config = BenchConfig(
        sizes, solvers, args.tol, args.budget, args.repeats, args.kind, args.out, args.epsilon
    )
    results = run(config)
    print(markdown_table(results, machine_header(config)))
    print(f"written: {config.out / 'bench.md'}, bench.json, bench.png")
    return 0


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0 or not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a positive finite number, got {text}")
    return value


def _size(text: str) -> tuple[int, int]:
    n, _, k = text.lower().partition("x")
    return int(n), int(k)


if __name__ == "__main__":
    sys.exit(main())
