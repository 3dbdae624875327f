"""otlabel.sela: metrics, schedules, the labeler, heads, evaluation, data and training."""

from __future__ import annotations

import itertools
import json
import pickle
import re

import numpy as np
import pytest

torch = pytest.importorskip("torch")
sklearn_metrics = pytest.importorskip("sklearn.metrics")

import otlabel  # noqa: E402
from otlabel.cli import main  # noqa: E402
from otlabel.sela import (  # noqa: E402
    LabelSchedule,
    MultiHeadClassifier,
    SelfLabeler,
    knn_accuracy,
    linear_probe_accuracy,
    metrics,
)
from otlabel.sela.data import (  # noqa: E402
    augment,
    imbalanced_indices,
    known_label_sample,
    load_cifar10,
)
from otlabel.sela.evaluate import knn_predict  # noqa: E402
from otlabel.sela.train import Data, TrainConfig, load_data, train  # noqa: E402

# ---------------------------------------------------------------------------
# metrics
# ---------------------------------------------------------------------------


def _label_pairs():
    rng = np.random.default_rng(7)
    pairs = [
        ([0, 0, 1, 1], [1, 1, 0, 0]),  # a renaming
        ([0, 0, 0, 0], [0, 0, 0, 0]),  # one class, one cluster
        ([0, 0, 0, 0], [0, 1, 2, 3]),  # one class, singletons
        ([0, 1, 2, 3], [0, 0, 0, 0]),
        ([0, 1], [5, 9]),
    ]
    for _ in range(40):
        n = int(rng.integers(2, 400))
        truth = rng.integers(0, int(rng.integers(1, 12)), n)
        noisy = np.where(rng.random(n) < rng.random(), rng.integers(0, 15, n), truth * 3 + 1)
        pairs.append((truth, noisy))
    return pairs


@pytest.mark.parametrize("truth, found", _label_pairs())
def test_metrics_agree_with_scikit_learn(truth, found):
    assert metrics.nmi(truth, found) == pytest.approx(
        sklearn_metrics.normalized_mutual_info_score(truth, found), abs=1e-12
    )
    assert metrics.adjusted_nmi(truth, found) == pytest.approx(
        sklearn_metrics.adjusted_mutual_info_score(truth, found), abs=1e-10
    )
    assert metrics.ari(truth, found) == pytest.approx(
        sklearn_metrics.adjusted_rand_score(truth, found), abs=1e-12
    )


def test_hungarian_accuracy_is_the_best_matching():
    rng = np.random.default_rng(3)
    for _ in range(20):
        truth, found = rng.integers(0, 4, 60), rng.integers(0, 4, 60)
        best = max(
            np.mean(np.asarray(perm)[found] == truth) for perm in itertools.permutations(range(4))
        )
        assert metrics.hungarian_accuracy(truth, found) == pytest.approx(best)


def test_metrics_accept_tensors_and_reject_bad_labels():
    truth = torch.tensor([0, 0, 1, 1])
    assert metrics.nmi(truth, torch.tensor([1, 1, 0, 0])) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="same length"):
        metrics.nmi([0, 1], [0, 1, 2])
    with pytest.raises(TypeError, match="integers"):
        metrics.ari([0.5, 1.0], [0, 1])
    with pytest.raises(ValueError, match="one-dimensional"):
        metrics.nmi(np.zeros((2, 2), int), np.zeros((2, 2), int))
    with pytest.raises(ValueError, match="empty"):
        metrics.nmi([], [])


def test_cluster_sizes_and_sela_cost():
    assert metrics.cluster_sizes([0, 2, 2], n_clusters=4).tolist() == [1, 0, 2, 0]
    log_p = np.log(np.array([[0.5, 0.5], [0.9, 0.1]]))
    assert metrics.sela_cost(log_p, [0, 0]) == pytest.approx(-(np.log(0.5) + np.log(0.9)) / 2)
    result = otlabel.assign(log_p.astype(np.float32), 0.1, rounding="argmax")
    assert metrics.sela_cost(log_p, result.labels) == pytest.approx(-result.cost, rel=1e-6)
    with pytest.raises(ValueError, match="log_probabilities"):
        metrics.sela_cost(log_p, [0, 0, 1])


def test_collapse_alarm():
    alarm = metrics.CollapseAlarm(n_clusters=4, patience=3, margin=0.1)
    near = 0.95 * np.log(4)
    assert [alarm.update(x) for x in (near, near, 0.5, near, near, near, near)] == [
        False,
        False,
        False,
        False,
        False,
        True,
        True,
    ]
    with pytest.raises(ValueError, match="patience"):
        metrics.CollapseAlarm(4, patience=0)
    with pytest.raises(ValueError, match="n_clusters"):
        metrics.CollapseAlarm(1)


# ---------------------------------------------------------------------------
# schedules
# ---------------------------------------------------------------------------


def test_quadratic_schedule_is_selas_spacing():
    schedule = LabelSchedule(n_epochs=100, n_updates=80)
    expected = 100 * (np.arange(80) / 80) ** 2
    np.testing.assert_allclose(schedule.times, expected, atol=1e-9)
    assert schedule.times[0] == 0 and schedule.times[-1] < 100
    epochs = schedule.update_epochs()
    assert np.all(np.diff(schedule.times) > 0)
    # frequent early, rare late: 8 updates fall in the first epoch, none in most late epochs
    assert (epochs == 0).sum() == 8 and len(np.unique(epochs[epochs >= 50])) < 25


def test_linear_schedule_updates_every_epoch_and_heads_rotate():
    schedule = LabelSchedule(n_epochs=5, n_updates=5, spacing="linear", heads="rotate", n_heads=3)
    assert schedule.update_epochs().tolist() == [0, 1, 2, 3, 4]
    assert [schedule.due(e, e + 1) for e in range(5)] == [[0], [1], [2], [3], [4]]
    assert [schedule.heads_for(u) for u in range(4)] == [[0], [1], [2], [0]]
    assert LabelSchedule(5, 5, n_heads=2).heads_for(3) == [0, 1]
    # updates inside an epoch are due in exactly one batch window
    windows = [schedule.due(b / 7, (b + 1) / 7) for b in range(35)]
    assert sorted(u for window in windows for u in window) == [0, 1, 2, 3, 4]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"n_epochs": 0, "n_updates": 3}, "n_epochs"),
        ({"n_epochs": 3, "n_updates": 2.5}, "n_updates"),
        ({"n_epochs": 3, "n_updates": 3, "spacing": "cubic"}, "spacing"),
        ({"n_epochs": 3, "n_updates": 3, "heads": "some"}, "heads"),
    ],
)
def test_schedule_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LabelSchedule(**kwargs)


# ---------------------------------------------------------------------------
# the labeler and the heads
# ---------------------------------------------------------------------------


def _toy_model(n_features=6, n_clusters=(4, 6), seed=0):
    torch.manual_seed(seed)
    return MultiHeadClassifier(torch.nn.Identity(), n_features, list(n_clusters))


def _loader(inputs, batch=7):
    indices = torch.arange(inputs.shape[0])
    return list(zip(inputs.split(batch), indices.split(batch), strict=True))


def test_balanced_random_start():
    labeler = SelfLabeler(103, [4, 7], seed=1)
    for head, k in enumerate([4, 7]):
        sizes = torch.bincount(labeler.labels[head], minlength=k)
        assert sizes.max() - sizes.min() <= 1 and sizes.sum() == 103
    assert not torch.equal(labeler.labels[0], torch.arange(103) % 4)  # shuffled
    assert torch.equal(SelfLabeler(103, [4, 7], seed=1).labels, labeler.labels)


def test_update_solves_every_head_exactly_balanced_and_warm_starts():
    inputs = torch.randn(120, 6, generator=torch.Generator().manual_seed(0))
    model = _toy_model()
    labeler = SelfLabeler(120, [4, 6], epsilon=0.05, seed=0)
    first = labeler.update(model, _loader(inputs))
    with torch.no_grad():
        log_p = [torch.log_softmax(out, 1).numpy() for out in model(inputs)]
    for head, k in enumerate([4, 6]):
        expected = otlabel.assign(log_p[head], 0.05)
        np.testing.assert_array_equal(labeler.labels[head].numpy(), expected.labels)
        assert torch.bincount(labeler.labels[head]).tolist() == [120 // k] * k
    second = labeler.update(model, _loader(inputs))  # same scores, warm: converged at once
    assert np.all(second.n_iter <= 1) and np.all(first.n_iter > 1)
    np.testing.assert_array_equal(np.asarray(second.labels[0]), labeler.labels[0].numpy())


def test_update_one_head_leaves_the_others():
    inputs = torch.randn(60, 6, generator=torch.Generator().manual_seed(1))
    labeler = SelfLabeler(60, [4, 6], seed=0)
    before = labeler.labels[0].clone()
    labeler.update(_toy_model(), _loader(inputs), heads=[1])
    assert torch.equal(labeler.labels[0], before)
    assert labeler.potentials is not None and np.all(labeler.potentials[0] == 0)
    with pytest.raises(ValueError, match="heads"):
        labeler.update(_toy_model(), _loader(inputs), heads=[2])


def test_scores_restores_mode_and_checks_the_loader_and_model():
    inputs = torch.randn(30, 6)
    model = _toy_model()
    model.train()
    labeler = SelfLabeler(30, [4, 6], mode="eval")
    labeler.scores(model, _loader(inputs))
    assert model.training
    with pytest.raises(ValueError, match="covered 28 of 30"):
        labeler.scores(model, _loader(inputs)[:4])
    with pytest.raises(ValueError, match="n_clusters"):
        SelfLabeler(30, [4, 5]).scores(model, _loader(inputs))
    with pytest.raises(ValueError, match="mode"):
        SelfLabeler(30, 4, mode="test")
    with pytest.raises(ValueError, match="exceeds n_samples"):
        SelfLabeler(3, 4)


def test_labeler_state_round_trip():
    inputs = torch.randn(40, 6)
    labeler = SelfLabeler(40, [4, 6], seed=0)
    labeler.update(_toy_model(), _loader(inputs))
    restored = SelfLabeler(40, [4, 6], seed=5)
    restored.load_state_dict(labeler.state_dict())
    assert torch.equal(restored.labels, labeler.labels)
    np.testing.assert_array_equal(restored.potentials[1], labeler.potentials[1])
    with pytest.raises(ValueError, match="shape"):
        SelfLabeler(41, [4, 6]).load_state_dict(labeler.state_dict())


def test_labeler_state_loads_with_plain_torch_load(tmp_path):
    """The state holds tensors only: torch.load's default weights_only=True reads it."""
    inputs = torch.randn(50, 6, generator=torch.Generator().manual_seed(11))
    labeler = SelfLabeler(50, [4, 6], seed=0, mass=0.8, soft_targets=True)
    labeler.update(_toy_model(), _loader(inputs))
    torch.save({"labeler": labeler.state_dict()}, tmp_path / "checkpoint.pt")
    state = torch.load(tmp_path / "checkpoint.pt")  # plain: weights_only=True
    restored = SelfLabeler(50, [4, 6], seed=3, mass=0.8, soft_targets=True)
    restored.load_state_dict(state["labeler"])
    assert torch.equal(restored.labels, labeler.labels)
    for head in range(2):
        assert restored.potentials[head].dtype == np.float64
        assert restored.potentials[head].shape == (labeler.n_clusters[head] + 1,)
        np.testing.assert_array_equal(restored.potentials[head], labeler.potentials[head])
    codes = zip(labeler.codes(torch.arange(50)), restored.codes(torch.arange(50)), strict=True)
    for before, after in codes:
        assert torch.equal(before, after)


def test_labeler_loads_a_state_with_numpy_potentials():
    """States written before the potentials were tensors still load."""
    inputs = torch.randn(40, 6, generator=torch.Generator().manual_seed(12))
    labeler = SelfLabeler(40, [4, 6], seed=0)
    labeler.update(_toy_model(), _loader(inputs))
    earlier = {
        "labels": labeler.labels.clone(),
        "potentials": [p.copy() for p in labeler.potentials],
        "soft_codes": None,
    }
    restored = SelfLabeler(40, [4, 6], seed=5)
    restored.load_state_dict(earlier)
    assert torch.equal(restored.labels, labeler.labels)
    np.testing.assert_array_equal(restored.potentials[0], labeler.potentials[0])


def test_multi_head_loss_is_the_mean_cross_entropy():
    model = _toy_model()
    inputs, labels = torch.randn(5, 6), torch.tensor([[0, 1, 2, 3, 0], [5, 4, 3, 2, 1]])
    logits = model(inputs)
    expected = (
        torch.nn.functional.cross_entropy(logits[0], labels[0])
        + torch.nn.functional.cross_entropy(logits[1], labels[1])
    ) / 2
    assert torch.allclose(model.loss(logits, labels), expected)
    head = model.heads[0].weight.clone()
    model.reset_heads([0])
    assert not torch.equal(head, model.heads[0].weight)


# ---------------------------------------------------------------------------
# evaluation
# ---------------------------------------------------------------------------


def test_knn_matches_a_direct_weighted_vote():
    rng = np.random.default_rng(0)
    train_x, test_x = rng.normal(size=(80, 5)), rng.normal(size=(30, 5))
    train_y = rng.integers(0, 3, 80)
    predicted = knn_predict(train_x, train_y, test_x, k=7, temperature=0.5, batch_size=8)
    unit = train_x / np.linalg.norm(train_x, axis=1, keepdims=True)
    for row, x in enumerate(test_x):
        similarity = unit @ (x / np.linalg.norm(x))
        nearest = np.argsort(-similarity)[:7]
        votes = np.bincount(train_y[nearest], np.exp(similarity[nearest] / 0.5), minlength=3)
        assert predicted[row] == votes.argmax()
    with pytest.raises(ValueError, match="k must"):
        knn_predict(train_x, train_y, test_x, k=0)
    with pytest.raises(ValueError, match="rows"):
        knn_predict(train_x, train_y[:5], test_x)


def test_linear_probe_separates_separable_classes():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 200)
    x = rng.normal(size=(200, 4)) + 6 * np.eye(4)[y]
    assert linear_probe_accuracy(x[:150], y[:150], x[150:], y[150:]) == 1.0
    assert knn_accuracy(x[:150], y[:150], x[150:], y[150:]) == 1.0


# ---------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------


def _write_cifar(folder, n_per_batch=4, bad=None):
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8)
        if bad == "shape":
            data = data[:, :100]
        batch = {b"data": data, b"labels": list(rng.integers(0, 10, n_per_batch))}
        with open(folder / name, "wb") as file:
            pickle.dump(batch, file)
    return folder


def test_cifar10_loader_reads_pickle_batches(tmp_path):
    _write_cifar(tmp_path)
    images, labels = load_cifar10(tmp_path)
    assert images.shape == (20, 3, 32, 32) and images.dtype == np.uint8 and labels.shape == (20,)
    with open(tmp_path / "data_batch_2", "rb") as file:
        second = pickle.load(file, encoding="bytes")
    np.testing.assert_array_equal(images[4:8].reshape(4, -1), second[b"data"])
    test_images, _ = load_cifar10(tmp_path, train=False)
    assert test_images.shape == (4, 3, 32, 32)


def test_cifar10_loader_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="cifar-10-batches-py"):
        load_cifar10(tmp_path)
    _write_cifar(tmp_path, bad="shape")
    with pytest.raises(ValueError, match=r"\(n, 3072\)"):
        load_cifar10(tmp_path)


def test_imbalance_and_augmentation():
    targets = np.repeat(np.arange(10), 100)
    light = np.bincount(targets[imbalanced_indices(targets, "light")])
    heavy = np.bincount(targets[imbalanced_indices(targets, "heavy")])
    assert light[0] == 100 and light[-1] == 50 and np.all(np.diff(light) <= 0)
    assert heavy[0] == 100 and heavy[-1] == 10 and np.all(np.diff(heavy) < 0)
    assert imbalanced_indices(targets, "none").size == 1000
    with pytest.raises(ValueError, match="kind"):
        imbalanced_indices(targets, "some")
    images = torch.rand(4, 1, 8, 8)
    first = augment(images, torch.Generator().manual_seed(3))
    assert first.shape == images.shape
    assert torch.equal(first, augment(images, torch.Generator().manual_seed(3)))
    assert not torch.allclose(first, images)


# ---------------------------------------------------------------------------
# training end to end (tiny, synthetic)
# ---------------------------------------------------------------------------


def _synthetic_data(n_per_class=30, n_classes=3):
    rng = np.random.default_rng(0)
    prototypes = rng.random((n_classes, 1, 8, 8)).astype(np.float32)
    targets = np.repeat(np.arange(n_classes), n_per_class)
    images = prototypes[targets] + 0.1 * rng.normal(size=(targets.size, 1, 8, 8)).astype(np.float32)
    return Data.of(images, targets)


TINY = TrainConfig(epochs=3, n_updates=3, n_clusters=(3, 6), width=4, batch_size=32)


@pytest.mark.parametrize("method", ["sela", "deepcluster"])
def test_tiny_training_run(tmp_path, method):
    config = TrainConfig(**{**TINY.__dict__, "method": method})
    result = train(config, _synthetic_data(), tmp_path)
    assert [r["epoch"] for r in result.history] == [1, 2, 3]
    assert set(result.final) >= {"nmi", "ami", "ari", "accuracy", "knn", "linear", "sizes"}
    if method == "sela":  # exactly balanced self-labels and final clustering
        assert np.bincount(result.labels[0]).tolist() == [30, 30, 30]
        assert np.bincount(result.labels[1]).tolist() == [15] * 6
        assert result.final["sizes"] == [30, 30, 30]
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert [r["loss"] for r in saved] == [r["loss"] for r in result.history]


def test_resumed_run_gives_the_same_labels(tmp_path):
    data = _synthetic_data()
    whole = train(TINY, data, tmp_path / "whole")
    train(TINY, data, tmp_path / "killed", until_epoch=2)
    resumed = train(TINY, data, tmp_path / "killed")
    np.testing.assert_array_equal(resumed.labels, whole.labels)
    assert [r["loss"] for r in resumed.history] == [r["loss"] for r in whole.history]
    assert resumed.final["nmi"] == whole.final["nmi"]
    other = TrainConfig(**{**TINY.__dict__, "seed": 1})
    with pytest.raises(ValueError, match="another configuration"):
        train(other, data, tmp_path / "killed")


def test_train_config_rejects_bad_values():
    with pytest.raises(ValueError, match="method"):
        TrainConfig(method="swav")
    with pytest.raises(ValueError, match="cluster_prior"):
        TrainConfig(cluster_prior="learned")


def test_cli_train_runs_the_experiment(tmp_path, capsys):
    """Any seed list works: the plots take the first seed's runs, not seed 0's."""
    out = tmp_path / "results"
    status = main(
        [
            "train",
            "--out",
            str(out),
            "--epochs",
            "1",
            "--seeds",
            "3",
            "--imbalance",
            "heavy",
            "--no-progress",
        ]
    )
    assert status == 0
    summary = json.loads((out / "results.json").read_text())
    rows = summary["results"]["heavy"]
    assert set(rows) == {
        "k-means, raw pixels",
        "k-means, untrained network",
        "DeepCluster-style",
        "SeLa (otlabel)",
        "SeLa, relaxed sizes tau=1",
    }
    assert rows["k-means, raw pixels"]["nmi"][0] > 0.5  # digits: k-means on pixels works
    assert (out / "results.md").read_text().count("| SeLa (otlabel) |") == 1
    assert summary["seeds"] == [3]
    assert (out / "runs" / "heavy-sela-seed3" / "final.json").exists()
    assert (out / "sela-curves.png").stat().st_size > 0
    assert (out / "sela-cluster-sizes.png").stat().st_size > 0
    assert "results.md" in capsys.readouterr().out


def test_cli_train_known_and_holdout_tables(tmp_path):
    out = tmp_path / "results"
    argv = ["train", "--out", str(out), "--epochs", "1", "--seeds", "7", "--no-progress"]
    argv += ["--experiments", "known", "holdout", "--known-fraction", "0.05"]
    assert main(argv) == 0
    summary = json.loads((out / "results.json").read_text())
    assert set(summary["results"]) == {"known", "holdout"}
    known = summary["results"]["known"]
    assert set(known) == {
        "SeLa, no labels known",
        "supervised, 5% labels alone",
        "SeLa, 5% labels known",
    }
    assert "accuracy_unlabelled" in known["SeLa, 5% labels known"]
    assert known["SeLa, 5% labels known"]["per_seed"]["nmi"][0] == pytest.approx(
        known["SeLa, 5% labels known"]["nmi"][0]
    )
    holdout = summary["results"]["holdout"]["SeLa (otlabel)"]
    assert 0.0 <= holdout["heldout_accuracy"][0] <= 1.0
    assert summary["commit"]  # the source the tables came from, and the command
    assert summary["command"].startswith("otlabel train --out ")
    markdown = (out / "results.md").read_text()
    assert "held-out accuracy" in markdown and "accuracy, unlabelled" in markdown
    with pytest.raises(SystemExit):
        main(["train", "--experiments", "everything"])


def test_the_guide_example_runs():
    """The loop in docs/sela.md runs as printed."""
    from pathlib import Path

    text = (Path(__file__).parents[1] / "docs" / "sela.md").read_text()
    code = text.split("```python\n")[1].split("```")[0]
    exec(compile(code, "docs/sela.md", "exec"), {})


def test_per_head_cluster_weights_follow_the_solved_heads():
    inputs = torch.randn(100, 6, generator=torch.Generator().manual_seed(2))
    weights = [np.array([4.0, 3.0, 2.0, 1.0]), np.ones(6)]
    labeler = SelfLabeler(100, [4, 6], seed=0, cluster_weights=weights)
    labeler.update(_toy_model(), _loader(inputs), heads=[0])
    assert torch.bincount(labeler.labels[0]).tolist() == [40, 30, 20, 10]
    labeler.update(_toy_model(), _loader(inputs), heads=[1])
    sizes = torch.bincount(labeler.labels[1])
    assert sizes.max() - sizes.min() <= 1
    with pytest.raises(ValueError, match="one entry per head"):
        SelfLabeler(100, [4, 6], cluster_weights=[np.ones(4)]).update(_toy_model(), _loader(inputs))


def test_labeler_takes_every_constraint_and_predicts_new_data():
    """Relaxed sizes, partial mass and known labels through the labeler; labels of data
    it never saw from the last potentials, as otlabel.predict gives them."""
    inputs = torch.randn(200, 6, generator=torch.Generator().manual_seed(3))
    model = _toy_model(n_clusters=(4, 6))
    known = np.where(np.arange(200) % 10 == 0, np.arange(200) % 4, -1)
    labeler = SelfLabeler(200, [4, 4], epsilon=0.1, size_penalty=0.5, mass=0.9, known_labels=known)
    assert torch.equal(
        labeler.labels[:, known >= 0], torch.as_tensor(known[known >= 0]).expand(2, -1)
    )
    with pytest.raises(ValueError, match="predict: no labels"):
        labeler.predict(model, _loader(inputs))
    model = _toy_model(n_clusters=(4, 4))
    result = labeler.update(model, _loader(inputs))
    for head in range(2):
        labels = labeler.labels[head].numpy()
        np.testing.assert_array_equal(labels[known >= 0], known[known >= 0])  # kept
        assert np.sum(labels == -1) == 20  # 1 - mass of the samples, never a known one
        assert labeler.potentials[head].shape == (5,)  # with the unassigned potential
    unseen = torch.randn(37, 6, generator=torch.Generator().manual_seed(4))
    predicted = labeler.predict(model, _loader(unseen))
    assert predicted.shape == (2, 37)
    with torch.no_grad():
        log_p = [torch.log_softmax(out, 1).numpy() for out in model(unseen)]
    for head in range(2):
        expected = otlabel.predict(
            log_p[head],
            np.asarray(result.potential[head]),
            unassigned=float(result.unassigned_potential[head]),
        )
        np.testing.assert_array_equal(predicted[head].numpy(), expected)
    codes = labeler.predict(model, _loader(unseen), soft=True)
    assert len(codes) == 2 and codes[0].shape == (37, 4)
    # the loss ignores unassigned samples
    logits = model(inputs[:7])
    labels = labeler[torch.arange(7)]
    loss = MultiHeadClassifier.loss(logits, labels)
    assert torch.isfinite(loss)


# ---------------------------------------------------------------------------
# soft targets, known labels, held-out data, seeds that draw the data
# ---------------------------------------------------------------------------


def test_soft_codes_are_the_normalised_plan_rows_and_known_samples_are_one_hot():
    inputs = torch.randn(120, 6, generator=torch.Generator().manual_seed(5))
    model = _toy_model(n_clusters=(4, 6))
    known = np.where(np.arange(120) % 12 == 0, np.arange(120) % 4, -1)
    labeler = SelfLabeler(120, [4, 6], epsilon=0.2, soft_targets=True, known_labels=known)
    before = labeler.codes(torch.arange(120))  # one-hot of the start labels
    assert torch.equal(before[0].argmax(1), labeler.labels[0])
    result = labeler.update(model, _loader(inputs))
    codes = labeler.codes(torch.arange(120))
    with torch.no_grad():
        log_p = [torch.log_softmax(out, 1).numpy() for out in model(inputs)]
    for head, k in enumerate([4, 6]):
        assert codes[head].shape == (120, k)
        torch.testing.assert_close(codes[head].sum(1), torch.ones(120))
        expected = otlabel.predict(
            log_p[head], np.asarray(result.potential[head]), soft=True, epsilon=0.2
        )
        unknown = known < 0
        np.testing.assert_allclose(codes[head][unknown].numpy(), expected[unknown], atol=1e-6)
        one_hot = torch.nn.functional.one_hot(torch.as_tensor(known[~unknown]), k).float()
        assert torch.equal(codes[head][~unknown], one_hot)
    restored = SelfLabeler(120, [4, 6], epsilon=0.2, soft_targets=True, known_labels=known)
    restored.load_state_dict(labeler.state_dict())
    assert torch.equal(restored.codes(torch.arange(9))[1], codes[1][:9])
    with pytest.raises(ValueError, match="soft_targets=True"):
        SelfLabeler(120, 4).codes(torch.arange(3))


def test_soft_target_loss_is_the_cross_entropy_against_the_codes():
    torch.manual_seed(0)
    logits = [torch.randn(9, 4), torch.randn(9, 6)]
    codes = [torch.softmax(torch.randn(9, 4), 1), torch.softmax(torch.randn(9, 6), 1)]
    loss = MultiHeadClassifier.loss(logits, codes)
    by_hand = [
        -(q * torch.log_softmax(z, 1)).sum(1).mean() for z, q in zip(logits, codes, strict=True)
    ]
    torch.testing.assert_close(loss, torch.stack(by_hand).mean())
    labels = torch.stack([torch.randint(0, 4, (9,)), torch.randint(0, 6, (9,))])
    one_hot = [torch.nn.functional.one_hot(labels[h], k).float() for h, k in enumerate([4, 6])]
    torch.testing.assert_close(
        MultiHeadClassifier.loss(logits, one_hot), MultiHeadClassifier.loss(logits, labels)
    )


def test_partial_mass_soft_targets_give_unassigned_samples_no_target():
    """With mass < 1 an unassigned sample's code is a row of zeros, and the loss leaves
    it out exactly as it leaves out label -1."""
    inputs = torch.randn(100, 6, generator=torch.Generator().manual_seed(13))
    model = _toy_model(n_clusters=(4, 6))
    labeler = SelfLabeler(100, [4, 6], epsilon=0.2, mass=0.8, soft_targets=True)
    for _ in range(2):  # the first update builds the codes, the second replaces them
        labeler.update(model, _loader(inputs))
        codes = labeler.codes(torch.arange(100))
        for head in range(2):
            unassigned = labeler.labels[head] < 0
            assert int(unassigned.sum()) == 20
            assert torch.equal(codes[head][unassigned], torch.zeros(20, codes[head].shape[1]))
            torch.testing.assert_close(codes[head][~unassigned].sum(1), torch.ones(80))
    logits = model(inputs)
    assigned = labeler.labels[0] >= 0
    expected = torch.nn.functional.cross_entropy(
        logits[0][assigned], codes[0][assigned], reduction="mean"
    )
    torch.testing.assert_close(MultiHeadClassifier.loss(logits[:1], codes[:1]), expected)


def test_soft_rows_of_zeros_are_left_out_as_label_minus_one_is():
    torch.manual_seed(1)
    logits = [torch.randn(9, 4, requires_grad=True), torch.randn(9, 6)]
    labels = torch.stack([torch.randint(0, 4, (9,)), torch.randint(0, 6, (9,))])
    labels[0, [1, 5]] = -1
    labels[1] = -1  # a head whose batch is all unassigned contributes 0
    one_hot = [
        torch.nn.functional.one_hot(labels[h].clamp(min=0), k).float()
        * (labels[h] >= 0).unsqueeze(1)
        for h, k in enumerate([4, 6])
    ]
    soft = MultiHeadClassifier.loss(logits, one_hot)
    torch.testing.assert_close(soft, MultiHeadClassifier.loss(logits, labels))
    soft.backward()
    assert torch.equal(logits[0].grad[[1, 5]], torch.zeros(2, 4))


def test_codes_before_an_update_give_unassigned_start_labels_zeros():
    """Labels with -1 loaded into a labeler that has no codes yet: zeros, not a crash."""
    inputs = torch.randn(40, 6, generator=torch.Generator().manual_seed(14))
    hard = SelfLabeler(40, [4, 6], mass=0.75)
    hard.update(_toy_model(), _loader(inputs))
    soft = SelfLabeler(40, [4, 6], mass=0.75, soft_targets=True)
    soft.load_state_dict(hard.state_dict())
    codes = soft.codes(torch.arange(40))
    for head in range(2):
        assert torch.equal(codes[head].sum(1), (hard.labels[head] >= 0).float())


def test_known_label_sample_is_stratified_and_drawn_by_the_seed():
    targets = np.repeat(np.arange(4), [100, 60, 30, 10])
    known = known_label_sample(targets, 0.05, seed=1)
    assert np.bincount(known[known >= 0]).tolist() == [5, 3, 2, 1]  # at least one per class
    np.testing.assert_array_equal(known[known >= 0], targets[known >= 0])
    assert not np.array_equal(known, known_label_sample(targets, 0.05, seed=2))
    np.testing.assert_array_equal(known, known_label_sample(targets, 0.05, seed=1))
    assert (known_label_sample(targets, 0.0) == -1).all()
    with pytest.raises(ValueError, match="fraction"):
        known_label_sample(targets, 1.0)


def test_the_seed_draws_the_imbalanced_subset_and_the_split():
    first, again, other = (load_data("digits", "light", seed=s) for s in (4, 4, 5))
    assert np.array_equal(first.targets, again.targets)
    assert np.array_equal(first.test_split, again.test_split)
    assert np.bincount(first.targets).tolist() == np.bincount(other.targets).tolist()
    assert not torch.equal(first.images, other.images)  # same counts, other samples
    balanced = [load_data("digits", "none", seed=s) for s in (4, 5)]
    assert torch.equal(balanced[0].images, balanced[1].images)
    assert not np.array_equal(balanced[0].test_split, balanced[1].test_split)
    for data in (first, other):
        classes = np.bincount(data.targets[data.test_split])
        assert np.all(np.abs(classes - 0.2 * np.bincount(data.targets)) <= 1)  # stratified


@pytest.mark.parametrize("pairs", [_label_pairs()[k] for k in (0, 4, 9, 20, 33)])
def test_cluster_to_class_is_the_hungarian_matching(pairs):
    truth, found = (np.asarray(x) for x in pairs)
    matching = metrics.cluster_to_class(truth, found)
    mapped = np.array([matching.get(int(c), -1) for c in found])
    assert np.mean(mapped == truth) == pytest.approx(metrics.hungarian_accuracy(truth, found))
    assert len(set(matching.values())) == len(matching)  # one-to-one


def _imbalanced_synthetic(counts=(40, 20, 10)):
    rng = np.random.default_rng(1)
    prototypes = rng.random((len(counts), 1, 8, 8)).astype(np.float32)
    targets = np.repeat(np.arange(len(counts)), counts)
    noise = 0.1 * rng.normal(size=(targets.size, 1, 8, 8)).astype(np.float32)
    return Data.of(prototypes[targets] + noise, targets)


def test_known_labels_are_kept_and_scored_without_matching():
    data = _imbalanced_synthetic()
    config = TrainConfig(**{**TINY.__dict__, "known_fraction": 0.1})
    result = train(config, data)
    known = known_label_sample(data.targets, 0.1, config.seed)
    assert (known >= 0).sum() == 7
    for head in result.labels:
        np.testing.assert_array_equal(head[known >= 0], known[known >= 0])
    assert set(result.final) >= {"accuracy_unlabelled", "nmi", "knn"}
    assert 0.0 <= result.final["accuracy_unlabelled"] <= 1.0
    supervised = train(replace_config(config, method="supervised"), data)
    assert "accuracy_unlabelled" in supervised.final
    with pytest.raises(ValueError, match="known_fraction"):
        TrainConfig(method="supervised")


def test_known_weight_anchors_cluster_k_to_class_k(monkeypatch):
    """The known samples' cross-entropy in every step makes cluster k class k; with
    ``known_weight=0`` that term is never computed (the assignment alone keeps them)."""
    from otlabel.sela import train as train_module

    data = _synthetic_data(n_per_class=40)
    config = TrainConfig(**{**TINY.__dict__, "epochs": 6, "n_updates": 6, "known_fraction": 0.1})
    calls = []
    known_loss = train_module._known_loss
    monkeypatch.setattr(
        train_module, "_known_loss", lambda *args: calls.append(1) or known_loss(*args)
    )
    steps = 6 * -(-data.images.shape[0] // config.batch_size)
    for seed in (1, 2):  # seeds on which the assignment alone permutes the classes
        anchored = train(replace_config(config, seed=seed), data)
        assert len(calls) == steps  # one supervised batch per step
        assert anchored.final["accuracy_unlabelled"] == 1.0  # separable classes, no matching
        calls.clear()
    alone = train(replace_config(config, seed=1, known_weight=0.0), data)
    assert calls == []
    assert alone.final["accuracy_unlabelled"] < 0.5
    calls.clear()
    train(replace_config(config, method="deepcluster"), data)  # SeLa's option only
    assert calls == []


def test_the_recorded_loss_is_the_self_labelling_term_alone(monkeypatch):
    from otlabel.sela import train as train_module

    monkeypatch.setattr(  # a constant known-label term: trains the same, would show in a sum
        train_module, "_known_loss", lambda *args: torch.tensor(1e6, requires_grad=True)
    )
    config = TrainConfig(**{**TINY.__dict__, "known_fraction": 0.1})
    result = train(config, _synthetic_data())
    assert all(0 < record["loss"] < 100 for record in result.history)


def test_checkpoints_resume_across_added_fields_and_inert_known_weight(tmp_path):
    """A checkpoint from before ``known_weight`` existed resumes (missing fields take
    their defaults); a weight that cannot act (no known labels) does not block reuse;
    one that acts does."""
    data = _synthetic_data()
    first = train(TINY, data, tmp_path / "run", until_epoch=2)
    checkpoint = tmp_path / "run" / "checkpoint.pt"
    state = torch.load(checkpoint, weights_only=False)
    del state["config"]["known_weight"]  # as written before the field was added
    torch.save(state, checkpoint)
    resumed = train(replace_config(TINY, known_weight=0.5), data, tmp_path / "run")
    assert [r["epoch"] for r in resumed.history] == [1, 2, 3]
    assert resumed.history[:2] == first.history
    known = replace_config(TINY, known_fraction=0.1)
    train(known, data, tmp_path / "known", until_epoch=1)
    with pytest.raises(ValueError, match="another configuration"):
        train(replace_config(known, known_weight=0.5), data, tmp_path / "known")


def test_holdout_trains_on_80_percent_and_labels_the_rest_with_predict():
    data = _synthetic_data()
    result = train(TrainConfig(**{**TINY.__dict__, "holdout": True}), data)
    assert result.labels.shape == (2, data.train_split.size)  # trained on the 80% alone
    assert result.final["sizes"] == [24, 24, 24]  # its balanced clustering
    assert 0.0 <= result.final["heldout_accuracy"] <= 1.0
    # separable prototypes: the held-out images go where their class went in training
    assert result.final["heldout_accuracy"] >= result.final["accuracy"] - 0.2


def test_relaxed_sizes_and_soft_targets_train():
    data = _imbalanced_synthetic()
    config = TrainConfig(
        **{**TINY.__dict__, "size_penalty": 0.5, "targets": "soft", "lr_schedule": "cosine"}
    )
    result = train(config, data)
    assert sum(result.final["sizes"]) == 70 and result.final["sizes"] != [24, 23, 23]


def test_new_train_config_values_are_checked():
    for field, value in (
        ("targets", "fuzzy"),
        ("lr_schedule", "step"),
        ("size_penalty", 0.0),
        ("known_fraction", 1.0),
        ("known_weight", -1.0),
        ("known_weight", float("nan")),
        ("label_views", 0),
    ):
        with pytest.raises(ValueError, match=field):
            TrainConfig(**{field: value})


def replace_config(config, **changes):
    return TrainConfig(**{**config.__dict__, **changes})


def test_views_average_the_log_probabilities_of_fresh_passes():
    """views=3 labels from the mean of three passes' log-probabilities (a loader that
    draws new inputs each pass gives three views)."""
    base = torch.randn(60, 6, generator=torch.Generator().manual_seed(8))
    model = _toy_model(n_clusters=(4, 6))

    class Noisy:
        def __init__(self):
            self.generator = torch.Generator().manual_seed(9)

        def __iter__(self):
            noisy = base + 0.5 * torch.randn(base.shape, generator=self.generator)
            return iter(_loader(noisy))

    labeler = SelfLabeler(60, [4, 6], epsilon=0.1)
    labeler.update(model, Noisy(), views=3)
    again, passes = Noisy(), []
    reference = SelfLabeler(60, [4, 6], epsilon=0.1)
    for _ in range(3):
        passes.append(reference.scores(model, again))
    mean = [np.mean([p[h] for p in passes], axis=0) for h in range(2)]
    expected = otlabel.assign(mean, 0.1, tol=1e-3, max_iter=200)
    for head in range(2):
        np.testing.assert_array_equal(labeler.labels[head].numpy(), expected.labels[head])
    with pytest.raises(ValueError, match="views"):
        labeler.update(model, Noisy(), views=0)


def test_head_choice_takes_the_head_whose_labels_score_best():
    data = _synthetic_data()
    config = replace_config(TINY, n_clusters=(3, 3, 6), head_choice="objective", seed=2)
    result = train(config, data)
    model = result.model.eval()
    with torch.no_grad():
        log_p = [torch.log_softmax(out, 1).numpy() for out in model(data.images)]
    solved = [otlabel.assign(log_p[h], config.epsilon) for h in (0, 1)]
    objective = [float(res.cost) for res in solved]
    assert result.final["head"] == int(np.argmax(objective))
    chosen = solved[result.final["head"]]
    assert result.final["nmi"] == pytest.approx(metrics.nmi(data.targets, chosen.labels))
    with pytest.raises(ValueError, match="head_choice"):
        TrainConfig(head_choice="best")


def test_the_variants_script_reports_every_head(tmp_path, monkeypatch, capsys):
    import runpy
    from pathlib import Path

    script = Path(__file__).parents[1] / "examples" / "sela_variants.py"
    argv = ["sela_variants.py", "tiny", "--seeds", "5", "--out", str(tmp_path)]
    argv += ["--set", "epochs=1", "n_updates=1", "n_clusters=[10,10,20]"]
    argv += ['head_choice="objective"']
    monkeypatch.setattr("sys.argv", argv)
    runpy.run_path(str(script), run_name="__main__")
    record = json.loads((tmp_path / "tiny-seed5.json").read_text())
    assert [row["head"] for row in record["heads"]] == [0.0, 1.0]  # the 10-cluster heads
    chosen = max(record["heads"], key=lambda row: row["objective"])
    assert record["final"]["head"] == int(chosen["head"])
    assert "tiny seed 5: NMI" in capsys.readouterr().out


def test_cluster_scores_count_empty_clusters():
    from otlabel.sela.train import cluster_scores

    targets = np.repeat(np.arange(3), 4)
    collapsed = cluster_scores(targets, np.full(12, 1), n_clusters=3)
    assert collapsed["sizes"] == [0, 12, 0]  # not [0, 12]: the third cluster is empty too
    assert collapsed["nmi"] == 0.0


@pytest.mark.parametrize(
    "option, value, message",
    [
        ("--size-penalty", "0", "size.penalty"),
        ("--known-fraction", "1.5", "known.fraction"),
        ("--known-weight", "-1", "known_weight must be finite and >= 0"),
    ],
)
def test_cli_train_rejects_bad_values_before_training(tmp_path, capsys, option, value, message):
    out = tmp_path / "results"
    argv = ["train", "--out", str(out), "--imbalance", "light", "--no-progress"]
    assert main([*argv, "--experiments", "clustering", "known", option, value]) == 1
    assert not (out / "runs").exists()  # nothing trained
    assert re.search(message, capsys.readouterr().err)


def test_the_true_size_prior_reaches_every_head_the_clustering_may_come_from():
    from otlabel.sela.train import _labeler

    data = _imbalanced_synthetic()
    config = replace_config(TINY, n_clusters=(3, 3, 6), cluster_prior="true")
    labeler = _labeler(config, data, np.full(70, -1))
    weights = labeler.assign_options["cluster_weights"]
    for head in (0, 1):
        np.testing.assert_array_equal(weights[head], [40.0, 20.0, 10.0])
    np.testing.assert_array_equal(weights[2], np.ones(6))


# ---------------------------------------------------------------------------
# loader formats: the last element of a batch is the sample indices, each once a pass
# ---------------------------------------------------------------------------


def _indexed(inputs, index_batches):
    return list(zip(inputs.split(7), index_batches, strict=True))


def _bad_loaders():
    inputs = torch.randn(30, 6, generator=torch.Generator().manual_seed(15))
    indices = list(torch.arange(30).split(7))
    classes = torch.arange(30) % 3  # a data set's class labels, not sample indices
    repeated = [*indices[:-1], indices[-1].clone()]
    repeated[-1][0] = 3
    within = [*indices[:-1], indices[-1].clone()]
    within[-1][1] = within[-1][0]
    shifted = [batch + 1 for batch in indices]
    negative = [batch - 1 for batch in indices]
    return {
        "(x, y) without index": (
            list(zip(inputs.split(7), classes.split(7), strict=True)),
            r"sample index 0 came twice in one pass.*\(x, y, index\)",
        ),
        "a batch yielded twice": (
            _loader(inputs) + _loader(inputs)[:1],
            "sample index 0 came twice in one pass",
        ),
        "an index from an earlier batch": (
            _indexed(inputs, repeated),
            "sample index 3 came twice",
        ),
        "an index twice in one batch": (_indexed(inputs, within), "sample index 28 came twice"),
        "an index past N": (_indexed(inputs, shifted), r"sample index 30 is outside \[0, 30\)"),
        "a negative index": (_indexed(inputs, negative), r"sample index -1 is outside"),
        "float targets last": (
            list(zip(inputs.split(7), torch.rand(30).split(7), strict=True)),
            "dtype float32, not one-dimensional integer sample indices",
        ),
        "one index short": (
            _indexed(inputs, [batch[:-1] for batch in indices]),
            "a batch of 7 inputs came with 6 indices",
        ),
        "the last batch dropped": (
            _loader(inputs)[:4],
            r"covered 28 of 30 samples \(index 28 never came\)",
        ),
    }


@pytest.mark.parametrize("case", list(_bad_loaders()))
def test_a_loader_whose_batches_do_not_end_with_each_index_once_is_refused(case):
    loader, message = _bad_loaders()[case]
    labeler = SelfLabeler(30, [4, 6], seed=0)
    before = labeler.labels.clone()
    with pytest.raises(ValueError, match=message):
        labeler.update(_toy_model(), loader)
    assert torch.equal(labeler.labels, before)  # nothing stored


def test_indices_in_any_order_and_predict_on_data_of_unknown_size():
    """Shuffled batches give the labels of ordered ones; predict() sizes new data by its
    largest index, and refuses a repeated index there too."""
    inputs = torch.randn(60, 6, generator=torch.Generator().manual_seed(16))
    model = _toy_model()
    order = torch.randperm(60, generator=torch.Generator().manual_seed(17))
    shuffled = list(zip(inputs[order].split(7), order.split(7), strict=True))
    ordered, mixed = SelfLabeler(60, [4, 6]), SelfLabeler(60, [4, 6])
    ordered.update(model, _loader(inputs))
    mixed.update(model, shuffled[::-1])  # the largest index need not come last
    assert torch.equal(mixed.labels, ordered.labels)
    unseen = torch.randn(23, 6, generator=torch.Generator().manual_seed(18))
    backwards = _loader(unseen, batch=5)[::-1]
    assert torch.equal(ordered.predict(model, backwards), ordered.predict(model, _loader(unseen)))
    with pytest.raises(ValueError, match="sample index 0 came twice"):
        ordered.predict(model, _loader(unseen) + _loader(unseen)[:1])
    with pytest.raises(ValueError, match=r"sample index 20 is outside \[0, 20\)"):
        ordered.predict(model, _loader(unseen), n_samples=20)
