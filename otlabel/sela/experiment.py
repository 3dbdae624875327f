"""The experiments of ``docs/sela.md``, behind ``otlabel train``.

:func:`run_experiment` trains SeLa and its baselines over several seeds and
writes the tables (``results.json``, ``results.md``) and plots.  Three
experiments, each a table per setting:

- ``"clustering"``: for each imbalance, k-means on raw pixels, k-means on the
  features of the untrained network, DeepCluster-style training, SeLa with
  equal cluster sizes and (imbalanced data) SeLa with relaxed sizes, one row
  per ``size_penalty``, proportions unknown (uniform prior);
- ``"known"``: balanced data with a stratified fraction of the labels known:
  SeLa keeping them (``known_labels=``) against the same network trained on
  those labels alone, and unsupervised SeLa;
- ``"holdout"``: SeLa trained on the seed's stratified 80%, the other 20%
  labelled by :meth:`~otlabel.sela.SelfLabeler.predict` (scored with the
  cluster-to-class matching of the training clustering).

Every seed draws its own imbalanced subset, known-label sample and 80/20 split
as well as its initialisation.  Runs already finished in the output folder are
read back, not repeated.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .heads import MultiHeadClassifier
from .train import (
    Data,
    TrainConfig,
    cluster_scores,
    feature_scores,
    features_of,
    load_data,
    small_convnet,
    train,
)

__all__ = ["EXPERIMENTS", "results_markdown", "run_experiment"]

EXPERIMENTS = ("clustering", "known", "holdout")
#: The relaxed-size weight of SeLa on imbalanced data (``size_penalty``, in
#: log-probability units), chosen on seeds 0-2 (docs/sela.md).
DEFAULT_SIZE_PENALTY = 1.0
KNOWN_FRACTIONS = (0.01, 0.05)

SELA = "SeLa (otlabel)"
UNTRAINED = "k-means, untrained network"
DEEPCLUSTER = "DeepCluster-style"


def run_experiment(
    out: str | Path,
    *,
    seeds: Sequence[int] = (0, 1, 2),
    imbalances: Sequence[str] = ("none", "light", "heavy"),
    experiments: Sequence[str] = ("clustering",),
    size_penalties: Sequence[float] = (DEFAULT_SIZE_PENALTY,),
    known_fractions: Sequence[float] = KNOWN_FRACTIONS,
    base: TrainConfig | None = None,
    dataset: str = "digits",
    root: str | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
    command: str | None = None,
) -> dict[str, Any]:
    """SeLa against its baselines over seeds; writes tables and plots to ``out``.

    Parameters
    ----------
    out : path
        Output folder: ``results.json``, ``results.md``, the plots, and a
        folder per training run under ``runs/`` (a finished run is read back).
    seeds : sequence of int
        One run of every method per seed.
    imbalances : sequence of {"none", "light", "heavy"}
        The data of the ``"clustering"`` tables.
    experiments : sequence of {"clustering", "known", "holdout"}
    size_penalties : sequence of float
        SeLa's relaxed-size rows on imbalanced data, one per ``tau``.
    known_fractions : sequence of float
        The ``"known"`` table's fractions of known labels.
    base : TrainConfig or None
        Settings every run shares (default :class:`TrainConfig`).
    command : str or None
        The command line that ran it, recorded in ``results.json``.
    """
    unknown = set(experiments) - set(EXPERIMENTS)
    if unknown or not experiments:
        raise ValueError(f"experiments must be among {EXPERIMENTS}; got {list(experiments)}")
    if not seeds:
        raise ValueError("seeds: give at least one seed")
    base = base or TrainConfig()
    for tau in size_penalties:  # bad values fail here, before any run trains
        replace(base, size_penalty=tau)
    for fraction in known_fractions:
        if not 0.0 < fraction < 1.0:
            raise ValueError(f"known_fraction must be in (0, 1); got {fraction}")
    runner = _Runner(Path(out), base, dataset, root, progress, log)
    started, commit = time.perf_counter(), _commit()  # the source as the runs start
    tables: dict[str, Any] = {}
    if "clustering" in experiments:
        for imbalance in imbalances:
            tables[imbalance] = runner.clustering_table(imbalance, seeds, size_penalties)
    if "known" in experiments:
        tables["known"] = runner.known_table(seeds, known_fractions)
    if "holdout" in experiments:
        tables["holdout"] = runner.holdout_table(seeds)
    summary = {
        "config": asdict(runner.base),
        "seeds": list(seeds),
        "dataset": dataset,
        "commit": commit,
        "command": command,
        "results": tables,
        "seconds": time.perf_counter() - started,
    }
    runner.folder.mkdir(parents=True, exist_ok=True)
    (runner.folder / "results.json").write_text(json.dumps(summary, indent=1))
    (runner.folder / "results.md").write_text(results_markdown(summary))
    _plots(runner.folder, runner.histories, runner.rows, runner.true_sizes)
    return summary


class _Runner:
    """Trains (or reads back) the runs of the tables, and keeps what the plots need."""

    def __init__(
        self,
        folder: Path,
        base: TrainConfig,
        dataset: str,
        root: str | None,
        progress: bool,
        log: Callable[[str], None],
    ) -> None:
        self.folder, self.base, self.dataset, self.root = folder, base, dataset, root
        self.progress, self.log = progress, log
        self.histories: dict[str, list[list[dict[str, Any]]]] = {}
        self.true_sizes: dict[str, list[list[int]]] = {}  # imbalance -> each seed's class sizes
        self.rows: dict[str, dict[str, list[dict[str, Any]]]] = {}  # table -> row -> runs

    def data(self, imbalance: str, seed: int) -> Data:
        return load_data(self.dataset, imbalance, self.root, seed)

    def run(self, table: str, row: str, name: str, config: TrainConfig, data: Data) -> None:
        """Train one run into ``runs/<name>`` (or read it back) and add it to ``row``."""
        result = train(config, data, self.folder / "runs" / name, progress=self.progress)
        self.histories.setdefault(f"{table}/{row}", []).append(result.history)
        self.rows.setdefault(table, {}).setdefault(row, []).append(
            {**result.final, "seconds": result.seconds}
        )
        self.log(f"{name:<34} {_brief(result.final)}")

    def table(self, table: str) -> dict[str, Any]:
        return {row: _summarise(runs) for row, runs in self.rows[table].items()}

    def clustering_table(
        self, imbalance: str, seeds: Sequence[int], size_penalties: Sequence[float]
    ) -> dict[str, Any]:
        rows = self.rows.setdefault(imbalance, {})
        for seed in seeds:
            data = self.data(imbalance, seed)
            untrained = features_of(_untrained(data, self.base, seed), data.images)
            for row, inputs in (("k-means, raw pixels", data.images), (UNTRAINED, untrained)):
                rows.setdefault(row, []).append(_kmeans_baseline(data, inputs, seed))
            config = replace(self.base, seed=seed, imbalance=imbalance)
            dc = replace(config, method="deepcluster")
            self.run(imbalance, DEEPCLUSTER, f"{imbalance}-deepcluster-seed{seed}", dc, data)
            self.run(imbalance, SELA, f"{imbalance}-sela-seed{seed}", config, data)
            for tau in size_penalties if imbalance != "none" else ():
                relaxed = replace(config, size_penalty=tau)
                name = f"{imbalance}-sela-tau{tau:g}-seed{seed}"
                self.run(imbalance, f"SeLa, relaxed sizes tau={tau:g}", name, relaxed, data)
            self.true_sizes.setdefault(imbalance, []).append(np.bincount(data.targets).tolist())
        return self.table(imbalance)

    def known_table(self, seeds: Sequence[int], fractions: Sequence[float]) -> dict[str, Any]:
        for seed in seeds:
            data = self.data("none", seed)
            config = replace(self.base, seed=seed)
            self.run("known", "SeLa, no labels known", f"none-sela-seed{seed}", config, data)
            for fraction in fractions:
                known = replace(config, known_fraction=fraction)
                supervised = replace(known, method="supervised")
                pct = f"{100 * fraction:g}%"
                row = f"supervised, {pct} labels alone"
                self.run("known", row, f"known{pct}-supervised-seed{seed}", supervised, data)
                row = f"SeLa, {pct} labels known"
                self.run("known", row, f"known{pct}-sela-seed{seed}", known, data)
        return self.table("known")

    def holdout_table(self, seeds: Sequence[int]) -> dict[str, Any]:
        for seed in seeds:
            data = self.data("none", seed)
            config = replace(self.base, seed=seed, holdout=True)
            self.run("holdout", SELA, f"holdout-sela-seed{seed}", config, data)
        return self.table("holdout")


def _untrained(data: Data, base: TrainConfig, seed: int) -> MultiHeadClassifier:
    torch.manual_seed(seed)
    backbone, feature_dim = small_convnet(data.images.shape[1], base.width)
    return MultiHeadClassifier(backbone, feature_dim, list(base.n_clusters))


def _kmeans_baseline(data: Data, inputs: Any, seed: int) -> dict[str, Any]:
    from sklearn.cluster import KMeans

    flat = np.asarray(inputs, dtype=np.float64).reshape(len(data.targets), -1)
    n_classes = int(np.unique(data.targets).size)
    clusters = KMeans(n_classes, n_init=10, random_state=seed).fit_predict(flat)
    scores = cluster_scores(data.targets, clusters, n_classes)
    return {**scores, **feature_scores(flat, data)}


def _summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and standard deviation of every measure, each seed's value, the sizes' range."""
    keys = [k for k, v in runs[0].items() if isinstance(v, float)]
    summary: dict[str, Any] = {
        k: [float(np.mean([r[k] for r in runs])), float(np.std([r[k] for r in runs]))] for k in keys
    }
    summary["per_seed"] = {k: [r[k] for r in runs] for k in keys}
    summary["sizes"] = [[min(r["sizes"]), max(r["sizes"])] for r in runs]
    return summary


def _brief(final: dict[str, Any]) -> str:
    keys = ("nmi", "accuracy", "knn", "accuracy_unlabelled", "heldout_accuracy")
    return ", ".join(f"{k} {final[k]:.3f}" for k in keys if k in final)


def _commit() -> str:
    """The source's git commit (with ``-dirty`` if it has uncommitted changes), or "unknown"."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("-dirty" if dirty else "")


# ---------------------------------------------------------------------------
# tables and plots
# ---------------------------------------------------------------------------

TITLES = {
    "none": "balanced",
    "light": "light imbalance",
    "heavy": "heavy imbalance",
    "known": "balanced, a few labels known (accuracy: on the unlabelled samples, cluster k = "
    "class k, no matching; unsupervised SeLa: with the Hungarian matching)",
    "holdout": "balanced, trained on 80%, the other 20% labelled by predict (held-out accuracy "
    "with the matching found on the training 80%)",
}
COLUMNS = {
    "nmi": "NMI",
    "ami": "adjusted NMI",
    "ari": "ARI",
    "accuracy": "accuracy",
    "accuracy_unlabelled": "accuracy, unlabelled",
    "heldout_accuracy": "held-out accuracy",
    "knn": "kNN",
    "linear": "linear probe",
}


def results_markdown(summary: dict[str, Any]) -> str:
    """The results tables (mean ± std over seeds, each seed's NMI) as Markdown."""
    lines = []
    for table, rows in summary["results"].items():
        columns = [c for c in COLUMNS if any(c in row for row in rows.values())]
        lines += [
            f"**{TITLES.get(table, table)}**",
            "",
            "| method | " + " | ".join(COLUMNS[c] for c in columns) + " | NMI per seed "
            "| cluster sizes | s / run |",
            "|---|" + "---|" * (len(columns) + 3),
        ]
        for name, row in rows.items():
            cells = [f"{row[c][0]:.3f} ± {row[c][1]:.3f}" if c in row else "-" for c in columns]
            per_seed = " ".join(f"{v:.3f}" for v in row["per_seed"]["nmi"])
            sizes = f"{min(s[0] for s in row['sizes'])}..{max(s[1] for s in row['sizes'])}"
            seconds = f"{row['seconds'][0]:.0f}" if "seconds" in row else "-"
            lines.append(
                f"| {name} | " + " | ".join(cells) + f" | {per_seed} | {sizes} | {seconds} |"
            )
        lines.append("")
    return "\n".join(lines)


def _plots(
    folder: Path,
    histories: dict[str, list[list[dict[str, Any]]]],
    rows: dict[str, dict[str, list[dict[str, Any]]]],
    true_sizes: dict[str, list[list[int]]],
) -> None:
    """Learning curves (mean over seeds) and, per clustering table, each row's sorted
    cluster sizes beside the true class sizes."""
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
    axes[1].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(folder / "sela-curves.png", dpi=110)
    plt.close(fig)
    if not true_sizes:
        return
    width = 3.8 * len(true_sizes)
    fig, axes = plt.subplots(1, len(true_sizes), figsize=(width, 3.2), squeeze=False)
    for axis, (imbalance, classes) in zip(axes[0], true_sizes.items(), strict=True):
        per_row = {row: [r["sizes"] for r in runs] for row, runs in rows[imbalance].items()}
        for row, per_seed in {**per_row, "true class sizes": classes}.items():
            if row.startswith("k-means"):
                continue
            mean_sorted = np.mean([sorted(s, reverse=True) for s in per_seed], axis=0)
            style = {"color": "black", "linewidth": 2.5} if row == "true class sizes" else {}
            axis.plot(mean_sorted, marker="o", markersize=3, label=row, **style)
        axis.set(
            title=TITLES[imbalance],
            xlabel="cluster (by size)",
            ylabel="samples (mean over seeds)",
        )
        axis.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(folder / "sela-cluster-sizes.png", dpi=110)
    plt.close(fig)
