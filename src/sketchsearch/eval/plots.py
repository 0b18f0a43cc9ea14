"""Matplotlib figures: invariance and precision-recall curves, shift heat maps, retrieval grids, image grids,
training losses.

Every function writes one PNG (atomically: temp file, then rename) and returns its path. The Agg backend
is used so figures render on machines without a display.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib import font_manager
from matplotlib.figure import Figure
from matplotlib.ft2font import FT2Font
from matplotlib.patches import Patch

from .._io import atomic_path

__all__ = ["curves", "heat_maps", "image_grid", "loss_curves", "retrieval_grid"]

#: frame colours of :func:`retrieval_grid`
QUERY_EDGE, RELEVANT_EDGE, IRRELEVANT_EDGE = "purple", "green", "red"


def _save(fig: Figure, path: str | Path, dpi: int = 120) -> Path:
    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=dpi, bbox_inches="tight")
    finally:
        plt.close(fig)
    return path


def curves(
    x: Sequence[float] | np.ndarray,
    series: Mapping[str, Sequence[float] | np.ndarray],
    path: str | Path,
    *,
    xlabel: str,
    ylabel: str = "similarity (normalised dot product)",
    title: str = "",
    spread: Mapping[str, Sequence[float] | np.ndarray] | None = None,
    ylim: tuple[float, float] | None = None,
) -> Path:
    """One line per entry of ``series`` (name -> y, same length as ``x``); ``spread`` (name -> std)
    draws a shaded band of +-1 std; ``ylim``: the y range (default: fitted to the data)."""
    xs = np.asarray(x, dtype=float)
    for name, y in series.items():  # checked before a figure exists, so a bad series leaks none
        ys = np.asarray(y, dtype=float)
        if ys.shape != xs.shape:
            raise ValueError(f"series {name!r} has {ys.shape[0] if ys.ndim else 0} values for {len(xs)} x values")
    fig, ax = plt.subplots(figsize=(5.0, 3.6))
    for name, y in series.items():
        ys = np.asarray(y, dtype=float)
        ax.plot(xs, ys, label=name)
        if spread and name in spread:
            s = np.asarray(spread[name], dtype=float)
            ax.fill_between(xs, ys - s, ys + s, alpha=0.15)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if ylim is not None:
        ax.set_ylim(*ylim)
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)


def heat_maps(
    maps: Mapping[str, np.ndarray],
    path: str | Path,
    *,
    extent: tuple[float, float, float, float] | None = None,
    xlabel: str = "shift x (pixels)",
    ylabel: str = "shift y (pixels)",
    vmin: float | None = None,
    vmax: float | None = 1.0,
) -> Path:
    """Side-by-side heat maps (name -> 2-D array, row = y), one shared colour scale and colour bar."""
    if not maps:
        raise ValueError("no heat maps to draw")
    lo = vmin if vmin is not None else float(min(np.min(m) for m in maps.values()))
    fig, axes = plt.subplots(1, len(maps), figsize=(4.2 * len(maps), 3.8), squeeze=False)
    im = None
    for ax, (name, m) in zip(axes[0], maps.items()):
        im = ax.imshow(np.asarray(m, dtype=float), origin="lower", extent=extent, vmin=lo, vmax=vmax, cmap="viridis")
        ax.set_title(name)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.85, label="similarity")
    return _save(fig, path)


def _thumb(ax: plt.Axes, img: np.ndarray, edge: str | None) -> None:
    """A raster (H, W), ink = 1, drawn dark on white; or an RGB photo (H, W, 3) in [0, 1], as it is."""
    a = np.clip(np.asarray(img, dtype=float), 0, 1)
    if a.ndim == 3:
        ax.imshow(a)
    else:
        ax.imshow(1.0 - a, cmap="gray", vmin=0, vmax=1)  # ink dark on white
    ax.set_xticks([])
    ax.set_yticks([])
    for sp in ax.spines.values():
        sp.set_visible(edge is not None)
        if edge is not None:
            sp.set_edgecolor(edge)
            sp.set_linewidth(2.5)


def _drawable(text: str) -> str:
    """``text`` with each character the default font has no glyph for written as ``U+XXXX`` (e.g. a kanji
    class name, which would be drawn as an empty box)."""
    font = FT2Font(font_manager.findfont(font_manager.FontProperties(family=plt.rcParams["font.family"])))
    return "".join(c if c.isspace() or font.get_char_index(ord(c)) else f"U+{ord(c):04X}" for c in text)


def retrieval_grid(
    query_images: Sequence[np.ndarray] | np.ndarray,
    result_images: Sequence[Sequence[np.ndarray]] | np.ndarray,
    path: str | Path,
    *,
    relevant: np.ndarray | None = None,
    title: str = "",
    row_labels: Sequence[str] | None = None,
    legend: bool = False,
) -> Path:
    """A row per query: the query (purple frame, as in the sketch-GAN paper's Fig. 6) then its top-k results.

    ``query_images``: nq rasters (H, W), ink = 1, or RGB photos (H, W, 3) in [0, 1]; ``result_images``: nq
    rows of k such images (rows may be shorter when fewer hits came back); ``relevant``: optional bool
    (nq, k): green frame = relevant, red = not; ``legend``: a key to the frame colours under the grid.
    """
    nq = len(query_images)
    if len(result_images) != nq:
        raise ValueError(f"{len(result_images)} result rows for {nq} queries")
    k = max((len(r) for r in result_images), default=0)
    fig, axes = plt.subplots(nq, k + 1, figsize=(0.9 * (k + 1), 0.9 * nq + (0.3 if title else 0)), squeeze=False)
    for i in range(nq):
        _thumb(axes[i, 0], query_images[i], QUERY_EDGE)
        if row_labels is not None:
            axes[i, 0].set_ylabel(_drawable(row_labels[i]), rotation=0, ha="right", va="center", fontsize=7)
        for j in range(k):
            ax = axes[i, j + 1]
            if j < len(result_images[i]):
                edge = None if relevant is None else (RELEVANT_EDGE if relevant[i][j] else IRRELEVANT_EDGE)
                _thumb(ax, result_images[i][j], edge)
            else:
                ax.axis("off")
    if title:
        fig.suptitle(title, y=1.0 - 0.05 / fig.get_figheight(), va="top")
    fig.subplots_adjust(wspace=0.05, hspace=0.05, top=1.0 - (0.35 if title else 0.0) / fig.get_figheight())
    if legend:  # under the last row
        keys = [("query", QUERY_EDGE)] + (
            [] if relevant is None else [("relevant", RELEVANT_EDGE), ("not relevant", IRRELEVANT_EDGE)]
        )
        fig.legend(
            handles=[Patch(facecolor="white", edgecolor=c, linewidth=2.5, label=n) for n, c in keys],
            loc="upper center",
            bbox_to_anchor=(0.5, axes[-1, 0].get_position().y0),
            ncol=len(keys),
            fontsize=8,
            frameon=False,
        )
    return _save(fig, path)


def image_grid(images: Sequence[np.ndarray] | np.ndarray, path: str | Path, *, ncol: int = 8, title: str = "") -> Path:
    """A grid of rasters (H, W), ink = 1 drawn dark on white (e.g. a GAN's generated samples)."""
    n = len(images)
    if n == 0:
        raise ValueError("no images to draw")
    nrow = (n + ncol - 1) // ncol
    fig, axes = plt.subplots(nrow, ncol, figsize=(0.8 * ncol, 0.8 * nrow + (0.3 if title else 0)), squeeze=False)
    for idx, ax in enumerate(axes.flat):
        if idx < n:
            _thumb(ax, images[idx], None)
        else:
            ax.axis("off")
    if title:
        fig.suptitle(title)
    fig.subplots_adjust(wspace=0.05, hspace=0.05)
    return _save(fig, path)


def loss_curves(records: Iterable[Mapping[str, float]], path: str | Path, *, title: str = "") -> Path:
    """Training losses: one panel per loss term (``loss`` and every ``*_loss`` key of the records, each on its
    own scale) against the records' ``iteration`` (e.g. the training loop's ``log.jsonl``)."""
    rows = list(records)
    terms = sorted({k for r in rows for k in r if k == "loss" or k.endswith("_loss")}, key=lambda k: (k == "loss", k))
    if not terms:
        raise ValueError("no loss terms ('loss' or '*_loss' keys) in the records")
    fig, axes = plt.subplots(len(terms), 1, figsize=(5.0, 1.6 * len(terms) + 0.4), sharex=True, squeeze=False)
    for ax, term in zip(axes[:, 0], terms):
        pts = [(r["iteration"], r[term]) for r in rows if term in r and "iteration" in r]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], linewidth=1.2, marker="." if len(pts) < 50 else "")
        ax.set_ylabel(term, fontsize=8)
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel("iteration")
    if title:
        fig.suptitle(title)
    return _save(fig, path)
