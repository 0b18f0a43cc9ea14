"""Google Quick, Draw! in its four published forms, read one record at a time.

* **raw ndjson**: one JSON object a line; ``drawing`` = strokes ``[[x...], [y...], [t...]]`` (floats,
  t in ms from the first point) -> ``Sketch.times``;
* **simplified ndjson**: strokes ``[[x...], [y...]]``, ints in a 0-255 box (RDP-simplified);
* **binary** (``.bin``, the ``struct`` layout Google documents): per drawing ``key_id`` uint64,
  ``countrycode`` 2 bytes, ``recognized`` uint8, ``timestamp`` uint32, ``n_strokes`` uint16, then per
  stroke ``n_points`` uint16, ``x`` uint8 * n, ``y`` uint8 * n (all little-endian);
* **28x28 bitmaps**: ``.npy`` uint8 of shape (N, 784) / (N, 1, 784) / (N, 28, 28) / (N, 1, 28, 28),
  memory-mapped; and an ``.npz`` with ``images`` and integer ``labels``.

The label is the ``word`` field, else the file stem. Coordinates are kept as given (y points down in
every QuickDraw form). Ndjson lines are numbered from 1; array records (``.npy``/``.npz``/``.bin``) from 0,
as numpy indexes them.
"""

from __future__ import annotations

import json
import struct
import zipfile
import zlib
from collections.abc import Iterable, Iterator
from itertools import islice
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import numpy.lib.format as npformat

from ...errors import FormatError, InvalidSketchError
from ..sketch import Sketch
from .base import (
    READ_LIMITS,
    READERS,
    Item,
    OnError,
    ReadLimits,
    bounded_lines,
    check_limit,
    check_npy_member,
    check_points,
    line_too_long,
    read_each,
    report,
    require_exists,
)

__all__ = [
    "QUICKDRAW_SUFFIXES",
    "iter_quickdraw_files",
    "parse_quickdraw_record",
    "read_quickdraw",
    "read_quickdraw_bin",
    "read_quickdraw_bitmap",
    "read_quickdraw_ndjson",
]

QUICKDRAW_SUFFIXES = (".ndjson", ".bin", ".npy", ".npz")
_NDJSON_SUFFIXES = (".ndjson", ".jsonl")


def iter_quickdraw_files(folder: str | Path, suffixes: Iterable[str] = QUICKDRAW_SUFFIXES) -> Iterator[Path]:
    """The QuickDraw files directly in ``folder`` (sorted by name) whose suffix is in ``suffixes``.

    A file path is yielded as is. Raises FormatError when ``folder`` does not exist.
    """
    folder = Path(folder)
    require_exists(folder)
    if folder.is_file():
        yield folder
        return
    sfx = tuple(s.lower() for s in suffixes)
    yield from sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in sfx)


# ---------------------------------------------------------------------------------------------- ndjson
def _numbers(values: Any, what: str) -> np.ndarray:
    """A JSON list of numbers -> float64 (n,); raises ValueError naming ``what`` otherwise."""
    if not isinstance(values, list):
        raise ValueError(f"{what} must be a list of numbers, got {type(values).__name__}")  # noqa: TRY004 - bad data, not a bad call
    arr = np.asarray(values) if values else np.zeros(0)
    if arr.ndim != 1 or arr.dtype.kind not in "iuf":
        raise ValueError(f"{what} must be a list of numbers")
    return arr.astype(np.float64)


def parse_quickdraw_record(
    obj: Any, *, default_label: str | None = None, max_points: int | None = None
) -> tuple[Sketch, str, dict[str, Any]]:
    """One decoded QuickDraw JSON object -> (sketch, format name ``"raw"``/``"simplified"``, meta).

    Raises ValueError with the offending field named when the record is not a QuickDraw drawing, or when it
    has more than ``max_points`` points (None: no bound).
    """
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")  # noqa: TRY004
    if "drawing" not in obj:
        raise ValueError("missing field 'drawing'")
    drawing = obj["drawing"]
    if not isinstance(drawing, list):
        raise ValueError(f"field 'drawing' must be a list of strokes, got {type(drawing).__name__}")  # noqa: TRY004
    if not drawing:
        raise ValueError("empty drawing (no strokes)")
    word = obj.get("word", default_label)
    if word is not None and not isinstance(word, str):
        raise ValueError(f"field 'word' must be a string, got {type(word).__name__}")
    first = drawing[0]
    width = len(first) if isinstance(first, list) else -1
    if width not in (2, 3):
        raise ValueError("drawing[0] must be [[x...], [y...]] (simplified) or [[x...], [y...], [t...]] (raw)")
    strokes: list[np.ndarray] = []
    times: list[np.ndarray] | None = [] if width == 3 else None
    n_points = 0
    for i, stroke in enumerate(drawing):
        if not isinstance(stroke, list) or len(stroke) != width:
            raise ValueError(f"drawing[{i}] must be a list of {width} lists like drawing[0]")
        n_points += len(stroke[0]) if isinstance(stroke[0], list) else 0
        if max_points is not None and n_points > max_points:
            raise ValueError(
                f"more than {max_points} points in one drawing (ReadLimits.max_points; {n_points} by drawing[{i}])"
            )
        xs = _numbers(stroke[0], f"drawing[{i}][0] (x)")
        ys = _numbers(stroke[1], f"drawing[{i}][1] (y)")
        if len(xs) != len(ys):
            raise ValueError(f"drawing[{i}]: {len(xs)} x values but {len(ys)} y values")
        strokes.append(np.stack([xs, ys], axis=1) if len(xs) else np.zeros((0, 2)))
        if times is not None:
            ts = _numbers(stroke[2], f"drawing[{i}][2] (t)")
            if len(ts) != len(xs):
                raise ValueError(f"drawing[{i}]: {len(xs)} points but {len(ts)} times")
            times.append(ts)
    try:
        sketch = Sketch(strokes, times, label=word)
    except InvalidSketchError as e:
        raise ValueError(str(e)) from e
    if sketch.is_empty:
        raise ValueError("empty drawing (its strokes have no points)")
    meta = {k: obj[k] for k in ("countrycode", "recognized", "timestamp") if k in obj}
    return sketch, ("raw" if width == 3 else "simplified"), meta


def _json_reason(e: json.JSONDecodeError, text: str, last_line: bool) -> str:
    """A readable reason for a JSON error of one line (``text`` without its line ending). ``e.msg`` alone
    can end mid-sentence ("Unterminated string starting at"): the column is always appended to it."""
    detail = f"{e.msg}: column {e.colno}"
    # An error at the very end of the text means the record stopped before it was complete.
    if e.pos >= len(text.rstrip()) or e.msg.startswith("Unterminated string"):
        where = "at the end of the file" if last_line else "(cut short)"
        return f"truncated record {where}: JSON ends after {len(text.rstrip())} characters ({detail})"
    return f"not valid JSON ({detail})"


def _read_ndjson_file(path: Path, strict: bool, on_error: OnError | None, limits: ReadLimits) -> Iterator[Item]:
    stem = path.stem
    try:
        fp: BinaryIO = open(path, "rb")  # noqa: SIM115 - closed by the `with fp` below
    except OSError as e:
        raise FormatError(path, None, f"cannot open: {e.strerror or e}") from e
    with fp:
        # a bounded readline: a line over max_line_bytes is never held whole; it is one bad record
        for lineno, raw in bounded_lines(fp, limits.max_line_bytes):
            if raw is None:
                report(line_too_long(path, lineno, limits.max_line_bytes), strict, on_error)
                continue
            if not raw.strip():
                continue  # blank lines carry no record
            last = not raw.endswith(b"\n")
            try:
                # without its line ending: a line cut inside a string would otherwise fail on the newline
                # ("Invalid control character") instead of at the string it interrupts
                text = raw.rstrip(b"\r\n").decode("utf-8")
            except UnicodeDecodeError as e:
                report(
                    FormatError(path, lineno, f"not UTF-8 text ({e.reason} at byte {e.start})"),
                    strict,
                    on_error,
                )
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as e:
                report(FormatError(path, lineno, _json_reason(e, text, last)), strict, on_error)
                continue
            try:
                sketch, kind, meta = parse_quickdraw_record(obj, default_label=stem, max_points=limits.max_points)
            except ValueError as e:
                report(FormatError(path, lineno, str(e)), strict, on_error)
                continue
            key = obj.get("key_id")
            item_id = str(key) if isinstance(key, (str, int)) and not isinstance(key, bool) else f"{stem}:{lineno}"
            sketch.id = item_id
            meta["quickdraw_format"] = kind
            yield Item(item_id, sketch.label, "sketch", f"{path}:{lineno}", sketch=sketch, meta=meta)


def read_quickdraw_ndjson(
    path: str | Path,
    *,
    strict: bool = False,
    on_error: OnError | None = None,
    limit: int | None = None,
    limits: ReadLimits | None = None,
) -> Iterator[Item]:
    """Raw or simplified QuickDraw ndjson: one file, or every ``*.ndjson`` in a folder.

    Yields one sketch Item per line; raw strokes carry ``times`` (ms). ``meta['quickdraw_format']`` says
    which form a line was. Bad lines (truncated, non-JSON, missing or mistyped field, empty drawing,
    x/y length mismatch, a line over ``limits.max_line_bytes``, more than ``limits.max_points`` points)
    follow the bad-record rule (see ``formats.base``).
    """
    lim = limits or READ_LIMITS
    files = iter_quickdraw_files(path, _NDJSON_SUFFIXES)
    items = read_each(files, lambda f: _read_ndjson_file(f, strict, on_error, lim), strict, on_error)
    yield from islice(items, check_limit(limit))


READERS.register("quickdraw_ndjson")(read_quickdraw_ndjson)


# ---------------------------------------------------------------------------------------------- binary
_HEAD = struct.Struct("<Q2sBIH")  # key_id, countrycode, recognized, timestamp, n_strokes


def _read_exact(fp: BinaryIO, n: int, what: str) -> bytes:
    data = fp.read(n)
    if len(data) != n:
        raise EOFError(f"truncated record: expected {n} bytes of {what}, got {len(data)}")
    return data


def _read_bin_file(path: Path, strict: bool, on_error: OnError | None, limits: ReadLimits) -> Iterator[Item]:
    stem = path.stem
    try:
        fp: BinaryIO = open(path, "rb")  # noqa: SIM115 - closed by the `with fp` below
    except OSError as e:
        raise FormatError(path, None, f"cannot open: {e.strerror or e}") from e
    with fp:
        index = 0
        while True:
            head = fp.read(_HEAD.size)
            if not head:
                return
            try:
                if len(head) != _HEAD.size:
                    raise EOFError(f"truncated record: expected a {_HEAD.size}-byte header, got {len(head)}")
                key_id, country, recognized, timestamp, n_strokes = _HEAD.unpack(head)
                strokes = []
                n_points = 0
                for s in range(n_strokes):
                    (n,) = struct.unpack("<H", _read_exact(fp, 2, f"stroke {s} point count"))
                    n_points += n
                    if n_points > limits.max_points:  # read past the rest of the record, keeping nothing
                        fp.seek(2 * n, 1)
                        strokes.clear()
                        continue
                    xy = np.frombuffer(_read_exact(fp, 2 * n, f"stroke {s} points"), dtype=np.uint8)
                    strokes.append(np.stack([xy[:n], xy[n:]], axis=1).astype(np.float32))
                if n_points > limits.max_points and fp.tell() > path.stat().st_size:
                    raise EOFError(f"truncated record: its {n_strokes} strokes run past the end of the file")
            except EOFError as e:
                # The layout has no record delimiter, so nothing after a short read can be trusted.
                report(FormatError(path, index, f"{e}; the rest of the file is skipped"), strict, on_error)
                return
            try:
                check_points(path, index, n_points, limits)
            except FormatError as e:
                report(e, strict, on_error)
                index += 1
                continue
            sketch = Sketch(strokes, label=stem, id=str(key_id))
            if sketch.is_empty:
                report(FormatError(path, index, "empty drawing (no points)"), strict, on_error)
                index += 1
                continue
            meta = {
                "countrycode": country.decode("latin-1").rstrip("\x00"),
                "recognized": bool(recognized),
                "timestamp": int(timestamp),
                "quickdraw_format": "binary",
            }
            yield Item(str(key_id), stem, "sketch", f"{path}:{index}", sketch=sketch, meta=meta)
            index += 1


def read_quickdraw_bin(
    path: str | Path,
    *,
    strict: bool = False,
    on_error: OnError | None = None,
    limit: int | None = None,
    limits: ReadLimits | None = None,
) -> Iterator[Item]:
    """QuickDraw's binary ``.bin`` files (one file or a folder of them); label = file stem.

    A truncated record is reported and ends that file (the format cannot resynchronise). A drawing of more
    than ``limits.max_points`` points is reported and skipped (its points are read past, not kept).
    """
    lim = limits or READ_LIMITS
    files = iter_quickdraw_files(path, (".bin",))
    items = read_each(files, lambda f: _read_bin_file(f, strict, on_error, lim), strict, on_error)
    yield from islice(items, check_limit(limit))


READERS.register("quickdraw_bin")(read_quickdraw_bin)


# ---------------------------------------------------------------------------------------------- bitmaps
def _as_bitmaps(arr: np.ndarray, path: Path, key: str | None) -> np.ndarray:
    """(N, 784) / (N, 1, 784) / (N, 28, 28) / (N, 1, 28, 28) uint8 -> (N, 28, 28) view (no copy)."""
    what = f"array {key!r}" if key else "array"
    if arr.dtype != np.uint8:
        raise FormatError(path, None, f"{what} has dtype {arr.dtype}, expected uint8 28x28 bitmaps")
    if arr.ndim >= 2 and int(np.prod(arr.shape[1:])) == 784 and arr.shape[-1] in (784, 28):
        return arr.reshape(len(arr), 28, 28)
    raise FormatError(path, None, f"{what} has shape {arr.shape}, expected (N, 784), (N, 1, 784) or (N, 1, 28, 28)")


def _npz_label_names(path: Path, data: Any, labels: np.ndarray) -> list[str] | None:
    """Class names for integer labels: a ``names``/``classes`` array in the file, else the file stem split
    on '_' when it names exactly as many classes as the labels use (``cat_fish_apple_bicycle.npz``:
    label 0 = cat ..., checked against the per-class ``.npy`` files: the mean images match, r > 0.99)."""
    for key in ("names", "classes", "label_names"):
        if key in data.files:
            return [str(n) for n in data[key].tolist()]
    parts = path.stem.split("_")
    if labels.size and labels.min() >= 0 and labels.max() == len(parts) - 1:
        return parts
    return None


def _check_npz(path: Path, limits: ReadLimits) -> None:
    """Every ``.npy`` member of the ``.npz`` at ``path`` within ``limits.max_member_bytes`` decompressed, from
    the zip directory and each member's array header (a few hundred bytes inflated), before numpy reads it."""
    with zipfile.ZipFile(path) as zf:
        for info in zf.infolist():
            if not info.filename.endswith(".npy"):
                continue
            member = info.filename[:-4]
            check_npy_member(path, member, info.file_size, (), 1, limits)
            with zf.open(info) as fp:
                try:
                    version = npformat.read_magic(fp)
                    if version == (1, 0):
                        shape, _, dtype = npformat.read_array_header_1_0(fp)
                    else:
                        shape, _, dtype = npformat.read_array_header_2_0(fp)
                except ValueError as e:
                    raise FormatError(path, member, f"not a .npy member ({e})") from e
            check_npy_member(path, member, info.file_size, shape, dtype.itemsize, limits)


def _read_bitmap_file(path: Path, strict: bool, on_error: OnError | None, limits: ReadLimits) -> Iterator[Item]:
    try:
        if path.suffix.lower() == ".npz":
            _check_npz(path, limits)
            with np.load(path, allow_pickle=False) as data:
                if "images" not in data.files or "labels" not in data.files:
                    raise FormatError(path, None, f"expected arrays 'images' and 'labels', found {data.files}")
                images = _as_bitmaps(data["images"], path, "images")
                labels = np.asarray(data["labels"]).reshape(-1)
                if len(labels) != len(images) or labels.dtype.kind not in "iu":
                    raise FormatError(
                        path,
                        None,
                        f"'labels' must hold {len(images)} integers, got {labels.shape} {labels.dtype}",
                    )
                names = _npz_label_names(path, data, labels)
        else:
            images = _as_bitmaps(np.load(path, mmap_mode="r", allow_pickle=False), path, None)
            labels, names = None, None
    except FormatError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as e:
        # not .npy/.npz, pickled object array, truncated, corrupt archive member
        raise FormatError(path, None, f"not a readable numpy bitmap file ({e})") from e
    stem = path.stem
    for i in range(len(images)):
        if labels is None:
            label = stem
        else:
            li = int(labels[i])
            label = names[li] if names is not None and 0 <= li < len(names) else str(li)
        img = np.array(images[i])  # copy out of the memory map
        yield Item(f"{path.name}:{i}", label, "sketch", f"{path}:{i}", image=img, meta={"quickdraw_format": "bitmap"})


def read_quickdraw_bitmap(
    path: str | Path,
    *,
    strict: bool = False,
    on_error: OnError | None = None,
    limit: int | None = None,
    limits: ReadLimits | None = None,
) -> Iterator[Item]:
    """QuickDraw 28x28 bitmaps: ``.npy`` (label = stem, memory-mapped) or ``.npz`` (images + labels), a file
    or a folder of them. Items carry ``image`` uint8 (28, 28), ink > 0 on 0 background. An ``.npz`` with a
    member over ``limits.max_member_bytes`` decompressed (a zip bomb) is refused before it is inflated."""
    lim = limits or READ_LIMITS
    files = iter_quickdraw_files(path, (".npy", ".npz"))
    items = read_each(files, lambda f: _read_bitmap_file(f, strict, on_error, lim), strict, on_error)
    yield from islice(items, check_limit(limit))


READERS.register("quickdraw_bitmap")(read_quickdraw_bitmap)


def read_quickdraw(
    path: str | Path,
    *,
    strict: bool = False,
    on_error: OnError | None = None,
    limit: int | None = None,
    limits: ReadLimits | None = None,
) -> Iterator[Item]:
    """Any QuickDraw file, or every QuickDraw file directly in a folder, each read by its suffix."""
    lim = limits or READ_LIMITS
    readers = {
        ".ndjson": _read_ndjson_file,
        ".jsonl": _read_ndjson_file,
        ".bin": _read_bin_file,
        ".npy": _read_bitmap_file,
        ".npz": _read_bitmap_file,
    }
    files = list(iter_quickdraw_files(path, tuple(readers)))
    if Path(path).is_file() and Path(path).suffix.lower() not in readers:
        raise FormatError(path, None, f"not a QuickDraw file; expected one of {', '.join(readers)}")
    items = read_each(files, lambda f: readers[f.suffix.lower()](f, strict, on_error, lim), strict, on_error)
    yield from islice(items, check_limit(limit))


READERS.register("quickdraw")(read_quickdraw)
