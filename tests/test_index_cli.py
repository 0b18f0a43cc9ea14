"""`index build / add / remove` and `search` on folders of PNG drawings, through the CLI: drawings indexed as
drawings by the shipped GANs (class folders and a flat folder, hits carrying file names and metadata),
SketchMate on images (strokes traced from the pixels), --modality, --force, the collection's name / title /
description, adding and removing items, one writer at a time."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from sketchsearch.cli import app
from sketchsearch.data.render import rasterize
from sketchsearch.data.synthetic import merchant_marks
from sketchsearch.index.store import read_manifest, write_lock
from sketchsearch.retrieval import Retriever

runner = CliRunner()


def _cli(*args: str) -> str:
    """Run the CLI; assert it succeeded; its stdout."""
    res = runner.invoke(app, [str(a) for a in args])
    assert res.exit_code == 0, res.output
    return res.stdout


def _fails(*args: str) -> str:
    """Run the CLI; assert it failed with exit code 2; its output on one line."""
    res = runner.invoke(app, [str(a) for a in args])
    assert res.exit_code == 2, res.output
    return " ".join(res.output.replace("│", " ").split())


def _png(sketch: object, path: Path) -> Path:
    ink = rasterize(sketch, size=128, line_width=2.5)  # type: ignore[arg-type]
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(((1 - ink) * 255).astype(np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def drawings(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Marks rendered to PNG: ``classes/<class>/<id>.png`` (4 classes x 3) and ``flat/<class>-<id>.png``."""
    root = tmp_path_factory.mktemp("drawings")
    for s in merchant_marks(4, 3, seed=7):
        _png(s, root / "classes" / s.label / f"{s.id}.png")
        _png(s, root / "flat" / f"{s.label}-{s.id}.png")
    (root / "classes" / "metadata.csv").write_text("source,title,place\nmark_002/mark_002_01.png,The anchor,Bristol\n")
    return {"classes": root / "classes", "flat": root / "flat"}


@pytest.mark.parametrize("model", ["sketch-gan", "thin-gan", "sketchmate-quickdraw-64"])
@pytest.mark.parametrize("layout", ["classes", "flat"])
def test_png_drawings_index_and_answer_with_their_file_names(
    drawings: dict[str, Path], tmp_path: Path, model: str, layout: str
) -> None:
    """The issue's first report: a plain folder of PNG drawings ended in "GANEncoder does not encode photos"."""
    folder = drawings[layout]
    out = _cli("index", "build", "--model", model, "--data", folder, "--out", tmp_path / "idx")
    assert out.startswith("indexed 12 items (12 drawings, 0 photos)")
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.png"))
    query = sorted(folder.rglob("*.png"))[4]
    hits = json.loads(_cli("search", query, "--index", tmp_path / "idx", "-k", "5", "--json"))["hits"]
    assert len(hits) == 5 and all(h["source"] in files for h in hits)
    # the query's own file at distance 0 (64-bit codes of two drawings of a class can tie with it)
    itself = [h for h in hits if h["source"] == query.relative_to(folder).as_posix()]
    assert itself and itself[0]["distance"] < 1e-4 and hits[0]["distance"] < 1e-4, hits
    if layout == "classes":
        assert hits[0]["label"] == query.parent.name
        anchor = Retriever.load(tmp_path / "idx").search(Image.open(folder / "mark_002" / "mark_002_01.png"), k=12)
        assert [(h.distance < 1e-4, h.meta) for h in anchor if h.source == "mark_002/mark_002_01.png"] == [
            (True, {"title": "The anchor", "place": "Bristol"})
        ]
    table = runner.invoke(app, ["search", str(query), "--index", str(tmp_path / "idx"), "-k", "2"])
    assert table.exit_code == 0 and query.name in table.output  # the table names the files


def test_modality_photo_is_refused_for_a_drawings_only_model(drawings: dict[str, Path], tmp_path: Path) -> None:
    text = _fails(
        "index",
        "build",
        "--model",
        "sketch-gan",
        "--data",
        drawings["flat"],
        "--out",
        tmp_path / "i",
        "--modality",
        "photo",
    )
    assert "--modality photo: sketch-gan encodes drawings only; use --modality auto or sketch" in text
    assert not (tmp_path / "i").exists()


def _omniglot(root: Path) -> None:
    """An Omniglot layout: 3 drawings as stroke files and as images."""
    for s in merchant_marks(1, 3, seed=2):
        name = f"{s.id}.txt"
        lines = ["START"]
        for stroke in s.strokes:
            lines += [f"{x:.2f},{-y:.2f},0" for x, y in stroke] + ["BREAK"]
        f = root / "strokes_background" / "Marks" / "character01" / name
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text("\n".join(lines) + "\n")
        _png(s, root / "images_background" / "Marks" / "character01" / f"{s.id}.png")


def test_sketchmate_traces_the_strokes_of_images_and_says_so(tmp_path: Path) -> None:
    """SketchMate reads stroke order: images get strokes traced from their pixels (it refused them before);
    an Omniglot layout's stroke files keep their own strokes."""
    _omniglot(tmp_path / "omni")
    res = runner.invoke(
        app,
        [
            "index",
            "build",
            "--model",
            "sketchmate-quickdraw-64",
            "--data",
            str(tmp_path / "omni"),
            "--out",
            str(tmp_path / "both"),
        ],
    )
    assert res.exit_code == 0, res.output
    assert res.stdout.startswith("indexed 6 items (6 drawings, 0 photos)")
    assert "sketchmate-quickdraw-64 reads stroke order: the strokes of 3 images are traced" in res.stderr
    # an image query is traced the same way: it finds its own item at distance 0
    png = min((tmp_path / "omni" / "images_background").rglob("*.png"))
    hits = json.loads(_cli("search", png, "--index", tmp_path / "both", "-k", "6", "--json"))["hits"]
    assert (hits[0]["source"], hits[0]["distance"]) == (png.relative_to(tmp_path / "omni").as_posix(), 0.0)
    assert sorted(Path(h["source"]).suffix for h in hits) == [".png"] * 3 + [".txt"] * 3


def test_force_name_title_description_add_remove(drawings: dict[str, Path], tmp_path: Path) -> None:
    data = tmp_path / "scans"
    data.mkdir()
    pngs = sorted(drawings["flat"].glob("*.png"))
    for p in pngs[:6]:
        (data / p.name).write_bytes(p.read_bytes())
    idx = tmp_path / "runs" / "index"
    _cli("index", "build", "--model", "sketch-gan", "--data", data, "--out", idx)
    m = read_manifest(idx)
    assert (m["name"], m["slug"], m["title"], m["description"]) == (
        "scans",
        "scans",
        "scans",
        None,
    )  # "index" says nothing
    text = _fails("index", "build", "--model", "sketch-gan", "--data", data, "--out", idx)
    assert "--out" in text and "already exists; pass --force to replace it" in text
    _cli(
        "index",
        "build",
        "--model",
        "sketch-gan",
        "--data",
        data,
        "--out",
        idx,
        "--force",
        "--name",
        "Merchant marks of Bristol",
        "--title",
        "Marks",
        "--description",
        "Cut in stone.",
    )
    m = read_manifest(idx)
    assert (m["name"], m["slug"], m["title"], m["description"], m["count"]) == (
        "Merchant marks of Bristol",
        "merchant-marks-of-bristol",
        "Marks",
        "Cut in stone.",
        6,
    )
    assert "--name: a non-empty name" in _fails(
        "index", "build", "--model", "sketch-gan", "--data", data, "--out", tmp_path / "other", "--name", " "
    )

    for p in pngs[6:9]:
        (data / p.name).write_bytes(p.read_bytes())
    out = _cli("index", "add", idx, "--data", data)
    assert out.startswith("added 3 items (3 drawings, 0 photos)") and "9 in all; 6 already there by source" in out
    r = Retriever.load(idx)
    assert len(r) == 9 and read_manifest(idx)["slug"] == "merchant-marks-of-bristol"
    assert sorted(row["source"] for row in r.store.items(list(range(20)))) == sorted(p.name for p in pngs[:9])
    assert _cli("index", "add", idx, "--data", data, "--limit", "2", "--duplicates").startswith("added 2 items")

    out = _cli("index", "remove", idx, "--source", pngs[0].name, "--id", "8")
    assert out.startswith("removed 3 items") and "8 left" in out  # two items had that source (--duplicates)
    r = Retriever.load(idx)
    assert pngs[0].name not in {row["source"] for row in r.store.items(list(range(20)))} and 8 not in r.index.ids
    assert "--id 8: no item of" in _fails("index", "remove", idx, "--id", "8")
    assert "--source 'nope.png': no item of" in _fails("index", "remove", idx, "--source", "nope.png")
    assert "give the items to remove" in _fails("index", "remove", idx)
    assert len(Retriever.load(idx)) == 8  # refused changes changed nothing

    with write_lock(idx):  # another writer at work (this thread's lock is re-entrant: another thread waits)
        box: list[str] = []
        t = threading.Thread(
            target=lambda: box.append(_fails("index", "add", idx, "--data", data, "--lock-timeout", 0.2))
        )
        t.start()
        t.join()
    assert f"another command is changing this index (it holds {idx.parent / '.index.lock'})" in box[0]
    assert "did not finish within 0.2 s" in box[0] and len(Retriever.load(idx)) == 8
