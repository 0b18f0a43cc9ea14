"""Invariance of an encoder to rotation, scale and shift (Creswell & Bharath 2016, section 4.3).

For each transformation parameter the rasters are transformed (kornia, bilinear with ``align_corners=False``
so that angle 0, scale 1 and integer shifts are exact; background 0: a scale below 1 pads with background,
above 1 crops to the canvas), encoded, and compared with the encoding of the untransformed raster by the
normalised dot product; the curve is the mean over the samples. The one-number
summary of a curve is its mean over the whole range (:func:`summary`).

``encode_fn`` maps float rasters (N, 1, H, W) (a torch tensor) to encodings (N, D) (tensor or array);
it need not normalise, the similarity does.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import kornia.geometry.transform as KT
import numpy as np
import torch
from torch import Tensor

__all__ = [
    "ROTATION_ANGLES",
    "SCALE_FACTORS",
    "SHIFTS",
    "EncodeFn",
    "cosine_to_reference",
    "rotate",
    "rotation_curve",
    "scale",
    "scale_curve",
    "shift",
    "shift_curve",
    "shift_map",
    "study",
    "summary",
]

EncodeFn = Callable[[Tensor], "Tensor | np.ndarray"]

#: the paper's ranges: -10..10 degrees by 0.5; 0.5..1.5 by 0.05; -10..10 pixels by 1 in x and y
ROTATION_ANGLES = np.round(np.arange(-10.0, 10.0 + 1e-9, 0.5), 6)
SCALE_FACTORS = np.round(np.arange(0.5, 1.5 + 1e-9, 0.05), 6)
SHIFTS = np.arange(-10, 11)


def _as_batch(rasters: np.ndarray | Tensor) -> Tensor:
    x = torch.as_tensor(np.asarray(rasters, dtype=np.float32)) if not isinstance(rasters, Tensor) else rasters.float()
    if x.dim() == 3:
        x = x[:, None]
    if x.dim() != 4 or x.shape[1] != 1:
        raise ValueError(f"rasters must be (N, H, W) or (N, 1, H, W), got shape {tuple(x.shape)}")
    if len(x) == 0:
        raise ValueError("no rasters given")
    return x


def _encode(encode_fn: EncodeFn, x: Tensor) -> Tensor:
    with torch.no_grad():
        z = encode_fn(x)
    z = torch.as_tensor(np.asarray(z)) if not isinstance(z, Tensor) else z
    if z.dim() != 2 or z.shape[0] != x.shape[0]:
        raise ValueError(f"encode_fn must return (N, D) for N = {x.shape[0]} rasters, got shape {tuple(z.shape)}")
    return z.detach().float().cpu()


def cosine_to_reference(z: Tensor, ref: Tensor) -> Tensor:
    """Per-row normalised dot product of z (N, D) with ref (N, D) -> (N,). A zero vector has similarity 0."""
    zn = torch.nn.functional.normalize(z, dim=1)
    rn = torch.nn.functional.normalize(ref, dim=1)
    return (zn * rn).sum(1)


def rotate(x: Tensor, degrees: float) -> Tensor:
    """Rotate (N, 1, H, W) about the image centre (counter-clockwise on screen for positive angles);
    uncovered corners are background 0."""
    angle = torch.full((x.shape[0],), float(degrees), dtype=x.dtype, device=x.device)
    return KT.rotate(x, angle, mode="bilinear", padding_mode="zeros", align_corners=False)


def scale(x: Tensor, factor: float) -> Tensor:
    """Scale (N, 1, H, W) about the image centre, keeping the canvas: < 1 pads with 0, > 1 crops."""
    f = torch.full((x.shape[0], 2), float(factor), dtype=x.dtype, device=x.device)
    return KT.scale(x, f, mode="bilinear", padding_mode="zeros", align_corners=False)


def shift(x: Tensor, dx: float, dy: float) -> Tensor:
    """Translate (N, 1, H, W) by dx pixels right and dy pixels down; uncovered pixels are 0, ink pushed
    off the canvas is lost."""
    t = torch.tensor([[float(dx), float(dy)]], dtype=x.dtype, device=x.device).expand(x.shape[0], 2)
    return KT.translate(x, t, mode="bilinear", padding_mode="zeros", align_corners=False)


def _curve(
    encode_fn: EncodeFn,
    rasters: np.ndarray | Tensor,
    params: Sequence[float],
    fn: Callable[[Tensor, float], Tensor],
) -> dict[str, list[float]]:
    x = _as_batch(rasters)
    ref = _encode(encode_fn, x)
    mean, std = [], []
    for p in params:
        z = _encode(encode_fn, fn(x, float(p)))  # ``fn`` may return several transforms of each raster, stacked
        sim = cosine_to_reference(z, ref.repeat(len(z) // len(ref), 1))
        mean.append(float(sim.mean()))
        std.append(float(sim.std(unbiased=False)))
    return {"x": [float(p) for p in params], "mean": mean, "std": std}


def rotation_curve(
    encode_fn: EncodeFn, rasters: np.ndarray | Tensor, angles: Sequence[float] = tuple(ROTATION_ANGLES)
) -> dict[str, list[float]]:
    """Mean (and std) over the rasters of the similarity between the encoding rotated by each angle
    (degrees) and the unrotated one: ``{"x": angles, "mean": [...], "std": [...]}``."""
    return _curve(encode_fn, rasters, angles, rotate)


def scale_curve(
    encode_fn: EncodeFn, rasters: np.ndarray | Tensor, factors: Sequence[float] = tuple(SCALE_FACTORS)
) -> dict[str, list[float]]:
    """Like :func:`rotation_curve` for scale factors (1 = unchanged)."""
    for f in factors:
        if f <= 0:
            raise ValueError(f"scale factors must be > 0, got {f}")
    return _curve(encode_fn, rasters, factors, scale)


def shift_map(
    encode_fn: EncodeFn, rasters: np.ndarray | Tensor, shifts: Sequence[int] = tuple(SHIFTS)
) -> dict[str, list[float] | list[list[float]]]:
    """Mean similarity for every (dy, dx) in shifts x shifts: ``{"x": shifts, "y": shifts, "mean": rows}``
    where ``mean[i][j]`` is for dy = shifts[i], dx = shifts[j]."""
    x = _as_batch(rasters)
    ref = _encode(encode_fn, x)
    rows = []
    for dy in shifts:
        rows.append([float(cosine_to_reference(_encode(encode_fn, shift(x, dx, dy)), ref).mean()) for dx in shifts])
    return {"x": [float(s) for s in shifts], "y": [float(s) for s in shifts], "mean": rows}


def shift_curve(
    encode_fn: EncodeFn, rasters: np.ndarray | Tensor, shifts: Sequence[int] = tuple(SHIFTS)
) -> dict[str, list[float]]:
    """The shift map's two axes in one curve: for each shift ``s``, the mean over the rasters of the
    similarities at (dx = s, dy = 0) and (dx = 0, dy = s). ``{"x": shifts, "mean": [...], "std": [...]}``;
    len(shifts) batches of both shifts of every raster instead of the map's len(shifts) ** 2 (what a page
    index's window step needs)."""

    def both(x: Tensor, s: float) -> Tensor:
        return torch.cat([shift(x, s, 0.0), shift(x, 0.0, s)])

    return _curve(encode_fn, rasters, shifts, both)


def summary(curve: dict[str, list[float]] | dict[str, list[float] | list[list[float]]]) -> float:
    """The one-number summary: the mean similarity over the whole range (all cells of a shift map)."""
    return float(np.mean(np.asarray(curve["mean"], dtype=float)))


def study(
    encoders: dict[str, EncodeFn],
    rasters: np.ndarray | Tensor,
    angles: Sequence[float] = tuple(ROTATION_ANGLES),
    factors: Sequence[float] = tuple(SCALE_FACTORS),
    shifts: Sequence[int] = tuple(SHIFTS),
) -> dict[str, dict[str, object]]:
    """All three measurements for every encoder on the same rasters:
    ``{name: {"rotation": curve, "scale": curve, "shift": map, "summary": {"rotation", "scale", "shift"}}}``."""
    out: dict[str, dict[str, object]] = {}
    for name, fn in encoders.items():
        rot = rotation_curve(fn, rasters, angles)
        sc = scale_curve(fn, rasters, factors)
        sh = shift_map(fn, rasters, shifts)
        out[name] = {
            "rotation": rot,
            "scale": sc,
            "shift": sh,
            "summary": {"rotation": summary(rot), "scale": summary(sc), "shift": summary(sh)},
        }
    return out
