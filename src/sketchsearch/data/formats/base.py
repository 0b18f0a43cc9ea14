"""What every reader yields (:class:`Item`), the reader registry, and the one rule for bad records.

Every reader is a generator ``read_xxx(path, *, strict=False, on_error=None, limit=None) -> Iterator[Item]``:

* a bad *record* (a line, an array element, a file of a folder) raises :class:`FormatError` under
  ``strict``; otherwise it is passed to ``on_error`` (when given) and skipped: the caller counts skips;
* a data *file* that cannot be read at all (corrupt, truncated archive, refused pickle, wrong dtype) is a
  bad record too, ``FormatError(file, None or member, reason)``: under ``strict`` it raises, otherwise it
  is reported and skipped and the other files are still read (:func:`read_each`). Items a file yielded
  before the problem was found are kept;
* a bad *path* (missing, or not this format's layout or file name at all) always raises;
* ``limit`` stops after that many items have been yielded;
* ``limits`` (:class:`ReadLimits`, default :data:`READ_LIMITS`) bounds the memory one record may cost: an
  ``.npz`` member or ``.mat`` variable larger than ``max_member_bytes`` once decompressed, an ndjson line
  longer than ``max_line_bytes``, a drawing of more than ``max_points`` points, an image over its decode
  budget, each is a bad record refused *before* it is decompressed, parsed or decoded.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import IO, Any, Literal, Protocol

import numpy as np

from ...errors import FormatError
from ...registry import Registry
from ..sketch import Sketch

__all__ = [
    "READERS",
    "READ_LIMITS",
    "FormatError",
    "Item",
    "Modality",
    "OnError",
    "ReadLimits",
    "Reader",
    "bounded_lines",
    "check_limit",
    "check_npy_member",
    "check_points",
    "line_too_long",
    "read_each",
    "report",
    "require_exists",
]

Modality = Literal["sketch", "photo"]
OnError = Callable[[FormatError], None]

MiB = 1024 * 1024


@dataclass(frozen=True)
class ReadLimits:
    """How much memory one record of a data file may cost; over a bound, the record is refused (a bad record,
    see the module docstring) before the work it guards. One place for the readers' defaults (:data:`READ_LIMITS`).

    The published datasets are far inside them: QuickDraw lines are < 100 KB and < 3,000 points, sketch-rnn
    drawings < 1,000 points, QMUL ``.mat`` variables <= 20 MB, Sketchy / Omniglot images <= 256 px a side.
    """

    #: one ``.npz`` member or ``.mat`` variable, decompressed (from the zip directory / the array header /
    #: counting the inflated bytes, never by inflating into memory)
    max_member_bytes: int = 512 * MiB
    #: one ndjson line (or Omniglot stroke-file line), without its line ending; read with a bounded readline
    max_line_bytes: int = 4 * MiB
    #: points of one drawing, over all its strokes (every stroke reader)
    max_points: int = 100_000
    #: declared width x height of one image, read from its header (Pillow's bomb check is kept as well)
    max_pixels: int = 64 * MiB
    #: decode budget of one image: width x height x bytes per pixel of the file's own mode (16-bit and alpha
    #: counted), after JPEG's draft scaling, from the header, before any pixel is decoded
    max_decode_bytes: int = 256 * MiB
    #: images are reduced to at most this many pixels a side on decode (drawings and photos are encoded at
    #: <= 256 px); None keeps the full size
    max_image_side: int | None = 1024

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if v is None and f.name == "max_image_side":
                continue
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"ReadLimits.{f.name} must be an int >= 1, got {v!r}")


#: The readers' default bounds.
READ_LIMITS = ReadLimits()


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


def bounded_lines(fp: IO[bytes], max_bytes: int) -> Iterator[tuple[int, bytes | None]]:
    """(line number from 1, raw line with its ending) for each line of ``fp``, reading at most ``max_bytes`` + 1
    bytes at a time: a line longer than ``max_bytes`` (without its ending) is read past in chunks, never held
    whole, and yielded as ``(lineno, None)`` so the caller reports it and reading goes on at the next line."""
    lineno = 0
    while True:
        raw = fp.readline(max_bytes + 1)
        if not raw:
            return
        lineno += 1
        if len(raw) <= max_bytes or raw.endswith(b"\n"):
            yield lineno, raw
            continue
        while raw and not raw.endswith(b"\n"):  # skip the rest of the long line, a chunk at a time
            raw = fp.readline(min(max_bytes, MiB) + 1)
        yield lineno, None


def line_too_long(path: Path, lineno: int, max_bytes: int) -> FormatError:
    """The error of a line over ``max_bytes`` (see :func:`bounded_lines`)."""
    return FormatError(path, lineno, f"line longer than {max_bytes} bytes (ReadLimits.max_line_bytes); it is not read")


def check_points(path: str | Path, record: int | str | None, n_points: int, limits: ReadLimits) -> None:
    """FormatError when one drawing has more than ``limits.max_points`` points."""
    if n_points > limits.max_points:
        raise FormatError(
            path, record, f"{n_points} points in one drawing, more than {limits.max_points} (ReadLimits.max_points)"
        )


def check_npy_member(
    path: str | Path, member: str, file_size: int, shape: tuple[int, ...], itemsize: int, limits: ReadLimits
) -> None:
    """FormatError(path, member) when an ``.npz`` member decompresses to more than ``limits.max_member_bytes``,
    judged from the zip directory's ``file_size`` (zipfile never inflates past it) and from the ``.npy``
    header's shape x itemsize (numpy allocates that before reading), before the array is read."""
    cap = limits.max_member_bytes
    if file_size > cap:
        raise FormatError(
            path,
            member,
            f"the member decompresses to {file_size} bytes, more than {cap} (ReadLimits.max_member_bytes); "
            "a zip bomb, or raise the limit",
        )
    n = 1
    for d in shape:
        n *= int(d)
    if n * itemsize > cap:
        raise FormatError(
            path,
            member,
            f"the array header declares shape {tuple(shape)} = {n * itemsize} bytes, more than {cap} "
            "(ReadLimits.max_member_bytes)",
        )


def require_exists(path: Path) -> None:
    """Whole-file problem: the path does not exist."""
    if not path.exists():
        raise FormatError(path, None, "no such file or folder")
