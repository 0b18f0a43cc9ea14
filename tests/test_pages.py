"""Page search: box proposals, NMS, the window step from invariance curves, the page index (save, load,
corruption, bad pages, PDFs) and the ``pages`` commands."""

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
from sketchsearch.data.render import rasterize
from sketchsearch.data.synthetic import default_collection
from sketchsearch.errors import FormatError, IndexError_
from sketchsearch.pages import (
    PageIndex,
    ProposalConfig,
    box_iou,
    iter_pages,
    nms,
    page_ink,
    propose_boxes,
    steps_from_invariance,
)
from sketchsearch.retrieval import Retriever

FAST = ProposalConfig(step=0.25, scale_ratio=1.6)
runner = CliRunner()


def invoke(*args: str):
    """The CLI in-process; stdout and stderr apart."""
    res = runner.invoke(app, list(args))
    if res.exception is not None and not isinstance(res.exception, SystemExit):
        raise res.exception
    return res


@pytest.fixture(scope="module")
def by_label() -> dict[str, list]:
    out: dict[str, list] = {}
    for it in default_collection().items:
        out.setdefault(str(it.label), []).append(it.sketch)
    return out


def make_page(by_label: dict[str, list], seed: int = 0, size: tuple[int, int] = (600, 800)):
    """A noisy, unevenly lit page with 3 marks (sample 0 of three classes) and scribbles; -> (page, truth)."""
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    page = 230.0 * (1 - 0.25 * xx / w) * (1 - 0.1 * yy / h) + rng.normal(0, 5, (h, w))
    labels = sorted(by_label)[seed * 7 :: 13][:3]
    truth = []
    for n, label in enumerate(labels):
        cell = (w - 40) // 3
        side = int(rng.integers(90, min(150, cell - 10)))
        x, y = 20 + n * cell, int(rng.integers(40, h - 120 - side))  # above the scribbles' band
        ink = rasterize(by_label[label][0], size=side, line_width=2.5)
        page[y : y + side, x : x + side] *= 1 - 0.75 * ink
        ys, xs = np.nonzero(ink > 0.3)
        truth.append((label, (x + xs.min(), y + ys.min(), x + xs.max() + 1, y + ys.max() + 1)))
    for _ in range(6):  # handwriting-like scribbles in the bottom band, away from the marks
        x0, y0 = int(rng.integers(20, w - 200)), int(rng.integers(h - 90, h - 30))
        t = np.linspace(0, 1, 200)
        px = (x0 + 160 * t).astype(int)
        py = (y0 + 8 * np.sin(t * 40 + rng.uniform(0, 6))).astype(int)
        page[py, px] *= 0.3
    return np.clip(page, 0, 255).astype(np.uint8), truth


# ---------------------------------------------------------------------------------------------- boxes
def test_box_iou_by_hand() -> None:
    a = np.array([[0, 0, 10, 10]])
    b = np.array([[0, 0, 10, 10], [5, 0, 15, 10], [10, 10, 20, 20], [2, 2, 4, 4]])
    assert box_iou(a, b)[0].tolist() == pytest.approx([1.0, 50 / 150, 0.0, 4 / 100])


def test_nms_by_hand() -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [20, 20, 30, 30], [0, 0, 10, 9], [21, 20, 31, 30]])
    scores = np.array([0.5, 0.9, 0.3, 0.9, 0.1])
    # best first: 1 (0.9) suppresses 0 and 3 (IoU 0.82, 0.74); then 2 (0.3) suppresses 4 (IoU 0.82)
    assert nms(boxes, scores, iou=0.5).tolist() == [1, 2]
    # ties keep the earlier box: 1 and 3 tie at 0.9; with a threshold above their IoU both stay
    assert nms(boxes, scores, iou=0.9).tolist() == [1, 3, 0, 2, 4]
    # no scores: the given order, the first of near-duplicates wins
    assert nms(boxes, None, iou=0.5).tolist() == [0, 2]
    assert nms(np.zeros((0, 4)), None).tolist() == []


def test_proposals_cover_every_placed_mark(by_label: dict[str, list]) -> None:
    for seed in range(3):
        page, truth = make_page(by_label, seed)
        boxes, kinds = propose_boxes(page_ink(page), FAST)
        assert len(boxes) and set(kinds) <= {"ink", "window"}
        for label, tb in truth:
            best = box_iou(np.array([tb]), boxes).max()
            assert best >= 0.5, (seed, label, best)


def test_ink_ignores_uneven_light_and_noise() -> None:
    rng = np.random.default_rng(1)
    _, xx = np.mgrid[0:300, 0:400]
    paper = 240.0 * (1 - 0.5 * xx / 400) + rng.normal(0, 5, (300, 400))  # half as bright on the right
    page = paper.copy()
    page[100:103, 50:350] *= 0.35  # one dark line across both halves
    ink = page_ink(np.clip(page, 0, 255).astype(np.uint8))
    assert ink[100:103, 60:340].mean() > 0.9
    off = np.ones_like(ink, dtype=bool)
    off[95:108] = False
    assert (ink[off] >= 0.5).mean() < 0.001  # paper, however lit, is not ink


def test_window_step_from_invariance_curves() -> None:
    shifts = list(range(-10, 11))
    shift = {"x": shifts, "mean": [1 - 0.02 * abs(s) for s in shifts]}  # >= 0.9 up to 5 px
    factors = [round(0.5 + 0.05 * i, 2) for i in range(21)]
    scale = {"x": factors, "mean": [1 - abs(np.log(f)) for f in factors]}  # >= 0.8 within a factor e^0.2
    cfg = steps_from_invariance(shift, scale, raster_size=64, threshold=0.9)
    assert cfg.step == pytest.approx(5 / 64, abs=1e-4)
    cfg = steps_from_invariance(shift, scale, raster_size=64, threshold=0.8)
    assert cfg.step == pytest.approx(10 / 64, abs=1e-4)  # the whole measured range
    assert cfg.scale_ratio == pytest.approx(1.2**2, abs=1e-3)  # 1.2 and 1/1.2 both >= 0.8; 1.25 is not
    assert "shift invariance" in cfg.source["step"]
    flat = steps_from_invariance(
        {"x": shifts, "mean": [0.5] * 21}, {"x": factors, "mean": [0.5] * 21}, raster_size=64, threshold=0.9
    )
    assert flat.step == 0.05 and flat.scale_ratio == 1.2  # clamped to the smallest


def test_clip_strokes_by_hand() -> None:
    from sketchsearch.pages.index import clip_strokes

    line = np.array([[0, 5], [10, 5], [20, 5], [30, 5], [40, 5]], np.float32)  # leaves and re-enters nothing
    zigzag = np.array([[5, 0], [5, 10], [25, 10], [5, 12], [6, 14]], np.float32)  # in, out, back in
    dot = np.array([[7, 7]], np.float32)
    far = np.array([[100, 100], [110, 110]], np.float32)
    got = clip_strokes([line, zigzag, dot, far], (0, 0, 21, 20), margin=0)
    assert [g.tolist() for g in got] == [
        [[0, 5], [10, 5], [20, 5]],
        [[5, 0], [5, 10]],
        [[5, 12], [6, 14]],
        [[7, 7]],
    ]


def test_stroke_models_read_the_page_strokes_clipped_to_boxes(by_label: dict[str, list]) -> None:
    """SketchMate (stroke order) indexes a page from its traced strokes, and finds a mark with them."""
    page, truth = make_page(by_label, 0)
    index = PageIndex(Retriever.from_model("sketchmate-quickdraw-64"), FAST)
    rep = index.add_pages([("p.png", lambda: page)])
    assert rep.pages == 1 and rep.boxes > 3
    label, tb = truth[0]
    exact = index.search(by_label[label][0], k=50)  # the placed drawing itself, as strokes
    assert any(box_iou(np.array([tb]), np.array([h.box]))[0, 0] >= 0.5 for h in exact[:10])


# ---------------------------------------------------------------------------------------------- index
@pytest.fixture(scope="module")
def page_index(by_label: dict[str, list], tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("pages") / "idx"
    pages = [make_page(by_label, seed) for seed in range(2)]
    index = PageIndex(Retriever.from_model("sketch-gan"), FAST)
    rep = index.add_pages([(f"p{n}.png", lambda p=p: p[0]) for n, p in enumerate(pages)])
    assert rep.pages == 2 and rep.boxes > 6 and not rep.skipped
    index.save(folder)
    return folder, pages


def test_search_finds_the_mark_drawn_by_another_hand(page_index, by_label: dict[str, list]) -> None:
    folder, pages = page_index
    index = PageIndex.load(folder)
    found = 0
    for page_id, (_, truth) in enumerate(pages):
        for label, tb in truth:
            hits = index.search(by_label[label][1], k=5)  # another sample of the class than the one placed
            assert [h.rank for h in hits] == list(range(1, len(hits) + 1))
            top = hits[0]
            if top.page == page_id and box_iou(np.array([tb]), np.array([top.box]))[0, 0] >= 0.5:
                found += 1
    assert found >= 5, found  # of 6 marks


def test_nms_and_by_page(page_index, by_label: dict[str, list]) -> None:
    folder, pages = page_index
    index = PageIndex.load(folder)
    q = by_label[pages[0][1][0][0]][1]
    hits = index.search(q, k=20, nms_iou=0.3)
    for i, a in enumerate(hits):
        for b in hits[i + 1 :]:
            if a.page == b.page:
                assert box_iou(np.array([a.box]), np.array([b.box]))[0, 0] <= 0.3
    assert [h.distance for h in hits] == sorted(h.distance for h in hits)
    by_page = index.search(q, k=5, by_page=True)
    assert len(by_page) == 2 and len({h.page for h in by_page}) == 2
    assert by_page[0].box == hits[0].box
    for h in hits:
        w, h_ = h.page_size
        assert 0 <= h.box[0] < h.box[2] <= w and 0 <= h.box[1] < h.box[3] <= h_


def test_score_pages_by_hand(page_index, by_label: dict[str, list]) -> None:
    """Relevance checked against the hits themselves: a right box on the right page counts, once."""
    from sketchsearch.eval.evaluate import score_pages

    folder, pages = page_index
    index = PageIndex.load(folder)
    label, tb = pages[0][1][0]
    q = by_label[label][1]
    hits = index.search(q, k=10)
    rank = next(h.rank for h in hits if h.page == 0 and box_iou(np.array([tb]), np.array([h.box]))[0, 0] >= 0.5)
    truth = {0: [(label, tb)], 1: []}
    res = score_pages(index, [q, q], [label, "absent"], truth, ks=(1, 10))
    assert res["n_queries"] == 2 and res["n_excluded"] == 1  # "absent" is on no page
    assert res["recall@10"] == 1.0 and res["acc@1"] == float(rank == 1) and res["mean_rank"] == rank
    # the same true box twice on the page: one hit can match only one of them
    twice = score_pages(index, [q], [label], {0: [(label, tb), (label, tb)]}, ks=(10,))
    assert twice["recall@10"] == pytest.approx(0.5)
    # a box on another page never counts
    moved = score_pages(index, [q], [label], {1: [(label, tb)]}, ks=(10,))
    assert moved["recall@10"] == float(
        any(h.page == 1 and box_iou(np.array([tb]), np.array([h.box]))[0, 0] >= 0.5 for h in hits)
    )


def test_page_index_round_trip_and_add(page_index, by_label: dict[str, list], tmp_path: Path) -> None:
    folder, pages = page_index
    index = PageIndex.load(folder)
    q = by_label[pages[1][1][1][0]][1]
    before = index.search(q, k=5)
    assert index.page_count == 2 and [r["source"] for r in index.page_rows()] == ["p0.png", "p1.png"]
    assert index.config == FAST
    index.add_pages([("p2.png", lambda: make_page(by_label, 5)[0])])
    index.save(tmp_path / "more")
    again = PageIndex.load(tmp_path / "more")
    assert again.page_count == 3 and again.page(2)["source"] == "p2.png"
    assert again.preview(2)[:2] == b"\xff\xd8"  # a JPEG
    ids = {h.id for h in again.search(q, k=50)}
    assert {h.id for h in before} <= ids | {h.id for h in before}  # the earlier boxes are still there
    assert len(again.retriever) > len(PageIndex.load(folder).retriever)


def test_page_index_refuses_corruption(page_index, tmp_path: Path) -> None:
    import shutil

    folder, _ = page_index
    bad = tmp_path / "bad"
    shutil.copytree(folder, bad)
    data = bytearray((bad / "pages.sqlite").read_bytes())
    data[-100] ^= 0xFF
    (bad / "pages.sqlite").write_bytes(bytes(data))
    with pytest.raises(IndexError_, match="pages.sqlite: checksum mismatch"):
        PageIndex.load(bad)
    (bad / "pages.sqlite").unlink()
    with pytest.raises(IndexError_, match="pages.sqlite: missing file"):
        PageIndex.load(bad)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["attachments"] = ["../escape"]
    shutil.rmtree(bad)
    shutil.copytree(folder, bad)
    (bad / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(IndexError_, match="attachments"):
        PageIndex.load(bad)


def test_a_plain_index_is_not_a_page_index(tmp_path: Path) -> None:
    r = Retriever.from_model("sketch-gan")
    r.add([it.sketch for it in default_collection().items[:3]])
    r.save(tmp_path / "plain")
    with pytest.raises(IndexError_, match="not a page index"):
        PageIndex.load(tmp_path / "plain")


def _bomb(path: Path) -> None:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 100)) + chunk(b"IEND", b"")
    )


def test_bad_pages_are_reported_and_skipped(by_label: dict[str, list], tmp_path: Path) -> None:
    data = tmp_path / "scans"
    data.mkdir()
    Image.fromarray(make_page(by_label, 0, (400, 500))[0]).save(data / "a.png")
    _bomb(data / "b-bomb.png")
    (data / "c-fake.jpg").write_text("this is not a photograph")
    (data / "d-broken.pdf").write_bytes(b"%PDF-1.4 truncated")
    index = PageIndex(Retriever.from_model("sketch-gan"), FAST)
    errors: list[FormatError] = []
    rep = index.add_pages(iter_pages(data), on_error=errors.append)
    assert rep.pages == 1 and len(rep.skipped) == 3
    assert [Path(e.file).name for e in errors] == ["b-bomb.png", "c-fake.jpg", "d-broken.pdf"]
    assert "decompression bomb" in errors[0].reason and "not an image" in errors[1].reason
    with pytest.raises(FormatError, match="b-bomb.png"):
        PageIndex(Retriever.from_model("sketch-gan"), FAST).add_pages(iter_pages(data), strict=True)


def test_pdf_pages_are_read(by_label: dict[str, list], tmp_path: Path) -> None:
    pytest.importorskip("pypdfium2", reason="the pdf extra is not installed")
    pages = [Image.fromarray(make_page(by_label, s, (400, 500))[0]).convert("RGB") for s in (0, 1)]
    pages[0].save(tmp_path / "book.pdf", save_all=True, append_images=pages[1:], resolution=72)
    sources = list(iter_pages(tmp_path / "book.pdf", max_side=500))
    assert [s for s, _ in sources] == ["book.pdf:1", "book.pdf:2"]
    first = sources[0][1]()
    assert first.shape == (500, 400, 3)
    assert np.abs(first.astype(int).mean(axis=2) - np.asarray(pages[0].convert("L"), int)).mean() < 6


# ---------------------------------------------------------------------------------------------- cli
def test_cli_pages_index_and_search(by_label: dict[str, list], tmp_path: Path) -> None:
    data = tmp_path / "scans"
    data.mkdir()
    page, truth = make_page(by_label, 2, (500, 650))
    Image.fromarray(page).save(data / "page.png")
    (data / "fake.png").write_text("no")
    out = tmp_path / "idx"
    res = invoke("pages", "index", "--model", "sketch-gan", "--data", str(data), "--out", str(out), "--json", "-q")
    assert res.exit_code == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["pages"] == 1 and doc["skipped"] == 1 and "fake.png" in res.stderr
    assert doc["config"]["source"]["step"].startswith("shift invariance")  # --step auto: measured
    assert 0.05 <= doc["step"] <= 0.5 and 1.2 <= doc["scale_ratio"] <= 2.0
    label, tb = truth[0]
    q = tmp_path / "q.json"
    q.write_text(json.dumps([s.tolist() for s in by_label[label][1].strokes]))
    res = invoke("pages", "search", str(q), "--index", str(out), "-k", "3", "--json", "--out", str(tmp_path / "pics"))
    assert res.exit_code == 0, res.stderr
    hits = json.loads(res.stdout)
    assert hits["hits"][0]["source"] == "page.png"
    assert box_iou(np.array([tb]), np.array([hits["hits"][0]["box"]]))[0, 0] >= 0.5
    assert [Path(p).name for p in hits["pictures"]] == ["rank001-page0.png"]
    assert Image.open(hits["pictures"][0]).size == (500, 650)
    res = invoke("pages", "search", str(q), "--index", str(out), "-k", "2")
    assert res.exit_code == 0 and res.stdout.splitlines()[0].split("\t")[:3] == ["rank", "page", "source"]


def test_cli_pages_compose(tmp_path: Path) -> None:
    from sketchsearch.data.page_compose import read_truth

    res = invoke("pages", "compose", "--out", str(tmp_path / "p"), "--pages", "2", "--width", "500", "--height", "600")
    assert res.exit_code == 0, res.stderr
    assert res.stdout.startswith("wrote 2 pages with ")
    truth = read_truth(tmp_path / "p")
    assert [t["file"] for t in truth] == ["page-0000.png", "page-0001.png"]
    assert Image.open(tmp_path / "p" / "page-0000.png").size == (500, 600)
    res = invoke("pages", "compose", "--out", str(tmp_path / "q"), "--pages", "2", "--width", "500", "--height", "600")
    assert (tmp_path / "q" / "page-0001.png").read_bytes() == (tmp_path / "p" / "page-0001.png").read_bytes()


def test_cli_pages_errors_are_one_line(tmp_path: Path) -> None:
    res = invoke(
        "pages", "index", "--model", "sketch-gan", "--data", str(tmp_path), "--out", str(tmp_path / "o"), "--step", "x"
    )
    err = res.stderr.strip()
    assert res.exit_code == 2 and len(err.splitlines()) == 1 and "--step 'x'" in err and "auto" in err
    res = invoke(
        "pages", "index", "--model", "sketch-gan", "--data", str(tmp_path / "none"), "--out", str(tmp_path / "o")
    )
    err = res.stderr.strip()
    assert res.exit_code == 2 and len(err.splitlines()) == 1 and "none" in err and "no such file" in err
    res = invoke("pages", "search", str(tmp_path / "q.json"), "--index", str(tmp_path))
    assert res.exit_code == 2 and len(res.stderr.strip().splitlines()) == 1, res.stderr
