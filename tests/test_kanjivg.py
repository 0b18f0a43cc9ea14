"""KanjiVG reader: real files from the installed package, and malformed documents."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from sketchsearch.data.formats.kanjivg import (
    KANJIVG_BOX,
    iter_kanjivg,
    kanjivg_files,
    parse_kanjivg_svg,
    path_to_polylines,
    read_kanjivg,
)
from sketchsearch.errors import FormatError

HEAD = '<svg xmlns="http://www.w3.org/2000/svg" width="109" height="109" viewBox="0 0 109 109">'


def _doc(*paths: str) -> str:
    body = "".join(f'<path id="kvg:04e00-s{i + 1}" d="{d}"/>' for i, d in enumerate(paths))
    return f'{HEAD}<g id="kvg:StrokePaths_04e00"><g id="kvg:04e00">{body}</g></g></svg>'


def _file(char: str) -> Path:
    name = f"{ord(char):05x}.svg"
    return next(f for f in kanjivg_files() if f.name == name)


def test_files_come_from_the_installed_distribution() -> None:
    files = kanjivg_files()
    assert len(files) > 10_000  # 11,662 in kanjivg 20260714
    assert all(f.suffix == ".svg" and f.parent.name == "kanji" and f.is_file() for f in files[:50])
    assert [f.name for f in files] == sorted(f.name for f in files)


@pytest.mark.parametrize("char, n_strokes", [("一", 1), ("十", 2), ("口", 3), ("木", 4), ("漢", 13)])
def test_real_files_have_known_stroke_counts(char: str, n_strokes: int) -> None:
    s = read_kanjivg(_file(char))
    assert s.label == char and s.id == f"{ord(char):05x}"
    assert len(s.strokes) == n_strokes == s.meta["n_strokes"]
    assert all(st.dtype == np.float32 and st.ndim == 2 and st.shape[1] == 2 and len(st) >= 2 for st in s.strokes)
    x0, y0, x1, y1 = s.bounds()
    assert 0 <= x0 < x1 <= KANJIVG_BOX and 0 <= y0 < y1 <= KANJIVG_BOX


def test_stroke_order_and_direction_of_ten() -> None:
    # 十: stroke 1 is the horizontal drawn left to right, stroke 2 the vertical drawn top to bottom.
    h, v = read_kanjivg(_file("十")).strokes
    assert h[-1, 0] - h[0, 0] > 50 and abs(h[-1, 1] - h[0, 1]) < 10
    assert v[-1, 1] - v[0, 1] > 50 and abs(v[-1, 0] - v[0, 0]) < 10


def test_first_stroke_of_one_matches_its_path_data() -> None:
    # 一's path: M11,54.25c3.19,0.62,... ends at 96.88,50 (absolute, after the relative curves)
    (stroke,) = read_kanjivg(_file("一")).strokes
    np.testing.assert_allclose(stroke[0], [11.0, 54.25], atol=1e-4)
    np.testing.assert_allclose(stroke[-1], [96.88, 50.0], atol=1e-3)


def test_iter_filters_by_chars_and_limit() -> None:
    got = list(iter_kanjivg(chars="口木一"))
    assert sorted(it.label for it in got) == sorted("口木一")
    assert all(it.modality == "sketch" and it.sketch is not None and it.id == it.sketch.id for it in got)
    assert len(list(iter_kanjivg(limit=3))) == 3
    assert all(it.meta["variant"] is None for it in iter_kanjivg(limit=20))
    assert any(it.meta["variant"] for it in iter_kanjivg(chars="主", variants=True))


def test_registered_as_a_reader() -> None:
    from sketchsearch.data.formats.base import READERS

    assert READERS.get("kanjivg") is iter_kanjivg


def test_folder_with_a_bad_file_skips_or_raises(tmp_path: Path) -> None:
    (tmp_path / "04e00.svg").write_bytes(_file("一").read_bytes())
    (tmp_path / "05340.svg").write_text(_doc("M1,2 c3"), encoding="utf-8")
    (tmp_path / "05341.svg").write_bytes(_file("十").read_bytes())
    errors: list[FormatError] = []
    got = list(iter_kanjivg(tmp_path, on_error=errors.append))
    assert [it.label for it in got] == ["一", "十"]
    assert len(errors) == 1 and errors[0].file.endswith("05340.svg") and errors[0].record == "kvg:04e00-s1"
    with pytest.raises(FormatError, match="05340.svg"):
        list(iter_kanjivg(tmp_path, strict=True))
    with pytest.raises(FormatError, match="no such file"):
        list(iter_kanjivg(tmp_path / "absent"))


def test_path_data_grammar() -> None:
    # relative cubic, smooth (reflected) cubic, line, close; curves sampled densely, lines exactly
    (line,) = path_to_polylines("M0,0 l10,0 L10,10 z")
    np.testing.assert_allclose(line, [[0, 0], [10, 0], [10, 10], [0, 0]])
    (curve,) = path_to_polylines("M0,0 c0,10 10,10 10,0 s10,-10 10,0", step=1.0)
    assert len(curve) > 10
    np.testing.assert_allclose(curve[-1], [20, 0], atol=1e-5)
    assert curve[:, 1].max() == pytest.approx(7.5, abs=0.1)  # a cubic with control height 10 peaks at 3/4 of it
    assert len(path_to_polylines("M0,0 L1,1 M5,5 L6,6")) == 2


@pytest.mark.parametrize(
    "text, record, fragment",
    [
        ("<svg", None, "not well-formed XML"),
        ('<html xmlns="http://www.w3.org/2000/svg"/>', None, "expected an SVG <svg>"),
        (f"{HEAD}<g id='other'/></svg>", None, "StrokePaths"),
        (_doc(), None, "no <path>"),
        (_doc("M1,2 c3"), "kvg:04e00-s1", "bad path data"),
        (_doc("M1,2 L3,4", "Q1,2 hello"), "kvg:04e00-s2", "bad path data"),
        (_doc("M1e999,2 L3,4"), "kvg:04e00-s1", "non-finite"),
        (_doc("M1,2"), "kvg:04e00-s1", "draws nothing"),
        (f'{HEAD}<g id="kvg:StrokePaths_x"><path id="p9"/></g></svg>', "p9", "no 'd'"),
    ],
)
def test_malformed_documents_raise_format_error(text: str, record: object, fragment: str) -> None:
    with pytest.raises(FormatError) as e:
        parse_kanjivg_svg(text, file="bad.svg")
    assert e.value.file == "bad.svg" and e.value.record == record
    assert fragment in e.value.reason


def test_unreadable_file_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(FormatError, match="missing.svg"):
        read_kanjivg(tmp_path / "missing.svg")


# ---------------------------------------------------------------------------------------------- `data info kanjivg`
def _subset(monkeypatch: pytest.MonkeyPatch, last: str = "04e40") -> list[Path]:
    """The package's files for U+4E00 up to ``last`` (34 files, 2 of them variants: 04e14-Kaisho,
    04e3b-VtLst), standing in for the package's whole file list."""
    import sketchsearch.data.formats.kanjivg as kv

    files = [f for f in kanjivg_files() if "04e00" <= f.stem[:5] < last]
    assert any("-" in f.stem for f in files) and any("-" not in f.stem for f in files)
    monkeypatch.setattr(kv, "kanjivg_files", lambda: files)
    return files


def test_named_source_kanjivg_counts_items_and_variants(monkeypatch: pytest.MonkeyPatch) -> None:
    from sketchsearch.data.inspect import KANJIVG_VARIANTS, inspect_dataset
    from sketchsearch.data.sources import load_collection

    files = _subset(monkeypatch)
    base = [f for f in files if "-" not in f.stem]
    chars = {chr(int(f.stem.split("-")[0], 16)) for f in files}
    info = inspect_dataset("kanjivg")
    assert (info["format"], info["items"], info["classes"], info["skipped"]) == (
        "kanjivg",
        len(base),
        len(base),
        0,
    )
    assert info["excluded"] == {KANJIVG_VARIANTS: len(files) - len(base)}  # left out on purpose, not errors
    every = inspect_dataset("kanjivg", variants=True)
    assert (every["items"], every["classes"], every["excluded"]) == (len(files), len(chars), {})
    assert [it.id for it in load_collection("kanjivg").items] == [f.stem for f in base]
    with pytest.raises(ValueError, match="KanjiVG data only"):
        inspect_dataset(files[0].parent, fmt="images", variants=True)


def test_cli_data_info_kanjivg(monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    from typer.testing import CliRunner

    from sketchsearch.cli import app

    files = _subset(monkeypatch, last="04e20")
    n_variants = sum("-" in f.stem for f in files)
    res = CliRunner().invoke(app, ["data", "info", "kanjivg", "--json"])
    assert res.exit_code == 0, res.output
    info = json.loads(res.stdout)
    assert (info["items"], info["skipped"], sum(info["excluded"].values())) == (
        len(files) - n_variants,
        0,
        n_variants,
    )
    res = CliRunner().invoke(app, ["data", "info", "kanjivg", "--json", "--variants"])
    assert res.exit_code == 0 and json.loads(res.stdout)["items"] == len(files)
    res = CliRunner().invoke(app, ["data", "info", "kanjivg"])
    assert res.exit_code == 0 and "variant" in res.output


def test_package_file_counts_cheaply() -> None:
    # what `data info kanjivg` reports, from the file names alone (the full read is the slow test below)
    import importlib.metadata

    files = kanjivg_files()
    variants = [f for f in files if "-" in f.stem]
    chars = {f.stem for f in files if "-" not in f.stem}
    assert {f.stem.split("-")[0] for f in variants} <= chars  # every variant's character has its base file
    if importlib.metadata.version("kanjivg") == "20260714":  # the version the README's counts are from
        assert (len(files), len(chars), len(variants)) == (11_662, 6_703, 4_959)


@pytest.mark.slow
def test_data_info_kanjivg_reads_the_whole_package() -> None:  # 20-60 s: every SVG parsed twice
    from sketchsearch.data.inspect import inspect_dataset

    files = kanjivg_files()
    n_base = sum("-" not in f.stem for f in files)
    info = inspect_dataset("kanjivg", strict=True)
    assert (info["items"], info["classes"], info["skipped"]) == (n_base, n_base, 0)
    assert sum(info["excluded"].values()) == len(files) - n_base
    every = inspect_dataset("kanjivg", strict=True, variants=True)
    assert (every["items"], every["classes"], every["skipped"]) == (len(files), n_base, 0)
