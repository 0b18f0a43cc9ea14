"""Turn drawings into the tensors a method's :class:`~sketchsearch.methods.base.Preprocessing` asks for.

Training, evaluation, the CLI and the service all build batches here, so a query meets the encoder in
exactly the frame its training data did.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from ..errors import FormatError
from .formats.base import Item
from .render import image_to_raster, rasterize
from .sketch import Sketch

__all__ = [
    "Batch",
    "Preprocessing",
    "RasterDataset",
    "SketchDataset",
    "collate",
    "item_input",
    "make_batch",
    "make_photo_batch",
    "pad_points",
    "photo_to_tensor",
    "query_to_batch",
    "sketch_points",
]


Batch = dict[str, Tensor]
"""A batch: ``raster`` float (B,1,H,W) ink=1; ``points`` float (B,T,4) zero-padded 4-d strokes with
``lengths`` long (B,); ``photo`` float (B,3,H,W); ``label`` long (B,) (-1 = unknown); ``domain`` long (B,)."""


@dataclass(frozen=True)
class Preprocessing:
    """How raw drawings become tensors for a method (saved in the model card)."""

    inputs: tuple[str, ...] = ("raster",)  # any of "raster", "points", "photo"
    raster_size: int = 64  # pixels
    line_width: float = 1.5  # pixels at raster_size
    max_points: int = 256  # points kept for the sequence branch (longer sketches are RDP-simplified, then cut)
    photo_size: int = 224

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["inputs"] = list(self.inputs)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Preprocessing:
        d = dict(d)
        d["inputs"] = tuple(d.get("inputs", ("raster",)))
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


Query = Sketch | np.ndarray | Image.Image
"""What an encoder reads: strokes, a raster (float (H, W) ink = 1, or a uint8 bitmap ink = 255), or a PIL image
(a drawing on paper or a photo; ink polarity of a drawing is decided from its border)."""


def item_input(item: Item) -> Query:
    """The one way an item becomes what an encoder reads: its strokes when it has them, else its image as a
    PIL image (RGB photos as they are; drawings on paper keep their grey levels, and :func:`image_to_raster`
    decides ink polarity from the border: QuickDraw bitmaps are light-on-dark, Omniglot and scans
    dark-on-light, so every drawing meets the encoder as ink = 1 on 0, like a stroke query)."""
    if item.sketch is not None:
        return item.sketch
    if item.image is None:
        raise FormatError(item.source, None, "item has neither strokes nor an image")
    return Image.fromarray(np.ascontiguousarray(item.image))


def sketch_points(sketch: Sketch, max_points: int) -> np.ndarray:
    """4-d stroke points (dx, dy, pen_down, pen_up) of the sketch normalised to the unit box, at most
    ``max_points`` rows (RDP-simplified with a growing tolerance first, then cut)."""
    s = base = sketch.normalise(1.0)
    eps = 0.005
    while s.n_points > max_points and eps < 0.2:
        s = base.simplify(eps)
        eps *= 1.6
    return s.to_4d()[:max_points]


def _raster_of(x: Sketch | np.ndarray | Image.Image, pre: Preprocessing) -> np.ndarray:
    if isinstance(x, Sketch):
        return rasterize(x, size=pre.raster_size, line_width=pre.line_width)
    if isinstance(x, Image.Image):
        return image_to_raster(x, size=pre.raster_size)
    arr = np.asarray(x)
    if arr.dtype == np.uint8:  # a bitmap (e.g. QuickDraw 28x28: ink = 255)
        arr = arr.astype(np.float32) / 255.0
    if arr.shape != (pre.raster_size, pre.raster_size):
        img = Image.fromarray((np.clip(arr, 0, 1) * 255).astype(np.uint8))
        arr = np.asarray(img.resize((pre.raster_size, pre.raster_size), Image.BILINEAR), dtype=np.float32) / 255.0
    return arr.astype(np.float32)


def make_example(x: Sketch | np.ndarray | Image.Image, pre: Preprocessing, label: int = -1) -> dict[str, Any]:
    """One example dict (numpy) holding what ``pre.inputs`` asks for.

    ``raster`` float32 (raster_size, raster_size) ink = 1; ``points`` float32 (<= max_points, 4). A drawing
    given as an image (PIL, or an array as :data:`Query` describes) has no pen trajectory: when ``points``
    are asked for, its strokes are traced from its pixels (:func:`~sketchsearch.data.trace.image_to_sketch`:
    skeleton -> polylines in the usual drawing order), while its ``raster`` is still made from the image
    itself, as for every raster-only method."""
    ex: dict[str, Any] = {"label": label}
    if "raster" in pre.inputs:
        ex["raster"] = _raster_of(x, pre)
    if "points" in pre.inputs:
        if not isinstance(x, Sketch):
            from .trace import image_to_sketch  # scikit-image loads only for stroke-order models on images

            x = image_to_sketch(x)
        ex["points"] = sketch_points(x, pre.max_points)
    return ex


def pad_points(seqs: Sequence[np.ndarray]) -> tuple[Tensor, Tensor]:
    """(T_i, 4) stroke points -> ``points`` (B, max T_i, 4) float32 zero-padded (at least one step) and their
    ``lengths`` (B,) long."""
    lengths = [len(p) for p in seqs]
    pts = np.zeros((len(seqs), max(max(lengths, default=0), 1), 4), dtype=np.float32)
    for i, p in enumerate(seqs):
        pts[i, : len(p)] = p
    return torch.from_numpy(pts), torch.tensor(lengths, dtype=torch.long)


def collate(examples: Sequence[dict[str, Any]]) -> Batch:
    """Stack examples; ``points`` are zero-padded to the longest with ``lengths``."""
    out: Batch = {"label": torch.tensor([int(e["label"]) for e in examples], dtype=torch.long)}
    if "raster" in examples[0]:
        out["raster"] = torch.from_numpy(np.stack([e["raster"] for e in examples]))[:, None]
    if "points" in examples[0]:
        out["points"], out["lengths"] = pad_points([e["points"] for e in examples])
    if "domain" in examples[0]:
        out["domain"] = torch.tensor([int(e["domain"]) for e in examples], dtype=torch.long)
    return out


def make_batch(
    items: Sequence[Sketch | np.ndarray | Image.Image],
    pre: Preprocessing,
    labels: Sequence[int] | None = None,
) -> Batch:
    labels = labels if labels is not None else [-1] * len(items)
    return collate([make_example(x, pre, int(y)) for x, y in zip(items, labels)])


def query_to_batch(query: Sketch | np.ndarray | Image.Image, pre: Preprocessing) -> Batch:
    """A single query (validated) as a batch of one."""
    if isinstance(query, Sketch):
        query.validate()
    return make_batch([query], pre)


def photo_to_tensor(photo: Image.Image | np.ndarray, size: int) -> np.ndarray:
    """A photo (PIL image or uint8 (H, W, 3) / (H, W) array) -> float32 (3, size, size) RGB in [0, 1]
    (the whole image resized, bilinear; no crop: Sketchy photos are square and centred on the object)."""
    img = photo if isinstance(photo, Image.Image) else Image.fromarray(np.asarray(photo))
    img = img.convert("RGB")
    if img.size != (size, size):
        img = img.resize((size, size), Image.BILINEAR)
    return np.ascontiguousarray(np.asarray(img, dtype=np.float32).transpose(2, 0, 1) / 255.0)


def make_photo_batch(
    photos: Sequence[Image.Image | np.ndarray], size: int, labels: Sequence[int] | None = None
) -> dict[str, torch.Tensor]:
    """``{"photo": float (B, 3, size, size) in [0, 1], "label": long (B,)}`` (labels -1 when not given)."""
    labels = labels if labels is not None else [-1] * len(photos)
    if len(labels) != len(photos):
        raise ValueError(f"{len(labels)} labels for {len(photos)} photos")
    arr = np.stack([photo_to_tensor(p, size) for p in photos]) if len(photos) else np.zeros((0, 3, size, size))
    return {
        "photo": torch.from_numpy(arr.astype(np.float32)),
        "label": torch.tensor([int(y) for y in labels], dtype=torch.long),
    }


class SketchDataset(Dataset[dict[str, Any]]):
    """Drawings + integer labels, rendered lazily (and cached when ``cache``) per the method's preprocessing.

    ``augment``: optional callable on the rendered raster tensor (e.g. kornia augmentation) applied per batch
    by the caller; kept out of here so rendering stays cacheable.
    """

    def __init__(
        self,
        items: Sequence[Sketch | np.ndarray | Image.Image],
        labels: Sequence[int] | None,
        pre: Preprocessing,
        cache: bool = True,
    ) -> None:
        self.items = list(items)
        self.labels = list(labels) if labels is not None else [-1] * len(self.items)
        if len(self.labels) != len(self.items):
            raise ValueError(f"{len(self.labels)} labels for {len(self.items)} items")
        self.pre = pre
        self._cache: dict[int, dict[str, Any]] | None = {} if cache else None

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, Any]:
        if self._cache is not None and i in self._cache:
            return self._cache[i]
        ex = make_example(self.items[i], self.pre, int(self.labels[i]))
        if self._cache is not None:
            self._cache[i] = ex
        return ex


class RasterDataset(Dataset[dict[str, Any]]):
    """Pre-rendered rasters float32 (N, H, W) + labels: the fastest feed for raster-only methods."""

    def __init__(self, rasters: np.ndarray, labels: Sequence[int] | None = None) -> None:
        self.rasters = np.asarray(rasters, dtype=np.float32)
        self.labels = np.asarray(labels if labels is not None else [-1] * len(self.rasters), dtype=np.int64)

    def __len__(self) -> int:
        return len(self.rasters)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"raster": self.rasters[i], "label": int(self.labels[i])}
