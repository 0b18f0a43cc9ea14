"""End to end in a real browser: Playwright drives Debian's chromium against the app served by uvicorn.

Draws a circle on the page's canvas with the mouse and expects circles among the top results; draws
with the keyboard alone; checks the page on a phone-sized screen; saves the screenshot the README shows
(docs/screenshot.png). Skips with a reason where chromium is not installed (``.ci/run`` installs it).
"""

from __future__ import annotations

import math
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_service import build_retriever  # the same tiny shapes collection as the API tests

from sketchsearch.service import create_app

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
SCREENSHOT = Path(__file__).resolve().parents[1] / "docs" / "screenshot.png"


@pytest.fixture(scope="module")
def server_url() -> Iterator[str]:
    import uvicorn

    app = create_app({"shapes": build_retriever(per_class=8)})
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))  # a free loopback port, held from here on (no race with other tests)
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            pytest.fail("uvicorn did not start within 20 s")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.skip(
            f"{CHROMIUM} is absent: install Debian's chromium (apt-get install chromium) to run browser tests"
        )
    sync_api = pytest.importorskip("playwright.sync_api", reason="python playwright is not installed")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=FLAGS)
        try:
            yield b
        finally:
            b.close()


def draw_circle(page: Any, cx: float, cy: float, r: float, steps: int = 48) -> None:
    page.mouse.move(cx + r, cy)
    page.mouse.down()
    for i in range(1, steps + 1):
        a = 2 * math.pi * i / steps
        page.mouse.move(cx + r * math.cos(a), cy + r * 0.92 * math.sin(a), steps=2)
    page.mouse.up()


def result_labels(page: Any) -> list[str]:
    return [t.strip() for t in page.locator("#results .hit .label").all_inner_texts()]


def test_draw_a_circle_and_find_circles(browser: Any, server_url: str) -> None:
    page = browser.new_page(viewport={"width": 1280, "height": 860}, device_scale_factor=1)
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("requestfailed", lambda r: errors.append(f"request failed: {r.url}"))
    page.goto(server_url + "/")
    page.wait_for_selector("#collection option", state="attached")  # collections loaded
    assert (
        "shapes" in page.locator("#collection-info").inner_text()
        or page.locator("#collection").input_value() == "shapes"
    )

    box = page.locator("#canvas").bounding_box()
    draw_circle(page, box["x"] + box["width"] / 2, box["y"] + box["height"] / 2, box["width"] * 0.33)
    page.wait_for_selector("#results .hit", timeout=10_000)  # debounced search-while-drawing fired
    page.wait_for_function(
        "document.querySelectorAll('#results .hit img.thumb').length > 0 && "
        "[...document.querySelectorAll('#results .hit img.thumb')].every(i => i.complete)"
    )
    labels = result_labels(page)
    assert len(labels) == 12, labels  # the page's default k
    assert not page.locator("#peek").is_visible()  # the phone-only strip stays hidden on a wide screen
    assert labels[0] == "circle" and labels[:5].count("circle") >= 4, labels
    assert "search" in page.locator("#timing").inner_text() and "ms" in page.locator("#timing").inner_text()
    widths = page.eval_on_selector_all("#results img.thumb", "els => els.map(e => e.naturalWidth)")
    assert all(w == 96 for w in widths), widths  # thumbnails really loaded from the store

    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOT), full_page=True)
    assert SCREENSHOT.stat().st_size > 10_000

    # Undo removes the only stroke (and so the results); clear empties a drawing of two strokes.
    page.click("#undo")
    assert page.locator("#undo").is_disabled()
    page.wait_for_function("document.querySelectorAll('#results .hit').length === 0")
    for dx in (-60, 60):
        draw_circle(page, box["x"] + box["width"] / 2 + dx, box["y"] + box["height"] / 2, 40, steps=12)
    page.wait_for_selector("#results .hit", timeout=10_000)
    page.click("#clear")
    assert page.locator("#results .hit").count() == 0 and page.locator("#undo").is_disabled()
    assert not errors, errors
    page.close()


def test_keyboard_only_drawing_and_search(browser: Any, server_url: str) -> None:
    page = browser.new_page(viewport={"width": 1024, "height": 768})
    page.goto(server_url + "/")
    page.wait_for_selector("#collection option", state="attached")
    page.uncheck("#live")  # search only on demand here
    page.focus("#canvas")
    # A plus sign: a vertical then a horizontal stroke, moved with the arrow keys, pen down/up with Space.
    for _ in range(8):
        page.keyboard.press("ArrowUp")
    page.keyboard.press("Space")
    for _ in range(16):
        page.keyboard.press("ArrowDown")
    page.keyboard.press("Space")
    for _ in range(8):
        page.keyboard.press("ArrowUp")
    for _ in range(8):
        page.keyboard.press("ArrowLeft")
    page.keyboard.press("Space")
    for _ in range(16):
        page.keyboard.press("ArrowRight")
    page.keyboard.press("Space")
    assert page.locator("#results .hit").count() == 0  # live search is off
    page.keyboard.press("Enter")
    page.wait_for_selector("#results .hit", timeout=10_000)
    assert result_labels(page)[0] == "plus", result_labels(page)
    page.close()


def test_phone_sized_screen(browser: Any, server_url: str) -> None:
    ctx = browser.new_context(
        viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True, device_scale_factor=2
    )
    page = ctx.new_page()
    page.goto(server_url + "/")
    page.wait_for_selector("#collection option", state="attached")
    overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0, f"the page scrolls sideways by {overflow} px on a phone"
    box = page.locator("#canvas").bounding_box()
    assert box["width"] >= 300 and box["x"] >= 0 and box["x"] + box["width"] <= 390
    for sel in ("#undo", "#clear", "#search"):
        b = page.locator(sel).bounding_box()
        assert b["height"] >= 40 and b["x"] + b["width"] <= 390, (sel, b)  # big enough to tap
    draw_circle(page, box["x"] + box["width"] / 2, box["y"] + box["height"] / 2, box["width"] * 0.3)
    page.wait_for_selector("#results .hit", timeout=10_000)
    assert result_labels(page)[0] == "circle"
    # the best hits are mirrored under the canvas, on screen without scrolling, while the grid is below the fold
    peek = page.locator("#peek li")
    assert peek.count() == 4 and peek.first.inner_text().strip() == "circle"
    pb = page.locator("#peek").bounding_box()
    assert pb["y"] + pb["height"] <= 844 and pb["x"] + pb["width"] <= 390, pb
    ctx.close()


def test_bad_upload_shows_the_servers_message(browser: Any, server_url: str, tmp_path: Path) -> None:
    page = browser.new_page()
    page.goto(server_url + "/")
    page.wait_for_selector("#collection option", state="attached")
    bad = tmp_path / "not-an-image.png"
    bad.write_bytes(b"this is not a png")
    page.set_input_files("#image", str(bad))
    page.wait_for_selector("#error:not([hidden])", timeout=10_000)
    assert "PNG or JPEG" in page.locator("#error").inner_text()
    page.close()
