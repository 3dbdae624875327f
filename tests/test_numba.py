"""The Numba backend gives the NumPy backend's answer, deterministically."""

from __future__ import annotations

import importlib.util
import warnings

import numpy as np
import pytest

import otlabel

numba = pytest.importorskip("numba")
from otlabel import kernels  # noqa: E402
from otlabel.kernels import _fastmath  # noqa: E402
from otlabel.kernels import numba as numba_module  # noqa: E402
from otlabel.kernels.numba import NumbaLogKernel  # noqa: E402
from otlabel.kernels.numba import dense as numba_dense  # noqa: E402
from otlabel.kernels.numba import sparse as numba_sparse  # noqa: E402
from otlabel.kernels.numba import sparse_log as numba_sparse_log  # noqa: E402
from otlabel.kernels.numba.common import Frame, RowTerms  # noqa: E402
from otlabel.kernels.numba.tasks import run_tasks, task_kernel  # noqa: E402


def both(scores, epsilon, **kwargs):
    kwargs.setdefault("tol", 1e-7)
    return (
        otlabel.assign(scores, epsilon, backend="numba", method="log", **kwargs),
        otlabel.assign(scores, epsilon, backend="numpy", method="log", **kwargs),
    )


@pytest.mark.parametrize("dtype, atol, tol", [(np.float64, 1e-11, 1e-7), (np.float32, 1e-5, 1e-5)])
@pytest.mark.parametrize("overrelaxation", [1.0, "auto"])
def test_numba_equals_numpy(rng, dtype, atol, tol, overrelaxation):
    scores = (rng.normal(size=(700, 9)) * 3).astype(dtype)
    a = rng.random(700) + 0.5
    b = rng.random(9) + 0.5
    fast, reference = both(
        scores,
        0.2,
        sample_weights=a,
        cluster_weights=b,
        overrelaxation=overrelaxation,
        return_plan=True,
        tol=tol,
    )
    assert fast.backend == "numba" and reference.backend == "numpy"
    # float32 arithmetic can move the adaptive weight's estimate: a pass or two
    assert abs(fast.n_iter - reference.n_iter) <= (0 if dtype == np.float64 else 3)
    np.testing.assert_allclose(fast.potential, reference.potential, atol=atol)
    np.testing.assert_allclose(fast.row_potential, reference.row_potential, atol=atol)
    np.testing.assert_allclose(fast.plan, reference.plan, rtol=1e-4, atol=1e-12)
    np.testing.assert_array_equal(fast.labels, reference.labels)


def test_numba_heads_and_warm_start_equal_numpy(rng):
    stack = rng.normal(size=(3, 400, 6)) * 2
    init = rng.normal(size=(3, 6))
    fast, reference = both(stack, 0.1, init=init, rounding="argmax")
    np.testing.assert_array_equal(fast.n_iter, reference.n_iter)
    np.testing.assert_allclose(fast.potential, reference.potential, atol=1e-11)
    np.testing.assert_array_equal(fast.labels, reference.labels)
    warm = otlabel.assign(stack, 0.1, backend="numba", init=fast.potential, tol=1e-7)
    assert np.all(warm.n_iter <= 2)


def test_numba_is_the_auto_backend_for_numpy_input(rng):
    assert otlabel.assign(rng.normal(size=(50, 3)), 0.5).backend == "numba"


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_repeated_runs_and_thread_counts_give_identical_bits(dtype):
    """float64: the log domain; float32: the subsample, the sparse stored kernel and
    the exact finish, their passes over-relaxed; 3 threads ask for more than there
    may be cores."""
    scores = otlabel.make_scores(5000, 40, kind="head", seed=5).astype(dtype)
    runs = [otlabel.sinkhorn(scores, 0.05, backend="numba", n_threads=t) for t in (None, 1, 2, 3)]
    runs.append(otlabel.sinkhorn(scores, 0.05, backend="numba"))
    for other in runs[1:]:
        assert other.n_iter == runs[0].n_iter
        np.testing.assert_array_equal(other.potential, runs[0].potential)
        np.testing.assert_array_equal(other.row_potential, runs[0].row_potential)


@pytest.mark.parametrize("n_threads", [1, 2, 3, None])
@pytest.mark.parametrize("n_tasks", [0, 1, 2, 7, 1000])
def test_run_tasks_runs_every_task_once(n_tasks, n_threads):
    counts = np.zeros(n_tasks, np.int64)
    run_tasks(n_threads, _count_tasks, n_tasks, counts)
    np.testing.assert_array_equal(counts, 1)


def test_run_tasks_raises_a_run_s_error_once_the_threads_are_done():
    """Task 0 raises (``error_model="numpy"`` makes no exception of a division by zero,
    so it asks for an index past the end): the error comes back to the caller, and
    the threads are free for the next call."""
    with pytest.raises(IndexError):
        run_tasks(2, _fail_at_zero, 80, np.zeros(80, np.int64))
    counts = np.zeros(80, np.int64)
    run_tasks(2, _count_tasks, counts.size, counts)
    np.testing.assert_array_equal(counts, 1)


@task_kernel(cache=False)
def _count_tasks(counts, first, last):
    for t in range(first, last):
        counts[t] += 1


@task_kernel(cache=False, boundscheck=True)
def _fail_at_zero(done, first, last):
    for t in range(first, last):
        done[t + done.size * (t == 0)] = 1


def test_starved_column_stays_finite():
    scores = np.zeros((2000, 3), dtype=np.float32)
    scores[:, 2] = -1000.0
    # |S|/eps = 1000 in float32: the exponent carries ~6e-5, so the default tol
    res = otlabel.sinkhorn(scores, 1.0, backend="numba", return_plan=True)
    assert res.converged and res.potential[2] - res.potential[0] == pytest.approx(1000, rel=1e-6)
    np.testing.assert_allclose(res.plan.sum(axis=0), 1 / 3, rtol=2e-4)


@pytest.mark.parametrize("shift_dtype", [np.float32, np.float64])
def test_shifted_max_equals_numpy_bit_for_bit(shift_dtype):
    """The maximum over integer keys of the bits is the floating-point maximum, in the
    precision of the shift: positive and negative rows, signed zeros, -inf, subnormals.
    Entries on a grid (inv_eps a power of two, quarters and 64ths) make every
    ``row * inv_eps + shift`` exact, so a fused multiply-add rounds as NumPy does."""
    rng = np.random.default_rng(3)
    inv_eps = shift_dtype(32.0)
    rows = [(rng.integers(-(2**16), 2**16, size=3001) / 64 * s).astype(np.float32) for s in (1, 8)]
    rows += [-np.abs(rows[0]) - np.float32(1.0), np.full(7, -np.inf, dtype=np.float32)]
    rows += [np.array([5.0], np.float32)]
    for row in rows:
        for shift in (np.zeros(row.size), rng.integers(-4000, 4000, size=row.size) / 4):
            shift = shift.astype(shift_dtype)
            expected = np.max(row * inv_eps + shift)  # numpy's max, in the shift's precision
            got = _fastmath.shifted_max(row, inv_eps, shift)
            assert got == expected and shift_dtype(got) == got  # exact, in that precision
    tiny = np.array([-0.0, 1e-42, -1e-42], dtype=np.float32)  # subnormals, no shift
    assert _fastmath.shifted_max(tiny, np.float32(1), np.zeros(3, np.float32)) == tiny[1]
    zeros = np.array([-0.0, 0.0, -0.0], dtype=np.float32)
    assert np.signbit(_fastmath.shifted_max(zeros, np.float32(1), np.zeros(3, np.float32))) == 0


def test_first_argmin_is_numpys_argmin():
    """The first index of the smallest, with ties, infinities and one element."""
    rng = np.random.default_rng(5)
    cases = [rng.random(3001), np.full(9, np.inf), np.array([2.0]), np.array([3.0, 1.0, 1.0])]
    cases += [np.round(rng.random(500) * 4), np.where(rng.random(700) < 0.5, np.inf, 7.0)]
    for values in cases:
        assert _fastmath.first_argmin(values) == np.argmin(values)


@pytest.mark.parametrize("dtype, floor, rtol", [(np.float32, -87, 3e-7), (np.float64, -708, 5e-16)])
def test_fast_exp_is_accurate_over_its_range(dtype, floor, rtol):
    @numba.njit
    def evaluate(x, out):
        for i in range(x.size):
            out[i] = _fastmath.exp_neg(x[i])

    x = np.concatenate([np.linspace(floor, 0, 200_001), [0.0, -1e-12, floor]]).astype(dtype)
    out = np.empty_like(x)
    evaluate(x, out)
    np.testing.assert_allclose(out, np.exp(x.astype(np.float64)), rtol=rtol, atol=0)
    below = np.array([floor - 50.0], dtype=dtype)
    evaluate(below, out[:1])
    assert out[0] == pytest.approx(np.exp(dtype(floor)), rel=rtol)  # clamped, not subnormal
    assert out[0] >= np.finfo(dtype).tiny


def test_kernel_sweeps_one_chunk_in_parallel_sub_blocks(rng):
    scores = rng.normal(size=(1500, 5))
    kernel = NumbaLogKernel(scores, np.full(1500, -np.log(1500)), 0.3, None)
    assert len(list(kernel.blocks())) == 1  # the loop sees one block; the kernel splits it


def test_missing_numba_is_a_clear_error(rng, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "numba" else real(name, *a)
    )
    monkeypatch.setattr(kernels, "_WARNED", set())
    with pytest.raises(ImportError, match=r"pip install numba"):
        otlabel.assign(rng.normal(size=(20, 3)), backend="numba")
    with pytest.warns(otlabel.BackendWarning, match="numba is not installed"):
        assert otlabel.assign(rng.normal(size=(20, 3)), 0.5).backend == "numpy"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # said once
        assert otlabel.assign(rng.normal(size=(20, 3)), 0.5).backend == "numpy"


@pytest.fixture(params=["dense", "sparse"])
def storage(request, monkeypatch):
    """Force the stored kernel dense or sparse (the choice goes by its density)."""
    monkeypatch.setattr(numba_sparse, "SPARSE_DENSITY", 1.0 if request.param == "sparse" else 0.0)
    return request.param


@pytest.mark.parametrize("tol", [1e-4, 1e-6, 1e-9])
@pytest.mark.parametrize("overrelaxation", [1.0, "auto"])
def test_stored_kernel_solve_reports_the_true_error_of_its_plan(overrelaxation, tol, storage):
    """The float32 stored kernel does the work; the error returned is that of the plan
    rebuilt in float64 from the scores and the returned potentials, at any tol."""
    scores = otlabel.make_scores(3000, 30, kind="sela", seed=4)
    res = otlabel.sinkhorn(scores, 0.05, tol=tol, overrelaxation=overrelaxation)
    assert res.method == "scaling" and res.converged  # the hybrid did switch
    assert res.phases["stored"] > 0 and res.phases["finish"] >= 1
    plan = np.exp((scores.astype(np.float64) + res.row_potential[:, None] + res.potential) / 0.05)
    true_error = np.abs(plan.sum(axis=1) - 1 / 3000).sum() + np.abs(plan.sum(axis=0) - 1 / 30).sum()
    assert true_error <= tol
    # float64 summation of 90 000 entries: ~1e-14 of noise in either figure
    assert res.error == pytest.approx(true_error, rel=1e-6, abs=1e-13)


@pytest.mark.parametrize("overwrite", [False, True])
def test_hybrid_gives_the_exact_optimum(overwrite, storage):
    """Balanced labels are the float64 solve's exact optimum, and the stored kernel,
    dense or sparse, is never built in place of the scores: a dense one flushes
    entries whose scores could not be given back."""
    scores = otlabel.make_scores(4000, 40, kind="head", seed=6)
    exact = otlabel.assign(scores.astype(np.float64), 0.04, tol=1e-9, backend="numpy")
    work = scores.copy()
    fast = otlabel.assign(work, 0.04, overwrite_scores=overwrite)
    assert fast.method == "scaling" and fast.gap <= 1e-9
    np.testing.assert_allclose(fast.potential, exact.potential, atol=5e-4)
    np.testing.assert_array_equal(work, scores)
    np.testing.assert_array_equal(fast.labels, exact.labels)


@pytest.mark.parametrize("overrelaxation", [1.0, "auto"])
def test_sparse_stored_kernel_equals_the_dense_one(rng, monkeypatch, overrelaxation):
    """Same stored values, only the zeros skipped: the same iterates up to float32 sums."""
    scores = otlabel.make_scores(5000, 60, kind="head", seed=3)
    results = {}
    for storage, density in (("dense", 0.0), ("sparse", 1.0)):
        monkeypatch.setattr(numba_sparse, "SPARSE_DENSITY", density)
        results[storage] = otlabel.assign(
            scores, 0.04, tol=1e-6, overrelaxation=overrelaxation, n_threads=2
        )
    dense, sparse = results["dense"], results["sparse"]
    assert dense.method == sparse.method == "scaling"
    assert abs(int(dense.n_iter) - int(sparse.n_iter)) <= 1
    np.testing.assert_allclose(sparse.potential, dense.potential, atol=1e-6)
    np.testing.assert_array_equal(sparse.labels, dense.labels)
    again = otlabel.assign(scores, 0.04, tol=1e-6, overrelaxation=overrelaxation, n_threads=2)
    np.testing.assert_array_equal(again.potential, sparse.potential)  # deterministic


@pytest.mark.parametrize("stride", [1, 2, 7, 1000])
def test_subsample_rows_are_numpys_strided_rows(stride):
    """The parallel row copy gives ``scores[::stride]``, contiguous; other layouts too."""
    from otlabel.kernels.numba import NumbaBackend

    scores = np.random.default_rng(stride).normal(size=(999, 13)).astype(np.float32)
    for source in (scores, np.asfortranarray(scores), scores[:, ::2]):
        rows = NumbaBackend().subsample_rows(source, stride)
        np.testing.assert_array_equal(rows, source[::stride])
        assert rows.flags.c_contiguous and rows.dtype == source.dtype


def test_big_endian_scores_take_the_subsample_start_and_give_the_same_labels():
    """Scores in non-native byte order (a big-endian file, say) are read once into native
    order, then solved as native ones are: subsample start, stored kernel, same labels."""
    scores = otlabel.make_scores(50_000, 10, kind="head", seed=0)
    native = otlabel.assign(scores, 0.04)
    swapped = otlabel.assign(scores.astype(">f4"), 0.04)
    assert native.start == swapped.start == "subsample"
    np.testing.assert_array_equal(swapped.labels, native.labels)
    np.testing.assert_array_equal(swapped.potential, native.potential)


@pytest.mark.parametrize("relaxed", [False, True])
@pytest.mark.parametrize("grouped", [False, True])
def test_one_dense_stored_pass_equals_numpy(relaxed, grouped):
    """One pass on the dense stored kernel over two tasks (the second a part one whose
    last rows do not fill a group of ROW_GROUP, its column partials flushed mid-way),
    rows short enough to go one by one or long enough to go in groups:
    each row's ``f`` (score units, over-relaxed or not), the row error and the column
    mass, as NumPy computes them in float64; a row whose sum leaves [e^-ABSORB,
    e^ABSORB] is rescaled in place before its group's columns are summed, and counted."""
    rng = np.random.default_rng(7)
    n_rows = numba_module.TASK_ROWS + 2 * numba_dense.FLUSH_ROWS + 3
    n_cols = numba_dense.GROUP_COLS + 5 if grouped else 37
    epsilon, omega = 0.25, 1.4
    kernel = rng.random((n_rows, n_cols), dtype=np.float32) + np.float32(0.01)
    kernel[5] *= np.float32(1e10)  # its row sum is past e^ABSORB
    v = rng.random(n_cols, dtype=np.float32)
    row_sum = kernel.astype(np.float64) @ v  # (N,) before the pass rescales row 5
    a = rng.random(n_rows) + 0.5
    f_ref, previous = rng.normal(size=n_rows), rng.normal(size=n_rows)
    exact = np.log(a) - np.log(row_sum) + f_ref  # f / eps
    new = (1 - omega) * previous / epsilon + omega * exact if relaxed else exact
    factor = a * np.exp(new - exact) / row_sum  # (N,)
    expected_col = kernel.astype(np.float64).T @ factor  # (K,)
    n_tasks = -(-n_rows // numba_module.TASK_ROWS)
    row_potential, col_sum = np.empty(n_rows), np.empty((n_tasks, n_cols))
    task_stats, q_scale = np.zeros((n_tasks, 2)), float(n_rows * n_cols)
    terms = RowTerms(
        np.log(a), a, previous if relaxed else np.zeros(1), epsilon, omega if relaxed else 1.0,
        relaxed, np.zeros(1), False,
    )  # fmt: skip
    frame = Frame(row_potential, col_sum, np.empty((0, n_cols)), task_stats)
    run_tasks(2, numba_dense.dense_sweep, n_tasks, kernel, v, f_ref, q_scale, terms, frame)
    np.testing.assert_allclose(row_potential, epsilon * new, rtol=0, atol=1e-12)
    # float32 partials flushed every FLUSH_ROWS rows: ~4e-8 relative; unflushed ~3e-6
    np.testing.assert_allclose(col_sum.sum(axis=0) / q_scale, expected_col, rtol=5e-7)
    expected_error = np.sum(a * np.abs(np.expm1(new - exact)))
    np.testing.assert_allclose(task_stats[:, 0].sum(), expected_error, rtol=1e-9, atol=1e-300)
    assert task_stats[:, 1].tolist() == [1.0, 0.0]  # row 5 absorbed, in the first task
    assert np.isclose(kernel[5].astype(np.float64) @ v, 1.0, rtol=1e-6)


@pytest.mark.parametrize("relaxed", [False, True])
def test_one_sparse_stored_pass_equals_numpy(relaxed):
    """One pass on the sparse stored kernel over two tasks (the second a part one),
    rows of 1 to 40 entries: each row's ``f`` (over-relaxed or not), its row error
    and the column mass, as NumPy computes them in float64 from the same entries; a
    row whose sum leaves [e^-ABSORB, e^ABSORB] is rescaled in place and counted."""
    rng = np.random.default_rng(11)
    n_rows, n_cols, epsilon, omega = numba_module.TASK_ROWS + 77, 53, 0.25, 1.4
    counts = rng.integers(1, 41, size=n_rows)
    counts[:300] = 1  # runs of one-entry rows
    indptr = np.concatenate([[0], np.cumsum(counts)])
    rows = np.repeat(np.arange(n_rows), counts)
    indices = np.concatenate([np.sort(rng.choice(n_cols, c, replace=False)) for c in counts])
    values = (rng.random(indptr[-1]) + 0.01).astype(np.float32)
    values[indptr[9] : indptr[10]] *= np.float32(1e10)  # row 9's sum is past e^ABSORB
    v = rng.random(n_cols, dtype=np.float32)
    dense = np.zeros((n_rows, n_cols))
    dense[rows, indices] = values
    row_sum = dense @ v  # (N,) before the pass rescales row 9
    a = rng.random(n_rows) + 0.5
    f_ref, previous = rng.normal(size=n_rows), rng.normal(size=n_rows)
    exact = np.log(a) - np.log(row_sum) + f_ref  # f / eps
    new = (1 - omega) * previous / epsilon + omega * exact if relaxed else exact
    factor = a * np.exp(new - exact) / row_sum  # (N,)
    n_tasks = -(-n_rows // numba_module.TASK_ROWS)
    row_potential, col_sum = np.empty(n_rows), np.empty((n_tasks, n_cols))
    task_stats, q_scale = np.zeros((n_tasks, 2)), float(n_rows * n_cols)
    task_rows = (rows % numba_module.TASK_ROWS).astype(np.int16)
    terms = RowTerms(
        np.log(a), a, previous if relaxed else np.zeros(1), epsilon, omega if relaxed else 1.0,
        relaxed, np.zeros(1), False,
    )  # fmt: skip
    frame = Frame(row_potential, col_sum, np.empty((0, n_cols)), task_stats)
    entries = (indptr, indices.astype(np.int16), values, task_rows)
    run_tasks(2, numba_sparse.sparse_sweep, n_tasks, *entries, v, f_ref, q_scale, terms, frame)
    np.testing.assert_allclose(row_potential, epsilon * new, rtol=0, atol=1e-12)
    np.testing.assert_allclose(col_sum.sum(axis=0) / q_scale, dense.T @ factor, rtol=1e-5)
    expected_error = np.sum(a * np.abs(np.expm1(new - exact)))
    np.testing.assert_allclose(task_stats[:, 0].sum(), expected_error, rtol=1e-9, atol=1e-300)
    assert task_stats[:, 1].tolist() == [1.0, 0.0]  # row 9 absorbed, in the first task
    row_9 = slice(indptr[9], indptr[10])
    assert np.isclose(values[row_9].astype(np.float64) @ v[indices[row_9]], 1.0, rtol=1e-6)


def test_sparse_kernel_holds_only_the_entries_above_the_flush(monkeypatch):
    from otlabel.kernels.numba import NumbaKernel, SparseKernel

    monkeypatch.setattr(numba_sparse, "SPARSE_DENSITY", 1.0)
    scores = otlabel.make_scores(2000, 50, kind="head", seed=1)
    potential = otlabel.sinkhorn(scores, 0.04, tol=1e-3).potential
    log_a = np.full(2000, -np.log(2000))
    kernel = NumbaKernel(scores, log_a, 0.04, None, store_at_start=True)
    kernel.column_state(potential)
    assert isinstance(kernel.stored, SparseKernel)
    dense = np.exp(scores / 0.04 + kernel.g_ref + kernel.f_ref[:, None]).astype(np.float32)
    kept = dense > np.float32(np.exp(numba_module.FLUSH_EXPONENT))
    # the kernel works out exponents ~1e2 in float32: 1e-5 relative, and at the
    # threshold a handful of entries may fall on either side of it
    assert abs(kernel.stored.values.size - kept.sum()) <= 1e-3 * kept.sum()
    assert kept.sum() < 0.5 * scores.size
    rows = np.repeat(np.arange(2000), np.diff(kernel.stored.indptr))
    np.testing.assert_allclose(kernel.stored.values, dense[rows, kernel.stored.indices], rtol=1e-4)


def test_sparse_fill_keeps_what_the_dense_kernel_keeps_with_long_and_short_runs():
    """A row is tested in long runs of columns when the row before it kept few entries,
    in short ones when it kept many, and a run that keeps some in parts (K = 700:
    no run length divides it).  Rows that keep few and rows that keep many, each
    after either kind: every path gives the dense kernel's values at every kept
    position, and every entry the dense kernel keeps, in column order."""
    rng = np.random.default_rng(4)
    n_rows, n_cols = 2 * numba_sparse.COLLECT_ROWS + 5, 700  # two tasks and a part one
    few = (np.arange(n_rows) // 2) % 2 == 0  # few, few, many, many, ...
    spread = np.where(few, 400.0, 0.3)[:, None]
    scores = (spread * rng.normal(size=(n_rows, n_cols))).astype(np.float32)
    g_ref = rng.normal(size=n_cols).astype(np.float32)
    dense, f_dense = np.empty_like(scores), np.empty(n_rows)
    run_tasks(2, numba_dense.build_dense, n_rows, scores, g_ref, 1.0, dense, f_dense)
    f_ref, counts = np.empty(n_rows), np.zeros(n_rows + 1, dtype=np.int64)
    stage = (
        np.empty(n_rows * n_cols, dtype=np.int16),
        np.empty(n_rows * n_cols, dtype=np.float32),
        np.empty(n_rows * n_cols, dtype=np.float32),
    )
    n_tasks = -(-n_rows // numba_sparse.COLLECT_ROWS)
    collect = (scores, g_ref, 1.0, f_ref, counts[1:], *stage)
    run_tasks(2, numba_sparse._collect_kept, n_tasks, *collect)
    np.testing.assert_array_equal(f_ref, f_dense)
    np.testing.assert_array_equal(counts[1:], (dense > 0).sum(axis=1))
    long_after = counts[1:-1] * numba_sparse.LONG_RUN < n_cols  # the path of the next row
    assert long_after[few[:-1]].all() and not long_after[~few[:-1]].any()  # both kinds
    indptr = np.cumsum(counts)
    indices = np.empty(indptr[-1], dtype=np.int16)
    values = np.empty(indptr[-1], dtype=np.float32)
    kept_scores = np.empty(indptr[-1], dtype=np.float32)
    task_rows = np.empty(indptr[-1], dtype=np.int16)
    first_row = numba_module.TASK_ROWS - 5  # the block's rows cross into the next pass task
    gather = (indptr, n_cols, first_row, *stage, indices, values, kept_scores, task_rows)
    run_tasks(2, numba_sparse._gather_kept, n_rows, *gather)
    rows = np.repeat(np.arange(n_rows), np.diff(indptr))
    np.testing.assert_array_equal(task_rows, (first_row + rows) % numba_module.TASK_ROWS)
    np.testing.assert_array_equal(values, dense[rows, indices])
    np.testing.assert_array_equal(kept_scores, scores[rows, indices])
    held = np.zeros(scores.shape, dtype=bool)
    held[rows, indices] = True
    np.testing.assert_array_equal(held, dense > 0)  # exactly the entries it keeps
    assert np.all(np.diff(indices)[np.diff(rows) == 0] > 0)  # in column order


def test_sparse_kernel_is_built_in_blocks_identically(monkeypatch):
    """The kernel is collected and gathered block by block in one read: blocks of one
    sub-block of rows give the very same arrays as one block of everything; and past
    SPARSE_DENSITY the read stops and the kernel is dense."""
    from otlabel.kernels.numba import NumbaKernel, SparseKernel

    scores = otlabel.make_scores(3000, 40, kind="head", seed=2)
    potential = otlabel.sinkhorn(scores, 0.04, tol=1e-3).potential
    log_a = np.full(3000, -np.log(3000))
    built = {}
    for name, block_bytes in (("one block", 1 << 40), ("many blocks", 1)):
        monkeypatch.setattr(numba_sparse, "BUILD_BYTES", block_bytes)
        kernel = NumbaKernel(scores, log_a, 0.04, None, store_at_start=True)
        kernel.column_state(potential)
        built[name] = kernel
    one, many = built["one block"].stored, built["many blocks"].stored
    assert isinstance(one, SparseKernel) and isinstance(many, SparseKernel)
    assert 0 < many.values.size < 0.1 * scores.size and many.indptr[-1] == many.values.size
    for field in ("indptr", "indices", "values", "scores"):
        np.testing.assert_array_equal(getattr(many, field), getattr(one, field))
    np.testing.assert_array_equal(built["many blocks"].f_ref, built["one block"].f_ref)
    density = one.values.size / scores.size
    monkeypatch.setattr(numba_sparse, "SPARSE_DENSITY", density / 2)  # too dense now
    kernel = NumbaKernel(scores, log_a, 0.04, None, store_at_start=True)
    kernel.column_state(potential)
    assert isinstance(kernel.stored, np.ndarray) and kernel.stored.shape == scores.shape
    np.testing.assert_array_equal(kernel.f_ref, built["one block"].f_ref)


@pytest.mark.parametrize("seed", range(4))
def test_numba_rounding_passes_equal_numpy(seed):
    """Same labels, move costs and certificate from either pass implementation."""
    from otlabel.kernels.numba.rounding import NumbaPasses
    from otlabel.rounding import NumpyPasses, argmax_labels, balanced_labels

    rng = np.random.default_rng(seed)
    for trial in range(6):
        n, k = int(rng.integers(50, 3000)), int(rng.integers(2, 40))
        dtype = np.float32 if trial % 2 else np.float64
        scores = (rng.normal(size=(n, k)) * rng.choice([0.1, 3.0])).astype(dtype)
        if trial % 3 == 0:
            scores = np.round(scores)  # exact ties
        weights = rng.random(k) + 0.3
        weights /= weights.sum()
        start = rng.normal(size=k) * 0.1
        rows = int(rng.integers(7, 700))
        results = [
            balanced_labels(
                scores, start, otlabel.count_bounds(n, weights), rows_per_block=rows, passes=passes
            )
            for passes in (NumpyPasses(), NumbaPasses())
        ]
        np.testing.assert_array_equal(results[0].labels, results[1].labels)
        np.testing.assert_array_equal(results[0].prices, results[1].prices)
        assert results[1].gap == pytest.approx(results[0].gap, abs=1e-12)
        np.testing.assert_array_equal(
            argmax_labels(scores, start, rows, NumbaPasses()),
            argmax_labels(scores, start, rows, NumpyPasses()),
        )


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_margin_kernel_gives_the_argmax_and_the_gap_to_the_second_best(dtype):
    """On either side of the width where the kernel switches from one scan to
    vectorised scans: NumPy's argmax of the scores plus the dual (the first of
    ties), and the best less the second best (0 on a tie, inf for one column),
    the best in every position."""
    from otlabel.kernels.numba.rounding import MARGIN_SCAN_COLUMNS, margins_on_this_thread

    rng = np.random.default_rng(6)
    widths = (1, 2, 3, MARGIN_SCAN_COLUMNS, MARGIN_SCAN_COLUMNS + 1, 2 * MARGIN_SCAN_COLUMNS)
    for n_cols in widths:
        scores = np.round(rng.normal(size=(500, n_cols)) * 2).astype(dtype)  # many ties
        scores[: min(n_cols, 500), :] = -10.0
        for position in range(min(n_cols, 500)):  # the best first, last, between
            scores[position, position] = 10.0
        potential = np.round(rng.normal(size=n_cols))
        shifted = scores.astype(np.float64) + potential
        labels, margins = np.empty(500, np.int64), np.empty(500)
        margins_on_this_thread(scores, potential, labels, margins)
        expected = np.argmax(shifted, axis=1)
        np.testing.assert_array_equal(labels, expected)
        others = shifted.copy()
        others[np.arange(500), expected] = -np.inf
        np.testing.assert_array_equal(margins, shifted.max(axis=1) - others.max(axis=1))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_argmax_kernel_takes_the_first_of_ties_at_every_width(dtype):
    """On either side of the width where the kernel switches from two vectorised scans
    to one scan of running maxima: NumPy's argmax of the scores plus the dual, the
    first of exact ties (0.0 and -0.0 among them) and rows of forbidden pairs
    (-inf, a whole row of them too)."""
    from otlabel.kernels.numba.rounding import SCAN_COLUMNS, NumbaPasses

    rng = np.random.default_rng(4)
    for n_cols in (1, 2, SCAN_COLUMNS - 1, SCAN_COLUMNS, SCAN_COLUMNS + 1, 3 * SCAN_COLUMNS):
        scores = np.round(rng.normal(size=(400, n_cols)) * 2).astype(dtype)  # many ties
        scores[rng.random(scores.shape) < 0.1] = -np.inf
        scores[5] = -np.inf
        scores[6] = 0.0
        scores[6, -1] = -0.0
        scores[7, ::-1] = np.arange(n_cols)  # the maximum in the first column
        potential = np.round(rng.normal(size=n_cols))
        potential[-1] = 0.0
        expected = np.argmax(scores.astype(np.float64) + potential, axis=1)
        np.testing.assert_array_equal(NumbaPasses.argmax(scores, potential), expected)


@pytest.mark.parametrize("with_virtual", [False, True])
def test_move_costs_and_their_samples_equal_a_brute_force(with_virtual):
    """``C[k, l] = min_{i in k} (S_ik - S_il)`` and the first sample (in row order) that
    attains it, rows taken four at a time: clusters of every size modulo four, exact
    ties, the virtual column of partial mass (its own cluster too)."""
    from otlabel.kernels.numba.rounding import cluster_min_loss_args

    rng = np.random.default_rng(11)
    n, k = 203, 13
    block = (np.round(rng.normal(size=(n, k)) * 2) / 2).astype(np.float32)  # many ties
    virtual = np.round(rng.normal(size=n) * 2) / 2 if with_virtual else np.empty(0)
    n_clusters = k + with_virtual
    labels = rng.integers(0, n_clusters, n)
    labels[:3] = 0  # cluster 0 first
    order = np.argsort(labels, kind="stable")
    clusters, starts = np.unique(labels[order], return_index=True)
    assert {int(size) % 4 for size in np.bincount(labels)} == {0, 1, 2, 3} or n_clusters < 4
    bounds = np.append(starts, n)
    costs = np.full((n_clusters, n_clusters), np.inf)
    args = np.full((n_clusters, n_clusters), -1, dtype=np.int64)
    inputs = (block, virtual, order, bounds, clusters, costs, args, 1000)
    run_tasks(2, cluster_min_loss_args, clusters.size, *inputs)
    full = block.astype(np.float64)
    if with_virtual:
        full = np.column_stack([full, virtual])
    for cluster in range(n_clusters):
        members = np.flatnonzero(labels == cluster)  # row order
        losses = full[members, cluster][:, None] - full[members]  # (members, clusters)
        np.testing.assert_array_equal(costs[cluster], losses.min(axis=0))
        np.testing.assert_array_equal(args[cluster], 1000 + members[losses.argmin(axis=0)])


def test_numba_repair_handles_dummies_and_bad_starts():
    """Many moves from a zero start, uneven weights (dummies): same result as NumPy."""
    from otlabel.kernels.numba.rounding import NumbaPasses
    from otlabel.rounding import NumpyPasses, balanced_labels

    rng = np.random.default_rng(11)
    scores = rng.normal(size=(997, 13)) * 2
    scores[:, 0] += 3  # cluster 0 is everybody's favourite: a long repair
    weights = rng.random(13) + 0.2
    weights /= weights.sum()
    results = [
        balanced_labels(
            scores,
            np.zeros(13),
            otlabel.count_bounds(997, weights),
            rows_per_block=100,
            passes=passes,
        )
        for passes in (NumpyPasses(), NumbaPasses())
    ]
    assert results[0].n_moves > 300
    np.testing.assert_array_equal(results[0].labels, results[1].labels)
    np.testing.assert_array_equal(results[0].prices, results[1].prices)
    lower, upper = otlabel.count_bounds(997, weights)
    counts = np.bincount(results[1].labels, minlength=13)
    assert np.all((counts >= lower) & (counts <= upper))


@pytest.mark.parametrize("kind", ["head", "sela"])
def test_float32_reaches_tol_1e9_with_its_true_error(kind):
    """At a size where the stored kernel and the subsample start are used (N >= 40 000),
    float32 scores reach tol = 1e-9, and the error returned is the float64 one."""
    n, k = 40_000, 50
    scores = otlabel.make_scores(n, k, kind=kind, seed=7)
    res = otlabel.sinkhorn(scores, 0.04, tol=1e-9)
    assert res.converged and res.start == "subsample" and res.phases["stored"] > 0
    plan = np.exp((scores.astype(np.float64) + res.row_potential[:, None] + res.potential) / 0.04)
    true_error = np.abs(plan.sum(axis=1) - 1 / n).sum() + np.abs(plan.sum(axis=0) - 1 / k).sum()
    assert true_error <= 1e-9
    assert res.error == pytest.approx(true_error, rel=0.1)


def _true_error(scores, res):
    plan = np.exp((scores.astype(np.float64) + res.row_potential[:, None] + res.potential) / 0.04)
    n, k = scores.shape
    return np.abs(plan.sum(axis=1) - 1 / n).sum() + np.abs(plan.sum(axis=0) - 1 / k).sum()


@pytest.mark.parametrize("seed", [1, 2])
@pytest.mark.parametrize("start", ["zeros", "other problem", "random"])
def test_warm_start_far_from_the_solution_converges_with_its_true_error(seed, start):
    """A warm start puts the stored kernel at a potential far from the answer: some
    clusters keep no entry at all (their mass would be 0 and their update +inf),
    and the flushed entries become significant as the potential moves.  The solve
    still reaches tol, within max_iter, with the error of its returned plan (this
    warm start from another problem's potential once looped for ever)."""
    scores = otlabel.make_scores(2000, 50, kind="sela", seed=seed)
    init = {
        "zeros": np.zeros(50),
        "other problem": otlabel.assign(
            otlabel.make_scores(2000, 50, kind="sela", seed=seed + 10), 0.04
        ).potential,
        "random": np.random.default_rng(seed).normal(0.0, 3.0, 50),
    }[start]
    res = otlabel.assign(scores, 0.04, init=init, max_iter=3000)
    assert res.converged and res.start == "given" and np.all(np.isfinite(res.potential))
    assert res.error == pytest.approx(_true_error(scores, res), rel=1e-6)
    cold = otlabel.assign(scores.astype(np.float64), 0.04, tol=1e-9, backend="numpy")
    np.testing.assert_array_equal(res.labels, cold.labels)


def test_sparse_finisher_without_entries_in_a_column_goes_on_over_every_entry(monkeypatch):
    """A sparse kernel built where one cluster keeps no entry: the exact finish on
    it cannot update that cluster, so it reads every entry of the scores instead."""
    from otlabel.solver import RowUpdate, sweep_all

    monkeypatch.setattr(numba_sparse, "SPARSE_DENSITY", 1.0)  # sparse at any density
    scores = otlabel.make_scores(500, 8, kind="head", seed=3)
    log_a = np.full(500, -np.log(500))
    potential = np.zeros(8)
    potential[5] = -(np.ptp(scores) + 100 * 0.04)  # 100 eps below any row's best: flushed
    kernel = numba_module.NumbaKernel(scores, log_a, 0.04, None)
    finisher = kernel.finisher(potential)
    assert finisher is not None and not np.any(finisher.stored.indices == 5)
    dense = numba_module.NumbaLogKernel(scores, log_a, 0.04, None, precise=True)
    state = potential / 0.04
    swept = finisher.sweep(finisher.stored, slice(0, 500), state, RowUpdate(None, 1.0, None))
    f, columns, _ = sweep_all(dense, state, RowUpdate(None, 1.0, None))
    np.testing.assert_allclose(swept.row_potential, f, rtol=1e-12)
    np.testing.assert_allclose(swept.columns.log_mass(), columns.log_mass(), rtol=1e-12)
    assert np.isfinite(columns.log_mass()[5]) and finisher.dense is not None


@pytest.mark.parametrize("rounding", ["argmax", "balanced"])
def test_labels_start_from_the_sparse_kernels_argmax_without_a_read(monkeypatch, rounding):
    """The argmax labels come from the sparse kernel's kept entries (no read of the
    scores) and equal a float64 read of every entry; far from where the entries
    were chosen it reads."""
    from otlabel.kernels.numba.rounding import NumbaPasses

    monkeypatch.setattr(numba_sparse, "SPARSE_DENSITY", 1.0)
    scores = otlabel.make_scores(3000, 40, kind="head", seed=5)
    reads = []
    dense_argmax = NumbaPasses.argmax
    monkeypatch.setattr(NumbaPasses, "argmax", lambda *args: reads.append(1) or dense_argmax(*args))
    res = otlabel.assign(scores, 0.04, rounding=rounding, tol=1e-6)
    assert res.phases["stored"] > 0 and reads == []  # no read of the scores for it
    if rounding == "argmax":
        expected = np.argmax(scores.astype(np.float64) + res.potential, axis=1)
        np.testing.assert_array_equal(res.labels, expected)
    else:
        exact = otlabel.assign(scores.astype(np.float64), 0.04, tol=1e-9, backend="numpy")
        np.testing.assert_array_equal(np.sort(res.counts), np.sort(exact.counts))
        assert res.gap <= 1e-9

    log_a = np.full(3000, -np.log(3000))
    kernel = numba_module.NumbaKernel(scores, log_a, 0.04, None)
    finisher = kernel.finisher(res.potential)
    np.testing.assert_array_equal(
        finisher.argmax(res.potential), np.argmax(scores.astype(np.float64) + res.potential, 1)
    )
    far = res.potential.copy()
    far[0] += 60 * 0.04  # the kept set no longer certifies the argmax
    assert finisher.argmax(far) is None


def test_sparse_argmax_takes_the_first_of_tied_entries():
    """As np.argmax: on a tie the lowest column wins, whatever the entries kept."""
    dense = np.array([[1.0, 3.0, 3.0, 0.0], [2.0, 2.0, 2.0, 2.0], [0.0, 0.0, 5.0, 5.0]])
    potential = np.array([0.0, 0.0, 0.0, 0.0])
    kept = dense > 0.5  # row 2 keeps columns 2 and 3 only
    indptr = np.concatenate([[0], np.cumsum(kept.sum(axis=1))])
    rows, cols = np.nonzero(kept)
    labels = np.empty(3, dtype=np.int64)
    entries = (indptr, cols.astype(np.int16), dense[rows, cols].astype(np.float32))
    run_tasks(2, numba_sparse_log._sparse_argmax, labels.size, *entries, potential, labels)
    np.testing.assert_array_equal(labels, np.argmax(dense + potential, axis=1))
    np.testing.assert_array_equal(labels, [1, 0, 2])


@pytest.mark.parametrize(
    ("n_cols", "tol", "drift"), [(3000, 1e-4, 40.0), (30, 1e-9, 33.6), (3000, 1e-12, 22.06)]
)
def test_rebuild_drift_keeps_the_dropped_mass_below_a_tenth_of_tol(n_cols, tol, drift):
    limit = numba_module.rebuild_drift(n_cols, tol)
    assert limit == pytest.approx(drift, abs=0.05)
    dropped = n_cols * np.exp(numba_module.FLUSH_EXPONENT + limit)  # a row's, of its mass
    assert dropped <= tol / 10 * (1 + 1e-9) or limit == 20.0
    assert numba_module.rebuild_drift(3000, 1e-30) == 20.0  # never below


def _subsample_start(scores, epsilon):
    """The subsample start that ``assign`` takes on ``scores``."""
    from otlabel import initializers
    from otlabel.problem import build_problem

    problem = build_problem(scores, epsilon)
    head, options = problem.heads[0], problem.options
    stride = initializers.subsample_stride(*scores.shape)
    assert stride > 1
    return initializers.subsample_start(head, options, stride)


def test_subsample_start_builds_a_sparse_kernel_and_lands_where_the_log_domain_does(
    monkeypatch,
):
    """The subsample's solve stores its sparse kernel once the error is below
    SUBSAMPLE_SWITCH_ERROR and rebuilds it as the potential moves: the same passes
    and the same potential, to float32 rounding, as the log domain throughout."""
    from otlabel.kernels.numba import NumbaBackend, NumbaKernel, SparseKernel
    from otlabel.kernels.reference import ReferenceBackend

    scores = otlabel.make_scores(50_000, 200, kind="sela", seed=4)
    kernels_made, stored = [], []
    make = NumbaBackend.subsample_kernel

    def spy(self, *args, **kwargs):
        kernels_made.append(make(self, *args, **kwargs))
        return kernels_made[-1]

    store = NumbaKernel._store

    def store_spy(self, g, **kwargs):
        store(self, g, **kwargs)
        stored.append(self.stored)

    monkeypatch.setattr(NumbaBackend, "subsample_kernel", spy)
    monkeypatch.setattr(NumbaKernel, "_store", store_spy)
    fast = _subsample_start(scores, 0.04)
    assert len(kernels_made) == 1 and isinstance(kernels_made[0], NumbaKernel)
    assert len(stored) >= 2 and all(isinstance(k, SparseKernel) for k in stored)  # rebuilt
    assert kernels_made[0].method == "scaling"
    monkeypatch.setattr(NumbaBackend, "subsample_kernel", ReferenceBackend.subsample_kernel)
    log = _subsample_start(scores, 0.04)
    assert abs(fast.passes - log.passes) <= 2 and log.passes > 5  # float32 vs float64
    difference = (fast.potential - fast.potential.mean()) - (log.potential - log.potential.mean())
    assert np.abs(difference).max() / 0.04 < 1e-3


@pytest.mark.parametrize("n_starved", [1, 3])
def test_subsample_start_goes_on_after_its_stored_kernel_starves_a_cluster(monkeypatch, n_starved):
    """A stored kernel that keeps no entry of a cluster makes the iterate non-finite:
    the subsample's solve goes on from the last finite potential with a new kernel
    (log passes, then a stored kernel again), at most STARVED_RETRIES times, then in
    the log domain; it reaches its tolerance (float64 error recomputed), without a
    warning."""
    from otlabel import initializers
    from otlabel.kernels.numba import NumbaBackend, NumbaKernel

    assert initializers.STARVED_RETRIES == 2
    scores = otlabel.make_scores(50_000, 200, kind="sela", seed=4)
    store, starved, made = NumbaKernel._store, [], []
    make = NumbaBackend.subsample_kernel

    def spy(self, *args, **kwargs):
        made.append(make(self, *args, **kwargs))
        return made[-1]

    def starving_store(self, g, **kwargs):
        store(self, g, **kwargs)
        if len(starved) < n_starved:  # this kernel keeps no entry of cluster 7
            self.stored.values[self.stored.indices == 7] = 0.0
            starved.append(self)

    monkeypatch.setattr(NumbaBackend, "subsample_kernel", spy)
    monkeypatch.setattr(NumbaKernel, "_store", starving_store)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        start = _subsample_start(scores, 0.04)
    assert [id(kernel) for kernel in starved] == [id(kernel) for kernel in made[:n_starved]]
    if n_starved <= initializers.STARVED_RETRIES:  # the last try stored a kernel
        assert len(made) == n_starved + 1 and made[-1].method == "scaling"
    else:  # the tries ran out: the log domain
        assert len(made) == initializers.STARVED_RETRIES + 1
    stride = initializers.subsample_stride(*scores.shape)
    with pytest.warns(otlabel.ConvergenceWarning):  # one pass: its error, exactly
        check = otlabel.sinkhorn(
            scores[::stride], 0.04, init=start.potential, backend="numpy", max_iter=1, tol=1e-12
        )
    assert check.errors[0] <= initializers.SUBSAMPLE_TOL


@pytest.mark.parametrize("overrelaxation", ["auto", 1.0, 1.5])
def test_main_solve_takes_the_subsample_starts_overrelaxation_weight(monkeypatch, overrelaxation):
    """With ``overrelaxation="auto"`` the main solve takes the weight the subsample's
    solve settled on (same problem, fewer rows) instead of warming up again; a weight
    the caller gave is kept everywhere."""
    from otlabel import solver

    scores = otlabel.make_scores(50_000, 200, kind="sela", seed=4)
    start = _subsample_start(scores, 0.04)
    assert 1.0 < start.weight <= solver.OverRelaxation.MAX_WEIGHT
    weights = []
    init = solver.OverRelaxation.__init__

    def spy(self, omega, weight=None):
        weights.append(omega if weight is None else weight)
        init(self, omega, weight)

    monkeypatch.setattr(solver.OverRelaxation, "__init__", spy)
    res = otlabel.assign(scores, 0.04, overrelaxation=overrelaxation)
    assert res.start == "subsample" and res.converged
    subsample, main = weights[0], weights[1:]
    assert subsample == overrelaxation
    expected = start.weight if overrelaxation == "auto" else overrelaxation
    assert main and all(weight == expected for weight in main)


@pytest.mark.parametrize("offset", [1e4, 3e5, 1e6])
@pytest.mark.parametrize("method", ["auto", "log"])
def test_a_column_shifted_far_beyond_epsilon_converges_as_unshifted(offset, method):
    """A constant added to one column is absorbed by its potential: the log sweep's
    starved column takes its exact peak, so the solve converges as the NumPy one does
    (it took 566 passes at 1e4 and none in 5 000 at 3e5), the same labels, and the
    potential moves by the constant."""
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(20, 4))
    shifted = scores.copy()
    shifted[:, 0] += offset
    plain = otlabel.assign(scores, 0.05, method=method, backend="numba")
    res = otlabel.assign(shifted, 0.05, method=method, backend="numba")
    reference = otlabel.assign(shifted, 0.05, method=method, backend="numpy")
    assert res.converged and res.n_iter <= reference.n_iter + 5
    np.testing.assert_array_equal(res.labels, plain.labels)
    moved = res.potential - plain.potential  # fixed sizes: normalised to sum_k b_k g_k = 0
    np.testing.assert_allclose(
        moved - moved.mean(),
        [-offset * 0.75, offset / 4, offset / 4, offset / 4],
        atol=2e-3,
    )
