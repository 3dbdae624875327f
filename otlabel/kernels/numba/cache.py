"""What Numba holds compiled: whether a kernel's machine code is at hand, in this
process or in Numba's cache (``cache=True``), without compiling it; and which
kernels a block of code compiled.

A kernel that is not at hand costs its compile on the first call of a process
(seconds for the largest); a caller with a cheaper way to do a small job takes
that way instead (:func:`.repair.pays`, :func:`.rounding.passes_pay`).
``otlabel.compile()`` fills the cache.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numba
import numpy as np
from numba.core import event
from numba.core.compiler_lock import global_compiler_lock

#: Entries of a matrix (N x K) from which the rounding's kernels (its passes and the
#: repair) are worth compiling in a process whose cache lacks them: below, NumPy's
#: passes and the Python repair take less time than compiling them; above, they take
#: seconds a call, and the compiled ones, cached, serve every later process
#: (docs/benchmarks.md).
COMPILE_ENTRIES = 50_000_000


def at_hand(kernel: Any, *args: Any) -> bool:
    """Whether ``kernel`` (a Numba dispatcher) has machine code for the types of
    ``args`` without compiling: compiled in this process, or in Numba's cache (then
    loaded, as a call would load it).

    >>> import numpy as np
    >>> from numba import njit
    >>> @njit
    ... def double(x):
    ...     return 2 * x
    >>> at_hand(double, np.zeros(3))
    False
    >>> double(np.zeros(3)).tolist()
    [0.0, 0.0, 0.0]
    >>> at_hand(double, np.zeros(3)), at_hand(double, np.zeros(3, np.float32))
    (True, False)
    """
    key = (kernel, tuple(_type_key(arg) for arg in args))
    if key in _AT_HAND:  # at hand once, at hand for the process: no typing again
        return True
    if _NOT_AT_HAND.get(key) == _COMPILES.count:  # and nothing compiled since
        return False
    types = tuple(numba.typeof(arg) for arg in args)
    # under the compiler's lock no other thread compiles while the refusal listens
    with global_compiler_lock, event.install_listener("numba:compile", _Refuse()):
        _COMPILES.looking = True
        try:
            kernel.compile(types)
        except _NotAtHand:
            _NOT_AT_HAND[key] = _COMPILES.count
            return False
        finally:
            _COMPILES.looking = False
    _AT_HAND.add(key)
    return True


#: (kernel, argument keys) found at hand in this process, and those found not at
#: hand with the count of compiles then: typing a dozen arguments and asking the
#: cache on disk take about a millisecond, and a k-means step asks a few times.
_AT_HAND: set[tuple[Any, tuple[Any, ...]]] = set()
_NOT_AT_HAND: dict[tuple[Any, tuple[Any, ...]], int] = {}


def _type_key(arg: Any) -> Any:
    """What Numba's type of ``arg`` depends on, cheaply: an array's dtype, dimensions,
    layout and flags; a tuple's items'; anything else's Python type."""
    if isinstance(arg, np.ndarray):
        flags = arg.flags
        layout = (flags.c_contiguous, flags.f_contiguous, flags.writeable, flags.aligned)
        return (arg.dtype.str, arg.ndim, layout)
    if isinstance(arg, tuple):
        return (type(arg), tuple(_type_key(item) for item in arg))
    return type(arg)


@contextmanager
def recording() -> Iterator[list[str]]:
    """The otlabel kernels (``module.function``) that Numba compiles inside the block,
    in the order their compiles end, once per signature (nested ones too).

    >>> from numba import njit
    >>> @njit
    ... def double(x):
    ...     return 2 * x
    >>> with recording() as compiled:
    ...     results = double(1.0), double(2.0), double(3)
    >>> [name.rsplit(".", 1)[-1] for name in compiled]  # float64, then int64
    ['double', 'double']
    """
    compiled: list[str] = []
    with event.install_listener("numba:compile", _Record(compiled)):
        yield compiled


class _Compiles(event.Listener):
    """Counts the compiles that start in this process (any kernel's), but for those
    that :func:`at_hand` starts only to refuse them (``looking``, under the compiler's
    lock: no other thread compiles then)."""

    def __init__(self) -> None:
        self.count, self.looking = 0, False

    def on_start(self, event: Any) -> None:
        if not self.looking:
            self.count += 1

    def on_end(self, event: Any) -> None:
        pass


_COMPILES = _Compiles()
event.register("numba:compile", _COMPILES)


class _Record(event.Listener):
    def __init__(self, names: list[str]) -> None:
        self.names = names

    def on_start(self, event: Any) -> None:
        pass

    def on_end(self, event: Any) -> None:
        dispatcher, function = event.data["dispatcher"], event.data["dispatcher"].py_func
        compiled = tuple(event.data["args"]) in dispatcher.overloads  # not refused
        if compiled and function.__module__.startswith("otlabel."):
            self.names.append(f"{function.__module__}.{function.__qualname__}")


class _NotAtHand(Exception):
    """Numba was about to compile: the machine code is neither loaded nor cached."""


class _Refuse(event.Listener):
    """Stops a compile as it starts (the cache was looked up first, and missed)."""

    def on_start(self, event: Any) -> None:
        raise _NotAtHand

    def on_end(self, event: Any) -> None:
        pass
