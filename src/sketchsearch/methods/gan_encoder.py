"""GAN encoders for line drawings: Creswell & Bharath, "Adversarial Training For Sketch Retrieval"
(ECCV workshops 2016, https://arxiv.org/abs/1607.02748).

A GAN (sketch-GAN or thin-GAN, :mod:`sketchsearch.encoders.sketch_gan`) is trained on unlabelled drawings
with Algorithm 1 (one D step, then one G step, k = 1); the *encoder* is the discriminator without its last
layer: the 1024-d output of its last convolution block (after ReLU), L2-normalised, compared by dot product.

Binary codes: the features are ReLU outputs (>= 0), so the sign of the raw feature is always "1" (or 0 for
dead units) and carries nothing. After training the recipe stores the per-dimension **mean** of the encodings
of the training drawings in the buffer ``centre``; :func:`binary_variant` (or ``binary=True``) gives the same
network with ``output = "binary"``, whose relaxed code is ``features - centre`` so that bit = feature above
its training mean (1024 bits). The float method is the paper's; the binary one is ours, for the Hamming index.

Batch norm: D's running statistics are updated on real *and* generated batches during training, so at the
end the recipe re-estimates them on real drawings only (:meth:`GANEncoder.calibrate`); that is the
distribution the encoder is used on. The card records it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..encoders import create_encoder
from ..encoders.sketch_gan import GAN, count_parameters
from ..losses.gan import discriminator_loss, generator_loss
from .base import METHODS, Batch, Method, Preprocessing

__all__ = [
    "ADAM_BETAS",
    "LINE_WIDTH",
    "GANBinaryEncoder",
    "GANEncoder",
    "binary_variant",
    "encode_rasters",
    "gan",
]

#: Line width (pixels at 64x64) of rendered training and query drawings: the paper's marks are about one
#: pixel thick at 64x64 (its Fig. 4B/6); 1.25 px keeps them thin while antialiasing keeps diagonals connected.
LINE_WIDTH = 1.25

#: Adam's betas. The paper gives Adam and lr = 0.002 but not the betas; we use DCGAN's (Radford et al. 2015,
#: which the paper follows for its architecture): beta1 = 0.5 damps the oscillation of the adversarial game.
ADAM_BETAS = (0.5, 0.999)

Arch = Literal["sketch-gan", "thin-gan"]


class GANEncoder(Method):
    """sketch-GAN / thin-GAN as a retrieval method: trained adversarially, encodes with the discriminator.

    ``encode_sketch``: (B, 1024) float32, L2-normalised (the paper's encoding).
    """

    name = "gan"
    output = "float"

    def __init__(
        self,
        preprocessing: Preprocessing | None = None,
        arch: Arch = "sketch-gan",  # the paper's proposed network (section 4.1); "thin-gan" is its baseline
        dz: int = 2,  # size of z, section 4.2
    ) -> None:
        super().__init__(preprocessing or Preprocessing(inputs=("raster",), raster_size=64, line_width=LINE_WIDTH))
        if arch not in ("sketch-gan", "thin-gan"):
            raise ValueError(f"arch must be 'sketch-gan' or 'thin-gan', got {arch!r}")
        if not isinstance(dz, int) or dz < 1:
            raise ValueError(f"dz must be a positive int, got {dz!r}")
        if self.preprocessing.raster_size != 64 or "raster" not in self.preprocessing.inputs:
            raise ValueError(f"the GAN networks read 64x64 rasters; got preprocessing {self.preprocessing.to_dict()}")
        gan = create_encoder(arch, dz=dz)
        assert isinstance(gan, GAN)
        self.gan = gan
        self.arch = arch
        self.dz = dz
        # per-dimension mean of the training encodings (see the module docstring); zeros until calibrated
        self.register_buffer("centre", torch.zeros(gan.discriminator.feature_dim))

    @property
    def code_size(self) -> int:
        return self.gan.discriminator.feature_dim

    def parameter_counts(self) -> dict[str, int]:
        return {
            "generator": count_parameters(self.gan.generator),
            "discriminator": count_parameters(self.gan.discriminator),
        }

    # ------------------------------------------------------------------ training (Algorithm 1)
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """G(z) for n draws z ~ N(0, I): float (n, 1, 64, 64) in (0, 1)."""
        dev = self.centre.device
        z = torch.randn(n, self.dz, generator=generator, device="cpu" if generator is not None else dev).to(dev)
        return self.gan.generator(z)

    def training_losses(self, batch: Batch, phase: str = "d") -> dict[str, Tensor]:
        """``phase="d"``: J_D (+ mean D(x), D(G(z)) logged); ``phase="g"``: J_G. Fresh z each call."""
        real = batch["raster"]
        m = real.shape[0]
        if phase == "d":
            with torch.no_grad():
                fake = self.sample(m)
            real_logits = self.gan.discriminator(real)
            fake_logits = self.gan.discriminator(fake)
            return {
                "d_loss": discriminator_loss(real_logits, fake_logits),
                "d_real": torch.sigmoid(real_logits.detach().float()).mean(),
                "d_fake": torch.sigmoid(fake_logits.detach().float()).mean(),
            }
        if phase == "g":
            return {"g_loss": generator_loss(self.gan.discriminator(self.sample(m)))}
        raise ValueError(f"GAN phase must be 'd' or 'g', got {phase!r}")

    def configure_optimizers(self, lr: float) -> dict[str, torch.optim.Optimizer]:
        """Two Adams (lr 0.002 in the paper, passed in by the training config)."""
        return {
            "d": torch.optim.Adam(self.gan.discriminator.parameters(), lr=lr, betas=ADAM_BETAS),
            "g": torch.optim.Adam(self.gan.generator.parameters(), lr=lr, betas=ADAM_BETAS),
        }

    def step(
        self,
        model: Callable[..., dict[str, Tensor]],
        batch: Batch,
        optimizers: Mapping[str, torch.optim.Optimizer],
    ) -> dict[str, float]:
        """Algorithm 1 with k = 1: one discriminator update on J_D, then one generator update on J_G."""
        opt_d, opt_g = optimizers["d"], optimizers["g"]
        d = model(batch, phase="d")
        opt_d.zero_grad(set_to_none=True)
        d["d_loss"].backward()
        opt_d.step()
        g = model(batch, phase="g")
        opt_g.zero_grad(set_to_none=True)
        g["g_loss"].backward()  # also leaves gradients in D; opt_d.zero_grad clears them before D's next step
        opt_g.step()
        out = {k: float(v.detach()) for k, v in {**d, **g}.items()}
        out["loss"] = out["d_loss"] + out["g_loss"]
        return out

    # ------------------------------------------------------------------ retrieval
    def features(self, raster: Tensor) -> Tensor:
        """(B, 1, 64, 64) -> (B, 1024) raw encoder output (ReLU, >= 0)."""
        return self.gan.discriminator.features(raster.float())

    def encode_sketch(self, batch: Batch) -> Tensor:
        return F.normalize(self.features(batch["raster"]), dim=1)

    @torch.no_grad()
    def calibrate(self, rasters: Tensor, batch_size: int = 256) -> dict[str, Any]:
        """Re-estimate D's batch-norm statistics on real drawings and store the mean encoding in ``centre``.

        ``rasters``: float (N, 1, 64, 64). BN statistics are the exact average over all batches
        (``momentum=None``). Leaves the method in eval mode; returns what the card records.
        """
        if rasters.dim() != 4 or len(rasters) == 0:
            raise ValueError(f"calibrate needs rasters (N, 1, 64, 64), got shape {tuple(rasters.shape)}")
        dev = self.centre.device
        bns = [m for m in self.gan.discriminator.modules() if isinstance(m, torch.nn.BatchNorm2d)]
        saved = [bn.momentum for bn in bns]
        for bn in bns:
            bn.reset_running_stats()
            bn.momentum = None  # cumulative average
        self.gan.discriminator.train()
        for i in range(0, len(rasters), batch_size):
            self.gan.discriminator.features(rasters[i : i + batch_size].to(dev).float())
        for bn, mom in zip(bns, saved):
            bn.momentum = mom
        self.eval()
        total = torch.zeros_like(self.centre)
        for i in range(0, len(rasters), batch_size):
            total += self.features(rasters[i : i + batch_size].to(dev)).sum(0)
        self.centre.copy_(total / len(rasters))
        return {"calibrated_on": len(rasters), "active_dims": int((self.centre > 0).sum())}


class GANBinaryEncoder(GANEncoder):
    """The same network with 1024-bit codes for the Hamming index: bit = feature > its training mean."""

    output = "binary"
    code_threshold = 0.0
    id_name = "gan-bits"  # same registry name and weights as the float encoder: its own model_id all the same
    variant_kwargs: ClassVar[dict[str, Any]] = {
        "binary": True
    }  # the registry factory builds this class for binary=True

    def encode_sketch(self, batch: Batch) -> Tensor:
        """(B, 1024) relaxed code ``features - centre``; its sign gives the bits."""
        if not bool((self.centre != 0).any()):
            raise ValueError("this GAN encoder has no centre (not calibrated): its binary codes would be all ones")
        return self.features(batch["raster"]) - self.centre


@METHODS.register("gan")
def gan(
    preprocessing: Preprocessing | None = None, arch: Arch = "sketch-gan", dz: int = 2, binary: bool = False
) -> GANEncoder:
    """Build the GAN method. ``binary=False`` (the paper): float 1024-d embeddings; ``binary=True``: 1024-bit codes."""
    cls = GANBinaryEncoder if binary else GANEncoder
    return cls(preprocessing, arch=arch, dz=dz)


def binary_variant(method: GANEncoder) -> GANBinaryEncoder:
    """A :class:`GANBinaryEncoder` sharing ``method``'s weights and centre (e.g. to index a shipped float model)."""
    out = GANBinaryEncoder(method.preprocessing, arch=method.arch, dz=method.dz)  # type: ignore[arg-type]
    out.load_state_dict(method.state_dict())
    return out.to(method.centre.device).eval()


def encode_rasters(method: Method, rasters: np.ndarray | Tensor, batch_size: int = 512) -> np.ndarray:
    """Encode float rasters (N, H, W) or (N, 1, H, W) with ``method.encode_sketch`` in eval mode:
    float32 (N, code_size). The fast path for benchmarks and the invariance study (no Sketch objects)."""
    x = torch.as_tensor(np.asarray(rasters, dtype=np.float32) if not isinstance(rasters, Tensor) else rasters)
    if x.dim() == 3:
        x = x[:, None]
    method.eval()
    dev = next(iter(method.buffers()), torch.zeros(0)).device
    outs = []
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            outs.append(method.encode_sketch({"raster": x[i : i + batch_size].to(dev)}).float().cpu())
    return torch.cat(outs).numpy() if outs else np.zeros((0, method.code_size), dtype=np.float32)
