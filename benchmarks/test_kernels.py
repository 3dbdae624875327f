"""Regression timings of the core kernels: ``pytest benchmarks/ --benchmark-only``.

Needs the ``bench`` extra (pytest-benchmark). Sizes are moderate (a sweep takes
milliseconds) so that the suite runs in a minute; ``otlabel bench`` measures the
large sizes and the peers.
"""

from __future__ import annotations

import numpy as np
import pytest

import otlabel
from otlabel.kernels import reference
from otlabel.rounding import balanced_labels
from otlabel.solver import RowUpdate

pytest.importorskip("pytest_benchmark")

N, K = 50_000, 1_000


@pytest.fixture(scope="module")
def scores() -> np.ndarray:
    return otlabel.make_scores(N, K, kind="head", seed=0)


def one_sweep(kernel) -> None:
    state = kernel.column_state(np.zeros(K))
    for rows, block in kernel.blocks():
        kernel.sweep(block, rows, state, RowUpdate(None))


def test_log_kernel_sweep(benchmark, scores):
    kernel = reference.LogKernel(scores, np.full(N, -np.log(N)), 0.04, np.float64)
    benchmark(one_sweep, kernel)


def test_scaling_kernel_sweep(benchmark, scores):
    row_max, _ = reference.row_extremes(scores, np.float64)
    kernel = reference.ScalingKernel(scores, np.full(N, -np.log(N)), 1.0, row_max)
    benchmark(one_sweep, kernel)


def test_balanced_rounding_from_sinkhorn_potential(benchmark, scores):
    potential = otlabel.sinkhorn(scores, 0.04, tol=1e-2).potential
    bounds = otlabel.count_bounds(scores.shape[0], np.full(K, 1 / K))
    benchmark.pedantic(
        balanced_labels,
        args=(scores, potential, bounds),
        kwargs={"rows_per_block": 1024},
        rounds=3,
        iterations=1,
    )
