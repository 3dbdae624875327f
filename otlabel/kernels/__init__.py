"""Backends: which implementation sweeps the rows.

The reference implementation of the kernel contract is written once on the
array-API namespace in :mod:`otlabel.solver` and serves NumPy input.  Fused
kernels (Numba, GPU) live in this package, one module per backend, and join
the table below only where they are measured faster than the reference.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

#: Backend name -> what it runs.  "numpy" is the array-API reference kernels.
BACKENDS = {"numpy": "array-API reference kernels (otlabel.solver)"}


def resolve_backend(name: Any, heads: Sequence[Any]) -> str:
    """The backend that will run ``heads``: ``name`` itself, or the best for ``"auto"``."""
    options = ("auto", *BACKENDS)
    if not isinstance(name, str) or name not in options:
        raise ValueError(f"backend: expected one of {options}, got {name!r}")
    return "numpy" if name == "auto" else name
