"""Bidirectional GRU over 4-d stroke points (SketchMate's RNN branch).

Input rows are ``(dx, dy, pen_down, pen_up)`` (sketch-rnn's stroke-5 without the end-of-sketch state, as
SketchMate does), zero-padded to the longest sequence with the true ``lengths``; the padding never enters
the recurrence (``pack_padded_sequence``). The feature is the last layer's final hidden state of both
directions, concatenated.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence

from . import ENCODERS

__all__ = ["StrokeRNN"]


@ENCODERS.register("stroke_rnn")
class StrokeRNN(nn.Module):
    """points (B, T, 4) float + lengths (B,) long -> features (B, 2 * hidden) float (bidirectional)."""

    def __init__(
        self,
        hidden: int = 256,
        layers: int = 2,
        cell: str = "gru",  # the issue allows GRU or LSTM; GRU has fewer weights at the same width
        dropout: float = 0.0,
        in_dim: int = 4,
    ) -> None:
        super().__init__()
        cells = {"gru": nn.GRU, "lstm": nn.LSTM}
        if cell not in cells:
            raise ValueError(f"cell must be one of {sorted(cells)}, got {cell!r}")
        self.in_dim = in_dim
        self.rnn = cells[cell](
            in_dim,
            hidden,
            num_layers=layers,
            batch_first=True,
            bidirectional=True,
            dropout=dropout if layers > 1 else 0.0,
        )
        self.out_dim = 2 * hidden

    def forward(self, points: Tensor, lengths: Tensor) -> Tensor:
        if points.ndim != 3 or points.shape[2] != self.in_dim:
            raise ValueError(f"expected points (B, T, {self.in_dim}), got shape {tuple(points.shape)}")
        if lengths.shape != points.shape[:1]:
            raise ValueError(f"lengths must be (B,) = ({points.shape[0]},), got {tuple(lengths.shape)}")
        # An empty sequence cannot be packed; give it one zero step (its feature is then the bias response).
        lengths = lengths.clamp(min=1, max=points.shape[1]).cpu()
        packed = pack_padded_sequence(points, lengths, batch_first=True, enforce_sorted=False)
        _, h = self.rnn(packed)
        if isinstance(h, tuple):  # LSTM: (h, c)
            h = h[0]
        # h: (layers * 2, B, hidden); the last layer's forward and backward final states
        return torch.cat([h[-2], h[-1]], dim=1)
