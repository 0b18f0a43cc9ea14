"""What every reader yields (:class:`Item`), the reader registry, and the one rule for bad records.

Every reader is a generator ``read_xxx(path, *, strict=False, on_error=None, limit=None) -> Iterator[Item]``:

* a bad *record* (a line, an array element, a file of a folder) raises :class:`FormatError` under
  ``strict``; otherwise it is passed to ``on_error`` (when given) and skipped: the caller counts skips;
* a data *file* that cannot be read at all (corrupt, truncated archive, refused pickle, wrong dtype) is a
  bad record too, ``FormatError(file, None or member, reason)``: under ``strict`` it raises, otherwise it
  is reported and skipped and the other files are still read (:func:`read_each`). Items a file yielded
  before the problem was found are kept;
* a bad *path* (missing, or not this format's layout or file name at all) always raises;
* ``limit`` stops after that many items have been yielded.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

from ...errors import FormatError
from ...registry import Registry
from ..sketch import Sketch

__all__ = [
    "READERS",
    "FormatError",
    "Item",
    "Modality",
    "OnError",
    "Reader",
    "check_limit",
    "read_each",
    "report",
    "require_exists",
]

Modality = Literal["sketch", "photo"]
OnError = Callable[[FormatError], None]


@dataclass
class Item:
    """One drawing or photo read from a dataset.

    ``id``: unique within its dataset (e.g. a QuickDraw ``key_id`` or ``"omniglot.npz:train:17"``);
    ``label``: class name or None (unlabelled data); ``source``: file path and record (``"cat.ndjson:17"``);
    ``sketch``: the strokes when the format has them; ``image``: uint8 (H, W) or (H, W, 3) for raster data;
    ``pair``: instance id shared by a sketch and the photo it was drawn from (Sketchy, QMUL), else None;
    ``meta``: format-specific extras (country code, split, drawer ...), JSON-serialisable values.
    """

    id: str
    label: str | None
    modality: Modality
    source: str
    sketch: Sketch | None = None
    image: np.ndarray | None = None
    pair: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)


class Reader(Protocol):
    def __call__(
        self,
        path: str | Path,
        *,
        strict: bool = False,
        on_error: OnError | None = None,
        limit: int | None = None,
    ) -> Iterator[Item]: ...


#: name -> reader. Each format module registers its readers at import; ``formats/__init__`` imports them all.
READERS: Registry[Iterator[Item]] = Registry("data format")


def report(err: FormatError, strict: bool, on_error: OnError | None) -> None:
    """Apply the bad-record rule: raise under ``strict``, else hand ``err`` to ``on_error`` (if any)."""
    if strict:
        raise err
    if on_error is not None:
        on_error(err)


def read_each(
    files: Iterable[Path],
    read_file: Callable[[Path], Iterator[Item]],
    strict: bool,
    on_error: OnError | None,
) -> Iterator[Item]:
    """The items of every file, in order. A :class:`FormatError` that ends a file (the file as a whole is
    unreadable) follows the bad-record rule, so one bad file neither hides the others nor stops the read
    unless ``strict``. (Bad records inside a file are reported by ``read_file`` itself and never get here
    except under ``strict``, where they are raised again unchanged.)"""
    for f in files:
        try:
            yield from read_file(f)
        except FormatError as e:
            report(e, strict, on_error)


def check_limit(limit: int | None) -> int | None:
    """Validate the ``limit`` argument (None = no limit)."""
    if limit is not None and (not isinstance(limit, int) or limit < 0):
        raise ValueError(f"limit must be a non-negative int or None, got {limit!r}")
    return limit


def require_exists(path: Path) -> None:
    """Whole-file problem: the path does not exist."""
    if not path.exists():
        raise FormatError(path, None, "no such file or folder")
