"""The restricted unpickler: numpy arrays and containers load; anything that could run code is refused
before it runs."""

from __future__ import annotations

import io
import os
import pickle
import zipfile
from pathlib import Path

import numpy as np
import numpy.lib.format as npformat
import pytest

from sketchsearch.data.formats.safe_pickle import load_npz_untrusted, load_pickle_untrusted, loads_untrusted
from sketchsearch.errors import FormatError


class _RunsCode:
    """Pickles to ``os.system(<touch marker>)``: what a malicious dataset file would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, (f"touch {self.marker}",))


class _Eval:
    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (eval, ("1 + 1",))


def test_arrays_and_containers_round_trip(rng: np.random.Generator) -> None:
    data = {
        "/train/a_1": rng.normal(size=(5, 3)),
        "ints": np.arange(4, dtype=np.int16),
        "obj": np.array([np.zeros((2, 3)), np.ones((1, 3))], dtype=object),
        "scalar": np.float64(2.5),
        "containers": [(1, 2), {3, 4}, frozenset({5}), b"bytes", bytearray(b"x"), 1 + 2j],
    }
    for protocol in (2, 3, 4, 5):
        out = loads_untrusted(pickle.dumps(data, protocol=protocol))
        np.testing.assert_array_equal(out["/train/a_1"], data["/train/a_1"])
        assert out["ints"].dtype == np.int16
        np.testing.assert_array_equal(out["obj"][1], np.ones((1, 3)))
        assert out["scalar"] == 2.5
        assert out["containers"] == data["containers"]


def test_pickle_that_runs_code_is_refused_and_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    bad = tmp_path / "ChairV2_Coordinate"
    bad.write_bytes(pickle.dumps({"/train/x_1": _RunsCode(marker)}))
    # the payload is real: it names os.system (posix.system), which plain pickle.load would call
    assert b"system" in bad.read_bytes()
    with pytest.raises(FormatError) as ei:
        load_pickle_untrusted(bad)
    assert not marker.exists()
    assert ei.value.file == str(bad)
    assert "system" in ei.value.reason and ("posix" in ei.value.reason or "os" in ei.value.reason)


def test_builtin_eval_is_refused(tmp_path: Path) -> None:
    with pytest.raises(FormatError, match="builtins.eval"):
        loads_untrusted(pickle.dumps(_Eval()), source="x.pkl")


def test_codecs_other_than_text_are_refused() -> None:
    # _codecs.encode is allowed for bytes at protocol 2, but only with text codecs.
    payload = b"\x80\x02c_codecs\nencode\nX\x03\x00\x00\x00abcX\x04\x00\x00\x00zlibq\x00\x86R."
    with pytest.raises(FormatError, match="zlib"):
        loads_untrusted(payload, source="x.pkl")


def test_corrupt_pickle_is_a_format_error(tmp_path: Path) -> None:
    f = tmp_path / "cut.pkl"
    f.write_bytes(pickle.dumps({"a": np.arange(10)})[:-7])
    with pytest.raises(FormatError) as ei:
        load_pickle_untrusted(f)
    assert ei.value.file == str(f) and "pickle" in ei.value.reason


def _npz_with_member(path: Path, name: str, raw_npy: bytes) -> None:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(name + ".npy", raw_npy)


def _object_npy(payload: bytes, shape: tuple[int, ...]) -> bytes:
    buf = io.BytesIO()
    npformat.write_array_header_1_0(buf, {"descr": "|O", "fortran_order": False, "shape": shape})
    return buf.getvalue() + payload


def test_npz_object_arrays_load_without_allow_pickle(tmp_path: Path) -> None:
    drawings = np.empty(3, dtype=object)
    for i in range(3):
        drawings[i] = np.full((i + 2, 3), i, dtype=np.int16)
    f = tmp_path / "set.npz"
    np.savez(f, train=drawings, plain=np.arange(6).reshape(2, 3))
    with pytest.raises(ValueError):
        np.load(f)["train"]  # numpy refuses object arrays without allow_pickle
    out = load_npz_untrusted(f)
    assert out["train"].shape == (3,) and out["train"][2].shape == (4, 3)
    np.testing.assert_array_equal(out["plain"], np.arange(6).reshape(2, 3))
    assert set(load_npz_untrusted(f, keys=lambda k: k == "plain")) == {"plain"}


def test_npz_member_that_runs_code_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    f = tmp_path / "evil.npz"
    _npz_with_member(f, "train", _object_npy(pickle.dumps(_RunsCode(marker), protocol=2), (1,)))
    with pytest.raises(FormatError) as ei:
        load_npz_untrusted(f)
    assert not marker.exists()
    assert ei.value.file == str(f) and ei.value.record == "train" and "system" in ei.value.reason


def test_npz_that_is_not_a_zip(tmp_path: Path) -> None:
    f = tmp_path / "x.npz"
    f.write_bytes(b"not a zip")
    with pytest.raises(FormatError) as ei:
        load_npz_untrusted(f)
    assert ei.value.record is None and "zip" in ei.value.reason


def test_npz_payload_size_must_match_header(tmp_path: Path) -> None:
    f = tmp_path / "lie.npz"
    arr = np.array([np.zeros((1, 3))], dtype=object)
    _npz_with_member(f, "train", _object_npy(pickle.dumps(arr, protocol=2), (5,)))
    with pytest.raises(FormatError, match="header says shape"):
        load_npz_untrusted(f)


def _nested() -> np.ndarray:
    inner = np.empty(1, dtype=object)
    inner[0] = np.zeros((2, 3))
    outer = np.empty(1, dtype=object)
    outer[0] = inner
    return outer


@pytest.mark.parametrize(
    "value, fragment",
    [
        (np.array(["a", "b"]), "'<U1'"),
        (np.array([b"abc"]), "'|S3'"),
        (np.array([1 + 2j]), "complex128"),
        (np.array(["2020-01-01"], dtype="M8[D]"), "datetime64"),
        (np.zeros(2, dtype=[("x", "f8"), ("y", "f8")]), "void"),
        (np.str_("x"), "'<U1'"),
        (np.complex64(1j), "complex64"),
        (_nested(), "nested deeper than one level"),
        (np.array(["x", np.zeros(2)], dtype=object), "element 0 is a str"),
        (np.array([[1, 2], "x"], dtype=object), "element 0 is a list"),
    ],
)
@pytest.mark.parametrize("protocol", [2, 5])
def test_only_numeric_arrays_are_admitted(tmp_path: Path, value: object, fragment: str, protocol: int) -> None:
    f = tmp_path / "ChairV2_Coordinate"
    f.write_bytes(pickle.dumps({"/train/a_1": value}, protocol=protocol))
    with pytest.raises(FormatError) as ei:
        load_pickle_untrusted(f)
    assert ei.value.file == str(f) and ei.value.record is None
    assert ei.value.reason.startswith("refused: ") and fragment in ei.value.reason


def test_the_refusal_happens_inside_the_unpickler() -> None:
    from sketchsearch.data.formats.safe_pickle import RestrictedUnpickler

    with pytest.raises(pickle.UnpicklingError, match="'<U1'"):
        RestrictedUnpickler(io.BytesIO(pickle.dumps(np.array(["a"]))), source="x.pkl").load()
    # numpy.ndarray(shape, dtype) called directly (not how numpy pickles arrays) is refused too
    payload = b"\x80\x02cnumpy\nndarray\nK\x02\x85X\x02\x00\x00\x00U1\x86R."
    with pytest.raises(FormatError, match="numpy.ndarray"):
        loads_untrusted(payload, source="x.pkl")


def test_numeric_and_one_level_object_arrays_come_back_as_plain_ndarrays() -> None:
    drawings = np.empty(3, dtype=object)
    drawings[:] = [np.zeros((2, 3), np.int16), np.ones((1, 3), np.float32), np.array([[True, False, True]])]
    data = {
        "d": drawings,
        "t": (np.arange(3, dtype=np.uint8),),
        "l": [np.float16([1.5])],
        "n": np.array([1, 2.5, None], dtype=object),
    }
    for protocol in (2, 5):
        out = loads_untrusted(pickle.dumps(data, protocol=protocol))
        arrays = [out["d"], *out["d"], out["t"][0], out["l"][0], out["n"]]
        assert all(type(a) is np.ndarray for a in arrays)
        assert [a.dtype for a in out["d"]] == [np.int16, np.float32, np.bool_]
        assert out["n"].tolist() == [1, 2.5, None]


def test_npz_string_member_is_refused(tmp_path: Path) -> None:
    f = tmp_path / "s.npz"
    np.savez(f, train=np.array(["a", "bc"]), valid=np.zeros(2))
    with pytest.raises(FormatError) as ei:
        load_npz_untrusted(f)
    assert ei.value.file == str(f) and ei.value.record == "train" and "'<U2'" in ei.value.reason
    assert list(load_npz_untrusted(f, keys=lambda k: k == "valid")) == ["valid"]
    nested = tmp_path / "nested.npz"
    np.savez(nested, train=_nested())
    with pytest.raises(FormatError, match="nested deeper than one level"):
        load_npz_untrusted(nested)
