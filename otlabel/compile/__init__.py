"""Fill Numba's cache ahead of time: ``otlabel.compile()`` or ``python -m otlabel.compile``.

The Numba kernels are compiled on first use and cached (``cache=True``), beside
the installed package (or in ``NUMBA_CACHE_DIR``); a later process loads them.
The first call of a process whose cache is cold compiles the kernels it uses
and takes its cheaper Python paths for the rest (the exact labels' repair of a
small excess).  Compiling ahead of time, as a step of building a container image
or a cluster's environment, gives every later process the compiled kernels from
its first call.  See the guide's section on the first call.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable, Sequence

import numpy as np

from ..api import assign, predict
from ..datasets import make_scores
from ..rounding import argmax_labels

__all__ = ["compile", "main"]

#: Rows of the problems solved: past the subsample start's threshold (twice its
#: 20 000 rows), so that the subsample's kernels are compiled too.
ROWS = 40_960
#: Clusters of the problems solved: enough that head scores at SeLa's epsilon keep
#: few entries of each row (the sparse stored kernel).
CLUSTERS = 128


def compile(*, dtypes: Sequence[str] = ("float32", "float64")) -> list[str]:
    """Compile every kernel that ``assign``, ``sinkhorn`` and ``predict`` use on NumPy
    arrays of ``dtypes`` into Numba's cache, and return the kernels that were compiled
    (none when the cache already held them all).

    Small problems (:data:`ROWS` x :data:`CLUSTERS`) are solved through each path:
    the log domain (with a starved column), the sparse and the dense stored kernels
    and their exact finish, balanced labels (the compiled repair, on identical rows
    too), argmax labels, bounded and relaxed sizes, partial mass and prediction, on
    arrays of each dtype and on read-only float32 arrays (``np.load(path,
    mmap_mode="r")``, the CLI's ``--mmap``).  A later process whose calls take these
    paths compiles nothing; one that takes another (another dtype or layout, a
    stream's blocks) compiles what it lacks then, as without this.

    Parameters
    ----------
    dtypes : sequence of str
        The dtypes of the scores to compile for (others are converted to float64).

    Returns
    -------
    list of str
        The kernels compiled, as ``module.function``, once per signature.

    Examples
    --------
    >>> import otlabel
    >>> compiled = otlabel.compile()  # doctest: +SKIP
    >>> otlabel.compile()  # doctest: +SKIP
    []
    """
    from ..kernels.numba.cache import recording  # Numba is imported on first use

    inputs = [_as(np.dtype(dtype)) for dtype in dtypes]
    if np.dtype("float32") in map(np.dtype, dtypes):
        inputs.append(_read_only)
    with recording() as compiled:
        for as_input in inputs:
            for case in CASES:
                case(as_input)
    return compiled


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m otlabel.compile [--dtypes float32 float64]``: :func:`compile`, and
    one line saying what it compiled, where to and how long it took."""
    parser = argparse.ArgumentParser(
        prog="python -m otlabel.compile",
        description="Compile otlabel's Numba kernels into Numba's cache.",
    )
    parser.add_argument("--dtypes", nargs="+", default=["float32", "float64"])
    args = parser.parse_args(argv)
    began = time.perf_counter()
    compiled = compile(dtypes=args.dtypes)
    where = os.environ.get("NUMBA_CACHE_DIR") or "beside the installed package"
    print(
        f"compiled {len(set(compiled))} kernels ({len(compiled)} signatures) into "
        f"Numba's cache ({where}) in {time.perf_counter() - began:.1f} s"
    )
    return 0


# --------------------------------------------------------------------------
# The problems: one function per path through the kernels
# --------------------------------------------------------------------------


Input = Callable[[np.ndarray], np.ndarray]


def _sparse(as_input: Input) -> None:
    """Head scores at SeLa's epsilon: subsample start, sparse stored kernel, exact
    float64 finish, its argmax, starved columns' peaks, the repair's passes."""
    scores = as_input(make_scores(ROWS, CLUSTERS, kind="head", seed=0))
    result = assign(scores, 0.04)
    predict(scores[:100], result)
    assign(scores, 0.04, init=result.potential, rounding="argmax")


def _dense(as_input: Input) -> None:
    """A large epsilon: the dense stored kernel (most entries kept)."""
    assign(as_input(make_scores(ROWS, CLUSTERS, kind="sela", seed=1)), 5.0)


def _log(as_input: Input) -> None:
    """The log domain throughout, argmax labels read from the scores."""
    scores = as_input(make_scores(ROWS // 8, CLUSTERS // 8, seed=2))
    assign(scores, 0.05, method="log", rounding="argmax")


def _sizes(as_input: Input) -> None:
    """Bounded sizes, relaxed sizes (their exchanges), partial mass (its column)."""
    scores = as_input(make_scores(ROWS // 8, CLUSTERS // 8, seed=3))
    assign(scores, 0.05, min_size=4.0 / CLUSTERS, max_size=16.0 / CLUSTERS)
    assign(scores, 0.05, size_penalty=0.5)
    assign(scores, 0.05, mass=0.8)


def _starved(as_input: Input) -> None:
    """A cluster far below the others (its column starved): the exact peaks of the
    log domain's starved columns."""
    scores = make_scores(ROWS // 8, CLUSTERS // 8, seed=4)
    scores[:, 0] -= 1000.0
    assign(as_input(scores), 0.05, method="log")


def _tied(as_input: Input) -> None:
    """Identical rows: an excess large enough for the compiled repair, which merges
    them (its row classes)."""
    assign(as_input(np.zeros((ROWS // 2, 4))), 0.05)


def _passes(as_input: Input) -> None:
    """The rounding's compiled passes on their own, first: at hand, every later case
    (and a small k-means step, its argmax labels at the previous dual) reads with
    them, in this process as in a later one."""
    from ..kernels.numba.rounding import NumbaPasses  # Numba is imported on first use

    scores = as_input(make_scores(ROWS // 8, CLUSTERS // 8, seed=5))
    labels = argmax_labels(scores, np.zeros(scores.shape[1]), scores.shape[0], NumbaPasses())
    NumbaPasses.move_costs(scores, labels, np.full((scores.shape[1],) * 2, np.inf))


#: The paths, each a function of how to make its input.
CASES: tuple[Callable[[Input], None], ...] = (
    _passes, _sparse, _dense, _log, _starved, _sizes, _tied,
)  # fmt: skip


def _as(dtype: np.dtype) -> Input:
    return lambda scores: scores.astype(dtype)


def _read_only(scores: np.ndarray) -> np.ndarray:
    scores = scores.astype(np.float32)
    scores.flags.writeable = False
    return scores
