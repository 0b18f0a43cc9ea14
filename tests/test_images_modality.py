"""Drawing or photograph, judged from the pixels (formats.images.guess_modality): rendered line drawings in
every way a person's drawings reach a folder, synthetic colour images, the real Sketchy sketches and photos;
``read_images`` / ``load_collection`` / ``data info`` with ``--modality auto|sketch|photo``."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter
from typer.testing import CliRunner

from sketchsearch.cli import app
from sketchsearch.data.formats.images import guess_modality, load_image, pixel_stats, read_images
from sketchsearch.data.render import rasterize
from sketchsearch.data.sources import load_collection
from sketchsearch.data.synthetic import default_collection, merchant_marks


def _inks(n: int = 12, size: int = 128) -> list[np.ndarray]:
    """Ink rasters float (size, size) in [0, 1] of rendered merchant marks and kanji (the default collection)."""
    sketches = [it.sketch for it in default_collection(seed=0).items[:: 960 // n]]
    return [rasterize(s, size=size, line_width=2.0) for s in sketches]


def _scan(ink: np.ndarray, rng: np.random.Generator, ink_rgb: tuple[int, int, int]) -> np.ndarray:
    """A drawing as a scanner gives it back: tinted paper, ``ink_rgb`` ink, enlarged, blurred, noisy, JPEG."""
    paper = np.array([235.0, 228.0, 205.0]) * rng.uniform(0.85, 1.0)
    img = paper * (1 - ink[..., None]) + np.array(ink_rgb, dtype=float) * ink[..., None]
    n = int(rng.integers(200, 600))
    im = Image.fromarray(img.clip(0, 255).astype(np.uint8)).resize((n, n), Image.Resampling.BICUBIC)
    arr = np.asarray(im.filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 2.0))), dtype=float)
    arr = arr + rng.normal(0, rng.uniform(2, 8), arr.shape)
    buf = io.BytesIO()
    Image.fromarray(arr.clip(0, 255).astype(np.uint8)).save(buf, "JPEG", quality=int(rng.integers(50, 90)))
    return np.asarray(Image.open(buf))


def _colour_images(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Synthetic images that are not drawings: colour noise, a smooth colour gradient, colour blobs on a
    textured ground, a grey textured ground with a dark object, a blue sky with a small plane-like shape."""
    h = w = 96
    yy, xx = np.mgrid[0:h, 0:w] / 96.0
    gradient = np.stack([255 * xx, 255 * yy, 255 * (1 - xx) * (1 - yy)], axis=-1)
    ground = rng.normal(120, 25, (h, w, 3)) * np.array([1.0, 0.9, 0.7])
    blobs = ground.copy()
    for _ in range(6):
        cy, cx, r = rng.integers(10, 86, 2).tolist() + [int(rng.integers(8, 20))]
        blobs[(yy * 96 - cy) ** 2 + (xx * 96 - cx) ** 2 < r**2] = rng.integers(0, 256, 3)
    grey = np.repeat(rng.normal(130, 20, (h, w, 1)), 3, axis=-1)
    grey[30:70, 20:80] = rng.normal(40, 10, (40, 60, 3))
    sky = np.broadcast_to(np.array([110.0, 160.0, 225.0]), (h, w, 3)).copy()
    sky[45:52, 20:76] = 60.0
    images = {
        "noise": rng.integers(0, 256, (h, w, 3)),
        "gradient": gradient,
        "blobs": blobs,
        "grey object": grey,
        "sky": sky,
    }
    return {k: np.clip(v, 0, 255).astype(np.uint8) for k, v in images.items()}


def test_rendered_line_drawings_are_drawings(rng: np.random.Generator) -> None:
    for i, ink in enumerate(_inks()):
        dark_on_light = ((1 - ink) * 255).astype(np.uint8)
        light_on_dark = (ink * 255).astype(np.uint8)  # as QuickDraw's bitmaps are
        coloured = np.stack([dark_on_light, dark_on_light, np.full_like(dark_on_light, 255)], axis=-1)  # blue pen
        for kind, img in (
            ("dark on light", dark_on_light),
            ("light on dark", light_on_dark),
            ("blue ink", coloured),
            ("scan", _scan(ink, rng, (40, 35, 60))),
            ("red ink scan", _scan(ink, rng, (180, 30, 30))),
        ):
            assert guess_modality(img) == "sketch", (i, kind, pixel_stats(img))


def test_synthetic_colour_images_are_photos(rng: np.random.Generator) -> None:
    for kind, img in _colour_images(rng).items():
        assert guess_modality(img) == "photo", (kind, pixel_stats(img))


def test_each_threshold_of_the_rule_decides() -> None:
    """A drawing changed in one respect at a time stops being one: the rule's parts all take part."""
    ink = _inks(1)[0]
    drawing = ((1 - ink) * 255).astype(np.uint8)
    assert guess_modality(drawing) == "sketch"
    solid = drawing.copy()
    solid[20:100, 20:100] = 0  # a filled region, not lines
    paper_200 = drawing.astype(np.float64) * 200 / 255
    noisy = np.clip(paper_200 + np.random.default_rng(0).normal(0, 12, drawing.shape), 0, 255).astype(np.uint8)
    tinted = np.stack([drawing // 2 + 40, drawing // 2 + 120, np.full_like(drawing, 250)], axis=-1)  # blue paper
    mid_grey = (drawing.astype(np.int32) * 100 // 255 + 60).astype(np.uint8)  # mid-grey paper (level 152)
    mostly_ink = np.zeros((66, 66), np.uint8)
    mostly_ink[1::3], mostly_ink[2::3] = 128, 255  # stripes of three levels: none covers half the image
    for kind, img in (
        ("solid", solid),
        ("noisy", noisy),
        ("tinted", tinted),
        ("mid grey", mid_grey),
        ("mostly ink", mostly_ink),
    ):
        assert guess_modality(img) == "photo", (kind, pixel_stats(img))


def test_pixel_stats_refuses_what_is_not_an_image() -> None:
    for bad in (np.zeros((4, 4), np.float32), np.zeros((4, 4, 4), np.uint8), np.zeros((0, 5), np.uint8)):
        with pytest.raises(ValueError, match="uint8"):
            pixel_stats(bad)


@pytest.mark.data
def test_sketchy_sketches_and_photos(shared_data: Path) -> None:
    """The real thing: every 4th Sketchy sketch and photo (625 + 625). The whole subset measured: all 2,500
    sketches drawings, 40 of 2,500 photos (1.6%) drawings."""
    sketches = sorted((shared_data / "sketchy" / "sketch").glob("*/*.png"))[::4]
    photos = sorted((shared_data / "sketchy" / "photo").glob("*/*.jpg"))[::4]
    assert len(sketches) > 600 and len(photos) > 600
    as_drawing = [guess_modality(load_image(f)) == "sketch" for f in sketches]
    as_photo = [guess_modality(load_image(f)) == "photo" for f in photos]
    assert np.mean(as_drawing) >= 0.995, [f.name for f, ok in zip(sketches, as_drawing) if not ok][:5]
    assert np.mean(as_photo) >= 0.97, [f.name for f, ok in zip(photos, as_photo) if not ok][:5]


def _mixed_folder(root: Path) -> tuple[list[str], list[str]]:
    """``root/marks/*.png`` (4 drawings) and ``root/colour/*.jpg`` (3 photos-to-be); (drawing ids, photo ids)."""
    (root / "marks").mkdir(parents=True)
    (root / "colour").mkdir()
    drawings, photos = [], []
    for s in merchant_marks(2, 2, seed=3):
        ink = rasterize(s, size=96, line_width=2.0)
        Image.fromarray(((1 - ink) * 255).astype(np.uint8)).save(root / "marks" / f"{s.id}.png")
        drawings.append(f"marks/{s.id}")
    for kind, img in list(_colour_images(np.random.default_rng(5)).items())[:3]:
        name = kind.replace(" ", "_")
        Image.fromarray(img).save(root / "colour" / f"{name}.jpg", quality=95)
        photos.append(f"colour/{name}")
    return drawings, photos


def test_read_images_judges_each_image_unless_told(tmp_path: Path) -> None:
    drawings, photos = _mixed_folder(tmp_path)
    got = {it.id: it.modality for it in read_images(tmp_path)}
    assert got == {**{i: "sketch" for i in drawings}, **{i: "photo" for i in photos}}
    assert {it.modality for it in read_images(tmp_path, modality="photo")} == {"photo"}
    with pytest.raises(ValueError, match="auto, sketch, photo"):
        list(read_images(tmp_path, modality="drawing"))
    # the entry point: sketch / photo read the folder as that (no filter: every image is then of that kind)
    assert len(load_collection(tmp_path, modality="sketch")) == len(load_collection(tmp_path, modality="photo")) == 7
    auto = load_collection(tmp_path)
    assert sorted(it.id for it in auto if it.modality == "photo") == sorted(photos)


def test_data_info_reports_what_auto_decided(tmp_path: Path) -> None:
    _mixed_folder(tmp_path)
    res = CliRunner().invoke(app, ["data", "info", str(tmp_path), "--json"])
    assert res.exit_code == 0, res.output
    info = json.loads(res.stdout)
    assert (info["modality"], info["from_pixels"], info["modalities"]) == (
        "auto",
        True,
        {"sketch": 4, "photo": 3},
    )
    res = CliRunner().invoke(app, ["data", "info", str(tmp_path), "--modality", "sketch", "--json"])
    info = json.loads(res.stdout)
    assert (info["from_pixels"], info["modalities"]) == (False, {"sketch": 7, "photo": 0})
    res = CliRunner().invoke(app, ["data", "info", str(tmp_path)])
    assert res.exit_code == 0 and "judged from its pixels" in res.output
    res = CliRunner().invoke(app, ["data", "info", str(tmp_path), "--modality", "drawing"])
    assert res.exit_code != 0 and "--modality must be one of auto, sketch, photo" in res.output


@pytest.mark.data
def test_modality_option_filters_data_whose_layout_says(shared_data: Path) -> None:
    """Sketchy says which items are sketches: --modality keeps those, auto keeps both (nothing judged)."""
    res = CliRunner().invoke(app, ["data", "info", str(shared_data / "sketchy"), "--modality", "photo", "--json"])
    info = json.loads(res.stdout)
    assert (info["format"], info["from_pixels"], info["modalities"]) == (
        "sketchy",
        False,
        {"sketch": 0, "photo": 2500},
    )
