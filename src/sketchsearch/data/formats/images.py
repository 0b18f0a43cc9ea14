"""Any folder of images (png / jpg / jpeg / bmp / gif / webp / tif), the one guarded image decoder every
raster reader uses, and the rule that tells a drawing from a photograph by its pixels.

:func:`load_image` never crashes on bad input: a file that is not an image (e.g. text named ``.png``),
a truncated or corrupt image, or a *decompression bomb* (small file, huge declared size) becomes a
:class:`FormatError` naming the file. Bombs are refused from the header, before any pixel is decoded:
the declared width x height is checked against ``max_pixels`` (and against Pillow's own
``Image.MAX_IMAGE_PIXELS`` when that is lower); Pillow's ``DecompressionBombWarning`` is turned into an
error as well.

**Drawing or photograph** (:func:`guess_modality`, ``read_images(modality="auto")``). A plain image folder
does not say what its images are, so each image is judged from its pixels. The image is reduced to at most
128 px a side (box filter) and turned to grey (ITU-R 601 luma); its *background level* is the grey level
with the most pixels within +-8 of it, and its *background* the pixels within +-24 of that level. The
image is a **drawing** when all of these hold, else a **photo**:

* the background covers at least half of the image (``BACKGROUND_MIN``);
* it is flat, as paper is: the grey levels of its pixels have a standard deviation of at most 8
  (``BACKGROUND_SD_MAX``; ground, water, foliage and noise-free skies' gradients are not);
* it is near neutral: the mean chroma of its pixels, ``|(R - G, (R + G) / 2 - B)|``, is at most 40
  (``BACKGROUND_CHROMA_MAX``: white, grey or yellowed paper, not a blue sky or a green lawn);
* it is light (level >= 160: paper) or dark (<= 40: light-on-dark bitmaps such as QuickDraw's);
* the rest is lines, not filled regions: at most 20% of the image is non-background with all four
  neighbours non-background too (``SOLID_MAX``).

On the shared Sketchy subset (2,500 sketches, 2,500 photos) the rule calls every sketch a drawing and 40
photos (1.6%: objects on a plain light or dark backdrop) drawings; Omniglot images, rendered synthetic
drawings (dark on light and inverted), simulated scans on tinted paper in black or coloured ink, and
QuickDraw bitmaps are drawings (``tests/test_images_modality.py``).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ...errors import FormatError
from .base import READERS, Item, Modality, OnError, check_limit, report, require_exists

__all__ = [
    "IMAGE_MODALITIES",
    "IMAGE_SUFFIXES",
    "MAX_PIXELS",
    "PixelStats",
    "guess_modality",
    "iter_image_files",
    "load_image",
    "pixel_stats",
    "read_images",
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
#: Default ceiling on width x height (64 Mpx: 8000 x 8000). Drawings and photos in the datasets are <= 256 px.
MAX_PIXELS = 64 * 1024 * 1024

#: ``read_images``' modality: ``auto`` judges each image from its pixels (:func:`guess_modality`)
IMAGE_MODALITIES = ("auto", "sketch", "photo")
#: The drawing-or-photo rule's thresholds (see the module docstring).
STATS_SIZE = 128
BACKGROUND_WINDOW = 8
BACKGROUND_TOLERANCE = 24
BACKGROUND_MIN = 0.5
BACKGROUND_SD_MAX = 8.0
BACKGROUND_CHROMA_MAX = 40.0
PAPER_LIGHT_MIN = 160
PAPER_DARK_MAX = 40
SOLID_MAX = 0.2


def load_image(path: str | Path, *, max_pixels: int | None = MAX_PIXELS, record: int | str | None = None) -> np.ndarray:
    """Decode ``path`` to uint8: (H, W) for grey / bilevel images, (H, W, 3) RGB otherwise (alpha is
    composited on white, palettes expanded). ``record`` is used in the error (None: the file itself).

    Raises FormatError(path, record, reason) for anything that is not a readable image of at most
    ``max_pixels`` pixels.
    """
    limit = max_pixels
    if Image.MAX_IMAGE_PIXELS is not None:
        limit = Image.MAX_IMAGE_PIXELS if limit is None else min(limit, int(Image.MAX_IMAGE_PIXELS))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                w, h = im.size
                if limit is not None and w * h > limit:
                    raise FormatError(
                        path,
                        record,
                        f"refused: the image declares {w} x {h} = {w * h} pixels, more than the limit of {limit} "
                        "(a decompression bomb, or raise max_pixels)",
                    )
                im.load()
                if im.mode in ("1", "L", "I;16", "I", "F"):
                    arr = np.asarray(im.convert("L"))
                elif im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
                    rgba = im.convert("RGBA")
                    bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                    arr = np.asarray(Image.alpha_composite(bg, rgba).convert("RGB"))
                else:
                    arr = np.asarray(im.convert("RGB"))
    except FormatError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise FormatError(path, record, f"refused as a decompression bomb: {e}") from e
    except UnidentifiedImageError:
        raise FormatError(
            path,
            record,
            f"not an image file (Pillow cannot identify it; its name ends {Path(path).suffix!r})",
        ) from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:  # truncated / corrupt data, unreadable file
        raise FormatError(path, record, f"corrupt or unreadable image: {e}") from e
    return np.array(arr, dtype=np.uint8)


@dataclass(frozen=True)
class PixelStats:
    """What :func:`guess_modality` measures on an image (at most ``STATS_SIZE`` px a side).

    ``background``: fraction of pixels within +-24 grey levels of the background level (0..1);
    ``background_level``: that level (0..255); ``background_sd``: standard deviation of the background's
    grey levels; ``background_chroma``: length of its mean (R - G, (R + G) / 2 - B); ``solid``: fraction of
    the image that is non-background with its four neighbours non-background too (filled regions)."""

    background: float
    background_level: int
    background_sd: float
    background_chroma: float
    solid: float

    @property
    def is_drawing(self) -> bool:
        """The rule (module docstring): flat, neutral, light or dark background; lines, not regions."""
        return (
            self.background >= BACKGROUND_MIN
            and self.background_sd <= BACKGROUND_SD_MAX
            and self.background_chroma <= BACKGROUND_CHROMA_MAX
            and (self.background_level >= PAPER_LIGHT_MIN or self.background_level <= PAPER_DARK_MAX)
            and self.solid <= SOLID_MAX
        )


def pixel_stats(image: np.ndarray) -> PixelStats:
    """:class:`PixelStats` of a uint8 (H, W) grey or (H, W, 3) RGB image (as :func:`load_image` returns)."""
    arr = np.asarray(image)
    if arr.dtype != np.uint8 or arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] != 3) or not arr.size:
        raise ValueError(f"expected a non-empty uint8 (H, W) or (H, W, 3) image, got {arr.dtype} {arr.shape}")
    im = Image.fromarray(np.ascontiguousarray(arr))
    if max(im.size) > STATS_SIZE:
        im.thumbnail((STATS_SIZE, STATS_SIZE), Image.Resampling.BOX)
    px = np.asarray(im, dtype=np.float32)
    if px.ndim == 2:
        grey, rg, yb = px, np.zeros_like(px), np.zeros_like(px)
    else:
        r, g, b = px[..., 0], px[..., 1], px[..., 2]
        grey, rg, yb = 0.299 * r + 0.587 * g + 0.114 * b, r - g, 0.5 * (r + g) - b
    hist = np.bincount(np.clip(grey, 0, 255).astype(np.int64).ravel(), minlength=256)
    level = int(np.argmax(np.convolve(hist, np.ones(2 * BACKGROUND_WINDOW + 1), mode="same")))
    bg = np.abs(grey - level) <= BACKGROUND_TOLERANCE
    fg = np.pad(~bg, 1, constant_values=False)
    solid = fg[1:-1, 1:-1] & fg[:-2, 1:-1] & fg[2:, 1:-1] & fg[1:-1, :-2] & fg[1:-1, 2:]
    return PixelStats(
        background=float(bg.mean()),
        background_level=level,
        background_sd=float(grey[bg].std()) if bg.any() else 0.0,
        background_chroma=float(np.hypot(rg[bg].mean(), yb[bg].mean())) if bg.any() else 0.0,
        solid=float(solid.mean()),
    )


def guess_modality(image: np.ndarray) -> Modality:
    """``"sketch"`` when ``image`` (uint8 (H, W) or (H, W, 3)) looks like a drawing, else ``"photo"``
    (the rule in the module docstring)."""
    return "sketch" if pixel_stats(image).is_drawing else "photo"


def iter_image_files(folder: str | Path) -> Iterator[Path]:
    """Image files under ``folder`` (recursive, sorted by path; hidden files and folders skipped)."""
    folder = Path(folder)
    require_exists(folder)
    if folder.is_file():
        yield folder
        return
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder)
        if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file() and not any(s.startswith(".") for s in rel.parts):
            yield p


def read_images(
    path: str | Path,
    *,
    strict: bool = False,
    on_error: OnError | None = None,
    limit: int | None = None,
    modality: str = "auto",
    max_pixels: int | None = MAX_PIXELS,
) -> Iterator[Item]:
    """Every image under a folder, at any depth (or one image file). Label = the folder holding the image,
    relative to ``path`` (``"cat"``, ``"Greek/alpha"``), or None for images directly in ``path``; id = the
    path relative to ``path`` without suffix. ``modality``: ``"auto"`` judges each image from its pixels
    (:func:`guess_modality`), ``"sketch"`` / ``"photo"`` says it for all. Every file with an image suffix
    that cannot be read is a bad record (see ``formats.base``); files of other kinds are not images and
    are not read."""
    root = Path(path)
    require_exists(root)
    if modality not in IMAGE_MODALITIES:
        raise ValueError(f"modality must be one of {', '.join(IMAGE_MODALITIES)}, got {modality!r}")
    base = root.parent if root.is_file() else root
    n = 0
    limit = check_limit(limit)
    for f in iter_image_files(root):
        if limit is not None and n >= limit:
            return
        try:
            img = load_image(f, max_pixels=max_pixels)
        except FormatError as e:
            report(e, strict, on_error)
            continue
        rel = f.relative_to(base)
        label = rel.parent.as_posix() if len(rel.parts) > 1 else None
        kind: Modality = guess_modality(img) if modality == "auto" else modality  # type: ignore[assignment]
        yield Item(rel.with_suffix("").as_posix(), label, kind, str(f), image=img)
        n += 1


READERS.register("images")(read_images)
