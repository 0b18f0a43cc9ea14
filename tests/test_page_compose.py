"""Synthetic document pages (data.page_compose): determinism, where the marks are, that their boxes are the truth
(tight around their ink, nothing else drawn in them), the truth file and its errors."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sketchsearch.data.formats.base import Item
from sketchsearch.data.page_compose import (
    TRUTH_FILE,
    ComposedPage,
    PageStyle,
    compose_page,
    compose_pages,
    read_truth,
    write_pages,
)
from sketchsearch.data.render import rasterize
from sketchsearch.data.sketch import Sketch
from sketchsearch.data.synthetic import merchant_marks
from sketchsearch.errors import FormatError

#: a half-size page keeps the tests fast; the geometry rules are the same
SMALL = PageStyle(size=(500, 700), mark_size=(40, 110), text_size=(14.0, 20.0), margin=20, gap=16)


@pytest.fixture(scope="module")
def sketch_items() -> list[Item]:
    return [Item(str(s.id), s.label, "sketch", "synthetic:merchant_marks", sketch=s) for s in merchant_marks(12, 2)]


@pytest.fixture(scope="module")
def mixed_items(sketch_items: list[Item]) -> list[Item]:
    """Half stroke drawings, half drawings given as images only (dark ink on white, like Omniglot's PNGs)."""
    out = []
    for i, it in enumerate(sketch_items):
        if i % 2:
            assert it.sketch is not None
            img = (255 - rasterize(it.sketch, 96, line_width=2.0) * 255).astype(np.uint8)
            it = Item(f"img:{it.id}", it.label, "sketch", "synthetic:image", image=img)
        out.append(it)
    return out


def _paper_colour(page: ComposedPage) -> np.ndarray:
    return page.image[0, 0]


def _non_paper(page: ComposedPage) -> np.ndarray:
    return np.any(page.image != _paper_colour(page), axis=2)


def _apart(a: tuple[int, int, int, int], b: tuple[int, int, int, int], d: int) -> bool:
    return a[2] + d <= b[0] or b[2] + d <= a[0] or a[3] + d <= b[1] or b[3] + d <= a[1]


# ------------------------------------------------------------------------------------------- determinism
def test_same_seed_same_pages_and_page_i_does_not_depend_on_n_pages(sketch_items: list[Item]) -> None:
    three = compose_pages(sketch_items, 3, seed=5, style=SMALL)
    again = compose_pages(sketch_items, 3, seed=5, style=SMALL)
    one = compose_pages(sketch_items, 1, seed=5, style=SMALL)
    for a, b in zip(three, again):
        assert a.name == b.name and a.marks == b.marks
        assert np.array_equal(a.image, b.image)
    assert one[0].marks == three[0].marks and np.array_equal(one[0].image, three[0].image)
    assert [p.name for p in three] == ["page-0000.png", "page-0001.png", "page-0002.png"]
    other = compose_pages(sketch_items, 1, seed=6, style=SMALL)[0]
    assert not np.array_equal(other.image, three[0].image)


def test_default_page_looks_like_paper_with_text(sketch_items: list[Item]) -> None:
    page = compose_pages(sketch_items, 1, seed=0)[0]
    assert page.image.dtype == np.uint8 and page.image.shape == (1400, 1000, 3)
    assert 3 <= len(page.marks) <= 6 and not page.skipped
    assert len(page.distractor_boxes) > 20  # words of text (Hershey script) and maybe distractor drawings
    assert 150 < float(np.median(page.image)) < 255  # light paper, not blank white
    assert float(page.image.std()) > 3  # noise, lighting, ink


# ------------------------------------------------------------------------------------------- geometry
def test_boxes_inside_the_page_apart_and_of_distinct_drawings(mixed_items: list[Item]) -> None:
    style = PageStyle(size=(500, 700), mark_size=(40, 110), text_size=(14.0, 20.0), margin=20, gap=16)
    for page in compose_pages(mixed_items, 6, seed=1, style=style):
        W, H = style.size
        assert style.marks_per_page[0] <= len(page.marks) <= style.marks_per_page[1]
        ids = [m.item_id for m in page.marks]
        assert len(set(ids)) == len(ids)
        for i, m in enumerate(page.marks):
            x0, y0, x1, y1 = m.box
            assert style.margin <= x0 < x1 <= W - style.margin and style.margin <= y0 < y1 <= H - style.margin
            assert all(_apart(m.box, o.box, style.gap) for o in page.marks[i + 1 :])
            assert m.label is not None and m.source is not None
        for b in page.distractor_boxes:  # text and distractor drawings stay clear of the marks' boxes
            assert all(_apart(b, m.box, style.clearance) for m in page.marks)


def test_mark_size_is_the_longer_side_of_the_box(sketch_items: list[Item]) -> None:
    style = PageStyle.clean(size=(500, 700), mark_size=(60, 60), rotation=0.0, margin=20, gap=16)
    for page in compose_pages(sketch_items, 3, seed=2, style=style):
        for m in page.marks:
            x0, y0, x1, y1 = m.box
            assert 58 <= max(x1 - x0, y1 - y0) <= 62


@pytest.mark.parametrize("items", ["sketch_items", "mixed_items"])
def test_truth_boxes_are_tight_around_the_ink(items: str, request: pytest.FixtureRequest) -> None:
    """On flat paper with nothing else drawn, every non-paper pixel is inside a box and every box edge touches ink."""
    style = PageStyle.clean(size=(500, 700), mark_size=(40, 110), margin=20, gap=16)
    for page in compose_pages(request.getfixturevalue(items), 4, seed=3, style=style):
        ink = _non_paper(page)
        inside = np.zeros_like(ink)
        for m in page.marks:
            x0, y0, x1, y1 = m.box
            inside[y0:y1, x0:x1] = True
            box = ink[y0:y1, x0:x1]
            assert box[0].any() and box[-1].any() and box[:, 0].any() and box[:, -1].any(), m
            assert page.image[y0:y1, x0:x1].min() < 120  # dark pen ink, not a faint smudge
        assert not (ink & ~inside).any()
        assert len(page.marks) >= 3


def test_nothing_but_the_mark_is_drawn_in_its_box(mixed_items: list[Item]) -> None:
    """Distractor text and drawings on, paper effects off, marks not drawn: every mark box is bare paper."""
    style = PageStyle.clean(
        size=(500, 700),
        mark_size=(40, 110),
        text_size=(14.0, 20.0),
        margin=20,
        gap=16,
        distractor_lines=(12, 16),
        distractor_drawings=(3, 3),
        draw_marks=False,
    )
    for page in compose_pages(mixed_items, 4, seed=4, style=style):
        assert page.distractor_boxes and _non_paper(page).any()
        for m in page.marks:
            x0, y0, x1, y1 = m.box
            c = style.clearance - 1  # the clearance around the box is bare too
            assert not _non_paper(page)[max(0, y0 - c) : y1 + c, max(0, x0 - c) : x1 + c].any()


def test_drawing_the_marks_changes_only_their_boxes(mixed_items: list[Item]) -> None:
    """The full look (noise, lighting, stains, text): the same page with and without its marks drawn differs only
    inside the marks' boxes, and inside each of them."""
    style = PageStyle(size=(500, 700), mark_size=(40, 110), text_size=(14.0, 20.0), margin=20, gap=16, stains=1.0)
    drawn = compose_pages(mixed_items, 2, seed=7, style=style)
    bare = compose_pages(mixed_items, 2, seed=7, style=replace(style, draw_marks=False))
    for a, b in zip(drawn, bare):
        assert a.marks == b.marks and a.distractor_boxes == b.distractor_boxes
        diff = np.any(a.image != b.image, axis=2)
        inside = np.zeros_like(diff)
        for m in a.marks:
            x0, y0, x1, y1 = m.box
            inside[y0:y1, x0:x1] = True
            assert diff[y0:y1, x0:x1].any()
            assert a.image[y0:y1, x0:x1].astype(int).sum() < b.image[y0:y1, x0:x1].astype(int).sum()
        assert not (diff & ~inside).any()


# ------------------------------------------------------------------------------------------- bad input
def test_no_drawings_is_a_value_error_naming_the_argument() -> None:
    with pytest.raises(ValueError, match="drawings"):
        compose_pages([], 2)
    blank = [Item("a", "x", "sketch", "s", sketch=Sketch([])), Item("b", "x", "sketch", "s")]
    with pytest.raises(ValueError, match="drawings: none of the 2"), pytest.warns(UserWarning, match="2 of 2"):
        compose_pages(blank, 2)
    with pytest.raises(ValueError, match="n_pages"):
        compose_pages(blank, -1)


def test_drawings_without_ink_are_skipped_with_a_count(sketch_items: list[Item]) -> None:
    white = np.full((50, 50), 255, np.uint8)
    blank = [
        Item("empty", "e", "sketch", "s", sketch=Sketch([])),
        Item("white", "w", "sketch", "s", image=white),
        Item("nothing", "n", "sketch", "s"),
    ]
    with pytest.warns(UserWarning, match="3 of 7 drawings have no ink"):
        pages = compose_pages(blank + sketch_items[:4], 2, seed=0, style=SMALL)
    assert all(m.label not in ("e", "w", "n") for p in pages for m in p.marks)
    # compose_page itself skips them and says why, one line each
    rng = np.random.default_rng(0)
    page = compose_page(rng, [*blank, sketch_items[0]], [], PageStyle.clean(size=(500, 700), margin=20), "p")
    assert len(page.marks) == 1 and len(page.skipped) == 3
    assert all("no ink" in s for s in page.skipped)
    with pytest.raises(ValueError, match="given twice"):
        compose_page(rng, [sketch_items[0], sketch_items[0]], [], SMALL, "p")


def test_compose_page_takes_sketches_and_distractor_drawings_stay_out_of_the_truth(sketch_items: list[Item]) -> None:
    sketches = [it.sketch for it in sketch_items if it.sketch is not None]
    style = PageStyle.clean(size=(500, 700), margin=20, gap=16, mark_size=(40, 100))
    page = compose_page(np.random.default_rng(1), sketches[:3], sketches[10:13], style, "x.png")
    assert [m.item_id for m in page.marks] == [s.id for s in sketches[:3]]
    assert len(page.distractor_boxes) == 3
    for b in page.distractor_boxes:
        assert max(b[2] - b[0], b[3] - b[1]) <= style.distractor_size[1] + 2
    # compose_pages never puts a distractor drawing of a mark's label on the page: only labels 'mark_000'
    same = [Item(f"m{i}", "mark_000", "sketch", "s", sketch=s) for i, s in enumerate(sketches[:2])]
    style = PageStyle.clean(size=(500, 700), margin=20, gap=16, marks_per_page=(1, 1), distractor_drawings=(2, 2))
    assert all(not p.distractor_boxes for p in compose_pages(same, 3, style=style))


def test_page_style_rejects_bad_knobs() -> None:
    with pytest.raises(ValueError, match="marks_per_page"):
        PageStyle(marks_per_page=(5, 2))
    with pytest.raises(ValueError, match="mark_size"):
        PageStyle(size=(200, 200), mark_size=(70, 200))
    with pytest.raises(ValueError, match="lighting"):
        PageStyle(lighting=1.5)


# ------------------------------------------------------------------------------------------- files
def test_write_and_read_truth_round_trip(tmp_path: Path, mixed_items: list[Item]) -> None:
    pages = compose_pages(mixed_items, 2, seed=8, style=SMALL)
    folder = write_pages(pages, tmp_path / "pages")
    assert sorted(p.name for p in folder.iterdir()) == ["page-0000.png", "page-0001.png", TRUTH_FILE]
    truth = read_truth(folder)
    assert truth == read_truth(folder / TRUTH_FILE)
    assert [t["file"] for t in truth] == ["page-0000.png", "page-0001.png"]
    for t, p in zip(truth, pages):
        assert (t["width"], t["height"]) == SMALL.size
        assert [tuple(m["box"]) for m in t["marks"]] == [m.box for m in p.marks]
        assert [(m["label"], m["item_id"], m["source"]) for m in t["marks"]] == [
            (m.label, m.item_id, m.source) for m in p.marks
        ]
        assert np.array_equal(np.asarray(Image.open(folder / t["file"])), p.image)
    with pytest.raises(ValueError, match="named"):
        write_pages([pages[0], pages[0]], tmp_path / "dup")
    assert not (tmp_path / "dup" / TRUTH_FILE).exists()


def _truth(tmp_path: Path, doc: object) -> Path:
    f = tmp_path / TRUTH_FILE
    f.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return f


def _doc(**page: object) -> dict[str, object]:
    mark = {"box": [10, 10, 50, 60], "label": "a/b", "item_id": "x", "source": None}
    rec = {"file": "page-0000.png", "width": 100, "height": 100, "marks": [mark], **page}
    return {"format": "sketchsearch.page_truth", "version": 1, "pages": [rec]}


@pytest.mark.parametrize(
    ("doc", "record", "reason"),
    [
        ("{not json", None, "not JSON"),
        ([], None, "format"),
        ({**_doc(), "version": 9}, "version", "version 9"),
        ({**_doc(), "pages": {}}, "pages", "list"),
        (_doc(file="../etc/passwd"), "pages[0].file", "plain file name"),
        (_doc(width=0), "pages[0].width", "positive int"),
        (_doc(marks=[{"box": [10, 10, 5, 60], "label": None, "item_id": 1, "source": None}]), "marks[0].box", "box"),
        (_doc(marks=[{"box": [0, 0, 101, 60], "label": None, "item_id": 1, "source": None}]), "marks[0].box", "inside"),
        (_doc(marks=[{"box": [0, 0, 10, 10], "label": 3, "item_id": 1, "source": None}]), "marks[0].label", "string"),
        (_doc(marks=[{"box": [0, 0, 10, 10], "label": None, "source": None}]), "marks[0].item_id", "missing"),
    ],
)
def test_malformed_truth_is_a_format_error_naming_file_and_record(
    tmp_path: Path, doc: object, record: str | None, reason: str
) -> None:
    f = _truth(tmp_path, doc)
    with pytest.raises(FormatError, match=reason) as e:
        read_truth(tmp_path)
    assert e.value.file == str(f)
    assert (e.value.record is None) if record is None else record in str(e.value.record)


def test_missing_truth_is_a_format_error(tmp_path: Path) -> None:
    with pytest.raises(FormatError, match="no such file") as e:
        read_truth(tmp_path)
    assert e.value.file == str(tmp_path / TRUTH_FILE)


def test_good_truth_reads(tmp_path: Path) -> None:
    _truth(tmp_path, _doc())
    mark = {"box": [10, 10, 50, 60], "label": "a/b", "item_id": "x", "source": None}
    assert read_truth(tmp_path) == [{"file": "page-0000.png", "width": 100, "height": 100, "marks": [mark]}]


# ------------------------------------------------------------------------------------------- real data
@pytest.mark.data
def test_pages_of_real_omniglot_drawings(shared_data: Path, tmp_path: Path) -> None:
    from sketchsearch.data.formats.omniglot import read_omniglot

    strokes = shared_data / "omniglot" / "strokes_background_small1"
    images = shared_data / "omniglot" / "images_background_small1"
    if not strokes.is_dir() or not images.is_dir():
        pytest.skip(f"Omniglot folders {strokes.name} / {images.name} are absent from {shared_data / 'omniglot'}")
    drawings = list(read_omniglot(strokes, strict=True)) + list(read_omniglot(images, strict=True, limit=200))
    pages = compose_pages(drawings, 3, seed=0)
    write_pages(pages, tmp_path)
    truth = read_truth(tmp_path)
    by_id = {d.id: d for d in drawings}
    for page, t in zip(pages, truth):
        assert 3 <= len(t["marks"]) <= 6 and not page.skipped
        for m in t["marks"]:
            d = by_id[m["item_id"]]
            assert m["label"] == d.label and "/" in m["label"] and m["source"] == d.source
            x0, y0, x1, y1 = m["box"]
            assert page.image[y0:y1, x0:x1].min() < 120
