"""The Numba backend: the one-pass sweep of :mod:`otlabel.solver`, fused, on threads.

Same contract as the reference kernels (a block of rows in; its new ``f``, its
column partial and its row error out), with the work inside a block split over
fixed sub-blocks (tasks) of rows that threads take in runs (:mod:`.tasks`).  Each
task writes its own column partials; they are reduced afterwards in a fixed order,
so the result does not depend on the number of threads or on scheduling (no races,
same bits every run).  Each row of the scores is read from memory once per iteration.

The modules, one kind of kernel each:

- :mod:`.backend`: :class:`NumbaBackend`, which kernel runs what, and the
  row-wise helpers (validation, extremes, the subsample's rows);
- :mod:`.common`: the row update every sweep computes, the stored row, the
  rows' terms, the sub-block column partials, :func:`threads`, shared constants;
- :mod:`.tasks`: how the kernels are compiled (serial loops over tasks, ``nogil``)
  and the threads that run their tasks;
- :mod:`.log`: :class:`NumbaLogKernel`, the log domain on the scores;
- :mod:`.stored`: :class:`NumbaKernel`, the log domain until the duals settle,
  then a stored kernel, dense or sparse;
- :mod:`.dense`: the dense stored kernel's build and pass;
- :mod:`.sparse`: :class:`SparseKernel`, its build in one read and its pass;
- :mod:`.sparse_log`: :class:`SparseLogKernel`, the exact float64 finish on the
  sparse kernel's entries;
- :mod:`.rounding`: :class:`NumbaPasses`, the rounding's reads of the matrix;
- :mod:`.repair`: the shortest-path repair of exact labels, with its least
  losses (:mod:`.repair_losses`) and their candidate lists
  (:mod:`.repair_candidates`), searches (:mod:`.repair_paths`), identical
  rows (:mod:`.row_classes`) and view of the entries (:mod:`.entries`);
- :mod:`.improve`: the exchanges of relaxed sizes.

Precision: float32 scores are processed in float32 (``exp`` argument and
values) unless a kernel is ``precise`` (float64 throughout: the exact finish);
float64 scores in float64; row sums, column sums and potentials are float64.
``exp`` is :func:`otlabel.kernels._fastmath.exp_neg` (vectorised, clamped at
the last normal exponent: no subnormals).  Reductions over a row are compiled
with ``reassoc`` (vectorised sums and maxima in float64 accumulators: the order
of a handful of partial sums changes, nothing else); the element loops only
with ``contract`` (fused multiply-add) and ``nnan`` for the column maxima
(inputs are validated finite).
"""

from __future__ import annotations

from ..stamp import stamp_kernel_caches

stamp_kernel_caches()  # before any kernel below is decorated

from .backend import NumbaBackend, row_extremes
from .common import CHUNK_BYTES, FLUSH_EXPONENT, TASK_ROWS, rebuild_drift, threads
from .log import NumbaLogKernel
from .sparse import SparseKernel
from .sparse_log import SparseLogKernel
from .stored import NumbaKernel

__all__ = [
    "CHUNK_BYTES",
    "FLUSH_EXPONENT",
    "TASK_ROWS",
    "NumbaBackend",
    "NumbaKernel",
    "NumbaLogKernel",
    "SparseKernel",
    "SparseLogKernel",
    "rebuild_drift",
    "row_extremes",
    "threads",
]
