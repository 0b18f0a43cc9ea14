"""Projection and hash heads: a linear layer and a squashing non-linearity (the relaxed code).

At inference the relaxed code is thresholded (sigmoid: at 0.5; tanh: at 0) into bits by the method.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from . import ENCODERS

__all__ = ["HashHead"]

_ACTIVATIONS = {"sigmoid": torch.sigmoid, "tanh": torch.tanh, "none": lambda x: x}


@ENCODERS.register("hash_head")
class HashHead(nn.Module):
    """features (B, in_dim) float -> relaxed codes (B, nbits) float in (0, 1) (sigmoid), (-1, 1) (tanh) or R.

    ``threshold`` is the value at which a bit flips (0.5 for sigmoid, 0 otherwise).
    """

    def __init__(self, in_dim: int, nbits: int, activation: str = "sigmoid") -> None:
        super().__init__()
        if activation not in _ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(_ACTIVATIONS)}, got {activation!r}")
        if nbits <= 0:
            raise ValueError(f"nbits must be > 0, got {nbits}")
        self.activation = activation
        self.threshold = 0.5 if activation == "sigmoid" else 0.0
        self.linear = nn.Linear(in_dim, nbits)

    def forward(self, x: Tensor) -> Tensor:
        return _ACTIVATIONS[self.activation](self.linear(x))
