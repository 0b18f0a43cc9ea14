"""A page collection in a real browser (issue 16, item 3): draw a mark, see the pages it is on with its box.

The two generated letters of :mod:`test_service_pages` (five marks, each the first drawing of its class) are
indexed, saved and served beside an item collection, loaded as ``sketchsearch serve`` loads them. The mouse
draws another drawing of one mark's class; the best hit shows its page with the mark's box outlined in the
right place and the box enlarged beside it; clicking it opens the page large with every hit box of that page,
the clicked one highlighted; Escape and the Close button close it; "Best box per page" leaves one hit a page;
a box searches with itself. Saves the screenshot the README shows (docs/pages_screenshot.png). Skips with a
reason where chromium is not installed (``.ci/run`` installs it).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _browser import serving
from test_browser import draw_circle, open_page, result_titles, sideways_scroll
from test_browser_collections import draw_sketch
from test_service import build_retriever
from test_service_pages import PAGE_H, PAGE_W, PAGES, TITLE, build_page_index, drawings

from sketchsearch.service import create_app, load_collections

pytestmark = pytest.mark.browser

SCREENSHOT = Path(__file__).resolve().parents[1] / "docs" / "pages_screenshot.png"
QUERY = "mark_010"  # on the first letter, with two other marks beside it

# every picture of the result grid (page thumbnails and crops) decoded
PICTURES_LOADED = """() => {
  const imgs = [...document.querySelectorAll('#results .page-hit img')];
  return imgs.length > 0 && imgs.every((i) => i.complete && i.naturalWidth > 0);
}"""


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, Any]]]:
    folder = tmp_path_factory.mktemp("pages") / "letters-index"
    truth = build_page_index(folder)
    collections = load_collections([("letters", None, folder)])
    collections["shapes"] = build_retriever(per_class=4)
    with serving(create_app(collections)) as url:
        yield url, truth


def wait_for_page_hits(page: Any, n: int | None = None) -> None:
    count = "document.querySelectorAll('#results .page-hit').length"
    page.wait_for_function(f"() => {count} === {n}" if n is not None else f"() => {count} > 0", timeout=15_000)


def box_fraction(page: Any, mark: Any, frame: Any) -> tuple[float, ...]:
    """Where ``mark`` (an element) sits on ``frame`` (an element), as fractions of the frame's size."""
    m, f = mark.bounding_box(), frame.bounding_box()
    return (
        (m["x"] - f["x"]) / f["width"],
        (m["y"] - f["y"]) / f["height"],
        (m["x"] + m["width"] - f["x"]) / f["width"],
        (m["y"] + m["height"] - f["y"]) / f["height"],
    )


def test_draw_a_mark_and_see_its_box_on_its_page(browser: Any, served: tuple[str, dict[str, Any]]) -> None:
    url, truth = served
    page, errors = open_page(browser, url, 1280, 900)
    assert page.locator("#by-page-option").is_visible()  # the first collection is the page collection
    assert page.locator("#collection-title").inner_text() == TITLE
    assert "2 pages" in page.locator("#collection-details").inner_text()
    page.uncheck("#live")
    draw_sketch(page, drawings()[QUERY][1])  # another drawing of the mark's class than the one on the page
    page.click("#search")
    wait_for_page_hits(page, 12)
    page.wait_for_function(PICTURES_LOADED, timeout=15_000)

    # the best hit: its page (the first letter) with the mark's box outlined where the mark is, and the box
    # enlarged beside it
    first = page.locator("#results .page-hit").first
    page_id, (x0, y0, x1, y1) = truth[QUERY]
    assert first.locator(".name").inner_text() == Path(list(PAGES)[page_id]).name
    assert first.locator(".dist").inner_text().startswith("#1 · ")
    thumb, mark = first.locator(".page-thumb"), first.locator(".page-thumb .box-mark")
    assert mark.count() == 1 and mark.is_visible()
    got = box_fraction(page, mark, thumb)
    want = (x0 / PAGE_W, y0 / PAGE_H, x1 / PAGE_W, y1 / PAGE_H)
    assert np.allclose(got, want, atol=0.03), (got, want)  # over the mark (2 px of border either way)
    tb = thumb.bounding_box()
    assert abs(tb["width"] / tb["height"] - PAGE_W / PAGE_H) < 0.02  # the page's shape, not a square
    crop = first.locator("img.crop")
    assert crop.get_attribute("alt") == "The mark ranked 1, enlarged"
    assert page.evaluate("(i) => Math.max(i.naturalWidth, i.naturalHeight)", crop.element_handle()) == 192
    assert crop.bounding_box()["width"] > (x1 - x0) / PAGE_W * tb["width"] * 2  # larger than on the thumbnail
    assert first.locator(".page-img").get_attribute("alt").startswith("Page 0, a.png")

    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOT), full_page=True)
    assert SCREENSHOT.stat().st_size > 10_000

    # the page large: every hit box of that page on it, the clicked one highlighted
    on_first_page = sum(
        1 for t in page.locator("#results .page-hit .where").all_inner_texts() if t.startswith("page 0")
    )
    first.locator(".page-open").click()
    view = page.locator("#page-view")
    assert view.is_visible() and page.locator("#page-view-title").inner_text() == "a.png"
    assert page.evaluate("() => document.getElementById('page-view').getAttribute('aria-labelledby')") == (
        "page-view-title"
    )
    page.wait_for_function("() => document.getElementById('page-view-img').naturalWidth === 500")
    boxes = page.locator("#page-figure .box-mark")
    assert boxes.count() == on_first_page >= 2
    current = page.locator("#page-figure .box-mark.current")
    assert current.count() == 1 and current.get_attribute("aria-pressed") == "true"
    assert current.inner_text().strip() == "1"
    figure = page.locator("#page-figure")
    assert np.allclose(box_fraction(page, current, figure), want, atol=0.02)
    assert figure.bounding_box()["width"] > 2.5 * tb["width"]  # large
    assert "#1" in page.locator("#page-view-facts").inner_text()
    view.screenshot(path=str(SCREENSHOT.with_name("pages_view_screenshot.png")))

    # another box of the page: highlighted instead, its facts shown
    other = boxes.nth(1)
    other.click()
    assert other.get_attribute("aria-pressed") == "true" and page.locator("#page-figure .box-mark.current").count() == 1
    assert f"#{other.inner_text().strip()} ·" in page.locator("#page-view-facts").inner_text()
    page.keyboard.press("Escape")
    assert not view.is_visible()

    # the keyboard opens a hit too; the Close button closes the page
    page.locator("#results .page-open").nth(1).focus()
    page.keyboard.press("Enter")
    assert view.is_visible()
    page.click("#page-view-close")
    assert not view.is_visible()

    # a box of the page searches with itself: it comes first, at distance 0
    first.locator(".page-open").click()
    page.click("#page-view-search")
    page.wait_for_function(
        "() => document.querySelector('#results .page-hit .dist')?.textContent === '#1 · 0.000'", timeout=15_000
    )
    assert "a.png" in page.locator("#query-note").inner_text()
    assert not errors, errors
    page.context.close()


def test_best_box_per_page_and_back_to_an_item_collection(browser: Any, served: tuple[str, Any]) -> None:
    url, _ = served
    page, errors = open_page(browser, url)
    page.uncheck("#live")
    draw_sketch(page, drawings()["mark_030"][1])
    page.click("#search")
    wait_for_page_hits(page, 12)
    page.check("#by-page")  # searches again: one hit a page
    wait_for_page_hits(page, 2)
    assert sorted(t.split(" · ")[0] for t in page.locator("#results .page-hit .where").all_inner_texts()) == [
        "page 0",
        "page 1",
    ]
    assert page.locator("#results .page-hit .name").first.inner_text() == "b.png"  # mark_030's letter first

    # an item collection: no page option, item hits as ever (the drawing is searched there at once)
    page.select_option("#collection", "shapes")
    assert not page.locator("#by-page-option").is_visible()
    page.wait_for_function("() => document.querySelectorAll('#results .hit img.thumb').length === 12")
    assert page.locator("#results .page-hit").count() == 0
    page.click("#clear")
    page.check("#live")
    draw_circle(page)
    page.wait_for_function("() => document.querySelectorAll('#results .hit img.thumb').length === 12")
    assert page.locator("#results .page-hit").count() == 0 and result_titles(page)[0] == "circle"
    assert not errors, errors
    page.context.close()


@pytest.mark.parametrize("width", [360, 768])
def test_page_hits_and_the_page_view_fit_a_narrow_screen(browser: Any, served: tuple[str, Any], width: int) -> None:
    url, _ = served
    phone = width < 700
    page, errors = open_page(browser, url, width, 844, is_mobile=phone, has_touch=phone)
    page.uncheck("#live")
    draw_sketch(page, drawings()[QUERY][1])
    page.click("#search")
    wait_for_page_hits(page, 12)
    assert sideways_scroll(page) <= 0, f"{width} px: the page scrolls sideways by {sideways_scroll(page)} px"
    for sel in ("#results .page-hit", "#by-page-option"):
        b = page.locator(sel).first.bounding_box()
        assert b["x"] >= 0 and b["x"] + b["width"] <= width, (sel, b)
    page.locator("#results .page-open").first.click()
    figure = page.locator("#page-figure").bounding_box()
    assert figure["x"] >= 0 and figure["x"] + figure["width"] <= width and figure["height"] > 100, figure
    assert page.locator("#page-view-close").bounding_box()["height"] >= 40  # big enough to tap
    page.click("#page-view-close")
    assert sideways_scroll(page) <= 0
    assert not errors, errors
    page.context.close()
