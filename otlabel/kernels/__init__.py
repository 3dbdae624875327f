"""Backends: which implementation sweeps the rows.  One table, one object each.

Every backend is one object (a subclass of
:class:`otlabel.kernels.reference.ReferenceBackend`, the array-API
implementation) that says what it provides: its thread and precision context,
where its vectors live, row extremes, its log-domain kernel, its first kernel
(stored or scaling domain where that is faster), the passes of hard labels, and
whether a large cold solve starts from a subsample.  Nothing outside this
package compares backend names: it asks the backend object.

Adding a backend is one module with one class, plus one entry in
:data:`BACKENDS` (docs/architecture.md).
"""

from __future__ import annotations

import importlib
import importlib.util
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any


@dataclass(frozen=True)
class Entry:
    """Where a backend lives, what it needs, and which array library it runs."""

    module: str
    cls: str
    package: str | None  # an extra package it imports (None: NumPy only)
    library: str  # the array library of the inputs it runs: numpy, torch, cupy
    install: str = ""  # how to install what it needs


#: The table of backends.
BACKENDS: dict[str, Entry] = {
    "numpy": Entry("otlabel.kernels.reference", "NumpyBackend", None, "numpy"),
    "numba": Entry("otlabel.kernels.numba", "NumbaBackend", "numba", "numpy", "pip install numba"),
    "torch": Entry(
        "otlabel.kernels.torch_", "TorchBackend", "torch", "torch", "pip install 'otlabel[torch]'"
    ),
    "triton": Entry(
        "otlabel.kernels.triton_",
        "TritonBackend",
        "triton",
        "torch",
        "pip install 'otlabel[triton]'",
    ),
    "cupy": Entry(
        "otlabel.kernels.reference", "CupyBackend", "cupy", "cupy", "pip install 'otlabel[cupy]'"
    ),
}
#: What "auto" picks, by the input's array library, fastest first ("triton" is
#: opt-in until benchmarks/gpu_check.py has measured it faster on a GPU).
AUTO_ORDER = {"numpy": ("numba", "numpy"), "torch": ("torch",), "cupy": ("cupy",)}


class BackendWarning(UserWarning):
    """``backend="auto"`` could not use the fastest backend and fell back."""


def installed(name: str) -> bool:
    """Whether the package that backend ``name`` needs is installed (not imported)."""
    package = BACKENDS[name].package
    return package is None or importlib.util.find_spec(package) is not None


@cache
def get_backend(name: str) -> Any:
    """The backend object of ``name`` (imports its module once)."""
    entry = BACKENDS[name]
    return getattr(importlib.import_module(entry.module), entry.cls)()


def resolve_backend(name: Any, heads: Sequence[Any]) -> Any:
    """The backend object that will run ``heads``: ``name``'s, or the best for ``"auto"``."""
    from .._arrays import library_of

    options = ("auto", *BACKENDS)
    if not isinstance(name, str) or name not in options:
        raise ValueError(f"backend: expected one of {options}, got {name!r}")
    library: str = getattr(heads[0], "library", None) or library_of(heads[0]) or "numpy"
    if name == "auto":
        return _fastest(library)
    runs = tuple(backend for backend, entry in BACKENDS.items() if entry.library == library)
    if name not in runs:
        raise ValueError(
            f"backend={name!r} does not run {library} input; use backend='auto' (or one of "
            f"{runs}), or convert the scores to the backend's array library"
        )
    if not installed(name):
        raise ImportError(
            f"backend={name!r} needs {BACKENDS[name].package}, which is not installed: "
            f"{BACKENDS[name].install}"
        )
    return get_backend(name)


def _fastest(library: str) -> Any:
    """The first backend of ``AUTO_ORDER[library]`` that imports; says once if one did not."""
    for name in AUTO_ORDER[library]:
        if not installed(name):
            _warn_once(name, f"{BACKENDS[name].package} is not installed")
            continue
        try:
            return get_backend(name)
        except ImportError as error:
            _warn_once(name, f"it does not import ({error})")
    raise ImportError(f"no backend for {library} input could be imported")  # pragma: no cover


_WARNED: set[str] = set()


def _warn_once(name: str, why: str) -> None:
    if name in _WARNED:
        return
    _WARNED.add(name)
    warnings.warn(
        f"backend='auto': the {name} backend cannot run here: {why}; falling back to the "
        f"next one, slower ({BACKENDS[name].install}; said once per process)",
        BackendWarning,
        stacklevel=5,
    )
