"""The reference SeLa training run and its baselines, behind ``otlabel train``.

:func:`train` trains a small convolutional network from scratch by
self-labelling (SeLa: labels from :class:`~otlabel.sela.SelfLabeler`) or, as a
baseline, DeepCluster-style (labels from k-means on the network's features,
heads re-initialised after each relabelling).  Both share everything else:
network, augmentation, optimiser, schedule of label updates, evaluation.

A run writes ``metrics.json`` (one record per epoch) and ``checkpoint.pt`` to
its folder after every epoch; started again on the same folder it resumes where
it stopped and gives the same labels as an uninterrupted run (every random draw
comes from a generator seeded by ``(seed, epoch)``).

The experiments of ``docs/sela.md`` (seeds, baselines, tables, plots) are in
:mod:`otlabel.sela.experiment`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from . import metrics
from .data import augment, imbalanced_indices, known_label_sample, load_cifar10, load_digits
from .evaluate import knn_accuracy, linear_probe_accuracy
from .heads import MultiHeadClassifier
from .labeler import SelfLabeler
from .schedule import LabelSchedule

__all__ = ["TrainConfig", "TrainResult", "small_convnet", "train"]

METHODS = ("sela", "deepcluster", "supervised")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines one training run (saved beside its results).

    The defaults are the digits settings of ``docs/sela.md``.  ``n_clusters``
    lists the heads: the first one, with as many clusters as classes, is the
    one evaluated against the ground truth; the others over-cluster, as SeLa's
    multiple heads do.  ``size_penalty`` relaxes SeLa's cluster sizes (every
    head, uniform prior); ``known_fraction`` is the stratified share of samples
    whose label is known (SeLa keeps them in its labels, and adds to every step
    ``known_weight`` times the cross-entropy of a batch of known samples, which
    makes its cluster k class k; ``method="supervised"`` trains on them alone);
    ``holdout`` trains on the seed's stratified 80% and labels the
    other 20% with :meth:`SelfLabeler.predict`.  ``head_choice="objective"``
    reports the clustering of the head, among those with the first head's cluster
    count, whose labels score best by the labelling objective (``"first"``: head
    0).  ``targets="soft"`` trains on the plan's rows, ``label_views`` averages
    that many augmented passes per label update, ``lr_schedule="cosine"`` decays
    the learning rate to 0: options measured and not kept (docs/sela.md).
    """

    method: str = "sela"
    seed: int = 0
    imbalance: str = "none"
    epochs: int = 100
    n_updates: int = 100
    spacing: str = "linear"
    head_order: str = "all"
    n_clusters: tuple[int, ...] = (10, 10, 10, 20, 50, 100)
    epsilon: float = 0.1
    cluster_prior: str = "uniform"
    label_mode: str = "train"
    label_augment: bool = True
    label_views: int = 1
    targets: str = "hard"
    head_choice: str = "objective"
    batch_size: int = 64
    lr: float = 0.05
    lr_schedule: str = "constant"
    momentum: float = 0.9
    weight_decay: float = 5e-4
    width: int = 24
    eval_every: int = 5
    size_penalty: float | None = None
    known_fraction: float = 0.0
    known_weight: float = 1.0
    holdout: bool = False

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}; got {self.method!r}")
        if self.cluster_prior not in ("uniform", "true"):
            raise ValueError(
                f"cluster_prior must be 'uniform' or 'true'; got {self.cluster_prior!r}"
            )
        if self.label_views < 1:
            raise ValueError(f"label_views must be at least 1; got {self.label_views}")
        if self.head_choice not in ("first", "objective"):
            raise ValueError(
                f"head_choice must be 'first' or 'objective'; got {self.head_choice!r}"
            )
        if self.targets not in ("hard", "soft"):
            raise ValueError(f"targets must be 'hard' or 'soft'; got {self.targets!r}")
        if self.lr_schedule not in ("constant", "cosine"):
            raise ValueError(
                f"lr_schedule must be 'constant' or 'cosine'; got {self.lr_schedule!r}"
            )
        if self.size_penalty is not None and not self.size_penalty > 0:
            raise ValueError(f"size_penalty must be positive or None; got {self.size_penalty}")
        if not 0.0 <= self.known_fraction < 1.0:
            raise ValueError(f"known_fraction must be in [0, 1); got {self.known_fraction}")
        if not (self.known_weight >= 0 and np.isfinite(self.known_weight)):
            raise ValueError(f"known_weight must be finite and >= 0; got {self.known_weight}")
        if self.method == "supervised" and self.known_fraction == 0.0:
            raise ValueError("method 'supervised' trains on known labels: give known_fraction > 0")
        if self.epochs < 1 or self.n_updates < 1 or self.batch_size < 1:
            raise ValueError("epochs, n_updates and batch_size must be positive")


@dataclass
class TrainResult:
    """What :func:`train` returns: per-epoch history and the final evaluation."""

    config: TrainConfig
    history: list[dict[str, Any]] = field(default_factory=list)
    final: dict[str, Any] = field(default_factory=dict)
    labels: np.ndarray | None = None  # (H, N) the last self-labels
    seconds: float = 0.0
    model: MultiHeadClassifier | None = None  # the trained network


@dataclass
class Data:
    """Images, their ground truth, and the fixed 80/20 split for kNN and the probe."""

    images: torch.Tensor  # (N, C, H, W) float32
    targets: np.ndarray  # (N,)
    train_split: np.ndarray
    test_split: np.ndarray

    @classmethod
    def of(cls, images: np.ndarray, targets: np.ndarray, seed: int = 0) -> Data:
        """The data with a stratified 80/20 split drawn from ``seed``."""
        from sklearn.model_selection import train_test_split

        index = np.arange(targets.shape[0])
        train_split, test_split = train_test_split(
            index, test_size=0.2, stratify=targets, random_state=seed
        )
        return cls(torch.as_tensor(images), targets, np.sort(train_split), np.sort(test_split))

    def part(self, indices: np.ndarray) -> Data:
        """The samples ``indices`` alone (their own split is empty: evaluate on ``self``)."""
        empty = np.zeros(0, dtype=np.int64)
        return Data(self.images[torch.as_tensor(indices)], self.targets[indices], empty, empty)


def load_data(
    dataset: str = "digits", imbalance: str = "none", root: str | None = None, seed: int = 0
) -> Data:
    """Digits (bundled with scikit-learn) or CIFAR-10 (from ``root``), optionally imbalanced.

    ``seed`` draws the imbalanced subset and the stratified 80/20 split, so a
    run's seed changes its data as well as its initialisation.
    """
    if dataset == "digits":
        images, targets = load_digits()
    elif dataset == "cifar10":
        if root is None:
            raise ValueError("dataset 'cifar10' needs root, the folder cifar-10-batches-py")
        raw, targets = load_cifar10(root)
        images = (raw.astype(np.float32) / 255.0 - 0.5) / 0.25
    else:
        raise ValueError(f"dataset must be 'digits' or 'cifar10'; got {dataset!r}")
    keep = imbalanced_indices(targets, imbalance, seed=seed)
    return Data.of(images[keep], targets[keep], seed)


def small_convnet(in_channels: int = 1, width: int = 32) -> tuple[nn.Module, int]:
    """Three 3x3 convolutions with batch-norm, a max-pool and global average pooling.

    Returns the backbone and its feature width (``4 * width``).
    """

    def block(c_in: int, c_out: int) -> list[nn.Module]:
        return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]

    backbone = nn.Sequential(
        *block(in_channels, width),
        *block(width, 2 * width),
        nn.MaxPool2d(2),
        *block(2 * width, 4 * width),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    )
    return backbone, 4 * width


def train(
    config: TrainConfig,
    data: Data,
    out: str | Path | None = None,
    *,
    until_epoch: int | None = None,
    progress: bool = False,
) -> TrainResult:
    """Train one network by self-labelling (DeepCluster-style, or supervised on the
    known labels alone) and evaluate it.

    With ``config.holdout`` it trains on ``data``'s 80% split and labels the
    20% it never saw; the known labels (``config.known_fraction``) are a
    stratified sample drawn from ``config.seed``.

    Parameters
    ----------
    config : TrainConfig
        The run.
    data : Data
        From :func:`load_data` or :meth:`Data.of`.
    out : path or None
        Folder for ``metrics.json``, ``checkpoint.pt`` and ``final.json``; a run
        with a checkpoint there resumes from it.  None keeps nothing on disk.
    until_epoch : int or None
        Stop after this many epochs (as if killed) without the final evaluation.
    progress : bool
        Show a progress bar over epochs (tqdm).
    """
    torch.manual_seed(config.seed)
    folder = Path(out) if out is not None else None
    fit = data.part(data.train_split) if config.holdout else data  # what it trains on
    known = known_label_sample(fit.targets, config.known_fraction, config.seed)
    backbone, feature_dim = small_convnet(data.images.shape[1], config.width)
    model = MultiHeadClassifier(backbone, feature_dim, list(config.n_clusters))
    optimiser = torch.optim.SGD(
        model.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
    )
    labeler = _labeler(config, fit, known)
    schedule = LabelSchedule(
        config.epochs,
        config.n_updates,
        spacing=config.spacing,
        heads=config.head_order,
        n_heads=len(config.n_clusters),
    )
    result = TrainResult(config)
    first_epoch = _resume(folder, model, optimiser, labeler, result)
    last_epoch = config.epochs if until_epoch is None else min(until_epoch, config.epochs)
    alarm = metrics.CollapseAlarm(config.n_clusters[0])
    for earlier in result.history:  # a resumed run's alarm has seen the earlier losses
        alarm.update(earlier["loss"])
    epochs = range(first_epoch, last_epoch)
    for epoch in _progress(epochs, progress, f"{config.method} seed {config.seed}"):
        epoch_started = time.perf_counter()
        previous = labeler.labels[0].clone()
        loss = _train_epoch(config, fit, model, optimiser, labeler, schedule, epoch, known)
        record: dict[str, Any] = {"epoch": epoch + 1, "loss": loss}
        record["collapse"] = alarm.update(loss)
        record["nmi_previous_labels"] = metrics.nmi(previous, labeler.labels[0])
        if (epoch + 1) % config.eval_every == 0 or epoch + 1 == config.epochs:
            record.update(_evaluate(model, labeler, fit, data))
        record["seconds"] = time.perf_counter() - epoch_started
        result.history.append(record)
        if folder is not None:
            _checkpoint(folder, epoch + 1, model, optimiser, labeler, result)
    finishing = time.perf_counter()
    result.labels = labeler.labels.numpy().copy()
    result.model = model
    if last_epoch == config.epochs:
        result.final = _final_evaluation(config, model, fit, data, known)
    # time of every epoch, resumed ones included, and of the final evaluation
    result.seconds = sum(r["seconds"] for r in result.history) + time.perf_counter() - finishing
    if folder is not None and result.final:
        (folder / "final.json").write_text(json.dumps(result.final, indent=1))
    return result


# ---------------------------------------------------------------------------
# one epoch
# ---------------------------------------------------------------------------


def _train_epoch(
    config: TrainConfig,
    data: Data,
    model: MultiHeadClassifier,
    optimiser: torch.optim.Optimizer,
    labeler: Any,
    schedule: LabelSchedule,
    epoch: int,
    known: np.ndarray,
) -> float:
    """One pass over the data; label updates fall due between batches.

    The supervised baseline draws its batches from the known samples alone,
    as many batches as an epoch of the whole data set (the same optimiser steps).
    """
    generator = torch.Generator().manual_seed(config.seed * 1_000_003 + epoch)
    n_samples = data.images.shape[0]
    order = torch.randperm(n_samples, generator=generator)
    if config.method == "supervised":
        pool = torch.as_tensor(np.flatnonzero(known >= 0))
        draws = torch.randint(pool.numel(), (n_samples,), generator=generator)
        order = pool[draws]
    batches = order.split(config.batch_size)
    known_pool = None  # SeLa's known samples, for the supervised term of each step
    if config.method == "sela" and config.known_weight > 0 and (known >= 0).any():
        known_pool = torch.as_tensor(np.flatnonzero(known >= 0))
    losses = []
    for group in optimiser.param_groups:
        group["lr"] = _learning_rate(config, epoch)
    for b, indices in enumerate(batches):
        for update in schedule.due(epoch + b / len(batches), epoch + (b + 1) / len(batches)):
            heads = schedule.heads_for(update)
            loader = _LabelLoader(config, data, generator)
            if config.method == "sela":
                labeler.update(model, loader, heads=heads, views=config.label_views)
            else:
                labeler.update(model, loader, heads=heads)
            if config.method == "deepcluster":
                model.reset_heads(heads)
        model.train()
        inputs = augment(data.images[indices], generator)
        soft = config.targets == "soft" and config.method == "sela"
        targets = labeler.codes(indices) if soft else labeler[indices]
        loss = model.loss(model(inputs), targets, labeler.class_weights())
        losses.append(loss.item())  # the self-labelling loss (what the collapse alarm reads)
        if known_pool is not None:
            loss = loss + config.known_weight * _known_loss(
                config, data, model, known, known_pool, generator
            )
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
    return float(np.mean(losses))


def _known_loss(
    config: TrainConfig,
    data: Data,
    model: MultiHeadClassifier,
    known: np.ndarray,
    pool: torch.Tensor,
    generator: torch.Generator,
) -> torch.Tensor:
    """Cross-entropy of every head on a batch of augmented known samples and their labels.

    The assignment keeps the known labels, but they are a few percent of each
    cluster: alone they do not tell the network which cluster is which class.
    """
    draws = pool[torch.randint(pool.numel(), (config.batch_size,), generator=generator)]
    inputs = augment(data.images[draws], generator)
    labels = torch.as_tensor(known)[draws].repeat(len(config.n_clusters), 1)  # (H, B)
    return model.loss(model(inputs), labels)


def _learning_rate(config: TrainConfig, epoch: int) -> float:
    """``lr``, constant or on a cosine from ``lr`` to 0 over the epochs."""
    if config.lr_schedule == "constant":
        return config.lr
    return 0.5 * config.lr * (1.0 + float(np.cos(np.pi * epoch / config.epochs)))


class _LabelLoader:
    """Batches ``(inputs, indices)`` over the whole data set, drawn anew at each iteration.

    SeLa's are augmented (if ``label_augment``): every pass is a new view.
    DeepCluster's are clean images.
    """

    def __init__(self, config: TrainConfig, data: Data, generator: torch.Generator) -> None:
        self.augmented = config.label_augment and config.method == "sela"
        self.data, self.generator = data, generator

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for indices in torch.arange(self.data.images.shape[0]).split(512):
            inputs = self.data.images[indices]
            if self.augmented:
                inputs = augment(inputs, self.generator)
            yield inputs, indices


# ---------------------------------------------------------------------------
# labelers: SeLa's optimal transport, and k-means for the DeepCluster baseline
# ---------------------------------------------------------------------------


class _SelaLabeler(SelfLabeler):
    def class_weights(self) -> None:
        return None


class KMeansLabeler:
    """DeepCluster-style labels: k-means on PCA-whitened, L2-normalised features.

    DeepCluster samples uniformly over its (unbalanced) clusters; here each
    sample's loss is weighted by ``1 / size of its cluster`` instead, the same in
    expectation.
    """

    def __init__(self, n_samples: int, n_clusters: Sequence[int], seed: int, pca_dim: int = 32):
        self.n_clusters = list(n_clusters)
        self.seed = seed
        self.pca_dim = pca_dim
        self.labels = SelfLabeler(n_samples, self.n_clusters, seed=seed).labels
        self.update_count = 0

    def __getitem__(self, indices: Any) -> torch.Tensor:
        return self.labels[:, indices]

    def class_weights(self) -> list[torch.Tensor]:
        weights = []
        for h, k in enumerate(self.n_clusters):
            counts = torch.bincount(self.labels[h], minlength=k).clamp(min=1).float()
            weights.append(counts.sum() / (k * counts))
        return weights

    @torch.no_grad()
    def update(self, model: MultiHeadClassifier, loader: Any, heads: Sequence[int]) -> None:
        from sklearn.cluster import KMeans

        model.eval()
        features = torch.cat([model.features(inputs) for inputs, _ in loader]).double().numpy()
        reduced = _whitened(features, self.seed, self.pca_dim)
        for h in heads:
            kmeans = KMeans(
                self.n_clusters[h], n_init=1, random_state=self.seed + self.update_count
            )
            self.labels[h] = torch.as_tensor(kmeans.fit_predict(reduced), dtype=torch.int64)
        self.update_count += 1

    def state_dict(self) -> dict[str, Any]:
        return {"labels": self.labels.clone(), "update_count": self.update_count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.labels = state["labels"].clone()
        self.update_count = int(state["update_count"])


class FixedLabels:
    """The supervised baseline's labels: the known ones in every head, -1 elsewhere."""

    def __init__(self, known: np.ndarray, n_clusters: Sequence[int]):
        self.labels = torch.as_tensor(known).repeat(len(n_clusters), 1)  # (H, N)
        self.n_clusters = list(n_clusters)

    def __getitem__(self, indices: Any) -> torch.Tensor:
        return self.labels[:, indices]

    def class_weights(self) -> None:
        return None

    def update(self, model: Any, loader: Any, heads: Sequence[int]) -> None:
        """Known labels do not change."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


def _labeler(config: TrainConfig, data: Data, known: np.ndarray) -> Any:
    n = data.images.shape[0]
    if config.method == "deepcluster":
        return KMeansLabeler(n, config.n_clusters, config.seed)
    if config.method == "supervised":
        return FixedLabels(known, config.n_clusters)
    weights = None
    if config.cluster_prior == "true":  # an oracle prior: the class sizes, on every head
        # with the first head's cluster count (the heads the clustering may come from)
        sizes = np.sort(np.bincount(data.targets))[::-1].astype(np.float64)
        first = config.n_clusters[0]
        weights = [sizes if k == first else np.ones(k) for k in config.n_clusters]
    return _SelaLabeler(
        n,
        config.n_clusters,
        epsilon=config.epsilon,
        mode=config.label_mode,
        seed=config.seed,
        cluster_weights=weights,
        soft_targets=config.targets == "soft",
        size_penalty=config.size_penalty,
        known_labels=known if (known >= 0).any() else None,
    )


# ---------------------------------------------------------------------------
# evaluation
# ---------------------------------------------------------------------------


@torch.no_grad()
def features_of(model: MultiHeadClassifier, images: torch.Tensor) -> np.ndarray:
    """Backbone features of clean images in eval mode, ``(N, feature_dim)`` float64."""
    model.eval()
    return torch.cat([model.features(x) for x in images.split(512)]).double().numpy()


def _evaluate(model: MultiHeadClassifier, labeler: Any, fit: Data, data: Data) -> dict[str, Any]:
    """Per-epoch measures: self-labels against the truth, the heads' agreement, kNN."""
    features = features_of(model, data.images)
    tr, te = data.train_split, data.test_split
    labels = labeler.labels.numpy()  # (H, N)
    return {
        "nmi_labels": metrics.nmi(fit.targets, labels[0]),
        "nmi_heads": [metrics.nmi(fit.targets, head) for head in labels],
        "head_agreement": _head_agreement(labels, labeler.n_clusters),
        "knn": knn_accuracy(features[tr], data.targets[tr], features[te], data.targets[te]),
    }


def _head_agreement(labels: np.ndarray, n_clusters: Sequence[int]) -> float:
    """Mean NMI between the labels of the heads with head 0's cluster count (1 if alone)."""
    same = [h for h, k in enumerate(n_clusters) if k == n_clusters[0]]
    pairs = [(a, b) for i, a in enumerate(same) for b in same[i + 1 :]]
    if not pairs:
        return 1.0
    return float(np.mean([metrics.nmi(labels[a], labels[b]) for a, b in pairs]))


def _final_evaluation(
    config: TrainConfig, model: MultiHeadClassifier, fit: Data, data: Data, known: np.ndarray
) -> dict[str, Any]:
    """The run's clustering of its training data (head 0, clean images), its features' quality,
    and, as the run asks, accuracy on the unlabelled samples and on held-out data.

    SeLa's clustering is ``otlabel.assign`` on the first head's scores under the
    run's constraint (equal, prior or relaxed sizes; known labels kept);
    DeepCluster's is k-means on its features; the supervised baseline's is the
    argmax of its first head.  With ``holdout``, the other 20% are labelled by
    the same rule (``SelfLabeler.predict``, k-means' nearest centre, argmax) and
    scored with the cluster-to-class matching of the training clustering.
    """
    clusters, label_new, head = _clustering(config, model, fit, known)
    scores = cluster_scores(fit.targets, clusters, config.n_clusters[0])
    final: dict[str, Any] = {**scores, "head": head}
    final.update(feature_scores(features_of(model, data.images), data))
    unknown = known < 0
    if config.known_fraction > 0:  # cluster k is class k: no matching
        final["accuracy_unlabelled"] = float(np.mean(clusters[unknown] == fit.targets[unknown]))
    if config.holdout:
        matching = metrics.cluster_to_class(fit.targets, clusters)
        held_out = label_new(data.images[torch.as_tensor(data.test_split)])
        predicted = np.array([matching.get(int(c), -1) for c in held_out])
        final["heldout_accuracy"] = float(np.mean(predicted == data.targets[data.test_split]))
    return final


def _objective(config: TrainConfig, result: Any, position: int, fit: Data) -> float:
    """The labelling objective of one solved head, per sample: ``mean_i log p(y_i)``
    less, with relaxed sizes, ``tau sum_k m_k log(K m_k)`` (the sizes' KL to uniform)."""
    value = float(np.asarray(result.cost)[position])
    if config.size_penalty is not None:
        labels = np.asarray(result.labels[position])
        shares = np.bincount(labels[labels >= 0], minlength=config.n_clusters[0]) / labels.size
        shares = shares[shares > 0]
        n_clusters = config.n_clusters[0]
        value -= config.size_penalty * float(np.sum(shares * np.log(shares * n_clusters)))
    return value


def _clustering(
    config: TrainConfig, model: MultiHeadClassifier, fit: Data, known: np.ndarray
) -> tuple[np.ndarray, Callable[[torch.Tensor], np.ndarray], int]:
    """The training data's clusters, the rule that labels new images the same way, and
    the head they come from (SeLa with ``head_choice="objective"``: of the heads with
    the first head's cluster count, the one whose labels score best by the labelling
    objective; otherwise head 0)."""
    if config.method == "sela":
        clean = replace(config, label_augment=False)
        labeler = _labeler(clean, fit, known)
        labeler.mode = "eval"
        candidates = [0]
        if config.head_choice == "objective":
            candidates = [h for h, k in enumerate(config.n_clusters) if k == config.n_clusters[0]]
        result = labeler.update(model, _LabelLoader(clean, fit, torch.Generator()), candidates)
        objective = [_objective(config, result, i, fit) for i in range(len(candidates))]
        head = candidates[int(np.argmax(objective))]

        def label_sela(images: torch.Tensor) -> np.ndarray:
            loader = [(images, np.arange(images.shape[0]))]
            return labeler.predict(model, loader)[head].numpy()

        return labeler.labels[head].numpy(), label_sela, head
    if config.method == "supervised":

        def label_argmax(images: torch.Tensor) -> np.ndarray:
            model.eval()
            with torch.no_grad():
                return torch.cat([model(x)[0] for x in images.split(512)]).argmax(1).numpy()

        return label_argmax(fit.images), label_argmax, 0
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA

    features = features_of(model, fit.images)
    dim = min(32, features.shape[1], features.shape[0])
    pca = PCA(dim, whiten=True, random_state=config.seed).fit(features)
    kmeans = KMeans(config.n_clusters[0], n_init=10, random_state=config.seed)
    clusters = kmeans.fit_predict(_normalised(pca.transform(features)))

    def label_kmeans(images: torch.Tensor) -> np.ndarray:
        return kmeans.predict(_normalised(pca.transform(features_of(model, images))))

    return clusters, label_kmeans, 0


def cluster_scores(
    targets: np.ndarray, clusters: np.ndarray, n_clusters: int | None = None
) -> dict[str, Any]:
    """NMI, adjusted NMI, ARI, Hungarian accuracy and cluster sizes of a clustering
    (``n_clusters`` sizes: empty clusters count, as 0)."""
    sizes = metrics.cluster_sizes(clusters, n_clusters)
    return {
        "nmi": metrics.nmi(targets, clusters),
        "ami": metrics.adjusted_nmi(targets, clusters),
        "ari": metrics.ari(targets, clusters),
        "accuracy": metrics.hungarian_accuracy(targets, clusters),
        "sizes": sizes.tolist(),
    }


def feature_scores(features: np.ndarray, data: Data) -> dict[str, float]:
    """Weighted kNN (k = 10, T = 0.1) and linear-probe accuracy on the fixed split."""
    tr, te = data.train_split, data.test_split
    y = data.targets
    return {
        "knn": knn_accuracy(features[tr], y[tr], features[te], y[te]),
        "linear": linear_probe_accuracy(features[tr], y[tr], features[te], y[te]),
    }


def _whitened(features: np.ndarray, seed: int, pca_dim: int = 32) -> np.ndarray:
    """PCA-whitened to ``pca_dim`` dimensions, then L2-normalised (DeepCluster's input)."""
    from sklearn.decomposition import PCA

    dim = min(pca_dim, features.shape[1], features.shape[0])
    return _normalised(PCA(dim, whiten=True, random_state=seed).fit_transform(features))


def _normalised(rows: np.ndarray) -> np.ndarray:
    """Each row divided by its L2 norm."""
    return rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)


# ---------------------------------------------------------------------------
# checkpoints
# ---------------------------------------------------------------------------


def _checkpoint(
    folder: Path,
    epoch: int,
    model: nn.Module,
    optimiser: torch.optim.Optimizer,
    labeler: Any,
    result: TrainResult,
) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    state = {
        "epoch": epoch,
        "config": asdict(result.config),
        "model": model.state_dict(),
        "optimiser": optimiser.state_dict(),
        "labeler": labeler.state_dict(),
        "history": result.history,
    }
    partial = folder / "checkpoint.pt.partial"
    torch.save(state, partial)
    partial.replace(folder / "checkpoint.pt")  # atomic: a kill never leaves half a checkpoint
    (folder / "metrics.json").write_text(json.dumps(result.history, indent=1))


def _resume(
    folder: Path | None,
    model: nn.Module,
    optimiser: torch.optim.Optimizer,
    labeler: Any,
    result: TrainResult,
) -> int:
    """Load the folder's checkpoint if there is one; return the epoch to start from."""
    path = None if folder is None else folder / "checkpoint.pt"
    if path is None or not path.is_file():
        return 0
    state = torch.load(path, weights_only=False)
    if _effective(state["config"]) != _effective(asdict(result.config)):
        raise ValueError(
            f"{path} was written by another configuration; use a fresh folder or the same "
            "settings to resume"
        )
    model.load_state_dict(state["model"])
    optimiser.load_state_dict(state["optimiser"])
    labeler.load_state_dict(state["labeler"])
    result.history = list(state["history"])
    return int(state["epoch"])


def _effective(settings: dict[str, Any]) -> dict[str, Any]:
    """A run's settings as they act: fields added since it was saved at their defaults
    (which reproduce the earlier behaviour), ``known_weight`` only where it acts."""
    effective = {**asdict(TrainConfig()), **settings}
    if effective["method"] != "sela" or effective["known_fraction"] == 0:
        effective["known_weight"] = None
    return effective


def _progress(epochs: range, enabled: bool, description: str) -> Any:
    if not enabled:
        return epochs
    from tqdm.auto import tqdm

    return tqdm(epochs, desc=description, leave=False, total=len(epochs))
