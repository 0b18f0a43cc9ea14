"""Gradient reversal, the adversarial domain loss and the semantic (class-name) loss of Doodle to Search.

Dey, Riba, Dutta, Lladós, Song, "Doodle to Search: Practical Zero-Shot Sketch-based Image Retrieval",
CVPR 2019, https://arxiv.org/abs/1904.03451

* :func:`grad_reverse` (Ganin & Lempitsky, "Unsupervised Domain Adaptation by Backpropagation", ICML 2015):
  the identity going forward, ``-lambda * grad`` going back. Hand-written (a ten-line autograd Function):
  pytorch-metric-learning has no gradient reversal layer and nothing else in our dependencies does.
* :class:`DomainClassifier` + :func:`domain_loss`: an MLP predicts sketch (0) vs photo (1) from an embedding
  behind a GRL; binary cross-entropy. The classifier learns to tell the domains apart while the reversed
  gradient drives the encoders to make them indistinguishable.
* :class:`SemanticDecoder` + :func:`cosine_loss`: an MLP decodes an embedding into the space of class-name
  embeddings; loss ``(1 - cos) / 2`` against the anchor class's name embedding.

Shapes: embeddings float (B, D); domain targets float (B,) in {0, 1}; name embeddings float (B, S).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["DomainClassifier", "GradReverse", "SemanticDecoder", "cosine_loss", "domain_loss", "grad_reverse"]


class GradReverse(torch.autograd.Function):
    """y = x forward; dL/dx = -lambd * dL/dy backward (``lambd`` is a float, not learned)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, lambd: float) -> Tensor:
        ctx.lambd = float(lambd)
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        return grad.neg() * ctx.lambd, None


def grad_reverse(x: Tensor, lambd: float = 1.0) -> Tensor:
    """Gradient reversal layer (see :class:`GradReverse`); ``lambd`` >= 0 scales the reversed gradient."""
    if lambd < 0:
        raise ValueError(f"the GRL scale lambd must be >= 0, got {lambd}")
    return GradReverse.apply(x, lambd)


class DomainClassifier(nn.Module):
    """Embedding (B, D) -> domain logit (B,) (photo = 1). Two hidden layers of ``hidden`` units with ReLU and
    dropout after the first (the layout of the authors' released code, 64 units)."""

    def __init__(self, in_dim: int, hidden: int = 64, dropout: float = 0.5) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, 1),
        )

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z).squeeze(1)


def domain_loss(classifier: nn.Module, z: Tensor, is_photo: Tensor | float, lambd: float = 1.0) -> Tensor:
    """BCE of ``classifier`` on ``grad_reverse(z, lambd)`` against the domain (1 = photo, 0 = sketch), mean
    over the batch. ``is_photo``: float (B,) or one value for the whole batch."""
    logits = classifier(grad_reverse(z, lambd))
    target = torch.as_tensor(is_photo, dtype=logits.dtype, device=logits.device).expand_as(logits)
    return F.binary_cross_entropy_with_logits(logits, target)


class SemanticDecoder(nn.Module):
    """Embedding (B, D) -> class-name space (B, S): Linear, ReLU, dropout, Linear (the authors' decoder, with
    ``hidden`` = 300 for their word2vec; S = 384 here for MiniLM)."""

    def __init__(self, in_dim: int, out_dim: int = 384, hidden: int = 300, dropout: float = 0.5) -> None:
        super().__init__()
        self.out_dim = int(out_dim)
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout), nn.Linear(hidden, out_dim)
        )

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z)


def cosine_loss(pred: Tensor, target: Tensor) -> Tensor:
    """Mean of ``(1 - cos(pred_i, target_i)) / 2`` over the batch: 0 when aligned, 1 when opposite."""
    if pred.shape != target.shape:
        raise ValueError(f"pred and target must have one shape, got {tuple(pred.shape)} and {tuple(target.shape)}")
    return ((1.0 - F.cosine_similarity(pred, target, dim=1, eps=1e-8)) / 2.0).mean()
