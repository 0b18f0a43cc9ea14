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
