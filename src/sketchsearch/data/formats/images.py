"""Any folder of images (png / jpg / jpeg / bmp / gif / webp / tif), and the one guarded image decoder
every raster reader uses.

:func:`load_image` never crashes on bad input: a file that is not an image (e.g. text named ``.png``),
a truncated or corrupt image, or a *decompression bomb* (small file, huge declared size) becomes a
:class:`FormatError` naming the file. Bombs are refused from the header, before any pixel is decoded:
the declared width x height is checked against ``max_pixels`` (and against Pillow's own
``Image.MAX_IMAGE_PIXELS`` when that is lower); Pillow's ``DecompressionBombWarning`` is turned into an
error as well.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ...errors import FormatError
from .base import READERS, Item, Modality, OnError, check_limit, report, require_exists

__all__ = ["IMAGE_SUFFIXES", "MAX_PIXELS", "iter_image_files", "load_image", "read_images"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
#: Default ceiling on width x height (64 Mpx: 8000 x 8000). Drawings and photos in the datasets are <= 256 px.
MAX_PIXELS = 64 * 1024 * 1024


def load_image(
    path: str | Path, *, max_pixels: int | None = MAX_PIXELS, record: int | str | None = None
) -> np.ndarray:
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
                        path, record,
                        f"refused: the image declares {w} x {h} = {w * h} pixels, more than the limit of {limit} "
                        "(a decompression bomb, or raise max_pixels)",
                    )  # fmt: skip
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


def iter_image_files(folder: str | Path) -> Iterator[Path]:
    """Image files under ``folder`` (recursive, sorted by path; hidden files and folders skipped)."""
    folder = Path(folder)
    require_exists(folder)
    if folder.is_file():
        yield folder
        return
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder)
        if (
            p.suffix.lower() in IMAGE_SUFFIXES
            and p.is_file()
            and not any(s.startswith(".") for s in rel.parts)
        ):
            yield p


def read_images(
    path: str | Path,
    *,
    strict: bool = False,
    on_error: OnError | None = None,
    limit: int | None = None,
    modality: Modality = "photo",
    max_pixels: int | None = MAX_PIXELS,
) -> Iterator[Item]:
    """Every image under a folder (or one image file). Label = the image's parent folder name, or None for
    images directly in ``path``; id = the path relative to ``path`` without suffix. A bad image follows the
    bad-record rule (see ``formats.base``)."""
    root = Path(path)
    require_exists(root)
    if modality not in ("sketch", "photo"):
        raise ValueError(f"modality must be 'sketch' or 'photo', got {modality!r}")
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
        label = rel.parent.name if len(rel.parts) > 1 else None
        yield Item(rel.with_suffix("").as_posix(), label, modality, str(f), image=img)
        n += 1


READERS.register("images")(read_images)
