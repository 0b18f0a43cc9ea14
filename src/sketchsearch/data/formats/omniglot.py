"""Omniglot (brendenlake/omniglot): ``strokes_*/<alphabet>/<character>/<code>_<drawer>.txt`` pen
trajectories and ``images_*/<alphabet>/<character>/<code>_<drawer>.png`` 105x105 binary images.

A stroke file is ``START``, then lines ``x,y,t_ms``, with ``BREAK`` closing each stroke. Omniglot's
stroke y axis points **up** (y values are negative on the 105x105 canvas; the dataset's own
``demo.py`` negates y in ``space_motor_to_img`` before drawing over the image). The reader negates y so
that, as everywhere in sketchsearch, y points down; the strokes then lie on the image's pixel frame
(checked on the data: the flipped strokes fall on the ink of the matching image).

Label = ``"<alphabet>/<character>"``; ``pair`` = ``"<alphabet>/<character>/<code>_<drawer>"`` links a
stroke file to the image of the same drawing. A stroke file or image of a folder is one record: a bad one
follows the bad-record rule (``FormatError(file, line, reason)``), and so does one that is not at
``<alphabet>/<character>/<file>`` (it is reported by name, not read). A ``strokes_*`` / ``images_*``
folder is Omniglot only when it holds such a file: one of class folders only is an image folder.

A single stroke ``.txt`` (:func:`is_omniglot_stroke_file`: its first line is ``START``) reads as one item
without a label, e.g. as the query of ``sketchsearch search``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from itertools import islice
from pathlib import Path

import numpy as np

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
    check_points,
    line_too_long,
    report,
    require_exists,
)
from .images import IMAGE_SUFFIXES, load_image

__all__ = ["is_omniglot_stroke_file", "omniglot_roots", "parse_omniglot_strokes", "read_omniglot"]


def parse_omniglot_strokes(path: str | Path, *, limits: ReadLimits | None = None) -> Sketch:
    """One Omniglot stroke ``.txt`` -> Sketch (y flipped to point down; times in ms).

    Raises FormatError(path, line, reason) for a malformed line or one longer than ``limits.max_line_bytes``
    (read with a bounded readline), FormatError(path, None, ...) when the file has no points or more than
    ``limits.max_points``.
    """
    path = Path(path)
    lim = limits or READ_LIMITS
    try:
        fp = open(path, "rb")  # noqa: SIM115 - closed by the `with fp` below
    except OSError as e:
        raise FormatError(path, None, f"cannot read as text: {e}") from e
    strokes: list[np.ndarray] = []
    times: list[np.ndarray] = []
    current: list[tuple[float, float, float]] = []

    def close() -> None:
        if current:
            a = np.asarray(current, dtype=np.float64)
            strokes.append(np.stack([a[:, 0], -a[:, 1]], axis=1))
            times.append(a[:, 2])
            current.clear()

    n_points = 0
    with fp:
        for lineno, raw in bounded_lines(fp, lim.max_line_bytes):
            if raw is None:
                raise line_too_long(path, lineno, lim.max_line_bytes)
            try:
                line = raw.decode("utf-8").strip()
            except UnicodeDecodeError as e:
                raise FormatError(path, lineno, f"cannot read as text: {e}") from e
            if not line or line == "START":
                continue
            if line == "BREAK":
                close()
                continue
            parts = line.split(",")
            try:
                if len(parts) != 3:
                    raise ValueError
                x, y, t = (float(p) for p in parts)
            except ValueError:
                raise FormatError(path, lineno, f"expected 'x,y,t', START or BREAK, got {line[:40]!r}") from None
            if not all(np.isfinite((x, y, t))):
                raise FormatError(path, lineno, f"non-finite value in {line[:40]!r}")
            n_points += 1
            check_points(path, None, n_points, lim)
            current.append((x, y, t))
    close()  # a file may end without its last BREAK
    try:
        sketch = Sketch(strokes, times)
    except InvalidSketchError as e:  # pragma: no cover - guarded above
        raise FormatError(path, None, str(e)) from e
    if sketch.is_empty:
        raise FormatError(path, None, "no points (expected START, lines 'x,y,t' and BREAK)")
    return sketch


def is_omniglot_stroke_file(path: str | Path) -> bool:
    """Whether ``path`` is a ``.txt`` file whose first non-blank line is ``START`` (an Omniglot stroke file);
    only its first 64 bytes are read."""
    path = Path(path)
    if path.suffix.lower() != ".txt" or not path.is_file():
        return False
    try:
        with path.open("rb") as f:
            head = f.read(64)
    except OSError:
        return False
    return head.lstrip().split(b"\n", 1)[0].strip() == b"START"


#: the files each kind of Omniglot folder holds
_SUFFIXES = {"strokes": (".txt",), "images": IMAGE_SUFFIXES}


def _layout_files(kind: str, root: Path) -> Iterator[tuple[Path, bool]]:
    """(file, in layout) for every file of ``kind`` under ``root`` (sorted; hidden files and folders skipped):
    in layout = at ``<alphabet>/<character>/<file>``."""
    for f in sorted(root.rglob("*")):
        rel = f.relative_to(root)
        if f.suffix.lower() in _SUFFIXES[kind] and f.is_file() and not any(s.startswith(".") for s in rel.parts):
            yield f, len(rel.parts) == 3


def _kind(p: Path) -> str | None:
    """'strokes' / 'images' for a folder named ``strokes_*`` / ``images_*`` holding at least one file of its
    kind at ``<alphabet>/<character>/<file>`` (a folder of class folders only is not Omniglot), else None."""
    for k in ("strokes", "images"):
        if (
            p.name.startswith(f"{k}_")
            and p.is_dir()
            and any(f.suffix.lower() in _SUFFIXES[k] and f.is_file() for f in p.glob("*/*/*"))
        ):
            return k
    return None


def omniglot_roots(path: str | Path) -> list[tuple[str, Path]]:
    """(kind, folder) pairs, kind 'strokes' or 'images': ``path`` itself when it is an Omniglot ``strokes_*``
    / ``images_*`` folder, else its children that are (see :func:`_kind`)."""
    path = Path(path)
    require_exists(path)
    if path.is_file():
        return []
    if kind := _kind(path):
        return [(kind, path)]
    return [(k, p) for p in sorted(path.iterdir()) if (k := _kind(p))]


def _items(kind: str, root: Path, strict: bool, on_error: OnError | None, limits: ReadLimits) -> Iterator[Item]:
    for f, in_layout in _layout_files(kind, root):
        if not in_layout:
            where = f"{root.name}/<alphabet>/<character>/{'<name>.txt' if kind == 'strokes' else '<name>.png'}"
            report(
                FormatError(f, None, f"not in the Omniglot layout (expected {where}); not read"),
                strict,
                on_error,
            )
            continue
        alphabet, character = f.parent.parent.name, f.parent.name
        label = f"{alphabet}/{character}"
        pair = f"{label}/{f.stem}"
        drawer = f.stem.rsplit("_", 1)[-1]
        meta = {
            "set": root.name.split("_", 1)[-1],
            "alphabet": alphabet,
            "drawer": int(drawer) if drawer.isdigit() else drawer,
        }
        try:
            if kind == "strokes":
                sketch = parse_omniglot_strokes(f, limits=limits)
                sketch.label, sketch.id = label, f"strokes:{pair}"
                yield Item(sketch.id, label, "sketch", str(f), sketch=sketch, pair=pair, meta=meta)
            else:
                img = load_image(f, limits=limits)
                yield Item(f"images:{pair}", label, "sketch", str(f), image=img, pair=pair, meta=meta)
        except FormatError as e:
            report(e, strict, on_error)


def read_omniglot(
    path: str | Path,
    *,
    strict: bool = False,
    on_error: OnError | None = None,
    limit: int | None = None,
    kinds: Sequence[str] = ("strokes", "images"),
    limits: ReadLimits | None = None,
) -> Iterator[Item]:
    """Omniglot drawings under ``path`` (the folder holding ``strokes_*`` / ``images_*``, or one of those), or
    the one drawing of a stroke ``.txt`` file (label None, id ``strokes:<file stem>``).

    Stroke items carry ``sketch`` (y down, times in ms); image items carry ``image`` uint8 (105, 105), black
    ink (0) on white (255), as on disk. ``kinds`` selects 'strokes' and/or 'images'. ``limits``: see
    ``formats.base`` (a stroke file over ``max_points`` or with a line over ``max_line_bytes`` is a bad record).
    """
    lim = limits or READ_LIMITS
    if Path(path).is_file() and "strokes" in kinds:
        if not is_omniglot_stroke_file(path):
            raise FormatError(path, None, "not an Omniglot stroke file (a .txt whose first line is START)")
        if check_limit(limit) == 0:
            return
        try:
            sketch = parse_omniglot_strokes(path, limits=lim)
        except FormatError as e:  # the file is its one record: the bad-record rule
            report(e, strict, on_error)
            return
        sketch.id = f"strokes:{Path(path).stem}"
        yield Item(sketch.id, None, "sketch", str(path), sketch=sketch)
        return
    roots = [(k, r) for k, r in omniglot_roots(path) if k in kinds]
    if not roots:
        raise FormatError(path, None, "no Omniglot 'strokes_*' or 'images_*' folder here")
    items = (it for k, r in roots for it in _items(k, r, strict, on_error, lim))
    yield from islice(items, check_limit(limit))


READERS.register("omniglot")(read_omniglot)
