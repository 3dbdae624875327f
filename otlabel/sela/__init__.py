"""SeLa self-labelling in PyTorch, over :func:`otlabel.assign`.

What a training script needs: :class:`SelfLabeler` (balanced labels per sample
and head, recomputed from the model's scores by optimal transport, warm-started),
:class:`MultiHeadClassifier` (H heads on any backbone), :class:`LabelSchedule`
(when to relabel, which heads), :mod:`~otlabel.sela.metrics` (NMI, adjusted NMI,
ARI, Hungarian accuracy, collapse alarm) and :mod:`~otlabel.sela.evaluate`
(weighted kNN, linear probe).  :mod:`~otlabel.sela.train` is the reference
example behind ``otlabel train``.

Needs PyTorch (``pip install 'otlabel[sela]'``, which also brings scikit-learn,
matplotlib and tqdm for the example).
"""

try:
    import torch  # noqa: F401
except ImportError as error:  # pragma: no cover - depends on the installation
    raise ImportError("otlabel.sela needs PyTorch: pip install 'otlabel[sela]'") from error

from . import evaluate, metrics
from .evaluate import knn_accuracy, linear_probe_accuracy
from .heads import MultiHeadClassifier
from .labeler import SelfLabeler
from .schedule import LabelSchedule

__all__ = [
    "LabelSchedule",
    "MultiHeadClassifier",
    "SelfLabeler",
    "evaluate",
    "knn_accuracy",
    "linear_probe_accuracy",
    "metrics",
]
