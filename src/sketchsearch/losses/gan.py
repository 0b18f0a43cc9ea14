"""The GAN losses of Goodfellow et al. (2014) as written in Creswell & Bharath's Algorithm 1.

Both take discriminator *logits* ``l`` (D(x) = sigmoid(l)) so that log D and log(1 - D) are computed with
``binary_cross_entropy_with_logits`` (log-sum-exp, no overflow/underflow at saturated D), which is exactly
``-log sigmoid(l)`` and ``-log(1 - sigmoid(l))``:

* ``J_D = -(1/2m) sum_i [log D(x_i) + log(1 - D(G(z_i)))]``  (:func:`discriminator_loss`)
* ``J_G = -(1/m) sum_i log D(G(z_i))``  (:func:`generator_loss`, the non-saturating generator loss)
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

__all__ = ["discriminator_loss", "generator_loss"]


def discriminator_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """J_D from logits of real drawings (B,) and of generated ones (B',); scalar tensor.

    With equal batch sizes m this is ``-(1/2m) (sum log D(x) + sum log(1 - D(G(z))))``; otherwise each
    half is averaged over its own batch, then the two halves are averaged.
    """
    if real_logits.numel() == 0 or fake_logits.numel() == 0:
        raise ValueError(f"empty logits: real {tuple(real_logits.shape)}, fake {tuple(fake_logits.shape)}")
    real = F.binary_cross_entropy_with_logits(real_logits.float(), real_logits.new_ones(real_logits.shape).float())
    fake = F.binary_cross_entropy_with_logits(fake_logits.float(), fake_logits.new_zeros(fake_logits.shape).float())
    return 0.5 * (real + fake)


def generator_loss(fake_logits: Tensor) -> Tensor:
    """J_G = -(1/m) sum log D(G(z)) from logits of generated drawings (B,); scalar tensor."""
    if fake_logits.numel() == 0:
        raise ValueError("empty logits for the generator loss")
    return F.binary_cross_entropy_with_logits(fake_logits.float(), fake_logits.new_ones(fake_logits.shape).float())
