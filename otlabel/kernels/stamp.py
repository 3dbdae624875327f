"""The freshness stamp of the compiled kernels that Numba caches (``cache=True``).

Numba keeps a cached kernel while the file that defines it is unchanged, but a
kernel compiles the kernels it calls into itself, and those live in other files
(:mod:`otlabel.kernels.numba.repair` calls :mod:`.repair_losses`, every sweep
calls :mod:`otlabel.kernels._fastmath`).  After an edit or a partial update of
one of them, the caller's cached machine code would still be loaded, built
against the old callee: wrong results or a crash.  :func:`stamp_kernel_caches`
makes the stamp of every kernel in :data:`KERNEL_FILES` cover all of those
files, so that changing any one of them recompiles every kernel that may inline it.

It registers, once per process and before the kernels are decorated, a cache
locator per Numba locator kind (a user-given ``NUMBA_CACHE_DIR``, the package's
``__pycache__``, the user-wide cache) that takes otlabel's kernel files only and
adds the digest of all of them to Numba's own stamp.  A Numba without these
hooks keeps its own stamp.
"""

from __future__ import annotations

import hashlib
from functools import cache
from pathlib import Path
from typing import Any

#: The files whose kernels call each other: the Numba backend and its fast math.
KERNEL_FILES = ("numba/*.py", "_fastmath.py")

_HERE = Path(__file__).resolve().parent

#: Numba's locators, by their names in Numba >= 0.60 and before.
_LOCATORS = (
    ("UserProvidedCacheLocator", "_UserProvidedCacheLocator"),
    ("InTreeCacheLocator", "_InTreeCacheLocator"),
    ("UserWideCacheLocator", "_UserWideCacheLocator"),
)


def stamp_kernel_caches() -> bool:
    """Make the cache stamp of otlabel's kernels cover every kernel file; True when
    registered (now or before), False when this Numba lacks the hooks.

    >>> stamp_kernel_caches()
    True
    """
    return _register()


@cache
def kernel_digest(root: Path = _HERE) -> str:
    """SHA-256 of the sources of :data:`KERNEL_FILES` under ``root``, in the order
    of their paths."""
    digest = hashlib.sha256()
    for path in kernel_files(root):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


@cache
def kernel_files(root: Path = _HERE) -> tuple[Path, ...]:
    """The files of :data:`KERNEL_FILES` under ``root`` (otlabel's kernels), sorted."""
    return tuple(sorted(path for pattern in KERNEL_FILES for path in root.glob(pattern)))


@cache
def _register() -> bool:
    try:
        from numba.core import caching

        impl = getattr(caching, "CacheImpl", None) or getattr(caching, "_CacheImpl")  # noqa: B009
        bases = [_numba_class(caching, names) for names in _LOCATORS]
        classes = impl._locator_classes
    except (ImportError, AttributeError):
        return False
    if any(base is None for base in bases) or not isinstance(classes, list):
        return False
    classes[:0] = [_stamped(base) for base in bases]
    return True


def _stamped(locator: Any) -> type:
    return type(f"Stamped{locator.__name__.lstrip('_')}", (_Stamped, locator), {})


def _numba_class(module: Any, names: tuple[str, ...]) -> Any:
    return next((getattr(module, name) for name in names if hasattr(module, name)), None)


class _Stamped:
    """A Numba locator for otlabel's kernel files whose stamp covers them all."""

    @classmethod
    def from_function(cls, py_func: Any, py_file: str) -> Any:
        if not _is_kernel_file(py_file):
            return None
        return super().from_function(py_func, py_file)  # type: ignore[misc]

    def get_source_stamp(self) -> Any:
        return super().get_source_stamp(), kernel_digest()  # type: ignore[misc]


def _is_kernel_file(py_file: str) -> bool:
    try:
        path = Path(py_file).resolve()
    except OSError:
        return False
    return path in kernel_files()
