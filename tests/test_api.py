"""The front door: warm starts, heads, weights, workspace, results."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import otlabel


@pytest.fixture
def scores():
    return otlabel.make_scores(2000, 16, seed=11)


def test_warm_start_from_converged_potential(scores):
    cold = otlabel.assign(scores, 0.1, tol=1e-6, max_iter=5000)
    warm = otlabel.assign(scores, 0.1, tol=1e-6, init=cold.potential)
    assert cold.n_iter > 20
    assert warm.n_iter <= 2 and warm.converged
    np.testing.assert_array_equal(warm.labels, cold.labels)


def test_warm_start_across_epsilon_saves_iterations(scores):
    coarse = otlabel.sinkhorn(scores, 0.1)
    cold = otlabel.sinkhorn(scores, 0.05)
    warm = otlabel.sinkhorn(scores, 0.05, init=coarse.potential)
    assert warm.n_iter < cold.n_iter
    np.testing.assert_allclose(warm.potential, cold.potential, atol=0.05)


@pytest.mark.parametrize("rounding", ["balanced", "argmax", None])
def test_stacked_heads_equal_separate_solves(rng, rounding):
    stack = np.stack([otlabel.make_scores(600, 8, seed=s) * (1 + s) / 2 for s in range(3)])
    inits = rng.normal(size=(3, 8)) * 0.1
    together = otlabel.assign(stack, 0.1, init=inits, rounding=rounding, return_plan=True)
    assert together.potential.shape == (3, 8) and together.plan.shape == (3, 600, 8)
    assert together.n_iter.shape == (3,) and len(together.method) == 3
    assert len(set(together.n_iter.tolist())) > 1  # each head stops on its own
    for h in range(3):
        alone = otlabel.assign(stack[h], 0.1, init=inits[h], rounding=rounding, return_plan=True)
        assert together.n_iter[h] == alone.n_iter and together.method[h] == alone.method
        assert together.error[h] == alone.error
        np.testing.assert_array_equal(together.potential[h], alone.potential)
        np.testing.assert_array_equal(together.plan[h], alone.plan)
        if rounding is not None:
            np.testing.assert_array_equal(together.labels[h], alone.labels)
            np.testing.assert_array_equal(together.counts[h], alone.counts)
            assert together.cost[h] == alone.cost


def test_list_of_heads_with_different_k(rng):
    heads = [rng.normal(size=(300, 4)), rng.normal(size=(300, 7))]
    weights = [np.ones(4), np.arange(1.0, 8.0)]
    res = otlabel.assign(heads, 0.1, cluster_weights=weights, init=[np.zeros(4), np.zeros(7)])
    assert isinstance(res.potential, list) and [p.shape for p in res.potential] == [(4,), (7,)]
    assert res.labels.shape == (2, 300)
    for h in range(2):
        alone = otlabel.assign(heads[h], 0.1, cluster_weights=weights[h])
        np.testing.assert_array_equal(res.labels[h], alone.labels)
        np.testing.assert_array_equal(res.counts[h], alone.counts)


def test_shared_cluster_weights_across_a_stack(rng):
    stack = rng.normal(size=(2, 400, 5))
    weights = np.array([4.0, 1, 1, 2, 2])
    res = otlabel.assign(stack, 0.1, cluster_weights=weights)
    np.testing.assert_array_equal(res.counts, [[160, 40, 40, 80, 80]] * 2)


def test_weights_are_normalised_and_scale_free(rng):
    scores = rng.normal(size=(200, 4))
    a = rng.random(200) + 0.1
    b = np.array([1.0, 2.0, 3.0, 4.0])
    one = otlabel.sinkhorn(scores, 0.1, sample_weights=a, cluster_weights=b, tol=1e-10)
    scaled = otlabel.sinkhorn(scores, 0.1, sample_weights=7 * a, cluster_weights=b / 9, tol=1e-10)
    np.testing.assert_allclose(one.potential, scaled.potential, atol=1e-10)


def test_sample_weights_move_the_plan(rng):
    scores = rng.normal(size=(100, 3))
    a = np.ones(100)
    a[:10] = 50.0
    res = otlabel.sinkhorn(scores, 0.1, sample_weights=a, tol=1e-10, return_plan=True)
    np.testing.assert_allclose(res.plan.sum(axis=1), a / a.sum(), rtol=1e-9)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dtypes_are_kept(scores, dtype):
    res = otlabel.assign(scores.astype(dtype), 0.05, return_plan=True)
    assert res.plan.dtype == dtype
    assert res.labels.dtype == np.int64 and res.counts.dtype == np.int64
    assert res.potential.dtype == np.float64


def test_float16_and_integer_scores_are_accepted(rng):
    small = (rng.normal(size=(60, 3)) * 3).astype(np.float16)
    assert otlabel.assign(small, 0.1).converged
    assert otlabel.assign(np.arange(60 * 3).reshape(60, 3) % 7, 0.5).converged


def test_input_is_left_intact_by_default(scores):
    copy = scores.copy()
    otlabel.assign(scores, 0.5, method="scaling")
    np.testing.assert_array_equal(scores, copy)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_overwrite_scores_uses_the_array_as_workspace(scores, dtype):
    workspace = scores.astype(dtype)
    original = workspace.copy()
    epsilon = 1.0  # spread / epsilon within the scaling domain's safe range for float32
    expected = otlabel.assign(original, epsilon, method="scaling")
    res = otlabel.assign(workspace, epsilon, method="scaling", overwrite_scores=True)
    np.testing.assert_array_equal(res.labels, expected.labels)
    np.testing.assert_allclose(
        res.potential, expected.potential, atol=1e-5 if dtype == np.float32 else 1e-12
    )
    # the array holds the scores again, up to rounding
    np.testing.assert_allclose(workspace, original, atol=1e-5 if dtype == np.float32 else 1e-12)


@pytest.mark.parametrize("backend", ["numpy", "numba", "torch"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_overwrite_scores_keeps_a_kernel_that_could_not_be_undone_elsewhere(backend, dtype):
    """At a spread over epsilon where ``exp`` underflows (float32 here), a kernel built in
    place of the scores could not give them back: it is built in new memory, the
    caller's array is left as it was, and the answer is the one without
    ``overwrite_scores``."""
    scores = otlabel.make_scores(400, 8, seed=0, dtype=dtype)  # spread / 0.05 past 1000
    workspace = scores.copy()
    if backend == "torch":
        torch = pytest.importorskip("torch")
        workspace = torch.from_numpy(workspace)
    expected = otlabel.assign(scores, 0.05, method="scaling", backend="numpy")
    res = otlabel.assign(workspace, 0.05, method="scaling", overwrite_scores=True, backend=backend)
    # given back to rounding (float64: built in place, reversible), or never touched
    rounding = 64 * np.finfo(dtype).eps * np.abs(scores).max()
    np.testing.assert_allclose(np.asarray(workspace), scores, rtol=0, atol=rounding)
    np.testing.assert_array_equal(np.asarray(res.labels), expected.labels)
    if backend != "numpy":
        return  # another backend's arithmetic: same labels, errors to rounding
    assert res.error == expected.error
    assert res.gap == pytest.approx(expected.gap, abs=1e-15)  # scores given back to rounding


def test_overwrite_scores_on_a_read_only_array_is_refused(scores, tmp_path):
    scores.setflags(write=False)
    with pytest.raises(ValueError, match="overwrite_scores: scores is read-only"):
        otlabel.assign(scores, 0.5, method="scaling", overwrite_scores=True)
    assert otlabel.assign(scores, 0.5, method="scaling").converged
    np.save(tmp_path / "s.npy", scores)
    mapped = np.load(tmp_path / "s.npy", mmap_mode="r")
    with pytest.raises(ValueError, match="overwrite_scores: scores is read-only"):
        otlabel.assign(mapped, 0.5, overwrite_scores=True)


def test_not_converged_is_flagged_and_warned(scores):
    with pytest.warns(otlabel.ConvergenceWarning, match="max_iter=3"):
        res = otlabel.assign(scores, 0.01, max_iter=3)
    assert not res.converged and res.n_iter == 3 and res.error > otlabel.DEFAULT_TOL
    np.testing.assert_array_equal(res.counts, 125)  # labels are still exactly balanced


def test_warning_points_at_the_caller(scores):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        otlabel.assign(scores, 0.01, max_iter=2)
    assert caught and caught[0].filename == __file__


def test_n_threads_is_validated_and_accepted(scores):
    assert otlabel.assign(scores, 0.1, n_threads=1).converged
    with pytest.raises(ValueError, match="n_threads"):
        otlabel.assign(scores, 0.1, n_threads=0)


def test_sinkhorn_equals_assign_without_rounding(scores):
    solved = otlabel.sinkhorn(scores, 0.05)
    assigned = otlabel.assign(scores, 0.05, rounding=None)
    np.testing.assert_array_equal(solved.potential, assigned.potential)
    assert solved.labels is None and solved.n_iter == assigned.n_iter


def test_result_repr_is_one_line_summary(scores):
    text = repr(otlabel.assign(scores, 0.05))
    assert text.startswith("Result(n_iter=") and "cluster sizes 125..125" in text
    assert "\n" not in text


def test_version_and_public_names():
    assert otlabel.__version__.count(".") == 2
    for name in otlabel.__all__:
        assert hasattr(otlabel, name)


def test_callback_hears_every_pass_and_the_record_adds_up():
    scores = otlabel.make_scores(3000, 20, kind="head", seed=1)
    heard = []
    res = otlabel.assign(scores, 0.05, callback=lambda n, error: heard.append((n, error)))
    assert [n for n, _ in heard] == list(range(1, res.n_iter + 1))
    assert [error for _, error in heard] == res.errors and res.errors[-1] == res.error
    assert res.phases["log"] + res.phases["stored"] + res.phases["finish"] == res.n_iter
    with pytest.raises(TypeError, match="callback: expected a function"):
        otlabel.assign(scores, 0.05, callback=3)


def test_subsample_start_is_selectable_and_reported(rng):
    scores = otlabel.make_scores(4000, 8, kind="head", seed=2).astype(np.float64)
    res = otlabel.sinkhorn(scores, 0.05, init="subsample", backend="numpy", tol=1e-8)
    cold = otlabel.sinkhorn(scores, 0.05, backend="numpy", tol=1e-8)
    assert res.start == "subsample" and res.phases["start"] > 0
    assert cold.start == "zero" and cold.phases["start"] == 0
    assert res.converged
    np.testing.assert_allclose(res.potential, cold.potential, atol=1e-6)
    with pytest.raises(ValueError, match="init: expected a previous result's potential"):
        otlabel.sinkhorn(scores, 0.05, init="warm")


def test_auto_start_on_a_large_float32_matrix_is_a_subsample():
    scores = otlabel.make_scores(60_000, 10, kind="head", seed=3)
    res = otlabel.assign(scores, 0.05)
    assert res.start == "subsample" and res.phases["start"] > 0 and res.converged


# --------------------------------------------------------------------------
# predict on a several-head result; the smaller contract items
# --------------------------------------------------------------------------


def test_predict_takes_one_head_of_a_several_head_result():
    """A stack's or a list's result (K may differ) predicts for one head, named by
    ``head=``: that head's potential (and unassigned potential) is used."""
    stack = np.stack([otlabel.make_scores(60, 4, seed=s, dtype=np.float64) for s in range(3)])
    res = otlabel.assign(stack, 0.05, mass=0.8)
    for h in range(3):
        expected = otlabel.predict(
            stack[h], res.potential[h], unassigned=res.unassigned_potential[h]
        )
        np.testing.assert_array_equal(otlabel.predict(stack[h], res, head=h), expected)
        np.testing.assert_array_equal(res.predict(stack[h], head=h), expected)
    ragged = [otlabel.make_scores(60, 4, seed=0), otlabel.make_scores(60, 6, seed=1)]
    listed = otlabel.assign(ragged, 0.05, rounding="argmax")
    np.testing.assert_array_equal(otlabel.predict(ragged[1], listed, head=1), listed.labels[1])
    np.testing.assert_array_equal(
        otlabel.predict(ragged[1], listed.potential, head=1), listed.labels[1]
    )


@pytest.mark.parametrize(
    "head, error, match",
    [
        (None, ValueError, r"head: the potential holds 3 heads; pass head=0..2"),
        (3, ValueError, r"head: expected 0..2, got 3"),
        (1.0, TypeError, "head: expected an integer"),
    ],
)
def test_predict_names_a_missing_or_bad_head(head, error, match):
    stack = np.stack([otlabel.make_scores(30, 4, seed=s) for s in range(3)])
    res = otlabel.assign(stack, 0.05)
    with pytest.raises(error, match=match):
        otlabel.predict(stack[0], res, head=head)
    one = otlabel.assign(stack[0], 0.05)
    with pytest.raises(ValueError, match="head: the result has one head"):
        otlabel.predict(stack[0], one, head=0)


def test_convergence_warning_tells_error_and_tol_apart():
    scores = otlabel.make_scores(100, 10, seed=0, dtype=np.float64)
    options = {"overrelaxation": 1.0, "backend": "numpy"}
    with pytest.warns(otlabel.ConvergenceWarning):
        full = otlabel.sinkhorn(scores, 0.05, tol=1e-12, max_iter=41, **options)
    tol = full.errors[40] * (1 - 1e-5)  # just below the error after 41 passes
    with pytest.warns(otlabel.ConvergenceWarning) as caught:
        otlabel.sinkhorn(scores, 0.05, tol=tol, max_iter=41, **options)
    message = str(caught[0].message)
    error_text, tol_text = message.split("marginal error ")[1].split(";")[0].split(" > tol=")
    assert error_text != tol_text and float(error_text) > float(tol_text)


def test_long_double_scores_are_read_as_float64():
    scores = otlabel.make_scores(200, 5, seed=0, dtype=np.float64)
    res = otlabel.assign(scores.astype(np.longdouble), 0.05)
    np.testing.assert_array_equal(res.labels, otlabel.assign(scores, 0.05).labels)


def test_count_bounds_normalise_the_weights_as_assign_does():
    lower, upper = otlabel.count_bounds(10, np.ones(4))
    assert lower.tolist() == [2, 2, 2, 2] and upper.tolist() == [3, 3, 3, 3]
    with pytest.raises(ValueError, match="cluster_weights"):
        otlabel.count_bounds(10, np.array([1.0, -1.0]))


def test_an_infinite_size_penalty_is_fixed_sizes():
    scores = otlabel.make_scores(200, 5, seed=0, dtype=np.float64)
    res = otlabel.assign(scores, 0.05, size_penalty=np.inf)  # no RuntimeWarning (errors)
    np.testing.assert_array_equal(res.labels, otlabel.assign(scores, 0.05).labels)


def test_unassigned_scores_without_partial_mass_are_refused():
    scores = otlabel.make_scores(20, 4, seed=0)
    with pytest.raises(ValueError, match=r"unassigned_scores: .* only used with partial mass"):
        otlabel.assign(scores, 0.05, unassigned_scores=np.zeros(20))


def test_count_bounds_refuse_what_is_not_one_weight_per_cluster():
    torch = pytest.importorskip("torch")
    assert otlabel.count_bounds(10, torch.ones(4))[1].tolist() == [3, 3, 3, 3]
    for bad in ([], 1.0, np.ones((2, 2))):
        with pytest.raises(ValueError, match="cluster_weights: expected a 1-D array"):
            otlabel.count_bounds(10, bad)


def test_predict_refuses_unassigned_scores_without_an_unassigned_column():
    scores = otlabel.make_scores(30, 4, seed=0)
    with pytest.raises(ValueError, match="unassigned_scores: the potential has no unassigned"):
        otlabel.predict(scores, otlabel.assign(scores, 0.05), unassigned_scores=np.zeros(30))
