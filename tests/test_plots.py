"""sketchsearch.eval.plots: every function writes one non-blank PNG of about its figure size (bbox "tight"
trims the margins), written atomically; bad input is refused by a message that says what is wrong."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.figure import Figure
from PIL import Image

from sketchsearch.eval import plots

DPI = 120  # plots._save's default


def _png(path: Path) -> tuple[int, int]:
    """Open ``path`` with PIL, check it is a drawn PNG (not one flat colour), return (width, height)."""
    assert path.stat().st_size > 0
    with Image.open(path) as im:
        assert im.format == "PNG"
        lo, hi = im.convert("L").getextrema()
        assert hi - lo > 100, "the image is (nearly) one flat colour"
        return im.size


def _about(size: tuple[int, int], inches: tuple[float, float]) -> None:
    """``size`` is the figure size at DPI, less what "tight" trims (up to 30%), plus little."""
    for got, want, axis in zip(size, (inches[0] * DPI, inches[1] * DPI), ("width", "height")):
        assert 0.7 * want <= got <= 1.15 * want, f"{axis} {got} px, expected about {want:.0f}"


def _only(folder: Path, *names: str) -> None:
    assert sorted(p.name for p in folder.iterdir()) == sorted(names)  # no temp file left


@pytest.fixture(autouse=True)
def _no_open_figures() -> Any:
    plt.close("all")
    yield
    assert plt.get_fignums() == [], "a figure was left open"


def _images(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return (rng.random((*shape, 16, 16)) > 0.7).astype(np.float32)


def test_curves(tmp_path: Path) -> None:
    out = tmp_path / "sub" / "rotation.png"
    got = plots.curves(
        [0, 45, 90],
        {"a": [1.0, 0.8, 0.5], "b": np.array([1.0, 0.6, 0.2])},
        out,
        xlabel="degrees",
        title="Rotation",
        spread={"a": [0.1, 0.1, 0.1]},
    )
    assert got == out
    _about(_png(out), (5.0, 3.6))
    _only(out.parent, "rotation.png")


def test_heat_maps(tmp_path: Path, rng: np.random.Generator) -> None:
    one = _png(plots.heat_maps({"a": rng.random((5, 5))}, tmp_path / "one.png"))
    two = _png(plots.heat_maps({"a": rng.random((5, 5)), "b": rng.random((5, 5))}, tmp_path / "two.png"))
    _about(one, (4.2, 3.8))
    _about(two, (8.4, 3.8))
    assert two[0] > 1.5 * one[0]  # side by side


def test_retrieval_grid(tmp_path: Path, rng: np.random.Generator) -> None:
    small = plots.retrieval_grid(_images(rng, 2), _images(rng, 2, 3), tmp_path / "small.png")
    relevant = rng.random((3, 6)) > 0.5
    big = plots.retrieval_grid(
        _images(rng, 3),
        _images(rng, 3, 6),
        tmp_path / "big.png",
        relevant=relevant,
        title="Top 6",
        row_labels=["q0", "q1", "q2"],
    )
    ragged = plots.retrieval_grid(  # rows may be shorter when fewer hits came back
        _images(rng, 2), [list(_images(rng, 4)), list(_images(rng, 1))], tmp_path / "ragged.png"
    )
    s, b = _png(small), _png(big)
    _about(s, (0.9 * 4, 0.9 * 2))
    _about(b, (0.9 * 7, 0.9 * 3 + 0.3))
    assert b[0] > s[0] and b[1] > s[1]  # a column per result, a row per query
    _about(_png(ragged), (0.9 * 5, 0.9 * 2))


def test_image_grid(tmp_path: Path, rng: np.random.Generator) -> None:
    two_rows = _png(plots.image_grid(_images(rng, 8), tmp_path / "a.png", ncol=4, title="Samples"))
    one_row = _png(plots.image_grid(_images(rng, 5), tmp_path / "b.png", ncol=8))
    _about(two_rows, (0.8 * 4, 0.8 * 2 + 0.3))
    _about(one_row, (0.8 * 8, 0.8 * 1))
    _only(tmp_path, "a.png", "b.png")


BAD: list[tuple[str, Callable[[Path], Path], str]] = [
    (
        "curves: series length",
        lambda p: plots.curves([0, 1, 2], {"a": [1, 2, 3], "short": [1, 2]}, p, xlabel="x"),
        r"series 'short' has 2 values for 3 x values",
    ),
    ("heat_maps: none", lambda p: plots.heat_maps({}, p), "no heat maps to draw"),
    (
        "retrieval_grid: rows",
        lambda p: plots.retrieval_grid(np.zeros((2, 8, 8)), [[np.zeros((8, 8))]], p),
        "1 result rows for 2 queries",
    ),
    ("image_grid: none", lambda p: plots.image_grid([], p), "no images to draw"),
]


@pytest.mark.parametrize("case", BAD, ids=lambda c: c[0])
def test_bad_input_is_refused_and_nothing_is_written(
    tmp_path: Path, case: tuple[str, Callable[[Path], Path], str]
) -> None:
    name, call, message = case
    with pytest.raises(ValueError, match=message):
        call(tmp_path / "out.png")
    _only(tmp_path)
    if name.startswith("curves"):
        plt.close("all")  # the known leak: see the xfail test below


def test_curves_bad_series_is_refused_without_leaking_a_figure(tmp_path: Path) -> None:
    _, call, message = BAD[0]
    with pytest.raises(ValueError, match=message):
        call(tmp_path / "out.png")
    _only(tmp_path)
    leaked = plt.get_fignums()
    plt.close("all")  # keep the autouse check for the other tests meaningful
    assert leaked == []


def test_a_failed_save_keeps_the_old_png_and_closes_the_figure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "scale.png"
    out.write_bytes(b"old png")

    def broken_savefig(self: Figure, fname: Any, **kwargs: Any) -> None:
        Path(fname).write_bytes(b"\x89PNG half")
        raise OSError("disk full")

    monkeypatch.setattr(Figure, "savefig", broken_savefig)
    with pytest.raises(OSError, match="disk full"):
        plots.curves([0, 1], {"a": [0, 1]}, out, xlabel="x")
    assert out.read_bytes() == b"old png"
    _only(tmp_path, "scale.png")
