"""The Torch backend gives the NumPy backend's answer, on the input's device and library."""

from __future__ import annotations

import numpy as np
import pytest
from _helpers import bounded_lp_optimum

import otlabel
from otlabel import count_bounds
from otlabel.rounding import NumpyPasses

torch = pytest.importorskip("torch")
from otlabel.kernels.torch_ import TorchPasses  # noqa: E402

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]


def _device(name: str) -> str:
    if name == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    return name


def both(scores, epsilon, device="cpu", **kwargs):
    """The same solve on NumPy (reference) and on Torch tensors on ``device``."""
    reference = otlabel.assign(scores, epsilon, backend="numpy", **kwargs)
    tensors = {k: torch.as_tensor(v) if isinstance(v, np.ndarray) else v for k, v in kwargs.items()}
    result = otlabel.assign(torch.as_tensor(scores, device=device), epsilon, **tensors)
    return result, reference


def host(value):
    return value.cpu().numpy() if isinstance(value, torch.Tensor) else value


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "dtype, atol, tol", [(np.float64, 1e-10, 1e-8), (np.float32, 2e-5, 1e-5)], ids=["f64", "f32"]
)
@pytest.mark.parametrize("method", ["log", "scaling"])
@pytest.mark.parametrize("overrelaxation", [1.0, "auto"])
def test_torch_equals_numpy(rng, device, dtype, atol, tol, method, overrelaxation):
    """float32 scores iterate in float32 on Torch (float64 in NumPy): a pass or two more."""
    device = _device(device)
    scores = (rng.normal(size=(600, 8)) * 2).astype(dtype)
    a, b = rng.random(600) + 0.5, rng.random(8) + 0.5
    result, reference = both(
        scores,
        0.3,
        device,
        sample_weights=a,
        cluster_weights=b,
        method=method,
        overrelaxation=overrelaxation,
        return_plan=True,
        tol=tol,
    )
    assert result.backend == "torch" and result.method == reference.method == method
    assert abs(int(result.n_iter) - int(reference.n_iter)) <= (0 if dtype == np.float64 else 3)
    for name in ("labels", "counts", "potential", "row_potential", "plan"):
        value = getattr(result, name)
        assert isinstance(value, torch.Tensor) and value.device.type == device, name
    assert result.plan.dtype == torch.as_tensor(scores).dtype
    np.testing.assert_allclose(host(result.potential), reference.potential, atol=atol)
    np.testing.assert_allclose(host(result.row_potential), reference.row_potential, atol=atol)
    np.testing.assert_allclose(host(result.plan), reference.plan, rtol=1e-4, atol=1e-10)
    # balanced labels are the exact optimum of the scores: the same whatever the solver
    np.testing.assert_array_equal(host(result.labels), reference.labels)
    assert result.cost == pytest.approx(reference.cost, abs=1e-6)
    assert result.gap <= 1e-9


@pytest.mark.parametrize("device", DEVICES)
def test_torch_heads_warm_start_and_argmax_equal_numpy(rng, device):
    device = _device(device)
    stack = rng.normal(size=(3, 300, 5)) * 2
    init = rng.normal(size=(3, 5))
    result, reference = both(stack, 0.1, device, init=init, rounding="argmax", tol=1e-8)
    np.testing.assert_array_equal(host(result.n_iter), reference.n_iter)
    np.testing.assert_allclose(host(result.potential), reference.potential, atol=1e-10)
    np.testing.assert_array_equal(host(result.labels), reference.labels)
    assert result.labels.shape == (3, 300) and result.potential.shape == (3, 5)
    warm = otlabel.assign(torch.as_tensor(stack), 0.1, init=result.potential, tol=1e-8)
    assert np.all(host(warm.n_iter) <= 2)


def test_torch_list_of_heads_with_different_k(rng):
    heads = [torch.as_tensor(rng.normal(size=(120, k))) for k in (3, 4)]
    result = otlabel.assign(heads, 0.2)
    assert isinstance(result.labels, torch.Tensor) and result.labels.shape == (2, 120)
    assert [int(c.min()) for c in result.counts] == [40, 30]
    assert isinstance(result.potential, list) and result.potential[1].shape == (4,)


@pytest.mark.parametrize("half", ["float16", "bfloat16"])
def test_half_precision_input_is_read_in_float32(rng, half):
    scores = (rng.normal(size=(500, 10)) * 2).astype(np.float32)
    tensor = torch.as_tensor(scores).to(getattr(torch, half))
    result = otlabel.assign(tensor, 0.2, rounding="argmax", return_plan=True, tol=1e-6)
    # the same problem as the half-precision values read exactly in float32
    reference = otlabel.assign(tensor.float().numpy(), 0.2, backend="numpy", tol=1e-6)
    assert result.method == "log" and result.plan.dtype == tensor.dtype
    np.testing.assert_allclose(host(result.potential), reference.potential, atol=2e-5)
    balanced = otlabel.assign(tensor, 0.2)
    np.testing.assert_array_equal(host(balanced.labels), reference.labels)
    with pytest.raises(ValueError, match=r"method: 'scaling' .* float16/bfloat16"):
        otlabel.assign(tensor, 0.2, method="scaling")


def test_balanced_labels_on_torch_are_the_lp_optimum(rng):
    scores = rng.normal(size=(37, 5)) * 3
    weights = np.array([0.1, 0.3, 0.2, 0.25, 0.15])
    result = otlabel.assign(torch.as_tensor(scores), 0.5, cluster_weights=weights)
    labels = host(result.labels)
    lower, upper = count_bounds(37, weights)
    counts = np.bincount(labels, minlength=5)
    assert np.all(lower <= counts) and np.all(counts <= upper)
    optimum = bounded_lp_optimum(scores, lower, upper)
    assert scores[np.arange(37), labels].sum() == pytest.approx(optimum, rel=1e-9)


def test_torch_rounding_passes_equal_numpy_passes(rng):
    block = rng.normal(size=(200, 7))
    own = rng.integers(0, 7, size=200)
    potential = rng.normal(size=7)
    tensor = torch.as_tensor(block)
    np.testing.assert_array_equal(
        TorchPasses.argmax(tensor, potential), NumpyPasses.argmax(block, potential)
    )
    expected, got = np.full((7, 7), np.inf), np.full((7, 7), np.inf)
    NumpyPasses.move_costs(block, own, expected)
    TorchPasses.move_costs(tensor, own, got)
    np.testing.assert_array_equal(got, expected)
    assert TorchPasses.row_gap(tensor, own, potential) == pytest.approx(
        NumpyPasses.row_gap(block, own, potential), rel=1e-12
    )
    index = np.array([5, 0, 5])
    np.testing.assert_array_equal(host(TorchPasses.gather(tensor, index)), block[index])


def test_torch_input_is_left_intact_unless_overwrite_is_allowed(rng):
    scores = torch.as_tensor(rng.normal(size=(400, 6)) * 0.5)
    before = scores.clone()
    otlabel.assign(scores, 0.5, method="scaling")
    assert torch.equal(scores, before)
    result = otlabel.assign(scores, 0.5, method="scaling", overwrite_scores=True)
    assert result.method == "scaling"
    torch.testing.assert_close(scores, before, rtol=0, atol=1e-12)


def test_gradients_do_not_flow_and_the_input_graph_is_untouched(rng):
    logits = torch.randn(50, 5, dtype=torch.float64, requires_grad=True)
    result = otlabel.assign(logits * 2, 0.2)
    assert not result.potential.requires_grad and result.labels.shape == (50,)
    assert torch.is_grad_enabled()


def test_torch_thread_count_and_precision_settings_are_restored(rng):
    threads = torch.get_num_threads()
    precision = torch.get_float32_matmul_precision()
    scores = torch.as_tensor(rng.normal(size=(200, 4)).astype(np.float32))
    first = otlabel.assign(scores, 0.2, n_threads=1)
    again = otlabel.assign(scores, 0.2, n_threads=1)
    assert torch.equal(first.potential, again.potential)  # identical run to run
    assert torch.get_num_threads() == threads
    assert torch.get_float32_matmul_precision() == precision


def test_backend_must_run_the_input_library(rng):
    scores = rng.normal(size=(20, 3))
    with pytest.raises(ValueError, match="backend='torch' does not run numpy input"):
        otlabel.assign(scores, backend="torch")
    with pytest.raises(ValueError, match="backend='numba' does not run torch input"):
        otlabel.assign(torch.as_tensor(scores), backend="numba")
    with pytest.raises(ValueError, match=r"scores: contains NaN .* row 4"):
        bad = torch.as_tensor(scores).clone()
        bad[4, 1] = float("nan")
        otlabel.assign(bad)
    with pytest.raises(TypeError, match="one array library"):
        otlabel.assign([scores, torch.as_tensor(scores)])
    with pytest.raises(TypeError, match=r"real floating-point scores, got dtype torch\.bool"):
        otlabel.assign(torch.as_tensor(scores) > 0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", ["callable", "tensor", "chunks", "numpy to device"])
def test_torch_streams_equal_the_tensor_in_memory(rng, device, kind):
    device = _device(device)
    features = torch.as_tensor(rng.normal(size=(3000, 16)).astype(np.float32), device=device)
    head = torch.as_tensor(rng.normal(size=(9, 16)).astype(np.float32), device=device)
    scores = features @ head.T  # (3000, 9)
    sources = {
        "callable": lambda: otlabel.ChunkedScores(
            lambda i0, i1: features[i0:i1] @ head.T, n_samples=3000
        ),
        "tensor": lambda: otlabel.ChunkedScores(scores),
        "chunks": lambda: otlabel.ChunkedScores([scores[:1234], scores[1234:]]),
        "numpy to device": lambda: otlabel.ChunkedScores(scores.cpu().numpy(), device=device),
    }
    stream = sources[kind]()
    assert stream.library == "torch" and stream.dtype == torch.float32
    streamed = otlabel.assign(stream, 0.1, tol=1e-5)
    in_memory = otlabel.assign(scores, 0.1, method="log", tol=1e-5)
    assert streamed.backend == "torch" and streamed.labels.device.type == device
    assert streamed.n_iter == in_memory.n_iter
    torch.testing.assert_close(streamed.potential, in_memory.potential, rtol=0, atol=1e-12)
    assert torch.equal(streamed.labels, in_memory.labels)
    assert streamed.cost == pytest.approx(in_memory.cost, rel=1e-12)


def test_torch_stream_errors_are_named(rng):
    features = torch.as_tensor(rng.normal(size=(100, 4)).astype(np.float32))
    returns_numpy = otlabel.ChunkedScores(
        lambda i0, i1: features[i0:i1] if i0 == 0 else features[i0:i1].numpy(), n_samples=100
    )
    with pytest.raises(TypeError, match=r"scores rows \d+:\d+: the source returned ndarray"):
        otlabel.assign(returns_numpy, 0.1)
    with pytest.raises(TypeError, match=r"expected floating-point scores, got dtype torch\.int64"):
        otlabel.ChunkedScores(torch.zeros((4, 2), dtype=torch.int64))


def test_the_solve_leaves_process_wide_precision_settings_alone():
    """TF32 and the float32 matmul precision stay as the caller set them, during the
    solve too (a labeler in a background thread must not change them under training)."""
    before = (torch.backends.cuda.matmul.allow_tf32, torch.get_float32_matmul_precision())
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.set_float32_matmul_precision("medium")
    seen = []
    try:
        scores = torch.as_tensor(otlabel.make_scores(2000, 30, kind="head", seed=1))
        medium = otlabel.assign(
            scores,
            0.05,
            callback=lambda n, error: seen.append(
                (torch.backends.cuda.matmul.allow_tf32, torch.get_float32_matmul_precision())
            ),
        )
        torch.set_float32_matmul_precision("highest")
        highest = otlabel.assign(scores, 0.05)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before[0]
        torch.set_float32_matmul_precision(before[1])
    assert seen and set(seen) == {(True, "medium")}
    # the float32 column sums never go through a matmul: the setting cannot change them
    torch.testing.assert_close(medium.potential, highest.potential, rtol=0, atol=0)


def test_thread_count_changes_only_when_asked_and_comes_back():
    scores = torch.as_tensor(otlabel.make_scores(1000, 10, seed=2))
    threads = torch.get_num_threads()
    during = []
    otlabel.assign(scores, 0.1, callback=lambda n, e: during.append(torch.get_num_threads()))
    assert set(during) == {threads}
    during.clear()
    otlabel.assign(
        scores, 0.1, n_threads=1, callback=lambda n, e: during.append(torch.get_num_threads())
    )
    assert set(during) == {1} and torch.get_num_threads() == threads
