"""Packed codes: faiss's bit order, round trips, and clear errors on wrong input."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from sketchsearch.errors import InvalidSketchError
from sketchsearch.index.codes import pack_bits, sign_to_codes, unpack_bits, validate_codes


def test_bit_order_matches_faiss(rng: np.random.Generator) -> None:
    x = rng.normal(size=(7, 32)).astype(np.float32)
    x[0, :5] = 0.0  # zero must map to 0, as faiss's real_to_binary does
    ours = sign_to_codes(x)
    theirs = np.zeros((7, 4), np.uint8)
    faiss.real_to_binary(x.size, faiss.swig_ptr(x.ravel()), faiss.swig_ptr(theirs.ravel()))
    assert ours.dtype == np.uint8 and ours.shape == (7, 4)
    np.testing.assert_array_equal(ours, theirs)


def test_bit_zero_is_lowest_bit_of_first_byte() -> None:
    bits = np.zeros((1, 16), np.uint8)
    bits[0, 0] = 1
    bits[0, 9] = 1
    np.testing.assert_array_equal(pack_bits(bits), [[0b00000001, 0b00000010]])


def test_pack_unpack_round_trip(rng: np.random.Generator) -> None:
    bits = rng.integers(0, 2, size=(5, 24)).astype(bool)
    codes = pack_bits(bits)
    assert codes.shape == (5, 3)
    np.testing.assert_array_equal(unpack_bits(codes, 24), bits.astype(np.uint8))


@pytest.mark.parametrize(
    "codes, match",
    [
        (np.zeros((3, 7), np.uint8), r"\(n, 8\).*got \(3, 7\)"),  # 7 bytes for 64 bits
        (np.zeros((3, 8), np.int64), "dtype uint8"),
        ([[0] * 8], "numpy uint8 array"),
        (np.zeros((2, 2, 8), np.uint8), "shape"),
    ],
)
def test_validate_codes_names_field_and_expectation(codes: object, match: str) -> None:
    with pytest.raises(InvalidSketchError, match=match) as e:
        validate_codes(codes, 64, "query_codes")
    assert e.value.field == "query_codes"


def test_bad_bits_refused() -> None:
    with pytest.raises(InvalidSketchError, match="multiple of 8"):
        pack_bits(np.zeros((2, 12), bool))
    with pytest.raises(InvalidSketchError, match="0 and 1"):
        pack_bits(np.full((2, 8), 2))
    with pytest.raises(InvalidSketchError, match="NaN"):
        sign_to_codes(np.full((1, 8), np.nan))


def test_single_code_is_one_row() -> None:
    assert validate_codes(np.zeros(8, np.uint8), 64).shape == (1, 8)
