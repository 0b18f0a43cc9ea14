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
(:func:`check_mat_sizes`): the shapes in their headers (``scipy.io.whosmat``), and, for compressed
variables, the bytes they inflate to, counted by streaming them through zlib without keeping them, so a
compressed bomb is refused after at most that many bytes of CPU work and a few MB of memory.
"""

from __future__ import annotations

import json
import re
import struct
import zlib
from collections.abc import Iterator, Sequence
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


#: bytes per element of each MATLAB class ``scipy.io.whosmat`` names (others: 8)
_MAT_ITEMSIZE = {"int8": 1, "uint8": 1, "logical": 1, "int16": 2, "uint16": 2, "char": 2, "int32": 4}
_MAT_ITEMSIZE.update({"uint32": 4, "single": 4, "double": 8, "int64": 8, "uint64": 8})
_MI_COMPRESSED = 15


def _inflated_size(fp: IO[bytes], compressed: int, cap: int) -> int:
    """Bytes the next ``compressed`` bytes of ``fp`` inflate to, counted in 1 MiB pieces and never kept;
    stops as soon as the count passes ``cap`` (returns it then)."""
    inflate = zlib.decompressobj()
    total, left = 0, compressed
    while left > 0 and total <= cap:
        chunk = fp.read(min(MiB, left))
        if not chunk:
            break
        left -= len(chunk)
        data = inflate.decompress(chunk, MiB)
        total += len(data)
        while inflate.unconsumed_tail and total <= cap:
            data = inflate.decompress(inflate.unconsumed_tail, MiB)
            total += len(data)
        if inflate.eof:
            break
    return total


def check_mat_sizes(path: str | Path, limits: ReadLimits | None = None) -> None:
    """Refuse a MATLAB ``.mat`` whose variables would take more than ``limits.max_member_bytes`` each once
    loaded, before ``loadmat`` reads it: by the shape and class in each variable's header
    (``scipy.io.whosmat``), and, for MATLAB v5 compressed variables, by the bytes their zlib stream actually
    inflates to (streamed and counted, never kept: a header can lie). Raises FormatError(path, variable, ...)."""
    import scipy.io

    cap = (limits or READ_LIMITS).max_member_bytes
    path = Path(path)
    try:
        variables = scipy.io.whosmat(path)
    except NotImplementedError as e:  # MATLAB v7.3 (HDF5)
        raise FormatError(path, None, f"MATLAB v7.3 files are not supported, expected v5 ({e})") from e
    except Exception as e:  # corrupt file: scipy fails with many exception types
        raise FormatError(path, None, f"not a readable MATLAB v5 .mat file ({type(e).__name__}: {e})") from e
    for name, shape, mclass in variables:
        n = int(np.prod(shape, dtype=np.float64))
        size = n * _MAT_ITEMSIZE.get(mclass, 8)
        if size > cap:
            raise FormatError(
                path,
                name,
                f"variable {name!r} is {mclass} {tuple(shape)} = {size} bytes, more than {cap} "
                "(ReadLimits.max_member_bytes)",
            )
    names = [v[0] for v in variables]
    with open(path, "rb") as fp:
        head = fp.read(128)
        if len(head) < 128 or head[126:128] not in (b"IM", b"MI"):
            return  # MATLAB v4: no compression (whosmat/loadmat read it as is)
        endian = "<" if head[126:128] == b"IM" else ">"
        i = 0
        while True:
            tag = fp.read(8)
            if len(tag) < 8:
                return
            mdtype, nbytes = struct.unpack(endian + "II", tag)
            if mdtype >> 16:  # a small data element: its (<= 4) bytes are in the tag
                i += 1
                continue
            name = names[i] if i < len(names) else f"element {i}"
            if mdtype == _MI_COMPRESSED:
                at = fp.tell()
                inflated = _inflated_size(fp, nbytes, cap)
                if inflated > cap:
                    raise FormatError(
                        path,
                        name,
                        f"variable {name!r} decompresses to more than {cap} bytes (ReadLimits.max_member_bytes): "
                        f"{nbytes} compressed bytes; a compressed bomb, or raise the limit",
                    )
                fp.seek(at + nbytes)
            else:
                if nbytes > cap:
                    raise FormatError(
                        path,
                        name,
                        f"variable {name!r} is {nbytes} bytes, more than {cap} (ReadLimits.max_member_bytes)",
                    )
                fp.seek(nbytes + (-nbytes % 8), 1)
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
