"""Readers for every real sketch / photo format, behind one registry.

``read_any(path)`` picks the reader with :func:`detect_format` (folder layout or file suffix) and streams
:class:`Item` objects; ``READERS.get(name)(path, ...)`` calls a reader by name. Every reader follows the
contract in :mod:`.base` (``strict`` / ``on_error`` / ``limit``; :class:`FormatError` naming file and record).

================  ===========================================================================
name              what it reads
================  ===========================================================================
quickdraw_ndjson  QuickDraw raw / simplified ``.ndjson`` (file or folder)
quickdraw_bin     QuickDraw binary ``.bin``
quickdraw_bitmap  QuickDraw 28x28 ``.npy`` bitmaps and ``.npz`` (images + labels)
quickdraw         any of the three above, by suffix
sketchrnn         sketch-rnn stroke-3 ``.npz`` (object arrays, restricted unpickler)
omniglot          Omniglot ``strokes_*`` / ``images_*`` folders, or one stroke ``.txt``
sketchy           Sketchy ``sketch/`` + ``photo/`` folders (instance pairs)
qmul_v1           QMUL V1 shoes / chairs ``.mat`` (sketch i <-> photo edge map i)
qmul_chairv2      QMUL ChairV2 ``ChairV2_Coordinate`` pickle (restricted unpickler)
kanjivg           KanjiVG SVG files (folder, file, or the installed package)
images            any folder of images, any depth; label = folder; drawing or photo judged from the pixels
================  ===========================================================================
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ...errors import FormatError
from . import images, omniglot, qmul, quickdraw, sketchrnn, sketchy
from .base import READERS, Item, Modality, OnError, Reader
from .images import IMAGE_SUFFIXES, guess_modality, load_image, read_images
from .omniglot import read_omniglot
from .qmul import CHAIRV2_FILE, read_qmul_chairv2, read_qmul_v1
from .quickdraw import (
    iter_quickdraw_files,
    read_quickdraw,
    read_quickdraw_bin,
    read_quickdraw_bitmap,
    read_quickdraw_ndjson,
)
from .safe_pickle import load_npz_untrusted, load_pickle_untrusted
from .sketchrnn import is_sketchrnn_npz, read_sketchrnn
from .sketchy import is_sketchy_root, read_sketchy

try:  # written alongside; optional only while it is being added
    from . import kanjivg  # noqa: F401
except ModuleNotFoundError as e:  # pragma: no cover
    if e.name != f"{__name__}.kanjivg":
        raise

__all__ = [
    "READERS",
    "FormatError",
    "Item",
    "Modality",
    "OnError",
    "Reader",
    "detect_format",
    "guess_modality",
    "iter_quickdraw_files",
    "known_formats",
    "load_image",
    "load_npz_untrusted",
    "load_pickle_untrusted",
    "read_any",
    "read_images",
    "read_omniglot",
    "read_qmul_chairv2",
    "read_qmul_v1",
    "read_quickdraw",
    "read_quickdraw_bin",
    "read_quickdraw_bitmap",
    "read_quickdraw_ndjson",
    "read_sketchrnn",
    "read_sketchy",
]

_ = (images, omniglot, qmul, quickdraw, sketchrnn, sketchy)  # imported for their registrations


def known_formats() -> list[str]:
    """Names of the registered readers."""
    return READERS.names()


def _detect_file(p: Path) -> str | None:
    sfx = p.suffix.lower()
    if sfx in (".ndjson", ".jsonl"):
        return "quickdraw_ndjson"
    if sfx == ".bin":
        return "quickdraw_bin"
    if sfx == ".npy":
        return "quickdraw_bitmap"
    if sfx == ".npz":
        try:
            with zipfile.ZipFile(p) as zf:
                names = {n[:-4] for n in zf.namelist() if n.endswith(".npy")}
        except (OSError, zipfile.BadZipFile) as e:
            raise FormatError(p, None, f"an .npz must be a zip archive of .npy arrays ({e})") from e
        if "images" in names:
            return "quickdraw_bitmap"
        if names & set(sketchrnn.SPLITS):
            return "sketchrnn"
        return None
    if sfx == ".mat":
        return "qmul_v1"
    if p.name == CHAIRV2_FILE or sfx in (".pkl", ".pickle"):
        return "qmul_chairv2"
    if sfx == ".svg":
        return "kanjivg"
    if sfx in IMAGE_SUFFIXES:
        return "images"
    if omniglot.is_omniglot_stroke_file(p):
        return "omniglot"
    return None


def _npz_kind(f: Path) -> str | None:
    """:func:`_detect_file` for an ``.npz`` inside a folder: a corrupt one decides nothing (the reader
    reports it as a bad record) instead of failing the whole folder."""
    try:
        return _detect_file(f)
    except FormatError:
        return None


def _detect_folder(p: Path) -> str | None:
    if is_sketchy_root(p):
        return "sketchy"
    if omniglot.omniglot_roots(p):
        return "omniglot"
    if qmul.qmul_v1_categories(p):
        return "qmul_v1"
    if (p / CHAIRV2_FILE).is_file():
        return "qmul_chairv2"
    files = [f for f in p.iterdir() if f.is_file()]
    suffixes = {f.suffix.lower() for f in files}
    if suffixes & {".ndjson", ".jsonl"}:
        return "quickdraw_ndjson"
    if ".bin" in suffixes:
        return "quickdraw_bin"
    if ".npy" in suffixes or any(f.suffix.lower() == ".npz" and _npz_kind(f) == "quickdraw_bitmap" for f in files):
        return "quickdraw_bitmap"
    if any(f.suffix.lower() == ".npz" and is_sketchrnn_npz(f) for f in files):
        return "sketchrnn"
    if ".svg" in suffixes:
        return "kanjivg"
    if any(True for _ in images.iter_image_files(p)):
        return "images"
    return None


def detect_format(path: str | Path) -> str:
    """The reader name for ``path``: a file by its suffix (and, for ``.npz``, its member names; for ``.txt``,
    an Omniglot stroke file's first line ``START``), a folder by its layout (Sketchy ``sketch/``+``photo/``,
    Omniglot ``strokes_*``/``images_*``, QMUL ``*_sketch_db_*.mat``, ``ChairV2_Coordinate``), else by the
    files directly in it (ndjson, bin, npy/npz, svg), else ``images`` when it holds any image. Raises
    FormatError listing the known formats when nothing matches."""
    p = Path(path)
    if not p.exists():
        raise FormatError(p, None, "no such file or folder")
    name = _detect_file(p) if p.is_file() else _detect_folder(p)
    if name is None or name not in READERS:
        raise FormatError(
            p,
            None,
            f"cannot tell the data format from this {'file' if p.is_file() else 'folder'}; "
            f"known formats: {', '.join(known_formats())} (pass the format name explicitly)",
        )
    return name


def read_any(path: str | Path, *, fmt: str | None = None, **kw: Any) -> Iterator[Item]:
    """Stream the items of ``path`` with the reader ``fmt`` (default: :func:`detect_format`).
    ``kw`` goes to the reader (``strict``, ``on_error``, ``limit`` and reader-specific options).
    Unknown ``fmt`` -> ValueError listing the valid names."""
    name = fmt or detect_format(path)
    return READERS.get(name)(path, **kw)
