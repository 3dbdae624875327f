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

:func:`run_experiment` runs SeLa, DeepCluster-style training and the k-means
baselines over several seeds, on balanced and imbalanced data, and writes the
tables and plots of ``docs/sela.md``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from . import metrics
from .data import augment, imbalanced_indices, load_cifar10, load_digits
from .evaluate import knn_accuracy, linear_probe_accuracy
from .heads import MultiHeadClassifier
from .labeler import SelfLabeler
from .schedule import LabelSchedule

__all__ = ["TrainConfig", "TrainResult", "run_experiment", "small_convnet", "train"]

METHODS = ("sela", "deepcluster")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines one training run (saved beside its results).

    The defaults are the digits settings of ``docs/sela.md``.  ``n_clusters``
    lists the heads: the first one, with as many clusters as classes, is the
    one evaluated against the ground truth; the others over-cluster, as SeLa's
    multiple heads do.
    """

    method: str = "sela"
    seed: int = 0
    imbalance: str = "none"
    epochs: int = 50
    n_updates: int = 50
    spacing: str = "linear"
    head_order: str = "all"
    n_clusters: tuple[int, ...] = (10, 10, 20, 20)
    epsilon: float = 0.1
    cluster_prior: str = "uniform"
    label_mode: str = "train"
    label_augment: bool = True
    batch_size: int = 64
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    width: int = 24
    eval_every: int = 5

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}; got {self.method!r}")
        if self.cluster_prior not in ("uniform", "true"):
            raise ValueError(
                f"cluster_prior must be 'uniform' or 'true'; got {self.cluster_prior!r}"
            )
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


@dataclass
class Data:
    """Images, their ground truth, and the fixed 80/20 split for kNN and the probe."""

    images: torch.Tensor  # (N, C, H, W) float32
    targets: np.ndarray  # (N,)
    train_split: np.ndarray
    test_split: np.ndarray

    @classmethod
    def of(cls, images: np.ndarray, targets: np.ndarray) -> Data:
        from sklearn.model_selection import train_test_split

        index = np.arange(targets.shape[0])
        train_split, test_split = train_test_split(
            index, test_size=0.2, stratify=targets, random_state=0
        )
        return cls(torch.as_tensor(images), targets, np.sort(train_split), np.sort(test_split))


def load_data(dataset: str = "digits", imbalance: str = "none", root: str | None = None) -> Data:
    """Digits (bundled with scikit-learn) or CIFAR-10 (from ``root``), optionally imbalanced."""
    if dataset == "digits":
        images, targets = load_digits()
    elif dataset == "cifar10":
        if root is None:
            raise ValueError("dataset 'cifar10' needs root, the folder cifar-10-batches-py")
        raw, targets = load_cifar10(root)
        images = (raw.astype(np.float32) / 255.0 - 0.5) / 0.25
    else:
        raise ValueError(f"dataset must be 'digits' or 'cifar10'; got {dataset!r}")
    keep = imbalanced_indices(targets, imbalance, seed=0)
    return Data.of(images[keep], targets[keep])


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
    """Train one network by self-labelling (or DeepCluster-style) and evaluate it.

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
    backbone, feature_dim = small_convnet(data.images.shape[1], config.width)
    model = MultiHeadClassifier(backbone, feature_dim, list(config.n_clusters))
    optimiser = torch.optim.SGD(
        model.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
    )
    labeler = _labeler(config, data)
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
        loss = _train_epoch(config, data, model, optimiser, labeler, schedule, epoch)
        record: dict[str, Any] = {"epoch": epoch + 1, "loss": loss}
        record["collapse"] = alarm.update(loss)
        record["nmi_previous_labels"] = metrics.nmi(previous, labeler.labels[0])
        if (epoch + 1) % config.eval_every == 0 or epoch + 1 == config.epochs:
            record.update(_evaluate(model, labeler, data))
        record["seconds"] = time.perf_counter() - epoch_started
        result.history.append(record)
        if folder is not None:
            _checkpoint(folder, epoch + 1, model, optimiser, labeler, result)
    finishing = time.perf_counter()
    result.labels = labeler.labels.numpy().copy()
    if last_epoch == config.epochs:
        result.final = _final_evaluation(config, model, data)
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
) -> float:
    """One pass over the data; label updates fall due between batches."""
    generator = torch.Generator().manual_seed(config.seed * 1_000_003 + epoch)
    order = torch.randperm(data.images.shape[0], generator=generator)
    batches = order.split(config.batch_size)
    losses = []
    for b, indices in enumerate(batches):
        for update in schedule.due(epoch + b / len(batches), epoch + (b + 1) / len(batches)):
            heads = schedule.heads_for(update)
            labeler.update(model, _label_loader(config, data, generator), heads=heads)
            if config.method == "deepcluster":
                model.reset_heads(heads)
        model.train()
        inputs = augment(data.images[indices], generator)
        loss = model.loss(model(inputs), labeler[indices], labeler.class_weights())
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    return float(np.mean(losses))


def _label_loader(config: TrainConfig, data: Data, generator: torch.Generator) -> list[Any]:
    """Batches ``(inputs, indices)`` over the whole data set.

    SeLa's are augmented (if ``label_augment``); DeepCluster's are clean images.
    """
    batches = []
    for indices in torch.arange(data.images.shape[0]).split(512):
        inputs = data.images[indices]
        if config.label_augment and config.method == "sela":
            inputs = augment(inputs, generator)
        batches.append((inputs, indices))
    return batches


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


def _labeler(config: TrainConfig, data: Data) -> Any:
    n = data.images.shape[0]
    if config.method == "deepcluster":
        return KMeansLabeler(n, config.n_clusters, config.seed)
    weights = None
    if config.cluster_prior == "true":  # an oracle prior on the first head: the class sizes
        sizes = np.sort(np.bincount(data.targets))[::-1].astype(np.float64)
        weights = [sizes] + [np.ones(k) for k in config.n_clusters[1:]]
    return _SelaLabeler(
        n,
        config.n_clusters,
        epsilon=config.epsilon,
        mode=config.label_mode,
        seed=config.seed,
        cluster_weights=weights,
    )


# ---------------------------------------------------------------------------
# evaluation
# ---------------------------------------------------------------------------


@torch.no_grad()
def features_of(model: MultiHeadClassifier, images: torch.Tensor) -> np.ndarray:
    """Backbone features of clean images in eval mode, ``(N, feature_dim)`` float64."""
    model.eval()
    return torch.cat([model.features(x) for x in images.split(512)]).double().numpy()


def _evaluate(model: MultiHeadClassifier, labeler: Any, data: Data) -> dict[str, float]:
    """Per-epoch measures: self-labels against the truth, and the kNN accuracy."""
    features = features_of(model, data.images)
    tr, te = data.train_split, data.test_split
    return {
        "nmi_labels": metrics.nmi(data.targets, labeler.labels[0]),
        "knn": knn_accuracy(features[tr], data.targets[tr], features[te], data.targets[te]),
    }


def _final_evaluation(
    config: TrainConfig, model: MultiHeadClassifier, data: Data
) -> dict[str, Any]:
    """The run's clustering of the data set (head 0, clean images) and its features' quality.

    SeLa's clustering is the balanced assignment of the first head's scores
    (uniform or prior proportions); DeepCluster's is k-means on its features.
    """
    features = features_of(model, data.images)
    if config.method == "sela":
        clean = replace(config, label_augment=False)
        labeler = _labeler(clean, data)
        labeler.mode = "eval"
        labeler.update(model, _label_loader(clean, data, torch.Generator()), heads=[0])
        clusters = labeler.labels[0].numpy()
    else:
        from sklearn.cluster import KMeans

        kmeans = KMeans(config.n_clusters[0], n_init=10, random_state=config.seed)
        clusters = kmeans.fit_predict(_whitened(features, config.seed))
    return {**cluster_scores(data.targets, clusters), **feature_scores(features, data)}


def cluster_scores(targets: np.ndarray, clusters: np.ndarray) -> dict[str, Any]:
    """NMI, adjusted NMI, ARI, Hungarian accuracy and cluster sizes of a clustering."""
    sizes = metrics.cluster_sizes(clusters)
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
    reduced = PCA(dim, whiten=True, random_state=seed).fit_transform(features)
    return reduced / np.maximum(np.linalg.norm(reduced, axis=1, keepdims=True), 1e-12)


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
    if state["config"] != asdict(result.config):
        raise ValueError(
            f"{path} was written by another configuration; use a fresh folder or the same "
            "settings to resume"
        )
    model.load_state_dict(state["model"])
    optimiser.load_state_dict(state["optimiser"])
    labeler.load_state_dict(state["labeler"])
    result.history = list(state["history"])
    return int(state["epoch"])


def _progress(epochs: range, enabled: bool, description: str) -> Any:
    if not enabled:
        return epochs
    from tqdm.auto import tqdm

    return tqdm(epochs, desc=description, leave=False, total=len(epochs))


# ---------------------------------------------------------------------------
# the experiment of docs/sela.md
# ---------------------------------------------------------------------------


def run_experiment(
    out: str | Path,
    *,
    seeds: Sequence[int] = (0, 1, 2),
    imbalances: Sequence[str] = ("none", "light", "heavy"),
    base: TrainConfig | None = None,
    dataset: str = "digits",
    root: str | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """SeLa against k-means baselines and DeepCluster-style training, over seeds.

    For each imbalance: k-means on raw pixels, k-means on the features of the
    untrained network, DeepCluster-style training and SeLa, each over ``seeds``.
    Writes ``results.json``, ``results.md`` and plots to ``out``; runs already
    finished there are read back, not repeated.
    """
    base = base or TrainConfig()
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    table: dict[str, Any] = {}
    histories: dict[str, list[list[dict[str, Any]]]] = {}
    for imbalance in imbalances:
        data = load_data(dataset, imbalance, root)
        rows: dict[str, list[dict[str, Any]]] = {
            "k-means, raw pixels": [],
            "k-means, untrained network": [],
            "DeepCluster-style": [],
            "SeLa (otlabel)": [],
        }
        for seed in seeds:
            rows["k-means, raw pixels"].append(_kmeans_baseline(data, data.images, seed))
            untrained = features_of(_untrained(data, base, seed), data.images)
            rows["k-means, untrained network"].append(_kmeans_baseline(data, untrained, seed))
            for method, name in (("deepcluster", "DeepCluster-style"), ("sela", "SeLa (otlabel)")):
                config = replace(base, method=method, seed=seed, imbalance=imbalance)
                run_folder = folder / "runs" / f"{imbalance}-{method}-seed{seed}"
                run = train(config, data, run_folder, progress=progress)
                rows[name].append({**run.final, "seconds": run.seconds})
                histories.setdefault(f"{imbalance}/{name}", []).append(run.history)
                log(f"{imbalance:>5} {name:<18} seed {seed}: " + _brief(run.final))
        table[imbalance] = {name: _summarise(runs) for name, runs in rows.items()}
    summary = {
        "config": asdict(base),
        "seeds": list(seeds),
        "dataset": dataset,
        "results": table,
        "seconds": time.perf_counter() - started,
    }
    (folder / "results.json").write_text(json.dumps(summary, indent=1))
    (folder / "results.md").write_text(results_markdown(summary))
    _plots(folder, histories, table, first_seed=seeds[0])
    return summary


def _untrained(data: Data, base: TrainConfig, seed: int) -> MultiHeadClassifier:
    torch.manual_seed(seed)
    backbone, feature_dim = small_convnet(data.images.shape[1], base.width)
    return MultiHeadClassifier(backbone, feature_dim, list(base.n_clusters))


def _kmeans_baseline(data: Data, inputs: Any, seed: int) -> dict[str, Any]:
    from sklearn.cluster import KMeans

    flat = np.asarray(inputs, dtype=np.float64).reshape(len(data.targets), -1)
    n_classes = int(np.unique(data.targets).size)
    clusters = KMeans(n_classes, n_init=10, random_state=seed).fit_predict(flat)
    return {**cluster_scores(data.targets, clusters), **feature_scores(flat, data)}


def _summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    keys = [k for k, v in runs[0].items() if isinstance(v, float)]
    summary: dict[str, Any] = {
        k: [float(np.mean([r[k] for r in runs])), float(np.std([r[k] for r in runs]))] for k in keys
    }
    summary["sizes"] = [[min(r["sizes"]), max(r["sizes"])] for r in runs]
    return summary


def _brief(final: dict[str, Any]) -> str:
    return ", ".join(f"{k} {final[k]:.3f}" for k in ("nmi", "ari", "accuracy", "knn", "linear"))


def results_markdown(summary: dict[str, Any]) -> str:
    """The results tables (mean ± std over seeds) as Markdown."""
    lines = []
    columns = ("nmi", "ami", "ari", "accuracy", "knn", "linear")
    for imbalance, rows in summary["results"].items():
        lines += [
            f"**{imbalance} imbalance**" if imbalance != "none" else "**balanced**",
            "",
            "| method | NMI | adjusted NMI | ARI | accuracy | kNN | linear probe "
            "| cluster sizes | s / run |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for name, row in rows.items():
            cells = [f"{row[c][0]:.3f} ± {row[c][1]:.3f}" for c in columns]
            sizes = f"{min(s[0] for s in row['sizes'])}..{max(s[1] for s in row['sizes'])}"
            seconds = f"{row['seconds'][0]:.0f}" if "seconds" in row else "-"
            lines.append(f"| {name} | " + " | ".join(cells) + f" | {sizes} | {seconds} |")
        lines.append("")
    return "\n".join(lines)


def _plots(
    folder: Path, histories: dict[str, Any], table: dict[str, Any], *, first_seed: int
) -> None:
    """Learning curves (mean over seeds) and the cluster sizes of ``first_seed``'s runs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for key, runs in histories.items():
        epochs = [r["epoch"] for r in runs[0] if "knn" in r]
        for axis, measure in zip(axes, ("nmi_labels", "knn"), strict=True):
            values = np.array([[r[measure] for r in run if measure in r] for run in runs])
            axis.plot(epochs, values.mean(axis=0), label=key)
    axes[0].set(xlabel="epoch", ylabel="NMI of the labels (head 0)")
    axes[1].set(xlabel="epoch", ylabel="weighted kNN accuracy")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(folder / "sela-curves.png", dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(1, len(table), figsize=(3.4 * len(table), 3), squeeze=False)
    for axis, imbalance in zip(axes[0], table, strict=True):
        for name in ("DeepCluster-style", "SeLa (otlabel)"):
            run = json.loads(
                (
                    folder / "runs" / f"{imbalance}-{_method(name)}-seed{first_seed}" / "final.json"
                ).read_text()
            )
            axis.plot(sorted(run["sizes"], reverse=True), marker="o", label=name)
        title = "balanced" if imbalance == "none" else f"{imbalance} imbalance"
        axis.set(title=f"{title}, seed {first_seed}", xlabel="cluster (by size)", ylabel="samples")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(folder / "sela-cluster-sizes.png", dpi=110)
    plt.close(fig)


def _method(name: str) -> str:
    return "sela" if name.startswith("SeLa") else "deepcluster"
