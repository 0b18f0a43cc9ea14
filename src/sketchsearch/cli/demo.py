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

__all__ = ["build_demo", "demo", "register"]

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


def build_demo(workdir: Path, model: str | None = None, seed: int = 0) -> tuple[Any, dict[str, Any]]:
    """Build everything the demo serves; returns (retriever, report)."""
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
        "seconds": round(time.perf_counter() - t0, 1),
        **{k: metrics[k] for k in DEMO_METRICS if k in metrics},
    }
    return r, report


@friendly_errors
def demo(
    model: str | None = typer.Option(None, "--model", help="Model artifact (default: the shipped demo model)."),
    workdir: Path = typer.Option(Path("runs/demo"), help="Where the collection, index and figure are written."),
    serve: bool = typer.Option(True, "--serve/--no-serve", help="Serve the drawing page when done."),
    host: str = typer.Option("127.0.0.1", help="Address to bind (loopback by default)."),
    port: int = typer.Option(8000, help="Port."),
    seed: int = typer.Option(0, help="Seed of the embedded default and its split."),
    quiet: bool = QUIET,
) -> None:
    """Build the embedded default collection, index and evaluate it, then serve the drawing page."""
    with report_phases(Reporter(quiet).phase):
        r, report = build_demo(workdir, model, seed)
    rows = [(k, f"{v:.3f}" if isinstance(v, float) else v) for k, v in report.items()]
    print_table(("measure", "value"), rows, title="sketchsearch demo (embedded default)")
    typer.echo(f"index: {workdir / 'index'}   figure: {workdir / 'retrieval.png'}")
    if serve:
        from ..service.app import create_app
        from .serve import run_server

        run_server(create_app({"default": r}), host, port)


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
