"""The sharded solve on Gloo (2 and 3 local processes) equals the single-process solve."""

from __future__ import annotations

import multiprocessing
import pickle
import time
from pathlib import Path

import numpy as np
import pytest

import otlabel

torch = pytest.importorskip("torch")
if not torch.distributed.is_available():
    pytest.skip("torch.distributed is not available", allow_module_level=True)

TIMEOUT = 90  # seconds for a whole launch: a deadlock fails the test instead of hanging it


def launch(world: int, cases: list[dict], folder: Path, backend: str = "gloo") -> list[list[dict]]:
    """Run ``cases`` on ``world`` spawned ranks; each rank's outcomes per case."""
    from _distributed_worker import run

    context = multiprocessing.get_context("spawn")
    ranks = [
        context.Process(target=run, args=(r, world, str(folder), cases, backend))
        for r in range(world)
    ]
    for process in ranks:
        process.start()
    deadline = time.monotonic() + TIMEOUT
    for process in ranks:
        process.join(max(0.0, deadline - time.monotonic()))
    alive = [process for process in ranks if process.is_alive()]
    for process in alive:
        process.kill()
    assert not alive, "a rank did not finish: deadlock in a collective"
    died = {r: process.exitcode for r, process in enumerate(ranks) if process.exitcode != 0}
    assert not died, f"ranks died (rank: exit code): {died}"
    outcomes = [pickle.loads(Path(folder, f"rank{r}.pkl").read_bytes()) for r in range(world)]
    for rank_outcomes in outcomes:
        crashes = [o["crash"] for o in rank_outcomes if "crash" in o]
        assert not crashes, crashes[0]
    return [[outcomes[r][c] for r in range(world)] for c in range(len(cases))]


def shards_of(scores: np.ndarray, sizes: list[int]) -> list[np.ndarray]:
    return np.split(scores, np.cumsum(sizes)[:-1])


def assert_equals_single(per_rank, scores, sizes, epsilon, **kwargs):
    """Labels (per rank) identical, counts identical, plan within 1e-6 relative."""
    kwargs = {k: v for k, v in kwargs.items() if k != "backend"}
    single = otlabel.assign(scores, epsilon, method="log", backend="numpy", **kwargs)
    offsets = np.cumsum([0, *sizes])
    for rank, outcome in enumerate(per_rank):
        assert "result" in outcome, outcome
        result = outcome["result"]
        own = slice(offsets[rank], offsets[rank + 1])
        assert result["labels"].shape == (sizes[rank],)
        np.testing.assert_array_equal(result["labels"], single.labels[own])
        np.testing.assert_array_equal(result["counts"], single.counts)
        assert abs(result["n_iter"] - single.n_iter) <= 1
        # plan entries exp((S + f + g)/eps): relative difference exp(df/eps + dg/eps) - 1
        relative = np.abs(result["potential"] - single.potential).max() / epsilon
        relative += np.abs(result["row_potential"] - single.row_potential[own]).max() / epsilon
        assert relative < 1e-6
        assert result["cost"] == pytest.approx(single.cost, rel=1e-12)
        if single.gap is not None:
            assert result["gap"] <= 1e-9
    first = per_rank[0]["result"]
    for outcome in per_rank[1:]:  # every rank holds the same global values
        np.testing.assert_array_equal(outcome["result"]["potential"], first["potential"])
        assert outcome["result"]["error"] == first["error"]


def test_two_ranks_with_uneven_shards(tmp_path, rng):
    scores = rng.normal(size=(600, 7)) * 2
    sizes = [230, 370]
    shards = shards_of(scores, sizes)
    weights = rng.random(600) + 0.5
    cluster_w = rng.random(7) + 0.5
    bad = [shards[0], shards[1].copy()]
    bad[1][17, 3] = np.nan
    forbidden = scores.copy()
    forbidden[:230, 6] = -np.inf  # cluster 6: none of rank 0's rows, all of rank 1's
    unreachable = scores.copy()
    unreachable[:, 6] = -np.inf  # cluster 6: no row of any rank
    cases = [
        {"shards": shards, "epsilon": 0.1, "kwargs": {"tol": 1e-9}},
        {"shards": shards, "epsilon": 0.1, "kwargs": {"tol": 1e-9, "backend": "numpy"}},
        {
            "shards": shards,
            "epsilon": 0.2,
            "torch": True,
            "sample_weights": shards_of(weights, sizes),
            "kwargs": {"tol": 1e-9, "cluster_weights": cluster_w, "rounding": "argmax"},
        },
        {"shards": bad, "epsilon": 0.1},
        {"shards": [shards[0], shards[1][:, :5]], "epsilon": 0.1},
        {"shards": shards, "epsilon": 0.5, "soft": True, "kwargs": {"n_iter": 4}},
        {"shards": shards_of(forbidden, sizes), "epsilon": 0.5, "soft": True},
        {"shards": shards_of(unreachable, sizes), "epsilon": 0.5, "soft": True},
    ]
    balanced, on_numpy, on_torch, nan_case, k_case, soft, soft_forbidden, soft_unreachable = launch(
        2, cases, tmp_path
    )

    assert_equals_single(balanced, scores, sizes, 0.1, tol=1e-9)
    assert balanced[0]["result"]["backend"] == "numba"
    assert_equals_single(on_numpy, scores, sizes, 0.1, tol=1e-9)
    assert_equals_single(
        on_torch,
        scores,
        sizes,
        0.2,
        tol=1e-9,
        sample_weights=weights,
        cluster_weights=cluster_w,
        rounding="argmax",
    )
    assert on_torch[0]["result"]["labels_type"] == "torch"
    for outcome in nan_case:  # rank 1's NaN raises on both ranks
        assert outcome["error"][0] == "ValueError"
        assert outcome["error"][1].startswith("rank 1: local_scores: contains NaN")
        assert "row 17" in outcome["error"][1]
    # SwAV-style codes shared over the ranks: those of the whole batch, split by rank
    codes = otlabel.soft_assign(scores, 0.5, n_iter=4)
    np.testing.assert_allclose(soft[0]["codes"], codes[:230], rtol=1e-12)
    np.testing.assert_allclose(soft[1]["codes"], codes[230:], rtol=1e-12)
    codes = otlabel.soft_assign(forbidden, 0.5)  # a cluster forbidden on one rank only
    assert np.all(codes[:230, 6] == 0)
    np.testing.assert_allclose(soft_forbidden[0]["codes"], codes[:230], rtol=1e-12)
    np.testing.assert_allclose(soft_forbidden[1]["codes"], codes[230:], rtol=1e-12)
    for outcome in soft_unreachable:  # found once the ranks' column masses are combined
        assert outcome["error"][0] == "ValueError"
        assert "cluster(s) 6 are -inf for every sample" in outcome["error"][1]
    for outcome in k_case:
        assert outcome["error"] == (
            "ValueError",
            "local_scores: every rank needs the same K, got 7 on rank 0, 5 on rank 1",
        )


def test_three_ranks_balanced_with_cluster_weights(tmp_path, rng):
    scores = rng.normal(size=(513, 5)) * 3
    sizes = [100, 250, 163]
    cluster_w = np.array([0.1, 0.3, 0.2, 0.25, 0.15])
    cases = [
        {
            "shards": shards_of(scores, sizes),
            "epsilon": 0.05,
            "kwargs": {"tol": 1e-9, "cluster_weights": cluster_w},
        },
        {"shards": shards_of(scores, sizes), "epsilon": 0.05, "kwargs": {"rounding": "nope"}},
        {
            "shards": shards_of(scores, sizes),
            "epsilon": 0.05,
            "kwargs": {"tol": 1e-9, "min_size": cluster_w / 2, "max_size": 1.5 * cluster_w},
        },
    ]
    balanced, bad_name, bounded = launch(3, cases, tmp_path)
    assert_equals_single(balanced, scores, sizes, 0.05, tol=1e-9, cluster_weights=cluster_w)
    assert_equals_single(
        bounded, scores, sizes, 0.05, tol=1e-9, min_size=cluster_w / 2, max_size=1.5 * cluster_w
    )
    counts = bounded[0]["result"]["counts"]
    assert np.all(counts >= np.floor(513 * cluster_w / 2)) and counts.sum() == 513
    assert np.all(counts <= np.ceil(513 * 1.5 * cluster_w))
    counts = balanced[0]["result"]["counts"]
    lower, upper = otlabel.count_bounds(513, cluster_w)
    assert np.all(lower <= counts) and np.all(counts <= upper) and counts.sum() == 513
    for outcome in bad_name:
        assert outcome["error"][0] == "ValueError"
        assert outcome["error"][1].startswith("rank 0: rounding: expected one of")


def test_needs_an_initialised_process_group():
    import otlabel.distributed

    with pytest.raises(RuntimeError, match="init_process_group"):
        otlabel.distributed.assign(np.zeros((4, 2)))


@pytest.mark.gpu
def test_nccl_ranks_on_gpus_equal_the_single_process_solve(tmp_path, rng):
    """One rank per GPU (NCCL needs distinct devices): 1 rank on a one-GPU machine."""
    if not torch.cuda.is_available() or not torch.distributed.is_nccl_available():
        pytest.skip("no CUDA device or no NCCL")
    world = min(torch.cuda.device_count(), 2)
    scores = rng.normal(size=(400, 6)) * 2
    sizes = [400 // world + 400 % world] + [400 // world] * (world - 1)
    cases = [{"shards": shards_of(scores, sizes), "epsilon": 0.1, "kwargs": {"tol": 1e-9}}]
    (balanced,) = launch(world, cases, tmp_path, backend="nccl")
    assert_equals_single(balanced, scores, sizes, 0.1, tol=1e-9)


def test_every_constraint_on_two_and_three_ranks_equals_one_process(tmp_path, rng):
    """Relaxed sizes, partial mass and known labels (counted over all ranks)."""
    scores = rng.normal(size=(420, 5)) * 2 + np.linspace(1, -1, 5)
    known = np.where(rng.random(420) < 0.1, rng.integers(0, 5, 420), -1)
    constraints = [
        {"size_penalty": 0.5},
        {"mass": 0.8},
        {"mass": 0.8, "size_penalty": 0.5},
        {"known_labels": known},
        {"known_labels": known, "mass": 0.9, "size_penalty": 0.5},
    ]
    for world, sizes in ((2, [150, 270]), (3, [100, 200, 120])):
        cases = []
        for kwargs in constraints:
            shared = {k: v for k, v in kwargs.items() if k != "known_labels"}
            case = {
                "shards": shards_of(scores, sizes),
                "epsilon": 0.1,
                "kwargs": {"tol": 1e-9, **shared},
            }
            if "known_labels" in kwargs:
                case["per_rank"] = {"known_labels": shards_of(kwargs["known_labels"], sizes)}
            cases.append(case)
        folder = tmp_path / f"world{world}"
        folder.mkdir()
        outcomes = launch(world, cases, folder)
        for kwargs, per_rank in zip(constraints, outcomes, strict=True):
            single = otlabel.assign(scores, 0.1, tol=1e-9, method="log", backend="numpy", **kwargs)
            assert_same_solution(per_rank, single, sizes)


def assert_same_solution(per_rank, single, sizes):
    """Each rank's labels those of its rows in ``single``; counts and potentials global."""
    offsets = np.cumsum([0, *sizes])
    for rank, outcome in enumerate(per_rank):
        assert "result" in outcome, outcome
        result = outcome["result"]
        own = slice(offsets[rank], offsets[rank + 1])
        np.testing.assert_array_equal(result["labels"], single.labels[own])
        np.testing.assert_array_equal(result["counts"], single.counts)
        np.testing.assert_allclose(result["potential"], single.potential, atol=1e-7)
        if single.unassigned_potential is not None:
            assert result["unassigned_potential"] == pytest.approx(
                single.unassigned_potential, abs=1e-7
            )


def test_known_labels_are_checked_over_the_group(tmp_path, rng):
    """Known labels are counted over the group: a rank whose every label is known, or
    whose known samples alone would fill a cluster of its own rows, solves with the
    others; only the group's labels can leave nothing to solve or fill a cluster."""
    scores = rng.normal(size=(10, 3))
    sizes = {"all known": [2, 8], "full here": [3, 7], "none free": [2, 8], "full": [5, 5]}
    known = {
        "all known": [0, 1] + [-1] * 8,  # rank 0: its 2 rows, both known
        "full here": [0, 0] + [-1] * 8,  # rank 0: 2 of its 3 rows in cluster 0
        "none free": [0, 1, 2, 0, 1, 2, 0, 1, 2, 0],
        "full": [0, 0, 0, -1, -1, 0, 0, -1, -1, -1],  # 5 of 10 in cluster 0
    }
    cases = [
        {
            "shards": shards_of(scores, sizes[name]),
            "epsilon": 0.1,
            "kwargs": {"tol": 1e-9},
            "per_rank": {"known_labels": shards_of(np.array(labels), sizes[name])},
        }
        for name, labels in known.items()
    ]
    all_known, full_here, none_free, full = launch(2, cases, tmp_path)

    for name, per_rank in (("all known", all_known), ("full here", full_here)):
        single = otlabel.assign(
            scores, 0.1, tol=1e-9, method="log", backend="numpy", known_labels=known[name]
        )
        assert_same_solution(per_rank, single, sizes[name])
    first = all_known[0]["result"]
    assert first["labels"].tolist() == [0, 1] and np.isnan(first["row_potential"]).all()
    assert all_known[1]["result"]["n_iter"] == first["n_iter"]
    nothing = (
        "known_labels: every sample's label is given, on every rank; there is nothing to solve"
    )
    with pytest.raises(ValueError) as too_many:
        otlabel.assign(scores, 0.1, known_labels=np.array(known["full"]))
    for outcome in none_free:
        assert outcome == {"error": ("ValueError", nothing)}
    for outcome in full:  # the single-process message: the group's sums
        assert outcome == {"error": ("ValueError", str(too_many.value))}


def test_a_rank_without_free_rows_takes_every_step(tmp_path, rng):
    """Three ranks, the middle one's labels all known, the first's none: every
    constraint, both roundings, a given start and Torch give the one-process solve."""
    scores = rng.normal(size=(150, 4)) * 2 + np.linspace(1, -1, 4)
    sizes = [50, 12, 88]
    known = np.full(150, -1)
    known[50:62] = np.argmax(scores[50:62], axis=1)  # rank 1: every row known
    known[100:110] = rng.integers(0, 4, 10)
    options = [
        {},
        {"rounding": "argmax"},
        {"min_size": 0.15, "max_size": 0.4},
        {"size_penalty": 0.5},
        {"mass": 0.9},
        {"init": np.array([0.2, -0.1, 0.0, -0.1])},
    ]
    cases = [
        {
            "shards": shards_of(scores, sizes),
            "epsilon": 0.1,
            "kwargs": {"tol": 1e-9, **kwargs},
            "per_rank": {"known_labels": [None, known[50:62], known[62:]]},
        }
        for kwargs in options
    ]
    cases.append({**cases[0], "torch": True})
    outcomes = launch(3, cases, tmp_path)
    for kwargs, per_rank in zip([*options, {}], outcomes, strict=True):
        single = otlabel.assign(
            scores, 0.1, tol=1e-9, method="log", backend="numpy", known_labels=known, **kwargs
        )
        assert_same_solution(per_rank, single, sizes)
    assert outcomes[-1][1]["result"]["labels_type"] == "torch"


def test_arguments_that_differ_between_ranks_raise_on_every_rank(tmp_path, rng):
    """Every argument that sets the steps or the answer is compared in one exchange:
    the same error on every rank, naming the argument and each rank's value."""
    scores = rng.normal(size=(40, 4))
    shards = shards_of(scores, [15, 25])
    batches = [rng.normal(size=(8, 5)), rng.normal(size=(8, 4))]
    with_nan = [shards[0], shards[1].copy()]
    with_nan[1][3, 2] = np.nan

    def differing(name, values, **kwargs):
        return {"shards": shards, "epsilon": 0.1, "kwargs": kwargs, "per_rank": {name: values}}

    expected = {
        "rounding: every rank needs the same value, got 'balanced' on rank 0, 'argmax' "
        "on rank 1": differing("rounding", ["balanced", "argmax"]),
        "max_iter: every rank needs the same value, got 3 on rank 0, 50 on rank 1": differing(
            "max_iter", [3, 50], tol=1e-12
        ),
        "epsilon: every rank needs the same value, got 0.1 on rank 0, 0.05 on rank 1": {
            "shards": shards,
            "epsilon": [0.1, 0.05],
        },
        "local_scores: every rank needs the same array library, got 'numpy' on rank 0, "
        "'torch' on rank 1; backend: every rank needs the same value, got 'numba' on rank 0, "
        "'torch' on rank 1": {"shards": shards, "epsilon": 0.1, "torch": [False, True]},
        "local_scores: every rank needs the same dtype, got 'float64' on rank 0, 'float32' "
        "on rank 1": {"shards": [shards[0], shards[1].astype(np.float32)], "epsilon": 0.1},
        "cluster_weights: every rank needs the same value, got [1., 2., 3., 4.] on rank 0, "
        "[1., 2., 3., 5.] on rank 1": differing("cluster_weights", [[1, 2, 3, 4], [1, 2, 3, 5]]),
        "size_penalty: every rank needs the same value, got None on rank 0, 0.5 on rank 1": (
            differing("size_penalty", [None, 0.5])
        ),
        "init: every rank needs the same value, got None on rank 0, [0., 0., 0., 0.] on rank 1": (
            differing("init", [None, np.zeros(4)])
        ),
        "scores: every rank needs the same K, got 5 on rank 0, 4 on rank 1": {
            "shards": batches,
            "epsilon": 0.1,
            "soft": True,
        },
        "tol: every rank needs the same value, got None on rank 0, 1e-06 on rank 1": {
            "shards": shards,
            "epsilon": 0.1,
            "soft": True,
            "per_rank": {"tol": [None, 1e-6]},
        },
        "rank 1: scores: contains NaN or +inf; scores must be finite, or -inf for a "
        "sample-cluster pair that is forbidden (its code is 0)": {
            "shards": with_nan,
            "epsilon": 0.1,
            "soft": True,
        },
    }
    agreed = {"shards": shards, "epsilon": 0.1, "kwargs": {"tol": 1e-9, "rounding": "argmax"}}
    *refused, solved = launch(2, [*expected.values(), agreed], tmp_path)
    for message, per_rank in zip(expected, refused, strict=True):
        for outcome in per_rank:
            assert outcome == {"error": ("ValueError", message)}
    assert_equals_single(solved, scores, [15, 25], 0.1, tol=1e-9, rounding="argmax")
