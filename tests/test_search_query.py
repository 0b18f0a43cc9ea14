"""`sketchsearch search QUERY`: every stroke form the API takes (data.strokes.parse_strokes, same limits) and a
single record file of any supported format (one Omniglot stroke .txt) work as the query; bad ones are one
plain error line naming the file and the place."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from sketchsearch.cli import app
from sketchsearch.data.formats import detect_format, read_any
from sketchsearch.data.render import rasterize
from sketchsearch.data.sketch import Sketch
from sketchsearch.data.strokes import MAX_STROKES
from sketchsearch.data.synthetic import merchant_marks
from sketchsearch.retrieval import Retriever

runner = CliRunner()
MARKS = merchant_marks(4, 3, seed=11)
QUERY = MARKS[4]


@pytest.fixture(scope="module")
def index(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The marks as PNG drawings, indexed with sketch-gan."""
    root = tmp_path_factory.mktemp("query")
    for s in MARKS:
        ink = rasterize(s, size=96, line_width=2.0)
        Image.fromarray(((1 - ink) * 255).astype(np.uint8)).save(root / f"{s.id}.png")
    out = root / "marks-index"
    res = runner.invoke(app, ["index", "build", "--model", "sketch-gan", "--data", str(root), "--out", str(out)])
    assert res.exit_code == 0, res.output
    return out


def search(query: Path, index: Path, *extra: str) -> Any:
    res = runner.invoke(app, ["search", str(query), "--index", str(index), "-k", "4", "--json", *extra])
    assert res.exit_code == 0, res.output
    return [h["id"] for h in json.loads(res.stdout)["hits"]]


def fails(query: Path, index: Path, *extra: str) -> str:
    res = runner.invoke(app, ["search", str(query), "--index", str(index), *extra])
    assert res.exit_code == 2 and res.stdout == "", res.output
    assert res.stderr.startswith("error: ") and res.stderr.count("\n") == 1, res.stderr
    return res.stderr


def forms(s: Sketch) -> dict[str, Any]:
    """The drawing ``s`` in every form parse_strokes reads (times: 10 ms a point)."""
    pts = [[[float(x), float(y), 10.0 * j] for j, (x, y) in enumerate(stroke)] for stroke in s.strokes]
    rows = [[[p[0] for p in st], [p[1] for p in st], [p[2] for p in st]] for st in pts]
    return {
        "objects": [[{"x": x, "y": y, "t": t} for x, y, t in st] for st in pts],
        "points-xyt": pts,
        "points-xy": [[p[:2] for p in st] for st in pts],
        "quickdraw-record": {"word": "mark", "drawing": rows},
        "quickdraw-no-t": {"drawing": [r[:2] for r in rows]},
        "wrapped": {"strokes": [[{"x": x, "y": y} for x, y, _ in st] for st in pts]},
    }


def test_every_stroke_form_is_a_query(index: Path, tmp_path: Path) -> None:
    expected = [h.id for h in Retriever.load(index).search(QUERY, k=4)]
    for name, doc in forms(QUERY).items():
        q = tmp_path / f"{name}.json"
        q.write_text(json.dumps(doc))
        assert search(q, index) == expected, name


def test_bad_json_drawings_name_the_file_and_the_place(index: Path, tmp_path: Path) -> None:
    q = tmp_path / "q.json"
    q.write_text(json.dumps([[{"x": 1, "y": 2}, {"x": "left", "y": 3}]]))
    err = fails(q, index)
    assert str(q) in err and "strokes[0][1].x: expected a number, got a string ('left')" in err
    q.write_text(json.dumps([[[0, 0], [1, 1]]] * (MAX_STROKES + 1)))
    assert f"at most {MAX_STROKES} strokes, got {MAX_STROKES + 1}" in fails(q, index)
    q.write_text('{"strokes": [[[0, 0], [1, 1]]')
    err = fails(q, index)
    assert str(q) in err and "not a JSON drawing" in err and '{"strokes": ...}' in err
    q.write_text(json.dumps([[[0, 0], [1, 1]]]))
    assert "--record 2: a .json query holds one drawing" in fails(q, index, "--record", "2")


def omniglot_txt(s: Sketch, path: Path) -> Path:
    """``s`` as an Omniglot stroke file (y pointing up, as Omniglot writes it)."""
    lines = ["START"]
    for stroke in s.strokes:
        lines += [f"{x:.3f},{-y:.3f},{10 * j}" for j, (x, y) in enumerate(stroke)] + ["BREAK"]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_one_omniglot_stroke_file_is_one_item_and_a_query(index: Path, tmp_path: Path) -> None:
    txt = omniglot_txt(QUERY, tmp_path / "0108_01.txt")
    assert detect_format(txt) == "omniglot"
    (item,) = read_any(txt)
    assert (item.id, item.label, item.modality, item.source) == ("strokes:0108_01", None, "sketch", str(txt))
    assert item.sketch is not None and np.allclose(item.sketch.strokes[0], QUERY.strokes[0], atol=1e-3)
    assert search(txt, index) == [h.id for h in Retriever.load(index).search(QUERY, k=4)]
    assert f"--record 1: {txt} holds 1 record(s)" in fails(txt, index, "--record", "1")
    notes = tmp_path / "notes.txt"
    notes.write_text("a shopping list\n")
    assert "cannot tell the data format from this file" in fails(notes, index)
