"""Any folder of images (png / jpg / jpeg / bmp / gif / webp / tif), the one guarded image decoder that every
raster reader, the CLI and the web service use (:func:`open_image`), and the rule that tells a drawing from a
photograph by its pixels.

:func:`open_image` (and :func:`load_image`, its file form) never crashes on bad input: a file that is not an
image (e.g. text named ``.png``), a truncated or corrupt image, or a *decompression bomb* (small file, huge
declared size) becomes a :class:`FormatError` naming the file. Bombs are refused from the header, before any
pixel is decoded: the declared width x height is checked against ``max_pixels`` (and against Pillow's own
``Image.MAX_IMAGE_PIXELS`` when that is lower), Pillow's ``DecompressionBombWarning`` is turned into an
error as well, and the *decode budget* (pixels x bytes per pixel of the file's mode, 16-bit and alpha
counted) is checked against ``ReadLimits.max_decode_bytes``. JPEGs are decoded already scaled down
(``Image.draft``), every image is reduced to ``ReadLimits.max_image_side`` right after it is decoded, and the
EXIF orientation is applied once, here, so a photo reads the same from the CLI and from the service.

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

import io
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from math import ceil
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ...errors import FormatError
from .base import READ_LIMITS, READERS, Item, Modality, OnError, ReadLimits, check_limit, report, require_exists

__all__ = [
    "IMAGE_MODALITIES",
    "IMAGE_SUFFIXES",
    "MAX_PIXELS",
    "ImageDecodeError",
    "PixelStats",
    "decode_bytes_per_pixel",
    "guess_modality",
    "iter_image_files",
    "load_image",
    "open_image",
    "pixel_stats",
    "read_images",
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
#: Default ceiling on width x height (64 Mpx: 8000 x 8000). Drawings and photos in the datasets are <= 256 px.
MAX_PIXELS = READ_LIMITS.max_pixels

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


class ImageDecodeError(FormatError):
    """:func:`open_image` refused an image. ``kind``: ``"too_large"`` (over the pixel limit, or a decompression
    bomb), ``"over_budget"`` (over the decode budget; both refused from the header, nothing decoded),
    ``"not_an_image"`` (Pillow cannot
    identify it, or it is not one of the formats allowed) or ``"corrupt"`` (truncated or damaged data)."""

    def __init__(self, file: str | Path, record: int | str | None, reason: str, kind: str) -> None:
        super().__init__(file, record, reason)
        self.kind = kind


#: EXIF Orientation (tag 0x0112) -> the transpose that makes the image upright: ``ImageOps.exif_transpose``'s
#: table, applied here to the already reduced image (its EXIF is read from the file's header).
_ORIENTATION = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_EXIF_ORIENTATION = 0x0112


def _rawmode(im: Image.Image) -> str:
    """The decoder's raw mode of the file's pixels (``"RGBA;16B"`` for a 16-bit RGBA PNG), or ''."""
    tile = getattr(im, "tile", None) or []
    args = tile[0].args if tile else None
    if isinstance(args, tuple) and args and isinstance(args[0], str):
        return args[0]
    return args if isinstance(args, str) else ""


def _working_mode(im: Image.Image) -> str:
    """The 8-bit mode an image is reduced in: ``L`` (grey, bilevel, 16/32-bit grey), ``RGBA`` (any alpha or a
    transparent palette), ``RGB`` otherwise."""
    if im.mode in ("1", "L", "I", "F") or im.mode.startswith("I;16"):
        return "L"
    if im.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (im.mode == "P" and "transparency" in im.info):
        return "RGBA"
    return "RGB"


def decode_bytes_per_pixel(im: Image.Image) -> int:
    """Bytes per pixel the decode of ``im`` (opened, not loaded) costs: its mode's bands x bytes per sample,
    16-bit samples counted as 2 bytes even where Pillow unpacks them to 8 (a 16-bit RGBA PNG: 8), and at least
    the 8-bit mode it is converted to (a palette image with transparency: 4)."""
    from PIL import ImageMode

    desc = ImageMode.getmode(im.mode)
    sample = max(1, np.dtype(desc.typestr).itemsize)
    if ";16" in _rawmode(im):
        sample = max(sample, 2)
    return max(len(desc.bands) * sample, len(_working_mode(im)))


def _to_8bit(im: Image.Image, mode: str, rawmode: str) -> Image.Image:
    """``im`` (loaded) in the 8-bit working ``mode``; 16-bit grey is scaled (>> 8), not clipped."""
    if mode == "L" and (im.mode.startswith("I;16") or (im.mode == "I" and ";16" in rawmode)):
        return Image.fromarray((np.asarray(im).astype(np.uint32) >> 8).astype(np.uint8), "L")
    return im if im.mode == mode else im.convert(mode)


#: rows of a full-size image composited and box-reduced at a time (see :func:`_reduce_flatten`)
_BAND_ROWS = 256


def _on_white(rgba: Image.Image) -> Image.Image:
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert("RGB")


def _reduce_flatten(img: Image.Image, side: int | None) -> Image.Image:
    """``img`` (8-bit L / RGB / RGBA) at most ``side`` pixels a side, alpha composited on white, without a
    second full-size buffer: bands of rows are composited and box-reduced by an integer factor one at a time
    (Pillow's own resize and reduce of RGBA first make a premultiplied full-size copy), then the small result
    is box-resized to ``side``. Bands are a multiple of the factor high, so the result is the whole-image
    box reduction."""
    w, h = img.size
    f = 1 if side is None else max(1, max(w, h) // side)
    if f == 1 and img.mode != "RGBA":
        out = img
    else:
        out = Image.new("RGB" if img.mode == "RGBA" else img.mode, (-(-w // f), -(-h // f)))
        step = f * max(1, _BAND_ROWS // f)
        for y in range(0, h, step):
            band = img.crop((0, y, w, min(h, y + step)))
            if band.mode == "RGBA":
                band = _on_white(band)
            out.paste(band.reduce(f) if f > 1 else band, (0, y // f))
    if side is not None and max(out.size) > side:
        scale = side / max(out.size)
        out = out.resize((max(1, round(out.size[0] * scale)), max(1, round(out.size[1] * scale))), Image.Resampling.BOX)
    return out


def open_image(
    source: str | Path | bytes,
    *,
    record: int | str | None = None,
    name: str | None = None,
    limits: ReadLimits | None = None,
    formats: tuple[str, ...] | None = None,
    check_size: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """The one image decoder (readers, the CLI and the service): a file path or its bytes -> uint8 (H, W) for
    grey / bilevel images, (H, W, 3) RGB otherwise, upright, alpha composited on white, at most
    ``limits.max_image_side`` pixels a side.

    In order: the header is read (nothing decoded) and the declared width x height is checked by
    ``check_size(width, height)`` when given (the service's own bounds, which raise their own error) and
    against ``limits.max_pixels`` (and Pillow's ``Image.MAX_IMAGE_PIXELS`` when lower; its bomb warning is
    an error too); JPEG is asked to decode already scaled down (``Image.draft``: 1/2, 1/4 or 1/8 in the
    DCT); the decode budget, width x height x :func:`decode_bytes_per_pixel` at the size that will be
    decoded, is checked against ``limits.max_decode_bytes``; then the pixels are decoded, converted at once
    to 8-bit (16-bit samples scaled, alpha kept until it is composited), reduced to ``max_image_side`` (box
    filter) so the full-size buffer is released, turned upright by the EXIF orientation (once, here: the
    table ``ImageOps.exif_transpose`` applies) and composited on white.

    ``name`` names the image in errors (default: the path; ``"<bytes>"`` for bytes); ``record`` is the
    record in the error (None: the file itself). ``formats`` restricts Pillow's formats (``("PNG", "JPEG")``).
    Raises :class:`ImageDecodeError` (a FormatError) naming the image, with ``kind`` saying why.
    """
    lim = limits or READ_LIMITS
    where: str | Path = name if name is not None else ("<bytes>" if isinstance(source, bytes) else source)
    pixel_limit = lim.max_pixels
    if Image.MAX_IMAGE_PIXELS is not None:
        pixel_limit = min(pixel_limit, int(Image.MAX_IMAGE_PIXELS))
    fp: str | Path | io.BytesIO = io.BytesIO(source) if isinstance(source, bytes) else source

    def refuse(reason: str, kind: str = "too_large") -> ImageDecodeError:
        return ImageDecodeError(where, record, reason, kind)

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(fp, formats=list(formats) if formats else None) as im:
                w, h = im.size
                if check_size is not None:
                    check_size(w, h)
                if w * h > pixel_limit:
                    raise refuse(
                        f"refused: the image declares {w} x {h} = {w * h} pixels, more than the limit of "
                        f"{pixel_limit} (a decompression bomb, or raise max_pixels)"
                    )
                mode = _working_mode(im)
                side = lim.max_image_side
                if side is not None and im.format == "JPEG" and max(w, h) > side:
                    scale = side / max(w, h)
                    im.draft(mode if im.mode in ("L", "RGB") else None, (ceil(w * scale), ceil(h * scale)))
                dw, dh = im.size
                bpp = decode_bytes_per_pixel(im)
                if dw * dh * bpp > lim.max_decode_bytes:
                    raise refuse(
                        f"decoding {dw} x {dh} pixels of mode {im.mode} "
                        f"({_rawmode(im) or im.mode}, {bpp} bytes a pixel) needs {dw * dh * bpp} bytes, more "
                        f"than the decode budget of {lim.max_decode_bytes} (ReadLimits.max_decode_bytes)",
                        "over_budget",
                    )
                rawmode = _rawmode(im)
                im.load()
                # after load: PNG's getexif() decodes the whole image to find an eXIf chunk after the pixels
                orientation = im.getexif().get(_EXIF_ORIENTATION, 1)
                work = _reduce_flatten(_to_8bit(im, mode, rawmode), side)
                if work is im:
                    work = im.copy()  # outlive the file
            # the full-size decode is released here: only the reduced 8-bit image is left
            if orientation in _ORIENTATION:
                work = work.transpose(_ORIENTATION[orientation])
            return np.array(work, dtype=np.uint8)
    except FormatError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise refuse(f"refused as a decompression bomb: {e}") from e
    except UnidentifiedImageError:
        allowed = f"not one of {', '.join(formats)}" if formats else "Pillow cannot identify it"
        suffix = f"; its name ends {Path(where).suffix!r}" if not isinstance(source, bytes) else ""
        raise refuse(f"not an image file ({allowed}{suffix})", "not_an_image") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:  # truncated / corrupt data, unreadable file
        raise refuse(f"corrupt or unreadable image: {e}", "corrupt") from e


def load_image(
    path: str | Path,
    *,
    max_pixels: int | None = MAX_PIXELS,
    record: int | str | None = None,
    limits: ReadLimits | None = None,
) -> np.ndarray:
    """Decode the image file ``path`` with :func:`open_image`: uint8 (H, W) for grey / bilevel images,
    (H, W, 3) RGB otherwise (alpha composited on white, palettes expanded, EXIF orientation applied, at most
    ``limits.max_image_side`` a side). ``max_pixels`` overrides ``limits.max_pixels`` (None: no limit of
    ours; Pillow's own still applies). ``record`` is used in the error (None: the file itself).

    Raises FormatError(path, record, reason) for anything that is not a readable image within the limits.
    """
    lim = limits or READ_LIMITS
    if limits is None or max_pixels != MAX_PIXELS:  # an explicit max_pixels wins over limits'
        lim = replace(lim, max_pixels=max_pixels if max_pixels is not None else 2**62)
    return open_image(path, record=record, limits=lim)


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
    limits: ReadLimits | None = None,
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
            img = load_image(f, max_pixels=max_pixels, limits=limits)
        except FormatError as e:
            report(e, strict, on_error)
            continue
        rel = f.relative_to(base)
        label = rel.parent.as_posix() if len(rel.parts) > 1 else None
        kind: Modality = guess_modality(img) if modality == "auto" else modality  # type: ignore[assignment]
        yield Item(rel.with_suffix("").as_posix(), label, kind, str(f), image=img)
        n += 1


READERS.register("images")(read_images)
