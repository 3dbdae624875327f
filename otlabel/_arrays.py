"""Which array library an input comes from, and moving small results between them.

The solve runs on the input's own library and device (NumPy, Torch, CuPy);
only vectors of length N or K (labels, potentials) and the few rows that
balanced rounding repairs cross to the host.
"""

from __future__ import annotations

from typing import Any

import array_api_compat.numpy as numpy_namespace
import numpy as np
from array_api_compat import array_namespace, is_cupy_array, is_numpy_array, is_torch_array
from array_api_compat import device as device_of


def namespace(*arrays: Any) -> Any:
    """The array-API namespace of ``arrays`` (``array_api_compat.array_namespace``,
    answered at once for plain NumPy arrays: the loop asks on every pass)."""
    if all(type(array) is np.ndarray for array in arrays):
        return numpy_namespace
    return array_namespace(*arrays)


def library_of(value: Any) -> str | None:
    """``"numpy"``, ``"torch"``, ``"cupy"``, or None for anything else."""
    if is_numpy_array(value) and isinstance(value, np.ndarray):
        return "numpy"
    if is_torch_array(value):
        return "torch"
    if is_cupy_array(value):
        return "cupy"
    return None


def to_numpy(value: Any) -> np.ndarray:
    """A host NumPy copy (or view, for CPU data) of an array of any library."""
    library = library_of(value)
    if library == "torch":
        value = value.detach()
        if value.dtype in _TORCH_HALF():
            value = value.float()
        return value.cpu().numpy()
    if library == "cupy":
        return value.get()
    return np.asarray(value)


def like(value: Any, reference: Any) -> Any:
    """``value`` (NumPy or None) in the library and on the device of ``reference``."""
    if value is None or library_of(reference) in ("numpy", None):
        return value
    return from_host(value, namespace(reference), device_of(reference))


def from_host(value: np.ndarray, xp: Any, device: Any) -> Any:
    """A NumPy array as an array of namespace ``xp`` on ``device``."""
    if xp.__name__.endswith("numpy"):
        return value
    return xp.asarray(np.ascontiguousarray(value), device=device)


def is_half(value: Any) -> bool:
    """Whether ``value`` holds float16 or bfloat16 (Torch) / float16 (CuPy)."""
    library = library_of(value)
    if library == "torch":
        return value.dtype in _TORCH_HALF()
    return str(getattr(value, "dtype", "")) == "float16"


def _TORCH_HALF() -> tuple[Any, ...]:
    import torch

    return (torch.float16, torch.bfloat16)
