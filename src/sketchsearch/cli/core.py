"""Core commands: data info, train, search, models (the index commands are in :mod:`.index`)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import typer

from ..errors import FormatError, InvalidSketchError
from .app import (
    QUIET,
    Reporter,
    app,
    command_line,
    data_app,
    friendly_errors,
    parse_sets,
    print_json,
    print_table,
)

# ---------------------------------------------------------------------------------------------- data
MODALITY_HELP = (
    "auto: what the data's layout says (Sketchy's sketch/ and photo/, strokes), and for a plain image folder "
    "each image judged from its pixels (drawing or photograph); sketch / photo: read a plain image folder as "
    "that, and keep only the items of that modality of other data."
)


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
        False,
        "--json",
        help="Print JSON: items, classes, modalities, metadata, skipped, errors, excluded, format.",
    ),
    fmt: str | None = typer.Option(None, "--format", help="Reader name (default: detected from the path)."),
    variants: bool = typer.Option(
        False, "--variants", help="KanjiVG: also read the variant files (<hex>-<variant>.svg) as items."
    ),
    modality: str = typer.Option("auto", "--modality", help=MODALITY_HELP),
) -> None:
    """Count items, classes and modalities; list skipped records (and unreadable files) with file and line.

    Without --strict a bad record or a file that cannot be read at all is reported and skipped, and the
    other files are still read. A metadata.csv / metadata.json beside the data is read and its rows matched."""
    from ..data.inspect import inspect_dataset

    _check_modality(modality)
    info = inspect_dataset(path, strict=strict, fmt=fmt, variants=variants, modality=modality)
    if as_json:
        print_json(info)
    else:
        print_table(("field", "value"), _info_rows(info), title=str(path))
    if strict and info.get("skipped"):
        raise typer.Exit(1)
    if strict and info.get("skipped"):
        raise typer.Exit(1)


#: bad records listed one per row in the table of ``data info`` (``--json`` lists up to 100)
INFO_ERRORS = 20


def _info_rows(info: dict[str, Any]) -> list[tuple[str, str]]:
    """``data info``'s table: (field, value) rows of :func:`~sketchsearch.data.inspect.inspect_dataset`'s
    result; a row per bad record (``skipped file``), per metadata row naming no item, per kind not read."""
    judged = " (each image judged from its pixels)" if info["from_pixels"] else ""
    rows = [(k, str(info.get(k))) for k in ("format", "items", "classes", "skipped")]
    rows.append(("modality", f"{info['modality']}{judged}"))
    rows += [(f"  {k}", str(v)) for k, v in (info.get("modalities") or {}).items()]
    meta = info.get("metadata")
    if meta is not None:
        names = ", ".join(Path(f).name for f in meta["files"])
        rows.append(("metadata", f"{meta['matched']} of {meta['rows']} rows of {names} matched an item"))
        rows += [("metadata row naming no item", key) for key in meta["unmatched"]]
    rows += [("not read", f"{count} {reason}") for reason, count in (info.get("excluded") or {}).items()]
    errors = info.get("errors", [])
    for e in errors[:INFO_ERRORS]:
        where = e["file"] if e["record"] is None else f"{e['file']}: record {e['record']}"
        rows.append(("skipped file", f"{where}: {e['reason']}"))
    if info["skipped"] > INFO_ERRORS:
        rows.append(("skipped file", f"... {info['skipped'] - INFO_ERRORS} more (--json lists up to 100)"))
    return rows


def _check_modality(modality: str) -> None:
    from ..data.sources import MODALITIES

    if modality not in MODALITIES:
        raise typer.BadParameter(f"--modality must be one of {', '.join(MODALITIES)}, got {modality!r}")


# ---------------------------------------------------------------------------------------------- train
@app.command("train")
@friendly_errors
def train_cmd(
    ctx: typer.Context,
    method: str = typer.Argument(..., help="Method name (see `sketchsearch models --methods`)."),
    data: str = typer.Option(..., "--data", help="Training data path, or 'default' for the embedded default."),
    out: Path = typer.Option(..., "--out", help="Artifact path stem: writes OUT.safetensors and OUT.json."),
    iterations: int | None = typer.Option(None, help="Training iterations (method's recipe default if unset)."),
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
        res = run_recipe(
            method,
            data,
            out=workdir or Path("runs") / Path(out).name,
            seed=seed,
            device=device,
            iterations=iterations,
            batch_size=batch_size,
            lr=lr,
            split_file=split_file,
            progress=reporter.enabled,
            options=options,
        )
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
        f"{kind}: " + ", ".join(f"{k}={default(v)}" for k, v in opts.items()) for kind, opts in options.items() if opts
    )


# ---------------------------------------------------------------------------------------------- search
def _read_query(path: Path, record: int) -> Any:
    """The query of ``search``: a ``.json`` drawing in any form the API takes
    (:func:`~sketchsearch.data.strokes.parse_strokes`, same limits), else record ``record`` of a file of any
    supported format (an image, a QuickDraw ``.ndjson``, one Omniglot stroke ``.txt``, ...)."""
    from ..data.batching import item_input
    from ..data.formats import read_any
    from ..data.strokes import FORMS, parse_strokes

    if path.suffix.lower() == ".json":
        if record:
            raise typer.BadParameter(f"--record {record}: a .json query holds one drawing (record 0)")
        try:
            obj = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise FormatError(path, None, f"not a JSON drawing ({e}); expected {FORMS}") from None
        try:
            return parse_strokes(obj)
        except InvalidSketchError as e:
            raise FormatError(path, None, str(e)) from None
    held = 0
    for held, item in enumerate(read_any(path, strict=True), 1):
        if held == record + 1:
            return item_input(item)
    raise typer.BadParameter(f"--record {record}: {path} holds {held} record(s), numbered from 0")


@app.command("search")
@friendly_errors
def search_cmd(
    query: Path = typer.Argument(
        ...,
        help="Query: a JSON drawing (the API's stroke forms: [[{x, y, t}, ...], ...], [[[x, y, t], ...], ...], "
        'QuickDraw\'s [[xs], [ys], [ts]] per stroke, optionally as {"strokes": ...} or {"drawing": ...}), '
        "an image, or a record of a data file of any supported format (see --record).",
    ),
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
            print_json(
                {
                    name: {kind: {k: _default_json(v) for k, v in opts.items()} for kind, opts in o.items()}
                    for name, o in options.items()
                }
            )
            return
        print_table(
            ("method", "--set keys (default)"),
            [(n, set_keys_text(o)) for n, o in options.items()],
            title="methods (sketchsearch train METHOD --set KEY=VALUE)",
        )
        return
    rows = list_models()
    if as_json:
        print_json(rows)
        return
    print_table(
        ("name", "where", "method", "output", "code size", "metrics"),
        [
            (
                r["name"],
                r["where"],
                r.get("method"),
                r.get("output"),
                r.get("code_size"),
                _metric_summary(r.get("metrics") or {}),
            )
            for r in rows
        ],
        title="models",
    )


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
