"""Bounded memory where input arrives (issue 12): the one image decoder's decode budget (bytes per pixel, from
the header), its reduction on decode, EXIF orientation applied once and alike by the CLI and the service, the
service's limit on concurrent decodes, and the readers' caps on decompressed members (``.npz``, ``.mat``),
ndjson line length and points per drawing. Every cap is a parameter (:class:`ReadLimits`), so the files here
are tiny and the limits small."""

from __future__ import annotations

import io
import json
import pickle
import struct
import threading
import time
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import numpy.lib.format as npformat
import pytest
from PIL import Image, ImageFile, ImageOps
from starlette.exceptions import HTTPException

from sketchsearch.data.batching import Preprocessing, item_input, make_batch
from sketchsearch.data.formats import (
    read_any,
    read_omniglot,
    read_qmul_chairv2,
    read_qmul_v1,
    read_quickdraw_bin,
    read_quickdraw_bitmap,
    read_quickdraw_ndjson,
    read_sketchrnn,
)
from sketchsearch.data.formats.base import READ_LIMITS, ReadLimits, bounded_lines
from sketchsearch.data.formats.images import ImageDecodeError, decode_bytes_per_pixel, load_image, open_image
from sketchsearch.data.formats.qmul import check_mat_sizes
from sketchsearch.data.inspect import inspect_dataset
from sketchsearch.errors import FormatError
from sketchsearch.service import decode
from sketchsearch.service.limits import Limits


def _collect(reader: Any, path: Path, **kw: Any) -> tuple[list[Any], list[FormatError]]:
    errors: list[FormatError] = []
    return list(reader(path, on_error=errors.append, **kw)), errors


# ---------------------------------------------------------------------------------------------- images
def _png16_rgba(path: Path, w: int, h: int) -> Path:
    """A w x h RGBA PNG with 16 bits a channel: opaque black on the left half, transparent on the right."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    px = np.zeros((h, w, 4), dtype=">u2")
    px[:, : w // 2, 3] = 0xFFFF  # opaque black
    raw = b"".join(b"\x00" + px[y].tobytes() for y in range(h))
    ihdr = struct.pack(">IIBBBBB", w, h, 16, 6, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    )
    return path


def test_decode_bytes_per_pixel_counts_16_bit_and_alpha(tmp_path: Path) -> None:
    def bpp(img: Image.Image, fmt: str = "PNG") -> int:
        buf = io.BytesIO()
        img.save(buf, fmt)
        return decode_bytes_per_pixel(Image.open(io.BytesIO(buf.getvalue())))

    assert decode_bytes_per_pixel(Image.open(_png16_rgba(tmp_path / "a.png", 8, 8))) == 8
    assert bpp(Image.new("RGBA", (8, 8))) == 4
    assert bpp(Image.new("RGB", (8, 8))) == 3
    assert bpp(Image.new("L", (8, 8))) == 1
    assert bpp(Image.new("I;16", (8, 8))) == 2
    pal = Image.new("P", (8, 8))
    pal.info["transparency"] = 0
    assert bpp(pal) == 4  # decoded as RGBA


def test_decode_budget_refuses_from_the_header_by_bytes_not_pixels(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Same pixel count, 16-bit RGBA (8 B/px) is over a 40 KB budget and 8-bit RGBA (4 B/px) is not; the
    refusal comes before any pixel is decoded (``load`` is never called)."""
    f16 = _png16_rgba(tmp_path / "deep.png", 64, 64)  # 64 * 64 * 8 = 32768 bytes
    f8 = tmp_path / "flat.png"
    Image.open(f16).convert("RGBA").save(f8)  # 64 * 64 * 4 = 16384 bytes
    limits = ReadLimits(max_decode_bytes=20_000)
    assert load_image(f8, limits=limits).shape == (64, 64, 3)

    def no_decode(self: Any) -> Any:
        raise AssertionError("decoded before the budget was checked")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decode)
    with pytest.raises(ImageDecodeError) as ei:
        load_image(f16, limits=limits)
    assert ei.value.kind == "over_budget" and ei.value.file == str(f16)
    assert "32768 bytes" in str(ei.value) and "decode budget of 20000" in str(ei.value)
    assert "\n" not in str(ei.value)


def test_16_bit_rgba_decodes_to_8_bit_rgb_on_white(tmp_path: Path) -> None:
    arr = load_image(_png16_rgba(tmp_path / "deep.png", 16, 8))
    assert arr.dtype == np.uint8 and arr.shape == (8, 16, 3)
    assert (arr[:, :8] == 0).all() and (arr[:, 8:] == 255).all()


def test_16_bit_grey_is_scaled_not_clipped(tmp_path: Path) -> None:
    f = tmp_path / "grey16.png"
    Image.fromarray(np.full((4, 4), 32768, np.uint16)).save(f)
    assert (load_image(f) == 128).all()


def test_reduced_on_decode(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Larger images come out at most max_image_side a side; JPEG is asked to decode scaled (draft)."""
    rng = np.random.default_rng(0)
    jpg = tmp_path / "big.jpg"
    Image.fromarray(rng.integers(0, 255, (600, 1200, 3), dtype=np.uint8)).save(jpg, quality=90)
    png = tmp_path / "big.png"
    Image.new("L", (900, 300), 200).save(png)
    from PIL import JpegImagePlugin

    drafts: list[Any] = []
    real_draft = JpegImagePlugin.JpegImageFile.draft

    def spy(self: Any, mode: Any, size: Any) -> Any:
        drafts.append(size)
        return real_draft(self, mode, size)

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spy)
    limits = ReadLimits(max_image_side=256)
    assert open_image(jpg, limits=limits).shape == (128, 256, 3)
    assert open_image(png, limits=limits).shape == (85, 256)
    assert drafts == [(256, 128)]
    assert open_image(png, limits=ReadLimits(max_image_side=None)).shape == (300, 900)


@pytest.mark.parametrize("mode", ["RGBA", "RGB", "L"])
def test_banded_reduction_equals_the_whole_image_one(tmp_path: Path, mode: str) -> None:
    """Reducing band by band (no second full-size buffer) gives exactly what compositing the whole image on
    white, box-reducing it by the integer factor and box-resizing to the side gives."""
    rng = np.random.default_rng(1)
    channels = {"RGBA": 4, "RGB": 3, "L": 1}[mode]
    px = rng.integers(0, 256, (701, 1030, channels), dtype=np.uint8)
    f = tmp_path / "big.png"
    Image.fromarray(px.squeeze(-1) if mode == "L" else px, mode).save(f)
    got = open_image(f, limits=ReadLimits(max_image_side=100))
    im = Image.open(f)
    if mode == "RGBA":
        im = Image.alpha_composite(Image.new("RGBA", im.size, (255, 255, 255, 255)), im).convert("RGB")
    ref = np.asarray(im.reduce(10).resize((100, 69), Image.Resampling.BOX))  # 103 x 71 -> 100 x 69
    np.testing.assert_array_equal(got, ref)


def _exif_jpeg(orientation: int = 6) -> bytes:
    """A 40 x 24 JPEG (an L-shaped dark mark on white) whose EXIF says: rotate for display."""
    img = np.full((24, 40, 3), 255, np.uint8)
    img[4:20, 4:8] = (10, 20, 30)
    img[16:20, 4:30] = (10, 20, 30)
    im = Image.fromarray(img)
    exif = im.getexif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=95, exif=exif.tobytes())
    return buf.getvalue()


@pytest.mark.parametrize("orientation", [6, 3, 8])
def test_exif_orientation_parity_cli_and_service(tmp_path: Path, orientation: int) -> None:
    """The same JPEG through the CLI's path (read_any -> item_input) and the service's (read_image): the same
    upright pixels, what ImageOps.exif_transpose makes of it, and so the same encoder input."""
    data = _exif_jpeg(orientation)
    f = tmp_path / "phone.jpg"
    f.write_bytes(data)
    (item,) = read_any(f, strict=True)
    cli = item_input(item)
    service = decode.read_image(data, Limits())
    oracle = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB"))
    assert cli.size == service.size == (oracle.shape[1], oracle.shape[0])
    if orientation in (6, 8):
        assert cli.size == (24, 40)  # turned
    np.testing.assert_array_equal(np.asarray(cli), np.asarray(service))
    np.testing.assert_array_equal(np.asarray(service), oracle)
    pre = Preprocessing(inputs=("raster",), raster_size=32, line_width=2.0)
    a, b = make_batch([cli], pre), make_batch([service], pre)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(np.asarray(a[k]), np.asarray(b[k]))


def test_service_refuses_over_its_decode_budget(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(decode, "DECODE_BUDGET_BYTES", 20_000)
    data = _png16_rgba(tmp_path / "deep.png", 64, 64).read_bytes()
    with pytest.raises(HTTPException) as ei:
        decode.read_image(data, Limits())
    assert ei.value.status_code == 413 and "decode budget" in ei.value.detail
    assert "BytesIO" not in ei.value.detail


def test_service_decodes_at_most_slots_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """16 uploads at once hold at most decode_slots() decode buffers, decoded on that many threads of their own
    (so no more than that many glibc arenas ever hold a decode buffer)."""
    running = peak = 0
    lock = threading.Lock()
    threads_seen: set[str] = set()

    def slow_decode(*args: Any, **kw: Any) -> np.ndarray:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
            threads_seen.add(threading.current_thread().name)
        time.sleep(0.02)
        with lock:
            running -= 1
        return np.zeros((4, 4), np.uint8)

    monkeypatch.setattr(decode, "open_image", slow_decode)
    old = decode.decode_slots()
    try:
        decode.set_decode_slots(3)
        threads = [threading.Thread(target=decode.read_image, args=(b"x", Limits())) for _ in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        decode.set_decode_slots(old)
    assert peak == 3
    assert len(threads_seen) <= 3 and all(n.startswith("sketchsearch-decode") for n in threads_seen), threads_seen
    with pytest.raises(ValueError, match="decode slots"):
        decode.set_decode_slots(0)


# ---------------------------------------------------------------------------------------------- .npz
def _npz(path: Path, members: dict[str, np.ndarray]) -> Path:
    np.savez_compressed(path, **members)
    return path


def test_npz_member_over_the_cap_is_refused_before_numpy_reads_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    f = _npz(tmp_path / "bomb.npz", {"images": np.zeros((200, 784), np.uint8), "labels": np.zeros(200, np.int64)})
    limits = ReadLimits(max_member_bytes=100_000)  # images inflate to 156,928 bytes (+ header)

    def no_load(*a: Any, **k: Any) -> Any:
        raise AssertionError("np.load reached")

    monkeypatch.setattr(np, "load", no_load)
    items, errors = _collect(read_quickdraw_bitmap, f, limits=limits)
    assert items == [] and len(errors) == 1
    assert (errors[0].file, errors[0].record) == (str(f), "images")
    assert "max_member_bytes" in errors[0].reason and "\n" not in str(errors[0])
    with pytest.raises(FormatError, match="max_member_bytes"):
        list(read_quickdraw_bitmap(f, strict=True, limits=limits))
    monkeypatch.undo()
    assert len(list(read_quickdraw_bitmap(f))) == 200  # within the default


def test_npz_member_whose_header_lies_is_refused(tmp_path: Path) -> None:
    """A tiny member whose .npy header declares a huge shape: numpy would allocate the shape first."""
    f = tmp_path / "liar.npz"
    buf = io.BytesIO()
    npformat.write_array_header_1_0(buf, {"descr": "|u1", "fortran_order": False, "shape": (10**6, 784)})
    with zipfile.ZipFile(f, "w") as zf:
        zf.writestr("images.npy", buf.getvalue() + bytes(784))
        zf.writestr("labels.npy", buf.getvalue())
    _, errors = _collect(read_quickdraw_bitmap, f)
    assert errors[0].record == "images" and "declares shape (1000000, 784)" in errors[0].reason


def test_sketchrnn_split_over_the_cap_is_a_bad_record(tmp_path: Path) -> None:
    drawings = np.empty(3, dtype=object)
    for i in range(3):
        drawings[i] = np.ones((5, 3), np.int16)
    f = tmp_path / "cat.npz"
    np.savez(f, train=drawings, valid=np.zeros((20_000, 3, 3)))  # valid: 1.4 MB plain float64
    items, errors = _collect(read_sketchrnn, f, limits=ReadLimits(max_member_bytes=1_000_000))
    assert len(items) == 3 and [e.record for e in errors] == ["valid"]


def test_data_info_reports_the_bomb_by_member(tmp_path: Path) -> None:
    f = _npz(tmp_path / "bomb.npz", {"images": np.zeros((200, 784), np.uint8), "labels": np.zeros(200, np.int64)})
    info = inspect_dataset(f, limits=ReadLimits(max_member_bytes=100_000))
    assert (info["items"], info["skipped"]) == (0, 1)
    assert info["errors"][0]["record"] == "images"


# ---------------------------------------------------------------------------------------------- .mat
def _mat_lying(path: Path, dims: tuple[int, ...], n_data: int) -> Path:
    """A MATLAB v5 file with one compressed uint8 variable 'data' whose header says ``dims`` but whose data
    element holds ``n_data`` zero bytes."""
    name = b"data"
    flags = struct.pack("<II", 6, 8) + struct.pack("<II", 9, 0)
    dm = struct.pack(f"<II{len(dims)}i", 5, 4 * len(dims), *dims)
    dm += bytes(-len(dm) % 8)
    nm = struct.pack("<II", 1, len(name)) + name + bytes(-len(name) % 8)
    data = struct.pack("<II", 2, n_data) + bytes(n_data + (-n_data % 8))
    body = flags + dm + nm + data
    comp = zlib.compress(struct.pack("<II", 14, len(body)) + body)
    head = b"MATLAB 5.0 MAT-file".ljust(116, b" ") + bytes(8) + struct.pack("<H", 0x0100) + b"IM"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(head + struct.pack("<II", 15, len(comp)) + comp)
    return path


def test_mat_variable_over_the_cap_by_its_header(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import scipy.io

    f = tmp_path / "shoes" / "shoes_sketch_db_train.mat"
    f.parent.mkdir()
    scipy.io.savemat(f, {"data": np.zeros((20, 64, 64), np.uint8)}, do_compression=True)  # 81,920 bytes

    def no_loadmat(*a: Any, **k: Any) -> Any:
        raise AssertionError("loadmat reached")

    monkeypatch.setattr(scipy.io, "loadmat", no_loadmat)
    items, errors = _collect(read_qmul_v1, f, limits=ReadLimits(max_member_bytes=50_000))
    assert items == [] and (errors[0].file, errors[0].record) == (str(f), "data")
    assert "uint8 (20, 64, 64) = 81920 bytes" in errors[0].reason and "max_member_bytes" in errors[0].reason


def test_mat_compressed_bomb_whose_header_lies_is_refused_by_counting(tmp_path: Path) -> None:
    """The header says 1 x 1, the zlib stream inflates to 300 KB: whosmat alone would let it through."""
    import scipy.io

    f = _mat_lying(tmp_path / "shoes" / "shoes_sketch_db_train.mat", (1, 1), 300_000)
    assert scipy.io.whosmat(f) == [("data", (1, 1), "uint8")]
    with pytest.raises(FormatError, match="decompresses to more than 100000 bytes") as ei:
        check_mat_sizes(f, ReadLimits(max_member_bytes=100_000))
    assert ei.value.record == "data"
    check_mat_sizes(f, ReadLimits(max_member_bytes=400_000))  # under the cap: counted, not refused


# ---------------------------------------------------------------------------------------------- lines and points
def _record(n_points: int) -> str:
    return json.dumps({"word": "cat", "drawing": [[list(range(n_points)), list(range(n_points))]]})


def test_bounded_lines_never_returns_more_than_the_cap() -> None:
    data = b"ab\n" + b"x" * 50 + b"\n" + b"cdef\n" + b"y" * 11
    got = list(bounded_lines(io.BytesIO(data), 10))
    assert got == [(1, b"ab\n"), (2, None), (3, b"cdef\n"), (4, None)]
    assert list(bounded_lines(io.BytesIO(b"x" * 10 + b"\n"), 10)) == [(1, b"x" * 10 + b"\n")]  # at the cap


def test_ndjson_line_over_the_cap_is_one_bad_record(tmp_path: Path) -> None:
    f = tmp_path / "cat.ndjson"
    f.write_text("\n".join([_record(3), _record(400), _record(4)]) + "\n")
    limits = ReadLimits(max_line_bytes=1000)
    items, errors = _collect(read_quickdraw_ndjson, f, limits=limits)
    assert [it.source.rsplit(":", 1)[1] for it in items] == ["1", "3"]  # reading goes on after it
    assert [(e.file, e.record) for e in errors] == [(str(f), 2)]
    assert "longer than 1000 bytes" in errors[0].reason and "max_line_bytes" in errors[0].reason
    with pytest.raises(FormatError, match="record 2: line longer than 1000 bytes"):
        list(read_quickdraw_ndjson(f, strict=True, limits=limits))
    assert len(list(read_quickdraw_ndjson(f))) == 3  # within the default


def _bin(key: int, n: int) -> bytes:
    return struct.pack("<Q2sBIH", key, b"US", 1, 0, 1) + struct.pack("<H", n) + bytes(range(n)) * 2


def _omniglot_txt(path: Path, n: int) -> Path:
    path.write_text("START\n" + "".join(f"{i},{-i},{10 * i}\n" for i in range(n)) + "BREAK\n")
    return path


def _chairv2(path: Path, n: int) -> Path:
    path.write_bytes(pickle.dumps({"/train/a_1": np.zeros((3, 3)), "/train/b_1": np.zeros((n, 3))}))
    return path.parent


def _sketchrnn(path: Path, n: int) -> Path:
    drawings = np.empty(2, dtype=object)
    drawings[0], drawings[1] = np.ones((3, 3), np.int16), np.ones((n, 3), np.int16)
    np.savez(path, train=drawings)
    return path


CASES = {
    "quickdraw_ndjson": (read_quickdraw_ndjson, lambda p, n: _write(p / "c.ndjson", _record(3) + "\n" + _record(n))),
    "quickdraw_bin": (read_quickdraw_bin, lambda p, n: _write(p / "c.bin", _bin(1, 3) + _bin(2, n) + _bin(3, 3))),
    "sketchrnn": (read_sketchrnn, lambda p, n: _sketchrnn(p / "c.npz", n)),
    "qmul_chairv2": (read_qmul_chairv2, lambda p, n: _chairv2(p / "ChairV2_Coordinate", n)),
    "omniglot": (read_omniglot, lambda p, n: _omniglot_txt(p / "q.txt", n)),
}


def _write(path: Path, data: str | bytes) -> Path:
    if isinstance(data, bytes):
        path.write_bytes(data)
    else:
        path.write_text(data + "\n")
    return path


@pytest.mark.parametrize("name", list(CASES))
def test_points_per_drawing_are_capped_in_every_stroke_reader(tmp_path: Path, name: str) -> None:
    reader, make = CASES[name]
    f = make(tmp_path, 60)
    items, errors = _collect(reader, f, limits=ReadLimits(max_points=50))
    assert len(errors) == 1 and "max_points" in errors[0].reason and "\n" not in str(errors[0])
    assert all(it.sketch.n_points <= 50 for it in items)
    assert len(list(reader(f))) == len(items) + 1  # the default lets it through


def test_kanjivg_points_capped(tmp_path: Path) -> None:
    from sketchsearch.data.formats.kanjivg import iter_kanjivg

    svg = (
        '<svg xmlns="http://www.w3.org/2000/svg"><g id="kvg:StrokePaths_04e00">'
        '<path id="kvg:04e00-s1" d="M10,50 C30,40 70,60 99,50"/></g></svg>'
    )
    f = tmp_path / "04e00.svg"
    f.write_text(svg)
    (item,) = iter_kanjivg(f)
    items, errors = _collect(iter_kanjivg, f, limits=ReadLimits(max_points=item.sketch.n_points - 1))
    assert items == [] and "max_points" in errors[0].reason


def test_read_limits_are_validated() -> None:
    assert READ_LIMITS.max_line_bytes >= 1024 * 1024 and READ_LIMITS.max_member_bytes >= 100 * 1024 * 1024
    with pytest.raises(ValueError, match="max_points"):
        ReadLimits(max_points=0)
    with pytest.raises(ValueError, match="max_line_bytes"):
        ReadLimits(max_line_bytes=True)  # type: ignore[arg-type]
