"""``sketchsearch evaluate``: models and baselines on one split, through the one evaluation function;
with ``--plot DIR`` its pictures: precision-recall curves and retrieval grids."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import typer

from .app import QUIET, Reporter, command_line, console, friendly_errors, print_json, print_table

if TYPE_CHECKING:
    from ..data.collection import Collection
    from ..data.formats.base import Item
    from ..data.splits import Split

__all__ = ["evaluate", "register", "write_plots"]

SHOWN = ("mAP@all", "MAP@R", "P@1", "P@100", "acc@1", "ms_per_query")
PROTOCOL_CHOICES = ("category", "leave-one-out", "cross-modal", "instance")
#: --plot: recall levels of the precision-recall curves; queries and hits per query in a retrieval grid
PR_POINTS, GRID_QUERIES, GRID_HITS = 21, 8, 8


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
            notes.append(
                f"{m}: trained on {trained_on} without a split file, so its training items could not be "
                "left out: its figures here are not held-out"
            )
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
        notes.append(
            f"the split recorded with {first} ({split.kind}, seed {split.seed}): its queries and gallery "
            "are held out from its training; baselines are fitted on its train part"
        )
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
        split = make_split(
            "zero_shot",
            items,
            seed=seed,
            query_per_class=queries_per_class,
            train_fraction=0.0,
            query_modality="sketch",
            gallery_modality="photo",
        )
    else:
        split = make_split("instance", items, seed=seed)
    return split, notes


@friendly_errors
def evaluate(
    ctx: typer.Context,
    data: str = typer.Option(
        ..., "--data", help="Labelled data (file or folder in any supported format), or 'default'."
    ),
    model: list[str] | None = typer.Option(None, "--model", help="Trained model artifact name or path (repeatable)."),
    method: list[str] | None = typer.Option(
        None,
        "--method",
        help="Closed-form baseline fitted on the split's train part or gallery: itq, lsh, pca (repeatable).",
    ),
    bits: list[int] | None = typer.Option(None, "--bits", help="Code length(s) for --method (repeatable; default 64)."),
    protocol: str = typer.Option(
        "category",
        "--protocol",
        help="category (same class; per class --queries-per-class queries, the rest gallery), leave-one-out (each "
        "item queries all others), cross-modal (sketch queries, photo gallery), instance (a sketch's own photo, "
        "on the data's own train/test split). A model's recorded split, when the data holds it, comes first.",
    ),
    k: list[int] | None = typer.Option(None, "--k", help="Extra cut-offs for mAP@k, P@k, acc@k (repeatable)."),
    queries_per_class: int = typer.Option(10, help="Queries per class (category, cross-modal)."),
    seed: int = typer.Option(0, help="Split seed."),
    split_file: Path | None = typer.Option(None, "--split", help="Score on this saved split (a split.json)."),
    save_split: Path | None = typer.Option(None, help="Write the split used to this file."),
    limit: int | None = typer.Option(None, help="Read at most this many items."),
    as_json: bool = typer.Option(False, "--json", help="Print the results as JSON."),
    out: Path | None = typer.Option(None, help="Write OUT.json and OUT.md."),
    plot: Path | None = typer.Option(
        None,
        "--plot",
        help="Write pictures into this folder: precision-recall curves (pr-EVALUATION.png, "
        "a curve per row) and retrieval grids (retrieval-ROW-EVALUATION.png: queries, top hits, relevant "
        "framed).",
    ),
    backend: str = typer.Option(
        "numba",
        "--backend",
        help="Hamming index the binary rows are searched in: numba, mih, sharded, milvus, faiss or numpy (exact: "
        "the same figures; float rows use the dense index).",
    ),
    quiet: bool = QUIET,
) -> None:
    """Evaluate models and/or baselines, every row on the same split: mAP@all, MAP@R, mAP@k (two
    normalisations), P@k, acc@k, time per query; a split's unseen classes apart, as `zero_shot`.

    A trained model is never scored with or against its own training items: on data that holds its recorded
    split it is scored on that split; elsewhere its training items are left out. `notes` says which.
    With --plot the results also hold each evaluation's `pr_curve` and each query's `top_ids` (gallery
    positions) and `top_relevant`: what the pictures show.
    """
    from ..data.sources import load_collection
    from ..eval.evaluate import DEFAULT_KS, Row, evaluate_rows

    if protocol not in PROTOCOL_CHOICES:
        raise typer.BadParameter(f"--protocol must be one of {', '.join(PROTOCOL_CHOICES)}, got {protocol!r}")
    from ..index.base import ALIASES, list_indexes

    hamming = [n for n in list_indexes() if n != "dense"]
    if backend not in hamming and backend not in ALIASES:
        raise typer.BadParameter(f"--backend must be one of {', '.join(hamming)}, got {backend!r}")
    rows = [Row(label=m, model=m) for m in model or []]
    for name in method or []:
        for b in bits or [64]:
            rows.append(
                Row(
                    label=f"{name} {b}", method=name, kwargs={"dim": b} if name == "pca" else {"nbits": b, "seed": seed}
                )
            )
    if not rows:
        raise typer.BadParameter("give at least one --model or --method")
    reporter = Reporter(quiet)
    with reporter.phase(f"reading {data}"):
        coll = load_collection(data, limit=limit)
    split, notes = choose_split(coll, list(model or []), protocol, split_file, queries_per_class, seed)
    if save_split:
        split.save(save_split)
    ks = tuple(sorted(set(DEFAULT_KS) | set(k or [])))
    relevance = {"leave-one-out": "leave-one-out", "instance": "instance"}.get(protocol)
    with reporter.steps() as step:
        doc = evaluate_rows(
            rows,
            coll,
            split,
            protocol=relevance,
            ks=ks,
            title=f"Retrieval on {data} ({split.kind} split)",
            notes=notes,
            meta={"command": command_line(ctx)},
            progress=reporter.note,
            step_progress=step,
            json_path=str(out.with_suffix(".json")) if out else None,
            md_path=str(out.with_suffix(".md")) if out else None,
            columns=SHOWN[:-1],
            pr_points=PR_POINTS if plot else 0,
            top=GRID_HITS if plot else 0,
            backend=backend,
        )
    if plot:
        with reporter.phase(f"writing pictures into {plot}"):
            written = write_plots(doc, coll, split, plot)
        console.print(f"wrote {len(written)} pictures into {plot}", highlight=False, markup=False)
    if as_json:
        print_json(doc)
        return
    shown = (*SHOWN[:-1], *(f"P@{x}" for x in k or [] if f"P@{x}" not in SHOWN), SHOWN[-1])
    table = []
    for row in doc["rows"]:
        for name in ("main", "zero_shot"):
            if name in row:
                label = row["label"] if name == "main" else f"{row['label']} (zero-shot)"
                r = row[name]
                table.append((label, r["code_size"], *(f"{r.get(c, float('nan')):.4f}" for c in shown)))
    print_table(("method", "bits/dim", *shown), table, title=doc["title"])
    for note in doc["notes"]:
        console.print(f"note: {note}", highlight=False, markup=False, soft_wrap=True)


def write_plots(doc: dict[str, Any], coll: Collection, split: Split, folder: Path) -> list[Path]:
    """The pictures of an evaluation (``doc`` from ``evaluate_rows(..., pr_points=.., top=..)`` on ``coll``
    and ``split``): per evaluation, ``pr-NAME.png`` (a precision-recall curve per row); per row and
    evaluation, ``retrieval-ROW-NAME.png`` (up to 8 queries spread over the query set, each with its top hits, relevant
    ones framed green, others red, with a legend). Returns the paths written."""
    from ..eval.plots import curves, retrieval_grid

    parts = {name: (q, g) for name, q, g in split.evaluations()}
    written: list[Path] = []
    for name, (q_part, g_part) in parts.items():
        rows = [r for r in doc["rows"] if name in r and "pr_curve" in r[name]]
        if not rows:
            continue
        recall = rows[0][name]["pr_curve"]["recall"]
        written.append(
            curves(
                recall,
                {r["label"]: r[name]["pr_curve"]["precision"] for r in rows},
                folder / f"pr-{name}.png",
                xlabel="recall",
                ylabel="precision (interpolated, mean over queries)",
                ylim=(0.0, 1.02),
                title=f"{doc['title']}: {name}",
            )
        )
        gallery = [coll[i] for i in split.part(g_part)]
        queries = gallery if rows[0][name].get("leave_one_out") else [coll[i] for i in split.part(q_part)]
        n_shown = min(GRID_QUERIES, len(queries))
        shown = np.unique(np.linspace(0, len(queries) - 1, n_shown).round().astype(int))
        for r in rows:
            res = r[name]
            hits = [res["top_ids"][q] for q in shown]
            relevant = [res["top_relevant"][q] for q in shown]
            written.append(
                retrieval_grid(
                    [_thumbnail(queries[q]) for q in shown],
                    [[_thumbnail(gallery[j]) for j in row] for row in hits],
                    folder / f"retrieval-{_slug(r['label'])}-{name}.png",
                    relevant=np.array([row + [False] * (GRID_HITS - len(row)) for row in relevant]),
                    title=f"{r['label']}: {name}",
                    row_labels=[str(queries[q].label) for q in shown],
                    legend=True,
                )
            )
    return written


def _thumbnail(item: Item, size: int = 64) -> np.ndarray:
    """What a grid shows of an item: its strokes rendered (ink = 1), a drawing's image as a raster, or a photo
    as RGB in [0, 1]."""
    from ..data.batching import item_input, photo_to_tensor
    from ..data.render import image_to_raster, rasterize

    if item.sketch is not None:
        return rasterize(item.sketch, size)
    img = item_input(item)
    if item.modality == "photo":
        return photo_to_tensor(img, size).transpose(1, 2, 0)
    return image_to_raster(img, size)


def _slug(label: str) -> str:
    """A row label as a file-name part: runs of anything but letters, digits, ``.`` and ``-`` become ``_``."""
    return re.sub(r"[^A-Za-z0-9.-]+", "_", label).strip("_") or "row"


def register(app: typer.Typer) -> None:
    app.command("evaluate")(evaluate)
