"""What every reader yields (:class:`Item`), the reader registry, and the one rule for bad records.

Every reader is a generator ``read_xxx(path, *, strict=False, on_error=None, limit=None) -> Iterator[Item]``:

* a bad *record* (a line, an array element, a file of a folder) raises :class:`FormatError` under
  ``strict``; otherwise it is passed to ``on_error`` (when given) and skipped: the caller counts skips;
* a bad *file as a whole* (not the expected format at all) always raises ``FormatError(file, None, reason)``;
* ``limit`` stops after that many items have been yielded.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
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


def check_limit(limit: int | None) -> int | None:
    """Validate the ``limit`` argument (None = no limit)."""
    if limit is not None and (not isinstance(limit, int) or limit < 0):
        raise ValueError(f"limit must be a non-negative int or None, got {limit!r}")
    return limit


def require_exists(path: Path) -> None:
    """Whole-file problem: the path does not exist."""
    if not path.exists():
        raise FormatError(path, None, "no such file or folder")
