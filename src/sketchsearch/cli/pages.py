"""Page commands: ``pages index`` (marks on document pages -> a page index), ``pages search`` (a drawing ->
pages and boxes), ``pages compose`` (generated pages with known marks, for trying and evaluating it)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import typer

from ..errors import IndexError_
from .app import QUIET, Reporter, console, friendly_errors, print_json, print_table
from .core import _read_query
from .index import LOCK_TIMEOUT, _writable_out

pages_app = typer.Typer(
    help="Search drawings inside document pages: index pages, search them, compose test pages.",
    no_args_is_help=True,
)


def _note(line: str) -> None:
    console.print(line, highlight=False, markup=False, soft_wrap=True)


def _fraction(option: str, value: str, low: float, high: float) -> float | None:
    """'auto' -> None, else a float within [low, high] (BadParameter naming ``option`` otherwise)."""
    if value == "auto":
        return None
    try:
        v = float(value)
    except ValueError:
        raise typer.BadParameter(f"{option} {value!r}: expected 'auto' or a number in [{low}, {high}]") from None
    if not low <= v <= high:
        raise typer.BadParameter(f"{option} {value}: expected 'auto' or a number in [{low}, {high}]")
    return v


@pages_app.command("index")
@friendly_errors
def pages_index(
    model: str = typer.Option(..., "--model", help="Model artifact name or path."),
    data: Path = typer.Option(
        ..., "--data", help="Page images (a folder, searched recursively, or one file), PDFs too."
    ),
    out: Path = typer.Option(..., "--out", help="Page index folder to write (refused when it exists, unless --force)."),
    step: str = typer.Option(
        "auto",
        "--step",
        help="Window step as a fraction of the window's side (0.05-1), or 'auto': from the model's measured "
        "shift invariance (the sketch-GAN paper's rule).",
    ),
    scale_ratio: str = typer.Option(
        "auto",
        "--scale-ratio",
        help="Ratio of consecutive window sizes (1.1-3), or 'auto': from the model's measured scale invariance.",
    ),
    threshold: str = typer.Option(
        "auto",
        "--threshold",
        help="With 'auto' steps: the similarity (0-1) a moved or scaled drawing's encoding must keep; 'auto': "
        "midway between the model's mean same-class and different-class similarity on the embedded drawings.",
    ),
    min_size: int = typer.Option(40, "--min-size", min=8, help="Smallest window and box side, page pixels."),
    max_side: int = typer.Option(2048, "--max-side", min=256, help="Pages are reduced to this many pixels a side."),
    windows: bool = typer.Option(True, "--windows/--no-windows", help="Propose sliding windows."),
    components: bool = typer.Option(True, "--components/--no-components", help="Propose connected groups of ink."),
    strict: bool = typer.Option(False, "--strict", help="Stop at the first page that cannot be read."),
    force: bool = typer.Option(False, "--force", help="Replace the index already at --out."),
    name: str | None = typer.Option(None, "--name", help="The collection's name (default: the --out folder's)."),
    lock_timeout: float | None = LOCK_TIMEOUT,
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON only."),
    quiet: bool = QUIET,
) -> None:
    """Propose candidate boxes on every page, encode them with a model and write a page index.

    Each box becomes an item of an ordinary index folder (its page as source, the box in its metadata); the
    pages' sizes and previews go into the folder's page table. Pages that cannot be read are named on stderr
    and skipped (--strict stops instead)."""
    from dataclasses import replace

    from ..index.store import collection_fields, default_collection_name, write_lock
    from ..pages import PageIndex, ProposalConfig, iter_pages
    from ..pages.index import default_pairs, measure_config, read_truth_metas
    from ..retrieval import Retriever

    step_v = _fraction("--step", step, 0.05, 1.0)
    threshold_v = _fraction("--threshold", threshold, 0.0, 1.0)
    ratio_v = _fraction("--scale-ratio", scale_ratio, 1.1, 3.0)
    if not windows and not components:
        raise typer.BadParameter("--no-windows and --no-components: nothing would be proposed; keep one")
    _writable_out(out)
    reporter = Reporter(quiet)
    fields = collection_fields(name if name is not None else default_collection_name(out, str(data)), None, None)
    sources = list(iter_pages(data, max_side=max_side))
    with write_lock(out, lock_timeout):
        if out.exists() and (out.is_file() or any(out.iterdir())) and not force:
            raise typer.BadParameter(f"--out {out}: already exists; pass --force to replace it")
        r = Retriever.from_model(model, collection=fields)
        cfg = ProposalConfig(min_size=min_size, max_side=max_side, windows=windows, components=components)
        curves: dict[str, Any] = {}
        if step_v is None or ratio_v is None:
            with reporter.phase(f"measuring {model}'s shift and scale invariance"):
                measured, curves = measure_config(r, default_pairs(r.method), cfg, threshold_v)
            cfg = replace(
                cfg,
                step=measured.step if step_v is None else step_v,
                scale_ratio=measured.scale_ratio if ratio_v is None else ratio_v,
                source={
                    "step": measured.source["step"] if step_v is None else "given",
                    "scale_ratio": measured.source["scale_ratio"] if ratio_v is None else "given",
                },
            )
        else:
            cfg = replace(cfg, step=step_v, scale_ratio=ratio_v)
        _note(
            f"windows: step {cfg.step:g} of their side ({cfg.source['step']}); sizes {cfg.scale_ratio:g}x apart "
            f"({cfg.source['scale_ratio']})"
        )
        index = PageIndex(r, cfg)
        errors: list[str] = []

        def skipped(e: Exception) -> None:
            errors.append(str(e))
            _note(f"skipped {e}")

        with reporter.steps() as update:
            rep = index.add_pages(
                sources,
                strict=strict,
                on_error=skipped,
                progress=lambda done, src: update("indexing pages", done, len(sources)),
                metas=read_truth_metas(data),
            )
        if rep.pages == 0:
            raise IndexError_(f"{data}: no page could be read ({len(errors)} skipped); nothing was written")
        index.save(out)
    doc = {
        "index": str(out),
        "pages": rep.pages,
        "boxes": rep.boxes,
        "skipped": len(rep.skipped),
        "errors": rep.skipped,
        "seconds": round(rep.seconds, 3),
        "pages_per_s": round(rep.pages / max(rep.seconds, 1e-9), 4),
        "step": cfg.step,
        "scale_ratio": cfg.scale_ratio,
        "config": cfg.to_dict(),
        "invariance": curves,
    }
    if as_json:
        print_json(doc)
        return
    print(
        f"saved {out}: {rep.pages} pages, {rep.boxes} boxes ({rep.boxes / rep.pages:.0f} a page), "
        f"{rep.pages / max(rep.seconds, 1e-9):.2f} pages/s"
        + (f"; skipped {len(rep.skipped)} unreadable page(s)" if rep.skipped else "")
    )


@pages_app.command("search")
@friendly_errors
def pages_search(
    query: Path = typer.Argument(
        ..., help="Query: a JSON drawing (the API's stroke forms), an image, or a record of a data file (--record)."
    ),
    index: Path = typer.Option(..., "--index", help="Page index folder (from `sketchsearch pages index`)."),
    model: str | None = typer.Option(None, "--model", help="Model (default: the one named in the index)."),
    k: int = typer.Option(10, "-k", min=1, max=1000, help="Number of boxes (pages with --by-page)."),
    by_page: bool = typer.Option(False, "--by-page", help="The best box of each page only."),
    nms_iou: float = typer.Option(
        0.3, "--nms-iou", min=0.0, max=1.0, help="Overlapping hits on a page above this IoU keep only the best."
    ),
    record: int = typer.Option(0, help="Which record of a data file is the query (0-based)."),
    out: Path | None = typer.Option(
        None, "--out", help="Write each page with hits, its hit boxes drawn and numbered by rank, into this folder."
    ),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Search a page index with a drawing: the best boxes with their page, box and distance."""
    from ..pages import PageIndex

    pages = PageIndex.load(index, model)
    q = _read_query(query, record)
    t0 = time.perf_counter()
    hits = pages.search(q, k=k, by_page=by_page, nms_iou=nms_iou)
    ms = (time.perf_counter() - t0) * 1000
    written: list[str] = []
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        for page_id in dict.fromkeys(h.page for h in hits):
            first = min(h.rank for h in hits if h.page == page_id)
            path = out / f"rank{first:03d}-page{page_id}.png"
            pages.draw(page_id, hits).save(path)
            written.append(str(path))
        _note(f"wrote {len(written)} page picture(s) to {out}")
    if as_json:
        print_json({"ms": ms, "hits": [h.__dict__ for h in hits], "pictures": written})
        return
    print_table(
        ("rank", "page", "source", "box (x0 y0 x1 y1)", "distance"),
        [(h.rank, h.page, h.source, " ".join(map(str, h.box)), f"{h.distance:.4g}") for h in hits],
        title=f"top {k} {'pages' if by_page else 'boxes'} for {query} ({ms:.1f} ms)",
    )


@pages_app.command("compose")
@friendly_errors
def pages_compose(
    data: str = typer.Option(
        "default", "--data", help="Drawings to place: any data path or source `data info` reads, or 'default'."
    ),
    out: Path = typer.Option(..., "--out", help="Folder to write the pages (PNG) and their truth.json into."),
    pages: int = typer.Option(8, "--pages", min=1, max=10000, help="How many pages."),
    seed: int = typer.Option(0, "--seed", help="Seed: page i depends only on (seed, i)."),
    width: int = typer.Option(1000, "--width", min=200, max=8000, help="Page width, pixels."),
    height: int = typer.Option(1400, "--height", min=200, max=8000, help="Page height, pixels."),
    limit: int | None = typer.Option(None, "--limit", min=1, help="Read at most this many drawings."),
    clean: bool = typer.Option(False, "--clean", help="Marks alone on flat paper: no text, stains, noise."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON only."),
) -> None:
    """Generate document pages with drawings of --data placed on them among handwriting-like text, and the
    true box of every placed drawing (truth.json), for trying and evaluating page search."""
    from ..data.page_compose import PageStyle, compose_pages, write_pages
    from ..data.sources import load_collection

    coll = load_collection(data, limit=limit, modality="sketch")
    if not coll.items:
        raise typer.BadParameter(f"--data {data}: no drawings to place ({coll.skipped} bad records skipped)")
    style = PageStyle.clean(size=(width, height)) if clean else PageStyle(size=(width, height))
    made = compose_pages(coll.items, pages, seed=seed, style=style)
    write_pages(made, out)
    marks = sum(len(p.marks) for p in made)
    if as_json:
        print_json({"out": str(out), "pages": len(made), "marks": marks, "truth": str(out / "truth.json")})
        return
    print(f"wrote {len(made)} pages with {marks} placed drawings and their truth.json to {out}")


def register(app: typer.Typer) -> None:
    app.add_typer(pages_app, name="pages")
