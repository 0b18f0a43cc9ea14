"""GDH: Generative Domain-Migration Hashing for sketch -> photo retrieval, scaled down for a CPU.

Zhang, Shen, Liu, Zhu, Shao, "Generative Domain-Migration Hashing for Sketch-to-Image Retrieval", ECCV 2018
(our source text: ``shared/papers/004_10d85a6b96783cb7.txt``). Values the paper does not give are marked "ours".

Networks (``encoders/domain_migration.py``, Table 1 scaled down: 64 px, channels / 4, fewer ResBlocks):
G_I (sketch raster -> RGB image), G_S (image -> sketch raster, with the attention layer: the paper puts it
in G_S, Table 1, and obtains the mask "by G_S(I)"), the patch discriminators D_I, D_S and the hash network H
(tanh codes, ``nbits`` bits; ``hash_backbone="lite0"``: ImageNet EfficientNet-Lite0 with its top blocks
trained, for the fine-grained task, ``encoders/photo_cnn.py``'s ``TopTunedLite``). Real images enter D_I
and H as ``I * mask``; migrated sketches ``G_I(S)`` have no background and enter H unmasked. Retrieval:
``encode_sketch = H(G_I(S))``, ``encode_photo = H(I * mask)``, relaxed codes whose sign is the code
(``output = "binary"``: the Retriever uses the Hamming index).

Objective, Eq. (7): ``L_gan + L_sem + lambda L_tri + alpha L_q + beta L_c`` with

* ``L_gan`` (Eqs. 1-3): log-loss adversarial terms for G_I/D_I and G_S/D_S (``losses/gan.py``: non-saturating
  generator loss) + ``nu`` x cycle consistency ``|G_S(G_I(S)) - S| + |G_I(G_S(I)) - I * mask|``. The paper
  writes a Frobenius norm and takes nu = 10 from CycleGAN, whose cycle term is the mean L1: we use mean L1,
  so that nu = 10 means what it means there;
* ``L_sem`` (Eq. 4): semantic factorization ``||B^I - Y^I D||^2 + ||B^S - Y^S D||^2 + ||D||^2`` over the
  *discrete* codes, minimised in closed form only (D-step Eq. 9, B-steps Eqs. 12-13, ``losses/hashing.py``);
* ``L_q`` (Eq. 5): ``||H(I) - B^I||^2 + ||H(G_I(S)) - B^S||^2`` against the B-step codes
  (``quantization_loss(target=B)``);
* ``L_c``: the unification constraint ``||H(I) - H(G_I(S))||^2`` on the batch's image-sketch pairs;
* ``L_tri`` (Eq. 6): triplet ranking on (migrated sketch, its own photo, another photo) with PML's
  ``TripletMarginLoss``; the paper's distance is the squared Euclidean one with margin ``0.5 K``
  (``distance="squared_euclidean"``; ``euclidean`` / ``cosine`` / ``snr`` also work, margin then 0.2).

Alternating optimisation, Algorithm 1, in :meth:`GDH.step` (one call per batch of the one training loop):
with a code bank (:meth:`GDH.set_training_data`, what the recipe does) the D-step and both B-steps run in
closed form at the start of every epoch (every ``n_images`` images seen) on the whole training set's discrete
codes and its *latest* relaxed codes (each item's H output from its last batch: the paper recomputes H over
the epoch's data; ours is up to one epoch stale); B starts random (Algorithm 1, line 1). Without a bank (tests,
ad-hoc use) the same three steps run on the batch alone (B initialised as sign(H)). Then the network step:
one Adam step of G_I, G_S and H on ``L_gan + lambda L_tri + alpha L_q + beta L_c`` (Eq. 14), then one of
D_I, D_S on the discriminator loss, on detached fakes (the GAN's max player). Note that with the paper's
alpha = 1e-5 the B-step is ``sgn(Y D)`` to float precision: every image and sketch of a class gets the same
class code, fixed after the first epoch, and ``L_q`` pulls H towards it. The paper's weights work at their
scale here because G and H have separate Adam optimisers (Adam is invariant to a loss's overall scale); the
*ratios* alpha : beta : lambda are what matter for H.

Tasks (the paper's settings, section 4): category level lambda = 0 (the default); fine-grained lambda = 1
and the semantic steps skipped (``semantic=False``). ``migration=False`` is the "no GAN" ablation: no
generators at all, H reads the sketch raster as an image (ink drawn black on white, RGB) and plain photos.

Training batches (:func:`collate_pairs`): ``raster`` float (B, 1, S, S) ink = 1; ``photo`` float (B, 3, S, S)
RGB in [0, 1]; ``label`` long (B,) class indices; ``photo_index`` / ``sketch_index`` long (B,) positions in
the code bank (-1: none); ``instance`` long (B,) the photo's instance id; ``own`` bool (B,) whether the
sketch was drawn from that photo (the triplet's anchor-positive pairs).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from pytorch_metric_learning.distances import BaseDistance, LpDistance
from torch import Tensor, nn

from ..encoders.domain_migration import HashCNN, MigrationGenerator, PatchDiscriminator
from ..encoders.photo_cnn import IMAGENET_MEAN, IMAGENET_STD, TopTunedLite
from ..losses.distances import get_distance
from ..losses.gan import discriminator_loss, generator_loss
from ..losses.hashing import (
    discrete_code_step,
    quantization_loss,
    semantic_projection_step,
    unification_loss,
)
from ..losses.metric import fine_grained_triplet_loss, make_metric_loss
from .base import METHODS, Batch, Method, Preprocessing, check_bounds

__all__ = ["GDH", "HASH_BACKBONES", "sketch_as_image"]

#: hash networks: the small CNN from scratch, or ImageNet EfficientNet-Lite0 with its top blocks trained
HASH_BACKBONES = ("small", "lite0")


def default_preprocessing(size: int = 64) -> Preprocessing:
    """Sketch rasters and photos at ``size`` px (ours: 64; the paper: 256)."""
    return Preprocessing(inputs=("raster",), raster_size=size, line_width=1.5, photo_size=size)


def sketch_as_image(raster: Tensor) -> Tensor:
    """(B, 1, H, W) raster, ink = 1 -> (B, 3, H, W) RGB drawing, black ink on white (the "no GAN" input)."""
    return (1.0 - raster).expand(-1, 3, -1, -1)


def _squared_euclidean() -> BaseDistance:
    """The paper's triplet distance, Eq. (6): ||a - b||^2 on the raw relaxed codes."""
    return LpDistance(p=2, power=2, normalize_embeddings=False)


class GDH(Method):
    """Generative Domain-Migration Hashing (see the module docstring).

    ``encode_sketch(batch)``: ``raster`` (B, 1, S, S) ink = 1 -> (B, nbits) relaxed codes in (-1, 1);
    ``encode_photo(batch)``: ``photo`` (B, 3, S, S) RGB in [0, 1] -> (B, nbits). Bits = code > 0.
    """

    name = "gdh"
    output = "binary"
    code_threshold = 0.0  # tanh codes

    def __init__(
        self,
        preprocessing: Preprocessing | None = None,
        *,
        nbits: int = 64,  # the paper reports 32 / 64 / 128
        image_size: int = 64,  # ours (the paper: 256 px)
        gen_width: int = 8,  # ours: base channels of G_I / G_S (Table 1: 32)
        gs_res: int = 2,  # ours: ResBlocks of G_S (Table 1: 6)
        gi_res: int = 3,  # ours: ResBlocks of G_I (Table 1: 9)
        disc_width: int = 8,  # ours: base channels of D_I / D_S (Table 1: 64)
        hash_width: int = 16,  # ours: the hash CNN (the paper: ResNet-18)
        hash_backbone: str = "small",  # "small": HashCNN from scratch; "lite0": ImageNet EfficientNet-Lite0 with
        # its top blocks trained (TopTunedLite; the paper's H is an ImageNet ResNet-18)
        hash_frozen_blocks: int = 11,  # "lite0": stem + this many of its 16 blocks frozen
        attention: bool = True,  # the paper's attention layer in G_S (Table 5 ablates it)
        attention_threshold: float = 1.0,  # ours: keep positions with softmax weight >= 1 x uniform
        migration: bool = True,  # False: the "no GAN" ablation (H on raw sketch rasters and plain photos)
        semantic: bool = True,  # the D- and B-steps (the paper skips them for fine-grained: Sec. 4.1)
        cycle_weight: float = 10.0,  # nu, Eq. (3): "v = 10 ... according to [32]" (CycleGAN)
        alpha: float = 1e-5,  # quantization weight, Sec. 4.1: alpha = 1e-5
        beta: float = 1e-5,  # unification weight, Sec. 4.1: beta = 1e-5
        triplet_weight: float = 0.0,  # lambda, Eq. (7): 0 for category level, 1 for fine-grained
        distance: str = "squared_euclidean",  # Eq. (6): squared Euclidean (or euclidean | cosine | snr)
        margin: float | None = None,  # Delta, Eq. (6): 0.5 K for squared Euclidean; ours 0.2 for the others
        hash_lr_mult: float = 1.0,  # H's learning rate / the GAN's: the paper uses 2e-4 for all networks
        adam_beta1: float = 0.5,  # ours: CycleGAN's Adam beta1 (the paper: "Adam", no betas)
    ) -> None:
        pre = preprocessing or default_preprocessing(image_size)
        super().__init__(pre)
        if not isinstance(nbits, int) or nbits < 8 or nbits % 8:
            raise ValueError(f"gdh: nbits must be a positive multiple of 8 (packed bytes), got {nbits!r}")
        if pre.raster_size != pre.photo_size or pre.raster_size % 8:
            raise ValueError(
                "gdh migrates sketches into photos pixel for pixel: preprocessing.raster_size and photo_size "
                f"must be equal multiples of 8, got {pre.raster_size} and {pre.photo_size}"
            )
        check_bounds(
            non_negative={
                "cycle_weight": cycle_weight,
                "alpha": alpha,
                "beta": beta,
                "triplet_weight": triplet_weight,
                "hash_lr_mult": hash_lr_mult,
            },
            who="gdh: ",
        )
        self.nbits, self.migration, self.semantic = int(nbits), bool(migration), bool(semantic)
        self.nu, self.alpha, self.beta = float(cycle_weight), float(alpha), float(beta)
        self.lam, self.hash_lr_mult, self.adam_beta1 = float(triplet_weight), float(hash_lr_mult), adam_beta1
        self.attention = bool(attention)
        if hash_backbone not in HASH_BACKBONES:
            raise ValueError(f"gdh: hash_backbone must be one of {', '.join(HASH_BACKBONES)}, got {hash_backbone!r}")
        self.hash_net: nn.Module
        if hash_backbone == "lite0":
            self.hash_net = TopTunedLite(
                self.nbits,
                frozen_blocks=hash_frozen_blocks,
                activation="tanh",
                mean=IMAGENET_MEAN,
                std=IMAGENET_STD,
            )
        else:
            self.hash_net = HashCNN(self.nbits, width=hash_width)
        if self.migration:
            self.g_image = MigrationGenerator(1, 3, gen_width, gi_res, attention=False)
            self.g_sketch = MigrationGenerator(
                3, 1, gen_width, gs_res, attention=attention, threshold=attention_threshold
            )
            self.d_image = PatchDiscriminator(3, disc_width)
            self.d_sketch = PatchDiscriminator(1, disc_width)
        if distance == "squared_euclidean":
            dist: BaseDistance = _squared_euclidean()
            m = 0.5 * self.nbits if margin is None else float(margin)
        else:
            dist = get_distance(distance, normalize=None if distance != "euclidean" else False)
            m = 0.2 if margin is None else float(margin)
        self.triplet = make_metric_loss("triplet", dist, margin=m, regularizer_weight=0.0)
        self.n_classes = 0
        self._seen = 0  # images seen since the last D/B-steps (epoch mode)
        self._fakes: dict[str, Tensor] = {}

    @property
    def code_size(self) -> int:
        return self.nbits

    def external_weights(self) -> dict[str, dict[str, Any]]:
        """A Lite0 hash network's frozen trunk comes from its package, not from the artifact."""
        return self.hash_net.external("hash_net.") if isinstance(self.hash_net, TopTunedLite) else {}

    # ------------------------------------------------------------------ the code bank (Algorithm 1)
    def set_training_data(
        self, photo_labels: Sequence[int], sketch_labels: Sequence[int], n_classes: int, seed: int = 0
    ) -> None:
        """Allocate the code bank for the whole training set: label vectors Y^I, Y^S (class indices), random
        discrete codes B^I, B^S (Algorithm 1, line 1) and the latest relaxed codes (0 until seen). Batches
        then index it with ``photo_index`` / ``sketch_index``. Not saved with the model (training state)."""
        g = torch.Generator().manual_seed(seed)
        yi = torch.as_tensor(np.asarray(photo_labels), dtype=torch.long)
        ys = torch.as_tensor(np.asarray(sketch_labels), dtype=torch.long)
        if len(yi) == 0 or len(ys) == 0 or int(max(yi.max(), ys.max())) >= n_classes:
            raise ValueError(f"need labelled images and sketches with class indices < n_classes={n_classes}")
        dev = next(self.parameters()).device
        K = self.nbits

        def rand_codes(n: int) -> Tensor:
            return (torch.randint(0, 2, (n, K), generator=g) * 2 - 1).float()

        for name, t in (
            ("y_photo", yi),
            ("y_sketch", ys),
            ("b_photo", rand_codes(len(yi))),
            ("b_sketch", rand_codes(len(ys))),
            ("h_photo", torch.zeros(len(yi), K)),
            ("h_sketch", torch.zeros(len(ys), K)),
            ("proj", torch.zeros(n_classes, K)),
        ):
            self.register_buffer(name, t.to(dev), persistent=False)
        self.n_classes = int(n_classes)
        self._seen = len(yi)  # the first batch starts an epoch: D-step, B-steps

    @property
    def has_bank(self) -> bool:
        return self.n_classes > 0 and hasattr(self, "b_photo")

    @torch.no_grad()
    def semantic_steps(self, batch: Batch) -> tuple[Tensor, Tensor]:
        """Algorithm 1, lines 3-5: D-step (Eq. 9), B^I-step (Eq. 12), B^S-step (Eq. 13). Returns the batch's
        discrete codes (B^I rows, B^S rows), each (B, K) in {-1, +1}.

        With the bank: once an epoch of images has been seen, on the whole training set; otherwise (no bank)
        on the batch's own codes, with B initialised as sign(H) and D over its labels.
        """
        if self.has_bank:
            if self._seen >= len(self.y_photo):
                self._seen = 0
                self.proj = semantic_projection_step(
                    [self.b_photo, self.b_sketch], [self.y_photo, self.y_sketch], self.n_classes
                )
                self.b_photo = discrete_code_step(self.y_photo, self.proj, self.h_photo, self.alpha, self.n_classes)
                self.b_sketch = discrete_code_step(self.y_sketch, self.proj, self.h_sketch, self.alpha, self.n_classes)
            self._seen += len(batch["label"])
            return self.b_photo[batch["photo_index"]], self.b_sketch[batch["sketch_index"]]
        h_i, h_s = self.encode_photo(batch), self.encode_sketch(batch)
        y = batch["label"]
        c = int(y.max()) + 1
        sign = [torch.where(h >= 0, 1.0, -1.0) for h in (h_i, h_s)]
        d = semantic_projection_step(sign, [y, y], c)
        return (discrete_code_step(y, d, h_i, self.alpha, c), discrete_code_step(y, d, h_s, self.alpha, c))

    # ------------------------------------------------------------------ networks
    def migrate(self, raster: Tensor) -> Tensor:
        """G_I: sketch rasters (B, 1, S, S) -> migrated images (B, 3, S, S) in [0, 1]."""
        return self.g_image(raster)[0]

    def mask_of(self, photo: Tensor) -> tuple[Tensor, Tensor]:
        """G_S: photos (B, 3, S, S) -> (generated sketches (B, 1, S, S), mask (B, 1, S, S) in {0, 1})."""
        sketch, mask = self.g_sketch(photo)
        return sketch, (mask if mask is not None else torch.ones_like(sketch))

    def encode_sketch(self, batch: Batch) -> Tensor:
        x = batch["raster"]
        return self.hash_net(self.migrate(x) if self.migration else sketch_as_image(x))

    def encode_photo(self, batch: Batch) -> Tensor:
        x = batch["photo"]
        if self.migration and self.attention:
            x = x * self.mask_of(x)[1]
        return self.hash_net(x)

    # ------------------------------------------------------------------ losses
    def forward(
        self, batch: Batch, phase: str = "all", codes: tuple[Tensor, Tensor] | None = None
    ) -> dict[str, Tensor]:
        return self.training_losses(batch, phase=phase, codes=codes)

    def training_losses(
        self, batch: Batch, phase: str = "all", codes: tuple[Tensor, Tensor] | None = None
    ) -> dict[str, Tensor]:
        """``phase="generator"``: Eq. (14)'s terms (G_I, G_S, H); ``"discriminator"``: D_I, D_S on the fakes
        of the last generator phase (detached; recomputed when there are none); ``"all"``: both.
        ``codes``: the batch's B^I, B^S rows (from :meth:`semantic_steps`; None: computed here)."""
        if phase not in ("all", "generator", "discriminator"):
            raise ValueError(f"gdh phase must be 'all', 'generator' or 'discriminator', got {phase!r}")
        out: dict[str, Tensor] = {}
        if phase in ("all", "generator"):
            out.update(self._generator_losses(batch, codes))
        if phase in ("all", "discriminator") and self.migration:
            out.update(self._discriminator_losses(batch))
        return out

    def _generator_losses(self, batch: Batch, codes: tuple[Tensor, Tensor] | None) -> dict[str, Tensor]:
        s, photo = batch["raster"], batch["photo"]
        out: dict[str, Tensor] = {}
        if self.migration:
            fake_i = self.migrate(s)
            fake_s, mask = self.mask_of(photo)
            real_i = photo * mask if self.attention else photo
            rec_s = self.g_sketch(fake_i)[0]
            rec_i = self.migrate(fake_s)
            adv = generator_loss(self.d_image(fake_i).flatten()) + generator_loss(self.d_sketch(fake_s).flatten())
            cyc = (rec_s - s).abs().mean() + (rec_i - real_i.detach()).abs().mean()
            out["adversarial_loss"] = adv
            out["cycle_loss"] = self.nu * cyc
            out["mask_fraction"] = mask.detach().mean()
            self._fakes = {"fake_i": fake_i.detach(), "fake_s": fake_s.detach(), "real_i": real_i.detach()}
            h_s = self.hash_net(fake_i)
        else:
            real_i = photo
            h_s = self.hash_net(sketch_as_image(s))
        h_i = self.hash_net(real_i)
        if self.has_bank and "photo_index" in batch:  # the latest relaxed codes, for the next B-steps
            with torch.no_grad():
                self.h_photo[batch["photo_index"]] = h_i.detach().float()
                self.h_sketch[batch["sketch_index"]] = h_s.detach().float()
        if self.semantic:
            b_i, b_s = codes if codes is not None else self.semantic_steps(batch)
            q = quantization_loss(h_i, target=b_i) + quantization_loss(h_s, target=b_s)
        else:  # no learned codes: pull to the nearest corner (sign of the code)
            q = quantization_loss(h_i, 0.0, -1.0, 1.0) + quantization_loss(h_s, 0.0, -1.0, 1.0)
        out["quantization_loss"] = self.alpha * q
        out["unification_loss"] = self.beta * unification_loss(h_i, h_s)
        if self.lam > 0:
            out["triplet_loss"] = self.lam * self._triplet(h_s, h_i, batch)
        return out

    def _triplet(self, h_s: Tensor, h_i: Tensor, batch: Batch) -> Tensor:
        """Every (own sketch, its photo, another instance's photo) triplet of the batch (PML, indices given)."""
        return fine_grained_triplet_loss(self.triplet, h_s, h_i, batch["instance"], batch.get("own"))

    def _discriminator_losses(self, batch: Batch) -> dict[str, Tensor]:
        f = self._fakes
        if not f:
            with torch.no_grad():
                fake_s, mask = self.mask_of(batch["photo"])
                real_i = batch["photo"] * mask if self.attention else batch["photo"]
                f = {"fake_i": self.migrate(batch["raster"]), "fake_s": fake_s, "real_i": real_i}
        self._fakes = {}
        d_i = discriminator_loss(self.d_image(f["real_i"]).flatten(), self.d_image(f["fake_i"]).flatten())
        d_s = discriminator_loss(self.d_sketch(batch["raster"]).flatten(), self.d_sketch(f["fake_s"]).flatten())
        return {"discriminator_loss": d_i + d_s}

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self, lr: float) -> dict[str, torch.optim.Optimizer]:
        betas = (float(self.adam_beta1), 0.999)
        opts = {"hash": torch.optim.Adam(self.hash_net.parameters(), lr=lr * self.hash_lr_mult, betas=betas)}
        if self.migration:
            gen = [*self.g_image.parameters(), *self.g_sketch.parameters()]
            disc = [*self.d_image.parameters(), *self.d_sketch.parameters()]
            opts["generator"] = torch.optim.Adam(gen, lr=lr, betas=betas)
            opts["discriminator"] = torch.optim.Adam(disc, lr=lr, betas=betas)
        return opts

    def step(
        self, model: Callable[..., dict[str, Tensor]], batch: Batch, optimizers: Mapping[str, torch.optim.Optimizer]
    ) -> dict[str, float]:
        """Algorithm 1 on one batch: D-step and B-steps (closed form), then the network step (G_I, G_S, H on
        Eq. 14), then the discriminators' step."""
        codes = self.semantic_steps(batch) if self.semantic else None
        g_opts = [optimizers[k] for k in ("generator", "hash") if k in optimizers]
        losses = model(batch, phase="generator", codes=codes)
        total = torch.stack([v.float() for k, v in losses.items() if k.endswith("_loss")]).sum()
        for o in g_opts:
            o.zero_grad(set_to_none=True)
        total.backward()
        for o in g_opts:
            o.step()
        stats = {k: float(v.detach()) for k, v in losses.items()}
        stats["loss"] = float(total.detach())
        if self.migration:
            d = model(batch, phase="discriminator")["discriminator_loss"]
            optimizers["discriminator"].zero_grad(set_to_none=True)
            d.backward()
            optimizers["discriminator"].step()
            stats["discriminator_loss"] = float(d.detach())
        return stats


@METHODS.register("gdh")
def _create(**kw: Any) -> GDH:
    return GDH(**kw)
