"""GDH's domain-migration networks (Zhang et al., ECCV 2018, Table 1) scaled down for a CPU, and its hash CNN.

Table 1 at 256 px: each generator is ``conv 3x3 (32) -> conv 3x3 (32) -> conv 4x4/2 (64) -> conv 4x4/2 (128) ->
ResBlock x n (128) -> deconv 4x4/2 (64) -> deconv 4x4/2 (32) -> conv 3x3 (3)``, every layer with BatchNorm;
G_S (image -> sketch) has 6 ResBlocks and the attention layer, G_I (sketch -> image) 9 ResBlocks. Ours keeps
that shape with ``width`` base channels instead of 32 (default 8: channels 8/16/32, i.e. Table 1 / 4), fewer
ResBlocks (defaults 2 for G_S, 3 for G_I: G_I keeps more, as in the paper) and 64 px inputs (the 1/4-size
bottleneck is then 16 x 16). G_I's odd ``deconv 4x4 stride 1 -> 253 px`` layer is replaced by the same
symmetric decoder as G_S. Sketch domain: 1 channel (raster, ink = 1 on 0); image domain: 3 channels RGB.
Outputs go through a sigmoid (images and rasters live in [0, 1]).

Attention (section 3.2, Table 1 ``attention 1x1 -> 1 x 64 x 64``, in G_S): a 1x1 conv on the ResBlock features
gives one logit per position; a softmax over the positions "with a threshold" gives a *binary* mask (here:
1 where the softmax weight is at least ``threshold`` times the uniform weight 1/(h w)); the ResBlock features
are multiplied by it element-wise. The binary mask passes gradients straight through a soft surrogate
``a / (a + threshold)`` (``a`` = softmax weight x h w, so 0.5 exactly at the threshold): the paper does not
say how it trains through the threshold. Upsampled (nearest) to the input size, the mask is what GDH
multiplies real images by (``I * mask``) before D_I and the hash network.

Discriminators (Table 1 D-Net, a PatchGAN as CycleGAN's): ``conv 4x4/2 (w) -> 4x4/2 (2w) -> 4x4/2 (4w) ->
3x3 (8w) -> 3x3 -> 1`` logits per patch (Table 1 ends in 128 channels; we end in one logit per patch, which
is what the log-loss reads). The hash network (the paper: ResNet-18 with a K-unit fc + binary constraint)
is a small BatchNorm CNN with a tanh K-unit head.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from . import ENCODERS

__all__ = ["AttentionMask", "HashCNN", "MigrationGenerator", "PatchDiscriminator", "ResBlock"]


def _conv_bn(cin: int, cout: int, k: int, s: int, p: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, k, s, p, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


def _deconv_bn(cin: int, cout: int) -> list[nn.Module]:
    return [nn.ConvTranspose2d(cin, cout, 4, 2, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class ResBlock(nn.Module):
    """Two 3x3 conv + BN layers with an identity pass-through (Table 1's ResBlock)."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(c, c, 3, 1, 1, bias=False),
            nn.BatchNorm2d(c),
            nn.ReLU(inplace=True),
            nn.Conv2d(c, c, 3, 1, 1, bias=False),
            nn.BatchNorm2d(c),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class AttentionMask(nn.Module):
    """1x1 conv -> spatial softmax -> binary mask (B, 1, h, w) in {0, 1} (straight-through gradients).

    ``threshold``: a position is kept where its softmax weight is >= ``threshold`` / (h w) (ours: 1.0, i.e.
    above-uniform attention; the paper says only "a softmax function with a threshold").
    """

    def __init__(self, c: int, threshold: float = 1.0) -> None:
        super().__init__()
        if threshold <= 0:
            raise ValueError(f"attention threshold must be > 0, got {threshold}")
        self.conv = nn.Conv2d(c, 1, 1)
        self.threshold = float(threshold)

    def forward(self, x: Tensor) -> Tensor:
        b, _, h, w = x.shape
        logits = self.conv(x).reshape(b, h * w)
        a = torch.softmax(logits.float(), dim=1) * (h * w)  # 1 = uniform attention
        soft = a / (a + self.threshold)
        hard = (a >= self.threshold).to(soft.dtype)
        return (hard + (soft - soft.detach())).reshape(b, 1, h, w).to(x.dtype)


@ENCODERS.register("gdh_generator")
class MigrationGenerator(nn.Module):
    """(B, in_ch, H, W) in [0, 1] -> (B, out_ch, H, W) in [0, 1] (H, W multiples of 4).

    With ``attention=True`` (G_S) ``forward`` returns ``(output, mask)``, mask (B, 1, H, W) in {0, 1} at the
    input resolution; otherwise ``(output, None)``.
    """

    def __init__(
        self,
        in_ch: int = 1,
        out_ch: int = 3,
        width: int = 8,
        n_res: int = 3,
        attention: bool = False,
        threshold: float = 1.0,
    ) -> None:
        super().__init__()
        c = int(width)
        if c < 1 or n_res < 0:
            raise ValueError(f"width must be >= 1 and n_res >= 0, got {width}, {n_res}")
        self.encoder = nn.Sequential(
            *_conv_bn(in_ch, c, 3, 1, 1),
            *_conv_bn(c, c, 3, 1, 1),
            *_conv_bn(c, 2 * c, 4, 2, 1),
            *_conv_bn(2 * c, 4 * c, 4, 2, 1),
            *[ResBlock(4 * c) for _ in range(int(n_res))],
        )
        self.attention = AttentionMask(4 * c, threshold) if attention else None
        self.decoder = nn.Sequential(
            *_deconv_bn(4 * c, 2 * c), *_deconv_bn(2 * c, c), nn.Conv2d(c, out_ch, 3, 1, 1), nn.Sigmoid()
        )

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        if x.ndim != 4 or x.shape[-1] % 4 or x.shape[-2] % 4:
            raise ValueError(f"expected (B, C, H, W) with H, W multiples of 4, got {tuple(x.shape)}")
        f = self.encoder(x)
        if self.attention is None:
            return self.decoder(f), None
        m = self.attention(f)
        out = self.decoder(f * m)
        return out, nn.functional.interpolate(m, size=x.shape[-2:], mode="nearest")


@ENCODERS.register("gdh_discriminator")
class PatchDiscriminator(nn.Module):
    """(B, in_ch, H, W) -> patch logits (B, 1, H/8, W/8) (D(x) = sigmoid(logit))."""

    def __init__(self, in_ch: int = 3, width: int = 8) -> None:
        super().__init__()
        c = int(width)
        lrelu = nn.LeakyReLU(0.2, inplace=True)
        self.net = nn.Sequential(
            nn.Conv2d(in_ch, c, 4, 2, 1),
            lrelu,
            nn.Conv2d(c, 2 * c, 4, 2, 1, bias=False),
            nn.BatchNorm2d(2 * c),
            lrelu,
            nn.Conv2d(2 * c, 4 * c, 4, 2, 1, bias=False),
            nn.BatchNorm2d(4 * c),
            lrelu,
            nn.Conv2d(4 * c, 8 * c, 3, 1, 1, bias=False),
            nn.BatchNorm2d(8 * c),
            lrelu,
            nn.Conv2d(8 * c, 1, 3, 1, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


@ENCODERS.register("gdh_hash_cnn")
class HashCNN(nn.Module):
    """RGB (B, 3, H, W) in [0, 1] -> relaxed codes (B, nbits) in (-1, 1) (tanh; the code is the sign).

    Stem conv 3x3/2, then (conv 3x3 + BN + ReLU, max-pool 2) stages of ``w, 2w, 4w, 8w`` channels, global
    average pooling, linear to ``nbits``, tanh (H >= 16).
    """

    def __init__(self, nbits: int = 64, width: int = 16, in_ch: int = 3) -> None:
        super().__init__()
        c = int(width)
        layers: list[nn.Module] = [*_conv_bn(in_ch, c, 3, 2, 1)]
        for cin, cout in ((c, c), (c, 2 * c), (2 * c, 4 * c), (4 * c, 8 * c)):
            layers += [*_conv_bn(cin, cout, 3, 1, 1), nn.MaxPool2d(2, ceil_mode=True)]
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(8 * c, int(nbits))

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 4 or x.shape[-1] < 16:
            raise ValueError(f"expected images (B, C, H >= 16, W >= 16), got {tuple(x.shape)}")
        return torch.tanh(self.fc(self.features(x)))
