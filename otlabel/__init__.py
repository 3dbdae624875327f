"""otlabel: balanced cluster labels from model scores by optimal transport.

The labelling step of self-labelling (SeLa), SwAV and DeepCluster-v2: assign N
samples to K clusters so that every cluster gets its share, maximising the
model's scores, by Sinkhorn-Knopp matrix scaling.

>>> import otlabel
>>> res = otlabel.assign(otlabel.make_scores(600, 6, seed=0), epsilon=0.1)
>>> res.counts.tolist()
[100, 100, 100, 100, 100, 100]
"""

from typing import TYPE_CHECKING, Any

from .api import DEFAULT_MAX_ITER, DEFAULT_TOL, assign, predict, sinkhorn
from .compile import compile
from .constraints import count_bounds
from .datasets import make_scores
from .kernels import BackendWarning
from .online import soft_assign
from .result import ConvergenceWarning, Result
from .streaming import ChunkedScores

if TYPE_CHECKING:
    from .kmeans import KMeans as KMeans

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_MAX_ITER",
    "DEFAULT_TOL",
    "BackendWarning",
    "ChunkedScores",
    "ConvergenceWarning",
    "Result",
    "__version__",
    "assign",
    "compile",
    "count_bounds",
    "make_scores",
    "predict",
    "sinkhorn",
    "soft_assign",
]


def __getattr__(name: str) -> Any:
    """``otlabel.KMeans``, imported on first use: it needs scikit-learn (the ``sklearn``
    extra), which ``import otlabel`` does not (without it, an ImportError names the extra)."""
    if name == "KMeans":
        from .kmeans import KMeans as KMeans

        return KMeans
    raise AttributeError(f"module 'otlabel' has no attribute {name!r}")
