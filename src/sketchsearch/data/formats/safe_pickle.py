"""Load pickled numpy data from files we do not trust, without letting the pickle run code.

Two real datasets ship as pickles: sketch-rnn's stroke-3 ``.npz`` (object arrays, which
``np.load(allow_pickle=False)`` refuses) and QMUL ChairV2's ``ChairV2_Coordinate`` (a pickled dict).
``pickle`` executes any callable a file names, so :class:`RestrictedUnpickler` resolves only the few
globals needed to rebuild numpy arrays and plain containers; any other global (``os.system``,
``builtins.eval``, ``subprocess.Popen`` ...) raises :class:`FormatError` naming the file and the global
*before* anything is called. This follows the recipe in the Python docs ("Restricting Globals"); no
maintained library offers a numpy-aware allow-list (``fickling`` only *analyses* pickles), hence hand-written.

Arrays are also limited by *what they hold*: only numeric dtypes (bool, signed / unsigned integer, float;
no complex, string, bytes, datetime or structured dtypes) and object arrays one level deep (sketch-rnn's
array of drawings), whose elements are numeric arrays or plain numbers. The check runs while the pickle is
read: dtypes are refused when they are built, arrays when their data is set (``BUILD``), so a refused file
names itself in a :class:`FormatError` and nothing of it is returned.
"""

from __future__ import annotations

import codecs
import collections
import io
import pickle
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import numpy as np
import numpy.lib.format as npformat

from ...errors import FormatError
from .base import READ_LIMITS, ReadLimits, check_npy_member

__all__ = [
    "ALLOWED_GLOBALS",
    "NUMERIC_KINDS",
    "RestrictedUnpickler",
    "load_npz_untrusted",
    "load_pickle_untrusted",
    "loads_untrusted",
]

try:  # numpy >= 2 moved the implementation; pickles written by numpy 1.x name numpy.core.*
    from numpy._core import multiarray as _multiarray
    from numpy._core import numeric as _numeric
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core import multiarray as _multiarray  # type: ignore[no-redef]
    from numpy.core import numeric as _numeric  # type: ignore[no-redef]

_TEXT_CODECS = {"latin1", "latin-1", "iso-8859-1", "utf-8", "utf8", "ascii"}


def _text_encode(obj: str, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """``_codecs.encode`` as Python 3 emits it for ``bytes`` at protocol 2, limited to text codecs
    (codecs such as ``zlib_codec`` or ``rot13`` are not needed to rebuild arrays)."""
    if codecs.lookup(encoding).name not in {codecs.lookup(e).name for e in _TEXT_CODECS}:
        raise pickle.UnpicklingError(f"codec {encoding!r} is not allowed")
    if not isinstance(obj, str):
        raise pickle.UnpicklingError(f"_codecs.encode expects a str, got {type(obj).__name__}")
    return codecs.encode(obj, encoding, errors)


_BUILTIN_CONTAINERS: dict[str, Any] = {
    "set": set,
    "frozenset": frozenset,
    "list": list,
    "dict": dict,
    "tuple": tuple,
    "bytearray": bytearray,
    "bytes": bytes,
    "str": str,
    "int": int,
    "float": float,
    "complex": complex,
    "bool": bool,
}

#: dtype kinds an untrusted array may have: bool, signed and unsigned integers, floats (sketches are real).
NUMERIC_KINDS = "biuf"


class _Refused(pickle.UnpicklingError):
    """Raised inside the unpickler for data it does not admit; becomes FormatError(file, record, reason)."""


def _check_dtype(dt: Any, what: str, *, allow_object: bool) -> np.dtype:
    if not isinstance(dt, np.dtype):
        raise _Refused(f"{what}: expected a numpy dtype, got {type(dt).__name__}")
    if dt.fields is not None or dt.subdtype is not None:
        raise _Refused(f"{what}: structured dtype {dt} is not allowed; only numeric arrays are read")
    if dt.kind in NUMERIC_KINDS or (allow_object and dt.kind == "O"):
        return dt
    raise _Refused(
        f"{what}: dtype {dt.str!r} ({dt.name}) is not allowed; only bool, integer and float arrays "
        "(and object arrays of them) are read from untrusted pickles"
    )


def _dtype(obj: Any, align: bool = False, copy: bool = True) -> np.dtype:
    """``numpy.dtype(obj, align, copy)`` as pickles call it, for numeric and object dtypes only."""
    if not isinstance(obj, str):
        raise _Refused(f"numpy.dtype({type(obj).__name__}) is not allowed; expected a type code such as 'f8'")
    try:
        dt = np.dtype(obj, align=bool(align), copy=bool(copy))
    except TypeError as e:
        raise _Refused(f"numpy.dtype({obj!r}): {e}") from e
    return _check_dtype(dt, f"numpy.dtype({obj!r})", allow_object=True)


def _scalar(dtype: Any, data: Any = None) -> Any:
    """``multiarray.scalar`` (numpy scalars such as ``np.float64(2.5)``), numeric dtypes only."""
    _check_dtype(dtype, "numpy scalar", allow_object=False)
    if not isinstance(data, bytes):
        raise _Refused(f"numpy scalar data must be bytes, got {type(data).__name__}")
    return _multiarray.scalar(dtype, data)


def _frombuffer(buf: Any, dtype: Any, shape: Any, order: Any) -> np.ndarray:
    """``numeric._frombuffer`` (pickle protocol 5), numeric dtypes only."""
    _check_dtype(dtype, "numpy array", allow_object=False)
    return _numeric._frombuffer(buf, dtype, shape, order)


class _ArrayType:
    """What the global ``numpy.ndarray`` resolves to: a token that ``_reconstruct`` accepts. Calling it
    (``numpy.ndarray(shape, dtype, buffer)``, which numpy's own pickles never do) is refused."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise _Refused("calling numpy.ndarray(...) is not allowed; arrays are rebuilt with _reconstruct only")


_NDARRAY = _ArrayType()


def _plain(x: Any) -> Any:
    return x.view(np.ndarray) if isinstance(x, _UntrustedArray) else x


class _UntrustedArray(np.ndarray):
    """The class arrays are rebuilt as while unpickling: ``__setstate__`` (the pickle's ``BUILD``) checks
    the dtype and, for an object array, every element before numpy sees the data. Turned back into plain
    ``ndarray`` views before anything is returned."""

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, tuple) or len(state) not in (4, 5):
            raise _Refused("unexpected numpy array state; expected (version, shape, dtype, fortran, data)")
        dt = _check_dtype(state[-3], "numpy array", allow_object=True)
        data = state[-1]
        if dt.kind == "O":
            if not isinstance(data, list):
                raise _Refused(f"object array data must be a list, got {type(data).__name__}")
            data = [_object_element(x, i) for i, x in enumerate(data)]
            state = (*state[:-1], data)
        super().__setstate__(state)


def _object_element(x: Any, i: int) -> Any:
    """An element of an object array: a numeric array or a plain number (one level of nesting only)."""
    if isinstance(x, np.ndarray):
        if x.dtype.kind == "O":
            raise _Refused(
                f"object array element {i} is itself an object array: object arrays nested deeper "
                "than one level are not allowed (sketch-rnn files hold numeric arrays in one object array)"
            )
        _check_dtype(x.dtype, f"object array element {i}", allow_object=False)
        return _plain(x)
    if x is None or isinstance(x, (bool, int, float, np.generic)):
        return x  # numpy scalars were checked by _scalar
    raise _Refused(f"object array element {i} is a {type(x).__name__}; only numeric arrays and numbers are allowed")


def _reconstruct(subtype: Any, shape: Any, typecode: Any) -> np.ndarray:
    """``multiarray._reconstruct(numpy.ndarray, shape, typecode)``: an empty array filled by ``BUILD``."""
    if subtype is not _NDARRAY:
        raise _Refused(f"_reconstruct of {subtype!r} is not allowed; only numpy.ndarray is rebuilt")
    return _multiarray._reconstruct(_UntrustedArray, shape, typecode)


def _to_plain(obj: Any) -> Any:
    """Replace the unpickler's :class:`_UntrustedArray` objects by plain ndarray views, in place where the
    container is mutable (so shared and self-referencing containers stay as they were)."""
    seen: set[int] = set()
    tuples: dict[int, Any] = {}

    def walk(x: Any) -> Any:
        if isinstance(x, np.ndarray):
            return _plain(x)  # object arrays already hold plain arrays (see _object_element)
        if isinstance(x, (list, dict)):
            if id(x) not in seen:
                seen.add(id(x))
                if isinstance(x, list):
                    x[:] = [walk(v) for v in x]
                else:
                    for k, v in x.items():
                        x[k] = walk(v)
            return x
        if isinstance(x, tuple):
            if id(x) not in tuples:
                tuples[id(x)] = x  # a tuple cannot contain itself except through a list or dict
                new = tuple(walk(v) for v in x)
                tuples[id(x)] = new if any(a is not b for a, b in zip(new, x, strict=True)) else x
            return tuples[id(x)]
        return x  # sets hold hashable values only: never arrays

    return walk(obj)


#: (module, name) -> object. Everything here only builds data: none of it calls back into user code.
ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    # numpy entry points are wrapped: they admit numeric dtypes (and object arrays one level deep) only
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy.core.multiarray", "scalar"): _scalar,
    ("numpy._core.multiarray", "scalar"): _scalar,
    # pickle protocol 5 rebuilds arrays with _frombuffer(buffer, dtype, shape, order): a view on bytes
    ("numpy.core.numeric", "_frombuffer"): _frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _frombuffer,
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): _dtype,
    ("_codecs", "encode"): _text_encode,
    ("collections", "OrderedDict"): collections.OrderedDict,
    **{("builtins", n): o for n, o in _BUILTIN_CONTAINERS.items()},
    **{("__builtin__", n): o for n, o in _BUILTIN_CONTAINERS.items()},  # Python 2 pickles
}


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only :data:`ALLOWED_GLOBALS`.

    ``source`` and ``record`` name where the bytes come from, for the error. ``encoding="latin1"`` reads
    numpy arrays pickled by Python 2 (sketch-rnn's files), as numpy's own docs advise.
    """

    def __init__(self, file: IO[bytes], *, source: str | Path, record: str | None = None) -> None:
        super().__init__(file, encoding="latin1")
        self.source = str(source)
        self.record = record

    def find_class(self, module: str, name: str) -> Any:
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise FormatError(
                self.source,
                self.record,
                f"the pickle asks for the global {module}.{name}, which is not allowed (it could run code); "
                "only numpy arrays and plain containers are read from untrusted pickles",
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise FormatError(self.source, self.record, "persistent ids are not allowed in untrusted pickles")


def _unpickle(fp: IO[bytes], source: str | Path, record: str | None) -> Any:
    try:
        return _to_plain(RestrictedUnpickler(fp, source=source, record=record).load())
    except FormatError:
        raise
    except _Refused as e:
        raise FormatError(source, record, f"refused: {e}") from None
    except Exception as e:
        raise FormatError(source, record, f"not a readable pickle ({type(e).__name__}: {e})") from e


def loads_untrusted(data: bytes, *, source: str = "<bytes>", record: str | None = None) -> Any:
    """Unpickle ``data`` with :class:`RestrictedUnpickler`."""
    return _unpickle(io.BytesIO(data), source, record)


def load_pickle_untrusted(path: str | Path) -> Any:
    """Unpickle the file at ``path`` with :class:`RestrictedUnpickler` (numpy arrays and containers only).

    Raises FormatError(path, None, ...) for a forbidden global or a corrupt pickle.
    """
    path = Path(path)
    try:
        fp = open(path, "rb")  # noqa: SIM115 - closed by the `with fp` below
    except OSError as e:
        raise FormatError(path, None, f"cannot open: {e.strerror or e}") from e
    with fp:
        return _unpickle(fp, path, None)


def _read_header(fp: IO[bytes], path: Path, member: str) -> tuple[tuple[int, ...], bool, np.dtype]:
    try:
        version = npformat.read_magic(fp)
        if version == (1, 0):
            return npformat.read_array_header_1_0(fp)
        if version == (2, 0):
            return npformat.read_array_header_2_0(fp)
    except ValueError as e:
        raise FormatError(path, member, f"not a .npy member ({e})") from e
    raise FormatError(path, member, f".npy format version {version} is not supported (expected 1.0 or 2.0)")


def load_npz_untrusted(
    path: str | Path, *, keys: Callable[[str], bool] | None = None, limits: ReadLimits | None = None
) -> dict[str, np.ndarray]:
    """All arrays of an ``.npz``, object arrays included, without trusting pickle.

    Plain arrays are read by numpy with ``allow_pickle=False``; object arrays (``dtype=object``) are
    rebuilt with :class:`RestrictedUnpickler`. Either way only numeric dtypes (:data:`NUMERIC_KINDS`)
    and object arrays of them are admitted. ``keys`` optionally selects members by name (without
    ``.npy``). A member that decompresses to more than ``limits.max_member_bytes`` (by the zip directory
    or by its array header) is refused before it is inflated. Returns name -> array. Raises
    FormatError(path, member, ...) for a bad member and FormatError(path, None, ...) when the file is not
    a zip archive.
    """
    path = Path(path)
    try:
        zf = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as e:
        raise FormatError(path, None, f"not an .npz (zip) archive: {e}") from e
    out: dict[str, np.ndarray] = {}
    with zf:
        for info in zf.infolist():
            if not info.filename.endswith(".npy"):
                continue
            key = info.filename[: -len(".npy")]
            if keys is not None and not keys(key):
                continue
            try:
                check_npy_member(path, key, info.file_size, (), 1, limits or READ_LIMITS)
                with zf.open(info) as fp:
                    shape, fortran, dtype = _read_header(fp, path, key)
                    check_npy_member(path, key, info.file_size, shape, dtype.itemsize, limits or READ_LIMITS)
                    try:
                        _check_dtype(dtype, "array header", allow_object=True)
                    except _Refused as e:
                        raise FormatError(path, key, f"refused: {e}") from None
                    if not dtype.hasobject:
                        with zf.open(info) as fp2:
                            out[key] = npformat.read_array(fp2, allow_pickle=False)
                        continue
                    arr = _unpickle(fp, path, key)
            except (zipfile.BadZipFile, OSError, EOFError, zlib.error) as e:  # CRC error, truncated member
                raise FormatError(path, key, f"corrupt archive member: {e}") from e
            except ValueError as e:
                if isinstance(e, FormatError):
                    raise
                raise FormatError(path, key, f"unreadable array: {e}") from e
            if not isinstance(arr, np.ndarray):
                raise FormatError(path, key, f"the pickled payload is a {type(arr).__name__}, expected an array")
            if arr.size != int(np.prod(shape)):
                raise FormatError(path, key, f"array has {arr.size} elements, its header says shape {shape}")
            out[key] = arr.reshape(shape, order="F" if fortran else "C")
    return out
