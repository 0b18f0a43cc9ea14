"""Losses: a thin layer over pytorch-metric-learning plus what it lacks (GAN, quantisation, ...)."""

from .gan import discriminator_loss, generator_loss

__all__ = ["discriminator_loss", "generator_loss"]
