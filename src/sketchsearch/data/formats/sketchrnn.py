"""sketch-rnn's stroke-3 ``.npz`` (hardmaru/sketch-rnn-datasets): ``train`` / ``valid`` / ``test`` object
arrays, each element an (n, 3) array of rows ``(dx, dy, pen_lifted_after_point)`` (int16 or float64).

The object arrays are pickles, so they are rebuilt by :func:`safe_pickle.load_npz_untrusted` (numpy arrays
only; a pickle that names any other global is refused). A split is loaded whole (a pickle cannot be read
element by element; the published files are a few MB); items are then yielded one at a time.
Ids are ``"<file name>:<split>:<index>"`` with 0-based indices; labels are None (the sets are unlabelled).
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterator, Sequence
from itertools import islice
from pathlib import Path

import numpy as np

from ...errors import FormatError, InvalidSketchError
from ..sketch import Sketch
from .base import READ_LIMITS, READERS, Item, OnError, ReadLimits, check_limit, read_each, report, require_exists
from .safe_pickle import load_npz_untrusted

__all__ = ["SPLITS", "is_sketchrnn_npz", "read_sketchrnn"]

SPLITS = ("train", "valid", "test")


def is_sketchrnn_npz(path: str | Path) -> bool:
    """True when ``path`` is a zip whose members include ``train.npy`` / ``valid.npy`` / ``test.npy``."""
    try:
        names = _member_names(Path(path))
    except FormatError:
        return False
    return bool(names & set(SPLITS)) and "images" not in names


def _member_names(path: Path) -> set[str]:
    """The array names of an ``.npz``; FormatError(path, None, ...) when it is not a zip archive."""
    try:
        with zipfile.ZipFile(path) as zf:
            return {n[:-4] for n in zf.namelist() if n.endswith(".npy")}
    except (OSError, zipfile.BadZipFile) as e:
        raise FormatError(path, None, f"not an .npz (zip) archive: {e}") from e


def _read_file(
    path: Path, splits: Sequence[str], strict: bool, on_error: OnError | None, limits: ReadLimits
) -> Iterator[Item]:
    present = [s for s in splits if s in _member_names(path)]
    if not present:
        raise FormatError(path, None, f"no stroke-3 split in the file; expected arrays named {', '.join(splits)}")
    for split in present:
        # one split at a time: a refused or corrupt member is a bad record, the other splits are still read
        try:
            arr = load_npz_untrusted(path, keys=lambda k, s=split: k == s, limits=limits)[split]
        except FormatError as e:
            if e.record is None:
                raise
            report(e, strict, on_error)
            continue
        if arr.ndim != 1:
            report(
                FormatError(path, split, f"expected a 1-d array of drawings, got shape {arr.shape}"), strict, on_error
            )
            continue
        for i, d in enumerate(arr):
            record = f"{split}:{i}"
            if not isinstance(d, np.ndarray) or d.ndim != 2 or d.shape[1] != 3 or d.dtype.kind not in "iuf":
                shape = getattr(d, "shape", type(d).__name__)
                report(
                    FormatError(path, record, f"expected an (n, 3) numeric stroke-3 array, got {shape}"),
                    strict,
                    on_error,
                )
                continue
            if len(d) == 0:
                report(FormatError(path, record, "empty drawing (no points)"), strict, on_error)
                continue
            if len(d) > limits.max_points:
                reason = f"{len(d)} points in one drawing, more than {limits.max_points} (ReadLimits.max_points)"
                report(FormatError(path, record, reason), strict, on_error)
                continue
            item_id = f"{path.name}:{record}"
            try:
                sketch = Sketch.from_stroke3(d, id=item_id)
            except InvalidSketchError as e:
                report(FormatError(path, record, str(e)), strict, on_error)
                continue
            yield Item(item_id, None, "sketch", f"{path}:{record}", sketch=sketch, meta={"split": split})


def read_sketchrnn(
    path: str | Path,
    *,
    strict: bool = False,
    on_error: OnError | None = None,
    limit: int | None = None,
    splits: Sequence[str] = SPLITS,
    limits: ReadLimits | None = None,
) -> Iterator[Item]:
    """Drawings of a sketch-rnn ``.npz`` (or of every ``.npz`` directly in a folder), split by split.

    ``meta['split']`` is the split name. Coordinates are as stored (sketch-rnn's y points down). A file
    that is not a readable sketch-rnn archive (not a zip, no split), and a split whose array is refused or
    corrupt (a member over ``limits.max_member_bytes`` decompressed is refused before it is inflated), follow
    the bad-record rule: reported and skipped unless ``strict``; so does a drawing of more than
    ``limits.max_points`` points.
    """
    lim = limits or READ_LIMITS
    path = Path(path)
    require_exists(path)
    files = [path] if path.is_file() else sorted(p for p in path.glob("*.npz") if p.is_file())
    items = read_each(files, lambda f: _read_file(f, tuple(splits), strict, on_error, lim), strict, on_error)
    yield from islice(items, check_limit(limit))


READERS.register("sketchrnn")(read_sketchrnn)
