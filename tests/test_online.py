"""soft_assign: SwAV's codes where SwAV's loop is finite, finite codes everywhere."""

from __future__ import annotations

import numpy as np
import pytest

import otlabel

torch = pytest.importorskip("torch")


def swav_codes(out, eps, iters):
    """SwAV's distributed_sinkhorn on one process, as published (the oracle)."""
    q = torch.exp(out / eps).t()  # (K, B)
    n_clusters, n_batch = q.shape
    q /= torch.sum(q)
    for _ in range(iters):
        q /= torch.sum(q, dim=1, keepdim=True)
        q /= n_clusters
        q /= torch.sum(q, dim=0, keepdim=True)
        q /= n_batch
    return (q * n_batch).t()


@pytest.fixture
def cosine(rng):
    """Cosine similarities of 256 samples to 30 prototypes, SwAV's scores."""
    x = rng.normal(size=(256, 16))
    prototypes = rng.normal(size=(30, 16))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    prototypes /= np.linalg.norm(prototypes, axis=1, keepdims=True)
    return x @ prototypes.T


@pytest.mark.parametrize("dtype, atol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
@pytest.mark.parametrize("iters", [1, 3, 10])
def test_equals_swav_where_swav_is_finite(cosine, dtype, atol, iters):
    scores = torch.as_tensor(cosine, dtype=dtype)
    codes = otlabel.soft_assign(scores, 0.05, n_iter=iters)
    assert isinstance(codes, torch.Tensor) and codes.dtype == dtype and codes.shape == (256, 30)
    torch.testing.assert_close(codes, swav_codes(scores, 0.05, iters), rtol=0, atol=atol)
    on_numpy = otlabel.soft_assign(cosine, 0.05, n_iter=iters)
    assert isinstance(on_numpy, np.ndarray)
    np.testing.assert_allclose(
        on_numpy, swav_codes(torch.as_tensor(cosine), 0.05, iters), atol=1e-12
    )


def test_finite_where_swav_overflows(cosine):
    logits = torch.as_tensor(cosine * 100, dtype=torch.float32)  # scores / eps up to 2000
    assert torch.isnan(swav_codes(logits, 0.05, 3)).any()
    codes = otlabel.soft_assign(logits, 0.05)
    assert torch.isfinite(codes).all()
    torch.testing.assert_close(codes.sum(dim=1), torch.ones(256), rtol=0, atol=1e-5)


def test_tolerance_reaches_the_equipartition(cosine):
    weights = np.linspace(1, 2, 30)
    codes = otlabel.soft_assign(cosine, 0.05, n_iter=10_000, tol=1e-9, cluster_weights=weights)
    np.testing.assert_allclose(codes.sum(axis=1), 1, atol=1e-12)
    np.testing.assert_allclose(codes.sum(axis=0), 256 * weights / weights.sum(), rtol=1e-8)
    three = otlabel.soft_assign(cosine, 0.05, n_iter=3, tol=1e-9)  # n_iter is the most
    np.testing.assert_allclose(three, otlabel.soft_assign(cosine, 0.05), atol=0)


def test_queue_takes_part_and_only_the_batch_is_returned(cosine):
    scores = torch.as_tensor(cosine)
    codes = otlabel.soft_assign(scores[:64], 0.05, queue=scores[64:])
    everything = swav_codes(torch.cat([scores[64:], scores[:64]]), 0.05, 3)
    assert codes.shape == (64, 30)
    torch.testing.assert_close(codes, everything[-64:], rtol=0, atol=1e-12)


def test_half_precision_and_no_gradient(cosine):
    scores = torch.as_tensor(cosine, dtype=torch.float32).requires_grad_()
    codes = otlabel.soft_assign(scores.to(torch.bfloat16))
    assert codes.dtype == torch.bfloat16 and not codes.requires_grad
    reference = otlabel.soft_assign(scores.detach().to(torch.bfloat16).float())
    torch.testing.assert_close(codes.float(), reference, rtol=0, atol=1e-2)


def test_numpy_codes_keep_the_scores_dtype(cosine):
    """NumPy float16 is solved in float32 (as assign reads it); the codes come back in
    float16, as Torch's do."""
    half = cosine.astype(np.float16)
    codes = otlabel.soft_assign(half)
    assert codes.dtype == np.float16
    solved = otlabel.soft_assign(half.astype(np.float32))
    np.testing.assert_array_equal(codes, solved.astype(np.float16))
    assert otlabel.soft_assign(cosine.astype(">f8")).dtype == np.float64  # native order
    assert otlabel.soft_assign(cosine.astype(np.float32)).dtype == np.float32


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"n_iter": 0}, ValueError, "n_iter: expected an integer >= 1"),
        ({"tol": -1.0}, ValueError, "tol: expected a finite number > 0"),
        ({"epsilon": 0}, ValueError, "epsilon: expected a finite number > 0"),
        ({"queue": np.zeros((5, 3))}, ValueError, r"queue: expected a \(30,\)-column array"),
        ({"group": "world"}, TypeError, "group: expected a torch.distributed process group"),
        ({"cluster_weights": np.ones(3)}, ValueError, r"cluster_weights: expected shape \(30,\)"),
    ],
)
def test_bad_arguments_are_named(cosine, kwargs, error, match):
    with pytest.raises(error, match=match):
        otlabel.soft_assign(cosine, **kwargs)


def test_bad_scores_are_named(cosine):
    for value in (np.inf, np.nan):
        bad = cosine.copy()
        bad[3, 4] = value
        with pytest.raises(ValueError, match=r"scores: contains NaN or \+inf"):
            otlabel.soft_assign(bad)
    bad = cosine.copy()
    bad[7] = -np.inf
    with pytest.raises(ValueError, match=r"scores: 1 row\(s\) are -inf for every cluster"):
        otlabel.soft_assign(bad)
    bad = cosine.copy()
    bad[:, [4, 9]] = -np.inf
    with pytest.raises(ValueError, match=r"clusters \[4, 9\] need .* no sample is allowed"):
        otlabel.soft_assign(bad)
    with pytest.raises(ValueError, match=r"clusters \[4, 9\] need"):  # the queue too
        otlabel.soft_assign(bad[5:], queue=bad[:5])
    with pytest.raises(TypeError, match=r"scores: expected an array \(B, K\)"):
        otlabel.soft_assign(cosine.tolist())


@pytest.mark.parametrize("size_penalty", [None, 0.5])
def test_forbidden_pairs_get_no_code_and_converge_to_the_plan(size_penalty):
    """``-inf`` forbids a pair, as in ``assign``: its code is exactly 0, the rows sum
    to 1, and many iterations reach N times the converged plan of ``sinkhorn``."""
    rng = np.random.default_rng(0)
    scores = rng.uniform(-1, 1, size=(64, 4))
    scores[rng.random((64, 4)) < 0.25] = -np.inf
    scores[scores.max(axis=1) == -np.inf, 0] = 0.3  # every sample allowed somewhere
    codes = otlabel.soft_assign(scores, 0.1, size_penalty=size_penalty)
    assert np.all(codes[np.isinf(scores)] == 0.0)
    np.testing.assert_allclose(codes.sum(axis=1), 1.0, rtol=1e-12)
    codes = otlabel.soft_assign(scores, 0.1, n_iter=5000, tol=1e-12, size_penalty=size_penalty)
    plan = otlabel.sinkhorn(
        scores, 0.1, size_penalty=size_penalty, tol=1e-12, max_iter=100_000, return_plan=True
    ).plan
    np.testing.assert_allclose(codes, 64 * plan, atol=1e-9)


def test_relaxed_sizes_follow_the_data_where_fixed_sizes_cannot():
    """SwAV with an imbalanced prior: codes whose cluster masses follow the scores."""
    rng = np.random.default_rng(3)
    scores = rng.uniform(-1, 1, size=(512, 4))
    scores[:, 0] += 0.5  # cluster 0 is everybody's favourite
    fixed = otlabel.soft_assign(scores, 0.05, n_iter=50)
    relaxed = otlabel.soft_assign(scores, 0.05, n_iter=50, size_penalty=0.05)
    np.testing.assert_allclose(fixed.sum(axis=0) / 512, 0.25, atol=2e-3)
    assert relaxed.sum(axis=0)[0] / 512 > 0.4  # the data's preference shows
    np.testing.assert_allclose(relaxed.sum(axis=1), 1.0, rtol=1e-12)
    # at the fixed point, g_k = -tau log(m_k / b_k): the same as the relaxed sinkhorn
    solved = otlabel.sinkhorn(scores, 0.05, size_penalty=0.05, tol=1e-12, return_plan=True)
    np.testing.assert_allclose(relaxed.sum(axis=0) / 512, solved.plan.sum(axis=0), atol=1e-6)
