"""End to end in a real browser: Playwright drives Debian's chromium against the app served by uvicorn.

Two collections, saved as index folders and loaded back like `sketchsearch serve` does: hand-drawn shapes
with a title, a description, file names and (for the zigzags) metadata; and the same shapes under very long
file names and labels. Draws a circle with the mouse and expects circles among the top results; draws with
the keyboard alone; checks that no screen width from 320 px up scrolls sideways, before and after a search;
searches with an uploaded picture (shown on the canvas, Clear, re-run on a new k or collection); opens a
hit's larger view and searches with it; checks /docs renders the API. Saves the screenshot the README shows
(docs/screenshot.png). Skips with a reason where chromium is not installed (``.ci/run`` installs it).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _browser import serving
from test_service import build_retriever, drawing_image, png_bytes

from sketchsearch.index.store import save_index
from sketchsearch.retrieval import Retriever
from sketchsearch.service import create_app

pytestmark = pytest.mark.browser

SCREENSHOT = Path(__file__).resolve().parents[1] / "docs" / "screenshot.png"
PER_CLASS = 8

TITLE = "Hand-drawn shapes"
DESCRIPTION = "Circles, squares, triangles, plus signs and zigzags, drawn eight times each."
LONG = "an_exceptionally_long_file_name_from_a_scanner_that_has_no_spaces_at_all_0001234567890"
LONG_TITLE = "A collection whose title is far too long for a phone: " + "Supercalifragilistic" * 4

# a count of the canvas's dark pixels: ink drawn, or a picture shown
DARK_PIXELS = """() => {
  const c = document.getElementById("canvas");
  const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
  let n = 0;
  for (let i = 0; i < d.length; i += 4) if (d[i + 3] > 128 && d[i] < 100) n++;
  return n;
}"""


def saved_collection(folder: Path, title: str, description: str, name: Any) -> Retriever:
    """The shapes collection written as an index folder (items with file names, the zigzags with metadata,
    a title and a description in the manifest) and loaded back. ``name(label, id)`` gives each file name."""
    r = build_retriever(per_class=PER_CLASS)
    ids = [int(i) for i in r.index.ids]
    rows = []
    for i, row in r.item_meta(ids).items():
        item = {"id": i, "label": row["label"], "thumbnail": row["thumbnail"]}
        item["source"] = f"scans/{row['label']}/{name(row['label'], i)}.png"
        if row["label"] == "zigzag":
            n = i % PER_CLASS + 1
            item["meta"] = {
                "title": f"Zigzag no. {n}",
                "date": f"1911-05-{n:02d}",
                "place": "Paris",
                "url": f"https://example.org/zigzags/{n}",
            }
        rows.append(item)
    save_index(r.index, folder, model_id=r.model_id, items=rows)
    manifest = json.loads((folder / "manifest.json").read_text())
    (folder / "manifest.json").write_text(json.dumps(manifest | {"title": title, "description": description}))
    return Retriever.load(folder, r.method)


@pytest.fixture(scope="module")
def server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:

    tmp = tmp_path_factory.mktemp("indexes")
    shapes = saved_collection(tmp / "shapes", TITLE, DESCRIPTION, lambda label, i: f"{label}-{i:02d}")
    long = saved_collection(tmp / "long", LONG_TITLE, LONG, lambda label, i: f"{label}_{LONG}_{i}")
    app = create_app({"shapes": shapes, "long-names": long})
    with serving(app) as url:
        yield url


def open_page(browser: Any, url: str, width: int = 1280, height: int = 860, **kw: Any) -> tuple[Any, list[str]]:
    """A page at ``url`` with its collections loaded, and the list its script errors and failed requests go to."""
    page = browser.new_context(viewport={"width": width, "height": height}, **kw).new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("requestfailed", lambda r: errors.append(f"request failed: {r.url}"))
    page.goto(url + "/")
    page.wait_for_selector("#collection option", state="attached")
    return page, errors


def draw_path(page: Any, points: list[tuple[float, float]]) -> None:
    """One stroke through ``points``, given as fractions of the canvas."""
    box = page.locator("#canvas").bounding_box()
    xy = [(box["x"] + fx * box["width"], box["y"] + fy * box["height"]) for fx, fy in points]
    page.mouse.move(*xy[0])
    page.mouse.down()
    for x, y in xy[1:]:
        page.mouse.move(x, y, steps=4)
    page.mouse.up()


def draw_circle(page: Any, fx: float = 0.5, fr: float = 0.33, steps: int = 48) -> None:
    draw_path(
        page,
        [
            (fx + fr * math.cos(2 * math.pi * i / steps), 0.5 + fr * 0.92 * math.sin(2 * math.pi * i / steps))
            for i in range(steps + 1)
        ],
    )


def wait_for_hits(page: Any, n: int | None = None) -> None:
    """Until the grid shows ``n`` hits (any number but 0 when None). Functions, not expressions: the page's
    CSP forbids eval, which Playwright uses for a bare expression."""
    count = "document.querySelectorAll('#results .hit').length"
    page.wait_for_function(f"() => {count} === {n}" if n is not None else f"() => {count} > 0", timeout=10_000)


def result_labels(page: Any) -> list[str]:
    return [t.strip() for t in page.locator("#results .hit .label").all_inner_texts()]


def result_titles(page: Any) -> list[str]:
    return [t.strip() for t in page.locator("#results .hit .name").all_inner_texts()]


def sideways_scroll(page: Any) -> int:
    return int(page.evaluate("document.documentElement.scrollWidth - window.innerWidth"))


def test_draw_a_circle_and_find_circles(browser: Any, server_url: str) -> None:
    page, errors = open_page(browser, server_url)
    # the collection as its index presents it; the method's details on a line of their own
    assert page.locator("#collection-title").inner_text() == TITLE
    assert page.locator("#collection-description").inner_text() == DESCRIPTION
    assert "40 items" in page.locator("#collection-details").inner_text()
    assert page.title().startswith(TITLE)

    draw_circle(page)
    wait_for_hits(page)  # debounced search-while-drawing fired
    page.wait_for_function(
        "() => [...document.querySelectorAll('#results .hit img.thumb')].every(i => i.complete && i.naturalWidth)"
    )
    labels = result_labels(page)
    assert len(labels) == 12, labels  # the page's default k
    assert not page.locator("#peek").is_visible()  # the phone-only strip stays hidden on a wide screen
    assert labels[0] == "circle" and labels[:5].count("circle") >= 4, labels
    assert all(t.startswith(f"{lab}-") and t.endswith(".png") for t, lab in zip(result_titles(page), labels))
    assert "search" in page.locator("#timing").inner_text() and "ms" in page.locator("#timing").inner_text()
    widths = page.eval_on_selector_all("#results img.thumb", "els => els.map(e => e.naturalWidth)")
    assert all(w == 96 for w in widths), widths  # thumbnails really loaded from the store

    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOT), full_page=True)
    assert SCREENSHOT.stat().st_size > 10_000

    # Undo removes the only stroke (and so the results); clear empties a drawing of two strokes.
    page.click("#undo")
    assert page.locator("#undo").is_disabled()
    wait_for_hits(page, 0)
    for fx in (0.35, 0.65):
        draw_circle(page, fx=fx, fr=0.12, steps=12)
    wait_for_hits(page)
    page.click("#clear")
    assert page.locator("#results .hit").count() == 0 and page.locator("#undo").is_disabled()
    assert page.locator("#clear").is_disabled() and page.evaluate(DARK_PIXELS) == 0
    assert not errors, errors
    page.context.close()


def test_keyboard_only_drawing_and_search(browser: Any, server_url: str) -> None:
    page, _ = open_page(browser, server_url, 1024, 768)
    page.uncheck("#live")  # search only on demand here
    page.focus("#canvas")
    # A plus sign: a vertical then a horizontal stroke, moved with the arrow keys, pen down/up with Space.
    for keys in (
        ["ArrowUp"] * 8 + ["Space"] + ["ArrowDown"] * 16 + ["Space"],
        ["ArrowUp"] * 8 + ["ArrowLeft"] * 8 + ["Space"] + ["ArrowRight"] * 16 + ["Space"],
    ):
        for key in keys:
            page.keyboard.press(key)
    assert page.locator("#results .hit").count() == 0  # live search is off
    page.keyboard.press("Enter")
    wait_for_hits(page)
    assert result_labels(page)[0] == "plus", result_labels(page)
    page.context.close()


@pytest.mark.parametrize("width", [320, 390, 1280])
def test_no_sideways_scroll_before_or_after_a_search_with_long_names(browser: Any, server_url: str, width: int) -> None:
    phone = width < 700
    page, errors = open_page(
        browser,
        server_url,
        width,
        844,
        is_mobile=phone,
        has_touch=phone,
        device_scale_factor=2 if phone else 1,
    )
    page.select_option("#collection", "long-names")
    assert page.locator("#collection-title").inner_text() == LONG_TITLE
    assert sideways_scroll(page) <= 0, f"{width} px: the page scrolls sideways by {sideways_scroll(page)} px"
    canvas = page.locator("#canvas").bounding_box()
    assert canvas["x"] >= 0 and canvas["x"] + canvas["width"] <= width and canvas["width"] >= min(width - 60, 300)
    for sel in ("#undo", "#clear", "#search"):
        b = page.locator(sel).bounding_box()
        assert b["height"] >= 40 and b["x"] + b["width"] <= width, (sel, b)  # big enough to tap

    draw_circle(page, fr=0.3)
    wait_for_hits(page)
    assert LONG in result_titles(page)[0] and result_labels(page)[0] == "circle"
    assert sideways_scroll(page) <= 0, f"{width} px: after a search, sideways scroll of {sideways_scroll(page)} px"
    if phone:  # the best hits are mirrored under the canvas, on screen without scrolling
        peek = page.locator("#peek li")
        assert peek.count() == 4 and peek.first.inner_text().strip().startswith("circle_")
        pb = page.locator("#peek").bounding_box()
        assert pb["y"] + pb["height"] <= 844 and pb["x"] + pb["width"] <= width, pb
    page.locator("#results .hit-open").first.click()  # the larger view fits too
    box = page.locator("#detail").bounding_box()
    assert box["x"] >= 0 and box["x"] + box["width"] <= width, box
    assert sideways_scroll(page) <= 0
    assert not errors, errors
    page.context.close()


def test_upload_shows_on_the_canvas_and_reruns_on_a_new_k_or_collection(
    browser: Any, server_url: str, tmp_path: Path
) -> None:
    page, errors = open_page(browser, server_url)
    picture = tmp_path / "my triangle.png"
    picture.write_bytes(png_bytes(drawing_image("triangle")))
    page.set_input_files("#image", str(picture))
    wait_for_hits(page, 12)
    assert result_labels(page)[:3] == ["triangle"] * 3, result_labels(page)
    assert page.evaluate(DARK_PIXELS) > 200  # the picture is on the canvas, as the query
    assert "my triangle.png" in page.locator("#query-note").inner_text()
    assert page.locator("#clear").is_enabled() and page.locator("#undo").is_disabled()

    page.select_option("#k", "6")  # the upload is searched again, not dropped
    wait_for_hits(page, 6)
    assert result_labels(page)[:3] == ["triangle"] * 3
    page.select_option("#collection", "long-names")
    page.wait_for_function(f"() => document.querySelector('#results .hit .name').textContent.includes('{LONG}')")
    assert result_labels(page)[:3] == ["triangle"] * 3 and len(result_labels(page)) == 6

    page.click("#clear")
    assert page.evaluate(DARK_PIXELS) == 0 and page.locator("#results .hit").count() == 0
    assert page.locator("#clear").is_disabled() and page.input_value("#image") == ""
    assert page.locator("#query-note").inner_text() == ""
    assert not errors, errors
    page.context.close()


def test_a_bad_upload_says_what_to_do_and_clears_stale_results(browser: Any, server_url: str, tmp_path: Path) -> None:
    page, _ = open_page(browser, server_url)
    expected = "That file is not a PNG or JPEG image: choose a drawing saved as PNG or JPEG"
    for name, content in (("not-an-image.png", b"this is not a png"), ("drawing.gif", b"GIF89a")):
        draw_circle(page)
        wait_for_hits(page)
        bad = tmp_path / name
        bad.write_bytes(content)
        page.set_input_files("#image", str(bad))  # .png: refused by the server; .gif: by the page itself
        page.wait_for_selector("#error:not([hidden])", timeout=10_000)
        message = page.locator("#error").inner_text()
        assert message.startswith(expected) and "BytesIO" not in message, message
        assert page.locator("#results .hit").count() == 0  # no results left that answer another query
    page.context.close()


def test_a_hit_opens_larger_and_searches_with_itself(browser: Any, server_url: str) -> None:
    page, errors = open_page(browser, server_url)
    draw_path(page, [(0.1, 0.2), (0.35, 0.8), (0.5, 0.2), (0.65, 0.8), (0.9, 0.2)])  # a zigzag
    wait_for_hits(page)
    assert result_labels(page)[0] == "zigzag", result_labels(page)
    second = page.locator("#results .hit-open").nth(1)
    title = second.locator(".name").inner_text()
    assert title.startswith("Zigzag no. "), title  # its metadata title names it
    second.focus()
    page.keyboard.press("Enter")  # a hit is a button: the keyboard opens it too

    detail = page.locator("#detail")
    assert detail.is_visible() and page.locator("#detail-title").inner_text() == title
    facts = page.locator("#detail-facts").inner_text()
    for word in ("Label", "zigzag", "Source", "scans/zigzag/", "Date", "1911-05-", "Place", "Paris"):
        assert word in facts, (word, facts)
    link = page.locator("#detail-facts a")
    assert link.get_attribute("href").startswith("https://example.org/zigzags/")
    page.wait_for_function("() => document.getElementById('detail-img').naturalWidth === 96")
    assert page.locator("#detail-img").bounding_box()["width"] >= 250  # larger than in the grid
    page.keyboard.press("Escape")
    assert not detail.is_visible()

    second.click()
    page.click("#detail-search")
    assert not detail.is_visible()
    page.wait_for_function(
        f"() => document.querySelector('#results .hit .name')?.textContent === {json.dumps(title)}",
        timeout=10_000,
    )
    assert page.locator("#results .hit .dist").first.inner_text() == "#1 · 0.000"  # itself, first
    assert title in page.locator("#query-note").inner_text()
    page.wait_for_function(f"() => ({DARK_PIXELS})() > 50")  # the item's thumbnail on the canvas, as the query
    page.select_option("#k", "6")  # re-runs the item search
    wait_for_hits(page, 6)
    assert result_titles(page)[0] == title
    assert not errors, errors
    page.context.close()


def test_api_docs_render_the_operations(browser: Any, server_url: str) -> None:
    page = browser.new_page()
    page.goto(server_url + "/docs")
    page.wait_for_selector(".opblock-summary-path", timeout=15_000)
    paths = {t.strip() for t in page.locator(".opblock-summary-path").all_inner_texts()}
    assert {"/api/search", "/api/collections", "/api/health"} <= paths, paths
    assert page.locator("text=Unable to render this definition").count() == 0
    page.context.close()
