"""Readers on tiny files written here: good records parse exactly, each bad record gives a FormatError that
names the file and the record, and is skipped (and reported) unless strict."""

from __future__ import annotations

import io
import json
import os
import pickle
import struct
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import numpy.lib.format as npformat
import pytest
from PIL import Image

from sketchsearch.data.formats import (
    READERS,
    detect_format,
    load_image,
    read_any,
    read_images,
    read_omniglot,
    read_qmul_chairv2,
    read_qmul_v1,
    read_quickdraw,
    read_quickdraw_bin,
    read_quickdraw_bitmap,
    read_quickdraw_ndjson,
    read_sketchrnn,
    read_sketchy,
)
from sketchsearch.data.inspect import inspect_dataset
from sketchsearch.errors import FormatError

RAW = {
    "word": "cat",
    "key_id": "42",
    "countrycode": "FR",
    "recognized": True,
    "drawing": [[[0.5, 10.0, 20.0], [1.0, 2.0, 3.5], [0, 15, 31]], [[5, 6], [7, 8], [40, 52]]],
}
SIMPLE = {"word": "cat", "key_id": 7, "drawing": [[[0, 255], [10, 20]], [[3], [4]]]}


def _ndjson(path: Path, lines: list[str], trailing_newline: bool = True) -> Path:
    path.write_text("\n".join(lines) + ("\n" if trailing_newline else ""), encoding="utf-8")
    return path


def _collect(reader: Any, path: Path, **kw: Any) -> tuple[list[Any], list[FormatError]]:
    errors: list[FormatError] = []
    items = list(reader(path, on_error=errors.append, **kw))
    return items, errors


# ---------------------------------------------------------------------------------------------- QuickDraw ndjson
def test_raw_and_simplified_lines_parse_exactly(tmp_path: Path) -> None:
    f = _ndjson(tmp_path / "cat.ndjson", [json.dumps(RAW), json.dumps(SIMPLE)])
    raw, simple = read_quickdraw_ndjson(f)
    assert (raw.id, raw.label, raw.modality, raw.source) == ("42", "cat", "sketch", f"{f}:1")
    np.testing.assert_allclose(raw.sketch.strokes[0], [[0.5, 1.0], [10.0, 2.0], [20.0, 3.5]])
    np.testing.assert_array_equal(raw.sketch.times[1], [40, 52])
    assert raw.meta == {"countrycode": "FR", "recognized": True, "quickdraw_format": "raw"}
    assert simple.id == "7" and simple.sketch.times is None and simple.meta["quickdraw_format"] == "simplified"
    np.testing.assert_array_equal(simple.sketch.strokes[1], [[3, 4]])


def test_label_falls_back_to_file_stem_and_id_to_line(tmp_path: Path) -> None:
    f = _ndjson(tmp_path / "hot dog.ndjson", [json.dumps({"drawing": SIMPLE["drawing"]})])
    (item,) = read_quickdraw_ndjson(f)
    assert item.label == "hot dog" and item.id == "hot dog:1"


@pytest.mark.parametrize(
    "line, reason",
    [
        (json.dumps(RAW)[:-25], "truncated"),  # a line cut short (then more lines follow)
        ("this is not json", "not valid JSON"),
        (json.dumps({"word": "cat", "drawing": []}), "empty drawing"),
        (json.dumps({"word": "cat", "drawing": [[[], []]]}), "empty drawing"),
        (json.dumps({"word": "cat"}), "missing field 'drawing'"),
        (json.dumps({"word": 3, "drawing": SIMPLE["drawing"]}), "'word' must be a string"),
        (json.dumps({"drawing": [[[1, 2, 3], [4, 5]]]}), "3 x values but 2 y values"),
        (json.dumps({"drawing": [[["1", "2"], [4, 5]]]}), "must be a list of numbers"),
        (json.dumps({"drawing": [[[1, 2], [4, 5], [0]]]}), "2 points but 1 times"),
        (json.dumps([1, 2]), "expected a JSON object"),
    ],
)
def test_bad_ndjson_line_names_file_and_line(tmp_path: Path, line: str, reason: str) -> None:
    f = _ndjson(tmp_path / "cat.ndjson", [json.dumps(SIMPLE), line, json.dumps(RAW)])
    with pytest.raises(FormatError) as ei:
        list(read_quickdraw_ndjson(f, strict=True))
    assert ei.value.file == str(f) and ei.value.record == 2 and reason in ei.value.reason
    assert f"{f}: record 2" in str(ei.value)
    items, errors = _collect(read_quickdraw_ndjson, f)
    assert [it.source for it in items] == [f"{f}:1", f"{f}:3"]  # the good lines around it are kept
    assert [(e.file, e.record) for e in errors] == [(str(f), 2)]


def test_json_error_messages_are_complete(tmp_path: Path) -> None:
    # a line cut inside a string (then more lines): the error names the string, not the newline after it
    f = _ndjson(tmp_path / "cat.ndjson", [json.dumps(SIMPLE), '{"word": "ca', "{oops}", '{"word": "a\tb"}'])
    _, errors = _collect(read_quickdraw_ndjson, f)
    assert [(e.record, e.reason) for e in errors] == [
        (2, "truncated record (cut short): JSON ends after 12 characters (Unterminated string starting at: column 10)"),
        (3, "not valid JSON (Expecting property name enclosed in double quotes: column 2)"),
        (4, "not valid JSON (Invalid control character at: column 12)"),
    ]
    assert str(errors[0]).startswith(f"{f}: record 2: truncated record")


def test_truncated_last_line(tmp_path: Path) -> None:
    f = _ndjson(tmp_path / "cat.ndjson", [json.dumps(SIMPLE), json.dumps(RAW)[:40]], trailing_newline=False)
    items, errors = _collect(read_quickdraw_ndjson, f)
    assert len(items) == 1 and errors[0].record == 2
    assert "truncated record at the end of the file" in errors[0].reason


def test_blank_lines_are_not_records_and_limit_stops(tmp_path: Path) -> None:
    f = _ndjson(tmp_path / "cat.ndjson", [json.dumps(SIMPLE), "", json.dumps(SIMPLE), json.dumps(SIMPLE)])
    items, errors = _collect(read_quickdraw_ndjson, f)
    assert [it.source.rsplit(":", 1)[1] for it in items] == ["1", "3", "4"] and not errors
    assert len(list(read_quickdraw_ndjson(f, limit=2))) == 2


def test_ndjson_folder_reads_every_file(tmp_path: Path) -> None:
    _ndjson(tmp_path / "a.ndjson", [json.dumps({"drawing": SIMPLE["drawing"]})])
    _ndjson(tmp_path / "b.ndjson", [json.dumps({"drawing": SIMPLE["drawing"]})] * 2)
    assert [it.label for it in read_quickdraw_ndjson(tmp_path)] == ["a", "b", "b"]
    assert detect_format(tmp_path) == "quickdraw_ndjson"


# ---------------------------------------------------------------------------------------------- QuickDraw binary
def _bin_record(key: int, strokes: list[tuple[list[int], list[int]]]) -> bytes:
    out = struct.pack("<Q2sBIH", key, b"US", 1, 1490000000, len(strokes))
    for xs, ys in strokes:
        out += struct.pack("<H", len(xs)) + bytes(xs) + bytes(ys)
    return out


def test_binary_format(tmp_path: Path) -> None:
    f = tmp_path / "apple.bin"
    f.write_bytes(_bin_record(5, [([1, 2, 3], [4, 5, 6]), ([9], [8])]) + _bin_record(6, [([0, 255], [7, 7])]))
    a, b = read_quickdraw_bin(f)
    assert (a.id, a.label, a.meta["countrycode"], a.meta["recognized"]) == ("5", "apple", "US", True)
    np.testing.assert_array_equal(a.sketch.strokes[0], [[1, 4], [2, 5], [3, 6]])
    np.testing.assert_array_equal(b.sketch.strokes[0], [[0, 7], [255, 7]])
    assert detect_format(f) == "quickdraw_bin"


def test_truncated_binary_record(tmp_path: Path) -> None:
    f = tmp_path / "apple.bin"
    good = _bin_record(5, [([1, 2], [3, 4])])
    f.write_bytes(good + _bin_record(6, [([1, 2, 3], [4, 5, 6])])[:-2])
    items, errors = _collect(read_quickdraw_bin, f)
    assert len(items) == 1 and errors[0].file == str(f) and errors[0].record == 1
    assert "truncated" in errors[0].reason
    with pytest.raises(FormatError, match="record 1"):
        list(read_quickdraw_bin(f, strict=True))


# ---------------------------------------------------------------------------------------------- QuickDraw bitmaps
def test_npy_bitmaps_both_shapes(tmp_path: Path, rng: np.random.Generator) -> None:
    a = rng.integers(0, 256, size=(3, 1, 784), dtype=np.uint8)
    np.save(tmp_path / "eye.npy", a)
    np.save(tmp_path / "fish.npy", a[:2, 0])
    items = list(read_quickdraw_bitmap(tmp_path))
    assert [(it.label, it.id) for it in items] == [
        ("eye", "eye.npy:0"),
        ("eye", "eye.npy:1"),
        ("eye", "eye.npy:2"),
        ("fish", "fish.npy:0"),
        ("fish", "fish.npy:1"),
    ]
    np.testing.assert_array_equal(items[1].image, a[1, 0].reshape(28, 28))
    assert items[0].image.dtype == np.uint8 and items[0].image.shape == (28, 28)


def test_npz_bitmaps_labels_from_stem(tmp_path: Path) -> None:
    images = np.zeros((4, 1, 28, 28), dtype=np.uint8)
    f = tmp_path / "cat_fish.npz"
    np.savez(f, images=images, labels=np.array([0, 1, 1, 0], dtype=np.int16))
    assert [it.label for it in read_quickdraw(f)] == ["cat", "fish", "fish", "cat"]
    g = tmp_path / "mixed.npz"
    np.savez(g, images=images, labels=np.array([0, 1, 2, 0]))
    assert [it.label for it in read_quickdraw_bitmap(g)] == ["0", "1", "2", "0"]
    assert detect_format(f) == "quickdraw_bitmap"


def test_npy_with_wrong_shape_is_a_whole_file_error(tmp_path: Path) -> None:
    f = tmp_path / "eye.npy"
    np.save(f, np.zeros((3, 100), dtype=np.uint8))
    with pytest.raises(FormatError) as ei:
        list(read_quickdraw_bitmap(f, strict=True))
    assert ei.value.file == str(f) and ei.value.record is None and "(N, 784)" in ei.value.reason
    # lenient: the file is one bad record, reported and skipped; the good file beside it is read
    np.save(tmp_path / "cat.npy", np.zeros((2, 784), dtype=np.uint8))
    items, errors = _collect(read_quickdraw_bitmap, tmp_path)
    assert [it.label for it in items] == ["cat", "cat"]
    assert [(e.file, e.record) for e in errors] == [(str(f), None)] and "(N, 784)" in errors[0].reason


def test_corrupt_npz_bitmap_is_reported_not_a_crash(tmp_path: Path) -> None:
    np.savez(tmp_path / "a_b.npz", images=np.zeros((2, 784), np.uint8), labels=np.array([0, 1]))
    raw = bytearray((tmp_path / "a_b.npz").read_bytes())
    raw[200:240] = b"\xff" * 40  # inside the images member (zeros): a CRC error when it is read
    bad = tmp_path / "c_d.npz"
    bad.write_bytes(bytes(raw))
    info = inspect_dataset(tmp_path)
    assert (info["format"], info["items"], info["skipped"]) == ("quickdraw_bitmap", 2, 1)
    assert info["errors"][0]["file"] == str(bad) and "not a readable numpy bitmap" in info["errors"][0]["reason"]
    with pytest.raises(FormatError, match="c_d.npz"):
        inspect_dataset(tmp_path, strict=True)


# ---------------------------------------------------------------------------------------------- sketch-rnn
def test_sketchrnn_npz(tmp_path: Path) -> None:
    def arr(*ds: np.ndarray) -> np.ndarray:
        out = np.empty(len(ds), dtype=object)
        out[:] = list(ds)
        return out

    s3 = np.array([[1, 2, 0], [3, 0, 1], [0, 5, 0], [1, 1, 1]], dtype=np.int16)
    f = tmp_path / "tiny.npz"
    np.savez(f, train=arr(s3, np.zeros((0, 3), np.int16), s3), valid=arr(s3), test=arr(np.zeros((2, 2))))
    items, errors = _collect(read_sketchrnn, f)
    assert [it.id for it in items] == ["tiny.npz:train:0", "tiny.npz:train:2", "tiny.npz:valid:0"]
    np.testing.assert_array_equal(items[0].sketch.strokes[0], [[1, 2], [4, 2]])
    np.testing.assert_array_equal(items[0].sketch.strokes[1], [[4, 7], [5, 8]])
    assert items[0].label is None and items[2].meta == {"split": "valid"}
    assert [(e.record, e.file) for e in errors] == [("train:1", str(f)), ("test:0", str(f))]
    assert detect_format(f) == "sketchrnn"


class _RunsCode:
    """Pickles to ``os.system(<touch marker>)``: what a malicious dataset file would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, (f"touch {self.marker}",))


def _sketchrnn_npz(path: Path, **members: Any) -> Path:
    """An .npz whose members are raw .npy bytes (an object header + a pickle) or arrays (np.save'd)."""
    with zipfile.ZipFile(path, "w") as zf:
        for name, value in members.items():
            buf = io.BytesIO()
            if isinstance(value, bytes):
                header = {"descr": "|O", "fortran_order": False, "shape": (1,)}
                npformat.write_array_header_1_0(buf, header)
                buf.write(value)
            else:
                np.save(buf, value, allow_pickle=True)
            zf.writestr(f"{name}.npy", buf.getvalue())
    return path


def _drawings(n: int) -> np.ndarray:
    out = np.empty(n, dtype=object)
    for i in range(n):
        out[i] = np.array([[1, 2, 0], [3, i, 1]], dtype=np.int16)
    return out


def test_data_info_lenient_skips_a_refused_pickle_file_and_reads_the_rest(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from sketchsearch.cli import app

    marker = tmp_path / "pwned"
    evil = _sketchrnn_npz(tmp_path / "evil.npz", train=pickle.dumps(_RunsCode(marker), protocol=2))
    assert b"system" in evil.read_bytes()  # the payload is real
    np.savez(tmp_path / "good.npz", train=_drawings(3), valid=_drawings(2))
    res = CliRunner().invoke(app, ["data", "info", str(tmp_path), "--json"])
    assert res.exit_code == 0, res.output
    info = json.loads(res.stdout)
    assert (info["format"], info["items"], info["skipped"]) == ("sketchrnn", 5, 1)
    (err,) = info["errors"]
    assert err["file"] == str(evil) and err["record"] == "train" and "system" in err["reason"]
    res = CliRunner().invoke(app, ["data", "info", str(tmp_path), "--strict"])
    assert res.exit_code == 2 and "evil.npz" in res.output and "Traceback" not in res.output
    assert not marker.exists()


def test_sketchrnn_bad_member_or_file_is_a_bad_record(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    mixed = _sketchrnn_npz(tmp_path / "mixed.npz", train=_drawings(2), test=pickle.dumps(_RunsCode(marker), protocol=2))
    (tmp_path / "corrupt.npz").write_bytes(b"PK\x03\x04 not really a zip")
    np.savez(tmp_path / "strings.npz", train=np.array(["a", "b"]))
    assert detect_format(tmp_path) == "sketchrnn"  # the corrupt file does not make the folder unreadable
    items, errors = _collect(read_sketchrnn, tmp_path)
    assert [it.id for it in items] == ["mixed.npz:train:0", "mixed.npz:train:1"]
    by_file = {Path(e.file).name: e for e in errors}
    assert set(by_file) == {"corrupt.npz", "mixed.npz", "strings.npz"}
    assert by_file["corrupt.npz"].record is None and "zip" in by_file["corrupt.npz"].reason
    assert by_file["mixed.npz"].record == "test" and "system" in by_file["mixed.npz"].reason
    assert by_file["strings.npz"].record == "train" and "'<U1'" in by_file["strings.npz"].reason
    with pytest.raises(FormatError, match="corrupt.npz"):
        list(read_sketchrnn(tmp_path, strict=True))
    assert not marker.exists() and mixed.is_file()


# ---------------------------------------------------------------------------------------------- Omniglot
def test_omniglot_strokes_flip_y_and_pair_with_images(tmp_path: Path) -> None:
    sdir = tmp_path / "strokes_background_x" / "Greek" / "character01"
    idir = tmp_path / "images_background_x" / "Greek" / "character01"
    sdir.mkdir(parents=True)
    idir.mkdir(parents=True)
    (sdir / "0110_01.txt").write_text("START\n1.5,-2,0\n3,-4,17\nBREAK\n5,-6,30\nBREAK\n")
    (sdir / "0110_02.txt").write_text("START\n1,-2,0\noops\nBREAK\n")
    Image.new("1", (105, 105), 1).save(idir / "0110_01.png")
    items, errors = _collect(read_omniglot, tmp_path)
    strokes = [it for it in items if it.sketch is not None]
    images = [it for it in items if it.image is not None]
    assert len(strokes) == 1 and len(images) == 1
    s = strokes[0]
    assert s.label == "Greek/character01" and s.pair == images[0].pair == "Greek/character01/0110_01"
    np.testing.assert_allclose(s.sketch.strokes[0], [[1.5, 2.0], [3.0, 4.0]])  # y now points down
    np.testing.assert_array_equal(s.sketch.times[0], [0, 17])
    assert images[0].image.shape == (105, 105) and images[0].image.dtype == np.uint8
    assert errors[0].file == str(sdir / "0110_02.txt") and errors[0].record == 3 and "x,y,t" in errors[0].reason
    assert detect_format(tmp_path) == "omniglot"


# ---------------------------------------------------------------------------------------------- Sketchy
def test_sketchy_pairs(tmp_path: Path) -> None:
    for sub, name in [
        ("sketch", "n01_10-1.png"),
        ("sketch", "n01_10-2.png"),
        ("photo", "n01_10.jpg"),
        ("photo", "n01_11.jpg"),
    ]:
        d = tmp_path / sub / "cat"
        d.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8), (255, 255, 255)).save(d / name)
    (tmp_path / "sketch" / "cat" / "n01_12-1.png").write_bytes(b"not a png at all")
    items, errors = _collect(read_sketchy, tmp_path)
    assert [(it.modality, it.pair, it.label) for it in items] == [
        ("sketch", "n01_10", "cat"),
        ("sketch", "n01_10", "cat"),
        ("photo", "n01_10", "cat"),
        ("photo", "n01_11", "cat"),
    ]
    assert items[0].image.shape == (8, 8, 3)
    assert errors[0].file == str(tmp_path / "sketch" / "cat" / "n01_12-1.png")
    assert detect_format(tmp_path) == "sketchy"


# ---------------------------------------------------------------------------------------------- QMUL
def test_qmul_v1_mat_pairs(tmp_path: Path) -> None:
    import scipy.io

    d = tmp_path / "shoes"
    d.mkdir()
    sk = np.arange(3 * 4 * 5, dtype=np.uint8).reshape(3, 4, 5)
    scipy.io.savemat(d / "shoes_sketch_db_train.mat", {"data": sk})
    scipy.io.savemat(d / "shoes_edge_db_train.mat", {"data": 255 - sk})
    scipy.io.savemat(d / "shoes_sketch_db_test.mat", {"data": sk[:1]})
    scipy.io.savemat(d / "shoes_edge_db_test.mat", {"data": sk[:2]})
    (d / "shoes_annotation.json").write_text(json.dumps({"train": {"images": ["1.jpg", "2.jpg", "3.jpg"]}}))
    it = read_qmul_v1(tmp_path)
    items = [next(it) for _ in range(6)]
    assert [(i.modality, i.pair) for i in items[:2]] == [("sketch", "shoes/1"), ("photo", "shoes/1")]
    np.testing.assert_array_equal(items[2].image, sk[1])
    np.testing.assert_array_equal(items[3].image, 255 - sk[1])
    assert list(it) == []  # test split: 2 edge maps for 1 sketch, a bad record (both files skipped)
    with pytest.raises(FormatError) as ei:
        list(read_qmul_v1(tmp_path, strict=True))
    assert ei.value.file == str(d / "shoes_edge_db_test.mat") and "one edge map per sketch" in ei.value.reason
    _, errors = _collect(read_qmul_v1, tmp_path)
    assert [(e.file, e.record) for e in errors] == [(str(d / "shoes_edge_db_test.mat"), None)]
    assert detect_format(tmp_path) == "qmul_v1"
    one = list(read_qmul_v1(d / "shoes_edge_db_train.mat"))  # one file: only its images, same ids and pairs
    assert [(i.id, i.pair, i.modality) for i in one] == [
        (f"shoes/train/edge/{k}", f"shoes/{k + 1}", "photo") for k in range(3)
    ]
    assert detect_format(d / "shoes_edge_db_train.mat") == "qmul_v1"
    scipy.io.savemat(d / "shoes_train_triplets.mat", {"One": np.zeros((2, 1))})
    with pytest.raises(FormatError, match="not a QMUL V1 image file"):
        list(read_any(d / "shoes_train_triplets.mat"))


def test_qmul_chairv2(tmp_path: Path) -> None:
    pts = np.array([[0, 0, 0], [1, 1, 1], [5, 5, 0], [6, 7, 1]], dtype=np.float64)
    f = tmp_path / "ChairV2_Coordinate"
    f.write_bytes(pickle.dumps({"/train/a_b-1_2": pts, "/test/c_1": np.zeros((3, 2)), "bad": pts}))
    items, errors = _collect(read_qmul_chairv2, f)
    (item,) = items
    assert (item.id, item.pair, item.meta) == ("train/a_b-1_2", "a_b-1", {"split": "train", "k": 2})
    assert [len(s) for s in item.sketch.strokes] == [2, 2]
    assert [e.record for e in errors] == ["/test/c_1", "'bad'"]
    assert detect_format(tmp_path) == "qmul_chairv2"


@pytest.mark.parametrize("kind", ["runs code", "strings", "not a dict", "cut"])
def test_qmul_chairv2_unreadable_file_is_reported_or_raised(tmp_path: Path, kind: str) -> None:
    marker = tmp_path / "pwned"
    payload = {
        "runs code": lambda: pickle.dumps({"/train/a_1": _RunsCode(marker)}),
        "strings": lambda: pickle.dumps({"/train/a_1": np.array(["x", "y", "z"])}),
        "not a dict": lambda: pickle.dumps([np.zeros((2, 3))]),
        "cut": lambda: pickle.dumps({"/train/a_1": np.zeros((2, 3))})[:-9],
    }[kind]()
    f = tmp_path / "ChairV2_Coordinate"
    f.write_bytes(payload)
    info = inspect_dataset(tmp_path)
    assert (info["format"], info["items"], info["skipped"]) == ("qmul_chairv2", 0, 1)
    assert info["errors"][0]["file"] == str(f) and info["errors"][0]["record"] is None
    with pytest.raises(FormatError) as ei:
        inspect_dataset(tmp_path, strict=True)
    assert ei.value.file == str(f)
    assert not marker.exists()


def test_qmul_v1_unreadable_mat_is_a_bad_record(tmp_path: Path) -> None:
    import scipy.io

    d = tmp_path / "chairs"
    d.mkdir()
    scipy.io.savemat(d / "chairs_sketch_db_train.mat", {"data": np.zeros((2, 4, 4), np.uint8)})
    scipy.io.savemat(d / "chairs_edge_db_train.mat", {"data": np.zeros((2, 4, 4), np.uint8)})
    (d / "chairs_sketch_db_test.mat").write_bytes(b"MATLAB 5.0 MAT-file, cut here")
    scipy.io.savemat(d / "chairs_edge_db_test.mat", {"data": np.zeros((1, 4, 4), np.uint8)})
    info = inspect_dataset(tmp_path)
    assert (info["format"], info["items"], info["skipped"]) == ("qmul_v1", 5, 1)
    assert info["modalities"] == {"sketch": 2, "photo": 3}  # the test edge map is still read
    err = info["errors"][0]
    assert err["file"] == str(d / "chairs_sketch_db_test.mat") and err["record"] is None
    assert "not a readable MATLAB v5 .mat file" in err["reason"]
    with pytest.raises(FormatError, match="chairs_sketch_db_test.mat"):
        inspect_dataset(tmp_path, strict=True)


# ---------------------------------------------------------------------------------------------- images
def test_file_that_claims_to_be_png_and_is_not(tmp_path: Path) -> None:
    (tmp_path / "cat").mkdir()
    Image.new("L", (4, 4), 200).save(tmp_path / "cat" / "good.png")
    fake = tmp_path / "cat" / "fake.png"
    fake.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    items, errors = _collect(read_images, tmp_path)
    assert [(it.label, it.id) for it in items] == [("cat", "cat/good")] and items[0].image.shape == (4, 4)
    assert errors[0].file == str(fake)
    with pytest.raises(FormatError) as ei:
        list(read_images(tmp_path, strict=True))
    assert ei.value.file == str(fake)


def test_truncated_jpeg(tmp_path: Path, rng: np.random.Generator) -> None:
    f = tmp_path / "photo.jpg"
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(f)
    f.write_bytes(f.read_bytes()[:300])
    with pytest.raises(FormatError) as ei:
        load_image(f)
    assert ei.value.file == str(f) and "corrupt" in ei.value.reason


def test_decompression_bomb_header_is_refused(tmp_path: Path) -> None:
    """A valid small PNG whose header declares 100000 x 100000 pixels: refused before decoding."""
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    bomb = tmp_path / "bomb.png"
    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0)
    bomb.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 100)) + chunk(b"IEND", b"")
    )
    items, errors = _collect(read_images, tmp_path)
    assert items == [] and errors[0].file == str(bomb) and "decompression bomb" in errors[0].reason


def test_pillow_limit_lowered_refuses_real_image(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "big.png"
    Image.new("L", (300, 300), 255).save(f)  # compresses to a few hundred bytes
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)
    with pytest.raises(FormatError, match="decompression bomb"):
        load_image(f)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    assert load_image(f, max_pixels=None).shape == (300, 300)
    with pytest.raises(FormatError, match="300 x 300"):
        load_image(f, max_pixels=1000)


def test_images_rgba_composited_on_white(tmp_path: Path) -> None:
    f = tmp_path / "a.png"
    Image.new("RGBA", (2, 2), (0, 0, 0, 0)).save(f)
    np.testing.assert_array_equal(load_image(f), np.full((2, 2, 3), 255, np.uint8))


# ---------------------------------------------------------------------------------- registry / detect / inspect
def test_registry_lists_every_reader() -> None:
    for name in [
        "quickdraw",
        "quickdraw_ndjson",
        "quickdraw_bin",
        "quickdraw_bitmap",
        "sketchrnn",
        "omniglot",
        "sketchy",
        "qmul_v1",
        "qmul_chairv2",
        "images",
    ]:
        assert name in READERS
    with pytest.raises(ValueError, match="valid names: .*quickdraw"):
        READERS.get("nope")


def test_detect_format_unknown_lists_known_formats(tmp_path: Path) -> None:
    f = tmp_path / "notes.txt"
    f.write_text("hello")
    with pytest.raises(FormatError) as ei:
        detect_format(f)
    assert ei.value.file == str(f) and "known formats: " in ei.value.reason and "sketchy" in ei.value.reason
    with pytest.raises(FormatError, match="no such file"):
        detect_format(tmp_path / "missing")


def test_inspect_dataset_counts_and_caps_errors(tmp_path: Path) -> None:
    lines = [json.dumps(SIMPLE), json.dumps({"word": "dog", "drawing": SIMPLE["drawing"]})] + ["{bad"] * 5
    f = _ndjson(tmp_path / "cat.ndjson", lines)
    info = inspect_dataset(f, max_errors=3)
    assert (info["items"], info["classes"], info["skipped"], info["format"]) == (2, 2, 5, "quickdraw_ndjson")
    assert info["modalities"] == {"sketch": 2, "photo": 0} and info["class_counts"] == {"cat": 1, "dog": 1}
    assert len(info["errors"]) == 3 and info["errors"][0] == {
        "file": str(f),
        "record": 3,
        "reason": info["errors"][0]["reason"],
    }
    json.dumps(info)  # serialisable for --json
    with pytest.raises(FormatError, match="record 3"):
        inspect_dataset(f, strict=True)


def test_read_any_uses_detected_reader(tmp_path: Path) -> None:
    f = _ndjson(tmp_path / "cat.ndjson", [json.dumps(SIMPLE)])
    assert [it.id for it in read_any(f)] == ["7"]
    assert [it.id for it in read_any(f, fmt="quickdraw")] == ["7"]
