"""The invariance study's code on cases with known answers."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from sketchsearch.eval import invariance as inv

H = 64
_yy, _xx = np.mgrid[:H, :H]
_C = (H - 1) / 2.0


def _disk(r: float = 12.0) -> np.ndarray:
    return ((_xx - _C) ** 2 + (_yy - _C) ** 2 <= r**2).astype(np.float32)[None]


def _mark() -> np.ndarray:
    """An asymmetric 'L' in the middle, >= 15 px from every border."""
    img = np.zeros((1, H, H), np.float32)
    img[0, 20:45, 24:27] = 1.0
    img[0, 42:45, 24:42] = 1.0
    return img


def pixels(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(1)


def test_paper_ranges() -> None:
    assert len(inv.ROTATION_ANGLES) == 41 and inv.ROTATION_ANGLES[0] == -10 and inv.ROTATION_ANGLES[-1] == 10
    assert len(inv.SCALE_FACTORS) == 21 and inv.SCALE_FACTORS[0] == 0.5 and inv.SCALE_FACTORS[-1] == 1.5
    assert list(inv.SHIFTS) == list(range(-10, 11))


def test_identity_transforms_are_exact() -> None:
    x = torch.from_numpy(_mark())[:, None]
    torch.testing.assert_close(inv.rotate(x, 0.0), x)
    torch.testing.assert_close(inv.scale(x, 1.0), x)
    torch.testing.assert_close(inv.shift(x, 0, 0), x)
    # integer shifts move ink exactly: right by dx, down by dy
    moved = inv.shift(x, 3, -2)
    torch.testing.assert_close(moved[0, 0, 18:43, 27:30], x[0, 0, 20:45, 24:27])
    assert float(moved.sum()) == pytest.approx(float(x.sum()))


def test_rotation_invariant_encoder_gives_flat_curve() -> None:
    """Ink mass and the radial profile of ink about the centre do not change under rotation (up to
    interpolation), so an encoder made of them must give a flat curve at 1; pixels of an asymmetric mark must not."""
    r = torch.from_numpy(np.hypot(_xx - _C, _yy - _C)).float()
    bins = [(r >= a) & (r < a + 4) for a in range(0, 32, 4)]

    def radial(x: torch.Tensor) -> torch.Tensor:
        return torch.stack([(x[:, 0] * b).sum((1, 2)) for b in bins], 1)

    flat = inv.rotation_curve(radial, _mark())
    assert len(flat["mean"]) == 41
    assert min(flat["mean"]) > 0.995
    sharp = inv.rotation_curve(pixels, _mark())
    i0 = flat["x"].index(0.0)
    assert sharp["mean"][i0] == pytest.approx(1.0, abs=1e-6)
    assert sharp["mean"][0] < 0.85 and sharp["mean"][-1] < 0.85  # a thin L rotated 10 degrees overlaps little
    left, right = sharp["mean"][: i0 + 1], sharp["mean"][i0:]
    assert all(a <= b + 1e-6 for a, b in itertools.pairwise(left)) and all(
        a >= b - 1e-6 for a, b in itertools.pairwise(right)
    )
    assert inv.summary(flat) > inv.summary(sharp)


def test_scale_of_a_disk_matches_the_analytic_overlap() -> None:
    """Disk of radius r vs radius s*r (both centred): cosine of the indicators = min(s, 1/s)."""
    curve = inv.scale_curve(pixels, _disk(12.0))
    for s, sim in zip(curve["x"], curve["mean"]):
        assert sim == pytest.approx(min(s, 1 / s), abs=0.04), s


def test_shift_map_of_a_shift_invariant_encoder_is_flat() -> None:
    """|2-D DFT| is exactly invariant to circular shifts, and a zero-padded shift that keeps the ink inside
    the canvas is a circular shift: the whole 21 x 21 map must be 1."""

    def fft_mag(x: torch.Tensor) -> torch.Tensor:
        return torch.fft.fft2(x[:, 0]).abs().flatten(1)

    m = inv.shift_map(fft_mag, _mark())
    arr = np.asarray(m["mean"])
    assert arr.shape == (21, 21)
    np.testing.assert_allclose(arr, 1.0, atol=1e-5)
    assert inv.summary(m) == pytest.approx(1.0, abs=1e-5)


def test_shift_map_of_pixels_is_an_overlap_map() -> None:
    """A 3-px wide vertical bar shifted by dx overlaps itself in (3 - |dx|) of its 3 columns (dy within the
    bar's length barely matters): the centre row follows (3 - |dx|) / 3."""
    img = np.zeros((1, H, H), np.float32)
    img[0, 12:52, 30:33] = 1.0
    m = np.asarray(inv.shift_map(pixels, img)["mean"])
    centre_row = m[10]  # dy = 0
    for dx in range(-4, 5):
        assert centre_row[10 + dx] == pytest.approx(max(3 - abs(dx), 0) / 3, abs=1e-6)
    assert m[0, 10] == pytest.approx(30 / 40, abs=1e-6)  # dy = -10: 30 of 40 rows overlap


def test_bad_input_is_rejected() -> None:
    with pytest.raises(ValueError, match="no rasters"):
        inv.rotation_curve(pixels, np.zeros((0, H, H), np.float32))
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        inv.rotation_curve(lambda x: x.sum(), _mark())
    with pytest.raises(ValueError, match="> 0"):
        inv.scale_curve(pixels, _mark(), factors=[0.0, 1.0])
