"""Backends: which implementation sweeps the rows.

The reference implementation of the kernel contract is written once on the
array-API namespace in :mod:`otlabel.solver` and serves NumPy input.  Fused
kernels live in this package, one module per backend, and join the table below
only where they are measured faster than the reference (docs/benchmarks.md).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from typing import Any

#: Backend name -> the module of its fused kernels (None: the reference kernels),
#: and the package it needs.
BACKENDS: dict[str, tuple[str | None, str | None]] = {
    "numpy": (None, None),
    "numba": ("otlabel.kernels.numba_", "numba"),
    "torch": ("otlabel.kernels.torch_", "torch"),
    "triton": ("otlabel.kernels.triton_", "triton"),
    "cupy": (None, "cupy"),
}
#: What "auto" picks, by the input's array library, fastest first ("triton" is
#: opt-in until benchmarks/gpu_check.py has measured it faster on a GPU).
AUTO_ORDER = {"numpy": ("numba", "numpy"), "torch": ("torch",), "cupy": ("cupy",)}
#: The backends that run each array library's input (results come back in it).
RUNS = {"numpy": ("numpy", "numba"), "torch": ("torch", "triton"), "cupy": ("cupy",)}


def installed(name: str) -> bool:
    _, package = BACKENDS[name]
    return package is None or importlib.util.find_spec(package) is not None


def resolve_backend(name: Any, heads: Sequence[Any]) -> str:
    """The backend that will run ``heads``: ``name`` itself, or the best for ``"auto"``."""
    from .._arrays import library_of

    options = ("auto", *BACKENDS)
    if not isinstance(name, str) or name not in options:
        raise ValueError(f"backend: expected one of {options}, got {name!r}")
    library: str = getattr(heads[0], "library", None) or library_of(heads[0]) or "numpy"
    if name == "auto":
        return next(backend for backend in AUTO_ORDER[library] if installed(backend))
    if name not in RUNS[library]:
        raise ValueError(
            f"backend={name!r} does not run {library} input; use backend='auto' (or one of "
            f"{RUNS[library]}), or convert the scores to the backend's array library"
        )
    if not installed(name):
        package = BACKENDS[name][1]
        raise ImportError(
            f"backend={name!r} needs {package}, which is not installed: "
            f"pip install 'otlabel[{name}]'"
        )
    return name
