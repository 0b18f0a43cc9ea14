"""Binary codes in faiss's layout: packed ``uint8 (n, nbits // 8)``.

Bit order: bit ``j`` of a code is bit ``j % 8`` (least significant first) of byte ``j // 8``, i.e.
``np.packbits(bits, axis=1, bitorder="little")``. This is what faiss's ``real_to_binary`` /
``fvecs2bitvecs`` write (checked in tests/test_codes.py), so codes made here and codes made by faiss
are interchangeable. Hamming distance does not depend on the bit order; persistence and interop do.
"""

from __future__ import annotations

import numpy as np

from sketchsearch.errors import InvalidSketchError

__all__ = ["code_size", "pack_bits", "sign_to_codes", "unpack_bits", "validate_codes"]


def code_size(nbits: int, field: str = "nbits") -> int:
    """Bytes per code for ``nbits`` bits; ``nbits`` must be a positive multiple of 8 (faiss's rule)."""
    if isinstance(nbits, bool) or not isinstance(nbits, (int, np.integer)) or nbits <= 0 or nbits % 8:
        raise InvalidSketchError(f"code length must be a positive multiple of 8 bits, got {nbits!r}", field)
    return int(nbits) // 8


def pack_bits(bits: np.ndarray) -> np.ndarray:
    """Pack bits (bool or 0/1, shape (n, nbits), nbits a multiple of 8) into uint8 (n, nbits // 8)."""
    arr = np.asarray(bits)
    if arr.ndim != 2:
        raise InvalidSketchError(f"expected a 2-d array (n, nbits) of bits, got shape {arr.shape}", "bits")
    code_size(arr.shape[1], "bits")
    if arr.dtype != np.bool_:
        if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
            raise InvalidSketchError(f"expected bool or 0/1 values, got dtype {arr.dtype}", "bits")
        if arr.size and not np.isin(arr, (0, 1)).all():
            raise InvalidSketchError("expected only 0 and 1 values", "bits")
        arr = arr.astype(np.bool_)
    return np.packbits(arr, axis=1, bitorder="little")


def unpack_bits(codes: np.ndarray, nbits: int) -> np.ndarray:
    """Inverse of :func:`pack_bits`: uint8 (n, nbits // 8) -> uint8 0/1 (n, nbits)."""
    codes = validate_codes(codes, nbits, "codes")
    return np.unpackbits(codes, axis=1, count=nbits, bitorder="little")


def sign_to_codes(x: np.ndarray) -> np.ndarray:
    """Binarise real values (n, nbits) by sign, ``x > 0`` -> 1 (as faiss's ``real_to_binary``), and pack.

    Zero maps to 0. NaN is refused: it has no sign and would silently become 0.
    """
    arr = np.asarray(x)
    if arr.ndim != 2:
        raise InvalidSketchError(f"expected a 2-d array (n, nbits), got shape {arr.shape}", "x")
    if not np.issubdtype(arr.dtype, np.number):
        raise InvalidSketchError(f"expected real numbers, got dtype {arr.dtype}", "x")
    if np.issubdtype(arr.dtype, np.floating) and np.isnan(arr).any():
        raise InvalidSketchError("contains NaN, which has no sign", "x")
    return pack_bits(arr > 0)


def validate_codes(codes: object, nbits: int, field: str = "codes") -> np.ndarray:
    """Check that ``codes`` are packed ``uint8 (n, nbits // 8)`` and return them as a C-contiguous array.

    A single code (1-d, ``nbits // 8`` bytes) is accepted as one row. Raises InvalidSketchError
    naming ``field``, the expected and the actual dtype / shape (e.g. 7 bytes given for 64 bits).
    """
    nbytes = code_size(nbits)
    if not isinstance(codes, np.ndarray):
        raise InvalidSketchError(f"expected a numpy uint8 array, got {type(codes).__name__}", field)
    if codes.dtype != np.uint8:
        raise InvalidSketchError(
            f"expected packed codes of dtype uint8 (see sketchsearch.index.codes.pack_bits), got {codes.dtype}",
            field,
        )
    if codes.ndim == 1:
        codes = codes.reshape(1, -1)
    if codes.ndim != 2 or codes.shape[1] != nbytes:
        raise InvalidSketchError(
            f"expected shape (n, {nbytes}) ({nbits}-bit codes, {nbytes} bytes each), got {codes.shape}", field
        )
    return np.ascontiguousarray(codes)
