"""The fused Triton sweep equals the reference sweep (on the CPU: Triton's interpreter)."""

from __future__ import annotations

import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
if not torch.cuda.is_available():  # must be set before the kernel is decorated
    os.environ.setdefault("TRITON_INTERPRET", "1")
pytest.importorskip("triton")

import otlabel  # noqa: E402
from otlabel.kernels import triton_  # noqa: E402
from otlabel.kernels.reference import LogKernel  # noqa: E402
from otlabel.kernels.triton_ import BLOCK_K, BLOCK_M, FLUSH_TILES, TritonLogKernel  # noqa: E402
from otlabel.solver import RowUpdate  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.mark.parametrize("relaxed", [False, True])
def test_one_sweep_equals_the_reference_sweep(rng, relaxed):
    """Several column tiles, a ragged last tile and row tile, and a starved column."""
    n_rows, n_cols = 23, BLOCK_K + 37
    scores = torch.as_tensor(rng.normal(size=(n_rows, n_cols)) * 3, dtype=torch.float32)
    scores[:, 5] -= 1000.0  # nobody's favourite: its mass underflows float32
    scores = scores.to(DEVICE)
    log_a = torch.full((n_rows,), -np.log(n_rows), dtype=torch.float64, device=DEVICE)
    potential = torch.as_tensor(rng.normal(size=n_cols), device=DEVICE)
    previous = torch.as_tensor(rng.normal(size=n_rows), device=DEVICE) if relaxed else None
    relax = RowUpdate(previous, 1.5 if relaxed else 1.0)
    fused = TritonLogKernel(scores, log_a, 0.1, 1 << 20)
    reference = LogKernel(scores, log_a, 0.1, torch.float32)
    rows = slice(0, n_rows)
    got = fused.sweep(scores, rows, fused.column_state(potential), relax)
    want = reference.sweep(scores, rows, reference.column_state(potential), relax)
    torch.testing.assert_close(got.row_potential, want.row_potential, rtol=0, atol=1e-5)
    assert float(got.row_error) == pytest.approx(float(want.row_error), rel=1e-4, abs=1e-12)
    # column log masses of the plan (f, g), exactly (float64 log-sum-exp)
    f = got.row_potential if relaxed else want.row_potential
    log_plan = (scores.double() + f[:, None] + potential) / 0.1
    exact = torch.logsumexp(log_plan, dim=0)
    log_mass = got.columns.log_mass()
    assert torch.isfinite(log_mass).all()
    # where float32 holds the column's terms: the sum; elsewhere a lower bound within n
    held = log_plan.max(dim=0).values > -87.0 + np.log(n_rows) + 37.0
    # (S + g) / eps reaches ~120 here: float32 holds it to ~1e-5, the reference too
    torch.testing.assert_close(log_mass[held], exact[held], rtol=0, atol=5e-5)
    slack = 1e-6 * exact[~held].abs() + 5e-5
    assert torch.all(log_mass[~held] <= exact[~held] + slack)
    assert torch.all(log_mass[~held] >= exact[~held] - np.log(n_rows) - slack)
    assert (~held).sum() >= 1  # the starved column took the lower-bound path


def test_column_masses_keep_float64_precision_over_many_tiles(rng, monkeypatch):
    """A program's float32 tile sums go into float64 every FLUSH_TILES tiles, so
    its column masses hold to the float64 sum however many rows it takes; summed
    in float32 over all of them (flushing disabled), they do not.

    Near-duplicate rows are the hard case for a float32 running sum: every tile
    adds nearly the same amount, so the additions' rounding errors do not cancel
    but grow with the number of tiles.  One program takes all 4000 rows (1000
    tiles, as a GPU's programs take tens of thousands of rows of a large block)
    to keep the interpreter's run short.
    """
    n_rows, n_cols, eps, tolerance = 4000, 3, 0.5, 1e-6  # flushed: ~4e-8; float32 only: ~1e-5
    base = rng.normal(size=n_cols)
    noisy = base + 1e-6 * rng.normal(size=(n_rows, n_cols))
    scores = torch.as_tensor(noisy, dtype=torch.float32, device=DEVICE)
    log_a = torch.full((n_rows,), -np.log(n_rows), dtype=torch.float64, device=DEVICE)
    potential = torch.as_tensor(rng.normal(size=n_cols) * 0.1, device=DEVICE)
    assert n_rows // BLOCK_M > 50 * FLUSH_TILES  # many flushes per program

    def column_error() -> float:
        """Largest relative error of a column mass: |log mass - float64 log mass|."""
        fused = TritonLogKernel(scores, log_a, eps, 1 << 30)
        fused.n_programs = 1
        state = fused.column_state(potential)
        got = fused.sweep(scores, slice(0, n_rows), state, RowUpdate(None))
        log_plan = (scores.double() + got.row_potential[:, None] + potential) / eps
        exact = torch.logsumexp(log_plan, dim=0)
        return float((got.columns.log_mass() - exact).abs().max())

    flushed = column_error()
    monkeypatch.setattr(triton_, "FLUSH_TILES", n_rows)  # > tiles per program: never flushed
    float32_only = column_error()
    assert flushed <= tolerance < float32_only


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_triton_backend_equals_the_torch_backend(rng, dtype):
    scores = torch.as_tensor(rng.normal(size=(48, 6)) * 2).to(dtype=dtype, device=DEVICE)
    weights = rng.random(6) + 0.5
    kwargs = {"cluster_weights": weights, "tol": 1e-5, "return_plan": True}
    fused = otlabel.assign(scores, 0.2, backend="triton", **kwargs)
    reference = otlabel.assign(scores, 0.2, backend="torch", method="log", **kwargs)
    assert fused.backend == "triton" and fused.method == "log"
    assert abs(int(fused.n_iter) - int(reference.n_iter)) <= 2
    torch.testing.assert_close(fused.potential, reference.potential, rtol=0, atol=5e-5)
    torch.testing.assert_close(fused.plan.float(), reference.plan.float(), rtol=1e-3, atol=1e-6)
    assert torch.equal(fused.labels, reference.labels) and fused.gap <= 1e-9


def test_auto_keeps_the_reference_kernels_until_triton_is_measured(rng):
    scores = torch.as_tensor(rng.normal(size=(20, 3)), device=DEVICE)
    assert otlabel.assign(scores, 0.5).backend == "torch"


@pytest.mark.parametrize(
    "constraint",
    [{"mass": 0.8}, {"mass": 0.8, "size_penalty": 0.5}, {"min_size": 0.1, "max_size": 0.3}],
    ids=["partial", "partial-relaxed", "bounded"],
)
def test_triton_solves_every_constraint_as_the_torch_backend(rng, constraint):
    """Partial mass's virtual column enters the fused row update too."""
    scores = torch.as_tensor(rng.normal(size=(40, 5)) * 2, dtype=torch.float32, device=DEVICE)
    kwargs = {"tol": 1e-8, **constraint}
    fused = otlabel.assign(scores, 0.2, backend="triton", **kwargs)
    reference = otlabel.assign(scores.double(), 0.2, backend="torch", method="log", **kwargs)
    torch.testing.assert_close(fused.potential, reference.potential, rtol=0, atol=1e-7)
    assert torch.equal(fused.labels, reference.labels)
    if "mass" in constraint:
        assert fused.unassigned_potential == pytest.approx(reference.unassigned_potential, abs=1e-7)
