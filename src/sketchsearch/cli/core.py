"""Core commands: data info, train, index build / info, search, models."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from rich.progress import Progress
from rich.table import Table

from ..errors import InvalidSketchError
from .app import (
    QUIET,
    Reporter,
    app,
    command_line,
    console,
    data_app,
    friendly_errors,
    index_app,
    parse_sets,
    print_json,
    print_table,
)


# ---------------------------------------------------------------------------------------------- data
@data_app.command("info")
@friendly_errors
def data_info(
    path: str = typer.Argument(
        ...,
        help="A data file or folder (any supported format), 'default' (the embedded collection) or "
        "'kanjivg' (the installed kanjivg package's SVGs).",
    ),
    strict: bool = typer.Option(
        False, "--strict", help="Stop at the first bad record or unreadable file; exit non-zero if any."
    ),
    as_json: bool = typer.Option(
        False, "--json", help="Print JSON: items, classes, skipped, errors, excluded, format."
    ),
    fmt: str | None = typer.Option(None, "--format", help="Reader name (default: detected from the path)."),
    variants: bool = typer.Option(
        False, "--variants", help="KanjiVG: also read the variant files (<hex>-<variant>.svg) as items."
    ),
) -> None:
    """Count items and classes; list skipped records (and unreadable files) with file and line.

    Without --strict a bad record or a file that cannot be read at all is reported and skipped, and the
    other files are still read."""
    from ..data.inspect import inspect_dataset

    if path == "default":
        from ..data.sources import load_collection

        res = load_collection(path)
        labels = {i.label for i in res.items}
        info: dict[str, Any] = {
            "format": "default",
            "items": len(res.items),
            "classes": len(labels),
            "skipped": 0,
            "errors": [],
        }
    else:
        info = inspect_dataset(path, strict=strict, fmt=fmt, variants=variants)
    if as_json:
        print_json(info)
    else:
        t = Table(title=f"{path}", show_header=False)
        for k in ("format", "items", "classes", "skipped"):
            t.add_row(k, str(info.get(k)))
        for k, v in (info.get("modalities") or {}).items():
            t.add_row(f"  {k}", str(v))
        for reason, count in (info.get("excluded") or {}).items():
            t.add_row("not read", f"{count} {reason}")
        console.print(t)
        for e in info.get("errors", [])[:20]:
            where = e["file"] if e["record"] is None else f"{e['file']}: record {e['record']}"
            console.print(f"[yellow]skipped[/] {escape(where)}: {escape(e['reason'])}", highlight=False)
    if strict and info.get("skipped"):
        raise typer.Exit(1)


# ---------------------------------------------------------------------------------------------- train
@app.command("train")
@friendly_errors
def train_cmd(
    ctx: typer.Context,
    method: str = typer.Argument(..., help="Method name (see `sketchsearch models --methods`)."),
    data: str = typer.Option(
        ..., "--data", help="Training data path, or 'default' for the embedded default."
    ),
    out: Path = typer.Option(..., "--out", help="Artifact path stem: writes OUT.safetensors and OUT.json."),
    iterations: int | None = typer.Option(
        None, help="Training iterations (method's recipe default if unset)."
    ),
    batch_size: int | None = typer.Option(None, help="Batch size."),
    lr: float | None = typer.Option(None, help="Learning rate."),
    seed: int = typer.Option(0, help="Random seed (data order, init)."),
    device: str | None = typer.Option(None, help="cuda / cpu (default: cuda when present)."),
    workdir: Path | None = typer.Option(
        None, help="Folder for logs (log.jsonl, loss.png), checkpoints, sample grids (default runs/OUTNAME)."
    ),
    set_: list[str] | None = typer.Option(
        None, "--set", help="Split parameters, recipe options and method kwargs as key=value (repeatable)."
    ),
    split_file: Path | None = typer.Option(None, "--split", help="Train on this saved split (a split.json)."),
    quiet: bool = QUIET,
) -> None:
    """Train a method with its recipe and save a model artifact (weights + card) and its split file.

    `--set` keys: the split's parameters, the recipe's options and the method's kwargs (`sketchsearch models
    --methods` lists them with their defaults); an unknown key is refused with the valid ones. The workdir
    gets log.jsonl and loss.png (every loss term) for each run of the training loop."""
    from ..model import save_model
    from ..progress import report_phases
    from ..recipes import list_recipes, recipe_options, run_recipe

    if method not in list_recipes():
        raise typer.BadParameter(f"unknown method {method!r}; valid: {', '.join(list_recipes())}")
    options = parse_sets(set_)
    valid = recipe_options(method)
    unknown = sorted(k for k in options if not any(k in opts for opts in valid.values()))
    if unknown:
        keys = ", ".join(repr(k) for k in unknown)
        plural = "s" if len(unknown) > 1 else ""
        valid_text = set_keys_text(valid)
        raise typer.BadParameter(f"unknown --set key{plural} {keys} for {method}; valid: {valid_text}")
    reporter = Reporter(quiet)
    t0 = time.perf_counter()
    with report_phases(reporter.phase):
        res = run_recipe(method, data, out=workdir or Path("runs") / Path(out).name, seed=seed, device=device,
                         iterations=iterations, batch_size=batch_size, lr=lr, split_file=split_file,
                         progress=reporter.enabled, **options)  # fmt: skip
    training = {"command": command_line(ctx), **res.training, "seconds": round(time.perf_counter() - t0, 1)}
    card = save_model(res.method, out, training=training, metrics=res.metrics, split=res.split)
    score = res.metrics.get("mAP@all")
    typer.echo(f"saved {out} ({card.model_id}); mAP@all {'n/a' if score is None else f'{score:.4f}'}")


def set_keys_text(options: dict[str, dict[str, Any]]) -> str:
    """``recipe_options(name)`` as one line, ``split: a=1, b=0.5; recipe: ...; method: ...`` (a kind without
    keys left out)."""
    import inspect

    def default(v: Any) -> str:
        return "(required)" if v is inspect.Parameter.empty else repr(v)

    return "; ".join(
        f"{kind}: " + ", ".join(f"{k}={default(v)}" for k, v in opts.items())
        for kind, opts in options.items()
        if opts
    )


# ---------------------------------------------------------------------------------------------- index
@index_app.command("build")
@friendly_errors
def index_build(
    model: str = typer.Option(..., "--model", help="Model artifact name or path."),
    data: str = typer.Option(..., "--data", help="Data path, or 'default'."),
    out: Path = typer.Option(..., "--out", help="Index folder to write (replaced atomically)."),
    limit: int | None = typer.Option(None, help="Index at most this many items."),
    strict: bool = typer.Option(False, "--strict", help="Fail on the first bad record."),
    backend: str = typer.Option(
        "numba", help="Hamming backend: numba (the compiled scan), faiss or numpy ('sketchsearch' = numba)."
    ),
    modality: str | None = typer.Option(None, help="Index only sketch or photo items."),
) -> None:
    """Encode a collection with a model and write an on-disk index (codes, ids, items with thumbnails)."""
    from ..data.batching import item_input
    from ..data.sources import load_collection
    from ..retrieval import Retriever

    if modality not in (None, "sketch", "photo"):
        raise typer.BadParameter(f"--modality must be sketch or photo, got {modality!r}")
    # --limit counts the items indexed, so it applies after the --modality filter
    res = load_collection(data, strict=strict, limit=None if modality else limit)
    items = [i for i in res.items if modality is None or i.modality == modality][:limit]
    if not items:
        what = f"{modality} items" if modality else "items"
        raise InvalidSketchError(f"{data}: no {what} to index", "data")
    r = Retriever.from_model(model, backend=backend)
    with Progress(console=console, transient=True) as bar:
        task = bar.add_task("encoding", total=len(items))
        step = 512
        for s in range(0, len(items), step):
            chunk = items[s : s + step]
            for kind in ("sketch", "photo"):  # each modality through its own encoder branch
                part = [i for i in chunk if i.modality == kind]
                if part:
                    r.add(
                        [item_input(i) for i in part],
                        labels=[i.label for i in part],
                        sources=[i.source for i in part],
                        modality=kind,
                        thumbnails=True,
                    )
            bar.update(task, advance=len(chunk))
    r.save(out)
    console.print(f"indexed {len(r)} items into {out} (skipped {res.skipped} bad records)", highlight=False)
    for e in res.errors[:10]:
        console.print(f"[yellow]skipped[/] {e}", highlight=False)


@index_app.command("info")
@friendly_errors
def index_info(folder: Path = typer.Argument(..., help="Index folder.")) -> None:
    """Print an index's manifest."""
    from ..index.store import read_manifest

    print_json(read_manifest(folder))


# ---------------------------------------------------------------------------------------------- search
def _read_query(path: Path, record: int) -> Any:
    """A query file: an image, a JSON strokes file ([[[x,y(,t)],...],...] or {"strokes": ...}) or ndjson (record N)."""
    from ..data.batching import item_input

    suffix = path.suffix.lower()
    if suffix in (".json",):
        from ..data.sketch import Sketch

        obj = json.loads(path.read_text())
        strokes = obj["strokes"] if isinstance(obj, dict) else obj
        return Sketch([[p[:2] for p in s] for s in strokes])
    from ..data.formats import read_any

    for n, item in enumerate(read_any(path, strict=True)):
        if n == record:
            return item_input(item)
    raise InvalidSketchError(f"{path} has no record {record}", "record")


@app.command("search")
@friendly_errors
def search_cmd(
    query: Path = typer.Argument(..., help="Query: image, JSON strokes, or a data file (see --record)."),
    index: Path = typer.Option(..., "--index", help="Index folder."),
    model: str | None = typer.Option(None, "--model", help="Model (default: the one named in the index)."),
    k: int = typer.Option(10, "-k", min=1, max=10000, help="Number of results."),
    record: int = typer.Option(0, help="Which record of a data file is the query (0-based)."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Search an index with a drawing."""
    from ..retrieval import Retriever

    r = Retriever.load(index, model)
    q = _read_query(query, record)
    t0 = time.perf_counter()
    hits = r.search(q, k=k)
    ms = (time.perf_counter() - t0) * 1000
    if as_json:
        print_json({"ms": ms, "hits": [h.__dict__ for h in hits]})
        return
    print_table(
        ("rank", "id", "distance", "label", "source"),
        [(h.rank, h.id, f"{h.distance:.4g}", h.label, h.source) for h in hits],
        title=f"top {k} for {query} ({ms:.1f} ms)",
    )


# ---------------------------------------------------------------------------------------------- models
@app.command("models")
@friendly_errors
def models_cmd(
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    methods: bool = typer.Option(
        False, "--methods", help="List the trainable methods and their --set keys with defaults instead."
    ),
) -> None:
    """List shipped and local model artifacts (or the methods `train` takes, with their --set keys)."""
    from ..model import list_models

    if methods:
        from ..recipes import list_recipes, recipe_options

        options = {name: recipe_options(name) for name in list_recipes()}
        if as_json:
            print_json({name: {kind: {k: _default_json(v) for k, v in opts.items()}
                               for kind, opts in o.items()} for name, o in options.items()})  # fmt: skip
            return
        print_table(("method", "--set keys (default)"), [(n, set_keys_text(o)) for n, o in options.items()],
                    title="methods (sketchsearch train METHOD --set KEY=VALUE)")  # fmt: skip
        return
    rows = list_models()
    if as_json:
        print_json(rows)
        return
    print_table(
        ("name", "where", "method", "output", "code size", "metrics"),
        [(r["name"], r["where"], r.get("method"), r.get("output"), r.get("code_size"),
          _metric_summary(r.get("metrics") or {})) for r in rows],
        title="models",
    )  # fmt: skip


def _default_json(v: Any) -> Any:
    """A parameter default for JSON: ``"(required)"`` for a required one, the value when JSON has it, else its
    repr."""
    import inspect

    if v is inspect.Parameter.empty:
        return "(required)"
    return v if isinstance(v, (str, int, float, bool, type(None), list, dict)) else repr(v)


def _metric_summary(metrics: dict[str, Any], keys: tuple[str, ...] = ("mAP@all", "P@8", "P@10")) -> str:
    """The headline numbers of a card, found at the top level or one level down (cards group them by data)."""
    for scope, values in [("", metrics)] + [
        (f"{k}: ", v) for k, v in metrics.items() if isinstance(v, dict) and not k.startswith("_")
    ]:
        found = [f"{k}={values[k]:.3f}" for k in keys if isinstance(values.get(k), (int, float))]
        if found:
            return scope + ", ".join(found)
    return ""
