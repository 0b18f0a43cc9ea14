"""Load pickled numpy data from files we do not trust, without letting the pickle run code.

Two real datasets ship as pickles: sketch-rnn's stroke-3 ``.npz`` (object arrays, which
``np.load(allow_pickle=False)`` refuses) and QMUL ChairV2's ``ChairV2_Coordinate`` (a pickled dict).
``pickle`` executes any callable a file names, so :class:`RestrictedUnpickler` resolves only the few
globals needed to rebuild numpy arrays and plain containers; any other global (``os.system``,
``builtins.eval``, ``subprocess.Popen`` ...) raises :class:`FormatError` naming the file and the global
*before* anything is called. This follows the recipe in the Python docs ("Restricting Globals"); no
maintained library offers a numpy-aware allow-list (``fickling`` only *analyses* pickles), hence hand-written.
"""

from __future__ import annotations

import codecs
import collections
import io
import pickle
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import numpy as np
import numpy.lib.format as npformat

from ...errors import FormatError

__all__ = [
    "ALLOWED_GLOBALS",
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

#: (module, name) -> object. Everything here only builds data: none of it calls back into user code.
ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _multiarray._reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _multiarray._reconstruct,
    ("numpy.core.multiarray", "scalar"): _multiarray.scalar,
    ("numpy._core.multiarray", "scalar"): _multiarray.scalar,
    # pickle protocol 5 rebuilds arrays with _frombuffer(buffer, dtype, shape, order): a view on bytes
    ("numpy.core.numeric", "_frombuffer"): _numeric._frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _numeric._frombuffer,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
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
        return RestrictedUnpickler(fp, source=source, record=record).load()
    except FormatError:
        raise
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
    path: str | Path, *, keys: Callable[[str], bool] | None = None
) -> dict[str, np.ndarray]:
    """All arrays of an ``.npz``, object arrays included, without trusting pickle.

    Plain arrays are read by numpy with ``allow_pickle=False``; object arrays (``dtype=object``) are
    rebuilt with :class:`RestrictedUnpickler`. ``keys`` optionally selects members by name (without
    ``.npy``). Returns name -> array. Raises FormatError(path, member, ...) for a bad member and
    FormatError(path, None, ...) when the file is not a zip archive.
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
                with zf.open(info) as fp:
                    shape, fortran, dtype = _read_header(fp, path, key)
                    if not dtype.hasobject:
                        with zf.open(info) as fp2:
                            out[key] = npformat.read_array(fp2, allow_pickle=False)
                        continue
                    arr = _unpickle(fp, path, key)
            except (zipfile.BadZipFile, OSError, EOFError) as e:  # CRC error, truncated member
                raise FormatError(path, key, f"corrupt archive member: {e}") from e
            except ValueError as e:
                if isinstance(e, FormatError):
                    raise
                raise FormatError(path, key, f"unreadable array: {e}") from e
            if not isinstance(arr, np.ndarray):
                raise FormatError(
                    path, key, f"the pickled payload is a {type(arr).__name__}, expected an array"
                )
            if arr.size != int(np.prod(shape)):
                raise FormatError(path, key, f"array has {arr.size} elements, its header says shape {shape}")
            out[key] = arr.reshape(shape, order="F" if fortran else "C")
    return out
