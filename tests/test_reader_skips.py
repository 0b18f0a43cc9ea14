"""Every reader reports every file it skips, by name, whatever layout it detected: a decompression bomb and a
file that claims to be a PNG in a flat image folder, in class folders (also under a name that looks like
Omniglot's), in an Omniglot layout and in a Sketchy layout, and images that are not where the layout puts them."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from sketchsearch.cli import app
from sketchsearch.data.formats import detect_format
from sketchsearch.data.inspect import inspect_dataset
from sketchsearch.data.sources import load_collection
from sketchsearch.errors import FormatError


def _bomb(path: Path) -> Path:
    """A valid, tiny PNG whose header declares 100000 x 100000 pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 100)) + chunk(b"IEND", b"")
    )
    return path


def _fake(path: Path) -> Path:
    """Text named .png."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("this is not a picture")
    return path


def _good(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = np.full((32, 32), 255, np.uint8)
    img[8:24, 15:17] = 0
    Image.fromarray(img).save(path)
    return path


def _reported(folder: Path, expected_format: str, bad: list[Path], n_items: int) -> dict[str, str]:
    """Check data info and the entry point on ``folder``: the format, the item count, every bad file named
    (and nothing else), and strict raising on the first; returns file -> reason."""
    info = inspect_dataset(folder)
    assert (info["format"], info["items"], info["skipped"]) == (expected_format, n_items, len(bad)), info
    reasons = {e["file"]: e["reason"] for e in info["errors"]}
    assert sorted(reasons) == sorted(str(f) for f in bad)
    coll = load_collection(folder)
    assert len(coll) == n_items and sorted(e.file for e in coll.errors) == sorted(str(f) for f in bad)
    with pytest.raises(FormatError) as ei:
        inspect_dataset(folder, strict=True)
    assert ei.value.file in reasons
    return reasons


def test_flat_folder(tmp_path: Path) -> None:
    _good(tmp_path / "a.png")
    bad = [_bomb(tmp_path / "bomb.png"), _fake(tmp_path / "fake.png")]
    reasons = _reported(tmp_path, "images", bad, 1)
    assert "decompression bomb" in reasons[str(bad[0])] and "not an image" in reasons[str(bad[1])]


@pytest.mark.parametrize("folder", ["scans", "images_scans", "images"])
def test_class_folders_even_under_an_omniglot_like_name(tmp_path: Path, folder: str) -> None:
    """``<class>/*.png`` is an image folder with labels, also when it is called images_* (Omniglot's name):
    its good images are read and its bomb and fake PNG reported by name."""
    root = tmp_path / folder
    for cls in ("anchor", "cross"):
        _good(root / cls / "1.png")
    bad = [_bomb(root / "anchor" / "bomb.png"), _fake(root / "cross" / "fake.png")]
    _reported(root, "images", bad, 2)
    assert {it.label for it in load_collection(root)} == {"anchor", "cross"}
    # and from the folder above it: a child named images_* with class folders only is not Omniglot either
    assert detect_format(tmp_path) == "images"
    assert {it.label for it in load_collection(tmp_path)} == {f"{folder}/anchor", f"{folder}/cross"}


def test_class_folders_at_any_depth(tmp_path: Path) -> None:
    _good(tmp_path / "1650" / "bristol" / "a.png")
    _good(tmp_path / "b.png")
    bad = [_fake(tmp_path / "1650" / "fake.png")]
    _reported(tmp_path, "images", bad, 2)
    assert sorted((it.label or "", it.source) for it in load_collection(tmp_path)) == [
        ("", "b.png"),
        ("1650/bristol", "1650/bristol/a.png"),
    ]


def test_omniglot_layout(tmp_path: Path) -> None:
    images = tmp_path / "images_background"
    strokes = tmp_path / "strokes_background"
    _good(images / "Latin" / "character01" / "0001_01.png")
    (strokes / "Latin" / "character01").mkdir(parents=True)
    (strokes / "Latin" / "character01" / "0001_01.txt").write_text("START\n1,-2,0\n3,-4,10\nBREAK\n")
    bad = [
        _bomb(images / "Latin" / "character01" / "0001_02.png"),
        _fake(images / "Latin" / "character01" / "0001_03.png"),
        _good(images / "Latin" / "stray.png"),  # not at <alphabet>/<character>/<file>
        _good(images / "loose.png"),
    ]
    stray_strokes = strokes / "Latin" / "0001_09.txt"
    stray_strokes.write_text("START\n1,-2,0\nBREAK\n")
    bad.append(stray_strokes)
    (images / "README.md").write_text("not a data file: not an item, not reported")
    reasons = _reported(tmp_path, "omniglot", bad, 2)
    assert (
        "not in the Omniglot layout" in reasons[str(bad[2])]
        and "not in the Omniglot layout" in reasons[str(stray_strokes)]
    )
    assert "decompression bomb" in reasons[str(bad[0])]


def test_sketchy_layout(tmp_path: Path) -> None:
    _good(tmp_path / "sketch" / "cat" / "p1-1.png")
    _good(tmp_path / "photo" / "cat" / "p1.jpg")
    bad = [
        _bomb(tmp_path / "sketch" / "cat" / "p1-2.png"),
        _fake(tmp_path / "photo" / "cat" / "p2.jpg"),
        _good(tmp_path / "sketch" / "loose.png"),
        _good(tmp_path / "photo" / "cat" / "deeper" / "p3.png"),
    ]
    reasons = _reported(tmp_path, "sketchy", bad, 2)
    assert "not in the Sketchy layout (expected sketch/<class>/<name>.png)" in reasons[str(bad[2])]


def test_data_info_names_them(tmp_path: Path) -> None:
    root = tmp_path / "images_marks"
    _good(root / "anchor" / "1.png")
    _bomb(root / "anchor" / "bomb.png")
    _fake(root / "anchor" / "fake.png")
    res = CliRunner().invoke(app, ["data", "info", str(root), "--json"])
    info = json.loads(res.stdout)
    assert (info["items"], info["skipped"]) == (1, 2)
    res = CliRunner().invoke(app, ["data", "info", str(root)])
    text = res.output.replace("\n", "")  # the table is as wide as the terminal: long lines wrap
    assert str(root / "anchor" / "bomb.png") in text and str(root / "anchor" / "fake.png") in text
