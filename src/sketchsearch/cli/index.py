"""Index commands: index build / add / remove / info.

Every command that changes an index holds the folder's write lock (:func:`~sketchsearch.index.folder.write_lock`)
from loading to saving, so concurrent commands on one folder take turns (a second one waits, up to
``--lock-timeout`` seconds) and ids are allocated from the latest generation. ``--out`` given as a symlink
is followed (its target is written, the link stays); a path that is not valid UTF-8, or a folder one may
not write in, is refused before anything is encoded."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.markup import escape

from ..errors import IndexError_, InvalidSketchError
from .app import QUIET, Reporter, console, friendly_errors, index_app, print_json
from .core import MODALITY_HELP, _check_modality

if TYPE_CHECKING:
    from ..data.collection import Collection
    from ..data.formats.base import Item
    from ..retrieval import Retriever

#: ``index build --engine``: encode in this process, or in shards on Ray workers (:mod:`sketchsearch.ray_engine`)
ENGINES = ("local", "ray")

#: ``--lock-timeout`` of the commands that change an index
LOCK_TIMEOUT = typer.Option(
    None,
    "--lock-timeout",
    min=0,
    help="Seconds to wait while another command changes the index (default: $SKETCHSEARCH_LOCK_TIMEOUT, else 300).",
)


def _writable_out(out: Path) -> None:
    """Refuse, before anything is read or encoded, an --out that is not valid UTF-8 or lies in a folder
    this process may not write in."""
    from ..index.folder import check_path, target

    try:
        check_path(out)
    except IndexError_ as e:
        raise typer.BadParameter(f"--out {e}") from None
    parent = target(out).absolute().parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise typer.BadParameter(
            f"--out {out}: cannot write in {parent} (permission denied or not a folder); choose a folder you "
            "can write to"
        )


def _utf8_sources(items: list[Item], data: str) -> None:
    """Refuse items whose source (a file name) is not valid UTF-8, naming the first, before encoding."""
    for it in items:
        try:
            str(it.source).encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidSketchError(
                f"{data}: the file name {os.fsencode(str(it.source))!r} is not valid UTF-8; the index stores "
                "sources as text: rename the file (e.g. with convmv) or move it out of the data",
                "data",
            ) from None


def _reads_photos(method: object) -> bool:
    """Whether ``method`` has a photo branch (it overrides ``Method.encode_photo``)."""
    from ..methods.base import Method

    return type(method).encode_photo is not Method.encode_photo


def _read_for_model(
    r: Retriever, model: str, data: str, *, modality: str, strict: bool, limit: int | None
) -> tuple[Collection, list[Item]]:
    """The items of ``data`` as the retriever's model reads them: (the Collection, the items to encode).

    ``auto`` means drawings for a model without a photo branch (``photo`` is refused), each image judged
    from its pixels for one with. A model that reads stroke order reads the strokes of drawings given as
    images traced from their pixels (:mod:`sketchsearch.data.trace`; a note on stderr says how many)."""
    from ..data.sources import load_collection

    _check_modality(modality)
    if not _reads_photos(r.method):
        if modality == "photo":
            raise typer.BadParameter(f"--modality photo: {model} encodes drawings only; use --modality auto or sketch")
        modality = "sketch"
    res = load_collection(data, strict=strict, limit=limit, modality=modality)
    items = list(res.items)
    if not items:
        what = "items" if modality == "auto" else f"{modality} items"
        raise InvalidSketchError(f"{data}: no {what} to index ({res.skipped} bad records skipped)", "data")
    if "points" in r.method.preprocessing.inputs:
        flat = sum(it.sketch is None for it in items)
        if flat:
            console.print(
                f"note: {escape(model)} reads stroke order: the strokes of {flat} images are traced from their pixels",
                highlight=False,
                soft_wrap=True,
            )
    return res, items


def _encode_into(r: Retriever, items: list[Item], reporter: Reporter) -> None:
    """Encode ``items`` (data Items) into the retriever (:meth:`~sketchsearch.retrieval.Retriever.add_items`:
    each modality through its own branch, in chunks, keeping label, source, metadata and a thumbnail of each);
    a bar on stderr (``reporter``)."""
    with reporter.steps() as update:
        r.add_items(items, progress=lambda done, total: update("encoding", done, total))


def _encode_on_ray(
    r: Retriever, items: list[Item], out: Path, workers: int | None, shard_size: int | None, reporter: Reporter
) -> dict[str, Any]:
    """``index build --engine ray``: encode ``items`` in shards on Ray workers (:mod:`sketchsearch.ray_engine`)
    into the (new, empty) retriever, save it to ``out`` and remove the work folder; hold ``out``'s write lock.
    Returns the run's figures for --json."""
    import shutil

    from ..index.folder import target
    from ..index.sharded import usable_cpus
    from ..ray_engine import DEFAULT_SHARD_SIZE, encode_sharded, work_folder

    def note(line: str) -> None:
        console.print(line, highlight=False, markup=False, soft_wrap=True)

    work = work_folder(target(out).absolute())
    n = workers or usable_cpus()
    shard_size = shard_size or DEFAULT_SHARD_SIZE
    with reporter.steps() as update:
        run = encode_sharded(
            str(r.model_name),
            r.model_id,
            items,
            r.next_ids(items),
            work,
            workers=n,
            shard_size=shard_size,
            progress=lambda done, total: update("encoding", done, total),
            note=note,
        )
    r.add_encoded(run.codes, run.ids, run.rows)
    r.save(out)
    shutil.rmtree(work, ignore_errors=True)
    if run.encoded:
        took = f"{len(run.encoded)} encoded by {run.workers} Ray workers in {run.encode_seconds:.1f} s"
    else:
        took = "none left to encode"
    note(f"ray: {run.shards} shards of up to {shard_size} items: {len(run.reused)} reused from an earlier run, {took}")
    return {
        "engine": "ray",
        "workers": run.workers,
        "shards": run.shards,
        "shards_reused": len(run.reused),
        "shards_encoded": len(run.encoded),
    }


#: bad records ``index build`` / ``add`` name on stderr (``data info`` lists them all)
SHOWN_ERRORS = 10


def _report_skipped(res: Collection, data: str) -> None:
    """One plain line on stderr per bad record skipped (the first :data:`SHOWN_ERRORS`), then how many more."""
    for e in res.errors[:SHOWN_ERRORS]:
        console.print(f"skipped {e}", highlight=False, markup=False, soft_wrap=True)
    if res.skipped > SHOWN_ERRORS:
        console.print(
            f"... and {res.skipped - SHOWN_ERRORS} more: `sketchsearch data info {data}` lists them",
            highlight=False,
            markup=False,
            soft_wrap=True,
        )


def _bad_records(n: int) -> str:
    return f"skipped {n} bad record{'' if n == 1 else 's'}"


def _modalities(items: list[Item]) -> dict[str, int]:
    n_photo = sum(it.modality == "photo" for it in items)
    return {"drawings": len(items) - n_photo, "photos": n_photo}


def _counts(items: list[Item]) -> str:
    return "{drawings} drawings, {photos} photos".format(**_modalities(items))


@index_app.command("build")
@friendly_errors
def index_build(
    model: str = typer.Option(..., "--model", help="Model artifact name or path."),
    data: str = typer.Option(..., "--data", help="Data path, or 'default'."),
    out: Path = typer.Option(..., "--out", help="Index folder to write (refused when it exists, unless --force)."),
    limit: int | None = typer.Option(None, help="Index at most this many items."),
    strict: bool = typer.Option(False, "--strict", help="Fail on the first bad record."),
    backend: str = typer.Option(
        "numba",
        help="Hamming backend: numba (the compiled scan), sharded (the same scan over shards of 2**20 codes "
        "in parallel threads, deletes as tombstones), mih (multi-index hashing: exact, sub-linear on large "
        "structured collections), milvus (a Milvus collection: embedded milvus-lite, or the server of --uri), "
        "faiss or numpy ('sketchsearch' = numba).",
    ),
    uri: str | None = typer.Option(
        None,
        "--uri",
        help="With --backend milvus: the Milvus server or cluster (http://host:19530) or milvus-lite file (.db) "
        "to search in, recorded in the index; default: an embedded milvus-lite private to each process (the "
        "folder keeps the codes; a load fills the collection again). Token: $SKETCHSEARCH_MILVUS_TOKEN.",
    ),
    modality: str = typer.Option(
        "auto",
        "--modality",
        help=MODALITY_HELP + " A model without a photo branch reads every image as a drawing.",
    ),
    name: str | None = typer.Option(
        None,
        "--name",
        help="The collection's name, spaces allowed (default: the --out folder's name, or the data's when "
        "that is a word like 'index' or 'out'); its URL-safe id (slug) is derived from it.",
    ),
    title: str | None = typer.Option(
        None, "--title", help="The heading to show for the collection (default: its name)."
    ),
    description: str | None = typer.Option(None, "--description", help="A sentence or two about the collection."),
    force: bool = typer.Option(False, "--force", help="Replace the index already at --out."),
    lock_timeout: float | None = LOCK_TIMEOUT,
    engine: str = typer.Option(
        "local",
        "--engine",
        help="local: encode in this process; ray: encode shards of the items on --workers Ray workers (needs "
        "`pip install 'sketchsearch[ray]'`), keeping finished shards in .<out>.ray-parts beside --out until the "
        "index is saved, so that a run killed part-way and started again does not encode them again.",
    ),
    workers: int | None = typer.Option(
        None, "--workers", min=1, help="--engine ray: worker processes (default: the CPUs this process may use)."
    ),
    shard_size: int | None = typer.Option(
        None,
        "--shard-size",
        min=1,
        help="--engine ray: items per shard, the unit of work and resume (default 2048). A multiple of 512 (the "
        "encoding chunk) keeps float codes bit-identical to --engine local's; other sizes can differ in rounding.",
    ),
    as_json: bool = typer.Option(
        False,
        "--json",
        help="Print the result as JSON: index, count, drawings, photos, name, slug, title, description, "
        "skipped, errors; with --engine ray also engine, workers, shards, shards_reused, shards_encoded.",
    ),
    quiet: bool = QUIET,
) -> None:
    """Encode a collection with a model and write an on-disk index.

    The index folder holds codes, ids and items (label, source, metadata, thumbnail) and, in its manifest,
    the collection's name, slug, title and description. The result is a line on stdout (or --json); bad
    records skipped are named on stderr. --engine ray gives the same index, encoded on several workers."""
    from ..errors import IndexArgumentError
    from ..index.store import collection_fields, default_collection_name, write_lock
    from ..retrieval import Retriever

    if engine not in ENGINES:
        raise typer.BadParameter(f"--engine {engine!r}: valid engines are {', '.join(ENGINES)}")
    if engine == "local" and (workers is not None or shard_size is not None):
        raise typer.BadParameter("--workers and --shard-size apply to --engine ray")
    if engine == "ray":
        from ..ray_engine import require_ray

        require_ray()
    _writable_out(out)
    if uri is not None:
        if backend != "milvus":
            raise typer.BadParameter(f"--uri: only with --backend milvus (got --backend {backend})")
        from ..index.milvus import check_uri

        try:
            uri = check_uri(uri)
        except IndexArgumentError as e:
            raise typer.BadParameter(f"--uri: {e.reason}") from None
    try:
        fields = collection_fields(name if name is not None else default_collection_name(out, data), title, description)
    except IndexArgumentError as e:
        raise typer.BadParameter(f"--{e.field}: {e.reason}") from None
    with write_lock(out, lock_timeout):
        if out.exists() and (out.is_file() or any(out.iterdir())) and not force:
            raise typer.BadParameter(
                f"--out {out}: already exists; pass --force to replace it, or add to it with "
                f"`sketchsearch index add {out} --data ...`"
            )
        r = Retriever.from_model(model, backend=backend)
        if uri is not None:
            if not r.binary:
                raise typer.BadParameter(
                    f"--uri: model {model} gives float embeddings, searched by the dense index; --backend milvus "
                    "and --uri apply to binary codes"
                )
            from ..index import create_index

            r.index = create_index("milvus", nbits=r.method.code_size, uri=uri)
        r.collection = fields
        res, items = _read_for_model(r, model, data, modality=modality, strict=strict, limit=limit)
        _utf8_sources(items, data)
        if engine == "local":
            _encode_into(r, items, Reporter(quiet))
            r.save(out)
        else:
            sharded = _encode_on_ray(r, items, out, workers, shard_size, Reporter(quiet))
    if as_json:
        print_json(
            {
                "index": str(out),
                "count": len(r),
                **_modalities(items),
                **fields,
                "skipped": res.skipped,
                "errors": res.error_dicts(),
                **(sharded if engine == "ray" else {}),
            }
        )
        return
    typer.echo(
        f"indexed {len(r)} items ({_counts(items)}) into {out}: {fields['name']!r} "
        f"(id {fields['slug']}); {_bad_records(res.skipped)}"
    )
    _report_skipped(res, data)


@index_app.command("add")
@friendly_errors
def index_add(
    folder: Path = typer.Argument(..., help="Index folder (made by `sketchsearch index build`)."),
    data: str = typer.Option(..., "--data", help="Data path: its items are encoded with the index's model."),
    limit: int | None = typer.Option(None, help="Add at most this many items."),
    strict: bool = typer.Option(False, "--strict", help="Fail on the first bad record."),
    modality: str = typer.Option("auto", "--modality", help=MODALITY_HELP),
    duplicates: bool = typer.Option(
        False,
        "--duplicates",
        help="Also add items whose source (path relative to --data) the index already holds.",
    ),
    as_json: bool = typer.Option(
        False,
        "--json",
        help="Print the result as JSON: index, added, drawings, photos, already_there, count, skipped, errors.",
    ),
    lock_timeout: float | None = LOCK_TIMEOUT,
    quiet: bool = QUIET,
) -> None:
    """Add the items of --data to an index, with the index's model.

    The folder is rewritten atomically. Items whose source is already in the index are left as they are (so
    adding a folder again adds only its new files), unless --duplicates."""
    from ..index.store import write_lock
    from ..retrieval import Retriever

    with write_lock(folder, lock_timeout):
        r = Retriever.load(folder)  # under the lock: ids are allocated after the latest generation's
        res, read = _read_for_model(r, str(r.model_name), data, modality=modality, strict=strict, limit=limit)
        items = read
        if not duplicates:
            present = r.store.ids_with_sources([it.source for it in items])
            items = [it for it in items if it.source not in present]
        _utf8_sources(items, data)
        if items:
            _encode_into(r, items, Reporter(quiet))
            r.save(folder)
    kept = len(read) - len(items)
    if as_json:
        print_json(
            {
                "index": str(folder),
                "added": len(items),
                **_modalities(items),
                "already_there": kept,
                "count": len(r),
                "skipped": res.skipped,
                "errors": res.error_dicts(),
            }
        )
        return
    again = f"; {kept} already there by source, left as they are (--duplicates adds them)" if kept else ""
    typer.echo(
        f"added {len(items)} items ({_counts(items)}) to {folder}, {len(r)} in all{again}; {_bad_records(res.skipped)}"
    )
    _report_skipped(res, data)


@index_app.command("remove")
@friendly_errors
def index_remove(
    folder: Path = typer.Argument(..., help="Index folder."),
    ids: list[int] | None = typer.Option(None, "--id", help="An item id, as `search` shows it (repeatable)."),
    sources: list[str] | None = typer.Option(
        None,
        "--source",
        help="An item source, as `search` shows it: its path relative to the data (repeatable).",
    ),
    lock_timeout: float | None = LOCK_TIMEOUT,
) -> None:
    """Remove items from an index by id or by source (the folder is rewritten atomically)."""
    from ..index.store import write_lock
    from ..retrieval import Retriever

    if not ids and not sources:
        raise typer.BadParameter("give the items to remove: --id ID and/or --source PATH (each repeatable)")
    with write_lock(folder, lock_timeout):
        r = Retriever.load(folder)
        stored = {int(i) for i in r.index.ids}
        unknown = [i for i in ids or [] if i not in stored]
        if unknown:
            raise typer.BadParameter(
                f"--id {unknown[0]}: no item of {folder} has this id (ids are those `search` shows)"
            )
        found = r.store.ids_with_sources(sources or [])
        missing = [s for s in sources or [] if s not in found]
        if missing:
            raise typer.BadParameter(
                f"--source {missing[0]!r}: no item of {folder} has this source (a path relative to the data it "
                "was indexed from, as `search` shows it)"
            )
        gone = sorted(set(ids or []) | {i for s in found.values() for i in s})
        r.remove(gone)
        r.save(folder)
    typer.echo(f"removed {len(gone)} items from {folder}, {len(r)} left")


@index_app.command("info")
@friendly_errors
def index_info(folder: Path = typer.Argument(..., help="Index folder.")) -> None:
    """Print an index's manifest: model, counts, the collection's name, slug, title and description."""
    from ..index.store import read_manifest

    print_json(read_manifest(folder))
