"""The Sketchy database layout: ``sketch/<class>/<photo_id>-<k>.png`` and ``photo/<class>/<photo_id>.jpg``.

A sketch's file name starts with the id of the photo it was drawn from, so ``pair`` = that photo id for a
sketch and the photo's own id for a photo (instance-level pairs); other photos of the class are distractors.
Both are raster: ``image`` uint8 (H, W, 3) (128 x 128 in the shared subset). Label = class folder name.
An unreadable image is a bad record (see ``formats.base``), and so is an image that is not at
``sketch|photo/<class>/<file>`` (reported by name, not read).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from itertools import islice
from pathlib import Path

from ...errors import FormatError
from .base import READERS, Item, Modality, OnError, ReadLimits, check_limit, report, require_exists
from .images import IMAGE_SUFFIXES, load_image

__all__ = ["is_sketchy_root", "read_sketchy", "sketchy_photo_id"]

_FOLDERS: dict[str, Modality] = {"sketch": "sketch", "photo": "photo"}


def is_sketchy_root(path: str | Path) -> bool:
    """True when ``path`` has ``sketch/`` and ``photo/`` subfolders."""
    p = Path(path)
    return (p / "sketch").is_dir() and (p / "photo").is_dir()


def sketchy_photo_id(stem: str) -> str:
    """``'n02691156_10151-3'`` -> ``'n02691156_10151'`` (the photo a sketch was drawn from)."""
    head, sep, tail = stem.rpartition("-")
    return head if sep and tail.isdigit() else stem


def _items(
    root: Path, folder: str, strict: bool, on_error: OnError | None, limits: ReadLimits | None
) -> Iterator[Item]:
    modality = _FOLDERS[folder]
    base = root / folder
    for f in sorted(base.rglob("*")):
        rel = f.relative_to(base)
        if f.suffix.lower() not in IMAGE_SUFFIXES or not f.is_file() or any(s.startswith(".") for s in rel.parts):
            continue
        if len(rel.parts) != 2:
            reason = f"not in the Sketchy layout (expected {folder}/<class>/<name>{f.suffix}); not read"
            report(FormatError(f, None, reason), strict, on_error)
            continue
        try:
            img = load_image(f, limits=limits)
        except FormatError as e:
            report(e, strict, on_error)
            continue
        label = f.parent.name
        pair = sketchy_photo_id(f.stem) if modality == "sketch" else f.stem
        meta = {"k": int(f.stem.rpartition("-")[2])} if modality == "sketch" and pair != f.stem else {}
        yield Item(f"{folder}/{label}/{f.stem}", label, modality, str(f), image=img, pair=pair, meta=meta)


def read_sketchy(
    path: str | Path,
    *,
    strict: bool = False,
    on_error: OnError | None = None,
    limit: int | None = None,
    modalities: Sequence[str] = ("sketch", "photo"),
    limits: ReadLimits | None = None,
) -> Iterator[Item]:
    """Sketchy sketches then photos under ``path`` (the folder holding ``sketch/`` and ``photo/``); images are
    decoded within ``limits`` (see ``formats.base``)."""
    root = Path(path)
    require_exists(root)
    if not is_sketchy_root(root):
        raise FormatError(
            root, None, "not a Sketchy folder: expected subfolders 'sketch/<class>/' and 'photo/<class>/'"
        )
    bad = [m for m in modalities if m not in _FOLDERS]
    if bad:
        raise ValueError(f"unknown Sketchy modalities {bad}; valid: {', '.join(_FOLDERS)}")
    items = (it for m in modalities for it in _items(root, m, strict, on_error, limits))
    yield from islice(items, check_limit(limit))


READERS.register("sketchy")(read_sketchy)
