"""A multi-head classifier: one backbone, H linear heads of K clusters each.

SeLa trains several clustering heads on one backbone (10 heads of 3 000
clusters on ImageNet); each head has its own labels, and the loss is the mean
of the heads' cross-entropies.

>>> import torch
>>> from otlabel.sela import MultiHeadClassifier
>>> model = MultiHeadClassifier(torch.nn.Flatten(), feature_dim=4, n_clusters=[3, 5])
>>> [logits.shape for logits in model(torch.zeros(2, 2, 2))]
[torch.Size([2, 3]), torch.Size([2, 5])]
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["MultiHeadClassifier"]


class MultiHeadClassifier(nn.Module):
    """``backbone`` followed by H linear heads.

    Parameters
    ----------
    backbone : torch.nn.Module
        Maps a batch of inputs to features ``(B, feature_dim)``.
    feature_dim : int
        Width of the backbone's output.
    n_clusters : int or sequence of int
        Clusters per head: one int for all ``n_heads`` heads, or one per head.
    n_heads : int, default 1
        Number of heads (ignored when ``n_clusters`` is a sequence).
    """

    def __init__(
        self,
        backbone: nn.Module,
        feature_dim: int,
        n_clusters: int | Sequence[int],
        n_heads: int = 1,
    ) -> None:
        super().__init__()
        if isinstance(n_clusters, int):
            n_clusters = [n_clusters] * n_heads
        if not n_clusters or min(n_clusters) < 1:
            raise ValueError(f"n_clusters must be positive cluster counts; got {n_clusters}")
        self.backbone = backbone
        self.n_clusters = list(n_clusters)
        self.heads = nn.ModuleList(nn.Linear(feature_dim, k) for k in self.n_clusters)

    def forward(self, inputs: torch.Tensor) -> list[torch.Tensor]:
        """Logits of every head: a list of ``(B, K_h)`` tensors."""
        features = self.backbone(inputs)
        return [head(features) for head in self.heads]

    def features(self, inputs: torch.Tensor) -> torch.Tensor:
        """The backbone's features ``(B, feature_dim)``, for evaluation."""
        return self.backbone(inputs)

    def reset_heads(self, heads: Sequence[int] | None = None) -> None:
        """Re-initialise heads (DeepCluster does after every k-means relabelling)."""
        for h in range(len(self.heads)) if heads is None else heads:
            head: nn.Linear = self.heads[h]  # type: ignore[assignment]
            head.reset_parameters()

    @staticmethod
    def loss(
        logits: Sequence[torch.Tensor],
        labels: torch.Tensor | Sequence[torch.Tensor],
        class_weights: Sequence[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Mean over heads of the cross-entropy of ``logits`` against ``labels (H, B)``.

        ``labels`` may also be soft targets, one ``(B, K_h)`` tensor of
        probabilities per head (:meth:`SelfLabeler.codes`).
        ``class_weights`` (one ``(K_h,)`` tensor per head) weights each sample by
        its label's weight, as :func:`torch.nn.functional.cross_entropy` does.
        Label -1 (left unassigned by partial mass) takes no part, nor does a soft
        target row of zeros (the code of an unassigned sample): each head's loss
        is the mean over its other samples, and a batch whose samples are all
        unassigned contributes 0.
        """
        weights: Sequence[torch.Tensor | None] = class_weights or [None] * len(logits)
        if not isinstance(labels, torch.Tensor):  # soft targets, one (B, K_h) per head
            soft = [
                _soft_cross_entropy(out, target, weights[h])
                for h, (out, target) in enumerate(zip(logits, labels, strict=True))
            ]
            return torch.stack(soft).mean()
        losses = []
        for h, out in enumerate(logits):
            if bool((labels[h] < 0).all()):
                losses.append(out.sum() * 0.0)  # keeps the graph, adds nothing
                continue
            losses.append(
                nn.functional.cross_entropy(out, labels[h], weight=weights[h], ignore_index=-1)
            )
        return torch.stack(losses).mean()


def _soft_cross_entropy(
    logits: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor | None
) -> torch.Tensor:
    """Cross-entropy against soft targets ``(B, K)``, the mean over the rows that have
    one: a row of zeros (an unassigned sample) takes no part; none left gives 0."""
    has_target = targets.sum(1) > 0
    if not bool(has_target.any()):
        return logits.sum() * 0.0  # keeps the graph, adds nothing
    per_sample = nn.functional.cross_entropy(
        logits[has_target], targets[has_target], weight=weight, reduction="none"
    )
    return per_sample.mean()
