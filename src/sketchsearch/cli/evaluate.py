"""``sketchsearch evaluate``: category retrieval on a labelled data set, through the shared protocol."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from .app import command_line, console, friendly_errors, print_json

__all__ = ["evaluate", "register"]

SHOWN = ("mAP@all", "MAP@R", "P@1", "P@100", "acc@1", "ms_per_query")


@friendly_errors
def evaluate(
    ctx: typer.Context,
    data: str = typer.Option(..., "--data", help="Labelled data (file or folder in any supported format)."),
    model: list[str] | None = typer.Option(
        None, "--model", help="Trained model artifact name or path (repeatable)."
    ),
    method: list[str] | None = typer.Option(
        None, "--method", help="Closed-form baseline fitted on the gallery: itq, lsh, pca (repeatable)."
    ),
    bits: list[int] | None = typer.Option(
        None, "--bits", help="Code length(s) for --method (repeatable; default 64)."
    ),
    queries_per_class: int = typer.Option(
        10, help="Queries per class; the rest of each class is the gallery."
    ),
    seed: int = typer.Option(0, help="Split seed."),
    split_file: Path | None = typer.Option(None, help="Split JSON: loaded when it exists, else written."),
    limit: int | None = typer.Option(None, help="Read at most this many items."),
    as_json: bool = typer.Option(False, "--json", help="Print the results as JSON."),
    out: Path | None = typer.Option(None, help="Write OUT.json and OUT.md."),
) -> None:
    """Evaluate models and/or baselines: mAP@all, MAP@R, mAP@k (two normalisations), P@k, acc@k, time per query.

    A trained model is never evaluated with or against its own training drawings: on the data its card
    records (or part of it) it is evaluated on the card's held-out split (a SketchMate model: the seen classes'
    held-out queries and gallery, plus the unseen classes as `zero_shot`); training drawings found in other
    data are left out. `notes` says which.
    """
    from ..eval.protocol import run_benchmark

    rows: list[dict[str, Any]] = [{"label": m, "model": m} for m in model or []]
    for name in method or []:
        for b in bits or [64]:
            kwargs: dict[str, Any] = {"dim": b} if name == "pca" else {"nbits": b, "seed": seed}
            rows.append({"label": f"{name} {b}", "method": name, "kwargs": kwargs})
    if not rows:
        raise typer.BadParameter("give at least one --model or --method")
    doc = run_benchmark(
        rows,
        {"path": data, "limit": limit},
        {
            "queries_per_class": queries_per_class,
            "seed": seed,
            "file": str(split_file) if split_file else None,
        },
        json_path=out.with_suffix(".json") if out else None,
        md_path=out.with_suffix(".md") if out else None,
        columns=SHOWN[:-1],
        title=f"Category retrieval on {data}",
        meta={"command": command_line(ctx)},
        progress=None if as_json else (lambda line: console.print(line, highlight=False)),
    )
    if as_json:
        if len(doc["rows"]) == 1:  # one result: its metrics at the top level too (e.g. doc["mAP@all"])
            doc = {**doc["rows"][0], **doc}
        print_json(doc)
        return
    t = Table(title=doc["title"])
    for c in ("method", "bits/dim", *SHOWN):
        t.add_column(c)
    for row in doc["rows"]:
        for label, r in ((row["label"], row), (f"{row['label']} (zero-shot)", row.get("zero_shot"))):
            if r is not None:
                t.add_row(label, str(r["code_size"]), *(f"{r.get(c, float('nan')):.4f}" for c in SHOWN))
    console.print(t)
    for note in doc["notes"]:
        console.print(f"note: {note}", highlight=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    app.command("evaluate")(evaluate)
