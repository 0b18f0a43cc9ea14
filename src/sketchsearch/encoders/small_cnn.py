"""A compact raster CNN with batch normalisation, for metric learning that must train in minutes on a CPU.

Four stages of (3x3 conv, BatchNorm, ReLU) x 2 with a 2x2 max-pool between them, channels ``c, 2c, 4c, 8c``
(``c = round(32 * width)``), global average pooling, and a linear layer to ``out_dim``. At 64 px and
``width=0.5`` it is ~0.3 M parameters. Hand-written (a dozen lines of torch): the Sketch-a-Net encoder here
has no normalisation layers and ends in ReLU + dropout, and in our 500-step CPU runs its features died
(every drawing got the same embedding) under the pairwise losses; with BatchNorm this one does not.
"""

from __future__ import annotations

from torch import Tensor, nn

from . import ENCODERS

__all__ = ["SmallCNN"]


def _stage(cin: int, cout: int) -> list[nn.Module]:
    return [
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    ]


@ENCODERS.register("small_cnn")
class SmallCNN(nn.Module):
    """Raster (B, 1, H, W) float, ink = 1 -> features (B, ``out_dim``) float (H, W >= 16)."""

    def __init__(self, raster_size: int = 64, width: float = 0.5, out_dim: int = 256) -> None:
        super().__init__()
        if raster_size < 16:
            raise ValueError(f"raster_size must be >= 16 pixels for this network, got {raster_size}")
        c = max(4, round(32 * width))
        layers: list[nn.Module] = [
            nn.Conv2d(1, c, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(c),
            nn.ReLU(inplace=True),
        ]
        for cin, cout in ((c, c), (c, 2 * c), (2 * c, 4 * c)):
            layers += [*_stage(cin, cout), nn.MaxPool2d(2)]
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.features = nn.Sequential(*layers)
        self.out_dim = int(out_dim)
        self.fc = nn.Linear(4 * c, self.out_dim)

    def forward(self, raster: Tensor) -> Tensor:
        if raster.ndim != 4 or raster.shape[1] != 1:
            raise ValueError(f"expected a raster batch (B, 1, H, W), got shape {tuple(raster.shape)}")
        return self.fc(self.features(raster))
