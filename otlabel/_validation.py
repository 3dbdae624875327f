"""Input checks of :func:`otlabel.assign`: each error names the argument and the fix."""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np

from ._arrays import library_of, namespace

METHODS = ("auto", "scaling", "log")
ROUNDINGS = ("balanced", "argmax", None)


def heads_of(scores: Any, name: str = "scores") -> tuple[list[np.ndarray], str]:
    """Split ``scores`` into 2-D heads; the layout is "single", "stack" or "list"."""
    from .streaming import ChunkedScores

    if isinstance(scores, ChunkedScores):
        return [scores], "single"  # type: ignore[list-item]
    if isinstance(scores, list | tuple):
        if len(scores) == 0:
            raise ValueError(f"{name}: an empty list; pass at least one (N, K) array")
        libraries = {library_of(head) for head in scores}
        if None in libraries:
            raise TypeError(
                f"{name}: a list must hold one (N, K) array (NumPy, Torch or CuPy) per head; "
                "convert nested lists of numbers with numpy.asarray"
            )
        if len(libraries) > 1:
            raise TypeError(
                f"{name}: the heads of a list must come from one array library, got "
                f"{sorted(libraries)}"  # type: ignore[type-var]
            )
        heads = [matrix(head, f"{name}[{h}]") for h, head in enumerate(scores)]
        if len({head.shape[0] for head in heads}) > 1:
            shapes = [tuple(head.shape) for head in heads]
            raise ValueError(f"{name}: the heads of a list must share N, got shapes {shapes}")
        return heads, "list"
    array = _array(scores, name)
    if array.ndim == 3:
        if array.shape[0] == 0:
            raise ValueError(f"{name}: a stack of shape (0, N, K) has no heads")
        return [matrix(head, f"{name}[{h}]") for h, head in enumerate(array)], "stack"
    return [matrix(array, name)], "single"


def _array(value: Any, name: str) -> Any:
    if library_of(value) is None:
        kind = type(value).__module__.split(".")[0]
        if kind == "jax":
            raise TypeError(
                f"{name}: JAX arrays are not supported; pass a NumPy array (numpy.asarray)"
            )
        raise TypeError(
            f"{name}: expected an array (N, K) (NumPy, Torch or CuPy), a stack (H, N, K) or a "
            f"list of (N, K) arrays, got {type(value).__name__}; convert with numpy.asarray"
        )
    return value


def matrix(value: Any, name: str) -> Any:
    array = _array(value, name)
    if array.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D array (N, K), got shape {tuple(array.shape)}")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(
            f"{name}: needs at least one sample and one cluster, got {tuple(array.shape)}"
        )
    if library_of(array) == "torch":
        return _torch_matrix(array, name)
    if array.dtype == np.bool_ or not np.issubdtype(array.dtype, np.number):
        raise TypeError(f"{name}: expected real floating-point scores, got dtype {array.dtype}")
    if np.issubdtype(array.dtype, np.complexfloating):
        raise TypeError(f"{name}: complex scores are not supported, got dtype {array.dtype}")
    numpy = library_of(array) == "numpy"
    if np.issubdtype(array.dtype, np.integer):
        return array.astype(np.float64)  # integers are read as float64
    if array.dtype.type is np.float16 and numpy:  # either byte order
        return array.astype(np.float32)  # NumPy's float16 arithmetic is emulated: too slow
    if array.dtype.itemsize > 8 and numpy:  # long double: no kernel computes in it
        return array.astype(np.float64)
    if numpy and not array.dtype.isnative:
        return array.astype(array.dtype.newbyteorder("="))  # the kernels read native order
    return array  # float32, float64; CuPy float16 is read block by block in float32


def _torch_matrix(array: Any, name: str) -> Any:
    """Torch scores: float16/bfloat16 are read block by block in float32, kept as they are."""
    import torch

    if array.dtype == torch.bool or array.is_complex():
        raise TypeError(f"{name}: expected real floating-point scores, got dtype {array.dtype}")
    if not array.is_floating_point():
        return array.to(torch.float64)  # integers are read as float64
    return array.detach()


def positive_float(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}: expected a positive number, got {type(value).__name__}")
    number = float(value)
    if not (np.isfinite(number) and number > 0):
        raise ValueError(f"{name}: expected a finite number > 0, got {value!r}")
    return number


def epsilon(value: Any, rounding: str | None) -> float:
    """``epsilon > 0``, or 0 (the unregularised problem) with exact labels."""
    if isinstance(value, numbers.Real) and not isinstance(value, bool) and float(value) == 0:
        if rounding != "balanced":
            raise ValueError(
                "epsilon: expected a finite number > 0 for a Sinkhorn solve; 0, the "
                "unregularised problem, is answered by its exact labels: "
                f"assign(..., rounding='balanced') (got rounding={rounding!r})"
            )
        return 0.0
    return positive_float(value, "epsilon")


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


def weights(value: Any, size: int, name: str, *, normalise: bool = True) -> np.ndarray:
    """Finite, strictly positive weights of length ``size``, normalised to sum 1
    (``normalise=False``: as given, ones for None)."""
    if value is None:
        return np.full(size, 1.0 / size if normalise else 1.0)
    array = as_host(value)
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
    return array / array.sum() if normalise else array


def per_head(value: Any, n_heads: int, layout: str, name: str) -> list[Any]:
    """One value per head: None, one shared value, an (H, ...) array or a list."""
    if value is None or isinstance(value, str):
        return [value] * n_heads
    if layout == "single":
        return [value]
    if isinstance(value, list | tuple):
        if len(value) != n_heads:
            raise ValueError(f"{name}: expected one entry per head ({n_heads}), got {len(value)}")
        return list(value)
    array = as_host(value)
    if array.ndim == 2:
        if array.shape[0] != n_heads:
            raise ValueError(
                f"{name}: expected shape ({n_heads}, K) for {n_heads} heads, got {array.shape}"
            )
        return list(array)
    return [array] * n_heads


def initial_potential(value: Any, n_clusters: int, name: str = "init") -> np.ndarray:
    array = as_host(value)
    if array.dtype == np.bool_ or not np.issubdtype(array.dtype, np.number):
        raise TypeError(f"{name}: expected a previous result's potential, got dtype {array.dtype}")
    array = array.astype(np.float64)
    if array.shape != (n_clusters,):
        raise ValueError(
            f"{name}: expected a previous result's potential of shape ({n_clusters},), "
            f"got {array.shape}"
        )
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name}: contains NaN or infinite values")
    return array


def size_bounds(
    min_size: Any,
    max_size: Any,
    n_clusters: int,
    min_name: str,
    max_name: str,
    *,
    total: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Feasible cluster-size bounds (fractions of N): ``0 <= lo <= hi``, ``hi > 0``,
    ``sum lo <= total <= sum hi`` (``total``: the assigned mass, 1 unless partial);
    a missing bound is 0 (lower) or 1 (upper)."""
    lower = _fractions(min_size, n_clusters, min_name, default=0.0)
    upper = _fractions(max_size, n_clusters, max_name, default=1.0)
    if np.any(upper <= 0):
        raise ValueError(f"{max_name}: must be > 0 for every cluster (drop a cluster instead)")
    if np.any(lower > upper):
        k = int(np.flatnonzero(lower > upper)[0])
        raise ValueError(
            f"{min_name}: exceeds {max_name} for cluster {k} ({lower[k]!r} > {upper[k]!r}); "
            "give every cluster min_size <= max_size"
        )
    slack = 1e-12 * n_clusters
    held = "every sample" if total == 1.0 else f"the assigned mass {total:g}"
    if lower.sum() > total + slack:
        raise ValueError(
            f"{min_name}: the lower bounds sum to {lower.sum():.6g} > {total:g}, so no "
            "labelling gives every cluster its minimum; lower them"
        )
    if upper.sum() < total - slack:
        raise ValueError(
            f"{max_name}: the upper bounds sum to {upper.sum():.6g} < {total:g}, so the "
            f"clusters cannot hold {held}; raise them"
        )
    return lower, upper


def fraction(value: Any, name: str) -> float:
    """A number in (0, 1]: the assigned fraction of the mass."""
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value.item()  # one value for every head
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}: expected a number in (0, 1], got {type(value).__name__}")
    number = float(value)
    if not 0.0 < number <= 1.0:
        raise ValueError(
            f"{name}: expected the fraction of the mass given to the clusters, in (0, 1], "
            f"got {value!r}"
        )
    return number


def penalty(value: Any, size: int, name: str) -> np.ndarray:
    """``tau > 0`` per cluster (a number for all, or (K,)); ``inf`` is fixed sizes."""
    array = as_host(value)
    if array.dtype == np.bool_ or not np.issubdtype(array.dtype, np.number):
        raise TypeError(f"{name}: expected a number tau > 0 or a ({size},) array of them")
    array = np.broadcast_to(array.astype(np.float64), (size,)) if array.ndim == 0 else array
    if array.shape != (size,):
        raise ValueError(f"{name}: expected a number or shape ({size},), got {array.shape}")
    array = np.asarray(array, dtype=np.float64).copy()
    if np.any(np.isnan(array)) or np.any(array <= 0):
        raise ValueError(
            f"{name}: tau must be > 0 (score units; larger keeps the sizes closer to "
            f"cluster_weights), got {float(array[np.isnan(array) | (array <= 0)][0]):g}"
        )
    return array


def known_labels(value: Any, n_samples: int, n_clusters: int, name: str) -> np.ndarray:
    """(N,) integer labels in ``-1..K-1`` (-1: unknown)."""
    array = as_host(value)
    if array.dtype == np.bool_ or not np.issubdtype(array.dtype, np.integer):
        raise TypeError(
            f"{name}: expected integer labels (-1 for unknown), got dtype {array.dtype}"
        )
    if array.shape != (n_samples,):
        raise ValueError(f"{name}: expected shape ({n_samples},), got {array.shape}")
    bad = (array < -1) | (array >= n_clusters)
    if np.any(bad):
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"{name}: a label is -1 (unknown) or a cluster in 0..{n_clusters - 1}, got "
            f"{int(array[i])} at index {i}"
        )
    return array.astype(np.int64)


def finite_vector(value: Any, size: int, name: str) -> np.ndarray:
    """A finite real (size,) vector, float64."""
    array = as_host(value)
    if array.dtype == np.bool_ or not np.issubdtype(array.dtype, np.number):
        raise TypeError(f"{name}: expected real numbers, got dtype {array.dtype}")
    if array.shape != (size,):
        raise ValueError(f"{name}: expected shape ({size},), got {array.shape}")
    array = array.astype(np.float64)
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name}: contains NaN or infinite values")
    return array


def _fractions(value: Any, size: int, name: str, *, default: float) -> np.ndarray:
    """A scalar or (K,) array of finite fractions of N, >= 0."""
    if value is None:
        return np.full(size, default)
    array = as_host(value)
    if array.dtype == np.bool_ or not np.issubdtype(array.dtype, np.number):
        raise TypeError(f"{name}: expected a fraction of N or a ({size},) array of them")
    array = np.broadcast_to(array.astype(np.float64), (size,)) if array.ndim == 0 else array
    if array.shape != (size,):
        raise ValueError(f"{name}: expected a scalar or shape ({size},), got {array.shape}")
    array = np.asarray(array, dtype=np.float64).copy()
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name}: contains NaN or infinite values")
    if np.any(array < 0):
        raise ValueError(f"{name}: fractions of N must be >= 0, got {array.min()!r}")
    return array


def optional_callable(value: Any, name: str) -> Any:
    if value is not None and not callable(value):
        raise TypeError(
            f"{name}: expected a function (n_iter, error) or None, got {type(value).__name__}"
        )
    return value


def as_host(value: Any) -> np.ndarray:
    """Weights and potentials may come in the scores' library (e.g. a previous result)."""
    from ._arrays import to_numpy

    return to_numpy(value) if library_of(value) is not None else np.asarray(value)


def check_score_rows(row_max: Any, row_min: Any, name: str) -> bool:
    """Raise naming the rows that hold NaN or ``+inf``, or only ``-inf`` (extremes of
    any library: NaN propagates to both, ``+inf`` is a maximum, a row of ``-inf`` has
    ``-inf`` for its maximum); returns whether any score is ``-inf`` (a forbidden pair)."""
    from ._arrays import to_numpy

    xp = namespace(row_max)
    bad = xp.isnan(row_max) | xp.isnan(row_min) | (row_max == math.inf)
    if bool(xp.any(bad)):
        row = int(np.flatnonzero(to_numpy(bad))[0])
        raise ValueError(
            f"{name}: contains NaN or +inf (first in row {row}); scores must be finite, "
            "or -inf for a forbidden sample-cluster pair"
        )
    check_allowed_rows(to_numpy(row_max == -math.inf), name)
    return bool(xp.any(row_min == -math.inf))


def check_allowed_rows(all_forbidden: np.ndarray, name: str) -> None:
    """Raise naming the rows (bool (N,) mask) whose every score is ``-inf``."""
    if all_forbidden.any():
        rows = np.flatnonzero(all_forbidden)
        raise ValueError(
            f"{name}: {rows.size} row(s) are -inf for every cluster ({_first_few(rows)}): "
            "a sample must be allowed at least one cluster; give those rows a finite "
            "score for some cluster, or leave the samples out"
        )


def _first_few(indices: np.ndarray, shown: int = 5) -> str:
    """``rows 3, 7, 9`` or ``rows 3, 7, 9, 12, 15, ...`` for an error message."""
    listed = ", ".join(str(int(i)) for i in indices[:shown])
    return f"row{'s' if indices.size > 1 else ''} {listed}{', ...' if indices.size > shown else ''}"
