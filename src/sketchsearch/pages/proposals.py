"""Candidate boxes on a document page: where a mark may be, before any encoder looks.

A page is a photograph or scan: paper of uneven brightness, noise, handwriting, and somewhere the marks. Three
steps, all on the CPU with numpy / scipy / scikit-image:

1. **Ink** (:func:`page_ink`). The paper's brightness is estimated by a grey-level *closing* (a maximum then a
   minimum filter, which removes dark lines thinner than its window) of a downscaled copy, smoothed and
   scaled back up; each pixel's darkness relative to that paper gives the ink, ramped between
   ``ink_low`` (paper noise) and ``ink_high`` (clear ink). Uneven lighting and tinted paper cancel out.
2. **Proposals** (:func:`propose_boxes`), the union of two kinds, as the sketch-GAN paper's authors suggest
   for merchant marks on archive pages:

   * *windows*: square windows at sizes from ``min_size`` to ``max_size`` pixels, consecutive sizes a factor
     ``scale_ratio`` apart, moved by ``step`` times their side. The sketch-GAN paper sets the step from the
     encoder's measured shift invariance (:func:`steps_from_invariance` turns the measured curves into
     ``step`` and ``scale_ratio``). Each window is then *tightened* to the bounding box of the ink inside it.
   * *ink components*: the mask of clear ink dilated by each of ``group_radii`` (so that the strokes of one
     mark, which need not touch, join) and labelled; each group's box is the bounding box of its own
     undilated ink.

   Boxes holding fewer than ``min_ink`` ink pixels, more elongated than ``max_aspect`` or outside the size
   range are dropped, and near-duplicates (IoU above ``dedupe_iou``, e.g. many windows tightened to one mark)
   are kept once (one box per cell of a grid of box corners, the first in proposal order; see ``_dedupe``).
3. **Crops** (:func:`crop`): the ink inside a box, drawn dark on white as a small image. Every encoder reads
   it the way it reads an uploaded drawing (its ink fitted into the frame), so a mark on a page meets the
   encoder as a drawn query does.

Boxes are ``int32 (n, 4)`` rows ``x0, y0, x1, y1`` in page pixels, ``x1`` / ``y1`` exclusive.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
from PIL import Image
from scipy import ndimage

__all__ = [
    "ProposalConfig",
    "box_iou",
    "crop",
    "nms",
    "page_ink",
    "propose_boxes",
    "steps_from_invariance",
    "window_sizes",
]


@dataclass(frozen=True)
class ProposalConfig:
    """How boxes are proposed on a page (saved in a page index's manifest under ``"pages"``)."""

    min_size: int = 40  # px: the smallest window side and the smallest box side kept
    max_size_frac: float = 0.45  # the largest window side, as a fraction of the page's shorter side
    step: float = 0.25  # window step, a fraction of its side (from the shift invariance curve when measured)
    scale_ratio: float = 1.5  # ratio of consecutive window sides (from the scale invariance curve when measured)
    windows: bool = True  # propose sliding windows (tightened to their ink)
    components: bool = True  # propose connected groups of ink
    group_radii: tuple[int, ...] = (3, 9)  # px: dilations that join the strokes of one mark into a group
    min_ink: int = 40  # ink pixels a box must hold
    max_aspect: float = 3.0  # longer / shorter side at most
    dedupe_iou: float = 0.85  # boxes overlapping more than this with an earlier one are dropped
    max_boxes: int = 4000  # per page, at most (components first, then windows by size)
    ink_low: float = 0.12  # darkness relative to the paper below which a pixel is paper (noise)
    ink_high: float = 0.35  # darkness at which a pixel is full ink
    max_side: int = 2048  # pages are reduced to at most this many pixels a side before anything else
    # how ``step`` / ``scale_ratio`` were chosen: "given", or the invariance measurement that set them
    source: dict[str, Any] = field(default_factory=lambda: {"step": "given", "scale_ratio": "given"})

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["group_radii"] = list(self.group_radii)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ProposalConfig:
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        if "group_radii" in known:
            known["group_radii"] = tuple(int(r) for r in known["group_radii"])
        return cls(**known)


# ---------------------------------------------------------------------------------------------- ink
def page_ink(page: np.ndarray, config: ProposalConfig | None = None) -> np.ndarray:
    """A page (uint8 (H, W) grey or (H, W, 3) RGB, dark ink on lighter paper) -> float32 (H, W) ink in [0, 1]
    relative to the local paper brightness (see the module docstring)."""
    cfg = config or ProposalConfig()
    arr = np.asarray(page)
    if arr.ndim == 3:
        grey = arr[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    elif arr.ndim == 2:
        grey = arr.astype(np.float32)
    else:
        raise ValueError(f"page: expected an (H, W) or (H, W, 3) image, got shape {arr.shape}")
    h, w = grey.shape
    if h < 8 or w < 8:
        raise ValueError(f"page: {w} x {h} pixels is too small to hold a mark")
    # paper brightness: closing at 1/f resolution with a window wider than any stroke (~24 px of the page)
    f = max(1, min(h, w) // 256)
    small = grey[: h - h % f or h, : w - w % f or w]
    small = small.reshape(small.shape[0] // f, f, small.shape[1] // f, f).mean(axis=(1, 3)) if f > 1 else small
    win = max(3, int(round(24 / f)) | 1)
    paper = ndimage.grey_closing(small, size=(win, win))
    paper = ndimage.gaussian_filter(paper, sigma=win / 2)
    if f > 1:
        paper = np.asarray(Image.fromarray(paper).resize((w, h), Image.BILINEAR), dtype=np.float32)
    dark = 1.0 - grey / np.maximum(paper, 1.0)
    ink = (dark - cfg.ink_low) / max(cfg.ink_high - cfg.ink_low, 1e-6)
    return np.clip(ink, 0.0, 1.0).astype(np.float32)


# ---------------------------------------------------------------------------------------------- boxes
def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box of ``a`` (n, 4) with every box of ``b`` (m, 4) -> float (n, m) (x1 / y1 exclusive)."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    iw = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    ih = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = iw * ih
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def nms(boxes: np.ndarray, scores: Sequence[float] | np.ndarray | None = None, iou: float = 0.3) -> np.ndarray:
    """Greedy non-maximum suppression: the indices of the boxes kept, best first. A box is dropped when its
    IoU with a kept, better box is above ``iou``. ``scores``: higher is better (pass ``-distance``); None keeps
    the given order (the first of near-duplicates wins). Ties keep the earlier box (a stable sort).

    Written here (a dozen lines) rather than taken from torchvision, which does not install beside this torch.
    """
    boxes = np.asarray(boxes).reshape(-1, 4)
    order = np.arange(len(boxes)) if scores is None else np.argsort(-np.asarray(scores, np.float64), kind="stable")
    keep: list[int] = []
    suppressed = np.zeros(len(boxes), dtype=bool)
    for i in order:
        if suppressed[i]:
            continue
        keep.append(int(i))
        suppressed |= box_iou(boxes[i : i + 1], boxes)[0] > iou
    return np.asarray(keep, dtype=np.int64)


def window_sizes(width: int, height: int, config: ProposalConfig) -> list[int]:
    """The window sides used on a ``width`` x ``height`` page: ``min_size`` up to ``max_size_frac`` of the
    shorter side, a factor ``scale_ratio`` apart."""
    top = max(config.min_size, int(config.max_size_frac * min(width, height)))
    ratio = max(1.05, config.scale_ratio)
    n = int(math.floor(math.log(top / config.min_size) / math.log(ratio) + 1e-9)) + 1
    return sorted({int(round(config.min_size * ratio**i)) for i in range(n)})


def _first_last(counts: np.ndarray, starts: np.ndarray, side: int) -> tuple[np.ndarray, np.ndarray]:
    """For ``counts`` (L, n): per column j and each start ``s`` of ``starts``, the first and last index in
    [s, s + side) where ``counts[:, j] > 0`` -> two (len(starts), n) arrays (first = -1 where none)."""
    n_len = counts.shape[0]
    idx = np.arange(n_len)[:, None]
    has = counts > 0
    nxt = np.where(has, idx, n_len)
    nxt = np.minimum.accumulate(nxt[::-1], axis=0)[::-1]  # first ink index at or after each index
    prv = np.where(has, idx, -1)
    prv = np.maximum.accumulate(prv, axis=0)  # last ink index at or before each index
    ends = np.minimum(starts + side, n_len) - 1
    first = nxt[starts]
    last = prv[ends]
    empty = first > ends[:, None]
    first[empty] = -1
    return first, last


def _window_boxes(mask: np.ndarray, config: ProposalConfig) -> np.ndarray:
    """Square windows at every size and step, each tightened to the bounding box of the ink inside it (all
    windows of a size at once: per-row and per-column ink counts of every window position from prefix sums,
    then the first / last inked row and column by running minima / maxima)."""
    h, w = mask.shape
    m = mask.astype(np.int32)
    rows = np.zeros((h, w + 1), np.int32)  # rows[y, x]: ink in row y left of x
    np.cumsum(m, axis=1, out=rows[:, 1:])
    cols = np.zeros((w, h + 1), np.int32)  # cols[x, y]: ink in column x above y
    np.cumsum(m.T, axis=1, out=cols[:, 1:])
    found = []
    for side in sorted(window_sizes(w, h, config), reverse=True):  # larger marks first
        side = min(side, w, h)
        step = max(1, int(round(config.step * side)))
        xs = np.unique(np.r_[np.arange(0, w - side + 1, step), w - side])
        ys = np.unique(np.r_[np.arange(0, h - side + 1, step), h - side])
        row_ink = rows[:, xs + side] - rows[:, xs]  # (h, nx): ink of row y within window column range
        col_ink = cols[:, ys + side] - cols[:, ys]  # (w, ny)
        y_first, y_last = _first_last(row_ink, ys, side)  # (ny, nx)
        x_first, x_last = _first_last(col_ink, xs, side)  # (nx, ny)
        ok = y_first >= 0
        if not ok.any():
            continue
        tight = np.stack([x_first.T, y_first, x_last.T + 1, y_last + 1], axis=-1)[ok]
        found.append(np.unique(tight, axis=0))
    return np.concatenate(found).astype(np.int32) if found else np.zeros((0, 4), np.int32)


def _component_boxes(mask: np.ndarray, config: ProposalConfig) -> np.ndarray:
    from skimage.morphology import disk  # here, not at import: the service imports this module at start-up

    out = []
    for radius in config.group_radii:
        grown = ndimage.binary_dilation(mask, structure=disk(radius).astype(bool)) if radius > 0 else mask
        labels, _ = ndimage.label(grown)
        own = np.where(mask, labels, 0)  # each group's own (undilated) ink
        for sl in ndimage.find_objects(own):
            if sl is not None:
                out.append((sl[1].start, sl[0].start, sl[1].stop, sl[0].stop))
    return np.asarray(out, dtype=np.int32).reshape(-1, 4)


def _keep(boxes: np.ndarray, mask_sum: np.ndarray, width: int, height: int, config: ProposalConfig) -> np.ndarray:
    if not len(boxes):
        return boxes
    bw = boxes[:, 2] - boxes[:, 0]
    bh = boxes[:, 3] - boxes[:, 1]
    longer, shorter = np.maximum(bw, bh), np.maximum(np.minimum(bw, bh), 1)
    x0, y0, x1, y1 = boxes.T
    ink = mask_sum[y1, x1] - mask_sum[y0, x1] - mask_sum[y1, x0] + mask_sum[y0, x0]
    top = max(config.min_size, config.max_size_frac * min(width, height))
    ok = (longer >= config.min_size * 0.5) & (longer <= top * 1.05) & (longer / shorter <= config.max_aspect)
    return boxes[ok & (ink >= config.min_ink)]


def _dedupe(boxes: np.ndarray, iou: float) -> np.ndarray:
    """Indices of the boxes kept when near-duplicates are dropped, the first of each kept (proposal order).

    Greedy NMS over the tens of thousands of boxes a page of handwriting gives would cost O(n * kept) IoU rows
    (seconds a page); instead each box is reduced to a cell of a grid of its four corners, a cell being about
    ``(1 - iou) / 2`` of the box's longer side (cells of similar sizes share a grid, 4 per octave), and one box
    is kept per cell: boxes in one cell overlap at least about ``iou``. Approximate by design; the search's
    own per-page suppression (:func:`nms`, on a few hundred hits) is exact."""
    longer = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]).astype(np.float64)
    cell = np.maximum(1.0, longer * (1.0 - iou) / 2.0)
    scale = np.round(np.log2(cell) * 4)  # cells of similar size share a grid
    grid = np.floor(boxes / (2.0 ** (scale / 4))[:, None]).astype(np.int64)
    keys = np.concatenate([scale[:, None].astype(np.int64), grid], axis=1)
    _, first = np.unique(keys, axis=0, return_index=True)
    return np.sort(first)


def propose_boxes(ink: np.ndarray, config: ProposalConfig | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Candidate boxes on a page's ink map (:func:`page_ink`) -> (boxes int32 (n, 4), kinds: array of
    ``"ink"`` / ``"window"``), near-duplicates removed, at most ``max_boxes`` (see the module docstring)."""
    cfg = config or ProposalConfig()
    mask = np.asarray(ink) >= 0.5
    h, w = mask.shape
    mask_sum = np.zeros((h + 1, w + 1), np.int64)
    mask_sum[1:, 1:] = mask.cumsum(0).cumsum(1)
    parts, kinds = [], []
    if cfg.components:
        c = _keep(_component_boxes(mask, cfg), mask_sum, w, h, cfg)
        parts.append(c)
        kinds += ["ink"] * len(c)
    if cfg.windows:
        wb = _keep(_window_boxes(mask, cfg), mask_sum, w, h, cfg)
        parts.append(wb)
        kinds += ["window"] * len(wb)
    boxes = np.concatenate(parts).astype(np.int32) if parts else np.zeros((0, 4), np.int32)
    kind = np.asarray(kinds, dtype=object)
    if len(boxes):
        keep = _dedupe(boxes, cfg.dedupe_iou)[: cfg.max_boxes]
        boxes, kind = boxes[keep], kind[keep]
    return boxes, kind


def crop(ink: np.ndarray, box: Sequence[int], pad: float = 0.0) -> Image.Image:
    """The ink inside ``box`` as a greyscale image, dark on white (what the encoders read as an uploaded
    drawing). ``pad``: a margin, as a fraction of the box's longer side, of paper around it."""
    x0, y0, x1, y1 = (int(v) for v in box)
    part = np.asarray(ink)[y0:y1, x0:x1]
    img = (255.0 - 255.0 * part).astype(np.uint8)
    if pad > 0:
        m = int(round(pad * max(x1 - x0, y1 - y0)))
        img = np.pad(img, m, constant_values=255)
    return Image.fromarray(img, mode="L")


# ---------------------------------------------------------------------------------------------- step
def steps_from_invariance(
    shift: dict[str, Any],
    scale: dict[str, Any],
    raster_size: int,
    threshold: float = 0.9,
    config: ProposalConfig | None = None,
) -> ProposalConfig:
    """``config`` with ``step`` and ``scale_ratio`` set from an encoder's measured invariance curves
    (:func:`sketchsearch.eval.invariance.shift_curve` and ``scale_curve``: ``{"x": [...], "mean": [...]}``),
    as the sketch-GAN paper proposes for its sliding box:

    * ``step``: the largest shift ``s`` (raster pixels) such that the mean similarity to the unshifted drawing
      stays at least ``threshold`` for every shift up to ``s`` either way, as a fraction of the raster's side
      (``s / raster_size``), clamped to [0.05, 0.5]: a window moved by that fraction of its side changes the
      encoding no more than the curve allows.
    * ``scale_ratio``: ``f * f`` for the largest factor ``f`` such that the similarity at every factor in
      [1 / f, f] is at least ``threshold`` (a mark is then within a factor ``f`` of some window's size),
      clamped to [1.2, 2.0].
    """
    cfg = config or ProposalConfig()
    sx = np.asarray(shift["x"], dtype=np.float64)
    sm = np.asarray(shift["mean"], dtype=np.float64)
    s_ok = 0.0
    for d in sorted({abs(v) for v in sx.tolist()} - {0.0}):
        if sm[np.abs(sx) <= d].min() < threshold:
            break
        s_ok = d
    step = float(np.clip(s_ok / raster_size, 0.05, 0.5))
    fx = np.asarray(scale["x"], dtype=np.float64)
    fm = np.asarray(scale["mean"], dtype=np.float64)
    f_ok = 1.0
    for f in sorted(v for v in fx.tolist() if v > 1.0):
        inside = (fx >= 1.0 / f - 1e-9) & (fx <= f + 1e-9)
        if fm[inside].min() < threshold or float(np.interp(1.0 / f, fx, fm)) < threshold:
            break
        f_ok = f
    ratio = float(np.clip(f_ok * f_ok, 1.2, 2.0))
    return replace(
        cfg,
        step=round(step, 4),
        scale_ratio=round(ratio, 4),
        source={
            "step": f"shift invariance: similarity >= {threshold} up to {s_ok:g} of {raster_size} px",
            "scale_ratio": f"scale invariance: similarity >= {threshold} within a factor {f_ok:g}",
            "threshold": threshold,
        },
    )
