"""The kernels' threads: serial Numba loops over runs of tasks, on a shared pool.

Every kernel that reads the matrix is a serial loop over a range of tasks (sub-blocks
of rows, rows, or clusters), compiled by :func:`task_kernel` (``nogil``), and
:func:`run_tasks` hands runs of tasks to the calling thread and to the threads of a
pool.  Each task writes only its own outputs, so results do not depend on the
thread count or on the order the runs are taken in.  A ``prange`` loop would do the
same, but Numba compiles a parallel loop several times slower than a serial one,
and the first call of a process whose cache is cold waits for every kernel it uses
(see docs/benchmarks.md).
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numba
from numba import njit
from numba.core.compiler import CompilerBase, DefaultPassBuilder
from numba.core.compiler_machinery import FunctionPass, PassManager, register_pass
from numba.core.ir_utils import simplify

#: Runs of tasks per thread that :func:`run_tasks` hands out: the threads take them
#: in turn, so that a thread slowed by other work on its core takes fewer.
RUNS_PER_THREAD = 4


def run_tasks(n_threads: int | None, kernel: Callable[..., Any], n_tasks: int, *args: Any) -> None:
    """``kernel(*args, first, last)`` over the tasks ``0 .. n_tasks - 1`` on ``n_threads``
    threads (None: Numba's count for the calling thread, see :func:`.common.threads`).

    ``kernel`` loops over ``range(first, last)``; the calling thread and up to
    ``n_threads - 1`` threads of the pool take runs of consecutive tasks until none
    is left.  If a run raises, the runs not yet started are dropped and the error is
    raised here once the other threads are done.

    >>> import numpy as np
    >>> @task_kernel(cache=False)
    ... def squares(out, first, last):
    ...     for t in range(first, last):
    ...         out[t] = t * t
    >>> out = np.zeros(6, np.int64)
    >>> run_tasks(2, squares, out.size, out)
    >>> out.tolist()
    [0, 1, 4, 9, 16, 25]
    """
    count = numba.get_num_threads() if n_threads is None else min(n_threads, _most_threads())
    n_runs = min(n_tasks, RUNS_PER_THREAD * count)
    if count <= 1 or n_runs <= 1:
        kernel(*args, 0, n_tasks)
        return
    runs: queue.SimpleQueue[tuple[int, int]] = queue.SimpleQueue()
    for run in range(n_runs):
        runs.put((n_tasks * run // n_runs, n_tasks * (run + 1) // n_runs))

    def work() -> None:
        try:
            while True:
                kernel(*args, *runs.get_nowait())
        except queue.Empty:
            return
        except BaseException:
            _drain(runs)  # the other threads stop after their current run
            raise

    helpers = [_pool().submit(work) for _ in range(min(count, n_runs) - 1)]
    try:
        work()
    finally:
        for helper in helpers:
            helper.result()


def task_kernel(**options: Any) -> Callable[[Callable[..., Any]], Any]:
    """How a kernel that :func:`run_tasks` drives is compiled: ``njit`` with
    ``options`` (``fastmath``), ``nogil``, cached, NumPy's error model (a division by
    zero gives inf or NaN, as in the body of a parallel loop), and the copy
    propagation of Numba's parallel pipeline (:class:`TaskPipeline`)."""
    options = {"nogil": True, "error_model": "numpy", "cache": True, **options}
    return njit(pipeline_class=TaskPipeline, **options)


class TaskPipeline(CompilerBase):
    """Numba's nopython pipeline, with the copy propagation of its parallel one
    before the lowering (:class:`CopyPropagation`).

    Without it the sweeps kept copies of the arrays handed to an inlined row
    function (:func:`.common.stored_row`), and each copy raised and dropped their
    reference counts once per row: atomic operations on counts that every thread
    shares (the history of docs/benchmarks.md has the cost).  ``parallel=True``
    propagates copies too, but compiles far slower.
    """

    def define_pipelines(self) -> list[PassManager]:
        manager = PassManager("task kernel")
        manager.passes.extend(DefaultPassBuilder.define_untyped_pipeline(self.state).passes)
        manager.passes.extend(DefaultPassBuilder.define_typed_pipeline(self.state).passes)
        manager.add_pass(CopyPropagation, "copy propagation, dead code")
        lowering = DefaultPassBuilder.define_nopython_lowering_pipeline(self.state)
        manager.passes.extend(lowering.passes)
        manager.finalize()
        return [manager]


@register_pass(mutates_CFG=True, analysis_only=False)
class CopyPropagation(FunctionPass):
    """The typed IR's copies propagated and its dead code removed, as the parallel
    pipeline does before it lowers (:func:`numba.core.ir_utils.simplify`)."""

    _name = "otlabel_copy_propagation"

    def __init__(self) -> None:
        FunctionPass.__init__(self)

    def run_pass(self, state: Any) -> bool:
        simplify(state.func_ir, state.typemap, state.calltypes, state.metadata)
        return True


def _drain(runs: queue.SimpleQueue[tuple[int, int]]) -> None:
    try:
        while True:
            runs.get_nowait()
    except queue.Empty:
        return


def _most_threads() -> int:
    """Numba's thread count at start (``NUMBA_NUM_THREADS``: the cores unless set)."""
    return int(getattr(numba.config, "NUMBA_NUM_THREADS", os.cpu_count() or 1))


_POOL: tuple[int, ThreadPoolExecutor] | None = None
_POOL_LOCK = threading.Lock()


def _pool() -> ThreadPoolExecutor:
    """The helper threads, made on first use (again in a forked child, which has none)."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None or _POOL[0] != os.getpid():
            size = max(1, _most_threads() - 1)  # the caller is one more
            _POOL = (os.getpid(), ThreadPoolExecutor(size, thread_name_prefix="otlabel"))
        return _POOL[1]
