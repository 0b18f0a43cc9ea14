"""``sketchsearch demo``: the README's first command after set-up.

Builds the embedded default collection, loads the shipped model (or fits/trains one when none ships),
indexes the gallery, evaluates the held-out queries through the same Retriever, writes a retrieval figure,
and serves the draw-to-search page.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import typer

from ..progress import phase, report_phases
from .app import QUIET, Reporter, friendly_errors, print_table

__all__ = ["build_demo", "build_page_demo", "demo", "register"]

#: shipped models tried in order for the embedded default (the first that exists is used)
DEMO_MODELS = ("sketch-gan-default", "sketch-gan")
#: what the demo prints (the full set is in the protocol's result)
DEMO_METRICS = ("mAP@all", "MAP@R", "P@1", "P@5", "acc@5", "ms_per_query", "encode_per_s")


def _pick_model(model: str | None, train_items: list[Any], workdir: Path, seed: int) -> tuple[Any, str, str, str]:
    """(method, model_id, how to load it, description). Falls back to fitting ITQ-64 on the training split
    (seconds) when no model is given and none ships."""
    from ..model import list_models, load_model, save_model

    names = [model] if model else [n for n in DEMO_MODELS if any(r["name"] == n for r in list_models())]
    if names:
        method, card = load_model(names[0])
        return method, card.model_id, names[0], f"{names[0]} ({card.method}, {card.output}, {card.code_size})"
    from ..data.batching import make_batch
    from ..methods.base import create_method

    method = create_method("itq", nbits=64, seed=seed)
    batch = make_batch([it.sketch for it in train_items], method.preprocessing)
    method.fit(batch["raster"][:, 0].numpy())
    stem = workdir / "itq-64-default"
    card = save_model(method, stem, training={"data": "default", "split": "train", "seed": seed})
    return (
        method,
        card.model_id,
        str(stem),
        "itq-64 fitted on the embedded default's training split (no shipped model found)",
    )


def build_demo(
    workdir: Path, model: str | None = None, seed: int = 0, pages: bool = True
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Build everything the demo serves; returns ({collection name: Retriever or PageIndex}, report): the
    embedded default's gallery as ``default`` and, with ``pages``, generated document pages as ``pages``
    (:func:`build_page_demo`)."""
    from ..data.render import rasterize
    from ..data.splits import zero_shot_split
    from ..data.synthetic import default_collection
    from ..eval.evaluate import evaluate
    from ..eval.plots import retrieval_grid
    from ..retrieval import Retriever

    t0 = time.perf_counter()
    with phase("generating the embedded default collection"):
        col = default_collection(seed=seed)
    splits = zero_shot_split(col.items, seed=seed, query_per_class=2, train_fraction=0.5)
    workdir.mkdir(parents=True, exist_ok=True)
    col.save_manifest(workdir / "manifest.jsonl")
    splits.save(workdir / "splits.json")
    train = [col[i] for i in splits.train]
    gallery = [col[i] for i in splits.gallery]
    queries = [col[i] for i in splits.query]
    with phase("loading the model"):
        method, model_id, model_ref, desc = _pick_model(model, train, workdir, seed)
    # Evaluation fills its own fresh index (ids = gallery positions); the served index carries labels and thumbnails.
    with phase(f"evaluating {len(queries)} queries"):
        metrics = evaluate(Retriever(method, model_id=model_id), col, splits, ks=(1, 5, 10))["main"]
    r = Retriever(method, model_id=model_id, model_name=model_ref)
    with phase(f"indexing {len(gallery)} drawings"):
        r.add(
            [g.sketch for g in gallery],
            labels=[g.label for g in gallery],
            sources=[g.id for g in gallery],
            thumbnails=True,
        )
        r.save(workdir / "index")
    # A figure like the sketch-GAN paper's Fig. 6: queries spread over marks and kanji, each with its top 8.
    shown = queries[:: max(1, len(queries) // 8)][:8]
    _, ids = r.search_many([q.sketch for q in shown], k=8)
    retrieval_grid(
        [rasterize(q.sketch, 64) for q in shown],
        [[rasterize(gallery[int(j)].sketch, 64) for j in row if j >= 0] for row in ids],
        workdir / "retrieval.png",
        relevant=np.array([[gallery[int(j)].label == q.label for j in row] for q, row in zip(shown, ids)]),
        title=desc,
    )
    report = {
        "collection": f"embedded default: {len(col)} sketches, {len(col.classes)} classes",
        "model": desc,
        "gallery": len(gallery),
        "queries": len(queries),
        **{k: metrics[k] for k in DEMO_METRICS if k in metrics},
    }
    served: dict[str, Any] = {"default": r}
    if pages:
        served["pages"], page_report = build_page_demo(workdir, method, model_id, model_ref, gallery, queries, seed)
        report.update(page_report)
    report["seconds"] = round(time.perf_counter() - t0, 1)
    return served, report


#: pages the demo generates for page search (small: a few seconds to index)
DEMO_PAGES = 4


def build_page_demo(
    workdir: Path, method: Any, model_id: str, model_ref: str, gallery: list[Any], queries: list[Any], seed: int = 0
) -> tuple[Any, dict[str, Any]]:
    """Page search on the embedded default: :data:`DEMO_PAGES` generated pages (``workdir/pages``, with their
    truth.json) holding gallery drawings among handwriting-like text, indexed with the demo's model
    (``workdir/pages-index``, window step from the model's invariance), and scored with a query drawing of
    each placed mark's class by another hand (a held-out query of that class). Returns (page index, report)."""
    from ..data.page_compose import PageStyle, compose_pages, read_truth, write_pages
    from ..eval.evaluate import score_pages
    from ..pages import PageIndex, ProposalConfig, iter_pages
    from ..pages.index import default_pairs, measure_config, read_truth_metas
    from ..retrieval import Retriever

    query_of: dict[str, Any] = {}
    for q in queries:
        query_of.setdefault(str(q.label), q)
    # one gallery drawing per class that has a held-out query: the marks to place
    placeable, seen = [], set()
    for g in gallery:
        if str(g.label) in query_of and g.label not in seen:
            seen.add(g.label)
            placeable.append(g)
    with phase(f"composing {DEMO_PAGES} document pages"):
        pages = compose_pages(placeable, DEMO_PAGES, seed=seed, style=PageStyle(size=(900, 1200)))
        folder = write_pages(pages, workdir / "pages")
    r = Retriever(method, model_id=model_id, model_name=model_ref)
    with phase("measuring the model's shift and scale invariance"):
        cfg, _ = measure_config(r, default_pairs(method), ProposalConfig(min_size=48))
    index = PageIndex(r, cfg)
    with phase(f"indexing {DEMO_PAGES} pages"):
        t0 = time.perf_counter()
        rep = index.add_pages(iter_pages(folder), metas=read_truth_metas(folder))
        took = time.perf_counter() - t0
        index.save(workdir / "pages-index")
    truth = {n: [(m["label"], m["box"]) for m in p["marks"]] for n, p in enumerate(read_truth(folder))}
    labels = [lab for marks in truth.values() for lab, _ in marks]
    with phase(f"scoring {len(labels)} page queries"):
        res = score_pages(index, [query_of[lab].sketch for lab in labels], labels, truth, ks=(1, 5))
    return index, {
        "pages": f"{rep.pages} generated pages, {len(labels)} marks, {rep.boxes // max(rep.pages, 1)} boxes a page",
        "page recall@1": res["recall@1"],
        "page recall@5": res["recall@5"],
        "pages_per_s": rep.pages / took,
    }


@friendly_errors
def demo(
    model: str | None = typer.Option(None, "--model", help="Model artifact (default: the shipped demo model)."),
    workdir: Path = typer.Option(Path("runs/demo"), help="Where the collection, index and figure are written."),
    serve: bool = typer.Option(True, "--serve/--no-serve", help="Serve the drawing page when done."),
    host: str = typer.Option("127.0.0.1", help="Address to bind (loopback by default)."),
    port: int = typer.Option(8000, help="Port."),
    seed: int = typer.Option(0, help="Seed of the embedded default and its split."),
    pages: bool = typer.Option(
        True, "--pages/--no-pages", help="Also generate document pages holding some of the drawings, and serve them."
    ),
    quiet: bool = QUIET,
) -> None:
    """Build the embedded default collection, index and evaluate it, then serve the drawing page (with a
    collection of generated document pages to search inside, unless --no-pages)."""
    with report_phases(Reporter(quiet).phase):
        served, report = build_demo(workdir, model, seed, pages)
    rows = [(k, f"{v:.3f}" if isinstance(v, float) else v) for k, v in report.items()]
    print_table(("measure", "value"), rows, title="sketchsearch demo (embedded default)")
    typer.echo(f"index: {workdir / 'index'}   figure: {workdir / 'retrieval.png'}")
    if pages:
        typer.echo(f"pages: {workdir / 'pages'}   page index: {workdir / 'pages-index'}")
    if serve:
        from ..service.app import create_app
        from .serve import run_server

        run_server(create_app(served), host, port)


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
