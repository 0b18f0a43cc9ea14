"""QMUL fine-grained sketch-based image retrieval data.

* **V1 shoes / chairs** (``<category>/<category>_{sketch,edge}_db_{train,test}.mat``, MATLAB v5 read by
  ``scipy.io.loadmat``): key ``data`` (N, 256, 256) uint8, black lines on white; sketch i was drawn from
  the photo whose edge map is i. Sketches are yielded as ``modality="sketch"`` and edge maps as
  ``modality="photo"`` (``meta['kind'] = 'edge_map'``); both share ``pair``. When
  ``<category>_annotation.json`` lists the split's photo names (``"305.jpg"``), the pair is
  ``"<category>/<photo stem>"``, else ``"<category>/<split>/<i>"`` (0-based).
* **ChairV2 coordinates** (``ChairV2_Coordinate``): a pickled dict ``'/<split>/<photo_id>_<k>'`` -> float
  (P, 3) rows ``[x, y, pen_lifted_after_point]`` on a 256 canvas (y down), read with the restricted
  unpickler. ``pair`` = photo id (the instance), ``id`` = key without the leading '/'.

A ``.mat`` file is read whole (``loadmat`` cannot stream; the files are <= 20 MB decompressed); items are
yielded one at a time. Before it is loaded, its variables are bounded by ``ReadLimits.max_member_bytes``
(:func:`check_mat_sizes`): the class and dims in their headers, and, for compressed variables, the bytes
they inflate to, counted by streaming them through zlib without keeping them, so a compressed bomb is
refused after at most that many bytes of CPU work and ~2 MB of memory.
"""

from __future__ import annotations

import json
import re
import struct
import zlib
from collections.abc import Callable, Iterator, Sequence
from itertools import islice, pairwise
from pathlib import Path
from typing import IO, Any

import numpy as np

from ...errors import FormatError, InvalidSketchError
from ..sketch import Sketch
from .base import (
    READ_LIMITS,
    READERS,
    Item,
    MiB,
    OnError,
    ReadLimits,
    check_limit,
    check_points,
    report,
    require_exists,
)
from .safe_pickle import load_pickle_untrusted

__all__ = [
    "CHAIRV2_FILE",
    "check_mat_sizes",
    "load_mat_images",
    "qmul_v1_categories",
    "read_qmul_chairv2",
    "read_qmul_v1",
]

CHAIRV2_FILE = "ChairV2_Coordinate"
_SPLITS = ("train", "test")


#: MATLAB array classes (mxCLASS codes in a v5 array-flags word) -> (name, bytes per element)
_MX_CLASSES = {
    4: ("char", 2),
    6: ("double", 8),
    7: ("single", 4),
    8: ("int8", 1),
    9: ("uint8", 1),
    10: ("int16", 2),
    11: ("uint16", 2),
    12: ("int32", 4),
    13: ("uint32", 4),
    14: ("int64", 8),
    15: ("uint64", 8),
}
_MI_MATRIX, _MI_COMPRESSED = 14, 15
_HEADER_BYTES = 4096  # inflated to read a variable's header (flags, dims, name): names are <= 63 chars


def _matrix_header(buf: bytes, endian: str) -> tuple[str, int, tuple[int, ...], str]:
    """(class name, bytes per element, dims, variable name) from the start of a v5 miMATRIX element (its tag
    included)."""

    def element(pos: int) -> tuple[bytes, int]:
        mdtype, nbytes = struct.unpack_from(endian + "II", buf, pos)
        if mdtype >> 16:  # small data element: size in the upper half, data in the tag's last 4 bytes
            return buf[pos + 4 : pos + 4 + (mdtype >> 16)], pos + 8
        return buf[pos + 8 : pos + 8 + nbytes], pos + 8 + nbytes + (-nbytes % 8)

    mdtype, _ = struct.unpack_from(endian + "II", buf, 0)
    if mdtype != _MI_MATRIX:
        raise ValueError(f"expected a miMATRIX element, got type {mdtype}")
    flags, pos = element(8)
    dims_raw, pos = element(pos)
    name_raw, _ = element(pos)
    (word,) = struct.unpack_from(endian + "I", flags)
    dims = struct.unpack(f"{endian}{len(dims_raw) // 4}i", dims_raw[: len(dims_raw) // 4 * 4])
    cls, size = _MX_CLASSES.get(word & 0xFF, (f"class {word & 0xFF}", 8))
    return cls, size, tuple(dims), name_raw.decode("latin-1")


def _inflate_counted(fp: IO[bytes], compressed: int, cap: int, on_header: Callable[[bytes], None]) -> int:
    """Stream the next ``compressed`` bytes of ``fp`` through zlib, at most 1 MiB held at a time: hand the
    first ``_HEADER_BYTES`` inflated (or all, when fewer) to ``on_header`` as soon as they are there (it may
    refuse the variable before the rest is inflated), and return the total inflated; counting stops once
    past ``cap``."""
    inflate = zlib.decompressobj()
    head: bytes | None = b""
    total, left = 0, compressed
    while left > 0 and total <= cap and not inflate.eof:
        chunk = fp.read(min(MiB, left))
        if not chunk:
            break
        left -= len(chunk)
        while chunk and total <= cap:
            data = inflate.decompress(chunk, MiB)
            total += len(data)
            chunk = inflate.unconsumed_tail
            if head is not None:
                head += data[: _HEADER_BYTES - len(head)]
                if len(head) >= _HEADER_BYTES:
                    on_header(head)
                    head = None
    if head is not None:
        on_header(head)
    return total


def check_mat_sizes(path: str | Path, limits: ReadLimits | None = None) -> None:
    """Refuse a MATLAB v5 ``.mat`` with a variable that takes more than ``limits.max_member_bytes`` once
    loaded, before ``loadmat`` reads it: by the class and dims in the variable's header, and, for compressed
    variables, by the bytes their zlib stream actually inflates to (streamed and counted, never kept: a
    header can lie). At most ~2 MiB is held. Raises FormatError(path, variable name, ...).

    (``scipy.io.whosmat`` is not used: it inflates a compressed variable's first 128 KB block whole, which a
    bomb turns into ~130 MB, and with its integrity check the whole variable.) Files that are not v5 (v4,
    v7.3 HDF5) are left to ``loadmat``: v4 has no compression, v7.3 is refused there."""
    cap = (limits or READ_LIMITS).max_member_bytes
    path = Path(path)

    def refuse(name: str, what: str) -> FormatError:
        return FormatError(path, name, f"variable {name!r} {what} (ReadLimits.max_member_bytes)")

    try:
        fp = open(path, "rb")  # noqa: SIM115 - closed by the `with fp` below
    except OSError as e:
        raise FormatError(path, None, f"cannot open: {e.strerror or e}") from e
    with fp:
        head = fp.read(128)
        if len(head) < 128 or head[126:128] not in (b"IM", b"MI"):
            return  # MATLAB v4: no compression, loadmat reads it as is
        endian = "<" if head[126:128] == b"IM" else ">"
        if struct.unpack(endian + "H", head[124:126])[0] != 0x0100:
            return  # v7.3 (HDF5): loadmat refuses it
        i = 0
        while True:
            tag = fp.read(8)
            if len(tag) < 8:
                return
            mdtype, nbytes = struct.unpack(endian + "II", tag)
            at = fp.tell()
            name = f"element {i}"

            def check_header(buf: bytes, i: int = i) -> None:
                nonlocal name
                try:
                    cls, size, dims, name = _matrix_header(buf, endian)
                except (struct.error, ValueError, UnicodeDecodeError) as e:
                    raise FormatError(path, f"element {i}", f"not a readable MATLAB v5 variable ({e})") from e
                n = int(np.prod(dims, dtype=np.float64)) * size
                if n > cap:
                    raise refuse(name, f"is {cls} {dims} = {n} bytes, more than {cap}")

            if mdtype == _MI_COMPRESSED:
                inflated = _inflate_counted(fp, nbytes, cap, check_header)
            else:
                check_header(tag + fp.read(min(nbytes, _HEADER_BYTES)))
                inflated = nbytes
            if inflated > cap:
                raise refuse(name, f"decompresses to more than {cap} bytes from {nbytes} (a compressed bomb)")
            fp.seek(at + nbytes + (0 if mdtype == _MI_COMPRESSED else -nbytes % 8))
            i += 1


def load_mat_images(path: str | Path, key: str = "data", limits: ReadLimits | None = None) -> np.ndarray:
    """``key`` of a MATLAB v5 ``.mat`` as uint8 (N, H, W), after :func:`check_mat_sizes`. Raises
    FormatError(path, None or the variable, ...) otherwise."""
    import scipy.io

    check_mat_sizes(path, limits)
    try:
        mat = scipy.io.loadmat(path, variable_names=[key])
    except NotImplementedError as e:  # MATLAB v7.3 (HDF5)
        raise FormatError(path, None, f"MATLAB v7.3 files are not supported, expected v5 ({e})") from e
    except Exception as e:  # scipy's parser fails on corrupt files with IndexError,
        # MatReadError, zlib.error, ValueError ...: every one of them means the same thing here
        raise FormatError(path, None, f"not a readable MATLAB v5 .mat file ({type(e).__name__}: {e})") from e
    if key not in mat:
        raise FormatError(path, None, f"no variable {key!r} in the .mat file")
    arr = mat[key]
    if not isinstance(arr, np.ndarray) or arr.ndim != 3 or arr.dtype != np.uint8:
        raise FormatError(
            path,
            None,
            f"{key!r} must be uint8 (N, H, W), got {getattr(arr, 'shape', '?')} "
            f"{getattr(arr, 'dtype', type(arr).__name__)}",
        )
    return arr


def qmul_v1_categories(path: str | Path) -> list[Path]:
    """Category folders (holding ``*_sketch_db_*.mat``): ``path`` itself, or its subfolders."""
    path = Path(path)
    require_exists(path)
    if path.is_dir() and any(path.glob("*_sketch_db_*.mat")):
        return [path]
    return sorted(p for p in path.iterdir() if p.is_dir() and any(p.glob("*_sketch_db_*.mat"))) if path.is_dir() else []


def _photo_names(folder: Path, category: str, split: str, n: int) -> list[str] | None:
    ann = folder / f"{category}_annotation.json"
    if not ann.is_file():
        return None
    try:
        names = json.loads(ann.read_text(encoding="utf-8"))[split]["images"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not isinstance(names, list) or len(names) != n or not all(isinstance(x, str) for x in names):
        return None
    return [Path(x).stem for x in names]


_V1_FILE = re.compile(r"^(?P<category>.+)_(?P<kind>sketch|edge)_db_(?P<split>[A-Za-z]+)\.mat$")


def _v1_items(
    folder: Path,
    splits: Sequence[str],
    strict: bool,
    on_error: OnError | None,
    kinds: Sequence[str] = ("sketch", "edge"),
    limits: ReadLimits = READ_LIMITS,
) -> Iterator[Item]:
    category = folder.name

    def load(path: Path, kind: str) -> np.ndarray | None:
        if kind not in kinds or not path.is_file():
            return None
        try:
            return load_mat_images(path, limits=limits)
        except FormatError as e:  # an unreadable .mat is a bad record: its partner file is still read
            report(e, strict, on_error)
            return None

    for split in splits:
        sk_path = folder / f"{category}_sketch_db_{split}.mat"
        ed_path = folder / f"{category}_edge_db_{split}.mat"
        sketches = load(sk_path, "sketch")
        edges = load(ed_path, "edge")
        if sketches is not None and edges is not None and len(edges) != len(sketches):
            # which file is wrong cannot be told, so neither is paired up: both are skipped
            report(
                FormatError(
                    ed_path,
                    None,
                    f"{len(edges)} edge maps for {len(sketches)} sketches in {sk_path.name}; "
                    "expected one edge map per sketch (both files skipped)",
                ),
                strict,
                on_error,
            )
            continue
        n = len(sketches) if sketches is not None else len(edges) if edges is not None else 0
        names = _photo_names(folder, category, split, n)
        for i in range(n):
            pair = f"{category}/{names[i]}" if names else f"{category}/{split}/{i}"
            meta = {"split": split, "index": i}
            if sketches is not None:
                yield Item(
                    f"{category}/{split}/sketch/{i}",
                    category,
                    "sketch",
                    f"{sk_path}:{i}",
                    image=np.ascontiguousarray(sketches[i]),
                    pair=pair,
                    meta=meta,
                )
            if edges is not None:
                yield Item(
                    f"{category}/{split}/edge/{i}",
                    category,
                    "photo",
                    f"{ed_path}:{i}",
                    image=np.ascontiguousarray(edges[i]),
                    pair=pair,
                    meta={**meta, "kind": "edge_map"},
                )


def read_qmul_v1(
    path: str | Path,
    *,
    strict: bool = False,
    on_error: OnError | None = None,
    limit: int | None = None,
    splits: Sequence[str] = _SPLITS,
    limits: ReadLimits | None = None,
) -> Iterator[Item]:
    """QMUL V1 sketches and photo edge maps under ``path``: the folder of categories, one category folder,
    or one ``<category>_{sketch,edge}_db_<split>.mat`` file (only its images; ids and pairs as in the folder).

    Label = category (``shoes`` / ``chairs``); the instance is ``pair``. A ``.mat`` holds one array, so an
    unreadable one is one bad record (``FormatError(file, None, reason)``): under ``strict`` it raises,
    otherwise it is reported and skipped and the other files are still read. So is a ``.mat`` with a
    variable over ``limits.max_member_bytes`` (:func:`check_mat_sizes`), refused before it is loaded.
    """
    lim = limits or READ_LIMITS
    p = Path(path)
    require_exists(p)
    if p.is_file():
        m = _V1_FILE.match(p.name)
        if not m:
            raise FormatError(p, None, "not a QMUL V1 image file; expected '<category>_{sketch,edge}_db_<split>.mat'")
        if m["category"] != p.parent.name:  # ids and pairs are named by the category folder
            raise FormatError(p, None, f"expected the file inside a folder named {m['category']!r}")
        items = _v1_items(p.parent, (m["split"],), strict, on_error, (m["kind"],), lim)
    else:
        cats = qmul_v1_categories(p)
        if not cats:
            raise FormatError(p, None, "no QMUL V1 '<category>_sketch_db_<split>.mat' files here")
        items = (it for c in cats for it in _v1_items(c, tuple(splits), strict, on_error, limits=lim))
    yield from islice(items, check_limit(limit))


READERS.register("qmul_v1")(read_qmul_v1)


def _chairv2_sketch(value: Any) -> Sketch:
    """(P, 3) ``[x, y, pen_lifted_after_point]`` -> Sketch; ValueError when it is not such an array."""
    if not isinstance(value, np.ndarray) or value.ndim != 2 or value.shape[1] != 3 or value.dtype.kind not in "iuf":
        raise ValueError(
            f"expected a numeric (P, 3) array [x, y, pen_lifted], got {getattr(value, 'shape', type(value).__name__)}"
        )
    if len(value) == 0:
        raise ValueError("empty drawing (no points)")
    xy = value[:, :2].astype(np.float64)
    ends = np.flatnonzero(value[:, 2] > 0.5) + 1
    bounds = np.concatenate([[0], ends[ends < len(value)], [len(value)]])
    try:
        return Sketch([xy[a:b] for a, b in pairwise(bounds) if b > a])
    except InvalidSketchError as e:
        raise ValueError(str(e)) from e


def read_qmul_chairv2(
    path: str | Path,
    *,
    strict: bool = False,
    on_error: OnError | None = None,
    limit: int | None = None,
    limits: ReadLimits | None = None,
) -> Iterator[Item]:
    """ChairV2 stroke sketches: ``path`` is the ``ChairV2_Coordinate`` pickle or a folder holding it.

    Each key ``'/<split>/<photo_id>_<k>'`` is one record; a bad key or value follows the bad-record rule,
    and so does a file that cannot be read at all (a refused or corrupt pickle, not a dict): record None.
    ``meta`` has ``split`` and ``k`` (the sketch number for that photo). A drawing of more than
    ``limits.max_points`` points is a bad record.
    """
    lim = limits or READ_LIMITS
    path = Path(path)
    require_exists(path)
    if path.is_dir():
        path = path / CHAIRV2_FILE
        require_exists(path)
    try:
        data = load_pickle_untrusted(path)
    except FormatError as e:  # refused or corrupt pickle: the file is one bad record
        report(e, strict, on_error)
        return
    if not isinstance(data, dict):
        report(
            FormatError(
                path,
                None,
                f"expected a pickled dict of '/<split>/<photo_id>_<k>' -> (P, 3) arrays, got {type(data).__name__}",
            ),
            strict,
            on_error,
        )
        return
    n = 0
    limit = check_limit(limit)
    for key, value in data.items():
        if limit is not None and n >= limit:
            return
        parts = key.strip("/").split("/") if isinstance(key, str) else []
        if len(parts) != 2 or "_" not in parts[1]:
            report(FormatError(path, repr(key), "key must look like '/<split>/<photo_id>_<k>'"), strict, on_error)
            continue
        split, name = parts
        photo, k = name.rsplit("_", 1)
        try:
            if isinstance(value, np.ndarray) and value.ndim == 2:
                check_points(path, key, len(value), lim)
            sketch = _chairv2_sketch(value)
        except FormatError as e:
            report(e, strict, on_error)
            continue
        except ValueError as e:
            report(FormatError(path, key, str(e)), strict, on_error)
            continue
        sketch.id, sketch.label = f"{split}/{name}", "chair"
        meta = {"split": split, "k": int(k) if k.isdigit() else k}
        yield Item(sketch.id, "chair", "sketch", f"{path}:{key}", sketch=sketch, pair=photo, meta=meta)
        n += 1


READERS.register("qmul_chairv2")(read_qmul_chairv2)
