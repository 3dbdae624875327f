"""Every layout of a real array gives the C-order answer.

C or Fortran order, negative strides, a column slice, a row stride, a zero stride
(a broadcast row), read-only arrays and memmaps; Torch tensors transposed or
sliced; on every installed backend and constraint kind, float32 and float64.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

import otlabel

BACKENDS = ["numpy", "numba"] + (["torch"] if importlib.util.find_spec("torch") else [])
KINDS = {
    "fixed": {},
    "bounded": {"min_size": 0.05, "max_size": 0.25},
    "relaxed": {"size_penalty": 1.0},
    "partial": {"mass": 0.8},
    "known": {"known_labels": np.r_[np.arange(12) % 6, np.full(288, -1)]},
}
N, K = 300, 6


def _read_only(array: np.ndarray) -> np.ndarray:
    array.setflags(write=False)
    return array


def _memmap(array: np.ndarray, folder) -> np.ndarray:
    path = folder / "scores.npy"
    np.save(path, array)
    return np.load(path, mmap_mode="r")


LAYOUTS = {
    "fortran": np.asfortranarray,
    "reversed rows": lambda s, _: np.ascontiguousarray(s[::-1])[::-1],
    "reversed columns": lambda s, _: np.ascontiguousarray(s[:, ::-1])[:, ::-1],
    "column slice": lambda s, _: np.concatenate([s, s], axis=1)[:, :K],
    "row stride": lambda s, _: np.repeat(s, 2, axis=0)[::2],
    "read-only": lambda s, _: _read_only(s.copy()),
    "memmap": _memmap,
}


def _layout(name: str, scores: np.ndarray, folder) -> np.ndarray:
    make = LAYOUTS[name]
    laid = make(scores) if make is np.asfortranarray else make(scores, folder)
    np.testing.assert_array_equal(laid, scores)
    return laid


def _torch_layouts(scores: np.ndarray) -> dict:
    import torch

    tensor = torch.from_numpy(scores)
    return {
        "transposed": tensor.T.contiguous().T,
        "column slice": torch.cat([tensor, tensor], dim=1)[:, :K],
        "row stride": tensor.repeat_interleave(2, dim=0)[::2],
    }


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_every_layout_gives_the_c_order_answer(kind, backend, dtype, tmp_path):
    scores = otlabel.make_scores(N, K, seed=4, dtype=dtype)
    options = {"backend": backend, **KINDS[kind]}
    if backend == "torch":
        import torch

        expected = otlabel.assign(torch.from_numpy(scores), 0.1, **options)
        layouts = _torch_layouts(scores)
    else:
        expected = otlabel.assign(scores, 0.1, **options)
        layouts = {name: _layout(name, scores, tmp_path) for name in LAYOUTS}
    for name, laid in layouts.items():
        res = otlabel.assign(laid, 0.1, **options)
        np.testing.assert_array_equal(
            np.asarray(res.labels), np.asarray(expected.labels), err_msg=name
        )
        np.testing.assert_allclose(
            np.asarray(res.potential), np.asarray(expected.potential), atol=1e-4, err_msg=name
        )
        assert bool(res.converged), name


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_a_broadcast_row_zero_stride_is_solved(backend):
    """Every row the same (a zero row stride): exactly equal counts."""
    row = otlabel.make_scores(1, 5, seed=0)
    res = otlabel.assign(np.broadcast_to(row, (200, 5)), 0.1, backend=backend)
    assert res.converged and np.asarray(res.counts).tolist() == [40] * 5


def test_a_dense_stored_kernel_from_a_fortran_array():
    """The Numba stored kernel of a Fortran-ordered float32 array (dense at a large
    epsilon) is built in C order: its pass read it as C before (a Numba error)."""
    scores = otlabel.make_scores(2000, 30, seed=0, kind="sela")
    res = otlabel.assign(np.asfortranarray(scores), 2.0, backend="numba")
    assert res.method == "scaling" and res.converged
    np.testing.assert_array_equal(res.labels, otlabel.assign(scores, 2.0).labels)
