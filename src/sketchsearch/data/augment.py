"""Augmented views of a drawing: what people vary when they draw the same thing twice.

The universal encoder (``methods/universal.py``) learns from two views of one drawing. A view is made in two
stages, both seeded by a ``numpy.random.Generator`` (so a view is a function of its seed):

**Stroke level** (:func:`augment_sketch`, on a :class:`~sketchsearch.data.sketch.Sketch`, before rendering;
what makes a view *drawn* differently rather than photographed differently), in this order:

1. *partial drawing*: with probability ``p_partial`` only the first ``k`` strokes (stroke order kept;
   ``k >= ceil(partial_min * n)``, at least 1), as a drawing caught before it was finished;
2. *dropped strokes*: each stroke left out with probability ``p_drop`` (never all of them);
3. *jitter and affine*: the drawing is drawn again "by hand" by the synthetic data's
   :func:`~sketchsearch.data.synthetic.redraw` (reused, not copied): a smooth wobble along each stroke
   (``wobble``), each stroke shifted as a whole (``misplace``), overshoots (``overshoot_p``), a new point
   density, and an affine change: rotation within +-``rotate_deg`` (default 10 degrees: the sketch-GAN
   invariance study's range, ``eval/invariance.py``), stretch / aspect (``stretch``) and shear (``shear``);
4. *shortened strokes*: each stroke cut, with probability ``p_shorten``, to a ``[shorten_min, 1)`` part of
   its points (from its start or its end; the points are evenly spaced after 3, so that is its length).

The result is always valid: at least one stroke, every stroke at least one point, finite coordinates
(times, when the input has them, follow the points; :func:`redraw` makes new ones). Stroke order is kept.

**Raster level** (:func:`render_view`): the stroke view is rendered with its line width scaled by a factor in
``width`` (the renderer's ``line_width``); a drawing given as an image (no strokes: QuickDraw bitmaps, scans)
is rasterised as every encoder reads it and rotated there instead. Then, with probability ``affine_p``, the
raster is scaled about its centre by a factor in ``scale`` and shifted by up to ``shift`` of its size in x
and y: the invariance study's ranges (scale 0.5-1.5, shift +-10 px at 64 px). The renderer centres and fits
every drawing, so scale and shift can only be varied here. A transform that leaves less than ``min_ink`` of
the ink on the canvas is not applied (the view keeps its ink).

Test-time queries are always rendered centred and fitted, so these raster-level changes teach invariance the
study measures rather than variation queries show: hence applied to half the views by default.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..errors import InvalidSketchError
from .batching import Preprocessing, make_example
from .render import rasterize
from .sketch import Sketch
from .synthetic import redraw

__all__ = ["AugmentConfig", "augment_sketch", "raster_affine", "render_view"]


@dataclass(frozen=True)
class AugmentConfig:
    """The ranges of :func:`augment_sketch` and :func:`render_view` (fractions of the drawing's size, which is
    normalised to 1 first, unless said otherwise)."""

    p_partial: float = 0.3
    partial_min: float = 0.5  # at least this fraction of the strokes
    p_drop: float = 0.1  # per stroke
    p_shorten: float = 0.15  # per stroke
    shorten_min: float = 0.5  # a shortened stroke keeps at least this fraction of its points
    wobble: float = 0.015  # redraw()'s smooth displacement along a stroke
    misplace: float = 0.01  # redraw()'s shift of a stroke as a whole
    overshoot_p: float = 0.2
    rotate_deg: float = 10.0  # the invariance study's rotation range
    stretch: float = 0.08  # redraw()'s scale / aspect change (1 +- stretch)
    shear: float = 0.08
    width: tuple[float, float] = (0.6, 1.6)  # line width factor
    affine_p: float = 0.5  # chance of the raster-level scale / shift
    scale: tuple[float, float] = (0.5, 1.5)  # the invariance study's scale range
    shift: float = 10 / 64  # the invariance study's +-10 px at 64 px, as a fraction of the raster size
    min_ink: float = 0.3  # a raster transform must keep this fraction of the ink, else it is not applied

    def __post_init__(self) -> None:
        for name in ("p_partial", "p_drop", "p_shorten", "overshoot_p", "affine_p", "min_ink"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {v}")
        for name in ("partial_min", "shorten_min"):
            v = getattr(self, name)
            if not 0.0 < v <= 1.0:
                raise ValueError(f"{name} must be in (0, 1], got {v}")
        for name in ("wobble", "misplace", "rotate_deg", "stretch", "shear", "shift"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("width", "scale"):
            lo, hi = getattr(self, name)
            if not 0 < lo <= hi:
                raise ValueError(f"{name} must be a range 0 < lo <= hi, got {(lo, hi)}")

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


DEFAULT = AugmentConfig()


# ---------------------------------------------------------------------------------------------- stroke level
def _keep_some(n: int, p_drop: float, rng: np.random.Generator) -> np.ndarray:
    """Indices of strokes kept when each is dropped with ``p_drop``; never none (one is drawn back)."""
    keep = rng.random(n) >= p_drop
    if not keep.any():
        keep[int(rng.integers(n))] = True
    return np.flatnonzero(keep)


def augment_sketch(sketch: Sketch, rng: np.random.Generator, cfg: AugmentConfig = DEFAULT) -> Sketch:
    """A stroke-level view of ``sketch`` (see the module docstring), in a frame of about ``[0, 1]^2``.

    InvalidSketchError when ``sketch`` has no points. The result has at least one stroke, each with at
    least one point, finite coordinates, the input's label and id, and times (made by :func:`redraw`)."""
    s = sketch.validate().normalise(1.0)
    strokes = [np.asarray(p, dtype=np.float64) for p in s.strokes]
    n = len(strokes)
    if n > 1 and rng.random() < cfg.p_partial:
        k = int(rng.integers(max(1, math.ceil(cfg.partial_min * n)), n + 1))
        strokes = strokes[:k]
    if len(strokes) > 1 and cfg.p_drop > 0:
        strokes = [strokes[i] for i in _keep_some(len(strokes), cfg.p_drop, rng)]
    pts, times = redraw(
        strokes,
        rng,
        1.0,
        wobble=cfg.wobble,
        misplace=cfg.misplace,
        overshoot_p=cfg.overshoot_p,
        rotate_deg=cfg.rotate_deg,
        scale=cfg.stretch,
        shear=cfg.shear,
        shift=0.0,  # the renderer centres the drawing: a shift is the raster level's (render_view)
    )
    out_s, out_t = [], []
    for p, t in zip(pts, times):
        m = len(p)
        if m > 2 and rng.random() < cfg.p_shorten:
            keep = max(2, math.ceil(float(rng.uniform(cfg.shorten_min, 1.0)) * m))
            start = 0 if rng.random() < 0.5 else m - keep
            p, t = p[start : start + keep], t[start : start + keep]
        out_s.append(p)
        out_t.append(t)
    view = Sketch(out_s, out_t, label=sketch.label, id=sketch.id, meta=dict(sketch.meta))
    if view.is_empty or not all(np.isfinite(p).all() for p in view.strokes):  # cannot happen; kept as a guard
        raise InvalidSketchError("augmentation produced an invalid drawing", "strokes")
    return view


# ---------------------------------------------------------------------------------------------- raster level
def raster_affine(
    raster: np.ndarray, angle: float = 0.0, factor: float = 1.0, dx: float = 0.0, dy: float = 0.0
) -> np.ndarray:
    """float32 (S, S) ink = 1 -> the same raster rotated by ``angle`` degrees (counter-clockwise on screen for
    positive angles, as :func:`~sketchsearch.eval.invariance.rotate`) and scaled by ``factor`` about
    its centre, then shifted ``dx`` px right and ``dy`` px down (bilinear, background 0, ``align_corners=False``
    as the invariance study's kornia transforms)."""
    S = raster.shape[-1]
    a = -math.radians(angle)  # y points down: a positive angle turns counter-clockwise on screen, as kornia's
    R = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    # output -> input in normalised coordinates: p_in = R^-1 (p_out - t) / s
    inv = R.T / factor
    t = np.array([2.0 * dx / S, 2.0 * dy / S])
    theta = torch.tensor(np.column_stack([inv, -inv @ t])[None], dtype=torch.float32)
    x = torch.from_numpy(np.ascontiguousarray(raster, dtype=np.float32))[None, None]
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0, 0].numpy()


def render_view(
    x: Sketch | np.ndarray | Image.Image, pre: Preprocessing, rng: np.random.Generator, cfg: AugmentConfig = DEFAULT
) -> np.ndarray:
    """One augmented view of a drawing as float32 (S, S) ink = 1 at ``pre.raster_size`` (see the module
    docstring): strokes through :func:`augment_sketch` and a random line width, an image rasterised as every
    encoder reads it and rotated within ``rotate_deg``; then, with ``affine_p``, the raster-level scale /
    shift (undone when it would leave less than ``min_ink`` of the ink)."""
    S = pre.raster_size
    angle = 0.0
    if isinstance(x, Sketch):
        w = pre.line_width * float(rng.uniform(*cfg.width))
        r = rasterize(augment_sketch(x, rng, cfg), size=S, line_width=w)
    else:
        r = make_example(x, Preprocessing(inputs=("raster",), raster_size=S, line_width=pre.line_width))["raster"]
        angle = float(rng.uniform(-cfg.rotate_deg, cfg.rotate_deg))
    factor, dx, dy = 1.0, 0.0, 0.0
    if rng.random() < cfg.affine_p:
        factor = float(rng.uniform(*cfg.scale))
        dx, dy = (float(v) for v in rng.uniform(-cfg.shift, cfg.shift, size=2) * S)
    if angle == 0.0 and factor == 1.0 and dx == 0.0 and dy == 0.0:
        return r.astype(np.float32)
    out = raster_affine(r, angle, factor, dx, dy)
    ink, kept = float(r.sum()), float(out.sum())
    # the ink of a scaled raster grows with the area (factor^2): compare like with like
    if ink > 0 and kept < cfg.min_ink * ink * min(1.0, factor * factor):
        out = raster_affine(r, angle) if angle else r
    return np.asarray(out, dtype=np.float32)
