"""Doodle to Search's recipe: zero-shot sketch -> photo on a Sketchy-style collection.

Split ``photo_group``: ``n_unseen`` classes never trained on (their sketches query their photos); per seen
class whole photo groups held out. With the frozen ImageNet backbone (the default) backbone features are
computed once and cached (``feature_cache``, keyed by the backbone file and input settings) and only the heads
train, on triplets (anchor sketch, photo of its class, photo of another class) drawn by the one class-balanced
sampler; with ``finetune_backbone`` the triplets are images. Evaluation goes through the one ``evaluate``
(images encoded by the Retriever), like any other model.

``sketchsearch train doodle2search --data ../shared/data/sketchy --set n_unseen=25``
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from .._io import atomic_write_bytes
from ..data.batching import (
    Batch,
    Preprocessing,
    item_input,
    make_batch,
    make_example,
    make_photo_batch,
    photo_to_tensor,
)
from ..data.collection import Collection
from ..data.sampling import ClassBalancedSampler
from ..data.splits import Split
from ..encoders.photo_cnn import EfficientNetLite0, describe_weights
from ..methods.doodle2search import Doodle2Search, class_name_embeddings
from ..progress import phase
from ..train import TrainConfig, train
from . import RECIPES, Recipe

__all__ = [
    "TripletDataset",
    "backbone_features",
    "cached_backbone_features",
    "collate_triplets",
    "feature_key",
    "fit",
]


class TripletDataset(Dataset[dict[str, Any]]):
    """Triplets keyed by ``(sketch index, draw)`` (from :class:`ClassBalancedSampler` over the sketch labels):
    the anchor sketch, a photo of its class and a photo of another class (uniform over the others), both
    drawn with a generator seeded by ``(seed, draw)``.

    ``sketches[j]`` / ``photos[j]``: anything indexable giving one numpy input (a cached (1280,) feature
    vector, or an image: raster (1, H, W) / photo (3, H, W)); ``features`` says which, and so which batch keys
    are produced. ``semantic`` float (C, S): class-name embeddings by class index (None: no semantic targets).
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
            raise ValueError(f"{len(sl)} labels for {len(sketches)} sketches / {len(pl)} for {len(photos)} photos")
        classes = np.unique(sl)
        if len(classes) < 2:
            raise ValueError("triplets need at least two classes")
        self.photo_members = {int(c): np.flatnonzero(pl == c) for c in np.unique(pl)}
        missing = [int(c) for c in classes if int(c) not in self.photo_members]
        if missing:
            raise ValueError(f"classes {missing[:5]} have sketches but no photo: no positive for them")
        if semantic is not None and len(semantic) <= int(classes.max()):
            raise ValueError(f"semantic has {len(semantic)} rows, but class indices go up to {int(classes.max())}")
        self.sketches, self.photos, self.semantic = sketches, photos, semantic
        self.sl = sl
        self.features, self.seed = bool(features), int(seed)
        self._photo_classes = sorted(self.photo_members)

    def __len__(self) -> int:
        return len(self.sl)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, Any]:
        a, draw = key
        rng = np.random.default_rng([self.seed, draw])
        c = int(self.sl[a])
        p = int(rng.choice(self.photo_members[c]))
        others = [k for k in self._photo_classes if k != c]
        cn = int(others[int(rng.integers(len(others)))])
        n = int(rng.choice(self.photo_members[cn]))
        keys = (
            ("sketch_features", "photo_features", "negative_features")
            if self.features
            else ("raster", "photo", "negative")
        )
        ex: dict[str, Any] = {
            keys[0]: self.sketches[a],
            keys[1]: self.photos[p],
            keys[2]: self.photos[n],
            "label": c,
            "negative_label": cn,
        }
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


class _Lazy:
    """Inputs computed per index: sketch rasters (1, H, W) or photos (3, S, S) (fine-tuning on images)."""

    def __init__(self, inputs: Sequence[Any], pre: Preprocessing, photo: bool) -> None:
        self.inputs, self.pre, self.photo = list(inputs), replace(pre, inputs=("raster",)), photo

    def __len__(self) -> int:
        return len(self.inputs)

    def __getitem__(self, j: int) -> np.ndarray:
        if self.photo:
            return photo_to_tensor(self.inputs[j], self.pre.photo_size)
        return make_example(self.inputs[j], self.pre)["raster"][None]


@torch.no_grad()
def backbone_features(method: Doodle2Search, inputs: Sequence[Any], modality: str, batch_size: int = 8) -> np.ndarray:
    """float32 (N, 1280) backbone features of drawings (``modality="sketch"``, batched as the Retriever
    batches queries) or photos. Small batches: faster on a CPU."""
    was = method.training
    method.eval()
    device = next(iter(method.parameters()), torch.zeros(0)).device
    out = []
    for i in range(0, len(inputs), batch_size):
        chunk = list(inputs[i : i + batch_size])
        batch = (
            make_photo_batch(chunk, method.preprocessing.photo_size)
            if modality == "photo"
            else make_batch(chunk, method.preprocessing)
        )
        out.append(method.backbone_features({k: v.to(device) for k, v in batch.items()}, modality).float().cpu())
    method.train(was)
    return torch.cat(out).numpy() if out else np.zeros((0, EfficientNetLite0.out_dim), dtype=np.float32)


def feature_key(method: Doodle2Search) -> str:
    """What backbone features depend on, as the cache's key: the weights (the package file's sha256, or for a
    backbone not read from a file, e.g. ``pretrained=False``, the sha256 of its tensors), the input
    normalisation, the input size and the sketch rasterisation."""
    weights = describe_weights(method.backbone)
    if weights["sha256"] is None:
        h = hashlib.sha256()
        for name, t in sorted(method.backbone.state_dict().items()):
            h.update(name.encode("utf-8"))
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
        weights = {"tensors_sha256": h.hexdigest()}
    key = {
        "backbone": weights,
        "norm": method.hparams.get("backbone_norm"),
        "input_size": method.input_size,
        "raster": method.preprocessing.to_dict(),
    }
    return json.dumps(key, sort_keys=True)


def cached_backbone_features(
    method: Doodle2Search, coll: Collection, ids: Sequence[str], cache: str | Path | None
) -> dict[str, np.ndarray]:
    """float32 (1280,) backbone features by item id (modality from the item), reusing ``cache`` (a safetensors
    file of features by item id, valid for one :func:`feature_key`; rewritten with the missing ones added)."""
    from safetensors import safe_open
    from safetensors.numpy import load_file, save

    key = feature_key(method)
    have: dict[str, np.ndarray] = {}
    path = Path(cache) if cache else None
    if path and path.is_file():
        with safe_open(str(path), framework="numpy") as f:
            if (f.metadata() or {}).get("key") == key:
                have = load_file(str(path))
    todo = [i for i in dict.fromkeys(ids) if i not in have]
    for modality in ("sketch", "photo"):
        sel = [i for i in todo if coll[i].modality == modality]
        if sel:
            have.update(zip(sel, backbone_features(method, [item_input(coll[i]) for i in sel], modality)))
    if path and todo:
        atomic_write_bytes(path, save({k: np.ascontiguousarray(v) for k, v in have.items()}, metadata={"key": key}))
    return {i: have[i] for i in ids}


def fit(
    method: Doodle2Search,
    coll: Collection,
    split: Split | None,
    cfg: TrainConfig,
    *,
    feature_cache: str | None = None,  # default: <workdir>/features.safetensors
) -> dict[str, Any]:
    """Train on the split's ``train`` part (its sketches as anchors, its photos as positives / negatives,
    classes indexed by ``split.seen_classes``): heads on cached backbone features, or (``finetune_backbone``)
    the whole network on images. Returns the training record (timings, last logged losses)."""
    assert split is not None
    index = {c: i for i, c in enumerate(split.seen_classes)}
    sk = [i for i in split.train if coll[i].modality == "sketch"]
    ph = [i for i in split.train if coll[i].modality == "photo"]
    sl, pl = [index[str(coll[i].label)] for i in sk], [index[str(coll[i].label)] for i in ph]
    semantic = class_name_embeddings(split.seen_classes) if method.weights["semantic"] > 0 else None
    info: dict[str, Any] = {}
    if method.finetune_backbone and method.needs_feature_stats:
        raise ValueError(
            "feature_norm='power_centred' is fitted on a frozen backbone's features: "
            "set finetune_backbone=False or feature_norm='none'"
        )
    if method.finetune_backbone:
        pre = method.preprocessing
        ds = TripletDataset(
            _Lazy([item_input(coll[i]) for i in sk], pre, photo=False),
            sl,
            _Lazy([item_input(coll[i]) for i in ph], pre, photo=True),
            pl,
            semantic,
            features=False,
            seed=cfg.seed,
        )
    else:
        cache = feature_cache or (str(Path(cfg.out) / "features.safetensors") if cfg.out else None)
        t0 = time.perf_counter()
        with phase(f"backbone features of {len(sk) + len(ph)} items"):
            feats = cached_backbone_features(method, coll, sk + ph, cache)
        info["feature_seconds"] = round(time.perf_counter() - t0, 1)
        sk_feats, ph_feats = np.stack([feats[i] for i in sk]), np.stack([feats[i] for i in ph])
        method.fit_feature_stats(torch.from_numpy(sk_feats), torch.from_numpy(ph_feats))  # no-op unless needed
        ds = TripletDataset(
            sk_feats,
            sl,
            ph_feats,
            pl,
            semantic,
            features=True,
            seed=cfg.seed,
        )
    method.expand_heads()  # rank > 0: train full-rank updates, factored below (no-op otherwise)
    res = train(
        method, ds, cfg, collate_fn=collate_triplets, sampler=ClassBalancedSampler(sl, per_class=1, seed=cfg.seed)
    )
    method.factor_heads()
    info.update(
        {"train_seconds": round(res.seconds, 1), "device": res.device, "last": res.history[-1] if res.history else {}}
    )
    return info


RECIPES.register("doodle2search")(
    lambda: Recipe(
        # CPU-sized: heads on cached features (the authors train end to end with SGD lr 1e-4, batch 20)
        method="doodle2search",
        fit=fit,
        iterations=1500,
        batch_size=64,
        lr=1e-3,
        split="photo_group",
        split_defaults={"n_unseen": 25, "heldout": 0.2},  # 25% unseen, as Sketchy's benchmark
    )
)
