"""Input checks of :func:`otlabel.assign`: each error names the argument and the fix."""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np

METHODS = ("auto", "scaling", "log")
ROUNDINGS = ("balanced", "argmax", None)


def heads_of(scores: Any) -> tuple[list[np.ndarray], str]:
    """Split ``scores`` into 2-D heads; the layout is "single", "stack" or "list"."""
    from .streaming import ChunkedScores

    if isinstance(scores, ChunkedScores):
        return [scores], "single"  # type: ignore[list-item]
    if isinstance(scores, list | tuple):
        if len(scores) == 0:
            raise ValueError("scores: an empty list; pass at least one (N, K) array")
        if not all(isinstance(head, np.ndarray) for head in scores):
            raise TypeError(
                "scores: a list must hold one (N, K) NumPy array per head; "
                "convert nested lists of numbers with numpy.asarray"
            )
        heads = [_matrix(head, f"scores[{h}]") for h, head in enumerate(scores)]
        if len({head.shape[0] for head in heads}) > 1:
            shapes = [head.shape for head in heads]
            raise ValueError(f"scores: the heads of a list must share N, got shapes {shapes}")
        return heads, "list"
    array = _array(scores, "scores")
    if array.ndim == 3:
        if array.shape[0] == 0:
            raise ValueError("scores: a stack of shape (0, N, K) has no heads")
        return [_matrix(head, f"scores[{h}]") for h, head in enumerate(array)], "stack"
    return [_matrix(array, "scores")], "single"


def _array(value: Any, name: str) -> np.ndarray:
    if not isinstance(value, np.ndarray):
        kind = type(value).__module__.split(".")[0]
        if kind in ("torch", "cupy", "jax"):
            raise TypeError(
                f"{name}: {type(value).__name__} input needs the {kind} backend, which "
                "this version does not have yet; pass a NumPy array (e.g. tensor.cpu().numpy())"
            )
        raise TypeError(
            f"{name}: expected a NumPy array (N, K), a stack (H, N, K) or a list of (N, K) "
            f"arrays, got {type(value).__name__}; convert with numpy.asarray"
        )
    return value


def _matrix(value: Any, name: str) -> np.ndarray:
    array = _array(value, name)
    if array.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D array (N, K), got shape {array.shape}")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"{name}: needs at least one sample and one cluster, got {array.shape}")
    if array.dtype == np.bool_ or not np.issubdtype(array.dtype, np.number):
        raise TypeError(f"{name}: expected real floating-point scores, got dtype {array.dtype}")
    if np.issubdtype(array.dtype, np.complexfloating):
        raise TypeError(f"{name}: complex scores are not supported, got dtype {array.dtype}")
    if array.dtype == np.float16 or np.issubdtype(array.dtype, np.integer):
        # float16 is too coarse to iterate on; integers are read as float64.
        return array.astype(np.float32 if array.dtype == np.float16 else np.float64)
    return array


def positive_float(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}: expected a positive number, got {type(value).__name__}")
    number = float(value)
    if not (np.isfinite(number) and number > 0):
        raise ValueError(f"{name}: expected a finite number > 0, got {value!r}")
    return number


def positive_int(value: Any, name: str, *, allow_none: bool = False) -> int | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}: expected a positive integer, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name}: expected an integer >= 1, got {value!r}")
    return int(value)


def overrelaxation(value: Any) -> float | str:
    if isinstance(value, str) and value == "auto":
        return value
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"overrelaxation: expected 'auto' or a number in (0, 2), got {value!r}")
    if not 0 < float(value) < 2:
        raise ValueError(f"overrelaxation: expected 'auto' or a number in (0, 2), got {value!r}")
    return float(value)


def flag(value: Any, name: str) -> bool:
    if not isinstance(value, bool | np.bool_):
        raise TypeError(f"{name}: expected True or False, got {value!r}")
    return bool(value)


def choice(value: Any, name: str, options: tuple) -> Any:
    if value not in options or (value is not None and not isinstance(value, str)):
        raise ValueError(f"{name}: expected one of {options}, got {value!r}")
    return value


def weights(value: Any, size: int, name: str) -> np.ndarray:
    """Finite, strictly positive weights of length ``size``, normalised to sum 1."""
    if value is None:
        return np.full(size, 1.0 / size)
    array = np.asarray(value)
    if array.dtype == np.bool_ or not np.issubdtype(array.dtype, np.number):
        raise TypeError(f"{name}: expected real numbers, got dtype {array.dtype}")
    array = array.astype(np.float64)
    if array.shape != (size,):
        raise ValueError(f"{name}: expected shape ({size},), got {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name}: contains NaN or infinite values")
    if np.any(array <= 0):
        bad = int(np.flatnonzero(array <= 0)[0])
        raise ValueError(
            f"{name}: weights must be > 0, got {array[bad]!r} at index {bad}; "
            "drop that sample or cluster instead of giving it zero weight"
        )
    return array / array.sum()


def per_head(value: Any, n_heads: int, layout: str, name: str) -> list[Any]:
    """One value per head: None, one shared value, an (H, ...) array or a list."""
    if value is None:
        return [None] * n_heads
    if layout == "single":
        return [value]
    if isinstance(value, list | tuple):
        if len(value) != n_heads:
            raise ValueError(f"{name}: expected one entry per head ({n_heads}), got {len(value)}")
        return list(value)
    array = np.asarray(value)
    if array.ndim == 2:
        if array.shape[0] != n_heads:
            raise ValueError(
                f"{name}: expected shape ({n_heads}, K) for {n_heads} heads, got {array.shape}"
            )
        return list(array)
    return [array] * n_heads


def initial_potential(value: Any, n_clusters: int) -> np.ndarray:
    if value is None:
        return np.zeros(n_clusters)
    array = np.asarray(value, dtype=np.float64)
    if array.shape != (n_clusters,):
        raise ValueError(
            f"init: expected a previous result's potential of shape ({n_clusters},), "
            f"got {array.shape}"
        )
    if not np.all(np.isfinite(array)):
        raise ValueError("init: contains NaN or infinite values")
    return array


def check_finite_rows(row_max: np.ndarray, row_min: np.ndarray, name: str) -> None:
    bad = ~(np.isfinite(row_max) & np.isfinite(row_min))
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"{name}: contains NaN or infinite values (first in row {row}); scores must be finite"
        )
