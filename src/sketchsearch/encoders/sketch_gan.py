"""sketch-GAN and thin-GAN: the generator / discriminator pairs of Creswell & Bharath, "Adversarial Training
For Sketch Retrieval" (ECCV workshops 2016, https://arxiv.org/abs/1607.02748), Table 1.

Input and output are 64x64 rasters, ink 1 on background 0. ``c`` = convolution with stride 2, ``d`` =
transposed convolution with stride 2 (the paper's "stride 0.5"), unless a layer says stride 1. ReLU in every
hidden layer, sigmoid on the last layer of each network (here the discriminator returns the *logit*: the
sigmoid is folded into the loss, :mod:`sketchsearch.losses.gan`, which is the same function, computed stably).
Padding is ``(k - 1) // 2`` so a stride-2 layer halves (or doubles) the side exactly; the paper does not
give padding, and this is the only choice that yields its 64 -> 4x4 (and 4x4 -> 64) shapes.

The *encoder* is the discriminator without its last layer: the 1024-d reshape output (after BN + ReLU).

Parameter counts (weights + biases + BN affine; :func:`count_parameters`):
sketch-GAN G 22,225 + D 17,825 = 40,050; thin-GAN G 27,505 + D 25,633 = 53,138. The paper says "33k" and
"50k". thin-GAN matches up to biases/BN (weights alone: 51.6k). sketch-GAN's 40k, built exactly as Table 1,
is 6.6k above 33k, about one 16x16x5x5 layer (6,416): the paper's implementation probably had one fewer
such layer than its table lists, or the figure is loose; we follow the table.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from . import ENCODERS

__all__ = [
    "GAN",
    "SPECS",
    "ConvSpec",
    "Discriminator",
    "GANSpec",
    "Generator",
    "count_parameters",
    "sketch_gan",
    "thin_gan",
]


@dataclass(frozen=True)
class ConvSpec:
    """One (transposed) convolution: ``out x in x k x k`` with ``stride``, then optional batch norm."""

    out_ch: int
    in_ch: int
    k: int
    stride: int = 2
    bn: bool = True


@dataclass(frozen=True)
class GANSpec:
    """A row of Table 1: G = fc(dz -> g_fc_shape) then ``g_layers``; D = ``d_layers`` then fc(1024 -> 1)."""

    g_fc_shape: tuple[int, int, int]  # (C, H, W) of the reshaped fc output
    g_layers: tuple[ConvSpec, ...]
    d_layers: tuple[ConvSpec, ...]
    image_size: int = 64


SPECS: dict[str, GANSpec] = {
    # Table 1, thin-GAN (DCGAN with 1/16 of the filters): 3x3 kernels throughout.
    "thin-gan": GANSpec(
        g_fc_shape=(64, 4, 4),
        g_layers=(ConvSpec(32, 64, 3), ConvSpec(16, 32, 3), ConvSpec(8, 16, 3), ConvSpec(1, 8, 3, bn=False)),
        d_layers=(ConvSpec(8, 1, 3, bn=False), ConvSpec(16, 8, 3), ConvSpec(32, 16, 3), ConvSpec(64, 32, 3)),
    ),
    # Table 1, sketch-GAN (Sketch-a-Net-like): large kernels at the pixel end of both networks.
    "sketch-gan": GANSpec(
        g_fc_shape=(8, 4, 4),
        g_layers=(
            ConvSpec(16, 8, 3),
            ConvSpec(16, 16, 5),
            ConvSpec(16, 16, 5),
            ConvSpec(16, 16, 5),
            ConvSpec(1, 16, 9, stride=1, bn=False),
        ),
        d_layers=(
            ConvSpec(8, 1, 9, stride=1, bn=False),
            ConvSpec(16, 8, 5),
            ConvSpec(16, 16, 5),
            ConvSpec(16, 16, 5),
        ),
    ),
}


def _side_after(spec: GANSpec) -> int:
    side = spec.image_size
    for layer in spec.d_layers:
        side //= layer.stride
    return side


class Generator(nn.Module):
    """z float (B, dz) -> image float (B, 1, 64, 64) in (0, 1) (sigmoid)."""

    def __init__(self, spec: GANSpec, dz: int = 2) -> None:
        super().__init__()
        c, h, w = spec.g_fc_shape
        self.fc_shape = (c, h, w)
        self.fc = nn.Linear(dz, c * h * w)
        layers: list[nn.Module] = []
        for i, s in enumerate(spec.g_layers):
            if s.stride == 2:
                layers.append(
                    nn.ConvTranspose2d(s.in_ch, s.out_ch, s.k, stride=2, padding=(s.k - 1) // 2, output_padding=1)
                )
            else:
                layers.append(nn.ConvTranspose2d(s.in_ch, s.out_ch, s.k, stride=1, padding=(s.k - 1) // 2))
            if s.bn:
                layers.append(nn.BatchNorm2d(s.out_ch))
            layers.append(nn.Sigmoid() if i == len(spec.g_layers) - 1 else nn.ReLU(inplace=True))
        self.net = nn.Sequential(*layers)
        self.dz = dz

    def forward(self, z: Tensor) -> Tensor:
        x = torch.relu(self.fc(z)).view(z.shape[0], *self.fc_shape)
        return self.net(x)


class Discriminator(nn.Module):
    """image float (B, 1, 64, 64) -> real/fake logit (B,). :meth:`features` is the retrieval encoder."""

    def __init__(self, spec: GANSpec) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for s in spec.d_layers:
            layers.append(nn.Conv2d(s.in_ch, s.out_ch, s.k, stride=s.stride, padding=(s.k - 1) // 2))
            if s.bn:
                layers.append(nn.BatchNorm2d(s.out_ch))
            layers.append(nn.ReLU(inplace=True))
        self.net = nn.Sequential(*layers)
        side = _side_after(spec)
        self.feature_dim = spec.d_layers[-1].out_ch * side * side  # 1024 for both architectures
        self.fc = nn.Linear(self.feature_dim, 1)
        self.image_size = spec.image_size

    def features(self, x: Tensor) -> Tensor:
        """(B, 1, 64, 64) -> (B, 1024) float, >= 0 (ReLU output, *not* normalised)."""
        if x.dim() != 4 or x.shape[1:] != (1, self.image_size, self.image_size):
            raise ValueError(
                f"expected rasters of shape (B, 1, {self.image_size}, {self.image_size}), got {tuple(x.shape)}"
            )
        return self.net(x).flatten(1)

    def forward(self, x: Tensor) -> Tensor:
        """(B,) logits; D(x) = sigmoid(logit) is the probability that x is a real drawing."""
        return self.fc(self.features(x)).squeeze(1)


class GAN(nn.Module):
    """A generator / discriminator pair built from one :class:`GANSpec`."""

    def __init__(self, spec: GANSpec, dz: int = 2) -> None:
        super().__init__()
        self.spec = spec
        self.generator = Generator(spec, dz)
        self.discriminator = Discriminator(spec)

    @property
    def dz(self) -> int:
        return self.generator.dz


@ENCODERS.register("sketch-gan")
def sketch_gan(dz: int = 2) -> GAN:
    """sketch-GAN (Table 1); ``dz = 2`` as in the paper, section 4.2."""
    return GAN(SPECS["sketch-gan"], dz)


@ENCODERS.register("thin-gan")
def thin_gan(dz: int = 2) -> GAN:
    """thin-GAN (Table 1); ``dz = 2`` as in the paper, section 4.2."""
    return GAN(SPECS["thin-gan"], dz)


def count_parameters(module: nn.Module) -> int:
    """Trainable parameters (weights, biases, BN scale and shift; not BN running statistics)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
