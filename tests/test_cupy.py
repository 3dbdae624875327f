"""The CuPy backend gives the NumPy backend's answer, in CuPy arrays (skipped without a GPU)."""

from __future__ import annotations

import numpy as np
import pytest

import otlabel

cupy = pytest.importorskip("cupy")
pytestmark = pytest.mark.gpu
try:
    HAS_DEVICE = cupy.cuda.runtime.getDeviceCount() > 0
except cupy.cuda.runtime.CUDARuntimeError:
    HAS_DEVICE = False
if not HAS_DEVICE:
    pytest.skip("no CUDA device for CuPy", allow_module_level=True)


@pytest.mark.parametrize("method", ["log", "scaling"])
@pytest.mark.parametrize("dtype, atol", [(np.float64, 1e-10), (np.float32, 2e-5)])
def test_cupy_equals_numpy(rng, method, dtype, atol):
    scores = (rng.normal(size=(600, 8)) * 2).astype(dtype)
    weights = rng.random(8) + 0.5
    tol = 1e-8 if dtype == np.float64 else 1e-5
    kwargs = {"method": method, "cluster_weights": weights, "tol": tol, "return_plan": True}
    reference = otlabel.assign(scores, 0.3, backend="numpy", **kwargs)
    result = otlabel.assign(cupy.asarray(scores), 0.3, **kwargs)
    assert result.backend == "cupy"
    for name in ("labels", "counts", "potential", "row_potential", "plan"):
        assert isinstance(getattr(result, name), cupy.ndarray), name
    np.testing.assert_allclose(result.potential.get(), reference.potential, atol=atol)
    np.testing.assert_array_equal(result.labels.get(), reference.labels)
    assert result.gap <= 1e-9


def test_cupy_soft_assign_rows_sum_to_one(rng):
    scores = cupy.asarray(rng.uniform(-1, 1, size=(256, 16)))
    codes = otlabel.soft_assign(scores)
    assert isinstance(codes, cupy.ndarray)
    np.testing.assert_allclose(codes.sum(axis=1).get(), 1, atol=1e-12)
    np.testing.assert_allclose(codes.get(), otlabel.soft_assign(scores.get()), atol=1e-12)
