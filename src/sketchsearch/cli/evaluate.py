"""``sketchsearch evaluate``: models and baselines on one split, through the one evaluation function."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from .app import command_line, console, friendly_errors, print_json

__all__ = ["evaluate", "register"]

SHOWN = ("mAP@all", "MAP@R", "P@1", "P@100", "acc@1", "ms_per_query")
PROTOCOL_CHOICES = ("category", "leave-one-out", "cross-modal", "instance")


def _recorded_splits(models: list[str], data: str | None) -> tuple[dict[str, Any], list[str]]:
    """Each model's recorded split (None when its card names none), and notes on the models whose training
    items therefore cannot be left out. A card from before split files whose ``split_file`` is a path to the
    run's work folder (not a file beside the card) counts as naming none."""
    import json

    from ..errors import ModelError
    from ..model import model_split, resolve_model

    splits: dict[str, Any] = {}
    notes: list[str] = []
    for m in models:
        try:
            splits[m] = model_split(m)
        except ModelError as e:
            splits[m] = None
            notes.append(f"{m}: its split cannot be read ({e})")
        if splits[m] is not None:
            continue
        trained_on = (json.loads(resolve_model(m).with_suffix(".json").read_text()).get("training") or {}).get("data")
        if isinstance(trained_on, str) and data and _same_path(trained_on, data):
            notes.append(f"{m}: trained on {trained_on} without a split file, so its training items could not be "
                         "left out: its figures here are not held-out")  # fmt: skip
    return splits, notes


def _same_path(a: str, b: str) -> bool:
    try:
        return Path(a).exists() and Path(a).resolve() == Path(b).resolve()
    except (OSError, ValueError):
        return False


def _leak_notes(split: Any, recorded: dict[str, Any]) -> list[str]:
    """Notes on models whose own training items are among the evaluated (non-train) items of ``split``."""
    evaluated = {i for name, ids in split.parts.items() if name != "train" for i in ids}
    notes = []
    for m, s in recorded.items():
        n = len(evaluated & set(s.train)) if s is not None else 0
        if n:
            notes.append(f"{m}: {n} of the items evaluated are its training items: its figures are not held-out")
    return notes


def choose_split(
    coll: Any, models: list[str], protocol: str, split_file: Path | None, queries_per_class: int, seed: int
) -> tuple[Any, list[str]]:
    """The one split every row is scored on, and notes saying why.

    ``--split FILE`` wins. Else a model whose card names a split file and whose split's items are all in the
    data is scored on that split (held out by construction; the baselines beside it are fitted on its train
    part). Else a fresh split made by ``--protocol``, from which every model's training items found in the
    data (by id) are left out first. Notes name any model whose training items are evaluated all the same
    (a given split file, a second model's split, a card without a split file)."""
    from ..data.splits import Split, make_split

    cards, notes = _recorded_splits(models, coll.path)
    if split_file is not None:
        split = Split.load(split_file)
        split.check(coll.items, split_file)
        return split, [f"split read from {split_file}", *notes, *_leak_notes(split, cards)]
    own = {m: s for m, s in cards.items() if s is not None and all(i in coll for p in s.parts.values() for i in p)}
    if own:
        first, split = next(iter(own.items()))
        others = [m for m, s in own.items() if s.to_json() != split.to_json()]
        if others:
            raise typer.BadParameter(
                f"--model {first} and {others[0]} were trained on different splits of this data; evaluate them "
                "separately (every row of a table is scored on one split)"
            )
        notes.append(f"the split recorded with {first} ({split.kind}, seed {split.seed}): its queries and gallery "
                     "are held out from its training; baselines are fitted on its train part")  # fmt: skip
        return split, notes + _leak_notes(split, cards)
    train_ids = {i for s in cards.values() if s is not None for i in s.train}
    items = [it for it in coll.items if it.id not in train_ids]
    if len(items) < len(coll.items):
        notes.append(f"{len(coll.items) - len(items)} items are training items of a model here and were left out")
    if protocol == "category":
        split = make_split("category", items, queries_per_class=queries_per_class, seed=seed)
    elif protocol == "leave-one-out":
        split = make_split("leave_one_out", items, seed=seed)
    elif protocol == "cross-modal":
        split = make_split("zero_shot", items, seed=seed, query_per_class=queries_per_class, train_fraction=0.0,
                           query_modality="sketch", gallery_modality="photo")  # fmt: skip
    else:
        split = make_split("instance", items, seed=seed)
    return split, notes


@friendly_errors
def evaluate(
    ctx: typer.Context,
    data: str = typer.Option(..., "--data", help="Labelled data (file or folder in any supported format), or 'default'."),
    model: list[str] | None = typer.Option(None, "--model", help="Trained model artifact name or path (repeatable)."),
    method: list[str] | None = typer.Option(
        None, "--method", help="Closed-form baseline fitted on the split's train part or gallery: itq, lsh, pca (repeatable)."
    ),
    bits: list[int] | None = typer.Option(None, "--bits", help="Code length(s) for --method (repeatable; default 64)."),
    protocol: str = typer.Option(
        "category", "--protocol",
        help="category (same class; per class --queries-per-class queries, the rest gallery), leave-one-out (each "
        "item queries all others), cross-modal (sketch queries, photo gallery), instance (a sketch's own photo, "
        "on the data's own train/test split). A model's recorded split, when the data holds it, comes first.",
    ),  # fmt: skip
    k: list[int] | None = typer.Option(None, "--k", help="Extra cut-offs for mAP@k, P@k, acc@k (repeatable)."),
    queries_per_class: int = typer.Option(10, help="Queries per class (category, cross-modal)."),
    seed: int = typer.Option(0, help="Split seed."),
    split_file: Path | None = typer.Option(None, "--split", help="Score on this saved split (a split.json)."),
    save_split: Path | None = typer.Option(None, help="Write the split used to this file."),
    limit: int | None = typer.Option(None, help="Read at most this many items."),
    as_json: bool = typer.Option(False, "--json", help="Print the results as JSON."),
    out: Path | None = typer.Option(None, help="Write OUT.json and OUT.md."),
) -> None:
    """Evaluate models and/or baselines, every row on the same split: mAP@all, MAP@R, mAP@k (two
    normalisations), P@k, acc@k, time per query; a split's unseen classes apart, as `zero_shot`.

    A trained model is never scored with or against its own training items: on data that holds its recorded
    split it is scored on that split; elsewhere its training items are left out. `notes` says which.
    """
    from ..data.sources import load_collection
    from ..eval.evaluate import DEFAULT_KS, Row, evaluate_rows

    if protocol not in PROTOCOL_CHOICES:
        raise typer.BadParameter(f"--protocol must be one of {', '.join(PROTOCOL_CHOICES)}, got {protocol!r}")
    rows = [Row(label=m, model=m) for m in model or []]
    for name in method or []:
        for b in bits or [64]:
            rows.append(Row(label=f"{name} {b}", method=name, kwargs={"dim": b} if name == "pca" else {"nbits": b, "seed": seed}))
    if not rows:
        raise typer.BadParameter("give at least one --model or --method")
    coll = load_collection(data, limit=limit)
    split, notes = choose_split(coll, list(model or []), protocol, split_file, queries_per_class, seed)
    if save_split:
        split.save(save_split)
    ks = tuple(sorted(set(DEFAULT_KS) | set(k or [])))
    doc = evaluate_rows(
        rows, coll, split, protocol={"leave-one-out": "leave-one-out", "instance": "instance"}.get(protocol),
        ks=ks, title=f"Retrieval on {data} ({split.kind} split)", notes=notes, meta={"command": command_line(ctx)},
        progress=None if as_json else (lambda line: console.print(line, highlight=False)),
        json_path=str(out.with_suffix(".json")) if out else None, md_path=str(out.with_suffix(".md")) if out else None,
        columns=SHOWN[:-1],
    )  # fmt: skip
    if as_json:
        print_json(doc)
        return
    shown = (*SHOWN[:-1], *(f"P@{x}" for x in k or [] if f"P@{x}" not in SHOWN), SHOWN[-1])
    t = Table(title=doc["title"])
    for c in ("method", "bits/dim", *shown):
        t.add_column(c)
    for row in doc["rows"]:
        for name in ("main", "zero_shot"):
            if name in row:
                label = row["label"] if name == "main" else f"{row['label']} (zero-shot)"
                r = row[name]
                t.add_row(label, str(r["code_size"]), *(f"{r.get(c, float('nan')):.4f}" for c in shown))
    console.print(t)
    for note in doc["notes"]:
        console.print(f"note: {note}", highlight=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    app.command("evaluate")(evaluate)
